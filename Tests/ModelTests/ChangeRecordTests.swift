import Foundation
import Model
import Testing

/// The change record's state machine, state by state: every legal step and the refusals.
@Suite struct ChangeRecordTests {
    static let start = Date(timeIntervalSince1970: 1_790_000_000)
    static let digest = SHA256Digest(of: "greeterd_1.1.0_amd64.deb")
    static let rebuilt = SHA256Digest(of: "greeterd_1.1.0_amd64.deb rebuilt")

    static func change(_ type: ChangeType = .normal) -> ChangeRecord {
        ChangeRecord(
            id: "CHG-0001", title: "greeterd 1.1.0", need: "greet in French", type: type, package: "greeterd",
            requester: "carol", scope: ChangeScope(targets: "all"), createdAt: start)
    }

    static func vote(_ stage: ChangeStage, by signer: String, _ decision: ApprovalDecision = .approve,
        artifact: SHA256Digest? = nil) -> RecordedApproval
    {
        RecordedApproval(
            stage: stage, decision: decision, signer: signer, key: String(repeating: String(signer.prefix(1)), count: 64),
            artifact: artifact, envelope: SignedEnvelope(payloadType: "x", payload: "", signatures: []),
            recordedAt: start, recordedBy: signer)
    }

    /// Applies events in order, as `actor` one minute apart.
    static func walk(_ record: ChangeRecord, _ events: [ChangeEvent]) throws -> ChangeRecord {
        var record = record
        for (index, event) in events.enumerated() {
            record = try record.applying(event, by: "ops", at: start.addingTimeInterval(Double(index + 1) * 60))
        }
        return record
    }

    static let tested = ChangeEvent.tested(artifact: digest, version: "1.1.0", runs: ["run-1"])

    @Test func aNewChangeIsProposedOpenAndUndeliveredWithItsProposalInTheHistory() {
        let record = Self.change()
        #expect(record.approval == .proposed)
        #expect(record.delivery == .notStarted)
        #expect(record.lifecycle == .open)
        #expect(record.history.map(\.event) == ["propose"])
        #expect(record.history.first?.actor == "carol")
        #expect(record.problems().isEmpty)
    }

    @Test func aNormalChangeWalksBothDimensionsToClosed() throws {
        let record = try Self.walk(
            Self.change(),
            [
                .approvalRecorded(Self.vote(.preliminary, by: "alice")),
                .approvalRecorded(Self.vote(.preliminary, by: "bob")), .preliminaryApproved, Self.tested,
                // Seeding starts before the release vote: the two dimensions run side by side.
                .seedingStarted, .seeded,
                .approvalRecorded(Self.vote(.release, by: "alice", artifact: Self.digest)),
                .approvalRecorded(Self.vote(.release, by: "bob", artifact: Self.digest)), .releaseApproved,
                .activationStarted, .deployed, .reviewed(.successful), .closed,
            ])
        #expect(record.approval == .releaseApproved)
        #expect(record.delivery == .deployed)
        #expect(record.lifecycle == .closed)
        #expect(record.closeCode == .successful)
        #expect(record.artifact == Self.digest)
        #expect(record.evidenceRuns == ["run-1"])
        let steps = record.history.filter { $0.dimension != .record }.map { "\($0.dimension.rawValue):\($0.to)" }
        #expect(
            steps == [
                "approval:proposed", "approval:preliminarily-approved", "approval:built-and-tested",
                "delivery:seeding", "delivery:seeded", "approval:release-approved", "delivery:activating",
                "delivery:deployed", "lifecycle:reviewed", "lifecycle:closed",
            ])
        #expect(record.history.last?.actor == "ops")
    }

    @Test func standardChangesSkipTheVotesButNotTheTest() throws {
        let standard = Self.change(.standard)
        #expect(throws: ChangeRefusal.self) { try standard.applying(.preliminaryApproved, by: "ops", at: Self.start) }
        #expect(throws: ChangeRefusal.self) {
            try standard.applying(.releaseApproved, by: "ops", at: Self.start)
        }
        let tested = try Self.walk(standard, [Self.tested])
        #expect(throws: ChangeRefusal.self) {
            try tested.applying(.approvalRecorded(Self.vote(.release, by: "alice", artifact: Self.digest)), by: "ops", at: Self.start)
        }
        #expect(try tested.applying(.releaseApproved, by: "ops", at: Self.start).approval == .releaseApproved)
    }

    @Test func emergencyChangesHaveNoPreliminaryStageAndCloseOnlyAfterTheFullLanes() throws {
        let emergency = Self.change(.emergency)
        #expect(throws: ChangeRefusal.self) {
            try emergency.applying(.approvalRecorded(Self.vote(.preliminary, by: "alice")), by: "ops", at: Self.start)
        }
        let reviewed = try Self.walk(
            emergency,
            [
                Self.tested, .approvalRecorded(Self.vote(.release, by: "erin", artifact: Self.digest)), .releaseApproved,
                .seedingStarted, .activationStarted, .deployed, .reviewed(.successfulWithIssues),
            ])
        let refusal = #expect(throws: ChangeRefusal.self) { try reviewed.applying(.closed, by: "ops", at: Self.start) }
        #expect(refusal?.reason.contains("full normal lanes") == true)
        let closed = try Self.walk(reviewed, [.fullEvidence(runs: ["run-2"]), .closed])
        #expect(closed.lifecycle == .closed)
        #expect(closed.retrospectiveRuns == ["run-2"])
    }

    /// Each illegal step from a given point, and a word its refusal must contain.
    static let refusals: [(String, [ChangeEvent], ChangeEvent, String)] = [
        ("skip preliminary", [], tested, "after its preliminary approval"),
        ("release before test", [.preliminaryApproved], .releaseApproved, "built-and-tested"),
        ("release vote while proposed", [], .approvalRecorded(vote(.release, by: "alice", artifact: digest)), "built-and-tested"),
        ("preliminary vote twice", [], .preliminaryApproved, "it is preliminarily-approved"),
        ("seed before test", [.preliminaryApproved], .seedingStarted, "built and tested"),
        ("activate before release", [.preliminaryApproved, tested, .seedingStarted], .activationStarted, "release approval"),
        ("activate before seeding", [.preliminaryApproved, tested, .releaseApproved], .activationStarted, "delivery is not-started"),
        ("deployed before activation", [.preliminaryApproved, tested, .seedingStarted], .deployed, "follows activating"),
        ("review before delivery", [.preliminaryApproved, tested], .reviewed(.successful), "deployed or rolled back"),
        ("close before review", [.preliminaryApproved], .closed, "after its review"),
        ("approve a closed change",
            [.preliminaryApproved, tested, .releaseApproved, .seedingStarted, .activationStarted, .deployed,
                .reviewed(.successful), .closed],
            .approvalRecorded(vote(.release, by: "alice", artifact: digest)), "closed"),
        ("approve a cancelled change", [.cancelled], .approvalRecorded(vote(.preliminary, by: "alice")), "cancelled"),
        ("approve a postponed change", [.postponed], .preliminaryApproved, "postponed"),
        ("resume an open change", [], .resumed, "only a postponed"),
        ("vote on a voided digest", [.preliminaryApproved, tested],
            .approvalRecorded(vote(.release, by: "alice", artifact: rebuilt)), "rebuild voids"),
        ("rebuild during activation",
            [.preliminaryApproved, tested, .releaseApproved, .seedingStarted, .activationStarted],
            .tested(artifact: rebuilt, version: "1.1.0", runs: ["run-9"]), "cannot replace"),
        ("cancel during activation",
            [.preliminaryApproved, tested, .releaseApproved, .seedingStarted, .activationStarted], .cancelled, "delivery is activating"),
        ("roll back before activation", [.preliminaryApproved, tested, .seedingStarted], .rolledBack, "follows activating"),
        ("reject after release", [.preliminaryApproved, tested, .releaseApproved], .rejected(.release), "roll back or cancel"),
        ("empty comment", [], .commented("  "), "empty"),
        ("tested without runs", [.preliminaryApproved], .tested(artifact: digest, version: "1", runs: []), "no matrix run"),
    ]

    @Test(arguments: ChangeRecordTests.refusals.indices)
    func illegalStepsAreRefusedWithAReasonAndChangeNothing(_ index: Int) throws {
        let (name, before, event, words) = Self.refusals[index]
        var record = try Self.walk(Self.change(), before)
        if name == "preliminary vote twice" { record = try Self.walk(record, [.preliminaryApproved]) }
        let snapshot = record
        let refusal = #expect(throws: ChangeRefusal.self, "\(name)") {
            record = try record.applying(event, by: "ops", at: Self.start)
        }
        #expect(refusal?.reason.contains(words) == true, "\(name): \(refusal?.reason ?? "")")
        #expect(refusal?.description.contains("CHG-0001") == true)
        #expect(record == snapshot)
    }

    @Test func oneKeyVotesOncePerStage() throws {
        let once = try Self.walk(Self.change(), [.approvalRecorded(Self.vote(.preliminary, by: "alice"))])
        let refusal = #expect(throws: ChangeRefusal.self) {
            try once.applying(.approvalRecorded(Self.vote(.preliminary, by: "alice")), by: "ops", at: Self.start)
        }
        #expect(refusal?.reason.contains("already signed") == true)
    }

    @Test func oneRejectionRejectsTheChange() throws {
        let rejected = try Self.walk(
            Self.change(), [.approvalRecorded(Self.vote(.preliminary, by: "alice")),
                .approvalRecorded(Self.vote(.preliminary, by: "bob", .reject))])
        #expect(rejected.lifecycle == .rejected)
        #expect(throws: ChangeRefusal.self) { try rejected.applying(.preliminaryApproved, by: "ops", at: Self.start) }
    }

    @Test func aRebuildVoidsTheReleaseApprovalsOfTheOldDigestAndFallsBackToBuiltAndTested() throws {
        let approved = try Self.walk(
            Self.change(),
            [
                .preliminaryApproved, Self.tested,
                .approvalRecorded(Self.vote(.release, by: "alice", artifact: Self.digest)), .releaseApproved,
            ])
        let rebuilt = try approved.applying(
            .tested(artifact: Self.rebuilt, version: "1.1.0", runs: ["run-2"]), by: "lab", at: Self.start)
        #expect(rebuilt.approval == .builtAndTested)
        #expect(rebuilt.artifact == Self.rebuilt)
        #expect(rebuilt.evidenceRuns == ["run-2"])
        #expect(rebuilt.approvals(.release).isEmpty)
        #expect(rebuilt.approvals.first { $0.stage == .release }?.voided?.contains("rebuilt") == true)
        // Alice may sign again, over the new digest.
        let again = try rebuilt.applying(
            .approvalRecorded(Self.vote(.release, by: "alice", artifact: Self.rebuilt)), by: "alice", at: Self.start)
        #expect(again.approvals(.release).count == 1)
    }

    @Test func theSameArtifactTestedAgainAddsEvidenceWithoutMoving() throws {
        let tested = try Self.walk(Self.change(), [.preliminaryApproved, Self.tested])
        let more = try tested.applying(.tested(artifact: Self.digest, version: "1.1.0", runs: ["run-3"]), by: "lab", at: Self.start)
        #expect(more.approval == .builtAndTested)
        #expect(more.evidenceRuns == ["run-1", "run-3"])
    }

    @Test func postponeAndResumeKeepTheApprovalState() throws {
        let postponed = try Self.walk(Self.change(), [.preliminaryApproved, .postponed])
        #expect(postponed.lifecycle == .postponed)
        let resumed = try postponed.applying(.resumed, by: "ops", at: Self.start)
        #expect(resumed.lifecycle == .open)
        #expect(resumed.approval == .preliminarilyApproved)
    }

    @Test func theScopeIsFixedOnceReleaseApproversSignedIt() throws {
        let tested = try Self.walk(Self.change(), [.preliminaryApproved, Self.tested])
        let narrowed = try tested.applying(.scoped(ChangeScope(targets: "site = paris")), by: "ops", at: Self.start)
        #expect(narrowed.scope.targets == "site = paris")
        let voted = try Self.walk(tested, [.approvalRecorded(Self.vote(.release, by: "alice", artifact: Self.digest))])
        #expect(throws: ChangeRefusal.self) {
            try voted.applying(.scoped(ChangeScope(targets: "all")), by: "ops", at: Self.start)
        }
    }

    @Test func editsMergeSectionsAndCommentsCarryTheirAuthor() throws {
        let edited = try Self.walk(Self.change(), [.edited(ChangePlan(risk: "low")), .edited(ChangePlan(backout: "rollback"))])
        #expect(edited.plan == ChangePlan(risk: "low", backout: "rollback"))
        let commented = try edited.applying(.commented("looks fine"), by: "alice", at: Self.start)
        #expect(commented.comments == [ChangeComment(actor: "alice", at: Self.start, text: "looks fine")])
    }

    @Test(arguments: [("CHG-0001", 1), ("CHG-0042", 42), ("CHG-12345", 12345)])
    func idsAreSequentialNumbers(_ id: String, _ number: Int) {
        #expect(ChangeRecord.id(number: number) == id)
        #expect(ChangeRecord.number(of: id) == number)
    }

    @Test(arguments: ["CHG-1", "CHG-0000", "chg-0001", "CHG-00a1", "CHG-../0001", "", "CHG-٠٠٠١"])
    func otherIdsAreNotChangeIds(_ id: String) {
        #expect(ChangeRecord.number(of: id) == nil)
    }

    @Test func theStoredRecordRoundTripsAndRefersToItsArtifactAndRuns() throws {
        let record = try Self.walk(Self.change(), [.preliminaryApproved, Self.tested])
        let decoded = try StableJSON.decode(ChangeRecord.self, from: try StableJSON.data(record))
        #expect(decoded == record)
        #expect(record.references == [CMDBReference(.artifact, Self.digest.hex), CMDBReference(.run, "run-1")])
    }
}
