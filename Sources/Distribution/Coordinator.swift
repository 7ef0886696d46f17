import Crypto
import Foundation
import Model

/// Tunables of the core's rollout engine.
public struct CoreSettings: Sendable {
    /// How often agents check in when nothing is pushed to them.
    public var checkInInterval: Double = 30
    /// An agent not seen for this long (and without an open stream) counts as offline.
    public var offlineAfter: Double = 90
    /// Back-off before redeploying to a failed target: base × 2^(attempt−1), capped.
    public var retryBase: Double = 30
    public var retryMax: Double = 3600
    /// Tries per target and step (seeding, activation) before the target is left to the chase list.
    public var maxAttempts: Int = 4
    /// Default health gate: stop before the next ring when more than this share failed.
    public var maxFailureRate: Double = 0.1
    /// The change-control trust root this core starts from (`--trust-root`, out of band):
    /// without one the core activates nothing.
    public var trustRoot: SHA256Digest?
    /// Targeted multicast (`--multicast-groups`): each segment's representative sends the
    /// package to its segment (nil: off, every target downloads from peers or the core).
    public var multicast: MulticastSettings?

    public init() {}
}

/// The core's shared state and rollout logic: enrolment, check-in, jobs, rings and
/// health gates, redeploys, policies, status and the chase list.
///
/// One actor owns the state; every change is saved through the store before the call
/// that made it returns, so a core restarted at any moment resumes where it was.
public actor Coordinator {
    public let settings: CoreSettings
    let store: any CoreStore
    private(set) var key: ReleaseKey
    let clock: @Sendable () -> Date
    let observer: (any FleetObserver)?
    /// Internal (not private) for the representative and wake logic in Coordinator+Representatives.swift.
    var state: CoreSnapshot
    private var inventories: [String: InventorySnapshot]
    private var inventoryDigests: [String: String]
    /// Per agent, the packages its last check-in reported holding verified (rebuilt from
    /// check-ins after a restart, like the agent's cache report itself).
    private var holdings: [String: Set<SHA256Digest>] = [:]
    private var streams: [String: (id: UUID, continuation: AsyncStream<[Job]>.Continuation)] = [:]
    private var watchers: [UUID: AsyncStream<Void>.Continuation] = [:]
    /// Bytes-served counts not yet saved: they are saved with the next change or tick.
    private var dirty = false
    /// Numbers every snapshot handed to the store, so it never writes an older one last.
    private var saveSequence: UInt64 = 0
    private var inventorySequence: UInt64 = 0
    /// What agents may report about themselves (set by the server).
    var limits = CoreLimits()

    public init(
        store: any CoreStore, key: ReleaseKey, settings: CoreSettings = CoreSettings(),
        observer: (any FleetObserver)? = nil,
        clock: @escaping @Sendable () -> Date = { Date() }
    ) throws {
        self.store = store
        self.observer = observer
        self.key = key
        self.settings = settings
        self.clock = clock
        var state = try store.load() ?? CoreSnapshot()
        try Self.upgrade(&state, key: key)
        self.state = state
        self.inventories = try store.loadInventories()
        self.inventoryDigests = inventories.mapValues(\.digest)
    }

    /// Brings a state written by an older core to the current format: manifests are signed
    /// again as typed envelopes, failed targets get the step they failed in. A state whose
    /// key rotation names another key than the one loaded is refused (an interrupted rotation).
    static func upgrade(_ state: inout CoreSnapshot, key: ReleaseKey) throws {
        if let last = state.keyRotations?.last?.unverifiedClaim(KeyRotation.self), last.next != key.publicKey.hex {
            throw ChangelabError(
                "the core's state says its release key is \(last.next.prefix(16))…, but the key file holds \(key.publicKey.hex.prefix(16))…",
                why: "a key rotation was interrupted between saving the state and replacing the key file",
                fix: "move the release key's '.next' file (beside it in the state directory) over the release key, then start again")
        }
        for (name, record) in state.releases
        where record.signedManifest.version != SignedEnvelope.formatVersion
            || record.signedManifest.payloadType != PayloadType.releaseManifest.rawValue
        {
            state.releases[name]?.signedManifest = try key.sign(record.manifest, as: .releaseManifest)
        }
        for (change, deployment) in state.deployments {
            let size = state.releases[deployment.release]?.manifest.size ?? 0
            for agent in deployment.targets.keys {
                state.deployments[change]?.targets[agent]?.migrateFailedStep(packageSize: size)
            }
        }
        state.version = CoreSnapshot.formatVersion
    }

    public var publicKey: ReleasePublicKey { key.publicKey }

    // MARK: Change control

    /// The gate under the newest trust root this core accepted.
    private var gate: CoreChangeGate { CoreChangeGate(pinned: state.trustRoot ?? settings.trustRoot) }

    /// The trust root this core checks approvals under now.
    public var trustRoot: SHA256Digest? { state.trustRoot ?? settings.trustRoot }

    /// Remembers a newer trust root a verified chain led to: older chains stop verifying.
    private func adopt(_ root: SHA256Digest) {
        if root != trustRoot {
            state.trustRoot = root
            dirty = true
        }
    }

    /// Stores the authorization that activation jobs carry; targets that refused the previous
    /// one as not approved get another try with it.
    private func replaceAuthorization(of deployment: inout Deployment, with authorization: ChangeAuthorization) throws {
        let limit = 1 << 20
        guard (try? StableJSON.data(authorization).count).map({ $0 <= limit }) == true else {
            throw CoreRefusal.badRequest("the change's authorization is larger than 1 MiB")
        }
        if deployment.authorization != authorization {
            for (agent, target) in deployment.targets
            where [.notApproved, .baselineNotTested].contains(target.failure?.reason) {
                deployment.targets[agent]?.gaveUp = false
                deployment.targets[agent]?.retryAt = nil
            }
        }
        deployment.authorization = authorization
    }

    // MARK: Persistence and notification

    private func commit() async throws {
        dirty = false
        saveSequence += 1
        try await store.save(state, sequence: saveSequence)
        for watcher in watchers.values { watcher.yield() }
    }

    /// Saves an agent's inventory, numbered so that a slower, older save cannot land last.
    private func persistInventory(_ inventory: InventorySnapshot, agent: String) async throws {
        inventorySequence += 1
        try await store.saveInventory(inventory, agent: agent, sequence: inventorySequence)
    }

    /// Saves with the next change or tick (for state an agent can tell again).
    func markDirty() { dirty = true }

    /// Sets what agents may report about themselves (the server's limits).
    public func setLimits(_ limits: CoreLimits) {
        self.limits = limits
    }

    /// Called once a second: redeploys whose back-off ended, ring gates, deferred saves.
    public func tick() async {
        let now = clock()
        var due: Set<String> = []
        for deployment in state.deployments.values {
            for target in deployment.targets.values {
                if let retry = target.retryAt, retry <= now, !target.gaveUp { due.insert(target.agent) }
            }
        }
        for change in state.deployments.keys { advanceRings(change) }
        if repeatWakes() { dirty = true }
        if updateAllRepresentatives() { dirty = true }
        for agent in due where streams[agent] != nil { push(to: agent) }
        if dirty || !due.isEmpty { try? await commit() }
    }

    // MARK: Enrolment and identity

    /// Creates an enrolment token good for `uses` agents; only its hash is kept.
    public func createToken(uses: Int, lifetime: Double) async throws -> String {
        guard (1...100_000).contains(uses) else {
            throw CoreRefusal.badRequest("a token's uses must be between 1 and 100000, not \(uses)")
        }
        guard lifetime.isFinite, lifetime > 0, lifetime <= 366 * 86_400 else {
            throw CoreRefusal.badRequest("a token's lifetime must be between 0 and 366 days (in seconds), not \(lifetime)")
        }
        let token = randomSecret()
        let hash = SHA256Digest(of: token).hex
        state.tokens[hash] = EnrolmentToken(hash: hash, usesLeft: max(1, uses), expiresAt: clock() + lifetime)
        try await commit()
        return token
    }

    public func enrol(_ request: EnrolRequest) async throws -> EnrolReply {
        if let refusal = WireProtocol.refusal(request.protocolVersion) { throw CoreRefusal.badRequest(refusal) }
        let problems = AgentFacts.problems(
            name: request.name, segment: request.segment, addresses: request.addresses,
            attributes: request.attributes, limits: limits,
            prefixed: WireProtocol.sendsPrefixes(request.protocolVersion))
        guard problems.isEmpty else {
            throw CoreRefusal.badRequest("the enrolment is refused: " + problems.joined(separator: "; "))
        }
        let hash = SHA256Digest(of: request.token).hex
        guard var token = state.tokens[hash], token.usesLeft > 0, token.expiresAt > clock() else {
            throw CoreRefusal.unauthorized("the enrolment token is unknown, used up or expired")
        }
        // The name must be free before the token is spent on it.
        try checkFacts(
            of: nil, name: request.name, segment: request.segment, addresses: request.addresses,
            attributes: request.attributes, protocolVersion: request.protocolVersion)
        token.usesLeft -= 1
        if token.usesLeft == 0 { state.tokens[hash] = nil } else { state.tokens[hash] = token }
        let id = "a-" + UUID().uuidString.lowercased().prefix(13).replacingOccurrences(of: "-", with: "")
        let secret = randomSecret()
        let now = clock()
        state.agents[id] = AgentRecord(
            id: id, name: request.name, segment: request.segment, addresses: request.addresses,
            attributes: request.attributes, secretHash: SHA256Digest(of: secret).hex, revoked: false,
            enrolledAt: now, lastSeen: now,
            subnet: WireProtocol.sendsPrefixes(request.protocolVersion)
                ? InterfaceAddress.segmentAddress(of: request.addresses)?.subnet : nil,
            protocolVersion: request.protocolVersion, onlineSince: now)
        try await commit()
        return EnrolReply(agent: id, secret: secret)
    }

    /// Refuses what an agent says about itself when it is malformed, or when its name is
    /// another live agent's: names are unique per core, at enrolment and at every check-in.
    private func checkFacts(
        of id: String?, name: String, segment: String, addresses: [String], attributes: [String: String],
        protocolVersion: Int?, macAddresses: [String]? = nil
    ) throws {
        let problems = AgentFacts.problems(
            name: name, segment: segment, addresses: addresses, attributes: attributes, limits: limits,
            prefixed: WireProtocol.sendsPrefixes(protocolVersion), macAddresses: macAddresses)
        guard problems.isEmpty else {
            throw CoreRefusal.badRequest("the agent's report is refused: " + problems.joined(separator: "; "))
        }
        if let holder = state.agents.values.first(where: { $0.name == name && $0.id != id && !$0.revoked }) {
            throw CoreRefusal.conflict(
                "the agent name \(name) is taken by agent \(holder.id); names are unique per core "
                    + "(revoke the old agent with 'changelab core revoke \(holder.id)' if it is gone)")
        }
    }

    /// Refuses an inventory that lists more items than the core keeps for one agent.
    private func checkSize(of inventory: InventorySnapshot) throws {
        let items = inventory.itemCount
        guard items <= limits.maxInventoryItems else {
            throw CoreRefusal.badRequest(
                "the inventory lists \(items) items, the core keeps at most \(limits.maxInventoryItems) per agent")
        }
    }

    /// The agent whose credential this is, or a refusal naming why.
    public func authenticate(agent: String, secret: String) throws -> AgentRecord {
        guard let record = state.agents[agent], record.secretHash == SHA256Digest(of: secret).hex else {
            throw CoreRefusal.unauthorized("unknown agent or wrong credential")
        }
        guard !record.revoked else { throw CoreRefusal.unauthorized("agent \(agent) is revoked") }
        return record
    }

    public func revoke(agent: String) async throws {
        guard state.agents[agent] != nil else { throw CoreRefusal.notFound("no agent \(agent)") }
        state.agents[agent]?.revoked = true
        streams[agent]?.continuation.finish()
        streams[agent] = nil
        try await commit()
    }

    public func agents() -> [AgentSummary] {
        state.agents.values.sorted { ($0.segment, $0.name) < ($1.segment, $1.name) }.map { a in
            AgentSummary(
                id: a.id, name: a.name, segment: a.segment, attributes: a.attributes, addresses: a.addresses,
                revoked: a.revoked, online: isOnline(a), lastSeen: a.lastSeen, macAddresses: a.macAddresses,
                peerServedBytes: a.peerServedBytes)
        }
    }

    func isOnline(_ agent: AgentRecord) -> Bool {
        streams[agent.id] != nil || clock().timeIntervalSince(agent.lastSeen) < settings.offlineAfter
    }

    // MARK: Releases

    public func publish(_ manifest: ReleaseManifest) async throws -> ReleaseRecord {
        if let existing = state.releases[manifest.release] {
            guard existing.manifest.digest == manifest.digest else {
                throw CoreRefusal.conflict(
                    "release \(manifest.release) is already published with another package (\(existing.manifest.digest.short))"
                )
            }
            return existing
        }
        let record = ReleaseRecord(manifest: manifest, signedManifest: try key.sign(manifest, as: .releaseManifest))
        state.releases[manifest.release] = record
        try await commit()
        return record
    }

    /// Replaces the release key with a new one, signed over by the old: agents follow the
    /// rotation at their next check-in, and from then on obey only the new key.
    ///
    /// The new key is written beside the old one (`.next`) before the state names it, and
    /// moved over the old one after: an interruption leaves a state that says how to finish.
    public func rotateReleaseKey(keyPath: String) async throws -> ReleasePublicKey {
        let previous = key
        let next = ReleaseKey()
        let statement = try previous.rotation(to: next, at: clock())
        try next.save(to: keyPath + ".next")
        let saved = state
        state.keyRotations = (state.keyRotations ?? []) + [statement]
        for (name, record) in state.releases {
            state.releases[name]?.signedManifest = try next.sign(record.manifest, as: .releaseManifest)
        }
        key = next
        do {
            try await commit()
        } catch {
            state = saved
            key = previous
            try? FileManager.default.removeItem(atPath: keyPath + ".next")
            throw error
        }
        guard rename(keyPath + ".next", keyPath) == 0 else {
            throw ChangelabError(
                "the new release key could not replace \(keyPath): \(String(cString: strerror(errno)))",
                fix: "move \(keyPath).next over \(keyPath) before the core starts again")
        }
        return next.publicKey
    }

    public func releases() -> [ReleaseManifest] {
        state.releases.values.map(\.manifest).sorted { $0.release < $1.release }
    }

    /// The signed manifest of a published release.
    public func signedManifest(for release: String) -> SignedEnvelope? {
        state.releases[release]?.signedManifest
    }

    /// Whether `digest` is a published package (the artifact route serves nothing else).
    public func isPublished(_ digest: SHA256Digest) -> Bool {
        state.releases.values.contains { $0.manifest.digest == digest }
    }

    /// Counts bytes the core sent an agent for a package, per change that targets it.
    public func served(_ bytes: Int, of digest: SHA256Digest, to agent: String) {
        for (change, deployment) in state.deployments where deployment.targets[agent] != nil {
            guard state.releases[deployment.release]?.manifest.digest == digest else { continue }
            state.deployments[change]?.targets[agent]?.bytesServed += Int64(bytes)
            dirty = true
        }
    }

    // MARK: Peers

    /// The online peers on `asker`'s own segment (its subnet) whose last check-in reported a
    /// verified copy of `digest`, least-loaded first (fewest bytes served), the asker excluded.
    public func peers(for asker: String, holding digest: SHA256Digest) throws -> PeerList {
        guard let me = state.agents[asker], !me.revoked else { throw CoreRefusal.unauthorized("unknown agent") }
        guard let subnet = me.subnet else { return PeerList(digest: digest, subnet: nil, peers: []) }
        let peers = state.agents.values.filter { peer in
            peer.id != asker && !peer.revoked && peer.subnet == subnet && peer.peerURL != nil && isOnline(peer)
                && holdings[peer.id]?.contains(digest) == true
        }
        .sorted { ($0.peerServedBytes ?? 0, $0.name) < ($1.peerServedBytes ?? 0, $1.name) }
        .prefix(limits.maxPeersListed)
        .compactMap { peer in peer.peerURL.map { PeerLocation(agent: peer.id, url: $0) } }
        return PeerList(digest: digest, subnet: subnet, peers: Array(peers))
    }

    // MARK: Check-in and events

    public func checkIn(agent id: String, _ checkIn: CheckIn) async throws -> CheckInReply {
        guard var record = state.agents[id] else { throw CoreRefusal.unauthorized("unknown agent") }
        if let refusal = WireProtocol.refusal(checkIn.protocolVersion) { throw CoreRefusal.badRequest(refusal) }
        try checkFacts(
            of: id, name: checkIn.name, segment: checkIn.segment, addresses: checkIn.addresses,
            attributes: checkIn.attributes, protocolVersion: checkIn.protocolVersion, macAddresses: checkIn.macAddresses)
        if let inventory = checkIn.inventory { try checkSize(of: inventory) }
        if let port = checkIn.peerPort, !(1...65535).contains(port) {
            throw CoreRefusal.badRequest("the agent's report is refused: peer port \(port) is not 1–65535")
        }
        if let served = checkIn.peerServedBytes, served < 0 {
            throw CoreRefusal.badRequest("the agent's report is refused: negative peer bytes \(served)")
        }
        try checkWakeReports(checkIn.wakeReports)
        try checkMulticastReports(checkIn.multicastReports, joined: checkIn.multicastJoined)
        let wasOnline = isOnline(record)
        record.name = checkIn.name
        record.apply(segmentOf: checkIn, at: clock())
        record.addresses = checkIn.addresses
        record.attributes = checkIn.attributes
        record.protocolVersion = checkIn.protocolVersion
        record.macAddresses = WireProtocol.takesRoles(checkIn.protocolVersion) ? checkIn.macAddresses : nil
        record.receivesMulticast =
            WireProtocol.takesMulticast(checkIn.protocolVersion) ? checkIn.receivesMulticast == true : nil
        if !wasOnline || record.onlineSince == nil { record.onlineSince = clock() }
        record.lastSeen = clock()
        state.agents[id] = record
        if let inventory = checkIn.inventory, inventories[id] != inventory {
            inventories[id] = inventory
            inventoryDigests[id] = inventory.digest
            try await persistInventory(inventory, agent: id)
        }
        reconcile(agent: id, with: checkIn.cache)
        holdings[id] = Set(
            checkIn.cache.filter { $0.phase >= .verified && $0.phase != .failed && $0.phase != .rolledBack }
                .compactMap { state.releases[$0.release]?.manifest.digest })
        applyPolicies(to: id)
        let jobs = jobs(for: id)
        take(checkIn.wakeReports ?? [], from: id)
        take(checkIn.multicastReports ?? [], from: id)
        take(joined: checkIn.multicastJoined ?? [], from: id)
        let roles = representativeRoles(renewedBy: id)
        let listens = WireProtocol.takesMulticast(checkIn.protocolVersion) ? multicastListens(for: id) : []
        try await commit()
        let stale = checkIn.inventory == nil && inventoryDigests[id] != checkIn.inventoryDigest
        await observer?.agentReported(record, inventory: inventories[id], inventoryDigest: inventoryDigests[id])
        return CheckInReply(
            jobs: jobs, checkInAfter: settings.checkInInterval, sendInventory: stale ? true : nil,
            keyRotations: state.keyRotations,
            representing: WireProtocol.takesRoles(checkIn.protocolVersion) && !roles.isEmpty ? roles : nil,
            multicast: listens.isEmpty ? nil : listens)
    }

    /// Applies what an agent's cache says it holds: a lost event must not leave the core behind.
    private func reconcile(agent: String, with reports: [CacheReport]) {
        for report in reports {
            guard var target = state.deployments[report.change]?.targets[agent] else { continue }
            target.apply(.cacheReport(report), now: clock(), settings: settings)
            state.deployments[report.change]?.targets[agent] = target
        }
    }

    public func record(events: [AgentEvent], from agent: String) async throws {
        for inventory in events.compactMap(\.inventory) { try checkSize(of: inventory) }
        state.agents[agent]?.lastSeen = clock()
        // What an agent writes into the core's state is bounded: output tails and failure details.
        let changing = events.filter { $0.kind != .inventory }.map { event in
            var event = event
            event.outputTail = event.outputTail?.boundedTail(limits.maxOutputTail)
            if var failure = event.failure {
                failure.detail = failure.detail.boundedTail(limits.maxFailureDetail)
                event.failure = failure
            }
            return event
        }
        for event in changing { apply(event, from: agent) }
        if let refusal = changing.last(where: { $0.kind == .refused }) {
            let detail = refusal.failure?.detail ?? "no reason given"
            state.agents[agent]?.lastRefusal =
                "\(ISO8601DateFormatter().string(from: refusal.at)) \(refusal.change.prefix(64)): \(detail.prefix(500))"
        }
        for change in Set(changing.map(\.change)) { advanceRings(change) }
        if let inventory = events.compactMap(\.inventory).last {
            inventories[agent] = inventory
            inventoryDigests[agent] = inventory.digest
            try await persistInventory(inventory, agent: agent)
            if let record = state.agents[agent] {
                await observer?.agentReported(record, inventory: inventory, inventoryDigest: inventoryDigests[agent])
            }
        }
        if changing.allSatisfy({ $0.kind == .progress }) {
            // Only progress counts, an inventory (saved above) and a last-seen time: nothing
            // an agent could not tell again; the next save (at most a second away) carries it.
            dirty = true
        } else {
            try await commit()
        }
    }

    private func apply(_ event: AgentEvent, from agent: String) {
        guard let deployment = state.deployments[event.change], var target = deployment.targets[agent] else { return }
        let size = state.releases[deployment.release]?.manifest.size ?? 0
        target.apply(
            .event(event, packageSize: size, rollingBack: deployment.rollback != nil), now: clock(), settings: settings)
        // Agent-reported and shown only; a time more than a day off the core's is not taken.
        if [.activated, .rolledBack, .failed].contains(event.kind), let started = event.installerStartedAt,
            started.isFinite, abs(started - clock().timeIntervalSince1970) < 86_400
        {
            target.installerStartedAt = started
        }
        state.deployments[event.change]?.targets[agent] = target
    }

    // MARK: Jobs

    /// The jobs `agent` should be doing now, each in a ticket signed for that agent alone.
    /// Handing one out for a new try counts an attempt.
    private func jobs(for agent: String) -> [Job] {
        let now = clock()
        var jobs: [Job] = []
        for change in state.deployments.keys.sorted() {
            guard let deployment = state.deployments[change], var target = deployment.targets[agent],
                let release = state.releases[deployment.release]
            else { continue }
            if target.gaveUp { continue }
            if let retry = target.retryAt, retry > now { continue }
            let mayActivate =
                deployment.activation != nil && deployment.halted == nil && target.ring <= deployment.activeRing
            let kind = target.nextJob(rollingBack: deployment.rollback != nil, mayActivate: mayActivate)
            if let kind {
                target.apply(.handOut(kind), now: now, settings: settings)
            } else {
                target.retryAt = nil
            }
            state.deployments[change]?.targets[agent] = target
            guard let kind else { continue }
            let order = kind == .rollback ? deployment.rollback : kind == .activate ? deployment.activation : nil
            let attempt = kind == .seed ? target.seedAttempts : target.activationAttempts
            var ticket = JobTicket(
                kind: kind, change: change, release: deployment.release, digest: release.manifest.digest,
                agent: agent, sequence: nextSequence(), order: order?.id, origin: deployment.origin,
                rate: deployment.rate, attempt: max(1, attempt), issuedAt: now)
            if kind == .seed, seedsByMulticast(target, in: deployment) { ticket.multicast = true }
            do {
                jobs.append(
                    Job(
                        ticket: try key.sign(ticket, as: .job), manifest: release.signedManifest,
                        authorization: kind == .seed ? nil : deployment.authorization))
            } catch {
                // Signing an in-memory value does not fail in practice; the next check-in tries again.
                continue
            }
        }
        return jobs
    }

    /// The next job ticket number: higher than every one before, also across restarts (it
    /// never falls behind the clock in milliseconds, so a state restored from an older
    /// backup still numbers its tickets past what agents have seen).
    private func nextSequence() -> UInt64 {
        let milliseconds = UInt64(exactly: max(0, (clock().timeIntervalSince1970 * 1000).rounded(.down))) ?? 0
        let next = max((state.sequence ?? 0) &+ 1, milliseconds)
        state.sequence = next
        dirty = true
        return next
    }

    /// Sends `agent` its current jobs over its stream, if it has one open.
    private func push(to agent: String) {
        guard let stream = streams[agent]?.continuation else { return }
        let jobs = jobs(for: agent)
        if !jobs.isEmpty {
            stream.yield(jobs)
            dirty = true
        }
    }

    /// Opens the agent's push stream (replacing an older one); jobs due now are sent at once.
    public func openStream(agent: String) -> (id: UUID, jobs: AsyncStream<[Job]>) {
        let (stream, continuation) = AsyncStream<[Job]>.makeStream(bufferingPolicy: .bufferingNewest(8))
        let id = UUID()
        streams[agent]?.continuation.finish()
        streams[agent] = (id, continuation)
        state.agents[agent]?.lastSeen = clock()
        push(to: agent)
        return (id, stream)
    }

    public func closeStream(agent: String, id: UUID) {
        // Only drop the registration when it is still this stream's (a reconnect replaced it otherwise).
        guard streams[agent]?.id == id else { return }
        streams[agent]?.continuation.finish()
        streams[agent] = nil
        state.agents[agent]?.lastSeen = clock()
    }

    /// Wakes whenever the state changes, for the live status stream.
    public func watch() -> AsyncStream<Void> {
        let id = UUID()
        let (stream, continuation) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        watchers[id] = continuation
        continuation.onTermination = { _ in Task { await self.unwatch(id) } }
        continuation.yield()
        return stream
    }

    private func unwatch(_ id: UUID) { watchers[id] = nil }

    // MARK: Rollout control

    private func facts(_ agent: AgentRecord) -> TargetFacts {
        TargetFacts(
            name: agent.name, segment: agent.segment, attributes: agent.attributes,
            inventory: inventories[agent.id])
    }

    /// Creates the seeding job for `change`: targets are the agents the query selects now.
    public func promote(
        change: ChangeID, release: String, query: String, rings: [Ring], rate: Int64?, maxFailureRate: Double?,
        authorization: ChangeAuthorization? = nil
    ) async throws -> StatusReport {
        guard let record = state.releases[release] else {
            throw CoreRefusal.notFound("no release \(release) is published (publish it with 'changelab core publish')")
        }
        if let existing = state.deployments[change] {
            guard existing.release == release else {
                throw CoreRefusal.conflict("change \(change) is already promoted with release \(existing.release)")
            }
        }
        if let authorization {
            let root = try gate.checkPromotion(
                authorization, change: change, manifest: record.manifest, query: query,
                rings: state.deployments[change]?.rings ?? rings)
            adopt(root)
        }
        let selector = try TargetQuery.parse(query)
        let selected = state.agents.values.filter { !$0.revoked && selector.matches(facts($0)) }.map(\.id)
        var deployment =
            state.deployments[change]
            ?? Deployment(
                change: change, release: release, query: query, rings: rings, rate: rate,
                maxFailureRate: maxFailureRate ?? settings.maxFailureRate, origin: "change", createdAt: clock(),
                activation: nil, activatedAt: nil, activeRing: 0, halted: nil, rollback: nil, targets: [:])
        if let authorization { try replaceAuthorization(of: &deployment, with: authorization) }
        deployment.query = query
        deployment.rate = rate
        let ordered = selected.sorted { SHA256Digest(of: change + $0).hex < SHA256Digest(of: change + $1).hex }
        for (index, agent) in ordered.enumerated() where deployment.targets[agent] == nil {
            deployment.targets[agent] = TargetRecord(
                agent: agent, ring: Self.ring(of: index, count: ordered.count, rings: deployment.rings), at: clock())
        }
        state.deployments[change] = deployment
        assignMulticastChannel(change)
        requestWake(change, purpose: "seed")
        for agent in deployment.targets.keys { push(to: agent) }
        try await commit()
        return try status(change: change)
    }

    static func ring(of index: Int, count: Int, rings: [Ring]) -> Int {
        for (r, ring) in rings.enumerated() where index < Int((ring.share * Double(count)).rounded(.up)) {
            return r
        }
        return max(0, rings.count - 1)
    }

    /// Orders activation and sends it to the first ring's seeded targets.
    public func activate(change: ChangeID, authorization given: ChangeAuthorization? = nil) async throws -> StatusReport {
        guard var deployment = state.deployments[change] else {
            throw CoreRefusal.notFound(
                "change \(change) is not promoted (run 'changelab promote \(change) --targets Q')")
        }
        guard let record = state.releases[deployment.release] else {
            throw CoreRefusal.notFound("release \(deployment.release) is gone")
        }
        guard let authorization = given ?? deployment.authorization else {
            throw CoreRefusal.conflict(CoreChangeGate.noAuthorization(change))
        }
        let root = try gate.checkActivation(
            authorization, change: change, manifest: record.manifest, query: deployment.query, rings: deployment.rings,
            seededShare: deployment.seededShare, now: clock())
        adopt(root)
        try replaceAuthorization(of: &deployment, with: authorization)
        if deployment.activation == nil {
            deployment.activation = OrderRecord(issuedAt: clock())
            deployment.activatedAt = clock()
        }
        deployment.halted = nil
        state.deployments[change] = deployment
        requestWake(change, purpose: "activate")
        advanceRings(change)
        for agent in deployment.targets.keys { push(to: agent) }
        try await commit()
        return try status(change: change)
    }

    /// Orders a rollback of the targets that installed the change (or tried to).
    public func rollback(change: ChangeID, authorization given: ChangeAuthorization? = nil) async throws -> StatusReport {
        guard var deployment = state.deployments[change], let record = state.releases[deployment.release] else {
            throw CoreRefusal.notFound("change \(change) is not promoted")
        }
        guard let authorization = given ?? deployment.authorization else {
            throw CoreRefusal.conflict(
                "change \(change) has no signed rollback order: an approver whose role may roll back signs one ('changelab rollback CHG --as NAME')")
        }
        adopt(try gate.checkRollback(authorization, change: change, manifest: record.manifest))
        try replaceAuthorization(of: &deployment, with: authorization)
        if deployment.rollback == nil {
            deployment.rollback = OrderRecord(issuedAt: clock())
            for (agent, target) in deployment.targets where target.phase == .failed {
                deployment.targets[agent]?.retryAt = nil
                deployment.targets[agent]?.gaveUp = false
            }
        }
        state.deployments[change] = deployment
        for agent in deployment.targets.keys { push(to: agent) }
        try await commit()
        return try status(change: change)
    }

    /// Moves activation to the next ring when the current one settled within the health gate,
    /// or halts it when the ring failed too often.
    private func advanceRings(_ change: ChangeID) {
        guard var deployment = state.deployments[change], deployment.activation != nil, deployment.halted == nil,
            deployment.rollback == nil
        else { return }
        var advanced = false
        while deployment.activeRing < deployment.rings.count - 1 {
            let members = deployment.targets.values.filter { $0.ring == deployment.activeRing }
            let activated = members.filter { $0.phase == .activated }.count
            let failed = members.filter(\.failedActivation).count
            let waiting = members.filter { [.verified, .activating].contains($0.phase) }.count
            let results = activated + failed
            let ring = deployment.rings[deployment.activeRing]
            if results > 0, Double(failed) / Double(results) > deployment.maxFailureRate {
                deployment.halted =
                    "ring \(ring.name): \(failed) of \(results) failed (more than \(Int(exactly: (deployment.maxFailureRate * 100).rounded()) ?? 100)%)"
                break
            }
            guard results > 0 || members.isEmpty, waiting == 0 else { break }
            deployment.activeRing += 1
            advanced = true
        }
        state.deployments[change] = deployment
        if advanced {
            for (agent, target) in deployment.targets where target.ring <= deployment.activeRing { push(to: agent) }
        }
    }

    // MARK: Policies

    public func setPolicy(
        name: String, query: String, release: String, authorization: ChangeAuthorization? = nil
    ) async throws -> Policy {
        _ = try TargetQuery.parse(query)
        guard let record = state.releases[release] else {
            throw CoreRefusal.notFound("no release \(release) is published (publish it with 'changelab core publish')")
        }
        // A policy installs wherever its query matches, without a further order: it names an
        // approved change, checked as an activation of everything it will ever select.
        guard let authorization else {
            throw CoreRefusal.conflict(
                "a policy must name a release-approved change: 'changelab policy set NAME --change CHG'")
        }
        let all = [Ring(name: "all", share: 1)]
        adopt(
            try gate.checkActivation(
                authorization, change: "policy:\(name)", manifest: record.manifest, query: query, rings: all,
                seededShare: 1, now: clock()))
        let policy = Policy(name: name, query: query, release: release, createdAt: clock(), change: authorization.change)
        state.policies[name] = policy
        if state.deployments[policy.change]?.release != release {
            // No long-lived shared order: each qualifying target gets a short ticket of its own.
            state.deployments[policy.change] = Deployment(
                change: policy.change, release: release, query: query, rings: [Ring(name: "all", share: 1)], rate: nil,
                maxFailureRate: 1, origin: policy.change, createdAt: clock(),
                activation: OrderRecord(issuedAt: clock()), activatedAt: clock(), activeRing: 0, halted: nil,
                rollback: nil, targets: [:])
        }
        state.deployments[policy.change]?.query = query
        state.deployments[policy.change]?.authorization = authorization
        for id in state.agents.keys { applyPolicies(to: id) }
        for id in state.deployments[policy.change]?.targets.keys.map({ $0 }) ?? [] { push(to: id) }
        try await commit()
        return policy
    }

    public func removePolicy(name: String) async throws {
        guard let policy = state.policies.removeValue(forKey: name) else {
            throw CoreRefusal.notFound("no policy \(name)")
        }
        _ = policy
        try await commit()
    }

    public func policies() -> [Policy] { state.policies.values.sorted { $0.name < $1.name } }

    /// Adds `agent` to every policy's deployment it matches and does not already satisfy:
    /// this is how machines that join later get the release.
    private func applyPolicies(to id: String) {
        guard let agent = state.agents[id], !agent.revoked else { return }
        for policy in state.policies.values {
            guard var deployment = state.deployments[policy.change], deployment.targets[id] == nil,
                let manifest = state.releases[policy.release]?.manifest,
                let selector = try? TargetQuery.parse(policy.query), selector.matches(facts(agent))
            else { continue }
            if inventories[id]?.has(manifest.package, version: manifest.packageVersion) == true { continue }
            deployment.targets[id] = TargetRecord(agent: id, ring: 0, at: clock())
            state.deployments[policy.change] = deployment
        }
    }

    // MARK: Reports

    public func changes() -> [StatusReport] {
        state.deployments.keys.sorted().compactMap { try? status(change: $0) }
    }

    public func status(change: ChangeID) throws -> StatusReport {
        guard let deployment = state.deployments[change] else {
            throw CoreRefusal.notFound("change \(change) is not promoted")
        }
        let size = state.releases[deployment.release]?.manifest.size ?? 0
        var segments: [String: SegmentStatus] = [:]
        var sources: [TargetSource] = []
        for target in deployment.targets.values {
            guard let agent = state.agents[target.agent] else { continue }
            var s = segments[agent.segment] ?? SegmentStatus(segment: agent.segment)
            s.targets += 1
            if target.phase >= .seeded && target.phase != .failed || target.phase == .failed && target.holdsVerifiedCopy {
                s.seeded += 1
            }
            if target.holdsVerifiedCopy { s.verified += 1 }
            if target.phase == .activated { s.activated += 1 }
            if target.phase == .failed { s.failed += 1 }
            if target.phase == .rolledBack { s.rolledBack += 1 }
            if !isOnline(agent) { s.offline += 1 }
            s.bytesSent += target.bytesServed
            s.bytesVerified += min(target.bytes, size)
            if target.holdsVerifiedCopy, let source = target.source {
                s.bytesFromPeers += min(target.bytesFromPeers ?? 0, size)
                s.count(source)
                sources.append(
                    TargetSource(
                        name: agent.name, segment: agent.segment, subnet: agent.subnet, source: source,
                        bytesFromPeers: min(target.bytesFromPeers ?? 0, size), bytesFromCore: target.bytesServed))
            }
            segments[agent.segment] = s
        }
        var total = SegmentStatus(segment: "total")
        for s in segments.values { total.add(s) }
        return StatusReport(
            change: change, release: deployment.release, origin: deployment.origin, query: deployment.query,
            packageBytes: size, rings: deployment.rings, activationRequested: deployment.activation != nil,
            activeRing: deployment.activeRing, halted: deployment.halted, rollbackRequested: deployment.rollback != nil,
            segments: segments.values.sorted { $0.segment < $1.segment }, total: total,
            sources: sources.sorted { ($0.segment, $0.name) < ($1.segment, $1.name) },
            representatives: representativeStatus(of: deployment), multicast: deployment.multicast,
            lastInstallerStartAt: deployment.targets.values.compactMap(\.installerStartedAt).max())
    }

    /// Every target that does not have the change (activated, or verified before activation), and why.
    public func chase(change: ChangeID) throws -> [ChaseEntry] {
        guard let deployment = state.deployments[change] else {
            throw CoreRefusal.notFound("change \(change) is not promoted")
        }
        let goal: TargetPhase =
            deployment.rollback != nil ? .rolledBack : deployment.activation != nil ? .activated : .verified
        var entries: [ChaseEntry] = []
        for target in deployment.targets.values {
            guard let agent = state.agents[target.agent] else { continue }
            let done = goal == .verified ? target.phase >= .verified && target.phase != .failed : target.phase == goal
            if done { continue }
            let reason: String
            let detail: String
            if let failure = target.failure {
                reason = failure.summary
                detail = failure.detail
            } else if !isOnline(agent) {
                (reason, detail) = offlineReason(agent, in: deployment)
            } else if agent.revoked {
                reason = "revoked"
                detail = "the agent's credential is revoked"
            } else if target.ring > deployment.activeRing, deployment.activation != nil {
                reason = deployment.halted != nil ? "halted at health gate" : ChaseEntry.waitingForRing
                detail =
                    deployment.halted ?? "ring \(Ring.name(of: target.ring, in: deployment.rings))"
            } else {
                reason = ChaseEntry.inProgress
                detail = target.phase.rawValue
            }
            entries.append(
                ChaseEntry(
                    agent: agent.id, name: agent.name, segment: agent.segment, site: agent.attributes["site"] ?? "",
                    department: agent.attributes["department"] ?? "", phase: target.phase, reason: reason,
                    detail: detail, exitCode: target.exitCode, seedAttempts: target.seedAttempts,
                    activationAttempts: target.activationAttempts, lastSeen: agent.lastSeen, nextRetry: target.retryAt,
                    gaveUp: target.gaveUp))
        }
        return entries.sorted { ($0.segment, $0.name) < ($1.segment, $1.name) }
    }

    /// The operators' console: every change with what blocks it (as the gate judges it), its
    /// evidence, approvals, segments and chase list, and the agents; bounded by `limits`.
    public func console(limits: ConsoleLimits = ConsoleLimits()) -> ConsoleReport {
        let builder = ConsoleBuilder(
            gate: gate, releases: state.releases, agents: state.agents, now: clock(), limits: limits)
        let newest = state.deployments.values.sorted { ($0.createdAt, $0.change) > ($1.createdAt, $1.change) }
        let changes = newest.prefix(limits.changes).compactMap { deployment -> ConsoleChange? in
            guard let status = try? status(change: deployment.change) else { return nil }
            return builder.change(deployment, status: status, chase: (try? chase(change: deployment.change)) ?? [])
        }
        let agents = agents()
        return ConsoleReport(
            generatedAt: clock(), trustRoot: trustRoot, changes: changes, changesTotal: state.deployments.count,
            agents: agents.prefix(limits.agents).map(builder.agent), agentsTotal: agents.count)
    }

    /// The agent's name and target record for `change`, for tests and the chase detail.
    public func target(_ agent: String, change: ChangeID) -> TargetRecord? {
        state.deployments[change]?.targets[agent]
    }

    public func inventory(of agent: String) -> InventorySnapshot? { inventories[agent] }

    /// The core's record of one agent.
    public func agentRecord(_ id: String) -> AgentRecord? { state.agents[id] }

    // MARK: Operators and the audit trail

    /// The operator whose token this is (`NAME:SECRET`), or a refusal.
    public func authenticateOperator(name: String, secret: String) throws -> OperatorRecord {
        guard let record = state.operators?[name],
            constantTimeEqual(record.tokenHash, SHA256Digest(of: secret).hex)
        else { throw CoreRefusal.unauthorized("unknown operator or wrong token") }
        return record
    }

    /// Creates operator `name` with a fresh token (returned once, stored as its hash).
    public func addOperator(name: String, role: OperatorRole, by actor: String) async throws -> String {
        if let problem = AgentFacts.identifierProblem(name, what: "operator name", limit: 64) {
            throw CoreRefusal.badRequest(problem)
        }
        guard state.operators?[name] == nil else {
            throw CoreRefusal.conflict("operator \(name) exists (remove it first to give it a new token)")
        }
        let secret = randomSecret()
        try setOperator(name: name, role: role, tokenHash: SHA256Digest(of: secret).hex)
        try await recordAction("add-operator", subject: "\(name) (\(role.rawValue))", by: actor)
        return "\(name):\(secret)"
    }

    /// Registers the core's original single admin token as operator `admin`, once.
    public func adoptLegacyAdmin(token: String) async throws {
        guard state.operators?["admin"] == nil else { return }
        try setOperator(name: "admin", role: .admin, tokenHash: SHA256Digest(of: token).hex)
        try await commit()
    }

    private func setOperator(name: String, role: OperatorRole, tokenHash: String) throws {
        var operators = state.operators ?? [:]
        operators[name] = OperatorRecord(name: name, role: role, tokenHash: tokenHash, createdAt: clock())
        state.operators = operators
    }

    public func removeOperator(name: String, by actor: String) async throws {
        guard let record = state.operators?[name] else { throw CoreRefusal.notFound("no operator \(name)") }
        let admins = (state.operators ?? [:]).values.filter { $0.role == .admin }
        if record.role == .admin && admins.count == 1 {
            throw CoreRefusal.conflict("\(name) is the last admin operator; add another admin before removing it")
        }
        state.operators?[name] = nil
        try await recordAction("remove-operator", subject: name, by: actor)
    }

    public func operators() -> [OperatorSummary] {
        (state.operators ?? [:]).values.sorted { $0.name < $1.name }.map {
            OperatorSummary(name: $0.name, role: $0.role, createdAt: $0.createdAt)
        }
    }

    public func operatorRecord(named name: String) -> OperatorRecord? { state.operators?[name] }

    /// Records that `actor` did `action` to `subject`, durably, and tells the observer.
    public func recordAction(_ action: String, subject: String, by actor: String) async throws {
        appendAudit(action, subject: subject, by: actor)
        try await commit()
        if let entry = state.audit?.last { await observer?.operatorActed(entry) }
    }

    private func appendAudit(_ action: String, subject: String, by actor: String) {
        var audit = state.audit ?? []
        audit.append(AuditEntry(action: action, subject: subject, operatorName: actor, at: clock()))
        if audit.count > 10_000 { audit.removeFirst(audit.count - 10_000) }
        state.audit = audit
    }

    /// The audit trail, oldest first.
    public func auditTrail() -> [AuditEntry] { state.audit ?? [] }
}

/// An operator as the admin API lists it (no token hash).
public struct OperatorSummary: Codable, Sendable, Equatable {
    public var name: String
    public var role: OperatorRole
    public var createdAt: Date
}

/// Why the core refused a request; the server maps each to an HTTP status.
public enum CoreRefusal: Error, CustomStringConvertible, Sendable {
    case unauthorized(String)
    case notFound(String)
    case conflict(String)
    case badRequest(String)

    public var description: String {
        switch self {
        case .unauthorized(let m), .notFound(let m), .conflict(let m), .badRequest(let m): return m
        }
    }
}

func randomSecret() -> String {
    var generator = SystemRandomNumberGenerator()
    return (0..<32).map { _ in UInt8.random(in: 0...255, using: &generator) }.hexString
}

extension Date {
    static func + (lhs: Date, rhs: Double) -> Date { lhs.addingTimeInterval(rhs) }
}
