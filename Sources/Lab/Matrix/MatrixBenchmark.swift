import Foundation
import Model

/// `changelab bench matrix`: what the harness costs each cell, and how well cells run in
/// parallel, measured on one real run.
public struct MatrixBenchmark: Sendable {
    public struct Report: Codable, Sendable {
        public var run: String
        public var package: String
        public var cells: Int
        public var slots: Int
        public var cores: Int
        /// Per cell: (restore with clock + upload + discard) ÷ the cell's time.
        public var overheadShare: Timings
        public var restoreSeconds: Timings
        public var uploadSeconds: Timings
        public var discardSeconds: Timings
        public var cellSeconds: Timings
        public var sumOfCellSeconds: Double
        public var wallSeconds: Double
        /// Sum of the cells' times ÷ the matrix's wall time.
        public var speedup: Double
        public var targets: Targets
        public var allPassed: Bool
    }

    public struct Targets: Codable, Sendable {
        public var overheadShareAtMost: Double
        public var speedupAtLeast: Double
        public var met: Bool
    }

    public let lab: Lab

    public init(lab: Lab) {
        self.lab = lab
    }

    public func run(package: String, lanes: [MatrixLane], baselines: [String], events: @escaping @Sendable (MatrixEvent) -> Void)
        async throws -> Report
    {
        var options = MatrixRunner.Options()
        options.lanes = lanes
        options.baselines = baselines
        let run = try await MatrixRunner(lab: lab, events: events).run(package: package, options: options)
        return Self.report(run, slots: lab.hosts.totalSlots, cores: ProcessInfo.processInfo.activeProcessorCount)
    }

    /// The figures of a finished run.
    public static func report(_ run: MatrixRun, slots: Int, cores: Int) -> Report {
        let results = run.cells.compactMap { run.results[$0.id] }.filter { $0.timings.total > 0 }
        let shares = results.map { $0.timings.overhead / $0.timings.total }
        let sum = results.reduce(0) { $0 + $1.timings.total }
        let speedup = run.wallSeconds > 0 ? sum / run.wallSeconds : 0
        let overhead = Timings(shares)
        let targetSpeedup = 0.8 * Double(min(cores, slots))
        return Report(
            run: run.id, package: run.package, cells: results.count, slots: slots, cores: cores, overheadShare: overhead,
            restoreSeconds: Timings(results.map(\.timings.restore)), uploadSeconds: Timings(results.map(\.timings.upload)),
            discardSeconds: Timings(results.map(\.timings.discard)), cellSeconds: Timings(results.map(\.timings.total)),
            sumOfCellSeconds: sum, wallSeconds: run.wallSeconds, speedup: speedup,
            targets: Targets(
                overheadShareAtMost: 0.15, speedupAtLeast: targetSpeedup,
                met: overhead.max <= 0.15 && speedup >= targetSpeedup),
            allPassed: run.allPassed)
    }
}
