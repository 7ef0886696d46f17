import AsyncHTTPClient
import Foundation
import Model
import NIOCore
import NIOHTTP1
import NIOSSL

/// JSON over HTTP to the core, with the caller's credential; used by agents and the CLI.
public struct HTTPLink: Sendable {
    public let baseURL: String
    /// `AGENT:SECRET` for agents, `admin:TOKEN` for the CLI.
    public var credential: String?
    public let client: HTTPClient

    /// A credential is only ever sent over HTTPS: given a plain-HTTP base URL (a peer or a
    /// mirror), the link sends none.
    public init(baseURL: String, credential: String?, client: HTTPClient) {
        self.baseURL = baseURL.hasSuffix("/") ? String(baseURL.dropLast()) : baseURL
        self.credential = baseURL.lowercased().hasPrefix("https://") ? credential : nil
        self.client = client
    }

    /// An HTTP client sized for many long-lived streams and parallel downloads to one host,
    /// that talks to the core at `core` only once it proved to be the core `trust` names.
    ///
    /// With a pin, one connection to the core checks the key it presents with swift-nio-ssl's
    /// custom verification callback (exactly the pinned key, nothing else); the client then
    /// trusts that certificate alone, with full verification including the host name. There
    /// is no way to turn verification off.
    public static func makeClient(trust: CoreTrust, core: String) async throws -> HTTPClient {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.minimumTLSVersion = .tlsv12
        switch trust {
        case .system:
            break
        case .caBundle(let path):
            let certificates: [NIOSSLCertificate]
            do {
                certificates = try NIOSSLCertificate.fromPEMFile(path)
            } catch {
                throw ChangelabError(
                    "cannot read the CA bundle \(path)", why: "\(error)", fix: "pass a PEM file of CA certificates")
            }
            guard !certificates.isEmpty else {
                throw ChangelabError("the CA bundle \(path) holds no certificate", fix: "pass a PEM file of CA certificates")
            }
            tls.trustRoots = .certificates(certificates)
        case .pin(let pin):
            tls.trustRoots = .certificates([try await PinnedCertificate.fetch(url: core, pin: pin)])
        }
        return makeClient(tls: tls)
    }

    /// A client trusting what `tls` says (the system's roots by default).
    public static func makeClient(tls: TLSConfiguration = .makeClientConfiguration()) -> HTTPClient {
        var configuration = HTTPClient.Configuration()
        configuration.tlsConfiguration = tls
        configuration.connectionPool = .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: 512)
        configuration.timeout = .init(connect: .seconds(5), read: .seconds(45))
        return HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }

    public func request(_ method: HTTPMethod, _ path: String) -> HTTPClientRequest {
        var request = HTTPClientRequest(url: baseURL + path)
        request.method = method
        if let credential { request.headers.add(name: "Authorization", value: "Bearer \(credential)") }
        return request
    }

    public func send<Reply: Decodable>(
        _ method: HTTPMethod, _ path: String, body: (some Encodable)?, as type: Reply.Type,
        timeout: TimeAmount = .seconds(60)
    ) async throws -> Reply {
        var request = request(method, path)
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(data: try StableJSON.data(body)))
        }
        return try await decode(try await client.execute(request, timeout: timeout), path: path, as: type)
    }

    public func get<Reply: Decodable>(_ path: String, as type: Reply.Type) async throws -> Reply {
        try await send(.GET, path, body: Optional<Empty>.none, as: type)
    }

    public func post<Reply: Decodable>(_ path: String, _ body: some Encodable, as type: Reply.Type) async throws
        -> Reply
    {
        try await send(.POST, path, body: body, as: type)
    }

    public func decode<Reply: Decodable>(_ response: HTTPClientResponse, path: String, as type: Reply.Type)
        async throws -> Reply
    {
        let buffer = try await response.body.collect(upTo: 256 << 20)
        let data = Data(buffer: buffer)
        guard response.status == .ok else {
            let message =
                (try? StableJSON.decode(ErrorBody.self, from: data))?.error
                ?? String(decoding: data.prefix(300), as: UTF8.self)
            throw LinkError.refused(status: Int(response.status.code), message: message, url: baseURL + path)
        }
        do {
            return try StableJSON.decode(type, from: data)
        } catch {
            throw LinkError.garbled(url: baseURL + path, why: "\(error)")
        }
    }

    /// Reads a server-sent event stream, calling `onEvent(name, data)` for each event, until it
    /// ends; returns how many events came.
    @discardableResult
    public func events(_ path: String, onEvent: @Sendable (String, String) async throws -> Void) async throws -> Int {
        var request = request(.GET, path)
        request.headers.add(name: "Accept", value: "text/event-stream")
        let response = try await client.execute(request, timeout: .hours(24 * 365))
        guard response.status == .ok else {
            _ = try await decode(response, path: path, as: Empty.self)
            return 0
        }
        var count = 0
        var pending = Data()
        var name = "message"
        var data: [String] = []
        for try await buffer in response.body {
            pending.append(contentsOf: buffer.readableBytesView)
            while let newline = pending.firstIndex(of: 0x0A) {
                let line = String(decoding: pending[pending.startIndex..<newline], as: UTF8.self)
                pending = Data(pending[(newline + 1)...])
                if line.isEmpty {
                    if !data.isEmpty {
                        count += 1
                        try await onEvent(name, data.joined(separator: "\n"))
                    }
                    name = "message"
                    data = []
                } else if line.hasPrefix("event:") {
                    name = line.dropFirst(6).trimmingCharacters(in: .whitespaces)
                } else if line.hasPrefix("data:") {
                    data.append(String(line.dropFirst(5)).trimmingCharacters(in: .whitespaces))
                }
            }
        }
        return count
    }
}

public struct Empty: Codable, Sendable {
    public init() {}
}

/// A failed exchange with the core, worded for the person at the terminal.
public enum LinkError: Error, CustomStringConvertible, Sendable {
    case refused(status: Int, message: String, url: String)
    case garbled(url: String, why: String)

    public var status: Int? {
        if case .refused(let status, _, _) = self { return status }
        return nil
    }

    public var description: String {
        switch self {
        case .refused(let status, let message, let url): return "the core refused \(url) (HTTP \(status)): \(message)"
        case .garbled(let url, let why): return "the core's answer to \(url) is not understood: \(why)"
        }
    }
}
