import ArgumentParser
import CMDB
import ChangeControl
import Foundation
import HostIO
import Lab
import Model

struct BaselineCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "baseline",
        abstract: "Build, list and restore the approved baseline configurations (baselines/*.yaml).",
        subcommands: [List.self, Build.self, Restore.self, RootFS.self, Adopt.self]
    )

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List baselines: approved or draft, built or not, image digest, age and CMDB versions.")
        @OptionGroup var cmdbOptions: CMDBOptions
        @OptionGroup var output: OutputOptions

        struct Version: Codable {
            var version: Int
            var origin: String
            var recordedAt: Date
            var adoptedFrom: String?
        }

        struct Row: Codable {
            var name: String
            var approved: Bool
            var description: String
            var status: String
            var built: Bool
            var imageDigest: String?
            var recipeDigest: String?
            var builtAt: Date?
            var imageSeconds: Double?
            var slots: Int
            var problem: String?
            var versions: [Version] = []
        }

        func run() async throws {
            let lab = try Lab(project: try cmdbOptions.projectOptions.project())
            // Versions come from the CMDB when there is one; a lab without one still lists.
            let store = try? CMDBStore.open(try cmdbOptions.path())
            var rows: [Row] = []
            for name in try lab.baselines.names() {
                do {
                    let recipe = try lab.baselines.load(name)
                    let image = try lab.currentImage(of: recipe)
                    let status = image?.status(testsDigest: lab.baselines.testsDigest(of: name)).rawValue ?? "not built"
                    rows.append(
                        Row(
                            name: name, approved: recipe.approved, description: recipe.description, status: status,
                            built: image != nil, imageDigest: image?.imageDigest.description,
                            recipeDigest: try lab.baselines.recipeDigest(recipe).description, builtAt: image?.builtAt,
                            imageSeconds: image?.imageSeconds, slots: image?.slots.count ?? 0, problem: nil,
                            versions: ((try? store?.baselineVersions(name)) ?? []).map {
                                Version(
                                    version: $0.version, origin: $0.origin.rawValue, recordedAt: $0.recordedAt,
                                    adoptedFrom: $0.adoption.map { "\($0.run)/\($0.cell)" })
                            }))
                } catch {
                    rows.append(
                        Row(
                            name: name, approved: false, description: "", status: "invalid recipe", built: false,
                            imageDigest: nil, recipeDigest: nil, builtAt: nil, imageSeconds: nil, slots: 0,
                            problem: "\(error)"))
                }
            }
            if output.json { return try printJSON(rows) }
            var table = Table("NAME", "APPROVED", "STATUS", "IMAGE", "AGE", "BUILD", "SLOTS", "CMDB", "DESCRIPTION")
            for row in rows {
                let versions = row.versions.last.map { latest in
                    "\(row.name)@\(latest.version) (\(row.versions.count) version\(row.versions.count == 1 ? "" : "s"), \(latest.origin))"
                } ?? "-"
                table.add(
                    row.name, row.approved ? "yes" : "draft", row.status,
                    row.imageDigest.flatMap { SHA256Digest(hex: $0)?.short } ?? "-",
                    row.builtAt.map { age(since: $0) } ?? "-", row.imageSeconds.map { "\(Int($0)) s" } ?? "-",
                    "\(row.slots)", versions, row.description)
            }
            table.print()
            for row in rows where row.problem != nil { note("\(row.name): \(row.problem ?? "")") }
        }
    }

    struct Build: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Build baseline images (default: every approved baseline), cached by recipe digest.",
            discussion: """
                debootstrap → customize → ext4 (mke2fs -d) → qcow2 → boot under libvirt → save the \
                booted state → run the baseline's own standing suite on a fresh restore. An unchanged \
                recipe reuses its cached image; --force rebuilds. Built baselines are recorded in the CMDB.
                """)
        @OptionGroup var cmdbOptions: CMDBOptions
        @OptionGroup var output: OutputOptions
        @Argument(help: "Baselines to build (default: all approved ones; drafts only when named).")
        var names: [String] = []
        @Flag(help: "Rebuild even when the recipe has not changed.")
        var force = false
        @Option(help: "How many baselines to build at once.")
        var parallel = 2
        @Flag(help: "Do not record the built baselines in the CMDB.")
        var noRecord = false

        struct Row: Codable {
            var name: String
            var status: String
            var reused: Bool
            var imageDigest: String
            var seconds: Double
            var failedTests: [String]
            var cmdbVersion: String?
        }

        func run() async throws {
            guard parallel >= 1 else { throw ValidationError("--parallel must be at least 1") }
            let lab = try Lab(project: try cmdbOptions.projectOptions.project(), progress: ConsoleProgress.handler())
            let recipes = try lab.baselines.select(names)
            guard !recipes.isEmpty else {
                throw ChangelabError(
                    "no approved baselines to build", fix: "mark one 'approved: true' or name a draft to build it")
            }
            let force = self.force
            var rows: [Row] = []
            var outcomes: [Lab.BuildOutcome] = []
            var failures: [String: String] = [:]
            try await withThrowingTaskGroup(of: (String, Result<Lab.BuildOutcome, Error>).self) { group in
                var pending = recipes[...]
                func startNext() {
                    guard let recipe = pending.popFirst() else { return }
                    group.addTask {
                        do { return (recipe.name, .success(try await lab.build(recipe, force: force))) } catch {
                            if error is CancellationError { throw error }
                            return (recipe.name, .failure(error))
                        }
                    }
                }
                for _ in 0..<parallel { startNext() }
                while let (name, result) = try await group.next() {
                    switch result {
                    case .success(let outcome):
                        outcomes.append(outcome)
                        rows.append(
                            Row(
                                name: name, status: outcome.status.rawValue, reused: outcome.reusedImage,
                                imageDigest: outcome.image.imageDigest.description, seconds: outcome.seconds,
                                failedTests: outcome.image.validation?.results.filter { !$0.passed }.map(\.name) ?? []))
                    case .failure(let error):
                        failures[name] = "\(error)"
                        rows.append(Row(name: name, status: "error", reused: false, imageDigest: "", seconds: 0, failedTests: []))
                    }
                    startNext()
                }
            }
            rows.sort { $0.name < $1.name }
            if !noRecord {
                let path = try cmdbOptions.path()
                let writer = try await CMDBWriter(path: path, actor: CMDBWriter.defaultActor)
                for outcome in outcomes where outcome.status == .ready {
                    let version = try await lab.record(outcome.image, writer: writer)
                    if let index = rows.firstIndex(where: { $0.name == outcome.image.name }) { rows[index].cmdbVersion = version.ref.description }
                }
                await writer.close()
                note("recorded in the CMDB at \(path)")
            }
            if output.json {
                try printJSON(rows)
            } else {
                var table = Table("BASELINE", "STATUS", "IMAGE", "CACHED", "SECONDS", "CMDB", "FAILED TESTS")
                for row in rows {
                    table.add(
                        row.name, row.status, SHA256Digest(hex: row.imageDigest)?.short ?? "-", row.reused ? "yes" : "no",
                        String(format: "%.0f", row.seconds), row.cmdbVersion ?? "-", row.failedTests.joined(separator: ", "))
                }
                table.print()
            }
            for (name, message) in failures.sorted(by: { $0.key < $1.key }) { note("error: \(name): \(message)") }
            if !failures.isEmpty || rows.contains(where: { $0.status != BaselineImage.Status.ready.rawValue }) {
                throw ExitCode(1)
            }
        }
    }

    struct Restore: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Restore a pristine guest of a baseline, set its clock, wait for its agent; print the time taken.")
        @OptionGroup var projectOptions: ProjectOptions
        @OptionGroup var output: OutputOptions
        @Argument(help: "The baseline to restore.")
        var name: String
        @Flag(help: "Keep the VM running afterwards (see: changelab lab list).")
        var keep = false

        struct Report: Codable {
            var baseline: String
            var domain: String
            var imageDigest: String
            var seconds: Double
            var kept: Bool
        }

        func run() async throws {
            let lab = try Lab(project: try projectOptions.project(), progress: ConsoleProgress.handler(quiet: output.json))
            let image = try lab.readyImage(name, allowUnvalidated: true)
            let keep = self.keep
            let report = try await lab.withRestored(image, keep: keep) { guest in
                Report(
                    baseline: image.name, domain: guest.name, imageDigest: image.imageDigest.description,
                    seconds: guest.restoreSeconds, kept: keep)
            }
            if output.json { return try printJSON(report) }
            print(String(format: "restored %@ in %.2f s (agent answering, clock set)", report.baseline, report.seconds))
            if keep { print("kept as \(report.domain): changelab lab exec \(report.domain) -- CMD, then changelab lab discard \(report.domain)") }
        }
    }

    struct RootFS: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "rootfs",
            abstract: "Print the path of a built baseline's root file system (extracted from its image if needed).",
            discussion: """
                The directory is the read-only lower layer of the test fleet's per-agent overlay roots \
                (lab/fleet root --lower DIR): agents install into the system the lab tested, with dpkg \
                chrooted into it. Images built by this changelab keep the tree they were made from; \
                for older images it is copied out of the disk once (a read-only loop mount, or debugfs). \
                /boot and the kernel modules are left out. Never write into it.
                """)
        @OptionGroup var projectOptions: ProjectOptions
        @OptionGroup var output: OutputOptions
        @Argument(help: "The built baseline.")
        var name: String

        struct Report: Codable {
            var baseline: String
            var imageDigest: String
            var path: String
            var method: String
            var created: Bool
            var seconds: Double
        }

        func run() async throws {
            let lab = try Lab(project: try projectOptions.project(), progress: ConsoleProgress.handler(quiet: output.json))
            let recipe = try lab.baselines.load(name)
            guard let image = try lab.currentImage(of: recipe) else {
                throw ChangelabError(
                    "baseline '\(name)' has not been built (or its recipe changed since)",
                    fix: "changelab baseline build \(name)")
            }
            let started = ContinuousClock.now
            let (rootfs, created) = try await lab.rootFileSystem(of: image)
            let report = Report(
                baseline: image.name, imageDigest: image.imageDigest.description, path: rootfs.path,
                method: rootfs.method.rawValue, created: created, seconds: started.secondsSince)
            if output.json { return try printJSON(report) }
            print(report.path)
        }
    }

    struct Adopt: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Record a new version of an approved baseline that includes a tested change.",
            discussion: """
                The new standard configuration is the one a passed matrix cell had after installing its \
                artifact, linked to that cell, the artifact and the delta from the previous version. \
                --from names a run (its passed install cell on this baseline) or a cell (RUN/CELL). \
                See the versions with: changelab baseline list, changelab cmdb log baseline:NAME.
                """)
        @OptionGroup var context: ChangeContext
        @OptionGroup var output: OutputOptions
        @Argument(help: "The approved baseline.")
        var name: String
        @Option(name: .long, help: "The run or cell (RUN/CELL) whose tested configuration to adopt.")
        var from: String
        @Option(help: "The deployed change record (CHG-0001) whose artifact the cell tested; the adoption lands in its history.")
        var change: String?
        @Option(help: "A note for the record.")
        var notes: String?

        func run() async throws {
            let lab = try Lab(project: try context.project())
            let recipe = try lab.baselines.load(name)
            guard recipe.approved else {
                throw ChangelabError(
                    "baseline '\(name)' is a draft", fix: "only approved baselines have a standard configuration to adopt into")
            }
            // A change named must exist, be deployed, and be the artifact the cell tested.
            let rollout = try change.map { id in
                guard let rollout = try ChangeRollout.load(id, context: context) else {
                    throw ChangelabError("'\(id.prefix(40))' is not a change id", fix: "pass a change record's id like CHG-0001 (see: changelab change list)")
                }
                let cell = try rollout.store.store.cellToAdopt(baseline: name, from: from)
                guard cell.artifact == rollout.record.artifact else {
                    throw ChangelabError(
                        "cell \(cell.recordID) tested artifact \(cell.artifact.short)…, and \(id)'s artifact is \(rollout.record.artifact?.short ?? "not built")…",
                        fix: "adopt a cell of the change's own matrix run (changelab change show \(id) lists them)")
                }
                try rollout.check(.baselineAdopted("\(name)@?"))
                return rollout
            }
            let writer = try await CMDBWriter(path: try context.cmdbOptions.path(), actor: context.actor.name)
            let record: BaselineVersionRecord
            do {
                record = try await writer.adoptBaseline(name, from: from, change: change, notes: notes)
            } catch {
                await writer.close()
                throw error
            }
            await writer.close()
            try await rollout?.record(.baselineAdopted(record.ref.description), reason: "the new standard configuration \(record.ref)")
            if output.json { return try printJSON(record) }
            guard let adoption = record.adoption else { return }
            print("recorded \(record.ref) (adopted from cell \(adoption.run)/\(adoption.cell), artifact \(adoption.artifact.short))")
            print(adoption.delta.isEmpty ? "no configuration change" : adoption.delta.summary(), terminator: "")
        }
    }
}
