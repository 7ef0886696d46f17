import ArgumentParser
import ChangeControl
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
            For a change record (CHG-0001) the targets and rings are the change's approved scope
            (a wider or other scope is refused here, by the core and by the agents); its built and
            tested artifact is published as release CHG if the core does not have it yet, and its
            lab evidence goes with it. Seeding may start before the release vote.
            A plain release name (with --authorization FILE for activation) works too.
            """)

    @Argument(help: "The change id (or release name).")
    var change: String

    @Option(name: .long, help: "Target query (default for a change record: its scope).")
    var targets: String?

    @Option(name: .long, help: "The release to seed (default: the change id).")
    var release: String?

    @Option(name: .long, help: "Activation rings, e.g. canary:5%,all (default for a change record: its scope).")
    var rings: String?

    @Option(name: .long, help: "Seeding throttle per agent in bytes per second, e.g. 2M.")
    var rate: String?

    @Option(
        name: .long, help: "Health gate: halt before the next ring when a ring's failures exceed this share, e.g. 10%.")
    var maxFailure: String?

    @OptionGroup var approval: AuthorizationOptions
    @OptionGroup var changeContext: ChangeContext
    @OptionGroup var core: CoreOptions
    @OptionGroup var output: OutputOptions

    func run() async throws {
        let rollout = try ChangeRollout.load(change, context: changeContext)
        let scope = rollout?.record.scope
        try rollout?.checkScope(targets: targets, rings: rings)
        guard let targets = targets ?? scope?.targets else {
            throw ValidationError("--targets is needed for a plain release (a change record brings its own scope)")
        }
        let rings = rings ?? scope?.rings ?? "all"
        _ = try TargetQuery.parse(targets)
        _ = try Ring.parseList(rings)
        let rate = try parseRate(rate)
        let maxFailureRate = try parseShare(maxFailure)
        try rollout?.check(.seedingStarted)
        let authorization = try rollout?.authorization() ?? approval.load()
        let report = try await core.withClient { client in
            let release = try await rollout?.publish(with: client) ?? release
            let request = PromoteRequest(
                release: release, targets: targets, rings: rings, rate: rate, maxFailureRate: maxFailureRate,
                authorization: authorization)
            return try await client.promote(change, request)
        }
        try await rollout?.record(.seedingStarted, reason: "seeding \(report.release) to \(report.total.targets) target(s)")
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
    @OptionGroup var changeContext: ChangeContext
    @OptionGroup var core: CoreOptions
    @OptionGroup var output: OutputOptions

    @Flag(name: .long, help: "Emergency changes only: activate inside an open freeze window (recorded).")
    var overrideFreeze = false

    func run() async throws {
        let rollout = try ChangeRollout.load(change, context: changeContext)
        if let rollout {
            guard rollout.record.approval == .releaseApproved else {
                throw ChangelabError(
                    "change \(change) is \(rollout.record.approval.rawValue), not release-approved",
                    fix: "'changelab change show \(change)' lists what blocks the release")
            }
            if let freeze = rollout.store.policy.freeze(at: Date()) {
                guard rollout.record.type == .emergency, overrideFreeze else {
                    throw ChangelabError(
                        "the freeze window '\(freeze.name)' is open: nothing is activated in it",
                        fix: rollout.record.type == .emergency
                            ? "pass --override-freeze (recorded in the change)" : "wait until it ends")
                }
            }
            try rollout.check(.activationStarted)
        }
        let authorization = try rollout?.authorization() ?? approval.load()
        let report = try await core.withClient { try await $0.activate(change, authorization: authorization) }
        try await rollout?.record(
            .activationStarted,
            reason: overrideFreeze ? "activation inside a freeze window (emergency override)" : "activation ordered")
        if output.json { return try printJSON(report) }
        print(
            "activation of \(change) sent (ring \(report.rings.first?.name ?? "all") first); follow it with 'changelab status \(change) --watch'"
        )
    }
}

/// `changelab rollback CHG`: return targets to their pre-install state.
struct RollbackCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rollback", abstract: "Roll a change back on every target that installed it.",
        discussion: """
            Agents undo an install only on a rollback order signed by an approver whose role the
            policy's rollback-roles names: --as NAME signs it with NAME's approver key.
            """)

    @Argument(help: "The change id.")
    var change: String

    @Option(name: .customLong("as"), help: "The approver who orders the rollback (their key signs it).")
    var approver: String?

    @Option(name: .long, help: "Why (recorded in the order and the change).")
    var reason: String = "rolled back"

    @OptionGroup var approval: AuthorizationOptions
    @OptionGroup var changeContext: ChangeContext
    @OptionGroup var core: CoreOptions
    @OptionGroup var output: OutputOptions

    func run() async throws {
        let rollout = try ChangeRollout.load(change, context: changeContext)
        var authorization = try approval.load()
        if let rollout {
            guard let approver else {
                throw ValidationError("name the approver who orders the rollback: --as NAME (a role the policy lets roll back)")
            }
            try rollout.check(.rolledBack)
            let order = try ApproverKeyring.default.key(approver).sign(
                RollbackStatement(
                    change: change, artifact: try rollout.artifact(), approver: approver, reason: reason, signedAt: Date()),
                as: .rollback)
            authorization = try rollout.authorization(rollbacks: [order])
        }
        let report = try await core.withClient { try await $0.rollback(change, authorization: authorization) }
        try await rollout?.record(.rolledBack, reason: "\(reason) (ordered by \(approver ?? "?"))")
        if let rollout { try await rollout.revertAdoptions() }
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

    @OptionGroup var changeContext: ChangeContext
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
            let rollout = try ChangeRollout.load(change, context: changeContext)
            let (report, chase) = try await core.withClient { client -> (StatusReport, [ChaseEntry]?) in
                let report = try await client.status(change)
                guard rollout != nil, report.activationRequested else { return (report, nil) }
                return (report, try await client.chase(change))
            }
            // A change record follows what the engine reports: seeded, deployed, the chase list.
            try await rollout?.follow(report, chase: chase)
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

    @OptionGroup var changeContext: ChangeContext
    @OptionGroup var core: CoreOptions
    @OptionGroup var output: OutputOptions

    func run() async throws {
        let rollout = try ChangeRollout.load(change, context: changeContext)
        let (entries, report) = try await core.withClient { client -> ([ChaseEntry], StatusReport?) in
            let entries = try await client.chase(change)
            guard rollout != nil else { return (entries, nil) }
            return (entries, try await client.status(change))
        }
        // The change record keeps its chase list: who was on it, why, and when they got the change.
        if let rollout, let report { try await rollout.follow(report, chase: report.activationRequested ? entries : nil) }
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
    @Option(name: .long, help: "Target query (default with --change: the change's approved scope).")
    var targets: String?
    @Option(name: .long, help: "The release those targets must have (default with --change: the change id).")
    var release: String?
    @Option(name: .long, help: "The release-approved change record (CHG-0001) the policy carries out.")
    var change: String?

    @OptionGroup var approval: AuthorizationOptions
    @OptionGroup var changeContext: ChangeContext
    @OptionGroup var core: CoreOptions
    @OptionGroup var output: OutputOptions

    func run() async throws {
        let rollout = try change.map { id in
            guard let rollout = try ChangeRollout.load(id, context: changeContext) else {
                throw ChangelabError("'\(id.prefix(40))' is not a change id", fix: "pass a change record's id like CHG-0001")
            }
            // The policy installs the change's own artifact: another release is another package
            // (or build) than the approvers signed.
            if let release, release != id {
                throw ChangelabError(
                    "a policy for change \(id) installs its artifact (\(rollout.record.package) \(rollout.record.version ?? "")), "
                        + "published as release \(id), not release '\(release.prefix(60))'",
                    why: "the approvers signed \(id)'s artifact digest: the core and the agents refuse any other",
                    fix: "drop --release, or propose a change for that package and set the policy with its id")
            }
            guard rollout.record.approval == .releaseApproved, rollout.record.lifecycle == .open else {
                throw ChangelabError(
                    "change \(id) is \(rollout.record.approval.rawValue) and \(rollout.record.lifecycle.rawValue): a policy carries out only an open, release-approved change",
                    fix: "'changelab change show \(id)' lists what blocks the release")
            }
            try rollout.checkScope(targets: targets, rings: nil)
            // A policy installs on each matching target as it qualifies: it has one ring, all.
            guard rollout.record.scope.rings == "all" else {
                throw ChangelabError(
                    "change \(id) was approved with the ring plan '\(rollout.record.scope.rings)': a passive policy installs on "
                        + "every matching target as it qualifies, in one ring",
                    why: "the approvers signed a staged rollout; the core and the agents refuse a policy that skips its rings",
                    fix: "carry the change out with 'changelab promote \(id)' and 'changelab activate \(id)', or give the "
                        + "policy a change approved with the ring plan 'all'")
            }
            return rollout
        }
        guard let targets = targets ?? rollout?.record.scope.targets else {
            throw ValidationError("--targets is needed (or --change CHG, whose approved scope it takes)")
        }
        _ = try TargetQuery.parse(targets)
        guard let authorization = try rollout?.authorization() ?? approval.load() else {
            throw ChangelabError(
                "a policy installs without further orders, so it must carry a release-approved change",
                fix: "pass --change CHG (a release-approved change record), or --authorization FILE with its signed approvals and evidence")
        }
        let policy = try await core.withClient { client in
            guard let release = try await rollout?.publish(with: client) ?? release else {
                throw ValidationError("--release is needed (or --change CHG, published as release CHG)")
            }
            return try await client.setPolicy(name, targets: targets, release: release, authorization: authorization)
        }
        try await rollout?.record(.commented("passive policy \(name): targets matching '\(targets)' must have it"), reason: "policy set")
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
