import Foundation
import HostIO
import Model
import Testing

@testable import Distribution

/// Agents that install into whole Debian roots (an overlay of a baseline's own file system)
/// run maintainer scripts chrooted into them; the host never sees them.
@Suite(.serialized) struct AgentRootTests {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path
    static var fleetScript: String { repository + "/lab/fleet" }

    static var canMountRoots: Bool {
        getuid() == 0 && HostCommand.resolve("ip") != nil && HostCommand.resolve("tc") != nil
            && HostCommand.resolve("iptables") != nil
    }

    /// What the test compares before and after: the user databases by hash and every path
    /// under the folder (with its type), so an added file or user shows.
    static func snapshot(of etc: String) async throws -> [String] {
        var lines: [String] = []
        for file in ["passwd", "group", "shadow", "gshadow"] {
            let data = FileManager.default.contents(atPath: "\(etc)/\(file)") ?? Data()
            lines.append("\(file) \(SHA256Digest(of: data))")
        }
        let listing = try await HostCommand.check("find", [etc, "-printf", "%P %y\n"])
        lines += listing.stdoutText.split(separator: "\n").map(String.init).sorted()
        return lines
    }

    @Test(.enabled(if: canMountRoots, "needs root (overlay mounts, chroot) and lab/fleet's tools (sudo lab/setup)"))
    func aFleetDeploymentRunsThePostinstInsideTheAgentsRootAndLeavesTheHostsEtcAlone() async throws {
        let binary = try #require(changelabExecutable(), "build the changelab executable first (swift build)")
        // The minimal baseline's own file system, as `lab/test` builds it before the tests.
        let rootfs = try await HostCommand.run(
            binary, ["baseline", "rootfs", "--root", Self.repository, "minimal", "--json"], timeout: .seconds(1800))
        try #require(
            rootfs.succeeded,
            "the minimal baseline must be built first (lab/test does: changelab baseline build minimal): \(rootfs.tail(5))")
        struct RootFSReport: Decodable { var path: String }
        let lower = try JSONDecoder().decode(RootFSReport.self, from: rootfs.stdout).path
        #expect(DpkgInstaller.mode(of: lower) == .chroot)

        let prefix = "ort"
        _ = try await HostCommand.run(Self.fleetScript, ["down", "--prefix", prefix])
        let hostBefore = try await Self.snapshot(of: "/etc")
        let lowerBefore = try await Self.snapshot(of: lower + "/etc")
        let user = "changelab-ort"
        #expect(!lowerBefore.contains { $0.hasPrefix("changelab-ort") })

        let made = try await HostCommand.run(
            Self.fleetScript, ["root", "--prefix", prefix, "--agent", "pc1", "--lower", lower])
        try #require(made.succeeded, "lab/fleet root failed: \(made.tail(5))")
        let root = made.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
        let upper = (root as NSString).deletingLastPathComponent.replacingOccurrences(of: "/roots", with: "/layers")
            + "/pc1/upper"
        do {
            #expect(DpkgInstaller.mode(of: root) == .chroot, "the agent's root is a whole system")
            #expect(FileManager.default.isExecutableFile(atPath: root + "/usr/sbin/policy-rc.d"))
            try await withCore { core, scratch, http in
                // A postinst like greeterd's: a system user, and a file of its own in /etc.
                let deb = try await TestPackage.build(
                    in: scratch.path, name: "ortdemo", size: 20_000,
                    postinst: """
                        set -e
                        if [ "$1" = configure ]; then
                          getent passwd \(user) >/dev/null || useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \(user)
                          echo "configured by ortdemo's postinst" > /etc/changelab-ort.conf
                          # No service may start in a fleet root: policy-rc.d answers 101.
                          answer=0
                          invoke-rc.d --query cron start || answer=$?
                          [ "$answer" = 101 ] || { echo "invoke-rc.d --query said $answer, not 101 (forbidden)" >&2; exit 3; }
                        fi
                        """)
                let admin = try core.admin
                _ = try await admin.publish(file: deb, release: "ort-1.0")
                let group = try await startAgents(
                    ["pc1"], core: core, scratch: scratch, http: http, attributes: ["baseline": "minimal@1"]
                ) { configuration in
                    configuration.root = root
                }
                do {
                    _ = try await admin.promote("ort-1.0", .everyone())
                    #expect(try await eventually { try await admin.status("ort-1.0").total.verified == 1 })
                    _ = try await admin.activateApproved("ort-1.0")
                    var activated = false
                    for _ in 0..<600 where !activated {
                        let status = try await admin.status("ort-1.0")
                        activated = status.total.activated == 1 && installed("ortdemo", in: root) == "1.0"
                        if !activated { try await Task.sleep(for: .milliseconds(200)) }
                    }
                    let agent = try #require(try await admin.agents().first { $0.name == "pc1" })
                    let target = await core.server.coordinator.target(agent.id, change: "ort-1.0")
                    #expect(
                        activated,
                        "not installed: \(target?.failure.map { "\($0)" } ?? "no failure") \(target?.outputTail ?? "")")
                    #expect(target?.exitCode == 0)
                } catch {
                    await group.stop()
                    throw error
                }
                await group.stop()
            }

            // Inside the agent's root: the package, its user and its file.
            #expect(installed("ortdemo", in: root) == "1.0")
            let passwd = (try? String(contentsOfFile: root + "/etc/passwd", encoding: .utf8)) ?? ""
            #expect(passwd.contains("\n\(user):"), "the postinst's user is in the agent root's /etc/passwd")
            #expect(FileManager.default.fileExists(atPath: root + "/etc/changelab-ort.conf"))
            // …recorded in the agent's own upper layer…
            #expect(FileManager.default.fileExists(atPath: upper + "/etc/passwd"))
            // …and nowhere else: not on the host, not in the shared lower layer.
            let hostPasswd = (try? String(contentsOfFile: "/etc/passwd", encoding: .utf8)) ?? ""
            #expect(!hostPasswd.contains("\n\(user):"), "the postinst added its user to the HOST's /etc/passwd")
            #expect(!FileManager.default.fileExists(atPath: "/etc/changelab-ort.conf"))
            let hostAfter = try await Self.snapshot(of: "/etc")
            #expect(hostAfter == hostBefore, "the host's /etc changed: \(Set(hostAfter).symmetricDifference(hostBefore).sorted())")
            let lowerAfter = try await Self.snapshot(of: lower + "/etc")
            #expect(lowerAfter == lowerBefore, "the lower layer changed: \(Set(lowerAfter).symmetricDifference(lowerBefore).sorted())")
        } catch {
            _ = try? await HostCommand.run(Self.fleetScript, ["down", "--prefix", prefix])
            throw error
        }
        let down = try await HostCommand.run(Self.fleetScript, ["down", "--prefix", prefix])
        #expect(down.succeeded, "lab/fleet down: \(down.tail(5))")
        #expect(!FileManager.default.fileExists(atPath: root), "lab/fleet down removes the agent roots")
        let mounts = (try? String(contentsOfFile: "/proc/mounts", encoding: .utf8)) ?? ""
        #expect(!mounts.contains(root))
    }

    @Test func aRootIsChrootedOnlyWhenItIsAWholeSystem() throws {
        let scratch = Scratch("modes")
        defer { scratch.cleanup() }
        #expect(DpkgInstaller.mode(of: "/") == .host)
        #expect(DpkgInstaller.mode(of: scratch.path) == .privateRoot, "an empty folder gets a private dpkg root")
        let installer = DpkgInstaller(root: scratch.path)
        try installer.prepareRoot()
        #expect(DpkgInstaller.mode(of: scratch.path) == .privateRoot, "a bare dpkg database is not a system")
        #expect(installer.rootArguments.contains("--force-script-chrootless"))

        let system = scratch.path + "/system"
        for dir in ["bin", "usr/bin", "etc", "var/lib/dpkg"] {
            try FileManager.default.createDirectory(atPath: "\(system)/\(dir)", withIntermediateDirectories: true)
        }
        for file in ["bin/sh", "usr/bin/dpkg"] {
            try "#!/bin/false\n".write(toFile: "\(system)/\(file)", atomically: true, encoding: .utf8)
            chmod("\(system)/\(file)", 0o755)
        }
        try Data().write(to: URL(fileURLWithPath: system + "/etc/passwd"))
        #expect(DpkgInstaller.mode(of: system) == .privateRoot, "no dpkg database yet")
        try Data().write(to: URL(fileURLWithPath: system + "/var/lib/dpkg/status"))
        let chrooted = DpkgInstaller(root: system)
        #expect(chrooted.mode == .chroot)
        let command = chrooted.command(["--install", "/run/changelab-agent/x.deb"])
        #expect(command.executable == "chroot")
        #expect(Array(command.arguments.prefix(2)) == [system, "dpkg"], "the root's own dpkg, inside the root")
        #expect(!command.arguments.contains("--force-script-chrootless"), "scripts never run on the host")
        #expect(!command.arguments.contains { $0.hasPrefix("--root") })
        #expect(chrooted.modeDescription.contains("chroot \(system) dpkg"))
        #expect(installer.command(["--purge", "x"]).executable == "dpkg")
    }

    @Test(arguments: [
        ("minimal@1", true), ("web@12", true), ("db-2@3", true), ("web", false), ("web@", false), ("@1", false),
        ("web@0", false), ("web@-1", false), ("web@01", false), ("web@1@2", false), ("Web@1", false),
        ("../etc@1", false), ("web@1.5", false), ("web@+1", false), ("web@1234567890", false),
    ])
    func theBaselineAttributeIsNameAtAPositiveVersion(value: String, valid: Bool) {
        #expect((BaselineAttribute.problem(value) == nil) == valid, "\(value)")
        let problems = AgentFacts.problems(
            name: "pc1", segment: "s1", addresses: [], attributes: ["baseline": value, "site": "paris"],
            limits: CoreLimits())
        #expect(problems.isEmpty == valid, "the core takes \(value) only if it is NAME@N: \(problems)")
    }

    @Test func theAgentCommandRefusesAMalformedBaselineAttribute() async throws {
        let binary = try #require(changelabExecutable(), "build the changelab executable first (swift build)")
        let result = try await HostCommand.run(
            binary,
            [
                "agent", "run", "--core", "https://127.0.0.1:1", "--core-pin", "sha256:" + String(repeating: "a", count: 64),
                "--core-key", String(repeating: "b", count: 64), "--attribute", "baseline=web@latest",
            ], timeout: .seconds(30))
        #expect(result.status != 0)
        #expect(result.stderrText.contains("baseline 'web@latest' has version 'latest'"), "\(result.stderrText)")
    }
}
