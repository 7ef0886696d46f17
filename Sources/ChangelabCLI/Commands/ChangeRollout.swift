import ArgumentParser
import CMDB
import ChangeControl
import Distribution
import Foundation
import Lab
import Model

/// A change record driving the rollout commands: `promote CHG`, `activate CHG`, `rollback CHG`
/// and `status CHG` read the change from the CMDB, send the core its signed authorization
/// (the trust root chain beside the policy, the lab's evidence, the approvals) and record each
/// delivery step in the change's history.
struct ChangeRollout {
    let context: ChangeContext
    let store: ChangeStore
    var record: ChangeRecord

    /// `CHG-0001`-style ids are change records; anything else is a plain release name.
    static func isChangeID(_ text: String) -> Bool {
        text.hasPrefix("CHG-") && text.dropFirst(4).allSatisfy(\.isNumber) && text.count > 4
    }

    /// The change `id`, or nil when `id` is not a change id.
    static func load(_ id: String, context: ChangeContext) throws -> ChangeRollout? {
        guard isChangeID(id) else { return nil }
        let store = try context.reading()
        return ChangeRollout(context: context, store: store, record: try store.read(id))
    }

    var id: String { record.id }

    /// The built and tested artifact; refuses a change that has none.
    func artifact() throws -> SHA256Digest {
        guard let artifact = record.artifact, record.approval >= .builtAndTested else {
            throw ChangelabError(
                "change \(id) is \(record.approval.rawValue): it has no built and tested artifact to seed",
                fix: "run 'changelab matrix run \(record.package)', then 'changelab change evidence \(id)'")
        }
        return artifact
    }

    /// The chain of trust roots published beside the policy.
    func trustRoots() throws -> [SignedEnvelope] {
        let path = TrustRootFile.defaultPath(besidePolicy: context.policyOptions.path(in: try context.project()))
        let roots = try TrustRootFile(path: path).roots
        guard !roots.isEmpty else {
            throw ChangelabError(
                "there is no signed trust root at \(path)",
                fix: "sign the approval policy: changelab trust-root sign --as NAME (a threshold of approvers)")
        }
        return roots
    }

    /// What the core and the agents check: evidence that verifies for the artifact and the
    /// change's release approvals (and `rollbacks`, when rolling back).
    func authorization(rollbacks: [SignedEnvelope]? = nil) throws -> ChangeAuthorization {
        let artifact = try artifact()
        guard let gate = try store.gate(for: record, artifact: artifact) else {
            throw ChangelabError("change \(id) has no artifact")
        }
        var authorization = ChangeStore.authorization(
            of: record, evidence: gate.evidence.map(\.envelope), trustRoots: try trustRoots())
        authorization.rollbacks = rollbacks
        return authorization
    }

    /// Refuses a target query or ring plan other than the change's approved scope.
    func checkScope(targets: String?, rings: String?) throws {
        for (given, approved, what) in [(targets, record.scope.targets, "targets"), (rings, record.scope.rings, "rings")]
        where given != nil && given != approved {
            throw ChangelabError(
                "change \(id) is scoped to \(what) '\(approved)', not '\(given ?? "")'",
                why: "the approvers sign the scope: going beyond it would be refused by the core and the agents",
                fix: "drop --\(what), or change the scope with 'changelab change edit \(id) --\(what) …' before the release vote")
        }
    }

    /// Refuses `event` now when the change's state does not allow it, before the core acts.
    func check(_ event: ChangeEvent) throws {
        _ = try record.applying(event, by: store.actor, at: Date())
    }

    /// Records `event` in the change's history (one CMDB transaction).
    func record(_ event: ChangeEvent, reason: String) async throws {
        _ = try await context.writing { try await $0.apply(event, to: id, reason: reason) }
    }

    /// The release the core knows this change's artifact by: published now if it is not yet.
    func publish(with client: CoreClient) async throws -> String {
        let artifact = try artifact()
        if let known = try await client.releases().first(where: { $0.digest == artifact }) { return known.release }
        let artifacts = ArtifactStore(home: LabHome.fromEnvironment())
        try artifacts.verify(try artifacts.manifest(artifact, verify: false))
        note("publishing \(record.package) \(record.version ?? "") (\(artifact.short)) as release \(id)…")
        return try await client.publish(file: artifacts.debPath(artifact), release: id).release
    }

    /// A rolled-back change is no longer anybody's standard: each baseline version adopted
    /// from it gets a new version with the configuration from before, recorded in the change.
    func revertAdoptions() async throws {
        let record = try context.reading().read(id)
        let reverted = Set((record.revertedBaselines ?? []).compactMap { $0.split(separator: "@").first.map(String.init) })
        let names = (record.adoptedBaselines ?? []).compactMap { $0.split(separator: "@").first.map(String.init) }
        for name in Array(Set(names)).sorted() where !reverted.contains(name) {
            let writer = try await CMDBWriter(path: try context.cmdbOptions.path(), actor: context.actor.name)
            let version: BaselineVersionRecord
            do {
                version = try await writer.revertAdoption(name, change: id)
                await writer.close()
            } catch {
                await writer.close()
                throw error
            }
            try await self.record(
                .baselineReverted(version.ref.description), reason: "\(name)'s adoption of \(id) reverted as \(version.ref)")
            note("recorded \(version.ref): baseline \(name) without \(id), which was rolled back")
        }
    }

    /// Brings the change's delivery dimension up to what the core reports, and keeps its
    /// figures and chase list (`chase`: the core's, once activation was requested).
    func follow(_ report: StatusReport, chase: [ChaseEntry]? = nil) async throws {
        let total = report.total
        var steps: [(ChangeEvent, DeliveryState, String)] = []
        if total.targets > 0 && total.verified + total.activated >= total.targets {
            steps.append((.seeded, .seeded, "every target holds a verified copy"))
        }
        let results = total.activated + total.failed
        if report.activationRequested && total.targets > 0 && results >= total.targets && total.activated > 0 {
            steps.append(
                (.deployed, .deployed, "\(total.activated) of \(total.targets) target(s) activated, \(total.failed) on the chase list"))
        }
        var current = record
        let order = DeliveryState.allCases
        func rank(_ state: DeliveryState) -> Int { order.firstIndex(of: state) ?? 0 }
        for (event, state, reason) in steps where current.delivery != .rolledBack && rank(current.delivery) < rank(state) {
            guard (try? current.applying(event, by: store.actor, at: Date())) != nil else { continue }
            current = try await context.writing { try await $0.apply(event, to: id, reason: reason) }
        }
        let followUp = DeliveryFollowUp.merging(
            current.followUp, targets: total.targets, activated: total.activated, failed: total.failed,
            bytesSent: total.bytesSent, chase: chase?.map { (agent: $0.agent, target: $0.name, reason: $0.reason, pending: $0.isPending) },
            at: Date())
        guard current.delivery != .notStarted, !followUp.sameAs(current.followUp),
            (try? current.applying(.followedUp(followUp), by: store.actor, at: Date())) != nil
        else { return }
        let open = followUp.chase.filter { $0.resolved == nil }.count
        _ = try await context.writing {
            try await $0.apply(
                .followedUp(followUp), to: id,
                reason: "\(total.activated) of \(total.targets) activated, \(open) on the chase list, \(total.bytesSent) bytes sent")
        }
    }
}
