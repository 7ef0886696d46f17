import Foundation
import HostIO
import Model

/// What a matrix cell does with the package on its baseline.
public enum MatrixLane: String, Codable, Sendable, CaseIterable, Comparable {
    /// Clean install on the pristine baseline.
    case install
    /// Install the newest earlier release first, then this version over it.
    case upgrade
    /// Install twice: the second install must be harmless.
    case reinstall
    /// Install, then uninstall: the configuration must return to the baseline.
    case uninstall

    public static func < (lhs: MatrixLane, rhs: MatrixLane) -> Bool {
        allCases.firstIndex(of: lhs) ?? 0 < allCases.firstIndex(of: rhs) ?? 0
    }

    /// Parses `install,upgrade`; unknown names are an error naming the known ones.
    public static func parseList(_ text: String) throws -> [MatrixLane] {
        let names = text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        guard !names.isEmpty else { throw ChangelabError("no lanes given", fix: "pass --lanes install,upgrade,reinstall,uninstall") }
        return try names.map { name in
            guard let lane = MatrixLane(rawValue: name) else {
                throw ChangelabError(
                    "unknown lane '\(name)'", fix: "use some of: \(allCases.map(\.rawValue).joined(separator: ","))")
            }
            return lane
        }
    }
}

/// How a cell ended.
public enum CellVerdict: String, Codable, Sendable {
    /// Everything passed.
    case pass
    /// The product failed: a prerequisite, an install step, the package's tests, a
    /// baseline's standing regression test, an unexpected configuration change, residue.
    case fail
    /// The infrastructure failed (VM, agent, host), twice: not the product's fault.
    case error
    /// A step or a reboot ran past its time-out.
    case timeout
}

/// One step of a cell: restoring, uploading, a prerequisite check, an install step, a test…
public struct StepOutcome: Codable, Sendable, Equatable {
    public enum Phase: String, Codable, Sendable {
        case restore, upload, prerequisites, install, upgradeFrom = "upgrade-from", reinstall, test, regression, inventory
        case policy, uninstall, residue, discard
    }

    public enum Status: String, Codable, Sendable {
        case passed, failed, timedOut = "timed-out", error, skipped
    }

    public var phase: Phase
    public var name: String
    public var status: Status
    public var exitCode: Int32?
    public var seconds: Double
    /// The last lines of the step's output, or what went wrong.
    public var detail: String

    public init(phase: Phase, name: String, status: Status, exitCode: Int32? = nil, seconds: Double, detail: String = "") {
        self.phase = phase
        self.name = name
        self.status = status
        self.exitCode = exitCode
        self.seconds = seconds
        self.detail = detail
    }
}

/// Where a cell's time went: the harness overhead (restore with clock, upload, discard)
/// against the work itself.
public struct CellTimings: Codable, Sendable, Equatable {
    public var restore: Double = 0
    public var upload: Double = 0
    public var discard: Double = 0
    public var total: Double = 0

    public init() {}

    public var overhead: Double { restore + upload + discard }
}

/// The outcome of one cell: a lane of the package on one baseline.
public struct CellResult: Codable, Sendable, Equatable {
    public var id: String
    public var baseline: String
    public var lane: MatrixLane
    public var host: String
    public var verdict: CellVerdict
    /// Why it is not a pass, in one line; empty for a pass.
    public var reason: String
    public var attempts: Int
    public var startedAt: Date
    public var timings: CellTimings
    public var steps: [StepOutcome]
    /// Baseline → after install (after the last install for reinstall and upgrade).
    public var delta: ConfigurationDelta?
    /// Baseline → after uninstall (the uninstall lane): what the package left behind.
    public var residue: ConfigurationDelta?
    public var violations: [PolicyViolation]
    /// The inventory after install, kept for the CMDB.
    public var after: InventorySnapshot?
    /// The version installed first in the upgrade lane.
    public var upgradedFrom: String?
    /// A VM kept for debugging (`--keep-failed`).
    public var keptVM: String?

    public var passed: Bool { verdict == .pass }
}

/// The plan of one cell.
public struct CellPlan: Codable, Sendable, Equatable, Hashable {
    public var baseline: String
    public var lane: MatrixLane
    public var id: String { "\(baseline).\(lane.rawValue)" }

    public init(baseline: String, lane: MatrixLane) {
        self.baseline = baseline
        self.lane = lane
    }
}

/// A matrix run, persisted in `$CHANGELAB_HOME/runs/<id>/run.json` after every cell, so a
/// killed run can be resumed and every run is evidence tied to an artifact digest and
/// the image digests of its baselines.
public struct MatrixRun: Codable, Sendable, Equatable {
    public static let formatVersion = 1

    public struct BaselineUnderTest: Codable, Sendable, Equatable {
        public var name: String
        public var imageDigest: SHA256Digest
        public var recipeDigest: SHA256Digest
        /// The CMDB version of the baseline the cells started from, once recorded.
        public var cmdbVersion: Int?
    }

    public enum Status: String, Codable, Sendable {
        case running, finished
    }

    public var format: Int
    public var id: String
    public var package: String
    public var version: String
    public var artifact: SHA256Digest
    public var baselines: [BaselineUnderTest]
    public var lanes: [MatrixLane]
    public var cells: [CellPlan]
    /// Lanes left out, and why (no earlier release to upgrade from).
    public var notes: [String]
    public var results: [String: CellResult]
    public var startedAt: Date
    public var finishedAt: Date?
    public var status: Status
    /// Wall-clock seconds from the first cell to the last (summed over sessions when resumed).
    public var wallSeconds: Double

    /// Cells with no final result yet: what `--resume` runs.
    public var unfinished: [CellPlan] { cells.filter { results[$0.id] == nil } }
    public var allPassed: Bool { !cells.isEmpty && cells.allSatisfy { results[$0.id]?.passed == true } }

    public func count(_ verdict: CellVerdict) -> Int { results.values.filter { $0.verdict == verdict }.count }

    public static func directory(_ home: LabHome, _ id: String) -> String { "\(home.root)/runs/\(id)" }
    public static func cellLogPath(_ home: LabHome, _ id: String, _ cell: String) -> String {
        directory(home, id) + "/cells/\(cell).log"
    }
    public static func afterInventoryPath(_ home: LabHome, _ id: String, _ cell: String) -> String {
        directory(home, id) + "/cells/\(cell).after.json"
    }

    public func save(home: LabHome) throws {
        try AtomicFile.write(try StableJSON.data(self), to: Self.directory(home, id) + "/run.json")
    }

    public static func load(home: LabHome, id: String) throws -> MatrixRun {
        let path = directory(home, id) + "/run.json"
        guard let data = FileManager.default.contents(atPath: path) else {
            let runs = (try? FileManager.default.contentsOfDirectory(atPath: home.root + "/runs")) ?? []
            throw ChangelabError(
                "there is no matrix run '\(id)'",
                fix: runs.isEmpty ? "start one: changelab matrix run PACKAGE" : "recent runs: \(runs.sorted().suffix(5).joined(separator: ", "))")
        }
        let run: MatrixRun
        do {
            run = try StableJSON.decode(MatrixRun.self, from: data)
        } catch {
            throw ChangelabError("\(path) is not a readable run record", why: "\(error)")
        }
        guard run.format <= formatVersion else {
            throw ChangelabError("run \(id) was written by a newer changelab (format \(run.format))", fix: "upgrade changelab")
        }
        return run
    }
}
