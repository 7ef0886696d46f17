import Foundation
import HostIO
import Model

/// One transaction in the CMDB's history.
public struct CMDBLogEntry: Codable, Sendable, Equatable {
    public var commit: String
    public var date: Date
    public var actor: String
    public var operation: String
    public var message: String
    /// The record files the transaction wrote.
    public var files: [String]
}

/// Everything in the CMDB, for `cmdb export`.
public struct CMDBExport: Codable, Sendable {
    public var format: Int
    public var commit: String?
    public var baselines: [BaselineVersionRecord]
    public var artifacts: [ArtifactRecord]
    public var runs: [RunRecord]
    public var cells: [CellRecord]
    public var targets: [TargetRecord]
    /// Inventories by digest.
    public var inventories: [String: InventorySnapshot]
    /// Change records as stored (their type comes with a later issue).
    public var changes: [String: String]
}

/// A configuration named by an item, for `cmdb diff`.
public struct ResolvedState: Sendable {
    public var reference: CMDBReference
    public var state: InventoryState
}

extension CMDBStore {
    /// The history, newest first; only transactions that wrote `item`'s file when given.
    public func log(_ item: CMDBReference? = nil, limit: Int? = nil) async throws -> [CMDBLogEntry] {
        guard head != nil else { return [] }
        var arguments = [
            "-C", path, "log", "--name-only", "-z",
            "--format=%x1e%H%x1f%aI%x1f%an%x1f%(trailers:key=Changelab-Operation,valueonly)%x1f%s%x1f",
        ]
        if let limit { arguments.append("-n\(limit)") }
        arguments.append(CMDBStore.branch)
        if let item { arguments += ["--", item.path] }
        let result = try await HostCommand.check("git", arguments, timeout: .seconds(600))
        let iso = ISO8601DateFormatter()
        return result.stdoutText.split(separator: "\u{1e}").compactMap { chunk in
            let fields = chunk.split(separator: "\u{1f}", omittingEmptySubsequences: false)
            guard fields.count >= 6 else { return nil }
            let files = fields[5].split(separator: "\0").map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
                .filter { !$0.isEmpty }
            return CMDBLogEntry(
                commit: String(fields[0]), date: iso.date(from: String(fields[1])) ?? Date(timeIntervalSince1970: 0),
                actor: String(fields[2]), operation: fields[3].trimmingCharacters(in: .whitespacesAndNewlines),
                message: String(fields[4]), files: files)
        }
    }

    /// Turns what a person typed into a record reference.
    ///
    /// `KIND:ID` with KIND one of baseline, cell, run, artifact, target, inventory, change;
    /// `baseline:NAME` is its newest version; artifacts and inventories take a unique digest
    /// prefix. Without a kind: `NAME@N` is a baseline version, `RUN/CELL` a cell, and a
    /// plain name is looked up among targets, runs and baselines.
    public func resolve(_ text: String) throws -> CMDBReference {
        try requireNoUnfinishedTransaction()
        let kinds = CMDBRecordKind.allCases.map(\.rawValue).joined(separator: ", ")
        if let colon = text.firstIndex(of: ":"),
            CMDBRecordKind(rawValue: String(text[..<colon])) != nil
                || text[..<colon].allSatisfy({ $0.isLetter })
        {
            guard let kind = CMDBRecordKind(rawValue: String(text[..<colon])) else {
                throw ChangelabError(
                    "unknown item kind '\(text[..<colon])' in '\(text)'",
                    fix: "use one of \(kinds), e.g. baseline:web@2")
            }
            return try resolve(kind, String(text[text.index(after: colon)...]))
        }
        if text.contains("@") { return try resolve(.baseline, text) }
        if text.contains("/") { return try resolve(.cell, text) }
        let candidates =
            [CMDBRecordKind.target, .run].map { CMDBReference($0, text) }.filter(exists)
            + (FileManager.default.fileExists(atPath: "\(path)/baselines/\(text)")
                ? [try resolve(.baseline, text)] : [])
        guard candidates.count == 1, let only = candidates.first else {
            throw ChangelabError(
                candidates.isEmpty
                    ? "there is no item '\(text)' in the CMDB at \(path)"
                    : "'\(text)' names several items: \(candidates.map(\.description).joined(separator: ", "))",
                fix: "write it as KIND:ID (\(kinds)), for example baseline:web@2 or cell:RUN/CELL")
        }
        return only
    }

    func resolve(_ kind: CMDBRecordKind, _ id: String) throws -> CMDBReference {
        switch kind {
        case .baseline where !id.contains("@"):
            return try latestBaseline(id).reference
        case .artifact, .inventory:
            let hex = id.hasPrefix("sha256:") ? String(id.dropFirst(7)) : id
            let matches = ids(of: kind).filter { $0.hasPrefix(hex.lowercased()) }
            guard hex.count >= 4, matches.count == 1, let only = matches.first else {
                throw ChangelabError(
                    matches.isEmpty
                        ? "there is no \(kind.rawValue) '\(id)' in the CMDB at \(path)"
                        : "'\(id)' is the start of \(matches.count) \(kind.rawValue) digests",
                    fix:
                        "give at least 4 hex digits that name one \(kind.rawValue); 'changelab cmdb export --json' lists them"
                )
            }
            return CMDBReference(kind, only)
        default:
            let reference = CMDBReference(kind, id)
            guard exists(reference) else {
                throw ChangelabError(
                    "there is no \(kind.rawValue) '\(id)' in the CMDB at \(path)",
                    fix: "check the name; 'changelab cmdb log' shows what was recorded")
            }
            return reference
        }
    }

    /// The configuration an item stands for: a baseline version's or a target's inventory,
    /// a cell's state after install (its stored inventory, or its baseline plus its delta),
    /// an inventory itself.
    public func state(of reference: CMDBReference) throws -> ResolvedState {
        switch reference.kind {
        case .baseline:
            let record = try read(BaselineVersionRecord.self, reference.id)
            return ResolvedState(reference: reference, state: InventoryState(try inventory(record.inventory)))
        case .cell:
            let cell = try read(CellRecord.self, reference.id)
            if let after = cell.after {
                return ResolvedState(reference: reference, state: InventoryState(try inventory(after)))
            }
            let before = InventoryState(try inventory(cell.before))
            return ResolvedState(reference: reference, state: before.applying(cell.installDelta))
        case .target:
            let target = try read(TargetRecord.self, reference.id)
            guard let digest = target.inventory else {
                throw ChangelabError(
                    "target \(target.name) has not reported an inventory yet",
                    fix:
                        "let its agent report, or record one with 'changelab cmdb record-target \(target.name) --collect'"
                )
            }
            return ResolvedState(reference: reference, state: InventoryState(try inventory(digest)))
        case .inventory:
            guard let digest = SHA256Digest(hex: reference.id) else {
                throw ChangelabError("'\(reference.id)' is not an inventory digest")
            }
            return ResolvedState(reference: reference, state: InventoryState(try inventory(digest)))
        default:
            throw ChangelabError(
                "\(reference) has no configuration to compare",
                fix: "compare baselines, cells, targets or inventories (a run's cells are cell:RUN/CELL)")
        }
    }

    /// The delta between two items' configurations.
    public func diff(_ a: CMDBReference, _ b: CMDBReference, noise: NoiseRules = .defaultNoise) throws
        -> ConfigurationDelta
    {
        ConfigurationDelta(from: try state(of: a).state, to: try state(of: b).state, noise: noise)
    }

    /// Every record, decoded.
    public func export() throws -> CMDBExport {
        try requireNoUnfinishedTransaction()
        var inventories: [String: InventorySnapshot] = [:]
        for id in ids(of: .inventory) { inventories[id] = try read(InventoryRecord.self, id).snapshot }
        var changes: [String: String] = [:]
        for id in ids(of: .change) {
            changes[id] = data(of: CMDBReference(.change, id)).map { String(decoding: $0, as: UTF8.self) }
        }
        return CMDBExport(
            format: CMDBStore.formatVersion, commit: head,
            baselines: try ids(of: .baseline).map { try read(BaselineVersionRecord.self, $0) }
                .sorted { ($0.name, $0.version) < ($1.name, $1.version) },
            artifacts: try ids(of: .artifact).map { try read(ArtifactRecord.self, $0) },
            runs: try ids(of: .run).map { try read(RunRecord.self, $0) },
            cells: try ids(of: .cell).map { try read(CellRecord.self, $0) },
            targets: try ids(of: .target).map { try read(TargetRecord.self, $0) },
            inventories: inventories, changes: changes)
    }
}
