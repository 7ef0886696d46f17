import Foundation
import Model

/// Turns the collection script's sectioned output into an `InventorySnapshot`.
///
/// Pure: it runs on golden fixtures in tests exactly as on live output.
public enum InventoryParser {
    /// The snapshot (noise removed, lists sorted) and warnings about lines it could not read.
    public static func parse(_ output: String, options: InventoryOptions) -> (InventorySnapshot, [String]) {
        var sections: [String: [Substring]] = [:]
        var current: String?
        for line in output.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix(InventoryScript.marker) {
                // A section that comes again (hashes from a second command) adds to the first.
                let name = String(line.dropFirst(InventoryScript.marker.count))
                current = name
                if sections[name] == nil { sections[name] = [] }
            } else if let current, !line.isEmpty {
                sections[current, default: []].append(line)
            }
        }
        var warnings: [String] = []
        if sections["end"] == nil {
            warnings.append("the collection output ended early (no end marker); the inventory may be incomplete")
        }
        func lines(_ name: String) -> [Substring] { sections[name] ?? [] }

        var snapshot = InventorySnapshot()
        snapshot.hostname = lines("hostname").first.map { $0.trimmingCharacters(in: .whitespaces) } ?? ""
        snapshot.os = parseOSRelease(lines("os-release"))
        let kernel = lines("kernel")
        snapshot.kernel = KernelInfo(
            release: kernel.first.map(String.init) ?? "", machine: kernel.dropFirst().first.map(String.init) ?? "")
        snapshot.cpu = parseCPU(lines("cpu"))
        snapshot.memory = MemoryInfo(
            totalKiB: lines("memory").first.flatMap { line in
                line.split(whereSeparator: { $0 == " " || $0 == "\t" }).dropFirst().first.flatMap { Int($0) }
            } ?? 0)
        snapshot.disks = parseDisks(lines("disks"))
        snapshot.packages = lines("packages").compactMap { line in
            let fields = line.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
            guard fields.count == 4, !fields[0].isEmpty else {
                warnings.append("unreadable package line: \(line)")
                return nil
            }
            return PackageRecord(name: fields[0], architecture: fields[1], version: fields[2], status: fields[3])
        }
        snapshot.users = lines("passwd").compactMap { line in
            let f = line.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
            guard f.count >= 7, let uid = Int(f[2]), let gid = Int(f[3]) else { return nil }
            return UserRecord(name: f[0], uid: uid, gid: gid, home: f[5], shell: f[6])
        }
        snapshot.groups = lines("group").compactMap { line in
            let f = line.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
            guard f.count >= 4, let gid = Int(f[2]) else { return nil }
            return GroupRecord(name: f[0], gid: gid, members: f[3].split(separator: ",").map(String.init).sorted())
        }
        snapshot.units = parseUnits(files: lines("unit-files"), loaded: lines("units"))
        snapshot.ports = parsePorts(lines("tcp"), transport: .tcp) + parsePorts(lines("udp"), transport: .udp)
        snapshot.watchedPaths = options.watchedPaths
        snapshot.files = parseFiles(
            lines("files"), hashes: lines("sha256"), root: options.normalizedRoot, users: snapshot.users,
            groups: snapshot.groups, warnings: &warnings)

        let state = options.noise.removing(from: InventoryState(snapshot))
        var kept = snapshot
        kept.files = snapshot.files.filter { state[.files][$0.path] != nil }
        kept.units = snapshot.units.filter { state[.units][$0.name] != nil }
        kept.packages = snapshot.packages.filter { state[.packages]["\($0.name):\($0.architecture)"] != nil }
        kept.users = snapshot.users.filter { state[.users][$0.name] != nil }
        kept.groups = snapshot.groups.filter { state[.groups][$0.name] != nil }
        kept.ports = snapshot.ports.filter { state[.ports][$0.key] != nil }
        return (kept.normalized(), warnings)
    }

    static func parseOSRelease(_ lines: [Substring]) -> OSRelease {
        var values: [String: String] = [:]
        for line in lines {
            guard let equals = line.firstIndex(of: "="), !line.hasPrefix("#") else { continue }
            var value = String(line[line.index(after: equals)...])
            if value.count >= 2, let first = value.first, first == "\"" || first == "'", value.last == first {
                value = String(value.dropFirst().dropLast())
                if first == "\"" {
                    value = value.replacingOccurrences(of: "\\\"", with: "\"").replacingOccurrences(
                        of: "\\\\", with: "\\")
                }
            }
            values[String(line[..<equals])] = value
        }
        return OSRelease(
            id: values["ID"] ?? "", versionID: values["VERSION_ID"] ?? "",
            versionCodename: values["VERSION_CODENAME"] ?? "", prettyName: values["PRETTY_NAME"] ?? "")
    }

    static func parseCPU(_ lines: [Substring]) -> CPUInfo {
        var model = ""
        var count = 0
        for line in lines {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let key = line[..<colon].trimmingCharacters(in: .whitespaces)
            if key == "processor" { count += 1 }
            if key == "model name", model.isEmpty {
                model = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            }
        }
        return CPUInfo(model: model, count: count)
    }

    /// File systems that hold no configuration: memory-backed, kernel views, container layers.
    static let pseudoFileSystems: Set<String> = [
        "tmpfs", "devtmpfs", "proc", "sysfs", "cgroup", "cgroup2", "overlay", "squashfs", "devpts", "mqueue",
        "debugfs", "tracefs", "securityfs", "pstore", "bpf", "autofs", "hugetlbfs", "fusectl", "configfs", "ramfs",
        "nsfs", "efivarfs", "binfmt_misc", "rpc_pipefs", "nfsd",
    ]

    static func parseDisks(_ lines: [Substring]) -> [DiskRecord] {
        lines.dropFirst().compactMap { line in
            let f = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
            guard f.count >= 7, let size = Int(f[2]), !pseudoFileSystems.contains(f[1]), !f[1].hasPrefix("fuse")
            else { return nil }
            return DiskRecord(
                mountPoint: f[6...].joined(separator: " "), device: f[0], fileSystem: f[1], sizeKiB: size)
        }
    }

    /// Unit-file states from `list-unit-files`; active states from `list-units` when systemd
    /// runs (its section then starts with `running`), `unknown` otherwise.
    static func parseUnits(files: [Substring], loaded: [Substring]) -> [UnitRecord] {
        func words(_ line: Substring) -> [String] {
            var w = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
            if let first = w.first, first == "●" || first == "*" { w.removeFirst() }
            return w
        }
        let running = loaded.first == "running"
        var enabled: [String: String] = [:]
        for line in files {
            let w = words(line)
            if w.count >= 2 { enabled[w[0]] = w[1] }
        }
        var active: [String: String] = [:]
        for line in loaded.dropFirst() {
            let w = words(line)
            if w.count >= 3 { active[w[0]] = w[2] }
        }
        let names = Set(enabled.keys).union(active.keys)
        /// An instance (`getty@tty1.service`) takes its template's state; units with no unit
        /// file at all were generated (from fstab, …) or started as transient units.
        func state(_ name: String) -> String {
            if let state = enabled[name] { return state }
            if let at = name.firstIndex(of: "@"), let dot = name.lastIndex(of: "."), at < dot,
                let template = enabled[String(name[...at]) + String(name[dot...])]
            {
                return template
            }
            return "generated"
        }
        return names.sorted().map { name in
            UnitRecord(name: name, enabled: state(name), active: running ? (active[name] ?? "inactive") : "unknown")
        }
    }

    /// Listening TCP sockets (state 0A) and bound, unconnected UDP sockets (state 07 with no
    /// remote address) from /proc/net/{tcp,tcp6,udp,udp6}.
    static func parsePorts(_ lines: [Substring], transport: PortRecord.Transport) -> [PortRecord] {
        var seen = Set<String>()
        var ports: [PortRecord] = []
        for line in lines {
            let f = line.split(separator: " ", omittingEmptySubsequences: true)
            guard f.count >= 4, f[0].hasSuffix(":") else { continue }
            let state = f[3]
            let remote = f[2]
            let listening =
                transport == .tcp
                ? state == "0A" : (state == "07" && remote.split(separator: ":").last == "0000")
            guard listening else { continue }
            let local = f[1].split(separator: ":")
            guard local.count == 2, let port = Int(local[1], radix: 16), (0...65535).contains(port),
                let address = decodeAddress(local[0])
            else {
                continue
            }
            let record = PortRecord(transport: transport, address: address, port: port)
            if seen.insert(record.key).inserted { ports.append(record) }
        }
        return ports
    }

    /// /proc/net addresses are the kernel's 32-bit words printed in host (little-endian) order.
    static func decodeAddress(_ hex: Substring) -> String? {
        guard hex.count == 8 || hex.count == 32 else { return nil }
        var bytes: [UInt8] = []
        var index = hex.startIndex
        while index < hex.endIndex {
            let end = hex.index(index, offsetBy: 8)
            guard let word = UInt32(hex[index..<end], radix: 16) else { return nil }
            bytes += [UInt8(word & 0xff), UInt8((word >> 8) & 0xff), UInt8((word >> 16) & 0xff), UInt8(word >> 24)]
            index = end
        }
        if bytes.count == 4 { return bytes.map(String.init).joined(separator: ".") }
        if bytes[0..<10].allSatisfy({ $0 == 0 }) && bytes[10] == 0xff && bytes[11] == 0xff {
            return "::ffff:" + bytes[12...].map(String.init).joined(separator: ".")
        }
        return formatIPv6(bytes)
    }

    /// RFC 5952 text: lowercase, no leading zeros, the longest run of zero groups as `::`.
    static func formatIPv6(_ bytes: [UInt8]) -> String {
        let groups = stride(from: 0, to: 16, by: 2).map { Int(bytes[$0]) << 8 | Int(bytes[$0 + 1]) }
        var bestStart = -1
        var bestLength = 0
        var start = -1
        for (i, group) in (groups + [1]).enumerated() {
            if group == 0 {
                if start < 0 { start = i }
            } else if start >= 0 {
                if i - start > bestLength && i - start > 1 {
                    bestStart = start
                    bestLength = i - start
                }
                start = -1
            }
        }
        let text = groups.map { String($0, radix: 16) }
        guard bestStart >= 0 else { return text.joined(separator: ":") }
        let head = text[..<bestStart].joined(separator: ":")
        let tail = text[(bestStart + bestLength)...].joined(separator: ":")
        return head + "::" + tail
    }

    static func parseFiles(
        _ lines: [Substring], hashes: [Substring], root: String, users: [UserRecord], groups: [GroupRecord],
        warnings: inout [String]
    ) -> [FileRecord] {
        let prefix = root == "/" ? "" : root
        func strip(_ path: String) -> String {
            guard !prefix.isEmpty, path.hasPrefix(prefix) else { return path }
            let rest = String(path.dropFirst(prefix.count))
            return rest.isEmpty ? "/" : rest
        }
        var sums: [String: String] = [:]
        for line in hashes {
            // sha256sum escapes names with a backslash or newline and marks the line with `\`.
            var text = Substring(line)
            let escaped = text.hasPrefix("\\")
            if escaped { text = text.dropFirst() }
            guard text.count > 66, let space = text.firstIndex(of: " "),
                let start = text.index(space, offsetBy: 2, limitedBy: text.endIndex)
            else { continue }
            let hash = String(text[..<space])
            var name = String(text[start...])
            if escaped {
                name = name.replacingOccurrences(of: "\\n", with: "\n").replacingOccurrences(of: "\\\\", with: "\\")
            }
            sums[strip(name)] = hash
        }
        let userNames = Dictionary(users.map { ($0.uid, $0.name) }, uniquingKeysWith: { first, _ in first })
        let groupNames = Dictionary(groups.map { ($0.gid, $0.name) }, uniquingKeysWith: { first, _ in first })
        var seen = Set<String>()
        var files: [FileRecord] = []
        for line in lines {
            let f = line.split(separator: "\t", maxSplits: 6, omittingEmptySubsequences: false).map(String.init)
            guard f.count == 7, let mode = Int(f[1], radix: 8), (0...0o7777).contains(mode), let uid = UInt32(f[2]),
                let gid = UInt32(f[3])
            else {
                warnings.append("unreadable file line: \(line)")
                continue
            }
            let path = strip(f[6])
            guard seen.insert(path).inserted else { continue }
            let kind: FileRecord.Kind =
                switch f[0] {
                case "f": .file
                case "d": .directory
                case "l": .symlink
                default: .other
                }
            var modeText = String(mode, radix: 8)
            while modeText.count < 4 { modeText = "0" + modeText }
            files.append(
                FileRecord(
                    path: path, kind: kind, mode: modeText, owner: userNames[Int(uid)] ?? String(uid),
                    group: groupNames[Int(gid)] ?? String(gid), size: kind == .file ? Int(f[4]).flatMap { $0 >= 0 ? $0 : nil } : nil,
                    sha256: kind == .file ? sums[path] : nil, linkTarget: kind == .symlink ? f[5] : nil))
        }
        return files
    }
}
