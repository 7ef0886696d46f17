import Foundation
import HostIO
import Model
import Testing

@testable import Distribution

/// NORM multicast on a real segment: lab/fleet namespaces on one bridge, one namespace per
/// host, real IGMP and UDP multicast, the `changelab multicast` commands inside them.
@Suite(.serialized) struct NormTests {
    static let prefix = "clnm"

    /// Runs `changelab ARGS` in host `host` of the test segment.
    static func inHost(_ host: Int, _ binary: String, _ arguments: [String], timeout: Duration = .seconds(60))
        async throws -> CommandResult
    {
        try await HostCommand.run(
            "ip", ["netns", "exec", "\(prefix)-s1-h\(host)", binary] + arguments, timeout: timeout)
    }

    static func settings(_ info: String, timeout: Int = 30) -> [String] {
        ["--group", "239.77.9.1", "--port", "7709", "--interface", "eth0", "--rate", "20M", "--info", info,
         "--timeout", String(timeout), "--json"]
    }

    /// A segment of `hosts` namespaces for the body, torn down afterwards.
    static func withSegment<T>(hosts: Int, _ body: (String, String) async throws -> T) async throws -> T {
        let binary = try #require(changelabExecutable(), "build the changelab executable first (swift build)")
        let scratch = Scratch("norm")
        defer { scratch.cleanup() }
        try await HostCommand.check(
            FleetTests.fleetScript, ["up", "--prefix", prefix, "--segments", "1", "--hosts", String(hosts)])
        do {
            let result = try await body(binary, scratch.path)
            _ = try? await HostCommand.run(FleetTests.fleetScript, ["down", "--prefix", prefix])
            return result
        } catch {
            _ = try? await HostCommand.run(FleetTests.fleetScript, ["down", "--prefix", prefix])
            throw error
        }
    }

    @Test(.enabled(if: FleetTests.canBuildFleets, "needs root, iproute2 and iptables (sudo lab/setup)"))
    func oneCopyReachesEveryReceiverThroughLossAndEachVerifiesIt() async throws {
        let binary = try #require(changelabExecutable(), "build the changelab executable first (swift build)")
        let scratch = Scratch("norm-bench")
        defer { scratch.cleanup() }
        var options = MulticastBenchOptions(
            workDirectory: scratch.path + "/work", executable: binary, fleetScript: FleetTests.fleetScript)
        options.prefix = Self.prefix
        options.receivers = 4
        options.packageBytes = 3 << 20
        options.loss = 0.05
        options.timeout = .seconds(120)
        let result = try await MulticastSegmentBench.run(options) { _ in }
        #expect(result.acknowledged == 4)
        #expect(result.verified == 4)
        // One copy for the whole segment: unicast to 4 receivers puts at least 4.0 on it.
        // Headers, proactive parity and repairs for 5% loss add to the one copy, and more so
        // when the receivers lack CPU (CI runs this beside the other fleet tests: 2.0 was
        // exceeded there), so the bound is the unicast cost, not a tuned figure.
        #expect(result.lanSegmentRatio >= 1 && result.lanSegmentRatio < Double(options.receivers))
        #expect(result.lanFeedbackBytes > 0)
        #expect(result.senderBytes > result.packageBytes)
    }

    @Test(.enabled(if: FleetTests.canBuildFleets, "needs root, iproute2 and iptables (sudo lab/setup)"))
    func aReceiverTakesOnlyItsSendersObjectAndAnotherSendersSameSizedFileIsRefused() async throws {
        try await Self.withSegment(hosts: 3) { binary, dir in
            let size = 1 << 20
            try Data((0..<size).map { UInt8(truncatingIfNeeded: $0 &* 7) }).write(to: URL(fileURLWithPath: dir + "/genuine"))
            try Data(repeating: 0x66, count: size).write(to: URL(fileURLWithPath: dir + "/rogue"))
            async let received = Self.inHost(
                3, binary,
                ["multicast", "receive", "--node", "3", "--sender", "1", "--size", String(size), "--out", dir + "/got",
                 "--ready-file", dir + "/ready-3"] + Self.settings("job-7"))
            try await MulticastReadiness.wait(for: [dir + "/ready-3"], within: .seconds(60))
            // The rogue (another node id, same group, size and info) sends first, to the end:
            // it stops once the receiver acknowledged its watermark or after 8 s, so the
            // receiver has seen its object before the genuine one starts. (A 300 ms head start
            // was too short on a busy machine: the genuine object won and nothing was refused.)
            let rogue = try await Self.inHost(
                2, binary,
                ["multicast", "send", dir + "/rogue", "--node", "2", "--receivers", "3", "--rounds", "1"]
                    + Self.settings("job-7", timeout: 8))
            let genuine = try await Self.inHost(
                1, binary, ["multicast", "send", dir + "/genuine", "--node", "1", "--receivers", "3"] + Self.settings("job-7"))
            #expect(genuine.status == 0, "\(genuine.stderrText)")
            let receiver = try await received
            #expect(receiver.status == 0, "\(receiver.stderrText)")
            let report = try JSONDecoder().decode(ReceiveOutput.self, from: receiver.stdout)
            #expect(report.transfer.refused >= 1, "rogue sender: \(rogue.status) \(rogue.stderrText)")
            #expect(try Data(contentsOf: URL(fileURLWithPath: dir + "/got")) == Data(contentsOf: URL(fileURLWithPath: dir + "/genuine")))
        }
    }

    @Test(.enabled(if: FleetTests.canBuildFleets, "needs root, iproute2 and iptables (sudo lab/setup)"))
    func anObjectOfAnotherSizeOrJobNeverLandsAndTheReceiverSaysSo() async throws {
        try await Self.withSegment(hosts: 3) { binary, dir in
            try Data(repeating: 0x41, count: 200_000).write(to: URL(fileURLWithPath: dir + "/file"))
            // Host 2 expects another size, host 3 another job's info: both refuse the object and
            // exit non-zero (the sender's end command or the time-out ends them).
            async let wrongSize = Self.inHost(
                2, binary,
                ["multicast", "receive", "--node", "2", "--sender", "1", "--size", "200001", "--out", dir + "/a",
                 "--ready-file", dir + "/ready-2"] + Self.settings("job-1", timeout: 40))
            async let wrongJob = Self.inHost(
                3, binary,
                ["multicast", "receive", "--node", "3", "--sender", "1", "--size", "200000", "--out", dir + "/b",
                 "--ready-file", dir + "/ready-3"] + Self.settings("job-2", timeout: 40))
            try await MulticastReadiness.wait(for: [dir + "/ready-2", dir + "/ready-3"], within: .seconds(60))
            let sent = try await Self.inHost(
                1, binary,
                ["multicast", "send", dir + "/file", "--node", "1", "--receivers", "2,3", "--rounds", "3"]
                    + Self.settings("job-1", timeout: 30))
            // Both refused the object, yet NORM's positive acknowledgement usually counts them
            // (it means "nothing left to ask for"; on a busy machine a refusing receiver's ack
            // can also miss the three rounds, exit 3): the sender's list is no proof of a copy,
            // the receivers' own reports are — which is why the engine takes them from receivers.
            #expect(sent.status == 0 || sent.status == 3, "\(sent.stdoutText) \(sent.stderrText)")
            #expect(sent.stdoutText.contains("\"acknowledged\""), "\(sent.stdoutText)")
            for result in [try await wrongSize, try await wrongJob] {
                #expect(result.status != 0)
                #expect(
                    result.stderrText.contains("timed out")
                        || result.stderrText.contains("ended the transfer before this receiver had the whole object"),
                    "\(result.stderrText)")
            }
            #expect(!FileManager.default.fileExists(atPath: dir + "/a"))
            #expect(!FileManager.default.fileExists(atPath: dir + "/b"))
            // NORM's partial files went with the receivers' scratch folders.
            let left = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasPrefix("norm-") }
            #expect(left.isEmpty)
        }
    }

    @Test(.enabled(if: FleetTests.canBuildFleets, "needs root, iproute2 and iptables (sudo lab/setup)"))
    func bytesThatDoNotMatchTheSignedManifestAreNamedChunkByChunk() async throws {
        try await Self.withSegment(hosts: 2) { binary, dir in
            let chunk = 64 << 10
            var bytes = Data((0..<(4 * chunk)).map { UInt8(truncatingIfNeeded: $0 &* 13) })
            try bytes.write(to: URL(fileURLWithPath: dir + "/genuine"))
            let manifest = try ReleaseManifest.build(
                file: dir + "/genuine", release: "r", package: "p", packageVersion: "1", chunkSize: chunk)
            try StableJSON.data(manifest).write(to: URL(fileURLWithPath: dir + "/manifest.json"))
            // What reaches the receiver differs in chunk 2 (a forged or corrupted object).
            bytes[2 * chunk + 5] ^= 0xFF
            try bytes.write(to: URL(fileURLWithPath: dir + "/forged"))
            async let received = Self.inHost(
                2, binary,
                ["multicast", "receive", "--node", "2", "--sender", "1", "--size", String(4 * chunk), "--out",
                 dir + "/got", "--manifest", dir + "/manifest.json", "--ready-file", dir + "/ready-2"] + Self.settings("j"))
            try await MulticastReadiness.wait(for: [dir + "/ready-2"], within: .seconds(60))
            let sent = try await Self.inHost(
                1, binary,
                ["multicast", "send", dir + "/forged", "--node", "1", "--receivers", "2", "--rounds", "2"]
                    + Self.settings("j"))
            #expect(sent.status == 0, "\(sent.stderrText)")
            let receiver = try await received
            #expect(receiver.status != 0)
            #expect(receiver.stderrText.contains("1 chunk(s)"), "\(receiver.stderrText)")
            #expect(try manifest.failingChunks(in: dir + "/got") == [2])
        }
    }

    struct ReceiveOutput: Decodable {
        struct Transfer: Decodable { var refused: Int }
        var transfer: Transfer
    }

    @Test func settingsAndNodeIdsFromOutsideAreChecked() throws {
        var settings = NormSettings(group: "10.77.1.1", port: 80, interface: "eth0;rm", rate: 10)
        settings.autoParity = 40
        let problems = settings.problems()
        #expect(problems.count == 5, "\(problems)")
        #expect(NormSettings(group: "239.77.1.1", port: 7700, rate: 1_000_000).problems().isEmpty)
        for bad in ["", "239.1", "239.77.1.1.5", "224.0.0.0/4", "2390.1.1.1"] { #expect(!NormSettings.isMulticast(bad)) }
        #expect(NormNode(0) == nil && NormNode(UInt32.max) == nil && NormNode("x") == nil)
        #expect(throws: DecodingError.self) { try JSONDecoder().decode([NormNode].self, from: Data("[0]".utf8)) }
        #expect(try JSONDecoder().decode([NormNode].self, from: Data("[7]".utf8)) == [NormNode(7)!])
    }
}
