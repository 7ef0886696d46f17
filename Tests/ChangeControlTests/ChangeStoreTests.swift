import CMDB
import ChangeControl
import Foundation
import HostIO
import Model
import Testing

/// Change records on a real CMDB: proposals, signed approvals and every refusal, the gate.
@Suite struct ChangeStoreTests {
    static func proposal(_ type: ChangeType = .normal, targets: String = "site = paris", package: String = "greeterd")
        -> ChangeStore.Proposal
    {
        ChangeStore.Proposal(
            title: "greeterd 1.1.0", need: "greet in French", benefit: "happier users", type: type, package: package,
            scope: ChangeScope(targets: targets, rings: "canary:50%,all"))
    }

    /// How many transactions the CMDB has recorded.
    static func commits(_ lab: Lab) async throws -> Int {
        try await lab.writer.store.log().count
    }

    /// A normal change through its preliminary approval and its first green evidence.
    static func tested(_ lab: Lab, cells: [(String, String, Bool)] = Lab.fullGreen) async throws -> ChangeRecord {
        let store = lab.store
        let change = try await store.propose(proposal())
        try await store.approve(change.id, stage: .preliminary, approver: "alice", key: lab.key("alice"))
        try await store.approve(change.id, stage: .preliminary, approver: "bob", key: lab.key("bob"))
        try await lab.run("run-1", Lab.artifact(), cells: cells)
        return try await store.attachEvidence(change.id)
    }

    @Test func proposalsGetSequentialIdsAndAnImpactAssessmentFromTheCMDB() async throws {
        let lab = try await Lab.make()
        defer { lab.remove() }
        try await lab.writer.record(artifact: Lab.artifact())
        let first = try await lab.store.propose(Self.proposal(targets: "all"))
        let second = try await lab.store.propose(Self.proposal(targets: "segment = s2"))
        #expect(first.id == "CHG-0001")
        #expect(second.id == "CHG-0002")
        #expect(first.requester == "dave")
        let impact = try #require(first.impact)
        #expect(impact.targetCount == 4)
        #expect(impact.sites == ["lyon", "paris"])
        #expect(impact.segments.map(\.name) == ["s1", "s2"])
        #expect(impact.segments.map(\.targets) == [2, 2])
        #expect(
            impact.baselines == [
                .init(name: "db", targets: 1, approved: true), .init(name: "mail", targets: 1, approved: false),
                .init(name: "web", targets: 2, approved: true),
            ])
        // 10,000 bytes: 4 targets unicast, 2 segments seeded, at the policy's 1,000 B/s.
        #expect(impact.unicastBytes == 40_000)
        #expect(impact.seededBytes == 20_000)
        #expect(impact.seedingSeconds == 20)
        #expect(second.impact?.targetCount == 2)
        let log = try await lab.writer.store.log(CMDBReference(.change, "CHG-0001"))
        #expect(log.map(\.operation) == ["change-propose"])
        #expect(log.first?.actor == "dave")
    }

    @Test func conflictsAreOtherOpenChangesTouchingTheSameItems() async throws {
        let lab = try await Lab.make()
        defer { lab.remove() }
        let delta = ConfigurationDelta(
            categories: [.files: CategoryDelta(added: [DeltaEntry(key: "/etc/greeterd.conf", before: nil, after: ["mode": "0644"])])])
        try await lab.run("run-a", Lab.artifact("greeterd"), cells: [("web", "install", true)], delta: delta)
        try await lab.run("run-b", Lab.artifact("greeterd-extra"), cells: [("web", "install", true)], delta: delta)
        let first = try await lab.store.propose(Self.proposal(package: "greeterd"))
        let second = try await lab.store.propose(Self.proposal(package: "greeterd-extra"))
        #expect(first.impact?.conflicts == [])
        #expect(second.impact?.conflicts == [.init(change: first.id, items: ["files:/etc/greeterd.conf"])])
    }

    @Test func thePreliminaryStagePassesOnTwoDistinctKeys() async throws {
        let lab = try await Lab.make()
        defer { lab.remove() }
        let store = lab.store
        let change = try await store.propose(Self.proposal())
        let once = try await store.approve(change.id, stage: .preliminary, approver: "alice", key: lab.key("alice"))
        #expect(once.approval == .proposed)
        let twice = try await store.approve(change.id, stage: .preliminary, approver: "bob", key: lab.key("bob"))
        #expect(twice.approval == .preliminarilyApproved)
        #expect(twice.approvals.map(\.signer) == ["alice", "bob"])
        let log = try await lab.writer.store.log(CMDBReference(.change, change.id))
        #expect(log.map(\.operation) == ["change-approve-preliminary", "change-approve-preliminary", "change-propose"])
        #expect(log.first?.message.contains("bob") == true)
    }

    /// Each refused approval, the words the refusal must contain; nothing may be recorded.
    @Test(arguments: ["twice", "self", "untrusted", "tampered", "wrong role", "other change", "release too early"])
    func refusedApprovalsRecordNothing(_ kind: String) async throws {
        let lab = try await Lab.make()
        defer { lab.remove() }
        let store = lab.store
        let change = try await store.propose(Self.proposal())
        try await store.approve(change.id, stage: .preliminary, approver: "alice", key: lab.key("alice"))
        let before = try await Self.commits(lab)
        let statement = try store.statement(for: change.id, stage: .preliminary, decision: .approve, approver: "x", comment: nil)
        let words: String
        let envelope: SignedEnvelope
        switch kind {
        case "twice":
            envelope = try lab.key("alice").sign(statement, as: .approval)
            words = "already signed"
        case "self":
            envelope = try lab.key("dave").sign(statement, as: .approval)
            words = "forbids approving one's own change"
        case "untrusted":
            envelope = try SigningKey().sign(statement, as: .approval)
            words = "does not trust"
        case "tampered":
            var signed = try lab.key("bob").sign(statement, as: .approval)
            var claim = statement
            claim.comment = "edited after signing"
            signed.payload = try StableJSON.data(claim).base64EncodedString()
            envelope = signed
            words = "forged or altered"
        case "wrong role":
            envelope = try lab.key("erin").sign(statement, as: .approval)
            words = "sits on emergency-cab"
        case "other change":
            var other = statement
            other.change = "CHG-0009"
            envelope = try lab.key("bob").sign(other, as: .approval)
            words = "approval of CHG-0009"
        default:
            var release = statement
            release.stage = .release
            release.artifact = Lab.artifact().digest
            release.scope = change.scope
            envelope = try lab.key("bob").sign(release, as: .approval)
            words = "no built artifact"
        }
        let error = await #expect(throws: ChangelabError.self) { try await store.record(envelope, for: change.id) }
        #expect(error?.description.contains(words) == true, "\(kind): \(error?.description ?? "")")
        #expect(try await Self.commits(lab) == before)
        #expect(try store.read(change.id).approvals.count == 1)
    }

    @Test func anUnknownOrMalformedChangeIdIsRefusedByName() async throws {
        let lab = try await Lab.make()
        defer { lab.remove() }
        let unknown = #expect(throws: ChangelabError.self) { try lab.store.read("CHG-0042") }
        #expect(unknown?.what.contains("no change CHG-0042") == true)
        let malformed = #expect(throws: ChangelabError.self) { try lab.store.read("../etc/passwd") }
        #expect(malformed?.what.contains("not a change id") == true)
    }

    @Test func oneRejectionRejects() async throws {
        let lab = try await Lab.make()
        defer { lab.remove() }
        let store = lab.store
        let change = try await store.propose(Self.proposal())
        try await store.approve(change.id, stage: .preliminary, approver: "alice", key: lab.key("alice"))
        let rejected = try await store.approve(
            change.id, stage: .preliminary, decision: .reject, approver: "bob", key: lab.key("bob"), comment: "no backout plan")
        #expect(rejected.lifecycle == .rejected)
        await #expect(throws: ChangelabError.self) {
            try await store.approve(change.id, stage: .preliminary, approver: "carol", key: lab.key("carol"))
        }
    }

    @Test func theGateListsExactlyWhatIsMissingAndAcceptsWhenItIsThere() async throws {
        let lab = try await Lab.make()
        defer { lab.remove() }
        let store = lab.store
        let change = try await Self.tested(
            lab, cells: [("web", "install", true), ("web", "uninstall", true), ("db", "install", true), ("db", "uninstall", false)])
        #expect(change.approval == .builtAndTested)
        let before = try await Self.commits(lab)
        let refusal = await #expect(throws: ChangelabError.self) {
            try await store.approve(change.id, stage: .release, approver: "alice", key: lab.key("alice"))
        }
        let digest = Lab.artifact().digest.short
        #expect(
            refusal?.why == "\n    - no green uninstall cell on baseline db (approved) for artifact \(digest)…: failed (product) in run run-1")
        #expect(try await Self.commits(lab) == before)
        // The missing cell passes in a second run: the release is accepted on both runs' evidence.
        try await lab.run("run-2", Lab.artifact(), cells: [("db", "uninstall", true)])
        try await store.attachEvidence(change.id)
        let one = try await store.approve(change.id, stage: .release, approver: "alice", key: lab.key("alice"))
        #expect(one.approval == .builtAndTested)
        let two = try await store.approve(change.id, stage: .release, approver: "bob", key: lab.key("bob"))
        #expect(two.approval == .releaseApproved)
        #expect(two.evidenceRuns == ["run-1", "run-2"])
        let statement = try #require(two.approvals.last?.envelope.unverifiedClaim(ApprovalStatement.self))
        #expect(statement.evidence.count == 2)
        #expect(statement.scope == change.scope)
        #expect(statement.artifact == Lab.artifact().digest)
    }

    /// A change is judged on the runs it was shown: a green run of the same artifact that was
    /// not attached (an earlier session's, say) does not pass the gate until it is named.
    @Test func theGateJudgesOnlyTheRunsAttachedToTheChange() async throws {
        let lab = try await Lab.make()
        defer { lab.remove() }
        let store = lab.store
        let change = try await store.propose(Self.proposal())
        try await store.approve(change.id, stage: .preliminary, approver: "alice", key: lab.key("alice"))
        try await store.approve(change.id, stage: .preliminary, approver: "bob", key: lab.key("bob"))
        try await lab.run("run-full", Lab.artifact(), cells: Lab.fullGreen)
        try await lab.run("run-install", Lab.artifact(), cells: [("web", "install", true), ("db", "install", true)])
        let shown = try await store.attachEvidence(change.id, runs: ["run-install"])
        #expect(shown.evidenceRuns == ["run-install"])
        let refusal = await #expect(throws: ChangelabError.self) {
            try await store.approve(change.id, stage: .release, approver: "alice", key: lab.key("alice"))
        }
        #expect(refusal?.why?.contains("no green uninstall cell on baseline db") == true)
        #expect(refusal?.why?.contains("run-full") == false)
        // Unknown runs, and runs of two artifacts at once, are refused.
        await #expect(throws: ChangelabError.self) { try await store.attachEvidence(change.id, runs: ["run-nope"]) }
        try await lab.run("run-other", Lab.artifact(build: 2), cells: Lab.fullGreen)
        await #expect(throws: ChangelabError.self) { try await store.attachEvidence(change.id, runs: ["run-install", "run-other"]) }
        // Naming the full run adds its evidence: the vote passes on both.
        try await store.attachEvidence(change.id, runs: ["run-full"])
        try await store.approve(change.id, stage: .release, approver: "alice", key: lab.key("alice"))
        let two = try await store.approve(change.id, stage: .release, approver: "bob", key: lab.key("bob"))
        #expect(two.approval == .releaseApproved)
        #expect(two.evidenceRuns == ["run-full", "run-install"])
        #expect(two.approvals.last?.envelope.unverifiedClaim(ApprovalStatement.self)?.evidence.count == 2)
    }

    /// lyon-2 runs mail (a draft): a change reaching it needs mail evidence too.
    @Test func aTargetsBaselineWithoutEvidenceBlocksTheRelease() async throws {
        let lab = try await Lab.make()
        defer { lab.remove() }
        let store = lab.store
        let change = try await store.propose(Self.proposal(targets: "all"))
        try await store.approve(change.id, stage: .preliminary, approver: "alice", key: lab.key("alice"))
        try await store.approve(change.id, stage: .preliminary, approver: "bob", key: lab.key("bob"))
        try await lab.run("run-1", Lab.artifact(), cells: Lab.fullGreen)
        let tested = try await store.attachEvidence(change.id)
        let gate = try #require(try store.gate(for: tested))
        #expect(gate.baselines.map { $0.name } == ["db", "mail", "web"])
        #expect(gate.missing.count == 2)
        #expect(gate.missing.allSatisfy { $0.contains("baseline mail (targets)") })
        #expect(gate.grid.filter { $0.status == "missing" }.map { "\($0.baseline).\($0.lane)" } == ["mail.install", "mail.uninstall"])
    }

    @Test func evidenceNotSignedByTheLabOrOnAnOlderImageDoesNotCount() async throws {
        let lab = try await Lab.make()
        defer { lab.remove() }
        let store = lab.store
        let change = try await store.propose(Self.proposal())
        try await lab.run("run-forged", Lab.artifact(), cells: Lab.fullGreen, signedBy: SigningKey())
        try await lab.run("run-old", Lab.artifact(), cells: Lab.fullGreen, image: { SHA256Digest(of: "\($0)-image-0") })
        let gate = try #require(try store.gate(for: change, artifact: Lab.artifact().digest))
        #expect(gate.missing.contains { $0.contains("evidence of run run-forged is not the lab's") })
        #expect(gate.grid.allSatisfy { $0.status == "stale" })
        #expect(!gate.passes)
    }

    @Test func aRebuildVoidsTheReleaseApprovalsOfTheOldDigest() async throws {
        let lab = try await Lab.make()
        defer { lab.remove() }
        let store = lab.store
        let change = try await Self.tested(lab)
        let oldStatement = try store.statement(for: change.id, stage: .release, decision: .approve, approver: "carol", comment: nil)
        try await store.approve(change.id, stage: .release, approver: "alice", key: lab.key("alice"))
        // Rebuilt and tested again: a new digest.
        try await lab.run("run-2", Lab.artifact(build: 2), cells: Lab.fullGreen)
        let rebuilt = try await store.attachEvidence(change.id)
        #expect(rebuilt.artifact == Lab.artifact(build: 2).digest)
        #expect(rebuilt.approvals(.release).isEmpty)
        #expect(rebuilt.approvals.first { $0.stage == .release }?.voided?.contains("rebuilt") == true)
        // An approval signed over the old digest is refused.
        let stale = try lab.key("carol").sign(oldStatement, as: .approval)
        let refusal = await #expect(throws: ChangelabError.self) { try await store.record(stale, for: change.id) }
        #expect(refusal?.why?.contains("rebuilt") == true)
    }

    @Test func aStandardChangeSkipsTheVotesButNotTheGate() async throws {
        let lab = try await Lab.make()
        defer { lab.remove() }
        let store = lab.store
        await #expect(throws: ChangelabError.self) { try await store.propose(Self.proposal(.standard)) }
        let change = try await store.propose(Self.proposal(.standard, package: "tzdata-local"))
        try await lab.run("run-1", Lab.artifact("tzdata-local"), cells: [("web", "install", true)])
        try await store.attachEvidence(change.id)
        let refusal = await #expect(throws: ChangelabError.self) { try await store.releaseStandard(change.id) }
        #expect(refusal?.why?.contains("no green uninstall cell on baseline web") == true)
        try await lab.run("run-2", Lab.artifact("tzdata-local"), cells: Lab.fullGreen)
        try await store.attachEvidence(change.id)
        #expect(try await store.releaseStandard(change.id).approval == .releaseApproved)
    }

    @Test func anEmergencyChangeShipsOnReducedLanesAndClosesAfterTheFullOnes() async throws {
        let lab = try await Lab.make()
        defer { lab.remove() }
        let store = lab.store
        let change = try await store.propose(Self.proposal(.emergency))
        try await lab.run("run-1", Lab.artifact(), cells: [("web", "install", true), ("db", "install", true)])
        try await store.attachEvidence(change.id)
        let released = try await store.approve(change.id, stage: .release, approver: "erin", key: lab.key("erin"))
        #expect(released.approval == .releaseApproved)
        for event in [ChangeEvent.seedingStarted, .activationStarted, .deployed, .reviewed(.successful)] {
            try await store.apply(event, to: change.id)
        }
        await #expect(throws: ChangelabError.self) { try await store.attachEvidence(change.id) }
        await #expect(throws: ChangeRefusal.self) { try await store.apply(.closed, to: change.id) }
        try await lab.run("run-2", Lab.artifact(), cells: Lab.fullGreen)
        let full = try await store.attachEvidence(change.id)
        #expect(full.retrospectiveRuns == ["run-1", "run-2"])
        #expect(try await store.apply(.closed, to: change.id).lifecycle == .closed)
    }

    @Test func anApprovalSignedElsewhereIsImportedAndCountsOnceForItsKey() async throws {
        let lab = try await Lab.make()
        defer { lab.remove() }
        let store = lab.store
        let change = try await store.propose(Self.proposal())
        let statement = try store.statement(for: change.id, stage: .preliminary, decision: .approve, approver: "alice", comment: "ok")
        let file = lab.folder + "/alice.approval.json"
        try AtomicFile.write(try StableJSON.data(try lab.key("alice").sign(statement, as: .approval)), to: file)
        let envelope = try StableJSON.decode(SignedEnvelope.self, from: try #require(FileManager.default.contents(atPath: file)))
        #expect(try await store.record(envelope, for: change.id).approvals.count == 1)
        await #expect(throws: ChangelabError.self) { try await store.record(envelope, for: change.id) }
    }
}

/// An approval altered inside the stored record is caught by the record's own check, so the
/// CMDB refuses to record it and `cmdb verify` names it.
@Suite struct TamperTests {
    @Test func anAlteredStoredApprovalIsRefusedAndReportedByVerify() async throws {
        let lab = try await Lab.make()
        defer { lab.remove() }
        let store = lab.store
        let change = try await store.propose(ChangeStoreTests.proposal())
        var record = try await store.approve(change.id, stage: .preliminary, approver: "alice", key: lab.key("alice"))
        #expect(record.problems().isEmpty)
        var claim = try #require(record.approvals[0].envelope.unverifiedClaim(ApprovalStatement.self))
        claim.comment = "approved by everyone"
        record.approvals[0].envelope.payload = try StableJSON.data(claim).base64EncodedString()
        #expect(record.problems().contains { $0.contains("altered after it was signed") })
        await #expect(throws: ChangelabError.self) { try await lab.writer.put(record, operation: "forge") }
        // Written behind the CMDB's back: verify reports it.
        let path = lab.writer.store.path + "/" + record.reference.path
        try StableJSON.data(record).write(to: URL(fileURLWithPath: path))
        let report = try await lab.writer.store.verify(trustedKeys: lab.folder + "/keys/cmdb-trusted-keys.json")
        #expect(report.problems.contains { $0.message.contains("altered after it was signed") })
    }
}
