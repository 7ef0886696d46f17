#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// What a finished host command produced.
public struct CommandResult: Sendable {
    public var status: Int32
    public var stdout: Data
    public var stderr: Data
    /// True when the command was killed because it ran past its time-out.
    public var timedOut: Bool

    public init(status: Int32, stdout: Data, stderr: Data, timedOut: Bool) {
        self.status = status
        self.stdout = stdout
        self.stderr = stderr
        self.timedOut = timedOut
    }

    public var succeeded: Bool { status == 0 && !timedOut }
    public var stdoutText: String { String(decoding: stdout, as: UTF8.self) }
    public var stderrText: String { String(decoding: stderr, as: UTF8.self) }

    /// The last `lines` lines of stderr (or stdout when stderr is empty), for error messages.
    public func tail(_ lines: Int = 15) -> String {
        let text = stderr.isEmpty ? stdoutText : stderrText
        return Self.tail(of: text, lines: lines)
    }

    public static func tail(of text: String, lines: Int) -> String {
        var parts = text.split(separator: "\n", omittingEmptySubsequences: false)
        if parts.last == "" { parts.removeLast() }
        return parts.suffix(lines).joined(separator: "\n")
    }
}

/// Runs programs on this host with a time-out, cancellation and optional line-by-line
/// streaming of output.
///
/// Built on posix_spawn and waitpid rather than Foundation's Process: the child gets its
/// own process group, so a time-out or a Ctrl-C kills everything it started, and a
/// daemon it leaves behind cannot keep us waiting (Process waits for every holder of an
/// inherited descriptor). Waiting and reading happen on threads of their own, never on
/// Swift's cooperative pool.
public enum HostCommand {
    public enum Stream: Sendable { case stdout, stderr }

    /// Runs `executable` (a path, or a name looked up on PATH) with `arguments`.
    ///
    /// - Throws: `HostCommandError.notFound` when the program does not exist; never for a
    ///   non-zero exit, which the result reports.
    public static func run(
        _ executable: String,
        _ arguments: [String] = [],
        environment: [String: String]? = nil,
        currentDirectory: String? = nil,
        input: Data? = nil,
        timeout: Duration? = nil,
        onLine: (@Sendable (Stream, String) -> Void)? = nil
    ) async throws -> CommandResult {
        guard let path = resolve(executable) else { throw HostCommandError.notFound(executable) }
        let child = try Child.spawn(
            path: path, arguments: arguments, environment: environment, currentDirectory: currentDirectory,
            hasInput: input != nil)
        let outReader = PipeReader(fd: child.stdout, stream: .stdout, onLine: onLine)
        let errReader = PipeReader(fd: child.stderr, stream: .stderr, onLine: onLine)
        outReader.start(exited: child.exited)
        errReader.start(exited: child.exited)
        if let input, child.stdin >= 0 {
            let fd = child.stdin
            BlockingThread.start {
                input.withUnsafeBytes { raw in
                    guard let base = raw.baseAddress else { return }
                    var offset = 0
                    while offset < raw.count {
                        let n = write(fd, base + offset, raw.count - offset)
                        if n < 0 && errno == EINTR { continue }
                        if n <= 0 { break }
                        offset += n
                    }
                }
                close(fd)
            }
        }

        let timedOut = AtomicFlag()
        let watchdog: Task<Void, Never>? = timeout.map { limit in
            Task {
                guard (try? await Task.sleep(for: limit)) != nil else { return }
                timedOut.set()
                child.terminate()
            }
        }
        let status = await withTaskCancellationHandler {
            await child.exited.wait()
        } onCancel: {
            child.terminate()
        }
        watchdog?.cancel()
        let stdout = await outReader.finish()
        let stderr = await errReader.finish()
        return CommandResult(status: status, stdout: stdout, stderr: stderr, timedOut: timedOut.isSet)
    }

    /// Runs and requires exit 0; otherwise throws `HostCommandError.failed` with the output tail.
    @discardableResult
    public static func check(
        _ executable: String,
        _ arguments: [String] = [],
        environment: [String: String]? = nil,
        currentDirectory: String? = nil,
        input: Data? = nil,
        timeout: Duration? = nil,
        onLine: (@Sendable (Stream, String) -> Void)? = nil
    ) async throws -> CommandResult {
        let result = try await run(
            executable, arguments, environment: environment, currentDirectory: currentDirectory, input: input,
            timeout: timeout, onLine: onLine)
        guard result.succeeded else {
            throw HostCommandError.failed(
                command: ([executable] + arguments).joined(separator: " "), status: result.status,
                timedOut: result.timedOut, tail: result.tail())
        }
        return result
    }

    /// The absolute path of `name` on PATH (or `name` itself when it contains a slash).
    public static func resolve(_ name: String) -> String? {
        if name.contains("/") { return FileManager.default.isExecutableFile(atPath: name) ? name : nil }
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
        let dirs = path.split(separator: ":").map(String.init) + ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        for dir in dirs where FileManager.default.isExecutableFile(atPath: "\(dir)/\(name)") {
            return "\(dir)/\(name)"
        }
        return nil
    }
}

public enum HostCommandError: Error, CustomStringConvertible, Sendable {
    case notFound(String)
    case cannotStart(String, String)
    case failed(command: String, status: Int32, timedOut: Bool, tail: String)

    public var description: String {
        switch self {
        case .notFound(let name):
            return "'\(name)' is not installed on this host\n  fix: run 'sudo lab/setup', which installs the lab's tools"
        case .cannotStart(let path, let why):
            return "cannot start \(path): \(why)"
        case .failed(let command, let status, let timedOut, let tail):
            let how = timedOut ? "timed out" : "exited with status \(status)"
            return "'\(command)' \(how)\(tail.isEmpty ? "" : ":\n\(tail)")"
        }
    }
}

/// A spawned child in its own process group, reaped by a thread of its own.
private final class Child: Sendable {
    let pid: pid_t
    let stdin: Int32
    let stdout: Int32
    let stderr: Int32
    let exited = OneShot()

    private init(pid: pid_t, stdin: Int32, stdout: Int32, stderr: Int32) {
        self.pid = pid
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
    }

    typealias AddChdir = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, UnsafePointer<CChar>) -> Int32
    /// glibc has posix_spawn_file_actions_addchdir_np (2.29+) but Swift's Glibc module hides it.
    static let addChdir = hiddenLibcFunction("posix_spawn_file_actions_addchdir_np", as: AddChdir.self)

    typealias AddCloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
    /// posix_spawn_file_actions_addclosefrom_np (glibc 2.34+), hidden by Swift's Glibc module too.
    static let addCloseFrom = hiddenLibcFunction(
        "posix_spawn_file_actions_addclosefrom_np", as: AddCloseFrom.self)

    /// Without closefrom: marks every descriptor above stderr close-on-exec, so the child
    /// inherits none (another thread's descriptor opened in between may still slip through).
    static func markDescriptorsCloseOnExec() {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd") else { return }
        for name in names {
            guard let fd = Int32(name), fd > 2 else { continue }
            let flags = fcntl(fd, F_GETFD)
            if flags >= 0 { _ = fcntl(fd, F_SETFD, flags | FD_CLOEXEC) }
        }
    }

    typealias Pipe2 = @convention(c) (UnsafeMutablePointer<Int32>, Int32) -> Int32
    /// pipe2 sets close-on-exec atomically, so a pipe end cannot leak into a child spawned by
    /// another thread in between; Swift's Glibc module hides it too.
    static let pipe2 = hiddenLibcFunction("pipe2", as: Pipe2.self)

    static func spawn(
        path: String, arguments: [String], environment: [String: String]?, currentDirectory: String?, hasInput: Bool
    ) throws -> Child {
        func pipePair() throws -> (read: Int32, write: Int32) {
            var fds: [Int32] = [-1, -1]
            if let pipe2 {
                guard pipe2(&fds, O_CLOEXEC) == 0 else { throw IOFailure.last("create a pipe") }
            } else {
                guard pipe(&fds) == 0 else { throw IOFailure.last("create a pipe") }
                _ = fcntl(fds[0], F_SETFD, FD_CLOEXEC)
                _ = fcntl(fds[1], F_SETFD, FD_CLOEXEC)
            }
            return (fds[0], fds[1])
        }
        let out = try pipePair()
        let err = try pipePair()
        let inp = hasInput ? try pipePair() : (read: open("/dev/null", O_RDONLY | O_CLOEXEC), write: Int32(-1))

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, inp.read, 0)
        posix_spawn_file_actions_adddup2(&actions, out.write, 1)
        posix_spawn_file_actions_adddup2(&actions, err.write, 2)
        if let currentDirectory {
            guard let addChdir else {
                throw HostCommandError.cannotStart(path, "this C library cannot set a working directory for a child")
            }
            _ = addChdir(&actions, currentDirectory)
        }
        // The child gets stdin, stdout and stderr and nothing else: not the caller's sockets
        // (a listener, a TLS connection to the core), not its files. Descriptors libraries open
        // without close-on-exec would otherwise pass to every maintainer script and to any
        // daemon it starts, and live as long as that daemon.
        if let addCloseFrom {
            _ = addCloseFrom(&actions, 3)
        } else {
            markDescriptorsCloseOnExec()
        }

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGINT, SIGTERM, SIGPIPE, SIGCHLD, SIGHUP, SIGQUIT] { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setpgroup(&attributes, 0)
        posix_spawnattr_setflags(
            &attributes, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        var env = ProcessInfo.processInfo.environment
        if let environment { env.merge(environment) { _, new in new } }
        let argv = [path] + arguments
        let envp = env.map { "\($0.key)=\($0.value)" }
        var pid: pid_t = 0
        let rc = withCStrings(argv) { cArgv in
            withCStrings(envp) { cEnvp in
                posix_spawn(&pid, path, &actions, &attributes, cArgv, cEnvp)
            }
        }
        close(out.write)
        close(err.write)
        close(inp.read)
        guard rc == 0 else {
            close(out.read)
            close(err.read)
            if inp.write >= 0 { close(inp.write) }
            throw HostCommandError.cannotStart(path, String(cString: strerror(rc)))
        }
        let child = Child(pid: pid, stdin: inp.write, stdout: out.read, stderr: err.read)
        let spawned = pid
        BlockingThread.start {
            let pid = spawned
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
            // WIFEXITED/WEXITSTATUS: a signal death reports 128 + signal, like a shell.
            let signal = status & 0x7f
            child.exited.fire(signal == 0 ? (status >> 8) & 0xff : 128 + signal)
        }
        return child
    }

    /// SIGTERM to the whole process group now, SIGKILL two seconds later.
    func terminate() {
        guard !exited.hasFired else { return }
        kill(-pid, SIGTERM)
        let pid = self.pid
        BlockingThread.start {
            usleep(2_000_000)
            kill(-pid, SIGKILL)
        }
    }
}

private func withCStrings<R>(_ strings: [String], _ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>) -> R) -> R {
    var pointers: [UnsafeMutablePointer<CChar>?] = strings.map { strdup($0) }
    pointers.append(nil)
    defer { for pointer in pointers { free(pointer) } }
    return pointers.withUnsafeBufferPointer { buffer in
        // The buffer is never empty: it always holds the terminating nil.
        body(buffer.baseAddress ?? UnsafePointer(bitPattern: 1).unsafelyUnwrapped)
    }
}

/// Runs blocking work on a thread of its own.
///
/// Not GCD's global queue: on Linux it is only as wide as the machine has cores, so a few
/// blocked readers starve every other command. Not Swift's cooperative pool either.
public enum BlockingThread {
    public static func start(_ body: @escaping @Sendable () -> Void) {
        let thread = Thread { body() }
        thread.stackSize = 256 * 1024
        thread.start()
    }
}

/// Drains one pipe on a thread of its own, optionally line by line. Once the child has exited it
/// stops after a short quiet spell, so a descendant that inherited the pipe cannot hold
/// the caller hostage.
private final class PipeReader: @unchecked Sendable {
    // @unchecked: `data` and `pending` are only touched on the reading thread until
    // `done` fires, and only read after it.
    private let fd: Int32
    private let stream: HostCommand.Stream
    private let onLine: (@Sendable (HostCommand.Stream, String) -> Void)?
    private var data = Data()
    private var pending = Data()
    private let done = OneShot()

    init(fd: Int32, stream: HostCommand.Stream, onLine: (@Sendable (HostCommand.Stream, String) -> Void)?) {
        self.fd = fd
        self.stream = stream
        self.onLine = onLine
    }

    func start(exited: OneShot) {
        BlockingThread.start { [self] in
            var buffer = [UInt8](repeating: 0, count: 65536)
            var quietAfterExit = 0
            while true {
                var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                let ready = poll(&pfd, 1, 100)
                if ready < 0 && errno == EINTR { continue }
                if ready == 0 {
                    if exited.hasFired {
                        quietAfterExit += 1
                        if quietAfterExit >= 5 { break }
                    }
                    continue
                }
                let n = read(fd, &buffer, buffer.count)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { break }
                let chunk = Data(buffer[0..<n])
                data.append(chunk)
                if let onLine { emitLines(chunk, onLine) }
            }
            if let onLine, !pending.isEmpty { onLine(stream, String(decoding: pending, as: UTF8.self)) }
            close(fd)
            done.fire(0)
        }
    }

    private func emitLines(_ chunk: Data, _ onLine: @Sendable (HostCommand.Stream, String) -> Void) {
        pending.append(chunk)
        while let newline = pending.firstIndex(of: 0x0A) {
            onLine(stream, String(decoding: pending[pending.startIndex..<newline], as: UTF8.self))
            pending = Data(pending[(newline + 1)...])
        }
    }

    func finish() async -> Data {
        _ = await done.wait()
        return data
    }
}

/// A one-shot signal carrying a status, fired from any thread and awaited from async code.
public final class OneShot: @unchecked Sendable {
    // @unchecked: all state is guarded by `lock`.
    private let lock = NSLock()
    private var value: Int32?
    private var waiters: [CheckedContinuation<Int32, Never>] = []

    public init() {}

    public var hasFired: Bool {
        lock.lock()
        defer { lock.unlock() }
        return value != nil
    }

    public func fire(_ status: Int32) {
        lock.lock()
        guard value == nil else {
            lock.unlock()
            return
        }
        value = status
        let toResume = waiters
        waiters = []
        lock.unlock()
        for waiter in toResume { waiter.resume(returning: status) }
    }

    public func wait() async -> Int32 {
        await withCheckedContinuation { continuation in
            lock.lock()
            if let value {
                lock.unlock()
                continuation.resume(returning: value)
            } else {
                waiters.append(continuation)
                lock.unlock()
            }
        }
    }
}

/// A flag set once from any thread.
public final class AtomicFlag: @unchecked Sendable {
    // @unchecked: guarded by `lock`.
    private let lock = NSLock()
    private var flag = false
    public init() {}
    public func set() {
        lock.lock()
        flag = true
        lock.unlock()
    }
    public var isSet: Bool {
        lock.lock()
        defer { lock.unlock() }
        return flag
    }
    /// Sets the flag; true only for the call that set it, so a teardown runs once.
    public func setOnce() -> Bool {
        lock.lock()
        defer { lock.unlock() }
        if flag { return false }
        flag = true
        return true
    }
}
