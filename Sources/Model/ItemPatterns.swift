/// Patterns naming configuration items per category: what noise rules ignore and what an
/// expected-delta policy allows.
///
/// Files match by path glob, the path itself or any folder above it (`/etc/nginx` covers
/// everything below it); packages by name or `name:arch`; units by name, with or without
/// `.service`; ports by `tcp/80`, `80` or `tcp 0.0.0.0:80`; users, groups and system items
/// by name.
public struct ItemPatterns: Codable, Sendable, Equatable {
    public var paths: [Glob]
    public var packages: [Glob]
    public var units: [Glob]
    public var users: [Glob]
    public var groups: [Glob]
    public var ports: [Glob]
    public var system: [Glob]

    public init(
        paths: [String] = [], packages: [String] = [], units: [String] = [], users: [String] = [],
        groups: [String] = [], ports: [String] = [], system: [String] = []
    ) {
        self.paths = paths.map(Glob.init)
        self.packages = packages.map(Glob.init)
        self.units = units.map(Glob.init)
        self.users = users.map(Glob.init)
        self.groups = groups.map(Glob.init)
        self.ports = ports.map(Glob.init)
        self.system = system.map(Glob.init)
    }

    public init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        func list(_ key: CodingKeys) throws -> [Glob] { try container.decodeIfPresent([Glob].self, forKey: key) ?? [] }
        paths = try list(.paths)
        packages = try list(.packages)
        units = try list(.units)
        users = try list(.users)
        groups = try list(.groups)
        ports = try list(.ports)
        system = try list(.system)
    }

    public func patterns(for category: InventoryCategory) -> [Glob] {
        switch category {
        case .system: return system
        case .packages: return packages
        case .files: return paths
        case .units: return units
        case .users: return users
        case .groups: return groups
        case .ports: return ports
        }
    }

    public var isEmpty: Bool { InventoryCategory.allCases.allSatisfy { patterns(for: $0).isEmpty } }

    /// True when some pattern of the item's category names it.
    public func matches(_ category: InventoryCategory, key: String, name: String) -> Bool {
        patterns(for: category).contains { Self.glob($0, matches: category, key: key, name: name) }
    }

    public func matches(_ category: InventoryCategory, _ item: InventoryItem) -> Bool {
        matches(category, key: item.key, name: item.name)
    }

    /// How one pattern matches an item of `category`; the query language uses the same rules.
    public static func glob(_ glob: Glob, matches category: InventoryCategory, key: String, name: String) -> Bool {
        switch category {
        case .files:
            return glob.matchesPathOrAncestor(key)
        case .units:
            return glob.matches(name) || (name.hasSuffix(".service") && glob.matches(String(name.dropLast(8))))
        case .ports:
            let number = name.split(separator: "/").last.map(String.init) ?? name
            return glob.matches(name) || glob.matches(key) || glob.matches(number)
        default:
            return glob.matches(name) || glob.matches(key)
        }
    }

    /// Drops the items these patterns name from a state.
    public func removing(from state: InventoryState) -> InventoryState {
        guard !isEmpty else { return state }
        var copy = state
        for (category, items) in state.items where !patterns(for: category).isEmpty {
            copy.items[category] = items.filter { !matches(category, $0.value) }
        }
        return copy
    }

    /// The noise changelab ignores unless told otherwise: logs, caches, spool and run-time
    /// folders, machine identity and seeds that change on every boot, package-list caches,
    /// and units that come and go with devices and sessions.
    public static let defaultNoise = ItemPatterns(
        paths: [
            "/var/log", "/var/cache", "/var/tmp", "/tmp", "/run", "/var/run", "/var/backups",
            "/etc/machine-id", "/var/lib/dbus/machine-id", "/var/lib/systemd/random-seed",
            "/var/lib/systemd/timers", "/var/lib/systemd/catalog", "/var/lib/apt/lists",
            "/var/lib/dpkg/*-old", "/var/lib/dpkg/lock*", "/var/lib/dpkg/triggers/Lock", "/var/lib/logrotate",
            "/etc/ld.so.cache", "/etc/adjtime", "**/__pycache__",
            // The backups useradd, userdel and friends rotate on every change of the user
            // database: the real files (/etc/passwd, …) carry the change itself.
            "/etc/passwd-", "/etc/group-", "/etc/shadow-", "/etc/gshadow-", "/etc/subuid-", "/etc/subgid-",
        ],
        units: [
            "*.device", "*.scope", "*.slice", "*.swap", "user@*.service", "user-runtime-dir@*.service",
            "run-*.mount",
        ])
}

/// What a noise rule set is called where it filters inventories.
public typealias NoiseRules = ItemPatterns
/// What a recipe allows an install to change; anything else in its delta is flagged.
public typealias ExpectedDeltaPolicy = ItemPatterns
