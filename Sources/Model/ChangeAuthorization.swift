import Foundation

// The trust spine of change control: what the CCB's approvers and the lab sign, and the one
// check that the CLI, the core and every agent run over it. No I/O: agents run it offline.

/// How a change is approved (ITIL's change types).
public enum ChangeType: String, Codable, Sendable, CaseIterable {
    /// Pre-authorised in the policy, by package: no votes, but never without the lab's evidence.
    case standard
    /// Preliminary approval and release approval by the CCB.
    case normal
    /// No preliminary stage; released on the policy's reduced lanes; closed only after the
    /// full matrix has passed after the fact.
    case emergency
}

/// The two votes a normal change goes through.
public enum ChangeStage: String, Codable, Sendable, CaseIterable {
    case preliminary, release
}

/// What an approver decided.
public enum ApprovalDecision: String, Codable, Sendable {
    case approve, reject
}

/// The boards an approver may sit on.
public enum ApproverRole: String, Codable, Sendable, CaseIterable, Comparable {
    /// Change control board.
    case ccb
    /// Technical advisory board.
    case tab
    /// Emergency change advisory board.
    case emergencyCAB = "emergency-cab"

    public static func < (lhs: ApproverRole, rhs: ApproverRole) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// One approver: a person's name (the same name as their operator identity), their board and
/// their Ed25519 public key.
public struct Approver: Codable, Sendable, Equatable {
    public var name: String
    public var role: ApproverRole
    /// 64 hex digits.
    public var key: String

    public init(name: String, role: ApproverRole, key: String) {
        self.name = name
        self.role = role
        self.key = key
    }

    public var publicKey: SigningPublicKey? { SigningPublicKey(hex: key) }
}

/// How many approvals from which boards one stage needs.
public struct StageRule: Codable, Sendable, Equatable {
    public var approvals: Int
    public var roles: [ApproverRole]
    /// Whether the change's requester may count among the approvers.
    public var selfApproval: Bool

    public init(approvals: Int, roles: [ApproverRole], selfApproval: Bool = false) {
        self.approvals = approvals
        self.roles = roles
        self.selfApproval = selfApproval
    }
}

/// The rules for one change type.
public struct ChangeTypeRule: Codable, Sendable, Equatable {
    /// nil: the type has no such stage (standard changes have neither; emergency changes no
    /// preliminary one).
    public var preliminary: StageRule?
    public var release: StageRule?
    /// The matrix lanes the evidence must cover, on every baseline that matters.
    public var lanes: [String]

    public init(preliminary: StageRule?, release: StageRule?, lanes: [String]) {
        self.preliminary = preliminary
        self.release = release
        self.lanes = lanes
    }
}

/// A period in which nothing may be activated: fixed dates, or a weekly window.
public struct FreezeWindow: Codable, Sendable, Equatable {
    public var name: String
    /// A fixed window (both set), in absolute time.
    public var from: Date?
    public var until: Date?
    /// A weekly window in the policy's time zone: `fri 16:00` to `mon 06:00`.
    public var weeklyFrom: String?
    public var weeklyUntil: String?

    public init(name: String, from: Date? = nil, until: Date? = nil, weeklyFrom: String? = nil, weeklyUntil: String? = nil)
    {
        self.name = name
        self.from = from
        self.until = until
        self.weeklyFrom = weeklyFrom
        self.weeklyUntil = weeklyUntil
    }

    static let days = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]

    /// Minutes since Sunday 00:00 of `"fri 16:00"`; nil when it does not read.
    public static func weekMinute(_ text: String) -> Int? {
        let parts = text.lowercased().split(separator: " ", omittingEmptySubsequences: true)
        guard parts.count == 2, let day = days.firstIndex(of: String(parts[0].prefix(3))) else { return nil }
        let clock = parts[1].split(separator: ":")
        guard clock.count == 2, let hour = Int(clock[0]), let minute = Int(clock[1]), (0..<24).contains(hour),
            (0..<60).contains(minute)
        else { return nil }
        return day * 1440 + hour * 60 + minute
    }

    /// Whether `date` falls in the window, weekly windows read in `timeZone`.
    public func contains(_ date: Date, timeZone: TimeZone) -> Bool {
        if let from, let until { return date >= from && date < until }
        guard let start = weeklyFrom.flatMap(Self.weekMinute), let end = weeklyUntil.flatMap(Self.weekMinute) else {
            return false
        }
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = timeZone
        let parts = calendar.dateComponents([.weekday, .hour, .minute], from: date)
        let now = ((parts.weekday ?? 1) - 1) * 1440 + (parts.hour ?? 0) * 60 + (parts.minute ?? 0)
        return start <= end ? (now >= start && now < end) : (now >= start || now < end)
    }
}

/// The approval policy: who approves what, on which evidence, and when nothing may move.
///
/// Written as a YAML file in the repository and signed as the change-control trust root, so
/// the same rules reach every agent, which checks them offline. `version` increases with each
/// trust root; a new one counts only when `rootThreshold` approvers of the current one signed it.
public struct ApprovalPolicy: Codable, Sendable, Equatable {
    public var version: Int
    /// IANA name, for weekly freeze windows.
    public var timeZone: String
    public var approvers: [Approver]
    /// The lab's evidence keys (hex).
    public var labKeys: [String]
    /// Distinct approvers of this root that must sign the root that replaces it.
    public var rootThreshold: Int
    /// Keyed by `ChangeType.rawValue`.
    public var changeTypes: [String: ChangeTypeRule]
    /// Packages whose changes are pre-authorised (standard changes).
    public var standardPackages: [String]
    /// Share of targets (0…1) that must hold a verified copy before activation.
    public var readiness: Double
    public var freezes: [FreezeWindow]
    /// Boards whose members may roll a change back.
    public var rollbackRoles: [ApproverRole]
    /// The seeding rate the impact assessment assumes, bytes per second.
    public var defaultRate: Int64

    public init(
        version: Int = 1, timeZone: String = "UTC", approvers: [Approver] = [], labKeys: [String] = [],
        rootThreshold: Int = 1, changeTypes: [String: ChangeTypeRule] = [:], standardPackages: [String] = [],
        readiness: Double = 0.95, freezes: [FreezeWindow] = [], rollbackRoles: [ApproverRole] = [.ccb],
        defaultRate: Int64 = 1 << 20
    ) {
        self.version = version
        self.timeZone = timeZone
        self.approvers = approvers
        self.labKeys = labKeys
        self.rootThreshold = rootThreshold
        self.changeTypes = changeTypes
        self.standardPackages = standardPackages
        self.readiness = readiness
        self.freezes = freezes
        self.rollbackRoles = rollbackRoles
        self.defaultRate = defaultRate
    }

    public func rule(for type: ChangeType) -> ChangeTypeRule? { changeTypes[type.rawValue] }

    /// The approver a key belongs to.
    public func approver(with key: SigningPublicKey) -> Approver? {
        approvers.first { $0.publicKey == key }
    }

    public var approverKeys: [SigningPublicKey] { approvers.compactMap(\.publicKey) }
    public var labPublicKeys: [SigningPublicKey] { labKeys.compactMap(SigningPublicKey.init(hex:)) }

    /// The freeze window open at `date`, if any.
    public func freeze(at date: Date) -> FreezeWindow? {
        let zone = TimeZone(identifier: timeZone) ?? TimeZone(secondsFromGMT: 0) ?? .current
        return freezes.first { $0.contains(date, timeZone: zone) }
    }

    /// What makes the policy unusable, each as a sentence (the file reader adds positions).
    public func problems() -> [String] {
        var problems: [String] = []
        if version < 1 { problems.append("version must be 1 or more") }
        if TimeZone(identifier: timeZone) == nil { problems.append("time zone '\(timeZone)' is not an IANA time zone") }
        var names = Set<String>()
        var keys = Set<String>()
        for approver in approvers {
            if let problem = SafeName.problem(approver.name) { problems.append("approver name '\(approver.name)': \(problem)") }
            if approver.publicKey == nil { problems.append("approver \(approver.name)'s key is not 64 hex digits of an Ed25519 key") }
            if !names.insert(approver.name).inserted { problems.append("approver \(approver.name) is listed twice") }
            if !keys.insert(approver.key.lowercased()).inserted { problems.append("approver \(approver.name)'s key is listed twice") }
        }
        for key in labKeys where SigningPublicKey(hex: key) == nil { problems.append("lab key '\(key.prefix(16))' is not an Ed25519 key") }
        if rootThreshold < 1 { problems.append("root-threshold must be 1 or more") }
        if !approvers.isEmpty && rootThreshold > approvers.count {
            problems.append("root-threshold \(rootThreshold) is more than the \(approvers.count) approver(s) listed")
        }
        for (name, rule) in changeTypes.sorted(by: { $0.key < $1.key }) {
            if ChangeType(rawValue: name) == nil { problems.append("'\(name)' is not a change type (standard, normal, emergency)") }
            for (stage, stageRule) in [("preliminary", rule.preliminary), ("release", rule.release)] {
                guard let stageRule else { continue }
                if stageRule.approvals < 1 { problems.append("\(name).\(stage): approvals must be 1 or more") }
                if stageRule.roles.isEmpty { problems.append("\(name).\(stage): no roles may approve") }
            }
            if rule.lanes.isEmpty { problems.append("\(name): no lanes are required") }
        }
        if !(0...1).contains(readiness) || readiness.isNaN { problems.append("readiness must be between 0% and 100%") }
        if defaultRate < 1 { problems.append("default-rate must be positive") }
        for window in freezes {
            let fixed = window.from != nil || window.until != nil
            let weekly = window.weeklyFrom != nil || window.weeklyUntil != nil
            if fixed == weekly {
                problems.append("freeze '\(window.name)' needs either from/until dates or weekly-from/weekly-until")
            }
            if fixed, let from = window.from, let until = window.until, until <= from {
                problems.append("freeze '\(window.name)' ends before it starts")
            } else if fixed && (window.from == nil || window.until == nil) {
                problems.append("freeze '\(window.name)' needs both from and until")
            }
            if weekly && (window.weeklyFrom.flatMap(FreezeWindow.weekMinute) == nil
                || window.weeklyUntil.flatMap(FreezeWindow.weekMinute) == nil)
            {
                problems.append("freeze '\(window.name)': weekly times read like 'fri 16:00'")
            }
        }
        return problems
    }
}

/// What a release approval covers besides the artifact: the targets and the ring plan.
public struct ChangeScope: Codable, Sendable, Equatable, Hashable {
    public var targets: String
    public var rings: String

    public init(targets: String, rings: String = "all") {
        self.targets = targets
        self.rings = rings
    }
}

/// One approver's signed decision on one stage of one change (in-toto style: the subject is
/// the artifact digest, the predicate the change, stage, scope and the evidence shown).
public struct ApprovalStatement: Codable, Sendable, Equatable {
    public var change: String
    public var stage: ChangeStage
    public var decision: ApprovalDecision
    public var changeType: ChangeType
    public var package: String
    /// The requester's name as the change record names it (self-approval is judged on it).
    public var requester: String
    /// The approver's own name (a hint: the key decides who signed).
    public var approver: String
    /// Release stage: the exact artifact.
    public var artifact: SHA256Digest?
    /// Release stage: the payload digests of the evidence statements the approver was shown.
    public var evidence: [SHA256Digest]
    /// Release stage: targets and rings.
    public var scope: ChangeScope?
    public var comment: String?
    public var signedAt: Date

    public init(
        change: String, stage: ChangeStage, decision: ApprovalDecision, changeType: ChangeType, package: String,
        requester: String, approver: String, artifact: SHA256Digest? = nil, evidence: [SHA256Digest] = [],
        scope: ChangeScope? = nil, comment: String? = nil, signedAt: Date
    ) {
        self.change = change
        self.stage = stage
        self.decision = decision
        self.changeType = changeType
        self.package = package
        self.requester = requester
        self.approver = approver
        self.artifact = artifact
        self.evidence = evidence
        self.scope = scope
        self.comment = comment
        self.signedAt = signedAt
    }
}

/// One matrix cell as the lab's evidence states it.
public struct EvidenceCell: Codable, Sendable, Equatable {
    public var name: String
    public var baseline: BaselineRef
    public var imageDigest: SHA256Digest?
    public var lane: String
    public var verdict: CellRecord.Verdict
    public var failure: CellRecord.FailureClass?
    /// SHA-256 of the install delta's stable JSON.
    public var delta: SHA256Digest
    /// Unexpected configuration changes (the policy's violations), as text.
    public var violations: [String]
    /// Whether an uninstall left anything behind.
    public var residue: Bool
    /// The CMDB commit that recorded the cell.
    public var commit: String?

    public init(
        name: String, baseline: BaselineRef, imageDigest: SHA256Digest?, lane: String, verdict: CellRecord.Verdict,
        failure: CellRecord.FailureClass?, delta: SHA256Digest, violations: [String], residue: Bool, commit: String?
    ) {
        self.name = name
        self.baseline = baseline
        self.imageDigest = imageDigest
        self.lane = lane
        self.verdict = verdict
        self.failure = failure
        self.delta = delta
        self.violations = violations
        self.residue = residue
        self.commit = commit
    }

    /// Green: passed, with no unexpected configuration change.
    public var isGreen: Bool { verdict == .passed && violations.isEmpty }
}

/// What the lab signs at the end of a matrix run: the artifact and every cell's outcome.
public struct EvidenceStatement: Codable, Sendable, Equatable {
    public var run: String
    public var package: String
    public var version: String
    public var artifact: SHA256Digest
    public var cells: [EvidenceCell]
    public var recordedAt: Date

    public init(run: String, package: String, version: String, artifact: SHA256Digest, cells: [EvidenceCell], recordedAt: Date)
    {
        self.run = run
        self.package = package
        self.version = version
        self.artifact = artifact
        self.cells = cells
        self.recordedAt = recordedAt
    }
}

/// An approver's signed order to roll a change back: agents undo an install only on this.
public struct RollbackStatement: Codable, Sendable, Equatable {
    public var change: String
    /// The artifact being rolled back.
    public var artifact: SHA256Digest
    public var approver: String
    public var reason: String
    public var signedAt: Date

    public init(change: String, artifact: SHA256Digest, approver: String, reason: String, signedAt: Date) {
        self.change = change
        self.artifact = artifact
        self.approver = approver
        self.reason = reason
        self.signedAt = signedAt
    }
}

extension SignedEnvelope {
    /// SHA-256 of the signed payload bytes: how trust roots are pinned and evidence is named.
    public var payloadDigest: SHA256Digest? {
        Data(base64Encoded: payload).map { SHA256Digest(of: $0) }
    }
}

/// Everything a target needs to decide, offline, that a change may be installed: the trust
/// root chain from the root it pinned, the lab's evidence and the approvers' signatures.
///
/// The fields outside the envelopes are claims: each is checked against what was signed.
public struct ChangeAuthorization: Codable, Sendable, Equatable {
    public var change: String
    public var type: ChangeType
    public var scope: ChangeScope
    /// Oldest first; the first one a verifier pinned (by payload digest) starts its chain.
    public var trustRoots: [SignedEnvelope]
    public var evidence: [SignedEnvelope]
    public var approvals: [SignedEnvelope]
    /// Signed rollback orders (`RollbackStatement`), when the change is being rolled back.
    public var rollbacks: [SignedEnvelope]?

    public init(
        change: String, type: ChangeType, scope: ChangeScope, trustRoots: [SignedEnvelope],
        evidence: [SignedEnvelope], approvals: [SignedEnvelope], rollbacks: [SignedEnvelope]? = nil
    ) {
        self.change = change
        self.type = type
        self.scope = scope
        self.trustRoots = trustRoots
        self.evidence = evidence
        self.approvals = approvals
        self.rollbacks = rollbacks
    }
}

/// Why a trust root chain was refused.
public struct TrustRootRefusal: Error, CustomStringConvertible, Sendable, Equatable {
    public var description: String
    init(_ text: String) { description = text }
}

/// The trust root chain: the pinned root, then each successor signed by the threshold of
/// its predecessor's approvers (TUF's root rotation).
public enum TrustChain {
    /// Signs `policy` as a trust root with `keys` (the first root: its own approvers; a new
    /// one: approvers of the root it replaces).
    public static func sign(_ policy: ApprovalPolicy, with keys: [SigningKey]) throws -> SignedEnvelope {
        guard let first = keys.first else { throw ChangelabError("a trust root needs at least one signature") }
        var envelope = try first.sign(policy, as: .trustRoot)
        for key in keys.dropFirst() { envelope = try key.cosign(envelope) }
        return envelope
    }

    /// The newest root reachable from the pinned one, and its digest.
    ///
    /// Roots before the pinned one are ignored; the pinned root is trusted by its digest; each
    /// later root must have a higher version and be signed by `rootThreshold` distinct
    /// approvers of the root before it. A root that does not verify ends the chain with an error.
    public static func current(_ chain: [SignedEnvelope], pinned: SHA256Digest) throws(TrustRootRefusal)
        -> (policy: ApprovalPolicy, digest: SHA256Digest)
    {
        guard let start = chain.firstIndex(where: { $0.payloadDigest == pinned }) else {
            throw TrustRootRefusal(
                "none of the \(chain.count) trust root(s) sent is the pinned one (\(pinned.short)…): the change-control trust root was swapped or never sent")
        }
        var policy = try decode(chain[start], checkSignatures: nil)
        var digest = pinned
        for envelope in chain[(start + 1)...] {
            let next = try decode(envelope, checkSignatures: policy)
            guard next.version > policy.version else {
                throw TrustRootRefusal("trust root version \(next.version) does not follow version \(policy.version)")
            }
            policy = next
            digest = envelope.payloadDigest ?? digest
        }
        return (policy, digest)
    }

    static func decode(_ envelope: SignedEnvelope, checkSignatures previous: ApprovalPolicy?) throws(TrustRootRefusal)
        -> ApprovalPolicy
    {
        guard let claimed = envelope.unverifiedClaim(ApprovalPolicy.self) else {
            throw TrustRootRefusal("a trust root in the chain is not a readable policy")
        }
        do {
            _ = try envelope.checkedBody(as: .trustRoot)
            if let previous {
                let signers = try envelope.signers(as: .trustRoot, trusting: previous.approverKeys)
                guard signers.count >= previous.rootThreshold else {
                    throw TrustRootRefusal(
                        "trust root version \(claimed.version) is signed by \(signers.count) approver(s) of version \(previous.version); it needs \(previous.rootThreshold)")
                }
            }
        } catch let refusal as SignatureRefusal {
            throw TrustRootRefusal("trust root version \(claimed.version) was refused: \(refusal)")
        } catch let refusal as TrustRootRefusal {
            throw refusal
        } catch {
            throw TrustRootRefusal("trust root version \(claimed.version) was refused: \(error)")
        }
        guard claimed.problems().isEmpty else {
            throw TrustRootRefusal("trust root version \(claimed.version) is not a valid policy: \(claimed.problems().joined(separator: "; "))")
        }
        return claimed
    }
}

/// The release check: may `artifact` of this change be installed, under `policy`?
///
/// Run by the CLI before it records a release, by the core before it activates, and by every
/// agent before it installs (with its own baseline). It collects every reason, so a refusal
/// lists all that is missing.
public struct ReleaseCheck: Sendable {
    public var authorization: ChangeAuthorization
    public var policy: ApprovalPolicy
    public var artifact: SHA256Digest

    public init(authorization: ChangeAuthorization, policy: ApprovalPolicy, artifact: SHA256Digest) {
        self.authorization = authorization
        self.policy = policy
        self.artifact = artifact
    }

    /// Evidence that verifies under the lab's keys and is about this artifact, by payload digest.
    public func trustedEvidence() -> (statements: [SHA256Digest: EvidenceStatement], problems: [String]) {
        var statements: [SHA256Digest: EvidenceStatement] = [:]
        var problems: [String] = []
        for envelope in authorization.evidence {
            do {
                let statement = try envelope.open(EvidenceStatement.self, as: .evidence, trusting: policy.labPublicKeys)
                guard statement.artifact == artifact else {
                    problems.append("evidence of run \(statement.run) is about another artifact (\(statement.artifact.short)…)")
                    continue
                }
                if let digest = envelope.payloadDigest { statements[digest] = statement }
            } catch {
                let run = envelope.unverifiedClaim(EvidenceStatement.self)?.run ?? "?"
                problems.append("the evidence of run \(run) is not the lab's: \(error)")
            }
        }
        return (statements, problems)
    }

    /// The release approvals that count: (approver, statement) per distinct trusted key, and
    /// every problem with the others.
    public func releaseApprovals() -> (approvals: [(Approver, ApprovalStatement)], rejections: [(Approver, ApprovalStatement)], problems: [String]) {
        var approvals: [(Approver, ApprovalStatement)] = []
        var rejections: [(Approver, ApprovalStatement)] = []
        var problems: [String] = []
        var counted = Set<String>()
        let rule = policy.rule(for: authorization.type)?.release
        for envelope in authorization.approvals {
            let signers: [SigningPublicKey]
            do {
                signers = try envelope.signers(as: .approval, trusting: policy.approverKeys)
            } catch {
                problems.append("an approval was refused: \(error)")
                continue
            }
            guard signers.count == 1, let key = signers.first, let approver = policy.approver(with: key),
                let statement = envelope.unverifiedClaim(ApprovalStatement.self)
            else {
                let name = envelope.unverifiedClaim(ApprovalStatement.self)?.approver ?? "?"
                problems.append("the approval claimed by \(name) is not signed by a key on the trust root")
                continue
            }
            guard statement.change == authorization.change, statement.stage == .release else { continue }
            if statement.decision == .reject {
                rejections.append((approver, statement))
                continue
            }
            var why: [String] = []
            if statement.artifact != artifact {
                why.append("it approves artifact \(statement.artifact?.short ?? "none")…, not \(artifact.short)… (a rebuild voids approvals)")
            }
            if statement.scope != authorization.scope {
                why.append("it approves targets '\(statement.scope?.targets ?? "")' rings '\(statement.scope?.rings ?? "")', not '\(authorization.scope.targets)' rings '\(authorization.scope.rings)'")
            }
            if statement.changeType != authorization.type {
                why.append("it approves a \(statement.changeType.rawValue) change, not a \(authorization.type.rawValue) one")
            }
            if let rule, !rule.roles.contains(approver.role) {
                why.append("\(approver.name) sits on \(approver.role.rawValue), which does not approve \(authorization.type.rawValue) releases")
            }
            if let rule, !rule.selfApproval, approver.name == statement.requester {
                why.append("\(approver.name) requested the change and the policy forbids approving one's own change")
            }
            if statement.evidence.isEmpty { why.append("it names no evidence") }
            if !why.isEmpty {
                problems.append("the release approval by \(approver.name) does not count: " + why.joined(separator: "; "))
                continue
            }
            if counted.insert(key.hex).inserted { approvals.append((approver, statement)) }
        }
        return (approvals, rejections, problems)
    }

    /// Why a rollback of this artifact is not authorized, or nil: it needs one rollback order
    /// signed by an approver whose role the policy's `rollbackRoles` names.
    public func rollbackProblem() -> String? {
        var problems: [String] = []
        for envelope in authorization.rollbacks ?? [] {
            guard let signers = try? envelope.signers(as: .rollback, trusting: policy.approverKeys),
                let key = signers.first, let approver = policy.approver(with: key),
                let statement = envelope.unverifiedClaim(RollbackStatement.self)
            else {
                problems.append("a rollback order is not signed by an approver on the trust root")
                continue
            }
            guard statement.change == authorization.change, statement.artifact == artifact else {
                problems.append("the rollback order by \(approver.name) is for another change or artifact")
                continue
            }
            guard policy.rollbackRoles.contains(approver.role) else {
                problems.append("\(approver.name) sits on \(approver.role.rawValue), which may not roll changes back")
                continue
            }
            return nil
        }
        return problems.isEmpty
            ? "no rollback order signed by \(policy.rollbackRoles.map(\.rawValue).joined(separator: "/")) came with it"
            : problems.joined(separator: "; ")
    }

    /// Every reason the release may not be installed; empty when it may.
    ///
    /// - Parameter baseline: the installing target's baseline name (agents pass theirs); the
    ///   evidence must then hold a green cell in every required lane on it.
    public func problems(baseline: String?) -> [String] {
        guard let rule = policy.rule(for: authorization.type) else {
            return ["the trust root has no rules for \(authorization.type.rawValue) changes"]
        }
        var problems: [String] = []
        let (evidence, evidenceProblems) = trustedEvidence()
        problems += evidenceProblems
        var shown = Set(evidence.keys)
        if authorization.type == .standard {
            let packages = Set(evidence.values.map(\.package))
            if packages.isEmpty || !packages.isSubset(of: Set(policy.standardPackages)) {
                problems.append("\(packages.sorted().joined(separator: ", ")) is not pre-authorised as a standard change in the trust root")
            }
        }
        if let release = rule.release, authorization.type != .standard {
            let (approvals, rejections, approvalProblems) = releaseApprovals()
            problems += approvalProblems
            for (approver, statement) in rejections {
                problems.append("\(approver.name) rejected the release" + (statement.comment.map { ": \($0)" } ?? ""))
            }
            if approvals.count < release.approvals {
                problems.append(
                    "the release has \(approvals.count) of the \(release.approvals) approval(s) it needs from \(release.roles.map(\.rawValue).joined(separator: "/"))")
            }
            // Only the evidence every counted approver was shown backs the release.
            for (_, statement) in approvals { shown.formIntersection(statement.evidence) }
            if !approvals.isEmpty && shown.isEmpty {
                problems.append("the approvals name no evidence that was sent and verifies")
            }
        }
        if let baseline {
            let cells = shown.compactMap { evidence[$0] }.flatMap(\.cells).filter { $0.baseline.name == baseline }
            if cells.isEmpty {
                problems.append("baseline not tested: the evidence has no cell on baseline \(baseline)")
            } else {
                for lane in rule.lanes where !cells.contains(where: { $0.lane == lane && $0.isGreen }) {
                    problems.append("the evidence has no green \(lane) cell on baseline \(baseline)")
                }
            }
        }
        return problems
    }
}
