import ArgumentParser

/// The `changelab` command: carries one software change from the lab to the fleet.
public struct Changelab: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "changelab",
        abstract: "Software change management for Linux fleets: lab, matrix, CMDB, change control, distribution.",
        version: "0.1.0",
        subcommands: []
    )

    public init() {}
}
