import CMDB
import Foundation
import Model

/// Change records in the CMDB: sequential ids, every step one transaction whose message and
/// operation name the change and the step, so `changelab cmdb log change:CHG-0001` is the
/// change's audit trail.
public struct ChangeStore: Sendable {
    /// nil: read only (an approver signing on their own machine).
    public let writer: CMDBWriter?
    public let store: CMDBStore
    public let policy: ApprovalPolicy
    /// The project's baseline recipes (which are approved).
    public let recipes: [BaselineRecipe]
    public var now: @Sendable () -> Date = { Date() }

    public init(writer: CMDBWriter, policy: ApprovalPolicy, recipes: [BaselineRecipe]) {
        self.writer = writer
        self.store = writer.store
        self.policy = policy
        self.recipes = recipes
    }

    /// Reads and checks, never writes.
    public init(readingFrom store: CMDBStore, policy: ApprovalPolicy, recipes: [BaselineRecipe]) {
        self.writer = nil
        self.store = store
        self.policy = policy
        self.recipes = recipes
    }

    public var actor: String { writer?.actor ?? CMDBWriter.defaultActor }

    func requireWriter() throws -> CMDBWriter {
        guard let writer else { throw ChangelabError("this change store was opened read-only") }
        return writer
    }

    // MARK: Reading

    /// One change; a clear error for an id that is malformed or not in the CMDB.
    public static func read(_ id: String, in store: CMDBStore) throws -> ChangeRecord {
        guard ChangeRecord.number(of: id) != nil else {
            throw ChangelabError(
                "'\(id.prefix(40))' is not a change id", why: "change ids read CHG-0001, CHG-0002, …",
                fix: "list the changes with 'changelab change list'")
        }
        guard store.exists(CMDBReference(.change, id)) else {
            throw ChangelabError(
                "there is no change \(id) in the CMDB at \(store.path)", fix: "list the changes with 'changelab change list'")
        }
        let record = try store.read(ChangeRecord.self, id)
        guard record.format <= ChangeRecord.formatVersion else {
            throw ChangelabError(
                "change \(id) was written in format \(record.format); this changelab reads \(ChangeRecord.formatVersion)",
                fix: "use a newer changelab with this CMDB")
        }
        return record
    }

    public func read(_ id: String) throws -> ChangeRecord { try Self.read(id, in: store) }

    /// Every change, by id.
    public static func all(in store: CMDBStore) -> [ChangeRecord] {
        store.ids(of: .change).compactMap { try? store.read(ChangeRecord.self, $0) }
            .sorted { (ChangeRecord.number(of: $0.id) ?? 0) < (ChangeRecord.number(of: $1.id) ?? 0) }
    }

    // MARK: Proposing

    public struct Proposal: Sendable {
        public var title: String
        public var need: String
        public var benefit: String?
        public var type: ChangeType
        public var package: String
        public var scope: ChangeScope
        public var rate: Int64?

        public init(
            title: String, need: String, benefit: String? = nil, type: ChangeType = .normal, package: String,
            scope: ChangeScope = ChangeScope(targets: "all"), rate: Int64? = nil
        ) {
            self.title = title
            self.need = need
            self.benefit = benefit
            self.type = type
            self.package = package
            self.scope = scope
            self.rate = rate
        }
    }

    /// Records a new change with the next id and its preliminary impact assessment.
    public func propose(_ proposal: Proposal) async throws -> ChangeRecord {
        guard DebianNames.isValidPackageName(proposal.package) else {
            throw ChangelabError(
                "'\(proposal.package.prefix(40))' is not a package name", fix: "pass the Debian package name, e.g. --package greeterd")
        }
        if proposal.type == .standard && !policy.standardPackages.contains(proposal.package) {
            throw ChangelabError(
                "\(proposal.package) is not pre-authorised for standard changes",
                why: "the policy's standard-packages are: \(policy.standardPackages.joined(separator: ", "))",
                fix: "propose it as a normal change (--type normal), or add it to standard-packages through a change")
        }
        guard policy.rule(for: proposal.type) != nil else {
            throw ChangelabError(
                "the approval policy has no rules for \(proposal.type.rawValue) changes",
                fix: "add change-types.\(proposal.type.rawValue) to the policy file")
        }
        try checkRings(proposal.scope.rings)
        let date = now()
        let impact = try ImpactAssessor.assess(
            package: proposal.package, query: proposal.scope.targets, store: store, recipes: recipes,
            rate: proposal.rate ?? policy.defaultRate, others: Self.all(in: store), at: date)
        let requester = actor
        let store = store
        // The id is checked again under the CMDB's lock: a proposer that lost the race to
        // another one takes the next number.
        for _ in 0..<8 {
            let id = ChangeRecord.id(number: (store.ids(of: .change).compactMap(ChangeRecord.number).max() ?? 0) + 1)
            let record = ChangeRecord(
                id: id, title: proposal.title, need: proposal.need, benefit: proposal.benefit, type: proposal.type,
                package: proposal.package, requester: requester, scope: proposal.scope, impact: impact, createdAt: date)
            let taken = Outcome<Bool>()
            try await requireWriter().transaction("change \(id): propose '\(proposal.title.prefix(60))'", operation: "change-propose") { tx in
                guard !tx.exists(record.reference) else {
                    taken.value = true
                    return
                }
                try tx.put(record)
            }
            if taken.value != true { return record }
        }
        throw ChangelabError(
            "could not take a change id", why: "other proposals kept taking the next one", fix: "run the command again")
    }

    /// `canary:5%,all`: names with optional shares, the last one `all`.
    func checkRings(_ text: String) throws {
        let rings = text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        let valid = !rings.isEmpty && rings.allSatisfy { ring in
            let parts = ring.split(separator: ":", omittingEmptySubsequences: false)
            guard let name = parts.first, SafeName.problem(String(name)) == nil, parts.count <= 2 else { return false }
            guard parts.count == 2 else { return true }
            return PolicyFile.percentage(String(parts[1])).map { (0...1).contains($0) } ?? false
        }
        guard valid, rings.last == "all" else {
            throw ChangelabError(
                "cannot read the ring plan '\(text.prefix(60))'", fix: "write rings like canary:5%,all (the last one 'all')")
        }
    }

    // MARK: Steps

    /// Applies `event` to change `id` in one transaction and returns the change after it.
    @discardableResult
    public func apply(_ event: ChangeEvent, to id: String, reason: String? = nil) async throws -> ChangeRecord {
        try await step(id, event.name, reason: reason) { record, date in
            try record.applying(event, by: actor, at: date, reason: reason)
        }
    }

    /// Reads `id` under the CMDB's lock, lets `body` derive its next state, and records it.
    func step(
        _ id: String, _ name: String, reason: String?,
        _ body: @escaping @Sendable (ChangeRecord, Date) throws -> ChangeRecord
    ) async throws -> ChangeRecord {
        _ = try read(id)
        let result = Outcome<ChangeRecord>()
        let date = now()
        let message = "change \(id): \(name)" + (reason.map { " — \($0.prefix(80))" } ?? "")
        try await requireWriter().transaction(message, operation: "change-\(name)") { tx in
            let current = try tx.read(ChangeRecord.self, id)
            let next = try body(current, date)
            try tx.put(next)
            result.value = next
        }
        guard let record = result.value else { throw ChangelabError("change \(id) was not updated") }
        return record
    }

    // MARK: Evidence

    /// The gate for `record`'s artifact on `lanes` (default: its type's lanes).
    /// The release gate of `record`: judged on the matrix runs the change was shown (its
    /// evidence runs, or `runs`), or on every run of `artifact` when it has none yet.
    public func gate(
        for record: ChangeRecord, artifact: SHA256Digest? = nil, lanes: [String]? = nil, runs: [String]? = nil
    ) throws -> ReleaseGate? {
        guard let artifact = artifact ?? record.artifact else { return nil }
        let shown = runs ?? (record.artifact == artifact && !record.evidenceRuns.isEmpty ? record.evidenceRuns : nil)
        return ReleaseGate(
            artifact: artifact, lanes: lanes ?? policy.rule(for: record.type)?.lanes ?? [], policy: policy,
            recipes: recipes, targets: try ScopedTargets(query: record.scope.targets, store: store), store: store,
            runs: shown.map(Set.init))
    }

    /// Records the built artifact and the matrix runs of it (`artifact`, default: the
    /// package's newest artifact that has a run; `runs`, default: every finished run of it). For an emergency change already released,
    /// records the after-the-fact full matrix instead, once the normal lanes are all green.
    @discardableResult
    public func attachEvidence(_ id: String, artifact wanted: SHA256Digest? = nil, runs named: [String]? = nil) async throws
        -> ChangeRecord
    {
        let record = try read(id)
        var runs = store.ids(of: .run).compactMap { try? store.read(RunRecord.self, $0) }.filter { $0.status != .running }
        if let named {
            for run in named where !runs.contains(where: { $0.id == run }) {
                throw ChangelabError(
                    "there is no finished matrix run '\(run.prefix(80))' in the CMDB", fix: "see the runs with: changelab matrix list")
            }
            runs = runs.filter { named.contains($0.id) }
            let digests = Set(runs.map(\.artifact))
            guard digests.count == 1, wanted == nil || digests.first == wanted else {
                throw ChangelabError(
                    "the runs named test \(digests.count == 1 ? "artifact \(digests.first!.short)…" : "\(digests.count) different artifacts"), not one artifact of the change",
                    fix: "name runs of one artifact of \(record.package)")
            }
        }
        let artifacts = store.ids(of: .artifact).compactMap { try? store.read(ArtifactRecord.self, $0) }
            .filter { $0.package == record.package }
        let candidates = artifacts.filter { artifact in runs.contains { $0.artifact == artifact.digest } }
        guard
            let artifact = wanted.flatMap({ digest in artifacts.first { $0.digest == digest } })
                ?? (wanted == nil ? candidates.max { $0.recordedAt < $1.recordedAt } : nil)
        else {
            throw ChangelabError(
                wanted.map { "there is no artifact \($0.short)… of \(record.package) in the CMDB" }
                    ?? "the CMDB has no tested artifact of \(record.package)",
                fix: "build and test it: changelab package build \(record.package) && changelab matrix run \(record.package)")
        }
        let runIDs = runs.filter { $0.artifact == artifact.digest }.map(\.id).sorted()
        guard !runIDs.isEmpty else {
            throw ChangelabError(
                "artifact \(artifact.digest.short)… of \(record.package) has no finished matrix run",
                fix: "changelab matrix run \(record.package)")
        }
        if record.type == .emergency && record.approval == .releaseApproved && record.artifact == artifact.digest {
            let normal = policy.rule(for: .normal)?.lanes ?? []
            if let gate = try gate(for: record, lanes: normal, runs: record.evidenceRuns + runIDs), !gate.passes {
                throw ChangelabError(
                    "the full normal lanes have not passed for \(id) yet",
                    why: gate.missing.joined(separator: "; "), fix: "run the full matrix: changelab matrix run \(record.package)")
            }
            return try await apply(.fullEvidence(runs: runIDs), to: id, reason: "full normal lanes passed after the fact")
        }
        return try await apply(
            .tested(artifact: artifact.digest, version: artifact.version, runs: runIDs), to: id,
            reason: "artifact \(artifact.digest.short)… tested in \(runIDs.joined(separator: ", "))")
    }

    // MARK: Approvals

    /// What an approver signs for `stage` of change `id` now (release: the current artifact,
    /// its verified evidence and the scope).
    public func statement(
        for id: String, stage: ChangeStage, decision: ApprovalDecision, approver: String, comment: String?
    ) throws -> ApprovalStatement {
        let record = try read(id)
        var statement = ApprovalStatement(
            change: id, stage: stage, decision: decision, changeType: record.type, package: record.package,
            requester: record.requester, approver: approver, comment: comment, signedAt: now())
        if stage == .release {
            guard let gate = try gate(for: record) else {
                throw ChangelabError(
                    "change \(id) has no built artifact to approve", why: "it is \(record.approval.rawValue)",
                    fix: "record the tested artifact first: changelab change evidence \(id)")
            }
            statement.artifact = gate.artifact
            statement.evidence = gate.evidenceDigests
            statement.scope = record.scope
        }
        return statement
    }

    /// Signs `stage` of change `id` with `key` and records it.
    @discardableResult
    public func approve(
        _ id: String, stage: ChangeStage, decision: ApprovalDecision = .approve, approver: String, key: SigningKey,
        comment: String? = nil
    ) async throws -> ChangeRecord {
        let statement = try statement(for: id, stage: stage, decision: decision, approver: approver, comment: comment)
        return try await record(try key.sign(statement, as: .approval), for: id)
    }

    /// Verifies a signed approval and records it; when it completes its stage, the stage passes
    /// in the same transaction.
    ///
    /// - Throws: a refusal (nothing recorded) for a tampered or untrusted signature, a second
    ///   vote by one key, a self-approval the policy forbids, a voided digest, a skipped state,
    ///   a release without complete evidence, a scope other than the change's.
    @discardableResult
    public func record(_ envelope: SignedEnvelope, for id: String) async throws -> ChangeRecord {
        let current = try read(id)
        let (vote, statement) = try verify(envelope, for: current)
        let gate = statement.stage == .release && statement.decision == .approve ? try gate(for: current) : nil
        if let gate, !gate.passes {
            throw ChangelabError(
                "the release of \(id) is refused: the evidence is incomplete",
                why: "\n    - " + gate.missing.joined(separator: "\n    - "),
                fix: "run the missing cells (changelab matrix run \(current.package)), then 'changelab change evidence \(id)'")
        }
        if let gate, Set(statement.evidence) != Set(gate.evidenceDigests) {
            throw ChangelabError(
                "the release approval by \(vote.signer) names other evidence than the CMDB holds for \(id)",
                why: "the evidence changed since it was signed (a new matrix run)", fix: "sign it again over the current evidence")
        }
        let policy = policy
        let name = "\(statement.decision == .approve ? "approve" : "reject")-\(statement.stage.rawValue)"
        let reason = "\(vote.signer) (\(String(vote.key.prefix(12)))…)" + (statement.comment.map { ": \($0)" } ?? "")
        return try await step(id, name, reason: reason) { [actor] record, date in
            var stored = vote
            stored.recordedAt = date
            var next = try record.applying(.approvalRecorded(stored), by: actor, at: date, reason: reason)
            guard next.lifecycle == .open, let rule = policy.rule(for: next.type) else { return next }
            switch statement.stage {
            case .preliminary:
                if let stage = rule.preliminary, Self.distinctKeys(next.approvals(.preliminary)) >= stage.approvals {
                    next = try next.applying(
                        .preliminaryApproved, by: actor, at: date, reason: "\(stage.approvals) approval(s) from \(stage.roles.map(\.rawValue).joined(separator: "/"))")
                }
            case .release:
                guard let gate else { return next }
                let check = ReleaseCheck(
                    authorization: Self.authorization(of: next, evidence: gate.evidence.map { $0.envelope }),
                    policy: policy, artifact: gate.artifact)
                if check.problems(baseline: nil).isEmpty {
                    next = try next.applying(.releaseApproved, by: actor, at: date, reason: "release threshold reached on complete evidence")
                }
            }
            return next
        }
    }

    /// Releases a standard change: no votes, the gate alone.
    @discardableResult
    public func releaseStandard(_ id: String) async throws -> ChangeRecord {
        let record = try read(id)
        guard record.type == .standard else {
            throw ChangelabError(
                "\(id) is a \(record.type.rawValue) change: its release needs the CCB's signatures",
                fix: "changelab change approve \(id) --stage release --as NAME")
        }
        guard let gate = try gate(for: record) else {
            throw ChangelabError("change \(id) has no built artifact", fix: "changelab change evidence \(id)")
        }
        guard gate.passes else {
            throw ChangelabError(
                "the release of \(id) is refused: the evidence is incomplete",
                why: "\n    - " + gate.missing.joined(separator: "\n    - "), fix: "run the missing cells, then 'changelab change evidence \(id)'")
        }
        return try await apply(.releaseApproved, to: id, reason: "standard change: pre-authorised, evidence complete")
    }

    static func distinctKeys(_ approvals: [RecordedApproval]) -> Int { Set(approvals.map(\.key)).count }

    /// The bundle the core and the agents check for this change (without the trust roots,
    /// which come from the chain file).
    public static func authorization(of record: ChangeRecord, evidence: [SignedEnvelope], trustRoots: [SignedEnvelope] = [])
        -> ChangeAuthorization
    {
        ChangeAuthorization(
            change: record.id, type: record.type, scope: record.scope, trustRoots: trustRoots, evidence: evidence,
            approvals: record.approvals(.release).map(\.envelope))
    }

    /// Checks one signed approval against the policy and the change; the vote to record.
    public func verify(_ envelope: SignedEnvelope, for record: ChangeRecord) throws -> (RecordedApproval, ApprovalStatement) {
        func refuse(_ what: String, fix: String? = nil) -> ChangelabError {
            ChangelabError("the approval for \(record.id) is refused", why: what, fix: fix)
        }
        let statement: ApprovalStatement
        do {
            statement = try envelope.open(ApprovalStatement.self, as: .approval, trusting: policy.approverKeys)
        } catch .badSignature {
            throw refuse("\(SignatureRefusal.badSignature)", fix: "the approval was altered after it was signed: ask the approver to sign it again")
        } catch {
            throw refuse("\(error)", fix: "only keys listed under 'approvers:' in the policy count; sign with one (changelab approver list)")
        }
        let signers = (try? envelope.signers(as: .approval, trusting: policy.approverKeys)) ?? []
        guard signers.count == 1, let key = signers.first, let approver = policy.approver(with: key) else {
            throw refuse("an approval carries exactly one approver's signature; this one has \(signers.count)")
        }
        guard statement.change == record.id else { throw refuse("it is an approval of \(statement.change), not of \(record.id)") }
        guard statement.package == record.package, statement.changeType == record.type else {
            throw refuse("it approves a \(statement.changeType.rawValue) change of \(statement.package), and \(record.id) is a \(record.type.rawValue) change of \(record.package)")
        }
        guard statement.requester == record.requester else {
            throw refuse("it names \(statement.requester) as requester; \(record.id) was proposed by \(record.requester)")
        }
        guard let rule = policy.rule(for: record.type) else { throw refuse("the policy has no rules for \(record.type.rawValue) changes") }
        let stageRule = statement.stage == .preliminary ? rule.preliminary : rule.release
        guard let stageRule else {
            throw refuse("\(record.type.rawValue) changes have no \(statement.stage.rawValue) vote under the policy")
        }
        if !stageRule.roles.contains(approver.role) {
            throw refuse(
                "\(approver.name) sits on \(approver.role.rawValue); the \(statement.stage.rawValue) stage of \(record.type.rawValue) changes is approved by \(stageRule.roles.map(\.rawValue).joined(separator: "/"))")
        }
        // Judged on the signed identity: the approver the key belongs to, never a name claimed.
        if !stageRule.selfApproval && approver.name == record.requester && statement.decision == .approve {
            throw refuse(
                "\(approver.name) requested \(record.id) and the policy forbids approving one's own change",
                fix: "another approver must sign")
        }
        if statement.stage == .release {
            guard let artifact = record.artifact else { throw refuse("\(record.id) has no built artifact yet") }
            guard statement.artifact == artifact else {
                throw refuse(
                    "it approves artifact \(statement.artifact?.short ?? "none")…, and \(record.id)'s artifact is \(artifact.short)…: the artifact was rebuilt, which voids approvals of the old digest",
                    fix: "sign a new approval over the current artifact")
            }
            guard statement.scope == record.scope else {
                throw refuse(
                    "it approves targets '\(statement.scope?.targets ?? "")' rings '\(statement.scope?.rings ?? "")', and the change's scope is targets '\(record.scope.targets)' rings '\(record.scope.rings)'")
            }
        }
        let vote = RecordedApproval(
            stage: statement.stage, decision: statement.decision, signer: approver.name, key: key.hex,
            artifact: statement.artifact, envelope: envelope, recordedAt: now(), recordedBy: actor)
        // The state machine's own refusals (skipped state, a key twice), before any write.
        do {
            _ = try record.applying(.approvalRecorded(vote), by: actor, at: now())
        } catch {
            throw refuse(error.reason, fix: error.fix)
        }
        return (vote, statement)
    }
}

/// What a transaction's body produced, carried out of the writer's closure.
final class Outcome<T: Sendable>: @unchecked Sendable {
    // Written once inside the transaction, read after it returned: never concurrently.
    var value: T?
}
