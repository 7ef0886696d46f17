#if canImport(Glibc)
import Glibc
#endif
import Foundation
import HostIO
import Model

/// Finds out whether KVM really works here, by booting a Linux kernel with it.
///
/// /dev/kvm can exist and still be unusable: on these machines a real-mode boot sector
/// runs under KVM, but a Linux kernel hangs before printing a line. So the probe boots a
/// real kernel with no root disk and `panic=-1`: it panics at once, and QEMU with
/// `-no-reboot` exits 0 only if the kernel really ran. A hung KVM costs the whole
/// time-out, so the answer is cached for a day per host kernel.
public enum KVMProbe {
    public struct Result: Sendable, Codable, Equatable {
        public var usable: Bool
        public var reason: String
        public var hostKernel: String
        public var probedAt: Date
    }

    /// The cached answer when fresh, else a new probe with `kernel` (stored for next time).
    public static func cached(home: LabHome, kernel: String?) async -> Result {
        let path = home.run + "/kvm-probe.json"
        let host = hostKernel()
        if let data = FileManager.default.contents(atPath: path),
            let result = try? StableJSON.decode(Result.self, from: data),
            result.hostKernel == host, Date().timeIntervalSince(result.probedAt) < 86400
        {
            return result
        }
        let result = await run(kernel: kernel)
        if kernel != nil, let data = try? StableJSON.data(result) { try? AtomicFile.write(data, to: path) }
        return result
    }

    public static func run(kernel: String?, timeout: Duration = .seconds(20)) async -> Result {
        func result(_ usable: Bool, _ reason: String) -> Result {
            Result(usable: usable, reason: reason, hostKernel: hostKernel(), probedAt: Date())
        }
        guard FileManager.default.fileExists(atPath: "/dev/kvm") else { return result(false, "/dev/kvm does not exist") }
        guard let kernel, FileManager.default.isReadableFile(atPath: kernel) else {
            return result(false, "no Linux kernel to probe KVM with until a baseline image is built")
        }
        let log = NSTemporaryDirectory() + "changelab-kvm-probe-\(getpid()).log"
        defer { try? FileManager.default.removeItem(atPath: log) }
        do {
            let run = try await HostCommand.run(
                "qemu-system-x86_64",
                [
                    "-accel", "kvm", "-m", "256", "-nodefaults", "-display", "none", "-no-reboot",
                    "-serial", "file:\(log)", "-kernel", kernel, "-append", "console=ttyS0 panic=-1 loglevel=4",
                ], timeout: timeout)
            let console = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
            if run.status == 0 && console.contains("Kernel panic") {
                return result(true, "a Linux kernel booted under KVM")
            }
            if run.timedOut {
                return result(false, "QEMU with KVM hung: the kernel printed nothing in \(timeout.components.seconds) s")
            }
            let tail = run.tail(2).replacingOccurrences(of: "\n", with: " ")
            return result(false, "QEMU with KVM exited with status \(run.status)\(tail.isEmpty ? "" : ": \(tail)")")
        } catch {
            return result(false, "\(error)")
        }
    }

    /// A kernel to probe with: any built image's, else the host's own.
    public static func anyKernel(home: LabHome) -> String? {
        let images = (try? FileManager.default.subpathsOfDirectory(atPath: home.images)) ?? []
        if let image = images.first(where: { $0.hasSuffix("/vmlinuz") && !$0.contains(".partial") }) {
            return "\(home.images)/\(image)"
        }
        let boot = (try? FileManager.default.contentsOfDirectory(atPath: "/boot")) ?? []
        return boot.filter { $0.hasPrefix("vmlinuz-") }.sorted().last.map { "/boot/\($0)" }
    }

    static func hostKernel() -> String {
        var name = utsname()
        uname(&name)
        return withUnsafeBytes(of: &name.release) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
    }
}
