import AsyncHTTPClient
import Foundation
import HostIO
import Model
import NIOCore

/// The admin side of the core's API, as the CLI (and tests) use it.
public struct CoreClient: Sendable {
    public let link: HTTPLink

    /// `adminToken` is an operator's `NAME:TOKEN`, or the core's original admin token alone.
    public init(url: String, adminToken: String, client: HTTPClient) {
        let credential = adminToken.contains(":") ? adminToken : "admin:\(adminToken)"
        self.link = HTTPLink(baseURL: url, credential: credential, client: client)
    }

    public func addOperator(_ name: String, role: OperatorRole) async throws -> OperatorReply {
        try await link.post("/v1/admin/operators", OperatorRequest(name: name, role: role), as: OperatorReply.self)
    }

    public func operators() async throws -> [OperatorSummary] {
        try await link.get("/v1/admin/operators", as: [OperatorSummary].self)
    }

    public func removeOperator(_ name: String) async throws {
        _ = try await link.send(
            .DELETE, "/v1/admin/operators/\(name)", body: Optional<Empty>.none, as: [String: String].self)
    }

    public func auditTrail() async throws -> [AuditEntry] {
        try await link.get("/v1/admin/audit", as: [AuditEntry].self)
    }

    /// Uploads a .deb as release `name`; the core hashes, chunks and signs it.
    public func publish(file: String, release name: String, chunkSize: Int? = nil) async throws -> ReleaseManifest {
        guard let size = (try? FileManager.default.attributesOfItem(atPath: file))?[.size] as? NSNumber else {
            throw ChangelabError("cannot read \(file)", fix: "pass the path of a .deb file")
        }
        var request = link.request(.PUT, "/v1/admin/releases/\(name)" + (chunkSize.map { "?chunk-size=\($0)" } ?? ""))
        request.headers.add(name: "Content-Type", value: "application/vnd.debian.binary-package")
        request.body = .stream(FileChunks(path: file), length: .known(size.int64Value))
        let response = try await link.client.execute(request, timeout: .minutes(30))
        return try await link.decode(response, path: "/v1/admin/releases/\(name)", as: ReleaseManifest.self)
    }

    public func createToken(uses: Int, lifetime: Double) async throws -> TokenReply {
        try await link.post("/v1/admin/tokens", TokenRequest(uses: uses, lifetime: lifetime), as: TokenReply.self)
    }

    /// Replaces the core's release key; returns the new and the previous public key (hex).
    public func rotateReleaseKey() async throws -> [String: String] {
        try await link.post("/v1/admin/release-key/rotate", Empty(), as: [String: String].self)
    }

    public func agents() async throws -> [AgentSummary] {
        try await link.get("/v1/admin/agents", as: [AgentSummary].self)
    }

    public func revoke(agent: String) async throws {
        _ = try await link.post("/v1/admin/agents/\(agent)/revoke", Empty(), as: [String: String].self)
    }

    /// The published releases' manifests.
    public func releases() async throws -> [ReleaseManifest] {
        try await link.get("/v1/admin/releases", as: [ReleaseManifest].self)
    }

    public func promote(_ change: String, _ request: PromoteRequest) async throws -> StatusReport {
        try await link.post("/v1/admin/changes/\(change)/promote", request, as: StatusReport.self)
    }

    public func activate(_ change: String, authorization: ChangeAuthorization? = nil) async throws -> StatusReport {
        try await link.post(
            "/v1/admin/changes/\(change)/activate", ActivateRequest(authorization: authorization), as: StatusReport.self)
    }

    public func rollback(_ change: String, authorization: ChangeAuthorization? = nil) async throws -> StatusReport {
        try await link.post(
            "/v1/admin/changes/\(change)/rollback", ActivateRequest(authorization: authorization), as: StatusReport.self)
    }

    public func status(_ change: String) async throws -> StatusReport {
        try await link.get("/v1/admin/changes/\(change)/status", as: StatusReport.self)
    }

    public func changes() async throws -> [StatusReport] {
        try await link.get("/v1/admin/changes", as: [StatusReport].self)
    }

    /// The operators' console: changes with their blockers, evidence, approvals, segments, chase lists; agents.
    public func console() async throws -> ConsoleReport {
        try await link.get("/v1/admin/console", as: ConsoleReport.self)
    }

    public func chase(_ change: String) async throws -> [ChaseEntry] {
        try await link.get("/v1/admin/changes/\(change)/chase", as: [ChaseEntry].self)
    }

    public func setPolicy(
        _ name: String, targets: String, release: String, authorization: ChangeAuthorization? = nil
    ) async throws -> Policy {
        try await link.send(
            .PUT, "/v1/admin/policies/\(name)",
            body: PolicyRequest(targets: targets, release: release, authorization: authorization), as: Policy.self)
    }

    public func policies() async throws -> [Policy] {
        try await link.get("/v1/admin/policies", as: [Policy].self)
    }

    public func removePolicy(_ name: String) async throws {
        _ = try await link.send(
            .DELETE, "/v1/admin/policies/\(name)", body: Optional<Empty>.none, as: [String: String].self)
    }

    /// Calls `onReport` with the change's status each time it changes, until cancelled.
    public func watch(_ change: String, onReport: @Sendable (StatusReport) async throws -> Void) async throws {
        try await link.events("/v1/admin/events?change=\(change)") { name, data in
            guard name == "status" else { return }
            try await onReport(try StableJSON.decode(StatusReport.self, from: Data(data.utf8)))
        }
    }
}

/// A file read in 1 MiB pieces, each on a thread of its own, as a request body.
///
/// Pull-based: a piece is read only when the consumer asks for it, so nothing runs (or
/// spins) once the consumer is gone, and the file is closed when the iterator goes.
struct FileChunks: AsyncSequence, Sendable {
    typealias Element = ByteBuffer
    let path: String
    var pieceSize = 1 << 20

    final class Reader: @unchecked Sendable {
        // @unchecked: used by one iterator, one read at a time.
        let handle: FileHandle?
        init(path: String) { handle = FileHandle(forReadingAtPath: path) }
        deinit { try? handle?.close() }
    }

    struct AsyncIterator: AsyncIteratorProtocol {
        let reader: Reader
        let pieceSize: Int

        mutating func next() async throws -> ByteBuffer? {
            guard let handle = reader.handle else { return nil }
            let size = pieceSize
            let data = try await BlockingWork.run { try handle.read(upToCount: size) }
            guard let data, !data.isEmpty else { return nil }
            return ByteBuffer(data: data)
        }
    }

    func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(reader: Reader(path: path), pieceSize: pieceSize)
    }
}

/// Byte counts and rates as people write them: `20M`, `512K`, `1.5G` (powers of 1024), `1000`.
public enum ByteCount {
    public static func parse(_ text: String) -> Int64? {
        var body = text.trimmingCharacters(in: .whitespaces).uppercased()
        for suffix in ["/S", "IB", "B"] where body.hasSuffix(suffix) && body.count > suffix.count {
            body = String(body.dropLast(suffix.count))
        }
        let factors: [Character: Double] = ["K": 1024, "M": 1024 * 1024, "G": 1024 * 1024 * 1024]
        var factor = 1.0
        if let last = body.last, let f = factors[last] {
            factor = f
            body = String(body.dropLast())
        }
        guard let value = Double(body), value >= 0, value.isFinite else { return nil }
        // 2^62 bytes is far beyond any real size or rate, and keeps the conversion from trapping.
        let bytes = (value * factor).rounded()
        guard bytes < 4.6e18 else { return nil }
        return Int64(exactly: bytes)
    }
}
