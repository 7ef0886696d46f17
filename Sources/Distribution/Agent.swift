import AsyncHTTPClient
import Foundation
import HostIO
import Inventory
import Logging
import Model

/// How one agent identity is set up.
public struct AgentConfiguration: Sendable {
    public var name: String
    /// The core, `https://HOST:PORT`: the only base URL that ever receives the agent's credential.
    public var coreURL: String
    /// How the HTTP client checks it reached the real core (see ``HTTPLink/makeClient(trust:core:)``).
    public var coreTrust: CoreTrust = .system
    /// Where packages are fetched from (default: the core).
    public var artifactURL: String?
    /// The agent's own state: identity, cache.
    public var stateDirectory: String
    /// Where packages are installed: `/` on a real endpoint, a directory in the test fleet.
    public var root: String
    public var segment: String
    public var attributes: [String: String]
    /// The core's release key: the only key whose manifests and orders this agent obeys.
    public var coreKey: ReleasePublicKey
    /// The change-control trust root (payload digest), given out of band at enrolment: the
    /// approvers, thresholds and lab keys whose signatures every activation must carry.
    /// Without one the agent seeds but activates nothing.
    public var trustRoot: SHA256Digest?
    /// Enrolment token, used when the agent has no identity yet, or when the core refuses the
    /// identity it has (401: a core restored from backup, a revoked agent): then it enrols again.
    public var enrolmentToken: String?
    public var installTimeout: Duration = .seconds(600)
    public var cacheLifetime: TimeInterval = 60 * 24 * 3600
    /// Upper bound on the core's check-in interval (handy for tests and the fleet).
    public var maxCheckInInterval: Double?
    /// How old the inventory sent at check-in may get before it is collected again.
    public var inventoryInterval: Duration = .seconds(900)
    /// Shared by the identities of one process (test fleet): at most so many installers run at
    /// once, since the identities share the host's CPUs. nil: no limit beyond one per agent.
    public var installSlots: Semaphore?
    /// First back-off between download retries within one seeding attempt (grows linearly).
    public var downloadRetryDelay: Duration = .milliseconds(500)
    /// Folders (under the root) whose files the inventory records with hashes.
    public var watchedPaths: [String] = InventoryOptions.defaultWatchedPaths
    /// The peer server, serving verified packages to agents on this agent's segment (nil: off).
    /// Downloading from peers needs no setting: the core names peers when there are any.
    public var peerServing: PeerServing?
    /// The UDP port magic packets go to when this agent wakes its segment's targets.
    public var wakePort: UInt16 = MagicPacket.port
    /// Whether this agent sends the magic packets its segment's wake orders ask for. Off
    /// (`agent run --no-wake-on-lan`, and every test agent outside a namespace of its own,
    /// whose segment is the machine's real LAN): it reports each order as not carried out.
    public var wakeOnLAN = true
    /// Whether this agent takes part in its segment's multicast: receives the representative's
    /// NORM object and, as representative, sends it (off: `agent run --no-multicast`; the
    /// agent then downloads from peers or the core as before).
    public var multicast = true
    /// The interface addresses (`10.77.1.11/24`) this agent reports, the first deciding its
    /// segment (`agent run --address`, for a host whose own choice is wrong). nil: the host's
    /// own, the one its route to the core leaves from first. Test agents that share the
    /// machine's namespace pin a loopback one, so their segment never follows the interfaces
    /// other tests add and remove, and nothing derived from it reaches the machine's LAN.
    public var addresses: [String]?

    public init(
        name: String, coreURL: String, stateDirectory: String, root: String, segment: String,
        attributes: [String: String], coreKey: ReleasePublicKey, enrolmentToken: String?
    ) {
        self.name = name
        self.coreURL = coreURL
        self.stateDirectory = stateDirectory
        self.root = root
        self.segment = segment
        self.attributes = attributes
        self.coreKey = coreKey
        self.enrolmentToken = enrolmentToken
    }
}

/// The agent's credential, kept in its state directory (mode 0600).
public struct AgentIdentity: Codable, Sendable {
    public var agent: String
    public var secret: String
    public var credential: String { "\(agent):\(secret)" }
}

/// An agent: enrols once, checks in with its inventory, keeps a stream open for pushed
/// jobs, seeds its cache in the background and activates from the verified cache.
public actor Agent {
    public let configuration: AgentConfiguration
    let client: HTTPClient
    let cache: AgentCache
    let installer: DpkgInstaller
    let inventorySource: any InventorySource
    let bucket = TokenBucket()
    let logger: Logger
    private var identity: AgentIdentity?
    /// The core's release key this agent obeys: the pinned one, or where its rotations led.
    private var trustedKey: ReleasePublicKey
    let ledgerFile: LedgerFile
    private var ledger = AgentLedger()
    private var received: [Job] = []
    /// Changes whose package an installer is reading: seeding them waits (`deferredSeeds`).
    private var installingChanges: Set<String> = []
    private var deferredSeeds: [String: (ReleaseManifest, SignedEnvelope)] = [:]
    private var seeding: [String: Task<Void, Never>] = [:]
    private var installing = false
    /// Orders being carried out now: the same order can arrive on the stream and at a
    /// check-in, or again at every check-in while a slow installer runs; it runs once.
    private var ordersInFlight: Set<String> = []
    private var installQueue: [CheckedContinuation<Void, Never>] = []
    private var pendingEvents: [AgentEvent] = []
    private var lastProgress: [String: ContinuousClock.Instant] = [:]
    private var nextCheckIn: Double = 5
    /// An earlier check-in asked for (`nextCheckInSoon`).
    private var checkInDue: ContinuousClock.Instant?
    /// Whether this run already enrolled again after a 401 (the token is single-use).
    private var reenrolled = false
    /// The last inventory collected, and when: collected at start, after every activation
    /// or rollback, and otherwise every `inventoryInterval`.
    private var inventory: InventorySnapshot?
    private var inventoryCollected = ContinuousClock.now
    /// Digest of the inventory the core last acknowledged; the whole inventory is sent only
    /// when the current one differs.
    private var inventoryAcknowledged: String?
    /// The peer server while it runs, the port it bound and the segment it serves.
    private var peerServer: PeerServer?
    private var peerPort: Int?
    private var peerSubnet: String?
    /// The jobs this agent represents its segment for, with the lease's epoch (to log changes).
    var roles: [String: UInt64] = [:]
    /// Wake orders carried out (bounded), and the reports the next check-in carries.
    private var wakesDone: [String] = []
    private(set) var wakeReports: [WakeReport] = []
    /// Multicast (Agent+Multicast.swift): what the core said to listen to, per change; the send
    /// orders of this agent's roles (change → epoch and order); sends running or done
    /// (`change#epoch`); the reports the next check-in carries; the changes whose seeding
    /// ticket said to wait for the segment's multicast.
    var listens: [String: MulticastListen] = [:]
    /// Check-in replies whose listen orders were taken, counted: a receiver waits for check-ins
    /// that actually came back, not for a wall-clock time a busy machine can use up.
    var listenReplies = 0
    var sendOrders: [String: (epoch: UInt64, send: MulticastSend)] = [:]
    var multicastsStarted: Set<String> = []
    var multicastReports: [MulticastReport] = []
    var multicastSeeds: Set<String> = []
    /// The multicasts this agent's NORM receiver is listening to now (told to the core), and
    /// when each send order could first have started (the gathering wait's start).
    var multicastJoined: Set<MulticastJoin> = []
    var sendReadySince: [String: ContinuousClock.Instant] = [:]

    public init(
        configuration: AgentConfiguration, client: HTTPClient,
        inventorySource: (any InventorySource)? = nil
    ) {
        self.configuration = configuration
        self.client = client
        self.cache = AgentCache(
            directory: configuration.stateDirectory + "/cache", lifetime: configuration.cacheLifetime)
        self.installer = DpkgInstaller(root: configuration.root, timeout: configuration.installTimeout)
        self.inventorySource = inventorySource ?? CollectorInventorySource(watchedPaths: configuration.watchedPaths)
        self.trustedKey = Self.loadTrustedKey(configuration)
        self.ledgerFile = LedgerFile(stateDirectory: configuration.stateDirectory)
        var logger = Logger(label: "changelab.agent.\(configuration.name)")
        logger.logLevel = .info
        self.logger = logger
    }

    var identityPath: String { configuration.stateDirectory + "/identity.json" }

    public var agentID: String? { identity?.agent }

    /// A link to the core, or to `base` (a mirror or peer): only the core gets the credential.
    func link(_ base: String? = nil) -> HTTPLink {
        let target = base ?? configuration.coreURL
        let isCore = Self.trimmed(target) == Self.trimmed(configuration.coreURL)
        return HTTPLink(baseURL: target, credential: isCore ? identity?.credential : nil, client: client)
    }

    static func trimmed(_ url: String) -> String {
        (url.hasSuffix("/") ? String(url.dropLast()) : url).lowercased()
    }

    // MARK: Life cycle

    /// Runs until cancelled: enrol if needed, then check in on a timer and listen on the stream.
    public func run() async throws {
        try installer.prepareRoot()
        logger.info("\(configuration.name) \(installer.modeDescription)")
        try loadLedger()
        let legacy = cache.migrateLegacyLayout()
        if !legacy.isEmpty {
            for record in legacy { ledger.adopt(record, now: Date()) }
            try ledgerFile.save(ledger)
        }
        try await enrolIfNeeded()
        resumeInterruptedSeeding()
        await withTaskGroup(of: Void.self) { group in
            if let serving = configuration.peerServing {
                let server = PeerServer(cache: cache, serving: serving)
                peerServer = server
                group.addTask { await self.runPeerServer(server) }
            }
            group.addTask { await self.checkInLoop() }
            group.addTask { await self.streamLoop() }
            await group.waitForAll()
        }
        for task in seeding.values { task.cancel() }
    }

    /// Reads the ledger; an agent whose ledger is damaged does not start (it would forget
    /// which orders it carried out).
    public func loadLedger() throws {
        ledger = try ledgerFile.load()
    }

    /// Loads the identity, or enrols with the token and saves it; with `replacing`, enrols
    /// again (the core refused the identity) and replaces the saved one.
    public func enrolIfNeeded(replacing: Bool = false) async throws {
        if !replacing, let data = FileManager.default.contents(atPath: identityPath) {
            identity = try StableJSON.decode(AgentIdentity.self, from: data)
            return
        }
        guard let token = configuration.enrolmentToken else {
            throw ChangelabError(
                "agent \(configuration.name) is not enrolled",
                fix: "pass --enrol-token TOKEN from 'changelab core token'")
        }
        let request = EnrolRequest(
            protocolVersion: WireProtocol.version, token: token, name: configuration.name, segment: configuration.segment, addresses: await reportedAddresses(),
            attributes: configuration.attributes)
        var delay = 0.5
        while true {
            do {
                let reply = try await link().post("/v1/enrol", request, as: EnrolReply.self)
                let identity = AgentIdentity(agent: reply.agent, secret: reply.secret)
                try AtomicFile.write(try StableJSON.data(identity), to: identityPath, permissions: 0o600)
                self.identity = identity
                return
            } catch let error as LinkError where error.status == 401 || error.status == 400 || error.status == 409 {
                throw ChangelabError(
                    "the core refused to enrol agent \(configuration.name)", why: "\(error)",
                    fix: "create a fresh token with 'changelab core token' and pass it with --enrol-token")
            } catch {
                if Task.isCancelled { throw CancellationError() }
                logger.warning("enrolment failed, retrying: \(error)")
                try await Task.sleep(for: .seconds(delay))
                delay = min(delay * 2, 15)
            }
        }
    }

    /// Seeding that was cut short (the agent stopped or was killed) carries on at start.
    func resumeInterruptedSeeding() {
        for entry in cache.entries() where entry.phase == .seeding {
            startSeeding(change: entry.change, manifest: entry.manifest, signed: entry.signedManifest)
        }
    }

    /// The newest core release key reachable from the pinned one, remembered across restarts
    /// (`core-key.json`: the pin it started from, and where rotations led).
    static func loadTrustedKey(_ configuration: AgentConfiguration) -> ReleasePublicKey {
        struct Stored: Codable { var pinned: String; var current: String }
        guard let data = FileManager.default.contents(atPath: configuration.stateDirectory + "/core-key.json"),
            let stored = try? StableJSON.decode(Stored.self, from: data), stored.pinned == configuration.coreKey.hex,
            let current = ReleasePublicKey(hex: stored.current)
        else { return configuration.coreKey }
        return current
    }

    /// Follows the core's key rotations from the key trusted now; each link is signed by the
    /// key it replaces, so the core cannot name a key the previous one did not sign.
    func adopt(rotations: [SignedEnvelope]) {
        let next = KeyRotation.follow(rotations, from: trustedKey)
        guard next != trustedKey else { return }
        struct Stored: Codable { var pinned: String; var current: String }
        do {
            try AtomicFile.write(
                try StableJSON.data(Stored(pinned: configuration.coreKey.hex, current: next.hex)),
                to: configuration.stateDirectory + "/core-key.json", permissions: 0o600)
            logger.notice("the core's release key is now \(next.hex.prefix(16))… (rotated from \(trustedKey.hex.prefix(16))…)")
            trustedKey = next
        } catch {
            logger.error("cannot record the core's new release key: \(error)")
        }
    }

    /// Seconds to the next check-in from what the core said: a finite number in a sane range.
    static func checkInDelay(_ seconds: Double, cap: Double?) -> Double {
        let sane = seconds.isFinite ? min(max(seconds, 0.05), 3600) : 30
        guard let cap, cap.isFinite, cap > 0 else { return sane }
        return min(sane, cap)
    }

    func checkInLoop() async {
        var failures = 0
        while !Task.isCancelled {
            do {
                try await checkIn()
                failures = 0
                try await sleepUntilNextCheckIn()
            } catch is CancellationError {
                return
            } catch let error as LinkError where error.status == 401 {
                logger.error("the core refused this agent: \(error)")
                // A core restored from backup or a revoked identity: enrol again with the token
                // this agent was started with, once per start (a token is single-use).
                if configuration.enrolmentToken != nil && !reenrolled {
                    reenrolled = true
                    do {
                        try await enrolIfNeeded(replacing: true)
                        logger.info("enrolled again as \(identity?.agent ?? "?")")
                        continue
                    } catch {
                        logger.error("enrolling again failed: \(error)")
                    }
                }
                try? await Task.sleep(for: .seconds(min(60, max(1, nextCheckIn.isFinite ? nextCheckIn : 60))))
            } catch {
                failures += 1
                try? await Task.sleep(for: .milliseconds(min(15_000, 250 << min(failures, 6))))
            }
        }
    }

    func runPeerServer(_ server: PeerServer) async {
        do {
            try await server.run(logger: logger) { port in await self.peerServerStarted(port) }
        } catch {
            if !Task.isCancelled { logger.error("the peer server on port \(server.serving.port) stopped: \(error)") }
        }
        peerPort = nil
    }

    /// The port the peer server bound (nil: not serving).
    public var peerServerPort: Int? { peerPort }

    func peerServerStarted(_ port: Int) {
        peerPort = port
        logger.info("\(configuration.name) serves verified packages to peers on port \(port)")
    }

    /// The port to announce at check-in: none once the agent left the segment it started
    /// serving on (its subnet changed), and the server refuses from then on.
    func announcedPeerPort(addresses: [String]) -> Int? {
        guard let server = peerServer, let port = peerPort else { return nil }
        let subnet = InterfaceAddress.segmentAddress(of: addresses)?.subnet
        if peerSubnet == nil { peerSubnet = subnet }
        if subnet != peerSubnet, !server.isClosed {
            server.close(
                "this agent left segment \(peerSubnet ?? "?") (it is on \(subnet ?? "no subnet") now) and serves no peers")
            logger.notice("left segment \(peerSubnet ?? "?"): the peer server stops serving")
        }
        return server.isClosed ? nil : port
    }

    /// The peers on this agent's segment that the core says hold `digest` verified.
    func peers(holding digest: SHA256Digest) async throws -> [PeerLocation] {
        try await link().get("/v1/agent/peers/sha256/\(digest.hex)", as: PeerList.self).peers
    }

    func streamLoop() async {
        var failures = 0
        while !Task.isCancelled {
            do {
                let received = try await link().events("/v1/agent/stream") { name, data in
                    guard name == "jobs" else { return }
                    let jobs = try StableJSON.decode([Job].self, from: Data(data.utf8))
                    await self.handle(jobs)
                }
                if received > 0 { failures = 0 }
            } catch {
                if Task.isCancelled { return }
            }
            failures += 1
            try? await Task.sleep(for: .milliseconds(min(10_000, 200 << min(failures, 6))))
        }
    }

    /// One check-in: report inventory and cache, receive and start jobs, flush pending events.
    public func checkIn() async throws {
        cache.expire()
        let inventory = await currentInventory()
        let reports = cache.entries().map { entry in
            CacheReport(
                change: entry.change, release: entry.release, phase: entry.phase,
                bytes: entry.phase >= .verified && entry.phase != .failed ? entry.manifest.size : 0,
                source: entry.source, bytesFromPeers: entry.bytesFromPeers)
        }
        let digest = inventory.digest
        let addresses = await reportedAddresses()
        let body = CheckIn(
            name: configuration.name, segment: configuration.segment, addresses: addresses,
            attributes: configuration.attributes, inventory: digest == inventoryAcknowledged ? nil : inventory,
            inventoryDigest: digest, cache: reports, peerPort: announcedPeerPort(addresses: addresses),
            peerServedBytes: peerServer?.servedBytes, macAddresses: WakeOnLAN.localAddresses(),
            wakeReports: wakeReports.isEmpty ? nil : wakeReports, receivesMulticast: configuration.multicast,
            multicastReports: multicastReports.isEmpty ? nil : multicastReports,
            multicastJoined: multicastJoined.isEmpty ? nil : multicastJoined.sorted { $0.change < $1.change })
        let reply = try await link().post("/v1/agent/checkin", body, as: CheckInReply.self)
        wakeReports.removeAll { sent in body.wakeReports?.contains(sent) == true }
        multicastReports.removeAll { sent in body.multicastReports?.contains(sent) == true }
        nextCheckIn = Self.checkInDelay(reply.checkInAfter, cap: configuration.maxCheckInInterval)
        take(listens: reply.multicast ?? [], addresses: addresses)
        await take(roles: reply.representing ?? [], addresses: addresses)
        if let rotations = reply.keyRotations, !rotations.isEmpty { adopt(rotations: rotations) }
        if reply.sendInventory == true {
            // The core lost or never had it (a new core, a restored backup): send it next time, soon.
            inventoryAcknowledged = nil
            nextCheckIn = min(nextCheckIn, 1)
        } else {
            inventoryAcknowledged = digest
        }
        await flushEvents()
        await handle(reply.jobs)
    }

    /// The cached inventory, collected again when it is older than the configured interval.
    func currentInventory(refresh: Bool = false) async -> InventorySnapshot {
        if !refresh, let inventory, ContinuousClock.now - inventoryCollected < configuration.inventoryInterval {
            return inventory
        }
        do {
            let fresh = try await inventorySource.collect(root: configuration.root)
            inventory = fresh
            inventoryCollected = ContinuousClock.now
            return fresh
        } catch {
            logger.warning("cannot collect the inventory: \(error)")
            return inventory ?? InventorySnapshot()
        }
    }

    // MARK: Representative roles

    /// The jobs this agent represents its segment for now (change → lease epoch).
    public var representedJobs: [String: UInt64] { roles }

    /// Takes the roles of a check-in reply: logs a new or ended role, and carries out each wake
    /// order once — magic packets broadcast on this agent's own segment, never elsewhere.
    func take(roles given: [RepresentativeRole], addresses: [String]) async {
        let own = InterfaceAddress.segmentAddress(of: addresses)
        var now: [String: UInt64] = [:]
        for role in given.prefix(64) {
            guard let own, role.subnet == own.subnet else {
                logger.warning("ignoring a role for segment \(AgentFacts.printable(role.subnet)): this agent is on \(own?.subnet ?? "no subnet")")
                continue
            }
            now[role.change] = role.epoch
            if let send = role.multicast, configuration.multicast { sendOrders[role.change] = (role.epoch, send) }
            if roles[role.change] != role.epoch {
                logger.info(
                    "representative of \(own.subnet) for \(AgentFacts.printable(role.change)) (epoch \(role.epoch), lease \(Int(exactly: role.leaseSeconds.rounded()) ?? 0) s)")
            }
            guard let order = role.wake, !wakesDone.contains(order.request) else { continue }
            wakesDone.append(order.request)
            if wakesDone.count > 256 { wakesDone.removeFirst(wakesDone.count - 256) }
            await wake(order, change: role.change, epoch: role.epoch, broadcast: own.broadcast)
        }
        for (change, _) in roles where now[change] == nil {
            logger.info("no longer representative for \(AgentFacts.printable(change))")
        }
        roles = now
        sendOrders = sendOrders.filter { change, order in now[change] == order.epoch }
        startMulticasts()
    }

    /// Sends the magic packets of one wake order and keeps the report for the next check-in.
    func wake(_ order: WakeOrder, change: String, epoch: UInt64, broadcast: String) async {
        let macs = order.macAddresses.prefix(1024).compactMap { MACAddress($0) }
        let port = configuration.wakePort
        var report = WakeReport(change: change, request: order.request, epoch: epoch, packets: 0, error: nil)
        if macs.count != order.macAddresses.count {
            report.error = "the wake order named \(order.macAddresses.count - macs.count) malformed MAC addresses"
        }
        guard configuration.wakeOnLAN else {
            report.error = "Wake-on-LAN is off on this agent (agent run --no-wake-on-lan): no packet sent"
            logger.warning("not waking \(macs.count) target(s) for \(AgentFacts.printable(change)): Wake-on-LAN is off on this agent")
            keep(report)
            return
        }
        do {
            report.packets = try await BlockingWork.run { try WakeOnLAN.send(macs, broadcast: broadcast, port: port) }
            logger.info("sent \(report.packets) Wake-on-LAN packets to \(broadcast):\(port) for \(AgentFacts.printable(change)): \(macs.map(\.description))")
        } catch {
            report.error = "\(error)".boundedTail(1000)
            logger.error("Wake-on-LAN for \(AgentFacts.printable(change)) failed: \(error)")
        }
        keep(report)
    }

    /// Keeps a wake report (the newest 64) for the next check-in, which comes soon.
    private func keep(_ report: WakeReport) {
        wakeReports.append(report)
        if wakeReports.count > 64 { wakeReports.removeFirst(wakeReports.count - 64) }
        nextCheckInSoon()
    }

    /// Makes the next check-in come within `seconds`, also when the agent is waiting for it now
    /// (a report is waiting, or a multicast needs the core's word).
    func nextCheckInSoon(within seconds: Double = 1) {
        nextCheckIn = min(nextCheckIn, max(seconds, 0.2))
        let due = ContinuousClock.now + .seconds(max(seconds, 0))
        checkInDue = min(checkInDue ?? due, due)
    }

    /// Sleeps for the check-in interval, or until `nextCheckInSoon` asks for one earlier.
    private func sleepUntilNextCheckIn() async throws {
        let deadline = ContinuousClock.now + .seconds(nextCheckIn)
        while true {
            let due = min(deadline, checkInDue ?? deadline)
            let now = ContinuousClock.now
            if now >= due { break }
            try await Task.sleep(for: min(due - now, .milliseconds(100)))
        }
        checkInDue = nil
    }

    /// Seconds between check-ins, as the core last said.
    var nextCheckInSeconds: Double { nextCheckIn }

    // MARK: Jobs

    public func handle(_ jobs: [Job]) async {
        for job in jobs { await handle(job) }
    }

    /// The jobs this agent received last (newest last), for diagnosis.
    public var recentJobs: [Job] { received }

    /// Checks everything an agent must know before it acts on a job: the core signed the
    /// ticket and the manifest, the ticket is for this agent and has not expired, the names
    /// it carries are safe, and ticket and manifest describe the same package.
    func verify(_ job: Job, now: Date = Date()) throws -> (JobTicket, ReleaseManifest) {
        let keys = [trustedKey]
        let ticket: JobTicket
        do {
            ticket = try job.ticket.open(JobTicket.self, as: .job, trusting: keys)
        } catch {
            throw ChangelabError("the job was refused: \(error)")
        }
        guard let me = identity?.agent, ticket.agent == me else {
            throw ChangelabError("the job is for agent \(ticket.agent), not this one (\(identity?.agent ?? "not enrolled"))")
        }
        guard ticket.expiresAt > now else {
            throw ChangelabError("the job expired at \(ISO8601DateFormatter().string(from: ticket.expiresAt))")
        }
        try SafeName.check(ticket.change, what: "change id")
        try SafeName.check(ticket.release, what: "release name")
        guard ticket.kind == .seed || ticket.order.map({ SafeName.problem($0) == nil }) == true else {
            throw ChangelabError("the \(ticket.kind.rawValue) job carries no valid order id")
        }
        let manifest: ReleaseManifest
        do {
            manifest = try job.manifest.open(ReleaseManifest.self, as: .releaseManifest, trusting: keys)
        } catch {
            throw ChangelabError("the release manifest for \(ticket.release) was refused: \(error)")
        }
        try manifest.validate()
        try SafeName.check(manifest.package, what: "package name")
        guard manifest.release == ticket.release, manifest.digest == ticket.digest else {
            throw ChangelabError("the job and its manifest name different releases or packages")
        }
        return (ticket, manifest)
    }

    /// Carries out one job once it verified (`verify`); refuses and reports it otherwise.
    public func handle(_ job: Job) async {
        received.append(job)
        if received.count > 32 { received.removeFirst(received.count - 32) }
        let ticket: JobTicket
        let manifest: ReleaseManifest
        do {
            (ticket, manifest) = try verify(job)
        } catch {
            // Signed by a key this agent does not trust yet: the core may have rotated its key
            // and the job overtaken the check-in that brings the rotation statement. Check in
            // once (its reply carries the rotations, each signed by the key before) and look again.
            guard !job.ticket.signatures.isEmpty, !job.ticket.signatures.contains(where: { $0.keyid == trustedKey.keyID }),
                (try? await checkIn()) != nil, let verified = try? verify(job)
            else {
                await refuse(job, "\(error)")
                return
            }
            (ticket, manifest) = verified
        }
        switch ticket.kind {
        case .seed:
            if let entry = cache.entry(ticket.change), entry.manifest.digest == manifest.digest,
                entry.phase >= .verified, entry.phase != .failed
            {
                await report(
                    AgentEvent(
                        change: ticket.change, release: ticket.release, kind: .verified, bytes: manifest.size))
                return
            }
            await bucket.setRate(ticket.rate)
            if ticket.multicast == true && configuration.multicast {
                if !multicastSeeds.contains(ticket.change) {
                    logger.info(
                        "seeding \(AgentFacts.printable(ticket.change)) from its segment's multicast (or as its representative)")
                }
                multicastSeeds.insert(ticket.change)
                // The listen order (or the role) comes with a check-in: have it now.
                if listens[ticket.change] == nil && roles[ticket.change] == nil { nextCheckInSoon(within: 0) }
            } else {
                multicastSeeds.remove(ticket.change)
            }
            startSeeding(change: ticket.change, manifest: manifest, signed: job.manifest)
        case .activate:
            if let refusal = approvalRefusal(job, ticket: ticket, manifest: manifest) {
                logger.error("\(refusal.detail)")
                await report(AgentEvent(change: ticket.change, release: ticket.release, kind: .failed, failure: refusal))
                return
            }
            await carryOut(ticket, manifest: manifest)
        case .rollback:
            if let refusal = rollbackRefusal(job, ticket: ticket, manifest: manifest) {
                logger.error("\(refusal.detail)")
                await report(AgentEvent(change: ticket.change, release: ticket.release, kind: .failed, failure: refusal))
                return
            }
            await carryOut(ticket, manifest: manifest)
        }
    }

    /// The job's authorization and the trust root it leads to from this agent's pinned one
    /// (a refusal is the `Failure` the core's chase list shows).
    func trustedAuthorization(_ job: Job, ticket: JobTicket) -> Result<(ChangeAuthorization, ApprovalPolicy, SHA256Digest), Failure> {
        guard let pinned = trustRoot else {
            return .failure(
                Failure(
                    reason: .notApproved,
                    detail: "this agent has no change-control trust root: enrol it with --trust-root sha256:… ('changelab trust-root show' prints it)"))
        }
        guard let authorization = job.authorization else {
            return .failure(
                Failure(
                    reason: .notApproved,
                    detail: "the \(ticket.kind.rawValue) order for \(ticket.change) came without approvals or evidence"))
        }
        guard authorization.change == ticket.change || ticket.origin.hasPrefix("policy:") else {
            return .failure(
                Failure(
                    reason: .notApproved,
                    detail: "the approvals sent are for change \(authorization.change), not \(ticket.change)"))
        }
        do {
            let (policy, digest) = try TrustChain.current(authorization.trustRoots, pinned: pinned)
            return .success((authorization, policy, digest))
        } catch {
            return .failure(Failure(reason: .notApproved, detail: "\(error)"))
        }
    }

    /// Remembers the newest trust root a verified chain reached.
    func adoptTrustRoot(_ digest: SHA256Digest) {
        if digest != ledger.trustRoot {
            ledger.trustRoot = digest
            try? ledgerFile.save(ledger)
        }
    }

    /// Why this agent may not carry out a rollback: it needs an order signed by an approver
    /// whose role the trust root lets roll back. Nil: it may.
    func rollbackRefusal(_ job: Job, ticket: JobTicket, manifest: ReleaseManifest) -> Failure? {
        switch trustedAuthorization(job, ticket: ticket) {
        case .failure(let failure):
            return failure
        case .success(let (authorization, policy, digest)):
            let check = ReleaseCheck(authorization: authorization, policy: policy, artifact: manifest.digest)
            if let problem = check.rollbackProblem() { return Failure(reason: .notApproved, detail: problem) }
            adoptTrustRoot(digest)
            return nil
        }
    }

    /// The trust root this agent checks approvals under: the newest it accepted, else the pinned one.
    public var trustRoot: SHA256Digest? { ledger.trustRoot ?? configuration.trustRoot }

    /// Why this agent may not install the job's package, checked offline against its own
    /// trust root: the approvers' threshold over exactly this digest and scope, and the lab's
    /// evidence of a green cell in every required lane on this agent's own baseline. Nil: it may.
    func approvalRefusal(_ job: Job, ticket: JobTicket, manifest: ReleaseManifest) -> Failure? {
        let authorization: ChangeAuthorization
        let policy: ApprovalPolicy
        let digest: SHA256Digest
        switch trustedAuthorization(job, ticket: ticket) {
        case .failure(let failure): return failure
        case .success(let trusted): (authorization, policy, digest) = trusted
        }
        let check = ReleaseCheck(authorization: authorization, policy: policy, artifact: manifest.digest)
        let general = check.problems(baseline: nil)
        if !general.isEmpty {
            return Failure(reason: .notApproved, detail: general.joined(separator: "; "))
        }
        guard let attribute = configuration.attributes["baseline"], !attribute.isEmpty else {
            return Failure(
                reason: .baselineNotTested,
                detail: "baseline not tested: this agent has no 'baseline' attribute (NAME@VERSION), so no evidence can cover it")
        }
        let baseline = BaselineRef(attribute)?.name ?? attribute
        let coverage = check.problems(baseline: baseline)
        if !coverage.isEmpty {
            return Failure(reason: .baselineNotTested, detail: coverage.joined(separator: "; "))
        }
        let facts = TargetFacts(
            name: configuration.name, segment: configuration.segment, attributes: configuration.attributes,
            inventory: inventory)
        guard let scope = try? TargetQuery.parse(authorization.scope.targets), scope.matches(facts) else {
            return Failure(
                reason: .notApproved,
                detail: "this agent is outside the approved targets '\(authorization.scope.targets)'")
        }
        adoptTrustRoot(digest)
        return nil
    }

    func refuse(_ job: Job, _ why: String) async {
        logger.error("\(why)")
        let claim = job.claim
        await report(
            AgentEvent(
                change: claim?.change ?? "", release: claim?.release ?? "", kind: .refused,
                failure: Failure(reason: .untrusted, detail: why)))
    }

    func startSeeding(change: String, manifest: ReleaseManifest, signed: SignedEnvelope) {
        guard seeding[change] == nil else { return }
        // The installer reads this change's verified file now: seed after it.
        if installingChanges.contains(change) {
            deferredSeeds[change] = (manifest, signed)
            return
        }
        let entry: CacheEntry
        do {
            entry = try cache.open(change: change, manifest: manifest, signed: signed)
        } catch {
            let failure = Seeder(cache: cache, transport: transport(), bucket: bucket).classify(
                error, while: "opening the cache")
            Task {
                await self.report(
                    AgentEvent(
                        change: change, release: manifest.release, kind: .failed, failure: failure.failure))
            }
            return
        }
        seeding[change] = Task { await self.seed(entry) }
    }

    func transport() -> any ChunkTransport {
        HTTPRangeTransport(link: link(configuration.artifactURL))
    }

    func seed(_ entry: CacheEntry) async {
        let change = entry.change
        let release = entry.release
        defer { seeding[change] = nil }
        let sources = PeerFirstTransport(fallback: transport(), client: client) { digest in
            try await self.peers(holding: digest)
        }
        var seeder = Seeder(cache: cache, transport: sources, bucket: bucket)
        seeder.retryDelay = configuration.downloadRetryDelay
        // On a multicast segment: the representative's copy first (or, as representative, on).
        let byMulticast = multicastSeeds.contains(change) ? await receiveByMulticast(entry) : false
        do {
            try await seeder.seed(entry) { bytes in
                sources.verified(upTo: bytes)
                await self.progress(change, release: release, bytes: bytes)
            }
            let cache = self.cache
            guard try await BlockingWork.run({ try cache.verifyWhole(entry) }) else {
                throw SeedingFailure(
                    failure: Failure(reason: .hashMismatch, detail: "the whole package does not match its digest"))
            }
            var done = entry
            done.phase = .verified
            done.verifiedStamp = FileStamp(path: cache.packagePath(entry.change))
            let delivered = sources.delivered
            done.source =
                byMulticast && delivered.core == 0 && delivered.peers == 0
                ? .multicast : delivered.core == 0 ? .peer : delivered.peers == 0 ? .core : .mixed
            done.bytesFromPeers = min(delivered.peers, entry.manifest.size)
            if !sources.avoidedPeers.isEmpty {
                logger.warning("avoided peers \(sources.avoidedPeers.sorted()) while seeding \(change)")
            }
            try cache.save(done)
            await report(AgentEvent(change: change, release: release, kind: .verified, bytes: entry.manifest.size))
            startMulticasts()
        } catch let error as SeedingFailure {
            if Task.isCancelled { return }
            await report(AgentEvent(change: change, release: release, kind: .failed, failure: error.failure))
        } catch {
            await report(
                AgentEvent(
                    change: change, release: release, kind: .failed,
                    failure: Seeder(cache: cache, transport: transport(), bucket: bucket).classify(
                        error, while: "finishing"
                    ).failure))
        }
    }

    func progress(_ change: String, release: String, bytes: Int64) async {
        let now = ContinuousClock.now
        if let last = lastProgress[change], now - last < .seconds(1) { return }
        lastProgress[change] = now
        await report(AgentEvent(change: change, release: release, kind: .progress, bytes: bytes))
    }

    /// Whether the cached package still holds the bytes that verified, hashed off the actor.
    func stillVerified(_ entry: CacheEntry) async -> Bool {
        let cache = self.cache
        return (try? await BlockingWork.run { cache.stillVerified(entry) }) ?? false
    }

    /// Runs an activation or rollback order once, from the verified cache only, after the
    /// ledger's checks: not carried out before, not older than one that was, no downgrade,
    /// and a rollback only of what this agent installed for that change.
    func carryOut(_ ticket: JobTicket, manifest: ReleaseManifest) async {
        guard let order = ticket.order else { return }
        let change = ticket.change
        guard ordersInFlight.insert(order).inserted else { return }
        defer { ordersInFlight.remove(order) }
        if let done = ledger.executed[order] {
            // Carried out before (a lost result, or a replay): say so again, install nothing.
            await report(
                AgentEvent(
                    change: change, release: ticket.release, kind: done.kind == .activate ? .activated : .rolledBack,
                    exitCode: done.exitCode, outputTail: done.outputTail))
            return
        }
        if let last = ledger.lastSequence[change], ticket.sequence <= last {
            logger.warning("ignoring an order for \(change) older than one this agent already carried out")
            return
        }
        await waitForInstaller()
        installingChanges.insert(change)
        defer {
            installingChanges.remove(change)
            releaseInstaller()
            if let deferred = deferredSeeds.removeValue(forKey: change) {
                startSeeding(change: change, manifest: deferred.0, signed: deferred.1)
            }
        }
        guard var entry = cache.entry(change), entry.manifest.digest == manifest.digest else {
            await report(
                AgentEvent(
                    change: change, release: ticket.release, kind: .failed,
                    failure: Failure(reason: .downloadFailed, detail: "the package is not in the cache; seed it first"))
            )
            return
        }
        if ticket.kind == .activate {
            if let why = ledger.downgrade(package: manifest.package, to: manifest.packageVersion) {
                await report(
                    AgentEvent(
                        change: change, release: ticket.release, kind: .failed,
                        failure: Failure(reason: .downgrade, detail: why)))
                return
            }
            // Nothing is installed that was not verified: the file must be the one that verified.
            guard entry.phase >= .verified, await stillVerified(entry) else {
                entry.phase = .seeding
                try? cache.save(entry)
                await report(
                    AgentEvent(
                        change: change, release: ticket.release, kind: .failed,
                        failure: Failure(
                            reason: .hashMismatch,
                            detail: "the cached package no longer matches its signed digest; re-seeding")))
                installingChanges.remove(change)
                startSeeding(change: change, manifest: entry.manifest, signed: entry.signedManifest)
                return
            }
            // The ledger learns what this change is about to replace before dpkg runs, so a
            // rollback can undo even an install that failed half-way.
            let before = DpkgStatus.installedVersion(of: manifest.package, root: configuration.root)
            if ledger.installs[change] == nil {
                ledger.installs[change] = AgentLedger.Install(
                    package: manifest.package, version: manifest.packageVersion, previousVersion: before)
                guard saveLedger() else {
                    await report(
                        AgentEvent(
                            change: change, release: ticket.release, kind: .failed,
                            failure: Failure(reason: .diskFull, detail: "the agent's ledger cannot be written")))
                    return
                }
            }
            // No separate "activating" report: the core marked the target activating when it
            // handed out the job, and a hundred extra round trips would delay every result.
            await configuration.installSlots?.wait()
            let installerStarted = Date().timeIntervalSince1970
            let result = await installer.install(cache.packagePath(change))
            await configuration.installSlots?.signal()
            entry.lastResult = result
            entry.installedVersion = result.failure == nil
            if result.failure == nil {
                ledger.activated(
                    ticket, order: order, package: manifest.package, version: manifest.packageVersion,
                    previous: ledger.installs[change]?.previousVersion ?? before, result: result, now: Date())
                _ = saveLedger()
                entry.phase = .activated
                entry.pinned = false
                entry.expiresAt = Date().addingTimeInterval(cache.lifetime)
            }
            try? cache.save(entry)
            var event = outcome(result, change: change, release: ticket.release, success: .activated)
            event.installerStartedAt = installerStarted
            await report(event)
            await reportInventory(change: change, release: ticket.release)
        } else {
            guard let install = ledger.installs[change] else {
                await report(
                    AgentEvent(
                        change: change, release: ticket.release, kind: .refused,
                        failure: Failure(
                            reason: .untrusted,
                            detail: "rollback of \(change) refused: this agent never activated it, so there is nothing to undo")))
                return
            }
            let result = await rollback(install)
            entry.lastResult = result
            if result.failure == nil {
                ledger.rolledBack(ticket, order: order, result: result, now: Date())
                _ = saveLedger()
                entry.phase = .rolledBack
            }
            try? cache.save(entry)
            await report(outcome(result, change: change, release: ticket.release, success: .rolledBack))
            await reportInventory(change: change, release: ticket.release)
        }
    }

    /// Writes the ledger; false (logged) when it cannot be written.
    private func saveLedger() -> Bool {
        do {
            try ledgerFile.save(ledger)
            return true
        } catch {
            logger.error("cannot write the agent's ledger: \(error)")
            return false
        }
    }

    /// The result goes out at once; the post-install inventory follows in its own event,
    /// so a slow inventory never delays the activation result.
    private func outcome(_ result: InstallResult, change: String, release: String, success: AgentEventKind)
        -> AgentEvent
    {
        if let failure = result.failure {
            // A maintainer script's own status says more than dpkg's 1.
            return AgentEvent(
                change: change, release: release, kind: .failed, failure: failure,
                exitCode: failure.exitCode ?? result.exitCode, outputTail: result.outputTail)
        }
        return AgentEvent(
            change: change, release: release, kind: success, exitCode: result.exitCode,
            outputTail: result.outputTail)
    }

    private func reportInventory(change: String, release: String) async {
        let inventory = await currentInventory(refresh: true)
        await report(AgentEvent(change: change, release: release, kind: .inventory, inventory: inventory))
        if pendingEvents.isEmpty { inventoryAcknowledged = inventory.digest }
    }

    /// Back to the pre-install state: reinstall the previous version from the cache, or
    /// purge the package when it was not installed before.
    func rollback(_ install: AgentLedger.Install) async -> InstallResult {
        guard let previous = install.previousVersion else {
            return await installer.purge(install.package)
        }
        let candidates = cache.entries().filter {
            $0.manifest.package == install.package && $0.manifest.packageVersion == previous
                && $0.phase >= .verified && $0.phase != .failed
        }
        for older in candidates where await stillVerified(older) {
            return await installer.install(cache.packagePath(older.change))
        }
        return InstallResult(
            exitCode: 1, outputTail: "",
            failure: Failure(
                reason: .rollbackFailed,
                detail: "\(install.package) \(previous) was installed before, but it is not in the cache"))
    }

    private func waitForInstaller() async {
        if !installing {
            installing = true
            return
        }
        await withCheckedContinuation { installQueue.append($0) }
    }

    private func releaseInstaller() {
        if installQueue.isEmpty {
            installing = false
        } else {
            installQueue.removeFirst().resume()
        }
    }

    // MARK: Events

    /// Sends an event now; if the core cannot be reached it is kept and sent with the next check-in.
    func report(_ event: AgentEvent) async {
        pendingEvents.append(event)
        await flushEvents()
    }

    func flushEvents() async {
        guard !pendingEvents.isEmpty, identity != nil else { return }
        let batch = pendingEvents
        pendingEvents = []
        do {
            _ = try await link().post("/v1/agent/events", batch, as: [String: Int].self)
        } catch {
            // Keep only the newest progress per change; results are never dropped.
            pendingEvents =
                (batch + pendingEvents).filter { $0.kind != .progress }
                + pendingEvents.filter { $0.kind == .progress }.suffix(1)
        }
    }

    /// The addresses this agent reports: the configured ones, or the host's with the one its
    /// route to the core leaves from first (a host's docker bridge or VPN address sorts before
    /// its LAN address as often as after it).
    ///
    /// A named core is resolved (getaddrinfo, which can wait on a slow resolver) on a thread of
    /// its own, so the agent's actor goes on serving peers and recording events meanwhile.
    func reportedAddresses() async -> [String] {
        if let fixed = configuration.addresses { return fixed }
        let host = URL(string: configuration.coreURL)?.host
        let found = try? await BlockingWork.run { Self.addresses(preferring: host.flatMap(Self.sourceAddress(towards:))) }
        return found ?? Self.addresses()
    }

    /// The local IPv4 address the kernel would send from to reach `host` (a numeric IPv4
    /// address or a name): a UDP socket connected there sends nothing. nil when there is no route.
    static func sourceAddress(towards host: String) -> String? {
        var hints = addrinfo()
        hints.ai_family = AF_INET
        hints.ai_socktype = Int32(SOCK_DGRAM.rawValue)
        var found: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, "9", &hints, &found) == 0, let info = found else { return nil }
        defer { freeaddrinfo(found) }
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        guard connect(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0 else { return nil }
        var local = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let named = withUnsafeMutablePointer(to: &local) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard named == 0 else { return nil }
        return InterfaceAddress.text(UInt32(bigEndian: local.sin_addr.s_addr))
    }

    /// Non-loopback IPv4 interface addresses of this host (this network namespace) with their
    /// prefix lengths, `10.77.1.11/24`, sorted, except that the one on address `preferring`
    /// comes first: the core derives the agent's segment from the first.
    public static func addresses(preferring: String? = nil) -> [String] {
        var result: [String] = []
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0, let first = list else { return [] }
        defer { freeifaddrs(list) }
        var cursor: UnsafeMutablePointer<ifaddrs>? = first
        while let item = cursor {
            defer { cursor = item.pointee.ifa_next }
            guard let address = item.pointee.ifa_addr, address.pointee.sa_family == sa_family_t(AF_INET) else {
                continue
            }
            var host = [CChar](repeating: 0, count: Int(NI_MAXHOST))
            if getnameinfo(
                address, socklen_t(MemoryLayout<sockaddr_in>.size), &host, socklen_t(host.count), nil, 0, NI_NUMERICHOST
            ) == 0 {
                let text = String(decoding: host.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
                // The prefix length from the netmask (contiguous on Linux); /32 when there is none.
                let prefix = item.pointee.ifa_netmask.map { mask in
                    mask.withMemoryRebound(to: sockaddr_in.self, capacity: 1) {
                        UInt32(bigEndian: $0.pointee.sin_addr.s_addr).nonzeroBitCount
                    }
                } ?? 32
                if !text.hasPrefix("127.") { result.append("\(text)/\(prefix)") }
            }
        }
        result.sort()
        if let preferring, let index = result.firstIndex(where: { $0.hasPrefix(preferring + "/") }) {
            result.insert(result.remove(at: index), at: 0)
        }
        return result
    }
}

/// A counting semaphore for async code.
public actor Semaphore {
    private var free: Int
    private var waiters: [CheckedContinuation<Void, Never>] = []

    public init(_ count: Int) {
        free = max(1, count)
    }

    public func wait() async {
        if free > 0 {
            free -= 1
            return
        }
        await withCheckedContinuation { waiters.append($0) }
    }

    public func signal() {
        if waiters.isEmpty {
            free += 1
        } else {
            waiters.removeFirst().resume()
        }
    }
}
