import ArgumentParser
import Foundation
import HostIO

/// The `changelab` command: carries one software change from the lab to the fleet.
public struct Changelab: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "changelab",
        abstract: "Software change management for Linux fleets: lab, matrix, CMDB, change control, distribution.",
        version: "0.1.0",
        subcommands: [
            BaselineCommand.self, LabCommand.self, PackageCommand.self, MatrixCommand.self, DoctorCommand.self,
            BenchCommand.self, CMDBCommand.self, InventoryCommand.self, MulticastCommand.self,
            CoreCommand.self, AgentCommand.self, PromoteCommand.self, ActivateCommand.self, RollbackCommand.self,
            StatusCommand.self, ChaseCommand.self, PolicyCommand.self, ChangeCommand.self, ApproverCommand.self,
            TrustRootCommand.self,
        ]
    )

    public init() {}

    /// Parses the command line and runs it; Ctrl-C or SIGTERM cancels the running command
    /// so scoped resources (VMs, overlays, temp images) are torn down, then exits 130.
    public static func runMain() async {
        let interrupted = AtomicFlag()
        let task = Task {
            do {
                var command = try parseAsRoot()
                if var asyncCommand = command as? AsyncParsableCommand {
                    try await asyncCommand.run()
                } else {
                    try command.run()
                }
            } catch {
                // After Ctrl-C or SIGTERM, whatever error unwinds (a killed debootstrap, a
                // cancelled restore) is a consequence of the interrupt, not a failure.
                if interrupted.isSet || error is CancellationError {
                    FileHandle.standardError.write(Data("changelab: interrupted; cleaned up\n".utf8))
                    Foundation.exit(130)
                }
                exit(withError: error)
            }
        }
        let trap = InterruptTrap {
            interrupted.set()
            task.cancel()
        }
        await task.value
        withExtendedLifetime(trap) {}
    }
}
