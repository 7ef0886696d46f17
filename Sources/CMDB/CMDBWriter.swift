import Foundation
import HostIO
import Model

#if canImport(Glibc)
    import Glibc
#endif

/// What a writer commits: the records it puts, checked before anything touches the disk.
public struct CMDBTransaction: Sendable {
    let store: CMDBStore
    let cache: TreeCache
    /// Path → new content.
    private(set) var writes: [String: Data] = [:]
    private(set) var references: [(from: CMDBReference, to: CMDBReference)] = []
    private(set) var items: [CMDBReference] = []

    init(store: CMDBStore, cache: TreeCache) {
        self.store = store
        self.cache = cache
    }

    /// Adds or replaces a record. Its problems are refused now; its references must resolve
    /// by the end of the transaction.
    public mutating func put<R: CMDBRecord>(_ record: R) throws {
        let problems = record.problems()
        guard problems.isEmpty else {
            throw ChangelabError(
                "refusing to record \(record.reference): it is not valid",
                why: problems.joined(separator: "; "), fix: "correct the \(R.kind.rawValue) and record it again")
        }
        let reference = record.reference
        writes[reference.path] = try StableJSON.data(record)
        items.append(reference)
        references += record.references.map { (reference, $0) }
    }

    /// Stores an inventory (once: it is named by its content) and returns its digest.
    @discardableResult
    public mutating func put(inventory snapshot: InventorySnapshot) throws -> SHA256Digest {
        let record = InventoryRecord(snapshot)
        let data = try StableJSON.data(record)
        let digest = SHA256Digest(of: data)
        let reference = CMDBReference(.inventory, digest.hex)
        if writes[reference.path] == nil && !store.exists(reference) {
            writes[reference.path] = data
            items.append(reference)
        }
        return digest
    }

    /// True when the record is in the CMDB or put by this transaction.
    public func exists(_ reference: CMDBReference) -> Bool {
        writes[reference.path] != nil || store.exists(reference)
    }

    /// Reads a record as this transaction would leave it.
    public func read<R: CMDBRecord>(_ type: R.Type, _ id: String) throws -> R {
        if let data = writes[CMDBReference(R.kind, id).path] { return try StableJSON.decode(R.self, from: data) }
        return try store.read(R.self, id)
    }

    func checkReferences() throws {
        let missing = references.filter { !exists($0.to) }
        guard missing.isEmpty else {
            throw ChangelabError(
                "refusing to record \(Set(missing.map(\.from.description)).sorted().joined(separator: ", "))",
                why: "it refers to what the CMDB does not have: "
                    + Set(missing.map(\.to.description)).sorted().joined(separator: ", "),
                fix: "record those first (or in the same transaction)")
        }
    }
}

/// A transaction a writer began but did not finish, as written to `.git/changelab/journal.json`
/// after every object of the commit exists and before the work tree or the branch changes.
public struct Journal: Codable, Sendable {
    public var message: String
    public var operation: String
    public var actor: String
    public var pid: Int32
    public var startedAt: Date
    public var parent: String?
    public var commit: String
    /// Path → blob id of the new content.
    public var writes: [String: String]
}

/// One committed transaction.
public struct CMDBCommit: Sendable, Equatable {
    /// The commit id; unchanged when the transaction changed nothing.
    public var id: String
    public var changed: [String]
    /// How long making its objects durable (`syncfs`) took.
    public var syncSeconds: Double = 0
}

/// Who a transaction is recorded as, and how changelab knows.
public enum CMDBActorSource: String, Sendable, Codable {
    /// Named by the caller: an operator (`--actor`, `CHANGELAB_ACTOR`, the core's operator
    /// name) or a service such as `changelab-matrix`.
    case `operator`
    /// Nobody was named: the local account the process runs as (`local:USER@HOST`).
    case localUser = "local-user"
}

/// What recovery did with a transaction a crashed writer left.
public enum RecoveryOutcome: Sendable, Equatable, CustomStringConvertible {
    /// The commit was complete; its files were put in place.
    case rolledForward(message: String, commit: String)
    /// The branch had moved on; the transaction's files were put back as committed.
    case rolledBack(message: String)

    public var description: String {
        switch self {
        case .rolledForward(let message, let commit):
            return "finished the interrupted transaction '\(message)' (commit \(commit.prefix(12)))"
        case .rolledBack(let message):
            return "rolled back the interrupted transaction '\(message)'"
        }
    }
}

/// The one writer of a CMDB in this process: transactions under the CMDB's lock, each one
/// commit, crash-safe.
///
/// Each transaction takes the lock, finishes any transaction a crashed writer left, puts its
/// records, and releases the lock, so writers in other processes (or other `CMDBWriter`s)
/// interleave safely. The order on disk is: blobs, trees and the commit object; the journal;
/// the record files (each temp + fsync + rename); the branch; the journal's removal. A crash
/// before the journal leaves only unreferenced objects; after it, the next writer rolls the
/// transaction forward.
public actor CMDBWriter {
    public nonisolated let store: CMDBStore
    /// Who the commits name as author: a person, or a service such as `changelab-matrix`
    /// (a transaction may name another: the operator the core acts for).
    public nonisolated let actor: String
    /// Whether `actor` was named by the caller or is the local account (a fallback).
    public nonisolated let actorSource: CMDBActorSource
    /// The key that signs every commit, kept outside the CMDB.
    public nonisolated let key: CMDBWriterKey
    let lockTimeout: Duration
    /// False only in `bench cmdb --skip-object-sync`, to measure what durability costs.
    let objectSync: Bool
    private var cache: TreeCache?

    /// Opens the CMDB at `path` for writing, creating it when the folder is missing or empty.
    ///
    /// - Parameters:
    ///   - actor: the operator or service the commits name; a name starting `local:` (as
    ///     `localUserActor`) is recorded as a fallback, not as a named operator.
    ///   - keyring: where this writer's signing key is (created on first use).
    public init(
        path: String, actor: String, lockTimeout: Duration = .seconds(120), keyring: CMDBKeyring = .default
    ) async throws {
        try await self.init(path: path, actor: actor, lockTimeout: lockTimeout, keyring: keyring, objectSync: true)
    }

    init(path: String, actor: String, lockTimeout: Duration, keyring: CMDBKeyring, objectSync: Bool) async throws {
        let store = CMDBStore(uncheckedPath: CMDBStore.absolute(path))
        self.store = store
        let name = actor.isEmpty ? "changelab" : actor
        try Self.checkActor(name)
        self.actor = name
        self.actorSource = name.hasPrefix("local:") ? .localUser : .operator
        self.key = try keyring.writerKey(name: name, refusingInside: store.path)
        self.lockTimeout = lockTimeout
        self.objectSync = objectSync
        if !FileManager.default.fileExists(atPath: store.path + "/format.json") {
            try await Self.create(store, signer: signer, lockTimeout: lockTimeout)
        }
        try store.checkFormat()
    }

    var signer: Signer { Signer(actor: actor, source: actorSource, key: key, objectSync: objectSync) }

    /// The signer of one transaction: this writer's key, naming `actor` (checked) or, when nil,
    /// the writer's own actor.
    func signer(naming actor: String?) throws -> Signer {
        guard let actor else { return signer }
        try Self.checkActor(actor)
        return Signer(
            actor: actor, source: actor.hasPrefix("local:") ? .localUser : .operator, key: key, objectSync: objectSync)
    }

    /// What signs and names a commit.
    struct Signer: Sendable {
        var actor: String
        var source: CMDBActorSource
        var key: CMDBWriterKey
        var objectSync = true
    }

    static func checkActor(_ name: String) throws {
        guard name.count <= 200, !name.contains(where: { $0.isNewline || $0 == "<" || $0 == ">" }),
            !name.unicodeScalars.contains(where: { $0.properties.generalCategory == .control })
        else {
            throw ChangelabError(
                "the actor '\(name.prefix(60))' cannot name a CMDB commit",
                why: "an actor is at most 200 characters, without control characters, '<' or '>'",
                fix: "pass the operator's name, for example --actor alice")
        }
    }

    /// `CHANGELAB_ACTOR` when set (an operator named by the environment), else the fallback
    /// `localUserActor`.
    public static var defaultActor: String {
        let environment = ProcessInfo.processInfo.environment
        if let actor = environment["CHANGELAB_ACTOR"], !actor.isEmpty { return actor }
        return localUserActor
    }

    /// `local:USER@HOST` from the process's real account (not `$USER`, which anyone can set):
    /// labelled so the log shows that no operator was named.
    public static var localUserActor: String {
        var user = "uid-\(geteuid())"
        if let pw = getpwuid(geteuid()), let name = pw.pointee.pw_name { user = String(cString: name) }
        return "local:\(user)@\(ProcessInfo.processInfo.hostName)"
    }

    private static func create(_ store: CMDBStore, signer: Signer, lockTimeout: Duration) async throws {
        let fm = FileManager.default
        let existing = (try? fm.contentsOfDirectory(atPath: store.path)) ?? []
        guard existing.allSatisfy({ $0 == ".git" }) else {
            throw ChangelabError(
                "\(store.path) is not a changelab CMDB", why: "it holds other files and no format.json",
                fix: "pass an empty or new folder (or an existing CMDB) with --cmdb PATH; nothing was changed")
        }
        try fm.createDirectory(atPath: store.path, withIntermediateDirectories: true)
        if !fm.fileExists(atPath: store.gitDirectory + "/HEAD") {
            try await HostCommand.check("git", ["init", "-q", "-b", CMDBStore.branch, store.path])
        }
        let lock = try await acquireLock(store, timeout: lockTimeout)
        defer { lock.release() }
        // Another writer may have created it while we waited for the lock.
        guard !fm.fileExists(atPath: store.path + "/format.json") else { return }
        var transaction = CMDBTransaction(store: store, cache: TreeCache(commit: nil))
        transaction.setFile(
            "format.json",
            try StableJSON.data(CMDBStore.FormatFile(format: CMDBStore.formatName, version: CMDBStore.formatVersion)))
        transaction.setFile("README.md", Data(readme.utf8))
        var cache = TreeCache(commit: store.head)
        if cache.commit != nil { cache = try await TreeCache.load(repository: store.path, commit: cache.commit) }
        _ = try await commit(
            transaction, cache: cache, store: store, message: "create the CMDB", operation: "create", signer: signer)
        try? await syncGitIndex(store)
    }

    static let readme = """
        # changelab CMDB

        Configuration items recorded by changelab, one pretty JSON file each; every change is one
        git commit naming the operation and the actor, so `git log -p` is the audit trail and a
        git remote is a replica. Do not edit by hand: `changelab cmdb verify` reports records
        that differ from their commit.

            baselines/NAME/VERSION.json   approved baseline versions (built or adopted)
            inventories/AB/DIGEST.json    inventories, named by the SHA-256 of their content
            artifacts/AB/DIGEST.json      release artifacts
            runs/XY/RUN.json              matrix runs
            cells/XY/RUN/CELL.json        matrix cells: verdict, install delta, residue
            targets/XY/NAME.json          fleet targets and their reported inventories
            changes/XY/ID.json            change records

        AB: the digest's first two hex digits; XY: those of the SHA-256 of the name, which
        keeps every folder small. `changelab cmdb show KIND:ID` finds a record by its id.

        """

    // MARK: Transactions

    /// Runs `body` to collect records and commits them as one transaction.
    ///
    /// - Parameters:
    ///   - message: the commit's subject line, for example `record cell run-7/web`.
    ///   - operation: a short verb for the trailer, for example `record-cell`.
    ///   - actor: who this transaction is recorded as when it is not the writer's actor: the
    ///     operator a service (the core) acts for. Signed with this writer's key all the same.
    @discardableResult
    public func transaction(
        _ message: String, operation: String, actor: String? = nil, _ body: (inout CMDBTransaction) throws -> Void
    ) async throws -> CMDBCommit {
        try await commitLocked(message, operation: operation, signer: try signer(naming: actor), body)
    }

    /// Records an event that changes no record — an operator publishing, promoting or rolling
    /// back on the core — as a transaction of its own, so `cmdb log` shows who did it and when.
    @discardableResult
    public func event(_ message: String, operation: String, actor: String? = nil) async throws -> CMDBCommit {
        let signer = try signer(naming: actor)
        return try await commitLocked(message, operation: operation, signer: signer, allowEmpty: true) { _ in }
    }

    private func commitLocked(
        _ message: String, operation: String, signer: Signer, allowEmpty: Bool = false,
        _ body: (inout CMDBTransaction) throws -> Void
    ) async throws -> CMDBCommit {
        let lock = try await Self.acquireLock(store, timeout: lockTimeout)
        defer { lock.release() }
        lock.note("pid \(getpid()) \(signer.actor): \(message)\n")
        if let outcome = try await Self.recoverLocked(store) {
            FileHandle.standardError.write(Data("changelab: \(outcome)\n".utf8))
        }
        let head = store.head
        if cache?.commit != head || cache == nil {
            cache = try await TreeCache.load(repository: store.path, commit: head)
        }
        var transaction = CMDBTransaction(store: store, cache: cache ?? TreeCache(commit: head))
        try body(&transaction)
        try transaction.checkReferences()
        let (result, newCache) = try await Self.commit(
            transaction, cache: cache ?? TreeCache(commit: head), store: store, message: message,
            operation: operation, signer: signer, allowEmpty: allowEmpty)
        cache = newCache
        return result
    }

    /// What `upgrade()` did.
    public enum UpgradeOutcome: Sendable, Equatable {
        /// The checkpoint commit, accepting `unsignedCommits` commits before it.
        case checkpointed(commit: String, unsignedCommits: Int)
        /// The CMDB was created signed or upgraded before; nothing was written.
        case alreadySigned
    }

    /// Accepts the unsigned history a changelab before signing wrote, once: a signed
    /// checkpoint commit that raises format.json to version 2. `verify` accepts unsigned
    /// commits only below such a checkpoint; the signature covers its parent, so a rewrite
    /// of that history breaks the checkpoint.
    public func upgrade() async throws -> UpgradeOutcome {
        let lock = try await Self.acquireLock(store, timeout: lockTimeout)
        defer { lock.release() }
        if let outcome = try await Self.recoverLocked(store) {
            FileHandle.standardError.write(Data("changelab: \(outcome)\n".utf8))
        }
        guard try store.formatVersion() < CMDBStore.formatVersion, let head = store.head else { return .alreadySigned }
        let count = try await HostCommand.check(
            "git", ["-C", store.path, "rev-list", "--count", head], timeout: .seconds(300)
        ).stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
        let tree = try await TreeCache.load(repository: store.path, commit: head)
        var transaction = CMDBTransaction(store: store, cache: tree)
        transaction.setFile(
            "format.json",
            try StableJSON.data(CMDBStore.FormatFile(format: CMDBStore.formatName, version: CMDBStore.formatVersion)))
        let (result, newCache) = try await Self.commit(
            transaction, cache: tree, store: store, message: "upgrade: sign every transaction from here on",
            operation: "upgrade", signer: signer,
            trailers: [(CMDBStore.checkpointTrailer, "accepts the unsigned history up to \(head)")])
        cache = newCache
        return .checkpointed(commit: result.id, unsignedCommits: Int(count) ?? 0)
    }

    /// Finishes or rolls back a transaction a crashed writer left; nil when there was none.
    public func recover() async throws -> RecoveryOutcome? {
        let lock = try await Self.acquireLock(store, timeout: lockTimeout)
        defer { lock.release() }
        cache = nil
        return try await Self.recoverLocked(store)
    }

    /// Brings git's own index up to date with the branch, so `git status` and `git diff` in
    /// the CMDB read clean. Transactions write objects directly and leave it behind; call
    /// this when done writing (the CLI does after each write command).
    public func close() async {
        guard let lock = try? await Self.acquireLock(store, timeout: lockTimeout) else { return }
        defer { lock.release() }
        try? await Self.syncGitIndex(store)
    }

    static func syncGitIndex(_ store: CMDBStore) async throws {
        guard store.head != nil else { return }
        try await HostCommand.check("git", ["-C", store.path, "read-tree", "-m", "HEAD"], timeout: .seconds(300))
        _ = try await HostCommand.run(
            "git", ["-C", store.path, "update-index", "-q", "--refresh"], timeout: .seconds(300))
    }

    static func acquireLock(_ store: CMDBStore, timeout: Duration) async throws -> FileLock {
        guard let lock = try await FileLock.acquire(store.lockPath, timeout: timeout) else {
            let holder = (try? String(contentsOfFile: store.lockPath, encoding: .utf8))?
                .trimmingCharacters(in: .whitespacesAndNewlines)
            throw ChangelabError(
                "another writer has held the CMDB at \(store.path) for over \(timeout)",
                why: holder.map { "held by \($0)" }, fix: "wait for it to finish, then run the command again")
        }
        return lock
    }

    static func commit(
        _ transaction: CMDBTransaction, cache: TreeCache, store: CMDBStore, message: String, operation: String,
        signer: Signer, trailers: [(String, String)] = [], allowEmpty: Bool = false
    ) async throws -> (CMDBCommit, TreeCache) {
        let writer = GitObjectWriter(gitDirectory: store.gitDirectory)
        let writes = transaction.writes
        let pid = getpid()
        return try await BlockingWork.run {
            var cache = cache
            var blobs: [String: String?] = [:]
            for (path, data) in writes {
                let id = GitObjectWriter.id(.blob, data)
                if cache.blob(at: path) != id { blobs[path] = id }
            }
            guard !blobs.isEmpty || allowEmpty else { return (CMDBCommit(id: cache.commit ?? "", changed: []), cache) }
            for path in blobs.keys { try writer.write(.blob, writes[path] ?? Data()) }
            let tree = try cache.apply(blobs, writer: writer)
            let now = Int(Date().timeIntervalSince1970)
            let person = signer.actor
            var text = "tree \(tree)\n"
            if let parent = cache.commit { text += "parent \(parent)\n" }
            text += "author \(person) <changelab@localhost> \(now) +0000\n"
            text += "committer changelab <changelab@localhost> \(now) +0000\n\n"
            text += message.replacingOccurrences(of: "\n", with: " ") + "\n\n"
            text += "Changelab-Operation: \(operation)\nChangelab-Actor: \(person)\n"
            text += "Changelab-Actor-Source: \(signer.source.rawValue)\n"
            for (key, value) in trailers { text += "\(key): \(value.replacingOccurrences(of: "\n", with: " "))\n" }
            text += "Changelab-Key: \(signer.key.publicKey.id) \(signer.key.name.replacingOccurrences(of: "\n", with: " "))\n"
            text += try signer.key.signature(forCommitText: text)
            let commit = try writer.write(.commit, Data(text.utf8))
            // Two flushes per transaction, the fewest that keep every state a crash can leave
            // recoverable (each flush waits for whatever the guests beside it wrote, so their
            // number, not their width, is what a transaction costs; README, CMDB benchmark).
            // 1. Every object of the commit durable before anything names it: a journal that
            //    exists names objects that exist, so recovery can always roll it forward.
            let syncStart = ContinuousClock.now
            if signer.objectSync { try syncFileSystem(of: store.gitDirectory + "/objects") }
            var syncSeconds = syncStart.secondsSince
            // 2. The journal, the record files and the branch, each whole or absent (temp and
            //    rename), then one flush for all three before the caller is told it is durable.
            //    A crash before it ends leaves any of them in place with the journal; recovery
            //    finishes the transaction from the journal (a torn branch file included).
            let journal = Journal(
                message: message, operation: operation, actor: person, pid: pid, startedAt: Date(),
                parent: cache.commit, commit: commit, writes: blobs.compactMapValues { $0 })
            try AtomicFile.write(try StableJSON.data(journal), to: store.journalPath, durable: false)
            for path in blobs.keys.sorted() {
                try AtomicFile.write(writes[path] ?? Data(), to: "\(store.path)/\(path)", durable: false)
            }
            if let pause = crashTestPause { usleep(pause) }
            try writer.updateBranch(CMDBStore.branch, to: commit, expecting: cache.commit, durable: false)
            let commitSyncStart = ContinuousClock.now
            try syncFileSystems(of: [store.gitDirectory, store.path])
            syncSeconds += commitSyncStart.secondsSince
            // The journal's removal needs no flush of its own: a journal left behind names the
            // branch's own commit and finishing it again rewrites the same files; the next
            // transaction's flush makes the removal durable.
            unlink(store.journalPath)
            cache.commit = commit
            return (CMDBCommit(id: commit, changed: blobs.keys.sorted(), syncSeconds: syncSeconds), cache)
        }
    }

    static func recoverLocked(_ store: CMDBStore) async throws -> RecoveryOutcome? {
        guard let data = FileManager.default.contents(atPath: store.journalPath) else { return nil }
        guard let journal = try? StableJSON.decode(Journal.self, from: data) else {
            // Journals are written whole (temp + rename): an unreadable one was edited, or a
            // file system that keeps renames without their data lost it in a crash. Which
            // records it named is unknown, so every record file is put back as committed.
            let git = GitObjectWriter(gitDirectory: store.gitDirectory)
            guard !git.branchFileIsTorn(CMDBStore.branch) else {
                throw ChangelabError(
                    "the CMDB at \(store.path) was interrupted mid-transaction and both its journal and its branch "
                        + "file are unreadable",
                    why: "\(store.journalPath) and .git/refs/heads/\(CMDBStore.branch) hold no transaction and no commit id",
                    fix: "point the branch at the last commit with 'git -C \(store.path) update-ref refs/heads/"
                        + "\(CMDBStore.branch) COMMIT' (see 'git -C \(store.path) fsck --lost-found'), then run "
                        + "'changelab cmdb recover'")
            }
            if let head = store.head {
                try await HostCommand.check(
                    "git", ["-C", store.path, "checkout", "-f", head, "--", "."], timeout: .seconds(300))
            }
            unlink(store.journalPath)
            return .rolledBack(message: "unreadable journal")
        }
        let head = store.head
        let paths = journal.writes.keys.sorted()
        removeTemporaryFiles(store, beside: paths)
        let git = GitObjectWriter(gitDirectory: store.gitDirectory)
        // A branch file that holds no id was being renamed when the last flush was cut short:
        // the journal existed, so its objects are durable and it is finished like the others.
        let tornBranch = git.branchFileIsTorn(CMDBStore.branch)
        if head == journal.parent || head == journal.commit || tornBranch {
            if head != journal.commit || tornBranch {
                try git.updateBranch(CMDBStore.branch, to: journal.commit, expecting: head)
            }
            // An event's commit writes no file (and `git checkout COMMIT --` alone would move HEAD).
            if !paths.isEmpty {
                try await HostCommand.check(
                    "git", ["-C", store.path, "checkout", journal.commit, "--"] + paths, timeout: .seconds(300))
            }
            unlink(store.journalPath)
            return .rolledForward(message: journal.message, commit: journal.commit)
        }
        // The branch moved on without this transaction: put the files back as committed.
        let tree = try await TreeCache.load(repository: store.path, commit: head)
        let committed = paths.filter { tree.blob(at: $0) != nil }
        if !committed.isEmpty, let head {
            try await HostCommand.check(
                "git", ["-C", store.path, "checkout", head, "--"] + committed, timeout: .seconds(300))
        }
        for path in paths where tree.blob(at: path) == nil { unlink("\(store.path)/\(path)") }
        unlink(store.journalPath)
        return .rolledBack(message: journal.message)
    }
}

/// Removes the temporary files (`.NAME.tmp-PID-N`, from `AtomicFile`) a killed writer left
/// beside the records it was writing.
func removeTemporaryFiles(_ store: CMDBStore, beside paths: [String]) {
    let folders = Set(paths.map { TreeCache.split($0).folder })
    for folder in folders {
        let directory = folder.isEmpty ? store.path : "\(store.path)/\(folder)"
        for name in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        where name.hasPrefix(".") && name.contains(".tmp-") {
            unlink("\(directory)/\(name)")
        }
    }
}

/// `CHANGELAB_CMDB_TEST_PAUSE_MS`: a pause between writing the record files and moving the
/// branch, so crash tests can SIGKILL a writer inside that window every time.
let crashTestPause: UInt32? = ProcessInfo.processInfo.environment["CHANGELAB_CMDB_TEST_PAUSE_MS"]
    .flatMap { UInt32($0) }.map { min($0, 10_000) * 1000 }

extension CMDBTransaction {
    /// Sets a file that is not a record (format.json, README.md).
    mutating func setFile(_ path: String, _ data: Data) { writes[path] = data }
}

