import ArgumentParser
import CMDB
import ChangeControl
import Foundation
import HostIO
import Model

struct ChangeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "change",
        abstract: "Change records: propose, approve by signature, gate on the lab's evidence, follow up.",
        discussion: """
            A change has two dimensions that run side by side. Approval: proposed → preliminarily-approved \
            → built-and-tested → release-approved. Delivery: not-started → seeding → seeded → activating → \
            deployed (or rolled-back). Its lifecycle is open, postponed, rejected, cancelled, reviewed or \
            closed. Every step is one CMDB commit: 'changelab cmdb log change:CHG-0001' is its audit trail.
            """,
        subcommands: [
            Propose.self, Show.self, List.self, Edit.self, Evidence.self, Approve.self, Reject.self,
            ImportApproval.self, Release.self, Postpone.self, Resume.self, Cancel.self, Comment.self, Review.self,
            Close.self, Metrics.self,
        ]
    )

    struct Propose: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Propose a change to the CCB, with an impact assessment from the CMDB.",
            discussion: """
                Example: changelab change propose --package greeterd --title "greeterd 1.1.0" \
                --need "greet in French" --targets "segment = s1 or segment = s2" --rings canary:10%,all
                """)
        @OptionGroup var context: ChangeContext
        @OptionGroup var output: OutputOptions
        @Option(help: "The package the change installs.") var package: String
        @Option(help: "A one-line title.") var title: String
        @Option(help: "Why the change is needed.") var need: String
        @Option(help: "The business benefit.") var benefit: String?
        @Option(help: "standard, normal or emergency.") var type: ChangeType = .normal
        @Option(help: "Which fleet targets (a query over the CMDB's targets, or 'all').") var targets = "all"
        @Option(help: "The ring plan, e.g. canary:5%,all.") var rings = "all"
        @Option(help: "Seeding rate for the estimate (bytes per second, or 10MiB); default: the policy's.")
        var rate: String?

        func run() async throws {
            let parsedRate = try rate.map { text in
                guard let value = PolicyFile.bytesPerSecond(text), value > 0 else {
                    throw ChangelabError("--rate '\(text.prefix(40))' is not a rate", fix: "pass bytes per second, e.g. --rate 10MiB")
                }
                return value
            }
            let record = try await context.writing { store in
                try await store.propose(
                    ChangeStore.Proposal(
                        title: title, need: need, benefit: benefit, type: type, package: package,
                        scope: ChangeScope(targets: targets, rings: rings), rate: parsedRate))
            }
            if output.json { return try printJSON(record) }
            print("proposed \(record.id): \(record.title) (\(record.type.rawValue) change of \(record.package))")
            if let impact = record.impact { print(ChangeView.impact(impact), terminator: "") }
            print("next: \(record.nextStep)")
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "A change: both dimensions, what blocks the next step, evidence, approvals, timeline.")
        @OptionGroup var context: ChangeContext
        @OptionGroup var output: OutputOptions
        @Argument(help: "The change id, e.g. CHG-0001.") var id: String

        func run() async throws {
            let store = try context.reading()
            let view = try ChangeView(try store.read(id), store: store)
            if output.json { return try printJSON(view) }
            print(view.text, terminator: "")
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The changes, with their state and next step.")
        @OptionGroup var context: ChangeContext
        @OptionGroup var output: OutputOptions
        @Option(help: "Only changes in this state (an approval, delivery or lifecycle state).") var state: String?

        struct Row: Encodable {
            var id: String
            var title: String
            var type: ChangeType
            var package: String
            var approval: ApprovalState
            var delivery: DeliveryState
            var lifecycle: ChangeLifecycle
            var requester: String
            var next: String
        }

        func run() async throws {
            let known = ApprovalState.allCases.map(\.rawValue) + DeliveryState.allCases.map(\.rawValue)
                + ChangeLifecycle.allCases.map(\.rawValue)
            if let state, !known.contains(state) {
                throw ChangelabError("unknown state '\(state.prefix(40))'", fix: "use one of: \(known.joined(separator: ", "))")
            }
            let records = ChangeStore.all(in: try context.cmdbOptions.store()).filter { record in
                guard let state else { return true }
                return [record.approval.rawValue, record.delivery.rawValue, record.lifecycle.rawValue].contains(state)
            }
            let rows = records.map {
                Row(
                    id: $0.id, title: $0.title, type: $0.type, package: $0.package, approval: $0.approval,
                    delivery: $0.delivery, lifecycle: $0.lifecycle, requester: $0.requester, next: $0.nextStep)
            }
            if output.json { return try printJSON(rows) }
            var table = Table("ID", "TYPE", "PACKAGE", "APPROVAL", "DELIVERY", "LIFECYCLE", "NEXT", "TITLE")
            for row in rows {
                table.add(
                    row.id, row.type.rawValue, row.package, row.approval.rawValue, row.delivery.rawValue,
                    row.lifecycle.rawValue, row.next, row.title)
            }
            table.print()
        }
    }

    struct Edit: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write the change's plan: risk, back-out, staffing, training, communication; or its scope.")
        @OptionGroup var context: ChangeContext
        @Argument(help: "The change id.") var id: String
        @Option(help: "The risk assessment.") var risk: String?
        @Option(help: "The back-out plan.") var backout: String?
        @Option(help: "Who does the work, when.") var staffing: String?
        @Option(help: "User and helpdesk training.") var training: String?
        @Option(help: "The communication plan.") var communication: String?
        @Option(help: "New target query (only before release approvers signed).") var targets: String?
        @Option(help: "New ring plan (only before release approvers signed).") var rings: String?

        func run() async throws {
            let plan = ChangePlan(staffing: staffing, training: training, communication: communication, risk: risk, backout: backout)
            guard plan != ChangePlan() || targets != nil || rings != nil else {
                throw ChangelabError("nothing to edit", fix: "pass --risk, --backout, --staffing, --training, --communication, --targets or --rings")
            }
            let record = try await context.writing { store in
                var record = try store.read(id)
                if plan != ChangePlan() { record = try await store.apply(.edited(plan), to: id) }
                if targets != nil || rings != nil {
                    let scope = ChangeScope(targets: targets ?? record.scope.targets, rings: rings ?? record.scope.rings)
                    _ = try ScopedTargets(query: scope.targets, store: store.store)
                    record = try await store.apply(.scoped(scope), to: id)
                }
                return record
            }
            print("\(record.id) edited")
        }
    }

    struct Evidence: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Record the built artifact and its matrix runs: the change becomes built and tested.",
            discussion: """
                Default: the package's newest artifact with a finished matrix run. A new digest is a rebuild: \
                it voids the release approvals of the old one. For a released emergency change, records the \
                full normal lanes after the fact.
                """)
        @OptionGroup var context: ChangeContext
        @Argument(help: "The change id.") var id: String
        @Option(help: "The artifact digest (sha256:…).") var artifact: String?
        @Option(name: .customLong("run"), parsing: .singleValue, help: "Only this matrix run of the artifact (repeatable; default: all of its finished runs).")
        var runs: [String] = []

        func run() async throws {
            let digest = try artifact.map { try parseDigest($0, what: "--artifact") }
            let record = try await context.writing {
                try await $0.attachEvidence(id, artifact: digest, runs: runs.isEmpty ? nil : runs)
            }
            print("\(record.id): artifact \(record.artifact?.description ?? "?") tested in \(record.evidenceRuns.joined(separator: ", "))")
            print("next: \(record.nextStep)")
        }
    }

    struct Approve: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Sign a stage of a change with your approver key and record it (or write it with --out).",
            discussion: """
                The release stage signs the artifact digest, the digests of the lab's evidence and the scope; \
                it is refused, with the list of what is missing, unless every required lane is green on every \
                approved baseline and on every baseline the targets run. Example: changelab change approve \
                CHG-0001 --stage release --as alice
                """)
        @OptionGroup var context: ChangeContext
        @Argument(help: "The change id.") var id: String
        @Option(help: "preliminary or release.") var stage: ChangeStage
        @Option(name: .customLong("as"), help: "Your approver name (the key in ~/.config/changelab/approvers).")
        var approver: String
        @Option(help: "A comment the signature covers.") var comment: String?
        @Option(help: "Only write the signed approval to this file (record it with change import-approval).")
        var out: String?

        func run() async throws {
            try await Self.sign(.approve, context: context, id: id, stage: stage, approver: approver, comment: comment, out: out)
        }

        static func sign(
            _ decision: ApprovalDecision, context: ChangeContext, id: String, stage: ChangeStage, approver: String,
            comment: String?, out: String?
        ) async throws {
            let key = try ApproverKeyring.default.key(approver)
            let policy = try context.policy()
            guard let listed = policy.approver(with: key.publicKey) else {
                throw ChangelabError(
                    "\(approver)'s key is not on the policy's trust list",
                    fix: "register it (changelab approver keygen registers new keys) and sign a new trust root")
            }
            if let out {
                let store = try context.reading()
                let statement = try store.statement(for: id, stage: stage, decision: decision, approver: listed.name, comment: comment)
                let envelope = try key.sign(statement, as: .approval)
                _ = try store.verify(envelope, for: try store.read(id))
                try AtomicFile.write(try StableJSON.data(envelope), to: out)
                print("wrote \(decision.rawValue) of \(id) (\(stage.rawValue)) signed by \(listed.name) to \(out)")
                return
            }
            let record = try await context.writing { store in
                try await store.approve(id, stage: stage, decision: decision, approver: listed.name, key: key, comment: comment)
            }
            printVote(record, stage: stage, policy: policy)
        }
    }

    struct Reject: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Sign a rejection of a stage: one rejection rejects the change.")
        @OptionGroup var context: ChangeContext
        @Argument(help: "The change id.") var id: String
        @Option(help: "preliminary or release.") var stage: ChangeStage
        @Option(name: .customLong("as"), help: "Your approver name.") var approver: String
        @Option(help: "Why.") var comment: String?
        @Option(help: "Only write the signed rejection to this file.") var out: String?

        func run() async throws {
            try await Approve.sign(.reject, context: context, id: id, stage: stage, approver: approver, comment: comment, out: out)
        }
    }

    struct ImportApproval: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "import-approval", abstract: "Record an approval an approver signed on their own machine.")
        @OptionGroup var context: ChangeContext
        @Argument(help: "The change id.") var id: String
        @Argument(help: "The signed approval file.") var file: String

        func run() async throws {
            let envelope = try readEnvelope(file)
            let policy = try context.policy()
            let record = try await context.writing { try await $0.record(envelope, for: id) }
            let stage = record.approvals.last?.stage ?? .preliminary
            printVote(record, stage: stage, policy: policy)
        }
    }

    struct Release: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Release a standard change: no votes, but the evidence gate.")
        @OptionGroup var context: ChangeContext
        @Argument(help: "The change id.") var id: String

        func run() async throws {
            let record = try await context.writing { try await $0.releaseStandard(id) }
            print("\(record.id) is \(record.approval.rawValue)")
        }
    }

    struct Postpone: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Postpone a change (resume it later).")
        @OptionGroup var context: ChangeContext
        @Argument(help: "The change id.") var id: String
        @Option(help: "Why.") var reason: String

        func run() async throws { try await lifecycle(.postponed, context: context, id: id, reason: reason) }
    }

    struct Resume: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Resume a postponed change.")
        @OptionGroup var context: ChangeContext
        @Argument(help: "The change id.") var id: String
        @Option(help: "Why.") var reason: String?

        func run() async throws { try await lifecycle(.resumed, context: context, id: id, reason: reason) }
    }

    struct Cancel: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Cancel a change that is not being activated.")
        @OptionGroup var context: ChangeContext
        @Argument(help: "The change id.") var id: String
        @Option(help: "Why.") var reason: String

        func run() async throws { try await lifecycle(.cancelled, context: context, id: id, reason: reason) }
    }

    struct Comment: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Add a comment to a change.")
        @OptionGroup var context: ChangeContext
        @Argument(help: "The change id.") var id: String
        @Argument(help: "The comment.") var text: String

        func run() async throws { try await lifecycle(.commented(text), context: context, id: id, reason: nil) }
    }
}

/// Applies a lifecycle event and says where the change stands.
func lifecycle(_ event: ChangeEvent, context: ChangeContext, id: String, reason: String?) async throws {
    let record = try await context.writing { try await $0.apply(event, to: id, reason: reason) }
    print("\(record.id): \(event.name) recorded; lifecycle \(record.lifecycle.rawValue)")
}

/// Says what a recorded vote did to its stage.
private func printVote(_ record: ChangeRecord, stage: ChangeStage, policy: ApprovalPolicy) {
    let rule = policy.rule(for: record.type)
    let needed = (stage == .preliminary ? rule?.preliminary : rule?.release)?.approvals ?? 0
    let have = Set(record.approvals(stage).map(\.key)).count
    let last = record.approvals.last
    print("\(record.id): \(last?.decision.rawValue ?? "vote") by \(last?.signer ?? "?") recorded (\(stage.rawValue): \(have) of \(needed))")
    print("\(record.id) is \(record.approval.rawValue), \(record.lifecycle.rawValue); next: \(record.nextStep)")
}
