import Foundation
import Model

/// The operators' console (`GET /v1/admin/console`, viewer role): every change the core knows
/// with where its delivery stands and what blocks its next step, the lab's evidence grid behind
/// its release approval, the approvals, seeding and activation per segment, the chase list,
/// and the agents with their last check-in.
///
/// Blockers are not judged here: they are the list ``CoreChangeGate/activationBlockers`` gives,
/// the one the core refuses an activation with. Evidence counts only when it verifies under the
/// trust root's lab keys (``ReleaseCheck/trustedEvidence()``); anything else is listed as
/// unverified, without its claimed cells.
public struct ConsoleReport: Codable, Sendable, Equatable {
    public var generatedAt: Date
    /// The change-control trust root the core checks approvals under (nil: it has none).
    public var trustRoot: SHA256Digest?
    /// Newest first, at most ``ConsoleLimits/changes``.
    public var changes: [ConsoleChange]
    public var changesTotal: Int
    /// By segment and name, at most ``ConsoleLimits/agents``.
    public var agents: [ConsoleAgent]
    public var agentsTotal: Int
}

/// How far a change's delivery has gone (the approval dimension is ``ConsoleChange/releaseApproved``).
public enum DeliveryPhase: String, Codable, Sendable, CaseIterable {
    case seeding, seeded, activating, halted, deployed
    case rollingBack = "rolling back"
    case rolledBack = "rolled back"

    /// The phase a status report shows: the order the core was given, and how far targets got.
    public init(_ report: StatusReport) {
        let total = report.total
        if report.rollbackRequested {
            self = total.rolledBack == total.targets ? .rolledBack : .rollingBack
        } else if report.activationRequested {
            self = report.halted != nil ? .halted : total.activated == total.targets ? .deployed : .activating
        } else {
            self = total.verified == total.targets ? .seeded : .seeding
        }
    }

    /// What the operators wait for next.
    public var nextStep: String {
        switch self {
        case .seeding, .seeded: "activation"
        case .activating, .halted: "activated on every target"
        case .deployed: "post-deployment review"
        case .rollingBack: "rolled back on every target"
        case .rolledBack: "none"
        }
    }
}

public struct ConsoleChange: Codable, Sendable, Equatable {
    public var change: ChangeID
    public var release: String
    public var package: String
    public var version: String
    public var digest: SHA256Digest?
    /// `change` or `policy:NAME`.
    public var origin: String
    public var query: String
    public var rings: String
    public var phase: DeliveryPhase
    /// The CCB's release approval verifies under the core's trust root for this digest and scope.
    public var releaseApproved: Bool
    public var nextStep: String
    /// What blocks the next step, each a sentence; empty when nothing does.
    public var blockers: [String]
    public var evidence: ConsoleEvidence
    public var approvals: [ConsoleApproval]
    public var segments: [SegmentStatus]
    public var total: SegmentStatus
    /// At most ``ConsoleLimits/chase`` entries.
    public var chase: [ChaseEntry]
    public var chaseTotal: Int
}

/// The evidence grid: a row per baseline (tested, or run by a target), a cell per lane.
public struct ConsoleEvidence: Codable, Sendable, Equatable {
    /// The lanes the trust root requires for this change type first, then any others tested.
    public var lanes: [String]
    public var requiredLanes: [String]
    public var rows: [ConsoleEvidenceRow]
    public var statements: [ConsoleEvidenceStatement]
}

public struct ConsoleEvidenceRow: Codable, Sendable, Equatable {
    public var baseline: String
    /// Targets of the change whose `baseline` attribute names this baseline.
    public var targets: Int
    /// One per lane, in ``ConsoleEvidence/lanes`` order.
    public var cells: [ConsoleEvidenceCell]
}

public struct ConsoleEvidenceCell: Codable, Sendable, Equatable {
    public var lane: String
    /// `passed`, `failed` or `missing` (no verified cell).
    public var verdict: String
    /// Passed with no unexpected configuration change.
    public var green: Bool
    /// The baseline version the cell ran on.
    public var tested: String?
}

/// One evidence statement the change carries, and whether it is the lab's.
public struct ConsoleEvidenceStatement: Codable, Sendable, Equatable {
    public var run: String
    public var digest: SHA256Digest?
    public var verified: Bool
    /// Why it does not count (nil when it verifies).
    public var problem: String?
    public var cells: Int
    /// The approvers whose counted release approval names this statement: the evidence behind
    /// the approval (the release is backed only by evidence every counted approver was shown).
    public var shownTo: [String]
}

public struct ConsoleApproval: Codable, Sendable, Equatable {
    /// The trusted approver whose key signed it, or the name it claims (then `verified` is false).
    public var signer: String
    public var verified: Bool
    public var role: ApproverRole?
    public var stage: ChangeStage?
    public var decision: ApprovalDecision?
    /// Counts towards the release threshold.
    public var counts: Bool
    public var problem: String?
    public var signedAt: Date?
    public var comment: String?
}

public struct ConsoleAgent: Codable, Sendable, Equatable {
    public var id: String
    public var name: String
    public var segment: String
    /// The `baseline` attribute (`NAME@N`).
    public var baseline: String?
    public var site: String?
    public var online: Bool
    public var revoked: Bool
    public var lastSeen: Date
    public var lastRefusal: String?
}

/// Bounds on the console's answer, so one request stays small whatever the core holds.
public struct ConsoleLimits: Sendable {
    public var changes = 50
    public var agents = 500
    public var chase = 100
    public var rows = 50
    public var lanes = 12
    public var statements = 20
    public var approvals = 30
    /// Characters of any one text (a blocker, a chase detail, a comment).
    public var text = 400

    public init() {}
}

/// Builds the console from the coordinator's state (called inside the actor).
struct ConsoleBuilder {
    let gate: CoreChangeGate
    let releases: [String: ReleaseRecord]
    let agents: [String: AgentRecord]
    let now: Date
    let limits: ConsoleLimits

    func clip(_ text: String) -> String {
        text.count <= limits.text ? text : String(text.prefix(limits.text - 1)) + "…"
    }

    func change(_ deployment: Deployment, status: StatusReport, chase: [ChaseEntry]) -> ConsoleChange {
        let manifest = releases[deployment.release]?.manifest
        let phase = DeliveryPhase(status)
        var releaseApproved = false
        var blockers: [String] = []
        var policy: ApprovalPolicy?
        if let authorization = deployment.authorization, let manifest {
            let isPolicy = deployment.origin != "change"
            // A policy is checked as an activation of everything it will select (as `setPolicy` does).
            let found = gate.activationBlockers(
                authorization, change: deployment.change, manifest: manifest, query: deployment.query,
                rings: deployment.rings, seededShare: isPolicy ? 1 : deployment.seededShare, now: now)
            releaseApproved = found.refusal == nil && found.release.isEmpty
            if phase == .seeding || phase == .seeded { blockers = found.all }
            policy = found.policy
        } else if manifest == nil {
            blockers = ["release \(deployment.release) is no longer published"]
        } else if phase == .seeding || phase == .seeded {
            blockers = [CoreChangeGate.noAuthorization(deployment.change)]
        }
        switch phase {
        case .halted: blockers.append("activation halted at the health gate: \(status.halted ?? "")")
        case .activating, .rollingBack:
            if !chase.isEmpty { blockers.append("\(chase.count) target(s) do not have it yet: see the chase list") }
        default: break
        }
        let chaseShown = chase.prefix(limits.chase).map { entry -> ChaseEntry in
            var entry = entry
            entry.detail = clip(entry.detail)
            entry.reason = clip(entry.reason)
            return entry
        }
        return ConsoleChange(
            change: deployment.change, release: deployment.release, package: manifest?.package ?? "",
            version: manifest?.packageVersion ?? "", digest: manifest?.digest, origin: deployment.origin,
            query: clip(deployment.query), rings: Ring.planText(deployment.rings), phase: phase,
            releaseApproved: releaseApproved, nextStep: phase.nextStep, blockers: blockers.map(clip),
            evidence: evidence(deployment, policy: policy, artifact: manifest?.digest),
            approvals: approvals(deployment.authorization, policy: policy, artifact: manifest?.digest),
            segments: status.segments, total: status.total, chase: Array(chaseShown), chaseTotal: chase.count)
    }

    /// The grid from the statements that verify under `policy`'s lab keys, with a row for every
    /// baseline a target runs even when the lab never tested it.
    func evidence(_ deployment: Deployment, policy: ApprovalPolicy?, artifact: SHA256Digest?) -> ConsoleEvidence {
        let authorization = deployment.authorization
        let required = authorization.flatMap { policy?.rule(for: $0.type)?.lanes } ?? []
        var statements: [ConsoleEvidenceStatement] = []
        var cells: [EvidenceCell] = []
        var counted: [(Approver, ApprovalStatement)] = []
        if let authorization, let policy, let artifact {
            counted =
                ReleaseCheck(authorization: authorization, policy: policy, artifact: artifact)
                .releaseApprovals().approvals
        }
        for envelope in authorization?.evidence ?? [] {
            let claimed = envelope.unverifiedClaim(EvidenceStatement.self)
            var view = ConsoleEvidenceStatement(
                run: clip(claimed?.run ?? "?"), digest: envelope.payloadDigest, verified: false, problem: nil, cells: 0,
                shownTo: [])
            if let policy, let authorization, let artifact {
                // The release check's own verification, one statement at a time.
                var single = authorization
                single.evidence = [envelope]
                let (trusted, problems) = ReleaseCheck(authorization: single, policy: policy, artifact: artifact)
                    .trustedEvidence()
                if let statement = trusted.values.first {
                    view.verified = true
                    view.cells = statement.cells.count
                    view.shownTo = counted.filter { _, approval in
                        envelope.payloadDigest.map(approval.evidence.contains) == true
                    }.map(\.0.name)
                    cells += statement.cells
                } else {
                    view.problem = clip(problems.first ?? "it does not verify")
                }
            } else {
                view.problem = "the change's trust root does not verify under this core's"
            }
            statements.append(view)
        }
        var lanes = required
        for lane in Set(cells.map(\.lane)).sorted() where !lanes.contains(lane) { lanes.append(lane) }
        lanes = Array(lanes.prefix(limits.lanes))
        var targetsPerBaseline: [String: Int] = [:]
        for agent in deployment.targets.keys {
            guard let text = agents[agent]?.attributes[BaselineAttribute.key] else { continue }
            let name = BaselineRef(text)?.name ?? text
            targetsPerBaseline[name, default: 0] += 1
        }
        let baselines = Set(cells.map(\.baseline.name)).union(targetsPerBaseline.keys).sorted()
        let rows = baselines.prefix(limits.rows).map { baseline in
            ConsoleEvidenceRow(
                baseline: clip(baseline), targets: targetsPerBaseline[baseline] ?? 0,
                cells: lanes.map { lane in
                    let here = cells.filter { $0.baseline.name == baseline && $0.lane == lane }
                    guard let best = here.first(where: \.isGreen) ?? here.first else {
                        return ConsoleEvidenceCell(lane: lane, verdict: "missing", green: false, tested: nil)
                    }
                    return ConsoleEvidenceCell(
                        lane: lane, verdict: best.verdict.rawValue, green: best.isGreen,
                        tested: best.baseline.description)
                })
        }
        return ConsoleEvidence(
            lanes: lanes, requiredLanes: required, rows: Array(rows),
            statements: Array(statements.prefix(limits.statements)))
    }

    /// Each approval with the approver whose trusted key signed it, and whether it counts.
    func approvals(_ authorization: ChangeAuthorization?, policy: ApprovalPolicy?, artifact: SHA256Digest?)
        -> [ConsoleApproval]
    {
        guard let authorization else { return [] }
        var counted = Set<String>()
        return authorization.approvals.prefix(limits.approvals).map { envelope in
            let claimed = envelope.unverifiedClaim(ApprovalStatement.self)
            var view = ConsoleApproval(
                signer: clip(claimed?.approver ?? "?"), verified: false, role: nil, stage: nil, decision: nil,
                counts: false, problem: nil, signedAt: nil, comment: nil)
            guard let policy, let artifact,
                let signers = try? envelope.signers(as: .approval, trusting: policy.approverKeys), signers.count == 1,
                let key = signers.first, let approver = policy.approver(with: key), let claimed
            else {
                view.problem = "not signed by an approver on the trust root"
                return view
            }
            view.signer = approver.name
            view.verified = true
            view.role = approver.role
            view.stage = claimed.stage
            view.decision = claimed.decision
            view.signedAt = claimed.signedAt
            view.comment = claimed.comment.map(clip)
            if claimed.stage == .release, claimed.change == authorization.change {
                // The release check's own rules, one approval at a time; one key counts once.
                var single = authorization
                single.approvals = [envelope]
                let found = ReleaseCheck(authorization: single, policy: policy, artifact: artifact).releaseApprovals()
                view.counts = !found.approvals.isEmpty && counted.insert(key.hex).inserted
                view.problem = found.problems.first.map(clip)
            } else if claimed.change != authorization.change {
                view.problem = clip("it is about change \(claimed.change)")
            }
            return view
        }
    }

    func agent(_ summary: AgentSummary) -> ConsoleAgent {
        ConsoleAgent(
            id: summary.id, name: summary.name, segment: summary.segment,
            baseline: summary.attributes[BaselineAttribute.key].map(clip), site: summary.attributes["site"].map(clip),
            online: summary.online, revoked: summary.revoked, lastSeen: summary.lastSeen,
            lastRefusal: agents[summary.id]?.lastRefusal.map(clip))
    }
}
