import Foundation
import Model

/// `changelab bench matrix`: what the harness costs each cell, and how well cells run in
/// parallel, measured on real runs — the old path and the new one in one invocation when
/// asked, so both are measured on the same machine under the same load.
///
/// The harness share counts everything: 1 − (the guest-measured time of the package's own
/// steps, its tests and the standing suite) ÷ (the cell's wall time from taking its slot to
/// releasing it). The named steps say where the harness's time went; what none of them
/// names is reported as "unattributed", never left out.
public struct MatrixBenchmark: Sendable {
    /// Which code path a run took.
    public struct Path: Codable, Sendable, Equatable {
        public var fullInventory: Bool
        public var testPerCommand: Bool
        public var warmPool: Bool

        public init(fullInventory: Bool, testPerCommand: Bool, warmPool: Bool) {
            self.fullInventory = fullInventory
            self.testPerCommand = testPerCommand
            self.warmPool = warmPool
        }

        /// Everything issue 12 built.
        public static let new = Path(fullInventory: false, testPerCommand: false, warmPool: true)
        /// The matrix as it was before: full inventory, a guest command per test, no pool.
        public static let old = Path(fullInventory: true, testPerCommand: true, warmPool: false)

        public var name: String {
            if self == .new { return "new" }
            if self == .old { return "old (--full-inventory --test-per-command --no-warm-pool)" }
            let flags = [fullInventory ? "--full-inventory" : nil, testPerCommand ? "--test-per-command" : nil,
                         warmPool ? nil : "--no-warm-pool"].compactMap { $0 }
            return flags.joined(separator: " ")
        }
    }

    /// Per-cell seconds of each harness step (host clock).
    public struct Steps: Codable, Sendable {
        public var restore: Timings
        public var clock: Timings
        public var listing: Timings
        public var upload: Timings
        public var prerequisites: Timings
        public var inventory: Timings
        public var settle: Timings
        public var roundTrips: Timings
        public var discard: Timings
        /// Harness time no named step accounts for.
        public var unattributed: Timings
    }

    public struct Report: Codable, Sendable {
        public var run: String
        public var package: String
        public var path: Path
        public var cells: Int
        public var slots: Int
        public var cores: Int
        /// Per cell: 1 − guest work ÷ the slot's wall time.
        public var harnessShare: Timings
        public var harnessSeconds: Timings
        public var steps: Steps
        /// Per cell: the guest-measured seconds of the package's steps, its tests and the suite.
        public var workSeconds: Timings
        /// Per cell: taking the slot to releasing it.
        public var cellSeconds: Timings
        public var cellsFromPool: Int
        public var sumOfCellSeconds: Double
        public var wallSeconds: Double
        /// Sum of the cells' times ÷ the matrix's wall time.
        public var speedup: Double
        public var targets: Targets
        public var allPassed: Bool
        /// /proc/loadavg (1, 5, 15 minutes) when the run started and when it ended.
        public var loadAtStart: [Double] = []
        public var loadAtEnd: [Double] = []
    }

    public struct Targets: Codable, Sendable {
        public var shareMedianAtMost: Double
        public var shareWorstAtMost: Double
        public var inventoryMedianAtMostSeconds: Double
        public var speedupAtLeast: Double
        public var met: Bool
    }

    /// A trivial guest command's round trip, host clock, on a fresh restore after the runs:
    /// `true` through `exec` (output files, process group: what every step and suite pays)
    /// and through `capture` (qemu-ga keeps the output: housekeeping commands).
    public struct RoundTrip: Codable, Sendable {
        public var baseline: String
        public var exec: Timings
        public var capture: Timings
        public var atMostSeconds: Double
        public var met: Bool
    }

    /// The new path and (with `--compare-old`) the old one, run back to back in one invocation.
    public struct Comparison: Codable, Sendable {
        public var roundTrip: RoundTrip?
        public var runs: [Report]
        /// Old wall time ÷ new wall time (nil without an old run).
        public var wallSpeedup: Double?
        public var wallSpeedupAtLeast: Double
        public var allPassed: Bool
    }

    public let lab: Lab

    public init(lab: Lab) {
        self.lab = lab
    }

    public func run(
        package: String, lanes: [MatrixLane], baselines: [String], paths: [Path], parallel: Int? = nil,
        events: @escaping @Sendable (MatrixEvent) -> Void
    ) async throws -> Comparison {
        var reports: [Report] = []
        for path in paths {
            var options = MatrixRunner.Options()
            options.lanes = lanes
            options.baselines = baselines
            options.parallel = parallel
            options.fullInventory = path.fullInventory
            options.testPerCommand = path.testPerCommand
            options.warmPool = path.warmPool
            events(.note("bench: running the \(path.name) path"))
            let load = Self.loadAverage()
            let run = try await MatrixRunner(lab: lab, events: events).run(package: package, options: options)
            var report = Self.report(
                run, path: path, slots: min(parallel ?? lab.hosts.totalSlots, lab.hosts.totalSlots),
                cores: ProcessInfo.processInfo.activeProcessorCount)
            report.loadAtStart = load
            report.loadAtEnd = Self.loadAverage()
            reports.append(report)
        }
        var comparison = Self.compare(reports)
        // After the runs: the matrix has built any image that was missing.
        comparison.roundTrip = try await measureRoundTrip(baseline: baselines.first, events: events)
        return comparison
    }

    /// Times `true` in a fresh restore of `baseline` (the first approved one by default),
    /// 15 times each way after one warm-up.
    func measureRoundTrip(baseline: String?, events: @escaping @Sendable (MatrixEvent) -> Void) async throws -> RoundTrip {
        let name = try baseline ?? lab.baselines.loadAll().first(where: \.approved)?.name ?? "minimal"
        events(.note("bench: timing a trivial guest command on a fresh restore of \(name)"))
        let (exec, capture) = try await lab.withRestored(try lab.readyImage(name)) { guest in
            var exec: [Double] = []
            var capture: [Double] = []
            _ = try await guest.agent.exec(["true"])
            for _ in 0..<15 {
                let started = ContinuousClock.now
                _ = try await guest.agent.exec(["true"])
                exec.append(started.secondsSince)
                let captured = ContinuousClock.now
                _ = try await guest.agent.capture(["true"])
                capture.append(captured.secondsSince)
            }
            return (Timings(exec), Timings(capture))
        }
        return RoundTrip(baseline: name, exec: exec, capture: capture, atMostSeconds: 0.1, met: exec.median <= 0.1)
    }

    static func compare(_ reports: [Report]) -> Comparison {
        let new = reports.first { $0.path == .new }
        let old = reports.first { $0.path == .old }
        var speedup: Double?
        if let new, let old, new.wallSeconds > 0 { speedup = old.wallSeconds / new.wallSeconds }
        return Comparison(
            roundTrip: nil, runs: reports, wallSpeedup: speedup, wallSpeedupAtLeast: 1.5, allPassed: reports.allSatisfy(\.allPassed))
    }

    /// The figures of a finished run.
    public static func report(_ run: MatrixRun, path: Path = .new, slots: Int, cores: Int) -> Report {
        let results = run.cells.compactMap { run.results[$0.id] }.filter { $0.slotSeconds > 0 }
        let shares = Timings(results.map(\.harnessShare))
        let sum = results.reduce(0) { $0 + $1.slotSeconds }
        let speedup = run.wallSeconds > 0 ? sum / run.wallSeconds : 0
        func per(_ value: (CellResult) -> Double) -> Timings { Timings(results.map(value)) }
        let steps = Steps(
            restore: per(\.timings.restore), clock: per(\.timings.clock), listing: per(\.timings.listing),
            upload: per(\.timings.upload), prerequisites: per(\.timings.prerequisites),
            inventory: per(\.timings.inventory), settle: per(\.timings.settle), roundTrips: per(\.roundTripSeconds),
            discard: per(\.timings.discard), unattributed: per(\.unattributedHarnessSeconds))
        let targetSpeedup = 0.8 * Double(min(cores, slots))
        let targets = Targets(
            shareMedianAtMost: 0.10, shareWorstAtMost: 0.15, inventoryMedianAtMostSeconds: 2, speedupAtLeast: targetSpeedup,
            met: !results.isEmpty && shares.median <= 0.10 && shares.max <= 0.15 && steps.inventory.median <= 2
                && speedup >= targetSpeedup)
        return Report(
            run: run.id, package: run.package, path: path, cells: results.count, slots: slots, cores: cores,
            harnessShare: shares, harnessSeconds: per(\.harnessSeconds), steps: steps, workSeconds: per(\.workSeconds),
            cellSeconds: per(\.slotSeconds), cellsFromPool: results.filter(\.timings.fromPool).count,
            sumOfCellSeconds: sum, wallSeconds: run.wallSeconds, speedup: speedup, targets: targets,
            allPassed: run.allPassed)
    }

    /// The host's 1, 5 and 15 minute load averages (other work on the machine skews every figure).
    static func loadAverage() -> [Double] {
        guard let text = try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8) else { return [] }
        return text.split(separator: " ").prefix(3).compactMap { Double($0) }
    }
}
