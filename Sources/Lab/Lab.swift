import Foundation
import HostIO
import Libvirt
import Model

/// The lab: builds baseline images, keeps one saved memory state per parallel slot, and
/// restores a pristine guest from it in about a second.
///
/// Every restore happens under the slot's file lock, so two changelab processes never use
/// the same slot, and a process killed with SIGKILL frees its slots with its locks; the
/// next user of the slot destroys whatever the dead process left running.
public struct Lab: Sendable {
    public let project: Project
    public let home: LabHome
    public let hosts: LabHosts
    public let baselines: Baselines
    public let progress: ProgressHandler

    public init(project: Project, home: LabHome = .fromEnvironment(), progress: @escaping ProgressHandler = { _ in })
        throws
    {
        self.project = project
        self.home = home
        self.baselines = Baselines(project: project)
        self.progress = progress
        if let data = FileManager.default.contents(atPath: project.hostsFile) {
            hosts = try LabHosts.parse(String(decoding: data, as: UTF8.self), file: project.display(project.hostsFile))
        } else {
            hosts = .localDefault()
        }
    }

    /// The host VMs run on. (Several hosts are scheduled by the matrix.)
    public var primaryHost: LabHosts.Host { hosts.hosts.first ?? LabHosts.localDefault().hosts[0] }

    public func connection(to host: LabHosts.Host? = nil) async throws -> Connection {
        try await connection(uri: (host ?? primaryHost).uri)
    }

    /// The host a slot or kept VM belongs to (a slot without a host is the first host's).
    func host(named name: String?) -> LabHosts.Host {
        hosts.hosts.first { $0.name == name } ?? primaryHost
    }

    func connection(uri: String) async throws -> Connection {
        do {
            return try await ConnectionPool.shared.connection(uri)
        } catch let error as LibvirtError {
            throw ChangelabError(
                "cannot reach libvirt at \(uri)", why: error.message,
                fix: uri.hasPrefix("qemu:///")
                    ? "start libvirtd: sudo lab/setup (then check with: changelab doctor)"
                    : "check that libvirtd runs on that host and that ssh to it works without a password")
        }
    }

    func say(_ subject: String, _ message: String) {
        progress(LabProgress(subject: subject, message: message))
    }

    // MARK: Images

    /// The built image for the recipe as it is now, or nil when it has not been built.
    public func currentImage(of recipe: BaselineRecipe) throws -> BaselineImage? {
        let digest = try baselines.recipeDigest(recipe)
        return try BaselineImage.load(from: home.imageDirectory(recipe.name, recipeDigest: digest))
    }

    /// The image of `name`, ready for use (built, saved and its own suite green).
    public func readyImage(_ name: String, allowUnvalidated: Bool = false) throws -> BaselineImage {
        let recipe = try baselines.load(name)
        guard let image = try currentImage(of: recipe), !image.slots.isEmpty else {
            throw ChangelabError(
                "baseline '\(name)' has not been built (or its recipe changed since)",
                fix: "changelab baseline build \(name)")
        }
        switch image.status(testsDigest: baselines.testsDigest(of: name)) {
        case .ready: return image
        case .failed where !allowUnvalidated:
            let failing = image.validation?.results.filter { !$0.passed }.map(\.name) ?? []
            throw ChangelabError(
                "baseline '\(name)' failed its own standing regression suite (\(failing.joined(separator: ", "))) and is not usable",
                fix: "fix the baseline or its tests, then: changelab baseline build \(name)")
        case .unvalidated where !allowUnvalidated, .imaged where !allowUnvalidated:
            throw ChangelabError(
                "baseline '\(name)' has not passed its standing suite since its tests changed",
                fix: "changelab baseline build \(name)")
        default: return image
        }
    }

    public struct BuildOutcome: Sendable {
        public var image: BaselineImage
        /// True when the disk image came from the cache (same recipe digest).
        public var reusedImage: Bool
        public var seconds: Double
        public var status: BaselineImage.Status
    }

    /// Builds (or reuses) the image of `recipe`, makes sure slot 0 is saved, and runs the
    /// standing suite on a fresh restore when it has not passed for the current tests.
    public func build(_ recipe: BaselineRecipe, force: Bool = false) async throws -> BuildOutcome {
        let started = ContinuousClock.now
        try home.prepare()
        let lock = try await acquire(home.buildLock(recipe.name), waiting: "another build of \(recipe.name)")
        defer { lock.release() }

        let digest = try baselines.recipeDigest(recipe)
        let directory = home.imageDirectory(recipe.name, recipeDigest: digest)
        if force { try await removeImage(at: directory) }
        var image = try BaselineImage.load(from: directory)
        let reused = image != nil
        if let existing = image {
            say(recipe.name, "image \(existing.imageDigest.short) is up to date with the recipe (cached)")
        } else {
            image = try await buildImage(recipe, digest: digest, directory: directory)
        }
        guard var image else { throw ChangelabError("internal: no image after build") }
        try QEMUAccess.require(reading: image.disk)

        if image.slots.isEmpty {
            image = try await warmSlot(0, of: image, on: primaryHost, lockHeld: true)
        }
        let testsDigest = baselines.testsDigest(of: recipe.name)
        if image.validation?.testsDigest != testsDigest {
            image.validation = try await validate(image)
            try image.save()
        }
        let status = image.status(testsDigest: testsDigest)
        try await pruneImages(of: recipe.name, keeping: image)
        switch status {
        case .ready: say(recipe.name, "ready: image \(image.imageDigest.short), standing suite passed")
        case .failed:
            let failing = image.validation?.results.filter { !$0.passed }.map(\.name) ?? []
            say(recipe.name, "NOT USABLE: its own standing suite failed (\(failing.joined(separator: ", ")))")
        default: break
        }
        return BuildOutcome(image: image, reusedImage: reused, seconds: started.secondsSince, status: status)
    }

    private func buildImage(_ recipe: BaselineRecipe, digest: SHA256Digest, directory: String) async throws
        -> BaselineImage
    {
        let started = ContinuousClock.now
        let partial = directory + ".partial"
        try await ImageBuilder.removeTree(partial)
        for stale in try await ImageBuilder.removeStaleWork(of: recipe.name, home: home) {
            say(recipe.name, "removed \(stale), left by a build that was killed")
        }
        let builder = ImageBuilder(home: home, project: project, progress: progress)
        let root = try await builder.build(
            recipe, into: partial, workName: ImageBuilder.workName(recipe.name, recipeDigest: digest))
        say(recipe.name, "hashing the image")
        let imageDigest = try await fileDigest(root.disk)
        let probe = await KVMProbe.cached(home: home, kernel: root.kernel)
        var image = BaselineImage(
            format: BaselineImage.formatVersion, name: recipe.name, recipeDigest: digest, imageDigest: imageDigest,
            suite: recipe.base.suite, memoryMiB: recipe.resources.memoryMiB, vcpus: recipe.resources.vcpus,
            domainType: probe.usable ? "kvm" : "qemu", directory: directory, builtAt: Date(),
            imageSeconds: started.secondsSince, slots: [], validation: nil)
        try image.save()
        try? FileManager.default.removeItem(atPath: directory)
        try FileManager.default.moveItem(atPath: partial, toPath: directory)
        image.directory = directory
        try image.save()
        _ = try BaselineRootFS.seal(image, method: .build, seconds: 0)
        say(recipe.name, String(format: "image built in %.0f s (digest %@)", image.imageSeconds, imageDigest.short))
        return image
    }

    /// Keeps the current image and the one built before it; older versions (and their slot
    /// states, hundreds of MB each) go. Runs keep their evidence in the CMDB.
    func pruneImages(of name: String, keeping current: BaselineImage) async throws {
        let folder = home.imagesOf(name)
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []
        let others = entries.filter { !$0.hasSuffix(".partial") && "\(folder)/\($0)" != current.directory }
            .compactMap { try? BaselineImage.load(from: "\(folder)/\($0)") }
            .sorted { $0.builtAt > $1.builtAt }
        for old in others.dropFirst() {
            say(name, "removing the old image \(old.imageDigest.short) (built \(old.builtAt))")
            try await removeImage(at: old.directory)
        }
    }

    /// Deletes one built version, destroying its slot domains first.
    func removeImage(at directory: String) async throws {
        if let image = try? BaselineImage.load(from: directory) {
            for slot in image.slots {
                let connection = try await connection(to: host(named: slot.host))
                if let domain = try? await connection.domain(named: slot.domain) { try? await domain.destroy() }
                try? await ImageBuilder.removeTree(home.runDirectory(domain: slot.domain))
            }
        }
        try await ImageBuilder.removeTree(directory)
    }

    /// Cold-boots slot `index` on its own overlay, waits for the guest to settle, and saves
    /// its memory: from then on the slot restores in about a second.
    func warmSlot(_ index: Int, of image: BaselineImage, on host: LabHosts.Host, lockHeld: Bool) async throws
        -> BaselineImage
    {
        let domainName = domainName(image, slot: index, host: host)
        let stem = host == primaryHost ? "slot\(index)" : "slot-\(host.name)-\(index)"
        let overlay = "\(image.directory)/\(stem).qcow2"
        let saveFile = "\(image.directory)/\(stem).save"
        let runDirectory = home.runDirectory(domain: domainName)
        let console = runDirectory + "/boot.log"
        try FileManager.default.createDirectory(
            atPath: runDirectory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        for path in [overlay, saveFile, console] { try? FileManager.default.removeItem(atPath: path) }
        removeListings(disk: overlay)
        try await HostCommand.check("qemu-img", ["create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", overlay])

        let definition = GuestDomain(
            name: domainName, type: image.domainType, memoryMiB: image.memoryMiB, vcpus: image.vcpus,
            kernel: image.kernel, initrd: image.initrd, disk: overlay, consoleLog: console)
        let connection = try await connection(to: host)
        if let stale = try await connection.domain(named: domainName) { try await stale.destroy() }
        say(image.name, "booting slot \(index) on \(host.name) (\(image.domainType == "kvm" ? "KVM" : "TCG, no KVM here"))")
        let started = ContinuousClock.now
        let domain = try await connection.createTransient(xml: definition.xml)
        let failedUnits: [String]
        let bootSeconds: Double
        do {
            let agent = domain.agent
            try await awaitAgent(agent, console: console, within: .seconds(300), what: "boot of \(image.name) slot \(index)")
            bootSeconds = started.secondsSince
            try await agent.setTime()
            // Save a settled guest: services up, not half-way through boot.
            let settle = try await agent.exec(["systemctl", "is-system-running", "--wait"], timeout: .seconds(240))
            let failed = try await agent.exec(["systemctl", "--failed", "--plain", "--no-legend"])
            failedUnits = failed.stdoutText.split(separator: "\n").compactMap { $0.split(separator: " ").first.map(String.init) }
            say(
                image.name,
                String(format: "slot %d up in %.1f s (%@)", index, bootSeconds, settle.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines))
            )
            // The listing incremental inventories compare with: this boot's inodes and ctimes.
            if let watch = try? baselines.load(image.name).watch {
                try await recordListing(disk: overlay, agent: agent, watching: watch)
            }
            // A smaller memory image restores faster: drop the page cache first.
            _ = try await agent.exec(["/bin/sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"])
            try await domain.save(to: saveFile)
        } catch {
            let cleanup = Task.detached {
                try? await domain.destroy()
                try? FileManager.default.removeItem(atPath: overlay)
            }
            await cleanup.value
            throw error
        }
        // The frozen overlay is the disk the saved memory matches: never write it again.
        try FileManager.default.setAttributes([.posixPermissions: 0o444], ofItemAtPath: overlay)

        let slot = BaselineImage.Slot(
            index: index, domain: domainName, disk: overlay, console: console, saveFile: saveFile,
            bootSeconds: bootSeconds, savedAt: Date(), failedUnits: failedUnits, host: host.name)
        let update = {
            var current = try BaselineImage.load(from: image.directory) ?? image
            current.slots.removeAll { $0.domain == domainName }
            current.slots.append(slot)
            current.slots.sort { $0.index < $1.index }
            try current.save()
            return current
        }
        if lockHeld { return try update() }
        let lock = try await acquire(home.buildLock(image.name), waiting: "another build of \(image.name)")
        defer { lock.release() }
        return try update()
    }

    /// Runs the baseline's standing regression suite on a fresh restore.
    func validate(_ image: BaselineImage) async throws -> BaselineImage.Validation {
        let tests = baselines.tests(of: image.name)
        say(image.name, "running its standing regression suite (\(tests.count) tests) on a fresh restore")
        let results = try await withRestored(image) { guest in
            try await StandingSuite.run(tests, in: guest, progress: progress)
        }
        return BaselineImage.Validation(testsDigest: baselines.testsDigest(of: image.name), results: results, at: Date())
    }

    /// `cl-web-1a2b3c4d-s0` on the first host, `cl-web-1a2b3c4d-lab2-s0` on host lab2:
    /// unique across hosts, so locks and run folders (on a shared path) never collide.
    func domainName(_ image: BaselineImage, slot: Int, host: LabHosts.Host) -> String {
        let stem = "cl-\(image.name)-\(image.recipeDigest.short.prefix(8))"
        return host == primaryHost ? "\(stem)-s\(slot)" : "\(stem)-\(host.name)-s\(slot)"
    }

    /// Slot domains (not bench or test VMs): what a killed run can leave behind.
    static func isSlotDomain(_ name: String) -> Bool {
        guard name.hasPrefix("cl-"), let suffix = name.split(separator: "-").last, suffix.hasPrefix("s") else { return false }
        return suffix.dropFirst().allSatisfy(\.isNumber) && suffix.count > 1
    }

    // MARK: Restore

    /// Restores a pristine guest of `image` on a free slot (warming a new slot when all are
    /// busy and the host has room), sets its clock and waits for its agent.
    public func restore(_ image: BaselineImage, on chosen: LabHosts.Host? = nil) async throws -> RestoredGuest {
        try home.prepare()
        let host = chosen ?? primaryHost
        var waitingSaid = false
        while true {
            try Task.checkCancellation()
            let current = try BaselineImage.load(from: image.directory) ?? image
            let mine = current.slots.filter { self.host(named: $0.host) == host }
            for slot in mine where !isKept(slot.domain) {
                if let lock = try FileLock.tryAcquire(home.slotLock(domain: slot.domain)) {
                    return try await restore(slot, of: current, lock: lock, host: host)
                }
            }
            let used = Set(mine.map(\.index))
            if let index = (0..<host.slots).first(where: { !used.contains($0) }) {
                let domain = domainName(current, slot: index, host: host)
                if let lock = try FileLock.tryAcquire(home.slotLock(domain: domain)) {
                    let warmed: BaselineImage
                    do {
                        warmed = try await warmSlot(index, of: current, on: host, lockHeld: false)
                    } catch {
                        lock.release()
                        throw error
                    }
                    guard let slot = warmed.slots.first(where: { $0.domain == domain }) else {
                        lock.release()
                        throw ChangelabError("internal: slot \(index) of \(image.name) missing after warming")
                    }
                    return try await restore(slot, of: warmed, lock: lock, host: host)
                }
            }
            if !waitingSaid {
                say(image.name, "all \(host.slots) slots on \(host.name) busy; waiting for one")
                waitingSaid = true
            }
            try await Task.sleep(for: .milliseconds(200))
        }
    }

    /// Restores a guest of `image` ahead of time, paused (its own overlay, the slot's saved
    /// state), for the matrix's warm pool: nil when no saved slot of it is free on `host`.
    /// Never boots a new slot: a cold boot is what the pool exists to avoid.
    func restorePaused(_ image: BaselineImage, on host: LabHosts.Host) async throws -> RestoredGuest? {
        try home.prepare()
        let current = try BaselineImage.load(from: image.directory) ?? image
        for slot in current.slots where self.host(named: slot.host) == host && !isKept(slot.domain) {
            if let lock = try FileLock.tryAcquire(home.slotLock(domain: slot.domain)) {
                return try await restore(slot, of: current, lock: lock, host: host, paused: true)
            }
        }
        return nil
    }

    private func restore(
        _ slot: BaselineImage.Slot, of image: BaselineImage, lock: FileLock, host: LabHosts.Host, paused: Bool = false
    ) async throws -> RestoredGuest {
        let started = ContinuousClock.now
        lock.note("pid \(getpid())\n")
        let connection: Connection
        do {
            connection = try await self.connection(to: host)
            try await reap(slot.domain, connection: connection)
            if host.isLocal {
                for path in [image.disk, slot.disk, image.kernel, image.initrd] { try QEMUAccess.require(reading: path) }
            }
        } catch {
            lock.release()
            throw error
        }
        let runDirectory = home.runDirectory(domain: slot.domain)
        let token = String(UUID().uuidString.prefix(8)).lowercased()
        let overlay = "\(runDirectory)/overlay-\(token).qcow2"
        let console = "\(runDirectory)/console-\(token).log"
        var domain: Domain?
        do {
            try FileManager.default.createDirectory(
                atPath: runDirectory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
            try await HostCommand.check("qemu-img", ["create", "-q", "-f", "qcow2", "-b", slot.disk, "-F", "qcow2", overlay])
            let saved = try await connection.savedImageXML(at: slot.saveFile)
            let xml = saved.replacingAttribute(slot.disk, with: overlay).replacingAttribute(slot.console, with: console)
            try await connection.restore(from: slot.saveFile, xml: xml, paused: paused)
            domain = try await connection.domain(named: slot.domain)
            guard let domain else { throw ChangelabError("domain \(slot.domain) vanished right after its restore") }
            if paused {
                return RestoredGuest(
                    lab: self, image: image, slot: slot, host: host, domain: domain, overlay: overlay, console: console,
                    lock: lock, restoreSeconds: started.secondsSince, clockSeconds: 0, paused: true)
            }
            let agent = domain.agent
            try await awaitAgent(agent, console: console, within: .seconds(60), what: "restore of \(image.name)")
            let clockStarted = ContinuousClock.now
            try await agent.setTime()
            return RestoredGuest(
                lab: self, image: image, slot: slot, host: host, domain: domain, overlay: overlay, console: console,
                lock: lock, restoreSeconds: started.secondsSince, clockSeconds: clockStarted.secondsSince)
        } catch {
            let leftover = domain
            let cleanup = Task.detached {
                try? await leftover?.destroy()
                try? FileManager.default.removeItem(atPath: overlay)
                try? FileManager.default.removeItem(atPath: console)
                lock.release()
            }
            await cleanup.value
            throw error
        }
    }

    /// Restores `image`, runs `body` with the guest, and always tears the guest down —
    /// on success, on error and on cancellation — unless `keep` says to keep it.
    public func withRestored<T: Sendable>(
        _ image: BaselineImage, keep: Bool = false, _ body: (RestoredGuest) async throws -> T
    ) async throws -> T {
        let guest = try await restore(image)
        do {
            let result = try await body(guest)
            await guest.finish(keep: keep)
            return result
        } catch {
            await guest.finish(keep: keep)
            throw error
        }
    }

    /// Waits for the agent; on time-out the error carries the tail of the serial console.
    func awaitAgent(_ agent: GuestAgent, console: String, within limit: Duration, what: String) async throws {
        do {
            try await agent.waitUntilReady(within: limit)
        } catch let error as GuestAgentError {
            let tail = (try? String(contentsOfFile: console, encoding: .utf8)).map { CommandResult.tail(of: $0, lines: 25) }
            throw ChangelabError(
                "\(what): \(error)",
                why: tail.map { "last lines of the serial console (\(console)):\n\($0)" } ?? "the serial console is empty",
                fix: "check that qemu-guest-agent is installed and the kernel boots (see the console above)")
        }
    }

    // MARK: Stale and kept guests

    /// Destroys a slot domain that nobody holds (its owner died) and clears its run files.
    private func reap(_ domainName: String, connection: Connection) async throws {
        if let stale = try await connection.domain(named: domainName) {
            if try await stale.state().isActive {
                say(domainName, "destroying a VM left running by an interrupted run")
                try await stale.destroy()
            }
        }
        let runDirectory = home.runDirectory(domain: domainName)
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: runDirectory)) ?? []
        where entry.hasPrefix("overlay-") || entry.hasPrefix("console-") {
            try? FileManager.default.removeItem(atPath: "\(runDirectory)/\(entry)")
        }
    }

    /// Reaps every slot domain that no living process holds and that is not kept, on every
    /// lab host: what a killed run left behind. Returns the domains destroyed.
    @discardableResult
    public func reapStale() async throws -> [String] {
        var reaped: [String] = []
        for host in hosts.hosts {
            let connection = try await connection(to: host)
            for domain in try await connection.domains() where Self.isSlotDomain(domain.name) && !isKept(domain.name) {
                guard let lock = try FileLock.tryAcquire(home.slotLock(domain: domain.name)) else { continue }
                defer { lock.release() }
                if try await domain.state().isActive { reaped.append(domain.name) }
                try await reap(domain.name, connection: connection)
            }
        }
        return reaped
    }

    func keptMarker(_ domain: String) -> String { home.runDirectory(domain: domain) + "/kept.json" }

    func isKept(_ domain: String) -> Bool { FileManager.default.fileExists(atPath: keptMarker(domain)) }

    /// VMs kept for debugging (`--keep`, `--keep-failed`), newest first.
    public func keptGuests() -> [KeptGuest] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: home.run)) ?? []
        return entries.compactMap { entry in
            guard let data = FileManager.default.contents(atPath: keptMarker(entry)) else { return nil }
            return try? StableJSON.decode(KeptGuest.self, from: data)
        }.sorted { $0.since > $1.since }
    }

    /// A kept VM by domain name, or the newest kept VM of a baseline.
    public func keptGuest(_ nameOrBaseline: String) -> KeptGuest? {
        let kept = keptGuests()
        return kept.first { $0.domain == nameOrBaseline } ?? kept.first { $0.baseline == nameOrBaseline }
    }

    /// The live domain of a kept VM, to run commands or copy files in it.
    public func attach(_ kept: KeptGuest) async throws -> Domain {
        guard let domain = try await connection(uri: kept.uri).domain(named: kept.domain), try await domain.state().isActive
        else {
            try? FileManager.default.removeItem(atPath: keptMarker(kept.domain))
            throw ChangelabError(
                "the kept VM \(kept.domain) is no longer running", fix: "restore a fresh one: changelab lab exec \(kept.baseline) --keep -- true")
        }
        return domain
    }

    /// Destroys a kept VM and deletes its overlay.
    public func discard(_ kept: KeptGuest) async throws {
        let lock = try await acquire(home.slotLock(domain: kept.domain), waiting: "the slot \(kept.domain)")
        defer { lock.release() }
        try? FileManager.default.removeItem(atPath: keptMarker(kept.domain))
        try await reap(kept.domain, connection: try await connection(uri: kept.uri))
    }

    private func acquire(_ path: String, waiting what: String) async throws -> FileLock {
        if let lock = try FileLock.tryAcquire(path) { return lock }
        say((path as NSString).lastPathComponent, "waiting for \(what)")
        guard let lock = try await FileLock.acquire(path, timeout: .seconds(3 * 3600)) else {
            throw ChangelabError("gave up waiting for \(what) (lock \(path))")
        }
        return lock
    }

    private func fileDigest(_ path: String) async throws -> SHA256Digest {
        let result = try await HostCommand.check("sha256sum", [path], timeout: .seconds(600))
        guard let hex = result.stdoutText.split(separator: " ").first, let digest = SHA256Digest(hex: String(hex)) else {
            throw ChangelabError("cannot hash \(path): sha256sum printed \(result.stdoutText.prefix(80))")
        }
        return digest
    }
}

/// A VM kept running for debugging after its command or cell finished.
public struct KeptGuest: Codable, Sendable, Equatable {
    public var domain: String
    public var baseline: String
    public var uri: String
    public var overlay: String
    public var console: String
    public var since: Date
    public var reason: String
}

/// A guest restored from a baseline slot, owned by this process until `finish`.
public final class RestoredGuest: Sendable {
    public let lab: Lab
    public let image: BaselineImage
    public let slot: BaselineImage.Slot
    /// The lab host the guest runs on.
    public let host: LabHosts.Host
    public let domain: Domain
    public let overlay: String
    public let console: String
    let lock: FileLock
    /// Seconds from starting the restore to an answering agent with its clock set.
    public let restoreSeconds: Double
    /// Of those, the seconds spent setting the clock.
    public let clockSeconds: Double
    /// Restored ahead of time and paused (the warm pool): `resume()` before use.
    public let paused: Bool
    private let finished = AtomicFlag()

    init(
        lab: Lab, image: BaselineImage, slot: BaselineImage.Slot, host: LabHosts.Host, domain: Domain, overlay: String,
        console: String, lock: FileLock, restoreSeconds: Double, clockSeconds: Double, paused: Bool = false
    ) {
        self.lab = lab
        self.image = image
        self.slot = slot
        self.host = host
        self.domain = domain
        self.overlay = overlay
        self.console = console
        self.lock = lock
        self.restoreSeconds = restoreSeconds
        self.clockSeconds = clockSeconds
        self.paused = paused
    }

    /// Resumes a guest restored paused, waits for its agent and sets its clock: what a cell
    /// from the warm pool pays on its critical path. Returns the resume (to an answering
    /// agent) and clock seconds.
    public func resume() async throws -> (resume: Double, clock: Double) {
        let started = ContinuousClock.now
        try await domain.resume()
        try await lab.awaitAgent(agent, console: console, within: .seconds(60), what: "resume of \(image.name)")
        let resumed = started.secondsSince
        let clockStarted = ContinuousClock.now
        try await agent.setTime()
        return (resumed, clockStarted.secondsSince)
    }

    public var agent: GuestAgent { domain.agent }
    public var name: String { domain.name }

    /// Tears the guest down (destroy, delete overlay and console, free the slot), or keeps
    /// it running for debugging. Runs to the end even when the caller was cancelled.
    /// Only the first call acts: a later one (a pooled guest torn down on a cancelled path)
    /// never destroys a VM the first kept.
    public func finish(keep: Bool, reason: String = "kept on request") async {
        guard finished.setOnce() else { return }
        let lab = self.lab
        let task = Task.detached { [self] in
            if keep {
                let kept = KeptGuest(
                    domain: domain.name, baseline: image.name, uri: domain.connection.uri, overlay: overlay,
                    console: console, since: Date(), reason: reason)
                if let data = try? StableJSON.data(kept) {
                    try? AtomicFile.write(data, to: lab.keptMarker(domain.name))
                }
            } else {
                try? await domain.destroy()
                try? FileManager.default.removeItem(atPath: overlay)
                try? FileManager.default.removeItem(atPath: console)
            }
            lock.release()
        }
        await task.value
    }
}

/// One connection per libvirt URI per process: connections are thread-safe and opening
/// one costs a round trip to the daemon.
actor ConnectionPool {
    static let shared = ConnectionPool()
    private var connections: [String: Connection] = [:]

    func connection(_ uri: String) async throws -> Connection {
        if let existing = connections[uri], await existing.isAlive() { return existing }
        let opened = try await Connection.open(uri)
        connections[uri] = opened
        return opened
    }
}
