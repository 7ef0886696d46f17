import CMDB
import Foundation
import Model

/// The fleet targets a change's target query selects, from the CMDB's target records.
public struct ScopedTargets: Sendable {
    public var targets: [TargetRecord]

    /// The targets of `store` that `query` selects (`all` or `*`: every one).
    ///
    /// - Throws: `ChangelabError` naming the column when the query does not parse.
    public init(query text: String, store: CMDBStore) throws {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        let query: Query?
        if trimmed.lowercased() == "all" || trimmed == "*" {
            query = nil
        } else {
            do {
                query = try Query(trimmed)
            } catch {
                throw ChangelabError(
                    "cannot read the target query '\(text)'", why: "\(error)",
                    fix: "write terms like 'site = paris', 'segment = s1', 'package:openssl < 3.0.13' joined by and/or/not, or 'all'")
            }
        }
        var selected: [TargetRecord] = []
        for id in store.ids(of: .target) {
            guard let target = try? store.read(TargetRecord.self, id) else { continue }
            if let query {
                var attributes = target.attributes
                attributes["name"] = attributes["name"] ?? target.name
                if let baseline = target.baseline { attributes["baseline"] = attributes["baseline"] ?? baseline.description }
                let inventory = target.inventory.flatMap { try? store.inventory($0) }
                guard query.matches(QuerySubject(attributes: attributes, inventory: inventory)) else { continue }
            }
            selected.append(target)
        }
        targets = selected
    }

    /// The baseline a target runs: its record's, else its `baseline` attribute (`NAME@N` or `NAME`).
    public static func baseline(of target: TargetRecord) -> (name: String, version: Int?)? {
        if let ref = target.baseline { return (ref.name, ref.version) }
        guard let text = target.attributes["baseline"], !text.isEmpty else { return nil }
        if let ref = BaselineRef(text) { return (ref.name, ref.version) }
        return (text, nil)
    }

    public var baselineNames: Set<String> { Set(targets.compactMap { Self.baseline(of: $0)?.name }) }
}

/// The evidence half of the release gate: for exactly one artifact, a green cell in every
/// required lane on every approved baseline and on every baseline the change's targets run.
///
/// Only evidence the lab signed counts (verified against the policy's lab keys); a cell run on
/// an image older than the baseline's newest built one is stale.
public struct ReleaseGate: Sendable {
    /// What the grid shows for one baseline and lane.
    public struct Cell: Codable, Sendable, Equatable {
        public var baseline: String
        public var lane: String
        /// green, failed, violations, stale, missing
        public var status: String
        public var run: String?
        public var detail: String?
    }

    public var artifact: SHA256Digest
    public var lanes: [String]
    /// Baselines that must be covered, with why (`approved`, `targets`).
    public var baselines: [(name: String, why: String)]
    public var grid: [Cell]
    /// The signed evidence that verified: run id → envelope.
    public var evidence: [(run: String, envelope: SignedEnvelope)]
    public var missing: [String]

    public var passes: Bool { missing.isEmpty }
    /// Payload digests of the verified evidence: what a release approval names.
    public var evidenceDigests: [SHA256Digest] { evidence.compactMap { $0.envelope.payloadDigest }.sorted { $0.hex < $1.hex } }

    /// Judges `artifact` with the runs the CMDB holds of it (only those in `runs`, when given:
    /// the evidence a change was shown).
    public init(
        artifact: SHA256Digest, lanes: [String], policy: ApprovalPolicy, recipes: [BaselineRecipe],
        targets: ScopedTargets, store: CMDBStore, runs only: Set<String>? = nil
    ) {
        self.artifact = artifact
        self.lanes = lanes
        var required: [String: String] = [:]
        for recipe in recipes where recipe.approved { required[recipe.name] = "approved" }
        for name in targets.baselineNames {
            required[name] = required[name].map { "\($0), targets" } ?? "targets"
        }
        baselines = required.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
        var missing: [String] = []
        var statements: [(run: String, statement: EvidenceStatement)] = []
        var verified: [(String, SignedEnvelope)] = []
        let runs = (only.map { Array($0) } ?? store.ids(of: .run)).compactMap { try? store.read(RunRecord.self, $0) }
            .filter { $0.artifact == artifact }
        if runs.isEmpty {
            missing.append("the CMDB has no matrix run of artifact \(artifact.short)…: run 'changelab matrix run PACKAGE'")
        }
        for run in runs.sorted(by: { $0.startedAt < $1.startedAt }) {
            guard let envelope = run.evidence else {
                if run.status != .running { missing.append("run \(run.id) has no signed evidence (the lab signs a run when it ends)") }
                continue
            }
            do {
                let statement = try envelope.open(EvidenceStatement.self, as: .evidence, trusting: policy.labPublicKeys)
                guard statement.artifact == artifact, statement.run == run.id else {
                    missing.append("the evidence stored with run \(run.id) is about another run or artifact")
                    continue
                }
                statements.append((run.id, statement))
                verified.append((run.id, envelope))
            } catch {
                missing.append("the evidence of run \(run.id) is not the lab's: \(error)")
            }
        }
        evidence = verified
        // The newest built image of each baseline: cells on an older one are stale.
        var currentImage: [String: SHA256Digest] = [:]
        for (name, _) in baselines {
            let built = ((try? store.baselineVersions(name)) ?? []).filter { $0.origin == .built }
            if let image = built.last?.imageDigest { currentImage[name] = image }
        }
        var grid: [Cell] = []
        for (name, why) in baselines {
            for lane in lanes {
                let cells = statements.flatMap { entry in
                    entry.statement.cells.filter { $0.baseline.name == name && $0.lane == lane }.map { (entry.run, $0) }
                }
                let fresh = cells.filter { cell in
                    guard let current = currentImage[name], let image = cell.1.imageDigest else { return true }
                    return image == current
                }
                if let green = fresh.last(where: { $0.1.isGreen }) {
                    grid.append(Cell(baseline: name, lane: lane, status: "green", run: green.0, detail: nil))
                    continue
                }
                let cell: Cell
                if let last = fresh.last {
                    let detail =
                        last.1.verdict == .passed
                        ? "unexpected configuration change: " + last.1.violations.joined(separator: ", ")
                        : "failed (\(last.1.failure?.rawValue ?? "product"))"
                    cell = Cell(
                        baseline: name, lane: lane, status: last.1.verdict == .passed ? "violations" : "failed",
                        run: last.0, detail: detail)
                } else if let stale = cells.last {
                    cell = Cell(
                        baseline: name, lane: lane, status: "stale", run: stale.0,
                        detail: "tested on image \(stale.1.imageDigest?.short ?? "?")…, the baseline's image is now \(currentImage[name]?.short ?? "?")…")
                } else {
                    cell = Cell(baseline: name, lane: lane, status: "missing", run: nil, detail: nil)
                }
                grid.append(cell)
                let because = cell.detail.map { ": \($0) in run \(cell.run ?? "?")" } ?? ": no cell was run"
                missing.append("no green \(lane) cell on baseline \(name) (\(why)) for artifact \(artifact.short)…\(because)")
            }
        }
        self.grid = grid
        self.missing = missing
    }
}
