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
    private var seeding: [String: Task<Void, Never>] = [:]
    private var installing = false
    /// Orders being carried out now: the same order can arrive on the stream and at a
    /// check-in, or again at every check-in while a slow installer runs; it runs once.
    private var ordersInFlight: Set<String> = []
    private var installQueue: [CheckedContinuation<Void, Never>] = []
    private var pendingEvents: [AgentEvent] = []
    private var lastProgress: [String: ContinuousClock.Instant] = [:]
    private var nextCheckIn: Double = 5
    /// Whether this run already enrolled again after a 401 (the token is single-use).
    private var reenrolled = false
    /// The last inventory collected, and when: collected at start, after every activation
    /// or rollback, and otherwise every `inventoryInterval`.
    private var inventory: InventorySnapshot?
    private var inventoryCollected = ContinuousClock.now
    /// Digest of the inventory the core last acknowledged; the whole inventory is sent only
    /// when the current one differs.
    private var inventoryAcknowledged: String?

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
        try await enrolIfNeeded()
        resumeInterruptedSeeding()
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.checkInLoop() }
            group.addTask { await self.streamLoop() }
            await group.waitForAll()
        }
        for task in seeding.values { task.cancel() }
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
            token: token, name: configuration.name, segment: configuration.segment, addresses: Self.addresses(),
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
            let job = Job(
                kind: .seed, change: entry.change, release: entry.release, origin: "resume",
                manifest: entry.signedManifest, order: nil, rate: nil, attempt: 1,
                artifact: "/v1/artifacts/sha256/\(entry.manifest.digest.hex)")
            startSeeding(job, manifest: entry.manifest)
        }
    }

    func checkInLoop() async {
        var failures = 0
        while !Task.isCancelled {
            do {
                try await checkIn()
                failures = 0
                try await Task.sleep(for: .milliseconds(Int(nextCheckIn * 1000)))
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
                bytes: entry.phase >= .verified && entry.phase != .failed ? entry.manifest.size : 0)
        }
        let digest = inventory.digest
        let body = CheckIn(
            name: configuration.name, segment: configuration.segment, addresses: Self.addresses(),
            attributes: configuration.attributes, inventory: digest == inventoryAcknowledged ? nil : inventory,
            inventoryDigest: digest, cache: reports)
        let reply = try await link().post("/v1/agent/checkin", body, as: CheckInReply.self)
        nextCheckIn = min(reply.checkInAfter, configuration.maxCheckInInterval ?? reply.checkInAfter)
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

    // MARK: Jobs

    public func handle(_ jobs: [Job]) async {
        for job in jobs { await handle(job) }
    }

    /// Carries out one job, after checking the manifest (and order) carry the core's signature.
    public func handle(_ job: Job) async {
        let manifest: ReleaseManifest
        do {
            manifest = try job.manifest.open(ReleaseManifest.self, trusting: configuration.coreKey)
            try manifest.validate()
            guard manifest.release == job.release else { throw SignatureRefusal.malformed }
        } catch {
            await refuse(job, "the release manifest for \(job.release) was refused: \(error)")
            return
        }
        switch job.kind {
        case .seed:
            if let entry = cache.entry(job.change), entry.manifest.digest == manifest.digest,
                entry.phase >= .verified, entry.phase != .failed
            {
                await report(
                    AgentEvent(change: job.change, release: job.release, kind: .verified, bytes: manifest.size))
                return
            }
            await bucket.setRate(job.rate)
            startSeeding(job, manifest: manifest)
        case .activate, .rollback:
            let order: ActivationOrder
            do {
                order = try (job.order ?? SignedEnvelope(payload: "", signature: "", key: ""))
                    .open(ActivationOrder.self, trusting: configuration.coreKey)
                guard order.change == job.change, order.digest == manifest.digest,
                    order.kind.rawValue == job.kind.rawValue
                else {
                    throw ChangelabError("the order is for another change, release or action")
                }
                guard order.expiresAt > Date() else { throw ChangelabError("the order expired at \(order.expiresAt)") }
            } catch {
                await refuse(job, "the \(job.kind.rawValue) order for \(job.change) was refused: \(error)")
                return
            }
            await carryOut(order, job: job)
        }
    }

    func refuse(_ job: Job, _ why: String) async {
        logger.error("\(why)")
        await report(
            AgentEvent(
                change: job.change, release: job.release, kind: .refused,
                failure: Failure(reason: .untrusted, detail: why)))
    }

    func startSeeding(_ job: Job, manifest: ReleaseManifest) {
        guard seeding[job.change] == nil else { return }
        let entry: CacheEntry
        do {
            entry = try cache.open(change: job.change, manifest: manifest, signed: job.manifest)
        } catch {
            let failure = Seeder(cache: cache, transport: transport(), bucket: bucket).classify(
                error, while: "opening the cache")
            Task {
                await self.report(
                    AgentEvent(change: job.change, release: job.release, kind: .failed, failure: failure.failure))
            }
            return
        }
        seeding[job.change] = Task { await self.seed(job, entry: entry) }
    }

    func transport() -> any ChunkTransport {
        HTTPRangeTransport(link: link(configuration.artifactURL))
    }

    func seed(_ job: Job, entry: CacheEntry) async {
        defer { seeding[job.change] = nil }
        var seeder = Seeder(cache: cache, transport: transport(), bucket: bucket)
        seeder.retryDelay = configuration.downloadRetryDelay
        do {
            try await seeder.seed(job, entry: entry) { bytes in await self.progress(job, bytes: bytes) }
            guard try cache.verifyWhole(entry) else {
                throw SeedingFailure(
                    failure: Failure(reason: .hashMismatch, detail: "the whole package does not match its digest"))
            }
            var done = entry
            done.phase = .verified
            done.verifiedStamp = FileStamp(path: cache.packagePath(entry.change))
            try cache.save(done)
            await report(
                AgentEvent(change: job.change, release: job.release, kind: .verified, bytes: entry.manifest.size))
        } catch let error as SeedingFailure {
            if Task.isCancelled { return }
            await report(AgentEvent(change: job.change, release: job.release, kind: .failed, failure: error.failure))
        } catch {
            await report(
                AgentEvent(
                    change: job.change, release: job.release, kind: .failed,
                    failure: Seeder(cache: cache, transport: transport(), bucket: bucket).classify(
                        error, while: "finishing"
                    ).failure))
        }
    }

    func progress(_ job: Job, bytes: Int64) async {
        let now = ContinuousClock.now
        if let last = lastProgress[job.change], now - last < .seconds(1) { return }
        lastProgress[job.change] = now
        await report(AgentEvent(change: job.change, release: job.release, kind: .progress, bytes: bytes))
    }

    /// Runs an activation or rollback order once, from the verified cache only.
    func carryOut(_ order: ActivationOrder, job: Job) async {
        guard ordersInFlight.insert(order.id).inserted else { return }
        defer { ordersInFlight.remove(order.id) }
        await waitForInstaller()
        defer { releaseInstaller() }
        guard var entry = cache.entry(job.change), entry.manifest.digest == order.digest else {
            await report(
                AgentEvent(
                    change: job.change, release: job.release, kind: .failed,
                    failure: Failure(reason: .downloadFailed, detail: "the package is not in the cache; seed it first"))
            )
            return
        }
        if entry.ordersDone.contains(order.id), let result = entry.lastResult {
            await report(
                AgentEvent(
                    change: job.change, release: job.release, kind: order.kind == .activate ? .activated : .rolledBack,
                    exitCode: result.exitCode, outputTail: result.outputTail))
            return
        }
        if order.kind == .activate {
            // Nothing is installed that was not verified: the file must be the one that verified.
            guard entry.phase >= .verified, cache.stillVerified(entry) else {
                entry.phase = .seeding
                try? cache.save(entry)
                await report(
                    AgentEvent(
                        change: job.change, release: job.release, kind: .failed,
                        failure: Failure(
                            reason: .hashMismatch,
                            detail: "the cached package no longer matches its signed digest; re-seeding")))
                startSeeding(job, manifest: entry.manifest)
                return
            }
            // No separate "activating" report: the core marked the target activating when it
            // handed out the job, and a hundred extra round trips would delay every result.
            let before = DpkgStatus.installedVersion(of: entry.manifest.package, root: configuration.root)
            if entry.previousVersion == nil, !entry.installedVersion { entry.previousVersion = before }
            await configuration.installSlots?.wait()
            let result = await installer.install(cache.packagePath(job.change))
            await configuration.installSlots?.signal()
            finish(&entry, order: order, result: result)
            entry.installedVersion = result.failure == nil
            if result.failure == nil {
                entry.pinned = false
                entry.expiresAt = Date().addingTimeInterval(cache.lifetime)
            }
            try? cache.save(entry)
            await report(outcome(result, job: job, success: .activated))
            await reportInventory(job)
        } else {
            let result = await rollback(entry)
            finish(&entry, order: order, result: result)
            if result.failure == nil { entry.phase = .rolledBack }
            try? cache.save(entry)
            await report(outcome(result, job: job, success: .rolledBack))
            await reportInventory(job)
        }
    }

    private func finish(_ entry: inout CacheEntry, order: ActivationOrder, result: InstallResult) {
        entry.lastResult = result
        if result.failure == nil {
            entry.ordersDone.append(order.id)
            entry.phase = order.kind == .activate ? .activated : .rolledBack
        }
    }

    /// The result goes out at once; the post-install inventory follows in its own event,
    /// so a slow inventory never delays the activation result.
    private func outcome(_ result: InstallResult, job: Job, success: AgentEventKind) -> AgentEvent {
        if let failure = result.failure {
            // A maintainer script's own status says more than dpkg's 1.
            return AgentEvent(
                change: job.change, release: job.release, kind: .failed, failure: failure,
                exitCode: failure.exitCode ?? result.exitCode, outputTail: result.outputTail)
        }
        return AgentEvent(
            change: job.change, release: job.release, kind: success, exitCode: result.exitCode,
            outputTail: result.outputTail)
    }

    private func reportInventory(_ job: Job) async {
        let inventory = await currentInventory(refresh: true)
        await report(AgentEvent(change: job.change, release: job.release, kind: .inventory, inventory: inventory))
        if pendingEvents.isEmpty { inventoryAcknowledged = inventory.digest }
    }

    /// Back to the pre-install state: reinstall the previous version from the cache, or
    /// purge the package when it was not installed before.
    func rollback(_ entry: CacheEntry) async -> InstallResult {
        guard let previous = entry.previousVersion else {
            return await installer.purge(entry.manifest.package)
        }
        let candidates = cache.entries().filter {
            $0.manifest.package == entry.manifest.package && $0.manifest.packageVersion == previous
                && $0.phase >= .verified && $0.phase != .failed
        }
        guard let older = candidates.first(where: { cache.stillVerified($0) }) else {
            return InstallResult(
                exitCode: 1, outputTail: "",
                failure: Failure(
                    reason: .rollbackFailed,
                    detail: "\(entry.manifest.package) \(previous) was installed before, but it is not in the cache"))
        }
        return await installer.install(cache.packagePath(older.change))
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

    /// Non-loopback IPv4 addresses of this host (this network namespace).
    public static func addresses() -> [String] {
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
                if !text.hasPrefix("127.") { result.append(text) }
            }
        }
        return result.sorted()
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
