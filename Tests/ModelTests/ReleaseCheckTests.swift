import Foundation
import Model
import Testing

/// The one release check the CLI, the core and the agents share, and the trust root chain.
@Suite struct ReleaseCheckTests {
    let ccb = [SigningKey(), SigningKey(), SigningKey()]
    let lab = SigningKey()
    let artifact = SHA256Digest(of: "greeterd_1.1.0_amd64.deb")
    let scope = ChangeScope(targets: "site = paris", rings: "canary:5%,all")

    var policy: ApprovalPolicy {
        let rule = StageRule(approvals: 2, roles: [.ccb])
        return ApprovalPolicy(
            approvers: [
                Approver(name: "alice", role: .ccb, key: ccb[0].publicKey.hex),
                Approver(name: "bob", role: .ccb, key: ccb[1].publicKey.hex),
                Approver(name: "carol", role: .tab, key: ccb[2].publicKey.hex),
            ],
            labKeys: [lab.publicKey.hex], rootThreshold: 2,
            changeTypes: [
                "normal": ChangeTypeRule(preliminary: rule, release: rule, lanes: ["install", "uninstall"]),
                "standard": ChangeTypeRule(preliminary: nil, release: nil, lanes: ["install"]),
            ],
            standardPackages: ["tzdata"])
    }

    func evidence(baselines: [String] = ["web", "db"], red: String? = nil, signer: SigningKey? = nil) throws
        -> SignedEnvelope
    {
        let cells = baselines.flatMap { name in
            ["install", "uninstall"].map { lane in
                EvidenceCell(
                    name: "\(name).\(lane)", baseline: BaselineRef(name: name, version: 3), imageDigest: nil, lane: lane,
                    verdict: name == red ? .failed : .passed, failure: name == red ? .product : nil,
                    delta: SHA256Digest(of: "{}"), violations: [], residue: false, commit: nil)
            }
        }
        return try (signer ?? lab).sign(
            EvidenceStatement(
                run: "run-1", package: "greeterd", version: "1.1.0", artifact: artifact, cells: cells,
                recordedAt: Date(timeIntervalSince1970: 0)),
            as: .evidence)
    }

    func approval(
        _ key: SigningKey, name: String, decision: ApprovalDecision = .approve, artifact: SHA256Digest? = nil,
        scope: ChangeScope? = nil, requester: String = "rita", evidence: [SignedEnvelope]
    ) throws -> SignedEnvelope {
        try key.sign(
            ApprovalStatement(
                change: "CHG-0001", stage: .release, decision: decision, changeType: .normal, package: "greeterd",
                requester: requester, approver: name, artifact: artifact ?? self.artifact,
                evidence: evidence.compactMap(\.payloadDigest), scope: scope ?? self.scope,
                signedAt: Date(timeIntervalSince1970: 0)),
            as: .approval)
    }

    func check(_ approvals: [SignedEnvelope], evidence: [SignedEnvelope], type: ChangeType = .normal) -> ReleaseCheck {
        ReleaseCheck(
            authorization: ChangeAuthorization(
                change: "CHG-0001", type: type, scope: scope, trustRoots: [], evidence: evidence, approvals: approvals),
            policy: policy, artifact: artifact)
    }

    @Test func twoDistinctCCBKeysOverTheDigestScopeAndEvidencePass() throws {
        let e = [try evidence()]
        let c = check([try approval(ccb[0], name: "alice", evidence: e), try approval(ccb[1], name: "bob", evidence: e)], evidence: e)
        #expect(c.problems(baseline: nil) == [])
        #expect(c.problems(baseline: "web") == [])
    }

    @Test func oneKeySigningTwiceCountsOnce() throws {
        let e = [try evidence()]
        let twice = [try approval(ccb[0], name: "alice", evidence: e), try approval(ccb[0], name: "bob", evidence: e)]
        #expect(check(twice, evidence: e).problems(baseline: nil).contains { $0.contains("1 of the 2 approval") })
    }

    @Test func aRoleTheRuleDoesNotNameSelfApprovalAndAVoidedDigestDoNotCount() throws {
        let e = [try evidence()]
        let tab = try approval(ccb[2], name: "carol", evidence: e)
        let own = try approval(ccb[1], name: "bob", requester: "bob", evidence: e)
        let rebuilt = try approval(ccb[1], name: "bob", artifact: SHA256Digest(of: "old build"), evidence: e)
        let wider = try approval(ccb[1], name: "bob", scope: ChangeScope(targets: "all", rings: "all"), evidence: e)
        for other in [tab, own, rebuilt, wider] {
            let problems = check([try approval(ccb[0], name: "alice", evidence: e), other], evidence: e).problems(baseline: nil)
            #expect(problems.contains { $0.contains("1 of the 2 approval") }, "\(problems)")
            #expect(problems.contains { $0.contains("does not count") }, "\(problems)")
        }
    }

    @Test func oneRejectionRejects() throws {
        let e = [try evidence()]
        let problems = check(
            [
                try approval(ccb[0], name: "alice", evidence: e), try approval(ccb[1], name: "bob", evidence: e),
                try approval(ccb[2], name: "carol", decision: .reject, evidence: e),
            ], evidence: e
        ).problems(baseline: nil)
        #expect(problems == ["carol rejected the release"])
    }

    @Test func evidenceFromAnotherKeyOrWithoutTheTargetsBaselineIsMissing() throws {
        let forged = [try evidence(signer: SigningKey())]
        let a = [try approval(ccb[0], name: "alice", evidence: forged), try approval(ccb[1], name: "bob", evidence: forged)]
        #expect(check(a, evidence: forged).problems(baseline: "web").contains { $0.contains("not the lab's") })

        let e = [try evidence(red: "db")]
        let b = [try approval(ccb[0], name: "alice", evidence: e), try approval(ccb[1], name: "bob", evidence: e)]
        #expect(check(b, evidence: e).problems(baseline: "web") == [])
        #expect(
            check(b, evidence: e).problems(baseline: "db") == [
                "the evidence has no green install cell on baseline db",
                "the evidence has no green uninstall cell on baseline db",
            ])
        #expect(check(b, evidence: e).problems(baseline: "mailrelay") == [
            "baseline not tested: the evidence has no cell on baseline mailrelay"
        ])
    }

    @Test func aStandardChangeNeedsNoVoteButItsPackageMustBePreAuthorisedAndTested() throws {
        let e = [try evidence()]
        let problems = check([], evidence: e, type: .standard).problems(baseline: "web")
        #expect(problems == ["greeterd is not pre-authorised as a standard change in the trust root"])
    }

    @Test func aNewTrustRootCountsOnlyWithTheThresholdOfTheOldOnesApprovers() throws {
        let first = try TrustChain.sign(policy, with: [ccb[0], ccb[1]])
        let pinned = try #require(first.payloadDigest)
        var next = policy
        next.version = 2
        next.approvers.removeAll { $0.name == "carol" }
        let byOne = try TrustChain.sign(next, with: [ccb[0]])
        #expect(throws: TrustRootRefusal.self) { try TrustChain.current([first, byOne], pinned: pinned) }
        let byTwo = try TrustChain.sign(next, with: [ccb[0], ccb[1]])
        let current = try TrustChain.current([first, byTwo], pinned: pinned)
        #expect(current.policy.version == 2)
        #expect(current.digest == byTwo.payloadDigest)
        // Once the second root is pinned, a chain that stops at the first is refused.
        #expect(throws: TrustRootRefusal.self) { try TrustChain.current([first], pinned: current.digest) }
        // A root whose version does not increase is refused even when well signed.
        var same = next
        same.timeZone = "Europe/Paris"
        let sideways = try TrustChain.sign(same, with: [ccb[0], ccb[1]])
        #expect(throws: TrustRootRefusal.self) { try TrustChain.current([first, byTwo, sideways], pinned: pinned) }
    }

    @Test func freezeWindowsHoldInThePolicysTimeZone() throws {
        let weekly = FreezeWindow(name: "weekend", weeklyFrom: "fri 16:00", weeklyUntil: "mon 06:00")
        let paris = try #require(TimeZone(identifier: "Europe/Paris"))
        // 2026-12-04 is a Friday: 15:30 UTC is 16:30 in Paris.
        let friday = Date(timeIntervalSince1970: 1_796_398_200)
        #expect(weekly.contains(friday, timeZone: paris))
        #expect(!weekly.contains(friday.addingTimeInterval(-3600), timeZone: paris))
        #expect(weekly.contains(friday.addingTimeInterval(2 * 86_400), timeZone: paris))
        #expect(!weekly.contains(friday.addingTimeInterval(4 * 86_400), timeZone: paris))
    }
}
