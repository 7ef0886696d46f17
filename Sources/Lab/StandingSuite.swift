import Foundation
import HostIO
import Libvirt
import Model

/// Runs test executables in a guest: a baseline's standing regression suite, or a
/// package's own tests. A test passes when it exits 0.
public enum StandingSuite {
    /// Where tests are copied in the guest before they run.
    public static let guestDirectory = "/var/tmp/changelab-tests"

    public static func run(
        _ tests: [String], in guest: RestoredGuest, timeout: Duration = .seconds(300), progress: ProgressHandler
    ) async throws -> [TestOutcome] {
        guard !tests.isEmpty else { return [] }
        let agent = guest.agent
        _ = try await agent.exec(["mkdir", "-p", guestDirectory])
        var outcomes: [TestOutcome] = []
        for test in tests {
            let name = (test as NSString).lastPathComponent
            let target = "\(guestDirectory)/\(name)"
            try await agent.upload(file: test, to: target, mode: 0o755)
            let result = try await agent.exec([target], timeout: timeout)
            let combined = result.stdoutText + (result.stderr.isEmpty ? "" : result.stderrText)
            let outcome = TestOutcome(
                name: name, exitCode: result.exitCode, timedOut: result.timedOut, seconds: result.seconds,
                outputTail: CommandResult.tail(of: combined, lines: 20))
            progress(
                LabProgress(
                    subject: guest.image.name,
                    message: "  \(outcome.passed ? "pass" : "FAIL") \(name)"
                        + (outcome.passed ? "" : outcome.timedOut ? " (timed out)" : " (exit \(outcome.exitCode))")))
            outcomes.append(outcome)
        }
        return outcomes
    }
}
