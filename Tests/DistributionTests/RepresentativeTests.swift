import Foundation
import HostIO
import Model
import Testing

@testable import Distribution

/// The pure election: ranking and the lease's one transition.
struct RepresentativeElectionTests {
    static let t0 = Date(timeIntervalSince1970: 1_800_000_000)

    func candidate(
        _ agent: String, since: Double = 0, busy: Bool = false, roaming: Bool = false, leases: Int = 0
    ) -> RepresentativeCandidate {
        RepresentativeCandidate(
            agent: agent, onlineSince: Self.t0.addingTimeInterval(since), busy: busy, roaming: roaming,
            leasesHeld: leases)
    }

    @Test func theLongestRunningIdleSettledMachineIsPreferred() {
        let ranked = RepresentativeElection.rank([
            candidate("roams", since: -9000, roaming: true),
            candidate("busy", since: -9000, busy: true),
            candidate("newer", since: -10),
            candidate("oldest", since: -5000),
        ])
        #expect(ranked.map(\.agent) == ["oldest", "newer", "busy", "roams"])
    }

    @Test func aMachineThatRepresentsOtherJobsGivesWayToOneThatRepresentsFewer() {
        let ranked = RepresentativeElection.rank([
            candidate("old-but-serving", since: -9000, leases: 2), candidate("young", since: -10, leases: 0),
        ])
        #expect(ranked.first?.agent == "young")
    }

    @Test func aLeaseStaysWithItsHolderUntilItExpiresThenGoesToTheBestWithTheNextEpoch() throws {
        let lease = try #require(
            RepresentativeElection.next(
                current: nil, lastEpoch: 0, candidates: [candidate("a", since: -100), candidate("b", since: -50)],
                renewing: nil, needed: true, now: Self.t0, duration: 60))
        #expect(lease.agent == "a" && lease.epoch == 1 && lease.expiresAt == Self.t0.addingTimeInterval(60))
        // A better candidate appears while the lease is active: nothing changes.
        let better = [candidate("b", since: -99_999)]
        let kept = RepresentativeElection.next(
            current: lease, lastEpoch: 1, candidates: better, renewing: "b", needed: true,
            now: Self.t0.addingTimeInterval(30),
            duration: 60)
        #expect(kept == lease, "another agent's check-in neither takes nor renews the lease")
        let renewed = try #require(
            RepresentativeElection.next(
                current: lease, lastEpoch: 1, candidates: better, renewing: "a", needed: true,
                now: Self.t0.addingTimeInterval(30),
                duration: 60))
        #expect(renewed.agent == "a" && renewed.epoch == 1 && renewed.expiresAt == Self.t0.addingTimeInterval(90))
        // Not renewed past its expiry: re-assigned, with a higher epoch.
        let next = try #require(
            RepresentativeElection.next(
                current: renewed, lastEpoch: 1, candidates: better, renewing: nil, needed: true,
                now: Self.t0.addingTimeInterval(90),
                duration: 60))
        #expect(next.agent == "b" && next.epoch == 2)
        #expect(
            RepresentativeElection.next(
                current: renewed, lastEpoch: 1, candidates: [], renewing: nil, needed: true,
                now: Self.t0.addingTimeInterval(91),
                duration: 60) == nil, "nobody online: no representative")
        #expect(
            RepresentativeElection.next(
                current: renewed, lastEpoch: 1, candidates: better, renewing: "a", needed: false,
                now: Self.t0.addingTimeInterval(31),
                duration: 60) == nil, "a job done on the segment needs none")
    }

    /// Random check-ins, absences and ticks: the holder only ever changes once its lease expired,
    /// and epochs only grow.
    @Test(arguments: [1, 2, 3, 4, 5])
    func aSegmentNeverHasTwoRepresentativesForOneJob(seed: Int) {
        var random = SeededGenerator(seed: UInt64(seed))
        var lease: RepresentativeLease?
        var epoch: UInt64 = 0
        var now = Self.t0
        var online = Set(["a", "b", "c", "d"])
        var handovers = 0
        for _ in 0..<2000 {
            now = now.addingTimeInterval(Double.random(in: 0...7, using: &random))
            let flip = ["a", "b", "c", "d"].randomElement(using: &random) ?? "a"
            if Bool.random(using: &random) && Int.random(in: 0..<10, using: &random) == 0 {
                if online.contains(flip) { online.remove(flip) } else { online.insert(flip) }
            }
            let renewing = online.randomElement(using: &random)
            let candidates = online.sorted().enumerated().map { candidate($1, since: Double($0)) }
            let next = RepresentativeElection.next(
                current: lease, lastEpoch: epoch, candidates: candidates, renewing: renewing, needed: true, now: now,
                duration: 20)
            if let old = lease, old.isActive(at: now) {
                #expect(next?.agent == old.agent && next?.epoch == old.epoch, "an active lease was taken over")
            }
            if let next, next.epoch != lease?.epoch {
                #expect(next.epoch > epoch)
                handovers += 1
            }
            epoch = max(epoch, next?.epoch ?? 0)
            lease = next
        }
        #expect(handovers > 1, "the walk must exercise re-assignment")
    }
}

/// A clock the tests move (`Locked` is EngineTests' shared guarded box).
typealias TestClock = Locked<Date>

extension Locked where T == Date {
    var now: Date { value }
    func advance(_ seconds: Double) { mutate { $0 = $0.addingTimeInterval(seconds) } }
}

struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed &* 0x9E37_79B9_7F4A_7C15 | 1 }
    mutating func next() -> UInt64 {
        state ^= state << 13
        state ^= state >> 7
        state ^= state << 17
        return state
    }
}

/// The coordinator's leases and wake requests, through its public calls, with a fake clock.
struct RepresentativeCoordinatorTests {
    static let t0 = Date(timeIntervalSince1970: 1_800_000_000)

    final class Core: @unchecked Sendable {
        let scratch: Scratch
        let clock: TestClock
        let key: ReleaseKey
        var coordinator: Coordinator
        var token = ""
        var ids: [String: String] = [:]
        var macs: [String: String] = [:]
        let multicast: MulticastSettings?

        init(multicast: MulticastSettings? = nil) throws {
            self.multicast = multicast
            let scratch = Scratch("representatives")
            let clock = TestClock(RepresentativeCoordinatorTests.t0)
            let key = ReleaseKey()
            self.scratch = scratch
            self.clock = clock
            self.key = key
            coordinator = try Self.open(scratch.path, key: key, clock: clock, multicast: multicast)
        }

        static func open(_ path: String, key: ReleaseKey, clock: TestClock, multicast: MulticastSettings? = nil)
            throws -> Coordinator
        {
            var settings = CoreSettings()
            settings.multicast = multicast
            settings.offlineAfter = 60
            settings.checkInInterval = 10
            return try Coordinator(
                store: FileCoreStore(directory: path), key: key, settings: settings, clock: { clock.now })
        }

        func restart() throws {
            coordinator = try Self.open(scratch.path, key: key, clock: clock, multicast: multicast)
        }

        func setUp(releases: [String] = ["r1"]) async throws {
            token = try await coordinator.createToken(uses: 100, lifetime: 86_400)
            for release in releases {
                _ = try await coordinator.publish(
                    ReleaseManifest(
                        release: release, package: "demo", packageVersion: "1.0", size: 0,
                        digest: SHA256Digest(of: Data(release.utf8)), chunkSize: 4096, chunks: [],
                        publishedAt: RepresentativeCoordinatorTests.t0))
            }
        }

        /// Enrols `name` on `address` (`10.77.S.H/24`) and checks it in once.
        func enrol(_ name: String, _ address: String, protocolVersion: Int = WireProtocol.version) async throws {
            let reply = try await coordinator.enrol(
                EnrolRequest(
                    protocolVersion: protocolVersion, token: token, name: name, segment: "office", addresses: [address],
                    attributes: [:]))
            ids[name] = reply.agent
            let n = ids.count
            macs[name] = String(format: "52:54:00:00:00:%02x", n)
            _ = try await checkIn(name, address, protocolVersion: protocolVersion)
        }

        @discardableResult
        func checkIn(
            _ name: String, _ address: String? = nil, protocolVersion: Int = WireProtocol.version,
            wakeReports: [WakeReport]? = nil, macAddresses: [String]? = nil, receivesMulticast: Bool = true,
            multicastReports: [MulticastReport]? = nil, joined: [MulticastJoin]? = nil, cache: [CacheReport] = []
        ) async throws -> CheckInReply {
            let id = try #require(ids[name])
            let record = try #require(await coordinator.agentRecord(id))
            var body = CheckIn(
                name: name, segment: "office", addresses: address.map { [$0] } ?? record.addresses, attributes: [:],
                inventory: nil, inventoryDigest: "", cache: cache,
                macAddresses: protocolVersion >= 4 ? macAddresses ?? macs[name].map { [$0] } : nil,
                wakeReports: wakeReports, receivesMulticast: receivesMulticast, multicastReports: multicastReports,
                multicastJoined: joined)
            body.protocolVersion = protocolVersion
            return try await coordinator.checkIn(agent: id, body)
        }

        func roles(_ name: String) async throws -> [RepresentativeRole] {
            try await checkIn(name).representing ?? []
        }

        func promote(_ change: String, release: String = "r1") async throws {
            _ = try await coordinator.promote(
                change: change, release: release, query: "all", rings: [Ring(name: "all", share: 1)], rate: nil,
                maxFailureRate: nil)
        }

        func name(of id: String?) -> String? { ids.first { $0.value == id }?.key }
    }

    static func withCore(multicast: MulticastSettings? = nil, _ body: (Core) async throws -> Void) async throws {
        let core = try Core(multicast: multicast)
        defer { core.scratch.cleanup() }
        try await core.setUp(releases: ["r1", "r2", "r3"])
        try await body(core)
    }

    @Test func theRepresentativeStopsAnsweringAndAnotherTakesOverOnlyAfterTheLeaseExpires() async throws {
        try await Self.withCore { core in
            try await core.enrol("a", "10.77.1.11/24")
            core.clock.advance(1)
            try await core.enrol("b", "10.77.1.12/24")
            try await core.promote("CHG-1")
            // a has been online longest: it represents the segment; b learns no role.
            let first = try #require(try await core.roles("a").first)
            #expect(first.change == "CHG-1" && first.subnet == "10.77.1.0/24" && first.epoch == 1)
            #expect(try await core.roles("b").isEmpty)
            // a keeps checking in: its lease is renewed, b never gets the role.
            for _ in 0..<5 {
                core.clock.advance(30)
                #expect(try await core.roles("a").map(\.epoch) == [1])
                #expect(try await core.roles("b").isEmpty)
            }
            // a stops answering. Until its lease (60 s, the offline time) runs out, nobody else.
            core.clock.advance(59)
            #expect(try await core.roles("b").isEmpty, "the lease has not expired yet")
            await core.coordinator.tick()
            core.clock.advance(2)
            await core.coordinator.tick()
            let status = try await core.coordinator.status(change: "CHG-1")
            #expect(status.representatives?.first?.representative == "b", "the tick re-assigned the expired lease")
            let taken = try #require(try await core.roles("b").first)
            #expect(taken.epoch == 2)
            // a comes back: the role stays with b (it holds an active lease).
            #expect(try await core.roles("a").isEmpty)
        }
    }

    @Test func theLeaseAndItsEpochSurviveACoreRestart() async throws {
        try await Self.withCore { core in
            try await core.enrol("a", "10.77.1.11/24")
            try await core.enrol("b", "10.77.1.12/24")
            try await core.promote("CHG-1")
            let holder = try #require(
                try await core.coordinator.status(change: "CHG-1").representatives?.first?.representative)
            try core.restart()
            let after = try await core.coordinator.status(change: "CHG-1").representatives?.first
            #expect(after?.representative == holder && after?.epoch == 1)
            let other = holder == "a" ? "b" : "a"
            #expect(try await core.roles(other).isEmpty, "the restarted core does not grant a second lease")
            #expect(try await core.roles(holder).map(\.epoch) == [1])
        }
    }

    @Test func theRoleSpreadsAcrossJobsSoOneMachineDoesNotServeThemAll() async throws {
        try await Self.withCore { core in
            try await core.enrol("a", "10.77.1.11/24")
            core.clock.advance(1)
            try await core.enrol("b", "10.77.1.12/24")
            core.clock.advance(1)
            try await core.enrol("c", "10.77.1.13/24")
            try await core.promote("CHG-1", release: "r1")
            try await core.promote("CHG-2", release: "r2")
            try await core.promote("CHG-3", release: "r3")
            var holders: [String] = []
            for change in ["CHG-1", "CHG-2", "CHG-3"] {
                let status = try await core.coordinator.status(change: change)
                holders.append(try #require(status.representatives?.first?.representative))
            }
            #expect(Set(holders).count == 3, "three jobs, three machines: \(holders)")
            #expect(holders.first == "a", "the first job gets the longest-running machine")
        }
    }

    @Test func aProtocolThreeAgentIsStillServedButNeverMadeRepresentative() async throws {
        try await Self.withCore { core in
            try await core.enrol("old", "10.77.1.11/24", protocolVersion: 3)
            try await core.promote("CHG-1")
            let reply = try await core.checkIn("old", protocolVersion: 3)
            #expect(reply.jobs.count == 1, "a protocol 3 agent still gets its seeding job")
            #expect(reply.representing == nil)
            #expect(try await core.coordinator.status(change: "CHG-1").representatives?.first?.representative == nil)
            try await core.enrol("new", "10.77.1.12/24")
            try await core.promote("CHG-1")
            #expect(try await core.roles("new").count == 1, "the protocol 4 agent of the segment represents it")
        }
    }

    @Test func anOfflineTargetIsWokenByItsSegmentsRepresentativeAndTheAttemptIsRecorded() async throws {
        try await Self.withCore { core in
            try await core.enrol("rep", "10.77.1.11/24")
            try await core.enrol("sleeper", "10.77.1.12/24")
            try await core.enrol("other", "10.77.2.11/24")
            // sleeper goes quiet; rep and other keep checking in.
            for _ in 0..<3 {
                core.clock.advance(30)
                try await core.checkIn("rep")
                try await core.checkIn("other")
            }
            try await core.promote("CHG-1")
            let role = try #require(try await core.roles("rep").first)
            let order = try #require(role.wake, "the representative is asked to wake the offline target")
            #expect(order.macAddresses == [try #require(core.macs["sleeper"])])
            #expect(try await core.roles("other").first?.wake == nil, "segment 2 has nobody offline")
            let chasedBefore = try await core.coordinator.chase(change: "CHG-1").first { $0.name == "sleeper" }
            #expect(chasedBefore?.reason == "offline")

            // A report from another agent, or with a stale epoch, is not taken.
            let forged = WakeReport(change: "CHG-1", request: order.request, epoch: role.epoch, packets: 1, error: nil)
            try await core.checkIn("other", wakeReports: [forged])
            var stale = forged
            stale.epoch = role.epoch + 7
            try await core.checkIn("rep", wakeReports: [stale])
            var status = try await core.coordinator.status(change: "CHG-1")
            let segment1 = try #require(status.representatives?.first { $0.subnet == "10.77.1.0/24" })
            #expect(segment1.wakeAttempts.isEmpty && segment1.wakePending == 1)

            let reply = try await core.checkIn("rep", wakeReports: [forged])
            #expect(reply.representing?.first?.wake == nil, "carried out: not asked again")
            status = try await core.coordinator.status(change: "CHG-1")
            let after = try #require(status.representatives?.first { $0.subnet == "10.77.1.0/24" })
            #expect(after.representative == "rep" && after.offlineTargets == 1 && after.wakePending == 0)
            #expect(after.wakeAttempts.map(\.target) == ["sleeper"] && after.wakeAttempts.first?.by == "rep")
            let text = StatusText.render(status)
            #expect(text.contains("rep (epoch 1)") && text.contains("sent 1 (last: sleeper by rep)"), "\(text)")
            let chased = try #require(try await core.coordinator.chase(change: "CHG-1").first { $0.name == "sleeper" })
            #expect(chased.detail.contains("Wake-on-LAN 1× (last by rep"), "\(chased.detail)")
        }
    }

    @Test func aSegmentWithNoOnlineAgentHasNoOneToWakeItsTargetsAndTheChaseListSaysSo() async throws {
        try await Self.withCore { core in
            try await core.enrol("alone", "10.77.3.11/24")
            try await core.enrol("elsewhere", "10.77.1.11/24")
            core.clock.advance(61)
            try await core.checkIn("elsewhere")
            try await core.promote("CHG-1")
            let chased = try #require(try await core.coordinator.chase(change: "CHG-1").first { $0.name == "alone" })
            #expect(chased.reason == "offline, no one to wake it")
            #expect(chased.detail.contains("no online agent on this segment to wake its targets"))
            let status = try await core.coordinator.status(change: "CHG-1")
            let segment = try #require(status.representatives?.first { $0.subnet == "10.77.3.0/24" })
            #expect(segment.representative == nil && segment.wakePending == 1 && segment.note != nil)
            #expect(StatusText.render(status).contains("none: no online agent on this segment"))
            // An agent of that segment comes online and joins the job (promoted again): it becomes
            // representative and gets the order.
            try await core.enrol("arrives", "10.77.3.12/24")
            try await core.promote("CHG-1")
            #expect(try await core.roles("arrives").first?.wake?.macAddresses == [try #require(core.macs["alone"])])
        }
    }

    @Test(arguments: [
        ["52:54:00:AB:CD:EF"], ["52-54-00-ab-cd-ef"], ["52:54:00:ab:cd"], ["01:00:5e:00:00:01"],
        ["00:00:00:00:00:00"], ["ff:ff:ff:ff:ff:ff"], ["52:54:00:ab:cd:eg"], [String(repeating: "a", count: 300)],
        (0..<17).map { String(format: "52:54:00:00:00:%02x", $0 + 1) },
    ])
    func aCheckInWithMalformedOrTooManyMACAddressesIsRefusedWithTheReason(macs: [String]) async throws {
        try await Self.withCore { core in
            try await core.enrol("a", "10.77.1.11/24")
            let error = await #expect(throws: CoreRefusal.self) { try await core.checkIn("a", macAddresses: macs) }
            #expect(error.map { "\($0)".contains("MAC address") } == true, "\(String(describing: error))")
        }
    }

    @Test func tooManyWakeReportsAreRefused() async throws {
        try await Self.withCore { core in
            try await core.enrol("a", "10.77.1.11/24")
            let reports = (0..<65).map { WakeReport(change: "c", request: "w-\($0)", epoch: 1, packets: 1, error: nil) }
            await #expect(throws: CoreRefusal.self) { try await core.checkIn("a", wakeReports: reports) }
            try await core.checkIn("a", wakeReports: Array(reports.prefix(64)))
        }
    }
}

/// Magic packets: the exact format, and real UDP sockets on loopback.
struct MagicPacketTests {
    static let mac = MACAddress("52:54:00:12:34:56")

    @Test func aMagicPacketIsSixFFsAndSixteenCopiesOfTheAddressAndParsesBack() throws {
        let mac = try #require(Self.mac)
        let packet = MagicPacket.encode(mac)
        #expect(packet.count == 102)
        #expect(packet.prefix(6) == [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF])
        #expect(Array(packet[96..<102]) == [0x52, 0x54, 0x00, 0x12, 0x34, 0x56])
        #expect(MagicPacket.parse(packet) == mac)
    }

    @Test func wrongLengthsBrokenCopiesAndGroupAddressesAreNotMagicPackets() throws {
        let packet = MagicPacket.encode(try #require(Self.mac))
        #expect(MagicPacket.parse(Array(packet.dropLast())) == nil)
        #expect(
            MagicPacket.parse(packet + [0]) == nil, "a SecureOn password or trailing bytes: not exactly a magic packet")
        #expect(MagicPacket.parse([]) == nil)
        var broken = packet
        broken[50] ^= 1
        #expect(MagicPacket.parse(broken) == nil)
        var noSync = packet
        noSync[2] = 0xFE
        #expect(MagicPacket.parse(noSync) == nil)
        let group =
            [UInt8](repeating: 0xFF, count: 6) + (0..<16).flatMap { _ in [0x01, 0x00, 0x5E, 0, 0, 1] as [UInt8] }
        #expect(MagicPacket.parse(group) == nil)
        #expect(MACAddress("52:54:00:12:34:5") == nil && MACAddress("5254:00:12:34:56:") == nil)
        #expect(MACAddress("52:54:00:12:34:56")?.description == "52:54:00:12:34:56")
    }

    /// Sends another machine's magic packet to `port` until the waiter there has ignored one
    /// (so it is listening); false after 30 s.
    static func untilListening(port: UInt16, ignored: Locked<[String]>) async throws -> Bool {
        let other = try #require(MACAddress("52:54:00:65:43:21"))
        return try await eventually(.seconds(30)) {
            _ = try WakeOnLAN.send([other], broadcast: "127.0.0.1", port: port)
            try await Task.sleep(for: .milliseconds(200))
            return !ignored.value.isEmpty
        }
    }

    @Test func theWaiterIgnoresOtherMachinesPacketsAndGarbageAndWakesOnItsOwn() async throws {
        let mine = try #require(Self.mac)
        let port: UInt16 = 47_000 + UInt16.random(in: 0..<1000)
        let ignored = Locked<[String]>([])
        let waiting = Task {
            try await BlockingWork.run {
                try WakeOnLAN.wait(for: mine, port: port, timeout: 60) { line in ignored.mutate { $0.append(line) } }
            }
        }
        // Another machine's packet, sent until the waiter (started on a thread of its own, late
        // on a busy machine) has seen one: each is ignored and named, none wakes it.
        #expect(try await Self.untilListening(port: port, ignored: ignored))
        #expect(ignored.value.allSatisfy { $0.contains("for 52:54:00:65:43:21") }, "\(ignored.value)")
        #expect(try WakeOnLAN.send([mine], broadcast: "127.0.0.1", port: port) == 1)
        #expect(try await waiting.value)
    }

    @Test func theWaiterGivesUpAtItsTimeoutWhenOnlyOtherPacketsCome() async throws {
        let mine = try #require(Self.mac)
        let port: UInt16 = 48_000 + UInt16.random(in: 0..<1000)
        let waiting = Task { try await BlockingWork.run { try WakeOnLAN.wait(for: mine, port: port, timeout: 1.5) } }
        try await Task.sleep(for: .milliseconds(300))
        _ = try WakeOnLAN.send([try #require(MACAddress("52:54:00:65:43:21"))], broadcast: "127.0.0.1", port: port)
        let started = ContinuousClock.now
        #expect(try await waiting.value == false)
        #expect(ContinuousClock.now - started < .seconds(15), "it gives up at its time-out rather than waiting on")
    }

    /// A representative whose Wake-on-LAN is off sends nothing and says so in its report; the
    /// same order with it on reaches the listener (loopback stands for the segment).
    @Test(arguments: [false, true])
    func aWakeOrderIsCarriedOutOnlyWhenTheAgentSendsWakeOnLAN(_ enabled: Bool) async throws {
        let mine = try #require(Self.mac)
        let port: UInt16 = 49_000 + UInt16.random(in: 0..<1000)
        let scratch = Scratch("wake-switch")
        defer { scratch.cleanup() }
        var configuration = makeAgentConfiguration(
            coreURL: "https://127.0.0.1:1", base: scratch.path, name: "rep", token: "",
            key: SigningKey().publicKey)
        configuration.wakeOnLAN = enabled
        configuration.wakePort = port
        let http = try TestTLS.client()
        defer { _ = http.shutdown() }
        let agent = Agent(configuration: configuration, client: http)
        let ignored = Locked<[String]>([])
        let waiting = Task {
            try await BlockingWork.run {
                try WakeOnLAN.wait(for: mine, port: port, timeout: 5) { line in ignored.mutate { $0.append(line) } }
            }
        }
        // The waiter is listening once it has ignored another machine's packet (a fixed head
        // start lost the race on a busy machine: the order's packet came before the bind).
        #expect(try await Self.untilListening(port: port, ignored: ignored))
        await agent.wake(
            WakeOrder(request: "w1", macAddresses: [mine.description]), change: "CHG-1", epoch: 3, broadcast: "127.0.0.1")
        #expect(try await waiting.value == enabled)
        let report = try #require(await agent.wakeReports.first)
        #expect(report.request == "w1" && report.epoch == 3)
        if enabled {
            #expect(report.packets == 1 && report.error == nil)
        } else {
            #expect(report.packets == 0 && report.error?.contains("Wake-on-LAN is off on this agent") == true)
        }
    }

    @Test func theSegmentBroadcastAddressComesFromTheInterfaceAddress() throws {
        #expect(try #require(InterfaceAddress("10.77.1.11/24")).broadcast == "10.77.1.255")
        #expect(try #require(InterfaceAddress("10.77.1.11/16")).broadcast == "10.77.255.255")
        #expect(try #require(InterfaceAddress("10.77.1.11/32")).broadcast == "255.255.255.255")
    }
}

/// `changelab agent wait-for-wake` as a process: its refusals and exit codes, on loopback.
struct WaitForWakeCommandTests {
    @Test func aMalformedMACIsRefusedWithTheFixAndTheTimeoutExitsOne() async throws {
        let binary = try #require(changelabExecutable(), "build the changelab executable first (swift build)")
        let bad = try await HostCommand.run(binary, ["agent", "wait-for-wake", "--mac", "01:00:5e:00:00:01"])
        #expect(bad.status != 0)
        #expect(String(decoding: bad.stderr, as: UTF8.self).contains("is not a unicast MAC address"))
        let port = String(46_000 + Int.random(in: 0..<1000))
        let quiet = try await HostCommand.run(
            binary, ["agent", "wait-for-wake", "--mac", "52:54:00:12:34:56", "--port", port, "--timeout", "1"])
        #expect(quiet.status == 1)
        #expect(String(decoding: quiet.stderr, as: UTF8.self).contains("no magic packet for 52:54:00:12:34:56"))
    }

    @Test func itExitsZeroWhenItsOwnMagicPacketArrives() async throws {
        let binary = try #require(changelabExecutable(), "build the changelab executable first (swift build)")
        let port = 45_000 + UInt16.random(in: 0..<1000)
        let waiting = Task {
            try await HostCommand.run(
                binary,
                ["agent", "wait-for-wake", "--mac", "52:54:00:12:34:56", "--port", String(port), "--timeout", "20"])
        }
        let mac = try #require(MACAddress("52:54:00:12:34:56"))
        // Sent every 200 ms until the process exits (it may take a moment to start listening).
        let sender = Task {
            while !Task.isCancelled {
                _ = try? WakeOnLAN.send([mac], broadcast: "127.0.0.1", port: port)
                try? await Task.sleep(for: .milliseconds(200))
            }
        }
        let done = try await waiting.value
        sender.cancel()
        #expect(done.status == 0)
        #expect(String(decoding: done.stderr, as: UTF8.self).contains("woken by a magic packet"))
    }
}
