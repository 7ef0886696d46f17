import Foundation
import HostIO
import Model

@testable import CMDB

/// Inventories and records for a small CMDB: two baselines, one artifact (nginx), a run
/// with a passed cell on web and a failed one on db, and three fleet targets.
enum Fixture {
    static let start = Date(timeIntervalSince1970: 1_790_000_000)

    static func temporaryFolder(_ name: String = "cmdb") -> String {
        NSTemporaryDirectory() + "changelab-\(name)-\(UUID().uuidString)"
    }

    /// Removes a test's CMDB and what the crash tests put beside it.
    static func remove(_ path: String) {
        for suffix in ["", ".acks", ".acks.err"] { try? FileManager.default.removeItem(atPath: path + suffix) }
    }

    static var web: InventorySnapshot {
        InventorySnapshot(
            hostname: "web",
            os: OSRelease(id: "debian", versionID: "12", versionCodename: "bookworm", prettyName: "Debian 12"),
            kernel: KernelInfo(release: "6.1.0-18-amd64", machine: "x86_64"), cpu: CPUInfo(model: "QEMU", count: 1),
            memory: MemoryInfo(totalKiB: 500_000),
            packages: [
                PackageRecord(name: "openssl", architecture: "amd64", version: "3.0.11-1~deb12u2"),
                PackageRecord(name: "openssh-server", architecture: "amd64", version: "1:9.2p1-2+deb12u2"),
            ],
            watchedPaths: ["/etc"],
            files: [
                FileRecord(
                    path: "/etc/ssh/sshd_config", kind: .file, mode: "0644", owner: "root", group: "root", size: 10,
                    sha256: String(repeating: "a", count: 64))
            ],
            units: [UnitRecord(name: "ssh.service", enabled: "enabled", active: "active")],
            users: [UserRecord(name: "root", uid: 0, gid: 0, home: "/root", shell: "/bin/bash")],
            groups: [GroupRecord(name: "root", gid: 0)],
            ports: [PortRecord(transport: .tcp, address: "0.0.0.0", port: 22)])
    }

    static var db: InventorySnapshot {
        var s = web
        s.hostname = "db"
        s.packages[0].version = "3.0.13-1~deb12u1"
        s.packages.append(PackageRecord(name: "redis-server", architecture: "amd64", version: "5:7.0.15-1~deb12u1"))
        s.units.append(UnitRecord(name: "redis-server.service", enabled: "enabled", active: "active"))
        return s.normalized()
    }

    /// web with nginx installed.
    static var webWithNginx: InventorySnapshot {
        var s = web
        s.packages.append(PackageRecord(name: "nginx", architecture: "amd64", version: "1.22.1-9"))
        s.files.append(
            FileRecord(
                path: "/etc/nginx/nginx.conf", kind: .file, mode: "0644", owner: "root", group: "root", size: 20,
                sha256: String(repeating: "b", count: 64)))
        s.units.append(UnitRecord(name: "nginx.service", enabled: "enabled", active: "active"))
        s.ports.append(PortRecord(transport: .tcp, address: "0.0.0.0", port: 80))
        s.users.append(UserRecord(name: "www-data", uid: 33, gid: 33, home: "/var/www", shell: "/usr/sbin/nologin"))
        return s.normalized()
    }

    static let artifact = ArtifactRecord(
        digest: SHA256Digest(of: "nginx-1.22.1-9.deb"), package: "nginx", version: "1.22.1-9", size: 1234,
        recordedAt: start)

    static func cell(
        _ run: String, _ name: String, baseline: BaselineRef, before: InventorySnapshot, after: InventorySnapshot,
        passed: Bool = true
    ) -> CellRecord {
        CellRecord(
            run: run, name: name, baseline: baseline, artifact: artifact.digest, verdict: passed ? .passed : .failed,
            failure: passed ? nil : .product, reason: passed ? nil : "nginx -t failed", startedAt: start, seconds: 42,
            before: InventoryRecord(before).digest, installDelta: ConfigurationDelta(from: before, to: after))
    }

    /// Creates the fixture CMDB at `path` and returns its writer.
    @discardableResult
    static func make(at path: String, actor: String = "tester") async throws -> CMDBWriter {
        let writer = try await CMDBWriter(path: path, actor: actor)
        let web1 = try await writer.recordBuiltBaseline(
            name: "web", inventory: web, imageDigest: SHA256Digest(of: "web-image"), at: start)
        let db1 = try await writer.recordBuiltBaseline(
            name: "db", inventory: db, imageDigest: SHA256Digest(of: "db-image"), at: start)
        try await writer.record(artifact: artifact)
        try await writer.record(
            run: RunRecord(
                id: "run-1", artifact: artifact.digest, baselines: [web1.ref, db1.ref], startedAt: start,
                finishedAt: start.addingTimeInterval(100), status: .failed, actor: actor))
        try await writer.record(cell: cell("run-1", "web", baseline: web1.ref, before: web, after: webWithNginx))
        var dbAfter = db
        dbAfter.packages.append(PackageRecord(name: "nginx", architecture: "amd64", version: "1.22.1-9"))
        try await writer.record(
            cell: cell("run-1", "db", baseline: db1.ref, before: db, after: dbAfter.normalized(), passed: false))
        try await writer.record(
            target: TargetRecord(
                name: "paris-1", attributes: ["site": "paris", "department": "finance"], baseline: web1.ref),
            inventory: web, at: start)
        var drifted = web
        drifted.files[0].sha256 = String(repeating: "c", count: 64)
        try await writer.record(
            target: TargetRecord(
                name: "lyon-1", attributes: ["site": "lyon", "department": "sales"], baseline: web1.ref),
            inventory: drifted, at: start)
        try await writer.record(
            target: TargetRecord(
                name: "lyon-2", attributes: ["site": "lyon", "department": "finance"], baseline: db1.ref),
            inventory: db, at: start)
        return writer
    }
}

/// Runs git in a CMDB for checks.
func git(_ path: String, _ arguments: String...) async throws -> String {
    try await HostCommand.check("git", ["-C", path] + arguments).stdoutText
}
