import AsyncHTTPClient
import Foundation
import HostIO
import Model
import Testing

@testable import Distribution

/// Attacks on the agent's job handling: each found a way to root (or to lose data) in the
/// engine before signed, agent-bound job tickets and the ledger outside the cache. Each
/// test was first run against the engine before that change and failed there.
@Suite(.serialized) struct HardeningTests {
    /// The core's own release key, as a compromised or buggy core would use it.
    static func coreKey(_ core: TestCore) throws -> ReleaseKey {
        try ReleaseKey.loadOrCreate(at: CoreLayout(directory: core.directory).releaseKey)
    }

    /// The jobs `agent` received for `change` of `kind`, newest last (what an eavesdropper
    /// or a compromised agent captures).
    static func captured(_ agent: Agent, _ kind: JobKind, change: String) async -> [Job] {
        await agent.recentJobs.filter { $0.claim?.kind == kind && $0.claim?.change == change }
    }

    /// A package whose postinst counts its runs in `counter` (one line per run).
    static func countingPackage(in dir: String, version: String, counter: String) async throws -> String {
        try await TestPackage.build(
            in: dir, version: version, size: 40_000, postinst: "echo \(version) >> '\(counter)'")
    }

    /// Publishes demo 1.0 as r1 and 1.1 as r2, both counting their postinst runs; returns the counter.
    static func publishOldAndNew(_ admin: CoreClient, in dir: String) async throws -> String {
        let counter = dir + "/postinst-runs"
        for (version, release) in [("1.0", "r1"), ("1.1", "r2")] {
            let deb = try await countingPackage(in: dir, version: version, counter: counter)
            _ = try await admin.publish(file: deb, release: release)
        }
        return counter
    }

    static func runs(_ counter: String) -> Int {
        ((try? String(contentsOfFile: counter, encoding: .utf8)) ?? "").split(separator: "\n").count
    }

    @Test func aJobWhoseChangeNamesAPathOutsideTheCacheIsRefusedAndDeletesNothing() async throws {
        try await withCore { core, scratch, http in
            let admin = try core.admin
            let deb = try await TestPackage.build(in: scratch.path, size: 50_000)
            _ = try await admin.publish(file: deb, release: "r1")
            let group = try await startAgents(["pc"], core: core, scratch: scratch, http: http)
            let agent = try #require(group.agents.first)
            let agentID = try #require(await agent.agentID)
            let victim = scratch.path + "/victim"
            try FileManager.default.createDirectory(atPath: victim, withIntermediateDirectories: true)
            try "precious\n".write(toFile: victim + "/keep", atomically: true, encoding: .utf8)
            _ = try await admin.promote("r1", .everyone())
            #expect(try await eventually { try await admin.status("r1").total.verified == 1 })
            let real = try #require(await Self.captured(agent, .seed, change: "r1").last)

            // 1. The change id of a real ticket rewritten on the way: the signature breaks.
            var ticket = try #require(real.claim)
            ticket.change = "../../../victim"
            var tampered = real
            tampered.ticket.payload = try StableJSON.data(ticket).base64EncodedString()
            await agent.handle(tampered)
            // 2. The core itself (compromised, or a bug) signs a traversal or an empty name.
            let key = try Self.coreKey(core)
            for name in ["../../../victim", "", "a/../../b"] {
                var signed = ticket
                signed.change = name
                signed.agent = agentID
                await agent.handle(Job(ticket: try key.sign(signed, as: .job), manifest: real.manifest))
            }
            #expect(FileManager.default.fileExists(atPath: victim + "/keep"), "a traversal job deleted a folder")
            #expect(FileManager.default.fileExists(atPath: scratch.path + "/agents/pc/cache"))
            // Refused, and the core heard why.
            #expect(
                await eventually {
                    (await core.server.coordinator.agentRecord(agentID)?.lastRefusal ?? "").contains("change id")
                })
            // The real job still works: the verified copy is where its digest says.
            #expect(try await admin.status("r1").total.verified == 1)
            await group.stop()
        }
    }

    @Test func aCapturedOrderReplayedAfterACacheWipeInstallsNothing() async throws {
        try await withCore { core, scratch, http in
            let admin = try core.admin
            let counter = try await Self.publishOldAndNew(admin, in: scratch.path)
            let group = try await startAgents(["pc"], core: core, scratch: scratch, http: http)
            let agent = try #require(group.agents.first)
            let root = scratch.path + "/roots/pc"
            for release in ["r1", "r2"] {
                _ = try await admin.promote(release, .everyone())
                #expect(try await eventually { try await admin.status(release).total.verified == 1 })
                _ = try await admin.activateApproved(release)
                #expect(try await eventually { try await admin.status(release).total.activated == 1 })
            }
            #expect(installed("demo", in: root) == "1.1")
            #expect(Self.runs(counter) == 2)
            let seeds = await Self.captured(agent, .seed, change: "r1")
            let activations = await Self.captured(agent, .activate, change: "r1")
                + Self.captured(agent, .activate, change: "r2")
            #expect(!seeds.isEmpty && activations.count >= 2)

            // The attacker empties the cache, then replays everything it captured.
            try FileManager.default.removeItem(atPath: scratch.path + "/agents/pc/cache")
            try FileManager.default.createDirectory(
                atPath: scratch.path + "/agents/pc/cache", withIntermediateDirectories: true)
            await agent.handle(seeds)
            let cache = AgentCache(directory: scratch.path + "/agents/pc/cache")
            #expect(await eventually { cache.entry("r1")?.phase == .verified })
            await agent.handle(activations)
            try await Task.sleep(for: .seconds(1))
            #expect(installed("demo", in: root) == "1.1", "a replayed order downgraded the package")
            #expect(Self.runs(counter) == 2, "a replayed order ran an installer again")
            await group.stop()
        }
    }

    @Test func anAgentTheQueryDidNotSelectIgnoresAnOrderCapturedFromATarget() async throws {
        try await withCore { core, scratch, http in
            let admin = try core.admin
            let deb = try await TestPackage.build(in: scratch.path, size: 50_000)
            _ = try await admin.publish(file: deb, release: "r1")
            let group = try await startAgents(["pc1", "pc2"], core: core, scratch: scratch, http: http)
            let target = try #require(group.agents.first)
            let outsider = try #require(group.agents.last)
            _ = try await admin.promote(
                "r1", PromoteRequest(release: nil, targets: "name = pc1", rings: nil, rate: nil, maxFailureRate: nil))
            _ = try await admin.activateApproved("r1")
            #expect(try await eventually { try await admin.status("r1").total.activated == 1 })
            let jobs = await Self.captured(target, .seed, change: "r1")
                + Self.captured(target, .activate, change: "r1")
            #expect(jobs.count >= 2)
            await outsider.handle(jobs)
            try await Task.sleep(for: .seconds(1))
            #expect(installed("demo", in: scratch.path + "/roots/pc2") == nil, "pc2 was never a target")
            let cache = AgentCache(directory: scratch.path + "/agents/pc2/cache")
            #expect(cache.entries().isEmpty, "pc2 seeded a job meant for pc1")
            let outsiderID = try #require(await outsider.agentID)
            #expect(
                await eventually {
                    (await core.server.coordinator.agentRecord(outsiderID)?.lastRefusal ?? "").contains("not this one")
                })
            await group.stop()
        }
    }

    @Test func aRollbackOfAChangeTheAgentNeverActivatedPurgesNothing() async throws {
        try await withCore { core, scratch, http in
            let admin = try core.admin
            let deb = try await TestPackage.build(in: scratch.path, size: 50_000)
            _ = try await admin.publish(file: deb, release: "r1")
            let group = try await startAgents(["pc"], core: core, scratch: scratch, http: http)
            let agent = try #require(group.agents.first)
            _ = try await admin.promote("r1", .everyone())
            _ = try await admin.activateApproved("r1")
            #expect(try await eventually { try await admin.status("r1").total.activated == 1 })
            // Even a correctly signed rollback for another change this agent never ran is refused.
            var ticket = try #require(await Self.captured(agent, .activate, change: "r1").last?.claim)
            let manifest = try #require(await Self.captured(agent, .activate, change: "r1").last?.manifest)
            ticket.kind = .rollback
            ticket.change = "r-other"
            ticket.order = "o-forged-rollback"
            ticket.sequence += 1_000_000
            // Even with a genuine rollback order for that change: the ledger says it installed nothing.
            let r1 = try #require(await core.server.coordinator.releases().first { $0.release == "r1" })
            let rollback = try TestAuthority.shared.rollingBack(
                try TestAuthority.shared.authorization(
                    change: "r-other", package: r1.package, version: r1.packageVersion, artifact: r1.digest,
                    baselines: ["minimal"]),
                artifact: r1.digest)
            await agent.handle(
                Job(ticket: try Self.coreKey(core).sign(ticket, as: .job), manifest: manifest, authorization: rollback))
            try await Task.sleep(for: .seconds(1))
            #expect(installed("demo", in: scratch.path + "/roots/pc") == "1.0", "the rollback purged the package")
            await group.stop()
        }
    }

    @Test func aPolicyThatWouldDowngradeIsRefusedOnceAndNotRetriedForever() async throws {
        try await withCore { core, scratch, http in
            let admin = try core.admin
            let counter = try await Self.publishOldAndNew(admin, in: scratch.path)
            let group = try await startAgents(["pc"], core: core, scratch: scratch, http: http)
            let agent = try #require(group.agents.first)
            let agentID = try #require(await agent.agentID)
            _ = try await admin.promote("r2", .everyone())
            _ = try await admin.activateApproved("r2")
            #expect(try await eventually { try await admin.status("r2").total.activated == 1 })
            // The inventory still lists 1.1 once the agent reported: the policy must still not loop.
            _ = try await admin.setApprovedPolicy("pin-old", targets: "all", release: "r1")
            #expect(
                try await eventually {
                    let reason = try await admin.chase("policy:pin-old").first?.reason
                    let target = await core.server.coordinator.target(agentID, change: "policy:pin-old")
                    return reason == "downgrade refused" || target == nil
                })
            try await Task.sleep(for: .seconds(4))
            if let target = await core.server.coordinator.target(agentID, change: "policy:pin-old") {
                #expect(target.activationAttempts <= 1, "the policy retried a refused downgrade")
                #expect(target.gaveUp)
            }
            #expect(installed("demo", in: scratch.path + "/roots/pc") == "1.1")
            #expect(Self.runs(counter) == 1)

            // A target that qualifies for a policy twice (set again, core restarted) installs once.
            _ = try await admin.setApprovedPolicy("newest", targets: "all", release: "r2")
            _ = try await admin.setApprovedPolicy("newest", targets: "all", release: "r2")
            try await Task.sleep(for: .seconds(3))
            #expect(Self.runs(counter) == 1)
            await group.stop()
        }
    }

    @Test func aPolicyInstallsOnceWhenItsTargetQualifiesAgain() async throws {
        try await withCore { core, scratch, http in
            let admin = try core.admin
            let counter = scratch.path + "/postinst-runs"
            let deb = try await Self.countingPackage(in: scratch.path, version: "1.0", counter: counter)
            _ = try await admin.publish(file: deb, release: "r1")
            let group = try await startAgents(["pc"], core: core, scratch: scratch, http: http)
            _ = try await admin.setApprovedPolicy("base", targets: "all", release: "r1")
            #expect(await eventually { Self.runs(counter) == 1 })
            #expect(try await eventually { try await admin.status("policy:base").total.activated == 1 })
            _ = try await admin.setApprovedPolicy("base", targets: "all", release: "r1")
            // The agent restarts (same identity and ledger) and qualifies again at check-in.
            await group.stop()
            let again = AgentGroup()
            _ = again.start(
                makeAgentConfiguration(core: core, base: scratch.path, name: "pc", token: "", key: await core.key),
                http: http)
            try await Task.sleep(for: .seconds(4))
            #expect(Self.runs(counter) == 1, "the target installed the policy's release twice")
            #expect(try await admin.status("policy:base").total.activated == 1)
            await again.stop()
        }
    }

    @Test func aCacheEntryOfAnUnknownFormatIsRefusedNotWiped() async throws {
        try await withCore { core, scratch, http in
            let admin = try core.admin
            let deb = try await TestPackage.build(in: scratch.path, size: 50_000)
            _ = try await admin.publish(file: deb, release: "r1")
            let group = try await startAgents(["pc"], core: core, scratch: scratch, http: http)
            let cache = AgentCache(directory: scratch.path + "/agents/pc/cache")
            let folder = (cache.packagePath("r1") as NSString).deletingLastPathComponent
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
            try #"{"version": 99, "change": "r1"}"#.write(
                toFile: folder + "/entry.json", atomically: true, encoding: .utf8)
            try "written by a newer changelab\n".write(toFile: folder + "/keep", atomically: true, encoding: .utf8)
            _ = try await admin.promote("r1", .everyone())
            #expect(
                try await eventually {
                    (try await admin.chase("r1").first?.detail ?? "").contains("has format 99")
                })
            #expect(FileManager.default.fileExists(atPath: folder + "/keep"))
            await group.stop()
        }
    }

    @Test func anAgentOfTheOlderProtocolIsToldToUpgrade() async throws {
        try await withCore { core, scratch, http in
            let admin = try core.admin
            let token = try await admin.createToken(uses: 1, lifetime: 600)
            struct OldEnrol: Encodable { var token: String; var name: String; var segment: String; var addresses: [String]; var attributes: [String: String] }
            let link = HTTPLink(baseURL: core.url, credential: nil, client: http)
            do {
                _ = try await link.post(
                    "/v1/enrol", OldEnrol(token: token.token, name: "old", segment: "s1", addresses: [], attributes: [:]),
                    as: EnrolReply.self)
                Issue.record("an agent of protocol 1 was enrolled")
            } catch {
                #expect("\(error)".contains("upgrade changelab on the agent"), "\(error)")
            }
        }
    }

    @Test func agentsFollowAKeyRotationAndThenObeyOnlyTheNewKey() async throws {
        try await withCore { core, scratch, http in
            let admin = try core.admin
            let first = try await TestPackage.build(in: scratch.path, version: "1.0", size: 40_000)
            let second = try await TestPackage.build(in: scratch.path, version: "1.1", size: 40_000)
            _ = try await admin.publish(file: first, release: "r1")
            let group = try await startAgents(["pc"], core: core, scratch: scratch, http: http)
            let agent = try #require(group.agents.first)
            let old = try Self.coreKey(core)
            // Through the admin API, as `changelab core rotate-key` does it.
            let reply = try await admin.rotateReleaseKey()
            let new = try #require(ReleasePublicKey(hex: reply["key"] ?? ""))
            #expect(reply["previous"] == old.publicKey.hex)
            #expect(try Self.coreKey(core).publicKey == new)
            _ = try await admin.publish(file: second, release: "r2")
            _ = try await admin.promote("r2", .everyone())
            _ = try await admin.activateApproved("r2")
            // Bounded loosely: 9.5 s alone beside a CPU hog, over 30 s with every suite beside it.
            #expect(try await eventually(.seconds(90)) { try await admin.status("r2").total.activated == 1 })
            // The old key, stolen after the rotation, no longer commands the agent.
            var ticket = try #require(await Self.captured(agent, .activate, change: "r2").last?.claim)
            let manifest = try await core.server.coordinator.signedManifest(for: "r1")
            ticket.change = "r1"
            ticket.release = "r1"
            ticket.order = "o-old-key"
            ticket.sequence += 1_000_000
            let r1 = try #require(await core.server.coordinator.releases().first { $0.release == "r1" })
            ticket.digest = r1.digest
            await agent.handle(
                Job(ticket: try old.sign(ticket, as: .job), manifest: try #require(manifest)))
            try await Task.sleep(for: .seconds(1))
            #expect(installed("demo", in: scratch.path + "/roots/pc") == "1.1")
            let stored = try String(contentsOfFile: scratch.path + "/agents/pc/core-key.json", encoding: .utf8)
            #expect(stored.contains(new.hex))
            await group.stop()
        }
    }
}

@Suite struct AgentInputTests {
    @Test func theCheckInDelayFromTheCoreIsAlwaysASaneNumber() {
        #expect(Agent.checkInDelay(.nan, cap: nil) == 30)
        #expect(Agent.checkInDelay(.infinity, cap: nil) == 30)
        #expect(Agent.checkInDelay(1e300, cap: nil) == 3600)
        #expect(Agent.checkInDelay(-5, cap: nil) == 0.05)
        #expect(Agent.checkInDelay(10, cap: 1) == 1)
        #expect(Agent.checkInDelay(10, cap: .nan) == 10)
    }

    @Test func theLedgerRefusesDowngradesButNotTheRollbackItRecorded() throws {
        var ledger = AgentLedger()
        let digest = SHA256Digest(of: "x")
        let ticket = JobTicket(
            kind: .activate, change: "c2", release: "r2", digest: digest, agent: "a", sequence: 5, order: "o2",
            origin: "change", rate: nil, attempt: 1, issuedAt: Date())
        let ok = InstallResult(exitCode: 0, outputTail: "", failure: nil)
        ledger.activated(ticket, order: "o2", package: "demo", version: "1.10", previous: "1.9", result: ok, now: Date())
        #expect(ledger.downgrade(package: "demo", to: "1.9") != nil)
        #expect(ledger.downgrade(package: "demo", to: "1.10") == nil)
        #expect(ledger.downgrade(package: "demo", to: "1.10+b1") == nil)
        #expect(ledger.downgrade(package: "other", to: "0.1") == nil)
        var rollback = ticket
        rollback.kind = .rollback
        rollback.sequence = 6
        ledger.rolledBack(rollback, order: "o3", result: ok, now: Date())
        #expect(ledger.downgrade(package: "demo", to: "1.9") == nil)
        #expect(ledger.installs["c2"] == nil)
        #expect(ledger.executed["o2"] != nil && ledger.executed["o3"] != nil)
        #expect(ledger.lastSequence["c2"] == 6)
    }

    @Test func aDamagedLedgerStopsTheAgentInsteadOfForgetting() throws {
        let scratch = Scratch()
        defer { scratch.cleanup() }
        let file = LedgerFile(stateDirectory: scratch.path)
        #expect(try file.load() == AgentLedger())
        try "{ not json".write(toFile: file.path, atomically: true, encoding: .utf8)
        #expect(throws: ChangelabError.self) { try file.load() }
    }
}

@Suite struct AgentUpgradeTests {
    @Test func anAgentUpgradedInPlaceMovesItsCacheAndKeepsWhatItInstalled() throws {
        let scratch = Scratch()
        defer { scratch.cleanup() }
        let cache = AgentCache(directory: scratch.path + "/cache")
        let manifest = ReleaseManifest(
            release: "r1", package: "demo", packageVersion: "1.1", size: 0, digest: SHA256Digest(of: Data()),
            chunkSize: 4096, chunks: [], publishedAt: Date())
        // An entry as the agent before the ledger wrote it: cache/<change>/, orders inside.
        let entry = try cache.open(
            change: "r1", manifest: manifest, signed: SignedEnvelope(payloadType: "", payload: "", signatures: []))
        var json = try #require(
            try JSONSerialization.jsonObject(with: StableJSON.data(entry)) as? [String: Any])
        json["phase"] = "activated"
        json["ordersDone"] = ["o-legacy"]
        json["previousVersion"] = "1.0"
        let old = scratch.path + "/cache/r1"
        try FileManager.default.moveItem(
            atPath: (cache.packagePath("r1") as NSString).deletingLastPathComponent, toPath: old)
        try JSONSerialization.data(withJSONObject: json).write(to: URL(fileURLWithPath: old + "/entry.json"))
        // A folder named like a traversal is not touched.
        try FileManager.default.createDirectory(atPath: scratch.path + "/cache/..x", withIntermediateDirectories: true)

        let records = cache.migrateLegacyLayout()
        #expect(records.map(\.change) == ["r1"])
        #expect(cache.entry("r1")?.release == "r1")
        #expect(!FileManager.default.fileExists(atPath: old))
        #expect(FileManager.default.fileExists(atPath: scratch.path + "/cache/..x"))
        var ledger = AgentLedger()
        for record in records { ledger.adopt(record, now: Date()) }
        #expect(ledger.installs["r1"] == AgentLedger.Install(package: "demo", version: "1.1", previousVersion: "1.0"))
        #expect(ledger.executed["o-legacy"] != nil)
        #expect(ledger.downgrade(package: "demo", to: "1.0") != nil)
    }
}
