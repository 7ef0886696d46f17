import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdCore
import Logging
import Model
import NIOCore
import ServiceLifecycle

/// A file served whole or from the request's `Range` (`bytes=N-` or `bytes=N-M`), with the
/// headers that say which part: the core's artifact route and the agents' peer route.
struct RangedFile {
    var status: HTTPResponse.Status
    var headers: HTTPFields
    var body: ResponseBody

    /// nil when there is no file at `path`.
    static func load(_ path: String, request: Request, context: some RequestContext) async throws -> RangedFile? {
        guard let attributes = try? FileManager.default.attributesOfItem(atPath: path),
            let size = (attributes[.size] as? NSNumber)?.intValue
        else { return nil }
        var range = 0...max(0, size - 1)
        var status = HTTPResponse.Status.ok
        var headers: HTTPFields = [.contentType: "application/vnd.debian.binary-package", .acceptRanges: "bytes"]
        if let header = request.headers[.range] {
            guard let requested = CoreServer.parseRange(header, size: size) else {
                headers[.contentRange] = "bytes */\(size)"
                return RangedFile(status: .rangeNotSatisfiable, headers: headers, body: ResponseBody())
            }
            range = requested
            status = .partialContent
            headers[.contentRange] = "bytes \(range.lowerBound)-\(range.upperBound)/\(size)"
        }
        headers[.contentLength] = String(size == 0 ? 0 : range.count)
        guard size > 0 else { return RangedFile(status: status, headers: headers, body: ResponseBody()) }
        let body = try await FileIO().loadFile(path: path, range: range, context: context)
        return RangedFile(status: status, headers: headers, body: body)
    }

    var response: Response { Response(status: status, headers: headers, body: body) }
}

/// How an agent serves its verified packages to peers on its segment.
public struct PeerServing: Sendable {
    /// The TCP port of the plain-HTTP peer server (all addresses of the agent's namespace).
    public var port: Int
    public var host = "0.0.0.0"
    /// Downloads served at once; one more gets 503.
    public var maxDownloads = 4
    /// Bytes per second for all peer downloads together (nil: unthrottled).
    public var rate: Int64?

    public init(port: Int, maxDownloads: Int = 4, rate: Int64? = nil) {
        self.port = port
        self.maxDownloads = maxDownloads
        self.rate = rate
    }
}

/// Counters and the open/closed switch of one peer server, shared by its requests.
final class PeerServerState: @unchecked Sendable {
    // @unchecked: every field is guarded by `lock`.
    private let lock = NSLock()
    private var active = 0
    private var served: Int64 = 0
    private var closed: String?

    /// Takes a download slot; nil when one is free, else why not.
    func admit(cap: Int) -> String? {
        lock.withLock {
            if let closed { return closed }
            guard active < cap else {
                return "this peer serves at most \(cap) downloads at once and is busy; try another peer or the core"
            }
            active += 1
            return nil
        }
    }

    func release() { lock.withLock { active -= 1 } }

    /// A taken slot that gives itself back exactly once: when the answer's body has been
    /// written, or when the answer is dropped without its body ever running (the client hung
    /// up before the head was written), whichever comes first.
    final class Slot: @unchecked Sendable {
        // @unchecked: `released` is guarded by `lock`.
        private let lock = NSLock()
        private var released = false
        private let state: PeerServerState
        init(_ state: PeerServerState) { self.state = state }
        func release() {
            let first = lock.withLock {
                defer { released = true }
                return !released
            }
            if first { state.release() }
        }
        deinit { release() }
    }
    func add(_ bytes: Int) { lock.withLock { served += Int64(bytes) } }
    var servedBytes: Int64 { lock.withLock { served } }
    var closedReason: String? { lock.withLock { closed } }
    func close(_ reason: String) { lock.withLock { closed = reason } }
}

/// An agent's peer server: plain HTTP, `GET /v1/peer/sha256/HEX` only.
///
/// It serves a package only once its whole digest verified and its file is unchanged since
/// (the cache entry's stamp); the file is found from the digest among the cache's entries,
/// never from a path in the request. No credential is asked for or accepted: what it serves
/// is public and every byte is checked by the receiver against the signed manifest. Plain
/// HTTP because peers are untrusted anyway and TLS would need a key per endpoint.
public struct PeerServer: Sendable {
    public let cache: AgentCache
    public let serving: PeerServing
    let bucket: TokenBucket
    let state = PeerServerState()

    public init(cache: AgentCache, serving: PeerServing) {
        self.cache = cache
        self.serving = serving
        self.bucket = TokenBucket(rate: serving.rate)
    }

    /// Bytes sent to peers since start.
    public var servedBytes: Int64 { state.servedBytes }

    /// Stops serving (the agent left its segment): every request gets 503 with `reason`.
    public func close(_ reason: String) { state.close(reason) }
    public var isClosed: Bool { state.closedReason != nil }

    /// Runs until cancelled; `onReady` gets the bound port.
    public func run(logger: Logger, onReady: @escaping @Sendable (Int) async -> Void = { _ in }) async throws {
        let router = Router()
        router.get("/v1/peer/sha256/:hex") { request, context in
            try await self.serve(hex: context.parameters.get("hex") ?? "", request: request, context: context)
        }
        let app = Application(
            router: router,
            server: .http1(configuration: .init(idleTimeout: .seconds(30))),
            configuration: .init(
                address: .hostname(serving.host, port: serving.port), serverName: "changelab-peer",
                availableConnectionsDelegate: .maximum(max(8, serving.maxDownloads * 4), logger: logger)),
            onServerRunning: { channel in await onReady(channel.localAddress?.port ?? serving.port) },
            logger: logger)
        try await app.runService(gracefulShutdownSignals: [])
    }

    func serve(hex: String, request: Request, context: some RequestContext) async throws -> Response {
        // Strict: 64 lowercase ASCII hex digits, nothing else (no `../`, no `sha256:`).
        guard hex.utf8.count == 64, hex.utf8.allSatisfy({ (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }),
            let digest = SHA256Digest(hex: hex)
        else {
            return errorResponse(
                .badRequest, "'\(AgentFacts.printable(hex))' is not a SHA-256 digest (64 lowercase hex digits)")
        }
        if let closed = state.closedReason { return errorResponse(.serviceUnavailable, closed) }
        guard let entry = servable(digest) else {
            return errorResponse(.notFound, "this peer holds no verified copy of \(digest.short)")
        }
        if let refusal = state.admit(cap: serving.maxDownloads) { return errorResponse(.serviceUnavailable, refusal) }
        let slot = PeerServerState.Slot(state)
        guard
            let file = try await RangedFile.load(cache.packagePath(entry.change), request: request, context: context)
        else {
            slot.release()
            return errorResponse(.notFound, "this peer holds no verified copy of \(digest.short)")
        }
        let (bucket, state) = (self.bucket, self.state)
        let counted = file.body.map { buffer in
            try await bucket.take(buffer.readableBytes)
            state.add(buffer.readableBytes)
            return buffer
        }
        let body = ResponseBody(contentLength: file.body.contentLength) { writer in
            defer { slot.release() }
            try await counted.write(writer)
        }
        return Response(status: file.status, headers: file.headers, body: body)
    }

    /// The cache entry whose file holds `digest`'s verified bytes now, if any.
    func servable(_ digest: SHA256Digest) -> CacheEntry? {
        cache.entries().first { entry in
            entry.manifest.digest == digest && entry.phase >= .verified && entry.phase != .failed
                && entry.verifiedStamp != nil && entry.verifiedStamp == FileStamp(path: cache.packagePath(entry.change))
        }
    }
}
