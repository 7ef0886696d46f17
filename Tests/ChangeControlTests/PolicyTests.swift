import ChangeControl
import Foundation
import HostIO
import Model
import Testing

/// The approval policy file, approver keys and the trust root chain.
@Suite struct PolicyTests {
    static let example = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("lab/approval-policy.yaml").path

    static func temporary() throws -> String {
        let folder = NSTemporaryDirectory() + "changelab-policy-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        return folder
    }

    @Test func theShippedExampleReadsAsTheIssueDescribesIt() throws {
        let policy = try PolicyFile.load(Self.example)
        let normal = try #require(policy.rule(for: .normal))
        #expect(normal.preliminary == StageRule(approvals: 2, roles: [.ccb], selfApproval: false))
        #expect(normal.release == StageRule(approvals: 2, roles: [.ccb], selfApproval: false))
        #expect(normal.lanes == ["install", "reinstall", "uninstall"])
        #expect(policy.rule(for: .standard)?.release == nil)
        #expect(policy.rule(for: .emergency)?.release == StageRule(approvals: 1, roles: [.emergencyCAB]))
        #expect(policy.rule(for: .emergency)?.lanes == ["install"])
        #expect(policy.readiness == 0.95)
        #expect(policy.defaultRate == 10 << 20)
        #expect(policy.approvers.isEmpty && policy.labKeys.isEmpty)
        #expect(policy.rollbackRoles == [.ccb, .emergencyCAB])
        #expect(policy.freezes.count == 1)
        // The example freeze is not in the demo's way.
        #expect(policy.freeze(at: Date()) == nil)
        #expect(policy.freeze(at: ISO8601DateFormatter().date(from: "2030-12-25T12:00:00Z") ?? Date()) != nil)
    }

    @Test func everyProblemIsReportedWithItsLineAndColumn() throws {
        let text = """
            version: 1
            time-zone: Mars/Olympus
            readiness: lots
            approvers:
              - {name: alice, role: judge, key: abc}
            change-types:
              normal:
                preliminary: {approvals: 0, roles: [ccb]}
                release: {approvals: 2, roles: [ccb]}
                lanes: [install, fly]
            colour: blue
            """
        let error = #expect(throws: SpecValidationError.self) { try PolicyFile.parse(text, file: "policy.yaml") }
        let lines = error?.problems.map(\.description) ?? []
        #expect(
            lines == [
                "policy.yaml:2:12: time zone 'Mars/Olympus' is not an IANA name like Europe/Paris or UTC",
                "policy.yaml:3:12: 'readiness' is a share of targets like 95% or 0.95, not 'lots'",
                "policy.yaml:5:25: 'judge' is not a board (boards: ccb, tab, emergency-cab)",
                "policy.yaml:5:37: approver alice's key is not 64 hex digits of an Ed25519 public key",
                "policy.yaml:8:30: 'approvals' must be 1 or more",
                "policy.yaml:10:22: 'fly' is not a lane (lanes: install, upgrade, reinstall, uninstall)",
                "policy.yaml:11:1: unknown key 'colour' in the document (known keys: version, time-zone, root-threshold, readiness, default-rate, approvers, lab-keys, change-types, standard-packages, freezes, rollback-roles)",
            ])
    }

    @Test func wholePolicyProblemsArePlacedAtTheirKey() throws {
        let text = """
            version: 1
            root-threshold: 3
            approvers:
              - {name: alice, role: ccb, key: "\(SigningKey().publicKey.hex)"}
            change-types:
              standard:
                lanes: [install]
            """
        let error = #expect(throws: SpecValidationError.self) { try PolicyFile.parse(text, file: "p.yaml") }
        #expect(error?.problems.map(\.description) == ["p.yaml:2:17: root-threshold 3 is more than the 1 approver(s) listed"])
    }

    @Test func registeringAnApproverKeepsTheCommentsAndReadsBack() throws {
        let folder = try Self.temporary()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let path = folder + "/policy.yaml"
        try FileManager.default.copyItem(atPath: Self.example, toPath: path)
        let alice = Approver(name: "alice", role: .ccb, key: SigningKey().publicKey.hex)
        let bob = Approver(name: "bob", role: .ccb, key: SigningKey().publicKey.hex)
        try PolicyFile.register(alice, in: path)
        try PolicyFile.register(bob, in: path)
        let policy = try PolicyFile.load(path)
        #expect(policy.approvers == [alice, bob])
        let text = try String(contentsOfFile: path, encoding: .utf8)
        #expect(text.contains("# The CCB's members"))
        #expect(text.contains("# Roles: ccb (change control board)"))
        #expect(throws: ChangelabError.self) { try PolicyFile.register(alice, in: path) }
        let lab = SigningKey().publicKey
        try PolicyFile.register(labKey: lab, in: path)
        #expect(try PolicyFile.load(path).labPublicKeys == [lab])
    }

    @Test func approverKeysArePrivateAndNeverInsideARepository() throws {
        let folder = try Self.temporary()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let keyring = ApproverKeyring(directory: folder + "/keys")
        let key = try keyring.create(name: "alice", role: .ccb, repository: folder + "/repo")
        var info = stat()
        #expect(stat(try keyring.path(of: "alice"), &info) == 0)
        #expect(info.st_mode & 0o777 == 0o600)
        #expect(try keyring.key("alice").publicKey == key.publicKey)
        #expect(keyring.names() == ["alice"])
        #expect(throws: ChangelabError.self) { try keyring.create(name: "alice", role: .ccb, repository: nil) }
        #expect(throws: ChangelabError.self) { try keyring.create(name: "../evil", role: .ccb, repository: nil) }
        let inside = ApproverKeyring(directory: folder + "/repo/keys")
        let refusal = #expect(throws: ChangelabError.self) {
            try inside.create(name: "bob", role: .ccb, repository: folder + "/repo")
        }
        #expect(refusal?.what.contains("inside the repository") == true)
        chmod(try keyring.path(of: "alice"), 0o644)
        #expect(throws: ChangelabError.self) { try keyring.key("alice") }
    }

    @Test func theTrustRootChainIsSignedCosignedAndRotatedByThreshold() throws {
        let folder = try Self.temporary()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let alice = SigningKey()
        let bob = SigningKey()
        var policy = ApprovalPolicy(
            approvers: [
                Approver(name: "alice", role: .ccb, key: alice.publicKey.hex),
                Approver(name: "bob", role: .ccb, key: bob.publicKey.hex),
            ], rootThreshold: 2,
            changeTypes: ["normal": ChangeTypeRule(preliminary: nil, release: StageRule(approvals: 1, roles: [.ccb]), lanes: ["install"])])
        var chain = try TrustRootFile(path: folder + "/trust-roots.json")
        #expect(try chain.sign(policy, with: alice) == .created(version: 1))
        #expect(throws: ChangelabError.self) { _ = try chain.sign(policy, with: SigningKey()) }
        try chain.save()
        let pinned = try #require(chain.roots.first?.payloadDigest)
        policy.version = 2
        policy.readiness = 0.9
        #expect(try chain.sign(policy, with: alice) == .appended(version: 2))
        // One signature of a threshold of two: agents stop at version 1.
        #expect(throws: TrustRootRefusal.self) { try TrustChain.current(chain.roots, pinned: pinned) }
        #expect(try chain.sign(policy, with: bob) == .cosigned(version: 2))
        try chain.save()
        let reread = try TrustRootFile(path: folder + "/trust-roots.json")
        let current = try TrustChain.current(reread.roots, pinned: pinned)
        #expect(current.policy.version == 2)
        #expect(current.policy.readiness == 0.9)
    }
}
