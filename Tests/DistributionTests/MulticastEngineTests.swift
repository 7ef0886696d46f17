import Foundation
import HostIO
import Model
import Testing

@testable import Distribution

/// The core's side of targeted multicast: channels, send orders, listen orders and reports,
/// through the coordinator's public calls with a fake clock (RepresentativeTests' `Core`).
struct MulticastEngineTests {
    typealias Core = RepresentativeCoordinatorTests.Core

    static func settings() throws -> MulticastSettings {
        try MulticastSettings(range: "239.77.0.0/24", firstPort: 7700)
    }

    static func withCore(_ body: (Core) async throws -> Void) async throws {
        try await RepresentativeCoordinatorTests.withCore(multicast: try settings(), body)
    }

    /// a, b, c on segment 1 (a online longest), d alone on segment 2.
    static func enrolFleet(_ core: Core) async throws {
        try await core.enrol("a", "10.77.1.11/24")
        core.clock.advance(1)
        try await core.enrol("b", "10.77.1.12/24")
        try await core.enrol("c", "10.77.1.13/24")
        try await core.enrol("d", "10.77.2.11/24")
    }

    static func verified(_ change: String, release: String = "r1") -> [CacheReport] {
        [CacheReport(change: change, release: release, phase: .verified, bytes: 0, source: .multicast)]
    }

    @Test func theRepresentativeIsToldWhomToSendToAndEachReceiverWhomToListenTo() async throws {
        try await Self.withCore { core in
            try await Self.enrolFleet(core)
            try await core.promote("CHG-1")
            let role = try #require(try await core.roles("a").first)
            let send = try #require(role.multicast, "segment 1's representative gets a send order")
            #expect(send.group == "239.77.0.1" && send.port == 7700 && send.rate == 12_500_000)
            #expect(send.receivers.count == 2 && !send.receivers.contains(send.node))

            let b = try await core.checkIn("b")
            let listen = try #require(b.multicast?.first)
            #expect(listen.change == "CHG-1" && listen.subnet == "10.77.1.0/24" && listen.epoch == role.epoch)
            #expect(listen.group == send.group && listen.port == send.port && listen.sender == send.node)
            #expect(send.receivers.contains(listen.node))
            let seed = try #require(b.jobs.first { $0.claim?.kind == .seed }?.claim)
            #expect(seed.multicast == true, "b's seeding ticket says to wait for the segment's multicast")
            let c = try await core.checkIn("c")
            #expect(c.multicast?.first?.node != listen.node, "node ids are unique on the segment")

            // d is alone on its segment: it represents it, with nobody to send to.
            let dRole = try #require(try await core.roles("d").first)
            #expect(dRole.subnet == "10.77.2.0/24" && dRole.multicast == nil)
            #expect(try await core.checkIn("d").multicast == nil)

            let status = try await core.coordinator.status(change: "CHG-1")
            let segment = try #require(status.representatives?.first { $0.subnet == "10.77.1.0/24" })
            #expect(segment.multicast?.state == "sending" && segment.multicast?.receivers == 2)
            #expect(segment.multicast?.sender == "a")
        }
    }

    @Test func theRepresentativeHearsWhichReceiversHaveJoinedAndOnlyReceiversOfTheEpochCount() async throws {
        try await Self.withCore { core in
            try await Self.enrolFleet(core)
            try await core.promote("CHG-1")
            let role = try #require(try await core.roles("a").first)
            #expect(role.multicast?.joined == [] && role.multicast?.gatherSeconds == 30)
            let b = try #require(try await core.checkIn("b").multicast?.first)
            // b joins; the representative itself, d (another segment) and a stale epoch do not count.
            try await core.checkIn("b", joined: [MulticastJoin(change: "CHG-1", epoch: role.epoch)])
            try await core.checkIn("a", joined: [MulticastJoin(change: "CHG-1", epoch: role.epoch)])
            try await core.checkIn("d", joined: [MulticastJoin(change: "CHG-1", epoch: role.epoch)])
            try await core.checkIn("c", joined: [MulticastJoin(change: "CHG-1", epoch: role.epoch + 1)])
            #expect(try await core.roles("a").first?.multicast?.joined == [b.node])
            try await core.checkIn("c", joined: [MulticastJoin(change: "CHG-1", epoch: role.epoch)])
            let send = try #require(try await core.roles("a").first?.multicast)
            #expect(Set(send.joined ?? []) == Set(send.receivers) && send.receivers.count == 2)
            let many = (0..<65).map { MulticastJoin(change: "CHG-\($0)", epoch: 1) }
            await #expect(throws: CoreRefusal.self) { try await core.checkIn("b", joined: many) }
        }
    }

    @Test func onlyTheLeaseHoldersReportOfItsOwnEpochEndsTheSegmentsMulticast() async throws {
        try await Self.withCore { core in
            try await Self.enrolFleet(core)
            try await core.promote("CHG-1")
            let role = try #require(try await core.roles("a").first)
            func report(epoch: UInt64) -> MulticastReport {
                MulticastReport(
                    change: "CHG-1", epoch: epoch, receivers: 2, acknowledged: 2, rounds: 1, seconds: 1.5, bytes: 0,
                    error: nil)
            }
            // A receiver forging the report, or the holder with another epoch: not taken.
            try await core.checkIn("b", multicastReports: [report(epoch: role.epoch)])
            try await core.checkIn("a", multicastReports: [report(epoch: role.epoch + 1)])
            #expect(try await core.checkIn("c").multicast?.isEmpty == false, "c still listens")
            var segment = try #require(
                try await core.coordinator.status(change: "CHG-1").representatives?.first {
                    $0.subnet == "10.77.1.0/24"
                })
            #expect(segment.multicast?.state == "sending")

            let reply = try await core.checkIn("a", multicastReports: [report(epoch: role.epoch)])
            #expect(reply.representing?.first?.multicast == nil, "ended: no send order any more")
            #expect(try await core.checkIn("c").multicast == nil, "ended: receivers stop listening")
            segment = try #require(
                try await core.coordinator.status(change: "CHG-1").representatives?.first {
                    $0.subnet == "10.77.1.0/24"
                })
            #expect(segment.multicast?.state == "ended" && segment.multicast?.acknowledged == 2)
            let text = StatusText.render(try await core.coordinator.status(change: "CHG-1"))
            #expect(text.contains("ended: 2/2 acknowledged, 1 round, 1.5 s (by a)"), "\(text)")
            // One multicast per segment and job: an agent joining afterwards seeds from peers.
            try await core.enrol("late", "10.77.1.15/24")
            try await core.promote("CHG-1")
            let late = try await core.checkIn("late")
            #expect(late.multicast == nil)
            let ticket = try #require(late.jobs.first { $0.claim?.kind == .seed }?.claim)
            #expect(ticket.multicast == nil, "no waiting for a multicast that has ended")
            #expect(try await core.roles("a").first?.multicast == nil)
        }
    }

    @Test func aReceiverThatHoldsAVerifiedCopyOrOptsOutIsNotSentToAndOldAgentsAreLeftOut() async throws {
        try await Self.withCore { core in
            try await Self.enrolFleet(core)
            try await core.enrol("old", "10.77.1.14/24", protocolVersion: 4)
            try await core.promote("CHG-1")
            // b already holds the package verified; c opts out (`agent run --no-multicast`).
            try await core.checkIn("b", cache: Self.verified("CHG-1"))
            let c = try await core.checkIn("c", receivesMulticast: false)
            #expect(c.multicast == nil)
            #expect(c.jobs.first { $0.claim?.kind == .seed }?.claim?.multicast == nil)
            let old = try await core.checkIn("old", protocolVersion: 4)
            #expect(old.multicast == nil && old.jobs.first?.claim?.multicast == nil)
            #expect(try await core.roles("a").first?.multicast == nil, "nobody left to send to")
            // c comes back to multicast: it is a receiver again.
            try await core.checkIn("c", receivesMulticast: true)
            let send = try #require(try await core.roles("a").first?.multicast)
            #expect(send.receivers.count == 1)
        }
    }

    @Test func concurrentJobsGetTheirOwnGroupAndPortAndAFinishedJobsChannelIsReused() async throws {
        try await Self.withCore { core in
            try await Self.enrolFleet(core)
            try await core.promote("CHG-1", release: "r1")
            try await core.promote("CHG-2", release: "r2")
            let first = try #require(try await core.coordinator.status(change: "CHG-1").multicast)
            let second = try #require(try await core.coordinator.status(change: "CHG-2").multicast)
            #expect(first.group == "239.77.0.1" && first.port == 7700)
            #expect(second.group == "239.77.0.2" && second.port == 7701)
            // The two jobs' representatives differ (the role spreads); the third machine listens to both.
            var holders: Set<String> = []
            for change in ["CHG-1", "CHG-2"] {
                let status = try await core.coordinator.status(change: change)
                holders.insert(
                    try #require(status.representatives?.first { $0.subnet == "10.77.1.0/24" }?.representative))
            }
            let listener = try #require(["a", "b", "c"].first { !holders.contains($0) })
            let listens = try #require(try await core.checkIn(listener).multicast)
            #expect(Set(listens.map(\.group)) == ["239.77.0.1", "239.77.0.2"])
            #expect(Set(listens.map(\.port)) == [7700, 7701])
            // CHG-1 done on every target: its channel goes to the next job promoted.
            for name in ["a", "b", "c", "d"] {
                try await core.checkIn(
                    name, cache: [CacheReport(change: "CHG-1", release: "r1", phase: .activated, bytes: 0)])
            }
            try await core.promote("CHG-3", release: "r3")
            let third = try #require(try await core.coordinator.status(change: "CHG-3").multicast)
            #expect(third.group == "239.77.0.1" && third.port == 7700)
        }
    }

    @Test func aNewRepresentativeGetsANewEpochAndTheReceiversAreToldTheNewSender() async throws {
        try await Self.withCore { core in
            try await Self.enrolFleet(core)
            try await core.promote("CHG-1")
            let role = try #require(try await core.roles("a").first)
            let before = try #require(try await core.checkIn("b").multicast?.first)
            // a stops answering; b and c keep checking in; the lease expires.
            for _ in 0..<3 {
                core.clock.advance(25)
                try await core.checkIn("b")
                try await core.checkIn("c")
                await core.coordinator.tick()
            }
            let holder = try #require(
                try await core.coordinator.status(change: "CHG-1").representatives?.first {
                    $0.subnet == "10.77.1.0/24"
                }?.representative)
            #expect(holder != "a")
            let newRole = try #require(try await core.roles(holder).first)
            #expect(newRole.epoch > role.epoch)
            let other = holder == "b" ? "c" : "b"
            let after = try #require(try await core.checkIn(other).multicast?.first)
            #expect(after.epoch == newRole.epoch && after.sender != before.sender)
            #expect(newRole.multicast?.receivers == [after.node], "a is offline: not a receiver")
        }
    }

    @Test func aMulticastReportWithCountsOutOfRangeIsRefused() async throws {
        try await Self.withCore { core in
            try await Self.enrolFleet(core)
            let bad = [
                MulticastReport(
                    change: "CHG-1", epoch: 1, receivers: 2, acknowledged: 3, rounds: 1, seconds: 1, bytes: 0,
                    error: nil),
                MulticastReport(
                    change: "CHG-1", epoch: 1, receivers: 2, acknowledged: 1, rounds: 1, seconds: .nan, bytes: 0,
                    error: nil),
                MulticastReport(
                    change: "CHG-1", epoch: 1, receivers: 2, acknowledged: 1, rounds: 1, seconds: 1, bytes: -1,
                    error: nil),
                MulticastReport(
                    change: "CHG-1", epoch: 1, receivers: 2, acknowledged: 1, rounds: 1, seconds: 1, bytes: 0,
                    error: String(repeating: "x", count: 2000)),
            ]
            for report in bad {
                await #expect(throws: CoreRefusal.self) { try await core.checkIn("a", multicastReports: [report]) }
            }
            let many = (0..<65).map { _ in bad[0] }
            await #expect(throws: CoreRefusal.self) { try await core.checkIn("a", multicastReports: many) }
        }
    }

    @Test(arguments: [
        ("224.0.0.0/24", "outside 239"), ("10.0.0.0/24", "outside 239"), ("239.77.0.0/33", "not a multicast range"),
        ("fish", "not a multicast range"), ("238.0.0.0/7", "not a multicast range"),
    ])
    func aRangeOutside239OrMalformedIsRefused(range: String, message: String) {
        #expect {
            _ = try MulticastSettings(range: range, firstPort: 7700)
        } throws: { error in
            "\(error)".contains(message)
        }
    }

    @Test func portsMustFitAndTheRangesFirstAddressIsSkipped() throws {
        #expect(throws: ChangelabError.self) { try MulticastSettings(range: "239.77.0.0/24", firstPort: 65400) }
        #expect(throws: ChangelabError.self) { try MulticastSettings(range: "239.77.0.0/24", firstPort: 80) }
        let s = try MulticastSettings(range: "239.77.0.0/24", firstPort: 7700)
        #expect(s.groups == 255 && s.channel(0).group == "239.77.0.1" && s.channel(254).group == "239.77.0.255")
        let one = try MulticastSettings(range: "239.1.2.3/32", firstPort: 7700)
        #expect(one.groups == 1 && one.channel(0).group == "239.1.2.3")
        var bad = s
        bad.rate = 0
        bad.wait = .infinity
        #expect(bad.problems().count == 2)
    }

    @Test func normNodeIDsAreUniqueNonReservedAndStable() {
        let agents = (0..<2000).map { "agent-\($0)" }
        let ids = NormNodeIDs.assign(agents, existing: [:])
        #expect(ids.count == 2000 && Set(ids.values).count == 2000)
        #expect(!ids.values.contains(0) && !ids.values.contains(.max))
        // Given ids are kept; a colliding newcomer moves on.
        let taken = ["x": ids["agent-1"]!]
        let again = NormNodeIDs.assign(["agent-1", "x"], existing: taken)
        #expect(again["x"] == ids["agent-1"] && again["agent-1"] != again["x"])
        #expect(NormNodeIDs.assign(agents, existing: ids) == ids)
    }

    @Test func aTargetStillAsleepIsWokenAgainEveryFifteenSecondsUpToFiveTimes() async throws {
        try await Self.withCore { core in
            try await core.enrol("rep", "10.77.1.11/24")
            try await core.enrol("sleeper", "10.77.1.12/24")
            for _ in 0..<3 {
                core.clock.advance(30)
                try await core.checkIn("rep")
            }
            try await core.promote("CHG-1")
            var sent = 0
            for _ in 0..<8 {
                let role = try #require(try await core.roles("rep").first)
                if let order = role.wake {
                    sent += 1
                    try await core.checkIn(
                        "rep",
                        wakeReports: [
                            WakeReport(change: "CHG-1", request: order.request, epoch: role.epoch, packets: 1, error: nil)
                        ])
                }
                // Not again before 15 s have passed.
                core.clock.advance(10)
                await core.coordinator.tick()
                #expect(try await core.roles("rep").first?.wake == nil)
                core.clock.advance(6)
                await core.coordinator.tick()
            }
            #expect(sent == 5, "woken at promote, then again while still asleep, five times in all")
            let status = try await core.coordinator.status(change: "CHG-1")
            #expect(status.representatives?.first?.wakeAttempts.count == 5)
        }
    }
}
