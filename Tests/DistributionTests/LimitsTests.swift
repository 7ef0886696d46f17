#if canImport(Glibc)
import Glibc
#endif
import AsyncHTTPClient
import CMDB
import Foundation
import HostIO
import Model
import Testing

@testable import Distribution

/// What agents report is bounded, and identity is the core's.
@Suite struct LimitsTests {
    /// Enrols one agent by hand and returns a link with its credential.
    func enrol(_ core: TestCore, _ http: HTTPClient, name: String = "pc-1") async throws -> (HTTPLink, String) {
        let token = try await core.admin.createToken(uses: 1, lifetime: 600)
        let reply = try await HTTPLink(baseURL: core.url, credential: nil, client: http).post(
            "/v1/enrol",
            EnrolRequest(token: token.token, name: name, segment: "s1", addresses: ["10.0.0.1/24"], attributes: [:]),
            as: EnrolReply.self)
        return (HTTPLink(baseURL: core.url, credential: "\(reply.agent):\(reply.secret)", client: http), reply.agent)
    }

    func checkIn(
        name: String = "pc-1", segment: String = "s1", addresses: [String] = [], attributes: [String: String] = [:]
    ) -> CheckIn {
        CheckIn(
            name: name, segment: segment, addresses: addresses, attributes: attributes, inventory: nil,
            inventoryDigest: "", cache: [])
    }

    func status(_ body: () async throws -> Void) async -> Int? {
        do {
            try await body()
            return 200
        } catch let error as LinkError {
            return error.status
        } catch {
            return nil
        }
    }

    @Test func aFiftyMebibyteAttributeCheckInGets413AndTheStateStaysSmall() async throws {
        try await withCore { core, _, http in
            let (agent, _) = try await enrol(core, http)
            let huge = String(repeating: "x", count: 50 << 20)
            let code = await status {
                _ = try await agent.post("/v1/agent/checkin", checkIn(attributes: ["note": huge]), as: CheckInReply.self)
            }
            #expect(code == 413)
            let size = try FileManager.default.attributesOfItem(atPath: core.directory + "/state.json")[.size] as? Int
            #expect((size ?? .max) < 64 << 10)
            // A normal check-in still works.
            _ = try await agent.post("/v1/agent/checkin", checkIn(), as: CheckInReply.self)
        }
    }

    @Test(arguments: [
        ("segment", "<img src=x onerror=alert(1)>"), ("name", "../../etc"), ("name", ""), ("address", "not-an-ip"),
        ("attribute", "k\u{0}ey"), ("value", String(repeating: "v", count: 300)), ("count", "65"),
    ])
    func aMalformedReportIsRefusedAtCheckIn(field: String, value: String) async throws {
        try await withCore { core, _, http in
            let (agent, id) = try await enrol(core, http)
            var body = checkIn()
            switch field {
            case "segment": body.segment = value
            case "name": body.name = value
            case "address": body.addresses = [value]
            case "attribute": body.attributes = [value: "x"]
            case "value": body.attributes = ["site": value]
            default: body.attributes = Dictionary(uniqueKeysWithValues: (0..<65).map { ("k\($0)", "v") })
            }
            let code = await status { _ = try await agent.post("/v1/agent/checkin", body, as: CheckInReply.self) }
            #expect(code == 400)
            let record = try #require(try await core.admin.agents().first { $0.id == id })
            #expect(record.name == "pc-1" && record.segment == "s1" && record.attributes.isEmpty)
        }
    }

    @Test func agentNamesAreUniqueAtEnrolmentAndCheckIn() async throws {
        try await withCore { core, _, http in
            let (_, first) = try await enrol(core, http, name: "paris-1")
            // A second agent cannot enrol as paris-1…
            let code = await status { _ = try await enrol(core, http, name: "paris-1") }
            #expect(code == 409)
            // …nor rename itself to it at check-in.
            let (rogue, _) = try await enrol(core, http, name: "rogue")
            let renamed = await status {
                _ = try await rogue.post("/v1/agent/checkin", checkIn(name: "paris-1"), as: CheckInReply.self)
            }
            #expect(renamed == 409)
            let agents = try await core.admin.agents()
            #expect(agents.filter { $0.name == "paris-1" }.map(\.id) == [first])
            // Once the old paris-1 is revoked, the name is free again (a replaced machine).
            try await core.admin.revoke(agent: first)
            _ = try await rogue.post("/v1/agent/checkin", checkIn(name: "paris-1"), as: CheckInReply.self)
        }
    }

    @Test func fleetTargetsAreKeyedByTheCoreIssuedAgentID() async throws {
        let scratch = Scratch("fleet-id")
        defer { scratch.cleanup() }
        let recorder = try await CMDBFleetRecorder(path: scratch.path + "/cmdb", interval: .seconds(3600), log: { _ in })
        func record(_ id: String, name: String, site: String) -> AgentRecord {
            AgentRecord(
                id: id, name: name, segment: "s", addresses: [], attributes: ["site": site], secretHash: "",
                revoked: false, enrolledAt: Date(), lastSeen: Date())
        }
        await recorder.agentReported(record("a-real", name: "paris-1", site: "paris"), inventory: nil, inventoryDigest: nil)
        // A rogue agent calling itself paris-1 gets a record of its own.
        await recorder.agentReported(record("a-rogue", name: "paris-1", site: "evil"), inventory: nil, inventoryDigest: nil)
        await recorder.flush()
        let store = try CMDBStore.open(scratch.path + "/cmdb")
        #expect(try store.read(Model.TargetRecord.self, "a-real").attributes["site"] == "paris")
        #expect(try store.read(Model.TargetRecord.self, "a-rogue").attributes["site"] == "evil")
        #expect(!store.exists(CMDBReference(.target, "paris-1")))
        await recorder.close()
    }

    @Test func checkInsBeyondTheRateLimitGet429WithAReason() async throws {
        var limits = CoreLimits()
        limits.checkInBurst = 5
        // Slow enough that a loaded machine cannot refill the bucket during the twelve check-ins.
        limits.checkInsPerSecond = 0.05
        try await withCore(limits: limits) { core, _, http in
            let (agent, _) = try await enrol(core, http)
            var refused: [String] = []
            for _ in 0..<12 {
                do {
                    _ = try await agent.post("/v1/agent/checkin", checkIn(), as: CheckInReply.self)
                } catch let error as LinkError where error.status == 429 {
                    refused.append(error.description)
                }
            }
            #expect(refused.count >= 5)
            #expect(refused.first?.contains("checks in too often") == true)
        }
    }

    @Test func halfOpenConnectionsAreClosedByTheIdleTimeoutWhileAnAgentKeepsCheckingIn() async throws {
        try await withMachineToItself {
            var limits = CoreLimits()
            limits.idleTimeoutMilliseconds = 2000
            try await withCore(limits: limits) { core, _, http in
                let (agent, _) = try await enrol(core, http)
                // 2,000 connections that start a request and never finish it.
                var sockets: [Int32] = []
                defer { for fd in sockets { close(fd) } }
                for _ in 0..<2000 {
                    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
                    guard fd >= 0 else { break }
                    var address = sockaddr_in()
                    address.sin_family = sa_family_t(AF_INET)
                    address.sin_port = in_port_t(UInt16(core.port).bigEndian)
                    address.sin_addr.s_addr = inet_addr("127.0.0.1")
                    let connected = withUnsafePointer(to: &address) {
                        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                            connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                        }
                    }
                    guard connected == 0 else {
                        close(fd)
                        continue
                    }
                    _ = send(fd, [0x16, 0x03, 0x01], 3, Int32(MSG_NOSIGNAL))
                    sockets.append(fd)
                }
                #expect(sockets.count == 2000)
                // The real agent keeps checking in meanwhile: five check-ins, each answered. The
                // bound is generous because CI runs the fleet tests beside this one (a check-in
                // there took 3.7 s once); the first comes while every half-open one is open.
                let start = ContinuousClock.now
                var checkIns = 0
                while checkIns < 5 && ContinuousClock.now - start < .seconds(20) {
                    _ = try await agent.post("/v1/agent/checkin", checkIn(), as: CheckInReply.self)
                    checkIns += 1
                    try await Task.sleep(for: .milliseconds(300))
                }
                #expect(checkIns >= 5)
                // Every half-open connection is closed by the server, in bounded time (the
                // idle timeout after it was accepted; generous for a machine where every other
                // suite runs beside this one).
                var open = Set(sockets)
                let deadline = ContinuousClock.now + .seconds(40)
                var buffer = [UInt8](repeating: 0, count: 512)
                while !open.isEmpty && ContinuousClock.now < deadline {
                    for fd in open {
                        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                        guard poll(&pfd, 1, 0) > 0 else { continue }
                        let n = recv(fd, &buffer, buffer.count, Int32(MSG_DONTWAIT))
                        if n <= 0 { open.remove(fd) }
                    }
                    try await Task.sleep(for: .milliseconds(100))
                }
                #expect(open.isEmpty, "\(open.count) of 2000 half-open connections still open")
                _ = try await agent.post("/v1/agent/checkin", checkIn(), as: CheckInReply.self)
            }
        }
    }

    @Test func installerOutputAndFailureDetailsAreBoundedInTheState() async throws {
        try await withCore { core, scratch, http in
            let deb = try await TestPackage.build(in: scratch.path, size: 10_000)
            _ = try await core.admin.publish(file: deb, release: "r1")
            let (agent, _) = try await enrol(core, http)
            _ = try await core.admin.promote("r1", .everyone())
            let long = String(repeating: "y", count: 1 << 20)
            _ = try await agent.post(
                "/v1/agent/events",
                [
                    AgentEvent(
                        change: "r1", release: "r1", kind: .failed,
                        failure: Failure(reason: .installerExit, detail: long, exitCode: 1), exitCode: 1, outputTail: long)
                ], as: [String: Int].self)
            let size = try FileManager.default.attributesOfItem(atPath: core.directory + "/state.json")[.size] as? Int
            #expect((size ?? .max) < 64 << 10)
        }
    }
}
