import Foundation
import HostIO
import Model

/// What to collect and where.
public struct InventoryOptions: Sendable, Equatable {
    /// The system's root folder: `/`, or a fleet agent's own root (installed into with
    /// `dpkg --root`). Packages, files, users, groups and unit files are read below it;
    /// kernel, CPU, memory, disks and ports always describe the running host.
    public var root: String
    /// Folders (or files) whose contents are recorded with hashes, modes and owners.
    public var watchedPaths: [String]
    public var noise: NoiseRules
    public var timeout: Duration

    /// Configuration lives here; package contents are covered by the package list.
    public static let defaultWatchedPaths = ["/etc", "/usr/local", "/opt", "/srv"]

    public init(
        root: String = "/", watchedPaths: [String] = InventoryOptions.defaultWatchedPaths,
        noise: NoiseRules = .defaultNoise, timeout: Duration = .seconds(300)
    ) {
        self.root = root
        self.watchedPaths = watchedPaths
        self.noise = noise
        self.timeout = timeout
    }

    /// The root without a trailing slash (`/` stays `/`).
    var normalizedRoot: String {
        var root = root.isEmpty ? "/" : root
        while root.count > 1 && root.hasSuffix("/") { root.removeLast() }
        return root
    }
}

/// An inventory and what happened while collecting it.
public struct CollectedInventory: Sendable {
    public var snapshot: InventorySnapshot
    /// Things that could not be read (unreadable files, a missing dpkg database, …).
    public var warnings: [String]
    public var collectedAt: Date
    public var seconds: Double
}

/// Collects an inventory with one shell script through a `CommandRunner`.
///
///     let inventory = try await InventoryCollector(runner: LocalShell()).collect()
///     let fleet = InventoryCollector(runner: LocalShell(), options: InventoryOptions(root: "/srv/agent-3"))
public struct InventoryCollector: Sendable {
    public let runner: any CommandRunner
    public let options: InventoryOptions

    public init(runner: any CommandRunner, options: InventoryOptions = InventoryOptions()) {
        self.runner = runner
        self.options = options
    }

    /// The script this collector runs.
    public var script: String { InventoryScript.render(options) }

    public func collect() async throws -> CollectedInventory {
        let clock = ContinuousClock()
        let started = clock.now
        let collectedAt = Date()
        let result = try await runner.runShell(script, timeout: options.timeout)
        guard result.succeeded else { throw Self.failure(of: result, collecting: "the inventory", options: options) }
        var (snapshot, warnings) = InventoryParser.parse(result.stdoutText, options: options)
        warnings += result.stderrText.split(separator: "\n").map(String.init)
        snapshot = snapshot.normalized()
        let elapsed = clock.now - started
        return CollectedInventory(
            snapshot: snapshot, warnings: warnings, collectedAt: collectedAt,
            seconds: Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18)
    }

    /// The error for a collection script that failed or timed out.
    static func failure(of result: CommandResult, collecting what: String, options: InventoryOptions) -> ChangelabError {
        let how = result.timedOut ? "timed out after \(options.timeout)" : "exited with status \(result.status)"
        return ChangelabError(
            "cannot collect \(what) of \(options.normalizedRoot)",
            why: "the collection script \(how)\(result.tail().isEmpty ? "" : ":\n\(result.tail())")",
            fix: result.timedOut
                ? "watch fewer or smaller paths, or allow more time"
                : "check that the root folder exists and holds a Debian system (etc/, var/lib/dpkg/)")
    }
}
