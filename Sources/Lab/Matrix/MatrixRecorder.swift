import CMDB
import Foundation
import Model

/// Records a finished run in the CMDB: the baselines it tested (as CMDB versions, with
/// their inventories), the artifact, the run, and every cell with its delta, residue and
/// inventory after install. This is the evidence release approval asks for.
struct MatrixRecorder {
    let lab: Lab
    let cmdb: String

    func record(_ run: MatrixRun, artifact: ArtifactManifest) async throws -> MatrixRun {
        var run = run
        let writer = try await CMDBWriter(path: cmdb, actor: CMDBWriter.defaultActor)
        var refs: [String: BaselineRef] = [:]
        var before: [String: SHA256Digest] = [:]
        for (index, baseline) in run.baselines.enumerated() {
            // The image this run tested, even if the baseline was rebuilt since.
            let directory = lab.home.imageDirectory(baseline.name, recipeDigest: baseline.recipeDigest)
            guard let image = try BaselineImage.load(from: directory), image.imageDigest == baseline.imageDigest else {
                throw ChangelabError(
                    "cannot record run \(run.id): the image of \(baseline.name) it tested (\(baseline.imageDigest.short)) is gone")
            }
            // An adopted version the cells were prepared as is what they tested; else the image.
            let version: BaselineVersionRecord
            if let standard = baseline.standard {
                version = try standardVersion(standard, of: baseline, in: writer.store)
            } else {
                version = try await lab.record(image, writer: writer)
            }
            run.baselines[index].cmdbVersion = version.version
            refs[baseline.name] = version.ref
            before[baseline.name] = version.inventory
        }
        try await writer.record(
            artifact: ArtifactRecord(
                digest: artifact.digest, package: artifact.name, version: artifact.version, size: artifact.size,
                recipeDigest: artifact.recipeDigest, recordedAt: artifact.builtAt))
        let evidenceKey = try lab.home.evidenceKey()
        var runRecord = RunRecord(
            id: run.id, artifact: artifact.digest, baselines: run.baselines.compactMap { refs[$0.name] },
            startedAt: run.startedAt, finishedAt: run.finishedAt, status: run.allPassed ? .passed : .failed,
            actor: writer.actor)
        try await writer.record(run: runRecord)
        var recorded: [(CellRecord, CMDBCommit)] = []
        for plan in run.cells {
            guard let result = run.results[plan.id], let ref = refs[plan.baseline], let base = before[plan.baseline] else {
                continue
            }
            let after = Self.inventory(at: MatrixRun.afterInventoryPath(lab.home, run.id, plan.id))
            // A prepared cell's delta is from the standard configuration it measured.
            let prepared = Self.inventory(at: MatrixRun.beforeInventoryPath(lab.home, run.id, plan.id))
            var cellBefore = base
            if let prepared { cellBefore = try await writer.record(inventory: prepared) }
            let failure: CellRecord.FailureClass? =
                switch result.verdict {
                case .pass: nil
                case .fail: .product
                case .error: .infrastructure
                case .timeout: .timeout
                }
            let tests = result.steps.filter { $0.phase == .test || $0.phase == .regression }.map {
                CellRecord.TestResult(
                    name: "\($0.phase.rawValue)/\($0.name)", passed: $0.status == .passed, seconds: $0.seconds,
                    detail: $0.status == .passed ? nil : $0.detail)
            }
            let cell = CellRecord(
                run: run.id, name: plan.id, baseline: ref, artifact: artifact.digest,
                verdict: result.passed ? .passed : .failed, failure: failure, reason: result.reason.isEmpty ? nil : result.reason,
                attempts: result.attempts, startedAt: result.startedAt, seconds: result.timings.total, before: cellBefore,
                installDelta: result.delta ?? ConfigurationDelta(), residue: result.residue, violations: result.violations,
                tests: tests)
            recorded.append((cell, try await writer.record(cell: cell, after: after)))
        }
        // The lab signs what it recorded: release approvals and agents judge this statement.
        runRecord.evidence = try evidenceKey.sign(EvidenceStatement(run: run, cells: recorded), as: .evidence)
        try await writer.record(run: runRecord)
        await writer.close()
        return run
    }

    private static func inventory(at path: String) -> InventorySnapshot? {
        FileManager.default.contents(atPath: path).flatMap { try? StableJSON.decode(InventorySnapshot.self, from: $0) }
    }

    /// The adopted (or reverted) version the run's cells were prepared as, still standing on
    /// the image they ran.
    private func standardVersion(
        _ standard: StandardConfiguration, of baseline: MatrixRun.BaselineUnderTest, in store: CMDBStore
    ) throws -> BaselineVersionRecord {
        let version = try store.read(BaselineVersionRecord.self, standard.version.description)
        let built = try store.read(BaselineVersionRecord.self, standard.built.description)
        guard built.imageDigest == baseline.imageDigest else {
            throw ChangelabError(
                "cannot record the run on \(standard.version): \(standard.built) is not the image its cells ran (\(baseline.imageDigest.short))",
                fix: "run 'changelab cmdb verify'")
        }
        return version
    }
}

extension Lab {
    /// Records a built baseline image in the CMDB with the inventory of a pristine restore:
    /// a new version when anything differs from the newest, else that version unchanged.
    public func record(_ image: BaselineImage, writer: CMDBWriter) async throws -> BaselineVersionRecord {
        let inventory = try await baselineInventory(image)
        return try await writer.recordBuiltBaseline(
            name: image.name, inventory: inventory, recipeDigest: image.recipeDigest, imageDigest: image.imageDigest)
    }
}
