import AsyncHTTPClient
import Foundation
import HostIO
import Model

/// What `changelab bench distribution` runs.
public struct BenchOptions: Sendable {
    public var segments = 10
    public var agentsPerSegment = 10
    /// Network namespaces (hosts) per segment; the segment's agents are spread over them.
    public var hostsPerSegment = 1
    public var packageBytes = 20 * 1024 * 1024
    public var wanRate = "1gbit"
    /// Random loss per segment number (1-based), e.g. [2: 0.05].
    public var loss: [Int: Double] = [:]
    /// Random loss of the multicast datagrams each host of a segment receives (its TCP untouched).
    public var multicastLoss: [Int: Double] = [:]
    /// Installers one agent process runs at once (its identities share two cores); nil: no limit.
    public var parallelInstalls: Int?
    /// Seeding throttle per agent (bytes/s); nil: unthrottled.
    public var seedRate: Int64?
    public var prefix = "clb"
    public var workDirectory: String
    /// The `changelab` executable run inside the namespaces.
    public var executable: String
    /// `lab/fleet`.
    public var fleetScript: String
    public var timeout: Duration = .seconds(600)
    /// The modes measured, each on a fresh fleet, in this order.
    public var modes: [BenchMode] = [.unicast]

    public init(workDirectory: String, executable: String, fleetScript: String) {
        self.workDirectory = workDirectory
        self.executable = executable
        self.fleetScript = fleetScript
    }
}

/// One distribution mode's figures. Part 1 has `unicast`; part 2 adds its modes beside it.
public struct BenchModeResult: Codable, Sendable {
    public var mode: String
    public var agents: Int
    public var segments: Int
    public var packageBytes: Int64
    /// Bytes the core put on the WAN link while seeding (interface counter).
    public var wanBytes: Int64
    /// Bytes that entered the segments' bridges while seeding (interface counters).
    public var lanBytes: Int64
    public var seedingSeconds: Double
    /// From the activate command to the last agent's activation result.
    public var activationSeconds: Double
    /// WAN bytes ÷ (package size × segments): about agents per segment for unicast.
    public var wanRatio: Double
    /// LAN bytes ÷ (package size × segments).
    public var lanRatio: Double
    public var activated: Int
    public var failed: Int
    /// Every agent reported an activation result within 5 s of the command.
    public var activationWithin5s: Bool
    // Part 2 (`DistributionBench.addSegmentFigures`, BenchModes.swift).
    /// Bytes the segments' hosts put on their bridges (multicast data, repair, peer transfers,
    /// feedback, and their own TCP to the core) ÷ (package size × segments).
    public var lanSegmentRatio: Double?
    /// Bytes the receivers (every host but the segment's multicast sender) put on the bridge,
    /// minus the peer payload they served: NACKs, ACKs and their own check-ins.
    public var lanFeedbackBytes: Int64?
    /// Payload bytes by source: one copy per segment that multicast (`multicast`), what the
    /// senders put on the bridge beyond it (`repair`: FEC parity, repairs, their TCP), what
    /// peers served, and what the core served.
    public var payloadBytes: [String: Int64]?
    /// Targets by who delivered their verified copy.
    public var served: [String: Int]?
    public var offlineAgents: Int?
    /// Artifact bytes the core served the agents that were offline during seeding.
    public var offlineCoreBytes: Int64?
    /// From `activate` to the last installer start (agents' timestamps).
    public var activationFanoutSeconds: Double?

    public init(
        mode: String, agents: Int, segments: Int, packageBytes: Int64, wanBytes: Int64, lanBytes: Int64,
        seedingSeconds: Double, activationSeconds: Double, wanRatio: Double, lanRatio: Double, activated: Int,
        failed: Int, activationWithin5s: Bool
    ) {
        self.mode = mode
        self.agents = agents
        self.segments = segments
        self.packageBytes = packageBytes
        self.wanBytes = wanBytes
        self.lanBytes = lanBytes
        self.seedingSeconds = seedingSeconds
        self.activationSeconds = activationSeconds
        self.wanRatio = wanRatio
        self.lanRatio = lanRatio
        self.activated = activated
        self.failed = failed
        self.activationWithin5s = activationWithin5s
    }

    enum CodingKeys: String, CodingKey {
        case mode, agents, segments, activated, failed, served
        case packageBytes = "package_bytes"
        case wanBytes = "wan_bytes"
        case lanBytes = "lan_bytes"
        case seedingSeconds = "seeding_seconds"
        case activationSeconds = "activation_seconds"
        case wanRatio = "wan_ratio"
        case lanRatio = "lan_ratio"
        case activationWithin5s = "activation_within_5s"
        case lanSegmentRatio = "lan_segment_ratio"
        case lanFeedbackBytes = "lan_feedback_bytes"
        case payloadBytes = "payload_bytes"
        case offlineAgents = "offline_agents"
        case offlineCoreBytes = "offline_core_bytes"
        case activationFanoutSeconds = "activation_fanout_seconds"
    }
}

public struct BenchReport: Codable, Sendable {
    public struct Fleet: Codable, Sendable {
        public var segments: Int
        public var agentsPerSegment: Int
        public var hostsPerSegment: Int
        public var wanRate: String
        public var loss: [String: Double]

        enum CodingKeys: String, CodingKey {
            case segments, loss
            case agentsPerSegment = "agents_per_segment"
            case hostsPerSegment = "hosts_per_segment"
            case wanRate = "wan_rate"
        }
    }

    public var fleet: Fleet
    public var modes: [BenchModeResult]
}

/// The test fleet (lab/fleet) driven from Swift: namespaces up, a core and agent processes
/// inside them, counters read, everything torn down on every path.
public struct TestFleet: Sendable {
    public var options: BenchOptions
    public let coreAddress = "10.77.0.2"
    public let port = 7480

    public init(options: BenchOptions) {
        self.options = options
    }

    func fleet(_ arguments: [String]) async throws -> CommandResult {
        try await HostCommand.check(
            options.fleetScript, arguments + ["--prefix", options.prefix], timeout: .seconds(300))
    }

    public func up() async throws {
        var arguments = [
            "up", "--segments", String(options.segments), "--hosts", String(options.hostsPerSegment), "--wan-rate",
            options.wanRate,
        ]
        for (segment, p) in options.loss.sorted(by: { $0.key < $1.key }) { arguments += ["--loss", "\(segment)=\(p)"] }
        for (segment, p) in options.multicastLoss.sorted(by: { $0.key < $1.key }) {
            arguments += ["--multicast-loss", "\(segment)=\(p)"]
        }
        try await fleet(arguments)
    }

    public func down() async {
        _ = try? await fleet(["down"])
    }

    public func namespaces() async -> [String] {
        ((try? await fleet(["list"]))?.stdoutText ?? "").split(separator: "\n").map(String.init)
    }

    /// (WAN bytes sent by the core, LAN bytes that entered every segment).
    public func counters() async throws -> (wan: Int64, lan: Int64) {
        var wan: Int64 = 0
        var lan: Int64 = 0
        for line in try await fleet(["counters"]).stdoutText.split(separator: "\n") {
            let f = line.split(separator: " ")
            if f.first == "wan", f.count >= 2 { wan = Int64(f[1]) ?? 0 }
            if f.first == "lan", f.count >= 3 { lan += Int64(f[2]) ?? 0 }
        }
        return (wan, lan)
    }

    /// The core's address on the management link from this host (depends on the prefix).
    public func managementAddress() async throws -> String {
        try await fleet(["mgmt"]).stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    public func namespace(segment: Int, host: Int) -> String { "\(options.prefix)-s\(segment)-h\(host)" }
    public var coreNamespace: String { "\(options.prefix)-core" }
}

/// Runs a program in the background, detached from this process's pipes, and stops it by pid.
public struct DetachedProcess: Sendable {
    public let pid: pid_t

    /// Starts `program` (output appended to `log`) and returns at once.
    public static func start(_ program: String, _ arguments: [String], log: String) async throws -> DetachedProcess {
        let quoted = ([program] + arguments).map { "'" + $0.replacingOccurrences(of: "'", with: "'\\''") + "'" }
        let result = try await HostCommand.check(
            "/bin/sh", ["-c", "\(quoted.joined(separator: " ")) >>'\(log)' 2>&1 </dev/null & echo $!"])
        guard let pid = pid_t(result.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)) else {
            throw ChangelabError("could not start \(program)", fix: "see \(log)")
        }
        return DetachedProcess(pid: pid)
    }

    public func kill(_ signal: Int32 = SIGKILL) {
        _ = Glibc.kill(pid, signal)
    }

    /// SIGTERM, then SIGKILL if it is still there after `grace`.
    public func stop(grace: Duration = .seconds(3)) async {
        kill(SIGTERM)
        let deadline = ContinuousClock.now + grace
        while ContinuousClock.now < deadline {
            if Glibc.kill(pid, 0) != 0 { return }
            try? await Task.sleep(for: .milliseconds(50))
        }
        kill(SIGKILL)
    }
}

/// `changelab bench distribution`: seed and activate one package across the fleet and measure.
public enum DistributionBench {
    public static func run(_ options: BenchOptions, progress: @escaping @Sendable (String) -> Void) async throws
        -> BenchReport
    {
        let fleet = TestFleet(options: options)
        let work = options.workDirectory
        try? FileManager.default.removeItem(atPath: work)
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        let processes = ProcessList()
        let clients = ClientList()
        do {
            var results: [BenchModeResult] = []
            for mode in options.modes {
                results.append(
                    try await measure(
                        mode, options: options, work: work, clients: clients, processes: processes, progress: progress))
            }
            let o = options
            let report = BenchReport(
                fleet: .init(
                    segments: o.segments, agentsPerSegment: o.agentsPerSegment, hostsPerSegment: o.hostsPerSegment,
                    wanRate: o.wanRate,
                    loss: Dictionary(uniqueKeysWithValues: o.loss.map { ("s\($0.key)", $0.value) })),
                modes: results)
            await teardown(processes, fleet: fleet, work: work)
            await clients.shutdown()
            return report
        } catch {
            await teardown(processes, fleet: fleet, work: work)
            await clients.shutdown()
            throw error
        }
    }

    static func teardown(_ processes: ProcessList, fleet: TestFleet, work: String) async {
        for process in processes.all { process.kill(SIGTERM) }
        for process in processes.all { await process.stop(grace: .seconds(2)) }
        await fleet.down()
        try? FileManager.default.removeItem(atPath: work)
    }

    static func waitForCore(url: String, tokenPath: String, http: HTTPClient) async throws -> CoreClient {
        var client: CoreClient?
        _ = try await poll(.seconds(30)) {
            guard let data = FileManager.default.contents(atPath: tokenPath) else { return false }
            let c = CoreClient(
                url: url,
                adminToken: String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines),
                client: http)
            guard (try? await c.agents()) != nil else { return false }
            client = c
            return true
        }
        guard let client else {
            throw ChangelabError(
                "the core did not start in the fleet's core namespace", fix: "see core.log in the bench folder")
        }
        return client
    }

    /// A package of `bytes` random bytes, uncompressed so unpacking costs little.
    public static func buildPackage(in dir: String, bytes: Int, name: String = "bench-payload", version: String = "1.0")
        async throws -> String
    {
        let tree = "\(dir)/pkg"
        try FileManager.default.createDirectory(atPath: "\(tree)/DEBIAN", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: "\(tree)/opt/\(name)", withIntermediateDirectories: true)
        try AtomicFile.write(
            "Package: \(name)\nVersion: \(version)\nArchitecture: all\nMaintainer: changelab <bench@example.invalid>\nDescription: changelab distribution benchmark payload\n",
            to: "\(tree)/DEBIAN/control")
        try await HostCommand.check("head", ["-c", String(bytes), "/dev/urandom"]).stdout
            .write(to: URL(fileURLWithPath: "\(tree)/opt/\(name)/payload"))
        let deb = "\(dir)/\(name)_\(version).deb"
        try await HostCommand.check("dpkg-deb", ["-Znone", "--root-owner-group", "--build", tree, deb])
        return deb
    }

    static func poll(
        _ timeout: Duration, _ condition: () async throws -> Bool, every interval: Duration = .milliseconds(200)
    ) async throws -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if try await condition() { return true }
            try await Task.sleep(for: interval)
        }
        return try await condition()
    }

    static func seconds(_ d: Duration) -> Double {
        Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
    }
}

/// The processes a bench started, so teardown can stop each by pid.
final class ProcessList: @unchecked Sendable {
    // @unchecked: guarded by `lock`.
    private let lock = NSLock()
    private var processes: [DetachedProcess] = []

    func add(_ process: DetachedProcess) {
        lock.lock()
        processes.append(process)
        lock.unlock()
    }

    func removeAll() {
        lock.lock()
        processes.removeAll()
        lock.unlock()
    }

    var all: [DetachedProcess] {
        lock.lock()
        defer { lock.unlock() }
        return processes
    }
}

/// HTTP clients a run made, shut down when it ends.
final class ClientList: @unchecked Sendable {
    // @unchecked: guarded by `lock`.
    private let lock = NSLock()
    private var clients: [HTTPClient] = []

    func add(_ client: HTTPClient) {
        lock.lock()
        clients.append(client)
        lock.unlock()
    }

    func shutdown() async {
        let all = lock.withLock {
            let all = clients
            clients = []
            return all
        }
        for client in all { try? await client.shutdown() }
    }
}
