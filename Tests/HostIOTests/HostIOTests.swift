import Foundation
import HostIO
import Testing

@Suite struct HostCommandTests {
    @Test func keepsStdoutAndStderrApartAndReportsTheExitStatus() async throws {
        let result = try await HostCommand.run("/bin/sh", ["-c", "echo out; echo err >&2; exit 3"])
        #expect(result.status == 3)
        #expect(result.stdoutText == "out\n")
        #expect(result.stderrText == "err\n")
        #expect(!result.succeeded)
    }

    @Test func feedsStandardInput() async throws {
        let result = try await HostCommand.run("cat", [], input: Data("hello".utf8))
        #expect(result.stdoutText == "hello")
    }

    @Test func killsACommandThatRunsPastItsTimeout() async throws {
        let start = ContinuousClock.now
        let result = try await HostCommand.run("sleep", ["30"], timeout: .milliseconds(300))
        #expect(result.timedOut)
        #expect(!result.succeeded)
        // Not a performance bound: far below the 30 s sleep, far above a loaded machine's delays.
        #expect(ContinuousClock.now - start < .seconds(25))
    }

    @Test func streamsOutputLineByLine() async throws {
        let lines = LineCollector()
        _ = try await HostCommand.run("/bin/sh", ["-c", "printf 'a\\nb\\nc'"]) { _, line in lines.add(line) }
        #expect(lines.all == ["a", "b", "c"])
    }

    @Test func aMissingProgramIsANamedError() async throws {
        await #expect(throws: HostCommandError.self) {
            try await HostCommand.run("changelab-no-such-program", [])
        }
        do {
            _ = try await HostCommand.run("changelab-no-such-program", [])
        } catch {
            #expect("\(error)".contains("changelab-no-such-program"))
        }
    }

    @Test func checkThrowsWithTheTailOfTheOutput() async throws {
        do {
            try await HostCommand.check("/bin/sh", ["-c", "echo boom >&2; exit 2"])
            Issue.record("check should have thrown")
        } catch let error as HostCommandError {
            #expect("\(error)".contains("status 2"))
            #expect("\(error)".contains("boom"))
        }
    }
}

final class LineCollector: @unchecked Sendable {
    private let lock = NSLock()
    private var lines: [String] = []
    func add(_ line: String) {
        lock.lock()
        lines.append(line)
        lock.unlock()
    }
    var all: [String] {
        lock.lock()
        defer { lock.unlock() }
        return lines
    }
}

@Suite struct FileTests {
    let dir: String = {
        let path = NSTemporaryDirectory() + "hostio-\(UUID().uuidString)"
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }()

    @Test func atomicWriteReplacesTheFileAndLeavesNoTemporaryFiles() throws {
        let path = dir + "/record.json"
        try AtomicFile.write("first", to: path)
        try AtomicFile.write("second", to: path, permissions: 0o600)
        #expect(try String(contentsOfFile: path, encoding: .utf8) == "second")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == ["record.json"])
        let mode = try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int
        #expect(mode == 0o600)
    }

    @Test func anExclusiveLockExcludesASecondHolderUntilReleased() async throws {
        let path = dir + "/lock"
        let first = try #require(try FileLock.tryAcquire(path))
        #expect(try FileLock.tryAcquire(path) == nil)
        let waited = try await FileLock.acquire(path, timeout: .milliseconds(100))
        #expect(waited == nil)
        first.release()
        let second = try FileLock.tryAcquire(path)
        #expect(second != nil)
    }

    @Test func aLockHeldByAKilledProcessIsFree() async throws {
        let path = dir + "/killed.lock"
        // flock(1) -o holds the lock itself (not its child): SIGKILL must release it with the process.
        let holder = Process()
        holder.executableURL = URL(fileURLWithPath: "/usr/bin/flock")
        holder.arguments = ["-o", path, "sleep", "30"]
        try holder.run()
        var held = false
        for _ in 0..<100 where !held {
            if let probe = try FileLock.tryAcquire(path) { probe.release() } else { held = true }
            if !held { try await Task.sleep(for: .milliseconds(20)) }
        }
        #expect(held)
        kill(holder.processIdentifier, SIGKILL)
        // Never waitUntilExit here: it blocks a cooperative thread until `sleep` exits.
        let freed = try await FileLock.acquire(path, timeout: .seconds(5))
        #expect(freed != nil)
    }
}

@Suite struct HostCommandProcessTreeTests {
    @Test func aDaemonLeftBehindDoesNotKeepTheCallerWaiting() async throws {
        let start = ContinuousClock.now
        // The background sleep inherits stdout and stderr; the command itself exits at once.
        let result = try await HostCommand.run("/bin/sh", ["-c", "sleep 20 & echo started"])
        #expect(result.status == 0)
        #expect(result.stdoutText == "started\n")
        // Waiting for the daemon would take 20 s; a loaded machine takes a few to run `sh`.
        #expect(ContinuousClock.now - start < .seconds(15))
    }

    @Test func aTimeoutKillsTheWholeProcessGroup() async throws {
        // The child's child sleeps for an hour under a name no other process has; after the
        // time-out it must be gone (polled, so a loaded machine running the watchdog late is fine).
        let name = "3600.\(UInt32.random(in: 100_000...999_999))"
        let result = try await HostCommand.run(
            "/bin/sh", ["-c", "sleep \(name) & sleep 60"], timeout: .milliseconds(200))
        #expect(result.timedOut)
        var alive = true
        for _ in 0..<100 where alive {
            alive = try await HostCommand.run("pgrep", ["-f", "sleep \(name)"]).status == 0
            if alive { try await Task.sleep(for: .milliseconds(200)) }
        }
        #expect(!alive, "the time-out left the command's own child running")
    }

    @Test func runsInTheRequestedDirectory() async throws {
        let result = try await HostCommand.run("pwd", [], currentDirectory: "/usr/share")
        #expect(result.stdoutText == "/usr/share\n")
    }

    @Test func aChildInheritsNoDescriptorButItsStandardStreams() async throws {
        // A listening socket and a file opened without close-on-exec, as libraries (and, as
        // measured, the test cores' listeners) leave them: a child that inherited them (a
        // maintainer script, a daemon it starts) could keep the agent's port bound after the
        // agent left, or accept its peers' connections.
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        #expect(listener >= 3)
        defer { close(listener) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(listener, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        #expect(bound == 0)
        #expect(listen(listener, 8) == 0)
        let file = open("/etc/hostname", O_RDONLY)
        #expect(file >= 3)
        defer { close(file) }
        let result = try await HostCommand.run(
            "/bin/sh", ["-c", "for fd in \(listener) \(file); do test -e /proc/$$/fd/$fd && echo inherited $fd; done; :"])
        #expect(result.status == 0)
        #expect(result.stdoutText == "", "the child holds the parent's descriptors: \(result.stdoutText)")
    }

    @Test func reportsDeathBySignalLikeAShell() async throws {
        let result = try await HostCommand.run("/bin/sh", ["-c", "kill -9 $$"])
        #expect(result.status == 137)
    }
}
