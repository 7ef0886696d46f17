import Foundation
import HTTPTypes
import HostIO
import Hummingbird
import HummingbirdCore
import HummingbirdTLS
import Logging
import Model
import NIOCore
import NIOSSL
import ServiceLifecycle

/// Where a core keeps everything: state, release key, admin token, artifacts.
public struct CoreLayout: Sendable {
    public let directory: String

    public init(directory: String) {
        self.directory = directory
    }

    public var releaseKey: String { directory + "/release-key" }
    public var adminToken: String { directory + "/admin.token" }
    public var artifacts: String { directory + "/artifacts" }
    public var incoming: String { directory + "/incoming" }
    /// The TLS key (made at first start, mode 0600), its certificate and the names it covers.
    public var tls: String { directory + "/tls" }

    /// Reads the admin token, creating it (mode 0600) the first time.
    public func loadOrCreateAdminToken() throws -> String {
        if let data = FileManager.default.contents(atPath: adminToken) {
            let token = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            if !token.isEmpty { return token }
        }
        let token = randomSecret()
        try AtomicFile.write(token + "\n", to: adminToken, permissions: 0o600)
        return token
    }
}

/// The core server: artifact repository with Range requests, enrolment, check-in, job
/// streams, status events, the admin API, the live status stream and the dashboard.
public struct CoreServer: Sendable {
    public let layout: CoreLayout
    public let coordinator: Coordinator
    public let repository: ArtifactRepository
    let adminToken: String
    let logger: Logger
    let shutdown = Shutdown()
    public let limits: CoreLimits
    /// The core's TLS identity: agents and the CLI pin ``CoreTLSIdentity/pin``.
    public let tls: CoreTLSIdentity
    let checkIns: CheckInLimiter
    /// Peer look-ups per agent, bounded like check-ins (a seeding agent asks once per job and
    /// again after each failed peer).
    let peerLookups: CheckInLimiter
    let sessions = Sessions()

    /// Opens (or creates) the core in `directory`; `observer` (a ``CMDBFleetRecorder``)
    /// hears every check-in. The TLS certificate covers `localhost`, 127.0.0.1, ::1 and `tlsNames`.
    public init(
        directory: String, settings: CoreSettings = CoreSettings(), limits: CoreLimits = CoreLimits(),
        tlsNames: [String] = [], observer: (any FleetObserver)? = nil
    ) throws {
        try settings.validate()
        let layout = CoreLayout(directory: directory)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        self.limits = limits
        self.checkIns = CheckInLimiter(burst: limits.checkInBurst, perSecond: limits.checkInsPerSecond)
        self.peerLookups = CheckInLimiter(burst: limits.checkInBurst, perSecond: limits.checkInsPerSecond)
        self.tls = try CoreTLSIdentity.loadOrCreate(directory: layout.tls, names: tlsNames)
        self.layout = layout
        let key = try ReleaseKey.loadOrCreate(at: layout.releaseKey)
        self.coordinator = try Coordinator(
            store: FileCoreStore(directory: directory), key: key, settings: settings, observer: observer)
        self.repository = ArtifactRepository(directory: layout.artifacts)
        self.adminToken = try layout.loadOrCreateAdminToken()
        var logger = Logger(label: "changelab.core")
        logger.logLevel = .warning
        self.logger = logger
    }

    /// Serves on `host:port` until cancelled; `onReady` gets the bound port (useful with port 0).
    public func run(host: String, port: Int, onReady: @escaping @Sendable (Int) async -> Void = { _ in }) async throws {
        // The original single admin token keeps working: it is operator "admin".
        try await coordinator.adoptLegacyAdmin(token: adminToken)
        await coordinator.setLimits(limits)
        let router = Router()
        routes(router)
        let http1 = HTTP1Channel.Configuration(
            additionalChannelHandlers: [ClosedByClient()], idleTimeout: .milliseconds(limits.idleTimeoutMilliseconds))
        let app = Application(
            router: router,
            server: try .tls(.http1(configuration: http1), tlsConfiguration: try tls.serverConfiguration()),
            configuration: .init(
                address: .hostname(host, port: port), serverName: "changelab-core", backlog: limits.listenBacklog,
                availableConnectionsDelegate: .maximum(limits.maxConnections, logger: logger)),
            onServerRunning: { channel in await onReady(channel.localAddress?.port ?? port) },
            logger: logger)
        let ticker = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(1))
                await coordinator.tick()
            }
        }
        defer { ticker.cancel() }
        // Stopping is a graceful shutdown (streams end, requests in flight finish), not a
        // cancellation of the server's tasks; downloads still running after 3 s are cut.
        let group = ServiceGroup(configuration: .init(services: [app], logger: logger))
        let running = Task { try await group.run() }
        let shutdown = self.shutdown
        try await withTaskCancellationHandler {
            try await running.value
        } onCancel: {
            shutdown.fire()
            Task {
                await group.triggerGracefulShutdown()
                try? await Task.sleep(for: .seconds(3))
                running.cancel()
            }
        }
    }

    // MARK: Routes

    func routes(_ router: Router<BasicRequestContext>) {
        router.get("/") { _, _ in Dashboard.response(Dashboard.html, type: "text/html; charset=utf-8") }
        router.get("/dashboard.js") { _, _ in Dashboard.response(Dashboard.script, type: "text/javascript") }
        router.get("/dashboard.css") { _, _ in Dashboard.response(Dashboard.style, type: "text/css") }
        router.get("/v1/key") { _, _ in
            try json(["key": await coordinator.publicKey.hex, "tlsPin": tls.pin])
        }
        router.post("/v1/login") { request, _ in
            try await handle {
                try checkOrigin(request)
                let body = try await decode(LoginRequest.self, request, limit: limits.smallBody)
                let (name, secret) = Self.split(operatorToken: body.token)
                let record = try await coordinator.authenticateOperator(name: name, secret: secret)
                let session = sessions.open(for: record.name)
                var response = try json(["operator": record.name, "role": record.role.rawValue])
                response.headers[.setCookie] =
                    "\(Sessions.cookie)=\(session); Path=/; Max-Age=\(Sessions.lifetime); HttpOnly; Secure; SameSite=Strict"
                return response
            }
        }
        router.post("/v1/enrol") { request, _ in
            try await handle {
                let body = try await decode(EnrolRequest.self, request, limit: limits.smallBody)
                return try json(try await coordinator.enrol(body))
            }
        }
        router.post("/v1/agent/checkin") { request, _ in
            try await handle {
                let agent = try await authenticateAgent(request)
                try throttle(agent, by: checkIns, "checks in")
                let body = try await decode(CheckIn.self, request, limit: limits.agentBody)
                return try json(try await coordinator.checkIn(agent: agent.id, body))
            }
        }
        router.post("/v1/agent/events") { request, _ in
            try await handle {
                let agent = try await authenticateAgent(request)
                let events = try await decode([AgentEvent].self, request, limit: limits.agentBody)
                try await coordinator.record(events: events, from: agent.id)
                return try json(["recorded": events.count])
            }
        }
        router.get("/v1/agent/stream") { request, _ in
            try await handle {
                let agent = try await authenticateAgent(request)
                return agentStream(agent.id)
            }
        }
        router.get("/v1/agent/peers/sha256/:hex") { request, context in
            try await handle {
                let agent = try await authenticateAgent(request)
                try throttle(agent, by: peerLookups, "asks for peers")
                guard let digest = SHA256Digest(hex: context.parameters.get("hex") ?? "") else {
                    throw CoreRefusal.badRequest("'\(AgentFacts.printable(context.parameters.get("hex") ?? ""))' is not a SHA-256 digest")
                }
                return try json(try await coordinator.peers(for: agent.id, holding: digest))
            }
        }
        router.get("/v1/artifacts/sha256/:hex") { request, context in
            try await handle {
                // Agents fetch with their credential; a mirror that syncs from the core with a viewer's token.
                let agent: String?
                if let credential = bearer(request), credential.hasPrefix("a-") {
                    agent = try await authenticateAgent(request).id
                } else {
                    _ = try await authorize(request, .viewer)
                    agent = nil
                }
                guard let digest = SHA256Digest(hex: context.parameters.get("hex") ?? ""),
                    await coordinator.isPublished(digest)
                else { throw CoreRefusal.notFound("no such artifact") }
                return try await artifact(digest, request: request, context: context, agent: agent)
            }
        }

        // Admin API: every route names the least role it needs.
        router.put("/v1/admin/releases/:name") { request, context in
            try await handle {
                let caller = try await authorize(request, .admin)
                let name = try validName(context.parameters.get("name"), what: "release name")
                let text = request.uri.queryParameters["chunk-size"].map(String.init)
                let chunkSize = try text.map { text -> Int in
                    guard let value = Int(text) else {
                        throw CoreRefusal.badRequest("chunk size '\(text)' is not a whole number of bytes")
                    }
                    return value
                } ?? 256 * 1024
                guard chunkSize >= 4096, chunkSize <= 64 << 20 else {
                    throw CoreRefusal.badRequest("chunk size must be between 4 KiB and 64 MiB")
                }
                guard let length = request.headers[.contentLength].flatMap({ Int($0) }) else {
                    throw HTTPRefusal(.lengthRequired, "send the package with a Content-Length")
                }
                guard length <= limits.publishBody else {
                    throw HTTPRefusal(
                        .contentTooLarge, "the package is \(length) bytes, the core takes at most \(limits.publishBody)")
                }
                let manifest = try await publish(name, chunkSize: chunkSize, body: request.body, context: context)
                try await coordinator.recordAction("publish", subject: name, by: caller.name)
                return try json(manifest)
            }
        }
        router.get("/v1/admin/releases") { request, _ in
            try await handle {
                _ = try await authorize(request, .viewer)
                return try json(await coordinator.releases())
            }
        }
        router.post("/v1/admin/tokens") { request, _ in
            try await handle {
                let caller = try await authorize(request, .admin)
                let body = try await decode(TokenRequest.self, request, limit: limits.smallBody)
                let token = try await coordinator.createToken(uses: body.uses, lifetime: body.lifetime)
                try await coordinator.recordAction("create-token", subject: "\(body.uses) use(s)", by: caller.name)
                return try json(
                    TokenReply(token: token, coreKey: await coordinator.publicKey.hex, uses: body.uses, corePin: tls.pin))
            }
        }
        router.post("/v1/admin/release-key/rotate") { request, _ in
            try await handle {
                let caller = try await authorize(request, .admin)
                let previous = await coordinator.publicKey.hex
                let key = try await coordinator.rotateReleaseKey(keyPath: layout.releaseKey)
                try await coordinator.recordAction(
                    "rotate-release-key", subject: "\(previous.prefix(16))… → \(key.hex.prefix(16))…", by: caller.name)
                return try json(["key": key.hex, "previous": previous])
            }
        }
        router.get("/v1/admin/agents") { request, _ in
            try await handle {
                _ = try await authorize(request, .viewer)
                return try json(await coordinator.agents())
            }
        }
        router.post("/v1/admin/agents/:id/revoke") { request, context in
            try await handle {
                let caller = try await authorize(request, .admin)
                let id = context.parameters.get("id") ?? ""
                try await coordinator.revoke(agent: id)
                try await coordinator.recordAction("revoke", subject: id, by: caller.name)
                return try json(["revoked": id])
            }
        }
        router.get("/v1/admin/operators") { request, _ in
            try await handle {
                _ = try await authorize(request, .admin)
                return try json(await coordinator.operators())
            }
        }
        router.post("/v1/admin/operators") { request, _ in
            try await handle {
                let caller = try await authorize(request, .admin)
                let body = try await decode(OperatorRequest.self, request, limit: limits.smallBody)
                let token = try await coordinator.addOperator(name: body.name, role: body.role, by: caller.name)
                return try json(OperatorReply(name: body.name, role: body.role, token: token))
            }
        }
        router.delete("/v1/admin/operators/:name") { request, context in
            try await handle {
                let caller = try await authorize(request, .admin)
                let name = context.parameters.get("name") ?? ""
                try await coordinator.removeOperator(name: name, by: caller.name)
                return try json(["removed": name])
            }
        }
        router.get("/v1/admin/audit") { request, _ in
            try await handle {
                _ = try await authorize(request, .viewer)
                return try json(await coordinator.auditTrail())
            }
        }
        router.get("/v1/admin/changes") { request, _ in
            try await handle {
                _ = try await authorize(request, .viewer)
                return try json(await coordinator.changes())
            }
        }
        router.get("/v1/admin/console") { request, _ in
            try await handle {
                _ = try await authorize(request, .viewer)
                return try json(await coordinator.console())
            }
        }
        router.post("/v1/admin/changes/:change/promote") { request, context in
            try await handle {
                let caller = try await authorize(request, .deployer)
                let change = try validName(context.parameters.get("change"), what: "change id")
                let body = try await decode(PromoteRequest.self, request, limit: limits.authorizationBody)
                try body.validate()
                let rings = try Ring.parseList(body.rings ?? "all")
                let report = try await coordinator.promote(
                    change: change, release: body.release ?? change, query: body.targets, rings: rings,
                    rate: body.rate, maxFailureRate: body.maxFailureRate, authorization: body.authorization)
                try await coordinator.recordAction("promote", subject: change, by: caller.name)
                return try json(report)
            }
        }
        router.post("/v1/admin/changes/:change/activate") { request, context in
            try await handle {
                let caller = try await authorize(request, .deployer)
                let change = context.parameters.get("change") ?? ""
                let body = try await decode(ActivateRequest.self, request, limit: limits.authorizationBody)
                let report = try await coordinator.activate(change: change, authorization: body.authorization)
                try await coordinator.recordAction("activate", subject: change, by: caller.name)
                return try json(report)
            }
        }
        router.post("/v1/admin/changes/:change/rollback") { request, context in
            try await handle {
                let caller = try await authorize(request, .deployer)
                let change = context.parameters.get("change") ?? ""
                let body = try await decode(ActivateRequest.self, request, limit: limits.authorizationBody)
                let report = try await coordinator.rollback(change: change, authorization: body.authorization)
                try await coordinator.recordAction("rollback", subject: change, by: caller.name)
                return try json(report)
            }
        }
        router.get("/v1/admin/changes/:change/status") { request, context in
            try await handle {
                _ = try await authorize(request, .viewer)
                return try json(try await coordinator.status(change: context.parameters.get("change") ?? ""))
            }
        }
        router.get("/v1/admin/changes/:change/chase") { request, context in
            try await handle {
                _ = try await authorize(request, .viewer)
                return try json(try await coordinator.chase(change: context.parameters.get("change") ?? ""))
            }
        }
        router.get("/v1/admin/events") { request, _ in
            try await handle {
                _ = try await authorize(request, .viewer)
                let change = request.uri.queryParameters["change"].map(String.init)
                return statusStream(change: change)
            }
        }
        router.get("/v1/admin/policies") { request, _ in
            try await handle {
                _ = try await authorize(request, .viewer)
                return try json(await coordinator.policies())
            }
        }
        router.put("/v1/admin/policies/:name") { request, context in
            try await handle {
                let caller = try await authorize(request, .deployer)
                let name = try validName(context.parameters.get("name"), what: "policy name")
                let body = try await decode(PolicyRequest.self, request, limit: limits.authorizationBody)
                let policy = try await coordinator.setPolicy(
                    name: name, query: body.targets, release: body.release, authorization: body.authorization)
                try await coordinator.recordAction("set-policy", subject: name, by: caller.name)
                return try json(policy)
            }
        }
        router.delete("/v1/admin/policies/:name") { request, context in
            try await handle {
                let caller = try await authorize(request, .deployer)
                let name = context.parameters.get("name") ?? ""
                try await coordinator.removePolicy(name: name)
                try await coordinator.recordAction("remove-policy", subject: name, by: caller.name)
                return try json(["removed": name])
            }
        }
    }

    // MARK: Handlers

    /// Serves a published package, whole or from a Range (`bytes=N-` or `bytes=N-M`), counting
    /// what leaves the core per agent.
    func artifact(_ digest: SHA256Digest, request: Request, context: BasicRequestContext, agent: String?)
        async throws -> Response
    {
        guard let file = try await RangedFile.load(repository.path(of: digest), request: request, context: context) else {
            throw CoreRefusal.notFound("artifact \(digest.short) is missing from the repository")
        }
        guard let agent else { return file.response }
        let coordinator = self.coordinator
        let counted = file.body.map { buffer in
            await coordinator.served(buffer.readableBytes, of: digest, to: agent)
            return buffer
        }
        return Response(status: file.status, headers: file.headers, body: counted)
    }

    /// `bytes=START-[END]` within a file of `size` bytes; nil when unsatisfiable or not understood.
    static func parseRange(_ header: String, size: Int) -> ClosedRange<Int>? {
        guard header.hasPrefix("bytes="), !header.contains(",") else { return nil }
        let spec = header.dropFirst(6).split(separator: "-", maxSplits: 1, omittingEmptySubsequences: false)
        guard spec.count == 2 else { return nil }
        if spec[0].isEmpty {
            guard let suffix = Int(spec[1]), suffix > 0, size > 0 else { return nil }
            return max(0, size - suffix)...(size - 1)
        }
        guard let start = Int(spec[0]), start >= 0, start < size else { return nil }
        let end = spec[1].isEmpty ? size - 1 : min(Int(spec[1]) ?? -1, size - 1)
        guard end >= start else { return nil }
        return start...end
    }

    func publish(_ name: String, chunkSize: Int, body: RequestBody, context: BasicRequestContext) async throws
        -> ReleaseManifest
    {
        try FileManager.default.createDirectory(atPath: layout.incoming, withIntermediateDirectories: true)
        let temp = "\(layout.incoming)/\(UUID().uuidString).deb"
        defer { try? FileManager.default.removeItem(atPath: temp) }
        try await FileIO().writeFile(contents: body, path: temp, context: context)
        let fields = try await HostCommand.run("dpkg-deb", ["-f", temp, "Package", "Version"])
        guard fields.succeeded else {
            throw CoreRefusal.badRequest("the upload is not a Debian package: \(fields.tail(3))")
        }
        var control: [String: String] = [:]
        for line in fields.stdoutText.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            if parts.count == 2 { control[parts[0]] = parts[1] }
        }
        guard let package = control["Package"], let version = control["Version"] else {
            throw CoreRefusal.badRequest("the package's control file has no Package or Version field")
        }
        let repository = self.repository
        let manifest = try await BlockingWork.run {
            let manifest = try ReleaseManifest.build(
                file: temp, release: name, package: package, packageVersion: version, chunkSize: chunkSize)
            try repository.add(file: temp, digest: manifest.digest)
            return manifest
        }
        return try await coordinator.publish(manifest).manifest
    }

    /// The agent's job stream (server-sent events): `event: jobs` with the jobs as JSON.
    func agentStream(_ agent: String) -> Response {
        let coordinator = self.coordinator
        return eventStream { sink in
            let (id, jobs) = await coordinator.openStream(agent: agent)
            sink.yield(": connected\n\n")
            for await batch in jobs {
                if let line = try? jsonLine(batch) { sink.yield("event: jobs\ndata: \(line)\n\n") }
            }
            return { await coordinator.closeStream(agent: agent, id: id) }
        }
    }

    /// The live status stream: `event: status` with the change's report (or every change's)
    /// each time it changes, at most four times a second.
    func statusStream(change: String?) -> Response {
        let coordinator = self.coordinator
        return eventStream { sink in
            var last = ""
            for await _ in await coordinator.watch() {
                let line: String?
                if let change {
                    line = (try? await coordinator.status(change: change)).flatMap { try? jsonLine($0) }
                } else {
                    line = try? jsonLine(await coordinator.changes())
                }
                if let line, line != last {
                    last = line
                    sink.yield("event: status\ndata: \(line)\n\n")
                }
                try? await Task.sleep(for: .milliseconds(250))
            }
            return {}
        }
    }

    /// A server-sent event response fed by `produce`, with a comment line every 15 s so dead
    /// connections are noticed. It ends when the client goes, `produce` returns or the server
    /// shuts down; then the cleanup `produce` returned runs.
    func eventStream(
        _ produce: @escaping @Sendable (AsyncStream<String>.Continuation) async -> @Sendable () async -> Void
    ) -> Response {
        let shutdown = self.shutdown
        let pingSeconds = max(1, limits.streamPingSeconds)
        let body = ResponseBody { writer in
            let (events, sink) = AsyncStream<String>.makeStream()
            let registration = shutdown.register(sink)
            defer { shutdown.unregister(registration) }
            let producer = Task {
                let cleanup = await produce(sink)
                sink.finish()
                return cleanup
            }
            let ping = Task {
                while !Task.isCancelled {
                    try? await Task.sleep(for: .seconds(pingSeconds))
                    if !Task.isCancelled { sink.yield(": ping\n\n") }
                }
            }
            do {
                for await event in events { try await writer.write(ByteBuffer(string: event)) }
            } catch {}
            ping.cancel()
            producer.cancel()
            await producer.value()
            try? await writer.finish(nil)
        }
        return Response(
            status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-cache"], body: body)
    }

    // MARK: Authentication

    /// Refuses (429) an agent whose bucket in `limiter` is empty; `doing` says what it does too often.
    func throttle(_ agent: AgentRecord, by limiter: CheckInLimiter, _ doing: String) throws {
        guard limiter.allow(agent.id) else {
            throw HTTPRefusal(
                .tooManyRequests,
                "agent \(agent.id) \(doing) too often (at most \(limiter.perSecond) a second, bursts of \(Int(limiter.burst))); slow down")
        }
    }

    /// `Authorization: Bearer AGENT:SECRET`.
    func authenticateAgent(_ request: Request) async throws -> AgentRecord {
        guard let credential = bearer(request), let colon = credential.firstIndex(of: ":") else {
            throw CoreRefusal.unauthorized("no agent credential")
        }
        return try await coordinator.authenticate(
            agent: String(credential[..<colon]), secret: String(credential[credential.index(after: colon)...]))
    }

    /// The operator behind an admin request, refused unless their role is at least `needed`.
    ///
    /// Programs send `Authorization: Bearer NAME:TOKEN` (a bare token is the original admin
    /// token, operator `admin`); browsers send the session cookie the login step set, and a
    /// state-changing request from a browser must come from the core's own page (Origin).
    /// Never a token in the URL: URLs end up in logs, history and Referer headers.
    func authorize(_ request: Request, _ needed: OperatorRole) async throws -> OperatorRecord {
        let record: OperatorRecord
        if let credential = bearer(request) {
            let (name, secret) = Self.split(operatorToken: credential)
            record = try await coordinator.authenticateOperator(name: name, secret: secret)
        } else if let session = Self.cookie(Sessions.cookie, in: request), let name = sessions.name(for: session) {
            if request.method != .get && request.method != .head { try checkOrigin(request, required: true) }
            guard let known = await coordinator.operatorRecord(named: name) else {
                throw CoreRefusal.unauthorized("operator \(name) no longer exists; log in again")
            }
            record = known
        } else {
            throw CoreRefusal.unauthorized(
                "no operator credential: send 'Authorization: Bearer NAME:TOKEN' or log in on the dashboard")
        }
        guard record.role >= needed else {
            throw HTTPRefusal(
                .forbidden, "operator \(record.name) is a \(record.role.rawValue); this needs a \(needed.rawValue)")
        }
        return record
    }

    /// `NAME:SECRET`, or a bare secret for the original admin token.
    static func split(operatorToken token: String) -> (name: String, secret: String) {
        guard let colon = token.firstIndex(of: ":") else { return ("admin", token) }
        return (String(token[..<colon]), String(token[token.index(after: colon)...]))
    }

    /// Refuses a browser request whose Origin is not this core's own (`https://HOST`).
    func checkOrigin(_ request: Request, required: Bool = false) throws {
        guard let origin = request.headers[.origin] else {
            if required { throw HTTPRefusal(.forbidden, "a browser request that changes state must carry Origin") }
            return
        }
        let host = request.head.authority ?? ""
        guard !host.isEmpty, origin == "https://\(host)" else {
            throw HTTPRefusal(.forbidden, "requests from \(origin) are not accepted; use the core's own dashboard")
        }
    }

    static func cookie(_ name: String, in request: Request) -> String? {
        for header in request.headers[values: .cookie] {
            for part in header.split(separator: ";") {
                let pair = part.trimmingCharacters(in: .whitespaces).split(separator: "=", maxSplits: 1)
                if pair.count == 2, pair[0] == name { return String(pair[1]) }
            }
        }
        return nil
    }

    func bearer(_ request: Request) -> String? {
        guard let header = request.headers[.authorization], header.hasPrefix("Bearer ") else { return nil }
        return String(header.dropFirst(7))
    }
}

/// Closes a connection whose client closed its side (TCP FIN or TLS close_notify).
///
/// The server allows half-closure, so without this a client that went away stays "connected"
/// until a write fails: an agent's job stream then keeps the agent online for two ping rounds.
final class ClosedByClient: ChannelInboundHandler, RemovableChannelHandler {
    // The parts pass through untouched: this handler only watches for the end of input.
    typealias InboundIn = NIOAny

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.fireChannelRead(data)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }
}

/// Dashboard sessions: an unguessable id in an HttpOnly cookie, kept in memory (a restarted
/// core asks operators to log in again).
final class Sessions: @unchecked Sendable {
    // @unchecked: `open` is guarded by `lock`.
    static let cookie = "changelab_session"
    static let lifetime = 12 * 3600
    private let lock = NSLock()
    private var sessions: [String: (name: String, expires: Date)] = [:]

    func open(for name: String) -> String {
        let id = randomSecret()
        lock.lock()
        defer { lock.unlock() }
        let now = Date()
        sessions = sessions.filter { $0.value.expires > now }
        sessions[id] = (name, now.addingTimeInterval(Double(Self.lifetime)))
        return id
    }

    func name(for id: String) -> String? {
        lock.lock()
        defer { lock.unlock() }
        guard let session = sessions[id], session.expires > Date() else { return nil }
        return session.name
    }
}

/// Fires once on shutdown so long-lived streams end and the server can stop.
final class Shutdown: @unchecked Sendable {
    // @unchecked: guarded by `lock`.
    private let lock = NSLock()
    private var fired = false
    private var next = 0
    private var sinks: [Int: AsyncStream<String>.Continuation] = [:]

    func fire() {
        lock.lock()
        fired = true
        let all = sinks.values
        sinks = [:]
        lock.unlock()
        for sink in all { sink.finish() }
    }

    /// Registers a stream to end on shutdown; pass the number back to ``unregister(_:)`` when it ends.
    func register(_ sink: AsyncStream<String>.Continuation) -> Int {
        lock.lock()
        if fired {
            lock.unlock()
            sink.finish()
            return -1
        }
        next += 1
        sinks[next] = sink
        lock.unlock()
        return next
    }

    func unregister(_ registration: Int) {
        lock.lock()
        sinks[registration] = nil
        lock.unlock()
    }

    /// Streams registered now (for tests: it must not grow with every reconnect).
    var registered: Int {
        lock.lock()
        defer { lock.unlock() }
        return sinks.count
    }
}

/// A refusal with its own HTTP status: 403, 411, 413, 429.
struct HTTPRefusal: Error, CustomStringConvertible {
    var status: HTTPResponse.Status
    var description: String

    init(_ status: HTTPResponse.Status, _ description: String) {
        self.status = status
        self.description = description
    }
}

// MARK: Admin API bodies

public struct TokenRequest: Codable, Sendable {
    public var uses: Int
    /// Seconds the token stays valid.
    public var lifetime: Double

    public init(uses: Int, lifetime: Double) {
        self.uses = uses
        self.lifetime = lifetime
    }
}

public struct TokenReply: Codable, Sendable {
    public var token: String
    public var coreKey: String
    public var uses: Int
    /// `sha256:HEX` of the core's TLS key, for `--core-pin` (nil from a core before TLS).
    public var corePin: String?
}

public struct LoginRequest: Codable, Sendable {
    public var token: String

    public init(token: String) {
        self.token = token
    }
}

public struct OperatorRequest: Codable, Sendable {
    public var name: String
    public var role: OperatorRole

    public init(name: String, role: OperatorRole) {
        self.name = name
        self.role = role
    }
}

/// A new operator's token, shown once.
public struct OperatorReply: Codable, Sendable {
    public var name: String
    public var role: OperatorRole
    public var token: String
}

public struct PromoteRequest: Codable, Sendable {
    public var release: String?
    public var targets: String
    public var rings: String?
    public var rate: Int64?
    public var maxFailureRate: Double?
    /// The change's trust root chain and lab evidence (approvals may follow at activation).
    public var authorization: ChangeAuthorization?

    public init(
        release: String?, targets: String, rings: String?, rate: Int64?, maxFailureRate: Double?,
        authorization: ChangeAuthorization? = nil
    ) {
        self.release = release
        self.targets = targets
        self.rings = rings
        self.rate = rate
        self.maxFailureRate = maxFailureRate
        self.authorization = authorization
    }
}

/// `activate`: the change's authorization with its release approvals (nil: the one sent before).
public struct ActivateRequest: Codable, Sendable {
    public var authorization: ChangeAuthorization?

    public init(authorization: ChangeAuthorization?) {
        self.authorization = authorization
    }
}

extension PromoteRequest {
    /// Refuses numbers the rollout cannot compute with (they would be stored and crash every tick).
    func validate() throws {
        if let rate = maxFailureRate, !(rate.isFinite && rate >= 0 && rate <= 1) {
            throw CoreRefusal.badRequest("maxFailureRate must be between 0 and 1 (a share), not \(rate)")
        }
        if let rate, rate <= 0 {
            throw CoreRefusal.badRequest("rate must be a positive number of bytes per second, not \(rate)")
        }
        if targets.utf8.count > 4096 { throw CoreRefusal.badRequest("the target query is longer than 4096 bytes") }
    }
}

public struct PolicyRequest: Codable, Sendable {
    public var targets: String
    public var release: String
    /// The release-approved change the policy carries out.
    public var authorization: ChangeAuthorization?

    public init(targets: String, release: String, authorization: ChangeAuthorization? = nil) {
        self.targets = targets
        self.release = release
        self.authorization = authorization
    }
}

/// An error body: `{"error": "..."}`.
public struct ErrorBody: Codable, Sendable {
    public var error: String
}

// MARK: Helpers

/// One line of JSON for an event's `data:` field (an event ends at the first blank line, so
/// the pretty form cannot be used there).
public func jsonLine(_ value: some Encodable) throws -> String {
    let encoder = StableJSON.encoder()
    encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    return String(decoding: try encoder.encode(value), as: UTF8.self)
}

func json(_ value: some Encodable) throws -> Response {
    Response(
        status: .ok, headers: [.contentType: "application/json"],
        body: .init(byteBuffer: ByteBuffer(data: try StableJSON.data(value))))
}

/// Runs a handler, turning refusals and bad input into JSON errors with the right status.
func handle(_ body: () async throws -> Response) async throws -> Response {
    do {
        return try await body()
    } catch let refusal as CoreRefusal {
        let status: HTTPResponse.Status
        switch refusal {
        case .unauthorized: status = .unauthorized
        case .notFound: status = .notFound
        case .conflict: status = .conflict
        case .badRequest: status = .badRequest
        }
        return errorResponse(status, refusal.description)
    } catch let refusal as HTTPRefusal {
        return errorResponse(refusal.status, refusal.description)
    } catch let error as ChangelabError {
        return errorResponse(.badRequest, error.description)
    } catch let error as DecodingError {
        return errorResponse(.badRequest, "the request body is not what this endpoint expects: \(error)")
    } catch {
        return errorResponse(.internalServerError, "\(error)")
    }
}

func errorResponse(_ status: HTTPResponse.Status, _ message: String) -> Response {
    let data = (try? StableJSON.data(ErrorBody(error: message))) ?? Data()
    return Response(
        status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(data: data)))
}

func decode<T: Decodable>(_ type: T.Type, _ request: Request, limit: Int) async throws -> T {
    var request = request
    if let length = request.headers[.contentLength].flatMap({ Int($0) }), length > limit {
        throw HTTPRefusal(.contentTooLarge, "the request body is \(length) bytes, this endpoint takes at most \(limit)")
    }
    let buffer: ByteBuffer
    do {
        buffer = try await request.collectBody(upTo: limit)
    } catch {
        throw HTTPRefusal(.contentTooLarge, "the request body is larger than \(limit) bytes, the most this endpoint takes")
    }
    return try StableJSON.decode(T.self, from: Data(buffer: buffer))
}

/// Names in URLs and file names: letters, digits and `._+:-`, 1–128 characters.
func validName(_ text: String?, what: String) throws -> String {
    guard let text, !text.isEmpty, text.count <= 128,
        text.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "._+:-~".contains($0)) }),
        !text.hasPrefix(".")
    else {
        throw CoreRefusal.badRequest("'\(text ?? "")' is not a valid \(what) (letters, digits and . _ + : - ~)")
    }
    return text
}

func constantTimeEqual(_ a: String, _ b: String) -> Bool {
    let x = Array(a.utf8)
    let y = Array(b.utf8)
    guard x.count == y.count else { return false }
    var difference: UInt8 = 0
    for i in 0..<x.count { difference |= x[i] ^ y[i] }
    return difference == 0
}
