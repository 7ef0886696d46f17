import Foundation
import HostIO
import Model

/// A line of progress from long lab work, for people watching a terminal.
public struct LabProgress: Sendable {
    /// What the work is about: a baseline or a cell.
    public var subject: String
    public var message: String

    public init(subject: String, message: String) {
        self.subject = subject
        self.message = message
    }
}

public typealias ProgressHandler = @Sendable (LabProgress) -> Void

/// The files a root image build produces.
struct RootImage {
    var disk: String
    var kernel: String
    var initrd: String
    /// The tree the image was made from, kept beside it (`BaselineRootFS`), not yet sealed.
    var rootfs: String
}

/// Builds a baseline's root disk from Debian packages: debootstrap → customize →
/// `mke2fs -d` → qcow2. No prebuilt image is downloaded; the kernel and initrd come out
/// of the image itself for direct kernel boot.
struct ImageBuilder {
    let home: LabHome
    let project: Project
    let progress: ProgressHandler

    /// What every lab image has besides the recipe's packages: a kernel, the guest agent
    /// (started by udev when its virtio-serial port appears) and systemd as init.
    static let corePackages = ["linux-image-amd64", "qemu-guest-agent", "systemd-sysv", "udev"]

    /// Timers that would change the guest at random moments during a test (apt updates,
    /// database backups, trims): masked, so a cell sees only what its change did.
    static let maskedUnits = [
        "apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer", "e2scrub_all.timer", "fstrim.timer",
        "man-db.timer", "logrotate.timer",
    ]

    /// Kernel module trees no lab guest uses (GPU, wireless, media, sound, …): about 250 MB.
    static let prunedModuleTrees = [
        "drivers/gpu", "drivers/media", "drivers/net/wireless", "drivers/net/ethernet", "drivers/infiniband",
        "drivers/staging", "drivers/bluetooth", "drivers/usb", "drivers/iio", "drivers/isdn", "drivers/comedi",
        "drivers/video", "drivers/mmc", "drivers/mtd", "drivers/thunderbolt", "drivers/nfc", "drivers/atm",
        "drivers/firewire", "drivers/hwmon", "drivers/scsi/qla2xxx", "drivers/scsi/lpfc", "drivers/scsi/mpt3sas",
        "sound", "net/wireless", "net/bluetooth", "net/mac80211",
    ]

    /// Builds the root image of `recipe` into `directory` (created; must not exist).
    func build(_ recipe: BaselineRecipe, into directory: String, workName: String) async throws -> RootImage {
        let work = "\(home.builds)/\(workName)"
        let rootfs = work + "/rootfs"
        try? await Self.removeTree(work)
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        do {
            let image = try await buildIn(work: work, rootfs: rootfs, recipe: recipe, directory: directory)
            // The tree stays as the fleet's lower layer (BaselineRootFS) instead of going with the work.
            try await BaselineRootFS.keep(rootfs, besideImageIn: directory)
            try await Self.removeTree(work)
            return image
        } catch {
            // Interrupted or failed: nothing half-built stays behind (not even mounts).
            let cleanup = Task.detached { try? await Self.removeTree(work) }
            await cleanup.value
            throw error
        }
    }

    private func buildIn(work: String, rootfs: String, recipe: BaselineRecipe, directory: String) async throws
        -> RootImage
    {
        let progress = self.progress
        let say: @Sendable (String) -> Void = { message in progress(LabProgress(subject: recipe.name, message: message)) }
        let includes = Self.corePackages + recipe.packages.filter { !Self.corePackages.contains($0) }
        let arguments = [
            "--variant=\(recipe.base.variant)", "--include=\(includes.joined(separator: ","))",
            "--cache-dir=\(home.debCache)", recipe.base.suite,
        ]
        // debootstrap's package cache is not safe for two writers: one deletes the other's
        // half-downloaded .deb as invalid. Downloads therefore happen one build at a time,
        // in a --download-only pass; the installing pass then only reads the cache.
        say("debootstrap: fetching \(recipe.base.suite) packages into the shared cache")
        let cacheLock = try await FileLock.acquire(home.debCache + "/.changelab.lock", timeout: .seconds(3600))
        guard let cacheLock else { throw ChangelabError("gave up waiting for the package cache \(home.debCache)") }
        let download = try await HostCommand.run(
            "debootstrap", ["--download-only"] + arguments + [work + "/download", recipe.base.mirror],
            timeout: .seconds(1800))
        cacheLock.release()
        try await Self.removeTree(work + "/download")
        say("debootstrap \(recipe.base.suite) (\(recipe.base.variant)) with \(includes.count) extra packages")
        let counter = DebootstrapProgress(say: say)
        let result = download.succeeded
            ? try await HostCommand.run(
                "debootstrap", arguments + [rootfs, recipe.base.mirror], timeout: .seconds(1800),
                onLine: { _, line in counter.observe(line) })
            : download
        try await Self.unmountAll(under: rootfs)
        guard result.succeeded else {
            let log = "\(rootfs)/debootstrap/debootstrap.log"
            let detail = (try? String(contentsOfFile: log, encoding: .utf8)).map { CommandResult.tail(of: $0, lines: 20) }
            throw ChangelabError(
                "debootstrap of baseline '\(recipe.name)' failed (\(result.timedOut ? "timed out" : "status \(result.status)"))",
                why: "\n" + (detail ?? result.tail(20)),
                fix: "check the package names in baselines/\(recipe.name).yaml and that \(recipe.base.mirror) is reachable")
        }

        say("customizing the root file system")
        try await customize(rootfs: rootfs, recipe: recipe)

        say("making a \(recipe.resources.diskMiB) MiB ext4 image (mke2fs -d) and converting it to qcow2")
        let raw = work + "/root.raw"
        try await HostCommand.check("truncate", ["-s", "\(recipe.resources.diskMiB)M", raw])
        try await HostCommand.check(
            "mke2fs", ["-q", "-t", "ext4", "-d", rootfs, "-L", "root", "-E", "root_owner=0:0", raw], timeout: .seconds(900))
        try FileManager.default.createDirectory(
            atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        let disk = directory + "/base.qcow2"
        try await HostCommand.check("qemu-img", ["convert", "-O", "qcow2", raw, disk], timeout: .seconds(900))

        let boot = rootfs + "/boot"
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: boot)) ?? []
        guard let kernelName = entries.filter({ $0.hasPrefix("vmlinuz-") }).sorted().last,
            let initrdName = entries.filter({ $0.hasPrefix("initrd.img-") }).sorted().last
        else {
            throw ChangelabError(
                "the image of baseline '\(recipe.name)' has no kernel or initrd in /boot",
                fix: "keep linux-image-amd64 installable from \(recipe.base.mirror)")
        }
        let kernel = directory + "/vmlinuz"
        let initrd = directory + "/initrd.img"
        try FileManager.default.copyItem(atPath: "\(boot)/\(kernelName)", toPath: kernel)
        try FileManager.default.copyItem(atPath: "\(boot)/\(initrdName)", toPath: initrd)
        for path in [disk, kernel, initrd] {
            try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: path)
        }
        return RootImage(disk: disk, kernel: kernel, initrd: initrd, rootfs: directory + "/rootfs")
    }

    private func customize(rootfs: String, recipe: BaselineRecipe) async throws {
        func write(_ text: String, _ path: String, mode: Int = 0o644) throws {
            let full = rootfs + path
            try FileManager.default.createDirectory(
                atPath: (full as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try AtomicFile.write(text, to: full, permissions: mode_t(mode))
        }
        func inChroot(_ arguments: [String]) async throws {
            try await HostCommand.check("chroot", [rootfs] + arguments, timeout: .seconds(300))
        }

        try write(recipe.name + "\n", "/etc/hostname")
        try write("127.0.0.1\tlocalhost\n127.0.1.1\t\(recipe.name)\n::1\tlocalhost ip6-localhost ip6-loopback\n", "/etc/hosts")
        try write("/dev/vda\t/\text4\trw,relatime,errors=remount-ro\t0\t1\n", "/etc/fstab")
        // No password: the serial console (virsh console) is for debugging a kept VM;
        // there is no network to log in from.
        try await inChroot(["passwd", "-d", "root"])
        try await inChroot(["systemctl", "mask"] + Self.maskedUnits)

        for file in recipe.files {
            let data: Data
            switch file.body {
            case .content(let text): data = Data(text.utf8)
            case .source(let relative):
                let source = "\(project.baselinesDirectory)/\(recipe.name)/\(relative)"
                guard let contents = FileManager.default.contents(atPath: source) else {
                    throw ChangelabError(
                        "baseline '\(recipe.name)' lays down \(file.path) from \(project.display(source)), which cannot be read",
                        fix: "create the file or correct 'source' in baselines/\(recipe.name).yaml")
                }
                data = contents
            }
            let full = rootfs + file.path
            try FileManager.default.createDirectory(
                atPath: (full as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try AtomicFile.write(data, to: full, permissions: mode_t(file.mode))
            try await inChroot(["chown", file.owner, file.path])
        }
        if !recipe.enableServices.isEmpty { try await inChroot(["systemctl", "enable"] + recipe.enableServices) }
        if !recipe.disableServices.isEmpty { try await inChroot(["systemctl", "disable"] + recipe.disableServices) }

        // Each booted slot makes its own machine-id; the image itself carries none.
        try write("", "/etc/machine-id")
        try? FileManager.default.removeItem(atPath: rootfs + "/var/lib/dbus/machine-id")

        let modules = rootfs + "/usr/lib/modules"
        for version in (try? FileManager.default.contentsOfDirectory(atPath: modules)) ?? [] {
            for tree in Self.prunedModuleTrees {
                try? FileManager.default.removeItem(atPath: "\(modules)/\(version)/kernel/\(tree)")
            }
            try await inChroot(["depmod", version])
        }
        for junk in ["/var/cache/apt/archives", "/var/lib/apt/lists"] {
            for entry in (try? FileManager.default.contentsOfDirectory(atPath: rootfs + junk)) ?? []
            where entry != "partial" && entry != "lock" {
                try? FileManager.default.removeItem(atPath: "\(rootfs)\(junk)/\(entry)")
            }
        }
        try? FileManager.default.removeItem(atPath: rootfs + "/debootstrap")
    }

    /// Unmounts whatever debootstrap (or an interrupted build) left mounted inside `path`,
    /// deepest first, so that deleting the tree can never reach into /proc or /dev.
    static func unmountAll(under path: String) async throws {
        let mounts = (try? String(contentsOfFile: "/proc/mounts", encoding: .utf8)) ?? ""
        let targets = mounts.split(separator: "\n").compactMap { line -> String? in
            let fields = line.split(separator: " ")
            guard fields.count > 1 else { return nil }
            let target = fields[1].replacingOccurrences(of: "\\040", with: " ")
            return target == path || target.hasPrefix(path + "/") ? target : nil
        }
        for target in targets.sorted(by: { $0.count > $1.count }) {
            _ = try await HostCommand.run("umount", ["-l", target])
        }
    }

    /// The work folder of a build of `baseline` for one recipe digest.
    static func workName(_ baseline: String, recipeDigest: SHA256Digest) -> String {
        "\(baseline)-\(recipeDigest.short)"
    }

    /// Removes the work folders that builds of `baseline` killed hard (SIGKILL, a machine
    /// that went away) left behind, with the /proc debootstrap may have left mounted in
    /// them. Call with the baseline's build lock held: then no live build owns any of them.
    static func removeStaleWork(of baseline: String, home: LabHome) async throws -> [String] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: home.builds)) ?? []
        let hex = Set("0123456789abcdef")
        let stale = entries.filter { entry in
            guard entry.hasPrefix(baseline + "-") else { return false }
            let suffix = entry.dropFirst(baseline.count + 1)
            return suffix.count == 12 && suffix.allSatisfy(hex.contains)
        }
        for entry in stale { try await removeTree(home.builds + "/" + entry) }
        return stale
    }

    /// Deletes a build folder after making sure nothing is mounted inside it.
    static func removeTree(_ path: String) async throws {
        guard FileManager.default.fileExists(atPath: path) else { return }
        try await unmountAll(under: path)
        // --one-file-system: even if a mount slipped through, rm stays out of it.
        try await HostCommand.check("rm", ["-rf", "--one-file-system", path], timeout: .seconds(600))
    }
}

/// Turns debootstrap's chatter into a few progress lines (one per phase, with counts).
private final class DebootstrapProgress: @unchecked Sendable {
    // @unchecked: mutable state guarded by `lock`; called from the reader thread.
    private let lock = NSLock()
    private var phase = ""
    private var count = 0
    private var lastReport = Date.distantPast
    private let say: @Sendable (String) -> Void

    init(say: @escaping @Sendable (String) -> Void) {
        self.say = say
    }

    func observe(_ line: String) {
        guard line.hasPrefix("I: ") else { return }
        let words = line.dropFirst(3).split(separator: " ")
        guard let verb = words.first else { return }
        lock.lock()
        defer { lock.unlock() }
        let current = String(verb)
        if current != phase {
            if count > 1 { say("debootstrap: \(phase.lowercased()) \(count) packages") }
            phase = current
            count = 0
        }
        count += 1
        if Date().timeIntervalSince(lastReport) > 15 {
            lastReport = Date()
            say("debootstrap: \(line.dropFirst(3))")
        }
    }
}
