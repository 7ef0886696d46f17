import Foundation
import HostIO
import Model

/// The CMDB: pretty, stable JSON records in a git repository, one commit per transaction.
///
/// Layout (paths relative to the CMDB folder):
///
///     format.json                         {"format": "changelab-cmdb", "version": 1}
///     README.md                           what this folder is
///     baselines/NAME/VERSION.json         BaselineVersionRecord
///     inventories/AB/ABCDEF….json         InventorySnapshot, named by its SHA-256
///     artifacts/AB/ABCDEF….json           ArtifactRecord, by digest
///     runs/XY/RUN.json                    RunRecord
///     cells/XY/RUN/CELL.json              CellRecord
///     targets/XY/NAME.json                TargetRecord
///     changes/XY/ID.json                  change records (a later issue defines them)
///
/// XY is the first two hex digits of the SHA-256 of the run, target or change name
/// (`CMDBRecordKind.shard`), so no folder a transaction rewrites grows without bound.
///     .git/changelab/                     lock, journal of an unfinished transaction,
///                                         query index: not part of the history
///
/// `CMDBStore` reads; `CMDBWriter` writes. Any number of readers may run beside one writer:
/// records are replaced by rename, so a reader sees a whole old or a whole new record.
public struct CMDBStore: Sendable {
    /// The CMDB folder, absolute.
    public let path: String

    public static let formatName = "changelab-cmdb"
    /// 2: every commit is signed (version 1 CMDBs were not; `cmdb upgrade` raises them).
    public static let formatVersion = 2
    /// The trailer of the signed commit that accepts the unsigned history before it.
    static let checkpointTrailer = "Changelab-Checkpoint"
    static let branch = "main"

    var gitDirectory: String { path + "/.git" }
    var stateDirectory: String { path + "/.git/changelab" }
    var lockPath: String { stateDirectory + "/lock" }
    var journalPath: String { stateDirectory + "/journal.json" }
    var indexPath: String { stateDirectory + "/query-index" }

    struct FormatFile: Codable, Equatable {
        var format: String
        var version: Int
    }

    init(uncheckedPath path: String) {
        self.path = path
    }

    /// Opens an existing CMDB for reading.
    ///
    /// - Throws: `ChangelabError` when there is no CMDB at `path`, when the folder is not a
    ///   CMDB, or when it was written by a newer changelab.
    public static func open(_ path: String) throws -> CMDBStore {
        let store = CMDBStore(uncheckedPath: absolute(path))
        try store.checkFormat()
        return store
    }

    static func absolute(_ path: String) -> String {
        let full = path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
        return (full as NSString).standardizingPath
    }

    func checkFormat() throws {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw ChangelabError(
                "there is no CMDB at \(path)",
                fix: "record something first (the lab does), run 'changelab cmdb init --cmdb \(path)', "
                    + "or point --cmdb / CHANGELAB_CMDB at an existing CMDB")
        }
        guard isDirectory.boolValue else {
            throw ChangelabError("\(path) is a file, not a CMDB folder", fix: "pass a CMDB folder with --cmdb PATH")
        }
        guard let data = FileManager.default.contents(atPath: path + "/format.json") else {
            throw ChangelabError(
                "\(path) is not a changelab CMDB", why: "it has no format.json",
                fix: "pass the folder of a CMDB with --cmdb PATH, or create one in an empty folder with "
                    + "'changelab cmdb init --cmdb PATH'")
        }
        guard let format = try? StableJSON.decode(FormatFile.self, from: data), format.format == Self.formatName else {
            throw ChangelabError(
                "\(path) is not a changelab CMDB", why: "its format.json does not name the format '\(Self.formatName)'",
                fix: "restore format.json from git ('git -C \(path) checkout format.json') or pass another --cmdb PATH")
        }
        guard format.version <= Self.formatVersion else {
            throw ChangelabError(
                "the CMDB at \(path) has format version \(format.version); this changelab reads version "
                    + "\(Self.formatVersion) and older",
                fix: "use a newer changelab with this CMDB; nothing was changed")
        }
        guard FileManager.default.fileExists(atPath: gitDirectory + "/HEAD") else {
            throw ChangelabError(
                "\(path) has a format.json but no git repository", why: "the audit trail (.git) is missing",
                fix: "restore the CMDB from its git remote ('git clone REMOTE \(path)')")
        }
    }

    /// The version in format.json (checked by `checkFormat`).
    func formatVersion() throws -> Int {
        guard let data = FileManager.default.contents(atPath: path + "/format.json"),
            let format = try? StableJSON.decode(FormatFile.self, from: data)
        else { throw ChangelabError("\(path)/format.json cannot be read", fix: "run 'changelab cmdb verify'") }
        return format.version
    }

    /// The commit the branch points at; nil before the first transaction.
    public var head: String? { GitObjectWriter(gitDirectory: gitDirectory).readBranch(Self.branch) }

    // MARK: Reading records

    /// The raw bytes of a record, nil when it does not exist.
    public func data(of reference: CMDBReference) -> Data? {
        FileManager.default.contents(atPath: "\(path)/\(reference.path)")
    }

    public func exists(_ reference: CMDBReference) -> Bool {
        FileManager.default.fileExists(atPath: "\(path)/\(reference.path)")
    }

    /// Reads and decodes one record.
    public func read<R: CMDBRecord>(_ type: R.Type, _ id: String) throws -> R {
        let reference = CMDBReference(R.kind, id)
        guard let data = data(of: reference) else {
            throw ChangelabError(
                "there is no \(R.kind.rawValue) '\(id)' in the CMDB at \(path)",
                fix: "list what there is with 'changelab cmdb show \(R.kind.rawValue)s' or 'changelab cmdb log'")
        }
        do {
            return try StableJSON.decode(R.self, from: data)
        } catch {
            throw ChangelabError(
                "the record \(reference.path) in \(path) does not parse", why: describe(decoding: error),
                fix: "run 'changelab cmdb verify'; restore the record from git with "
                    + "'git -C \(path) checkout -- \(reference.path)'")
        }
    }

    public func inventory(_ digest: SHA256Digest) throws -> InventorySnapshot {
        try read(InventoryRecord.self, digest.hex).snapshot
    }

    /// Ids of every record of a kind, sorted.
    public func ids(of kind: CMDBRecordKind) -> [String] {
        let root = "\(path)/\(kind.folder)"
        guard let enumerator = FileManager.default.enumerator(atPath: root) else { return [] }
        var ids: [String] = []
        while let relative = enumerator.nextObject() as? String {
            guard relative.hasSuffix(".json"),
                let reference = CMDBRecordKind.record(at: "\(kind.folder)/\(relative)"), reference.kind == kind
            else { continue }
            ids.append(reference.id)
        }
        return ids.sorted()
    }

    /// Every version of a baseline, oldest first.
    public func baselineVersions(_ name: String) throws -> [BaselineVersionRecord] {
        let folder = "\(path)/baselines/\(name)"
        let files = (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []
        let versions = files.compactMap { $0.hasSuffix(".json") ? Int($0.dropLast(5)) : nil }.sorted()
        return try versions.map { try read(BaselineVersionRecord.self, "\(name)@\($0)") }
    }

    /// The newest version of a baseline.
    public func latestBaseline(_ name: String) throws -> BaselineVersionRecord {
        guard let latest = try baselineVersions(name).last else {
            throw ChangelabError(
                "there is no baseline '\(name)' in the CMDB at \(path)",
                fix: "build it with 'changelab baseline build \(name)', which records it")
        }
        return latest
    }

    /// The cells of one run, by cell name.
    public func cells(ofRun run: String) throws -> [CellRecord] {
        let folder = "\(path)/\(TreeCache.split(CMDBReference(.cell, "\(run)/x").path).folder)"
        let files = (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []
        return try files.filter { $0.hasSuffix(".json") }.sorted()
            .map { try read(CellRecord.self, "\(run)/\($0.dropLast(5))") }
    }

    /// The transaction a writer left unfinished, if any.
    public var unfinishedTransaction: Journal? {
        FileManager.default.contents(atPath: journalPath).flatMap { try? StableJSON.decode(Journal.self, from: $0) }
    }

    /// Refuses to read past a transaction a crashed writer left behind.
    func requireNoUnfinishedTransaction() throws {
        guard FileManager.default.fileExists(atPath: journalPath) else { return }
        let journal = unfinishedTransaction
        throw ChangelabError(
            "the CMDB at \(path) has an unfinished transaction"
                + (journal.map { " ('\($0.message)' by \($0.actor), process \($0.pid))" } ?? ""),
            why: "a writer stopped in the middle of it (crash or kill)",
            fix: "run 'changelab cmdb recover --cmdb \(path)' (any write does the same) to finish it")
    }
}

/// Says what is wrong with JSON the way a person fixes it.
func describe(decoding error: Error) -> String {
    func at(_ path: [CodingKey]) -> String {
        path.isEmpty ? "" : " at " + path.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
    }
    switch error {
    case DecodingError.dataCorrupted(let context):
        let underlying = (context.underlyingError as NSError?)?.userInfo[NSDebugDescriptionErrorKey] as? String
        return "\(underlying ?? context.debugDescription)\(at(context.codingPath))"
    case DecodingError.keyNotFound(let key, let context):
        return "the key '\(key.stringValue)' is missing\(at(context.codingPath))"
    case DecodingError.typeMismatch(let type, let context):
        return "expected \(type)\(at(context.codingPath)): \(context.debugDescription)"
    case DecodingError.valueNotFound(let type, let context):
        return "expected \(type) but found null\(at(context.codingPath))"
    default:
        return "\(error)"
    }
}
