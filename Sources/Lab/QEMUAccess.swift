#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Model

/// Checks that the user qemu:///system runs QEMU as (libvirt-qemu) can reach a file.
///
/// libvirt hands disk images, kernels and initrds to that user, but not the folders above
/// them: a folder without execute permission for it (like /root) makes QEMU fail with a
/// bare "Permission denied" at start. This check names the folder and the fix first.
public enum QEMUAccess {
    public static let user = "libvirt-qemu"

    /// The first problem found on the way to `path`, or nil when QEMU can read it.
    public static func problem(reading path: String) -> String? {
        guard let account = getpwnam(user) else { return nil }  // no such user: not a qemu:///system host
        let uid = account.pointee.pw_uid
        let gid = account.pointee.pw_gid
        var groups = [gid_t](repeating: 0, count: 64)
        var count: Int32 = 64
        getgrouplist(user, gid, &groups, &count)
        let memberOf = Set(groups.prefix(Int(max(0, count))))

        func allowed(_ stat: stat, _ bit: mode_t) -> Bool {
            if stat.st_uid == uid { return stat.st_mode & (bit << 6) != 0 }
            if memberOf.contains(stat.st_gid) { return stat.st_mode & (bit << 3) != 0 }
            return stat.st_mode & bit != 0
        }
        var components = path.split(separator: "/").map(String.init)
        let file = components.popLast()
        var current = ""
        for component in components {
            current += "/" + component
            var info = stat()
            guard stat(current, &info) == 0 else { return "\(current) does not exist" }
            if !allowed(info, mode_t(S_IXOTH)) {
                return "folder \(current) (mode \(String(info.st_mode & 0o777, radix: 8))) cannot be entered by \(user)"
            }
        }
        if file != nil {
            var info = stat()
            guard stat(path, &info) == 0 else { return "\(path) does not exist" }
            // libvirt chowns the image itself to the QEMU user when the domain starts.
        }
        return nil
    }

    /// Throws a ChangelabError naming the folder and the fix when QEMU cannot read `path`.
    public static func require(reading path: String) throws {
        if let problem = problem(reading: path) {
            throw ChangelabError(
                "QEMU (user \(user)) cannot read \(path)", why: problem,
                fix: "chmod o+x the folders above it, or set CHANGELAB_HOME to a folder every user can enter")
        }
    }
}
