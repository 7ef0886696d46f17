import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The unit files' states as a reference recorded them, and what decides them: the unit
/// folders' entries and the `Also=` lines. With these an incremental inventory asks
/// `systemctl list-unit-files` only about the units whose state may have changed — the
/// whole list is the most expensive part of an inventory under TCG (about 6 s; 0.6 s for
/// a few named units).
public struct UnitReference: Codable, Sendable, Equatable {
    /// `systemctl list-unit-files --plain --no-legend` lines.
    public var files: [String]
    /// The `unit-dirs` section: path → `type mode inode size mtime ctime link-target`.
    public var directories: [String: String]
    /// The `unit-also` section: `file:Also=…` lines.
    public var also: [String]

    public init(files: [String], directories: [String: String], also: [String]) {
        self.files = files
        self.directories = directories
        self.also = also
    }

    /// From a script's output, when it has the unit sections; nil otherwise.
    static func from(_ sections: [String: [Substring]], root: String) -> UnitReference? {
        guard let folders = sections["unit-dirs"] else { return nil }
        return UnitReference(
            files: (sections["unit-files"] ?? []).map(String.init), directories: directories(folders, root: root),
            also: (sections["unit-also"] ?? []).map(String.init))
    }

    /// `unit-dirs` lines as path (root-relative) → metadata.
    static func directories(_ lines: [Substring], root: String) -> [String: String] {
        let prefix = root == "/" ? "" : root
        var entries: [String: String] = [:]
        for line in lines {
            let fields = line.split(separator: "\t", maxSplits: 7, omittingEmptySubsequences: false)
            guard fields.count == 8 else { continue }
            var path = String(fields[7])
            if !prefix.isEmpty, path.hasPrefix(prefix) { path = String(path.dropFirst(prefix.count)) }
            entries[path] = fields[0..<7].joined(separator: "\t")
        }
        return entries
    }
}

/// Which units' `list-unit-files` states may differ from a reference's.
enum UnitFileDiff {
    static let suffixes = [
        ".service", ".socket", ".target", ".timer", ".path", ".mount", ".automount", ".swap", ".slice", ".scope",
        ".device",
    ]

    static func isUnitName(_ text: Substring) -> Bool {
        suffixes.contains { text.hasSuffix($0) && text.count > $0.count }
    }

    /// The first word of a `list-unit-files` line.
    static func unitName(_ line: String) -> String? {
        line.split(whereSeparator: { $0 == " " || $0 == "\t" }).first.map(String.init)
    }

    /// The units to ask about again: every unit named by a changed, added or removed entry
    /// of the unit folders (the entry itself, the unit whose `.wants`, `.requires`,
    /// `.upholds` or `.d` folder holds it, a symlink's target), templates with their
    /// instances, and units tied to those by `Also=` either way. Empty when nothing changed;
    /// nil when a name holds a glob character (ask about every unit then).
    static func changed(reference: UnitReference, directories now: [String: String], also: [String]) -> Set<String>? {
        var names = Set<String>()
        for path in Set(reference.directories.keys).union(now.keys) where reference.directories[path] != now[path] {
            for component in path.split(separator: "/").suffix(2) {
                for suffix in [".wants", ".requires", ".upholds", ".d"] where component.hasSuffix(suffix) {
                    let unit = component.dropLast(suffix.count)
                    if isUnitName(unit) { names.insert(String(unit)) }
                }
                if isUnitName(component) { names.insert(String(component)) }
            }
            for metadata in [reference.directories[path], now[path]].compactMap({ $0 }) {
                let fields = metadata.split(separator: "\t", omittingEmptySubsequences: false)
                if fields.count == 7, let target = fields[6].split(separator: "/").last, isUnitName(target) {
                    names.insert(String(target))
                }
            }
        }
        guard !names.isEmpty else { return [] }
        let known = reference.files.compactMap(unitName)
        for name in names { if let template = template(of: name) { names.insert(template) } }
        let templates = names.filter { template(of: $0) == nil && $0.contains("@.") }
        for unit in known where templates.contains(where: { template(of: unit) == $0 }) { names.insert(unit) }
        // Also=: a unit's state can follow the units it names ("indirect"), and theirs its.
        let edges = alsoEdges(reference.also + also)
        for _ in 0..<20 {
            var grew = false
            for (unit, targets) in edges {
                if names.contains(unit) {
                    for target in targets where names.insert(target).inserted { grew = true }
                } else if !targets.isDisjoint(with: names) {
                    names.insert(unit)
                    grew = true
                }
            }
            if !grew { break }
        }
        // Patterns go after `--`, so `-.slice` is safe; a backslash (`\x2d`) is asked as `?`
        // (see `patterns`); a glob character would stand for more than its unit.
        if names.contains(where: { $0.contains(where: { "*?[".contains($0) }) }) { return nil }
        return names
    }

    /// The names as `list-unit-files` patterns: a backslash, which fnmatch may read as an
    /// escape, becomes `?` (it matches the backslash; any other unit it also matches comes
    /// back with its current state, which is right too).
    static func patterns(_ names: Set<String>) -> [String] {
        names.sorted().map { $0.replacingOccurrences(of: "\\", with: "?") }
    }

    /// True when every unit in `units` is matched by one of the names or patterns `asked`
    /// (`list-unit-files` matches them with fnmatch, and so does this).
    static func covers(_ asked: [String], _ units: Set<String>) -> Bool {
        units.allSatisfy { unit in asked.contains { fnmatch($0, unit, 0) == 0 } }
    }

    /// `a@b.service` → `a@.service`; nil for anything that is not an instance.
    static func template(of name: String) -> String? {
        guard let at = name.firstIndex(of: "@"), let dot = name.lastIndex(of: "."), at < dot,
            name.index(after: at) < dot
        else { return nil }
        return String(name[...at]) + String(name[dot...])
    }

    /// `file:Also=x y` lines as unit → the units it names.
    static func alsoEdges(_ lines: [String]) -> [String: Set<String>] {
        var edges: [String: Set<String>] = [:]
        for line in lines {
            guard let colon = line.firstIndex(of: ":"), let equals = line[colon...].firstIndex(of: "=") else { continue }
            guard let unit = line[..<colon].split(separator: "/").last, isUnitName(unit) else { continue }
            let targets = line[line.index(after: equals)...].split(whereSeparator: { $0 == " " || $0 == "\t" })
                .filter(isUnitName).map(String.init)
            edges[String(unit), default: []].formUnion(targets)
        }
        return edges
    }
}
