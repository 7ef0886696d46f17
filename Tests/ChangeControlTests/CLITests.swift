import CMDB
import ChangeControl
import Foundation
import HostIO
import Model
import Testing

/// The real `changelab` executable against a real CMDB in a temp folder: the change-control
/// refusals of `policy set --change` and `baseline adopt --change`, each a non-zero exit
/// with a message that names the fix, and nothing recorded.
@Suite struct ChangeCLITests {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path

    /// The executable beside this test bundle (`swift build --build-tests` builds both).
    static func binary() throws -> String {
        let bundle = URL(fileURLWithPath: try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
        for folder in [bundle.deletingLastPathComponent(), bundle.deletingLastPathComponent().deletingLastPathComponent()] {
            let candidate = folder.appendingPathComponent("changelab").path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        throw ChangelabError("the changelab executable is not built", fix: "run 'swift build --build-tests'")
    }

    /// A CMDB with web and db, the repository's baselines and a policy file that trusts the
    /// test's approvers and lab key; `run` spawns the executable on them.
    struct Project {
        let lab: Lab
        let policy: String

        static func make() async throws -> Project {
            let lab = try await Lab.make()
            let policy = lab.folder + "/approval-policy.yaml"
            try FileManager.default.copyItem(atPath: repository + "/lab/approval-policy.yaml", toPath: policy)
            for approver in lab.policy.approvers { try PolicyFile.register(approver, in: policy) }
            try PolicyFile.register(labKey: lab.labKey.publicKey, in: policy)
            return Project(lab: lab, policy: policy)
        }

        /// What `run` adds to a command's arguments.
        enum Context {
            /// The repository, the CMDB, the policy and the actor (change control's commands).
            case change
            /// The repository and the policy (`trust-root …`).
            case policy
            /// Nothing (commands that only talk to a core).
            case none
        }

        func run(_ arguments: [String], context: Context = .change) async throws -> CommandResult {
            let policyOptions = ["--root", repository, "--policy", policy]
            let added: [String] =
                switch context {
                case .change: policyOptions + ["--cmdb", lab.folder + "/cmdb", "--actor", "dave"]
                case .policy: policyOptions
                case .none: []
                }
            return try await HostCommand.run(
                try binary(), arguments + added,
                environment: ProcessInfo.processInfo.environment.merging(
                    ["CHANGELAB_HOME": lab.folder + "/home", "CHANGELAB_APPROVER_KEYS": lab.folder + "/approver-keys"]
                ) { _, new in new },
                timeout: .seconds(120))
        }

        /// Runs a command that must be refused: non-zero, the message and the fix on stderr,
        /// and the CMDB exactly as before.
        func refused(_ arguments: [String], saying message: String, fix: String) async throws {
            let before = lab.writer.store.head
            let result = try await run(arguments)
            #expect(result.status != 0, "\(arguments) was not refused: \(result.stdoutText)")
            #expect(result.stderrText.contains(message), "\(arguments): \(result.stderrText)")
            #expect(result.stderrText.contains("fix:") && result.stderrText.contains(fix), "\(arguments): \(result.stderrText)")
            #expect(try CMDBStore.open(lab.folder + "/cmdb").head == before, "\(arguments) recorded something")
        }

        func remove() { lab.remove() }
    }

    /// A change whose delivery reached `deployed` (release-approved by alice and bob).
    static func deployed(_ lab: Lab) async throws -> ChangeRecord {
        let change = try await ChangeStoreTests.tested(lab)
        try await lab.store.approve(change.id, stage: .release, approver: "alice", key: lab.key("alice"))
        try await lab.store.approve(change.id, stage: .release, approver: "bob", key: lab.key("bob"))
        for event in [ChangeEvent.seedingStarted, .seeded, .activationStarted, .deployed] {
            try await lab.store.apply(event, to: change.id)
        }
        return try lab.store.read(change.id)
    }

    @Test func policySetRefusesWithoutAnApprovedChangeOfItsOwnRelease() async throws {
        let project = try await Project.make()
        defer { project.remove() }
        let proposed = try await project.lab.store.propose(ChangeStoreTests.proposal())

        try await project.refused(
            ["policy", "set", "finance", "--targets", "all", "--release", "greeterd-1.1.0"],
            saying: "a policy installs without further orders, so it must carry a release-approved change",
            fix: "pass --change CHG")
        try await project.refused(
            ["policy", "set", "finance", "--change", proposed.id],
            saying: "change \(proposed.id) is proposed and open: a policy carries out only an open, release-approved change",
            fix: "changelab change show \(proposed.id)")
        try await project.refused(
            ["policy", "set", "finance", "--change", "CHG-0042"], saying: "there is no change CHG-0042",
            fix: "changelab change list")
        // Another package's release under this change's approval.
        try await project.refused(
            ["policy", "set", "finance", "--change", proposed.id, "--release", "session-store-1.0.0"],
            saying: "installs its artifact (greeterd", fix: "drop --release")
    }

    @Test func baselineAdoptRefusesAChangeThatCannotDocumentTheCell() async throws {
        let project = try await Project.make()
        defer { project.remove() }
        let lab = project.lab
        let deployed = try await Self.deployed(lab)
        // run-2 tested another build of greeterd.
        try await lab.run("run-2", Lab.artifact(build: 2), cells: [("web", "install", true)])
        // A change of the same artifact, tested and then cancelled.
        let cancelled = try await lab.store.propose(ChangeStoreTests.proposal())
        try await lab.store.approve(cancelled.id, stage: .preliminary, approver: "alice", key: lab.key("alice"))
        try await lab.store.approve(cancelled.id, stage: .preliminary, approver: "bob", key: lab.key("bob"))
        try await lab.store.attachEvidence(cancelled.id, artifact: Lab.artifact().digest, runs: ["run-1"])
        try await lab.store.apply(.cancelled, to: cancelled.id)
        let adopt = ["baseline", "adopt", "web", "--from", "run-1/web.install", "--change"]

        try await project.refused(adopt + ["CHG-0077"], saying: "there is no change CHG-0077", fix: "changelab change list")
        try await project.refused(adopt + ["hello"], saying: "'hello' is not a change id", fix: "CHG-0001")
        try await project.refused(
            ["baseline", "adopt", "web", "--from", "run-2/web.install", "--change", deployed.id],
            saying: "cell run-2/web.install tested artifact \(Lab.artifact(build: 2).digest.short)",
            fix: "adopt a cell of the change's own matrix run")
        try await project.refused(
            adopt + [cancelled.id], saying: "the change is cancelled: it deployed nothing", fix: "changelab change list")

        // The deployed change documents its cell: web@2, in the change's history.
        let accepted = try await project.run(adopt + [deployed.id, "--json"])
        #expect(accepted.status == 0, "\(accepted.stderrText)")
        let version = try StableJSON.decode(BaselineVersionRecord.self, from: accepted.stdout)
        #expect(version.ref.description == "web@2" && version.adoption?.change == deployed.id)
        #expect(try lab.store.read(deployed.id).adoptedBaselines == ["web@2"])

        // Reviewed and closed, the change can no longer document a configuration.
        try await lab.store.apply(.reviewed(.successful), to: deployed.id)
        try await lab.store.apply(.closed, to: deployed.id)
        try await project.refused(
            ["baseline", "adopt", "db", "--from", "run-1/db.install", "--change", deployed.id],
            saying: "the change is closed", fix: "without --change")
    }
}
