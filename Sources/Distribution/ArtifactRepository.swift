import Foundation
import HostIO
import Model

/// The core's content-addressed artifact store: `blobs/sha256/<hex>`, each written once.
///
/// A seam: `changelab package build` (the lead's) stores packages content-addressed with a
/// manifest of its own; publishing from that store only needs `add(file:)`.
public struct ArtifactRepository: Sendable {
    public let directory: String

    public init(directory: String) {
        self.directory = directory
    }

    public func path(of digest: SHA256Digest) -> String { "\(directory)/sha256/\(digest.hex)" }

    public func contains(_ digest: SHA256Digest) -> Bool {
        FileManager.default.fileExists(atPath: path(of: digest))
    }

    /// Copies `file` in under its digest (which `manifest` already computed) unless it is there.
    /// The copy is written to a temporary name, fsynced, then renamed: a blob is whole or absent.
    public func add(file: String, digest: SHA256Digest) throws {
        let target = path(of: digest)
        if FileManager.default.fileExists(atPath: target) { return }
        let dir = (target as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let temp = "\(dir)/.incoming-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: temp) }
        try FileManager.default.copyItem(atPath: file, toPath: temp)
        let fd = open(temp, O_RDONLY)
        if fd >= 0 {
            fsync(fd)
            close(fd)
        }
        guard rename(temp, target) == 0 else { throw IOFailure.last("rename \(temp) to \(target)") }
        AtomicFile.syncDirectory(dir)
    }
}
