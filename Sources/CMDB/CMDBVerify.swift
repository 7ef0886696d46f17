import Crypto
import Foundation
import HostIO
import Model

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
    /// record is named); every commit was made by changelab; `git fsck` passes.
    public func verify() async throws -> CMDBVerifyReport {
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

        // History: a line of changelab commits back to the first.
        var commits = 0
        if head != nil {
            let log = try await HostCommand.run(
                "git",
                [
                    "-C", path, "log", "--format=%H%x1f%P%x1f%(trailers:key=Changelab-Operation,valueonly)%x1e",
                    CMDBStore.branch,
                ],
                timeout: .seconds(600))
            if !log.succeeded { problem("history", "git log failed: \(log.tail(5))") }
            for entry in log.stdoutText.split(separator: "\u{1e}") {
                let fields = entry.trimmingCharacters(in: .whitespacesAndNewlines).split(
                    separator: "\u{1f}", omittingEmptySubsequences: false)
                guard fields.count == 3 else { continue }
                commits += 1
                if fields[1].split(separator: " ").count > 1 {
                    warnings.append(.init(item: "commit \(fields[0].prefix(12))", message: "is a merge"))
                }
                if fields[2].trimmingCharacters(in: .whitespacesAndNewlines).isEmpty {
                    warnings.append(
                        .init(
                            item: "commit \(fields[0].prefix(12))",
                            message: "was not made by changelab (edited by hand with git?)"))
                }
            }
        } else {
            problem("history", "the branch '\(CMDBStore.branch)' has no commit")
        }

        // The work tree against the last commit.
        let committed = try await TreeCache.load(repository: path, commit: head).allBlobs
        let files = workTreeFiles()
        let (records, recordProblems) = try await onThread { [self] in
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
        case .change:
            // Change records are defined by a later issue: require a JSON object with an id.
            let object = try JSONSerialization.jsonObject(with: data) as? [String: Any]
            guard let id = object?["id"] as? String else {
                return ("", ["a change record needs a string 'id'"], [])
            }
            return (id, [], [])
        }
    }
}
