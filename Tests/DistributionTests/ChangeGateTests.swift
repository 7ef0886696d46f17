import AsyncHTTPClient
import Distribution
import Foundation
import HostIO
import Model
import Testing

/// Change control enforced twice: the core refuses activations its approvers did not sign,
/// and every agent checks the approvals and the lab's evidence again, offline, against the
/// trust root it was given out of band — so a compromised core installs nothing.
@Suite struct ChangeGateTests {
    /// A job for `agent` signed with the core's own key (what a compromised core can send).
    static func forgedActivation(
        _ core: TestCore, agent: Agent, change: String, authorization: ChangeAuthorization?
    ) async throws -> Job {
        let seed = try #require(await HardeningTests.captured(agent, .seed, change: change).last)
        var ticket = try #require(seed.claim)
        ticket.kind = .activate
        ticket.order = "o-forged-\(UUID().uuidString.prefix(8))"
        ticket.sequence += 1_000_000
        let key = try HardeningTests.coreKey(core)
        return Job(ticket: try key.sign(ticket, as: .job), manifest: seed.manifest, authorization: authorization)
    }

    /// Publishes demo 1.0 as `r1`, starts agents and seeds them.
    static func seeded(
        _ core: TestCore, scratch: Scratch, http: HTTPClient, names: [String] = ["pc"],
        attributes: [String: [String: String]] = [:], targets: String = "all"
    ) async throws -> (AgentGroup, ReleaseManifest) {
        let admin = try core.admin
        let deb = try await TestPackage.build(in: scratch.path, size: 40_000)
        let manifest = try await admin.publish(file: deb, release: "r1")
        let group = AgentGroup()
        let token = try await admin.createToken(uses: names.count, lifetime: 600)
        for name in names {
            let configuration = makeAgentConfiguration(
                core: core, base: scratch.path, name: name, attributes: attributes[name] ?? [:], token: token.token,
                key: await core.key)
            _ = group.start(configuration, http: http)
        }
        #expect(try await eventually { try await admin.agents().count == names.count })
        _ = try await admin.promote(
            "r1", PromoteRequest(release: nil, targets: targets, rings: nil, rate: nil, maxFailureRate: nil))
        #expect(try await eventually { try await admin.status("r1").total.verified == names.count })
        return (group, manifest)
    }

    @Test func theFleetInstallsNothingWhenACompromisedCoreSwapsTheTrustRootAddsAnApproverOrReSignsTheEvidence()
        async throws
    {
        // The core trusts an attacker's root; the agents were enrolled with the real one.
        let attacker = try ThrowawayAuthority()
        var settings = TestCore.fastSettings
        settings.trustRoot = attacker.digest
        try await withCore(settings: settings) { core, scratch, http in
            let admin = try core.admin
            let (group, manifest) = try await Self.seeded(core, scratch: scratch, http: http)
            let agent = try #require(group.agents.first)
            let root = scratch.path + "/roots/pc"

            // 1. A swapped trust list: the core accepts it and relays it, the agent does not.
            let swapped = try attacker.authorization(
                change: "r1", package: manifest.package, version: manifest.packageVersion, artifact: manifest.digest,
                baselines: ["minimal"])
            _ = try await admin.activate("r1", authorization: swapped)
            #expect(try await eventually { try await admin.chase("r1").first?.reason == "not approved" })
            let entry = try #require(try await admin.chase("r1").first)
            #expect(entry.detail.contains("pinned"), "the refusal names the pinned trust root: \(entry.detail)")

            // 2. An extra approver key: a new root adding the attacker's approvers, signed by them alone.
            let real = TestAuthority.shared
            var widened = real.policy
            widened.version += 1
            widened.approvers += attacker.approvers.map { Approver(name: "x-" + $0.name, role: .ccb, key: $0.key.publicKey.hex) }
            let widenedRoot = try TrustChain.sign(widened, with: attacker.approvers.map(\.key))
            let scope = ChangeScope(targets: "all")
            let evidence = [
                try real.evidence(
                    package: manifest.package, version: manifest.packageVersion, artifact: manifest.digest,
                    baselines: ["minimal"])
            ]
            let extraApprovers = ChangeAuthorization(
                change: "r1", type: .normal, scope: scope, trustRoots: [real.root, widenedRoot], evidence: evidence,
                approvals: try attacker.approvals(
                    change: "r1", package: manifest.package, artifact: manifest.digest, scope: scope, evidence: evidence))
            await agent.handle(try await Self.forgedActivation(core, agent: agent, change: "r1", authorization: extraApprovers))

            // 3. Evidence re-signed with a new lab key, approved by the real CCB.
            let fakeLab = SigningKey()
            let resigned = [
                try real.evidence(
                    package: manifest.package, version: manifest.packageVersion, artifact: manifest.digest,
                    baselines: ["minimal"], signer: fakeLab)
            ]
            let relabelled = ChangeAuthorization(
                change: "r1", type: .normal, scope: scope, trustRoots: [real.root], evidence: resigned,
                approvals: try real.approvals(
                    change: "r1", package: manifest.package, artifact: manifest.digest, scope: scope, evidence: resigned))
            await agent.handle(try await Self.forgedActivation(core, agent: agent, change: "r1", authorization: relabelled))

            // 4. And no approvals at all, from a core with the stolen key.
            await agent.handle(try await Self.forgedActivation(core, agent: agent, change: "r1", authorization: nil))
            try await Task.sleep(for: .seconds(1))
            #expect(installed("demo", in: root) == nil, "the agent installed a package its trust root never approved")
            #expect(try await admin.status("r1").total.activated == 0)

            // The same agent installs what the real CCB approved (the checks are not just closed).
            let genuine = try await admin.authorization(for: "r1")
            await agent.handle(try await Self.forgedActivation(core, agent: agent, change: "r1", authorization: genuine))
            #expect(await eventually { installed("demo", in: root) == "1.0" })
            await group.stop()
        }
    }

    @Test func anApprovalBelowThresholdIsRefusedByTheCoreAndByTheAgentEvenWhenTheCoreSendsIt() async throws {
        try await withCore { core, scratch, http in
            let admin = try core.admin
            let (group, _) = try await Self.seeded(core, scratch: scratch, http: http)
            let agent = try #require(group.agents.first)
            let one = try await admin.authorization(for: "r1", approvals: 1)
            do {
                _ = try await admin.activate("r1", authorization: one)
                Issue.record("the core activated a change with one of two approvals")
            } catch {
                #expect("\(error)".contains("1 of the 2 approval"), "\(error)")
            }
            await agent.handle(try await Self.forgedActivation(core, agent: agent, change: "r1", authorization: one))
            try await Task.sleep(for: .seconds(1))
            #expect(installed("demo", in: scratch.path + "/roots/pc") == nil)
            // The agent said why: the target is chased as not approved.
            #expect(try await eventually { try await admin.chase("r1").first?.reason == "not approved" })
            await group.stop()
        }
    }

    @Test func aTargetWhoseBaselineWasNeverTestedRefusesAndIsChasedAsBaselineNotTested() async throws {
        try await withCore { core, scratch, http in
            let admin = try core.admin
            let (group, _) = try await Self.seeded(
                core, scratch: scratch, http: http, names: ["pc-min", "pc-web"],
                attributes: ["pc-min": ["baseline": "minimal@1"], "pc-web": ["baseline": "web@2"]])
            // The lab tested minimal only: the core lets it through (the evidence is genuine),
            // the web target refuses on its own.
            _ = try await admin.activate("r1", authorization: try await admin.authorization(for: "r1", baselines: ["minimal"]))
            #expect(try await eventually { try await admin.status("r1").total.activated == 1 })
            #expect(
                try await eventually {
                    try await admin.chase("r1").contains { $0.name == "pc-web" && $0.reason == "baseline not tested" }
                })
            #expect(installed("demo", in: scratch.path + "/roots/pc-min") == "1.0")
            #expect(installed("demo", in: scratch.path + "/roots/pc-web") == nil)
            // Evidence for web arrives: the chased target gets another try and installs.
            _ = try await admin.activate(
                "r1", authorization: try await admin.authorization(for: "r1", baselines: ["minimal", "web"]))
            #expect(try await eventually { try await admin.status("r1").total.activated == 2 })
            await group.stop()
        }
    }

    @Test func aRebuiltArtifactOrAWiderScopeVoidsTheApprovalAtTheCoreAndTheAgent() async throws {
        try await withCore { core, scratch, http in
            let admin = try core.admin
            let (group, manifest) = try await Self.seeded(
                core, scratch: scratch, http: http, names: ["pc1", "pc2"],
                attributes: ["pc1": ["site": "paris"], "pc2": ["site": "lyon"]])
            let pc2 = try #require(group.agents.last)
            // Approved for another digest (the artifact before a rebuild).
            let rebuilt = try TestAuthority.shared.authorization(
                change: "r1", package: manifest.package, version: manifest.packageVersion,
                artifact: SHA256Digest(of: "the artifact before the rebuild"), baselines: ["minimal"])
            await #expect(throws: (any Error).self) { _ = try await admin.activate("r1", authorization: rebuilt) }
            // Approved for Paris only, promoted to all.
            let paris = try TestAuthority.shared.authorization(
                change: "r1", package: manifest.package, version: manifest.packageVersion, artifact: manifest.digest,
                baselines: ["minimal"], scope: ChangeScope(targets: "site = paris"))
            do {
                _ = try await admin.activate("r1", authorization: paris)
                Issue.record("the core activated beyond the approved scope")
            } catch {
                #expect("\(error)".contains("approved for targets 'site = paris'"), "\(error)")
            }
            // A core that sends it anyway: the Lyon agent sees it is outside the approved targets.
            await pc2.handle(try await Self.forgedActivation(core, agent: pc2, change: "r1", authorization: paris))
            await pc2.handle(try await Self.forgedActivation(core, agent: pc2, change: "r1", authorization: rebuilt))
            try await Task.sleep(for: .seconds(1))
            #expect(installed("demo", in: scratch.path + "/roots/pc2") == nil)
            #expect(try await admin.status("r1").total.activated == 0)
            await group.stop()
        }
    }

    @Test func aRollbackNeedsAnOrderSignedByARoleThatMayRollBackAtTheCoreAndTheAgent() async throws {
        try await withCore { core, scratch, http in
            let admin = try core.admin
            let (group, _) = try await Self.seeded(core, scratch: scratch, http: http)
            let agent = try #require(group.agents.first)
            let root = scratch.path + "/roots/pc"
            _ = try await admin.activateApproved("r1")
            #expect(try await eventually { try await admin.status("r1").total.activated == 1 })
            // The core refuses a rollback no approver signed.
            do {
                _ = try await admin.rollback("r1")
                Issue.record("the core ordered a rollback without a signed order")
            } catch {
                #expect("\(error)".contains("rollback"), "\(error)")
            }
            // A core with the stolen key sends one anyway, with the release approvals only.
            var forged = try await Self.forgedActivation(
                core, agent: agent, change: "r1", authorization: try await admin.authorization(for: "r1"))
            var ticket = try #require(forged.claim)
            ticket.kind = .rollback
            forged.ticket = try HardeningTests.coreKey(core).sign(ticket, as: .job)
            await agent.handle(forged)
            try await Task.sleep(for: .seconds(1))
            #expect(installed("demo", in: root) == "1.0", "a rollback nobody signed purged the package")
            // A CCB member's order rolls it back.
            _ = try await admin.rollbackApproved("r1")
            #expect(await eventually { installed("demo", in: root) == nil })
            await group.stop()
        }
    }
}
