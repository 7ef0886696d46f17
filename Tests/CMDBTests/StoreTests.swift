import Foundation
import HostIO
import Model
import Testing

@testable import CMDB

@Suite struct StoreTests {
    @Test func recordsAreStableJSONFilesEachTransactionOneCommitNamingOperationAndActor() async throws {
        let path = Fixture.temporaryFolder()
        defer { Fixture.remove(path) }
        let writer = try await Fixture.make(at: path, actor: "alice")
        await writer.close()
        let store = try CMDBStore.open(path)
        let cellText = try String(contentsOfFile: path + "/" + CMDBReference(.cell, "run-1/web").path, encoding: .utf8)
        #expect(cellText == (try StableJSON.string(try store.read(CellRecord.self, "run-1/web"))))
        #expect(cellText.contains("\n  \"artifact\" : "))
        let subjects = try await git(
            path, "log", "--format=%an|%s|%(trailers:key=Changelab-Operation,valueonly)", "main"
        )
        .split(separator: "\n").filter { !$0.isEmpty }
        #expect(subjects.count == 10)
        #expect(subjects.first == "alice|record target lyon-2|record-target")
        #expect(subjects.last == "alice|create the CMDB|create")
        #expect(subjects.contains("alice|record cell run-1/db (failed)|record-cell"))
        // git's own view is clean and consistent.
        #expect(try await git(path, "status", "--porcelain").isEmpty)
        _ = try await git(path, "fsck", "--full", "--strict")
        let report = try await store.verify()
        #expect(report.problems == [])
        #expect(report.warnings == [])
        #expect(report.records == ["baseline": 2, "inventory": 3, "artifact": 1, "run": 1, "cell": 2, "target": 3])
    }

    @Test func anInventoryIsStoredOnceAndAnUnchangedTransactionMakesNoCommit() async throws {
        let path = Fixture.temporaryFolder()
        defer { Fixture.remove(path) }
        let writer = try await CMDBWriter(path: path, actor: "bob")
        let first = try await writer.record(inventory: Fixture.web)
        let head = try CMDBStore.open(path).head
        let second = try await writer.record(inventory: Fixture.web)
        #expect(first == second)
        #expect(try CMDBStore.open(path).head == head)
        let again = try await writer.recordBuiltBaseline(name: "web", inventory: Fixture.web)
        let same = try await writer.recordBuiltBaseline(name: "web", inventory: Fixture.web)
        #expect(again == same && same.version == 1)
        let next = try await writer.recordBuiltBaseline(name: "web", inventory: Fixture.webWithNginx)
        #expect(next.version == 2 && next.previousVersion == 1)
    }

    @Test func invalidRecordsAndDanglingReferencesAreRefusedAndNothingIsWritten() async throws {
        let path = Fixture.temporaryFolder()
        defer { Fixture.remove(path) }
        let writer = try await CMDBWriter(path: path, actor: "bob")
        let head = try CMDBStore.open(path).head
        let cell = Fixture.cell(
            "run-9", "web", baseline: BaselineRef(name: "web", version: 1), before: Fixture.web,
            after: Fixture.webWithNginx)
        await #expect(throws: ChangelabError.self) { try await writer.record(cell: cell) }
        do {
            try await writer.record(cell: cell)
        } catch {
            #expect("\(error)".contains("baseline:web@1"))
            #expect("\(error)".contains("run:run-9"))
        }
        var bad = cell
        bad.attempts = 0
        await #expect(throws: ChangelabError.self) { try await writer.record(cell: bad) }
        #expect(try CMDBStore.open(path).head == head)
        #expect(!FileManager.default.fileExists(atPath: path + "/cells"))
    }

    @Test func aNewerFormatIsRefusedAndNothingChanges() async throws {
        let path = Fixture.temporaryFolder()
        defer { Fixture.remove(path) }
        _ = try await CMDBWriter(path: path, actor: "t")
        try "{\n  \"format\" : \"changelab-cmdb\",\n  \"version\" : 3\n}\n".write(
            toFile: path + "/format.json", atomically: true, encoding: .utf8)
        #expect(throws: ChangelabError.self) { try CMDBStore.open(path) }
        do {
            _ = try await CMDBWriter(path: path, actor: "t")
            Issue.record("a writer opened a newer CMDB")
        } catch {
            #expect("\(error)".contains("format version 3"))
            #expect("\(error)".contains("fix:"))
        }
        #expect(try String(contentsOfFile: path + "/format.json", encoding: .utf8).contains("3"))
    }

    @Test func aFolderThatIsNotACMDBIsRefusedAndLeftAlone() async throws {
        let path = Fixture.temporaryFolder()
        defer { Fixture.remove(path) }
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        try "hello".write(toFile: path + "/notes.txt", atomically: true, encoding: .utf8)
        do {
            _ = try CMDBStore.open(path)
            Issue.record("opened a folder that is not a CMDB")
        } catch {
            #expect("\(error)".contains("is not a changelab CMDB"))
        }
        await #expect(throws: ChangelabError.self) { _ = try await CMDBWriter(path: path, actor: "t") }
        #expect(try FileManager.default.contentsOfDirectory(atPath: path) == ["notes.txt"])
        do {
            _ = try CMDBStore.open(path + "/missing")
        } catch {
            #expect("\(error)".contains("there is no CMDB"))
        }
    }

    @Test func twoConcurrentWritersBothLandEveryRecordInOneLinearHistory() async throws {
        let path = Fixture.temporaryFolder()
        defer { Fixture.remove(path) }
        try await Fixture.make(at: path)
        let a = try await CMDBWriter(path: path, actor: "writer-a")
        let b = try await CMDBWriter(path: path, actor: "writer-b")
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (writer, prefix) in [(a, "a"), (b, "b")] {
                group.addTask {
                    for i in 0..<15 {
                        try await writer.record(
                            target: TargetRecord(name: "\(prefix)-\(i)", attributes: ["site": prefix]))
                    }
                }
            }
            try await group.waitForAll()
        }
        let store = try CMDBStore.open(path)
        for prefix in ["a", "b"] {
            for i in 0..<15 { #expect(store.exists(CMDBReference(.target, "\(prefix)-\(i)"))) }
        }
        let commits = try await git(path, "log", "--format=%H %P", "main").split(separator: "\n")
        #expect(commits.allSatisfy { $0.split(separator: " ").count <= 2 })
        #expect(commits.count == 40)
        #expect(try await store.verify().problems == [])
    }
}
