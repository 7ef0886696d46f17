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
        /// Installing the baseline version's adopted artifacts: the harness making the
        /// standard configuration, before the package under test.
        case prepare
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
    /// For the package's own steps, its tests and the standing suite: the seconds the guest
    /// measured its command running (its /proc/uptime before and after), without the
    /// agent's round trips or the settle wait. A reboot step counts whole, by the host's
    /// clock (the guest's uptime restarts). Nil when not measured (a command killed at its
    /// time-out, a harness step): such time counts as the harness's.
    public var guestSeconds: Double?

    public init(
        phase: Phase, name: String, status: Status, exitCode: Int32? = nil, seconds: Double, detail: String = "",
        guestSeconds: Double? = nil
    ) {
        self.phase = phase
        self.name = name
        self.status = status
        self.exitCode = exitCode
        self.seconds = seconds
        self.detail = detail
        self.guestSeconds = guestSeconds
    }
}

extension StepOutcome.Phase {
    /// The package's own steps, its tests and the baseline's standing suite: what a cell is
    /// for. Everything else in a cell is the harness.
    public var isWork: Bool {
        switch self {
        case .install, .upgradeFrom, .reinstall, .uninstall, .test, .regression: return true
        case .restore, .upload, .prepare, .prerequisites, .inventory, .policy, .residue, .discard: return false
        }
    }
}

/// Where a cell's time went, by the host's clock, with the raw timestamps of its slot.
///
/// The harness's share of a cell is not a sum of these named steps: it is everything in
/// the slot's wall time (`slotTakenAt` to `slotReleasedAt`) that was not the guest running
/// the package's own steps, its tests and the standing suite (see `CellResult.harnessShare`).
/// The named steps only say where that time went; `CellResult.unattributedHarnessSeconds`
/// is what none of them names.
public struct CellTimings: Codable, Sendable, Equatable {
    /// Restoring the slot's saved memory (or resuming a guest from the warm pool) until its
    /// agent answers.
    public var restore: Double = 0
    /// Setting the guest clock after the restore.
    public var clock: Double = 0
    /// Reading the slot's file listing (or recording it, once per slot).
    public var listing: Double = 0
    public var upload: Double = 0
    /// Uploading and installing the baseline version's adopted artifacts, and the inventory
    /// of that standard configuration the delta is measured from (zero on a bare image).
    public var preparation: Double = 0
    public var prerequisites: Double = 0
    /// The inventory after install and its delta from the baseline.
    public var inventory: Double = 0
    /// Waiting for the guest's systemd to settle after install and uninstall steps.
    public var settle: Double = 0
    /// Host seconds of the guest commands that ran the package's steps, its tests and the
    /// standing suite, round trips included; minus the guest-measured time, the round trips.
    public var workCommands: Double = 0
    public var discard: Double = 0
    /// From the start of the last attempt to its discard.
    public var total: Double = 0
    /// When the cell took its concurrency slot and gave it back: every attempt, the retry
    /// included, lies in between. Nil in runs recorded before these were kept.
    public var slotTakenAt: Date?
    public var slotReleasedAt: Date?
    /// The guest was resumed from the warm pool (restored ahead, paused), not restored.
    public var fromPool = false

    public init() {}

    private enum CodingKeys: String, CodingKey {
        case restore, clock, listing, upload, preparation, prerequisites, inventory, settle, workCommands, discard, total
        case slotTakenAt, slotReleasedAt, fromPool
    }

    /// Runs stored before a field existed read it as zero (or nil).
    public init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        func seconds(_ key: CodingKeys) throws -> Double { try container.decodeIfPresent(Double.self, forKey: key) ?? 0 }
        restore = try seconds(.restore)
        clock = try seconds(.clock)
        listing = try seconds(.listing)
        upload = try seconds(.upload)
        preparation = try seconds(.preparation)
        prerequisites = try seconds(.prerequisites)
        inventory = try seconds(.inventory)
        settle = try seconds(.settle)
        workCommands = try seconds(.workCommands)
        discard = try seconds(.discard)
        total = try seconds(.total)
        slotTakenAt = try container.decodeIfPresent(Date.self, forKey: .slotTakenAt)
        slotReleasedAt = try container.decodeIfPresent(Date.self, forKey: .slotReleasedAt)
        fromPool = try container.decodeIfPresent(Bool.self, forKey: .fromPool) ?? false
    }
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
    /// The inventory of the standard configuration the cell prepared (image + adopted
    /// artifacts), which its delta and residue are measured from; nil on a bare image.
    public var before: InventorySnapshot?
    /// The version installed first in the upgrade lane.
    public var upgradedFrom: String?
    /// A VM kept for debugging (`--keep-failed`).
    public var keptVM: String?

    public var passed: Bool { verdict == .pass }

    /// The guest-measured seconds of the package's own steps, its tests and the standing suite.
    public var workSeconds: Double {
        steps.filter(\.phase.isWork).reduce(0) { $0 + max(0, $1.guestSeconds ?? 0) }
    }

    /// The cell's wall time in its slot, from the raw timestamps (the last attempt's total
    /// for runs recorded before they were kept).
    public var slotSeconds: Double {
        if let taken = timings.slotTakenAt, let released = timings.slotReleasedAt, released > taken {
            return released.timeIntervalSince(taken)
        }
        return timings.total
    }

    /// Everything the harness added: 1 − work ÷ the slot's wall time, so a cost nobody
    /// named (a retry, scheduling, logging, a slot warmed on the way) still counts.
    public var harnessShare: Double {
        let wall = slotSeconds
        guard wall > 0 else { return 0 }
        return min(1, max(0, 1 - workSeconds / wall))
    }

    /// The harness's seconds: the slot's wall time less the guest's work.
    public var harnessSeconds: Double { max(0, slotSeconds - workSeconds) }

    /// Host time of the work commands beyond what the guest measured: the agent's round trips.
    public var roundTripSeconds: Double { max(0, timings.workCommands - workSeconds) }

    /// Harness time none of the named steps accounts for.
    public var unattributedHarnessSeconds: Double {
        let named = timings.restore + timings.clock + timings.listing + timings.upload + timings.preparation
            + timings.prerequisites
            + timings.inventory + timings.settle + roundTripSeconds + timings.discard
        return harnessSeconds - named
    }
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
        /// The baseline's standard configuration when its current CMDB version includes
        /// adoptions: what each cell installs before the package (nil: the bare image).
        public var standard: StandardConfiguration?
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
    public static func beforeInventoryPath(_ home: LabHome, _ id: String, _ cell: String) -> String {
        directory(home, id) + "/cells/\(cell).before.json"
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
