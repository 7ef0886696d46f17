#if canImport(Glibc)
import Glibc
#endif
import AsyncHTTPClient
import Foundation
import HostIO
import Model
import NIOCore
import Testing

@testable import Distribution

/// Segments from subnets: what agents report and what the core derives from it.
struct SegmentRuleTests {
    @Test(arguments: [
        ("10.77.1.11/24", "10.77.1.0/24"), ("10.77.1.200/16", "10.77.0.0/16"), ("192.168.7.9/32", "192.168.7.9/32"),
        ("10.0.0.1/0", "0.0.0.0/0"),
    ])
    func anInterfaceAddressNamesItsSubnet(text: String, subnet: String) throws {
        #expect(try #require(InterfaceAddress(text)).subnet == subnet)
    }

    @Test(arguments: [
        "10.77.1.11", "10.77.1.11/33", "10.77.1.256/24", "10.77.1/24", "10.77.1.11/", "/24", "10.77.1.11/24/1",
        "10.77.1.011a/24", "1.2.3.4/-1", "１.2.3.4/24", "10.77.1.11/9999999999999999999999", "",
        String(repeating: "9", count: 200),
    ])
    func garbageIsNoAddress(text: String) {
        #expect(InterfaceAddress(text) == nil)
        #expect(!AgentFacts.isInterfaceAddress(text))
    }

    @Test func theFirstAddressAsSentDecidesTheSegment() async throws {
        // An agent puts the address its route to the core leaves from first, whatever sorts first.
        let sent = ["192.168.7.9/24", "10.77.255.193/30", "172.17.0.1/16"]
        #expect(InterfaceAddress.segmentAddress(of: sent)?.subnet == "192.168.7.0/24")
        #expect(InterfaceAddress.segmentAddress(of: ["garbage", "fe80::1/64"] + sent)?.subnet == "192.168.7.0/24")
        #expect(InterfaceAddress.segmentAddress(of: ["garbage"]) == nil)
        // The kernel's source address towards the core; every host address can be the first.
        #expect(Agent.sourceAddress(towards: "127.0.0.1") == "127.0.0.1")
        #expect(Agent.sourceAddress(towards: "not a host name") == nil)
        // The fleet tests beside this one add and remove management links (10.77.x) in this
        // namespace: only the machine's own addresses are stable enough to compare.
        func stable(_ addresses: [String]) -> [String] { addresses.filter { !$0.hasPrefix("10.77.") } }
        let own = stable(Agent.addresses())
        for address in own {
            let host = try #require(InterfaceAddress(address)?.host)
            let ordered = Agent.addresses(preferring: host)
            #expect(ordered.first == address && Set(stable(ordered)) == Set(own))
            // A core reached through that address (a local one: the connect sends nothing)
            // makes it the first an agent reports.
            #expect(Agent.sourceAddress(towards: host) == host)
            let configuration = AgentConfiguration(
                name: "pc", coreURL: "https://\(host):7480", stateDirectory: "/nonexistent", root: "/nonexistent",
                segment: "s", attributes: [:], coreKey: ReleaseKey().publicKey, enrolmentToken: nil)
            let agent = Agent(configuration: configuration, client: HTTPClient.shared)
            #expect(await agent.reportedAddresses().first == address)
        }
        #expect(stable(Agent.addresses(preferring: "127.0.0.1")) == own)
    }

    @Test func aSegmentChangesWithTheSubnetNeverWithTheLabel() {
        var record = AgentRecord(
            id: "a-1", name: "pc", segment: "lan-a", addresses: [], attributes: [:], secretHash: "", revoked: false,
            enrolledAt: Date(), lastSeen: Date())
        func checkIn(_ label: String, _ addresses: [String]) -> CheckIn {
            CheckIn(
                name: "pc", segment: label, addresses: addresses, attributes: [:], inventory: nil, inventoryDigest: "",
                cache: [], peerPort: 7481)
        }
        record.apply(segmentOf: checkIn("lan-a", ["10.77.1.11/24"]))
        #expect(record.subnet == "10.77.1.0/24" && record.segment == "lan-a")
        #expect(record.peerURL == "http://10.77.1.11:7481")
        // Another label on the same subnet: still the same segment.
        record.apply(segmentOf: checkIn("lan-b", ["10.77.1.11/24"]))
        #expect(record.subnet == "10.77.1.0/24" && record.segment == "lan-a")
        // Moved to another subnet: a new segment, named by the label it sends now.
        record.apply(segmentOf: checkIn("lan-b", ["10.77.2.11/24"]))
        #expect(record.subnet == "10.77.2.0/24" && record.segment == "lan-b")
    }

    @Test func aProtocolThreeAgentWithoutPrefixesIsRefusedAndProtocolTwoStillWorks() async throws {
        try await withCore { core, _, http in
            let admin = try core.admin
            let token = try await admin.createToken(uses: 2, lifetime: 60)
            let link = HTTPLink(baseURL: core.url, credential: nil, client: http)
            var bare = EnrolRequest(
                token: token.token, name: "new", segment: "s", addresses: ["10.0.0.1"], attributes: [:])
            await #expect(throws: LinkError.self) { _ = try await link.post("/v1/enrol", bare, as: EnrolReply.self) }
            bare.protocolVersion = 2
            bare.name = "old"
            _ = try await link.post("/v1/enrol", bare, as: EnrolReply.self)
            let record = try #require(try await admin.agents().first { $0.name == "old" })
            #expect(await core.server.coordinator.agentRecord(record.id)?.subnet == nil)
        }
    }
}

/// The peer server over real sockets: a real core seeds a real agent, whose peer server
/// then answers (or refuses) other agents.
@Suite(.serialized) struct PeerServerTests {
    /// A core, one agent that verified a package and serves peers (one download at a time,
    /// throttled so a download stays open long enough to see the cap), and the package.
    func withServingAgent(
        _ body: (_ port: Int, _ manifest: ReleaseManifest, _ cache: AgentCache, _ http: HTTPClient, _ agent: Agent)
            async throws -> Void
    ) async throws {
        try await withCore { core, scratch, http in
            let admin = try core.admin
            let deb = try await TestPackage.build(in: scratch.path, size: 600_000)
            let manifest = try await admin.publish(file: deb, release: "peer-1")
            let group = try await startAgents(["pc-1"], core: core, scratch: scratch, http: http) { c in
                c.peerServing = PeerServing(port: 0, maxDownloads: 1, rate: 150_000)
            }
            defer { Task { await group.stop() } }
            _ = try await admin.promote(
                "CHG-peer",
                PromoteRequest(release: "peer-1", targets: "all", rings: nil, rate: nil, maxFailureRate: nil))
            #expect(try await eventually(.seconds(60)) { try await admin.status("CHG-peer").total.verified == 1 })
            let agent = try #require(group.agents.first)
            let port = try #require(await agent.peerServerPort)
            let cache = AgentCache(directory: scratch.path + "/agents/pc-1/cache", lifetime: 3600)
            try await body(port, manifest, cache, http, agent)
            await group.stop()
        }
    }

    func get(_ url: String, range: String? = nil, http: HTTPClient) async throws -> (Int, String, ByteBuffer) {
        var request = HTTPClientRequest(url: url)
        if let range { request.headers.add(name: "Range", value: range) }
        let response = try await http.execute(request, timeout: .seconds(30))
        let body = try await response.body.collect(upTo: 8 << 20)
        return (Int(response.status.code), response.headers.first(name: "Content-Range") ?? "", body)
    }

    @Test func aPeerServesVerifiedBytesByDigestWithRanges() async throws {
        try await withServingAgent { port, manifest, cache, http, _ in
            let entry = try #require(cache.entries().first)
            let file = try Data(contentsOf: URL(fileURLWithPath: cache.packagePath(entry.change)))
            let (status, range, body) = try await get(
                "http://127.0.0.1:\(port)\(peerPath(manifest.digest))", range: "bytes=1000-1999", http: http)
            #expect(status == 206)
            #expect(range == "bytes 1000-1999/\(manifest.size)")
            #expect(Data(buffer: body) == file[1000..<2000])
        }
    }

    @Test func aPeerRefusesPathsAndDigestsItDoesNotHoldVerified() async throws {
        try await withServingAgent { port, manifest, cache, http, _ in
            let base = "http://127.0.0.1:\(port)/v1/peer/sha256/"
            for hostile in [
                "..%2F..%2Fidentity.json", "..", "identity.json", manifest.digest.hex.uppercased(),
                "sha256:" + manifest.digest.hex, manifest.digest.hex + "0",
                String(manifest.digest.hex.dropLast()) + "g",
            ] {
                let (status, _, _) = try await get(base + hostile, http: http)
                #expect(status == 400, "\(hostile) answered \(status)")
            }
            let unknown = SHA256Digest(of: Data("not here".utf8))
            #expect(try await get(base + unknown.hex, http: http).0 == 404)

            // Not fully verified: an entry back in seeding, then a file changed after it verified.
            var entry = try #require(cache.entries().first)
            let verified = entry
            entry.phase = .seeding
            try cache.save(entry)
            #expect(try await get(base + manifest.digest.hex, http: http).0 == 404)
            try cache.save(verified)
            #expect(try await get(base + manifest.digest.hex, range: "bytes=0-9", http: http).0 == 206)
            let handle = try #require(FileHandle(forWritingAtPath: cache.packagePath(entry.change)))
            try handle.seek(toOffset: 10)
            try handle.write(contentsOf: Data([0xFF]))
            try handle.close()
            let (status, _, body) = try await get(base + manifest.digest.hex, http: http)
            #expect(status == 404)
            #expect(String(buffer: body).contains("no verified copy"))
        }
    }

    @Test func aPeerRefusesDownloadsBeyondItsCapWithAReason() async throws {
        try await withServingAgent { port, manifest, _, http, _ in
            let url = "http://127.0.0.1:\(port)\(peerPath(manifest.digest))"
            // 600 kB at 150 kB/s: the first download holds the only slot for about four seconds.
            let first = try await http.execute(HTTPClientRequest(url: url), timeout: .seconds(30))
            #expect(first.status.code == 200)
            let (status, _, body) = try await get(url, http: http)
            #expect(status == 503)
            #expect(String(buffer: body).contains("at most 1 downloads at once"))
            let whole = try await first.body.collect(upTo: 8 << 20)
            #expect(Int64(whole.readableBytes) == manifest.size)
            // The slot is free again once the download finished (bounded loosely: CI runs the
            // fleet tests beside this one).
            var last = ""
            #expect(
                try await eventually(.seconds(20)) {
                    let (status, _, body) = try await get(url, range: "bytes=0-0", http: http)
                    last = "\(status) \(String(buffer: body))"
                    return status == 206
                }, "the last answer: \(last)")
        }
    }

    @Test func clientsThatHangUpBeforeTheAnswerLeakNoDownloadSlot() async throws {
        try await withServingAgent { port, manifest, _, http, _ in
            // Requests whose connection is reset right after sending: the peer admits some of
            // them and then cannot even write the answer's head, so their body never runs. Each
            // such request must still give its slot back; with one slot, one leak is a peer
            // that refuses every download from then on.
            let request = Array(
                "GET \(peerPath(manifest.digest)) HTTP/1.1\r\nHost: peer\r\nRange: bytes=0-0\r\n\r\n".utf8)
            for _ in 0..<200 {
                let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
                #expect(fd >= 0)
                var address = sockaddr_in()
                address.sin_family = sa_family_t(AF_INET)
                address.sin_port = in_port_t(UInt16(port).bigEndian)
                address.sin_addr.s_addr = inet_addr("127.0.0.1")
                let connected = withUnsafePointer(to: &address) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                    }
                }
                if connected == 0 {
                    _ = send(fd, request, request.count, Int32(MSG_NOSIGNAL))
                    // Reset, not a graceful close: the peer's writes fail at once.
                    var reset = linger(l_onoff: 1, l_linger: 0)
                    _ = setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset, socklen_t(MemoryLayout<linger>.size))
                }
                close(fd)
            }
            let url = "http://127.0.0.1:\(port)\(peerPath(manifest.digest))"
            #expect(try await eventually(.seconds(30)) { try await get(url, range: "bytes=0-0", http: http).0 == 206 })
            let (status, _, body) = try await get(url, range: "bytes=0-0", http: http)
            #expect(status == 206, "\(String(buffer: body))")
        }
    }

    @Test func aPeerThatLeftItsSegmentStopsServingAndAnnouncesNoPort() async throws {
        try await withServingAgent { port, manifest, _, http, agent in
            let url = "http://127.0.0.1:\(port)\(peerPath(manifest.digest))"
            let here = await agent.reportedAddresses()
            #expect(await agent.announcedPeerPort(addresses: here) == port)
            #expect(try await get(url, range: "bytes=0-0", http: http).0 == 206)
            // The machine moved: its first address is now on another subnet.
            #expect(await agent.announcedPeerPort(addresses: ["1.0.0.5/24"]) == nil)
            let (status, _, body) = try await get(url, range: "bytes=0-0", http: http)
            #expect(status == 503)
            #expect(String(buffer: body).contains("left segment"))
        }
    }
}
