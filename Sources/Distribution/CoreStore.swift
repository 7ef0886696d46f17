import Foundation
import HostIO
import Model

/// Where the core keeps its state. The embedded file store is the default; a shared SQL
/// database can implement the same interface so several cores share one fleet.
///
/// Saves carry a sequence number that grows with every change: callers may reach the store
/// in any order, so a store must never let an older snapshot replace a newer one, and must
/// return to each caller only once a snapshot at least as new as its own is durable.
public protocol CoreStore: Sendable {
    /// The last saved snapshot, or nil for a new core.
    func load() throws -> CoreSnapshot?
    /// Saves `snapshot`, the state after change `sequence`; returns once it (or a newer one) is durable.
    func save(_ snapshot: CoreSnapshot, sequence: UInt64) async throws
    func loadInventories() throws -> [String: InventorySnapshot]
    /// Saves an agent's inventory, number `sequence` of that agent's; the same ordering rules apply.
    func saveInventory(_ inventory: InventorySnapshot, agent: String, sequence: UInt64) async throws
}

/// The embedded store: `state.json` (written atomically: temp, fsync, rename) and one
/// `inventories/<agent>.json` per agent, under the core's state directory.
///
/// Saves are group-committed: callers that ask while a write is in flight share the next
/// write, so a hundred agents reporting at once cost a handful of fsyncs, and every caller
/// returns only once its change is on disk.
public final class FileCoreStore: CoreStore {
    public let directory: String
    private let state: OrderedWriter<CoreSnapshot>
    private let inventories: OrderedWriter<InventorySnapshot>

    public init(directory: String) {
        self.directory = directory
        let statePath = directory + "/state.json"
        let inventoryDirectory = directory + "/inventories"
        self.state = OrderedWriter { _, snapshot in
            try AtomicFile.write(try StableJSON.data(snapshot), to: statePath, permissions: 0o600)
        }
        self.inventories = OrderedWriter { agent, inventory in
            try AtomicFile.write(try StableJSON.data(inventory), to: "\(inventoryDirectory)/\(agent).json")
        }
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
        return snapshot.sanitized()
    }

    public func save(_ snapshot: CoreSnapshot, sequence: UInt64) async throws {
        try await state.write(snapshot, key: "state", sequence: sequence)
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

    public func saveInventory(_ inventory: InventorySnapshot, agent: String, sequence: UInt64) async throws {
        try await inventories.write(inventory, key: agent, sequence: sequence)
    }
}

/// Group-committed writes of numbered values, one lane per key, newest wins.
///
/// A value older than one already written (or pending) for its key is never written; each
/// caller resumes after a write whose number is at least its own, or with that write's error.
final class OrderedWriter<Value: Sendable>: @unchecked Sendable {
    // @unchecked: `lanes` is guarded by `lock`.
    private struct Lane {
        var pending: (sequence: UInt64, value: Value)?
        var written: UInt64 = 0
        var writing = false
        var waiters: [(sequence: UInt64, continuation: CheckedContinuation<Void, Error>)] = []
    }

    private let lock = NSLock()
    private var lanes: [String: Lane] = [:]
    private let perform: @Sendable (String, Value) throws -> Void

    init(_ perform: @escaping @Sendable (String, Value) throws -> Void) {
        self.perform = perform
    }

    func write(_ value: Value, key: String, sequence: UInt64) async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, Error>) in
            lock.lock()
            var lane = lanes[key] ?? Lane()
            if sequence <= lane.written {
                lanes[key] = lane
                lock.unlock()
                continuation.resume()
                return
            }
            if sequence > (lane.pending?.sequence ?? 0) { lane.pending = (sequence, value) }
            lane.waiters.append((sequence, continuation))
            let start = !lane.writing
            lane.writing = true
            lanes[key] = lane
            lock.unlock()
            if start { BlockingThread.start { self.drain(key) } }
        }
    }

    /// Writes the newest pending value of `key` until none is left, waking the callers each write covered.
    private func drain(_ key: String) {
        while true {
            lock.lock()
            guard var lane = lanes[key], let (sequence, value) = lane.pending else {
                lanes[key]?.writing = false
                lock.unlock()
                return
            }
            lane.pending = nil
            lanes[key] = lane
            if sequence <= lane.written {
                // Queued while a newer value was being written: that write covered it (and its
                // callers were woken with it); writing it now would put the older one last.
                lock.unlock()
                continue
            }
            lock.unlock()
            let result = Result { try perform(key, value) }
            lock.lock()
            lane = lanes[key] ?? Lane()
            if case .success = result { lane.written = max(lane.written, sequence) }
            let covered = lane.waiters.filter { $0.sequence <= sequence }
            lane.waiters.removeAll { $0.sequence <= sequence }
            lanes[key] = lane
            lock.unlock()
            for waiter in covered { waiter.continuation.resume(with: result) }
        }
    }
}
