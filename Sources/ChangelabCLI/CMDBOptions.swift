import ArgumentParser
import CMDB
import Foundation
import Model

/// `--cmdb PATH`: which CMDB a command reads or writes. Without it, `$CHANGELAB_CMDB`, else
/// `cmdb/` in the project (`--root`, default the current folder).
struct CMDBOptions: ParsableArguments {
    @Option(
        name: .long,
        help: ArgumentHelp(
            "The CMDB folder (default: $CHANGELAB_CMDB, else cmdb/ in the project).", valueName: "path"))
    var cmdb: String?

    @OptionGroup var projectOptions: ProjectOptions

    /// The CMDB folder this command uses.
    func path() throws -> String {
        if let cmdb, !cmdb.isEmpty { return cmdb }
        if let fromEnvironment = ProcessInfo.processInfo.environment["CHANGELAB_CMDB"], !fromEnvironment.isEmpty {
            return fromEnvironment
        }
        return try projectOptions.project().defaultCMDB
    }

    /// Opens the CMDB for reading.
    func store() throws -> CMDBStore { try CMDBStore.open(try path()) }
}

/// `--actor NAME`: who a write is recorded as.
struct ActorOptions: ParsableArguments {
    @Option(
        name: .long,
        help: ArgumentHelp("Who the commit names (default: $CHANGELAB_ACTOR, else USER@host).", valueName: "name"))
    var actor: String?

    var name: String { actor ?? CMDBWriter.defaultActor }
}
