import Foundation
import HostIO
import Testing

@testable import Distribution

/// The namespace test fleet end to end: real namespaces, a rate-limited WAN, packet loss
/// on one segment, a core and agent processes inside them, bytes from interface counters.
@Suite(.serialized) struct FleetTests {
    static var fleetScript: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("lab/fleet").path
    }

    static var canBuildFleets: Bool {
        getuid() == 0 && HostCommand.resolve("ip") != nil && HostCommand.resolve("tc") != nil
            && HostCommand.resolve("iptables") != nil
    }

    /// A small bench fleet: 2 segments × 3 agents, 1 MB, WAN 200 mbit/s.
    static func smallFleet(prefix: String, hosts: Int, in scratch: Scratch) throws -> BenchOptions {
        let binary = try #require(changelabExecutable(), "build the changelab executable first (swift build)")
        var options = BenchOptions(
            workDirectory: scratch.path + "/work", executable: binary, fleetScript: Self.fleetScript)
        options.prefix = prefix
        options.segments = 2
        options.agentsPerSegment = 3
        options.hostsPerSegment = hosts
        options.packageBytes = 1_000_000
        options.wanRate = "200mbit"
        return options
    }

    @Test(.enabled(if: canBuildFleets, "needs root, iproute2 and iptables (sudo lab/setup)"))
    func aSmallFleetSeedsAndActivatesOverUnicastAndCountsEveryLink() async throws {
        let scratch = Scratch("fleet")
        defer { scratch.cleanup() }
        var options = try Self.smallFleet(prefix: "clt", hosts: 2, in: scratch)
        options.loss = [2: 0.03]
        options.timeout = .seconds(120)
        let fleet = TestFleet(options: options)
        // Leftovers of an earlier run are cleared by the next one.
        try await fleet.up()
        #expect(await fleet.namespaces().count == 2 + 2 * 2)

        let report = try await DistributionBench.run(options) { _ in }
        let unicast = try #require(report.modes.first)
        #expect(report.modes.map(\.mode) == ["unicast"])
        #expect(unicast.agents == 6)
        #expect(unicast.activated == 6)
        #expect(unicast.failed == 0)
        // Unicast sends the package once per agent over the WAN and into the segments:
        // 3 agents per segment, plus headers and retransmissions on the lossy segment.
        #expect(unicast.wanRatio >= 3 && unicast.wanRatio < 3.6)
        #expect(unicast.lanRatio >= 3 && unicast.lanRatio < 3.8)
        #expect(unicast.wanBytes >= 6 * unicast.packageBytes)
        #expect(unicast.seedingSeconds > 0 && unicast.activationSeconds > 0)
        // Everything is gone afterwards.
        #expect(await fleet.namespaces().isEmpty)
        #expect(!FileManager.default.fileExists(atPath: options.workDirectory))
    }

    /// The bench's multicast modes on a small fleet: one namespace per agent.
    @Test(.enabled(if: canBuildFleets, "needs root, iproute2 and iptables (sudo lab/setup)"))
    func theMulticastModesSendOneWANCopyPerSegmentAndTheSleepersCatchUpFromPeers() async throws {
        let scratch = Scratch("fleet-multicast")
        defer { scratch.cleanup() }
        var options = try Self.smallFleet(prefix: "clm", hosts: 3, in: scratch)
        options.timeout = .seconds(180)
        options.modes = [.multicast, .multicastOffline]
        let report = try await DistributionBench.run(options) { print("fleet-multicast: \($0)") }
        #expect(report.modes.map(\.mode) == ["multicast", "multicast-offline-20"])
        for m in report.modes {
            #expect(m.activated == 6 && m.failed == 0, "\(m.mode)")
            // One copy per segment crosses the WAN, plus check-ins and the job stream.
            #expect(m.wanRatio >= 1 && m.wanRatio < 1.3, "\(m.mode): wan_ratio \(m.wanRatio)")
            #expect((m.lanSegmentRatio ?? 0) > 1, "\(m.mode): the senders put at least one copy on each bridge")
            #expect((m.activationFanoutSeconds ?? -1) >= 0, "\(m.mode): fan-out from the agents' installer starts")
            #expect(m.payloadBytes?["multicast"] == 2 * m.packageBytes)
        }
        let multicast = try #require(report.modes.first)
        #expect(multicast.served == ["core": 2, "multicast": 4], "\(String(describing: multicast.served))")
        let offline = try #require(report.modes.last)
        #expect(offline.offlineAgents == 2)
        #expect(offline.offlineCoreBytes == 0, "the woken agents caught up from peers, not over the WAN")
        #expect(offline.served?["peer"] == 2 && offline.served?["multicast"] == 2)
        #expect(await TestFleet(options: options).namespaces().isEmpty)
    }
}
