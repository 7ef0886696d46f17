import Foundation

// The change record: one proposed software change from proposal to review, as the CMDB keeps
// it. Its state has two dimensions that run side by side (approval and delivery: seeding may
// start while the release vote is pending) and a lifecycle; one transition function moves it.

/// Where a change stands with the CCB.
public enum ApprovalState: String, Codable, Sendable, CaseIterable, Comparable {
    case proposed
    case preliminarilyApproved = "preliminarily-approved"
    case builtAndTested = "built-and-tested"
    case releaseApproved = "release-approved"

    public static func < (lhs: Self, rhs: Self) -> Bool {
        (allCases.firstIndex(of: lhs) ?? 0) < (allCases.firstIndex(of: rhs) ?? 0)
    }
}

/// Where a change stands on the fleet.
public enum DeliveryState: String, Codable, Sendable, CaseIterable {
    case notStarted = "not-started"
    case seeding, seeded, activating, deployed
    case rolledBack = "rolled-back"
}

/// Whether a change is still being worked on.
public enum ChangeLifecycle: String, Codable, Sendable, CaseIterable {
    case open, rejected, postponed, cancelled, reviewed, closed

    /// Rejected, cancelled and closed changes never move again.
    public var isFinal: Bool { self == .rejected || self == .cancelled || self == .closed }
}

/// How a post-deployment review judged the change.
public enum CloseCode: String, Codable, Sendable, CaseIterable {
    case successful
    case successfulWithIssues = "successful-with-issues"
    case unsuccessful
}

/// The preliminary impact assessment, filled in from what the CMDB and the lab know.
public struct ImpactAssessment: Codable, Sendable, Equatable {
    /// One segment of the targets: how many targets, and what distribution costs there.
    public struct Segment: Codable, Sendable, Equatable {
        public var name: String
        public var targets: Int
        /// Every target downloads its own copy.
        public var unicastBytes: Int64?
        /// One copy per segment, shared on the LAN.
        public var seededBytes: Int64?

        public init(name: String, targets: Int, unicastBytes: Int64?, seededBytes: Int64?) {
            self.name = name
            self.targets = targets
            self.unicastBytes = unicastBytes
            self.seededBytes = seededBytes
        }
    }

    /// A baseline the targets run.
    public struct BaselineUse: Codable, Sendable, Equatable {
        public var name: String
        public var targets: Int
        /// nil: there is no recipe of that name in baselines/.
        public var approved: Bool?

        public init(name: String, targets: Int, approved: Bool?) {
            self.name = name
            self.targets = targets
            self.approved = approved
        }
    }

    /// What the lab measured installing the package on one baseline.
    public struct MeasuredDelta: Codable, Sendable, Equatable {
        public var cell: String
        public var baseline: String
        public var delta: ConfigurationDelta

        public init(cell: String, baseline: String, delta: ConfigurationDelta) {
            self.cell = cell
            self.baseline = baseline
            self.delta = delta
        }
    }

    /// Another open change that touches the same configuration items.
    public struct Conflict: Codable, Sendable, Equatable {
        public var change: String
        /// `files:/etc/x`, `units:foo.service`, …
        public var items: [String]

        public init(change: String, items: [String]) {
            self.change = change
            self.items = items
        }
    }

    public var query: String
    public var targetCount: Int
    public var sites: [String]
    public var segments: [Segment]
    public var baselines: [BaselineUse]
    /// The artifact whose deltas and size were used, when the package was built.
    public var artifact: SHA256Digest?
    public var artifactSize: Int64?
    public var deltas: [MeasuredDelta]
    public var unicastBytes: Int64?
    public var seededBytes: Int64?
    /// Bytes per second the seeding estimate assumes.
    public var rate: Int64
    public var seedingSeconds: Double?
    public var conflicts: [Conflict]
    public var assessedAt: Date

    public init(
        query: String, targetCount: Int = 0, sites: [String] = [], segments: [Segment] = [],
        baselines: [BaselineUse] = [], artifact: SHA256Digest? = nil, artifactSize: Int64? = nil,
        deltas: [MeasuredDelta] = [], unicastBytes: Int64? = nil, seededBytes: Int64? = nil, rate: Int64 = 1 << 20,
        seedingSeconds: Double? = nil, conflicts: [Conflict] = [], assessedAt: Date
    ) {
        self.query = query
        self.targetCount = targetCount
        self.sites = sites
        self.segments = segments
        self.baselines = baselines
        self.artifact = artifact
        self.artifactSize = artifactSize
        self.deltas = deltas
        self.unicastBytes = unicastBytes
        self.seededBytes = seededBytes
        self.rate = rate
        self.seedingSeconds = seedingSeconds
        self.conflicts = conflicts
        self.assessedAt = assessedAt
    }

    /// The configuration items the measured deltas touch, as `category:key` (conflicts are
    /// judged on them).
    public var touchedItems: Set<String> {
        Set(deltas.flatMap { $0.delta.entries.map { "\($0.category.rawValue):\($0.entry.key)" } })
    }
}

/// The free-text sections a change owner writes.
public struct ChangePlan: Codable, Sendable, Equatable {
    public var staffing: String?
    public var training: String?
    public var communication: String?
    public var risk: String?
    public var backout: String?

    public init(
        staffing: String? = nil, training: String? = nil, communication: String? = nil, risk: String? = nil,
        backout: String? = nil
    ) {
        self.staffing = staffing
        self.training = training
        self.communication = communication
        self.risk = risk
        self.backout = backout
    }

    /// This plan with every section `other` sets replaced.
    public func merging(_ other: ChangePlan) -> ChangePlan {
        ChangePlan(
            staffing: other.staffing ?? staffing, training: other.training ?? training,
            communication: other.communication ?? communication, risk: other.risk ?? risk,
            backout: other.backout ?? backout)
    }
}

/// A signed approval (or rejection) as the change keeps it: the envelope itself, and who
/// signed it as the recording side verified.
public struct RecordedApproval: Codable, Sendable, Equatable {
    public var stage: ChangeStage
    public var decision: ApprovalDecision
    /// The trusted approver whose key signed the envelope.
    public var signer: String
    /// The signer's public key (hex): distinctness is judged on it.
    public var key: String
    /// Release stage: the artifact the signature is over.
    public var artifact: SHA256Digest?
    public var envelope: SignedEnvelope
    public var recordedAt: Date
    public var recordedBy: String
    /// Why the approval no longer counts (a rebuild), nil while it does.
    public var voided: String?

    public init(
        stage: ChangeStage, decision: ApprovalDecision, signer: String, key: String, artifact: SHA256Digest?,
        envelope: SignedEnvelope, recordedAt: Date, recordedBy: String, voided: String? = nil
    ) {
        self.stage = stage
        self.decision = decision
        self.signer = signer
        self.key = key
        self.artifact = artifact
        self.envelope = envelope
        self.recordedAt = recordedAt
        self.recordedBy = recordedBy
        self.voided = voided
    }
}

/// A remark on a change.
public struct ChangeComment: Codable, Sendable, Equatable {
    public var actor: String
    public var at: Date
    public var text: String

    public init(actor: String, at: Date, text: String) {
        self.actor = actor
        self.at = at
        self.text = text
    }
}

/// One step in a change's history.
public struct ChangeTransition: Codable, Sendable, Equatable {
    public enum Dimension: String, Codable, Sendable {
        case approval, delivery, lifecycle, record
    }

    public var actor: String
    public var at: Date
    /// The event's name: `propose`, `approve-preliminary`, `seed`, …
    public var event: String
    public var dimension: Dimension
    public var from: String
    public var to: String
    public var reason: String?

    public init(
        actor: String, at: Date, event: String, dimension: Dimension, from: String, to: String, reason: String?
    ) {
        self.actor = actor
        self.at = at
        self.event = event
        self.dimension = dimension
        self.from = from
        self.to = to
        self.reason = reason
    }
}

/// Everything that can happen to a change. `ChangeRecord.applying` decides whether it may.
public enum ChangeEvent: Sendable, Equatable {
    /// A signed vote below the stage's threshold (or the one that reaches it, then followed
    /// by `stagePassed`).
    case approvalRecorded(RecordedApproval)
    /// The preliminary stage reached its threshold (normal changes).
    case preliminaryApproved
    /// The package was built and its matrix ran: the artifact and the runs it was judged on.
    /// A new digest is a rebuild: it voids the release approvals of the old one.
    case tested(artifact: SHA256Digest, version: String, runs: [String])
    /// The release gate passed (and, but for standard changes, the release vote).
    case releaseApproved
    /// An emergency change's full normal lanes passed after the fact.
    case fullEvidence(runs: [String])
    case rejected(ChangeStage)
    case postponed
    case resumed
    case cancelled
    case edited(ChangePlan)
    case scoped(ChangeScope)
    case commented(String)
    case seedingStarted
    case seeded
    case activationStarted
    case deployed
    case rolledBack
    /// What the engine reported about the delivery: counts, bytes, and the chase list.
    case followedUp(DeliveryFollowUp)
    /// The deployed change's configuration became a baseline's new standard version (`NAME@N`).
    case baselineAdopted(String)
    /// A rolled-back change's adoption was reverted: the baseline's new version (`NAME@N`).
    case baselineReverted(String)
    case reviewed(CloseCode)
    case closed

    /// The name the history, the CMDB log and the CLI use.
    public var name: String {
        switch self {
        case .approvalRecorded(let approval):
            return "\(approval.decision == .approve ? "approve" : "reject")-\(approval.stage.rawValue)-vote"
        case .preliminaryApproved: return "approve-preliminary"
        case .tested: return "tested"
        case .releaseApproved: return "approve-release"
        case .fullEvidence: return "full-evidence"
        case .rejected(let stage): return "reject-\(stage.rawValue)"
        case .postponed: return "postpone"
        case .resumed: return "resume"
        case .cancelled: return "cancel"
        case .edited: return "edit"
        case .scoped: return "scope"
        case .commented: return "comment"
        case .seedingStarted: return "seed"
        case .seeded: return "seeded"
        case .activationStarted: return "activate"
        case .deployed: return "deployed"
        case .rolledBack: return "rollback"
        case .followedUp: return "follow-up"
        case .baselineAdopted: return "adopt-baseline"
        case .baselineReverted: return "revert-baseline"
        case .reviewed: return "review"
        case .closed: return "close"
        }
    }
}

/// The engine's figures of one change's delivery, and its chase list over time: every target
/// that was ever on it, why, and when it got the change after all.
public struct DeliveryFollowUp: Codable, Sendable, Equatable {
    public struct ChaseItem: Codable, Sendable, Equatable {
        public var agent: String
        public var target: String
        /// The newest classified reason ("offline", "installer exit code 3", …).
        public var reason: String
        public var since: Date
        /// When the target no longer was on the chase list (it has the change); nil while it is.
        public var resolved: Date?

        public init(agent: String, target: String, reason: String, since: Date, resolved: Date? = nil) {
            self.agent = agent
            self.target = target
            self.reason = reason
            self.since = since
            self.resolved = resolved
        }
    }

    public var targets: Int
    public var activated: Int
    public var failed: Int
    public var bytesSent: Int64
    public var reportedAt: Date
    public var chase: [ChaseItem]

    public init(targets: Int, activated: Int, failed: Int, bytesSent: Int64, reportedAt: Date, chase: [ChaseItem] = []) {
        self.targets = targets
        self.activated = activated
        self.failed = failed
        self.bytesSent = bytesSent
        self.reportedAt = reportedAt
        self.chase = chase
    }

    /// `previous` brought up to a new report: entries on the current chase list (agent, name,
    /// reason) are added or updated, open entries no longer on it are resolved at `date`; with
    /// no chase list (nil) the entries stay as they were. A `pending` entry (a target merely
    /// still installing) adds nothing and keeps an open entry open with its reason.
    /// Callers pass the chase list once activation was requested: before that, every target
    /// that is merely still seeding would be on it.
    public static func merging(
        _ previous: DeliveryFollowUp?, targets: Int, activated: Int, failed: Int, bytesSent: Int64,
        chase: [(agent: String, target: String, reason: String, pending: Bool)]?, at date: Date
    ) -> DeliveryFollowUp {
        var items = previous?.chase ?? []
        guard let current = chase else {
            return DeliveryFollowUp(
                targets: targets, activated: activated, failed: failed, bytesSent: bytesSent, reportedAt: date, chase: items)
        }
        let now = Dictionary(current.map { ($0.agent, $0) }, uniquingKeysWith: { first, _ in first })
        for index in items.indices where items[index].resolved == nil {
            if let entry = now[items[index].agent] {
                if !entry.pending { items[index].reason = entry.reason }
            } else {
                items[index].resolved = date
            }
        }
        for entry in current where !entry.pending && !items.contains(where: { $0.agent == entry.agent && $0.resolved == nil }) {
            items.append(ChaseItem(agent: entry.agent, target: entry.target, reason: entry.reason, since: date))
        }
        return DeliveryFollowUp(
            targets: targets, activated: activated, failed: failed, bytesSent: bytesSent, reportedAt: date, chase: items)
    }

    /// The same figures and chase list, whatever the time of the report.
    public func sameAs(_ other: DeliveryFollowUp?) -> Bool {
        guard let other else { return false }
        var a = self
        var b = other
        a.reportedAt = .distantPast
        b.reportedAt = .distantPast
        return a == b
    }
}

/// Why a change may not take a step: the step, where the change stands, and what to do.
public struct ChangeRefusal: Error, CustomStringConvertible, Sendable, Equatable {
    public var change: String
    public var event: String
    public var reason: String
    public var fix: String?

    public init(change: String, event: String, reason: String, fix: String? = nil) {
        self.change = change
        self.event = event
        self.reason = reason
        self.fix = fix
    }

    public var description: String {
        "\(change): '\(event)' is refused: \(reason)" + (fix.map { "\n  fix: \($0)" } ?? "")
    }
}

/// One change: what is proposed and why, what it was judged on, who decided, and every step.
public struct ChangeRecord: CMDBRecord, Equatable {
    public static let kind = CMDBRecordKind.change
    /// Stored format; records of a newer format are refused.
    public static let formatVersion = 1

    public var format: Int
    public var id: String
    public var title: String
    public var need: String
    public var benefit: String?
    public var type: ChangeType
    public var package: String
    /// The package version built, once built.
    public var version: String?
    /// The built artifact, once built; a rebuild replaces it.
    public var artifact: SHA256Digest?
    /// The operator who proposed it (the CMDB actor); self-approval is judged against it.
    public var requester: String
    public var scope: ChangeScope
    public var impact: ImpactAssessment?
    public var plan: ChangePlan
    public var approvals: [RecordedApproval]
    /// The matrix runs of `artifact` it was judged on.
    public var evidenceRuns: [String]
    /// Emergency changes: the runs that passed the full normal lanes after the release.
    public var retrospectiveRuns: [String]
    public var comments: [ChangeComment]
    public var history: [ChangeTransition]
    public var approval: ApprovalState
    public var delivery: DeliveryState
    public var lifecycle: ChangeLifecycle
    public var closeCode: CloseCode?
    /// What the engine last reported about the delivery, with every target that was ever on
    /// the chase list and what became of it (nil until the first report).
    public var followUp: DeliveryFollowUp?
    /// Baseline versions (`NAME@N`) adopted from this change, and those that reverted them.
    public var adoptedBaselines: [String]?
    public var revertedBaselines: [String]?
    public var createdAt: Date

    public init(
        id: String, title: String, need: String, benefit: String? = nil, type: ChangeType, package: String,
        requester: String, scope: ChangeScope, impact: ImpactAssessment? = nil, plan: ChangePlan = ChangePlan(),
        createdAt: Date
    ) {
        self.format = Self.formatVersion
        self.id = id
        self.title = title
        self.need = need
        self.benefit = benefit
        self.type = type
        self.package = package
        self.requester = requester
        self.scope = scope
        self.impact = impact
        self.plan = plan
        self.approvals = []
        self.evidenceRuns = []
        self.retrospectiveRuns = []
        self.comments = []
        self.approval = .proposed
        self.delivery = .notStarted
        self.lifecycle = .open
        self.createdAt = createdAt
        self.history = [
            ChangeTransition(
                actor: requester, at: createdAt, event: "propose", dimension: .approval, from: "", to: "proposed",
                reason: need)
        ]
    }

    public var recordID: String { id }

    /// `CHG-0001` for 1; ids grow past four digits when they must.
    public static func id(number: Int) -> String { "CHG-" + String(format: "%04d", number) }

    /// The number in `CHG-0042`, nil for anything else.
    public static func number(of id: String) -> Int? {
        guard id.hasPrefix("CHG-"), id.count <= 14 else { return nil }
        let digits = id.dropFirst(4)
        guard digits.count >= 4, digits.allSatisfy(\.isASCII), digits.allSatisfy(\.isNumber) else { return nil }
        return Int(digits).flatMap { $0 > 0 ? $0 : nil }
    }

    public func problems() -> [String] {
        var problems: [String] = []
        if format != Self.formatVersion {
            problems.append("format \(format) is not \(Self.formatVersion) (written by another changelab)")
        }
        if Self.number(of: id) == nil { problems.append("'\(id.prefix(20))' is not a change id like CHG-0001") }
        if title.trimmingCharacters(in: .whitespaces).isEmpty { problems.append("the title is empty") }
        if need.trimmingCharacters(in: .whitespaces).isEmpty { problems.append("the need is empty") }
        if !DebianNames.isValidPackageName(package) { problems.append("'\(package)' is not a Debian package name") }
        if approval >= .builtAndTested && artifact == nil { problems.append("it is \(approval.rawValue) without an artifact") }
        if history.isEmpty { problems.append("it has no history") }
        // Each stored approval must still verify under the key it was recorded with, so an
        // edit of the record (cmdb verify, or any later write) cannot go unnoticed.
        for vote in approvals {
            let signed = SigningPublicKey(hex: vote.key).map {
                (try? vote.envelope.signers(as: .approval, trusting: [$0]))?.isEmpty == false
            }
            let claim = vote.envelope.unverifiedClaim(ApprovalStatement.self)
            if signed != true || claim?.change != id || claim?.stage != vote.stage || claim?.decision != vote.decision {
                problems.append("the \(vote.stage.rawValue) approval recorded for \(vote.signer) does not verify: it was altered after it was signed")
            }
        }
        return problems
    }

    public var references: [CMDBReference] {
        var refs = Set((evidenceRuns + retrospectiveRuns).map { CMDBReference(.run, $0) })
        if let artifact { refs.insert(CMDBReference(.artifact, artifact.hex)) }
        return refs.sorted()
    }

    /// The approvals that still count on `stage`: not voided, by decision.
    public func approvals(_ stage: ChangeStage, _ decision: ApprovalDecision = .approve) -> [RecordedApproval] {
        approvals.filter { $0.stage == stage && $0.decision == decision && $0.voided == nil }
    }

    /// Whether this type of change has a preliminary vote.
    public var hasPreliminaryStage: Bool { type == .normal }

    /// This change after `event`, with the step in its history.
    ///
    /// - Throws: `ChangeRefusal` naming why the step is illegal (a skipped state, a final
    ///   change, a vote twice with one key, a rebuild during delivery, …); the record is unchanged.
    public func applying(_ event: ChangeEvent, by actor: String, at date: Date, reason: String? = nil) throws(ChangeRefusal)
        -> ChangeRecord
    {
        var next = self
        func refuse(_ why: String, fix: String? = nil) -> ChangeRefusal {
            // Every refusal says what to do; where no step fits, where the change stands.
            ChangeRefusal(
                change: id, event: event.name, reason: why,
                fix: fix ?? "'changelab change show \(id)' shows where it stands and what blocks its next step")
        }
        func record(_ dimension: ChangeTransition.Dimension, from: String, to: String) {
            next.history.append(
                ChangeTransition(
                    actor: actor, at: date, event: event.name, dimension: dimension, from: from, to: to, reason: reason))
        }
        func requireOpen() throws(ChangeRefusal) {
            switch lifecycle {
            case .open: return
            case .postponed: throw refuse("the change is postponed", fix: "resume it first: changelab change resume \(id)")
            case .reviewed: throw refuse("the change was reviewed; only closing remains", fix: "changelab change close \(id)")
            default: throw refuse("the change is \(lifecycle.rawValue); nothing more can happen to it")
            }
        }
        func requireApproval(_ wanted: ApprovalState, for what: String) throws(ChangeRefusal) {
            guard approval == wanted else {
                throw refuse("\(what) needs the change to be \(wanted.rawValue), and it is \(approval.rawValue)")
            }
        }
        func moveApproval(to state: ApprovalState) {
            record(.approval, from: approval.rawValue, to: state.rawValue)
            next.approval = state
        }
        func moveDelivery(from allowed: [DeliveryState], to state: DeliveryState) throws(ChangeRefusal) {
            guard allowed.contains(delivery) else {
                throw refuse(
                    "delivery is \(delivery.rawValue); '\(event.name)' follows "
                        + allowed.map(\.rawValue).joined(separator: " or "))
            }
            record(.delivery, from: delivery.rawValue, to: state.rawValue)
            next.delivery = state
        }
        func moveLifecycle(to state: ChangeLifecycle) {
            record(.lifecycle, from: lifecycle.rawValue, to: state.rawValue)
            next.lifecycle = state
        }

        switch event {
        case .approvalRecorded(let vote):
            try requireOpen()
            switch vote.stage {
            case .preliminary:
                guard hasPreliminaryStage else { throw refuse("\(type.rawValue) changes have no preliminary vote") }
                try requireApproval(.proposed, for: "a preliminary vote")
            case .release:
                guard type != .standard else {
                    throw refuse("standard changes are pre-authorised: they take no release vote, only the gate")
                }
                try requireApproval(.builtAndTested, for: "a release vote")
                guard let artifact, vote.artifact == artifact else {
                    throw refuse(
                        "the vote is over artifact \(vote.artifact?.short ?? "none")…, the change's artifact is "
                            + "\(artifact?.short ?? "not built")… (a rebuild voids approvals of the old digest)",
                        fix: "sign a new approval over the current artifact")
                }
            }
            if approvals(vote.stage, .approve).contains(where: { $0.key == vote.key })
                || approvals(vote.stage, .reject).contains(where: { $0.key == vote.key })
            {
                throw refuse(
                    "\(vote.signer)'s key has already signed the \(vote.stage.rawValue) stage of this change",
                    fix: "a stage counts distinct keys: another approver must sign")
            }
            next.approvals.append(vote)
            record(.record, from: approval.rawValue, to: approval.rawValue)
            if vote.decision == .reject { moveLifecycle(to: .rejected) }

        case .preliminaryApproved:
            try requireOpen()
            guard hasPreliminaryStage else { throw refuse("\(type.rawValue) changes have no preliminary stage") }
            try requireApproval(.proposed, for: "preliminary approval")
            moveApproval(to: .preliminarilyApproved)

        case .tested(let artifact, let version, let runs):
            try requireOpen()
            guard !runs.isEmpty else { throw refuse("no matrix run of artifact \(artifact.short)… was named") }
            let first = hasPreliminaryStage ? ApprovalState.preliminarilyApproved : .proposed
            if approval == .proposed && hasPreliminaryStage {
                throw refuse(
                    "a normal change is built and tested after its preliminary approval, and this one is proposed",
                    fix: "get the preliminary approval first: changelab change approve \(id) --stage preliminary")
            }
            let rebuild = self.artifact != nil && self.artifact != artifact
            if rebuild && delivery != .notStarted && delivery != .rolledBack {
                throw refuse(
                    "delivery of artifact \(self.artifact?.short ?? "")… is \(delivery.rawValue); a rebuilt artifact cannot replace it",
                    fix: "roll the change back or propose a new change for the rebuilt package")
            }
            if approval == first || rebuild {
                if rebuild, let old = self.artifact {
                    for index in next.approvals.indices
                    where next.approvals[index].stage == .release && next.approvals[index].voided == nil {
                        next.approvals[index].voided =
                            "artifact \(old.short)… was rebuilt as \(artifact.short)… on \(ISO8601DateFormatter().string(from: date))"
                    }
                }
                next.artifact = artifact
                next.version = version
                next.evidenceRuns = runs
                moveApproval(to: .builtAndTested)
            } else if approval >= .builtAndTested {
                // The same artifact tested again: more evidence, same state.
                next.evidenceRuns = Array(Set(evidenceRuns + runs)).sorted()
                record(.record, from: approval.rawValue, to: approval.rawValue)
            } else {
                throw refuse("the change is \(approval.rawValue)")
            }

        case .releaseApproved:
            try requireOpen()
            try requireApproval(.builtAndTested, for: "release approval")
            moveApproval(to: .releaseApproved)

        case .fullEvidence(let runs):
            guard type == .emergency else { throw refuse("only emergency changes are tested in full after the fact") }
            guard approval == .releaseApproved, lifecycle == .open || lifecycle == .reviewed else {
                throw refuse("the change is \(approval.rawValue) and \(lifecycle.rawValue)")
            }
            guard !runs.isEmpty else { throw refuse("no matrix run was named") }
            next.retrospectiveRuns = Array(Set(retrospectiveRuns + runs)).sorted()
            record(.record, from: approval.rawValue, to: approval.rawValue)

        case .rejected:
            try requireOpen()
            guard approval < .releaseApproved else { throw refuse("the release was approved; roll back or cancel instead") }
            moveLifecycle(to: .rejected)

        case .postponed:
            try requireOpen()
            guard delivery == .notStarted || delivery == .seeded || delivery == .seeding else {
                throw refuse("delivery is \(delivery.rawValue); a change being activated cannot be postponed")
            }
            moveLifecycle(to: .postponed)

        case .resumed:
            guard lifecycle == .postponed else { throw refuse("only a postponed change resumes; this one is \(lifecycle.rawValue)") }
            moveLifecycle(to: .open)

        case .cancelled:
            guard lifecycle == .open || lifecycle == .postponed else {
                throw refuse("the change is \(lifecycle.rawValue)")
            }
            guard delivery == .notStarted || delivery == .seeding || delivery == .seeded || delivery == .rolledBack else {
                throw refuse("delivery is \(delivery.rawValue)", fix: "roll it back first: changelab rollback \(id)")
            }
            moveLifecycle(to: .cancelled)

        case .edited(let plan):
            guard lifecycle == .open || lifecycle == .postponed else { throw refuse("the change is \(lifecycle.rawValue)") }
            next.plan = self.plan.merging(plan)
            record(.record, from: approval.rawValue, to: approval.rawValue)

        case .scoped(let scope):
            try requireOpen()
            guard approval < .releaseApproved, approvals(.release).isEmpty else {
                throw refuse("release approvers signed the scope '\(self.scope.targets)'; it can no longer change",
                    fix: "propose a new change for other targets")
            }
            next.scope = scope
            record(.record, from: self.scope.targets, to: scope.targets)

        case .commented(let text):
            guard !text.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty else { throw refuse("the comment is empty") }
            next.comments.append(ChangeComment(actor: actor, at: date, text: text))

        case .seedingStarted:
            try requireOpen()
            guard approval >= .builtAndTested else {
                throw refuse("seeding starts once the change is built and tested, and it is \(approval.rawValue)")
            }
            try moveDelivery(from: [.notStarted], to: .seeding)

        case .seeded:
            try requireOpen()
            try moveDelivery(from: [.seeding], to: .seeded)

        case .activationStarted:
            try requireOpen()
            guard approval == .releaseApproved else {
                throw refuse("activation waits for the release approval, and the change is \(approval.rawValue)")
            }
            try moveDelivery(from: [.seeding, .seeded], to: .activating)

        case .deployed:
            try requireOpen()
            try moveDelivery(from: [.activating], to: .deployed)

        case .rolledBack:
            guard lifecycle == .open || lifecycle == .reviewed else { throw refuse("the change is \(lifecycle.rawValue)") }
            try moveDelivery(from: [.activating, .deployed], to: .rolledBack)

        case .followedUp(let report):
            guard delivery != .notStarted else { throw refuse("delivery has not started") }
            guard lifecycle == .open || lifecycle == .reviewed else { throw refuse("the change is \(lifecycle.rawValue)") }
            next.followUp = report
            record(.record, from: delivery.rawValue, to: delivery.rawValue)

        case .baselineAdopted(let ref):
            switch lifecycle {
            case .open, .reviewed: break
            case .postponed: throw refuse("the change is postponed", fix: "resume it first: changelab change resume \(id)")
            case .closed:
                throw refuse(
                    "the change is closed: its history ended with the review",
                    fix: "adopt before closing; now record the configuration without --change "
                        + "(changelab baseline adopt NAME --from RUN/CELL --notes '\(id)')")
            case .cancelled, .rejected:
                throw refuse(
                    "the change is \(lifecycle.rawValue): it deployed nothing that could become the standard",
                    fix: "name the change that deployed this artifact (changelab change list --state deployed), or adopt without --change")
            }
            guard delivery == .deployed else {
                throw refuse(
                    "a baseline adopts a change once it is deployed, and its delivery is \(delivery.rawValue)",
                    fix: "follow the deployment (changelab status \(id)) until it is deployed")
            }
            next.adoptedBaselines = (adoptedBaselines ?? []) + [ref]
            record(.record, from: delivery.rawValue, to: delivery.rawValue)

        case .baselineReverted(let ref):
            guard delivery == .rolledBack else { throw refuse("only a rolled-back change's adoptions are reverted") }
            next.revertedBaselines = (revertedBaselines ?? []) + [ref]
            record(.record, from: delivery.rawValue, to: delivery.rawValue)

        case .reviewed(let code):
            try requireOpen()
            guard delivery == .deployed || delivery == .rolledBack else {
                throw refuse("a change is reviewed after it was deployed or rolled back; delivery is \(delivery.rawValue)")
            }
            next.closeCode = code
            moveLifecycle(to: .reviewed)

        case .closed:
            guard lifecycle == .reviewed else {
                throw refuse("a change closes after its review, and it is \(lifecycle.rawValue)",
                    fix: "write the review first: changelab change review \(id)")
            }
            if type == .emergency && retrospectiveRuns.isEmpty {
                throw refuse("an emergency change closes only after the full normal lanes passed after the fact",
                    fix: "run the full matrix and record it: changelab change evidence \(id)")
            }
            moveLifecycle(to: .closed)
        }
        return next
    }

    /// What the change waits for next, in words (for `change show` and `change list`).
    public var nextStep: String {
        switch lifecycle {
        case .rejected, .cancelled, .closed: return "nothing: the change is \(lifecycle.rawValue)"
        case .postponed: return "resume (changelab change resume \(id))"
        case .reviewed:
            return type == .emergency && retrospectiveRuns.isEmpty
                ? "the full normal lanes after the fact, then close" : "close"
        case .open: break
        }
        switch (approval, delivery) {
        case (.proposed, _) where hasPreliminaryStage: return "preliminary approval by the CCB"
        case (.proposed, _), (.preliminarilyApproved, _): return "build and matrix run (changelab change evidence \(id))"
        case (.builtAndTested, _) where type == .standard: return "the release gate (changelab change release \(id))"
        case (.builtAndTested, _): return "release approval"
        case (.releaseApproved, .notStarted): return "promote (seeding)"
        case (.releaseApproved, .seeding), (.releaseApproved, .seeded): return "activation"
        case (.releaseApproved, .activating): return "deployment to finish"
        case (.releaseApproved, .deployed), (.releaseApproved, .rolledBack): return "post-deployment review"
        }
    }
}
