import CMDB
import Foundation
import Model

/// Fills in a change's preliminary impact assessment from what the CMDB and the lab know.
public enum ImpactAssessor {
    /// The assessment of `package` on the targets `query` selects.
    ///
    /// - Parameters:
    ///   - rate: bytes per second the seeding estimate assumes (the policy's default rate).
    ///   - others: the other changes, for conflicts (only open or postponed ones count).
    public static func assess(
        package: String, query: String, store: CMDBStore, recipes: [BaselineRecipe], rate: Int64,
        others: [ChangeRecord], at date: Date
    ) throws -> ImpactAssessment {
        let scoped = try ScopedTargets(query: query, store: store)
        var impact = ImpactAssessment(query: query, rate: rate, assessedAt: date)
        impact.targetCount = scoped.targets.count
        impact.sites = Set(scoped.targets.compactMap { $0.attributes["site"] }).sorted()
        var baselineCounts: [String: Int] = [:]
        for target in scoped.targets {
            if let name = ScopedTargets.baseline(of: target)?.name { baselineCounts[name, default: 0] += 1 }
        }
        impact.baselines = baselineCounts.sorted { $0.key < $1.key }.map { name, count in
            ImpactAssessment.BaselineUse(name: name, targets: count, approved: recipes.first { $0.name == name }?.approved)
        }
        // The newest artifact of the package, and its newest run's measured deltas.
        let artifacts = store.ids(of: .artifact).compactMap { try? store.read(ArtifactRecord.self, $0) }
            .filter { $0.package == package }.sorted { $0.recordedAt < $1.recordedAt }
        if let artifact = artifacts.last {
            impact.artifact = artifact.digest
            impact.artifactSize = artifact.size.map { Int64($0) }
            let runs = store.ids(of: .run).compactMap { try? store.read(RunRecord.self, $0) }
                .filter { $0.artifact == artifact.digest }.sorted { $0.startedAt < $1.startedAt }
            if let run = runs.last, let cells = try? store.cells(ofRun: run.id) {
                let installs = cells.filter { $0.name.hasSuffix(".install") }
                impact.deltas = (installs.isEmpty ? cells : installs).map {
                    ImpactAssessment.MeasuredDelta(cell: $0.recordID, baseline: $0.baseline.name, delta: $0.installDelta)
                }
            }
        }
        var bySegment: [String: Int] = [:]
        for target in scoped.targets { bySegment[target.attributes["segment"] ?? "(no segment)", default: 0] += 1 }
        let size = impact.artifactSize
        impact.segments = bySegment.sorted { $0.key < $1.key }.map { name, count in
            ImpactAssessment.Segment(
                name: name, targets: count, unicastBytes: size.flatMap { multiply($0, count) }, seededBytes: size)
        }
        if let size {
            impact.unicastBytes = multiply(size, scoped.targets.count)
            impact.seededBytes = multiply(size, bySegment.count)
            if let seeded = impact.seededBytes, rate > 0 { impact.seedingSeconds = Double(seeded) / Double(rate) }
        }
        impact.conflicts = conflicts(of: impact.touchedItems, among: others)
        return impact
    }

    /// Other open changes whose measured deltas touch the same files, units, ports, users or packages.
    public static func conflicts(of items: Set<String>, among others: [ChangeRecord]) -> [ImpactAssessment.Conflict] {
        let relevant = items.filter { item in
            ["files:", "units:", "ports:", "users:", "packages:", "groups:"].contains { item.hasPrefix($0) }
        }
        return others.filter { $0.lifecycle == .open || $0.lifecycle == .postponed }.compactMap { other in
            let shared = relevant.intersection(other.impact?.touchedItems ?? [])
            return shared.isEmpty ? nil : ImpactAssessment.Conflict(change: other.id, items: shared.sorted())
        }.sorted { $0.change < $1.change }
    }

    static func multiply(_ size: Int64, _ count: Int) -> Int64? {
        let (product, overflow) = size.multipliedReportingOverflow(by: Int64(count))
        return overflow ? nil : product
    }
}
