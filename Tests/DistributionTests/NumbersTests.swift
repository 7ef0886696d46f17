import AsyncHTTPClient
import Foundation
import HostIO
import Model
import Testing

@testable import Distribution

/// Numbers from the command line and the network are range-checked: a clear error, never a trap.
@Suite struct NumbersTests {
    @Test(arguments: [
        ["core", "serve", "--check-in", "0"], ["core", "serve", "--check-in", "1e17"],
        ["core", "serve", "--check-in", "nan"], ["core", "serve", "--retry-base=-1"],
        ["core", "serve", "--max-attempts", "0"],
        ["core", "publish", "x.deb", "--release", "r", "--chunk-size", "1e30"],
        ["promote", "r", "--targets", "all", "--rate", "1e30"],
        ["promote", "r", "--targets", "all", "--max-failure", "1e300"],
        ["core", "token", "--hours", "1e300"],
    ])
    func anOutOfRangeNumberExitsWithAClearError(arguments: [String]) async throws {
        let binary = try #require(changelabExecutable(), "build the changelab executable first (swift build)")
        let scratch = Scratch("numbers")
        defer { scratch.cleanup() }
        var all = arguments
        if arguments.starts(with: ["core", "serve"]) { all += ["--state", scratch.path + "/core", "--listen", "127.0.0.1:0"] }
        let result = try await HostCommand.run(
            binary, all, environment: testEnvironment(["CHANGELAB_ADMIN_TOKEN": "admin:x", "CHANGELAB_CORE_PIN": "sha256:" + String(repeating: "0", count: 64)]),
            timeout: .seconds(30))
        #expect(result.status == 1, "exit \(result.status): \(result.stderrText)")
        #expect(!result.timedOut)
        #expect(result.stderrText.contains("range") || result.stderrText.contains("is not"), "\(result.stderrText)")
    }

    @Test func byteCountsTooLargeForInt64AreRefused() {
        #expect(ByteCount.parse("1e30") == nil)
        #expect(ByteCount.parse("9e18") == nil)
        #expect(ByteCount.parse("10M") == 10 << 20)
    }

    @Test func badSettingsAreRefusedBeforeTheCoreStarts() throws {
        let scratch = Scratch("settings")
        defer { scratch.cleanup() }
        for value in [0, 1e17, .nan, .infinity] {
            var settings = CoreSettings()
            settings.checkInInterval = value
            #expect(throws: ChangelabError.self) { _ = try CoreServer(directory: scratch.path, settings: settings) }
        }
        // Offline sooner than the next check-in: agents would flap and leases churn.
        var settings = CoreSettings()
        settings.checkInInterval = 10
        settings.offlineAfter = 8
        #expect {
            _ = try CoreServer(directory: scratch.path, settings: settings)
        } throws: { error in
            "\(error)".contains("must be longer than the check-in interval")
        }
    }

    @Test func aBadMaxFailureRateIsRefusedAndTheCoreRestartsCleanly() async throws {
        let scratch = Scratch("failure-rate")
        defer { scratch.cleanup() }
        let http = try TestTLS.client()
        defer { _ = http.shutdown() }
        let directory = scratch.path + "/core"
        let core = try TestCore(directory: directory, http: http)
        try await core.start()
        let deb = try await TestPackage.build(in: scratch.path, size: 10_000)
        let admin = try core.admin
        _ = try await admin.publish(file: deb, release: "r1")
        for bad in [1e300, -1, 2] {
            do {
                _ = try await admin.promote("r1", .everyone(maxFailureRate: bad))
                Issue.record("maxFailureRate \(bad) was accepted")
            } catch let error as LinkError {
                #expect(error.status == 400)
                #expect(error.description.contains("maxFailureRate"))
            }
        }
        _ = try await admin.promote("r1", .everyone(rings: "canary:50%,all", maxFailureRate: 0.5))
        await core.stop()
        // A value an older core stored without checking: the core still starts and ticks.
        let path = directory + "/state.json"
        let text = try String(contentsOfFile: path, encoding: .utf8)
        try text.replacingOccurrences(of: "\"maxFailureRate\" : 0.5", with: "\"maxFailureRate\" : 1e300")
            .write(toFile: path, atomically: true, encoding: .utf8)
        let restarted = try TestCore(directory: directory, http: http)
        try await restarted.start()
        await restarted.server.coordinator.tick()
        #expect(try await restarted.admin.status("r1").total.targets == 0)
        _ = try await restarted.admin.activateApproved("r1")
        await restarted.server.coordinator.tick()
        #expect(try await restarted.admin.status("r1").activationRequested)
        await restarted.stop()
    }

    @Test func theCheckInIntervalTheCoreSendsIsBounded() async throws {
        try await withCore { core, _, http in
            let token = try await core.admin.createToken(uses: 1, lifetime: 600)
            let reply = try await HTTPLink(baseURL: core.url, credential: nil, client: http).post(
                "/v1/enrol", EnrolRequest(token: token.token, name: "pc", segment: "s", addresses: [], attributes: [:]),
                as: EnrolReply.self)
            let agent = HTTPLink(baseURL: core.url, credential: "\(reply.agent):\(reply.secret)", client: http)
            let answer = try await agent.post(
                "/v1/agent/checkin",
                CheckIn(name: "pc", segment: "s", addresses: [], attributes: [:], inventory: nil, inventoryDigest: "", cache: []),
                as: CheckInReply.self)
            #expect(answer.checkInAfter.isFinite && answer.checkInAfter > 0 && answer.checkInAfter <= 86_400)
        }
    }
}
