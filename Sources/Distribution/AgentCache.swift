import Crypto
import Foundation
import HostIO
import Model

/// One change in an agent's cache: the signed manifest, the package bytes and where they stand.
public struct CacheEntry: Codable, Sendable, Equatable {
    public static let formatVersion = 1

    public var version: Int = CacheEntry.formatVersion
    public var change: String
    public var release: String
    public var manifest: ReleaseManifest
    public var signedManifest: SignedEnvelope
    public var phase: TargetPhase
    /// Pinned entries never expire: every entry is pinned until it has been activated.
    public var pinned: Bool
    public var expiresAt: Date
    public var installedVersion: Bool
    public var lastResult: InstallResult?
    /// The package file as it was when its whole digest last verified.
    public var verifiedStamp: FileStamp?
    /// Who delivered the verified bytes (peers on the segment, the core, or both).
    public var source: ByteSource?
    /// Of them, how many came from peers.
    public var bytesFromPeers: Int64?
}

/// Identity of a file's content as the file system tracks it: if none of these changed, the
/// bytes were not rewritten, so a whole-file check made then still holds.
public struct FileStamp: Codable, Sendable, Equatable {
    public var size: Int64
    public var inode: UInt64
    public var modified: Int64
    public var changed: Int64

    public init?(path: String) {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        size = Int64(st.st_size)
        inode = UInt64(st.st_ino)
        modified = Int64(st.st_mtim.tv_sec) * 1_000_000_000 + Int64(st.st_mtim.tv_nsec)
        changed = Int64(st.st_ctim.tv_sec) * 1_000_000_000 + Int64(st.st_ctim.tv_nsec)
    }
}

/// What running an installer step produced.
public struct InstallResult: Codable, Sendable, Equatable {
    public var exitCode: Int32
    public var outputTail: String
    public var failure: Failure?
}

/// The agent's package cache: `cache/<sha256 of the change id>/{entry.json,package.deb}`.
///
/// Folder names are digests, never a name from the network, so no job can point the cache
/// at another path; change ids are checked against `SafeName` as well before they get here.
/// Package bytes are only ever written a whole verified chunk at a time, so after any
/// interruption the file is a prefix of verified chunks (re-checked on resume) and at most
/// the chunk that was in flight is fetched again.
public struct AgentCache: Sendable {
    public let directory: String
    public let lifetime: TimeInterval

    public init(directory: String, lifetime: TimeInterval = 60 * 24 * 3600) {
        self.directory = directory
        self.lifetime = lifetime
    }

    /// The folder name of `change`: a digest, whatever the change id contains.
    static func folderName(_ change: String) -> String { SHA256Digest(of: "change:" + change).hex }

    func folder(_ change: String) -> String { "\(directory)/\(Self.folderName(change))" }
    public func packagePath(_ change: String) -> String { folder(change) + "/package.deb" }
    func entryPath(_ change: String) -> String { folder(change) + "/entry.json" }

    /// The entry for `change`, or nil when there is none or it cannot be used.
    public func entry(_ change: String) -> CacheEntry? {
        (try? checkedEntry(change)) ?? nil
    }

    /// The entry for `change`; nil when there is none.
    ///
    /// - Throws: when an entry is there but unreadable or of an unknown format: it is left
    ///   alone (a newer changelab may have written it), and the job that needs it is refused.
    public func checkedEntry(_ change: String) throws -> CacheEntry? {
        let path = entryPath(change)
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        struct Version: Decodable { var version: Int }
        guard let version = try? StableJSON.decode(Version.self, from: data).version else {
            throw ChangelabError(
                "the cache entry \(path) is damaged", fix: "remove the folder \(folder(change)) to seed it again")
        }
        guard version == CacheEntry.formatVersion else {
            throw ChangelabError(
                "the cache entry \(path) has format \(version); this agent reads \(CacheEntry.formatVersion)",
                fix: "upgrade changelab on this agent, or remove the folder \(folder(change))")
        }
        do {
            let entry = try StableJSON.decode(CacheEntry.self, from: data)
            guard entry.change == change else {
                throw ChangelabError("the cache entry \(path) is for another change (\(entry.change))")
            }
            return entry
        } catch let error as ChangelabError {
            throw error
        } catch {
            throw ChangelabError(
                "the cache entry \(path) is damaged", why: "\(error)",
                fix: "remove the folder \(folder(change)) to seed it again")
        }
    }

    public func save(_ entry: CacheEntry) throws {
        try AtomicFile.write(try StableJSON.data(entry), to: entryPath(entry.change))
    }

    /// Every readable entry (folders named by digest only).
    public func entries() -> [CacheEntry] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return names.sorted().compactMap { name -> CacheEntry? in
            guard name.count == 64, SHA256Digest(hex: name) != nil,
                let data = FileManager.default.contents(atPath: "\(directory)/\(name)/entry.json"),
                let entry = try? StableJSON.decode(CacheEntry.self, from: data),
                entry.version == CacheEntry.formatVersion, Self.folderName(entry.change) == name
            else { return nil }
            return entry
        }
    }

    /// What an entry of the layout before the ledger knew of the orders it carried out.
    public struct LegacyRecord: Sendable {
        public var change: String
        public var package: String
        public var version: String
        public var activated: Bool
        public var previousVersion: String?
        public var ordersDone: [String]
    }

    /// Moves entries of the layout before digest-named folders (`cache/<change>/`) to their
    /// digest folder, and returns what they recorded of installs and orders so the agent's
    /// ledger can take it over; a folder whose name is not a safe change id is left alone.
    public func migrateLegacyLayout() -> [LegacyRecord] {
        struct Legacy: Decodable {
            var change: String
            var manifest: ReleaseManifest
            var phase: TargetPhase
            var previousVersion: String?
            var ordersDone: [String]?
        }
        var records: [LegacyRecord] = []
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        for name in names where !(name.count == 64 && SHA256Digest(hex: name) != nil) {
            guard SafeName.problem(name) == nil,
                let data = FileManager.default.contents(atPath: "\(directory)/\(name)/entry.json"),
                let legacy = try? StableJSON.decode(Legacy.self, from: data), legacy.change == name,
                !FileManager.default.fileExists(atPath: folder(name))
            else { continue }
            try? FileManager.default.moveItem(atPath: "\(directory)/\(name)", toPath: folder(name))
            records.append(
                LegacyRecord(
                    change: name, package: legacy.manifest.package, version: legacy.manifest.packageVersion,
                    activated: legacy.phase == .activated, previousVersion: legacy.previousVersion,
                    ordersDone: legacy.ordersDone ?? []))
        }
        return records
    }

    /// Opens (or starts) the entry for a job's release.
    public func open(change: String, manifest: ReleaseManifest, signed: SignedEnvelope, now: Date = Date()) throws
        -> CacheEntry
    {
        try SafeName.check(change, what: "change id")
        if let existing = try checkedEntry(change), existing.manifest.digest == manifest.digest { return existing }
        // Another release for this change, or a partial folder: the folder is ours (a digest name).
        try? FileManager.default.removeItem(atPath: folder(change))
        try FileManager.default.createDirectory(atPath: folder(change), withIntermediateDirectories: true)
        let entry = CacheEntry(
            change: change, release: manifest.release, manifest: manifest, signedManifest: signed, phase: .seeding,
            pinned: true, expiresAt: now.addingTimeInterval(lifetime), installedVersion: false, lastResult: nil,
            verifiedStamp: nil)
        try save(entry)
        return entry
    }

    /// Removes entries past their expiry that are not pinned; returns the changes removed.
    @discardableResult
    public func expire(now: Date = Date()) -> [String] {
        var removed: [String] = []
        for entry in entries() where !entry.pinned && entry.expiresAt < now {
            try? FileManager.default.removeItem(atPath: folder(entry.change))
            removed.append(entry.change)
        }
        return removed
    }

    /// How many leading chunks of the package file verify against the manifest; the file
    /// is cut back to them, dropping any damaged or partial tail.
    public func verifiedPrefix(_ entry: CacheEntry) throws -> Int {
        let path = packagePath(entry.change)
        guard let handle = FileHandle(forUpdatingAtPath: path) else { return 0 }
        defer { try? handle.close() }
        var good = 0
        for index in 0..<entry.manifest.chunkCount {
            guard entry.manifest.chunkMatches(try entry.manifest.readChunk(index, from: handle), index: index) else {
                break
            }
            good += 1
        }
        let keep =
            good == entry.manifest.chunkCount ? entry.manifest.size : Int64(good) * Int64(entry.manifest.chunkSize)
        try handle.truncate(atOffset: UInt64(keep))
        return good
    }

    /// Whether the package still holds the bytes that verified: unchanged since the last whole
    /// check (same size, inode, modification and change times), or verifying again now.
    public func stillVerified(_ entry: CacheEntry) -> Bool {
        if let stamp = entry.verifiedStamp, stamp == FileStamp(path: packagePath(entry.change)) { return true }
        return (try? verifyWhole(entry)) == true
    }

    /// Checks the whole file against the manifest's digest.
    public func verifyWhole(_ entry: CacheEntry) throws -> Bool {
        guard let handle = FileHandle(forReadingAtPath: packagePath(entry.change)) else { return false }
        defer { try? handle.close() }
        var hash = SHA256()
        var size: Int64 = 0
        while let data = try handle.read(upToCount: 1 << 20), !data.isEmpty {
            hash.update(data: data)
            size += Int64(data.count)
        }
        return size == entry.manifest.size && hash.finalize().hexString == entry.manifest.digest.hex
    }
}
