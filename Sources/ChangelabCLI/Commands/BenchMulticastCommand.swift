import ArgumentParser
import Distribution
import Foundation
import Model

/// `changelab bench multicast` (a subcommand of `bench`, see BenchCommand.swift).
struct BenchMulticastCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "multicast",
        abstract: "One segment alone: NORM multicast from one sender to N receivers, bytes from the bridge's counters.",
        discussion: """
            Builds a one-segment fleet with lab/fleet (needs root) in which the sender and every receiver \
            are namespaces of their own on the bridge, so each multicast frame crosses it once and loss is \
            independent per receiver. Reports seeding_seconds, sender_bytes (data, parity, repair, headers), \
            lan_feedback_bytes (NACKs, ACKs), lan_segment_ratio = (sender_bytes + lan_feedback_bytes) ÷ \
            package_bytes, and how many receivers verified every chunk against the manifest.
            """)

    @Option(help: "Receivers on the segment (one namespace each).")
    var receivers = 10
    @Option(help: "Package size, e.g. 20M.")
    var size = "20M"
    @Option(help: "Random loss on every receiver's input, e.g. 0.05.")
    var loss = 0.0
    @Option(help: "Sender rate in bytes per second, e.g. 12500000 or 10M.")
    var rate = "12500000"
    @Option(help: "Parity segments sent proactively with every block of 128.")
    var autoParity: UInt8 = 8
    @Flag(help: "Use NORM's congestion control (the rate becomes a ceiling).")
    var congestionControl = false
    @Option(help: "Fleet namespace prefix.")
    var prefix = "clm"
    @Option(help: ArgumentHelp("Scratch folder (removed afterwards).", valueName: "dir"))
    var work: String?

    @OptionGroup var project: ProjectOptions
    @OptionGroup var output: OutputOptions

    func run() async throws {
        guard getuid() == 0 else {
            throw ChangelabError("the multicast bench builds network namespaces", fix: "run it as root")
        }
        guard let bytes = ByteCount.parse(size), bytes > 0, bytes <= 4 << 30 else {
            throw ValidationError("--size '\(size)' is not a size up to 4G")
        }
        guard loss >= 0, loss < 1 else { throw ValidationError("--loss must be at least 0 and below 1") }
        let (script, executable) = try fleetTools(project)
        var options = MulticastBenchOptions(
            workDirectory: work ?? "/tmp/changelab-bench-multicast-\(getpid())", executable: executable,
            fleetScript: script)
        options.prefix = prefix
        options.receivers = receivers
        options.packageBytes = bytes
        options.loss = loss
        options.rate = try parseRate(rate) ?? options.rate
        options.autoParity = autoParity
        options.congestionControl = congestionControl
        let result = try await MulticastSegmentBench.run(options) { note($0) }
        if output.json { return try printJSON(result) }
        print(
            "multicast: \(result.receivers) receivers, package \(StatusText.bytes(result.packageBytes)), loss \(result.loss)")
        print(
            String(
                format: "  seeding %.2f s (%.1f Mbit/s)   %d of %d acknowledged in %d round(s), %d verified",
                result.seedingSeconds, result.goodputMbit, result.acknowledged, result.receivers, result.rounds,
                result.verified))
        print(
            String(
                format: "  sender %@   feedback %@   lan_segment_ratio %.3f", StatusText.bytes(result.senderBytes),
                StatusText.bytes(result.lanFeedbackBytes), result.lanSegmentRatio))
        if result.verified < result.receivers { throw ExitCode(3) }
    }
}
