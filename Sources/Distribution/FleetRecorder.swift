import CMDB
import Foundation
import Model

/// Told by the core whenever an agent checks in or reports a fresh inventory.
///
/// The core awaits it at the end of a check-in, so an implementation must only queue
/// work, never do slow I/O in the call.
public protocol FleetObserver: Sendable {
    /// `inventoryDigest` is the core's digest of `inventory` (``InventorySnapshot/digest``),
    /// passed along so that nothing is hashed again on every check-in.
    func agentReported(_ agent: AgentRecord, inventory: InventorySnapshot?, inventoryDigest: String?) async
    /// An operator published, promoted, activated, rolled back…: `entry.operatorName` is the actor.
    func operatorActed(_ entry: AuditEntry) async
}

/// Records the fleet's targets and its operators' actions in the CMDB.
///
/// Each agent becomes a `target` item named by the
/// core-issued agent id (never by the name the agent reports, so an agent calling itself
/// `paris-1` cannot overwrite another's record), with its attributes (site, department, …,
/// plus its name, segment and agent id) and the inventory it last reported, so `cmdb query`
/// answers for targets and `cmdb diff target:AGENT-ID baseline:web` shows a target's drift.
///
/// Check-ins must stay fast, so reports are coalesced here and written by one background
/// task: every `interval`, everything that changed becomes one CMDB transaction. Reports
/// that change nothing (the usual check-in) are dropped without touching the CMDB. A
/// write that fails (a CMDB locked for too long, a full disk) keeps its reports queued
/// for the next round and is logged; the core's own state is unaffected.
///
/// Each operator action (publish, promote, activate, rollback, a policy set or removed, an
/// operator added or removed, a release-key rotation…) is a transaction of its own whose actor
/// is that operator, written in the same rounds, in the order they happened.
public actor CMDBFleetRecorder: FleetObserver {
    /// What the CMDB holds (or is about to) for a target: its attributes and the digest of
    /// its inventory.
    struct Recorded: Equatable {
        var attributes: [String: String]
        var inventory: String?
    }

    struct Pending {
        var recorded: Recorded
        var inventory: InventorySnapshot?
        var reportedAt: Date
    }

    public nonisolated let writer: CMDBWriter
    let interval: Duration
    let log: @Sendable (String) -> Void
    private var pending: [String: Pending] = [:]
    /// Operator actions not yet written, oldest first.
    private var actions: [AuditEntry] = []
    private var recorded: [String: Recorded] = [:]
    private var refused: Set<String> = []
    private var flusher: Task<Void, Never>?
    /// The last write's error, nil once a write succeeds.
    public private(set) var lastError: String?

    /// Opens (or creates) the CMDB at `path`; commits name `actor`. A write waits up to
    /// `lockTimeout` for another writer, then is retried in the next round.
    public init(
        path: String, actor: String = "changelab-core", interval: Duration = .seconds(2),
        lockTimeout: Duration = .seconds(10),
        log: @escaping @Sendable (String) -> Void = { FileHandle.standardError.write(Data("changelab core: \($0)\n".utf8)) }
    ) async throws {
        self.writer = try await CMDBWriter(path: path, actor: actor, lockTimeout: lockTimeout)
        self.interval = interval
        self.log = log
    }

    /// The attributes a target is recorded with: the agent's own, its name, segment and id.
    static func attributes(of agent: AgentRecord) -> [String: String] {
        var attributes = agent.attributes
        attributes["name"] = agent.name
        attributes["segment"] = agent.segment
        attributes["agent"] = agent.id
        return attributes
    }

    public func agentReported(_ agent: AgentRecord, inventory: InventorySnapshot?, inventoryDigest: String?) {
        let name = agent.id
        if let problem = cmdbNameProblem(name, what: "the agent id") {
            if refused.insert(name).inserted { log("not recording \(name) in the CMDB: \(problem)") }
            return
        }
        let now = Recorded(
            attributes: Self.attributes(of: agent), inventory: inventory == nil ? recorded[name]?.inventory : inventoryDigest)
        if pending[name] == nil && recorded[name] == now { return }
        pending[name] = Pending(recorded: now, inventory: inventory ?? pending[name]?.inventory, reportedAt: Date())
        startFlushing()
    }

    public func operatorActed(_ entry: AuditEntry) {
        // Bounded like the core's own trail, should the CMDB stay unwritable for long.
        if actions.count >= Self.maxQueuedActions {
            actions.removeFirst()
            log("dropped the oldest operator action queued for the CMDB: over \(Self.maxQueuedActions) are waiting")
        }
        actions.append(entry)
        startFlushing()
    }

    static let maxQueuedActions = 10_000

    private func startFlushing() {
        guard flusher == nil else { return }
        let interval = self.interval
        flusher = Task { [weak self] in
            while !Task.isCancelled {
                try? await Task.sleep(for: interval)
                await self?.flush()
            }
        }
    }

    /// Targets reported but not yet written.
    public var queued: Int { pending.count }

    /// Operator actions not yet written.
    public var queuedActions: Int { actions.count }

    /// Writes the queued operator actions, one transaction each, then the queued targets as one.
    public func flush() async {
        await flushActions()
        await flushTargets()
    }

    private func flushActions() async {
        // Taken whole, so a flush that overlaps this one (close() during a round) writes none twice.
        let batch = actions
        actions = []
        for (index, entry) in batch.enumerated() {
            do {
                try await writer.event(
                    "\(entry.action) \(entry.subject) (operator \(entry.operatorName))", operation: entry.action,
                    actor: entry.operatorName)
                lastError = nil
            } catch {
                actions = Array(batch[index...]) + actions
                lastError = "\(error)"
                log("recording \(actions.count) operator action(s) in the CMDB failed, will retry: \(error)")
                return
            }
        }
    }

    private func flushTargets() async {
        guard !pending.isEmpty else { return }
        let batch = pending
        pending = [:]
        let store = writer.store
        do {
            // What would change: a check-in that repeats what the CMDB holds (after a core
            // restart, say) writes nothing.
            var changed: [(Model.TargetRecord, InventorySnapshot?)] = []
            for (name, report) in batch.sorted(by: { $0.key < $1.key }) {
                let existing: Model.TargetRecord?
                do {
                    existing =
                        store.exists(CMDBReference(.target, name)) ? try store.read(Model.TargetRecord.self, name) : nil
                } catch {
                    // A hand-edited or damaged record is never overwritten: 'cmdb verify' names it.
                    log("not updating target \(name): its CMDB record does not read (\(error)); run 'changelab cmdb verify'")
                    continue
                }
                var target = existing ?? Model.TargetRecord(name: name)
                target.attributes = report.recorded.attributes
                if let text = target.attributes["baseline"], let baseline = BaselineRef(text),
                    store.exists(baseline.reference)
                {
                    target.baseline = baseline
                }
                if let inventory = report.inventory {
                    let digest = InventoryRecord(inventory).digest
                    if digest != target.inventory {
                        target.inventory = digest
                        target.reportedAt = report.reportedAt.wholeSeconds
                    }
                }
                if target != existing {
                    changed.append((target, target.inventory == existing?.inventory ? nil : report.inventory))
                }
            }
            if !changed.isEmpty {
                let message =
                    changed.count == 1
                    ? "record target \(changed[0].0.name) (agent check-in)"
                    : "record \(changed.count) targets (agent check-ins)"
                try await writer.transaction(message, operation: "record-target") { tx in
                    for (target, inventory) in changed {
                        if let inventory { try tx.put(inventory: inventory) }
                        try tx.put(target)
                    }
                }
            }
            for (name, report) in batch { recorded[name] = report.recorded }
            lastError = nil
        } catch {
            // Newer reports win over the failed ones; the rest are tried again next round.
            pending.merge(batch) { newer, _ in newer }
            lastError = "\(error)"
            log("recording \(batch.count) target(s) in the CMDB failed, will retry: \(error)")
        }
    }

    /// Writes what is queued and stops; call when the core stops.
    public func close() async {
        flusher?.cancel()
        flusher = nil
        await flush()
        await writer.close()
    }
}
