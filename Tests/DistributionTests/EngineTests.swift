import AsyncHTTPClient
import Foundation
import HostIO
import Model
import NIOCore
import Testing

@testable import Distribution

/// The engine end to end over real HTTP on loopback, real files and real dpkg into
/// per-agent roots; agents run in this process.
@Suite(.serialized) struct EngineTests {
    @Test func seedsVerifiesAndActivatesIntoEachAgentsOwnRoot() async throws {
        try await withCore { core, scratch, http in
            let deb = try await TestPackage.build(in: scratch.path, size: 900_000)
            let admin = try core.admin
            let manifest = try await admin.publish(file: deb, release: "demo-1.0", chunkSize: 64 * 1024)
            let token = try await admin.createToken(uses: 3, lifetime: 600)
            let key = await core.key
            #expect(token.coreKey == key.hex)
            let group = AgentGroup()
            for (i, site) in ["paris", "paris", "lyon"].enumerated() {
                _ = group.start(
                    makeAgentConfiguration(
                        core: core, base: scratch.path, name: "pc\(i)", segment: "s\(i % 2)",
                        attributes: ["site": site],
                        token: token.token, key: key), http: http)
            }
            #expect(try await eventually { try await admin.agents().count == 3 })
            let promoted = try await admin.promote(
                "demo-1.0",
                PromoteRequest(release: nil, targets: "site = paris", rings: nil, rate: nil, maxFailureRate: nil))
            #expect(promoted.total.targets == 2)
            #expect(try await eventually { try await admin.status("demo-1.0").total.verified == 2 })
            // Seeding alone installs nothing.
            #expect(installed("demo", in: scratch.path + "/roots/pc0") == nil)

            let started = ContinuousClock.now
            _ = try await admin.activateApproved("demo-1.0")
            #expect(try await eventually { try await admin.status("demo-1.0").total.activated == 2 })
            let elapsed = ContinuousClock.now - started
            #expect(elapsed < .seconds(20))
            #expect(installed("demo", in: scratch.path + "/roots/pc0") == "1.0")
            #expect(installed("demo", in: scratch.path + "/roots/pc1") == "1.0")
            #expect(installed("demo", in: scratch.path + "/roots/pc2") == nil, "lyon was not targeted")

            let status = try await admin.status("demo-1.0")
            #expect(status.total.bytesSent == 2 * manifest.size, "each target fetched the package exactly once")
            #expect(status.segments.map(\.segment) == ["s0", "s1"])
            #expect(try await admin.chase("demo-1.0").isEmpty)
            // The activation result carries the post-install inventory.
            let agents = try await admin.agents()
            let pc0 = try #require(agents.first { $0.name == "pc0" })
            #expect(
                try await eventually {
                    await core.server.coordinator.inventory(of: pc0.id)?.packages.first { $0.name == "demo" }?.version
                        == "1.0"
                })
            let target = try #require(await core.server.coordinator.target(pc0.id, change: "demo-1.0"))
            #expect(target.exitCode == 0)
            #expect(target.outputTail?.contains("Setting up demo (1.0)") == true)
            await group.stop()
        }
    }

    @Test func jobsArePushedOverTheStreamWithoutWaitingForACheckIn() async throws {
        var settings = TestCore.fastSettings
        settings.checkInInterval = 600
        settings.offlineAfter = 1800
        try await withCore(settings: settings) { core, scratch, http in
            let admin = try core.admin
            let deb = try await TestPackage.build(in: scratch.path, size: 100_000)
            _ = try await admin.publish(file: deb, release: "r1")
            let token = try await admin.createToken(uses: 1, lifetime: 600)
            var configuration = makeAgentConfiguration(
                core: core, base: scratch.path, name: "pc", token: token.token, key: await core.key)
            configuration.maxCheckInInterval = nil
            let group = AgentGroup()
            _ = group.start(configuration, http: http)
            #expect(try await eventually { try await admin.agents().count == 1 })
            try await Task.sleep(for: .milliseconds(500))
            // The next check-in is ten minutes away: only the stream can bring these jobs.
            _ = try await admin.promote("r1", .everyone())
            #expect(try await eventually(.seconds(10)) { try await admin.status("r1").total.verified == 1 })
            _ = try await admin.activateApproved("r1")
            #expect(try await eventually(.seconds(10)) { try await admin.status("r1").total.activated == 1 })
            await group.stop()
        }
    }

    @Test func anAgentThatStopsReportingShowsAsOfflineOnTheChaseList() async throws {
        var settings = TestCore.fastSettings
        settings.offlineAfter = 1.5
        try await withCore(settings: settings) { core, scratch, http in
            let admin = try core.admin
            let deb = try await TestPackage.build(in: scratch.path, size: 20_000)
            _ = try await admin.publish(file: deb, release: "r1")
            let token = try await admin.createToken(uses: 1, lifetime: 600)
            let group = AgentGroup()
            _ = group.start(
                makeAgentConfiguration(
                    core: core, base: scratch.path, name: "pc", token: token.token, key: await core.key),
                http: http)
            #expect(try await eventually { try await admin.agents().first?.online == true })
            await group.stop()
            _ = try await admin.promote("r1", .everyone())
            // Alone on its segment: nobody is online there to wake it, and the reason says so.
            #expect(try await eventually { try await admin.chase("r1").first?.reason == "offline, no one to wake it" })
            #expect(try await admin.status("r1").total.offline == 1)
            #expect(try await admin.agents().first?.online == false)
        }
    }

    @Test func checkInsCarryTheInventoryOnlyWhenTheCoreDoesNotHoldIt() async throws {
        try await withCore { core, scratch, http in
            let admin = try core.admin
            let token = try await admin.createToken(uses: 1, lifetime: 600)
            let link = HTTPLink(baseURL: core.url, credential: nil, client: http)
            let reply = try await link.post(
                "/v1/enrol", EnrolRequest(token: token.token, name: "pc", segment: "s", addresses: [], attributes: [:]),
                as: EnrolReply.self)
            let agent = HTTPLink(baseURL: core.url, credential: "\(reply.agent):\(reply.secret)", client: http)
            let inventory = InventorySnapshot(
                hostname: "pc", packages: [PackageRecord(name: "openssl", architecture: "amd64", version: "3.0.9-1")])
            func checkIn(_ sent: InventorySnapshot?, digest: String) async throws -> CheckInReply {
                try await agent.post(
                    "/v1/agent/checkin",
                    CheckIn(
                        name: "pc", segment: "s", addresses: [], attributes: [:], inventory: sent,
                        inventoryDigest: digest,
                        cache: []), as: CheckInReply.self)
            }
            // Only a digest, for an inventory the core never saw: it asks for the whole thing.
            #expect(try await checkIn(nil, digest: inventory.digest).sendInventory == true)
            #expect(try await checkIn(inventory, digest: inventory.digest).sendInventory == nil)
            // From now on the digest is enough, and queries see the inventory.
            #expect(try await checkIn(nil, digest: inventory.digest).sendInventory == nil)
            #expect(await core.server.coordinator.inventory(of: reply.agent) == inventory)
            let deb = try await TestPackage.build(in: scratch.path, size: 10_000)
            _ = try await admin.publish(file: deb, release: "r1")
            let promoted = try await admin.promote(
                "r1",
                PromoteRequest(
                    release: nil, targets: "package:openssl < 3.0.13", rings: nil, rate: nil, maxFailureRate: nil))
            #expect(promoted.total.targets == 1)
        }
    }

    @Test func unknownAndRevokedAgentsAreRefused() async throws {
        try await withCore { core, scratch, http in
            let admin = try core.admin
            let link = HTTPLink(baseURL: core.url, credential: nil, client: http)
            // A made-up enrolment token.
            await #expect(throws: LinkError.self) {
                _ = try await link.post(
                    "/v1/enrol", EnrolRequest(token: "nope", name: "x", segment: "s", addresses: [], attributes: [:]),
                    as: EnrolReply.self)
            }
            // A one-time token works once.
            let token = try await admin.createToken(uses: 1, lifetime: 600)
            let request = EnrolRequest(token: token.token, name: "pc", segment: "s", addresses: [], attributes: [:])
            let reply = try await link.post("/v1/enrol", request, as: EnrolReply.self)
            do {
                _ = try await link.post("/v1/enrol", request, as: EnrolReply.self)
                Issue.record("a used token enrolled a second agent")
            } catch let error as LinkError {
                #expect(error.status == 401)
            }
            let checkIn = CheckIn(
                name: "pc", segment: "s", addresses: [], attributes: [:], inventory: InventorySnapshot(),
                inventoryDigest: InventorySnapshot().digest, cache: [])
            let agent = HTTPLink(baseURL: core.url, credential: "\(reply.agent):\(reply.secret)", client: http)
            _ = try await agent.post("/v1/agent/checkin", checkIn, as: CheckInReply.self)
            // Wrong secret, unknown agent, no credential.
            for credential in ["\(reply.agent):wrong", "a-unknown:\(reply.secret)", nil] {
                let other = HTTPLink(baseURL: core.url, credential: credential, client: http)
                do {
                    _ = try await other.post("/v1/agent/checkin", checkIn, as: CheckInReply.self)
                    Issue.record("credential \(credential ?? "none") was accepted")
                } catch let error as LinkError {
                    #expect(error.status == 401)
                }
            }
            try await admin.revoke(agent: reply.agent)
            do {
                _ = try await agent.post("/v1/agent/checkin", checkIn, as: CheckInReply.self)
                Issue.record("a revoked agent checked in")
            } catch let error as LinkError {
                #expect(error.status == 401)
                #expect("\(error)".contains("revoked"))
            }
            // Nor can it download artifacts.
            let deb = try await TestPackage.build(in: scratch.path, size: 10_000)
            let manifest = try await admin.publish(file: deb, release: "r1")
            let response = try await http.execute(
                agent.request(.GET, "/v1/artifacts/sha256/\(manifest.digest.hex)"), timeout: .seconds(10))
            #expect(response.status.code == 401)
            // The admin API wants the admin token.
            let intruder = CoreClient(url: core.url, adminToken: "guess", client: http)
            await #expect(throws: LinkError.self) { _ = try await intruder.agents() }
        }
    }

    @Test func aCorruptedOrTruncatedDownloadIsDetectedAndFetchedAgain() async throws {
        try await withCore { core, scratch, http in
            let admin = try core.admin
            let deb = try await TestPackage.build(in: scratch.path, size: 800_000)
            let manifest = try await admin.publish(file: deb, release: "r1", chunkSize: 64 * 1024)
            // First response: a flipped byte in chunk 3; second: cut off in chunk 6; then honest.
            let proxy = try await FaultyMirror.start(
                upstream: core.url, http: http, credential: try core.adminCredential,
                faults: [.corrupt(at: 3 * 65536 + 100), .truncate(after: 3 * 65536)])
            defer { proxy.stop() }
            let group = try await startAgents(["pc"], core: core, scratch: scratch, http: http) {
                $0.artifactURL = proxy.url
            }
            _ = try await admin.promote("r1", .everyone())
            #expect(try await eventually { try await admin.status("r1").total.verified == 1 })
            await group.stop()
            // Verified whole, within the first attempt, after three requests.
            let cached = try Data(contentsOf: URL(fileURLWithPath: AgentCache(directory: "\(scratch.path)/agents/pc/cache").packagePath("r1")))
            #expect(SHA256Digest(of: cached) == manifest.digest)
            let agent = try #require(try await admin.agents().first)
            #expect(await core.server.coordinator.target(agent.id, change: "r1")?.seedAttempts == 1)
            let ranges = proxy.requestedRanges
            #expect(ranges.count == 3)
            // A mirror serves verified content and never sees the agent's credential.
            #expect(proxy.credentialsSeen.isEmpty)
            // The retries start at the first chunk not yet verified: the corrupt chunk 3 is fetched again.
            #expect(ranges.first == "bytes=0-")
            #expect(ranges.dropFirst().first == "bytes=\(3 * 65536)-")
        }
    }

    @Test func aSourceThatKeepsSendingDamagedDataShowsAsHashMismatch() async throws {
        try await withCore { core, scratch, http in
            let admin = try core.admin
            let deb = try await TestPackage.build(in: scratch.path, size: 300_000)
            _ = try await admin.publish(file: deb, release: "r1", chunkSize: 64 * 1024)
            let proxy = try await FaultyMirror.start(
                upstream: core.url, http: http, credential: try core.adminCredential, faults: Array(repeating: .corrupt(at: 70_000), count: 100))
            defer { proxy.stop() }
            let group = try await startAgents(["pc"], core: core, scratch: scratch, http: http) {
                $0.artifactURL = proxy.url
            }
            _ = try await admin.promote("r1", .everyone())
            #expect(try await eventually { try await admin.chase("r1").first?.reason == "hash mismatch" })
            // Redeployed with back-off until the attempts ran out.
            #expect(try await eventually { try await admin.chase("r1").first?.gaveUp == true })
            let entry = try #require(try await admin.chase("r1").first)
            #expect(entry.seedAttempts == 3)
            #expect(entry.detail.contains("SHA-256"))
            await group.stop()
            #expect(installed("demo", in: scratch.path + "/roots/pc") == nil)
        }
    }

    @Test func anArtifactSourceThatKeepsFailingShowsAsDownloadFailed() async throws {
        try await withCore { core, scratch, http in
            let admin = try core.admin
            let deb = try await TestPackage.build(in: scratch.path, size: 50_000)
            _ = try await admin.publish(file: deb, release: "r1")
            let token = try await admin.createToken(uses: 1, lifetime: 600)
            var configuration = makeAgentConfiguration(
                core: core, base: scratch.path, name: "pc", token: token.token, key: await core.key,
                artifactURL: core.url + "/broken-mirror")
            configuration.downloadRetryDelay = .milliseconds(20)
            let group = AgentGroup()
            _ = group.start(configuration, http: http)
            #expect(try await eventually { try await admin.agents().count == 1 })
            _ = try await admin.promote("r1", .everyone())
            #expect(try await eventually { try await admin.chase("r1").first?.reason == "download failed" })
            let entry = try #require(try await admin.chase("r1").first)
            #expect(entry.detail.contains("HTTP 404"), "\(entry)")
            #expect(entry.seedAttempts >= 1)
            await group.stop()
        }
    }

    @Test func forgedOrUnsignedManifestsAndOrdersAreRefusedAndReported() async throws {
        try await withCore { core, scratch, http in
            let admin = try core.admin
            let deb = try await TestPackage.build(in: scratch.path, size: 100_000)
            let manifest = try await admin.publish(file: deb, release: "r1")
            let token = try await admin.createToken(uses: 1, lifetime: 600)
            let group = AgentGroup()
            let agent = group.start(
                makeAgentConfiguration(
                    core: core, base: scratch.path, name: "pc", token: token.token, key: await core.key),
                http: http)
            #expect(try await eventually { try await admin.agents().count == 1 })
            _ = try await admin.promote("r1", .everyone())
            #expect(try await eventually { try await admin.status("r1").total.verified == 1 })

            let attacker = ReleaseKey()
            let genuine = try #require(await core.server.coordinator.releases().first)
            let coreManifest = try await HTTPLink(baseURL: core.url, credential: nil, client: http).get(
                "/v1/key", as: [String: String].self)
            #expect(coreManifest["key"] == (await core.key).hex)
            let realJob = try #require(await jobFor(agent, core: core, change: "r1"))
            let realTicket = try #require(realJob.claim)
            // 1. A manifest signed by another key, pointing at the attacker's package.
            var evilManifest = genuine
            evilManifest.chunks = evilManifest.chunks.map { _ in String(repeating: "0", count: 64) }
            var evilTicket = realTicket
            evilTicket.change = "evil"
            await agent.handle(
                Job(ticket: try attacker.sign(evilTicket, as: .job), manifest: try attacker.sign(evilManifest, as: .releaseManifest)))
            var forgedSeed = realJob
            forgedSeed.manifest = try attacker.sign(evilManifest, as: .releaseManifest)
            await agent.handle(forgedSeed)
            #expect(AgentCache(directory: "\(scratch.path)/agents/pc/cache").entry("evil") == nil)
            // 2. An activation ticket signed by the attacker, and one with no signature at all.
            var activation = realTicket
            activation.kind = .activate
            activation.order = "o-forged"
            let forgedActivation = Job(ticket: try attacker.sign(activation, as: .job), manifest: realJob.manifest)
            await agent.handle(forgedActivation)
            var unsigned = forgedActivation
            unsigned.ticket.signatures = []
            await agent.handle(unsigned)
            // Nothing was installed, and the core heard about it.
            #expect(installed("demo", in: scratch.path + "/roots/pc") == nil)
            #expect(
                try await eventually {
                    try await admin.chase("r1").first?.reason == "refused unsigned or forged document"
                })
            let detail = try #require(try await admin.chase("r1").first?.detail)
            #expect(detail.contains("signature") || detail.contains("no signature"))
            await group.stop()
        }
    }

    @Test func aCachedPackageAlteredAfterVerificationIsNotInstalledButSeededAgain() async throws {
        try await withCore { core, scratch, http in
            let admin = try core.admin
            let deb = try await TestPackage.build(in: scratch.path, size: 200_000)
            let manifest = try await admin.publish(file: deb, release: "r1", chunkSize: 64 * 1024)
            let group = try await startAgents(["pc"], core: core, scratch: scratch, http: http)
            _ = try await admin.promote("r1", .everyone())
            #expect(try await eventually { try await admin.status("r1").total.verified == 1 })
            // Someone rewrites a byte of the cached package (same size).
            let path = AgentCache(directory: "\(scratch.path)/agents/pc/cache").packagePath("r1")
            try await Task.sleep(for: .milliseconds(20))
            let handle = try #require(FileHandle(forUpdatingAtPath: path))
            try handle.seek(toOffset: 150_000)
            let byte = try #require(try handle.read(upToCount: 1)?.first)
            try handle.seek(toOffset: 150_000)
            try handle.write(contentsOf: Data([byte ^ 0x01]))
            try handle.close()
            _ = try await admin.activateApproved("r1")
            // Refused at activation, re-seeded from the last good chunk, then installed.
            #expect(try await eventually { try await admin.status("r1").total.activated == 1 })
            let target = try #require(try await admin.agents().first)
            let record = try #require(await core.server.coordinator.target(target.id, change: "r1"))
            #expect(record.activationAttempts >= 2)
            #expect(installed("demo", in: scratch.path + "/roots/pc") == "1.0")
            let cached = try Data(contentsOf: URL(fileURLWithPath: path))
            #expect(SHA256Digest(of: cached) == manifest.digest)
            await group.stop()
        }
    }

    @Test func failingHangingAndUnmetInstallersAreClassified() async throws {
        try await withCore { core, scratch, http in
            let admin = try core.admin
            let cases: [(String, String?, String?, String)] = [
                ("fails", nil, "echo 'configuring…'; exit 3", "installer exit code 3"),
                ("hangs", nil, "sleep 60", "installer timed out"),
                ("needs", "libchangelab-missing (>= 2)", nil, "prerequisite not met"),
            ]
            let group = try await startAgents(["pc"], core: core, scratch: scratch, http: http) {
                $0.installTimeout = .seconds(2)
            }
            for (name, depends, postinst, _) in cases {
                let deb = try await TestPackage.build(
                    in: scratch.path, name: name, size: 20_000, depends: depends, postinst: postinst)
                _ = try await admin.publish(file: deb, release: name)
                _ = try await admin.promote(
                    name, .everyone())
                _ = try await admin.activateApproved(name)
            }
            for (name, _, _, reason) in cases {
                #expect(
                    try await eventually(.seconds(40)) { try await admin.chase(name).first?.reason == reason },
                    "\(name)")
            }
            // Failed targets are redeployed with back-off, and each try is counted.
            #expect(try await eventually(.seconds(40)) { try await admin.chase("fails").first?.gaveUp == true })
            let fails = try #require(try await admin.chase("fails").first)
            #expect(fails.activationAttempts == 3)
            #expect(fails.exitCode == 3)
            #expect(fails.seedAttempts == 1)
            await group.stop()
        }
    }

    @Test func aSlowInstallerRunsOncePerAttemptWhateverCheckInsRepeat() async throws {
        try await withCore { core, scratch, http in
            let admin = try core.admin
            let runs = scratch.path + "/runs"
            let deb = try await TestPackage.build(
                in: scratch.path, name: "slow", size: 10_000, postinst: "echo run >> '\(runs)'; sleep 60")
            _ = try await admin.publish(file: deb, release: "slow-1")
            let group = try await startAgents(["pc"], core: core, scratch: scratch, http: http) {
                $0.installTimeout = .milliseconds(2500)
            }
            _ = try await admin.promote("slow-1", .everyone())
            #expect(try await eventually { try await admin.status("slow-1").total.verified == 1 })
            _ = try await admin.activateApproved("slow-1")
            // The job is repeated at every check-in (each second) while the installer hangs.
            #expect(try await eventually(.seconds(40)) { try await admin.chase("slow-1").first?.gaveUp == true })
            try await Task.sleep(for: .seconds(2))
            let entry = try #require(try await admin.chase("slow-1").first)
            #expect(entry.reason == "installer timed out")
            let lines = (try? String(contentsOfFile: runs, encoding: .utf8))?.split(separator: "\n").count ?? 0
            #expect(lines == entry.activationAttempts)
            #expect(entry.activationAttempts == 3)
            await group.stop()
        }
    }

    @Test func theHealthGateStopsActivationAfterAFailingCanaryRing() async throws {
        try await withCore { core, scratch, http in
            let admin = try core.admin
            let deb = try await TestPackage.build(in: scratch.path, name: "bad", size: 20_000, postinst: "exit 7")
            _ = try await admin.publish(file: deb, release: "bad-1")
            let group = try await startAgents((0..<5).map { "pc\($0)" }, core: core, scratch: scratch, http: http)
            _ = try await admin.promote(
                "bad-1",
                PromoteRequest(release: nil, targets: "all", rings: "canary:20%,all", rate: nil, maxFailureRate: 0.1))
            #expect(try await eventually { try await admin.status("bad-1").total.verified == 5 })
            _ = try await admin.activateApproved("bad-1")
            #expect(try await eventually { try await admin.status("bad-1").halted != nil })
            try await Task.sleep(for: .seconds(2))
            let status = try await admin.status("bad-1")
            #expect(status.halted?.contains("canary") == true)
            #expect(status.activeRing == 0)
            #expect(status.total.failed == 1, "only the canary tried")
            let waiting = try await admin.chase("bad-1").filter { $0.reason == "halted at health gate" }
            #expect(waiting.count == 4)
            await group.stop()
        }
    }

    @Test func aHealthyCanaryRingLetsTheNextRingActivate() async throws {
        try await withCore { core, scratch, http in
            let admin = try core.admin
            let deb = try await TestPackage.build(in: scratch.path, size: 20_000)
            _ = try await admin.publish(file: deb, release: "good-1")
            let group = try await startAgents((0..<4).map { "pc\($0)" }, core: core, scratch: scratch, http: http)
            _ = try await admin.promote(
                "good-1",
                PromoteRequest(release: nil, targets: "all", rings: "canary:25%,all", rate: nil, maxFailureRate: 0.1))
            #expect(try await eventually { try await admin.status("good-1").total.verified == 4 })
            _ = try await admin.activateApproved("good-1")
            #expect(try await eventually { try await admin.status("good-1").total.activated == 4 })
            #expect(try await admin.status("good-1").activeRing == 1)
            await group.stop()
        }
    }

    @Test func aPolicyReachesMatchingAgentsIncludingOnesThatJoinLater() async throws {
        try await withCore { core, scratch, http in
            let admin = try core.admin
            let deb = try await TestPackage.build(in: scratch.path, name: "agentd", version: "2.1", size: 20_000)
            _ = try await admin.publish(file: deb, release: "agentd-2.1")
            let token = try await admin.createToken(uses: 3, lifetime: 600)
            let key = await core.key
            let group = AgentGroup()
            _ = group.start(
                makeAgentConfiguration(
                    core: core, base: scratch.path, name: "early", attributes: ["department": "finance"],
                    token: token.token, key: key),
                http: http)
            _ = group.start(
                makeAgentConfiguration(
                    core: core, base: scratch.path, name: "other", attributes: ["department": "sales"],
                    token: token.token, key: key),
                http: http)
            #expect(try await eventually { try await admin.agents().count == 2 })
            let policy = try await admin.setApprovedPolicy(
                "finance-agentd", targets: "department = finance", release: "agentd-2.1")
            #expect(try await eventually { installed("agentd", in: scratch.path + "/roots/early") == "2.1" })
            // A machine that joins later is caught at its first check-in.
            _ = group.start(
                makeAgentConfiguration(
                    core: core, base: scratch.path, name: "late", attributes: ["department": "finance"],
                    token: token.token, key: key),
                http: http)
            #expect(try await eventually { installed("agentd", in: scratch.path + "/roots/late") == "2.1" })
            #expect(installed("agentd", in: scratch.path + "/roots/other") == nil)
            #expect(try await eventually { try await admin.status(policy.change).total.activated == 2 })
            #expect(try await admin.policies().map(\.name) == ["finance-agentd"])
            await group.stop()
        }
    }

    @Test func rollbackReturnsToThePreviousVersionOrRemovesANewPackage() async throws {
        try await withCore { core, scratch, http in
            let admin = try core.admin
            let v1 = try await TestPackage.build(in: scratch.path, name: "app", version: "1.0", size: 20_000)
            let v2 = try await TestPackage.build(in: scratch.path, name: "app", version: "2.0", size: 20_000)
            _ = try await admin.publish(file: v1, release: "app-1")
            _ = try await admin.publish(file: v2, release: "app-2")
            let group = try await startAgents(["pc"], core: core, scratch: scratch, http: http)
            let all = PromoteRequest.everyone()
            for change in ["app-1", "app-2"] {
                _ = try await admin.promote(change, all)
                #expect(try await eventually { try await admin.status(change).total.verified == 1 })
                _ = try await admin.activateApproved(change)
                #expect(try await eventually { try await admin.status(change).total.activated == 1 })
            }
            #expect(installed("app", in: scratch.path + "/roots/pc") == "2.0")
            _ = try await admin.rollbackApproved("app-2")
            #expect(try await eventually { try await admin.status("app-2").total.rolledBack == 1 })
            #expect(installed("app", in: scratch.path + "/roots/pc") == "1.0")
            _ = try await admin.rollbackApproved("app-1")
            #expect(try await eventually { try await admin.status("app-1").total.rolledBack == 1 })
            #expect(installed("app", in: scratch.path + "/roots/pc") == nil)
            await group.stop()
        }
    }

    @Test func theLiveStatusStreamDeliversUpdates() async throws {
        try await withCore { core, scratch, http in
            let admin = try core.admin
            let deb = try await TestPackage.build(in: scratch.path, size: 20_000)
            _ = try await admin.publish(file: deb, release: "r1")
            _ = try await admin.promote("r1", .everyone())
            let seen = Locked<[StatusReport]>([])
            let watcher = Task {
                try await admin.watch("r1") { report in seen.mutate { $0.append(report) } }
            }
            #expect(try await eventually(.seconds(10)) { !seen.value.isEmpty })
            _ = try await admin.activateApproved("r1")
            #expect(try await eventually(.seconds(10)) { seen.value.last?.activationRequested == true })
            watcher.cancel()
            // The dashboard page is served.
            let page = try await http.execute(HTTPClientRequest(url: core.url + "/dashboard.js"), timeout: .seconds(5))
            #expect(String(buffer: try await page.body.collect(upTo: 1 << 20)).contains("EventSource"))
        }
    }
}

/// A genuine seed job for `change`, as the core signs it (the starting point for forgeries).
/// The newest seed job `agent` received for `change`, as it came from the core.
func jobFor(_ agent: Agent, core: TestCore, change: String) async throws -> Job? {
    await agent.recentJobs.last { $0.claim?.change == change && $0.claim?.kind == .seed }
}

final class Locked<T: Sendable>: @unchecked Sendable {
    // @unchecked: guarded by `lock`.
    private let lock = NSLock()
    private var stored: T
    init(_ value: T) { stored = value }
    var value: T {
        lock.lock()
        defer { lock.unlock() }
        return stored
    }
    func mutate(_ body: (inout T) -> Void) {
        lock.lock()
        body(&stored)
        lock.unlock()
    }
}
