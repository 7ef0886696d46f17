import AsyncHTTPClient
import Foundation
import Model
import NIOCore

/// Where package bytes come from. Unicast HTTP from the core (or a mirror) is the first;
/// part 2 adds segment multicast and peers beside it. Every transport is untrusted: the
/// seeder checks each chunk against the signed manifest whatever delivered it.
public protocol ChunkTransport: Sendable {
    /// Delivers the package's bytes from `offset` to its end through `sink`, in order.
    /// Returns when the source has no more to give (which may be before the end).
    func fetch(_ manifest: ReleaseManifest, from offset: Int64, into sink: (ByteBuffer) async throws -> Void)
        async throws
}

/// HTTP Range requests against the core's artifact repository.
public struct HTTPRangeTransport: ChunkTransport {
    public let link: HTTPLink

    public init(link: HTTPLink) {
        self.link = link
    }

    public func fetch(
        _ manifest: ReleaseManifest, from offset: Int64, into sink: (ByteBuffer) async throws -> Void
    ) async throws {
        var request = link.request(.GET, artifactPath(manifest.digest))
        request.headers.add(name: "Range", value: "bytes=\(offset)-")
        let response = try await link.client.execute(request, timeout: .hours(24))
        try await Self.expectBytes(response, from: offset) { TransportError.refused($0, $1) }
        for try await buffer in response.body {
            try await sink(buffer)
        }
    }
}

extension HTTPRangeTransport {
    /// Accepts 206, or 200 for a download from the start; anything else throws `refusal(status,
    /// body text)`.
    static func expectBytes(
        _ response: HTTPClientResponse, from offset: Int64, refusal: (Int, String) -> TransportError
    ) async throws {
        switch response.status.code {
        case 206:
            return
        case 200 where offset == 0:
            return
        default:
            let text = String(buffer: try await response.body.collect(upTo: 64 << 10))
            throw refusal(Int(response.status.code), text)
        }
    }
}

public enum TransportError: Error, CustomStringConvertible {
    case refused(Int, String)
    case peerRefused(String, Int, String)
    case peerEndedEarly(String, at: Int64)

    public var description: String {
        switch self {
        case .refused(let status, let text): return "the artifact source answered HTTP \(status): \(text.prefix(200))"
        case .peerRefused(let url, let status, let text): return "peer \(url) answered HTTP \(status): \(text.prefix(200))"
        case .peerEndedEarly(let url, let offset): return "peer \(url) stopped sending at byte \(offset)"
        }
    }
}

/// Peers on the agent's segment first, the core (or its mirror) when none has the package.
///
/// The core names the peers that reported a verified copy; each is tried in turn with an
/// HTTP Range request from where the download stands, without any credential. A peer that
/// fails, ends early or sends a chunk that does not verify (the seeder's sink throws) is
/// avoided for the rest of the job, and the seeder's next attempt goes to the next peer. Only
/// when no usable peer is left do the bytes come from `fallback`.
public final class PeerFirstTransport: ChunkTransport, @unchecked Sendable {
    // @unchecked: the mutable fields are guarded by `lock`; the seeder calls one fetch at a time.
    let fallback: any ChunkTransport
    let client: HTTPClient
    let lookup: @Sendable (SHA256Digest) async throws -> [PeerLocation]
    /// How soon a used-up peer list may be asked for again (new peers may have verified since).
    let refreshAfter: Duration
    private let lock = NSLock()
    private var peers: [PeerLocation] = []
    private var asked: ContinuousClock.Instant?
    private var avoided: Set<String> = []
    private var peerBytes: Int64 = 0
    private var coreBytes: Int64 = 0
    /// The source of the fetch in flight, and the verified offset it started from.
    private var fetchingFromPeer = false
    private var verifiedOffset: Int64 = 0

    public init(
        fallback: any ChunkTransport, client: HTTPClient, refreshAfter: Duration = .seconds(5),
        lookup: @escaping @Sendable (SHA256Digest) async throws -> [PeerLocation]
    ) {
        self.fallback = fallback
        self.client = client
        self.refreshAfter = refreshAfter
        self.lookup = lookup
    }

    /// Verified bytes delivered by peers and by the fallback so far (see ``verified(upTo:)``).
    public var delivered: (peers: Int64, core: Int64) { lock.withLock { (peerBytes, coreBytes) } }

    /// The seeder verified the package up to `offset`: the chunks since the last call count
    /// for the source of the fetch in flight. Bytes that failed their check count for nobody.
    public func verified(upTo offset: Int64) {
        lock.withLock {
            guard offset > verifiedOffset else { return }
            if fetchingFromPeer { peerBytes += offset - verifiedOffset } else { coreBytes += offset - verifiedOffset }
            verifiedOffset = offset
        }
    }

    private func starting(from offset: Int64, peer: Bool) {
        lock.withLock {
            fetchingFromPeer = peer
            verifiedOffset = offset
        }
    }

    /// Agent ids of the peers avoided for this job.
    public var avoidedPeers: Set<String> { lock.withLock { avoided } }

    public func fetch(
        _ manifest: ReleaseManifest, from offset: Int64, into sink: (ByteBuffer) async throws -> Void
    ) async throws {
        if let peer = await nextPeer(manifest.digest) {
            starting(from: offset, peer: true)
            do {
                try await fetch(manifest, from: offset, peer: peer, into: sink)
            } catch {
                lock.withLock { _ = avoided.insert(peer.agent) }
                throw error
            }
            return
        }
        starting(from: offset, peer: false)
        try await fallback.fetch(manifest, from: offset, into: sink)
    }

    func nextPeer(_ digest: SHA256Digest) async -> PeerLocation? {
        let (usable, stale) = lock.withLock { () -> (PeerLocation?, Bool) in
            let usable = peers.first { !avoided.contains($0.agent) }
            let stale = asked.map { ContinuousClock.now - $0 >= refreshAfter } ?? true
            return (usable, stale)
        }
        if let usable { return usable }
        guard stale else { return nil }
        // A core that cannot answer means no peers: the fallback is tried (and fails the same way).
        let fresh = (try? await lookup(digest)) ?? []
        return lock.withLock {
            asked = .now
            peers = fresh
            return peers.first { !avoided.contains($0.agent) }
        }
    }

    func fetch(
        _ manifest: ReleaseManifest, from offset: Int64, peer: PeerLocation,
        into sink: (ByteBuffer) async throws -> Void
    ) async throws {
        // Never a credential to a peer: a bare request, not an HTTPLink.
        var request = HTTPClientRequest(url: peer.url + peerPath(manifest.digest))
        request.headers.add(name: "Range", value: "bytes=\(offset)-")
        let response = try await client.execute(request, timeout: .hours(24))
        try await HTTPRangeTransport.expectBytes(response, from: offset) {
            TransportError.peerRefused(peer.url, $0, $1)
        }
        var received: Int64 = 0
        for try await buffer in response.body {
            try await sink(buffer)
            received += Int64(buffer.readableBytes)
        }
        if offset + received < manifest.size {
            throw TransportError.peerEndedEarly(peer.url, at: offset + received)
        }
    }
}
