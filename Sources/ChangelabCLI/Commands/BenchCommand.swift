import ArgumentParser
import Foundation
import Lab

struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Benchmarks whose figures the README quotes (run them on a quiet machine).",
        subcommands: [
            LabBench.self, MatrixBench.self, CMDBBench.self, BenchDistributionCommand.self, BenchMulticastCommand.self,
        ]
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
            abstract: "Per-cell harness share and steps, and parallel speed-up, measured on real matrix runs.",
            discussion: """
                The harness share of a cell is 1 - (the guest-measured time of the package's own steps, its tests \
                and the standing suite) / (the cell's wall time from taking its slot to releasing it). \
                --compare-old runs the new path, then the old one (--full-inventory --test-per-command \
                --no-warm-pool), \
                in this one invocation, and compares their wall times. Then it times a trivial guest command \
                (true) on a fresh restore, through exec (output files, process group) and capture.
                """)
        @OptionGroup var projectOptions: ProjectOptions
        @OptionGroup var output: OutputOptions
        @Option(help: "The package to run.")
        var package = "greeterd"
        @Option(help: "Lanes, comma-separated.")
        var lanes = "install,reinstall,uninstall"
        @Option(help: "Baselines, comma-separated (default: every approved one).")
        var baselines: String?
        @Option(help: "Cells at once (default: every slot of every lab host).")
        var parallel: Int?
        @OptionGroup var paths: MatrixPathOptions
        @Flag(help: "Run the new path, then the old one (--full-inventory --test-per-command --no-warm-pool), and compare.")
        var compareOld = false

        func validate() throws {
            if let parallel, parallel < 1 { throw ValidationError("--parallel must be at least 1") }
            if compareOld && !paths.isNew {
                throw ValidationError(
                    "--compare-old runs both paths itself: leave out --full-inventory, --test-per-command and --no-warm-pool")
            }
        }

        func run() async throws {
            let lab = try Lab(project: try projectOptions.project(), progress: ConsoleProgress.handler())
            let progress = MatrixProgress(quiet: false)
            let measured: [MatrixBenchmark.Path] = compareOld ? [.new, .old] : [paths.path]
            let comparison = try await MatrixBenchmark(lab: lab).run(
                package: package, lanes: try MatrixLane.parseList(lanes),
                baselines: baselines.map { $0.split(separator: ",").map(String.init) } ?? [], paths: measured,
                parallel: parallel
            ) { progress.handle($0) }
            if output.json { return try printJSON(comparison) }
            if let trip = comparison.roundTrip {
                Swift.print(
                    String(
                        format: "trivial guest command (true) on %@, host clock: exec %.3f s median (%.3f–%.3f), capture %.3f s; target exec <= %.1f s: %@\n",
                        trip.baseline, trip.exec.median, trip.exec.min, trip.exec.max, trip.capture.median, trip.atMostSeconds,
                        trip.met ? "met" : "NOT met"))
            }
            for report in comparison.runs { Self.print(report) }
            if let speedup = comparison.wallSpeedup, let new = comparison.runs.first(where: { $0.path == .new }),
                let old = comparison.runs.first(where: { $0.path == .old })
            {
                Swift.print(
                    String(
                        format: "old wall %.0f s, new wall %.0f s: %.2fx faster (target >= %.1fx: %@)", old.wallSeconds,
                        new.wallSeconds, speedup, comparison.wallSpeedupAtLeast,
                        speedup >= comparison.wallSpeedupAtLeast ? "met" : "NOT met"))
            }
            if !comparison.allPassed { note("note: not every cell passed (see: changelab matrix show RUN)") }
        }

        static func print(_ report: MatrixBenchmark.Report) {
            func row(_ name: String, _ timings: Timings, percent: Bool = false) -> [String] {
                let format = percent ? "%.1f%%" : "%.2f"
                let scale = percent ? 100.0 : 1.0
                return [name, String(format: format, timings.median * scale), String(format: format, timings.min * scale),
                        String(format: format, timings.max * scale)]
            }
            Swift.print("\(report.path.name) path: run \(report.run)")
            var table = Table("PER CELL (\(report.cells) cells)", "MEDIAN", "MIN", "MAX")
            table.add(row("harness share", report.harnessShare, percent: true))
            table.add(row("cell in its slot (s)", report.cellSeconds))
            table.add(row("guest work (s)", report.workSeconds))
            table.add(row("harness (s)", report.harnessSeconds))
            table.add(row("  restore/resume (s)", report.steps.restore))
            table.add(row("  clock (s)", report.steps.clock))
            table.add(row("  slot listing (s)", report.steps.listing))
            table.add(row("  upload (s)", report.steps.upload))
            table.add(row("  prerequisites (s)", report.steps.prerequisites))
            table.add(row("  inventory and delta (s)", report.steps.inventory))
            table.add(row("  settle (s)", report.steps.settle))
            table.add(row("  guest round trips (s)", report.steps.roundTrips))
            table.add(row("  discard (s)", report.steps.discard))
            table.add(row("  unattributed (s)", report.steps.unattributed))
            table.print()
            let load = report.loadAtStart.map { String(format: "%.2f", $0) }.joined(separator: " ")
            Swift.print(
                String(
                    format: "wall %.0f s for %.0f s of cells: speed-up %.2f on %d slots, %d cores; %d cells from the warm pool; load average at start %@",
                    report.wallSeconds, report.sumOfCellSeconds, report.speedup, report.slots, report.cores,
                    report.cellsFromPool, load))
            let targets = report.targets
            Swift.print(
                String(
                    format: "targets: share <= %.0f%% median and <= %.0f%% worst, inventory <= %.0f s median, speed-up >= %.1f: %@\n",
                    targets.shareMedianAtMost * 100, targets.shareWorstAtMost * 100, targets.inventoryMedianAtMostSeconds,
                    targets.speedupAtLeast, targets.met ? "met" : "NOT met"))
        }
    }
}
