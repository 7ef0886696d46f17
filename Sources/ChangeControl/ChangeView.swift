import CMDB
import Foundation
import Model

/// What `change show` prints: both dimensions, what blocks the next step, the evidence grid,
/// the approvals with their validity, and the timeline.
public struct ChangeView: Encodable, Sendable {
    public struct ApprovalView: Encodable, Sendable {
        public var stage: ChangeStage
        public var decision: ApprovalDecision
        public var signer: String
        public var key: String
        public var artifact: String?
        public var comment: String?
        public var recordedAt: Date
        /// `counts`, or why it does not.
        public var validity: String
    }

    /// A target whose recorded baseline version is not the one the lab tested.
    public struct VersionDrift: Encodable, Sendable {
        public var target: String
        public var recorded: String
        public var tested: [Int]
    }

    public var change: ChangeRecord
    public var next: String
    public var blocking: [String]
    public var grid: [ReleaseGate.Cell]
    public var lanes: [String]
    public var approvals: [ApprovalView]
    public var conflicts: [ImpactAssessment.Conflict]
    public var versionDrift: [VersionDrift]

    public init(_ change: ChangeRecord, store: ChangeStore) throws {
        self.change = change
        next = change.nextStep
        let policy = store.policy
        let gate = try store.gate(for: change)
        grid = gate?.grid ?? []
        lanes = gate?.lanes ?? policy.rule(for: change.type)?.lanes ?? []
        var blocking: [String] = []
        if change.lifecycle == .open {
            let rule = policy.rule(for: change.type)
            func votes(_ stage: ChangeStage) -> String {
                let needed = (stage == .preliminary ? rule?.preliminary : rule?.release)?.approvals ?? 0
                let have = ChangeStore.distinctKeys(change.approvals(stage))
                return "\(stage.rawValue) approval: \(have) of \(needed) signature(s)"
            }
            switch change.approval {
            case .proposed where change.hasPreliminaryStage: blocking.append(votes(.preliminary))
            case .proposed, .preliminarilyApproved: blocking.append("no tested artifact recorded (changelab change evidence \(change.id))")
            case .builtAndTested:
                blocking += gate?.missing ?? []
                if change.type != .standard { blocking.append(votes(.release)) }
            case .releaseApproved:
                if change.delivery == .notStarted || change.delivery == .seeding {
                    blocking.append("delivery is \(change.delivery.rawValue)")
                }
            }
        }
        self.blocking = blocking
        approvals = change.approvals.map { vote in
            var validity = "counts"
            let trusted = (try? vote.envelope.signers(as: .approval, trusting: policy.approverKeys)) ?? []
            if let voided = vote.voided {
                validity = "void: \(voided)"
            } else if !trusted.contains(where: { $0.hex == vote.key }) {
                validity = "void: \(vote.signer)'s key is not on the current trust list"
            } else if vote.stage == .release, let gate, vote.envelope.unverifiedClaim(ApprovalStatement.self)
                .map({ Set($0.evidence).isSubset(of: Set(gate.evidenceDigests)) }) == false
            {
                validity = "void: it names evidence the CMDB no longer holds for this artifact"
            }
            let statement = vote.envelope.unverifiedClaim(ApprovalStatement.self)
            return ApprovalView(
                stage: vote.stage, decision: vote.decision, signer: vote.signer, key: String(vote.key.prefix(16)),
                artifact: vote.artifact?.description, comment: statement?.comment, recordedAt: vote.recordedAt,
                validity: validity)
        }
        conflicts = ImpactAssessor.conflicts(
            of: change.impact?.touchedItems ?? [], among: ChangeStore.all(in: store.store).filter { $0.id != change.id })
        // Evidence is matched on the baseline name; show where the version differs.
        var tested: [String: Set<Int>] = [:]
        for entry in gate?.evidence ?? [] {
            for cell in entry.envelope.unverifiedClaim(EvidenceStatement.self)?.cells ?? [] {
                tested[cell.baseline.name, default: []].insert(cell.baseline.version)
            }
        }
        let targets = (try? ScopedTargets(query: change.scope.targets, store: store.store))?.targets ?? []
        versionDrift = targets.compactMap { target in
            guard let baseline = ScopedTargets.baseline(of: target), let version = baseline.version,
                let versions = tested[baseline.name], !versions.contains(version)
            else { return nil }
            return VersionDrift(target: target.name, recorded: "\(baseline.name)@\(version)", tested: versions.sorted())
        }
    }

    // MARK: Text

    /// The view as people read it.
    public var text: String {
        let date = ISO8601DateFormatter()
        var out = "\(change.id)  \(change.title)\n"
        out += "  \(change.type.rawValue) change of \(change.package)\(change.version.map { " \($0)" } ?? ""), proposed by \(change.requester)\n"
        out += "  need: \(change.need)\n"
        if let benefit = change.benefit { out += "  benefit: \(benefit)\n" }
        out += "  scope: targets '\(change.scope.targets)', rings \(change.scope.rings)\n"
        if let artifact = change.artifact { out += "  artifact: \(artifact)\n" }
        out += "\n  approval   \(change.approval.rawValue)\n  delivery   \(change.delivery.rawValue)\n"
        out += "  lifecycle  \(change.lifecycle.rawValue)\(change.closeCode.map { " (\($0.rawValue))" } ?? "")\n"
        out += "  next       \(next)\n"
        if !blocking.isEmpty { out += "  blocked by:\n" + blocking.map { "    - \($0)\n" }.joined() }
        if let impact = change.impact { out += "\nImpact (assessed \(date.string(from: impact.assessedAt)))\n" + Self.impact(impact) }
        if !conflicts.isEmpty {
            out += "  conflicts now:\n" + conflicts.map { "    \($0.change): \($0.items.joined(separator: ", "))\n" }.joined()
        }
        if !grid.isEmpty {
            out += "\nEvidence for \(change.artifact?.short ?? "?")… (baseline × lane)\n"
            let baselines = Array(Set(grid.map(\.baseline))).sorted()
            var rows = [["BASELINE"] + lanes.map { $0.uppercased() }]
            for baseline in baselines {
                rows.append([baseline] + lanes.map { lane -> String in
                    guard let cell = grid.first(where: { $0.baseline == baseline && $0.lane == lane }) else { return "-" }
                    return cell.status + (cell.run.map { " (\($0))" } ?? "")
                })
            }
            out += Self.table(rows, indent: "  ")
        }
        if !versionDrift.isEmpty {
            out += "  targets on another baseline version than tested:\n"
            out += versionDrift.map { "    \($0.target): \($0.recorded), tested \($0.tested.map(String.init).joined(separator: ", "))\n" }.joined()
        }
        if !approvals.isEmpty {
            out += "\nApprovals\n"
            var rows = [["STAGE", "DECISION", "SIGNER", "KEY", "RECORDED", "VALIDITY"]]
            for vote in approvals {
                rows.append([
                    vote.stage.rawValue, vote.decision.rawValue, vote.signer, vote.key, date.string(from: vote.recordedAt),
                    vote.validity + (vote.comment.map { " — \($0)" } ?? ""),
                ])
            }
            out += Self.table(rows, indent: "  ")
        }
        let plan = [
            ("risk", change.plan.risk), ("back-out", change.plan.backout), ("staffing", change.plan.staffing),
            ("training", change.plan.training), ("communication", change.plan.communication),
        ].compactMap { name, text in text.map { "  \(name): \($0)\n" } }
        if !plan.isEmpty { out += "\nPlan\n" + plan.joined() }
        out += "\nTimeline\n"
        var rows: [[String]] = []
        for step in change.history {
            let move = step.from == step.to || step.from.isEmpty ? step.to : "\(step.from) → \(step.to)"
            rows.append([date.string(from: step.at), step.actor, step.event, "\(step.dimension.rawValue): \(move)", step.reason ?? ""])
        }
        out += Self.table(rows, indent: "  ")
        if !change.comments.isEmpty {
            out += "\nComments\n" + change.comments.map { "  \(date.string(from: $0.at)) \($0.actor): \($0.text)\n" }.joined()
        }
        return out
    }

    /// The impact assessment as text.
    public static func impact(_ impact: ImpactAssessment) -> String {
        var out = "  targets: \(impact.targetCount) (query '\(impact.query)')"
        if !impact.sites.isEmpty { out += ", sites \(impact.sites.joined(separator: ", "))" }
        out += "\n"
        for baseline in impact.baselines {
            let status = baseline.approved.map { $0 ? "approved" : "DRAFT, not approved" } ?? "no such baseline in baselines/"
            out += "  baseline \(baseline.name): \(baseline.targets) target(s), \(status)\n"
        }
        if let size = impact.artifactSize {
            out += "  artifact \(impact.artifact?.short ?? "?")…: \(bytes(size))\n"
            var rows = [["SEGMENT", "TARGETS", "UNICAST", "ONE COPY PER SEGMENT"]]
            for segment in impact.segments {
                rows.append([segment.name, String(segment.targets), segment.unicastBytes.map(bytes) ?? "?", segment.seededBytes.map(bytes) ?? "?"])
            }
            rows.append(["total", String(impact.targetCount), impact.unicastBytes.map(bytes) ?? "?", impact.seededBytes.map(bytes) ?? "?"])
            out += table(rows, indent: "  ")
            if let seconds = impact.seedingSeconds {
                out += "  seeding estimate: \(String(format: "%.1f", seconds)) s at \(bytes(impact.rate))/s (one copy per segment)\n"
            }
        } else {
            out += "  network cost: not known until the package is built\n"
        }
        if impact.deltas.isEmpty {
            out += "  configuration deltas: not measured yet (no matrix run)\n"
        } else {
            for measured in impact.deltas {
                let lines = measured.delta.isEmpty ? "no changes" : measured.delta.entries.map { "\($0.category.rawValue):\($0.entry.key)" }.joined(separator: ", ")
                out += "  delta on \(measured.baseline) (\(measured.cell)): \(lines)\n"
            }
        }
        out += impact.conflicts.isEmpty
            ? "  conflicts: none\n"
            : impact.conflicts.map { "  conflict with \($0.change): \($0.items.joined(separator: ", "))\n" }.joined()
        return out
    }

    static func bytes(_ count: Int64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var value = Double(count)
        var unit = 0
        while value >= 1024 && unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        return unit == 0 ? "\(count) B" : "\(String(format: "%.1f", value)) \(units[unit])"
    }

    static func table(_ rows: [[String]], indent: String) -> String {
        guard let first = rows.first else { return "" }
        var widths = [Int](repeating: 0, count: first.count)
        for row in rows { for (index, cell) in row.enumerated() where index < widths.count { widths[index] = max(widths[index], cell.count) } }
        return rows.map { row in
            indent + row.enumerated().map { index, cell in
                index == row.count - 1 ? cell : cell.padding(toLength: widths[index], withPad: " ", startingAt: 0)
            }.joined(separator: "  ")
        }.joined(separator: "\n") + "\n"
    }
}
