#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// An advisory lock on a file (flock), released when the holder releases it, exits or is
/// killed: the kernel drops the lock with the process, so a SIGKILLed holder never
/// leaves a stale lock behind.
public final class FileLock: @unchecked Sendable {
    // @unchecked: `fd` is written once in init and read-then-cleared under `mutex`.
    public let path: String
    private var fd: Int32
    private let mutex = NSLock()

    private init(path: String, fd: Int32) {
        self.path = path
        self.fd = fd
    }

    deinit { release() }

    /// Takes the lock now or returns nil when another process holds it.
    public static func tryAcquire(_ path: String, exclusive: Bool = true) throws -> FileLock? {
        let fd = try openLockFile(path)
        if flock(fd, (exclusive ? LOCK_EX : LOCK_SH) | LOCK_NB) == 0 {
            return FileLock(path: path, fd: fd)
        }
        let code = errno
        close(fd)
        if code == EWOULDBLOCK { return nil }
        throw IOFailure(operation: "lock \(path)", code: code)
    }

    /// Waits for the lock, polling, until `timeout` passes; nil on time-out.
    public static func acquire(
        _ path: String, exclusive: Bool = true, timeout: Duration = .seconds(60)
    ) async throws -> FileLock? {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while true {
            if let lock = try tryAcquire(path, exclusive: exclusive) { return lock }
            if clock.now >= deadline { return nil }
            try await Task.sleep(for: .milliseconds(25))
        }
    }

    /// Writes a note (for example the holder's pid) into the lock file for people to read.
    public func note(_ text: String) {
        mutex.lock()
        defer { mutex.unlock() }
        guard fd >= 0 else { return }
        // Write, then cut to the note's length: truncating to zero first would free the
        // file's block on every call (on a file system mounted with `discard`, an I/O the
        // caller waits for; the CMDB writer notes once per transaction).
        let length = text.withCString { pwrite(fd, $0, strlen($0), 0) }
        if length >= 0 { ftruncate(fd, off_t(length)) }
    }

    public func release() {
        mutex.lock()
        defer { mutex.unlock() }
        guard fd >= 0 else { return }
        flock(fd, LOCK_UN)
        close(fd)
        fd = -1
    }

    private static func openLockFile(_ path: String) throws -> Int32 {
        let dir = (path as NSString).deletingLastPathComponent
        if !dir.isEmpty { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) }
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw IOFailure.last("open lock file \(path)") }
        return fd
    }
}
