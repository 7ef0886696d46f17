/// What changed between two configurations: items added, removed and changed in each
/// category, with before and after values, ordered by category and key so the same two
/// inventories always give the same JSON and the same summary.
public struct ConfigurationDelta: Codable, Sendable, Equatable {
    /// Only categories with at least one change are present.
    public private(set) var categories: [InventoryCategory: CategoryDelta]

    public init(categories: [InventoryCategory: CategoryDelta] = [:]) {
        self.categories = categories.filter { !$0.value.isEmpty }
    }

    /// The delta from `before` to `after`, leaving out what `noise` names.
    public init(from before: InventoryState, to after: InventoryState, noise: NoiseRules = .defaultNoise) {
        let before = noise.removing(from: before)
        let after = noise.removing(from: after)
        var categories: [InventoryCategory: CategoryDelta] = [:]
        for category in InventoryCategory.allCases {
            let old = before[category]
            let new = after[category]
            var delta = CategoryDelta()
            for key in Set(old.keys).union(new.keys).sorted() {
                switch (old[key], new[key]) {
                case (nil, let added?):
                    delta.added.append(DeltaEntry(key: key, before: nil, after: added.attributes))
                case (let removed?, nil):
                    delta.removed.append(DeltaEntry(key: key, before: removed.attributes, after: nil))
                case (let was?, let now?) where was.attributes != now.attributes:
                    delta.changed.append(DeltaEntry(key: key, before: was.attributes, after: now.attributes))
                default:
                    break
                }
            }
            categories[category] = delta
        }
        self.init(categories: categories)
    }

    public init(from before: InventorySnapshot, to after: InventorySnapshot, noise: NoiseRules = .defaultNoise) {
        self.init(from: InventoryState(before), to: InventoryState(after), noise: noise)
    }

    public var isEmpty: Bool { categories.isEmpty }

    public subscript(category: InventoryCategory) -> CategoryDelta { categories[category] ?? CategoryDelta() }

    /// Every change as (category, kind, entry), in report order.
    public var entries: [(category: InventoryCategory, kind: ChangeKind, entry: DeltaEntry)] {
        var result: [(InventoryCategory, ChangeKind, DeltaEntry)] = []
        for category in categories.keys.sorted() {
            let delta = self[category]
            result += delta.added.map { (category, .added, $0) }
            result += delta.removed.map { (category, .removed, $0) }
            result += delta.changed.map { (category, .changed, $0) }
        }
        return result
    }

    /// The changes an expected-delta policy does not allow.
    public func violations(of policy: ExpectedDeltaPolicy) -> [PolicyViolation] {
        entries.compactMap { category, kind, entry in
            let name = InventoryItem.name(for: category, key: entry.key, attributes: entry.after ?? entry.before ?? [:])
            if policy.matches(category, key: entry.key, name: name) { return nil }
            return PolicyViolation(category: category, key: entry.key, change: kind)
        }
    }

    /// A readable report, one line per change, grouped by category:
    ///
    ///     packages: 1 added, 1 changed
    ///       + nginx:amd64 1.22.1-9
    ///       ~ openssl:amd64: version 3.0.11-1 → 3.0.13-1
    public func summary() -> String {
        if isEmpty { return "no changes\n" }
        var lines: [String] = []
        for category in categories.keys.sorted() {
            let delta = self[category]
            let counts = [
                ("added", delta.added.count), ("removed", delta.removed.count), ("changed", delta.changed.count),
            ]
            .filter { $0.1 > 0 }.map { "\($0.1) \($0.0)" }
            lines.append("\(category.rawValue): \(counts.joined(separator: ", "))")
            for entry in delta.added {
                lines.append("  + \(Self.describe(category, entry.key, entry.after ?? [:]))")
            }
            for entry in delta.removed {
                lines.append("  - \(Self.describe(category, entry.key, entry.before ?? [:]))")
            }
            for entry in delta.changed {
                let before = entry.before ?? [:]
                let after = entry.after ?? [:]
                let fields = entry.changedFields.map { field in
                    "\(field) \(Self.show(field, before[field])) → \(Self.show(field, after[field]))"
                }
                lines.append("  ~ \(entry.key): \(fields.joined(separator: ", "))")
            }
        }
        return lines.joined(separator: "\n") + "\n"
    }

    private static func show(_ field: String, _ value: String?) -> String {
        guard let value else { return "(none)" }
        if value.isEmpty { return "\"\"" }
        return field == "sha256" ? String(value.prefix(12)) : value
    }

    /// One item on one line, the way people name it.
    static func describe(_ category: InventoryCategory, _ key: String, _ a: [String: String]) -> String {
        switch category {
        case .packages:
            let status = a["status"].map { $0.hasSuffix(" installed") ? "" : " (\($0))" } ?? ""
            return "\(key) \(a["version"] ?? "?")\(status)"
        case .files:
            var parts = [a["type"] ?? "file", a["mode"] ?? "?", "\(a["owner"] ?? "?"):\(a["group"] ?? "?")"]
            if let size = a["size"] { parts.append("\(size) bytes") }
            if let sha = a["sha256"] { parts.append("sha256 \(sha.prefix(12))") }
            if let target = a["target"] { parts.append("→ \(target)") }
            return "\(key) (\(parts.joined(separator: " ")))"
        case .units:
            return "\(key) (\(a["enabled"] ?? "?"), \(a["active"] ?? "?"))"
        case .users:
            return "\(key) (uid \(a["uid"] ?? "?"), gid \(a["gid"] ?? "?"), \(a["home"] ?? "?"), \(a["shell"] ?? "?"))"
        case .groups:
            let members = a["members"].map { $0.isEmpty ? "" : ", members \($0)" } ?? ""
            return "\(key) (gid \(a["gid"] ?? "?")\(members))"
        case .ports:
            return key
        case .system:
            return "\(key) (\(a.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")))"
        }
    }

    private struct CategoryKey: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    public init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CategoryKey.self)
        var categories: [InventoryCategory: CategoryDelta] = [:]
        for key in container.allKeys {
            guard let category = InventoryCategory(rawValue: key.stringValue) else {
                throw DecodingError.dataCorruptedError(
                    forKey: key, in: container,
                    debugDescription: "unknown category '\(key.stringValue)' (known: "
                        + InventoryCategory.allCases.map(\.rawValue).joined(separator: ", ") + ")")
            }
            categories[category] = try container.decode(CategoryDelta.self, forKey: key)
        }
        self.init(categories: categories)
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.container(keyedBy: CategoryKey.self)
        for (category, delta) in categories {
            try container.encode(delta, forKey: CategoryKey(stringValue: category.rawValue))
        }
    }
}

/// The changes within one category.
public struct CategoryDelta: Codable, Sendable, Equatable {
    public var added: [DeltaEntry] = []
    public var removed: [DeltaEntry] = []
    public var changed: [DeltaEntry] = []

    public init(added: [DeltaEntry] = [], removed: [DeltaEntry] = [], changed: [DeltaEntry] = []) {
        self.added = added
        self.removed = removed
        self.changed = changed
    }

    public var isEmpty: Bool { added.isEmpty && removed.isEmpty && changed.isEmpty }
    public var count: Int { added.count + removed.count + changed.count }
}

/// One item's change: only `after` for an addition, only `before` for a removal, both for
/// a change.
public struct DeltaEntry: Codable, Sendable, Equatable {
    public var key: String
    public var before: [String: String]?
    public var after: [String: String]?

    public init(key: String, before: [String: String]?, after: [String: String]?) {
        self.key = key
        self.before = before
        self.after = after
    }

    /// The attributes whose values differ, sorted.
    public var changedFields: [String] {
        let before = self.before ?? [:]
        let after = self.after ?? [:]
        return Set(before.keys).union(after.keys).filter { before[$0] != after[$0] }.sorted()
    }
}

public enum ChangeKind: String, Codable, Sendable, CaseIterable {
    case added, removed, changed
}

/// A change outside a recipe's expected delta.
public struct PolicyViolation: Codable, Sendable, Equatable, CustomStringConvertible {
    public var category: InventoryCategory
    public var key: String
    public var change: ChangeKind

    public init(category: InventoryCategory, key: String, change: ChangeKind) {
        self.category = category
        self.key = key
        self.change = change
    }

    public var description: String { "\(category.rawValue): \(key) \(change.rawValue), outside the expected delta" }
}
