#if canImport(Glibc)
import Glibc
#endif
import Foundation
import HostIO
import Libvirt
import Model

/// One health check of the lab host, with the command that fixes it when it fails.
public struct DoctorCheck: Codable, Sendable, Equatable {
    public var name: String
    public var ok: Bool
    /// False for checks that only inform (KVM usable or not).
    public var required: Bool
    public var detail: String
    public var fix: String?
}

/// `changelab doctor`: everything the lab needs from this host, checked for real.
public struct Doctor: Sendable {
    public let lab: Lab
    /// Below this, a baseline build may run out of room.
    public static let minimumFreeBytes: UInt64 = 5 << 30

    public init(lab: Lab) {
        self.lab = lab
    }

    public func run() async -> [DoctorCheck] {
        var checks: [DoctorCheck] = []
        let setup = "sudo \(lab.project.labDirectory)/setup"

        for host in lab.hosts.hosts {
            do {
                let connection = try await Connection.open(host.uri)
                let libvirt = try await connection.libvirtVersion()
                let hypervisor = (try? await connection.hypervisorVersion()) ?? "?"
                checks.append(
                    DoctorCheck(
                        name: "libvirt \(host.name)", ok: true, required: true,
                        detail: "\(host.uri) answers: libvirt \(libvirt), QEMU \(hypervisor), \(host.slots) slots", fix: nil))
            } catch {
                let message = (error as? LibvirtError)?.message ?? "\(error)"
                checks.append(
                    DoctorCheck(
                        name: "libvirt \(host.name)", ok: false, required: true, detail: "\(host.uri): \(message)",
                        fix: host.isLocal ? setup : "start libvirtd on that host and check passwordless ssh to it"))
            }
        }
        checks.append(processCheck("virtlogd", fix: setup))
        checks.append(reaperCheck(fix: setup))

        for (tool, package) in [
            ("qemu-system-x86_64", "qemu-system-x86"), ("qemu-img", "qemu-utils"), ("debootstrap", "debootstrap"),
            ("mke2fs", "e2fsprogs"),
        ] {
            if let path = HostCommand.resolve(tool) {
                let version = (try? await HostCommand.run(path, ["--version"], timeout: .seconds(10)))?.stdoutText
                    .split(separator: "\n").first.map(String.init) ?? ""
                checks.append(DoctorCheck(name: tool, ok: true, required: true, detail: "\(path) \(version)", fix: nil))
            } else {
                checks.append(
                    DoctorCheck(
                        name: tool, ok: false, required: true, detail: "not installed (Debian package \(package))", fix: setup))
            }
        }

        let probe = await KVMProbe.cached(home: lab.home, kernel: KVMProbe.anyKernel(home: lab.home))
        checks.append(
            DoctorCheck(
                name: "kvm", ok: true, required: false,
                detail: probe.usable ? "usable: domains run with KVM" : "not usable (\(probe.reason)); domains run under TCG",
                fix: nil))
        checks.append(kvmPermissionsCheck(fix: setup))
        checks.append(diskCheck())
        checks.append(contentsOf: imageAccessChecks())
        return checks
    }

    private func processCheck(_ name: String, fix: String) -> DoctorCheck {
        let running = ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).contains { pid in
            guard pid.allSatisfy(\.isNumber),
                let comm = try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8)
            else { return false }
            return comm.trimmingCharacters(in: .whitespacesAndNewlines) == name
        }
        return DoctorCheck(
            name: name, ok: running, required: true, detail: running ? "running" : "not running (libvirtd needs it for consoles)",
            fix: running ? nil : fix)
    }

    /// The QEMU processes libvirt daemonizes are reaped by libvirtd's nearest subreaper,
    /// else by PID 1, and a destroy returns only once they are. An init that reaps lazily
    /// (not systemd) costs every VM teardown seconds; lab/setup runs libvirtd under tini.
    private func reaperCheck(fix: String) -> DoctorCheck {
        func field(_ pid: String, _ name: String) -> String? {
            guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
            return status.split(separator: "\n").first { $0.hasPrefix(name + ":") }
                .map { $0.dropFirst(name.count + 1).trimmingCharacters(in: .whitespaces) }
        }
        let pids = ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).filter { $0.allSatisfy(\.isNumber) }
        guard let libvirtd = pids.first(where: { field($0, "Name") == "libvirtd" }), let parent = field(libvirtd, "PPid") else {
            return DoctorCheck(name: "QEMU reaping", ok: true, required: false, detail: "no local libvirtd", fix: nil)
        }
        let reaper = field(parent, "Name") ?? "?"
        let ok = ["tini", "systemd", "init"].contains(reaper)
        return DoctorCheck(
            name: "QEMU reaping", ok: ok, required: false,
            detail: ok
                ? "libvirtd runs under \(reaper), which reaps exited QEMUs at once"
                : "libvirtd runs under \(reaper), which may reap exited QEMUs late: every VM teardown waits for it",
            fix: ok ? nil : "stop libvirtd (no VM running), then: \(fix)")
    }

    /// Without udev, /dev/kvm is root-only; libvirt then finds KVM "unavailable" for the
    /// QEMU user, discards its capability cache on every call and re-probes: each start or
    /// restore takes over a minute instead of one second.
    private func kvmPermissionsCheck(fix: String) -> DoctorCheck {
        var info = stat()
        guard stat("/dev/kvm", &info) == 0 else {
            return DoctorCheck(name: "/dev/kvm access", ok: true, required: true, detail: "no /dev/kvm", fix: nil)
        }
        let mode = info.st_mode & 0o777
        let group = getgrgid(info.st_gid).map { String(cString: $0.pointee.gr_name) } ?? "\(info.st_gid)"
        let ok = mode & 0o060 == 0o060 && group == "kvm" || mode & 0o006 == 0o006
        return DoctorCheck(
            name: "/dev/kvm access", ok: ok, required: true,
            detail: ok
                ? "group \(group), mode \(String(mode, radix: 8))"
                : "group \(group), mode \(String(mode, radix: 8)): libvirt re-probes QEMU on every call and restores take over a minute",
            fix: ok ? nil : fix)
    }

    private func diskCheck() -> DoctorCheck {
        var path = lab.home.root
        while !FileManager.default.fileExists(atPath: path), path != "/" { path = (path as NSString).deletingLastPathComponent }
        var info = statvfs()
        guard statvfs(path, &info) == 0 else {
            return DoctorCheck(name: "free disk", ok: false, required: true, detail: "cannot stat \(path)", fix: nil)
        }
        let free = UInt64(info.f_bavail) * UInt64(info.f_frsize)
        let ok = free >= Self.minimumFreeBytes
        return DoctorCheck(
            name: "free disk", ok: ok, required: true,
            detail: String(format: "%.1f GiB free under %@", Double(free) / Double(1 << 30), path),
            fix: ok ? nil : "free at least 5 GiB there, or set CHANGELAB_HOME to a larger file system")
    }

    private func imageAccessChecks() -> [DoctorCheck] {
        var paths = [lab.home.images]
        if let recipes = try? lab.baselines.loadAll() {
            for recipe in recipes {
                guard let image = try? lab.currentImage(of: recipe) else { continue }
                paths += [image.disk, image.kernel, image.initrd] + image.slots.map(\.disk)
            }
        }
        let problems = paths.filter { FileManager.default.fileExists(atPath: $0) }.compactMap { path in
            QEMUAccess.problem(reading: path).map { (path, $0) }
        }
        if let (path, problem) = problems.first {
            return [
                DoctorCheck(
                    name: "images readable by QEMU", ok: false, required: true, detail: "\(path): \(problem)",
                    fix: "chmod o+x on the folders above \(path), or set CHANGELAB_HOME elsewhere")
            ]
        }
        return [
            DoctorCheck(
                name: "images readable by QEMU", ok: true, required: true,
                detail: "\(paths.count - 1) image files under \(lab.home.images) reachable by \(QEMUAccess.user)", fix: nil)
        ]
    }
}
