import Foundation
import Model
import Testing

/// Golden files live beside this source; `CHANGELAB_UPDATE_GOLDEN=1` rewrites them.
enum Golden {
    static let folder = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")

    static func check(_ actual: String, against name: String, sourceLocation: SourceLocation = #_sourceLocation) throws
    {
        let url = folder.appendingPathComponent(name)
        if ProcessInfo.processInfo.environment["CHANGELAB_UPDATE_GOLDEN"] == "1" {
            try actual.write(to: url, atomically: true, encoding: .utf8)
        }
        let expected = try String(contentsOf: url, encoding: .utf8)
        #expect(actual == expected, "differs from golden file \(name)", sourceLocation: sourceLocation)
    }
}

/// A small Debian 12 system before and after installing nginx and upgrading openssl.
enum Sample {
    static let baseline = InventorySnapshot(
        hostname: "web1",
        os: OSRelease(
            id: "debian", versionID: "12", versionCodename: "bookworm", prettyName: "Debian GNU/Linux 12 (bookworm)"),
        kernel: KernelInfo(release: "6.1.0-18-amd64", machine: "x86_64"),
        cpu: CPUInfo(model: "QEMU Virtual CPU version 2.5+", count: 2),
        memory: MemoryInfo(totalKiB: 503_000),
        disks: [DiskRecord(mountPoint: "/", device: "/dev/vda", fileSystem: "ext4", sizeKiB: 2_000_000)],
        packages: [
            PackageRecord(name: "openssl", architecture: "amd64", version: "3.0.11-1~deb12u2"),
            PackageRecord(name: "openssh-server", architecture: "amd64", version: "1:9.2p1-2+deb12u2"),
            PackageRecord(name: "libc6", architecture: "amd64", version: "2.36-9+deb12u4"),
            PackageRecord(name: "old-tool", architecture: "all", version: "1.0-1", status: "deinstall ok config-files"),
        ],
        watchedPaths: ["/etc"],
        files: [
            FileRecord(path: "/etc", kind: .directory, mode: "0755", owner: "root", group: "root"),
            FileRecord(
                path: "/etc/ssh/sshd_config", kind: .file, mode: "0644", owner: "root", group: "root", size: 3223,
                sha256: String(repeating: "a", count: 64)),
            FileRecord(
                path: "/etc/hosts", kind: .file, mode: "0644", owner: "root", group: "root", size: 186,
                sha256: String(repeating: "b", count: 64)),
            FileRecord(
                path: "/etc/machine-id", kind: .file, mode: "0444", owner: "root", group: "root", size: 33,
                sha256: String(repeating: "c", count: 64)),
            FileRecord(
                path: "/etc/motd", kind: .file, mode: "0644", owner: "root", group: "root", size: 10,
                sha256: String(repeating: "d", count: 64)),
        ],
        units: [
            UnitRecord(name: "ssh.service", enabled: "enabled", active: "active"),
            UnitRecord(name: "cron.service", enabled: "enabled", active: "active"),
            UnitRecord(name: "dev-vda.device", enabled: "", active: "active"),
        ],
        users: [
            UserRecord(name: "root", uid: 0, gid: 0, home: "/root", shell: "/bin/bash"),
            UserRecord(name: "sshd", uid: 100, gid: 65534, home: "/run/sshd", shell: "/usr/sbin/nologin"),
        ],
        groups: [GroupRecord(name: "root", gid: 0), GroupRecord(name: "adm", gid: 4, members: ["syslog"])],
        ports: [
            PortRecord(transport: .tcp, address: "0.0.0.0", port: 22),
            PortRecord(transport: .tcp, address: "::", port: 22),
        ])

    static var afterInstall: InventorySnapshot {
        var s = baseline
        s.packages[0].version = "3.0.13-1~deb12u1"
        s.packages.append(PackageRecord(name: "nginx", architecture: "amd64", version: "1.22.1-9"))
        s.packages.append(PackageRecord(name: "nginx-common", architecture: "all", version: "1.22.1-9"))
        s.files[1].mode = "0600"
        s.files[1].sha256 = String(repeating: "e", count: 64)
        s.files[3].sha256 = String(repeating: "f", count: 64)  // machine-id: noise
        s.files.removeLast()  // motd removed
        s.files.append(FileRecord(path: "/etc/nginx", kind: .directory, mode: "0755", owner: "root", group: "root"))
        s.files.append(
            FileRecord(
                path: "/etc/nginx/nginx.conf", kind: .file, mode: "0644", owner: "root", group: "root", size: 1482,
                sha256: String(repeating: "1", count: 64)))
        s.files.append(
            FileRecord(
                path: "/etc/nginx/sites-enabled/default", kind: .symlink, mode: "0777", owner: "root", group: "root",
                linkTarget: "/etc/nginx/sites-available/default"))
        s.units.append(UnitRecord(name: "nginx.service", enabled: "enabled", active: "active"))
        s.units.append(UnitRecord(name: "dev-vdb.device", enabled: "", active: "active"))  // noise
        s.users.append(UserRecord(name: "www-data", uid: 33, gid: 33, home: "/var/www", shell: "/usr/sbin/nologin"))
        s.groups[1].members = ["syslog", "www-data"]
        s.ports.append(PortRecord(transport: .tcp, address: "0.0.0.0", port: 80))
        return s
    }
}
