/// The kinds of configuration item an inventory holds, in the order reports show them.
public enum InventoryCategory: String, Codable, Sendable, CaseIterable, Comparable {
    case system, packages, files, units, users, groups, ports

    public static func < (lhs: InventoryCategory, rhs: InventoryCategory) -> Bool {
        allCases.firstIndex(of: lhs) ?? 0 < allCases.firstIndex(of: rhs) ?? 0
    }
}

/// One configuration item seen generically: a unique key, the name queries match, and its
/// attributes as text.
///
/// Deltas, expected-delta policies, queries and the CMDB's query index all work on items,
/// so one piece of code compares packages, files, units, users, groups and ports alike.
public struct InventoryItem: Sendable, Equatable, Codable {
    /// Unique within its category: `openssl:amd64`, `/etc/hosts`, `tcp 0.0.0.0:22`.
    public var key: String
    /// What queries and policies match against: `openssl`, `/etc/hosts`, `tcp/22`.
    public var name: String
    public var attributes: [String: String]

    public init(key: String, name: String, attributes: [String: String]) {
        self.key = key
        self.name = name
        self.attributes = attributes
    }
}

/// A configuration as items by category and key: what deltas are computed between and
/// applied to.
public struct InventoryState: Sendable, Equatable {
    public var items: [InventoryCategory: [String: InventoryItem]]

    public init(items: [InventoryCategory: [String: InventoryItem]] = [:]) {
        self.items = items
    }

    public init(_ snapshot: InventorySnapshot) {
        var items: [InventoryCategory: [String: InventoryItem]] = [:]
        for category in InventoryCategory.allCases {
            var byKey: [String: InventoryItem] = [:]
            for item in snapshot.items(category) { byKey[item.key] = item }
            items[category] = byKey
        }
        self.items = items
    }

    public subscript(category: InventoryCategory) -> [String: InventoryItem] {
        items[category] ?? [:]
    }

    /// This state with `delta` applied: added and changed items take their after values,
    /// removed items go.
    public func applying(_ delta: ConfigurationDelta) -> InventoryState {
        var copy = self
        for (category, change) in delta.categories {
            var byKey = copy.items[category] ?? [:]
            for entry in change.removed { byKey[entry.key] = nil }
            for entry in change.added + change.changed {
                if let after = entry.after {
                    byKey[entry.key] = InventoryItem(
                        key: entry.key, name: InventoryItem.name(for: category, key: entry.key, attributes: after),
                        attributes: after)
                }
            }
            copy.items[category] = byKey
        }
        return copy
    }
}

extension InventoryItem {
    /// The name of an item rebuilt from its key and attributes (as deltas store them).
    public static func name(for category: InventoryCategory, key: String, attributes: [String: String]) -> String {
        switch category {
        case .packages: return attributes["name"] ?? key
        case .ports:
            return "\(attributes["transport"] ?? "")/\(attributes["port"] ?? "")"
        default: return key
        }
    }
}

extension InventorySnapshot {
    /// The snapshot's items of one category.
    public func items(_ category: InventoryCategory) -> [InventoryItem] {
        switch category {
        case .system:
            var result = [
                InventoryItem(key: "hostname", name: "hostname", attributes: ["name": hostname]),
                InventoryItem(
                    key: "os", name: "os",
                    attributes: [
                        "id": os.id, "version": os.versionID, "codename": os.versionCodename, "pretty": os.prettyName,
                    ]),
                InventoryItem(
                    key: "kernel", name: "kernel", attributes: ["release": kernel.release, "machine": kernel.machine]),
                InventoryItem(key: "cpu", name: "cpu", attributes: ["model": cpu.model, "count": String(cpu.count)]),
                InventoryItem(key: "memory", name: "memory", attributes: ["total_kib": String(memory.totalKiB)]),
            ]
            for disk in disks {
                result.append(
                    InventoryItem(
                        key: "disk \(disk.mountPoint)", name: disk.mountPoint,
                        attributes: ["device": disk.device, "type": disk.fileSystem, "size_kib": String(disk.sizeKiB)]))
            }
            return result
        case .packages:
            return packages.map {
                InventoryItem(
                    key: "\($0.name):\($0.architecture)", name: $0.name,
                    attributes: ["name": $0.name, "arch": $0.architecture, "version": $0.version, "status": $0.status])
            }
        case .files:
            return files.map { file in
                var attributes = [
                    "type": file.kind.rawValue, "mode": file.mode, "owner": file.owner, "group": file.group,
                ]
                if let size = file.size { attributes["size"] = String(size) }
                if let sha256 = file.sha256 { attributes["sha256"] = sha256 }
                if let target = file.linkTarget { attributes["target"] = target }
                return InventoryItem(key: file.path, name: file.path, attributes: attributes)
            }
        case .units:
            return units.map {
                InventoryItem(key: $0.name, name: $0.name, attributes: ["enabled": $0.enabled, "active": $0.active])
            }
        case .users:
            return users.map {
                InventoryItem(
                    key: $0.name, name: $0.name,
                    attributes: ["uid": String($0.uid), "gid": String($0.gid), "home": $0.home, "shell": $0.shell])
            }
        case .groups:
            return groups.map {
                InventoryItem(
                    key: $0.name, name: $0.name,
                    attributes: ["gid": String($0.gid), "members": $0.members.sorted().joined(separator: ",")])
            }
        case .ports:
            return ports.map {
                InventoryItem(
                    key: $0.key, name: "\($0.transport.rawValue)/\($0.port)",
                    attributes: ["transport": $0.transport.rawValue, "address": $0.address, "port": String($0.port)])
            }
        }
    }
}

extension InventorySnapshot {
    /// Rebuilds a snapshot from a state, the inverse of `items(_:)`: how a cell's state after
    /// install (its baseline plus its delta) becomes a full inventory again.
    public init(state: InventoryState, watchedPaths: [String] = []) {
        let system = state[.system]
        func value(_ key: String, _ field: String) -> String { system[key]?.attributes[field] ?? "" }
        func number(_ text: String?) -> Int { text.flatMap { Int($0) } ?? 0 }
        self.init(
            hostname: value("hostname", "name"),
            os: OSRelease(
                id: value("os", "id"), versionID: value("os", "version"), versionCodename: value("os", "codename"),
                prettyName: value("os", "pretty")),
            kernel: KernelInfo(release: value("kernel", "release"), machine: value("kernel", "machine")),
            cpu: CPUInfo(model: value("cpu", "model"), count: number(value("cpu", "count"))),
            memory: MemoryInfo(totalKiB: number(value("memory", "total_kib"))),
            disks: system.values.filter { $0.key.hasPrefix("disk ") }.map {
                DiskRecord(
                    mountPoint: String($0.key.dropFirst(5)), device: $0.attributes["device"] ?? "",
                    fileSystem: $0.attributes["type"] ?? "", sizeKiB: number($0.attributes["size_kib"]))
            },
            packages: state[.packages].values.map {
                PackageRecord(
                    name: $0.attributes["name"] ?? $0.name, architecture: $0.attributes["arch"] ?? "",
                    version: $0.attributes["version"] ?? "", status: $0.attributes["status"] ?? "")
            },
            watchedPaths: watchedPaths,
            files: state[.files].values.map {
                let a = $0.attributes
                return FileRecord(
                    path: $0.key, kind: FileRecord.Kind(rawValue: a["type"] ?? "") ?? .other, mode: a["mode"] ?? "",
                    owner: a["owner"] ?? "", group: a["group"] ?? "", size: a["size"].flatMap { Int($0) },
                    sha256: a["sha256"], linkTarget: a["target"])
            },
            units: state[.units].values.map {
                UnitRecord(name: $0.key, enabled: $0.attributes["enabled"] ?? "", active: $0.attributes["active"] ?? "")
            },
            users: state[.users].values.map {
                UserRecord(
                    name: $0.key, uid: number($0.attributes["uid"]), gid: number($0.attributes["gid"]),
                    home: $0.attributes["home"] ?? "", shell: $0.attributes["shell"] ?? "")
            },
            groups: state[.groups].values.map {
                let members = $0.attributes["members"] ?? ""
                return GroupRecord(
                    name: $0.key, gid: number($0.attributes["gid"]),
                    members: members.isEmpty ? [] : members.split(separator: ",").map(String.init))
            },
            ports: state[.ports].values.compactMap {
                guard let transport = PortRecord.Transport(rawValue: $0.attributes["transport"] ?? "") else {
                    return nil
                }
                return PortRecord(
                    transport: transport, address: $0.attributes["address"] ?? "", port: number($0.attributes["port"]))
            })
        self = normalized()
    }
}
