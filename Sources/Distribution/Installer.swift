import Foundation
import HostIO
import Model

/// Runs a package's install steps (dpkg) into an agent's root, silently, and classifies
/// what went wrong.
///
/// Where maintainer scripts run depends on the root (`Mode`):
/// - `/` on a real endpoint: plain dpkg.
/// - a whole system (a shell, dpkg, /etc/passwd and a dpkg database in it, as in the test
///   fleet's overlay roots of a baseline's file system): `chroot ROOT dpkg`, the root's own
///   dpkg, with the package copied into `ROOT/run/changelab-agent/`. Maintainer scripts run
///   inside it, so `adduser` in a postinst edits the root's /etc/passwd, never the host's.
///   (`dpkg --root=ROOT` chroots only for the scripts and resolves users and groups, such as
///   those of `statoverride`, on the host: a root with a group the host lacks is refused.)
///   Needs root. Nothing starts services there: the fleet roots carry a `policy-rc.d` that
///   answers 101 (see `lab/fleet root`).
/// - any other directory: a private root holding only `var/lib/dpkg`, where dpkg runs with
///   `--force-script-chrootless --force-not-root` and maintainer scripts run ON THE HOST
///   with `DPKG_ROOT` set. Only for packages whose scripts honour `DPKG_ROOT` (or have none):
///   the unit tests' packages.
public struct DpkgInstaller: Sendable {
    public enum Mode: String, Sendable {
        /// The running system itself.
        case host
        /// A whole Debian system in a directory: maintainer scripts run chrooted into it.
        case chroot
        /// A bare dpkg database: maintainer scripts run chrootless on the host.
        case privateRoot = "private-root"
    }

    public var root: String
    public var timeout: Duration
    public var mode: Mode

    public init(root: String, timeout: Duration = .seconds(600)) {
        self.root = root
        self.timeout = timeout
        self.mode = Self.mode(of: root)
    }

    /// How dpkg installs into `root`: chrooted when the root is a whole system.
    public static func mode(of root: String) -> Mode {
        guard root != "/" else { return .host }
        return isWholeSystem(root) ? .chroot : .privateRoot
    }

    /// Whether `root` holds a system dpkg can chroot into: a shell for the maintainer
    /// scripts, dpkg itself, a user database and a dpkg database.
    public static func isWholeSystem(_ root: String) -> Bool {
        let files = FileManager.default
        return files.isExecutableFile(atPath: root + "/bin/sh") && files.isExecutableFile(atPath: root + "/usr/bin/dpkg")
            && files.fileExists(atPath: root + "/etc/passwd") && files.fileExists(atPath: root + "/var/lib/dpkg/status")
    }

    /// One line for the agent's log: where this installer's maintainer scripts run.
    public var modeDescription: String {
        switch mode {
        case .host: return "installs into / (dpkg on this system)"
        case .chroot:
            let policy = FileManager.default.isExecutableFile(atPath: root + "/usr/sbin/policy-rc.d")
            return "installs into \(root), a whole system: chroot \(root) dpkg, maintainer scripts run inside it"
                + (policy ? " (policy-rc.d present: no service starts)" : " (no policy-rc.d: services may try to start)")
        case .privateRoot:
            return "installs into \(root), a private dpkg root: maintainer scripts run chrootless ON THE HOST"
        }
    }

    /// dpkg's options for the mode; a chroot runs the root's own dpkg with none of `--root`.
    var rootArguments: [String] {
        switch mode {
        case .host: return []
        case .chroot: return ["--force-unsafe-io"]
        case .privateRoot:
            return ["--root=\(root)", "--force-script-chrootless", "--force-not-root", "--force-unsafe-io"]
        }
    }

    /// Where a package is copied inside a whole-system root so the chrooted dpkg can read it.
    var inboxInsideRoot: String { "/run/changelab-agent" }

    /// The program and arguments that run dpkg with `arguments` in this mode.
    func command(_ arguments: [String]) -> (executable: String, arguments: [String]) {
        let dpkg = rootArguments + ["--force-confold"] + arguments
        return mode == .chroot ? ("chroot", [root, "dpkg"] + dpkg) : ("dpkg", dpkg)
    }

    /// Creates the dpkg database a private root needs (no-op for `/`); refuses a whole-system
    /// root when this process cannot chroot.
    public func prepareRoot() throws {
        switch mode {
        case .host: return
        case .chroot:
            guard geteuid() == 0 else {
                throw ChangelabError(
                    "the agent's root \(root) is a whole system, and installing into it chroots, which needs root",
                    why: "maintainer scripts must run inside that system, never on this host",
                    fix: "run the agent as root, or give it a root directory that is not a system")
            }
        case .privateRoot:
            let dpkg = root + "/var/lib/dpkg"
            for dir in ["info", "updates", "triggers"] {
                try FileManager.default.createDirectory(atPath: "\(dpkg)/\(dir)", withIntermediateDirectories: true)
            }
            for file in ["status", "available"] where !FileManager.default.fileExists(atPath: "\(dpkg)/\(file)") {
                try AtomicFile.write(Data(), to: "\(dpkg)/\(file)")
            }
        }
    }

    public func install(_ path: String) async -> InstallResult {
        guard mode == .chroot else { return await run(["--install", path]) }
        // The chrooted dpkg sees only the root: the package goes in, readable by root alone.
        let inbox = root + inboxInsideRoot
        let name = "\(UUID().uuidString).deb"
        do {
            try await BlockingWork.run {
                try FileManager.default.createDirectory(
                    atPath: inbox, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
                try FileManager.default.copyItem(atPath: path, toPath: "\(inbox)/\(name)")
            }
        } catch {
            let detail = "cannot copy the package into the root's \(inboxInsideRoot): \(error)"
            return InstallResult(
                exitCode: 127, outputTail: detail, failure: Failure(reason: .installerExit, detail: detail, exitCode: 127))
        }
        let result = await run(["--install", "\(inboxInsideRoot)/\(name)"])
        _ = try? await BlockingWork.run { try FileManager.default.removeItem(atPath: "\(inbox)/\(name)") }
        return result
    }

    public func purge(_ package: String) async -> InstallResult {
        await run(["--purge", package])
    }

    func run(_ arguments: [String]) async -> InstallResult {
        let environment = [
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C",
        ]
        do {
            let (executable, fullArguments) = command(arguments)
            let result = try await HostCommand.run(
                executable, fullArguments, environment: environment, timeout: timeout)
            let output = CommandResult.tail(of: result.stdoutText + result.stderrText, lines: 20)
            let seconds = timeout.components.seconds
            return InstallResult(
                exitCode: result.status, outputTail: output,
                failure: Self.classify(
                    status: result.status, timedOut: result.timedOut, output: result.stdoutText + result.stderrText,
                    timeoutSeconds: seconds))
        } catch {
            return InstallResult(
                exitCode: 127, outputTail: "\(error)",
                failure: Failure(reason: .installerExit, detail: "\(error)", exitCode: 127))
        }
    }

    /// Reads dpkg's output for the reason a person acts on.
    public static func classify(status: Int32, timedOut: Bool, output: String, timeoutSeconds: Int64) -> Failure? {
        let tail = CommandResult.tail(of: output, lines: 8)
        if timedOut {
            return Failure(
                reason: .installerTimeout, detail: "killed after \(timeoutSeconds) s\n\(tail)", exitCode: status)
        }
        guard status != 0 else { return nil }
        if output.contains("No space left on device") {
            return Failure(reason: .diskFull, detail: tail, exitCode: status)
        }
        if output.contains("dependency problems") || output.contains("pre-dependency problem")
            || output.contains("conflicting packages")
        {
            return Failure(reason: .prerequisiteNotMet, detail: tail, exitCode: status)
        }
        // dpkg itself exits 1; the maintainer script's own status is what the chase list needs.
        if let range = output.range(of: "returned error exit status ") {
            let digits = output[range.upperBound...].prefix { $0.isNumber }
            if let code = Int32(digits) { return Failure(reason: .installerExit, detail: tail, exitCode: code) }
        }
        return Failure(reason: .installerExit, detail: tail, exitCode: status)
    }
}
