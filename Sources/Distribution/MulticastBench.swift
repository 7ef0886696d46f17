import Foundation
import HostIO
import Model

/// `changelab bench multicast`: one segment alone — a sender and N receivers, each in a
/// namespace of its own on the segment's bridge, one NORM file transfer, bytes from the
/// bridge's port counters. The per-segment figures the fleet-wide modes build on.
public struct MulticastBenchOptions: Sendable {
    public var workDirectory: String
    public var executable: String
    public var fleetScript: String
    public var prefix = "clm"
    public var receivers = 10
    public var packageBytes: Int64 = 20 << 20
    /// Random loss on every receiver's input (iptables), independent per receiver.
    public var loss = 0.0
    public var rate: Int64 = 12_500_000
    public var autoParity: UInt8 = 8
    public var congestionControl = false
    public var timeout: Duration = .seconds(300)

    public init(workDirectory: String, executable: String, fleetScript: String) {
        self.workDirectory = workDirectory
        self.executable = executable
        self.fleetScript = fleetScript
    }
}

public struct MulticastBenchResult: Codable, Sendable {
    public var receivers: Int
    public var packageBytes: Int64
    public var loss: Double
    public var rateBytesPerSecond: Int64
    public var autoParity: Int
    /// From the sender's start until every receiver acknowledged (or the rounds ran out).
    public var seedingSeconds: Double
    /// Bytes the sender put on the bridge: data, proactive parity, repairs, NORM headers.
    public var senderBytes: Int64
    /// Bytes the receivers put on the bridge: NACKs and acknowledgements.
    public var lanFeedbackBytes: Int64
    /// Every byte the segment's hosts put on its bridge.
    public var lanSegmentBytes: Int64
    /// lanSegmentBytes ÷ packageBytes (one segment).
    public var lanSegmentRatio: Double
    public var acknowledged: Int
    public var rounds: Int
    /// Receivers whose file matched the manifest chunk by chunk.
    public var verified: Int
    /// package bits ÷ seeding time, Mbit/s.
    public var goodputMbit: Double

    enum CodingKeys: String, CodingKey {
        case receivers, loss, verified, acknowledged, rounds
        case packageBytes = "package_bytes"
        case rateBytesPerSecond = "rate_bytes_per_second"
        case autoParity = "auto_parity"
        case seedingSeconds = "seeding_seconds"
        case senderBytes = "sender_bytes"
        case lanFeedbackBytes = "lan_feedback_bytes"
        case lanSegmentBytes = "lan_segment_bytes"
        case lanSegmentRatio = "lan_segment_ratio"
        case goodputMbit = "goodput_mbit"
    }
}

public enum MulticastSegmentBench {
    struct ReceiverOutput: Decodable {
        var failingChunks: [Int]?
    }

    public static func run(_ options: MulticastBenchOptions, progress: @escaping @Sendable (String) -> Void)
        async throws -> MulticastBenchResult
    {
        guard (1...60).contains(options.receivers) else {
            throw ChangelabError("--receivers must be 1-60 (one namespace each)")
        }
        guard options.loss >= 0, options.loss < 1 else { throw ChangelabError("--loss must be in [0, 1)") }
        var fleetOptions = BenchOptions(
            workDirectory: options.workDirectory, executable: options.executable, fleetScript: options.fleetScript)
        fleetOptions.prefix = options.prefix
        fleetOptions.segments = 1
        fleetOptions.hostsPerSegment = options.receivers + 1
        let fleet = TestFleet(options: fleetOptions)
        let work = options.workDirectory
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: work) }
        progress("fleet: 1 segment, 1 sender + \(options.receivers) receivers, one namespace each")
        try await fleet.up()
        do {
            let result = try await measure(options, fleet: fleet, work: work, progress: progress)
            await fleet.down()
            return result
        } catch {
            await fleet.down()
            throw error
        }
    }

    private static func measure(
        _ options: MulticastBenchOptions, fleet: TestFleet, work: String, progress: @escaping @Sendable (String) -> Void
    ) async throws -> MulticastBenchResult {
        let package = work + "/package"
        try writeRandomFile(package, bytes: options.packageBytes)
        let manifest = try ReleaseManifest.build(
            file: package, release: "bench", package: "bench", packageVersion: "1", chunkSize: 1 << 20)
        let manifestPath = work + "/manifest.json"
        try StableJSON.data(manifest).write(to: URL(fileURLWithPath: manifestPath))
        if options.loss > 0 {
            for host in 2...(options.receivers + 1) {
                try await HostCommand.check(
                    "ip",
                    ["netns", "exec", fleet.namespace(segment: 1, host: host), "iptables", "-A", "INPUT", "-m",
                     "statistic", "--mode", "random", "--probability", String(options.loss), "-j", "DROP"])
            }
        }
        let info = "bench " + manifest.digest.hex
        let common = [
            "--group", "239.77.1.1", "--port", "7701", "--interface", "eth0", "--rate", String(options.rate),
            "--auto-parity", String(options.autoParity),
            "--timeout", String(max(10, Int(options.timeout.seconds))), "--info", info, "--json",
        ] + (options.congestionControl ? ["--congestion-control"] : [])
        let before = try await fleet.portCounters()
        progress("multicasting \(options.packageBytes) bytes at \(options.rate) B/s, loss \(options.loss) per receiver")
        let (send, outputs) = try await withThrowingTaskGroup(of: (Int, Data).self) { group in
            for host in 2...(options.receivers + 1) {
                group.addTask {
                    let result: CommandResult = try await HostCommand.run(
                        "ip",
                        ["netns", "exec", fleet.namespace(segment: 1, host: host), options.executable, "multicast",
                         "receive", "--node", String(host), "--sender", "1", "--size", String(options.packageBytes),
                         "--out", work + "/received-\(host)", "--manifest", manifestPath,
                         "--ready-file", work + "/ready-\(host)"] + common,
                        timeout: options.timeout + .seconds(30))
                    return (host, result.status == 0 ? result.stdout : result.stderr)
                }
            }
            // The receivers join the group before the object starts.
            try await MulticastReadiness.wait(
                for: (2...(options.receivers + 1)).map { work + "/ready-\($0)" }, within: options.timeout)
            let receivers = (2...(options.receivers + 1)).map(String.init).joined(separator: ",")
            let sent = try await HostCommand.run(
                "ip",
                ["netns", "exec", fleet.namespace(segment: 1, host: 1), options.executable, "multicast", "send",
                 package, "--node", "1", "--receivers", receivers] + common,
                timeout: options.timeout + .seconds(30))
            var outputs: [Int: Data] = [:]
            for try await (host, output) in group { outputs[host] = output }
            return (sent, outputs)
        }
        let after = try await fleet.portCounters()
        guard let report = try? JSONDecoder().decode(NormSendReport.self, from: send.stdout) else {
            throw ChangelabError(
                "the multicast sender failed", why: String(decoding: send.stderr.suffix(2000), as: UTF8.self))
        }
        let verified = outputs.values.filter {
            (try? JSONDecoder().decode(ReceiverOutput.self, from: $0))?.failingChunks == []
        }.count
        for (host, output) in outputs.sorted(by: { $0.key < $1.key })
        where (try? JSONDecoder().decode(ReceiverOutput.self, from: output))?.failingChunks != [] {
            progress("receiver \(host): \(String(decoding: output.suffix(400), as: UTF8.self))")
        }
        func delta(_ port: String) -> Int64 { (after[port] ?? 0) - (before[port] ?? 0) }
        let senderBytes = delta("s1h1")
        let feedback = (2...(options.receivers + 1)).reduce(Int64(0)) { $0 + delta("s1h\($1)") }
        let size = Double(options.packageBytes)
        return MulticastBenchResult(
            receivers: options.receivers, packageBytes: options.packageBytes, loss: options.loss,
            rateBytesPerSecond: options.rate, autoParity: Int(options.autoParity), seedingSeconds: report.seconds,
            senderBytes: senderBytes, lanFeedbackBytes: feedback, lanSegmentBytes: senderBytes + feedback,
            lanSegmentRatio: Double(senderBytes + feedback) / size, acknowledged: report.acknowledged.count,
            rounds: report.rounds, verified: verified,
            goodputMbit: report.seconds > 0 ? size * 8 / report.seconds / 1e6 : 0)
    }

    static func writeRandomFile(_ path: String, bytes: Int64) throws {
        guard FileManager.default.createFile(atPath: path, contents: nil), let handle = FileHandle(forWritingAtPath: path),
            let random = FileHandle(forReadingAtPath: "/dev/urandom")
        else { throw ChangelabError("cannot create \(path)") }
        defer {
            try? handle.close()
            try? random.close()
        }
        var left = bytes
        while left > 0 {
            let chunk = try random.read(upToCount: Int(min(left, 1 << 20))) ?? Data()
            guard !chunk.isEmpty else { throw ChangelabError("/dev/urandom gave no bytes") }
            try handle.write(contentsOf: chunk)
            left -= Int64(chunk.count)
        }
    }
}

extension TestFleet {
    /// Bytes each host put on its bridge (`port sNhJ RX TX` of lab/fleet counters), by port name.
    public func portCounters() async throws -> [String: Int64] {
        var ports: [String: Int64] = [:]
        for line in try await fleet(["counters"]).stdoutText.split(separator: "\n") {
            let f = line.split(separator: " ")
            if f.first == "port", f.count >= 4, let rx = Int64(f[2]) { ports[String(f[1])] = rx }
        }
        return ports
    }
}

/// Waits until every receiver has said it joined its group (`multicast receive --ready-file`).
public enum MulticastReadiness {
    public static func wait(for files: [String], within timeout: Duration) async throws {
        let deadline = ContinuousClock.now + timeout
        while let missing = files.first(where: { !FileManager.default.fileExists(atPath: $0) }) {
            guard ContinuousClock.now < deadline else {
                throw ChangelabError(
                    "a multicast receiver did not join its group within \(Int(timeout.seconds)) s (no \(missing))",
                    fix: "check that the receivers start (their output names the problem) and that the machine is not overloaded")
            }
            try await Task.sleep(for: .milliseconds(50))
        }
    }
}
