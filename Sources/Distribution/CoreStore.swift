import Foundation
import HostIO
import Model

/// Where the core keeps its state. The embedded file store is the default; a shared SQL
/// database can implement the same interface so several cores share one fleet.
public protocol CoreStore: Sendable {
    /// The last saved snapshot, or nil for a new core.
    func load() throws -> CoreSnapshot?
    /// Replaces the saved snapshot; returns once the write is durable.
    func save(_ snapshot: CoreSnapshot) async throws
    func loadInventories() throws -> [String: InventorySnapshot]
    func saveInventory(_ inventory: InventorySnapshot, agent: String) async throws
}

/// The embedded store: `state.json` (written atomically: temp, fsync, rename) and one
/// `inventories/<agent>.json` per agent, under the core's state directory.
///
/// Saves are group-committed: callers that ask while a write is in flight share the next
/// write, so a hundred agents reporting at once cost a handful of fsyncs, and every caller
/// returns only once its change is on disk.
public final class FileCoreStore: CoreStore, @unchecked Sendable {
    // @unchecked: `pending`, `writing` and `waiters` are guarded by `lock`.
    public let directory: String
    private let lock = NSLock()
    private var pending: CoreSnapshot?
    private var writing = false
    private var waiters: [CheckedContinuation<Void, Error>] = []

    public init(directory: String) {
        self.directory = directory
    }

    var statePath: String { directory + "/state.json" }
    var inventoryDirectory: String { directory + "/inventories" }

    public func load() throws -> CoreSnapshot? {
        guard let data = FileManager.default.contents(atPath: statePath) else { return nil }
        let snapshot: CoreSnapshot
        do {
            snapshot = try StableJSON.decode(CoreSnapshot.self, from: data)
        } catch {
            throw ChangelabError(
                "the core state \(statePath) cannot be read", why: "\(error)",
                fix: "restore it from backup or the file system snapshot; it is only ever replaced whole")
        }
        guard CoreSnapshot.readableVersions.contains(snapshot.version) else {
            throw ChangelabError(
                "the core state \(statePath) has format \(snapshot.version), this changelab reads \(CoreSnapshot.formatVersion)",
                fix: "run the changelab version that wrote it")
        }
        return snapshot
    }

    public func save(_ snapshot: CoreSnapshot) async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, Error>) in
            lock.lock()
            pending = snapshot
            waiters.append(continuation)
            let start = !writing
            writing = true
            lock.unlock()
            if start { BlockingThread.start { self.drain() } }
        }
    }

    /// Writes the newest pending snapshot until none is left, waking the callers each write covered.
    private func drain() {
        while true {
            lock.lock()
            guard let snapshot = pending else {
                writing = false
                lock.unlock()
                return
            }
            pending = nil
            let covered = waiters
            waiters = []
            lock.unlock()
            do {
                try AtomicFile.write(try StableJSON.data(snapshot), to: statePath, permissions: 0o600)
                for waiter in covered { waiter.resume() }
            } catch {
                for waiter in covered { waiter.resume(throwing: error) }
            }
        }
    }

    public func loadInventories() throws -> [String: InventorySnapshot] {
        var result: [String: InventorySnapshot] = [:]
        let names = (try? FileManager.default.contentsOfDirectory(atPath: inventoryDirectory)) ?? []
        for name in names where name.hasSuffix(".json") {
            guard let data = FileManager.default.contents(atPath: "\(inventoryDirectory)/\(name)"),
                let inventory = try? StableJSON.decode(InventorySnapshot.self, from: data)
            else { continue }
            result[String(name.dropLast(5))] = inventory
        }
        return result
    }

    public func saveInventory(_ inventory: InventorySnapshot, agent: String) async throws {
        let data = try StableJSON.data(inventory)
        let path = "\(inventoryDirectory)/\(agent).json"
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, Error>) in
            BlockingThread.start {
                do {
                    try AtomicFile.write(data, to: path)
                    continuation.resume()
                } catch {
                    continuation.resume(throwing: error)
                }
            }
        }
    }
}
