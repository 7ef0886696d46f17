import ArgumentParser
import Distribution
import Foundation
import Model

/// Where a rollout command finds the change's signed authorization (trust root chain, lab
/// evidence, approvals): a file written by change control.
struct AuthorizationOptions: ParsableArguments {
    @Option(
        name: .long,
        help: ArgumentHelp(
            "The change's signed authorization (JSON: trust root chain, lab evidence, release approvals).",
            valueName: "file"))
    var authorization: String?

    func load() throws -> ChangeAuthorization? {
        guard let path = authorization else { return nil }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ChangelabError("cannot read the authorization file \(path)", fix: "check the path")
        }
        do {
            return try StableJSON.decode(ChangeAuthorization.self, from: data)
        } catch {
            throw ChangelabError(
                "\(path) is not a change authorization", why: "\(error)",
                fix: "write it with change control (the file holds trustRoots, evidence and approvals)")
        }
    }
}

/// `changelab promote CHG --targets QUERY`: create the seeding job.
struct PromoteCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "promote",
        abstract: "Seed a change's release into the caches of the targets a query selects.",
        discussion: """
            Targets are selected on reported inventory and attributes, for example
              'site = paris and department = finance'   'package:openssl < 3.0.13'   'os.version >= 12'   'all'
            Until change control lands, CHG may be a plain release name.
            """)

    @Argument(help: "The change id (or release name).")
    var change: String

    @Option(name: .long, help: "Target query.")
    var targets: String

    @Option(name: .long, help: "The release to seed (default: the change id).")
    var release: String?

    @Option(name: .long, help: "Activation rings, e.g. canary:5%,all.")
    var rings: String = "all"

    @Option(name: .long, help: "Seeding throttle per agent in bytes per second, e.g. 2M.")
    var rate: String?

    @Option(
        name: .long, help: "Health gate: halt before the next ring when a ring's failures exceed this share, e.g. 10%.")
    var maxFailure: String?

    @OptionGroup var approval: AuthorizationOptions
    @OptionGroup var core: CoreOptions
    @OptionGroup var output: OutputOptions

    func run() async throws {
        _ = try TargetQuery.parse(targets)
        _ = try Ring.parseList(rings)
        let request = PromoteRequest(
            release: release, targets: targets, rings: rings, rate: try parseRate(rate),
            maxFailureRate: try parseShare(maxFailure), authorization: try approval.load())
        let report = try await core.withClient { try await $0.promote(change, request) }
        if output.json { return try printJSON(report) }
        print("promoted \(change): seeding \(report.release) to \(report.total.targets) target(s)")
        print(StatusText.render(report))
    }
}

/// `changelab activate CHG`: send the signed activation.
struct ActivateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "activate", abstract: "Activate a seeded change: every seeded target installs from its cache.")

    @Argument(help: "The change id.")
    var change: String

    @OptionGroup var approval: AuthorizationOptions
    @OptionGroup var core: CoreOptions
    @OptionGroup var output: OutputOptions

    func run() async throws {
        let authorization = try approval.load()
        let report = try await core.withClient { try await $0.activate(change, authorization: authorization) }
        if output.json { return try printJSON(report) }
        print(
            "activation of \(change) sent (ring \(report.rings.first?.name ?? "all") first); follow it with 'changelab status \(change) --watch'"
        )
    }
}

/// `changelab rollback CHG`: return targets to their pre-install state.
struct RollbackCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rollback", abstract: "Roll a change back on every target that installed it.")

    @Argument(help: "The change id.")
    var change: String

    @OptionGroup var approval: AuthorizationOptions
    @OptionGroup var core: CoreOptions
    @OptionGroup var output: OutputOptions

    func run() async throws {
        let authorization = try approval.load()
        let report = try await core.withClient { try await $0.rollback(change, authorization: authorization) }
        if output.json { return try printJSON(report) }
        print("rollback of \(change) sent to \(report.total.activated + report.total.failed) target(s)")
    }
}

/// `changelab status [CHG] [--watch]`.
struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status", abstract: "Show a change's progress per segment (all changes without CHG).")

    @Argument(help: "The change id.")
    var change: String?

    @Flag(name: .long, help: "Keep the display up to date from the core's live status stream.")
    var watch = false

    @OptionGroup var core: CoreOptions
    @OptionGroup var output: OutputOptions

    func run() async throws {
        guard let change else {
            let reports = try await core.withClient { try await $0.changes() }
            if output.json { return try printJSON(reports) }
            if reports.isEmpty { print("no changes promoted") }
            for report in reports { print(StatusText.render(report) + "\n") }
            return
        }
        guard watch else {
            let report = try await core.withClient { try await $0.status(change) }
            return output.json ? try printJSON(report) : print(StatusText.render(report))
        }
        let json = output.json
        try await core.withClient { client in
            try await client.watch(change) { report in
                if json {
                    print(try jsonLine(report))
                } else {
                    // Clear the screen and redraw, like watch(1).
                    print("\u{1B}[H\u{1B}[2J" + StatusText.render(report))
                }
            }
        }
    }
}

/// `changelab chase CHG [--csv]`: the chase list.
struct ChaseCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "chase", abstract: "List targets that do not have the change, each with a classified reason.")

    @Argument(help: "The change id.")
    var change: String

    @Flag(name: .long, help: "Print CSV (for a spreadsheet or a ticket system).")
    var csv = false

    @OptionGroup var core: CoreOptions
    @OptionGroup var output: OutputOptions

    func run() async throws {
        let entries = try await core.withClient { try await $0.chase(change) }
        if output.json { return try printJSON(entries) }
        if csv { return FileHandle.standardOutput.write(Data(ChaseEntry.csv(entries).utf8)) }
        print(StatusText.render(chase: entries))
    }
}

/// `changelab policy …`: passive deployment.
struct PolicyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "policy", abstract: "Passive deployment: targets matching a query must have a release.",
        subcommands: [PolicySetCommand.self, PolicyListCommand.self, PolicyRemoveCommand.self])
}

struct PolicySetCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "set",
        abstract: "Create or change a policy; enforced at every check-in, also for agents that join later.")

    @Argument(help: "Policy name.")
    var name: String
    @Option(name: .long, help: "Target query.")
    var targets: String
    @Option(name: .long, help: "The release those targets must have.")
    var release: String

    @OptionGroup var approval: AuthorizationOptions
    @OptionGroup var core: CoreOptions
    @OptionGroup var output: OutputOptions

    func run() async throws {
        _ = try TargetQuery.parse(targets)
        guard let authorization = try approval.load() else {
            throw ChangelabError(
                "a policy installs without further orders, so it must carry a release-approved change",
                fix: "pass --authorization FILE with the change's signed approvals and evidence")
        }
        let policy = try await core.withClient {
            try await $0.setPolicy(name, targets: targets, release: release, authorization: authorization)
        }
        if output.json { return try printJSON(policy) }
        print(
            "policy \(policy.name): targets matching '\(policy.query)' must have \(policy.release) (change \(policy.change))"
        )
    }
}

struct PolicyListCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List policies.")
    @OptionGroup var core: CoreOptions
    @OptionGroup var output: OutputOptions

    func run() async throws {
        let policies = try await core.withClient { try await $0.policies() }
        if output.json { return try printJSON(policies) }
        for p in policies { print("\(p.name): '\(p.query)' must have \(p.release)") }
    }
}

struct PolicyRemoveCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "remove", abstract: "Remove a policy.")
    @Argument(help: "Policy name.")
    var name: String
    @OptionGroup var core: CoreOptions

    func run() async throws {
        try await core.withClient { try await $0.removePolicy(name) }
        print("removed policy \(name)")
    }
}
