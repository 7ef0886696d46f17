import ArgumentParser
import CMDB
import Foundation
import Inventory
import Model

struct CMDBCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cmdb",
        abstract: "Read, query and check the CMDB: baselines, inventories, artifacts, runs, cells, fleet targets.",
        discussion: """
            Items are written KIND:ID — baseline:web@2 (baseline:web is the newest version), cell:RUN/CELL, \
            run:RUN, artifact:DIGEST, target:NAME, inventory:DIGEST, change:ID; digests may be shortened to a \
            unique prefix. Without a kind, NAME@N is a baseline version and RUN/CELL a cell.
            """,
        subcommands: [
            Show.self, Log.self, Diff.self, Query.self, Verify.self, Checkpoint.self, Export.self, Init.self,
            Recover.self, Upgrade.self, Key.self, RecordTarget.self,
        ]
    )

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one item: its record and its deltas.")
        @OptionGroup var options: CMDBOptions
        @OptionGroup var output: OutputOptions
        @Argument(help: "The item, for example baseline:web, cell:run-7/web, target:paris-1.") var item: String

        func run() async throws {
            let store = try options.store()
            let reference = try store.resolve(item)
            switch reference.kind {
            case .baseline: try show(try store.read(BaselineVersionRecord.self, reference.id), store)
            case .cell: try show(try store.read(CellRecord.self, reference.id))
            case .run: try show(try store.read(RunRecord.self, reference.id), store)
            case .artifact: try show(try store.read(ArtifactRecord.self, reference.id))
            case .target: try show(try store.read(TargetRecord.self, reference.id), store)
            case .inventory: try show(try store.read(InventoryRecord.self, reference.id).snapshot, reference)
            case .change:
                FileHandle.standardOutput.write(store.data(of: reference) ?? Data())
            }
        }

        func show(_ record: BaselineVersionRecord, _ store: CMDBStore) throws {
            if output.json { return try printJSON(record) }
            var lines = [
                "baseline \(record.ref) (\(record.origin.rawValue)), recorded \(record.recordedAt)",
                "inventory  \(record.inventory.short)  \(counts(try store.inventory(record.inventory)))",
            ]
            if let image = record.imageDigest { lines.append("image      \(image.short)") }
            if let recipe = record.recipeDigest { lines.append("recipe     \(recipe.short)") }
            if let notes = record.notes { lines.append("notes      \(notes)") }
            if let adoption = record.adoption {
                lines.append(
                    "adopted    from cell \(adoption.run)/\(adoption.cell), artifact \(adoption.artifact.short)"
                        + (adoption.change.map { ", change \($0)" } ?? ""))
                lines.append("")
                lines.append("changes since \(record.name)@\(record.previousVersion ?? 0):")
                lines.append(indent(adoption.delta.summary()))
            }
            write(lines)
        }

        func show(_ cell: CellRecord) throws {
            if output.json { return try printJSON(cell) }
            var lines = [
                "cell \(cell.recordID): \(cell.verdict.rawValue)"
                    + (cell.failure.map { " (\($0.rawValue)\(cell.reason.map { ": \($0)" } ?? ""))" } ?? ""),
                "baseline   \(cell.baseline)",
                "artifact   \(cell.artifact.short)",
                "started    \(cell.startedAt), \(Int(cell.seconds)) s, \(cell.attempts) attempt(s)",
            ]
            for test in cell.tests { lines.append("test       \(test.passed ? "pass" : "FAIL")  \(test.name)") }
            if !cell.violations.isEmpty {
                lines.append("outside the expected delta:")
                lines += cell.violations.map { "  \($0)" }
            }
            lines.append("")
            lines.append("install delta:")
            lines.append(indent(cell.installDelta.summary()))
            if let residue = cell.residue {
                lines.append("residue after uninstall:")
                lines.append(indent(residue.summary()))
            }
            write(lines)
        }

        func show(_ run: RunRecord, _ store: CMDBStore) throws {
            let cells = try store.cells(ofRun: run.id)
            struct RunView: Encodable {
                var run: RunRecord
                var cells: [CellRecord]
            }
            if output.json { return try printJSON(RunView(run: run, cells: cells)) }
            write([
                "run \(run.id): \(run.status.rawValue), artifact \(run.artifact.short), started \(run.startedAt)"
                    + (run.actor.map { " by \($0)" } ?? "")
            ])
            var table = Table("CELL", "BASELINE", "VERDICT", "CHANGES", "VIOLATIONS")
            for cell in cells {
                table.add(
                    cell.name, cell.baseline.description,
                    cell.verdict.rawValue + (cell.failure.map { " (\($0.rawValue))" } ?? ""),
                    "\(cell.installDelta.entries.count)", "\(cell.violations.count)")
            }
            table.print()
        }

        func show(_ artifact: ArtifactRecord) throws {
            if output.json { return try printJSON(artifact) }
            write([
                "artifact \(artifact.digest)", "package    \(artifact.package) \(artifact.version)",
                "size       \(artifact.size.map { "\($0) bytes" } ?? "-")", "recorded   \(artifact.recordedAt)",
            ])
        }

        func show(_ target: TargetRecord, _ store: CMDBStore) throws {
            if output.json { return try printJSON(target) }
            var lines = ["target \(target.name)"]
            lines += target.attributes.sorted { $0.key < $1.key }.map { "  \($0.key) = \($0.value)" }
            lines.append("baseline   \(target.baseline?.description ?? "-")")
            if let digest = target.inventory {
                lines.append(
                    "inventory  \(digest.short)  \(counts(try store.inventory(digest))), reported "
                        + (target.reportedAt.map { "\($0)" } ?? "-"))
                if let baseline = target.baseline {
                    lines.append("")
                    lines.append("drift from \(baseline):")
                    lines.append(
                        indent(try store.diff(baseline.reference, CMDBReference(.target, target.name)).summary()))
                }
            }
            write(lines)
        }

        func show(_ snapshot: InventorySnapshot, _ reference: CMDBReference) throws {
            if output.json { return try printJSON(snapshot) }
            write([
                "inventory \(reference.id)",
                "host       \(snapshot.hostname), \(snapshot.os.prettyName), kernel \(snapshot.kernel.release)",
                "contents   \(counts(snapshot))",
            ])
        }

        func counts(_ snapshot: InventorySnapshot) -> String {
            "\(snapshot.packages.count) packages, \(snapshot.files.count) files, \(snapshot.units.count) units, "
                + "\(snapshot.users.count) users, \(snapshot.ports.count) ports"
        }
    }

    struct Log: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "The audit trail: transactions newest first, or those that wrote one item.")
        @OptionGroup var options: CMDBOptions
        @OptionGroup var output: OutputOptions
        @Argument(help: "Only transactions that wrote this item.") var item: String?
        @Option(name: .long, help: "Show at most this many.") var limit: Int?

        func run() async throws {
            let store = try options.store()
            let reference = try item.map { try store.resolve($0) }
            if let limit, limit < 1 {
                throw ChangelabError("--limit \(limit) is not a positive number", fix: "pass --limit 20, for example")
            }
            let entries = try await store.log(reference, limit: limit)
            if output.json { return try printJSON(entries) }
            var table = Table("DATE", "ACTOR", "OPERATION", "COMMIT", "MESSAGE")
            let format = ISO8601DateFormatter()
            for entry in entries {
                table.add(
                    format.string(from: entry.date), entry.actor, entry.operation, String(entry.commit.prefix(12)),
                    entry.message)
            }
            table.print()
        }
    }

    struct Diff: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Compare two configurations: baseline versions, a cell, a target (drift), inventories.",
            discussion: """
                Examples: cmdb diff web@1 web@2 (what adoption changed); cmdb diff baseline:web cell:run-7/web \
                (what the install changed); cmdb diff baseline:web target:paris-1 (drift).
                """)
        @OptionGroup var options: CMDBOptions
        @OptionGroup var output: OutputOptions
        @Argument(help: "The configuration before.") var from: String
        @Argument(help: "The configuration after.") var to: String

        struct View: Encodable {
            var from: String
            var to: String
            var delta: ConfigurationDelta
        }

        func run() async throws {
            let store = try options.store()
            let a = try store.resolve(from)
            let b = try store.resolve(to)
            let delta = try store.diff(a, b)
            if output.json { return try printJSON(View(from: a.description, to: b.description, delta: delta)) }
            write(["\(a) → \(b)", delta.summary()], terminator: "")
        }
    }

    struct Query: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Which baselines, cells or fleet targets match an expression.",
            discussion: """
                Predicates: package:NAME [installed|absent|OP VERSION], file:PATH [exists|absent|added|removed|\
                modified|changed|FIELD OP VALUE], service:NAME [enabled|disabled|active|inactive|…], \
                user:NAME, group:NAME, port:[tcp/|udp/]N [open|closed|added|removed], and attributes such as \
                kind, name, site, department, os, os.version, kernel, baseline, verdict, package: ATTRIBUTE OP \
                VALUE. Combine with and, or, not and parentheses. Versions compare by dpkg's rules. \
                Example: 'package:openssl < 3.0.13 and site = paris'.
                """)
        @OptionGroup var options: CMDBOptions
        @OptionGroup var output: OutputOptions
        @Option(name: .long, help: "Only items of this kind: baseline, cell or target (repeatable).")
        var kind: [String] = []
        @Argument(help: "The query, quoted as one argument.") var expression: String

        func run() async throws {
            let query = try Model.Query(expression)
            let queryable: [CMDBRecordKind] = [.baseline, .cell, .target]
            let kinds = try Set(
                kind.map { name in
                    guard let kind = CMDBRecordKind(rawValue: name), queryable.contains(kind) else {
                        throw ChangelabError(
                            "--kind \(name) cannot be queried", fix: "use --kind baseline, --kind cell or --kind target"
                        )
                    }
                    return kind
                })
            let matches = try await options.store().query(query, kinds: kinds)
            if output.json { return try printJSON(matches) }
            var table = Table("KIND", "ID", "DETAILS")
            for match in matches {
                let details = ["site", "department", "baseline", "verdict", "origin", "package"].compactMap { key in
                    match.attributes[key].map { "\(key)=\($0)" }
                }
                table.add(match.kind.rawValue, match.id, details.joined(separator: " "))
            }
            if !matches.isEmpty { table.print() }
            note("\(matches.count) match\(matches.count == 1 ? "" : "es")")
        }
    }

    struct Verify: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check every record, reference, commit signature, the work tree against history, and git fsck.",
            discussion: """
                Every commit must be signed by a writer key the trusted keys file lists (unsigned commits only below \
                the checkpoint 'cmdb upgrade' writes). --against compares the head with a replica or a checkpoint \
                file, which finds a rewritten or rolled-back history. Exit status 1 when anything is wrong.
                """)
        @OptionGroup var options: CMDBOptions
        @OptionGroup var output: OutputOptions
        @Option(
            name: .long,
            help: ArgumentHelp(
                "The writer public keys to trust (default: ~/.config/changelab/cmdb-trusted-keys.json, or "
                    + "$CHANGELAB_CMDB_KEYS/cmdb-trusted-keys.json).", valueName: "file"))
        var trustedKeys: String?
        @Option(
            name: .long,
            help: ArgumentHelp(
                "A replica (git remote name, URL or path) or a checkpoint file whose head must be in this history.",
                valueName: "remote-or-file"))
        var against: String?

        func run() async throws {
            if let trustedKeys, !FileManager.default.fileExists(atPath: trustedKeys) {
                throw ChangelabError(
                    "--trusted-keys \(trustedKeys) does not exist",
                    fix: "pass the trusted writer keys file (a writer's own is ~/.config/changelab/cmdb-trusted-keys.json)")
            }
            let report = try await options.store().verify(trustedKeys: trustedKeys, against: against)
            if output.json {
                try printJSON(report)
            } else {
                for finding in report.problems { write(["problem: \(finding)"]) }
                for finding in report.warnings { write(["warning: \(finding)"]) }
                let records = report.records.values.reduce(0, +)
                write([
                    "\(report.path): \(report.passed ? "OK" : "\(report.problems.count) problem(s)") — \(records) records, "
                        + "\(report.commits) commits, checked in \(String(format: "%.2f", report.seconds)) s"
                ])
            }
            if !report.passed { throw ExitCode(1) }
        }
    }

    struct Checkpoint: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Verify the CMDB, then record its head in a file for 'cmdb verify --against FILE'.",
            discussion: "Keep the file where the CMDB's writers cannot change it (another machine, read-only media).")
        @OptionGroup var options: CMDBOptions
        @OptionGroup var output: OutputOptions
        @Option(name: .long, help: ArgumentHelp("The trusted writer keys file.", valueName: "file"))
        var trustedKeys: String?
        @Argument(help: "The checkpoint file to write.") var file: String

        func run() async throws {
            let store = try options.store()
            let report = try await store.verify(trustedKeys: trustedKeys)
            guard report.passed else {
                for finding in report.problems { write(["problem: \(finding)"]) }
                throw ChangelabError(
                    "refusing to record a checkpoint of a CMDB that does not verify",
                    why: "\(report.problems.count) problem(s), listed above", fix: "fix them, then run this again")
            }
            let checkpoint = try await store.writeCheckpoint(to: file)
            if output.json { return try printJSON(checkpoint) }
            write(["recorded \(checkpoint.commit.prefix(12)) (\(checkpoint.commits) commits) in \(file)"])
        }
    }

    struct Upgrade: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Accept a CMDB's unsigned history once, with a signed checkpoint commit (format version 2).",
            discussion: """
                CMDBs written before changelab signed its commits fail 'cmdb verify' until this is run once. Check \
                the history first (git log -p): everything up to now is accepted as it is.
                """)
        @OptionGroup var options: CMDBOptions
        @OptionGroup var actor: ActorOptions
        @OptionGroup var output: OutputOptions

        func run() async throws {
            let store = try options.store()
            let writer = try await CMDBWriter(path: store.path, actor: actor.name)
            let outcome = try await writer.upgrade()
            await writer.close()
            struct View: Encodable {
                var upgraded: Bool
                var commit: String?
                var acceptedUnsignedCommits: Int?
            }
            switch outcome {
            case .alreadySigned:
                if output.json { return try printJSON(View(upgraded: false)) }
                write(["\(store.path) already signs every commit: nothing to upgrade"])
            case .checkpointed(let commit, let count):
                if output.json {
                    return try printJSON(View(upgraded: true, commit: commit, acceptedUnsignedCommits: count))
                }
                write([
                    "upgraded \(store.path): checkpoint \(commit.prefix(12)) accepts the \(count) commits before it; "
                        + "every commit from now on is signed by \(writer.key.publicKey.id)"
                ])
            }
        }
    }

    struct Key: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "This writer's CMDB signing key: its public half, for other verifiers' trusted keys files.",
            discussion: """
                The private key is ~/.config/changelab/cmdb-writer.key (or $CHANGELAB_CMDB_KEYS/…), mode 0600, \
                created on first use; --json prints the entry to add to a cmdb-trusted-keys.json.
                """)
        @OptionGroup var actor: ActorOptions
        @OptionGroup var output: OutputOptions

        func run() async throws {
            let keyring = CMDBKeyring.default
            let key = try keyring.writerKey(name: actor.name)
            if output.json { return try printJSON(key.publicKey) }
            write([
                "writer key  \(key.publicKey.id)  \(key.name)", "public key  \(key.publicKey.publicKey)",
                "private     \(keyring.keyPath)", "trusted by  \(keyring.trustedKeysPath)",
            ])
        }
    }

    struct Export: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Every record as one JSON document.")
        @OptionGroup var options: CMDBOptions
        @OptionGroup var output: OutputOptions

        func run() async throws {
            // Export is JSON either way; --json is accepted like everywhere else.
            try printJSON(try options.store().export())
        }
    }

    struct Init: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create an empty CMDB (the first write creates one too).")
        @OptionGroup var options: CMDBOptions
        @OptionGroup var actor: ActorOptions
        @OptionGroup var output: OutputOptions

        func run() async throws {
            let path = try options.path()
            let existed = (try? CMDBStore.open(path)) != nil
            let writer = try await CMDBWriter(path: path, actor: actor.name)
            await writer.close()
            struct View: Encodable {
                var path: String
                var created: Bool
            }
            if output.json { return try printJSON(View(path: writer.store.path, created: !existed)) }
            write([existed ? "\(writer.store.path) is already a CMDB" : "created a CMDB at \(writer.store.path)"])
        }
    }

    struct Recover: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Finish (or roll back) a transaction a crashed writer left unfinished.")
        @OptionGroup var options: CMDBOptions
        @OptionGroup var actor: ActorOptions
        @OptionGroup var output: OutputOptions

        func run() async throws {
            let store = try options.store()
            let writer = try await CMDBWriter(path: store.path, actor: actor.name)
            let outcome = try await writer.recover()
            await writer.close()
            struct View: Encodable {
                var recovered: Bool
                var outcome: String?
            }
            if output.json { return try printJSON(View(recovered: outcome != nil, outcome: outcome?.description)) }
            write([outcome?.description ?? "nothing to recover: no transaction was interrupted"])
        }
    }

    struct RecordTarget: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "record-target",
            abstract: "Record a fleet target, its attributes and (optionally) its inventory.")
        @OptionGroup var options: CMDBOptions
        @OptionGroup var actor: ActorOptions
        @OptionGroup var output: OutputOptions
        @Argument(help: "The target's name.") var name: String
        @Option(name: .long, help: "An attribute KEY=VALUE, for example site=paris (repeatable).")
        var attribute: [String] = []
        @Option(name: .long, help: "The approved baseline it should match, NAME@VERSION.") var baseline: String?
        @Option(name: .long, help: "An inventory JSON file (as 'changelab inventory collect --json' prints).")
        var inventory: String?
        @Flag(name: .long, help: "Collect this host's inventory now.") var collect = false
        @OptionGroup var collection: CollectionOptions

        func run() async throws {
            var attributes: [String: String] = [:]
            for pair in attribute {
                guard let equals = pair.firstIndex(of: "="), equals != pair.startIndex else {
                    throw ChangelabError(
                        "--attribute '\(pair)' is not KEY=VALUE", fix: "write it like --attribute site=paris")
                }
                attributes[String(pair[..<equals])] = String(pair[pair.index(after: equals)...])
            }
            let ref = try baseline.map { text in
                guard let ref = BaselineRef(text) else {
                    throw ChangelabError(
                        "--baseline '\(text)' is not NAME@VERSION", fix: "write it like --baseline web@2")
                }
                return ref
            }
            if inventory != nil && collect {
                throw ChangelabError("--inventory and --collect both give an inventory", fix: "pass only one of them")
            }
            var snapshot: InventorySnapshot?
            if let inventory {
                guard let data = FileManager.default.contents(atPath: inventory) else {
                    throw ChangelabError("cannot read the inventory file \(inventory)", fix: "check the path")
                }
                do {
                    snapshot = try StableJSON.decode(InventorySnapshot.self, from: data)
                } catch {
                    throw ChangelabError(
                        "\(inventory) is not an inventory", why: "\(error)",
                        fix: "produce one with 'changelab inventory collect --json > FILE'")
                }
            } else if collect {
                snapshot = try await collection.collect().snapshot
            }
            let target = TargetRecord(name: name, attributes: attributes, baseline: ref)
            let writer = try await CMDBWriter(path: try options.path(), actor: actor.name)
            try await writer.record(target: target, inventory: snapshot)
            await writer.close()
            let stored = try writer.store.read(TargetRecord.self, name)
            if output.json { return try printJSON(stored) }
            write(["recorded target \(name)" + (stored.inventory.map { " with inventory \($0.short)" } ?? "")])
        }
    }
}

/// Prints lines on stdout.
func write(_ lines: [String], terminator: String = "\n") {
    FileHandle.standardOutput.write(Data((lines.joined(separator: "\n") + terminator).utf8))
}

/// Indents a multi-line text by two spaces, without a trailing newline.
func indent(_ text: String) -> String {
    text.split(separator: "\n", omittingEmptySubsequences: false).dropLast(text.hasSuffix("\n") ? 1 : 0)
        .map { "  \($0)" }.joined(separator: "\n")
}
