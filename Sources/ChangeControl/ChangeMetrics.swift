import CMDB
import Foundation
import Model

/// The four DORA measures, computed from the change records' histories.
///
/// - deployment frequency: changes that reached `deployed` in the window, per day;
/// - lead time for changes: from the first matrix run of the change's artifact to `deployed`;
/// - change failure rate: of the changes deployed in the window, those rolled back or closed
///   unsuccessful;
/// - time to restore: from a failure (the rollback, or the review that judged it
///   unsuccessful) to the next change of the same package reaching `deployed`.
public struct ChangeMetrics: Codable, Sendable, Equatable {
    public var since: Date?
    public var until: Date
    public var deployments: Int
    public var days: Double
    public var deploymentsPerDay: Double?
    /// Seconds, per deployed change with a known first run.
    public var leadTimes: [String: Double]
    public var medianLeadTime: Double?
    public var failures: [String]
    public var changeFailureRate: Double?
    /// Seconds, per failed change that a later deployment restored.
    public var restoreTimes: [String: Double]
    public var medianTimeToRestore: Double?

    /// - Parameters:
    ///   - firstRun: when the first matrix run of a change's artifact started (nil: unknown).
    public init(
        changes: [ChangeRecord], since: Date?, until: Date, firstRun: (ChangeRecord) -> Date?
    ) {
        self.since = since
        self.until = until
        func deployedAt(_ change: ChangeRecord) -> Date? {
            change.history.first { $0.dimension == .delivery && $0.to == DeliveryState.deployed.rawValue }?.at
        }
        func failedAt(_ change: ChangeRecord) -> Date? {
            if let rollback = change.history.first(where: { $0.dimension == .delivery && $0.to == DeliveryState.rolledBack.rawValue }) {
                return rollback.at
            }
            guard change.closeCode == .unsuccessful else { return nil }
            return change.history.first { $0.dimension == .lifecycle && $0.to == ChangeLifecycle.reviewed.rawValue }?.at
        }
        func inWindow(_ date: Date) -> Bool { (since.map { date >= $0 } ?? true) && date <= until }
        let deployed = changes.compactMap { change in deployedAt(change).map { (change, $0) } }.filter { inWindow($0.1) }
        deployments = deployed.count
        let start = since ?? deployed.map { $0.1 }.min() ?? until
        days = max(until.timeIntervalSince(start) / 86_400, 0)
        deploymentsPerDay = days > 0 ? Double(deployments) / days : nil
        var lead: [String: Double] = [:]
        for (change, at) in deployed {
            if let first = firstRun(change), first <= at { lead[change.id] = at.timeIntervalSince(first) }
        }
        leadTimes = lead
        medianLeadTime = Self.median(Array(lead.values))
        failures = deployed.filter { failedAt($0.0) != nil }.map { $0.0.id }.sorted()
        changeFailureRate = deployed.isEmpty ? nil : Double(failures.count) / Double(deployed.count)
        var restore: [String: Double] = [:]
        for change in changes {
            guard let failed = failedAt(change), inWindow(failed) else { continue }
            let next = changes.filter { $0.package == change.package && $0.id != change.id }
                .compactMap { other in deployedAt(other).flatMap { $0 > failed && failedAt(other) == nil ? $0 : nil } }.min()
            if let next { restore[change.id] = next.timeIntervalSince(failed) }
        }
        restoreTimes = restore
        medianTimeToRestore = Self.median(Array(restore.values))
    }

    /// The changes of `store`, with first runs read from its run records.
    public static func of(_ store: CMDBStore, since: Date?, until: Date) -> ChangeMetrics {
        let changes = ChangeStore.all(in: store)
        return ChangeMetrics(changes: changes, since: since, until: until) { change in
            change.evidenceRuns.compactMap { try? store.read(RunRecord.self, $0).startedAt }.min()
        }
    }

    static func median(_ values: [Double]) -> Double? {
        let sorted = values.sorted()
        guard !sorted.isEmpty else { return nil }
        let middle = sorted.count / 2
        return sorted.count % 2 == 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
    }

    public var text: String {
        func duration(_ seconds: Double?) -> String {
            guard let seconds else { return "n/a" }
            if seconds < 3600 { return String(format: "%.0f min", seconds / 60) }
            if seconds < 172_800 { return String(format: "%.1f h", seconds / 3600) }
            return String(format: "%.1f d", seconds / 86_400)
        }
        var out = "deployment frequency  \(deployments) deployment(s)"
        out += deploymentsPerDay.map { String(format: " in %.1f day(s): %.2f per day\n", days, $0) } ?? "\n"
        out += "lead time for changes \(duration(medianLeadTime)) (median of \(leadTimes.count))\n"
        out += "change failure rate   " + (changeFailureRate.map { String(format: "%.0f%%", $0 * 100) } ?? "n/a")
        out += failures.isEmpty ? "\n" : " (\(failures.joined(separator: ", ")))\n"
        out += "time to restore       \(duration(medianTimeToRestore)) (median of \(restoreTimes.count))\n"
        return out
    }
}
