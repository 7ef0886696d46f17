import AsyncHTTPClient
import Foundation
import HostIO
import Model
import Testing

@testable import Distribution

/// Peer download in the namespace fleet: a core process behind the rate-limited WAN, agent
/// processes on one segment (10.77.1.0/24), bytes counted by the core and on the WAN link.
@Suite(.serialized) struct PeerFleetTests {
    static let peerPort = 7481

    /// One fleet (one segment of `hosts` hosts), its core, and what the tests drive it with.
    final class PeerFleet: @unchecked Sendable {
        // @unchecked: used from the test's task only.
        let fleet: TestFleet
        let work: String
        let binary: String
        let processes = ProcessList()
        let clients = ClientList()
        let authority: ThrowawayAuthority
        var admin: CoreClient!
        var http: HTTPClient!
        var pin = ""
        var token: TokenReply!
        var manifest: ReleaseManifest!
        /// More options for `core serve` (WakeFleetTests: a short `--offline-after`).
        let coreArguments: [String]

        init(prefix: String, hosts: Int, binary: String, coreArguments: [String] = [], multicastLoss: Double? = nil)
            throws
        {
            self.coreArguments = coreArguments
            var options = BenchOptions(
                workDirectory: "/tmp/changelab-peer-\(prefix)-\(UUID().uuidString.prefix(6))", executable: binary,
                fleetScript: FleetTests.fleetScript)
            options.prefix = prefix
            options.segments = 1
            options.hostsPerSegment = hosts
            options.wanRate = "100mbit"
            if let multicastLoss { options.multicastLoss = [1: multicastLoss] }
            fleet = TestFleet(options: options)
            work = options.workDirectory
            self.binary = binary
            authority = try ThrowawayAuthority()
        }

        func start(packageBytes: Int) async throws {
            try? FileManager.default.removeItem(atPath: work)
            try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
            try await fleet.up()
            let state = work + "/core"
            processes.add(
                try await DetachedProcess.start(
                    "ip",
                    [
                        "netns", "exec", fleet.coreNamespace, binary, "core", "serve", "--state", state, "--listen",
                        "0.0.0.0:\(fleet.port)", "--check-in", "1", "--tls-name", fleet.coreAddress, "--tls-name",
                        try await fleet.managementAddress(), "--trust-root", authority.digest.description,
                    ] + coreArguments, log: work + "/core.log"))
            let certificate = CoreLayout(directory: state).tls + "/certificate.pem"
            _ = try await DistributionBench.poll(.seconds(30)) {
                FileManager.default.isReadableFile(atPath: certificate)
            }
            pin = try CorePin.of(certificateFile: certificate)
            let url = "https://\(try await fleet.managementAddress()):\(fleet.port)"
            var client: HTTPClient?
            let deadline = ContinuousClock.now + .seconds(30)
            while client == nil && ContinuousClock.now < deadline {
                client = try? await HTTPLink.makeClient(trust: .pin(pin), core: url)
                if client == nil { try await Task.sleep(for: .milliseconds(200)) }
            }
            http = try #require(client, "the fleet's core did not answer; see \(work)/core.log")
            clients.add(http)
            admin = try await DistributionBench.waitForCore(
                url: url, tokenPath: CoreLayout(directory: state).adminToken, http: http)
            let deb = try await DistributionBench.buildPackage(in: work, bytes: packageBytes, name: "peer-payload")
            manifest = try await admin.publish(file: deb, release: "peer-1")
            token = try await admin.createToken(uses: 10, lifetime: 3600)
        }

        /// `changelab agent run …` (the executable first) of agent `s1-hN`, serving peers on `peerPort`.
        func agentCommand(host: Int) -> [String] {
            let name = "s1-h\(host)"
            return [
                binary, "agent", "run", "--core", "https://\(fleet.coreAddress):\(fleet.port)", "--core-key",
                token.coreKey, "--core-pin", pin, "--trust-root", authority.digest.description, "--attribute",
                "baseline=minimal@1", "--enrol-token", token.token, "--state", "\(work)/agents/\(name)", "--root",
                "\(work)/roots/\(name)", "--name", name, "--segment", "office", "--watch", "/etc", "--max-check-in",
                "1", "--peer-port", String(PeerFleetTests.peerPort),
            ]
        }

        /// Starts the agent `s1-hN` in host N's namespace and waits until the core sees it online.
        @discardableResult
        func startAgent(host: Int) async throws -> DetachedProcess {
            let name = "s1-h\(host)"
            let process = try await DetachedProcess.start(
                "ip", ["netns", "exec", fleet.namespace(segment: 1, host: host)] + agentCommand(host: host),
                log: "\(work)/agent-\(name).log")
            processes.add(process)
            guard
                try await DistributionBench.poll(
                    .seconds(30), { try await self.admin.agents().contains { $0.name == name && $0.online } })
            else { throw ChangelabError("agent \(name) did not enrol", fix: "see \(work)/agent-\(name).log") }
            return process
        }

        /// Promotes (again) `change` to `targets`: a second promotion adds agents enrolled since.
        func promote(_ change: String, targets: String) async throws {
            let authorization = try authority.authorization(
                change: change, package: manifest.package, version: manifest.packageVersion, artifact: manifest.digest,
                baselines: ["minimal"], scope: ChangeScope(targets: targets))
            _ = try await admin.promote(
                change,
                PromoteRequest(
                    release: "peer-1", targets: targets, rings: nil, rate: nil, maxFailureRate: nil,
                    authorization: authorization))
        }

        func source(of name: String, in change: String) async throws -> TargetSource? {
            try await admin.status(change).sources?.first { $0.name == name }
        }

        func stop() async {
            await DistributionBench.teardown(processes, fleet: fleet, work: work)
            await clients.shutdown()
        }
    }

    static func withPeerFleet(
        prefix: String, hosts: Int, coreArguments: [String] = [], multicastLoss: Double? = nil,
        _ body: (PeerFleet) async throws -> Void
    ) async throws {
        let binary = try #require(changelabExecutable(), "build the changelab executable first (swift build)")
        let fleet = try PeerFleet(
            prefix: prefix, hosts: hosts, binary: binary, coreArguments: coreArguments, multicastLoss: multicastLoss)
        do {
            try await fleet.start(packageBytes: 3_000_000)
            try await body(fleet)
            await fleet.stop()
        } catch {
            await fleet.stop()
            throw error
        }
    }

    @Test(.enabled(if: FleetTests.canBuildFleets, "needs root, iproute2 and iptables (sudo lab/setup)"))
    func anAgentJoiningLateDownloadsFromAPeerAndTheCoreServesItNothing() async throws {
        try await Self.withPeerFleet(prefix: "hpa", hosts: 2) { f in
            try await f.startAgent(host: 1)
            try await f.promote("CHG-peer", targets: "all")
            // Verified, and the check-in after it reported who delivered the bytes.
            #expect(try await eventually(.seconds(90)) { try await f.source(of: "s1-h1", in: "CHG-peer") != nil })
            let first = try #require(try await f.source(of: "s1-h1", in: "CHG-peer"))
            #expect(first.source == .core && first.bytesFromCore >= f.manifest.size)

            // The late agent: its whole download must stay on the segment.
            let wanBefore = try await f.fleet.counters().wan
            try await f.startAgent(host: 2)
            try await f.promote("CHG-peer", targets: "all")
            #expect(try await eventually(.seconds(90)) { try await f.source(of: "s1-h2", in: "CHG-peer") != nil })
            let wanAfter = try await f.fleet.counters().wan
            let late = try #require(try await f.source(of: "s1-h2", in: "CHG-peer"))
            #expect(late.source == .peer)
            #expect(late.bytesFromCore == 0, "the core's own count of artifact bytes it sent the late agent")
            #expect(late.bytesFromPeers == f.manifest.size)
            #expect(late.subnet == "10.77.1.0/24" && late.segment == "office")
            // Check-ins, the job stream and the manifest cross the WAN, the package does not.
            #expect(wanAfter - wanBefore < f.manifest.size / 4, "WAN bytes \(wanAfter - wanBefore)")
            let status = try await f.admin.status("CHG-peer")
            let segment = try #require(status.segments.first)
            #expect(segment.servedByPeers == 1 && segment.servedByCore == 1)
            #expect(segment.bytesFromPeers == f.manifest.size)
            #expect(StatusText.render(status).contains("peers"))
            print(
                "peer fleet: package \(f.manifest.size) B, late agent from peer \(late.bytesFromPeers) B, from core "
                    + "\(late.bytesFromCore) B, WAN during its download \(wanAfter - wanBefore) B")
        }
    }

    @Test(.enabled(if: FleetTests.canBuildFleets, "needs root, iproute2 and iptables (sudo lab/setup)"))
    func aPeerServingCorruptBytesIsDetectedAvoidedAndTheAgentCompletesFromTheCore() async throws {
        try await Self.withPeerFleet(prefix: "hpb", hosts: 2) { f in
            // Host 1 runs a hostile "agent": enrolled with a real token, it claims a verified copy
            // at check-in, and its peer port answers every request with random bytes.
            let log = f.work + "/hostile.log"
            let script = f.work + "/hostile.py"
            try """
            import http.server, os, sys
            class H(http.server.BaseHTTPRequestHandler):
                def do_GET(self):
                    with open(sys.argv[2], 'a') as f:
                        f.write(self.path + ' auth=' + str(self.headers.get('Authorization')) + ' range=' + str(self.headers.get('Range')) + '\\n')
                    self.send_response(200)
                    self.send_header('Content-Length', str(int(sys.argv[3])))
                    self.end_headers()
                    self.wfile.write(os.urandom(int(sys.argv[3])))
            http.server.ThreadingHTTPServer(('0.0.0.0', int(sys.argv[1])), H).serve_forever()
            """.write(toFile: script, atomically: true, encoding: .utf8)
            f.processes.add(
                try await DetachedProcess.start(
                    "ip",
                    [
                        "netns", "exec", f.fleet.namespace(segment: 1, host: 1), "python3", script,
                        String(PeerFleetTests.peerPort), log, String(f.manifest.size),
                    ], log: f.work + "/hostile.out"))
            let link = HTTPLink(baseURL: f.admin.link.baseURL, credential: nil, client: f.http)
            let enrolled = try await link.post(
                "/v1/enrol",
                EnrolRequest(
                    token: f.token.token, name: "hostile", segment: "office", addresses: ["10.77.1.11/24"],
                    attributes: ["baseline": "minimal@1"]), as: EnrolReply.self)
            let hostile = HTTPLink(
                baseURL: f.admin.link.baseURL, credential: "\(enrolled.agent):\(enrolled.secret)", client: f.http)
            let claim = CheckIn(
                name: "hostile", segment: "office", addresses: ["10.77.1.11/24"], attributes: ["baseline": "minimal@1"],
                inventory: InventorySnapshot(), inventoryDigest: "",
                cache: [CacheReport(change: "CHG-x", release: "peer-1", phase: .verified, bytes: f.manifest.size)],
                peerPort: PeerFleetTests.peerPort, peerServedBytes: 0)
            _ = try await hostile.post("/v1/agent/checkin", claim, as: CheckInReply.self)

            try await f.startAgent(host: 2)
            try await f.promote("CHG-real", targets: "name = s1-h2")
            #expect(try await eventually(.seconds(90)) { try await f.source(of: "s1-h2", in: "CHG-real") != nil })
            let target = try #require(try await f.source(of: "s1-h2", in: "CHG-real"))
            #expect(target.source == .core)
            #expect(target.bytesFromCore >= f.manifest.size)
            let requests = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
            // The agent did go to the hostile peer first, without any credential, and only once:
            // after the first chunk failed its check it avoided that peer for the job.
            #expect(requests.contains(peerPath(f.manifest.digest)))
            #expect(requests.split(separator: "\n").count == 1, "\(requests)")
            #expect(requests.contains("auth=None"))
            let agentLog = (try? String(contentsOfFile: f.work + "/agent-s1-h2.log", encoding: .utf8)) ?? ""
            #expect(agentLog.contains("avoided peers [\"\(enrolled.agent)\"]"), "\(agentLog.suffix(2000))")
        }
    }
}
