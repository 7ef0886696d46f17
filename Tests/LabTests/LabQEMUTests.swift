import Foundation
import HostIO
@testable import Lab
import Libvirt
import Model
import Testing

/// The project under test (this repository) and its smallest baseline, built once and
/// shared: the first test to need it builds it (or reuses the cached image).
actor SharedLab {
    static let shared = SharedLab()
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path
    static let baseline = "minimal"

    private var ready: (Lab, BaselineImage)?

    func lab() async throws -> (Lab, BaselineImage) {
        if let ready { return ready }
        let lab = try Lab(project: Project(root: Self.repository)) { event in
            print("[\(event.subject)] \(event.message)")
        }
        let outcome = try await lab.build(try lab.baselines.load(Self.baseline))
        #expect(outcome.status == .ready)
        ready = (lab, outcome.image)
        return (lab, outcome.image)
    }

    /// The `changelab` binary built next to this test bundle.
    static var binary: String {
        let candidates = [
            URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("changelab")
                .path,
            repository + "/.build/debug/changelab",
        ]
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0) } ?? candidates[1]
    }
}

/// Every test that runs VMs, one at a time: they share the baseline's slots and two cores.
@Suite(.serialized) struct LabQEMUTests {
    @Test func aRestoreDiscardsWhatTheLastGuestWrote() async throws {
        let (lab, image) = try await SharedLab.shared.lab()
        try await lab.withRestored(image) { guest in
            let wrote = try await guest.agent.exec(["/bin/sh", "-c", "echo dirty > /root/changelab-dirty && sync"])
            #expect(wrote.succeeded)
            let present = try await guest.agent.exec(["test", "-f", "/root/changelab-dirty"])
            #expect(present.exitCode == 0)
        }
        try await lab.withRestored(image) { guest in
            let present = try await guest.agent.exec(["test", "-f", "/root/changelab-dirty"])
            #expect(present.exitCode == 1, "a fresh restore must not see the previous guest's file")
            #expect(guest.restoreSeconds < 30)
        }
    }

    @Test func execKeepsExitCodesAndStdoutAndStderrApart() async throws {
        let (lab, image) = try await SharedLab.shared.lab()
        try await lab.withRestored(image) { guest in
            let result = try await guest.agent.exec(["/bin/sh", "-c", "echo to-out; echo to-err >&2; exit 7"])
            #expect(result.exitCode == 7)
            #expect(result.stdoutText == "to-out\n")
            #expect(result.stderrText == "to-err\n")

            let streamed = Collected()
            let loud = try await guest.agent.exec(["/bin/sh", "-c", "for i in 1 2 3; do echo line$i; sleep 0.3; done"]) {
                stream, data in streamed.add(stream, data)
            }
            #expect(loud.succeeded)
            #expect(streamed.text(.stdout) == "line1\nline2\nline3\n")
            #expect(streamed.chunks > 1, "output should arrive while the command runs, not only at the end")

            let quick = try await guest.agent.capture(["/bin/sh", "-c", "echo quick; exit 3"])
            #expect(quick.exitCode == 3)
            #expect(quick.stdoutText == "quick\n")
        }
    }

    @Test func outputBeyondTheAgentsSixteenMiBCapComesBackWhole() async throws {
        let (lab, image) = try await SharedLab.shared.lab()
        try await lab.withRestored(image) { guest in
            // 20 MiB of stdout: qemu-ga's own capture would truncate at 16 MiB.
            let result = try await guest.agent.exec(["/bin/sh", "-c", "head -c 20971520 /dev/zero | tr '\\0' x"])
            #expect(result.succeeded)
            #expect(result.stdout.count == 20 * 1024 * 1024)
            #expect(result.stdout.allSatisfy { $0 == UInt8(ascii: "x") })
        }
    }

    @Test func aTwentyMiBFileRoundTripsWithTheSameSHA256() async throws {
        let (lab, image) = try await SharedLab.shared.lab()
        let directory = NSTemporaryDirectory() + "changelab-transfer-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var generator = SystemRandomNumberGenerator()
        var words = [UInt64](repeating: 0, count: 20 * 1024 * 1024 / 8)
        for index in words.indices { words[index] = generator.next() }
        let payload = words.withUnsafeBytes { Data($0) }
        try payload.write(to: URL(fileURLWithPath: directory + "/up.bin"))
        try await lab.withRestored(image) { guest in
            try await guest.agent.upload(file: directory + "/up.bin", to: "/var/tmp/payload.bin", mode: 0o600)
            let inGuest = try await guest.agent.exec(["sha256sum", "/var/tmp/payload.bin"])
            #expect(inGuest.stdoutText.hasPrefix(SHA256Digest(of: payload).hex))
            let mode = try await guest.agent.exec(["stat", "-c", "%a", "/var/tmp/payload.bin"])
            #expect(mode.stdoutText == "600\n")
            let bytes = try await guest.agent.download("/var/tmp/payload.bin", to: directory + "/down.bin")
            #expect(bytes == payload.count)
        }
        let back = try Data(contentsOf: URL(fileURLWithPath: directory + "/down.bin"))
        #expect(SHA256Digest(of: back) == SHA256Digest(of: payload))
    }

    @Test func theGuestClockIsWithinTwoSecondsOfTheHostRightAfterARestore() async throws {
        let (lab, image) = try await SharedLab.shared.lab()
        // The saved state is from the build; without setting the clock the guest would be
        // that far in the past.
        try await lab.withRestored(image) { guest in
            let before = Date().timeIntervalSince1970
            let result = try await guest.agent.capture(["date", "+%s.%N"])
            let after = Date().timeIntervalSince1970
            let guestTime = try #require(Double(result.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)))
            #expect(guestTime > before - 2 && guestTime < after + 2, "guest \(guestTime), host \(before)…\(after)")
        }
    }

    @Test func theHardwareClockPathAndTheAgentResponseTimeoutWorkOnQEMU() async throws {
        let (lab, image) = try await SharedLab.shared.lab()
        try await lab.withRestored(image) { guest in
            try await guest.domain.setAgentResponseTimeout(seconds: 30)
            let target = Date().addingTimeInterval(3600)
            try await guest.agent.setTime(target, hardwareClock: true)
            let result = try await guest.agent.capture(["date", "+%s"])
            let guestTime = try #require(Double(result.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)))
            #expect(abs(guestTime - target.timeIntervalSince1970) < 5, "guest-set-time moved the clock to \(guestTime)")
        }
    }

    /// Inventory on a real guest: the web baseline's application is in it.
    @Test func theInventoryOfARealGuestShowsItsApplication() async throws {
        let (lab, _) = try await SharedLab.shared.lab()
        let image = try lab.readyImage("web")
        let inventory = try await lab.baselineInventory(image)
        #expect(inventory.os.versionCodename == "bookworm")
        #expect(inventory.packages.contains { $0.name == "nginx-light" })
        #expect(inventory.units.contains { $0.name == "nginx.service" && $0.enabled == "enabled" && $0.active == "active" })
        #expect(inventory.ports.contains { $0.transport == .tcp && $0.port == 80 })
        let page = try String(contentsOfFile: SharedLab.repository + "/baselines/web/files/index.html", encoding: .utf8)
        let file = try #require(inventory.files.first { $0.path == "/var/www/html/index.html" })
        #expect(file.sha256 == SHA256Digest(of: page).hex)
    }

    @Test func aCommandMissingInTheGuestIsNamed() async throws {
        let (lab, image) = try await SharedLab.shared.lab()
        try await lab.withRestored(image) { guest in
            await #expect(throws: GuestAgentError.commandNotFound(domain: guest.name, command: "changelab-no-such-tool")) {
                try await guest.agent.exec(["changelab-no-such-tool", "--help"])
            }
            await #expect(throws: GuestAgentError.commandNotFound(domain: guest.name, command: "changelab-no-such-tool")) {
                try await guest.agent.capture(["changelab-no-such-tool"])
            }
        }
    }

    @Test func aCommandPastItsTimeoutIsKilledWithItsChildren() async throws {
        let (lab, image) = try await SharedLab.shared.lab()
        try await lab.withRestored(image) { guest in
            let result = try await guest.agent.exec(
                ["/bin/sh", "-c", "(sleep 3; touch /root/survivor) & sleep 60"], timeout: .seconds(1))
            #expect(result.timedOut)
            try await Task.sleep(for: .seconds(4))
            let survivor = try await guest.agent.capture(["test", "-e", "/root/survivor"])
            #expect(survivor.exitCode == 1, "the whole process group must be killed")
        }
    }

    @Test func anAgentThatNeverAnswersTimesOutWithTheConsoleTail() async throws {
        let (lab, image) = try await SharedLab.shared.lab()
        let run = lab.home.run + "/test-noagent-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: run, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: run) }
        // A blank disk: the kernel boots, the initramfs cannot mount a root, no agent ever starts.
        try await HostCommand.check("qemu-img", ["create", "-q", "-f", "qcow2", run + "/blank.qcow2", "64M"])
        let definition = GuestDomain(
            name: "cl-test-noagent-\(UUID().uuidString.prefix(6))", type: image.domainType, memoryMiB: 256, vcpus: 1,
            kernel: image.kernel, initrd: image.initrd, disk: run + "/blank.qcow2", consoleLog: run + "/console.log")
        let domain = try await lab.connection().createTransient(xml: definition.xml)
        defer { Task.detached { try? await domain.destroy() } }
        do {
            try await lab.awaitAgent(domain.agent, console: definition.consoleLog, within: .seconds(20), what: "test boot")
            Issue.record("the agent of a guest without a root file system must not answer")
        } catch let error as ChangelabError {
            #expect(error.what.contains("did not answer"))
            let why = try #require(error.why)
            #expect(why.contains("serial console"))
            #expect(why.contains("Linux") || why.contains("vda") || why.contains("initramfs"), "console tail: \(why)")
        }
        try await domain.destroy()
    }

    @Test func aKeptVMCanBeReachedAndDiscarded() async throws {
        _ = try await SharedLab.shared.lab()
        let root = SharedLab.repository
        let kept = try await HostCommand.run(
            SharedLab.binary, ["lab", "exec", "--root", root, "minimal", "--keep", "--", "touch", "/root/kept-marker"],
            timeout: .seconds(180))
        #expect(kept.status == 0, "\(kept.stderrText)")
        let domain = try #require(
            kept.stderrText.split(separator: " ").first { $0.hasPrefix("cl-minimal-") }.map {
                String($0.trimmingCharacters(in: .punctuationCharacters))
            })
        let list = try await HostCommand.run(SharedLab.binary, ["lab", "list", "--root", root, "--json"])
        #expect(list.stdoutText.contains(domain))
        let inside = try await HostCommand.run(
            SharedLab.binary, ["lab", "exec", "--root", root, domain, "--", "test", "-f", "/root/kept-marker"],
            timeout: .seconds(60))
        #expect(inside.status == 0, "the kept VM still has the file: \(inside.stderrText)")
        let discard = try await HostCommand.run(SharedLab.binary, ["lab", "discard", "--root", root, domain])
        #expect(discard.status == 0)
        let (lab, _) = try await SharedLab.shared.lab()
        let live = try await lab.connection().domain(named: domain)
        #expect(try await live?.state().isActive != true)
    }

    @Test func ctrlCDuringAnExecLeavesNothingRunning() async throws {
        let (lab, image) = try await SharedLab.shared.lab()
        let process = Process()
        process.executableURL = URL(fileURLWithPath: SharedLab.binary)
        process.arguments = ["lab", "exec", "--root", SharedLab.repository, "minimal", "--", "sleep", "120"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        let exited = ExitWaiter(process)
        try process.run()
        let connection = try await lab.connection()
        var running: String?
        for _ in 0..<300 where running == nil {
            for domain in try await connection.domains() where domain.name.hasPrefix("cl-minimal-") {
                if try await domain.state() == .running { running = domain.name }
            }
            if running == nil { try await Task.sleep(for: .milliseconds(100)) }
        }
        let domainName = try #require(running, "the exec should have restored a VM")
        try await Task.sleep(for: .seconds(2))
        process.interrupt()
        let status = await exited.status()
        #expect(status == 130)
        let after = try await connection.domain(named: domainName)
        #expect(try await after?.state().isActive != true, "Ctrl-C must destroy the VM")
        let leftovers = (try? FileManager.default.contentsOfDirectory(atPath: lab.home.runDirectory(domain: domainName))) ?? []
        #expect(!leftovers.contains { $0.hasPrefix("overlay-") }, "no overlay may be left: \(leftovers)")
        _ = image
    }

    @Test func sigtermDuringABuildLeavesNoPartialImage() async throws {
        let (lab, _) = try await SharedLab.shared.lab()
        let project = NSTemporaryDirectory() + "changelab-sigterm-\(UUID().uuidString.prefix(8))"
        let name = "sigterm-\(UUID().uuidString.prefix(6).lowercased())"
        try FileManager.default.createDirectory(atPath: project + "/baselines", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: project) }
        try "name: \(name)\napproved: true\npackages: [cron]\n".write(
            toFile: project + "/baselines/\(name).yaml", atomically: true, encoding: .utf8)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: SharedLab.binary)
        process.arguments = ["baseline", "build", "--root", project, name]
        let errors = Pipe()
        process.standardError = errors
        process.standardOutput = FileHandle.nullDevice
        let exited = ExitWaiter(process)
        try process.run()
        // Let debootstrap get going (it mounts /proc in its target), then stop the build.
        let builds = lab.home.builds
        var started = false
        for _ in 0..<600 where !started {
            let entries = (try? FileManager.default.contentsOfDirectory(atPath: builds)) ?? []
            started = entries.contains { $0.hasPrefix(name) }
            if !started { try await Task.sleep(for: .milliseconds(100)) }
        }
        #expect(started)
        try await Task.sleep(for: .seconds(8))
        process.terminate()
        let status = await exited.status()
        #expect(status == 130)
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: builds)) ?? []
        #expect(!entries.contains { $0.hasPrefix(name) }, "the build folder must be removed: \(entries)")
        let images = (try? FileManager.default.contentsOfDirectory(atPath: lab.home.imagesOf(name))) ?? []
        #expect(images.isEmpty, "no partial image may remain: \(images)")
        let mounts = try String(contentsOfFile: "/proc/mounts", encoding: .utf8)
        #expect(!mounts.contains(builds + "/" + name), "nothing may stay mounted")
        try? FileManager.default.removeItem(atPath: lab.home.imagesOf(name))
    }
}

/// CLI behaviour that needs no VM: unknown names, an unreachable daemon, recipe errors.
@Suite struct LabCLITests {
    /// Runs `changelab SUBCOMMAND... --root ROOT REST...` (the option belongs to the leaf command).
    func changelab(_ arguments: [String], root: String = SharedLab.repository) async throws -> CommandResult {
        let split = arguments.firstIndex { !$0.allSatisfy { $0.isLowercase } } ?? arguments.count
        let command = Array(arguments[..<split]) + ["--root", root] + Array(arguments[split...])
        return try await HostCommand.run(SharedLab.binary, command, timeout: .seconds(120))
    }

    @Test func anUnknownBaselineIsNamedWithTheKnownOnes() async throws {
        let result = try await changelab(["lab", "exec", "no-such-baseline", "--", "true"])
        #expect(result.status != 0)
        #expect(result.stderrText.contains("unknown baseline 'no-such-baseline'"))
        #expect(result.stderrText.contains("minimal"))
    }

    @Test func aRecipeErrorNamesItsFileLineAndColumn() async throws {
        let project = NSTemporaryDirectory() + "changelab-recipe-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: project + "/baselines", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: project) }
        try "name: broken\napproved: true\nresources:\n  memory: lots\n".write(
            toFile: project + "/baselines/broken.yaml", atomically: true, encoding: .utf8)
        let result = try await changelab(["baseline", "build"], root: project)
        #expect(result.status != 0)
        #expect(result.stderrText.contains("baselines/broken.yaml:4:11: 'memory' must be a whole number, not 'lots'"))
    }

    @Test func anUnreachableLibvirtdSaysHowToFixIt() async throws {
        let project = NSTemporaryDirectory() + "changelab-nolibvirt-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: project + "/lab", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: project + "/baselines", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: project) }
        try "hosts:\n  - {name: gone, uri: 'qemu+unix:///system?socket=/nonexistent/libvirt-sock', slots: 1}\n".write(
            toFile: project + "/lab/hosts.yaml", atomically: true, encoding: .utf8)
        let doctor = try await changelab(["doctor"], root: project)
        #expect(doctor.status == 1)
        #expect(doctor.stdoutText.contains("FAIL  libvirt gone"))
        #expect(doctor.stdoutText.contains("/nonexistent/libvirt-sock"))
        #expect(doctor.stdoutText.contains("libvirt gone: fix with:"))
        let json = try await changelab(["doctor", "--json"], root: project)
        let report = try JSONSerialization.jsonObject(with: json.stdout) as? [String: Any]
        #expect(report?["ok"] as? Bool == false)
    }

    @Test func execWithoutACommandIsAUsageError() async throws {
        let result = try await changelab(["lab", "exec", "minimal"])
        #expect(result.status == 64)
        #expect(result.stderrText.contains("give the command after --"))
    }
}

final class Collected: @unchecked Sendable {
    private let lock = NSLock()
    private var data: [GuestAgent.Stream: Data] = [:]
    private(set) var chunks = 0
    func add(_ stream: GuestAgent.Stream, _ bytes: Data) {
        lock.lock()
        data[stream, default: Data()].append(bytes)
        chunks += 1
        lock.unlock()
    }
    func text(_ stream: GuestAgent.Stream) -> String {
        lock.lock()
        defer { lock.unlock() }
        return String(decoding: data[stream] ?? Data(), as: UTF8.self)
    }
}

/// Awaits a Foundation Process's exit without blocking a cooperative thread.
struct ExitWaiter: Sendable {
    private let exited = OneShot()

    init(_ process: Process) {
        let exited = self.exited
        process.terminationHandler = { exited.fire($0.terminationStatus) }
    }

    func status() async -> Int32 { await exited.wait() }
}

/// Checks that need no VM.
@Suite struct QEMUAccessTests {
    @Test func aFolderTheQEMUUserCannotEnterIsNamedWithTheFix() throws {
        let folder = NSTemporaryDirectory() + "changelab-private-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        try "image".write(toFile: folder + "/base.qcow2", atomically: true, encoding: .utf8)
        try FileManager.default.setAttributes([.posixPermissions: 0o700], ofItemAtPath: folder)
        let problem = try #require(QEMUAccess.problem(reading: folder + "/base.qcow2"))
        #expect(problem.contains("folder \(folder)"))
        #expect(problem.contains("cannot be entered by libvirt-qemu"))
        do {
            try QEMUAccess.require(reading: folder + "/base.qcow2")
            Issue.record("an unreachable image must be refused")
        } catch let error as ChangelabError {
            #expect(error.fix?.contains("chmod o+x") == true)
        }
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: folder)
        #expect(QEMUAccess.problem(reading: folder + "/base.qcow2") == nil)
    }
}
