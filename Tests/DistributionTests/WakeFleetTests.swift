import Foundation
import HostIO
import Model
import Testing

@testable import Distribution

/// Wake-on-LAN in the namespace fleet: an offline target whose agent starts only when its own
/// magic packet arrives is woken by its segment's representative, then gets the release.
@Suite(.serialized) struct WakeFleetTests {
    @Test(.enabled(if: FleetTests.canBuildFleets, "needs root, iproute2 and iptables (sudo lab/setup)"))
    func anOfflineTargetIsWokenByItsSegmentsRepresentativeAndThenGetsTheRelease() async throws {
        try await PeerFleetTests.withPeerFleet(prefix: "hwk", hosts: 2, coreArguments: ["--offline-after", "4"]) { f in
            try await f.startAgent(host: 1)
            let sleeper = try await f.startAgent(host: 2)
            let namespace = f.fleet.namespace(segment: 1, host: 2)
            // The MAC the agent reported is its namespace's own interface address.
            let own = try await HostCommand.check(
                "ip", ["netns", "exec", namespace, "cat", "/sys/class/net/eth0/address"]
            )
            .stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
            #expect(
                try await eventually(.seconds(20)) {
                    try await f.admin.agents().first { $0.name == "s1-h2" }?.macAddresses == [own]
                })

            // The machine goes to sleep: its agent stops, and it starts again only once woken.
            sleeper.kill()
            #expect(
                try await eventually(.seconds(30)) {
                    try await f.admin.agents().first { $0.name == "s1-h2" }?.online == false
                })
            let waiterLog = f.work + "/agent-s1-h2-woken.log"
            let quoted = (
                [f.binary, "agent", "wait-for-wake", "--mac", own, "--timeout", "120"], f.agentCommand(host: 2)
            )
            let script =
                quoted.0.map { "'\($0)'" }.joined(separator: " ") + " && exec "
                + quoted.1.map { "'\($0)'" }.joined(separator: " ")
            f.processes.add(
                try await DetachedProcess.start("ip", ["netns", "exec", namespace, "sh", "-c", script], log: waiterLog))
            #expect(
                try await eventually(.seconds(20)) {
                    ((try? String(contentsOfFile: waiterLog, encoding: .utf8)) ?? "").contains("waiting up to")
                })
            try await Task.sleep(for: .seconds(2))
            #expect(try await f.admin.agents().first { $0.name == "s1-h2" }?.online == false, "asleep until woken")

            let promoted = ContinuousClock.now
            try await f.promote("CHG-wake", targets: "all")
            #expect(
                try await eventually(.seconds(90)) { try await f.source(of: "s1-h2", in: "CHG-wake") != nil },
                "the woken agent verified the release; see \(waiterLog)")
            let verifiedAfter = ContinuousClock.now - promoted
            let log = (try? String(contentsOfFile: waiterLog, encoding: .utf8)) ?? ""
            let woken = try #require(log.range(of: "woken by a magic packet for \(own)"), "\(log.suffix(2000))")
            let started = try #require(log.range(of: "changelab agent: 1 identity"), "\(log.suffix(2000))")
            #expect(woken.lowerBound < started.lowerBound, "the agent started only after its magic packet")

            // The representative reports what it sent at its next check-in (the woken agent can
            // be verified before that).
            #expect(
                try await eventually(.seconds(20)) {
                    try await f.admin.status("CHG-wake").representatives?.first?.wakeAttempts.isEmpty == false
                })
            let status = try await f.admin.status("CHG-wake")
            let segment = try #require(status.representatives?.first)
            #expect(segment.subnet == "10.77.1.0/24")
            #expect(segment.wakeAttempts.map(\.target) == ["s1-h2"] && segment.wakeAttempts.first?.by == "s1-h1")
            #expect(segment.wakeAttempts.first?.error == nil && segment.wakeAttempts.first?.packets == 1)
            let representativeLog = (try? String(contentsOfFile: f.work + "/agent-s1-h1.log", encoding: .utf8)) ?? ""
            #expect(representativeLog.contains("sent 1 Wake-on-LAN packets to 10.77.1.255:9"))
            print("wake fleet: promote to the woken target's verified copy reported: \(verifiedAfter)")
            print("wake fleet: \(StatusText.render(status))")
        }
    }

    /// A segment whose agents are all down has no one to send magic packets: its targets are
    /// chased as offline with that reason, and nothing claims to have woken them. When one
    /// comes back it represents the segment and carries out the waiting request for the other.
    @Test(.enabled(if: FleetTests.canBuildFleets, "needs root, iproute2 and iptables (sudo lab/setup)"))
    func aSegmentWithNoOnlineAgentIsChasedAsOfflineWithNoOneToWakeIt() async throws {
        try await PeerFleetTests.withPeerFleet(prefix: "hwn", hosts: 2, coreArguments: ["--offline-after", "4"]) { f in
            let first = try await f.startAgent(host: 1)
            let second = try await f.startAgent(host: 2)
            #expect(
                try await eventually(.seconds(20)) {
                    try await f.admin.agents().filter { $0.macAddresses?.isEmpty == false }.count == 2
                })
            first.kill()
            second.kill()
            #expect(try await eventually(.seconds(30)) { try await f.admin.agents().allSatisfy { !$0.online } })

            try await f.promote("CHG-dark", targets: "all")
            #expect(
                try await eventually(.seconds(20)) {
                    try await f.admin.chase("CHG-dark").map(\.reason)
                        == ["offline, no one to wake it", "offline, no one to wake it"]
                })
            let chased = try await f.admin.chase("CHG-dark")
            #expect(chased.map(\.name) == ["s1-h1", "s1-h2"])
            #expect(chased.allSatisfy { $0.detail.contains("no online agent on this segment to wake its targets") })
            let dark = try #require(try await f.admin.status("CHG-dark").representatives?.first)
            #expect(dark.subnet == "10.77.1.0/24" && dark.representative == nil && dark.wakeAttempts.isEmpty)
            #expect(dark.offlineTargets == 2 && dark.note == "no online agent on this segment to wake its targets")

            // One is back: it represents the segment and carries out the request the promotion
            // left pending — for the one still asleep only, not for itself — and gets the release.
            try await f.startAgent(host: 1)
            #expect(try await eventually(.seconds(90)) { try await f.source(of: "s1-h1", in: "CHG-dark") != nil })
            let woken = try await eventually(.seconds(30)) {
                try await f.admin.status("CHG-dark").representatives?.first?.wakeAttempts.isEmpty == false
            }
            let lit = try #require(try await f.admin.status("CHG-dark").representatives?.first)
            let representativeLog = (try? String(contentsOfFile: f.work + "/agent-s1-h1.log", encoding: .utf8)) ?? ""
            #expect(woken, "\(representativeLog.suffix(3000))")
            #expect(Set(lit.wakeAttempts.map(\.target)) == ["s1-h2"], "\(lit.wakeAttempts)")
            #expect(lit.wakeAttempts.allSatisfy { $0.by == "s1-h1" && $0.error == nil && $0.packets == 1 })
            #expect(lit.representative == "s1-h1" && lit.note == nil)
            let remaining = try await f.admin.chase("CHG-dark")
            #expect(remaining.map(\.name) == ["s1-h2"] && remaining.first?.reason == "offline")
            #expect(remaining.first?.detail.contains("(last by s1-h1") == true, "\(remaining)")
        }
    }
}
