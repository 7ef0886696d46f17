import Foundation
import Model

/// Where the lab keeps built images, slot states and run-time files: outside any git
/// checkout, so a fresh clone reuses images built before (keyed by recipe digest).
///
/// `CHANGELAB_HOME` overrides the default `/var/lib/changelab`. Every folder from the root
/// down must be readable by the QEMU user (libvirt-qemu) for qemu:///system.
public struct LabHome: Sendable, Equatable {
    public let root: String

    public init(root: String) {
        self.root = root
    }

    public static func fromEnvironment() -> LabHome {
        LabHome(root: ProcessInfo.processInfo.environment["CHANGELAB_HOME"] ?? "/var/lib/changelab")
    }

    public var images: String { root + "/images" }
    public var run: String { root + "/run" }
    public var builds: String { root + "/build" }
    /// Downloaded .debs, shared by every debootstrap.
    public var debCache: String { root + "/cache/debs" }

    /// Folder of every built version of one baseline.
    public func imagesOf(_ baseline: String) -> String { "\(images)/\(baseline)" }
    /// Folder of one built version: `images/<name>/<recipe digest prefix>`.
    public func imageDirectory(_ baseline: String, recipeDigest: SHA256Digest) -> String {
        "\(imagesOf(baseline))/\(recipeDigest.short)"
    }
    /// Run-time files of one slot domain (overlays, console logs, kept marker).
    public func runDirectory(domain: String) -> String { "\(run)/\(domain)" }
    public func buildLock(_ baseline: String) -> String { "\(run)/build-\(baseline).lock" }
    public func slotLock(domain: String) -> String { "\(run)/\(domain).lock" }

    /// Creates the folders with modes QEMU can traverse.
    public func prepare() throws {
        for path in [root, images, run, builds, root + "/cache", debCache] {
            try FileManager.default.createDirectory(
                atPath: path, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        }
    }
}
