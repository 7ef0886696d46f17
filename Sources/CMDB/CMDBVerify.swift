import Crypto
import Foundation
import HostIO
import Model

/// A recorded head: `cmdb checkpoint FILE` writes it, `cmdb verify --against FILE` checks
/// that the history still contains it. Keep it where the CMDB's writers cannot change it.
public struct CMDBCheckpoint: Codable, Sendable, Equatable {
    public var format = "changelab-cmdb-checkpoint"
    public var version = 1
    public var commit: String
    public var commits: Int
    public var recordedAt: Date
    public var cmdb: String

    public init(commit: String, commits: Int, recordedAt: Date, cmdb: String) {
        self.commit = commit
        self.commits = commits
        self.recordedAt = recordedAt
        self.cmdb = cmdb
    }

    static func load(_ file: String) throws -> CMDBCheckpoint {
        guard let data = FileManager.default.contents(atPath: file),
            let checkpoint = try? StableJSON.decode(CMDBCheckpoint.self, from: data),
            checkpoint.format == "changelab-cmdb-checkpoint"
        else {
            throw ChangelabError(
                "\(file) is not a CMDB checkpoint file", fix: "write one with 'changelab cmdb checkpoint FILE'")
        }
        guard checkpoint.version == 1, checkpoint.commit.count == 40,
            checkpoint.commit.allSatisfy({ $0.isHexDigit })
        else {
            throw ChangelabError(
                "the checkpoint file \(file) has version \(checkpoint.version) or a malformed commit id",
                fix: "write it again with this changelab ('changelab cmdb checkpoint FILE')")
        }
        return checkpoint
    }
}

/// What `cmdb verify` found.
public struct CMDBVerifyReport: Codable, Sendable {
    public struct Finding: Codable, Sendable, Equatable, CustomStringConvertible {
        /// The record's path, or what the finding is about (`history`, `git fsck`).
        public var item: String
        public var message: String
        public var description: String { "\(item): \(message)" }
    }

    public var path: String
    public var commit: String?
    /// Records by kind.
    public var records: [String: Int]
    public var commits: Int
    public var problems: [Finding]
    /// Not wrong, but worth a look (commits not made by changelab).
    public var warnings: [Finding]
    public var seconds: Double

    public var passed: Bool { problems.isEmpty }
}

extension CMDBStore {
    /// Checks the whole CMDB: no unfinished transaction; every record parses, validates,
    /// sits at the path its id names and refers only to records that exist; inventories
    /// match their digest; the work tree equals the last commit (a hand-edited or truncated
    /// record is named); every commit is signed by a trusted writer key (or lies below the
    /// signed upgrade checkpoint); `git fsck` passes.
    ///
    /// - Parameters:
    ///   - trustedKeys: the trusted writer keys file (default: `CMDBKeyring.default`'s).
    ///   - against: a replica (a git remote name, URL or path) or a checkpoint file written by
    ///     `writeCheckpoint(to:)`; its head must be in this history, so a rewrite of an old
    ///     commit, a rolled-back branch or a replaced CMDB is found.
    public func verify(trustedKeys: String? = nil, against: String? = nil) async throws -> CMDBVerifyReport {
        let started = ContinuousClock.now
        var problems: [CMDBVerifyReport.Finding] = []
        var warnings: [CMDBVerifyReport.Finding] = []
        func problem(_ item: String, _ message: String) { problems.append(.init(item: item, message: message)) }

        if let journal = unfinishedTransaction {
            problem(
                "transaction",
                "'\(journal.message)' by \(journal.actor) (process \(journal.pid)) was interrupted; "
                    + "run 'changelab cmdb recover' to finish it")
        } else if FileManager.default.fileExists(atPath: journalPath) {
            problem("transaction", "an unreadable journal is left; run 'changelab cmdb recover'")
        }

        let head = self.head
        let fsck = try await HostCommand.run(
            "git", ["-C", path, "fsck", "--full", "--strict", "--no-dangling", "--no-progress"], timeout: .seconds(1800)
        )
        if !fsck.succeeded {
            problem("git fsck", fsck.tail(20).isEmpty ? "failed with status \(fsck.status)" : fsck.tail(20))
        }

        // History: every commit signed by a trusted writer, or below the signed checkpoint.
        var commits = 0
        if let head {
            let trustedPath = trustedKeys.map(CMDBStore.absolute) ?? CMDBKeyring.default.trustedKeysPath
            let history = try await checkSignatures(head: head, trustedKeysPath: trustedPath)
            commits = history.commits
            problems += history.problems
            warnings += history.warnings
        } else {
            problem("history", "the branch '\(CMDBStore.branch)' has no commit")
        }
        if let against {
            problems += try await compare(head: head, against: against)
        }

        // The work tree against the last commit.
        let committed = try await TreeCache.load(repository: path, commit: head).allBlobs
        let files = workTreeFiles()
        let (records, recordProblems) = try await BlockingWork.run { [self] in
            self.checkRecords(files: files, committed: committed)
        }
        problems += recordProblems
        for path in committed.keys.sorted() where !files.contains(path) {
            problem(path, "is committed but missing from the folder (deleted by hand?)")
        }
        return CMDBVerifyReport(
            path: path, commit: head, records: records, commits: commits, problems: problems, warnings: warnings,
            seconds: started.secondsSince)
    }

    /// Checks every commit's signature; unsigned commits are accepted only below a valid
    /// checkpoint (`cmdb upgrade`).
    func checkSignatures(head: String, trustedKeysPath: String) async throws -> (
        commits: Int, problems: [CMDBVerifyReport.Finding], warnings: [CMDBVerifyReport.Finding]
    ) {
        var problems: [CMDBVerifyReport.Finding] = []
        var warnings: [CMDBVerifyReport.Finding] = []
        let trusted: CMDBTrustedKeys
        do {
            guard let file = try CMDBTrustedKeys.load(trustedKeysPath) else {
                throw ChangelabError(
                    "there is no trusted keys file at \(trustedKeysPath)",
                    fix: "pass the CMDB writers' public keys with --trusted-keys FILE (a writer's own is in "
                        + "~/.config/changelab/cmdb-trusted-keys.json; 'changelab cmdb key' prints it)")
            }
            trusted = file
        } catch {
            return (0, [.init(item: "signatures", message: "cannot be checked: \(error)")], [])
        }
        let list = try await HostCommand.check(
            "git", ["-C", path, "rev-list", "--parents", head], timeout: .seconds(600))
        var order: [String] = []
        var parents: [String: [String]] = [:]
        for line in list.stdoutText.split(separator: "\n") {
            let ids = line.split(separator: " ").map(String.init)
            guard let id = ids.first else { continue }
            order.append(id)
            parents[id] = Array(ids.dropFirst())
        }
        let objects = try await HostCommand.check(
            "git", ["-C", path, "cat-file", "--batch"], input: Data((order.joined(separator: "\n") + "\n").utf8),
            timeout: .seconds(600)
        ).stdout
        let raw = Self.splitBatch(objects)
        var unsigned: [String] = []
        var checkpoints: [String] = []
        var subjects: [String: String] = [:]
        for id in order {
            guard let object = raw[id] else {
                problems.append(.init(item: "commit \(id.prefix(12))", message: "cannot be read (run git fsck)"))
                continue
            }
            let text = String(decoding: object, as: UTF8.self)
            let subject = text.components(separatedBy: "\n\n").dropFirst().first?
                .split(separator: "\n").first.map(String.init) ?? ""
            subjects[id] = subject
            if (parents[id]?.count ?? 0) > 1 {
                warnings.append(.init(item: "commit \(id.prefix(12))", message: "is a merge"))
            }
            guard let parsed = CommitSignature.parse(object) else {
                unsigned.append(id)
                continue
            }
            let keyID = CommitSignature.trailer("Changelab-Key", in: parsed.signed)?
                .split(separator: " ").first.map(String.init) ?? ""
            guard let key = trusted.key(id: keyID), let publicKey = key.key else {
                problems.append(
                    .init(
                        item: "commit \(id.prefix(12))",
                        message: "('\(subject)') is signed by writer key \(keyID.isEmpty ? "(none named)" : keyID), "
                            + "which \(trustedKeysPath) does not list; if that writer is trusted, add its public key "
                            + "('changelab cmdb key' on its machine prints it)"))
                continue
            }
            guard publicKey.isValidSignature(parsed.signature, for: CommitSignature.payload(parsed.signed)) else {
                problems.append(
                    .init(
                        item: "commit \(id.prefix(12))",
                        message: "('\(subject)') has a signature that does not match it: forged, or altered after "
                            + "\(key.name) signed it"))
                continue
            }
            if CommitSignature.trailer(Self.checkpointTrailer, in: parsed.signed) != nil { checkpoints.append(id) }
        }
        // Everything a valid checkpoint descends from was accepted by the upgrade.
        var accepted = Set<String>()
        var stack = checkpoints.flatMap { parents[$0] ?? [] }
        while let id = stack.popLast() {
            guard accepted.insert(id).inserted else { continue }
            stack += parents[id] ?? []
        }
        let foreign = unsigned.filter { !accepted.contains($0) }
        let legacy = checkpoints.isEmpty && (try? formatVersion()) ?? 1 < 2
        for id in foreign.prefix(20) {
            problems.append(
                .init(
                    item: "commit \(id.prefix(12))",
                    message: "('\(subjects[id] ?? "")') is not signed by a CMDB writer (made by hand with git?)"
                        + (legacy
                            ? "; if this CMDB was written before changelab signed commits, run 'changelab cmdb "
                                + "upgrade' once to accept its history"
                            : "; undo it with git (the commits after it must be rewritten by a writer)")))
        }
        if foreign.count > 20 {
            problems.append(.init(item: "history", message: "\(foreign.count - 20) more commits are not signed"))
        }
        return (order.count, problems, warnings)
    }

    /// `git cat-file --batch` output: id → object bytes.
    static func splitBatch(_ data: Data) -> [String: Data] {
        let bytes = [UInt8](data)
        var result: [String: Data] = [:]
        var offset = 0
        while offset < bytes.count {
            guard let newline = bytes[offset...].firstIndex(of: 0x0a) else { break }
            let header = String(decoding: bytes[offset..<newline], as: UTF8.self).split(separator: " ")
            offset = newline + 1
            guard header.count == 3, let size = Int(header[2]), size >= 0, size <= bytes.count - offset else {
                continue
            }
            result[String(header[0])] = Data(bytes[offset..<offset + size])
            offset += size + 1
        }
        return result
    }

    /// Compares the head with a replica or a checkpoint file: its head must be in this
    /// history (equal, or an ancestor of ours).
    func compare(head: String?, against: String) async throws -> [CMDBVerifyReport.Finding] {
        var isDirectory: ObjCBool = false
        let local = FileManager.default.fileExists(atPath: against, isDirectory: &isDirectory)
        let theirs: String
        let what: String
        if local, !isDirectory.boolValue {
            let file = CMDBStore.absolute(against)
            do {
                theirs = try CMDBCheckpoint.load(file).commit
            } catch {
                return [.init(item: "against \(against)", message: "\(error)")]
            }
            what = "the checkpoint file \(against)"
        } else {
            let remote = local ? CMDBStore.absolute(against) : against
            let listing = try await HostCommand.run(
                "git", ["-C", path, "ls-remote", "--heads", remote, "refs/heads/\(CMDBStore.branch)"],
                timeout: .seconds(120))
            guard listing.succeeded,
                let id = listing.stdoutText.split(separator: "\t").first.map(String.init), id.count == 40
            else {
                return [
                    .init(
                        item: "against \(against)",
                        message: "cannot read the replica's branch '\(CMDBStore.branch)'"
                            + (listing.succeeded ? " (it has none)" : ": \(listing.tail(3))")
                            + "; pass a git remote, a replica's path or a checkpoint file ('changelab cmdb checkpoint')"
                    )
                ]
            }
            theirs = id
            what = "the replica \(against)"
        }
        guard let head else {
            return [.init(item: "against \(against)", message: "this CMDB has no commit; \(what) is at \(theirs)")]
        }
        if theirs == head { return [] }
        let known = try await HostCommand.run(
            "git", ["-C", path, "cat-file", "-e", "\(theirs)^{commit}"], timeout: .seconds(60)
        ).succeeded
        if known {
            let theirsIsOlder = try await HostCommand.run(
                "git", ["-C", path, "merge-base", "--is-ancestor", theirs, head], timeout: .seconds(120)
            ).succeeded
            if theirsIsOlder { return [] }
            let oursIsOlder = try await HostCommand.run(
                "git", ["-C", path, "merge-base", "--is-ancestor", head, theirs], timeout: .seconds(120)
            ).succeeded
            if oursIsOlder {
                return [
                    .init(
                        item: "against \(against)",
                        message: "this CMDB is behind \(what): its head \(head.prefix(12)) is older than "
                            + "\(theirs.prefix(12)); commits were rolled back here (or it was restored from an old "
                            + "backup): restore them from the replica")
                ]
            }
        }
        return [
            .init(
                item: "against \(against)",
                message: "the history differs from \(what): its head \(theirs.prefix(12)) is not in this CMDB's "
                    + "history, so a commit was rewritten (here or there) or the CMDB was replaced; compare with "
                    + "'git -C \(path) fetch REPLICA main && git log --oneline main...FETCH_HEAD'")
        ]
    }

    /// Records the head in `file`, for a later `verify(against: file)`.
    public func writeCheckpoint(to file: String) async throws -> CMDBCheckpoint {
        guard let head else {
            throw ChangelabError("the CMDB at \(path) has no commit to record", fix: "record something first")
        }
        let count = try await HostCommand.check(
            "git", ["-C", path, "rev-list", "--count", head], timeout: .seconds(300)
        ).stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
        let checkpoint = CMDBCheckpoint(
            commit: head, commits: Int(count) ?? 0, recordedAt: wholeSeconds(Date()), cmdb: path)
        try AtomicFile.write(try StableJSON.data(checkpoint), to: CMDBStore.absolute(file))
        return checkpoint
    }

    /// Every file below the CMDB folder except .git, relative.
    func workTreeFiles() -> Set<String> {
        var files = Set<String>()
        guard let enumerator = FileManager.default.enumerator(atPath: path) else { return files }
        while let relative = enumerator.nextObject() as? String {
            if relative == ".git" {
                enumerator.skipDescendants()
                continue
            }
            var isDirectory: ObjCBool = false
            if FileManager.default.fileExists(atPath: "\(path)/\(relative)", isDirectory: &isDirectory),
                !isDirectory.boolValue
            {
                files.insert(relative)
            }
        }
        return files
    }

    func checkRecords(files: Set<String>, committed: [String: String]) -> ([String: Int], [CMDBVerifyReport.Finding]) {
        var problems: [CMDBVerifyReport.Finding] = []
        var counts: [String: Int] = [:]
        var references: [(from: String, to: CMDBReference)] = []
        var present = Set<CMDBReference>()
        for file in files.sorted() {
            guard let data = FileManager.default.contents(atPath: "\(path)/\(file)") else {
                problems.append(.init(item: file, message: "cannot be read"))
                continue
            }
            if let blob = committed[file] {
                if GitObjectWriter.id(.blob, data) != blob {
                    problems.append(.init(item: file, message: "differs from its last commit (edited by hand?)"))
                }
            } else {
                problems.append(.init(item: file, message: "is not committed (added by hand?)"))
            }
            if file == "README.md" { continue }
            if file == "format.json" {
                if (try? StableJSON.decode(FormatFile.self, from: data)) == nil {
                    problems.append(.init(item: file, message: "does not parse"))
                }
                continue
            }
            guard let reference = CMDBRecordKind.record(at: file) else {
                problems.append(.init(item: file, message: "is not where any record belongs"))
                continue
            }
            present.insert(reference)
            counts[reference.kind.rawValue, default: 0] += 1
            do {
                let (id, recordProblems, refs) = try Self.decodeRecord(reference.kind, data)
                if reference.kind != .inventory, id != reference.id {
                    problems.append(
                        .init(item: file, message: "holds \(reference.kind.rawValue) '\(id)', not '\(reference.id)'"))
                }
                if reference.kind == .inventory, SHA256Digest(of: data).hex != reference.id {
                    problems.append(
                        .init(item: file, message: "does not match its digest (changed after it was recorded)"))
                }
                problems += recordProblems.map { .init(item: file, message: $0) }
                references += refs.map { (file, $0) }
            } catch {
                problems.append(.init(item: file, message: "does not parse: \(describe(decoding: error))"))
            }
        }
        for (from, to) in references where !present.contains(to) {
            problems.append(.init(item: from, message: "refers to \(to), which is not in the CMDB"))
        }
        return (counts, problems)
    }

    /// Decodes a record of `kind`: its id, problems and references.
    static func decodeRecord(_ kind: CMDBRecordKind, _ data: Data) throws -> (String, [String], [CMDBReference]) {
        func open<R: CMDBRecord>(_ type: R.Type) throws -> (String, [String], [CMDBReference]) {
            let record = try StableJSON.decode(R.self, from: data)
            return (record.recordID, record.problems(), record.references)
        }
        switch kind {
        case .baseline: return try open(BaselineVersionRecord.self)
        case .inventory:
            _ = try StableJSON.decode(InventorySnapshot.self, from: data)
            return (SHA256Digest(of: data).hex, [], [])
        case .artifact: return try open(ArtifactRecord.self)
        case .run: return try open(RunRecord.self)
        case .cell: return try open(CellRecord.self)
        case .target: return try open(TargetRecord.self)
        case .change: return try open(ChangeRecord.self)
        }
    }
}
