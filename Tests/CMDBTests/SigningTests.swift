import Foundation
import HostIO
import Model
import Testing

@testable import CMDB

/// A keyring of its own per test, so no test touches ~/.config/changelab.
func temporaryKeyring() -> CMDBKeyring { CMDBKeyring(directory: Fixture.temporaryFolder("keys")) }

/// Every transaction is signed; a forged, foreign or rewritten history is an error.
@Suite struct SigningTests {
    func changelab(_ arguments: [String], keyring: CMDBKeyring, actor: String? = nil) async throws -> CommandResult {
        var environment = ["CHANGELAB_CMDB_KEYS": keyring.directory]
        if let actor { environment["CHANGELAB_ACTOR"] = actor }
        return try await HostCommand.run(
            try changelabBinary(), arguments, environment: environment, timeout: .seconds(120))
    }

    /// A CMDB of a few signed transactions, written with `keyring`.
    func make(_ path: String, keyring: CMDBKeyring) async throws -> CMDBWriter {
        let writer = try await CMDBWriter(path: path, actor: "alice", keyring: keyring)
        for name in ["paris-1", "lyon-1", "nantes-1"] {
            try await writer.record(target: TargetRecord(name: name, attributes: ["site": String(name.dropLast(2))]))
        }
        await writer.close()
        return writer
    }

    @Test func everyTransactionIsSignedAndVerifies() async throws {
        let path = Fixture.temporaryFolder()
        let keyring = temporaryKeyring()
        defer { Fixture.remove(path); Fixture.remove(keyring.directory) }
        let writer = try await make(path, keyring: keyring)
        let head = try #require(writer.store.head)
        let object = try await git(path, "cat-file", "commit", head)
        #expect(object.contains("Changelab-Key: \(writer.key.publicKey.id) alice\n"))
        #expect(object.hasSuffix("\n") && object.contains("\nChangelab-Signature: ed25519 "))
        let report = try await writer.store.verify(trustedKeys: keyring.trustedKeysPath)
        #expect(report.problems == [])
        #expect(report.commits == 4)
        // The key stays outside the CMDB, readable only by its owner.
        var info = stat()
        #expect(stat(keyring.keyPath, &info) == 0)
        #expect(info.st_mode & 0o777 == 0o600)
        #expect(!keyring.keyPath.hasPrefix(path))
    }

    @Test(arguments: [false, true])
    func aHandCommitWithAnOperationTrailerMakesVerifyExit1(forgedSignature: Bool) async throws {
        let path = Fixture.temporaryFolder()
        let keyring = temporaryKeyring()
        defer { Fixture.remove(path); Fixture.remove(keyring.directory) }
        _ = try await make(path, keyring: keyring)
        let file = CMDBReference(.target, "paris-1").path
        let text = try String(contentsOfFile: "\(path)/\(file)", encoding: .utf8)
        try text.replacingOccurrences(of: "\"paris\"", with: "\"moscow\"").write(
            toFile: "\(path)/\(file)", atomically: true, encoding: .utf8)
        var message = "record target paris-1\n\nChangelab-Operation: record-target\nChangelab-Actor: alice\n"
        if forgedSignature {
            let junk = Data((0..<64).map { _ in UInt8.random(in: 0...255) }).base64EncodedString()
            let id = try #require(try CMDBTrustedKeys.load(keyring.trustedKeysPath)?.keys.first?.id)
            message += "Changelab-Key: \(id) alice\nChangelab-Signature: ed25519 \(junk)\n"
        }
        _ = try await git(path, "-c", "user.name=alice", "-c", "user.email=a@x", "commit", "-qam", message)
        let forged = try #require(CMDBStore.open(path).head)

        let result = try await changelab(["cmdb", "verify", "--cmdb", path], keyring: keyring)
        #expect(result.status == 1)
        #expect(result.stdoutText.contains("problem: commit \(forged.prefix(12))"), "\(result.stdoutText)")
        #expect(
            result.stdoutText.contains(
                forgedSignature ? "has a signature that does not match it" : "is not signed by a CMDB writer"))
    }

    @Test func aCommitSignedByAKeyTheVerifierDoesNotTrustIsRefused() async throws {
        let path = Fixture.temporaryFolder()
        let mallory = temporaryKeyring()
        let auditor = temporaryKeyring()
        defer { Fixture.remove(path); Fixture.remove(mallory.directory); Fixture.remove(auditor.directory) }
        _ = try await make(path, keyring: mallory)
        _ = try auditor.writerKey(name: "auditor")
        let report = try await CMDBStore.open(path).verify(trustedKeys: auditor.trustedKeysPath)
        #expect(report.problems.count == 4)
        #expect(report.problems.allSatisfy { $0.message.contains("which \(auditor.trustedKeysPath) does not list") })
        // The trusted keys file is required: without one nothing is trusted.
        let missing = try await CMDBStore.open(path).verify(trustedKeys: auditor.directory + "/none.json")
        #expect(missing.problems.map(\.item) == ["signatures"])
        #expect(missing.problems.first?.message.contains("there is no trusted keys file") == true)
    }

    @Test func aRewriteByAKeyHolderIsCaughtAgainstAReplicaAndACheckpointFile() async throws {
        let path = Fixture.temporaryFolder()
        let replica = Fixture.temporaryFolder("replica")
        let checkpointFile = Fixture.temporaryFolder("checkpoint") + ".json"
        let keyring = temporaryKeyring()
        defer {
            for folder in [path, replica, checkpointFile, keyring.directory] { Fixture.remove(folder) }
        }
        let writer = try await make(path, keyring: keyring)
        _ = try await HostCommand.check("git", ["clone", "-q", "--bare", path, replica])
        let checkpoint = try await writer.store.writeCheckpoint(to: checkpointFile)
        #expect(checkpoint.commits == 4)
        #expect(try await writer.store.verify(trustedKeys: keyring.trustedKeysPath, against: replica).passed)
        #expect(try await writer.store.verify(trustedKeys: keyring.trustedKeysPath, against: checkpointFile).passed)

        // Rewrite from the first target on: drop it and the later ones, record others, all
        // signed with the writer's own key, so the signatures alone cannot tell.
        _ = try await git(path, "reset", "-q", "--hard", "HEAD~3")
        let rewriter = try await CMDBWriter(path: path, actor: "alice", keyring: keyring)
        try await rewriter.record(target: TargetRecord(name: "paris-1", attributes: ["site": "moscow"]))
        await rewriter.close()
        let store = try CMDBStore.open(path)
        #expect(try await store.verify(trustedKeys: keyring.trustedKeysPath).passed)
        for against in [replica, checkpointFile] {
            let report = try await store.verify(trustedKeys: keyring.trustedKeysPath, against: against)
            #expect(!report.passed)
            #expect(report.problems.map(\.message).contains { $0.contains("is not in this CMDB's history") })
        }
        let result = try await changelab(
            ["cmdb", "verify", "--cmdb", path, "--against", replica, "--trusted-keys", keyring.trustedKeysPath],
            keyring: keyring)
        #expect(result.status == 1)
        #expect(result.stdoutText.contains("the history differs from the replica"))
    }

    @Test func aRolledBackBranchIsCaughtAgainstTheReplica() async throws {
        let path = Fixture.temporaryFolder()
        let replica = Fixture.temporaryFolder("replica")
        let keyring = temporaryKeyring()
        defer { for folder in [path, replica, keyring.directory] { Fixture.remove(folder) } }
        _ = try await make(path, keyring: keyring)
        _ = try await HostCommand.check("git", ["clone", "-q", "--bare", path, replica])
        _ = try await git(path, "reset", "-q", "--hard", "HEAD~2")
        let report = try await CMDBStore.open(path).verify(trustedKeys: keyring.trustedKeysPath, against: replica)
        #expect(report.problems.map(\.message).contains { $0.contains("this CMDB is behind the replica") })
        let bad = try await CMDBStore.open(path).verify(
            trustedKeys: keyring.trustedKeysPath, against: path + "/no-such-replica")
        #expect(bad.problems.first?.message.contains("cannot read the replica") == true)
    }

    @Test func unsignedHistoryIsAcceptedOnlyBelowTheUpgradeCheckpoint() async throws {
        let path = Fixture.temporaryFolder()
        let keyring = temporaryKeyring()
        defer { Fixture.remove(path); Fixture.remove(keyring.directory) }
        // A CMDB as changelab wrote it before signing: format 1, trailers, no signature.
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        _ = try await HostCommand.check("git", ["init", "-q", "-b", "main", path])
        try "{\n  \"format\" : \"changelab-cmdb\",\n  \"version\" : 1\n}\n".write(
            toFile: path + "/format.json", atomically: true, encoding: .utf8)
        try "# changelab CMDB\n".write(toFile: path + "/README.md", atomically: true, encoding: .utf8)
        _ = try await git(path, "add", ".")
        _ = try await git(
            path, "-c", "user.name=changelab", "-c", "user.email=c@x", "commit", "-qm",
            "create the CMDB\n\nChangelab-Operation: create\nChangelab-Actor: old")
        let legacy = try #require(CMDBStore.open(path).head)

        let writer = try await CMDBWriter(path: path, actor: "alice", keyring: keyring)
        try await writer.record(target: TargetRecord(name: "paris-1", attributes: ["site": "paris"]))
        let before = try await writer.store.verify(trustedKeys: keyring.trustedKeysPath)
        #expect(before.problems.count == 1)
        #expect(before.problems.first?.item == "commit \(legacy.prefix(12))")
        #expect(before.problems.first?.message.contains("run 'changelab cmdb upgrade' once") == true)

        guard case .checkpointed(_, let accepted) = try await writer.upgrade() else {
            Issue.record("the upgrade wrote no checkpoint")
            return
        }
        #expect(accepted == 2)
        #expect(try writer.store.formatVersion() == 2)
        #expect(try await writer.upgrade() == .alreadySigned)
        try await writer.record(target: TargetRecord(name: "lyon-1", attributes: ["site": "lyon"]))
        await writer.close()
        #expect(try await writer.store.verify(trustedKeys: keyring.trustedKeysPath).problems == [])

        // Above the checkpoint, a hand commit is an error again.
        try "x\n".write(toFile: path + "/README.md", atomically: true, encoding: .utf8)
        _ = try await git(path, "-c", "user.name=m", "-c", "user.email=m@x", "commit", "-qam", "hand")
        let after = try await writer.store.verify(trustedKeys: keyring.trustedKeysPath)
        #expect(after.problems.contains { $0.message.contains("('hand') is not signed by a CMDB writer") })
    }

    @Test func aKeyOthersCanReadIsRefused() async throws {
        let keyring = temporaryKeyring()
        defer { Fixture.remove(keyring.directory) }
        _ = try keyring.writerKey(name: "alice")
        chmod(keyring.keyPath, 0o644)
        #expect {
            _ = try keyring.writerKey(name: "alice")
        } throws: { error in
            "\(error)".contains("chmod 600 \(keyring.keyPath)")
        }
        let path = Fixture.temporaryFolder()
        defer { Fixture.remove(path) }
        let inside = CMDBKeyring(directory: path + "/.git/keys")
        await #expect(throws: ChangelabError.self) {
            _ = try await CMDBWriter(path: path, actor: "alice", keyring: inside)
        }
    }

    @Test func theActorIsTheNamedOperatorOrALabelledLocalUserNeverUSER() async throws {
        let path = Fixture.temporaryFolder()
        let keyring = temporaryKeyring()
        defer { Fixture.remove(path); Fixture.remove(keyring.directory) }
        var environment = ["CHANGELAB_CMDB_KEYS": keyring.directory, "USER": "mallory", "CHANGELAB_ACTOR": ""]
        let binary = try changelabBinary()
        let unnamed = try await HostCommand.run(
            binary, ["cmdb", "record-target", "a", "--cmdb", path], environment: environment, timeout: .seconds(120))
        #expect(unnamed.status == 0, "\(unnamed.stderrText)")
        environment["CHANGELAB_ACTOR"] = "bob"
        let named = try await HostCommand.run(
            binary, ["cmdb", "record-target", "b", "--cmdb", path], environment: environment, timeout: .seconds(120))
        #expect(named.status == 0, "\(named.stderrText)")
        let first = try await git(path, "log", "-1", "--format=%an%n%B", "HEAD~1")
        #expect(first.hasPrefix("local:") && !first.hasPrefix("local:mallory"))
        #expect(first.contains("Changelab-Actor-Source: local-user"))
        let second = try await git(path, "log", "-1", "--format=%an%n%B", "HEAD")
        #expect(second.hasPrefix("bob\n") && second.contains("Changelab-Actor-Source: operator"))
        await #expect(throws: ChangelabError.self) {
            _ = try await CMDBWriter(path: path, actor: "eve\nChangelab-Signature: x", keyring: keyring)
        }
    }
}
