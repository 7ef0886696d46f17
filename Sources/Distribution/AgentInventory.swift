import Foundation
import HostIO
import Inventory
import Model

/// Where an agent's inventory comes from: the shared `InventorySnapshot` (OS release,
/// kernel, packages, watched files, services, users, ports) of the agent's root.
public protocol InventorySource: Sendable {
    func collect(root: String) async throws -> InventorySnapshot
}

/// The CMDB's inventory collector run on this host against the agent's root.
public struct CollectorInventorySource: InventorySource {
    /// Folders under the root whose files are recorded with hashes (fewer is cheaper).
    public var watchedPaths: [String]

    public init(watchedPaths: [String] = InventoryOptions.defaultWatchedPaths) {
        self.watchedPaths = watchedPaths
    }

    public func collect(root: String) async throws -> InventorySnapshot {
        let options = InventoryOptions(root: root, watchedPaths: watchedPaths, timeout: .seconds(120))
        return try await InventoryCollector(runner: BackgroundShell(), options: options).collect().snapshot
    }
}

/// Runs the collection script at the lowest CPU priority: an inventory is never urgent, and
/// right after an activation it must not slow down installations still running.
struct BackgroundShell: CommandRunner {
    func runShell(_ script: String, timeout: Duration) async throws -> CommandResult {
        try await HostCommand.run("nice", ["-n", "19", "/bin/sh", "-s"], input: Data(script.utf8), timeout: timeout)
    }
}

/// Reads one package's state straight from a root's dpkg database: cheap enough to ask
/// right before an installation, where a whole inventory would cost too much.
public enum DpkgStatus {
    /// The installed version of `package` under `root`, or nil when it is not installed.
    public static func installedVersion(of package: String, root: String) -> String? {
        let base = root == "/" ? "" : root
        guard let data = FileManager.default.contents(atPath: base + "/var/lib/dpkg/status") else { return nil }
        for paragraph in String(decoding: data, as: UTF8.self).components(separatedBy: "\n\n") {
            var fields: [String: String] = [:]
            for line in paragraph.split(separator: "\n") where !line.hasPrefix(" ") {
                guard let colon = line.firstIndex(of: ":") else { continue }
                fields[String(line[..<colon])] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            }
            if fields["Package"] == package, fields["Status"]?.hasSuffix(" installed") == true {
                return fields["Version"]
            }
        }
        return nil
    }
}

extension InventorySnapshot {
    /// Whether `package` is installed at exactly `version`.
    func has(_ package: String, version: String) -> Bool {
        packages.contains { $0.name == package && $0.version == version && $0.isInstalled }
    }
}
