import Foundation
import HostIO
import Inventory
import Model
import Testing

#if canImport(Glibc)
    import Glibc
#endif

enum Golden {
    static let folder = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")

    static func text(_ name: String) throws -> String {
        try String(contentsOf: folder.appendingPathComponent(name), encoding: .utf8)
    }

    static func check(_ actual: String, against name: String, sourceLocation: SourceLocation = #_sourceLocation) throws
    {
        if ProcessInfo.processInfo.environment["CHANGELAB_UPDATE_GOLDEN"] == "1" {
            try actual.write(to: folder.appendingPathComponent(name), atomically: true, encoding: .utf8)
        }
        #expect(actual == (try text(name)), "differs from golden file \(name)", sourceLocation: sourceLocation)
    }
}

@Suite struct InventoryParserTests {
    @Test func parsesTheScriptsOutputLikeTheGoldenInventory() throws {
        let output = try Golden.text("collector-output.txt")
        let (snapshot, warnings) = InventoryParser.parse(output, options: InventoryOptions())
        try Golden.check(try StableJSON.string(snapshot), against: "collector-output.json")
        #expect(warnings == ["unreadable package line: bad line without tabs", "unreadable file line: garbage"])
    }

    @Test func readsEachSectionTheWayItsToolPrintsIt() throws {
        let (s, _) = InventoryParser.parse(try Golden.text("collector-output.txt"), options: InventoryOptions())
        #expect(
            s.os
                == OSRelease(
                    id: "debian", versionID: "12", versionCodename: "bookworm",
                    prettyName: "Debian GNU/Linux 12 (bookworm)"))
        #expect(s.cpu == CPUInfo(model: "QEMU Virtual CPU version 2.5+", count: 2))
        #expect(s.memory.totalKiB == 503012)
        #expect(s.disks.map(\.mountPoint) == ["/", "/boot/my efi"])
        #expect(s.packages.filter { $0.name == "libc6" }.map(\.architecture) == ["amd64", "i386"])
        #expect(
            s.ports.map(\.key) == [
                "tcp 0.0.0.0:22", "tcp 127.0.0.1:25", "tcp [::1]:25", "tcp [::]:22", "tcp [::ffff:127.0.0.1]:8080",
                "udp 0.0.0.0:68", "udp [fe80::5054:ff:fe1d:adb6]:546",
            ])
        let units = Dictionary(uniqueKeysWithValues: s.units.map { ($0.name, $0) })
        #expect(units["cron.service"] == UnitRecord(name: "cron.service", enabled: "enabled", active: "active"))
        #expect(units["ssh.service"]?.active == "inactive")  // not loaded while systemd runs
        #expect(
            units["systemd-timesyncd.service"]
                == UnitRecord(name: "systemd-timesyncd.service", enabled: "masked", active: "inactive"))
        #expect(units["getty@tty1.service"]?.enabled == "enabled")  // its template's state
        #expect(units["user@0.service"] == nil)  // noise
        let files = Dictionary(uniqueKeysWithValues: s.files.map { ($0.path, $0) })
        #expect(files["/etc/machine-id"] == nil)  // noise
        #expect(files["/usr/local/lib/python3/__pycache__/x.pyc"] == nil)  // noise by glob
        #expect(files["/etc/ssh/with\ttab.conf"]?.group == "adm")
        #expect(files["/etc/back\\slash"]?.sha256 == String(repeating: "7", count: 64))
        #expect(
            files["/usr/local/bin/tool"]
                == FileRecord(
                    path: "/usr/local/bin/tool", kind: .file, mode: "4755", owner: "1234", group: "4321", size: 7,
                    sha256: String(repeating: "5", count: 64)))
        #expect(files["/etc/localtime"]?.linkTarget == "/usr/share/zoneinfo/UTC")
        #expect(files["/etc/initctl"]?.kind == .other)
    }

    @Test func withoutSystemdRunningActiveStatesAreUnknown() {
        let output = "@@changelab unit-files\nssh.service enabled enabled\n@@changelab units\n@@changelab end\n"
        let (s, warnings) = InventoryParser.parse(output, options: InventoryOptions())
        #expect(s.units == [UnitRecord(name: "ssh.service", enabled: "enabled", active: "unknown")])
        #expect(warnings.isEmpty)
    }

    @Test func truncatedOutputIsReported() {
        let (_, warnings) = InventoryParser.parse("@@changelab hostname\nweb1\n", options: InventoryOptions())
        #expect(warnings.contains { $0.contains("ended early") })
    }
}

/// Counts round trips, to prove one inventory costs one script.
final class CountingRunner: CommandRunner, @unchecked Sendable {
    private let lock = NSLock()
    private var count = 0
    var calls: Int {
        lock.lock()
        defer { lock.unlock() }
        return count
    }

    func runShell(_ script: String, timeout: Duration) async throws -> CommandResult {
        lock.withLock { count += 1 }
        return try await LocalShell().runShell(script, timeout: timeout)
    }
}

/// A Debian-like root folder in /tmp with a real dpkg database, installed into with
/// `dpkg --root`, the way a fleet agent's root is.
struct FleetRoot {
    let path: String
    let work: String

    init() async throws {
        work = NSTemporaryDirectory() + "inventory-\(UUID().uuidString)"
        path = work + "/root"
        let fm = FileManager.default
        for dir in [
            "var/lib/dpkg/info", "var/lib/dpkg/updates", "etc/systemd/system/multi-user.target.wants", "etc/demo",
            "var/log",
        ] {
            try fm.createDirectory(atPath: "\(path)/\(dir)", withIntermediateDirectories: true)
        }
        for file in ["var/lib/dpkg/status", "var/lib/dpkg/available"] {
            fm.createFile(atPath: "\(path)/\(file)", contents: nil)
        }
        try write("etc/hostname", "fleet-7\n")
        try write(
            "etc/os-release",
            "ID=debian\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n")
        try write("etc/passwd", "root:x:0:0:root:/root:/bin/bash\ndemo:x:4242:4343:Demo:/srv/demo:/usr/sbin/nologin\n")
        try write("etc/group", "root:x:0:\ndemo:x:4343:alice\n")
        try write("etc/machine-id", "0123456789abcdef0123456789abcdef\n")
        try write("var/log/syslog", "noise\n")
        try write(
            "etc/systemd/system/demo.service", "[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n"
        )
        try fm.createSymbolicLink(
            atPath: "\(path)/etc/systemd/system/multi-user.target.wants/demo.service",
            withDestinationPath: "/etc/systemd/system/demo.service")
        try write("etc/demo/secret.conf", "token=1\n")
        chmod("\(path)/etc/demo/secret.conf", 0o640)
        chown("\(path)/etc/demo/secret.conf", 4242, 4343)
        try await install(package: "demo-tool", version: "1:2.0~rc1-3", config: "hello\n")
    }

    func write(_ relative: String, _ text: String) throws {
        try text.write(toFile: "\(path)/\(relative)", atomically: false, encoding: .utf8)
    }

    /// Builds a tiny .deb with dpkg-deb and installs it into the root with dpkg.
    func install(package: String, version: String, config: String) async throws {
        let build = "\(work)/build-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: "\(build)/DEBIAN", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: "\(build)/etc/\(package)", withIntermediateDirectories: true)
        try
            "Package: \(package)\nVersion: \(version)\nArchitecture: all\nMaintainer: Test <t@example.org>\nDescription: test package\n"
            .write(toFile: "\(build)/DEBIAN/control", atomically: false, encoding: .utf8)
        try config.write(toFile: "\(build)/etc/\(package)/\(package).conf", atomically: false, encoding: .utf8)
        try await HostCommand.check("dpkg-deb", ["--build", "--root-owner-group", build, "\(build).deb"])
        try await HostCommand.check(
            "dpkg", ["--root=\(path)", "--log=/dev/null", "--force-not-root", "-i", "\(build).deb"])
    }

    func remove() { try? FileManager.default.removeItem(atPath: work) }
}

/// A listening TCP socket and a bound UDP socket on loopback, on ports the kernel picks.
final class Listeners {
    let tcp: Int32
    let udp: Int32
    let tcpPort: Int
    let udpPort: Int

    init() throws {
        func bound(_ type: Int32) throws -> (Int32, Int) {
            let fd = socket(AF_INET, type, 0)
            guard fd >= 0 else { throw IOFailure.last("socket") }
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            address.sin_port = 0
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            let ok = withUnsafeMutablePointer(to: &address) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { raw in
                    bind(fd, raw, length) == 0 && getsockname(fd, raw, &length) == 0
                }
            }
            guard ok else { throw IOFailure.last("bind") }
            return (fd, Int(UInt16(bigEndian: address.sin_port)))
        }
        (tcp, tcpPort) = try bound(Int32(SOCK_STREAM.rawValue))
        guard listen(tcp, 1) == 0 else { throw IOFailure.last("listen") }
        (udp, udpPort) = try bound(Int32(SOCK_DGRAM.rawValue))
    }

    deinit {
        close(tcp)
        close(udp)
    }
}

@Suite(.serialized) struct InventoryCollectorTests {
    @Test func collectsARealRootWithOneScript() async throws {
        let root = try await FleetRoot()
        defer { root.remove() }
        let listeners = try Listeners()
        let runner = CountingRunner()
        let collector = InventoryCollector(
            runner: runner, options: InventoryOptions(root: root.path + "/", watchedPaths: ["/etc"]))
        let collected = try await collector.collect()
        let s = collected.snapshot
        #expect(runner.calls == 1)
        #expect(s.hostname == "fleet-7")
        #expect(s.os.versionCodename == "bookworm")
        #expect(s.packages == [PackageRecord(name: "demo-tool", architecture: "all", version: "1:2.0~rc1-3")])
        #expect(s.users.map(\.name) == ["demo", "root"])
        #expect(s.groups.first { $0.name == "demo" }?.members == ["alice"])
        #expect(s.units.contains(UnitRecord(name: "demo.service", enabled: "enabled", active: "unknown")))
        let files = Dictionary(uniqueKeysWithValues: s.files.map { ($0.path, $0) })
        #expect(
            files["/etc/demo/secret.conf"]
                == FileRecord(
                    path: "/etc/demo/secret.conf", kind: .file, mode: "0640", owner: "demo", group: "demo", size: 8,
                    sha256: SHA256Digest(of: "token=1\n").hex))
        #expect(files["/etc/demo-tool/demo-tool.conf"]?.sha256 == SHA256Digest(of: "hello\n").hex)
        #expect(
            files["/etc/systemd/system/multi-user.target.wants/demo.service"]?.linkTarget
                == "/etc/systemd/system/demo.service")
        #expect(files["/etc"]?.kind == .directory)
        #expect(files["/etc/machine-id"] == nil)
        #expect(!s.files.contains { $0.path.hasPrefix(root.path) })
        #expect(s.ports.contains(PortRecord(transport: .tcp, address: "127.0.0.1", port: listeners.tcpPort)))
        #expect(s.ports.contains(PortRecord(transport: .udp, address: "127.0.0.1", port: listeners.udpPort)))
        let uname = try await HostCommand.check("uname", ["-r"]).stdoutText
        #expect(s.kernel.release + "\n" == uname)
        #expect(s.cpu.count >= 1 && s.memory.totalKiB > 0)
        withExtendedLifetime(listeners) {}
    }

    @Test func theDeltaOfARealUpgradeShowsPackagesFilesUsersAndPorts() async throws {
        let root = try await FleetRoot()
        defer { root.remove() }
        let collector = InventoryCollector(
            runner: LocalShell(), options: InventoryOptions(root: root.path, watchedPaths: ["/etc"]))
        let before = try await collector.collect().snapshot
        try await root.install(package: "demo-tool", version: "1:2.1-1", config: "hello again\n")
        try root.write(
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/bash\ndemo:x:4242:4343:Demo:/srv/demo:/usr/sbin/nologin\nweb:x:33:33::/var/www:/usr/sbin/nologin\n"
        )
        try root.write("etc/machine-id", "fedcba9876543210fedcba9876543210\n")
        let listeners = try Listeners()
        let after = try await collector.collect().snapshot
        let delta = ConfigurationDelta(from: before, to: after)
        #expect(delta[.packages].changed.map(\.key) == ["demo-tool:all"])
        #expect(delta[.packages].changed.first?.after?["version"] == "1:2.1-1")
        #expect(delta[.files].changed.map(\.key) == ["/etc/demo-tool/demo-tool.conf", "/etc/passwd"])
        #expect(delta[.users].added.map(\.key) == ["web"])
        #expect(delta[.ports].added.map(\.key).contains("tcp 127.0.0.1:\(listeners.tcpPort)"))
        #expect(
            try Query("package:demo-tool >= 1:2.1 and file:/etc/demo-tool changed and user:web added")
                .matches(QuerySubject(attributes: [:], inventory: after, delta: delta)))
        let policy = ExpectedDeltaPolicy(paths: ["/etc/demo-tool"], packages: ["demo-tool"], ports: ["*"])
        #expect(
            delta.violations(of: policy).map(\.description) == [
                "files: /etc/passwd changed, outside the expected delta",
                "users: web added, outside the expected delta",
            ])
        withExtendedLifetime(listeners) {}
    }

    @Test func aMissingRootIsANamedError() async {
        let collector = InventoryCollector(
            runner: LocalShell(), options: InventoryOptions(root: "/nonexistent/changelab-root"))
        do {
            _ = try await collector.collect()
            Issue.record("collect should fail")
        } catch {
            #expect("\(error)".contains("/nonexistent/changelab-root"))
            #expect("\(error)".contains("fix:"))
        }
    }

    @Test func theScriptRunsUnderDashWithoutIproute2OrProcps() async throws {
        // The script uses only what a minbase guest has; check the few commands it names.
        let script = InventoryCollector(runner: LocalShell()).script
        for absent in ["ss ", "netstat", "ps ", "ip ", "awk", "bash", "stat "] {
            #expect(!script.contains(absent), "script uses \(absent)")
        }
        let result = try await HostCommand.run("dash", ["-n"], input: Data(script.utf8))
        #expect(result.status == 0, "dash -n: \(result.stderrText)")
    }
}

@Suite struct InventoryParserRobustnessTests {
    @Test func anyPrefixOrMangledLineOfTheOutputParsesWithoutCrashing() throws {
        let output = try Golden.text("collector-output.txt")
        let bytes = Array(output.utf8)
        for cut in stride(from: 0, to: bytes.count, by: 37) {
            let (snapshot, _) = InventoryParser.parse(
                String(decoding: bytes[..<cut], as: UTF8.self), options: InventoryOptions())
            #expect(snapshot.files.count <= 12)
        }
        var lines = output.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        for index in lines.indices where !lines[index].hasPrefix("@@") {
            lines[index] = String(lines[index].reversed()) + "\t:\t \\"
        }
        _ = InventoryParser.parse(lines.joined(separator: "\n"), options: InventoryOptions())
    }
}
