import ArgumentParser
import Foundation
import HostIO
import Lab
import Model

struct MatrixCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "matrix",
        abstract: "Run a package across every approved baseline, one cell per lane, each from a fresh restore.",
        subcommands: [Run.self, Show.self, List.self]
    )

    /// `--junit FILE` and `--html FILE`.
    struct ReportFiles: ParsableArguments {
        @Option(help: "Write JUnit XML here.")
        var junit: String?
        @Option(help: "Write a self-contained HTML report here.")
        var html: String?
    }

    /// Writes the report files asked for and prints the table or JSON.
    static func report(_ run: MatrixRun, home: LabHome, json: Bool, files: ReportFiles) throws {
        let logs = MatrixReport.logs(run, home: home)
        if let junit = files.junit {
            try AtomicFile.write(MatrixReport.junit(run, logs: logs), to: junit)
            note("JUnit XML: \(junit)")
        }
        if let html = files.html {
            try AtomicFile.write(MatrixReport.html(run, logs: logs), to: html)
            note("HTML report: \(html)")
        }
        if json {
            try printJSON(run)
        } else {
            FileHandle.standardOutput.write(Data(MatrixReport.table(run).utf8))
        }
    }

    struct Run: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Test a package on every approved baseline (install, upgrade, reinstall, uninstall lanes).",
            discussion: """
                Each cell: restore → set the clock → prerequisites → upload the artifact → install steps \
                → inventory and delta (checked against the recipe's expected-delta policy) → the \
                package's tests → the baseline's standing regression suite → discard. The uninstall lane \
                uninstalls after the tests and reports any residue. Verdicts: PASS, FAIL (product), ERROR (infrastructure, after one retry on a \
                fresh restore), TIMEOUT. The run is recorded in the CMDB with its artifact digest and \
                the baselines' image digests. A baseline whose current CMDB version includes adoptions \
                (baseline adopt) is tested as that version: each cell installs its adopted artifacts \
                first (timed as preparation), checks the prerequisites after them, and measures the delta from there. Exit status 0 only when every cell passed.
                """)
        @OptionGroup var cmdbOptions: CMDBOptions
        @OptionGroup var output: OutputOptions
        @Argument(help: "The package (a folder under packages/).")
        var name: String
        @Option(help: "Baselines to test on, comma-separated (default: every approved one).")
        var baselines: String?
        @Option(help: "Cells at once (default: every slot of every lab host).")
        var parallel: Int?
        @Option(help: "Lanes, comma-separated: install,upgrade,reinstall,uninstall (default: all).")
        var lanes = "install,upgrade,reinstall,uninstall"
        @Flag(help: "Keep the VM of every failed cell running, for debugging.")
        var keepFailed = false
        @Option(help: "Run only the unfinished cells of this earlier run.")
        var resume: String?
        @OptionGroup var reports: MatrixCommand.ReportFiles
        @Flag(help: "Do not record the run in the CMDB.")
        var noRecord = false
        @OptionGroup var paths: MatrixPathOptions

        func validate() throws {
            if let parallel, parallel < 1 { throw ValidationError("--parallel must be at least 1") }
        }

        func run() async throws {
            let project = try cmdbOptions.projectOptions.project()
            let progress = MatrixProgress(quiet: false)
            let lab = try Lab(project: project, progress: ConsoleProgress.handler())
            let runner = MatrixRunner(lab: lab) { progress.handle($0) }
            var options = MatrixRunner.Options()
            options.baselines = baselines.map { $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } } ?? []
            options.lanes = try MatrixLane.parseList(lanes)
            options.parallel = parallel
            options.keepFailed = keepFailed
            options.fullInventory = paths.fullInventory
            options.testPerCommand = paths.testPerCommand
            options.warmPool = !paths.noWarmPool
            options.cmdb = noRecord ? nil : try cmdbOptions.path()
            options.standardFrom = try cmdbOptions.path()
            let result: MatrixRun
            if let resume {
                let earlier = try MatrixRun.load(home: lab.home, id: resume)
                guard earlier.package == name else {
                    throw ChangelabError(
                        "run \(resume) tested \(earlier.package), not \(name)", fix: "changelab matrix run \(earlier.package) --resume \(resume)")
                }
                result = try await runner.resume(resume, options: options)
            } else {
                result = try await runner.run(package: name, options: options)
            }
            progress.finish(result)
            try MatrixCommand.report(result, home: lab.home, json: output.json, files: reports)
            if let recorded = options.cmdb { note("recorded in the CMDB at \(recorded) as run \(result.id)") }
            if !result.allPassed { throw ExitCode(1) }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show an earlier run (and write its reports again).")
        @OptionGroup var projectOptions: ProjectOptions
        @OptionGroup var output: OutputOptions
        @Argument(help: "The run id (see: changelab matrix list).")
        var id: String
        @OptionGroup var reports: MatrixCommand.ReportFiles

        func run() async throws {
            let lab = try Lab(project: try projectOptions.project())
            let run = try MatrixRun.load(home: lab.home, id: id)
            try MatrixCommand.report(run, home: lab.home, json: output.json, files: reports)
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List matrix runs, newest first.")
        @OptionGroup var projectOptions: ProjectOptions
        @OptionGroup var output: OutputOptions

        struct Row: Codable {
            var id: String
            var package: String
            var version: String
            var artifact: String
            var status: String
            var passed: Int
            var cells: Int
            var startedAt: Date
        }

        func run() async throws {
            let lab = try Lab(project: try projectOptions.project())
            let ids = (try? FileManager.default.contentsOfDirectory(atPath: lab.home.root + "/runs")) ?? []
            let runs = ids.compactMap { try? MatrixRun.load(home: lab.home, id: $0) }.sorted { $0.startedAt > $1.startedAt }
            let rows = runs.map {
                Row(
                    id: $0.id, package: $0.package, version: $0.version, artifact: $0.artifact.description,
                    status: $0.status == .finished ? ($0.allPassed ? "passed" : "failed") : "unfinished",
                    passed: $0.count(.pass), cells: $0.cells.count, startedAt: $0.startedAt)
            }
            if output.json { return try printJSON(rows) }
            var table = Table("RUN", "PACKAGE", "VERSION", "ARTIFACT", "STATUS", "PASSED", "AGE")
            for row in rows {
                table.add(
                    row.id, row.package, row.version, SHA256Digest(hex: row.artifact)?.short ?? "?", row.status,
                    "\(row.passed)/\(row.cells)", age(since: row.startedAt))
            }
            table.print()
        }
    }
}

/// Live progress on stderr: a line per cell start and end, and the counts.
final class MatrixProgress: @unchecked Sendable {
    // @unchecked: guarded by `lock`.
    private let lock = NSLock()
    private let start = Date()
    private var total = 0
    private var running = Set<String>()
    private var done: [CellVerdict: Int] = [:]
    private var ticker: Task<Void, Never>?
    let quiet: Bool

    init(quiet: Bool) {
        self.quiet = quiet
    }

    func handle(_ event: MatrixEvent) {
        lock.lock()
        defer { lock.unlock() }
        switch event {
        case .planned(let run):
            total = run.unfinished.count
            line("run \(run.id): \(run.package) \(run.version) (\(run.artifact.short)) on \(run.baselines.map(\.name).joined(separator: ", ")); \(total) cells")
            ticker = Task { [weak self] in
                while !Task.isCancelled {
                    try? await Task.sleep(for: .seconds(20))
                    self?.tick()
                }
            }
        case .cellStarted(let plan, let attempt):
            running.insert(plan.id)
            line("▶ \(plan.id)\(attempt > 1 ? " (attempt \(attempt), on a fresh restore)" : "")  \(counts)")
        case .cellFinished(let result):
            running.remove(result.id)
            done[result.verdict, default: 0] += 1
            let mark = result.passed ? "✔" : "✘"
            let why = result.passed ? "" : ": \(result.reason)"
            line("\(mark) \(result.id) \(MatrixReport.verdictLabelText(result.verdict)) in \(Int(result.timings.total.rounded())) s\(why)  \(counts)")
        case .note(let text):
            line(text)
        case .warmPoolClosed(let restored, _):
            if !restored.isEmpty { line("warm pool: closed; \(restored.count) guests restored ahead, none left running") }
        }
    }

    private func tick() {
        lock.lock()
        defer { lock.unlock() }
        if !running.isEmpty { line("… running \(running.sorted().joined(separator: ", "))  \(counts)") }
    }

    func finish(_ run: MatrixRun) {
        lock.lock()
        ticker?.cancel()
        lock.unlock()
    }

    private var counts: String {
        let finished = done.values.reduce(0, +)
        return "[queued \(max(0, total - finished - running.count)) running \(running.count) passed \(done[.pass] ?? 0) "
            + "failed \((done[.fail] ?? 0) + (done[.timeout] ?? 0)) error \(done[.error] ?? 0), \(elapsed)]"
    }

    private var elapsed: String {
        let seconds = Int(Date().timeIntervalSince(start))
        return String(format: "%d:%02d", seconds / 60, seconds % 60)
    }

    private func line(_ text: String) {
        guard !quiet else { return }
        note("[matrix] \(text)")
    }
}
