import Foundation
import HostIO
import Model
import Testing

@testable import Distribution

/// Targeted multicast in the namespace fleet: agent processes, each in a host namespace of its
/// own on one segment's bridge, a core started with `--multicast-groups`; the package crosses the
/// WAN once (to the segment's representative), reaches the other agents as one NORM object, and
/// an agent that joins after the multicast ended gets it from a peer.
@Suite(.serialized) struct MulticastFleetTests {
    @Test(.enabled(if: FleetTests.canBuildFleets, "needs root, iproute2 and iptables (sudo lab/setup)"))
    func oneWANCopyReachesTheWholeSegmentByMulticastAndALateAgentGetsItFromAPeer() async throws {
        try await PeerFleetTests.withPeerFleet(
            prefix: "hmc", hosts: 5, coreArguments: ["--multicast-groups", "239.77.0.0/24", "--multicast-port", "7700"]
        ) { f in
            for host in 1...4 { try await f.startAgent(host: host) }
            let before = try await f.fleet.counters()
            let portsBefore = try await f.fleet.portCounters()
            let promoted = ContinuousClock.now
            try await f.promote("CHG-mc", targets: "all")
            let names = (1...4).map { "s1-h\($0)" }
            #expect(
                try await eventually(.seconds(120)) {
                    let sources = try await f.admin.status("CHG-mc").sources ?? []
                    return Set(sources.map(\.name)).isSuperset(of: names)
                }, "every agent verified its copy; see \(f.work)/agent-*.log")
            let seeded = ContinuousClock.now - promoted
            // What the agents said about the multicast, for whoever reads a failure.
            for name in names {
                let log = (try? String(contentsOfFile: "\(f.work)/agent-\(name).log", encoding: .utf8)) ?? ""
                for line in log.split(separator: "\n")
                where line.contains("multicast") || line.contains("listening for") || line.contains("representative") {
                    print("multicast fleet: \(name): \(line.suffix(220))")
                }
            }
            let after = try await f.fleet.counters()
            let portsAfter = try await f.fleet.portCounters()
            let hostBytes = portsAfter.keys.sorted().map { "\($0) \(portsAfter[$0]! - (portsBefore[$0] ?? 0))" }
            let status = try await f.admin.status("CHG-mc")
            let sources = status.sources ?? []
            let size = f.manifest.size
            // The job is done on the segment, so the lease is released; the multicast names its sender.
            let holder = try #require(status.representatives?.first?.multicast?.sender)
            #expect(status.multicast?.group == "239.77.0.1" && status.multicast?.port == 7700)
            // The representative pulled the package from the core; everyone else got it whole by
            // multicast, and the core sent them nothing of it.
            for source in sources where names.contains(source.name) {
                if source.name == holder {
                    #expect(source.source == .core && source.bytesFromCore >= size)
                } else {
                    #expect(source.source == .multicast, "\(source.name): \(source.source)")
                    #expect(source.bytesFromCore == 0 && source.bytesFromPeers == 0)
                }
            }
            #expect(status.total.servedByMulticast == 3)
            let wan = after.wan - before.wan
            let lan = after.lan - before.lan
            #expect(wan < size * 13 / 10, "one copy over the WAN: \(wan) B for a \(size) B package")
            // Unicast puts four copies on the segment (the router's tx alone); multicast puts the
            // representative's download and about one copy more.
            #expect(lan < size * 3, "LAN bytes \(lan) for a \(size) B package to 4 agents")
            // What the representative put on the bridge: one NORM copy with its FEC (serving its
            // three receivers as a peer would have been three copies).
            let port = holder.replacingOccurrences(of: "-", with: "")
            let sent = (portsAfter[port] ?? 0) - (portsBefore[port] ?? 0)
            #expect(sent > size && sent < size * 3 / 2, "\(holder) put \(sent) B on the bridge")

            // The representative's report arrives at its next check-in.
            #expect(
                try await eventually(.seconds(30)) {
                    try await f.admin.status("CHG-mc").representatives?.first?.multicast?.state == "ended"
                })
            let ended = try #require(try await f.admin.status("CHG-mc").representatives?.first?.multicast)
            #expect(ended.sender == holder && ended.receivers == 3 && ended.acknowledged == 3 && ended.error == nil)
            let holderLog = (try? String(contentsOfFile: "\(f.work)/agent-\(holder).log", encoding: .utf8)) ?? ""
            #expect(holderLog.contains("multicasting CHG-mc to 3 receiver(s) on 239.77.0.1:7700"))

            // An agent that joins after the multicast ended does not wait for one: a peer serves it.
            try await f.startAgent(host: 5)
            try await f.promote("CHG-mc", targets: "all")
            #expect(try await eventually(.seconds(90)) { try await f.source(of: "s1-h5", in: "CHG-mc") != nil })
            let late = try #require(try await f.source(of: "s1-h5", in: "CHG-mc"))
            #expect(late.source == .peer && late.bytesFromCore == 0 && late.bytesFromPeers == size)
            let final = try await f.admin.status("CHG-mc")
            print(
                "multicast fleet: package \(size) B to 4 agents in \(seeded): WAN \(wan) B (\(String(format: "%.2f", Double(wan) / Double(size)))x), "
                    + "LAN \(lan) B (\(String(format: "%.2f", Double(lan) / Double(size)))x); "
                    + "put on the bridge by host: \(hostBytes.joined(separator: ", ")); "
                    + "\(ended.acknowledged ?? 0)/\(ended.receivers) acknowledged in \(ended.rounds ?? 0) round(s), \(ended.seconds ?? 0) s"
            )
            print("multicast fleet: \(StatusText.render(final))")
        }
    }

    @Test(.enabled(if: FleetTests.canBuildFleets, "needs root, iproute2 and iptables (sudo lab/setup)"))
    func theRepresentativeKilledMidSendIsReplacedAndTheNextOneMulticastsToTheRest() async throws {
        // 300 kB/s: the 3 MB object takes about 10 s, long enough to kill its sender in the middle.
        try await PeerFleetTests.withPeerFleet(
            prefix: "hmk", hosts: 4,
            coreArguments: [
                "--multicast-groups", "239.77.0.0/24", "--multicast-rate", "300000", "--offline-after", "4",
            ]
        ) { f in
            var processes: [String: DetachedProcess] = [:]
            for host in 1...4 { processes["s1-h\(host)"] = try await f.startAgent(host: host) }
            try await f.promote("CHG-kill", targets: "all")
            let first = try #require(
                try await f.admin.status("CHG-kill").representatives?.first?.representative, "a lease at promote")
            let firstLog = "\(f.work)/agent-\(first).log"
            #expect(
                try await eventually(.seconds(60)) {
                    ((try? String(contentsOfFile: firstLog, encoding: .utf8)) ?? "").contains("multicasting CHG-kill")
                }, "the first representative started sending")
            try await Task.sleep(for: .seconds(2))
            processes[first]?.kill()
            let survivors = Set(processes.keys).subtracting([first])
            #expect(
                try await eventually(.seconds(120)) {
                    let sources = try await f.admin.status("CHG-kill").sources ?? []
                    return survivors.isSubset(of: Set(sources.map(\.name)))
                }, "every surviving agent verified its copy; see \(f.work)/agent-*.log")
            #expect(
                try await eventually(.seconds(30)) {
                    try await f.admin.status("CHG-kill").representatives?.first?.multicast?.state == "ended"
                })
            let status = try await f.admin.status("CHG-kill")
            let multicast = try #require(status.representatives?.first?.multicast)
            #expect(multicast.sender != first && survivors.contains(multicast.sender))
            // Its job stream can outlive the killed agent: it must not win back the lease it let expire.
            #expect(multicast.epoch == 2, "one handover, not a lease bouncing through the dead agent")
            #expect(multicast.receivers == 2 && multicast.acknowledged == 2 && multicast.error == nil)
            for source in status.sources ?? [] where survivors.contains(source.name) {
                if source.name == multicast.sender {
                    #expect(source.source == .core, "the new representative had no peer holding a copy")
                } else {
                    #expect(source.source == .multicast, "\(source.name): \(source.source)")
                    #expect(source.bytesFromCore == 0)
                }
            }
            // The killed one had pulled its copy from the core before it began sending.
            #expect((status.sources ?? []).first { $0.name == first }?.source == .core)
            print("multicast fleet (kill): first sender \(first), then \(multicast.sender) (epoch \(multicast.epoch))")
        }
    }

    @Test(.enabled(if: FleetTests.canBuildFleets, "needs root, iproute2 and iptables (sudo lab/setup)"))
    func aSegmentWhoseSwitchDropsMulticastIsServedByPeersAndTheStatusSaysWhy() async throws {
        // Every host drops every multicast datagram it receives (a switch with IGMP snooping
        // gone wrong, a firewall): the send gets no acknowledgement, the engine says so and
        // the receivers turn to the representative as a peer, never to the core.
        try await PeerFleetTests.withPeerFleet(
            prefix: "hmb", hosts: 4, coreArguments: ["--multicast-groups", "239.77.0.0/24"], multicastLoss: 1.0
        ) { f in
            for host in 1...4 { try await f.startAgent(host: host) }
            let before = try await f.fleet.counters()
            let promoted = ContinuousClock.now
            try await f.promote("CHG-blocked", targets: "all")
            let names = Set((1...4).map { "s1-h\($0)" })
            #expect(
                try await eventually(.seconds(180)) {
                    let sources = try await f.admin.status("CHG-blocked").sources ?? []
                    return names.isSubset(of: Set(sources.map(\.name)))
                }, "every agent verified its copy; see \(f.work)/agent-*.log")
            let seeded = ContinuousClock.now - promoted
            #expect(
                try await eventually(.seconds(30)) {
                    try await f.admin.status("CHG-blocked").representatives?.first?.multicast?.state == "ended"
                })
            let status = try await f.admin.status("CHG-blocked")
            let multicast = try #require(status.representatives?.first?.multicast)
            // The representative's report: three receivers, none acknowledged.
            #expect(multicast.receivers == 3 && multicast.acknowledged == 0, "\(multicast)")
            let size = f.manifest.size
            for source in status.sources ?? [] where names.contains(source.name) {
                if source.name == multicast.sender {
                    #expect(source.source == .core)
                } else {
                    #expect(source.source == .peer, "\(source.name): \(source.source)")
                    #expect(source.bytesFromCore == 0 && source.bytesFromPeers == size)
                }
            }
            #expect(status.total.servedByMulticast == 0 && status.total.failed == 0)
            // Still one copy over the WAN.
            let wan = try await f.fleet.counters().wan - before.wan
            #expect(wan < size * 13 / 10, "one copy over the WAN: \(wan) B for a \(size) B package")
            // What an operator reads: the segment's multicast ended with no acknowledgement.
            let text = StatusText.render(status)
            print("multicast fleet (blocked): every copy in \(seeded); \(text)")
            #expect(text.contains("0/3"), "\(text)")
        }
    }
}
