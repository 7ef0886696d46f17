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
        switch response.status.code {
        case 206:
            break
        case 200 where offset == 0:
            break
        default:
            let text = String(buffer: try await response.body.collect(upTo: 64 << 10))
            throw TransportError.refused(Int(response.status.code), text)
        }
        for try await buffer in response.body {
            try await sink(buffer)
        }
    }
}

public enum TransportError: Error, CustomStringConvertible {
    case refused(Int, String)

    public var description: String {
        switch self {
        case .refused(let status, let text): return "the artifact source answered HTTP \(status): \(text.prefix(200))"
        }
    }
}
