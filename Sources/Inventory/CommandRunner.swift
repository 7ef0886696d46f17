import Foundation
import HostIO

/// Runs one shell script somewhere — on this host, in a lab guest through its agent, in a
/// fleet agent's root — and returns what it printed.
///
/// The collector sends exactly one script per inventory: under emulation each guest-agent
/// round trip is slow, so everything is gathered in one go and parsed here.
public protocol CommandRunner: Sendable {
    func runShell(_ script: String, timeout: Duration) async throws -> CommandResult
}

/// Runs scripts with this host's `/bin/sh`, fed on standard input.
public struct LocalShell: CommandRunner {
    public init() {}

    public func runShell(_ script: String, timeout: Duration) async throws -> CommandResult {
        try await HostCommand.run("/bin/sh", ["-s"], input: Data(script.utf8), timeout: timeout)
    }
}
