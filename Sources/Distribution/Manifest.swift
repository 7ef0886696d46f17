import Crypto
import Foundation
import Model

/// What a release is, chunk by chunk: the list agents check every downloaded byte against.
///
/// The core signs it with its release key, so an agent trusts a chunk only when it hashes
/// to the entry the core signed, whoever sent it (the core, a mirror or, in part 2, a peer
/// or a multicast sender).
public struct ReleaseManifest: Codable, Sendable, Equatable {
    /// Stored and signed format version; unknown versions are refused.
    public static let formatVersion = 1

    public var version: Int
    public var release: String
    /// The Debian package inside (`Package:` and `Version:` of its control file).
    public var package: String
    public var packageVersion: String
    public var size: Int64
    public var digest: SHA256Digest
    public var chunkSize: Int
    /// SHA-256 of each chunk, lowercase hex, in order; the last chunk may be short.
    public var chunks: [String]
    public var publishedAt: Date

    public init(
        release: String, package: String, packageVersion: String, size: Int64, digest: SHA256Digest,
        chunkSize: Int, chunks: [String], publishedAt: Date
    ) {
        self.version = Self.formatVersion
        self.release = release
        self.package = package
        self.packageVersion = packageVersion
        self.size = size
        self.digest = digest
        self.chunkSize = chunkSize
        self.chunks = chunks
        self.publishedAt = publishedAt
    }

    /// The byte range of chunk `index` within the package.
    public func range(ofChunk index: Int) -> Range<Int64> {
        let start = min(size, Int64(max(0, index)) * Int64(chunkSize))
        return start..<min(size, start + Int64(chunkSize))
    }

    public var chunkCount: Int { chunks.count }

    /// Whether `data` is exactly chunk `index`: its length and its signed hash.
    public func chunkMatches(_ data: Data, index: Int) -> Bool {
        guard chunks.indices.contains(index) else { return false }
        return Int64(data.count) == range(ofChunk: index).count && SHA256.hash(data: data).hexString == chunks[index]
    }

    /// Reads chunk `index` of the package from `handle` (which holds the package from offset 0).
    func readChunk(_ index: Int, from handle: FileHandle) throws -> Data {
        let range = range(ofChunk: index)
        try handle.seek(toOffset: UInt64(range.lowerBound))
        return try handle.read(upToCount: Int(range.count)) ?? Data()
    }

    /// The chunks of the file at `path` that do not match this manifest (all of them past
    /// its end when it is short); empty when every byte is the signed package.
    public func failingChunks(in path: String) throws -> [Int] {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw ChangelabError("cannot read \(path)", fix: "check the path and its permissions")
        }
        defer { try? handle.close() }
        return try (0..<chunkCount).filter { !chunkMatches(try readChunk($0, from: handle), index: $0) }
    }

    /// Checks the manifest is internally consistent (chunk count matches the size).
    public func validate() throws {
        guard version == Self.formatVersion else {
            throw ChangelabError(
                "release manifest format \(version) is not supported", fix: "upgrade changelab on this agent")
        }
        let expected = size == 0 ? 0 : Int((size + Int64(chunkSize) - 1) / Int64(chunkSize))
        guard chunkSize > 0, chunks.count == expected, chunks.allSatisfy({ $0.count == 64 }) else {
            throw ChangelabError(
                "release manifest for \(release) is inconsistent",
                why: "\(chunks.count) chunk hashes for \(size) bytes in chunks of \(chunkSize)")
        }
    }

    /// Hashes `path` chunk by chunk into a manifest.
    public static func build(
        file path: String, release: String, package: String, packageVersion: String, chunkSize: Int,
        publishedAt: Date = Date()
    ) throws -> ReleaseManifest {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw ChangelabError("cannot read \(path)", fix: "check the path and its permissions")
        }
        defer { try? handle.close() }
        var whole = SHA256()
        var chunks: [String] = []
        var size: Int64 = 0
        while true {
            let data = try handle.read(upToCount: chunkSize) ?? Data()
            if data.isEmpty { break }
            whole.update(data: data)
            chunks.append(SHA256.hash(data: data).hexString)
            size += Int64(data.count)
        }
        let digest = SHA256Digest(hex: whole.finalize().hexString) ?? SHA256Digest(of: Data())
        return ReleaseManifest(
            release: release, package: package, packageVersion: packageVersion, size: size, digest: digest,
            chunkSize: chunkSize, chunks: chunks, publishedAt: publishedAt)
    }
}

/// The signed order of changelab before per-agent jobs (format 1): read only to migrate an
/// old core state, never accepted by an agent.
struct LegacyActivationOrder: Codable, Sendable, Equatable {
    var id: String
    var issuedAt: Date
}
