import CMDB
import ChangeControl
import Foundation
import HostIO
import Model

/// A real CMDB in a temp folder with two approved baselines (web, db), a draft (mail), a
/// fleet of targets, real approver keys and a lab key, and helpers to record matrix runs
/// with signed evidence.
struct Lab {
    static let start = Date(timeIntervalSince1970: 1_790_000_000)

    let folder: String
    let writer: CMDBWriter
    let labKey = SigningKey()
    var approverKeys: [String: SigningKey] = [:]
    var policy: ApprovalPolicy
    let recipes = [
        BaselineRecipe(name: "web", approved: true), BaselineRecipe(name: "db", approved: true),
        BaselineRecipe(name: "mail", approved: false),
    ]

    static let inventory = InventorySnapshot(
        hostname: "base", os: OSRelease(id: "debian", versionID: "12", versionCodename: "bookworm", prettyName: "Debian 12"),
        kernel: KernelInfo(release: "6.1.0-18-amd64", machine: "x86_64"), cpu: CPUInfo(model: "QEMU", count: 1),
        memory: MemoryInfo(totalKiB: 500_000), packages: [], watchedPaths: ["/etc"], files: [], units: [], users: [],
        groups: [], ports: [])

    /// Approvers: alice, bob, carol on the CCB; erin on the emergency CAB.
    static func make(actor: String = "dave") async throws -> Lab {
        let folder = NSTemporaryDirectory() + "changelab-change-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let writer = try await CMDBWriter(
            path: folder + "/cmdb", actor: actor, keyring: CMDBKeyring(directory: folder + "/keys"))
        var lab = Lab(folder: folder, writer: writer, policy: ApprovalPolicy())
        var approvers: [Approver] = []
        for (name, role) in [("alice", ApproverRole.ccb), ("bob", .ccb), ("carol", .ccb), ("dave", .ccb), ("erin", .emergencyCAB)] {
            let key = SigningKey()
            lab.approverKeys[name] = key
            approvers.append(Approver(name: name, role: role, key: key.publicKey.hex))
        }
        lab.policy = ApprovalPolicy(
            approvers: approvers, labKeys: [lab.labKey.publicKey.hex], rootThreshold: 2,
            changeTypes: [
                "normal": ChangeTypeRule(
                    preliminary: StageRule(approvals: 2, roles: [.ccb]), release: StageRule(approvals: 2, roles: [.ccb]),
                    lanes: ["install", "uninstall"]),
                "standard": ChangeTypeRule(preliminary: nil, release: nil, lanes: ["install", "uninstall"]),
                "emergency": ChangeTypeRule(
                    preliminary: nil, release: StageRule(approvals: 1, roles: [.emergencyCAB]), lanes: ["install"]),
            ], standardPackages: ["tzdata-local"], defaultRate: 1000)
        for name in ["web", "db"] {
            try await writer.recordBuiltBaseline(
                name: name, inventory: inventory, imageDigest: SHA256Digest(of: "\(name)-image-1"), at: start)
        }
        let targets: [(String, String, String, String)] = [
            ("paris-1", "paris", "s1", "web@1"), ("paris-2", "paris", "s1", "web@1"), ("lyon-1", "lyon", "s2", "db@1"),
            ("lyon-2", "lyon", "s2", "mail@1"),
        ]
        for (name, site, segment, baseline) in targets {
            try await writer.record(
                target: TargetRecord(name: name, attributes: ["site": site, "segment": segment, "baseline": baseline]))
        }
        return lab
    }

    var store: ChangeStore {
        var store = ChangeStore(writer: writer, policy: policy, recipes: recipes)
        store.now = { Lab.start.addingTimeInterval(3600) }
        return store
    }

    func remove() { try? FileManager.default.removeItem(atPath: folder) }

    static func artifact(_ package: String = "greeterd", build: Int = 1) -> ArtifactRecord {
        ArtifactRecord(
            digest: SHA256Digest(of: "\(package)-build-\(build)"), package: package, version: "1.1.0", size: 10_000,
            recordedAt: start.addingTimeInterval(Double(build)))
    }

    /// Records a run of `artifact` with a cell per (baseline, lane, green?) and the lab's signed evidence.
    @discardableResult
    func run(
        _ id: String, _ artifact: ArtifactRecord, cells: [(String, String, Bool)], signedBy key: SigningKey? = nil,
        image: (String) -> SHA256Digest = { SHA256Digest(of: "\($0)-image-1") },
        delta: ConfigurationDelta = ConfigurationDelta()
    ) async throws -> SignedEnvelope {
        if !writer.store.exists(CMDBReference(.artifact, artifact.digest.hex)) { try await writer.record(artifact: artifact) }
        let base = try await writer.record(inventory: Self.inventory)
        var evidence: [EvidenceCell] = []
        var cellRecords: [CellRecord] = []
        for (baseline, lane, green) in cells {
            let ref = BaselineRef(name: baseline, version: 1)
            let cell = CellRecord(
                run: id, name: "\(baseline).\(lane)", baseline: ref, artifact: artifact.digest, verdict: green ? .passed : .failed,
                failure: green ? nil : .product, reason: green ? nil : "test failed", startedAt: Self.start, seconds: 10,
                before: base, installDelta: delta)
            cellRecords.append(cell)
            evidence.append(
                EvidenceCell(
                    name: cell.name, baseline: ref, imageDigest: image(baseline), lane: lane, verdict: cell.verdict,
                    failure: cell.failure, delta: SHA256Digest(of: try StableJSON.data(delta)), violations: [],
                    residue: false, commit: nil))
        }
        let statement = EvidenceStatement(
            run: id, package: artifact.package, version: artifact.version, artifact: artifact.digest, cells: evidence,
            recordedAt: Self.start)
        let envelope = try (key ?? labKey).sign(statement, as: .evidence)
        try await writer.record(
            run: RunRecord(
                id: id, artifact: artifact.digest, baselines: [], startedAt: Self.start,
                finishedAt: Self.start.addingTimeInterval(60), status: cells.allSatisfy(\.2) ? .passed : .failed,
                evidence: envelope))
        for cell in cellRecords { try await writer.record(cell: cell) }
        return envelope
    }

    /// Every required cell green on web and db.
    static let fullGreen: [(String, String, Bool)] = [
        ("web", "install", true), ("web", "uninstall", true), ("db", "install", true), ("db", "uninstall", true),
    ]

    func key(_ name: String) -> SigningKey { approverKeys[name] ?? SigningKey() }
}
