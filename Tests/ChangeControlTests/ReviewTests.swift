import CMDB
import ChangeControl
import Foundation
import Model
import Testing

/// The post-deployment review, from what the targets reported to the CMDB.
@Suite struct ReviewTests {
    @Test func theReviewCountsReachedTargetsListsTheChaseListAndFindsLabEscapes() async throws {
        let lab = try await Lab.make()
        defer { lab.remove() }
        let store = lab.store
        let change = try await ChangeStoreTests.tested(lab)
        try await store.approve(change.id, stage: .release, approver: "alice", key: lab.key("alice"))
        try await store.approve(change.id, stage: .release, approver: "bob", key: lab.key("bob"))
        for event in [ChangeEvent.seedingStarted, .seeded, .activationStarted, .deployed] { try await store.apply(event, to: change.id) }
        var installed = Lab.inventory
        installed.packages = [PackageRecord(name: "greeterd", architecture: "amd64", version: "1.1.0")]
        try await lab.writer.record(
            target: TargetRecord(name: "paris-1", attributes: ["site": "paris", "segment": "s1", "baseline": "web@1"]),
            inventory: installed, at: Lab.start)
        try await lab.writer.record(
            target: TargetRecord(name: "paris-2", attributes: ["site": "paris", "segment": "s1", "baseline": "web@1"]),
            inventory: Lab.inventory, at: Lab.start)
        let review = try ChangeReview(
            try store.read(change.id), store: store, lessons: "seed earlier", recommendations: nil, code: nil, at: Lab.start)
        #expect(review.targets.map(\.name) == ["paris-1", "paris-2"])
        #expect(review.reached == 1)
        #expect(review.failureRate == 0.5)
        #expect(review.chaseList.map(\.name) == ["paris-2"])
        #expect(review.chaseList.first?.reason?.contains("greeterd is not installed") == true)
        // The lab passed web; paris-2 runs web and failed: a lab escape.
        #expect(review.labEscapes == ["paris-2"])
        // Half the targets is below the policy's 95% readiness.
        #expect(review.closeCode == .unsuccessful)
        #expect(review.phases.contains { $0.dimension == "delivery" && $0.state == "activating" })
        #expect(review.markdown.contains("| paris-2 | web | greeterd is not installed"))
        #expect(review.html.contains("<td>paris-2</td>"))
        #expect(!review.html.contains("<script"))
        let reviewed = try await store.apply(.reviewed(review.closeCode), to: change.id)
        #expect(reviewed.lifecycle == .reviewed)
        #expect(try await store.apply(.closed, to: change.id).lifecycle == .closed)
    }
}

/// The change keeps its chase list over the delivery, and the review says what became of each entry.
@Suite struct FollowUpTests {
    static let t0 = Date(timeIntervalSince1970: 1_800_000_000)

    @Test func aTargetOnTheChaseListIsResolvedWhenItIsNoLongerOnIt() {
        let first = DeliveryFollowUp.merging(
            nil, targets: 4, activated: 3, failed: 0, bytesSent: 300,
            chase: [(agent: "a-4", target: "s2b-01", reason: "offline", pending: false)], at: Self.t0)
        #expect(first.chase.map(\.target) == ["s2b-01"])
        #expect(first.chase.first?.resolved == nil)
        // Still offline a minute later: the same entry, not a second one.
        let again = DeliveryFollowUp.merging(
            first, targets: 4, activated: 3, failed: 0, bytesSent: 300,
            chase: [(agent: "a-4", target: "s2b-01", reason: "offline", pending: false)], at: Self.t0 + 60)
        #expect(again.chase.count == 1)
        #expect(again.sameAs(first))
        // No chase list given (activation not requested): entries stay open.
        let unknown = DeliveryFollowUp.merging(again, targets: 4, activated: 3, failed: 0, bytesSent: 300, chase: nil, at: Self.t0 + 90)
        #expect(unknown.chase.first?.resolved == nil)
        // It came back and is installing: still open, still "offline" as its reason.
        let installing = DeliveryFollowUp.merging(
            again, targets: 4, activated: 3, failed: 0, bytesSent: 350,
            chase: [(agent: "a-4", target: "s2b-01", reason: "in progress", pending: true),
                    (agent: "a-5", target: "s3-01", reason: "in progress", pending: true)], at: Self.t0 + 100)
        #expect(installing.chase.map(\.reason) == ["offline"])
        #expect(installing.chase.first?.resolved == nil)
        // It came back and installed: off the list, resolved at that report.
        let back = DeliveryFollowUp.merging(
            again, targets: 4, activated: 4, failed: 0, bytesSent: 400, chase: [], at: Self.t0 + 120)
        #expect(back.chase.first?.resolved == Self.t0 + 120)
        #expect(!back.sameAs(again))
        // It fails later: a new entry, the old one stays resolved.
        let failedAgain = DeliveryFollowUp.merging(
            back, targets: 4, activated: 3, failed: 1, bytesSent: 400,
            chase: [(agent: "a-4", target: "s2b-01", reason: "installer exit code 3", pending: false)], at: Self.t0 + 300)
        #expect(failedAgain.chase.map(\.reason) == ["offline", "installer exit code 3"])
        #expect(failedAgain.chase.map { $0.resolved != nil } == [true, false])
    }

    @Test func theReviewListsEveryChaseEntryWithWhatHappenedAndTheBytesAgainstThePlan() async throws {
        let lab = try await Lab.make()
        defer { lab.remove() }
        let store = lab.store
        let change = try await ChangeStoreTests.tested(lab)
        try await store.approve(change.id, stage: .release, approver: "alice", key: lab.key("alice"))
        try await store.approve(change.id, stage: .release, approver: "bob", key: lab.key("bob"))
        for event in [ChangeEvent.seedingStarted, .seeded, .activationStarted] { try await store.apply(event, to: change.id) }
        // Follow-up needs delivery to have started; before, it is refused.
        let offline = DeliveryFollowUp.merging(
            nil, targets: 2, activated: 1, failed: 0, bytesSent: 1000,
            chase: [(agent: "a-2", target: "paris-2", reason: "offline", pending: false)], at: Self.t0)
        try await store.apply(.followedUp(offline), to: change.id)
        try await store.apply(.deployed, to: change.id)
        let back = DeliveryFollowUp.merging(offline, targets: 2, activated: 2, failed: 0, bytesSent: 2000, chase: [], at: Self.t0 + 95)
        let recorded = try await store.apply(.followedUp(back), to: change.id)
        #expect(recorded.followUp?.chase.first?.resolved == Self.t0 + 95)
        #expect(recorded.history.last?.event == "follow-up")
        let review = try ChangeReview(recorded, store: store, lessons: nil, recommendations: nil, code: nil, at: Self.t0 + 200)
        #expect(review.bytesSent == 2000)
        #expect(review.chaseHistory.map(\.target) == ["paris-2"])
        #expect(review.markdown.contains("| paris-2 | offline | "))
        #expect(review.markdown.contains("got the change 95 s later"))
        #expect(review.html.contains("<td>paris-2</td><td>offline</td>"))
    }

    @Test func aFollowUpBeforeDeliveryStartedIsRefused() async throws {
        let lab = try await Lab.make()
        defer { lab.remove() }
        let change = try await ChangeStoreTests.tested(lab)
        let report = DeliveryFollowUp(targets: 1, activated: 0, failed: 0, bytesSent: 0, reportedAt: Self.t0)
        await #expect(throws: ChangeRefusal.self) { try await lab.store.apply(.followedUp(report), to: change.id) }
    }
}
