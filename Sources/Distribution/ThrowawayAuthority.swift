import Foundation
import Model

/// A change-control authority made up on the spot: two CCB approvers, a lab key and a trust
/// root over them, for the benchmark and the test fleet.
///
/// It signs real approvals and real evidence, which agents check exactly as they check the
/// CCB's: nothing in an agent knows it is a benchmark. Its keys live only in memory.
public struct ThrowawayAuthority: Sendable {
    public let approvers: [(name: String, key: SigningKey)]
    public let lab: SigningKey
    public let policy: ApprovalPolicy
    public let root: SignedEnvelope

    /// What agents and the core pin (`--trust-root`).
    public var digest: SHA256Digest { root.payloadDigest ?? SHA256Digest(of: "") }

    /// - Parameters:
    ///   - lanes: the lanes normal changes need on the agent's baseline.
    ///   - readiness: the seeded share activation waits for.
    public init(lanes: [String] = ["install"], readiness: Double = 0, approvals: Int = 2) throws {
        let approvers = [("ccb-one", SigningKey()), ("ccb-two", SigningKey()), ("ccb-three", SigningKey())]
        let lab = SigningKey()
        let release = StageRule(approvals: approvals, roles: [.ccb])
        let policy = ApprovalPolicy(
            approvers: approvers.map { Approver(name: $0.0, role: .ccb, key: $0.1.publicKey.hex) },
            labKeys: [lab.publicKey.hex], rootThreshold: 2,
            changeTypes: [
                ChangeType.normal.rawValue: ChangeTypeRule(preliminary: release, release: release, lanes: lanes)
            ],
            readiness: readiness)
        self.approvers = approvers.map { (name: $0.0, key: $0.1) }
        self.lab = lab
        self.policy = policy
        self.root = try TrustChain.sign(policy, with: approvers.map(\.1))
    }

    /// The lab's evidence of green cells for `artifact` in every lane on each of `baselines`
    /// (`NAME` or `NAME@VERSION`); `red` names baselines whose cells failed.
    public func evidence(
        package: String, version: String, artifact: SHA256Digest, baselines: [String], red: [String] = [],
        signer: SigningKey? = nil
    ) throws -> SignedEnvelope {
        let cells = baselines.flatMap { text -> [EvidenceCell] in
            let ref = BaselineRef(text) ?? BaselineRef(name: text, version: 1)
            let lanes = policy.rule(for: .normal)?.lanes ?? ["install"]
            return lanes.map { lane in
                EvidenceCell(
                    name: "\(ref.name).\(lane)", baseline: ref, imageDigest: nil, lane: lane,
                    verdict: red.contains(ref.name) ? .failed : .passed, failure: red.contains(ref.name) ? .product : nil,
                    delta: SHA256Digest(of: "{}"), violations: [], residue: false, commit: nil)
            }
        }
        let statement = EvidenceStatement(
            run: "throwaway-\(artifact.short)", package: package, version: version, artifact: artifact, cells: cells,
            recordedAt: Date())
        return try (signer ?? lab).sign(statement, as: .evidence)
    }

    /// A normal change's release approval by `count` approvers over `artifact`, `scope` and `evidence`.
    public func approvals(
        change: String, package: String, artifact: SHA256Digest, scope: ChangeScope, evidence: [SignedEnvelope],
        count: Int = 2
    ) throws -> [SignedEnvelope] {
        try approvers.prefix(count).map { approver in
            try approver.key.sign(
                ApprovalStatement(
                    change: change, stage: .release, decision: .approve, changeType: .normal, package: package,
                    requester: "release-engineer", approver: approver.name, artifact: artifact,
                    evidence: evidence.compactMap(\.payloadDigest), scope: scope, signedAt: Date()),
                as: .approval)
        }
    }

    /// `authorization` with a rollback order signed by the first approver.
    public func rollingBack(_ authorization: ChangeAuthorization, artifact: SHA256Digest) throws -> ChangeAuthorization {
        var rolling = authorization
        let (name, key) = approvers[0]
        rolling.rollbacks = [
            try key.sign(
                RollbackStatement(
                    change: authorization.change, artifact: artifact, approver: name, reason: "rolled back",
                    signedAt: Date()),
                as: .rollback)
        ]
        return rolling
    }

    /// A whole release authorization: evidence on `baselines`, and `approvals` approvals.
    public func authorization(
        change: String, package: String, version: String, artifact: SHA256Digest, baselines: [String],
        scope: ChangeScope = ChangeScope(targets: "all"), approvals count: Int = 2
    ) throws -> ChangeAuthorization {
        let evidence = [try evidence(package: package, version: version, artifact: artifact, baselines: baselines)]
        return ChangeAuthorization(
            change: change, type: .normal, scope: scope, trustRoots: [root], evidence: evidence,
            approvals: try approvals(
                change: change, package: package, artifact: artifact, scope: scope, evidence: evidence, count: count))
    }
}
