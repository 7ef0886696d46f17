import CMDB
import Foundation
import HostIO
import Model

extension LabHome {
    /// The lab's evidence key: signs every matrix run's results (readable by root only).
    public var evidenceKeyPath: String { root + "/keys/lab-evidence.key" }

    /// Loads the lab's evidence key, creating it (mode 0600, in a 0700 folder) the first time.
    public func evidenceKey() throws -> SigningKey {
        let path = evidenceKeyPath
        if let data = FileManager.default.contents(atPath: path) {
            guard let key = SigningKey(fileText: String(decoding: data, as: UTF8.self)) else {
                throw ChangelabError(
                    "the lab's evidence key \(path) is damaged",
                    fix: "restore it from backup, or delete it and register the new key ('changelab lab key') in the approval policy's lab-keys")
            }
            return key
        }
        try FileManager.default.createDirectory(
            atPath: root + "/keys", withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let key = SigningKey()
        try AtomicFile.write(key.fileText, to: path, permissions: 0o600)
        return key
    }
}

extension EvidenceStatement {
    /// The lab's statement of a recorded run: every cell with the image it ran on and the
    /// commit that recorded it.
    init(run: MatrixRun, cells: [(CellRecord, CMDBCommit)]) throws {
        let images = Dictionary(run.baselines.map { ($0.name, $0.imageDigest) }, uniquingKeysWith: { first, _ in first })
        let lanes = Dictionary(run.cells.map { ($0.id, $0.lane.rawValue) }, uniquingKeysWith: { first, _ in first })
        self.init(
            run: run.id, package: run.package, version: run.version, artifact: run.artifact,
            cells: try cells.map { cell, commit in
                EvidenceCell(
                    name: cell.name, baseline: cell.baseline, imageDigest: images[cell.baseline.name],
                    lane: lanes[cell.name] ?? "", verdict: cell.verdict, failure: cell.failure,
                    delta: SHA256Digest(of: try StableJSON.data(cell.installDelta)),
                    violations: cell.violations.map { "\($0)" }, residue: !(cell.residue?.isEmpty ?? true),
                    commit: commit.id)
            },
            recordedAt: run.finishedAt ?? Date())
    }
}
