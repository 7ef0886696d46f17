import ChangeControl
import Foundation
import Model
import Testing

/// DORA measures over recorded histories, against figures worked out by hand.
@Suite struct MetricsTests {
    static let t0 = Date(timeIntervalSince1970: 1_790_000_000)
    static let day = 86_400.0
    static let hour = 3_600.0

    /// A normal change walked to deployed at `deployed`, then rolled back at `rollback` or reviewed.
    static func change(_ number: Int, package: String = "greeterd", deployed: Double, rollback: Double? = nil) throws
        -> ChangeRecord
    {
        var record = ChangeRecord(
            id: ChangeRecord.id(number: number), title: "t", need: "n", type: .normal, package: package,
            requester: "carol", scope: ChangeScope(targets: "all"), createdAt: t0)
        let at = t0.addingTimeInterval(deployed)
        let before = at.addingTimeInterval(-60)
        for event in [
            ChangeEvent.preliminaryApproved, .tested(artifact: SHA256Digest(of: "\(number)"), version: "1", runs: ["run-\(number)"]),
            .releaseApproved, .seedingStarted, .activationStarted,
        ] {
            record = try record.applying(event, by: "ops", at: before)
        }
        record = try record.applying(.deployed, by: "ops", at: at)
        if let rollback {
            record = try record.applying(.rolledBack, by: "ops", at: t0.addingTimeInterval(rollback))
        } else {
            record = try record.applying(.reviewed(.successful), by: "ops", at: at.addingTimeInterval(hour))
        }
        return record
    }

    @Test func theFourMeasuresMatchHandComputedFigures() throws {
        let a = try Self.change(1, deployed: 2 * Self.day)
        let b = try Self.change(2, deployed: 4 * Self.day, rollback: 4 * Self.day + Self.hour)
        let c = try Self.change(3, deployed: 5 * Self.day)
        let other = try Self.change(4, package: "session-store", deployed: 20 * Self.day)
        let firstRuns: [String: Double] = [a.id: 0, b.id: 3 * Self.day, c.id: 4 * Self.day + 2 * Self.hour, other.id: 19 * Self.day]
        let metrics = ChangeMetrics(
            changes: [a, b, c, other], since: Self.t0, until: Self.t0.addingTimeInterval(10 * Self.day)
        ) { change in firstRuns[change.id].map { Self.t0.addingTimeInterval($0) } }
        // Three deployments in ten days; the fourth is outside the window.
        #expect(metrics.deployments == 3)
        #expect(metrics.deploymentsPerDay == 0.3)
        // Lead times 2 d, 1 d and 22 h: the median is 1 d.
        #expect(metrics.leadTimes == [a.id: 2 * Self.day, b.id: Self.day, c.id: 22 * Self.hour])
        #expect(metrics.medianLeadTime == Self.day)
        // One of three rolled back.
        #expect(metrics.failures == [b.id])
        #expect(metrics.changeFailureRate == 1.0 / 3.0)
        // Rolled back at 4 d 1 h, the next greeterd change deployed at 5 d: 23 h.
        #expect(metrics.restoreTimes == [b.id: 23 * Self.hour])
        #expect(metrics.medianTimeToRestore == 23 * Self.hour)
        #expect(metrics.text.contains("change failure rate   33% (CHG-0002)"))
    }

    @Test func noDeploymentsGiveNoRatesRatherThanADivisionByZero() {
        let metrics = ChangeMetrics(changes: [], since: nil, until: Self.t0) { _ in nil }
        #expect(metrics.deployments == 0)
        #expect(metrics.changeFailureRate == nil)
        #expect(metrics.medianLeadTime == nil)
        #expect(metrics.text.contains("n/a"))
    }
}
