import Foundation
import HostIO
import Model

/// `changelab bench cmdb`: a CMDB with many recorded cells, timed.
///
/// Ten synthetic baselines (about 300 packages, 800 files, 60 units each); runs of one cell
/// per baseline, each cell recorded in its own transaction as the matrix does; then
/// queries across everything and `verify`.
public enum CMDBBenchmark {
    public struct QueryTiming: Codable, Sendable {
        public var query: String
        public var matches: Int
        /// Best of three, index loaded and checked against the branch each time.
        public var seconds: Double
    }

    public struct Result: Codable, Sendable {
        public var path: String
        public var cells: Int
        public var transactions: Int
        public var recordSeconds: Double
        public var cellsPerSecond: Double
        /// Whether each transaction made its objects durable (the first of its two `syncfs`).
        public var objectSync: Bool
        /// Mean `syncfs` time per cell transaction (both calls: the objects', then the journal,
        /// records and branch's), and its share of the cells' recording time.
        public var syncMillisecondsPerTransaction: Double
        public var syncShare: Double
        public var indexRebuildSeconds: Double
        public var queries: [QueryTiming]
        public var slowestQuerySeconds: Double
        public var verifySeconds: Double
        public var verifyPassed: Bool
        public var targets: [String: Bool]
    }

    public static let queries = [
        "package:openssl < 3.0.13",
        "file:/etc/nginx/nginx.conf changed and verdict = passed",
        "service:nginx enabled and not port:tcp/80",
        "package:lib* >= 2 and baseline = base-3",
        "kind = cell and verdict = failed and package.version >= 1.22.1-9",
    ]

    /// Records `cells` cells into a new CMDB at `path` and times the queries and verify.
    ///
    /// - Parameter acknowledge: called with each cell's id once its transaction committed.
    public static func run(
        cells: Int, path: String, actor: String = "changelab-bench", objectSync: Bool = true,
        keyring: CMDBKeyring = .default, acknowledge: (@Sendable (String) -> Void)? = nil,
        progress: (@Sendable (String) -> Void)? = nil
    ) async throws -> Result {
        let writer = try await CMDBWriter(
            path: path, actor: actor, lockTimeout: .seconds(120), keyring: keyring, objectSync: objectSync)
        let baselineCount = 10
        var baselines: [(BaselineVersionRecord, InventorySnapshot)] = []
        for i in 0..<baselineCount {
            let snapshot = baselineInventory(i)
            let record = try await writer.recordBuiltBaseline(
                name: "base-\(i)", inventory: snapshot, imageDigest: SHA256Digest(of: "image-\(i)"))
            baselines.append((record, snapshot))
        }
        progress?("recording \(cells) cells, one transaction each")
        let started = ContinuousClock.now
        var cellSeconds = 0.0
        var syncSeconds = 0.0
        var transactions = 0
        var recorded = 0
        var runNumber = 0
        // Deltas repeat every 36 runs; computing them is the benchmark's work, not the CMDB's.
        var deltas: [String: ConfigurationDelta] = [:]
        while recorded < cells {
            runNumber += 1
            let runID = "bench-\(runNumber)"
            let artifact = ArtifactRecord(
                digest: SHA256Digest(of: "artifact-\(runNumber)"), package: "nginx",
                version: "1.22.1-\(runNumber % 12)",
                size: 1_000_000 + runNumber, recordedAt: Date())
            try await writer.record(artifact: artifact)
            try await writer.record(
                run: RunRecord(
                    id: runID, artifact: artifact.digest, baselines: baselines.map(\.0.ref), startedAt: Date(),
                    status: .running, actor: actor))
            transactions += 2
            for (index, (baseline, inventory)) in baselines.enumerated() where recorded < cells {
                let variant = "\(index)-\(runNumber % 36)"
                let delta = deltas[variant] ?? installDelta(inventory, run: runNumber)
                deltas[variant] = delta
                let failed = (runNumber + baseline.version + recorded) % 7 == 0
                let cell = CellRecord(
                    run: runID, name: baseline.name, baseline: baseline.ref, artifact: artifact.digest,
                    verdict: failed ? .failed : .passed, failure: failed ? .product : nil,
                    reason: failed ? "regression suite failed" : nil, startedAt: Date(), seconds: 30,
                    before: baseline.inventory, installDelta: delta)
                let cellStart = ContinuousClock.now
                syncSeconds += try await writer.record(cell: cell).syncSeconds
                cellSeconds += cellStart.secondsSince
                transactions += 1
                recorded += 1
                acknowledge?(cell.recordID)
                if recorded % 1000 == 0 { progress?("\(recorded) cells recorded") }
            }
        }
        let recordSeconds = started.secondsSince
        await writer.close()
        let store = writer.store

        progress?("building the query index")
        let rebuildStart = ContinuousClock.now
        try await store.rebuildQueryIndex()
        let rebuildSeconds = rebuildStart.secondsSince
        var timings: [QueryTiming] = []
        for text in queries {
            let query = try Query(text)
            var best = Double.infinity
            var matches = 0
            for _ in 0..<3 {
                let start = ContinuousClock.now
                matches = try await store.query(query).count
                best = min(best, start.secondsSince)
            }
            timings.append(QueryTiming(query: text, matches: matches, seconds: best))
        }
        progress?("verifying")
        let report = try await store.verify(trustedKeys: keyring.trustedKeysPath)
        let slowest = timings.map(\.seconds).max() ?? 0
        let perSecond = cellSeconds > 0 ? Double(cells) / cellSeconds : 0
        return Result(
            path: store.path, cells: cells, transactions: transactions, recordSeconds: recordSeconds,
            cellsPerSecond: perSecond, objectSync: objectSync,
            syncMillisecondsPerTransaction: syncSeconds * 1000 / Double(max(1, cells)),
            syncShare: cellSeconds > 0 ? syncSeconds / cellSeconds : 0, indexRebuildSeconds: rebuildSeconds, queries: timings,
            slowestQuerySeconds: slowest, verifySeconds: report.seconds, verifyPassed: report.passed,
            targets: ["query ≤ 200 ms": slowest <= 0.2, "recording ≥ 50 cells/s": perSecond >= 50])
    }

    /// A plausible Debian 12 system: base packages, libraries, configuration files, units.
    static func baselineInventory(_ i: Int) -> InventorySnapshot {
        var packages = [
            PackageRecord(name: "openssl", architecture: "amd64", version: "3.0.\(9 + i % 6)-1~deb12u1"),
            PackageRecord(name: "openssh-server", architecture: "amd64", version: "1:9.2p1-2+deb12u\(i % 3)"),
        ]
        for p in 0..<300 {
            packages.append(
                PackageRecord(
                    name: p % 3 == 0 ? "lib\(p)-x" : "pkg-\(p)", architecture: p % 5 == 0 ? "all" : "amd64",
                    version: "\(p % 4).\(p % 10).\(i)-\(p % 3 + 1)"))
        }
        var files: [FileRecord] = []
        for f in 0..<800 {
            files.append(
                FileRecord(
                    path: "/etc/app-\(f / 20)/file-\(f % 20).conf", kind: .file, mode: f % 9 == 0 ? "0600" : "0644",
                    owner: "root", group: "root", size: 100 + f, sha256: SHA256Digest(of: "\(i)-\(f)").hex))
        }
        return InventorySnapshot(
            hostname: "base-\(i)",
            os: OSRelease(
                id: "debian", versionID: "12", versionCodename: "bookworm", prettyName: "Debian GNU/Linux 12"),
            kernel: KernelInfo(release: "6.1.0-\(18 + i % 3)-amd64", machine: "x86_64"),
            cpu: CPUInfo(model: "QEMU Virtual CPU", count: 1), memory: MemoryInfo(totalKiB: 500_000),
            disks: [DiskRecord(mountPoint: "/", device: "/dev/vda", fileSystem: "ext4", sizeKiB: 2_000_000)],
            packages: packages, watchedPaths: ["/etc"], files: files,
            units: (0..<60).map { UnitRecord(name: "svc-\($0).service", enabled: "enabled", active: "active") },
            users: (0..<25).map {
                UserRecord(name: "user\($0)", uid: 100 + $0, gid: 100 + $0, home: "/", shell: "/usr/sbin/nologin")
            },
            groups: (0..<35).map { GroupRecord(name: "group\($0)", gid: 100 + $0) },
            ports: [PortRecord(transport: .tcp, address: "0.0.0.0", port: 22)]
        ).normalized()
    }

    /// What installing nginx does: packages, configuration files, a unit, a user, a port.
    static func installDelta(_ baseline: InventorySnapshot, run: Int) -> ConfigurationDelta {
        var after = baseline
        after.packages.append(PackageRecord(name: "nginx", architecture: "amd64", version: "1.22.1-\(run % 12)"))
        after.packages.append(PackageRecord(name: "nginx-common", architecture: "all", version: "1.22.1-\(run % 12)"))
        for name in ["nginx.conf", "mime.types", "fastcgi_params", "sites-available/default", "sites-enabled/default"] {
            after.files.append(
                FileRecord(
                    path: "/etc/nginx/\(name)", kind: .file, mode: "0644", owner: "root", group: "root", size: 1000,
                    sha256: SHA256Digest(of: "\(name)-\(run % 5)").hex))
        }
        if run % 4 == 0 { after.files[3].mode = "0640" }
        after.units.append(
            UnitRecord(name: "nginx.service", enabled: run % 9 == 0 ? "disabled" : "enabled", active: "active"))
        after.users.append(UserRecord(name: "www-data", uid: 33, gid: 33, home: "/var/www", shell: "/usr/sbin/nologin"))
        if run % 9 != 0 { after.ports.append(PortRecord(transport: .tcp, address: "0.0.0.0", port: 80)) }
        return ConfigurationDelta(from: baseline, to: after.normalized())
    }
}
