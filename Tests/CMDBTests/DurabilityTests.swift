import Foundation
import HostIO
import Model
import Testing

@testable import CMDB

/// The writer uses git's own ref lock and makes objects durable before naming them.
@Suite struct DurabilityTests {
    @Test func gitsRefLockIsWaitedForAndNeverRemoved() async throws {
        let path = Fixture.temporaryFolder()
        let keyring = temporaryKeyring()
        defer { Fixture.remove(path); Fixture.remove(keyring.directory) }
        let writer = try await CMDBWriter(path: path, actor: "alice", keyring: keyring)
        let store = writer.store
        let head = try #require(store.head)
        let lock = store.gitDirectory + "/refs/heads/main.lock"
        try "held by another git\n".write(toFile: lock, atomically: false, encoding: .utf8)
        let objects = GitObjectWriter(gitDirectory: store.gitDirectory)
        #expect {
            try objects.updateBranch("main", to: String(repeating: "a", count: 40), expecting: head, timeout: .milliseconds(200))
        } throws: { error in
            "\(error)".contains("git's lock \(lock)") && "\(error)".contains("fix:")
        }
        #expect(FileManager.default.fileExists(atPath: lock))
        #expect(store.head == head)

        // Released while a transaction waits: the transaction goes through.
        Task.detached {
            try? await Task.sleep(for: .milliseconds(500))
            unlink(lock)
        }
        let commit = try await writer.transaction("record target x", operation: "record-target") {
            try $0.put(TargetRecord(name: "x", attributes: [:]))
        }
        #expect(store.head == commit.id && commit.id != head)
        #expect(try await store.verify(trustedKeys: keyring.trustedKeysPath).problems == [])
    }

    @Test func aBranchMovedBehindTheWritersBackIsNotOverwritten() async throws {
        let path = Fixture.temporaryFolder()
        let keyring = temporaryKeyring()
        defer { Fixture.remove(path); Fixture.remove(keyring.directory) }
        let writer = try await CMDBWriter(path: path, actor: "alice", keyring: keyring)
        let head = try #require(writer.store.head)
        let objects = GitObjectWriter(gitDirectory: writer.store.gitDirectory)
        #expect(throws: ChangelabError.self) {
            try objects.updateBranch("main", to: String(repeating: "b", count: 40), expecting: String(repeating: "c", count: 40))
        }
        #expect(writer.store.head == head)
    }

    @Test func eachTransactionMakesItsObjectsDurableBeforeTheBranchMoves() async throws {
        let path = Fixture.temporaryFolder()
        let keyring = temporaryKeyring()
        defer { Fixture.remove(path); Fixture.remove(keyring.directory) }
        #expect(syncfsFunction != nil)
        let writer = try await CMDBWriter(path: path, actor: "alice", keyring: keyring)
        let commit = try await writer.transaction("record target x", operation: "record-target") {
            try $0.put(TargetRecord(name: "x", attributes: [:]))
        }
        #expect(commit.syncSeconds > 0)
    }
}
