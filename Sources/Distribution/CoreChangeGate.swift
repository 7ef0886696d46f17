import Foundation
import Model

/// The core's side of change control: what it checks before it seeds or activates a change.
///
/// The core is not trusted with approval: it checks the same signatures every agent checks
/// again (``ChangeAuthorization``, under the trust root pinned with `core serve --trust-root`),
/// so a refusal comes early and with reasons, but a core that skipped this would still not
/// get one package installed.
struct CoreChangeGate: Sendable {
    /// The newest trust root this core accepted (or the one it was started with).
    let pinned: SHA256Digest?

    /// The trust root the authorization's chain leads to from the pinned one.
    func root(of authorization: ChangeAuthorization) throws -> (policy: ApprovalPolicy, digest: SHA256Digest) {
        guard let pinned else {
            throw CoreRefusal.conflict(
                "this core has no change-control trust root: start it with 'changelab core serve --trust-root sha256:…' (the digest 'changelab trust-root show' prints)")
        }
        do {
            return try TrustChain.current(authorization.trustRoots, pinned: pinned)
        } catch {
            throw CoreRefusal.badRequest("the change's trust root was refused: \(error)")
        }
    }

    /// Seeding may start before the release vote, but only for a change whose authorization
    /// is about this artifact and scope, with evidence the lab signed.
    func checkPromotion(
        _ authorization: ChangeAuthorization, change: ChangeID, manifest: ReleaseManifest, query: String, rings: [Ring]
    ) throws -> SHA256Digest {
        let (policy, digest) = try root(of: authorization)
        try checkScope(authorization, change: change, query: query, rings: rings)
        let check = ReleaseCheck(authorization: authorization, policy: policy, artifact: manifest.digest)
        let (evidence, problems) = check.trustedEvidence()
        guard problems.isEmpty, !evidence.isEmpty else {
            throw CoreRefusal.badRequest(
                "change \(change) may not be seeded: "
                    + (problems.isEmpty ? ["no evidence from the lab came with it"] : problems).joined(separator: "; "))
        }
        return digest
    }

    /// Activation needs the whole release check, an open window and enough seeded targets.
    func checkActivation(
        _ authorization: ChangeAuthorization, change: ChangeID, manifest: ReleaseManifest, query: String,
        rings: [Ring], seededShare: Double, now: Date
    ) throws -> SHA256Digest {
        let blockers = activationBlockers(
            authorization, change: change, manifest: manifest, query: query, rings: rings, seededShare: seededShare,
            now: now)
        if let refusal = blockers.refusal { throw refusal }
        guard blockers.all.isEmpty, let root = blockers.root else {
            throw CoreRefusal.conflict("change \(change) may not be activated: " + blockers.all.joined(separator: "; "))
        }
        return root
    }

    /// Everything that stands between a change and its activation now: the list
    /// ``checkActivation`` refuses with, and what the operators' console shows as blockers.
    func activationBlockers(
        _ authorization: ChangeAuthorization, change: ChangeID, manifest: ReleaseManifest, query: String,
        rings: [Ring], seededShare: Double, now: Date
    ) -> ActivationBlockers {
        var blockers = ActivationBlockers()
        let policy: ApprovalPolicy
        do {
            (policy, blockers.root) = try root(of: authorization)
            blockers.policy = policy
            try checkScope(authorization, change: change, query: query, rings: rings)
        } catch {
            let refusal = error as? CoreRefusal ?? CoreRefusal.badRequest("\(error)")
            blockers.refusal = refusal
            blockers.release = [refusal.description]
            return blockers
        }
        blockers.release = ReleaseCheck(authorization: authorization, policy: policy, artifact: manifest.digest)
            .problems(baseline: nil)
        if let freeze = policy.freeze(at: now), authorization.type != .emergency {
            blockers.timing.append(
                "the freeze window '\(freeze.name)' is open (only emergency changes may activate in it)")
        }
        if seededShare + 1e-9 < policy.readiness {
            blockers.timing.append(
                "\(Self.percent(seededShare)) of the targets hold a verified copy; the policy needs \(Self.percent(policy.readiness)) before activation")
        }
        return blockers
    }

    /// Why the core cannot activate a change it was never sent an authorization for.
    static func noAuthorization(_ change: ChangeID) -> String {
        "change \(change) has no approvals: activate it with 'changelab activate CHG', which sends the CCB's signed release approval and the lab's evidence"
    }

    /// A rollback needs one order signed by an approver whose role may roll back.
    func checkRollback(_ authorization: ChangeAuthorization, change: ChangeID, manifest: ReleaseManifest) throws
        -> SHA256Digest
    {
        let (policy, digest) = try root(of: authorization)
        try checkChange(authorization, change: change)
        if let problem = ReleaseCheck(authorization: authorization, policy: policy, artifact: manifest.digest)
            .rollbackProblem()
        {
            throw CoreRefusal.conflict("change \(change) may not be rolled back: \(problem)")
        }
        return digest
    }

    /// A policy carries the approved change it names; anything else must be that change's own.
    func checkChange(_ authorization: ChangeAuthorization, change: ChangeID) throws {
        guard authorization.change == change || change.hasPrefix("policy:") else {
            throw CoreRefusal.badRequest("the authorization is for change \(authorization.change), not \(change)")
        }
    }

    func checkScope(_ authorization: ChangeAuthorization, change: ChangeID, query: String, rings: [Ring]) throws {
        try checkChange(authorization, change: change)
        guard authorization.scope.targets == query else {
            throw CoreRefusal.conflict(
                "change \(change) is approved for targets '\(authorization.scope.targets)', not '\(query)': a wider or other scope needs a new approval")
        }
        guard (try? Ring.parseList(authorization.scope.rings)) == rings else {
            throw CoreRefusal.conflict(
                "change \(change) is approved with rings '\(authorization.scope.rings)', not this ring plan: another plan needs a new approval")
        }
    }

    static func percent(_ share: Double) -> String {
        String(format: "%.0f%%", (share.isFinite ? share : 0) * 100)
    }
}

/// What the gate found between a change and its activation.
struct ActivationBlockers: Sendable {
    /// The trust root the change's chain led to, and its policy (nil when it was refused).
    var root: SHA256Digest?
    var policy: ApprovalPolicy?
    /// Why the release is not approved: trust root, scope, evidence, approvals.
    var release: [String] = []
    /// Why an approved release may not activate yet: a freeze window, too few seeded targets.
    var timing: [String] = []
    /// A refusal of the trust root or the scope, with its own status.
    var refusal: CoreRefusal?

    var all: [String] { release + timing }
}
