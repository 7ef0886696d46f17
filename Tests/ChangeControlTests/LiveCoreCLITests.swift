import CMDB
import ChangeControl
import Foundation
import HostIO
@testable import Lab
import Model
import Testing

/// The real `changelab` executable against a real core (`changelab core serve`, HTTPS on
/// loopback, pinned by its certificate) and a real CMDB: the glue of `policy set --change`
/// and of `rollback CHG`, whose approvals the core checks against the trust root it pins,
/// and whose rollback reverts the baseline version the change's adoption recorded.
@Suite struct LiveCoreCLITests {
    /// A core started in its own process on a free loopback port; `stop` kills it.
    struct Core {
        let pid: pid_t
        let url: String
        let state: String
        let log: String

        static func start(binary: String, state: String, trustRoot: String) async throws -> Core {
            let log = state + ".log"
            let arguments = [
                binary, "core", "serve", "--state", state, "--listen", "127.0.0.1:0", "--check-in", "1", "--trust-root",
                trustRoot,
            ]
            let quoted = arguments.map { "'" + $0.replacingOccurrences(of: "'", with: "'\\''") + "'" }.joined(separator: " ")
            let started = try await HostCommand.check("/bin/sh", ["-c", "\(quoted) >'\(log)' 2>&1 </dev/null & echo $!"])
            let pid = try #require(pid_t(started.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)))
            // "changelab core: serving on https://127.0.0.1:PORT  state …", once it listens.
            let deadline = ContinuousClock.now + .seconds(60)
            while ContinuousClock.now < deadline {
                let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
                if let range = text.range(of: "serving on ") {
                    let url = text[range.upperBound...].prefix { $0 != " " && $0 != "\n" }
                    return Core(pid: pid, url: String(url), state: state, log: log)
                }
                if kill(pid, 0) != 0 { break }
                try await Task.sleep(for: .milliseconds(200))
            }
            kill(pid, SIGKILL)
            Issue.record("the core did not start: \((try? String(contentsOfFile: log, encoding: .utf8)) ?? "no log")")
            throw ChangelabError("the core did not start")
        }

        var options: [String] { ["--core", url, "--core-state", state] }

        func stop() { kill(pid, SIGKILL) }
    }

    /// A real .deb (dpkg-deb) of greeterd 1.1.0, stored where the lab keeps built artifacts.
    static func artifact(home: String, folder: String) async throws -> ArtifactRecord {
        let tree = folder + "/deb"
        try FileManager.default.createDirectory(atPath: tree + "/DEBIAN", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: tree + "/usr/share/greeterd", withIntermediateDirectories: true)
        try "Package: greeterd\nVersion: 1.1.0\nArchitecture: all\nMaintainer: test <t@example.invalid>\nDescription: test\n"
            .write(toFile: tree + "/DEBIAN/control", atomically: true, encoding: .utf8)
        try "hello\n".write(toFile: tree + "/usr/share/greeterd/greeting", atomically: true, encoding: .utf8)
        let deb = folder + "/greeterd_1.1.0_all.deb"
        _ = try await HostCommand.check("dpkg-deb", ["--root-owner-group", "--build", tree, deb])
        let data = try #require(FileManager.default.contents(atPath: deb))
        let digest = SHA256Digest(of: data)
        let manifest = ArtifactManifest(
            format: ArtifactManifest.formatVersion, name: "greeterd", version: "1.1.0", architecture: "all", digest: digest,
            size: data.count, recipeDigest: SHA256Digest(of: "greeterd-recipe-\(digest.hex)"),
            builder: .init(baseline: "builder", imageDigest: SHA256Digest(of: "builder-image")), builtAt: Lab.start,
            buildSeconds: 1, recipe: PackageRecipe(name: "greeterd", version: "1.1.0"))
        try ArtifactStore(home: LabHome(root: home)).add(deb: deb, manifest: manifest, log: "made by the test\n")
        return ArtifactRecord(digest: digest, package: "greeterd", version: "1.1.0", size: data.count, recordedAt: Lab.start)
    }

    @Test func policySetByChangeAndRollbackThatRevertsTheAdoptionGoThroughALiveCore() async throws {
        let project = try await ChangeCLITests.Project.make()
        defer { project.remove() }
        let lab = project.lab
        let home = lab.folder + "/home"
        // rita orders rollbacks from a key on disk (the CLI signs with it) and signs the trust root.
        let rita = try ApproverKeyring(directory: lab.folder + "/approver-keys").create(
            name: "rita", role: .ccb, repository: nil)
        try PolicyFile.register(Approver(name: "rita", role: .ccb, key: rita.publicKey.hex), in: project.policy)
        let signed = try await project.run(["trust-root", "sign", "--as", "rita"], context: .policy)
        #expect(signed.status == 0, "\(signed.stderrText)")
        let shown = try await project.run(["trust-root", "show", "--json"], context: .policy)
        let pin = try #require(
            (try JSONSerialization.jsonObject(with: shown.stdout) as? [String: Any])?["pin"] as? String, "\(shown.stdoutText)")

        // greeterd's change: approved, its real artifact tested on web and db, release-approved, deployed.
        let artifact = try await Self.artifact(home: home, folder: lab.folder)
        let store = lab.store
        try await lab.run("run-1", artifact, cells: Lab.fullGreen)
        func releaseApproved(_ proposal: ChangeStore.Proposal) async throws -> ChangeRecord {
            let change = try await store.propose(proposal)
            try await store.approve(change.id, stage: .preliminary, approver: "alice", key: lab.key("alice"))
            try await store.approve(change.id, stage: .preliminary, approver: "bob", key: lab.key("bob"))
            _ = try await store.attachEvidence(change.id, artifact: artifact.digest, runs: ["run-1"])
            try await store.approve(change.id, stage: .release, approver: "alice", key: lab.key("alice"))
            try await store.approve(change.id, stage: .release, approver: "bob", key: lab.key("bob"))
            return try store.read(change.id)
        }
        // One ring: a passive policy carries a change out as targets qualify, without stages.
        var proposal = ChangeStoreTests.proposal()
        proposal.scope = ChangeScope(targets: "site = paris")
        let change = try await releaseApproved(proposal)
        // The same package approved for a staged rollout (canary, then all).
        let staged = try await releaseApproved(ChangeStoreTests.proposal())
        await lab.writer.close()

        let binary = try ChangeCLITests.binary()
        let core = try await Core.start(binary: binary, state: lab.folder + "/core", trustRoot: pin)
        defer { core.stop() }

        // policy set --change: the core accepts the change's signed approvals and evidence,
        // takes the approved scope, and the change records the policy.
        let policy = try await project.run(["policy", "set", "finance", "--change", change.id, "--json"] + core.options)
        #expect(policy.status == 0, "\(policy.stderrText)\n\((try? String(contentsOfFile: core.log, encoding: .utf8)) ?? "")")
        let set = try JSONSerialization.jsonObject(with: policy.stdout) as? [String: Any]
        #expect(set?["release"] as? String == change.id && set?["approvedChange"] as? String == change.id, "\(policy.stdoutText)")
        #expect(set?["query"] as? String == "site = paris", "\(policy.stdoutText)")
        let listed = try await project.run(["policy", "list", "--json"] + core.options, context: .none)
        #expect(listed.status == 0 && listed.stdoutText.contains("finance"), "\(listed.stderrText)")
        var record = try ChangeStore.read(change.id, in: try CMDBStore.open(lab.folder + "/cmdb"))
        #expect(record.comments.contains { $0.text.contains("passive policy finance") }, "\(record.comments)")

        // A change approved with a ring plan is refused before anything is published.
        let ringed = try await project.run(["policy", "set", "staged", "--change", staged.id] + core.options)
        #expect(ringed.status != 0 && ringed.stderrText.contains("was approved with the ring plan 'canary:50%,all'"), "\(ringed.stderrText)")
        #expect(ringed.stderrText.contains("fix:") && !ringed.stdoutText.contains("publishing"), "\(ringed.stdoutText)")

        // The same command with a wider scope than the approvers signed is refused before the core.
        let wider = try await project.run(["policy", "set", "wider", "--change", change.id, "--targets", "site = paris or site = lyon"] + core.options)
        #expect(wider.status != 0 && wider.stderrText.contains("fix:"), "\(wider.stdoutText)\(wider.stderrText)")

        // promote hands it to the core; the engine's reports then take it to deployed (no
        // agents here: what `status CHG` records from a fleet, recorded directly).
        let promoted = try await project.run(["promote", change.id, "--json"] + core.options)
        #expect(promoted.status == 0, "\(promoted.stderrText)")
        let writer = try await CMDBWriter(
            path: lab.folder + "/cmdb", actor: "dave", keyring: CMDBKeyring(directory: lab.folder + "/keys"))
        var delivery = ChangeStore(writer: writer, policy: lab.policy, recipes: lab.recipes)
        delivery.now = { Date() }
        for event in [ChangeEvent.seeded, .activationStarted, .deployed] { try await delivery.apply(event, to: change.id) }
        await writer.close()

        // web adopts the change, then the rollback reverts that adoption with a new version.
        let adopted = try await project.run(["baseline", "adopt", "web", "--from", "run-1/web.install", "--change", change.id, "--json"])
        #expect(adopted.status == 0, "\(adopted.stderrText)")
        // A rollback ordered by someone without an approver key here is refused before the core.
        let before = try CMDBStore.open(lab.folder + "/cmdb").head
        let keyless = try await project.run(["rollback", change.id, "--as", "nobody"] + core.options)
        #expect(keyless.status != 0 && keyless.stderrText.contains("there is no approver key for nobody"), "\(keyless.stderrText)")
        #expect(keyless.stderrText.contains("fix:"))
        #expect(try CMDBStore.open(lab.folder + "/cmdb").head == before)
        let rollback = try await project.run(["rollback", change.id, "--as", "rita", "--reason", "greeting wrong", "--json"] + core.options)
        #expect(rollback.status == 0, "\(rollback.stderrText)\n\((try? String(contentsOfFile: core.log, encoding: .utf8)) ?? "")")
        let cmdb = try CMDBStore.open(lab.folder + "/cmdb")
        let versions = try cmdb.baselineVersions("web")
        #expect(versions.map(\.origin) == [.built, .adopted, .reverted], "\(versions.map(\.ref))")
        #expect(versions.last?.previousVersion == 2)
        record = try ChangeStore.read(change.id, in: cmdb)
        #expect(record.adoptedBaselines == ["web@2"] && record.revertedBaselines == ["web@3"])
        #expect(record.history.contains { $0.event == "roll-back" || $0.to == "rolled-back" }, "\(record.history.map(\.event))")

        // Rolled back, the change cannot be rolled back again: refused, and nothing more is recorded.
        let head = cmdb.head
        let again = try await project.run(["rollback", change.id, "--as", "rita"] + core.options)
        #expect(again.status != 0 && again.stderrText.contains("delivery is rolled-back"), "\(again.stderrText)")
        #expect(again.stderrText.contains("fix: 'changelab change show \(change.id)'"), "\(again.stderrText)")
        #expect(try CMDBStore.open(lab.folder + "/cmdb").head == head)
    }
}
