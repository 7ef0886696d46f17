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
