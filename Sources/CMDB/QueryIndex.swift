import Foundation
import HostIO
import Model

/// One baseline version, cell or target that a query matched.
public struct QueryMatch: Codable, Sendable, Equatable {
    public var kind: CMDBRecordKind
    public var id: String
    public var attributes: [String: String]
}

/// A change in a subject's delta, kept light for the index.
struct IndexChange: Sendable {
    var category: InventoryCategory
    var kind: ChangeKind
    var key: String
    var name: String
    /// Attributes after the change; nil for a removal.
    var after: [(String, String)]?
}

/// What the index knows about one queryable record.
struct IndexSubject: Sendable {
    var kind: CMDBRecordKind
    var id: String
    var attributes: [String: String]
    /// Index into `QueryIndex.inventories`, nil when the record has no inventory.
    var base: Int?
    var changes: [IndexChange]
}

/// The query index: every baseline version, cell and target with its attributes, a
/// reference to its base inventory and its delta, rebuilt from the record files.
///
/// Kept in `.git/changelab/query-index` with the commit it reflects. When the branch has
/// moved, only the records `git diff-tree` names are read again; when the index is missing,
/// unreadable or its commit unknown, it is rebuilt from every file. Cells are evaluated as
/// their base inventory with their delta laid over it, so 10,000 cells on a few baselines
/// share a few inventories.
final class QueryIndex: @unchecked Sendable {
    // @unchecked: built and used by one call at a time; never shared while mutated.
    var commit: String?
    var inventories: [String] = []
    var states: [InventoryState] = []
    var inventoryIndex: [String: Int] = [:]
    /// Record path → subject.
    var subjects: [String: IndexSubject] = [:]

    static let magic = Array("changelab-query-index 1\n".utf8)

    // MARK: Building

    /// Loads the index for `store`, bringing it up to date with the branch.
    static func load(_ store: CMDBStore) async throws -> (QueryIndex, rebuilt: Bool) {
        let head = store.head
        if let data = FileManager.default.contents(atPath: store.indexPath), let index = try? decode(data) {
            if index.commit == head { return (index, false) }
            if let old = index.commit, let head,
                let changed = try? await changedPaths(store, from: old, to: head)
            {
                var artifactsChanged = false
                for path in changed {
                    try index.update(path: path, store: store)
                    if path.hasPrefix("artifacts/") { artifactsChanged = true }
                }
                if !artifactsChanged {
                    index.commit = head
                    try? index.save(store)
                    return (index, false)
                }
            }
        }
        let index = QueryIndex()
        index.commit = head
        for kind in [CMDBRecordKind.baseline, .cell, .target] {
            for id in store.ids(of: kind) { try index.update(path: kind.path(of: id), store: store) }
        }
        try? index.save(store)
        return (index, true)
    }

    static func changedPaths(_ store: CMDBStore, from old: String, to new: String) async throws -> [String] {
        let result = try await HostCommand.check(
            "git", ["-C", store.path, "diff-tree", "-r", "--name-only", "--no-renames", "-z", old, new],
            timeout: .seconds(120))
        return result.stdout.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
    }

    func inventory(_ digest: SHA256Digest, store: CMDBStore) throws -> Int {
        if let index = inventoryIndex[digest.hex] { return index }
        let state = InventoryState(try store.inventory(digest))
        inventories.append(digest.hex)
        states.append(state)
        inventoryIndex[digest.hex] = states.count - 1
        return states.count - 1
    }

    /// Artifacts read while building, by digest: many cells share one.
    private var artifacts: [String: ArtifactRecord?] = [:]

    func artifact(_ digest: SHA256Digest, store: CMDBStore) -> ArtifactRecord? {
        if let known = artifacts[digest.hex] { return known }
        let record = try? store.read(ArtifactRecord.self, digest.hex)
        artifacts[digest.hex] = record
        return record
    }

    /// Reads (or forgets) the subject stored at `path`.
    func update(path: String, store: CMDBStore) throws {
        guard let reference = CMDBRecordKind.record(at: path) else { return }
        guard store.exists(reference) else {
            subjects[path] = nil
            return
        }
        var attributes = ["kind": reference.kind.rawValue, "id": reference.id]
        switch reference.kind {
        case .baseline:
            let record = try store.read(BaselineVersionRecord.self, reference.id)
            attributes["name"] = record.name
            attributes["version"] = String(record.version)
            attributes["origin"] = record.origin.rawValue
            if let image = record.imageDigest { attributes["image"] = image.hex }
            if let recipe = record.recipeDigest { attributes["recipe"] = recipe.hex }
            if let change = record.adoption?.change { attributes["change"] = change }
            subjects[path] = IndexSubject(
                kind: .baseline, id: reference.id, attributes: attributes,
                base: try inventory(record.inventory, store: store),
                changes: record.adoption.map { Self.changes(of: $0.delta) } ?? [])
        case .cell:
            let cell = try store.read(CellRecord.self, reference.id)
            attributes["name"] = cell.name
            attributes["run"] = cell.run
            attributes["baseline"] = cell.baseline.name
            attributes["baseline.version"] = String(cell.baseline.version)
            attributes["artifact"] = cell.artifact.hex
            attributes["verdict"] = cell.verdict.rawValue
            attributes["violations"] = String(cell.violations.count)
            if let failure = cell.failure { attributes["failure"] = failure.rawValue }
            if let artifact = artifact(cell.artifact, store: store) {
                attributes["package"] = artifact.package
                attributes["package.version"] = artifact.version
            }
            subjects[path] = IndexSubject(
                kind: .cell, id: reference.id, attributes: attributes, base: try inventory(cell.before, store: store),
                changes: Self.changes(of: cell.installDelta))
        case .target:
            let target = try store.read(TargetRecord.self, reference.id)
            attributes.merge(target.attributes) { own, _ in own }
            attributes["name"] = target.name
            if let baseline = target.baseline {
                attributes["baseline"] = baseline.name
                attributes["baseline.version"] = String(baseline.version)
            }
            var changes: [IndexChange] = []
            var base: Int?
            if let digest = target.inventory {
                base = try inventory(digest, store: store)
                if let baseline = target.baseline,
                    let approved = try? store.read(BaselineVersionRecord.self, baseline.description)
                {
                    // Drift: what differs from the approved baseline, as this target's delta.
                    let approvedState = states[try inventory(approved.inventory, store: store)]
                    let drift = ConfigurationDelta(from: approvedState, to: states[base ?? 0])
                    changes = Self.changes(of: drift)
                    attributes["drift"] = drift.isEmpty ? "no" : "yes"
                }
            }
            subjects[path] = IndexSubject(
                kind: .target, id: reference.id, attributes: attributes, base: base, changes: changes)
        default:
            return
        }
    }

    static func changes(of delta: ConfigurationDelta) -> [IndexChange] {
        delta.entries.map { category, kind, entry in
            let attributes = entry.after ?? entry.before ?? [:]
            return IndexChange(
                category: category, kind: kind, key: entry.key,
                name: InventoryItem.name(for: category, key: entry.key, attributes: attributes),
                after: entry.after.map { $0.sorted { $0.key < $1.key }.map { ($0.key, $0.value) } })
        }
    }

    // MARK: Querying

    func run(_ query: Query, kinds: Set<CMDBRecordKind>) -> [QueryMatch] {
        let memo = BaseItemMemo()
        var matches: [QueryMatch] = []
        for subject in subjects.values where kinds.isEmpty || kinds.contains(subject.kind) {
            let facts = IndexedFacts(
                subject: subject, state: subject.base.map { states[$0] }, memo: memo)
            if query.matches(facts) {
                matches.append(QueryMatch(kind: subject.kind, id: subject.id, attributes: subject.attributes))
            }
        }
        return matches.sorted { ($0.kind.rawValue, $0.id) < ($1.kind.rawValue, $1.id) }
    }

    // MARK: Storage

    func save(_ store: CMDBStore) throws {
        var encoder = IndexEncoder()
        encoder.string(commit ?? "")
        encoder.int(inventories.count)
        for (digest, state) in zip(inventories, states) {
            encoder.string(digest)
            for category in InventoryCategory.allCases {
                let items = state[category]
                encoder.int(items.count)
                for item in items.values {
                    encoder.string(item.key)
                    encoder.string(item.name)
                    encoder.pairs(item.attributes.map { ($0.key, $0.value) })
                }
            }
        }
        encoder.int(subjects.count)
        for (path, subject) in subjects {
            encoder.string(path)
            encoder.string(subject.kind.rawValue)
            encoder.string(subject.id)
            encoder.pairs(subject.attributes.map { ($0.key, $0.value) })
            encoder.int((subject.base ?? -1) + 1)
            encoder.int(subject.changes.count)
            for change in subject.changes {
                encoder.int(InventoryCategory.allCases.firstIndex(of: change.category) ?? 0)
                encoder.int(ChangeKind.allCases.firstIndex(of: change.kind) ?? 0)
                encoder.string(change.key)
                encoder.string(change.name)
                if let after = change.after {
                    encoder.int(1)
                    encoder.pairs(after)
                } else {
                    encoder.int(0)
                }
            }
        }
        try AtomicFile.write(encoder.finish(magic: Self.magic), to: store.indexPath)
    }

    struct Corrupt: Error {}

    static func decode(_ data: Data) throws -> QueryIndex {
        var decoder = try IndexDecoder(data, magic: magic)
        let index = QueryIndex()
        let commit = try decoder.string()
        index.commit = commit.isEmpty ? nil : commit
        let inventoryCount = try decoder.count()
        for _ in 0..<inventoryCount {
            let digest = try decoder.string()
            var items: [InventoryCategory: [String: InventoryItem]] = [:]
            for category in InventoryCategory.allCases {
                let count = try decoder.count()
                var byKey: [String: InventoryItem] = [:]
                byKey.reserveCapacity(count)
                for _ in 0..<count {
                    let key = try decoder.string()
                    let name = try decoder.string()
                    let pairs = try decoder.pairs()
                    byKey[key] = InventoryItem(
                        key: key, name: name, attributes: Dictionary(pairs, uniquingKeysWith: { a, _ in a }))
                }
                items[category] = byKey
            }
            index.inventoryIndex[digest] = index.states.count
            index.inventories.append(digest)
            index.states.append(InventoryState(items: items))
        }
        let subjectCount = try decoder.count()
        index.subjects.reserveCapacity(subjectCount)
        for _ in 0..<subjectCount {
            let path = try decoder.string()
            guard let kind = CMDBRecordKind(rawValue: try decoder.string()) else { throw Corrupt() }
            let id = try decoder.string()
            let attributes = Dictionary(try decoder.pairs(), uniquingKeysWith: { a, _ in a })
            let base = try decoder.int() - 1
            guard base < index.states.count else { throw Corrupt() }
            let changeCount = try decoder.count()
            var changes: [IndexChange] = []
            changes.reserveCapacity(changeCount)
            for _ in 0..<changeCount {
                let category = try decoder.int()
                let kindIndex = try decoder.int()
                guard category < InventoryCategory.allCases.count, kindIndex < ChangeKind.allCases.count else {
                    throw Corrupt()
                }
                let key = try decoder.string()
                let name = try decoder.string()
                let after = try decoder.int() == 1 ? try decoder.pairs() : nil
                changes.append(
                    IndexChange(
                        category: InventoryCategory.allCases[category], kind: ChangeKind.allCases[kindIndex], key: key,
                        name: name, after: after))
            }
            index.subjects[path] = IndexSubject(
                kind: kind, id: id, attributes: attributes, base: base >= 0 ? base : nil, changes: changes)
        }
        return index
    }
}

/// Items of a base inventory a pattern names, computed once per query for all subjects
/// that share the inventory.
final class BaseItemMemo {
    struct Key: Hashable {
        var base: Int
        var category: InventoryCategory
        var pattern: String
    }
    var items: [Key: [InventoryItem]] = [:]
}

/// A subject of the index as the query language sees it: its base inventory with its
/// delta laid over it.
struct IndexedFacts: QueryFacts {
    let subject: IndexSubject
    let state: InventoryState?
    let memo: BaseItemMemo

    func items(_ category: InventoryCategory, matching pattern: Glob) -> [InventoryItem] {
        var result: [InventoryItem] = []
        if let state, let base = subject.base {
            let key = BaseItemMemo.Key(base: base, category: category, pattern: pattern.pattern)
            if let cached = memo.items[key] {
                result = cached
            } else {
                let byKey = state[category]
                if pattern.isLiteral, category != .files, let exact = byKey[pattern.pattern] {
                    result = [exact]
                } else {
                    result = byKey.values.filter {
                        ItemPatterns.glob(pattern, matches: category, key: $0.key, name: $0.name)
                    }
                }
                memo.items[key] = result
            }
        }
        let changes = subject.changes.filter { $0.category == category }
        guard !changes.isEmpty else { return result }
        let touched = Set(changes.map(\.key))
        result.removeAll { touched.contains($0.key) }
        for change in changes {
            guard let after = change.after,
                ItemPatterns.glob(pattern, matches: category, key: change.key, name: change.name)
            else { continue }
            result.append(
                InventoryItem(
                    key: change.key, name: change.name,
                    attributes: Dictionary(after, uniquingKeysWith: { a, _ in a })))
        }
        return result
    }

    func changes(_ category: InventoryCategory, matching pattern: Glob) -> [ChangeKind] {
        subject.changes.filter {
            $0.category == category && ItemPatterns.glob(pattern, matches: category, key: $0.key, name: $0.name)
        }.map(\.kind)
    }

    func attribute(_ name: String) -> String? {
        if let value = subject.attributes[name] { return value }
        let system = items(.system, matching: Glob(name.split(separator: ".").first.map(String.init) ?? name))
        let state = InventoryState(items: [
            .system: Dictionary(system.map { ($0.key, $0) }, uniquingKeysWith: { a, _ in a })
        ])
        return QuerySubject.systemAttribute(name, in: state)
    }
}

/// Varints and a string table: compact, and quick to read back.
struct IndexEncoder {
    private var table: [String: Int] = [:]
    private var strings: [String] = []
    private var body: [UInt8] = []

    mutating func int(_ value: Int) {
        var v = UInt64(max(0, value))
        while v >= 0x80 {
            body.append(UInt8(v & 0x7f) | 0x80)
            v >>= 7
        }
        body.append(UInt8(v))
    }

    mutating func string(_ text: String) {
        if let id = table[text] {
            int(id)
        } else {
            table[text] = strings.count
            int(strings.count)
            strings.append(text)
        }
    }

    mutating func pairs(_ pairs: [(String, String)]) {
        int(pairs.count)
        for (key, value) in pairs {
            string(key)
            string(value)
        }
    }

    func finish(magic: [UInt8]) -> Data {
        var head = IndexEncoder()
        head.int(strings.count)
        var out = Data(magic)
        out.append(contentsOf: head.body)
        for text in strings {
            var length = IndexEncoder()
            let utf8 = Array(text.utf8)
            length.int(utf8.count)
            out.append(contentsOf: length.body)
            out.append(contentsOf: utf8)
        }
        out.append(contentsOf: body)
        return out
    }
}

struct IndexDecoder {
    private let bytes: [UInt8]
    private var offset: Int
    private var strings: [String] = []

    init(_ data: Data, magic: [UInt8]) throws {
        bytes = [UInt8](data)
        guard bytes.starts(with: magic) else { throw QueryIndex.Corrupt() }
        offset = magic.count
        let count = try self.count()
        strings.reserveCapacity(count)
        for _ in 0..<count {
            let length = try int()
            guard length <= bytes.count - offset else { throw QueryIndex.Corrupt() }
            strings.append(String(decoding: bytes[offset..<offset + length], as: UTF8.self))
            offset += length
        }
    }

    mutating func int() throws -> Int {
        var value: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            guard offset < bytes.count, shift < 63 else { throw QueryIndex.Corrupt() }
            let byte = bytes[offset]
            offset += 1
            value |= UInt64(byte & 0x7f) << shift
            if byte < 0x80 { return Int(value) }
            shift += 7
        }
    }

    /// A count of elements that follow: each takes at least one byte, so a count beyond the
    /// bytes left is corrupt (and would make `reserveCapacity` trap or exhaust memory).
    mutating func count() throws -> Int {
        let count = try int()
        guard count <= bytes.count - offset else { throw QueryIndex.Corrupt() }
        return count
    }

    mutating func string() throws -> String {
        let id = try int()
        guard id < strings.count else { throw QueryIndex.Corrupt() }
        return strings[id]
    }

    mutating func pairs() throws -> [(String, String)] {
        let count = try self.count()
        var result: [(String, String)] = []
        result.reserveCapacity(count)
        for _ in 0..<count { result.append((try string(), try string())) }
        return result
    }
}

extension CMDBStore {
    /// Answers a query over every baseline version, cell and target (or only `kinds`).
    public func query(_ query: Query, kinds: Set<CMDBRecordKind> = []) async throws -> [QueryMatch] {
        try requireNoUnfinishedTransaction()
        let (index, _) = try await QueryIndex.load(self)
        return index.run(query, kinds: kinds)
    }

    /// Throws the index away and rebuilds it from the files; returns how many subjects it holds.
    @discardableResult
    public func rebuildQueryIndex() async throws -> Int {
        unlink(indexPath)
        return try await QueryIndex.load(self).0.subjects.count
    }
}
