import Foundation
import HostIO
import Model

/// A built baseline's root file system as a plain directory: the read-only lower layer of
/// the test fleet's per-agent overlay roots, so agents install into the very system the
/// lab tested.
///
/// It lives next to the image (`images/NAME/DIGEST/rootfs`) with a stamp naming the image
/// digest it came from; a rootfs whose stamp does not match its image is rebuilt. Nothing
/// ever writes into it: overlays write to their own upper layers. The kernel, initrd and
/// kernel modules are left out (a fleet root is chrooted into, never booted): that keeps it
/// about 150 MB smaller than the image's file system.
public struct BaselineRootFS: Codable, Sendable, Equatable {
    public static let formatVersion = 1
    /// Trees a chroot never uses; the image keeps them for booting.
    static let omitted = ["boot", "usr/lib/modules", "lost+found"]

    public enum Method: String, Codable, Sendable {
        /// Kept from the image build (the debootstrap tree that went into the image).
        case build
        /// Copied out of the image through a read-only loop mount (`cp -a`: device nodes,
        /// hard links and extended attributes as in the image).
        case loopMount = "loop-mount"
        /// Dumped with debugfs where loop devices are refused: no device nodes, hard links
        /// become copies, no extended attributes.
        case debugfs
    }

    public var format: Int
    public var baseline: String
    public var imageDigest: SHA256Digest
    public var method: Method
    public var createdAt: Date
    public var seconds: Double
    /// The directory holding the root file system.
    public var path: String

    static func directory(of image: BaselineImage) -> String { image.directory + "/rootfs" }
    static func stampPath(of image: BaselineImage) -> String { image.directory + "/rootfs.json" }

    /// The stamp of the rootfs kept beside `image`, or nil when there is none for this image.
    static func load(for image: BaselineImage) -> BaselineRootFS? {
        guard let data = FileManager.default.contents(atPath: stampPath(of: image)),
            let stamp = try? StableJSON.decode(BaselineRootFS.self, from: data), stamp.format <= formatVersion,
            stamp.imageDigest == image.imageDigest, stamp.path == directory(of: image),
            FileManager.default.fileExists(atPath: stamp.path + "/etc/passwd")
        else { return nil }
        return stamp
    }

    /// Moves the tree an image was built from beside it, trimmed, before the build folder goes.
    static func keep(_ tree: String, besideImageIn directory: String) async throws {
        try await trim(tree)
        try FileManager.default.moveItem(atPath: tree, toPath: directory + "/rootfs")
    }

    /// Records that `image`'s rootfs (moved beside it by `keep`) is complete.
    static func seal(_ image: BaselineImage, method: Method, seconds: Double) throws -> BaselineRootFS {
        let stamp = BaselineRootFS(
            format: formatVersion, baseline: image.name, imageDigest: image.imageDigest, method: method,
            createdAt: Date(), seconds: seconds, path: directory(of: image))
        try AtomicFile.write(try StableJSON.data(stamp), to: stampPath(of: image))
        return stamp
    }

    static func trim(_ tree: String) async throws {
        for relative in omitted {
            let path = tree + "/" + relative
            guard FileManager.default.fileExists(atPath: path) else { continue }
            try await ImageBuilder.removeTree(path)
            // An empty /boot (or modules folder) keeps the tree's shape for scripts that look.
            if relative != "lost+found" {
                try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
            }
        }
    }
}

extension Lab {
    /// The root file system of `image`, extracted from the image when it was built before
    /// rootfs were kept (or the kept one is gone); waits for the baseline's build lock.
    public func rootFileSystem(of image: BaselineImage) async throws -> (rootfs: BaselineRootFS, created: Bool) {
        if let existing = BaselineRootFS.load(for: image) { return (existing, false) }
        try home.prepare()
        var lock = try FileLock.tryAcquire(home.buildLock(image.name))
        if lock == nil {
            say(image.name, "waiting for another build of \(image.name)")
            lock = try await FileLock.acquire(home.buildLock(image.name), timeout: .seconds(3 * 3600))
        }
        guard let lock else {
            throw ChangelabError(
                "gave up waiting for the build lock of baseline '\(image.name)'",
                fix: "wait for the running 'changelab baseline build \(image.name)' to finish, then retry")
        }
        defer { lock.release() }
        if let existing = BaselineRootFS.load(for: image) { return (existing, false) }
        guard FileManager.default.fileExists(atPath: image.disk) else {
            throw ChangelabError(
                "the image of baseline '\(image.name)' has no disk at \(image.disk)",
                fix: "rebuild it: changelab baseline build --force \(image.name)")
        }
        let started = ContinuousClock.now
        say(image.name, "extracting the root file system of image \(image.imageDigest.short)")
        let work = "\(home.builds)/\(image.name)-rootfs-\(image.imageDigest.short)"
        try await ImageBuilder.removeTree(work)
        let target = BaselineRootFS.directory(of: image)
        try await ImageBuilder.removeTree(target)
        try FileManager.default.createDirectory(atPath: work + "/tree", withIntermediateDirectories: true)
        do {
            let method = try await extract(image.disk, into: work + "/tree", work: work)
            try await BaselineRootFS.keep(work + "/tree", besideImageIn: image.directory)
            try await ImageBuilder.removeTree(work)
            let stamp = try BaselineRootFS.seal(image, method: method, seconds: started.secondsSince)
            say(image.name, String(format: "root file system at %@ (%@, %.0f s)", stamp.path, method.rawValue, stamp.seconds))
            return (stamp, true)
        } catch {
            let cleanup = Task.detached { try? await ImageBuilder.removeTree(work) }
            await cleanup.value
            throw error
        }
    }

    /// Copies the file system of a qcow2 disk into `tree`: through a read-only loop mount
    /// when the host allows one, else with debugfs (which needs no privilege).
    private func extract(_ disk: String, into tree: String, work: String) async throws -> BaselineRootFS.Method {
        let raw = work + "/root.raw"
        try await HostCommand.check("qemu-img", ["convert", "-U", "-O", "raw", disk, raw], timeout: .seconds(900))
        let mountPoint = work + "/mnt"
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        // noload: never replay the journal, so not even a read-only mount writes to the image.
        let mounted = try await HostCommand.run("mount", ["-o", "loop,ro,noload", "-t", "ext4", raw, mountPoint])
        if mounted.succeeded {
            let copy = try await HostCommand.run("cp", ["-a", mountPoint + "/.", tree], timeout: .seconds(1800))
            _ = try await HostCommand.run("umount", [mountPoint])
            guard copy.succeeded else {
                throw ChangelabError("copying the image's file system out of \(mountPoint) failed", why: copy.tail(10))
            }
            return .loopMount
        }
        let dump = try await HostCommand.run("debugfs", ["-R", "rdump / \(tree)", raw], timeout: .seconds(1800))
        guard dump.succeeded, FileManager.default.fileExists(atPath: tree + "/etc/passwd") else {
            throw ChangelabError(
                "cannot read the file system of \(disk): a loop mount was refused (\(mounted.tail(2))) and debugfs failed",
                why: dump.tail(10), fix: "install e2fsprogs (debugfs), or run as root where loop devices work")
        }
        return .debugfs
    }
}
