import ArgumentParser
import Foundation
import Lab

struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Benchmarks whose figures the README quotes (run them on a quiet machine).",
        subcommands: [LabBench.self, BenchDistributionCommand.self]
    )

    struct LabBench: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "lab",
            abstract: "Restore-to-agent-ready (median of 10) against cold boot and internal-snapshot revert.")
        @OptionGroup var projectOptions: ProjectOptions
        @OptionGroup var output: OutputOptions
        @Option(help: "The baseline to measure (it must be built).")
        var baseline = "minimal"
        @Option(help: "How many restores to time.")
        var restores = 10
        @Option(help: "How many cold boots to time.")
        var coldBoots = 2
        @Option(help: "How many internal-snapshot reverts to time.")
        var reverts = 5

        func validate() throws {
            if restores < 1 || coldBoots < 1 || reverts < 1 { throw ValidationError("counts must be at least 1") }
        }

        func run() async throws {
            let lab = try Lab(project: try projectOptions.project(), progress: ConsoleProgress.handler())
            let report = try await LabBenchmark(lab: lab).run(
                baseline: baseline, restores: restores, coldBoots: coldBoots, reverts: reverts)
            if output.json { return try printJSON(report) }
            func row(_ name: String, _ timings: Timings) -> [String] {
                [name, String(format: "%.2f", timings.median), String(format: "%.2f", timings.min),
                 String(format: "%.2f", timings.max), "\(timings.samples.count)"]
            }
            var table = Table("TO AGENT READY (\(report.accelerator))", "MEDIAN S", "MIN S", "MAX S", "N")
            table.add(row("restore saved memory onto a fresh overlay", report.restore))
            table.add(row("revert internal snapshot", report.snapshotRevert))
            table.add(row("cold boot", report.coldBoot))
            table.print()
            print(
                String(
                    format: "restore is %.1fx faster than a cold boot; save image %.0f MB; snapshot create %.2f s",
                    report.speedup, Double(report.saveImageBytes) / 1e6, report.snapshotCreateSeconds))
            print(
                "targets: restore median <= \(Int(report.targets.restoreMedianAtMostSeconds)) s and >= \(Int(report.targets.speedupAtLeast))x faster: \(report.targets.met ? "met" : "NOT met")"
            )
        }
    }
}
