import Foundation
import HostIO
import Model
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@testable import CMDB

@Suite struct CMDBQueryTests {
    func answers(_ store: CMDBStore, _ text: String, kinds: Set<CMDBRecordKind> = []) async throws -> [String] {
        try await store.query(try Query(text), kinds: kinds).map { "\($0.kind.rawValue):\($0.id)" }
    }

    @Test func answersWhichBaselinesCellsAndTargetsMatch() async throws {
        let path = Fixture.temporaryFolder()
        defer { Fixture.remove(path) }
        try await Fixture.make(at: path)
        let store = try CMDBStore.open(path)
        #expect(
            try await answers(store, "package:openssl < 3.0.13") == [
                "baseline:web@1", "cell:run-1/web", "target:lyon-1", "target:paris-1",
            ])
        #expect(try await answers(store, "package:nginx") == ["cell:run-1/db", "cell:run-1/web"])
        #expect(try await answers(store, "service:nginx enabled and port:tcp/80 added") == ["cell:run-1/web"])
        #expect(try await answers(store, "file:/etc/ssh/sshd_config changed") == ["target:lyon-1"])  // drift
        #expect(
            try await answers(store, "kind = target and site = lyon and not package:redis-server") == ["target:lyon-1"])
        #expect(try await answers(store, "verdict = failed and failure = product") == ["cell:run-1/db"])
        #expect(try await answers(store, "package.version >= 1.22 and baseline = web") == ["cell:run-1/web"])
        #expect(
            try await answers(store, "drift = yes or department = finance", kinds: [.target]) == [
                "target:lyon-1", "target:lyon-2", "target:paris-1",
            ])
        #expect(
            try await answers(store, "os = debian and os.version >= 12", kinds: [.baseline]) == [
                "baseline:db@1", "baseline:web@1",
            ])
        #expect(try await answers(store, "user:www-data added") == ["cell:run-1/web"])
    }

    @Test func theIndexIsRebuiltWhenMissingOrBrokenAndFollowsNewRecords() async throws {
        let path = Fixture.temporaryFolder()
        defer { Fixture.remove(path) }
        let writer = try await Fixture.make(at: path)
        let store = try CMDBStore.open(path)
        let query = try Query("site = lyon")
        #expect(try await store.query(query).count == 2)
        #expect(FileManager.default.fileExists(atPath: store.indexPath))
        let (fresh, rebuilt) = try await QueryIndex.load(store)
        #expect(!rebuilt && fresh.commit == store.head)
        try await writer.record(target: TargetRecord(name: "lyon-3", attributes: ["site": "lyon"]))
        #expect(try await store.query(query).map(\.id) == ["lyon-1", "lyon-2", "lyon-3"])  // stale → refreshed
        try Data("garbage".utf8).write(to: URL(fileURLWithPath: store.indexPath))
        #expect(try await store.query(query).count == 3)  // broken → rebuilt
        unlink(store.indexPath)
        #expect(try await store.query(query).count == 3)  // missing → rebuilt
        #expect(try await QueryIndex.load(store).rebuilt == false)
    }
}

@Suite struct IntegrityTests {
    @Test func handEditedTruncatedAndStrayRecordsAreReportedByName() async throws {
        let path = Fixture.temporaryFolder()
        defer { Fixture.remove(path) }
        try await Fixture.make(at: path)
        let store = try CMDBStore.open(path)
        // A hand edit that still parses.
        let cellFile = CMDBReference(.cell, "run-1/web").path
        let cellPath = path + "/" + cellFile
        let cell = try String(contentsOfFile: cellPath, encoding: .utf8)
        try cell.replacingOccurrences(of: "\"passed\"", with: "\"failed\"").write(
            toFile: cellPath, atomically: true, encoding: .utf8)
        // A truncated inventory.
        let inventory = store.ids(of: .inventory)[0]
        let inventoryPath = path + "/" + CMDBReference(.inventory, inventory).path
        let data = try Data(contentsOf: URL(fileURLWithPath: inventoryPath))
        try data.prefix(data.count / 2).write(to: URL(fileURLWithPath: inventoryPath))
        // A file no record owns.
        try "x".write(toFile: path + "/runs/notes.txt", atomically: true, encoding: .utf8)  // not in a shard
        let report = try await store.verify()
        #expect(!report.passed)
        let messages = report.problems.map(\.description)
        #expect(messages.contains("\(cellFile): differs from its last commit (edited by hand?)"))
        #expect(messages.contains("\(cellFile): a failed cell has no failure class"))
        #expect(
            messages.contains { $0.hasPrefix("inventories/\(inventory.prefix(2))/\(inventory).json: does not parse:") })
        #expect(
            messages.contains(
                "inventories/\(inventory.prefix(2))/\(inventory).json: differs from its last commit (edited by hand?)"))
        #expect(messages.contains("runs/notes.txt: is not committed (added by hand?)"))
        #expect(messages.contains("runs/notes.txt: is not where any record belongs"))
    }

    @Test func aHandMadeCommitAndAHandEditedInventoryAreCaught() async throws {
        let path = Fixture.temporaryFolder()
        defer { Fixture.remove(path) }
        try await Fixture.make(at: path).close()
        let store = try CMDBStore.open(path)
        let id = store.ids(of: .inventory)[0]
        let file = CMDBReference(.inventory, id).path
        let text = try String(contentsOfFile: "\(path)/\(file)", encoding: .utf8)
        try text.replacingOccurrences(of: "\"x86_64\"", with: "\"aarch64\"").write(
            toFile: "\(path)/\(file)", atomically: true, encoding: .utf8)
        _ = try await git(path, "-c", "user.name=mallory", "-c", "user.email=m@example.org", "commit", "-qam", "tweak")
        let report = try await store.verify()
        let tweak = try #require(store.head)
        #expect(
            report.problems.map(\.description) == [
                "commit \(tweak.prefix(12)): ('tweak') is not signed by a CMDB writer (made by hand with git?); undo it "
                    + "with git (the commits after it must be rewritten by a writer)",
                "\(file): does not match its digest (changed after it was recorded)",
            ])
    }

    @Test func aTornTransactionBlocksReadersAndTheNextWriterFinishesIt() async throws {
        let path = Fixture.temporaryFolder()
        defer { Fixture.remove(path) }
        let (store, parent, commit, _) = try await journalOfATornTarget(at: path)
        // Put the repository back to the moment after the record file was written and before
        // the branch moved: the journal names the commit, the branch still names its parent.
        try GitObjectWriter(gitDirectory: store.gitDirectory).updateBranch("main", to: parent, expecting: commit)

        await #expect(throws: ChangelabError.self) { _ = try await store.query(try Query("site = nantes")) }
        let report = try await store.verify()
        #expect(report.problems.contains { $0.item == "transaction" && $0.message.contains("record target torn") })
        try await expectTheNextWriterFinishes(store, commit: commit)
    }

    /// Records the target `torn` (site nantes), then writes back the journal of that
    /// transaction, as a writer stopped before removing it would leave it.
    func journalOfATornTarget(
        at path: String
    ) async throws -> (store: CMDBStore, parent: String, commit: String, record: String) {
        let writer = try await Fixture.make(at: path)
        let store = try CMDBStore.open(path)
        let parent = try #require(store.head)
        try await writer.record(target: TargetRecord(name: "torn", attributes: ["site": "nantes"]))
        let commit = try #require(store.head)
        let tree = try await TreeCache.load(repository: path, commit: commit)
        let torn = CMDBReference(.target, "torn").path
        let journal = Journal(
            message: "record target torn", operation: "record-target", actor: "tester", pid: 1, startedAt: Date(),
            parent: parent, commit: commit, writes: [torn: try #require(tree.blob(at: torn))])
        try AtomicFile.write(try StableJSON.data(journal), to: store.journalPath)
        return (store, parent, commit, torn)
    }

    /// Another writer rolls the torn target's transaction forward and the CMDB reads clean.
    func expectTheNextWriterFinishes(_ store: CMDBStore, commit: String) async throws {
        let next = try await CMDBWriter(path: store.path, actor: "someone-else")
        #expect(try await next.recover() == .rolledForward(message: "record target torn", commit: commit))
        #expect(store.head == commit)
        #expect(try await store.query(try Query("site = nantes")).map(\.id) == ["torn"])
        #expect(try await store.verify().problems == [])
    }

    @Test func anEventNamesItsOwnActorAndATornOneIsRolledForwardOnTheBranch() async throws {
        let path = Fixture.temporaryFolder()
        defer { Fixture.remove(path) }
        let writer = try await Fixture.make(at: path, actor: "changelab-core")
        let store = try CMDBStore.open(path)
        let parent = try #require(store.head)
        let event = try await writer.event("promote r1 (operator alice)", operation: "promote", actor: "alice")
        #expect(event.id != parent && event.changed.isEmpty)
        // The writer's own actor still names the transactions that do not name another.
        try await writer.record(target: TargetRecord(name: "paris-1", attributes: ["site": "paris"]))
        let log = try await store.log(nil, limit: 2)
        #expect(log.map(\.actor) == ["changelab-core", "alice"])
        #expect(log.last?.operation == "promote" && log.last?.files == [])
        await #expect(throws: ChangelabError.self) {
            try await writer.event("promote r1", operation: "promote", actor: "eve <eve@example.invalid>")
        }
        #expect(try await store.verify().problems == [])

        // Torn after the journal: recovery moves the branch and leaves HEAD on it.
        let before = try #require(store.head)
        let torn = try await writer.event("activate r1 (operator alice)", operation: "activate", actor: "alice")
        let journal = Journal(
            message: "activate r1 (operator alice)", operation: "activate", actor: "alice", pid: 1, startedAt: Date(),
            parent: before, commit: torn.id, writes: [:])
        try AtomicFile.write(try StableJSON.data(journal), to: store.journalPath)
        try GitObjectWriter(gitDirectory: store.gitDirectory).updateBranch("main", to: before, expecting: torn.id)
        #expect(
            try await writer.recover() == .rolledForward(message: "activate r1 (operator alice)", commit: torn.id))
        #expect(store.head == torn.id)
        let branch = try await HostCommand.check("git", ["-C", path, "symbolic-ref", "HEAD"])
        #expect(branch.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines) == "refs/heads/main")
        #expect(try await store.verify().problems == [])
    }

    @Test func aTornTransactionWhoseBranchMovedOnIsRolledBack() async throws {
        let path = Fixture.temporaryFolder()
        defer { Fixture.remove(path) }
        try await Fixture.make(at: path)
        let store = try CMDBStore.open(path)
        let head = try #require(store.head)
        // A journal for a commit that never happened, with its file half in place.
        let ghost = CMDBReference(.target, "ghost").path
        try FileManager.default.createDirectory(
            atPath: path + "/" + TreeCache.split(ghost).folder, withIntermediateDirectories: true)
        try "{ \"half\"".write(toFile: path + "/" + ghost, atomically: true, encoding: .utf8)
        let journal = Journal(
            message: "record target ghost", operation: "record-target", actor: "tester", pid: 1, startedAt: Date(),
            parent: String(repeating: "0", count: 40), commit: String(repeating: "1", count: 40),
            writes: [ghost: String(repeating: "2", count: 40)])
        try AtomicFile.write(try StableJSON.data(journal), to: store.journalPath)
        let writer = try await CMDBWriter(path: path, actor: "t")
        #expect(try await writer.recover() == .rolledBack(message: "record target ghost"))
        #expect(!FileManager.default.fileExists(atPath: path + "/" + ghost))
        #expect(store.head == head)
        #expect(try await store.verify().problems == [])
    }

    /// The writer's last flush covers the journal, the record files and the branch together:
    /// a crash inside it, on a file system that keeps a rename without its data, can leave the
    /// branch file empty beside a journal whose objects are durable (the first flush).
    @Test func aBranchFileTornByACrashIsFinishedFromTheJournal() async throws {
        let path = Fixture.temporaryFolder()
        defer { Fixture.remove(path) }
        let (store, _, commit, torn) = try await journalOfATornTarget(at: path)
        try Data().write(to: URL(fileURLWithPath: store.gitDirectory + "/refs/heads/main"))
        try "{ \"half\"".write(toFile: path + "/" + torn, atomically: true, encoding: .utf8)
        #expect(store.head == nil)
        try await expectTheNextWriterFinishes(store, commit: commit)
    }

    /// A journal is written without an fsync of its own (the transaction's last flush covers
    /// it), so a crash can leave it unreadable: which records it named is then unknown, and
    /// every record file is put back as committed.
    @Test func anUnreadableJournalPutsEveryRecordFileBackAsCommitted() async throws {
        let path = Fixture.temporaryFolder()
        defer { Fixture.remove(path) }
        let writer = try await Fixture.make(at: path)
        let store = try CMDBStore.open(path)
        try await writer.record(target: TargetRecord(name: "kept", attributes: ["site": "rennes"]))
        let head = try #require(store.head)
        let file = path + "/" + CMDBReference(.target, "kept").path
        try "{ \"half\"".write(toFile: file, atomically: true, encoding: .utf8)
        try AtomicFile.write(Data("{\"message\": \"rec".utf8), to: store.journalPath)

        #expect(try await writer.recover() == .rolledBack(message: "unreadable journal"))
        #expect(store.head == head)
        #expect(try await store.query(try Query("site = rennes")).map(\.id) == ["kept"])
        #expect(try await store.verify().problems == [])

        // Both unreadable: nothing says where the branch was; the error names the fix.
        try AtomicFile.write(Data("{".utf8), to: store.journalPath)
        try Data().write(to: URL(fileURLWithPath: store.gitDirectory + "/refs/heads/main"))
        await #expect(throws: ChangelabError.self) { _ = try await writer.recover() }
        #expect(FileManager.default.fileExists(atPath: store.journalPath))
    }
}

@Suite struct HistoryTests {
    @Test func adoptingAPassedCellRecordsANewBaselineVersionLinkedToItsEvidence() async throws {
        let path = Fixture.temporaryFolder()
        defer { Fixture.remove(path) }
        let writer = try await Fixture.make(at: path)
        let store = try CMDBStore.open(path)
        let adopted = try await writer.adoptBaseline("web", from: "run-1", change: nil, notes: "nginx is standard now")
        #expect(adopted.version == 2 && adopted.origin == .adopted && adopted.previousVersion == 1)
        #expect(adopted.adoption?.cell == "web" && adopted.adoption?.artifact == Fixture.artifact.digest)
        #expect(try store.inventory(adopted.inventory) == Fixture.webWithNginx.normalized())
        let diff = try store.diff(try store.resolve("baseline:web@1"), try store.resolve("baseline:web"))
        #expect(diff == adopted.adoption?.delta)
        #expect(diff[.packages].added.map(\.key) == ["nginx:amd64"])
        // The cell's after state equals the adopted configuration.
        #expect(try store.diff(try store.resolve("cell:run-1/web"), try store.resolve("web@2")).isEmpty)
        // The same artifact adopted again from a cell of web@1: web@2 already is that configuration.
        let again = try await writer.adoptBaseline("web", from: "run-1/web")
        #expect(again == adopted)
        // Refusals: a failed cell, a cell of another baseline, a cell of an older version.
        await #expect(throws: ChangelabError.self) { try await writer.adoptBaseline("db", from: "run-1/db") }
        await #expect(throws: ChangelabError.self) { try await writer.adoptBaseline("db", from: "run-1/web") }
        // Another artifact tested on web@1 would drop what web@2 adopted: refused.
        let other = ArtifactRecord(
            digest: SHA256Digest(of: "nginx-1.22.1-10.deb"), package: "nginx", version: "1.22.1-10", size: 1234,
            recordedAt: Fixture.start)
        try await writer.record(artifact: other)
        try await writer.record(
            run: RunRecord(
                id: "run-2", artifact: other.digest, baselines: [BaselineRef(name: "web", version: 1)], startedAt: Fixture.start,
                finishedAt: Fixture.start.addingTimeInterval(100), status: .passed, actor: "tester"))
        var otherCell = Fixture.cell(
            "run-2", "web", baseline: BaselineRef(name: "web", version: 1), before: Fixture.web, after: Fixture.webWithNginx)
        otherCell.artifact = other.digest
        try await writer.record(cell: otherCell)
        do {
            try await writer.adoptBaseline("web", from: "run-2/web")
            Issue.record("adopted a cell of an older version")
        } catch {
            #expect("\(error)".contains("newest version is web@2"))
        }
        #expect(try store.baselineVersions("web").map(\.version) == [1, 2])
        #expect(try await store.verify().problems == [])
    }

    @Test func aRolledBackChangesAdoptionIsRevertedToTheConfigurationBefore() async throws {
        let path = Fixture.temporaryFolder()
        defer { Fixture.remove(path) }
        let writer = try await Fixture.make(at: path)
        let store = try CMDBStore.open(path)
        for id in ["CHG-0001", "CHG-0002"] {
            let change = ChangeRecord(
                id: id, title: "greeterd", need: "greet", type: .normal, package: "greeterd", requester: "rita",
                scope: ChangeScope(targets: "all", rings: "all"), createdAt: Date(timeIntervalSince1970: 1_800_000_000))
            try await writer.put(change, operation: "propose-change")
        }
        // Only the newest version, when it is this change's adoption, can be reverted.
        await #expect(throws: ChangelabError.self) { try await writer.revertAdoption("web", change: "CHG-0001") }
        try await writer.adoptBaseline("web", from: "run-1", change: "CHG-0001")
        await #expect(throws: ChangelabError.self) { try await writer.revertAdoption("web", change: "CHG-0002") }
        let reverted = try await writer.revertAdoption("web", change: "CHG-0001")
        #expect(reverted.version == 3 && reverted.origin == .reverted && reverted.previousVersion == 2)
        // The configuration is web@1's again: nginx is gone from the standard.
        #expect(try store.diff(try store.resolve("baseline:web@1"), try store.resolve("baseline:web")).isEmpty)
        #expect(try store.latestBaseline("web").inventory == (try store.baselineVersions("web").first?.inventory))
        // Reverting twice is refused: the newest version is no adoption any more.
        await #expect(throws: ChangelabError.self) { try await writer.revertAdoption("web", change: "CHG-0001") }
        #expect(try store.baselineVersions("web").map(\.version) == [1, 2, 3])
        #expect(try await store.verify().problems == [])
    }

    @Test func theLogListsTransactionsAndTheOnesThatTouchedAnItem() async throws {
        let path = Fixture.temporaryFolder()
        defer { Fixture.remove(path) }
        let writer = try await Fixture.make(at: path, actor: "carol")
        try await writer.record(
            target: TargetRecord(name: "paris-1", attributes: ["site": "paris", "department": "it"]))
        let store = try CMDBStore.open(path)
        let all = try await store.log()
        #expect(all.count == 11)
        #expect(all.first?.operation == "record-target" && all.first?.actor == "carol")
        #expect(all.last?.files == ["README.md", "format.json"])
        let target = try await store.log(try store.resolve("target:paris-1"))
        #expect(target.map(\.message) == ["record target paris-1", "record target paris-1"])
        #expect(try await store.log(nil, limit: 3).count == 3)
    }

    @Test func itemsResolveFromWhatPeopleType() async throws {
        let path = Fixture.temporaryFolder()
        defer { Fixture.remove(path) }
        try await Fixture.make(at: path)
        let store = try CMDBStore.open(path)
        #expect(try store.resolve("web@1") == CMDBReference(.baseline, "web@1"))
        #expect(try store.resolve("baseline:db") == CMDBReference(.baseline, "db@1"))
        #expect(try store.resolve("run-1/web") == CMDBReference(.cell, "run-1/web"))
        #expect(try store.resolve("paris-1") == CMDBReference(.target, "paris-1"))
        #expect(try store.resolve("run-1") == CMDBReference(.run, "run-1"))
        #expect(
            try store.resolve("artifact:" + Fixture.artifact.digest.hex.prefix(8))
                == CMDBReference(.artifact, Fixture.artifact.digest.hex))
        for bad in ["nope", "baseline:nope", "cell:run-1/nope", "gadget:x", "artifact:00"] {
            #expect(throws: ChangelabError.self, "\(bad)") { try store.resolve(bad) }
        }
    }
}
