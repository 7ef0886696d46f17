import Foundation
import HostIO
import Model

/// The watched files of a known system state, as cheap metadata with each regular file's
/// hash: what an incremental inventory compares against.
///
/// Inodes and ctimes belong to one file system, so a listing describes one booted copy
/// (in the lab: one slot on one host), not an image.
public struct FileListing: Codable, Sendable, Equatable {
    public static let formatVersion = 1

    public struct Entry: Codable, Sendable, Equatable {
        /// `type mode uid gid size inode links mtime ctime`, as `find -printf` wrote them.
        public var metadata: String
        public var sha256: String?
    }

    public var format: Int
    /// The digest of the script that made it: a listing is only compared with one made the same way.
    public var key: String
    public var entries: [String: Entry]
    /// The unit files' states and what decides them, when the script recorded them.
    public var units: UnitReference?

    public init(key: String, entries: [String: Entry], units: UnitReference? = nil) {
        format = Self.formatVersion
        self.key = key
        self.entries = entries
        self.units = units
    }

    public static func decode(_ data: Data) throws -> FileListing {
        struct Header: Decodable { var format: Int }
        let header = try StableJSON.decode(Header.self, from: data)
        guard header.format == formatVersion else {
            throw ChangelabError("a file listing of format \(header.format) (this changelab reads \(formatVersion))")
        }
        return try StableJSON.decode(FileListing.self, from: data)
    }
}

/// An inventory that hashes only what changed.
///
/// One `find -printf` pass lists the watched trees' metadata (type, mode, owner, size,
/// inode, link count, mtime, ctime); only regular files whose metadata differs from the
/// reference listing, or that are new, are hashed, in a second short command. Every other
/// file keeps the reference's hash. ctime cannot be set from user space, so content
/// changed behind a reset mtime is still caught; a new inode catches delete-and-recreate,
/// a link count a new hard link. Packages, units, users, groups and ports are collected as
/// in the full inventory, so the snapshot (and any delta from it) is the full one's.
public struct IncrementalCollector: Sendable {
    public let runner: any CommandRunner
    public let options: InventoryOptions

    public init(runner: any CommandRunner, options: InventoryOptions) {
        self.runner = runner
        self.options = options
    }

    /// What `collect(against:)` produced, and how much it had to hash.
    public struct Result: Sendable {
        public var inventory: CollectedInventory
        /// Regular files hashed because they are new or their metadata changed.
        public var hashed: Int
        /// Seconds spent in the guest commands (round trips included); the rest of
        /// `inventory.seconds` is parsing and comparing on this host.
        public var commandSeconds: Double
        /// Guest commands sent: one, a second when units changed (their states), a third when
        /// a changed file needed hashing apart.
        public var commands: Int
        /// Units whose unit-file state was asked again (nil: all of them, the whole list).
        public var unitsAsked: [String]?
    }

    /// The key of listings this collector can compare with.
    public var listingKey: String { SHA256Digest(of: InventoryScript.render(options, files: .listed(hashes: true))).short }

    /// A full inventory together with its listing: the reference for later incremental ones.
    public func record() async throws -> (CollectedInventory, FileListing) {
        let started = ContinuousClock.now
        let output = try await run(InventoryScript.render(options, files: .listed(hashes: true)), what: "the file listing")
        var (snapshot, warnings) = InventoryParser.parse(output.stdoutText, options: options)
        warnings += output.stderrText.split(separator: "\n").map(String.init)
        snapshot = snapshot.normalized()
        let hashes = Dictionary(snapshot.files.map { ($0.path, $0.sha256) }, uniquingKeysWith: { first, _ in first })
        var entries: [String: FileListing.Entry] = [:]
        for (path, metadata) in Self.listing(in: output.stdoutText, root: options.normalizedRoot) {
            entries[path] = FileListing.Entry(metadata: metadata, sha256: hashes[path] ?? nil)
        }
        let inventory = CollectedInventory(
            snapshot: snapshot, warnings: warnings, collectedAt: Date(), seconds: started.secondsSince)
        let units = UnitReference.from(
            Self.sections(["unit-files", "unit-dirs", "unit-also"], in: output.stdoutText), root: options.normalizedRoot)
        return (inventory, FileListing(key: listingKey, entries: entries, units: units))
    }

    /// The inventory now, hashing only files that differ from `reference`.
    public func collect(against reference: FileListing) async throws -> Result {
        guard reference.key == listingKey else {
            throw ChangelabError(
                "internal: the reference listing was made by another script (\(reference.key), expected \(listingKey))")
        }
        let started = ContinuousClock.now
        let collectedAt = Date()
        // One command: the guest hashes, in the same find pass, every regular file whose ctime
        // is newer than the reference's newest. Changed files always are; the metadata
        // comparison below checks it.
        let since = Self.newestCtime(of: reference) ?? "0"
        let scanStarted = ContinuousClock.now
        let scan = try await run(
            InventoryScript.render(
                options, files: .listedChangedSince(ctime: since), unitFiles: reference.units == nil,
                unitsChangedSince: reference.units.map { Self.newestCtime(ofUnitDirectories: $0) ?? "0" }),
            what: "the inventory")
        var commandSeconds = scanStarted.secondsSince
        var commands = 1
        var unitsAsked: [String]?
        var output = scan.stdoutText
        if let units = reference.units {
            // The unit files' states: the reference's, asked again only for units whose files
            // or symlinks changed — already answered by the scan when it asked about them all.
            let found = Self.sections(["unit-dirs", "unit-also", "unit-asked", "unit-fresh"], in: output)
            let now = UnitReference.directories(found["unit-dirs"] ?? [], root: options.normalizedRoot)
            let changed = UnitFileDiff.changed(reference: units, directories: now, also: (found["unit-also"] ?? []).map(String.init))
            var lines = units.files
            unitsAsked = changed?.sorted()
            let askedInScan = (found["unit-asked"] ?? []).map(String.init)
            if let changed, !changed.isEmpty, UnitFileDiff.covers(askedInScan, changed) {
                // Every unit the scan answered for has its current state: its lines replace
                // the reference's, and so do those of changed units it no longer lists.
                let freshLines = (found["unit-fresh"] ?? []).map(String.init).filter { !$0.isEmpty }
                let answered = Set(freshLines.compactMap(UnitFileDiff.unitName)).union(changed)
                lines = lines.filter { UnitFileDiff.unitName($0).map { !answered.contains($0) } ?? true } + freshLines
            } else if changed?.isEmpty != true {
                let asked = ContinuousClock.now
                let fresh = try await run(
                    InventoryScript.unitFilesScript(options, units: changed.map(UnitFileDiff.patterns) ?? []),
                    what: "the changed units' states")
                commandSeconds += asked.secondsSince
                commands += 1
                let freshLines = fresh.stdoutText.split(separator: "\n").map(String.init).filter { !$0.isEmpty }
                if let changed {
                    lines = lines.filter { UnitFileDiff.unitName($0).map { !changed.contains($0) } ?? true } + freshLines
                } else {
                    lines = freshLines
                }
            }
            output += "\n" + InventoryScript.marker + "unit-files\n" + lines.joined(separator: "\n") + "\n"
        }
        let listing = Self.listing(in: output, root: options.normalizedRoot)
        let changed = listing.compactMap { path, metadata -> String? in
            guard metadata.hasPrefix("f\t") else { return nil }
            return reference.entries[path]?.metadata == metadata ? nil : path
        }.sorted()
        let hashedInGuest = Self.hashedPaths(in: output, root: options.normalizedRoot)
        // A changed file the ctime test missed (a guest clock set backwards) is hashed in a
        // second command, so the snapshot never depends on the clock.
        let missed = changed.filter { !hashedInGuest.contains($0) }
        if !missed.isEmpty {
            let hashStarted = ContinuousClock.now
            let hashes = try await run(
                Self.hashScript(missed, root: options.normalizedRoot), what: "the changed files' hashes")
            commandSeconds += hashStarted.secondsSince
            commands += 1
            output += "\n" + InventoryScript.marker + "sha256\n" + hashes.stdoutText
        }
        var (snapshot, warnings) = InventoryParser.parse(output, options: options)
        warnings += scan.stderrText.split(separator: "\n").map(String.init)
        let unchanged = Set(listing.keys).subtracting(changed).subtracting(hashedInGuest)
        for index in snapshot.files.indices where snapshot.files[index].kind == .file {
            let path = snapshot.files[index].path
            if unchanged.contains(path), let known = reference.entries[path] {
                snapshot.files[index].sha256 = known.sha256
            }
        }
        snapshot = snapshot.normalized()
        return Result(
            inventory: CollectedInventory(
                snapshot: snapshot, warnings: warnings, collectedAt: collectedAt, seconds: started.secondsSince),
            hashed: hashedInGuest.count + missed.count, commandSeconds: commandSeconds, commands: commands, unitsAsked: unitsAsked)
    }

    /// The newest ctime in a listing, as `find` wrote it (seconds since the epoch); nil for
    /// an empty listing.
    static func newestCtime(of listing: FileListing) -> String? {
        newest(listing.entries.values.compactMap { $0.metadata.split(separator: "\t").last })
    }

    /// The newest ctime among a reference's unit-folder entries, as `find` wrote it; nil
    /// when it has none.
    static func newestCtime(ofUnitDirectories units: UnitReference) -> String? {
        newest(units.directories.values.compactMap { metadata in
            let fields = metadata.split(separator: "\t", omittingEmptySubsequences: false)
            return fields.count == 7 ? fields[5] : nil
        })
    }

    /// The largest of some decimal fields, as written; nil when none parses.
    private static func newest(_ fields: [Substring]) -> String? {
        var newest: (value: Double, text: String)?
        for field in fields {
            guard let value = Double(field), value.isFinite else { continue }
            if newest == nil || value > newest?.value ?? 0 { newest = (value, String(field)) }
        }
        return newest?.text
    }

    /// The lines of the named sections of a script's output (a section that comes twice adds up).
    static func sections(_ names: Set<String>, in output: String) -> [String: [Substring]] {
        var found: [String: [Substring]] = [:]
        var current: String?
        for line in output.split(separator: "\n", omittingEmptySubsequences: true) {
            if line.hasPrefix(InventoryScript.marker) {
                let name = String(line.dropFirst(InventoryScript.marker.count))
                current = names.contains(name) ? name : nil
                if let current, found[current] == nil { found[current] = [] }
                continue
            }
            if let current { found[current, default: []].append(line) }
        }
        return found
    }

    /// The root-relative paths the output's `sha256` sections hashed.
    static func hashedPaths(in output: String, root: String) -> Set<String> {
        let prefix = root == "/" ? "" : root
        var inHashes = false
        var paths: Set<String> = []
        for line in output.split(separator: "\n", omittingEmptySubsequences: true) {
            if line.hasPrefix(InventoryScript.marker) {
                inHashes = line == InventoryScript.marker + "sha256"
                continue
            }
            // sha256sum: `HASH  PATH`, or `\HASH  PATH` with the path escaped; an escaped
            // name is left out (it counts as not hashed and goes to the second command).
            guard inHashes, !line.hasPrefix("\\"), let gap = line.range(of: "  ") else { continue }
            var path = String(line[gap.upperBound...])
            if !prefix.isEmpty, path.hasPrefix(prefix) {
                path = String(path.dropFirst(prefix.count))
                if path.isEmpty { path = "/" }
            }
            paths.insert(path)
        }
        return paths
    }

    private func run(_ script: String, what: String) async throws -> CommandResult {
        let result = try await runner.runShell(script, timeout: options.timeout)
        guard result.succeeded else { throw InventoryCollector.failure(of: result, collecting: what, options: options) }
        return result
    }

    /// `sha256sum` of the given files (root-relative), in sha256sum's own output format.
    static func hashScript(_ paths: [String], root: String) -> String {
        let prefix = root == "/" ? "" : root
        return "sha256sum -- " + paths.map { InventoryScript.shellQuote(prefix + $0) }.joined(separator: " ")
            + " 2>/dev/null\nexit 0\n"
    }

    /// The `listing` section: path (root-relative, as the parser names files) → metadata.
    /// A line that cannot be read is left out, so its file counts as new and is hashed.
    static func listing(in output: String, root: String) -> [String: String] {
        let prefix = root == "/" ? "" : root
        var inListing = false
        var entries: [String: String] = [:]
        for line in output.split(separator: "\n", omittingEmptySubsequences: true) {
            if line.hasPrefix(InventoryScript.marker) {
                inListing = line == InventoryScript.marker + "listing"
                continue
            }
            guard inListing else { continue }
            let fields = line.split(separator: "\t", maxSplits: 9, omittingEmptySubsequences: false)
            guard fields.count == 10 else { continue }
            var path = String(fields[9])
            if !prefix.isEmpty, path.hasPrefix(prefix) {
                path = String(path.dropFirst(prefix.count))
                if path.isEmpty { path = "/" }
            }
            entries[path] = fields[0..<9].joined(separator: "\t")
        }
        return entries
    }
}
