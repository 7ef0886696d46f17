import CMDB
import Foundation
import HostIO
import Model
import Testing

@testable import Distribution

/// The core records every agent as a CMDB fleet target: attributes, reported inventory,
/// one commit per change and none for a check-in that changes nothing.
@Suite struct FleetRecorderTests {
    func commits(_ path: String) async throws -> [String] {
        let log = try await HostCommand.check("git", ["-C", path, "log", "--format=%s"])
        return log.stdoutText.split(separator: "\n").map(String.init)
    }

    @Test func agentsBecomeFleetTargetsWithTheirInventoriesAndDrift() async throws {
        let scratch = Scratch("fleet-cmdb")
        defer { scratch.cleanup() }
        let cmdb = scratch.path + "/cmdb"
        // An approved baseline the target should match.
        let approved = InventorySnapshot(
            hostname: "web", packages: [PackageRecord(name: "openssl", architecture: "amd64", version: "3.0.9-1")])
        let lab = try await CMDBWriter(path: cmdb, actor: "lab")
        try await lab.recordBuiltBaseline(name: "web", inventory: approved)
        await lab.close()

        let recorder = try await CMDBFleetRecorder(path: cmdb, interval: .seconds(3600), log: { _ in })
        let id = try await withCore(observer: recorder) { core, _, http -> String in
            let admin = try core.admin
            let token = try await admin.createToken(uses: 1, lifetime: 600)
            let link = HTTPLink(baseURL: core.url, credential: nil, client: http)
            let attributes = ["site": "paris", "baseline": "web@1"]
            let reply = try await link.post(
                "/v1/enrol",
                EnrolRequest(token: token.token, name: "pc-7", segment: "s1", addresses: [], attributes: attributes),
                as: EnrolReply.self)
            let agent = HTTPLink(baseURL: core.url, credential: "\(reply.agent):\(reply.secret)", client: http)
            func checkIn(_ inventory: InventorySnapshot?, digest: String) async throws {
                _ = try await agent.post(
                    "/v1/agent/checkin",
                    CheckIn(
                        name: "pc-7", segment: "s1", addresses: [], attributes: attributes, inventory: inventory,
                        inventoryDigest: digest, cache: []), as: CheckInReply.self)
            }

            var reported = approved
            reported.hostname = "pc-7"
            try await checkIn(reported, digest: reported.digest)
            #expect(await recorder.queued == 1)
            await recorder.flush()
            #expect(await recorder.lastError == nil)
            let store = try CMDBStore.open(cmdb)
            // The target is the core-issued id, not the name the agent reports.
            #expect(!store.exists(CMDBReference(.target, "pc-7")))
            var target = try store.read(Model.TargetRecord.self, reply.agent)
            #expect(
                target.attributes == [
                    "site": "paris", "baseline": "web@1", "name": "pc-7", "segment": "s1", "agent": reply.agent,
                ])
            #expect(target.baseline == BaselineRef("web@1"))
            #expect(target.inventory == InventoryRecord(reported).digest)
            #expect(try store.inventory(try #require(target.inventory)) == reported.normalized())
            let afterFirst = try await commits(cmdb)
            #expect(afterFirst.first == "record target \(reply.agent) (agent check-in)")

            // Check-ins that repeat what the CMDB holds write nothing.
            try await checkIn(nil, digest: reported.digest)
            try await checkIn(reported, digest: reported.digest)
            await recorder.flush()
            #expect(try await commits(cmdb) == afterFirst)

            // An upgrade on the target: a new inventory, one commit, and drift from web@1.
            reported.packages = [PackageRecord(name: "openssl", architecture: "amd64", version: "3.0.13-1")]
            try await checkIn(reported, digest: reported.digest)
            await recorder.flush()
            #expect(try await commits(cmdb).count == afterFirst.count + 1)
            target = try store.read(Model.TargetRecord.self, reply.agent)
            #expect(target.inventory == InventoryRecord(reported).digest)
            let drift = try store.diff(try store.resolve("baseline:web"), try store.resolve("target:\(reply.agent)"))
            let changed = drift[.packages].changed.map(\.key)
            #expect(changed == ["openssl:amd64"], "drift: \(drift.summary())")
            // Queries over the CMDB answer for targets.
            let matches = try await store.query(try Query("package:openssl >= 3.0.13"))
            #expect(matches.map { "\($0.kind.rawValue):\($0.id)" } == ["target:\(reply.agent)"])
            #expect(try await store.query(try Query("site = paris"), kinds: [.target]).map(\.id) == [reply.agent])
            return reply.agent
        }
        await recorder.close()

        // A core restarted on the same CMDB: the first check-in repeats the record, no commit.
        let before = try await commits(cmdb)
        let again = try await CMDBFleetRecorder(path: cmdb, interval: .seconds(3600), log: { _ in })
        let store = try CMDBStore.open(cmdb)
        let target = try store.read(Model.TargetRecord.self, id)
        let agent = AgentRecord(
            id: id, name: "pc-7", segment: "s1", addresses: [],
            attributes: ["site": "paris", "baseline": "web@1"], secretHash: "", revoked: false, enrolledAt: Date(),
            lastSeen: Date())
        let stored = try store.inventory(try #require(target.inventory))
        await again.agentReported(agent, inventory: stored, inventoryDigest: stored.digest)
        await again.close()
        #expect(try await commits(cmdb) == before)
        let verified = try await store.verify()
        #expect(verified.problems.isEmpty, "\(verified.problems)")
    }

    @Test func aWriteThatFailsIsKeptAndRetried() async throws {
        let scratch = Scratch("fleet-cmdb-fail")
        defer { scratch.cleanup() }
        let cmdb = scratch.path + "/cmdb"
        let logged = Box()
        let recorder = try await CMDBFleetRecorder(
            path: cmdb, interval: .seconds(3600), log: { logged.append($0) })
        let agent = AgentRecord(
            id: "a-1", name: "pc-1", segment: "s", addresses: [], attributes: [:], secretHash: "", revoked: false,
            enrolledAt: Date(), lastSeen: Date())
        // Another writer holds the CMDB's lock: the recorder cannot write and keeps the report.
        let lock = try #require(try await FileLock.acquire(cmdb + "/.git/changelab/lock", timeout: .seconds(5)))
        let blocked = try await CMDBFleetRecorder(
            path: cmdb, interval: .seconds(3600), lockTimeout: .milliseconds(200), log: { logged.append($0) })
        let inventory = InventorySnapshot(hostname: "pc-1")
        await blocked.agentReported(agent, inventory: inventory, inventoryDigest: inventory.digest)
        await blocked.operatorActed(AuditEntry(action: "promote", subject: "r1", operatorName: "alice", at: Date()))
        await blocked.flush()
        #expect(await blocked.lastError != nil)
        #expect(await blocked.queued == 1)
        #expect(await blocked.queuedActions == 1)
        #expect(logged.lines.contains { $0.contains("operator action(s) in the CMDB failed, will retry") })
        lock.release()
        await blocked.flush()
        #expect(await blocked.lastError == nil)
        #expect(await blocked.queued == 0)
        #expect(await blocked.queuedActions == 0)
        #expect(try CMDBStore.open(cmdb).read(Model.TargetRecord.self, "a-1").inventory != nil)
        let actions = try await CMDBStore.open(cmdb).log().filter { $0.operation == "promote" }
        #expect(actions.map(\.actor) == ["alice"])
        await blocked.close()
        await recorder.close()
        // An agent id the CMDB cannot hold is reported once and skipped.
        var odd = agent
        odd.id = "pc 1/evil"
        await recorder.agentReported(odd, inventory: nil, inventoryDigest: nil)
        await recorder.agentReported(odd, inventory: nil, inventoryDigest: nil)
        #expect(await recorder.queued == 0)
        #expect(logged.lines.filter { $0.contains("pc 1/evil") }.count == 1)
    }

    @Test func aDamagedTargetRecordIsNeverOverwritten() async throws {
        let scratch = Scratch("fleet-cmdb-damaged")
        defer { scratch.cleanup() }
        let cmdb = scratch.path + "/cmdb"
        let logged = Box()
        let recorder = try await CMDBFleetRecorder(path: cmdb, interval: .seconds(3600), log: { logged.append($0) })
        var agent = AgentRecord(
            id: "a-1", name: "pc-1", segment: "s", addresses: [], attributes: ["site": "paris"], secretHash: "",
            revoked: false, enrolledAt: Date(), lastSeen: Date())
        await recorder.agentReported(agent, inventory: nil, inventoryDigest: nil)
        await recorder.flush()
        let file = cmdb + "/" + CMDBReference(.target, "a-1").path
        try Data("{ hand-edited".utf8).write(to: URL(fileURLWithPath: file))
        agent.attributes["site"] = "lyon"
        await recorder.agentReported(agent, inventory: nil, inventoryDigest: nil)
        await recorder.flush()
        #expect(try String(contentsOfFile: file, encoding: .utf8) == "{ hand-edited")
        #expect(logged.lines.contains { $0.contains("not updating target a-1") })
        await recorder.close()
    }
}

/// Lines a log closure received.
final class Box: @unchecked Sendable {
    // @unchecked: every access holds `lock`.
    private let lock = NSLock()
    private var stored: [String] = []
    func append(_ line: String) { lock.withLock { stored.append(line) } }
    var lines: [String] { lock.withLock { stored } }
}
