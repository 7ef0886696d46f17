#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation

/// Whole-file writes that are either fully there or not there at all.
///
/// Write to a temporary file in the same directory, fsync it, rename it over the target,
/// then fsync the directory so the rename itself survives a crash (NIOFS's transactional
/// creation does the same).
public enum AtomicFile {
    /// - Parameter durable: false skips both fsyncs, for a caller that makes the file system
    ///   durable itself afterwards (the CMDB writer: one `syncfs` for all of a transaction's
    ///   files). The file is still either whole or absent to readers.
    public static func write(_ data: Data, to path: String, permissions: mode_t = 0o644, durable: Bool = true) throws {
        let directory = (path as NSString).deletingLastPathComponent
        let dir = directory.isEmpty ? "." : directory
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let temp = "\(dir)/.\((path as NSString).lastPathComponent).tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let fd = open(temp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, permissions)
        guard fd >= 0 else { throw IOFailure.last("create \(temp)") }
        var ok = false
        defer {
            if !ok { unlink(temp) }
        }
        do {
            defer { close(fd) }
            try data.withUnsafeBytes { raw in
                guard let base = raw.baseAddress else { return }
                var offset = 0
                while offset < raw.count {
                    let n = Glibc.write(fd, base + offset, raw.count - offset)
                    if n < 0 {
                        if errno == EINTR { continue }
                        throw IOFailure.last("write \(temp)")
                    }
                    offset += n
                }
            }
            // fchmod: the umask must not weaken or strengthen what the caller asked for.
            fchmod(fd, permissions)
            if durable { guard fsync(fd) == 0 else { throw IOFailure.last("fsync \(temp)") } }
        }
        guard rename(temp, path) == 0 else { throw IOFailure.last("rename \(temp) to \(path)") }
        ok = true
        if durable { syncDirectory(dir) }
    }

    public static func write(_ text: String, to path: String, permissions: mode_t = 0o644) throws {
        try write(Data(text.utf8), to: path, permissions: permissions)
    }

    /// fsyncs a directory so renames and unlinks in it are durable.
    public static func syncDirectory(_ path: String) {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if fd >= 0 {
            fsync(fd)
            close(fd)
        }
    }
}

/// A failed system call, with errno's text.
public struct IOFailure: Error, CustomStringConvertible, Sendable {
    public var operation: String
    public var code: Int32

    public static func last(_ operation: String) -> IOFailure {
        IOFailure(operation: operation, code: errno)
    }

    public var description: String { "cannot \(operation): \(String(cString: strerror(code)))" }
}
