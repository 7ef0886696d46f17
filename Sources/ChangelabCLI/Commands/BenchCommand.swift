import ArgumentParser
import Foundation
import Lab

struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Benchmarks whose figures the README quotes (run them on a quiet machine).",
        subcommands: [LabBench.self, MatrixBench.self, CMDBBench.self, BenchDistributionCommand.self]
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

    struct MatrixBench: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "matrix",
            abstract: "Per-cell harness overhead and parallel speed-up, measured on one real matrix run.")
        @OptionGroup var projectOptions: ProjectOptions
        @OptionGroup var output: OutputOptions
        @Option(help: "The package to run.")
        var package = "greeterd"
        @Option(help: "Lanes, comma-separated.")
        var lanes = "install,reinstall,uninstall"
        @Option(help: "Baselines, comma-separated (default: every approved one).")
        var baselines: String?

        func run() async throws {
            let lab = try Lab(project: try projectOptions.project(), progress: ConsoleProgress.handler())
            let progress = MatrixProgress(quiet: false)
            let report = try await MatrixBenchmark(lab: lab).run(
                package: package, lanes: try MatrixLane.parseList(lanes),
                baselines: baselines.map { $0.split(separator: ",").map(String.init) } ?? []
            ) { progress.handle($0) }
            if output.json { return try printJSON(report) }
            func row(_ name: String, _ timings: Timings, percent: Bool = false) -> [String] {
                let format = percent ? "%.1f%%" : "%.2f"
                let scale = percent ? 100.0 : 1.0
                return [name, String(format: format, timings.median * scale), String(format: format, timings.min * scale),
                        String(format: format, timings.max * scale)]
            }
            var table = Table("PER CELL (\(report.cells) cells)", "MEDIAN", "MIN", "MAX")
            table.add(row("harness overhead share", report.overheadShare, percent: true))
            table.add(row("restore + clock (s)", report.restoreSeconds))
            table.add(row("upload (s)", report.uploadSeconds))
            table.add(row("discard (s)", report.discardSeconds))
            table.add(row("cell (s)", report.cellSeconds))
            table.print()
            print(String(format: "wall %.0f s for %.0f s of cells: speed-up %.2f on %d slots, %d cores", report.wallSeconds, report.sumOfCellSeconds, report.speedup, report.slots, report.cores))
            print(String(format: "targets: overhead <= 15%% of every cell, speed-up >= %.1f: %@", report.targets.speedupAtLeast, report.targets.met ? "met" : "NOT met"))
            if !report.allPassed { note("note: not every cell passed (see: changelab matrix show \(report.run))") }
        }
    }
}
