import Crypto
import Foundation
import HostIO
import Model
import NIOCore

/// How a seeding attempt ended when it did not end verified.
public struct SeedingFailure: Error, CustomStringConvertible, Sendable {
    public var failure: Failure
    public var description: String { "\(failure.summary): \(failure.detail)" }
}

/// Fills one cache entry from a transport, chunk by verified chunk, throttled, resuming
/// from the last verified chunk after any interruption.
public struct Seeder: Sendable {
    public var cache: AgentCache
    public var transport: any ChunkTransport
    public var bucket: TokenBucket
    /// Network failures in a row before the attempt is reported failed.
    public var maxNetworkFailures = 6
    /// Chunks that fail their hash in one attempt before it is reported as a hash mismatch.
    public var maxHashMismatches = 4
    /// Back-off between network retries within one attempt.
    public var retryDelay: Duration = .milliseconds(500)

    public init(cache: AgentCache, transport: any ChunkTransport, bucket: TokenBucket) {
        self.cache = cache
        self.transport = transport
        self.bucket = bucket
    }

    /// Seeds `entry`'s package; `progress` gets the verified byte count after each chunk.
    public func seed(_ entry: CacheEntry, progress: @escaping @Sendable (Int64) async -> Void)
        async throws(SeedingFailure)
    {
        let manifest = entry.manifest
        let path = cache.packagePath(entry.change)
        var verified: Int
        do {
            verified = try cache.verifiedPrefix(entry)
        } catch {
            throw classify(error, while: "checking the cached part")
        }
        var networkFailures = 0
        var mismatches = 0
        while verified < manifest.chunkCount {
            if Task.isCancelled { throw SeedingFailure(failure: Failure(reason: .downloadFailed, detail: "cancelled")) }
            let writer: ChunkWriter
            do {
                writer = try ChunkWriter(path: path, manifest: manifest, firstChunk: verified)
            } catch {
                throw classify(error, while: "opening the cache file")
            }
            defer { writer.close() }
            do {
                try await transport.fetch(manifest, from: writer.offset) { buffer in
                    try await bucket.take(buffer.readableBytes)
                    if try writer.append(buffer) {
                        networkFailures = 0
                        await progress(writer.offset)
                    }
                }
                verified = writer.chunk
                if verified < manifest.chunkCount {
                    throw SeedStepError.truncated(at: writer.offset)
                }
            } catch let error as SeedStepError {
                verified = writer.chunk
                if case .mismatch(let index) = error {
                    mismatches += 1
                    if mismatches >= maxHashMismatches {
                        throw SeedingFailure(
                            failure: Failure(
                                reason: .hashMismatch,
                                detail:
                                    "chunk \(index) failed its SHA-256 check \(mismatches) times; the source sends damaged data"
                            ))
                    }
                } else {
                    networkFailures += 1
                    if networkFailures >= maxNetworkFailures {
                        throw SeedingFailure(failure: Failure(reason: .downloadFailed, detail: "\(error)"))
                    }
                    try? await Task.sleep(for: retryDelay * networkFailures)
                }
            } catch {
                verified = writer.chunk
                if let failure = diskFull(error) { throw failure }
                if error is CancellationError || Task.isCancelled {
                    throw SeedingFailure(failure: Failure(reason: .downloadFailed, detail: "cancelled"))
                }
                networkFailures += 1
                if networkFailures >= maxNetworkFailures {
                    throw SeedingFailure(failure: Failure(reason: .downloadFailed, detail: "\(error)"))
                }
                try? await Task.sleep(for: retryDelay * networkFailures)
            }
        }
    }

    func classify(_ error: Error, while doing: String) -> SeedingFailure {
        diskFull(error) ?? SeedingFailure(failure: Failure(reason: .downloadFailed, detail: "\(doing): \(error)"))
    }

    func diskFull(_ error: Error) -> SeedingFailure? {
        let text = "\(error)"
        if let io = error as? IOFailure, io.code == ENOSPC || io.code == EDQUOT {
            return SeedingFailure(failure: Failure(reason: .diskFull, detail: text))
        }
        if text.contains("No space left on device") || text.contains("ENOSPC") {
            return SeedingFailure(failure: Failure(reason: .diskFull, detail: text))
        }
        return nil
    }
}

enum SeedStepError: Error, CustomStringConvertible {
    case mismatch(chunk: Int)
    case truncated(at: Int64)
    case overrun

    var description: String {
        switch self {
        case .mismatch(let chunk): return "chunk \(chunk) does not match the signed manifest"
        case .truncated(let offset): return "the download ended early at byte \(offset)"
        case .overrun: return "the source sent more bytes than the package has"
        }
    }
}

/// Collects bytes into the chunk in flight and writes each chunk only once it verifies.
final class ChunkWriter: @unchecked Sendable {
    // @unchecked: used by one seeding task at a time.
    let fd: Int32
    let manifest: ReleaseManifest
    private(set) var chunk: Int
    private var pending = [UInt8]()

    init(path: String, manifest: ReleaseManifest, firstChunk: Int) throws {
        fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw IOFailure.last("open \(path)") }
        self.manifest = manifest
        self.chunk = firstChunk
        pending.reserveCapacity(manifest.chunkSize)
    }

    var offset: Int64 { manifest.range(ofChunk: min(chunk, manifest.chunkCount)).lowerBound }

    /// Adds bytes; returns true when at least one chunk was completed and written.
    func append(_ buffer: ByteBuffer) throws -> Bool {
        var completed = false
        var view = buffer.readableBytesView[...]
        while !view.isEmpty {
            guard chunk < manifest.chunkCount else { throw SeedStepError.overrun }
            let length = Int(manifest.range(ofChunk: chunk).count)
            let take = min(length - pending.count, view.count)
            pending.append(contentsOf: view.prefix(take))
            view = view.dropFirst(take)
            if pending.count == length {
                guard SHA256.hash(data: pending).hexString == manifest.chunks[chunk] else {
                    pending.removeAll(keepingCapacity: true)
                    throw SeedStepError.mismatch(chunk: chunk)
                }
                let start = manifest.range(ofChunk: chunk).lowerBound
                try pending.withUnsafeBytes { raw in
                    var done = 0
                    while done < raw.count {
                        let n = pwrite(
                            fd, raw.baseAddress.map { $0 + done }, raw.count - done, off_t(start) + off_t(done))
                        if n < 0 {
                            if errno == EINTR { continue }
                            throw IOFailure.last("write the cache file")
                        }
                        done += n
                    }
                }
                pending.removeAll(keepingCapacity: true)
                chunk += 1
                completed = true
            }
        }
        return completed
    }

    func close() {
        fsync(fd)
        Glibc.close(fd)
    }
}
