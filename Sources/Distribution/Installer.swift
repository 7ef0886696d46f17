import Foundation
import HostIO
import Model

/// Runs a package's install steps (dpkg) into an agent's root, silently, and classifies
/// what went wrong.
///
/// On a real endpoint the root is `/`. In the test fleet each agent has its own root
/// directory holding `var/lib/dpkg/{status,available,info,updates}`; dpkg is then run with
/// `--root=ROOT --force-script-chrootless --force-not-root`: `--root` alone would chroot
/// into the root for maintainer scripts, which needs a whole system (a shell) in it, while
/// chrootless scripts run on the host with `DPKG_ROOT` set to the root.
public struct DpkgInstaller: Sendable {
    public var root: String
    public var timeout: Duration

    public init(root: String, timeout: Duration = .seconds(600)) {
        self.root = root
        self.timeout = timeout
    }

    var rootArguments: [String] {
        root == "/" ? [] : ["--root=\(root)", "--force-script-chrootless", "--force-not-root", "--force-unsafe-io"]
    }

    /// Creates the dpkg database a private root needs (no-op for `/`).
    public func prepareRoot() throws {
        guard root != "/" else { return }
        let dpkg = root + "/var/lib/dpkg"
        for dir in ["info", "updates", "triggers"] {
            try FileManager.default.createDirectory(atPath: "\(dpkg)/\(dir)", withIntermediateDirectories: true)
        }
        for file in ["status", "available"] where !FileManager.default.fileExists(atPath: "\(dpkg)/\(file)") {
            try AtomicFile.write(Data(), to: "\(dpkg)/\(file)")
        }
    }

    public func install(_ path: String) async -> InstallResult {
        await run(["--install", path])
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
            let result = try await HostCommand.run(
                "dpkg", rootArguments + ["--force-confold"] + arguments, environment: environment, timeout: timeout)
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
