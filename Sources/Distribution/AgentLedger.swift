import Foundation
import HostIO
import Model

/// What an agent has done as root, kept apart from its package cache.
///
/// The cache can be emptied by a seed job, by expiry or by hand; the ledger cannot be reached
/// by anything the core or a peer sends. It holds the orders carried out (so a captured order
/// replayed after a cache wipe does nothing), the newest order per change (so an older one
/// cannot come after it), each package's floor version (so no activation downgrades), and
/// which changes installed what (so a rollback can only undo what this agent installed).
public struct AgentLedger: Codable, Sendable, Equatable {
    public static let formatVersion = 1

    /// One carried-out order, kept for a week after the ticket that carried it expired.
    public struct Executed: Codable, Sendable, Equatable {
        public var kind: JobKind
        public var change: String
        public var release: String
        public var exitCode: Int32
        public var outputTail: String
        public var at: Date
        public var keepUntil: Date
    }

    /// A change this agent activated and has not rolled back.
    public struct Install: Codable, Sendable, Equatable {
        public var package: String
        public var version: String
        /// The version it replaced (nil: the package was not installed).
        public var previousVersion: String?
    }

    public var version = AgentLedger.formatVersion
    public var executed: [String: Executed] = [:]
    public var lastSequence: [String: UInt64] = [:]
    public var minimumVersion: [String: String] = [:]
    public var installs: [String: Install] = [:]
    /// The newest change-control trust root this agent accepted (by payload digest): chains
    /// that do not reach it are refused from then on.
    public var trustRoot: SHA256Digest?

    public init() {}

    /// Why an activation of `package` at `version` would be a downgrade, or nil.
    public func downgrade(package: String, to version: String) -> String? {
        guard let floor = minimumVersion[package] else { return nil }
        guard let wanted = try? DebianVersion(lenient: version), let lowest = try? DebianVersion(lenient: floor) else {
            return "\(package) \(version) cannot be compared with \(floor), which this agent installed"
        }
        guard wanted < lowest else { return nil }
        return
            "\(package) \(version) is older than \(floor), which this agent installed; only a rollback of the change that installed \(floor) goes back"
    }

    /// Records a successful activation.
    public mutating func activated(_ ticket: JobTicket, order: String, package: String, version: String,
        previous: String?, result: InstallResult, now: Date)
    {
        record(ticket, order: order, result: result, now: now)
        installs[ticket.change] = Install(package: package, version: version, previousVersion: previous)
        if downgrade(package: package, to: version) == nil { minimumVersion[package] = version }
    }

    /// Records a successful rollback: the floor goes back to what the change replaced.
    public mutating func rolledBack(_ ticket: JobTicket, order: String, result: InstallResult, now: Date) {
        record(ticket, order: order, result: result, now: now)
        guard let install = installs.removeValue(forKey: ticket.change) else { return }
        minimumVersion[install.package] = install.previousVersion
    }

    /// Takes over what a cache entry of the layout before the ledger recorded.
    public mutating func adopt(_ legacy: AgentCache.LegacyRecord, now: Date) {
        for order in legacy.ordersDone where executed[order] == nil {
            executed[order] = Executed(
                kind: .activate, change: legacy.change, release: legacy.change, exitCode: 0, outputTail: "",
                at: now, keepUntil: now.addingTimeInterval(8 * 24 * 3600))
        }
        guard legacy.activated, installs[legacy.change] == nil else { return }
        installs[legacy.change] = Install(
            package: legacy.package, version: legacy.version, previousVersion: legacy.previousVersion)
        if downgrade(package: legacy.package, to: legacy.version) == nil {
            minimumVersion[legacy.package] = legacy.version
        }
    }

    private mutating func record(_ ticket: JobTicket, order: String, result: InstallResult, now: Date) {
        executed[order] = Executed(
            kind: ticket.kind, change: ticket.change, release: ticket.release, exitCode: result.exitCode,
            outputTail: result.outputTail, at: now, keepUntil: max(now, ticket.expiresAt).addingTimeInterval(7 * 24 * 3600))
        lastSequence[ticket.change] = max(lastSequence[ticket.change] ?? 0, ticket.sequence)
        executed = executed.filter { $0.value.keepUntil > now }
    }
}

/// The ledger's file: `ledger.json` in the agent's state directory, replaced atomically.
public struct LedgerFile: Sendable {
    public let path: String

    public init(stateDirectory: String) {
        path = stateDirectory + "/ledger.json"
    }

    /// The ledger, or an empty one when none was written yet.
    ///
    /// - Throws: when the file exists but cannot be read or is of an unknown format: an agent
    ///   that forgot what it did would accept replays, so it refuses to start instead.
    public func load() throws -> AgentLedger {
        guard FileManager.default.fileExists(atPath: path) else { return AgentLedger() }
        guard let data = FileManager.default.contents(atPath: path),
            let ledger = try? StableJSON.decode(AgentLedger.self, from: data)
        else {
            throw ChangelabError(
                "the agent's ledger \(path) cannot be read",
                fix: "restore it from backup; only if none exists, move it aside (the agent then accepts orders it may have run before)")
        }
        guard ledger.version == AgentLedger.formatVersion else {
            throw ChangelabError(
                "the agent's ledger \(path) has format \(ledger.version); this changelab reads \(AgentLedger.formatVersion)",
                fix: "run the changelab version that wrote it")
        }
        return ledger
    }

    public func save(_ ledger: AgentLedger) throws {
        try AtomicFile.write(try StableJSON.data(ledger), to: path, permissions: 0o600)
    }
}
