import Foundation
import Model

/// The operations the lab, the matrix and the fleet record, each one transaction.
extension CMDBWriter {
    /// Stores an inventory (once; it is named by its content) and returns its digest.
    @discardableResult
    public func record(inventory snapshot: InventorySnapshot) async throws -> SHA256Digest {
        var digest = SHA256Digest(of: "")
        try await transaction("record inventory", operation: "record-inventory") {
            digest = try $0.put(inventory: snapshot)
        }
        return digest
    }

    /// Records a built baseline: a new version when the inventory, image or recipe differs
    /// from the newest *built* version, else that built version unchanged.
    ///
    /// Comparing with the newest built version (not the newest version) matters after an
    /// adoption: the lab image has not changed, and recording it again must not add a
    /// version that silently drops the adopted change from the standard configuration.
    @discardableResult
    public func recordBuiltBaseline(
        name: String, inventory snapshot: InventorySnapshot, recipeDigest: SHA256Digest? = nil,
        imageDigest: SHA256Digest? = nil, notes: String? = nil, at date: Date = Date()
    ) async throws -> BaselineVersionRecord {
        let date = wholeSeconds(date)
        let versions = (try? store.baselineVersions(name)) ?? []
        let latest = versions.last
        let digest = InventoryRecord(snapshot).digest
        if let built = versions.last(where: { $0.origin == .built }), built.inventory == digest,
            built.imageDigest == imageDigest, built.recipeDigest == recipeDigest
        {
            return built
        }
        let version = (latest?.version ?? 0) + 1
        let record = BaselineVersionRecord(
            name: name, version: version, recordedAt: date, origin: .built, recipeDigest: recipeDigest,
            imageDigest: imageDigest, inventory: digest, previousVersion: latest?.version, notes: notes)
        try await recordNewVersion(record, snapshot, "record baseline \(record.ref) (built)", "record-baseline")
        return record
    }

    /// Commits a new baseline version with its inventory, refusing to replace a version
    /// another writer recorded since the caller looked.
    private func recordNewVersion(
        _ record: BaselineVersionRecord, _ snapshot: InventorySnapshot, _ message: String, _ operation: String
    ) async throws {
        try await transaction(message, operation: operation) { tx in
            try tx.put(inventory: snapshot)
            guard !tx.exists(record.reference) else {
                throw ChangelabError(
                    "\(record.reference) was recorded by another writer meanwhile", fix: "run the command again")
            }
            try tx.put(record)
        }
    }

    /// Records a new version of a baseline whose configuration includes a tested change:
    /// the configuration the cell had after installing its artifact, linked to the cell,
    /// the artifact, the delta from the previous version and, once they exist, the change.
    ///
    /// - Parameter from: a cell (`RUN/CELL`) or a run (`RUN`, whose one passed cell on this
    ///   baseline is taken).
    /// - Returns: the new version; or the newest one, unchanged, when it already is this
    ///   artifact adopted onto the version the cell tested.
    @discardableResult
    public func adoptBaseline(
        _ name: String, from: String, change: String? = nil, notes: String? = nil, at date: Date = Date()
    ) async throws -> BaselineVersionRecord {
        let date = wholeSeconds(date)
        let cell = try store.cellToAdopt(baseline: name, from: from)
        let latest = try store.latestBaseline(name)
        // The same artifact adopted again from a cell of the version it was adopted onto (a
        // second run of the same change, say), or of that adopted version itself (the matrix
        // tests adopted versions with their artifacts installed): the standard already is
        // that configuration.
        if latest.origin == .adopted, let adopted = latest.adoption, adopted.artifact == cell.artifact,
            latest.previousVersion == cell.baseline.version || latest.version == cell.baseline.version
        {
            return latest
        }
        guard cell.baseline.version == latest.version else {
            throw ChangelabError(
                "cannot adopt \(cell.recordID) into \(name)",
                why: "the cell tested \(cell.baseline) but the "
                    + "newest version is \(latest.ref); adopting it would drop what changed since",
                fix: "run the matrix on \(latest.ref) and adopt that cell")
        }
        let before = try store.inventory(latest.inventory)
        let after =
            try cell.after.map { try store.inventory($0) }
            ?? InventorySnapshot(
                state: InventoryState(try store.inventory(cell.before)).applying(cell.installDelta),
                watchedPaths: before.watchedPaths)
        let delta = ConfigurationDelta(from: before, to: after)
        let version = latest.version + 1
        let record = BaselineVersionRecord(
            name: name, version: version, recordedAt: date, origin: .adopted, recipeDigest: latest.recipeDigest,
            imageDigest: nil, inventory: InventoryRecord(after).digest, previousVersion: latest.version,
            adoption: .init(run: cell.run, cell: cell.name, artifact: cell.artifact, delta: delta, change: change),
            notes: notes)
        try await recordNewVersion(record, after, "adopt \(cell.recordID) as baseline \(record.ref)", "adopt-baseline")
        return record
    }

    /// Records a new version of `name` with the configuration it had before `change`'s
    /// adoption: the change was rolled back, so its configuration is no longer the standard.
    ///
    /// - Throws: when the newest version is not `change`'s adoption (something was adopted or
    ///   built since; reverting would drop it).
    @discardableResult
    public func revertAdoption(_ name: String, change: String, at date: Date = Date()) async throws -> BaselineVersionRecord {
        let date = wholeSeconds(date)
        let latest = try store.latestBaseline(name)
        guard latest.origin == .adopted, latest.adoption?.change == change, let previous = latest.previousVersion else {
            throw ChangelabError(
                "cannot revert \(name)'s adoption of \(change)",
                why: "the newest version \(latest.ref) is \(latest.origin.rawValue)"
                    + (latest.adoption?.change.map { " for change \($0)" } ?? "") + ", not \(change)'s adoption",
                fix: "record the standard configuration by hand: 'changelab baseline adopt \(name) --from RUN' of a cell without the change")
        }
        let before = try store.read(BaselineVersionRecord.self, "\(name)@\(previous)")
        let record = BaselineVersionRecord(
            name: name, version: latest.version + 1, recordedAt: date, origin: .reverted, recipeDigest: latest.recipeDigest,
            imageDigest: before.imageDigest, inventory: before.inventory, previousVersion: latest.version,
            notes: "the configuration of \(before.ref): \(change) (adopted as \(latest.ref)) was rolled back")
        try await transaction("revert baseline \(latest.ref) to \(before.ref) as \(record.ref) (\(change) rolled back)", operation: "revert-baseline") { tx in
            guard !tx.exists(record.reference) else {
                throw ChangelabError("\(record.reference) was recorded by another writer meanwhile", fix: "run the command again")
            }
            try tx.put(record)
        }
        return record
    }

    public func record(artifact: ArtifactRecord) async throws {
        try await transaction("record artifact \(artifact.package) \(artifact.version)", operation: "record-artifact") {
            try $0.put(artifact)
        }
    }

    public func record(run: RunRecord) async throws {
        try await transaction("record run \(run.id) (\(run.status.rawValue))", operation: "record-run") {
            try $0.put(run)
        }
    }

    /// Records a cell; `after`, when given, is stored in full and linked.
    @discardableResult
    public func record(cell: CellRecord, after: InventorySnapshot? = nil) async throws -> CMDBCommit {
        try await transaction("record cell \(cell.recordID) (\(cell.verdict.rawValue))", operation: "record-cell") {
            tx in
            var cell = cell
            if let after { cell.after = try tx.put(inventory: after) }
            try tx.put(cell)
        }
    }

    /// Records a fleet target and, when given, the inventory it reported.
    public func record(target: TargetRecord, inventory: InventorySnapshot? = nil, at date: Date = Date()) async throws {
        try await transaction("record target \(target.name)", operation: "record-target") { tx in
            var target = target
            if let inventory {
                target.inventory = try tx.put(inventory: inventory)
                target.reportedAt = wholeSeconds(date)
            }
            try tx.put(target)
        }
    }

    /// Records any record (change records use this until they have operations of their own).
    public func put<R: CMDBRecord>(_ record: R, operation: String) async throws {
        try await transaction(
            "\(operation.replacingOccurrences(of: "-", with: " ")) \(record.reference)", operation: operation
        ) {
            try $0.put(record)
        }
    }
}

extension CMDBStore {
    /// The cell `baseline adopt NAME --from RUN-OR-CELL` takes: the named cell, or the one
    /// passed cell of the run on that baseline.
    public func cellToAdopt(baseline name: String, from: String) throws -> CellRecord {
        let cell: CellRecord
        if from.contains("/") {
            cell = try read(CellRecord.self, from)
        } else {
            guard exists(CMDBReference(.run, from)) else {
                throw ChangelabError(
                    "there is no run or cell '\(from)' in the CMDB at \(path)",
                    fix: "name a run (RUN) or a cell (RUN/CELL); 'changelab cmdb log' lists recent ones")
            }
            let candidates = try cells(ofRun: from).filter { $0.baseline.name == name }
            var passed = candidates.filter { $0.verdict == .passed }
            // A matrix run has a cell per lane; the install lane's is the new configuration.
            if passed.count > 1, let install = passed.first(where: { $0.name == "\(name).install" }) { passed = [install] }
            guard passed.count == 1, let only = passed.first else {
                throw ChangelabError(
                    "run \(from) has \(passed.count) passed cells on baseline \(name)"
                        + (candidates.isEmpty ? "" : " (of \(candidates.map(\.recordID).joined(separator: ", ")))"),
                    fix: passed.isEmpty
                        ? "adopt only a tested change: run the matrix until the cell on \(name) passes"
                        : "name the cell: --from RUN/CELL")
            }
            cell = only
        }
        guard cell.baseline.name == name else {
            throw ChangelabError(
                "cell \(cell.recordID) tested baseline \(cell.baseline.name), not \(name)",
                fix: "adopt it into \(cell.baseline.name), or pick a cell of \(name)")
        }
        guard cell.verdict == .passed else {
            throw ChangelabError(
                "cell \(cell.recordID) failed (\(cell.failure?.rawValue ?? "unknown")); only a passed cell can become "
                    + "the standard configuration", fix: "fix the change and run the matrix again")
        }
        return cell
    }
}

/// Records keep whole seconds (their JSON does), so a returned record equals the stored one.
func wholeSeconds(_ date: Date) -> Date { Date(timeIntervalSince1970: date.timeIntervalSince1970.rounded(.down)) }
