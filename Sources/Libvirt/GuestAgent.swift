import Foundation
import HostIO

/// What a command run in the guest produced.
public struct GuestExecResult: Sendable {
    public var exitCode: Int32
    public var stdout: Data
    public var stderr: Data
    /// True when the command ran past its time-out and was killed.
    public var timedOut: Bool
    public var seconds: Double

    public var succeeded: Bool { exitCode == 0 && !timedOut }
    public var stdoutText: String { String(decoding: stdout, as: UTF8.self) }
    public var stderrText: String { String(decoding: stderr, as: UTF8.self) }
}

/// Guest-side failures that are not libvirt errors.
public enum GuestAgentError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The agent did not answer within the wait.
    case notReady(domain: String, waitedSeconds: Double, lastError: String)
    /// The program to run does not exist in the guest.
    case commandNotFound(domain: String, command: String)
    /// A guest file could not be opened, read or written.
    case file(domain: String, path: String, message: String)
    /// The agent answered something we cannot understand.
    case unexpectedReply(command: String, reply: String)
    /// The domain stopped while we waited for its agent.
    case domainStopped(domain: String, state: String)

    public var description: String {
        switch self {
        case .notReady(let domain, let waited, let lastError):
            return "the guest agent of \(domain) did not answer within \(Int(waited.rounded())) s (\(lastError))"
        case .commandNotFound(let domain, let command):
            return "'\(command)' is not installed in the guest \(domain)"
        case .file(let domain, let path, let message):
            return "guest file \(path) on \(domain): \(message)"
        case .unexpectedReply(let command, let reply):
            return "the guest agent answered \(command) with something unexpected: \(reply.prefix(200))"
        case .domainStopped(let domain, let state):
            return "\(domain) stopped (\(state)) while waiting for its guest agent"
        }
    }
}

/// A client for the QEMU guest agent (qemu-ga) of one domain, over
/// `virDomainQemuAgentCommand`. No SSH and no guest network: commands, files and the
/// clock all go through the virtio-serial channel.
public struct GuestAgent: Sendable {
    public enum Stream: Sendable { case stdout, stderr }

    public let domain: Domain
    /// Seconds libvirt waits for one agent reply.
    public var replyTimeout: Int32 = 60
    /// Bytes per guest-file-read. libvirt's RPC caps one string at 4 MiB, and the data
    /// travels base64-encoded (4/3 larger) inside JSON.
    public var readChunkSize = 2 * 1024 * 1024
    /// Bytes per guest-file-write. Host-to-guest agent messages are far more fragile:
    /// measured here (QEMU 7.2, libvirt 9), 160 KiB chunks (218 KB of JSON) go through,
    /// 192 KiB (262 KB) wedge qemu-ga until the guest restarts.
    public var writeChunkSize = 128 * 1024

    public init(domain: Domain) {
        self.domain = domain
    }

    // MARK: Raw commands

    /// Sends `execute` with `arguments` and returns the reply's `return` value.
    func send(_ execute: String, _ arguments: [String: Any]? = nil, timeout: Int32? = nil) async throws -> Any {
        var command: [String: Any] = ["execute": execute]
        if let arguments { command["arguments"] = arguments }
        let json = String(decoding: try JSONSerialization.data(withJSONObject: command), as: UTF8.self)
        let reply = try await domain.agentCommand(json, timeoutSeconds: timeout ?? replyTimeout)
        guard let object = try? JSONSerialization.jsonObject(with: Data(reply.utf8)) as? [String: Any],
            let value = object["return"]
        else { throw GuestAgentError.unexpectedReply(command: execute, reply: reply) }
        return value
    }

    private func sendForObject(_ execute: String, _ arguments: [String: Any]) async throws -> [String: Any] {
        guard let object = try await send(execute, arguments) as? [String: Any] else {
            throw GuestAgentError.unexpectedReply(command: execute, reply: "not an object")
        }
        return object
    }

    // MARK: Readiness and clock

    public func ping(timeoutSeconds: Int32 = 5) async throws {
        _ = try await send("guest-ping", timeout: timeoutSeconds)
    }

    /// Polls guest-ping until the agent answers; never assumes it is ready.
    ///
    /// - Throws: `GuestAgentError.notReady` after `limit`, `.domainStopped` when the
    ///   domain stops meanwhile (a kernel panic, a crash).
    public func waitUntilReady(within limit: Duration) async throws {
        let clock = ContinuousClock()
        let start = clock.now
        var lastError = "no answer yet"
        var pause = Duration.milliseconds(20)
        while clock.now - start < limit {
            try Task.checkCancellation()
            do {
                try await ping(timeoutSeconds: 2)
                return
            } catch let error as LibvirtError {
                lastError = error.message
                if !error.isAgentUnresponsive && !error.isAgentCommandFailed {
                    let state = (try? await domain.state()) ?? .noState
                    if !state.isActive { throw GuestAgentError.domainStopped(domain: domain.name, state: state.rawValue) }
                }
            }
            try await Task.sleep(for: pause)
            pause = min(pause * 2, .milliseconds(500))
        }
        throw GuestAgentError.notReady(domain: domain.name, waitedSeconds: start.secondsSince, lastError: lastError)
    }

    /// Sets the guest clock to `date` (a restored guest keeps its snapshot's time until
    /// told otherwise).
    ///
    /// By default through `date -s` run by guest-exec: qemu-ga's guest-set-time also runs
    /// `hwclock -w`, which waits for the RTC's next second boundary (about 0.5 s, up to 1 s
    /// of every restore), and nothing in a running guest reads the RTC again. Pass
    /// `hardwareClock: true` to use guest-set-time and sync the RTC too.
    public func setTime(_ date: Date = Date(), hardwareClock: Bool = false) async throws {
        if hardwareClock {
            let nanoseconds = Int64((date.timeIntervalSince1970 * 1e9).rounded())
            _ = try await send("guest-set-time", ["time": nanoseconds])
            return
        }
        // Stamp the time as late as possible: the host's clock when the command leaves.
        let stamp = String(format: "@%.6f", Date().timeIntervalSince1970 + date.timeIntervalSinceNow)
        let result = try await capture(["date", "-u", "-s", stamp])
        guard result.succeeded else {
            throw GuestAgentError.unexpectedReply(command: "date -s", reply: result.stderrText)
        }
    }

    // MARK: Commands

    /// Runs `argv` in the guest and waits for it.
    ///
    /// Output goes to files in the guest which are read back in chunks, so stdout and
    /// stderr stay apart, there is no 16 MiB cap (qemu-ga's for captured output), and
    /// `onOutput` can stream it while the command runs. A command that is not installed
    /// throws `commandNotFound`; one that outlives `timeout` has its process group killed
    /// and returns with `timedOut`.
    public func exec(
        _ argv: [String],
        input: Data? = nil,
        environment: [String] = [],
        timeout: Duration? = nil,
        onOutput: (@Sendable (Stream, Data) -> Void)? = nil
    ) async throws -> GuestExecResult {
        guard let program = argv.first else {
            throw GuestAgentError.commandNotFound(domain: domain.name, command: "")
        }
        let started = ContinuousClock.now
        let token = UUID().uuidString.prefix(8).lowercased()
        let outPath = "/var/tmp/.changelab-exec-\(token).out"
        let errPath = "/var/tmp/.changelab-exec-\(token).err"
        let groupPath = "/var/tmp/.changelab-exec-\(token).pgid"
        // setsid gives the command a process group of its own, which a time-out kills whole.
        // qemu-ga's child leads no group, so setsid does not fork: it becomes the shell,
        // which writes its pid (the new group's id) where the killer can find it, sends its
        // output to the files and execs the command. One spawn and two execs; the earlier
        // sh → setsid → sh chain cost two more spawns (~0.12 s a command under TCG).
        let wrapper = """
            exec >"$1" 2>"$2"; echo $$ >"$3"; shift 3
            if ! command -v "$1" >/dev/null 2>&1; then
              printf 'changelab: %s: command not found in the guest\\n' "$1" >&2; exit 127
            fi
            exec "$@"
            """
        var arguments: [String: Any] = [
            "path": "setsid", "arg": ["-w", "/bin/sh", "-c", wrapper, "changelab-exec", outPath, errPath, groupPath] + argv,
            "capture-output": false,
        ]
        if !environment.isEmpty { arguments["env"] = environment }
        if let input { arguments["input-data"] = input.base64EncodedString() }
        let launched = try await sendForObject("guest-exec", arguments)
        guard let pid = launched["pid"] as? Int else {
            throw GuestAgentError.unexpectedReply(command: "guest-exec", reply: "\(launched)")
        }

        let deadline = timeout.map { started + $0 }
        var out = OutputTail(path: outPath, stream: .stdout)
        var err = OutputTail(path: errPath, stream: .stderr)
        var pause = Duration.milliseconds(10)
        var timedOut = false
        var exitCode: Int32 = -1
        // Streamed output is read at most twice a second; the status poll (one cheap
        // message) goes on at its own pace, so the end of a command is seen within 0.1 s.
        var drained = ContinuousClock.now
        do {
            while true {
                let status = try await sendForObject("guest-exec-status", ["pid": pid])
                let exited = (status["exited"] as? Bool) ?? false
                if exited || (onOutput != nil && ContinuousClock.now - drained >= .milliseconds(500)) {
                    try await drain(&out, final: exited, onOutput: onOutput)
                    try await drain(&err, final: exited, onOutput: onOutput)
                    drained = ContinuousClock.now
                }
                if exited {
                    exitCode = Self.exitCode(status) ?? -1
                    break
                }
                if let deadline, !timedOut, ContinuousClock.now >= deadline {
                    timedOut = true
                    try await kill(pid: pid, groupFile: groupPath)
                }
                try await Task.sleep(for: pause)
                pause = Self.nextPoll(after: pause, started: started, cap: .milliseconds(100))
            }
        } catch {
            // Cancelled or the agent went away: do not leave the command running.
            try? await kill(pid: pid, groupFile: groupPath)
            await out.close(using: self)
            await err.close(using: self)
            _ = try? await send("guest-exec", ["path": "/bin/rm", "arg": ["-f", outPath, errPath, groupPath]])
            throw error
        }
        await out.close(using: self)
        await err.close(using: self)
        _ = try? await send("guest-exec", ["path": "/bin/rm", "arg": ["-f", outPath, errPath, groupPath]])

        if exitCode == 127, String(decoding: err.data, as: UTF8.self).hasPrefix("changelab: \(program): command not found") {
            throw GuestAgentError.commandNotFound(domain: domain.name, command: program)
        }
        return GuestExecResult(
            exitCode: exitCode, stdout: out.data, stderr: err.data, timedOut: timedOut, seconds: started.secondsSince)
    }

    /// Runs a short command and lets qemu-ga capture its output: fewer round trips than
    /// `exec` (no output files), for housekeeping with small output. qemu-ga caps captured
    /// output at 16 MiB and libvirt's RPC at 4 MiB, so use `exec` for anything big.
    public func capture(_ argv: [String], timeout: Duration = .seconds(120)) async throws -> GuestExecResult {
        guard let program = argv.first else { throw GuestAgentError.commandNotFound(domain: domain.name, command: "") }
        let started = ContinuousClock.now
        let launched: [String: Any]
        do {
            launched = try await sendForObject(
                "guest-exec", ["path": program, "arg": Array(argv.dropFirst()), "capture-output": true])
        } catch let error as LibvirtError where error.isAgentCommandFailed && error.message.contains("No such file") {
            throw GuestAgentError.commandNotFound(domain: domain.name, command: program)
        }
        guard let pid = launched["pid"] as? Int else {
            throw GuestAgentError.unexpectedReply(command: "guest-exec", reply: "\(launched)")
        }
        var pause = Duration.milliseconds(10)
        while true {
            let status = try await sendForObject("guest-exec-status", ["pid": pid])
            if (status["exited"] as? Bool) ?? false {
                let decode = { (key: String) in (status[key] as? String).flatMap { Data(base64Encoded: $0) } ?? Data() }
                let code = Self.exitCode(status) ?? -1
                return GuestExecResult(
                    exitCode: code, stdout: decode("out-data"), stderr: decode("err-data"), timedOut: false,
                    seconds: started.secondsSince)
            }
            if ContinuousClock.now - started > timeout {
                try await kill(pid: pid)
                return GuestExecResult(
                    exitCode: -1, stdout: Data(), stderr: Data(), timedOut: true, seconds: started.secondsSince)
            }
            try await Task.sleep(for: pause)
            pause = Self.nextPoll(after: pause, started: started, cap: .milliseconds(200))
        }
    }

    /// The pause before the next status poll: every 10 ms for the first 0.2 s (a short
    /// command ends within a poll of its end; each poll is one small agent message), then
    /// half as long again each time, up to `cap`.
    static func nextPoll(after pause: Duration, started: ContinuousClock.Instant, cap: Duration) -> Duration {
        if ContinuousClock.now - started < .milliseconds(200) { return .milliseconds(10) }
        return min(max(pause, .milliseconds(10)) * 3 / 2, cap)
    }

    /// Starts a command and returns its pid without waiting for it: for commands that take
    /// the agent down with them, like a reboot.
    @discardableResult
    public func launch(_ argv: [String]) async throws -> Int {
        guard let program = argv.first else { throw GuestAgentError.commandNotFound(domain: domain.name, command: "") }
        let launched = try await sendForObject(
            "guest-exec", ["path": program, "arg": Array(argv.dropFirst()), "capture-output": false])
        guard let pid = launched["pid"] as? Int else {
            throw GuestAgentError.unexpectedReply(command: "guest-exec", reply: "\(launched)")
        }
        return pid
    }

    /// The guest's boot id: it changes with every boot, so it tells a reboot really happened.
    public func bootID() async throws -> String {
        let result = try await capture(["cat", "/proc/sys/kernel/random/boot_id"])
        return result.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Runs a shell script with /bin/sh -c.
    public func shell(
        _ script: String, input: Data? = nil, timeout: Duration? = nil,
        onOutput: (@Sendable (Stream, Data) -> Void)? = nil
    ) async throws -> GuestExecResult {
        try await exec(["/bin/sh", "-c", script], input: input, timeout: timeout, onOutput: onOutput)
    }

    /// The exit status guest-exec-status reports: the exit code, or 128 + the signal. Both
    /// come from the guest, so anything outside 0…255 (or a signal outside 1…127) is nil,
    /// never a trap.
    public static func exitCode(_ status: [String: Any]) -> Int32? {
        if let code = status["exitcode"] as? Int, (0...255).contains(code) { return Int32(code) }
        if let signal = status["signal"] as? Int, (1...127).contains(signal) { return 128 + Int32(signal) }
        return nil
    }

    /// Kills a command's whole process group (read from `groupFile`) and the pid itself.
    /// (`kill -9 -PGID`: dash's kill takes no `--`.)
    private func kill(pid: Int, groupFile: String? = nil) async throws {
        let group = groupFile.map { "g=$(cat '\($0)' 2>/dev/null) && kill -9 -$g 2>/dev/null; " } ?? ""
        _ = try await send(
            "guest-exec",
            ["path": "/bin/sh", "arg": ["-c", "\(group)kill -9 -\(pid) 2>/dev/null; kill -9 \(pid) 2>/dev/null; true"]])
    }

    /// One output file being followed while its command runs.
    struct OutputTail {
        let path: String
        let stream: Stream
        var handle: Int?
        var data = Data()
        /// qemu-ga reads with fread, whose end-of-file flag is sticky: after hitting it,
        /// nothing more is read until a seek clears it.
        var atEOF = false

        init(path: String, stream: Stream) {
            self.path = path
            self.stream = stream
        }

        mutating func close(using agent: GuestAgent) async {
            if let handle { _ = try? await agent.send("guest-file-close", ["handle": handle]) }
            handle = nil
        }
    }

    private func drain(
        _ tail: inout OutputTail, final: Bool, onOutput: (@Sendable (Stream, Data) -> Void)?
    ) async throws {
        if tail.handle == nil {
            do {
                tail.handle = try await send("guest-file-open", ["path": tail.path, "mode": "r"]) as? Int
            } catch let error as LibvirtError where error.isAgentCommandFailed {
                // The wrapper has not created the file yet; a final drain means it never will.
                if final { return }
                return
            }
        }
        guard let handle = tail.handle else { return }
        if tail.atEOF {
            _ = try await send("guest-file-seek", ["handle": handle, "offset": 0, "whence": "cur"])
            tail.atEOF = false
        }
        while true {
            let chunk = try await sendForObject("guest-file-read", ["handle": handle, "count": readChunkSize])
            let count = chunk["count"] as? Int ?? 0
            if count > 0, let encoded = chunk["buf-b64"] as? String, let bytes = Data(base64Encoded: encoded) {
                tail.data.append(bytes)
                onOutput?(tail.stream, bytes)
            }
            if (chunk["eof"] as? Bool) ?? false {
                tail.atEOF = true
                return
            }
            if count == 0 { return }
        }
    }

    // MARK: Files

    /// Writes `data` to `path` in the guest (replacing it), in chunks, then sets `mode`.
    public func write(_ data: Data, to path: String, mode: Int? = nil) async throws {
        let handle = try await openFile(path, mode: "w")
        do {
            var offset = 0
            repeat {
                let end = min(offset + writeChunkSize, data.count)
                let chunk = data.subdata(in: offset..<end)
                _ = try await send("guest-file-write", ["handle": handle, "buf-b64": chunk.base64EncodedString()])
                offset = end
            } while offset < data.count
            _ = try await send("guest-file-close", ["handle": handle])
        } catch {
            _ = try? await send("guest-file-close", ["handle": handle])
            throw error
        }
        if let mode { try await chmod(path, mode: mode) }
    }

    /// Copies the host file `localPath` to `path` in the guest, reading it in chunks.
    public func upload(file localPath: String, to path: String, mode: Int? = nil) async throws {
        guard let input = FileHandle(forReadingAtPath: localPath) else {
            throw GuestAgentError.file(domain: domain.name, path: localPath, message: "cannot read the host file")
        }
        defer { try? input.close() }
        let handle = try await openFile(path, mode: "w")
        do {
            while let chunk = try input.read(upToCount: writeChunkSize), !chunk.isEmpty {
                _ = try await send("guest-file-write", ["handle": handle, "buf-b64": chunk.base64EncodedString()])
            }
            _ = try await send("guest-file-close", ["handle": handle])
        } catch {
            _ = try? await send("guest-file-close", ["handle": handle])
            throw error
        }
        if let mode { try await chmod(path, mode: mode) }
    }

    /// Reads the whole guest file at `path`.
    public func read(_ path: String) async throws -> Data {
        var data = Data()
        try await readChunks(path) { data.append($0) }
        return data
    }

    /// Copies the guest file `path` to the host file `localPath`, chunk by chunk.
    @discardableResult
    public func download(_ path: String, to localPath: String) async throws -> Int {
        guard FileManager.default.createFile(atPath: localPath, contents: nil),
            let output = FileHandle(forWritingAtPath: localPath)
        else {
            throw GuestAgentError.file(domain: domain.name, path: localPath, message: "cannot create the host file")
        }
        defer { try? output.close() }
        var total = 0
        try await readChunks(path) { chunk in
            try output.write(contentsOf: chunk)
            total += chunk.count
        }
        return total
    }

    private func readChunks(_ path: String, _ consume: (Data) throws -> Void) async throws {
        let handle = try await openFile(path, mode: "r")
        do {
            while true {
                let chunk = try await sendForObject("guest-file-read", ["handle": handle, "count": readChunkSize])
                if let encoded = chunk["buf-b64"] as? String {
                    guard let bytes = Data(base64Encoded: encoded) else {
                        throw GuestAgentError.unexpectedReply(command: "guest-file-read", reply: "invalid base64")
                    }
                    try consume(bytes)
                }
                if (chunk["eof"] as? Bool) ?? false || (chunk["count"] as? Int ?? 0) == 0 { break }
            }
            _ = try await send("guest-file-close", ["handle": handle])
        } catch {
            _ = try? await send("guest-file-close", ["handle": handle])
            throw error
        }
    }

    private func openFile(_ path: String, mode: String) async throws -> Int {
        do {
            guard let handle = try await send("guest-file-open", ["path": path, "mode": mode]) as? Int else {
                throw GuestAgentError.unexpectedReply(command: "guest-file-open", reply: "no handle")
            }
            return handle
        } catch let error as LibvirtError where error.isAgentCommandFailed {
            throw GuestAgentError.file(domain: domain.name, path: path, message: Self.agentReason(error.message))
        }
    }

    private func chmod(_ path: String, mode: Int) async throws {
        let result = try await capture(["chmod", String(mode, radix: 8), path])
        guard result.succeeded else {
            throw GuestAgentError.file(domain: domain.name, path: path, message: "chmod failed: \(result.stderrText)")
        }
    }

    /// libvirt wraps agent errors as "internal error: unable to execute QEMU agent command
    /// 'x': reason"; keep the reason.
    static func agentReason(_ message: String) -> String {
        if let range = message.range(of: "': ") { return String(message[range.upperBound...]) }
        return message
    }
}
