import Foundation
import HostIO
import Libvirt
import Model

/// Runs test executables in a guest: a baseline's standing regression suite, or a
/// package's own tests. A test passes when it exits 0.
///
/// All of a suite's tests go in one guest command: a runner script that carries the tests
/// (base64, so any executable survives), runs each under its own time-out, and reports
/// each one's exit code, output and guest-measured time. Under emulation each agent round
/// trip costs tens of milliseconds; uploading, chmodding, wrapping and reading back every
/// test on its own cost about a second per test.
public enum StandingSuite {
    /// Where tests are copied in the guest before they run.
    public static let guestDirectory = "/var/tmp/changelab-tests"
    static let marker = "@@changelab-test "
    static let separator = "@@changelab-stderr "
    static let ending = "@@changelab-end "

    public static func run(
        _ tests: [String], in guest: RestoredGuest, timeout: Duration = .seconds(300), oneByOne: Bool = false,
        progress: ProgressHandler
    ) async throws -> [TestOutcome] {
        guard !tests.isEmpty else { return [] }
        let outcomes =
            oneByOne
            ? try await runOneByOne(tests, agent: guest.agent, timeout: timeout)
            : try await runBatched(tests, agent: guest.agent, timeout: timeout)
        for outcome in outcomes {
            progress(
                LabProgress(
                    subject: guest.image.name,
                    message: "  \(outcome.passed ? "pass" : "FAIL") \(outcome.name)"
                        + (outcome.passed ? "" : outcome.timedOut ? " (timed out)" : " (exit \(outcome.exitCode))")))
        }
        return outcomes
    }

    /// The old way, kept to measure against: one upload, chmod and guest-exec per test.
    static func runOneByOne(_ tests: [String], agent: GuestAgent, timeout: Duration) async throws -> [TestOutcome] {
        _ = try await agent.exec(["mkdir", "-p", guestDirectory])
        var outcomes: [TestOutcome] = []
        for test in tests {
            let name = (test as NSString).lastPathComponent
            let target = "\(guestDirectory)/\(name)"
            try await agent.upload(file: test, to: target, mode: 0o755)
            // Timed in the guest too, so the old path's work is counted as the new one's is.
            let (result, guestSeconds) = GuestTiming.split(try await agent.exec(GuestTiming.argv([target]), timeout: timeout))
            let combined = result.stdoutText + (result.stderr.isEmpty ? "" : result.stderrText)
            outcomes.append(
                TestOutcome(
                    name: name, exitCode: result.exitCode, timedOut: result.timedOut, seconds: result.seconds,
                    outputTail: CommandResult.tail(of: combined, lines: 20), guestSeconds: guestSeconds))
        }
        return outcomes
    }

    static func runBatched(_ tests: [String], agent: GuestAgent, timeout: Duration) async throws -> [TestOutcome] {
        let seconds = max(1, Int(timeout.components.seconds))
        var names: [String] = []
        var script = "d=\(guestDirectory)\nmkdir -p \"$d\" || exit 3\n"
        for (index, test) in tests.enumerated() {
            guard let data = FileManager.default.contents(atPath: test) else {
                throw ChangelabError("cannot read the test \(test)", fix: "check that the file exists and is readable")
            }
            let name = (test as NSString).lastPathComponent
            names.append(name)
            // A text test is written by the shell's own printf (no process started); anything
            // else (a NUL byte, not UTF-8) through base64.
            if let text = String(data: data, encoding: .utf8), !text.contains("\u{0}") {
                script += "printf '%s' '\(text.replacingOccurrences(of: "'", with: "'\\''"))' >\"$d/t\(index)\"\n"
            } else {
                script += "base64 -d >\"$d/t\(index)\" <<'CHANGELAB_TEST_END'\n\(data.base64EncodedString(options: [.lineLength76Characters, .endLineWithLineFeed]))\nCHANGELAB_TEST_END\n"
            }
        }
        script += "chmod 755 \"$d\"/t*\n"
        // Each test in its own process group under timeout(1), which kills the group; its
        // stdout and stderr apart, then printed between lines with a token no test prints.
        // Processes are what cost under emulation: the clock comes from /proc/uptime (a shell
        // builtin read), each test's report line is written by the shell, and one cat prints
        // every test's report and output at the end.
        let token = UUID().uuidString.prefix(12).lowercased()
        script += """
            printf '\\n\(separator)\(token)\\n' >"$d/sep"; printf '\\n\(ending)\(token)\\n' >"$d/end"
            run() {
              read s _ </proc/uptime
              timeout -k 5 \(seconds) "$d/t$1" >"$d/t$1.out" 2>"$d/t$1.err" </dev/null
              rc=$?
              read e _ </proc/uptime
              echo "\(marker)\(token) $1 $rc $s $e" >"$d/t$1.m"
            }

            """
        for index in tests.indices { script += "run \(index)\n" }
        let reports = tests.indices.map { "\"$d/t\($0).m\" \"$d/t\($0).out\" \"$d/sep\" \"$d/t\($0).err\" \"$d/end\"" }
        script += "cat \(reports.joined(separator: " "))\nrm -rf \"$d\"\nexit 0\n"
        let whole = Duration.seconds(seconds + 10) * tests.count + .seconds(30)
        // qemu-ga takes a few hundred KiB of input in one message at most: a suite with big
        // test files goes over as a file, in chunks, first.
        let result: GuestExecResult
        if script.utf8.count <= 64 * 1024 {
            result = try await agent.exec(["/bin/sh", "-s"], input: Data(script.utf8), timeout: whole)
        } else {
            let path = "/var/tmp/.changelab-suite.sh"
            try await agent.write(Data(script.utf8), to: path)
            result = try await agent.exec(["/bin/sh", "-c", "sh \(path); rc=$?; rm -f \(path); exit $rc"], timeout: whole)
        }
        guard !result.timedOut else {
            throw ChangelabError("the guest test runner did not finish within \(whole)")
        }
        let outcomes = parse(result.stdoutText, names: names, timeoutSeconds: seconds)
        guard outcomes.count == tests.count else {
            throw ChangelabError(
                "the guest test runner reported \(outcomes.count) of \(tests.count) tests (exit \(result.exitCode))",
                why: CommandResult.tail(of: result.stderrText, lines: 10))
        }
        return outcomes
    }

    /// Reads the runner's report: per test a line `marker token index exit start end` (the
    /// guest's uptime in seconds), its stdout, a separator line, its stderr, an end line.
    static func parse(_ output: String, names: [String], timeoutSeconds: Int) -> [TestOutcome] {
        var outcomes: [TestOutcome] = []
        var rest = Substring(output)
        while let found = rest.range(of: marker) {
            rest = rest[found.upperBound...]
            guard let newline = rest.firstIndex(of: "\n") else { break }
            let fields = rest[..<newline].split(separator: " ")
            rest = rest[rest.index(after: newline)...]
            guard fields.count == 5, let test = Int(fields[1]), names.indices.contains(test),
                let code = Int32(fields[2]), let start = Double(fields[3]), let end = Double(fields[4]),
                let split = rest.range(of: "\n\(separator)\(fields[0])\n"),
                let close = rest.range(of: "\n\(ending)\(fields[0])\n", range: split.upperBound..<rest.endIndex)
            else { continue }
            let out = String(rest[..<split.lowerBound])
            let err = String(rest[split.upperBound..<close.lowerBound])
            rest = rest[close.upperBound...]
            // timeout(1) exits 124 when it had to stop the test (137 when it had to kill it);
            // a test that exits 124 by itself before its time-out is not a time-out.
            let elapsed = max(0, end - start)
            let timedOut = (code == 124 || code == 137) && elapsed >= Double(timeoutSeconds) - 0.5
            let combined = out + err
            outcomes.append(
                TestOutcome(
                    name: names[test], exitCode: timedOut ? -1 : code, timedOut: timedOut, seconds: elapsed,
                    outputTail: CommandResult.tail(of: combined, lines: 20), guestSeconds: elapsed))
        }
        return outcomes
    }
}
