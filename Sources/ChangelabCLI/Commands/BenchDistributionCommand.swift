import ArgumentParser
import Distribution
import Foundation
import Model

/// `changelab bench distribution` (a subcommand of `bench`, see BenchCommand.swift).
struct BenchDistributionCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "distribution",
        abstract: "Seed and activate a package across a namespace test fleet and report bytes and times per mode.",
        discussion: """
            Builds the fleet with lab/fleet (needs root), runs a core and the agents inside it, seeds a \
            package, activates it, and reports per mode: agents, segments, package_bytes, wan_bytes, \
            lan_bytes (from interface counters), seeding_seconds, activation_seconds, wan_ratio and \
            lan_ratio (bytes ÷ (package size × segments)). Everything is torn down afterwards.
            """)

    @Option(help: "Segments (bridges) in the fleet.")
    var segments = 10
    @Option(help: "Agents per segment.")
    var agents = 10
    @Option(
        help: "Network namespaces per segment the agents are spread over (default: one per agent; multicast modes need that).")
    var hosts: Int?
    @Option(
        help: ArgumentHelp(
            "Modes to run, each on a fresh fleet: unicast, multicast, multicast-loss-5, multicast-offline-20, or all.",
            valueName: "list"))
    var modes = "all"
    @Option(help: "Package size, e.g. 20M.")
    var size = "20M"
    @Option(help: "WAN rate limit (tc syntax), e.g. 1gbit.")
    var wanRate = "1gbit"
    @Option(
        parsing: .singleValue,
        help: ArgumentHelp("Random packet loss on a segment, e.g. 2=0.05 (repeatable).", valueName: "segment=p"))
    var loss: [String] = []
    @Option(help: "Installers each agent process runs at once (its identities share the machine's CPUs).")
    var parallelInstalls = 2
    @Option(help: "Seeding throttle per agent, e.g. 4M (default: none).")
    var rate: String?
    @Option(help: ArgumentHelp("Scratch folder (removed afterwards).", valueName: "dir"))
    var work: String?

    @OptionGroup var project: ProjectOptions
    @OptionGroup var output: OutputOptions

    func run() async throws {
        guard getuid() == 0 else {
            throw ChangelabError("the distribution bench builds network namespaces", fix: "run it as root")
        }
        guard let bytes = ByteCount.parse(size), bytes > 0 else {
            throw ValidationError("--size '\(size)' is not a size")
        }
        let hosts = self.hosts ?? agents
        let modes = try BenchMode.parse(modes)
        guard segments >= 1, agents >= 1, hosts >= 1, hosts <= agents else {
            throw ValidationError("--segments, --agents and --hosts must be at least 1, and --hosts at most --agents")
        }
        var losses: [Int: Double] = [:]
        for spec in loss {
            let parts = spec.split(separator: "=").map(String.init)
            guard parts.count == 2, let segment = Int(parts[0]), let p = Double(parts[1]),
                (1...segments).contains(segment),
                p >= 0, p < 1
            else { throw ValidationError("--loss '\(spec)' must be SEGMENT=PROBABILITY, e.g. 2=0.05") }
            losses[segment] = p
        }
        if modes.contains(where: \.usesMulticast) && hosts != agents {
            throw ValidationError(
                "multicast modes need one namespace per agent (--hosts \(agents)), so every frame crosses the bridge once; or give --modes unicast")
        }
        if modes.contains(.multicastOffline) && agents < 2 {
            throw ValidationError("multicast-offline-20 needs at least 2 agents per segment (one stays awake to wake the others)")
        }
        let (script, executable) = try fleetTools(project)
        let base = FileManager.default.fileExists(atPath: "/dev/shm") ? "/dev/shm" : "/tmp"
        var options = BenchOptions(
            workDirectory: work ?? "\(base)/changelab-bench-\(getpid())", executable: executable, fleetScript: script)
        options.segments = segments
        options.agentsPerSegment = agents
        options.hostsPerSegment = hosts
        options.packageBytes = Int(bytes)
        options.wanRate = wanRate
        options.loss = losses
        options.seedRate = try parseRate(rate)
        options.parallelInstalls = parallelInstalls
        options.modes = modes
        let report = try await DistributionBench.run(options) { note($0) }
        if output.json { return try printJSON(report) }
        for m in report.modes {
            print(
                "mode \(m.mode): \(m.agents) agents in \(m.segments) segments, package \(StatusText.bytes(m.packageBytes))"
            )
            print(
                String(
                    format: "  seeding    %.1f s   WAN %@ (ratio %.2f)   LAN %@ (ratio %.2f)", m.seedingSeconds,
                    StatusText.bytes(m.wanBytes), m.wanRatio, StatusText.bytes(m.lanBytes), m.lanRatio))
            print(
                String(
                    format: "  activation %.2f s   %d activated, %d failed   %@", m.activationSeconds, m.activated,
                    m.failed,
                    m.activationWithin5s ? "all within 5 s" : "NOT all within 5 s"))
            if let ratio = m.lanSegmentRatio {
                print(
                    String(
                        format: "  segments   lan_segment_ratio %.3f   feedback %@   fan-out %@", ratio,
                        StatusText.bytes(m.lanFeedbackBytes ?? 0),
                        m.activationFanoutSeconds.map { String(format: "%.2f s", $0) } ?? "-"))
                let payload = (m.payloadBytes ?? [:]).sorted { $0.key < $1.key }.map {
                    "\($0.key) \(StatusText.bytes($0.value))"
                }
                let served = (m.served ?? [:]).sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }
                print("  payload    \(payload.joined(separator: ", "))   served by: \(served.joined(separator: ", "))")
                if let offline = m.offlineAgents, offline > 0 {
                    print("  offline    \(offline) agents caught up; the core served them \(StatusText.bytes(m.offlineCoreBytes ?? 0))")
                }
            }
        }
    }
}

/// lab/fleet of the project and this executable: what the fleet benches run.
func fleetTools(_ project: ProjectOptions) throws -> (script: String, executable: String) {
    let script = try project.project().labDirectory + "/fleet"
    guard FileManager.default.isExecutableFile(atPath: script) else {
        throw ChangelabError("\(script) is missing", fix: "run from the changelab checkout or pass --root DIR")
    }
    let executable =
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    return (script, executable)
}
