import Foundation
import HostIO
import Libvirt
import Model

/// Summary statistics of repeated timings, in seconds.
public struct Timings: Codable, Sendable, Equatable {
    public var samples: [Double]
    public var median: Double
    public var min: Double
    public var max: Double

    public init(_ samples: [Double]) {
        self.samples = samples
        let sorted = samples.sorted()
        if sorted.isEmpty {
            median = 0
        } else if sorted.count % 2 == 1 {
            median = sorted[sorted.count / 2]
        } else {
            median = (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
        }
        min = sorted.first ?? 0
        max = sorted.last ?? 0
    }
}

/// `changelab bench lab`: how fast a pristine guest comes back, by each way we could do it,
/// measured in the same run on the same image.
public struct LabBenchmark: Sendable {
    public struct Report: Codable, Sendable {
        public var baseline: String
        public var imageDigest: String
        public var accelerator: String
        /// Cold boot of the image on a fresh overlay until the agent answers.
        public var coldBoot: Timings
        /// Saved memory image restored onto a fresh overlay, agent answering, clock set
        /// (what the lab uses).
        public var restore: Timings
        /// Internal snapshot (memory + disk in the qcow2) reverted, agent answering, clock set.
        public var snapshotRevert: Timings
        public var snapshotCreateSeconds: Double
        public var saveImageBytes: Int
        /// Cold boot median ÷ restore median.
        public var speedup: Double
        public var targets: Targets
    }

    public struct Targets: Codable, Sendable {
        public var restoreMedianAtMostSeconds: Double
        public var speedupAtLeast: Double
        public var met: Bool
    }

    public let lab: Lab

    public init(lab: Lab) {
        self.lab = lab
    }

    public func run(baseline: String, restores: Int, coldBoots: Int, reverts: Int) async throws -> Report {
        let image = try lab.readyImage(baseline)
        let connection = try await lab.connection()
        let say = { (message: String) in lab.say("bench", message) }

        var restoreTimes: [Double] = []
        for round in 1...restores {
            let guest = try await lab.restore(image)
            restoreTimes.append(guest.restoreSeconds)
            say(String(format: "restore %d/%d: %.2f s", round, restores, guest.restoreSeconds))
            await guest.finish(keep: false)
        }

        let scratch = lab.home.run + "/bench-\(getpid())"
        try FileManager.default.createDirectory(
            atPath: scratch, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        var bootTimes: [Double] = []
        var snapshotCreate = 0.0
        var revertTimes: [Double] = []
        for round in 1...coldBoots {
            let overlay = "\(scratch)/boot\(round).qcow2"
            try await HostCommand.check("qemu-img", ["create", "-q", "-f", "qcow2", "-b", image.disk, "-F", "qcow2", overlay])
            let definition = GuestDomain(
                name: "cl-bench-\(getpid())-\(round)", type: image.domainType, memoryMiB: image.memoryMiB,
                vcpus: image.vcpus, kernel: image.kernel, initrd: image.initrd, disk: overlay,
                consoleLog: "\(scratch)/boot\(round).log")
            let started = ContinuousClock.now
            let domain = try await connection.createTransient(xml: definition.xml)
            do {
                try await lab.awaitAgent(
                    domain.agent, console: definition.consoleLog, within: .seconds(300), what: "bench cold boot")
                bootTimes.append(started.secondsSince)
                say(String(format: "cold boot %d/%d: %.1f s", round, coldBoots, started.secondsSince))
                if round == coldBoots {
                    (snapshotCreate, revertTimes) = try await measureSnapshots(domain, reverts: reverts, say: say)
                }
            } catch {
                let cleanup = Task.detached { try? await domain.destroy() }
                await cleanup.value
                throw error
            }
            try await domain.destroy()
        }

        let saveBytes = (try? FileManager.default.attributesOfItem(atPath: image.slots.first?.saveFile ?? "")[.size] as? Int) ?? 0
        let restore = Timings(restoreTimes)
        let boot = Timings(bootTimes)
        let speedup = restore.median > 0 ? boot.median / restore.median : 0
        return Report(
            baseline: baseline, imageDigest: image.imageDigest.description,
            accelerator: image.domainType == "kvm" ? "kvm" : "tcg", coldBoot: boot, restore: restore,
            snapshotRevert: Timings(revertTimes), snapshotCreateSeconds: snapshotCreate, saveImageBytes: saveBytes ?? 0,
            speedup: speedup,
            targets: Targets(
                restoreMedianAtMostSeconds: 3, speedupAtLeast: 8, met: restore.median <= 3 && speedup >= 8))
    }

    /// Internal snapshot of the running guest, then reverts: the alternative to saved
    /// memory images. A file written after the snapshot must be gone after each revert.
    private func measureSnapshots(_ domain: Domain, reverts: Int, say: (String) -> Void) async throws
        -> (Double, [Double])
    {
        let agent = domain.agent
        let created = ContinuousClock.now
        try await domain.createSnapshot("bench", description: "changelab bench lab")
        let createSeconds = created.secondsSince
        say(String(format: "internal snapshot created in %.2f s", createSeconds))
        var times: [Double] = []
        for round in 1...max(1, reverts) {
            _ = try await agent.capture(["/bin/sh", "-c", "echo dirty > /root/bench-dirty"])
            let started = ContinuousClock.now
            try await domain.revert(to: "bench")
            try await agent.waitUntilReady(within: .seconds(60))
            try await agent.setTime()
            times.append(started.secondsSince)
            let dirty = try await agent.capture(["test", "-e", "/root/bench-dirty"])
            guard dirty.exitCode == 1 else {
                throw ChangelabError("a file written after the snapshot survived its revert")
            }
            say(String(format: "snapshot revert %d/%d: %.2f s", round, reverts, started.secondsSince))
        }
        try? await domain.deleteSnapshot("bench")
        return (createSeconds, times)
    }
}
