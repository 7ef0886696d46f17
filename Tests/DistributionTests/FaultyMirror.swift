import AsyncHTTPClient
import Distribution
import Foundation
import Hummingbird
import NIOCore

/// A hostile mirror between agents and the core's artifact repository: it forwards each
/// request's Range with its own credential (a mirror never gets the agent's) and damages the
/// responses as scripted. It records any credential an agent sent it.
final class FaultyMirror: @unchecked Sendable {
    enum Fault: Sendable {
        /// Flip the byte at this offset of the package.
        case corrupt(at: Int64)
        /// End the response after this many bytes.
        case truncate(after: Int64)
    }

    private let lock = NSLock()
    private var faults: [Fault]
    private var ranges: [String] = []
    private var credentials: [String] = []
    private var task: Task<Void, Error>?
    private(set) var port = 0

    var url: String { "http://127.0.0.1:\(port)" }

    var requestedRanges: [String] {
        lock.lock()
        defer { lock.unlock() }
        return ranges
    }

    private init(faults: [Fault]) {
        self.faults = faults
    }

    /// Authorization headers agents sent the mirror: it must stay empty.
    var credentialsSeen: [String] {
        lock.lock()
        defer { lock.unlock() }
        return credentials
    }

    private func next(range: String, credential: String?) -> Fault? {
        lock.lock()
        defer { lock.unlock() }
        ranges.append(range)
        if let credential { credentials.append(credential) }
        return faults.isEmpty ? nil : faults.removeFirst()
    }

    static func start(upstream: String, http: HTTPClient, credential: String? = nil, faults: [Fault]) async throws
        -> FaultyMirror
    {
        let mirror = FaultyMirror(faults: faults)
        let router = Router()
        router.get("/v1/artifacts/sha256/:hex") { request, context -> Response in
            var forward = HTTPClientRequest(url: upstream + request.uri.path)
            let range = request.headers[.range] ?? ""
            if !range.isEmpty { forward.headers.add(name: "Range", value: range) }
            if let credential { forward.headers.add(name: "Authorization", value: "Bearer \(credential)") }
            let upstreamResponse = try await http.execute(forward, timeout: .seconds(30))
            let fault = mirror.next(range: range, credential: request.headers[.authorization])
            let start = Int64(range.dropFirst(6).split(separator: "-").first ?? "0") ?? 0
            let body = ResponseBody { writer in
                var offset = start
                for try await var buffer in upstreamResponse.body {
                    switch fault {
                    case .corrupt(let at) where at >= offset && at < offset + Int64(buffer.readableBytes):
                        let index = buffer.readerIndex + Int(at - offset)
                        if let byte = buffer.getInteger(at: index, as: UInt8.self) {
                            buffer.setInteger(byte ^ 0xFF, at: index)
                        }
                    case .truncate(let after) where offset - start + Int64(buffer.readableBytes) > after:
                        let keep = Int(after - (offset - start))
                        if keep > 0, let slice = buffer.getSlice(at: buffer.readerIndex, length: keep) {
                            try await writer.write(slice)
                        }
                        try await writer.finish(nil)
                        return
                    default:
                        break
                    }
                    offset += Int64(buffer.readableBytes)
                    try await writer.write(buffer)
                }
                try await writer.finish(nil)
            }
            var headers = HTTPFields()
            if let contentRange = upstreamResponse.headers.first(name: "Content-Range") {
                headers[.contentRange] = contentRange
            }
            return Response(status: .init(code: Int(upstreamResponse.status.code)), headers: headers, body: body)
        }
        let ready = AsyncStream<Int>.makeStream()
        let app = Application(
            router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)),
            onServerRunning: { ready.continuation.yield($0.localAddress?.port ?? 0) })
        mirror.task = Task { try await app.run() }
        for await port in ready.stream {
            mirror.port = port
            break
        }
        return mirror
    }

    func stop() { task?.cancel() }
}
