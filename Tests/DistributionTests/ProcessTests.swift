import AsyncHTTPClient
import Foundation
import HostIO
import Model
import Testing

@testable import Distribution

/// Faults that need real processes: an agent and a core killed with SIGKILL, and a disk
/// that fills up.
@Suite(.serialized) struct ProcessTests {
    @Test func anAgentKilledMidDownloadResumesAndFetchesAtMostTheChunkInFlightAgain() async throws {
        let binary = try #require(changelabExecutable(), "build the changelab executable first (swift build)")
        try await withCore { core, scratch, http in
            let admin = try core.admin
            let chunk = 64 * 1024
            let deb = try await TestPackage.build(in: scratch.path, size: 2_000_000)
            let manifest = try await admin.publish(file: deb, release: "big", chunkSize: chunk)
            let token = try await admin.createToken(uses: 1, lifetime: 600)
            let key = await core.key
            let arguments = [
                "agent", "run", "--no-wake-on-lan", "--core", core.url, "--core-key", key.hex, "--enrol-token", token.token,
                "--core-pin", core.server.tls.pin,
                "--state", scratch.path + "/agent", "--root", scratch.path + "/root", "--name", "pc", "--max-check-in",
                "1",
            ]
            var pid = try await spawnDetached(binary, arguments, log: scratch.path + "/agent-1.log")
            defer { kill(pid, SIGKILL) }
            #expect(try await eventually { try await admin.agents().count == 1 })
            let agent = try #require(try await admin.agents().first).id
            _ = try await admin.promote(
                "big", PromoteRequest(release: nil, targets: "all", rings: nil, rate: 400_000, maxFailureRate: nil))
            let entry = AgentCache(directory: scratch.path + "/agent/cache").packagePath("big")
            #expect(try await eventually { fileSize(entry) >= 600_000 })
            kill(pid, SIGKILL)
            try await Task.sleep(for: .seconds(1))

            // On disk: only whole, verified chunks.
            let kept = fileSize(entry)
            #expect(kept > 0 && kept < manifest.size)
            #expect(kept % Int64(chunk) == 0)
            let cache = AgentCache(directory: scratch.path + "/agent/cache")
            let cachedEntry = try #require(cache.entry("big"))
            #expect(try cache.verifiedPrefix(cachedEntry) == Int(kept) / chunk)
            let servedBefore = await core.server.coordinator.target(agent, change: "big")?.bytesServed ?? 0

            pid = try await spawnDetached(
                binary, Array(arguments.prefix(6)) + Array(arguments.dropFirst(8)), log: scratch.path + "/agent-2.log")
            #expect(try await eventually { try await admin.status("big").total.verified == 1 })
            let servedAfter = await core.server.coordinator.target(agent, change: "big")?.bytesServed ?? 0
            // The restarted agent asked only for what it did not hold verified.
            #expect(servedAfter - servedBefore == manifest.size - kept)
            let cached = try Data(contentsOf: URL(fileURLWithPath: entry))
            #expect(SHA256Digest(of: cached) == manifest.digest)
            kill(pid, SIGKILL)
        }
    }

    @Test func aCoreRestartedInTheMiddleOfSeedingLosesNothingAndSeedingResumes() async throws {
        let binary = try #require(changelabExecutable(), "build the changelab executable first (swift build)")
        let scratch = Scratch()
        defer { scratch.cleanup() }
        let http = try TestTLS.client()
        defer { _ = http.shutdown() }
        let port = try freePort()
        let stateDir = scratch.path + "/core"
        try TestTLS.install(in: stateDir)
        let serve = [
            "core", "serve", "--state", stateDir, "--listen", "127.0.0.1:\(port)", "--check-in", "1", "--retry-base",
            "0.3", "--trust-root", TestAuthority.shared.digest.description,
        ]
        var corePID = try await spawnDetached(binary, serve, log: scratch.path + "/core-1.log")
        defer { kill(corePID, SIGKILL) }
        let url = "https://127.0.0.1:\(port)"
        let tokenPath = CoreLayout(directory: stateDir).adminToken
        #expect(try await eventually(.seconds(20)) { FileManager.default.fileExists(atPath: tokenPath) })
        let admin = CoreClient(
            url: url,
            adminToken: try String(contentsOfFile: tokenPath, encoding: .utf8).trimmingCharacters(
                in: .whitespacesAndNewlines),
            client: http)
        #expect(try await eventually(.seconds(20)) { (try? await admin.agents()) != nil })
        let deb = try await TestPackage.build(in: scratch.path, size: 1_500_000)
        let manifest = try await admin.publish(file: deb, release: "rel", chunkSize: 64 * 1024)
        let token = try await admin.createToken(uses: 3, lifetime: 600)
        let key = try #require(ReleasePublicKey(hex: token.coreKey))
        let group = AgentGroup()
        for i in 0..<3 {
            _ = group.start(
                makeAgentConfiguration(
                    coreURL: url, base: scratch.path, name: "pc\(i)", token: token.token, key: key),
                http: http)
        }
        #expect(try await eventually { try await admin.agents().count == 3 })
        _ = try await admin.promote(
            "rel", PromoteRequest(release: nil, targets: "all", rings: nil, rate: 300_000, maxFailureRate: nil))
        #expect(try await eventually { try await admin.status("rel").total.bytesSent >= 1_200_000 })

        kill(corePID, SIGKILL)
        try await Task.sleep(for: .seconds(1))
        corePID = try await spawnDetached(binary, serve, log: scratch.path + "/core-2.log")
        // Everything is still there the moment the core answers.
        #expect(try await eventually(.seconds(20)) { (try? await admin.agents().count) == 3 })
        let resumed = try await admin.status("rel")
        #expect(resumed.total.targets == 3)
        #expect(try await admin.policies().isEmpty)
        // Seeding carries on to the end, within the first attempt.
        #expect(try await eventually(.seconds(40)) { try await admin.status("rel").total.verified == 3 })
        #expect(try await admin.chase("rel").isEmpty)
        _ = try await admin.activateApproved("rel")
        #expect(try await eventually { try await admin.status("rel").total.activated == 3 })
        // Nothing was fetched twice beyond the chunk in flight on each agent.
        #expect(try await admin.status("rel").total.bytesSent <= 3 * (manifest.size + 2 * 64 * 1024))
        await group.stop()
        kill(corePID, SIGKILL)
    }

    @Test(.enabled(if: canMountTmpfs(), "needs root to mount a small tmpfs"))
    func aFullDiskOnAnAgentShowsOnTheChaseListAsDiskFull() async throws {
        try await withCore { core, scratch, http in
            let admin = try core.admin
            let deb = try await TestPackage.build(in: scratch.path, size: 3_000_000)
            _ = try await admin.publish(file: deb, release: "huge", chunkSize: 64 * 1024)
            let token = try await admin.createToken(uses: 1, lifetime: 600)
            let state = scratch.path + "/agents/pc"
            try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true)
            try await HostCommand.check("mount", ["-t", "tmpfs", "-o", "size=1m", "tmpfs", state])
            defer { Task { _ = try? await HostCommand.run("umount", ["-l", state]) } }
            let group = AgentGroup()
            _ = group.start(
                makeAgentConfiguration(
                    core: core, base: scratch.path, name: "pc", token: token.token, key: await core.key),
                http: http)
            #expect(try await eventually { try await admin.agents().count == 1 })
            _ = try await admin.promote(
                "huge", .everyone())
            #expect(try await eventually { try await admin.chase("huge").first?.reason == "disk full" })
            let entry = try #require(try await admin.chase("huge").first)
            #expect(entry.detail.contains("No space left"))
            await group.stop()
            _ = try? await HostCommand.run("umount", [state])
        }
    }
}

/// Starts a program detached from this process's pipes (output to `log`) and returns its pid.
func spawnDetached(_ program: String, _ arguments: [String], log: String) async throws -> pid_t {
    let quoted = ([program] + arguments).map { "'" + $0.replacingOccurrences(of: "'", with: "'\\''") + "'" }
    let result = try await HostCommand.check(
        "/bin/sh", ["-c", "\(quoted.joined(separator: " ")) >'\(log)' 2>&1 </dev/null & echo $!"])
    guard let pid = pid_t(result.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)) else {
        throw ChangelabError("could not start \(program)")
    }
    return pid
}

func fileSize(_ path: String) -> Int64 {
    ((try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? NSNumber)?.int64Value ?? 0
}

/// A loopback TCP port nobody listens on right now.
func freePort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0
        }
    }
    guard bound else { throw ChangelabError("no free loopback port") }
    return Int(UInt16(bigEndian: address.sin_port))
}

func canMountTmpfs() -> Bool {
    getuid() == 0 && FileManager.default.isExecutableFile(atPath: "/bin/mount")
}
