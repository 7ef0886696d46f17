import Foundation
import HostIO

/// The agent's side of targeted multicast: a receiver waits for its representative's NORM
/// object (and checks every chunk against the signed manifest); a representative sends its
/// verified copy to the receivers its role names, once per lease epoch, and reports how it
/// ended. Whatever a receiver lacks afterwards the seeder fetches from peers first.
extension Agent {
    /// Keeps the listen orders of a check-in reply that are for this agent's own segment.
    func take(listens given: [MulticastListen], addresses: [String]) {
        listenReplies += 1
        guard configuration.multicast else {
            listens = [:]
            return
        }
        let own = InterfaceAddress.segmentAddress(of: addresses)?.subnet
        var now: [String: MulticastListen] = [:]
        for listen in given.prefix(64) {
            guard listen.subnet == own, NormSettings.isMulticast(listen.group),
                NormNode(listen.node) != nil, NormNode(listen.sender) != nil, listen.node != listen.sender
            else {
                logger.warning(
                    "ignoring a multicast order for \(AgentFacts.printable(listen.change)) on \(AgentFacts.printable(listen.group)): not for this agent's segment \(own ?? "none")"
                )
                continue
            }
            now[listen.change] = listen
        }
        listens = now
    }

    /// Whether `listen` is still what the core says to listen to for its change.
    func stillListening(_ listen: MulticastListen) -> Bool { listens[listen.change] == listen }

    /// Waits for the segment's multicast of `entry`'s package and receives it into the cache.
    /// Returns true when the multicast delivered the whole package verified. Returns false at
    /// once for the representative (it pulls from peers or the core), and when no multicast
    /// order comes within a few check-ins, or the multicast ends without a whole copy.
    func receiveByMulticast(_ entry: CacheEntry) async -> Bool {
        let change = entry.change
        let started = ContinuousClock.now
        let repliesBefore = listenReplies
        // Three check-ins answered without an order, and at least 5 s: the core has no
        // multicast for this agent. Bounded (120 s) for a core that stops answering.
        let grace = Duration.seconds(max(5, min(120, 3 * nextCheckInSeconds)))
        while !Task.isCancelled {
            if roles[change] != nil { return false }
            if let listen = listens[change] {
                if let whole = await receive(entry, listen) { return whole }
                // The order changed (a new representative): listen again.
                continue
            }
            let waited = ContinuousClock.now - started
            if (waited > grace && listenReplies - repliesBefore >= 3) || waited > .seconds(120) {
                logger.info(
                    "no multicast for \(AgentFacts.printable(change)) on this segment: seeding from peers or the core")
                return false
            }
            try? await Task.sleep(for: .milliseconds(200))
        }
        return false
    }

    /// One NORM receive for `listen`: true when the object landed and every chunk verified,
    /// false when it failed or ended without a whole copy, nil when the order changed meanwhile.
    private func receive(_ entry: CacheEntry, _ listen: MulticastListen) async -> Bool? {
        guard let node = NormNode(listen.node), let sender = NormNode(listen.sender) else { return false }
        let change = entry.change
        // A receiver sends only feedback; the rate bounds nothing here but must be valid.
        let settings = NormSettings(group: listen.group, port: listen.port, rate: 1_000_000)
        let info = MulticastObject.info(change: change, epoch: listen.epoch, digest: entry.manifest.digest)
        let wait = listen.waitSeconds.isFinite ? min(max(listen.waitSeconds, 1), 3600) : 300
        let destination = cache.packagePath(change)
        let folder = (destination as NSString).deletingLastPathComponent
        let manifest = entry.manifest
        let join = MulticastJoin(change: change, epoch: listen.epoch)
        defer { multicastJoined.remove(join) }
        logger.info(
            "listening for \(AgentFacts.printable(change)) on \(listen.group):\(listen.port) from node \(listen.sender) (epoch \(listen.epoch))"
        )
        let outcome: Result<NormReceiveReport, Error>? = await withTaskGroup(of: Result<NormReceiveReport, Error>?.self)
        { group in
            group.addTask {
                do {
                    return .success(
                        try await NormTransfer.receive(
                            into: destination, workDirectory: folder, node: node, sender: sender, size: manifest.size,
                            info: info, manifest: manifest, settings: settings, timeout: .seconds(wait),
                            linger: .seconds(3), ready: { Task { await self.joined(join) } }))
                } catch {
                    return .failure(error)
                }
            }
            group.addTask {
                while !Task.isCancelled {
                    if await !self.stillListening(listen) { return nil }
                    try? await Task.sleep(for: .milliseconds(250))
                }
                return nil
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first
        }
        switch outcome {
        case nil:
            // Cancelled because the order changed or ended: the next one decides.
            if listens[change] == nil {
                logger.info(
                    "the multicast of \(AgentFacts.printable(change)) ended without a copy here: seeding from peers")
                return false
            }
            return nil
        case .success(let report):
            let failing = report.failingChunks ?? []
            if failing.isEmpty {
                logger.info(
                    "received \(AgentFacts.printable(change)) by multicast (\(manifest.size) bytes in \(String(format: "%.1f", report.seconds)) s, every chunk verified)"
                )
                return true
            }
            logger.warning(
                "the multicast copy of \(AgentFacts.printable(change)) failed the manifest in \(failing.count) chunk(s) (first \(failing[0])): fetching them from peers"
            )
            return false
        case .failure(let error):
            logger.warning("multicast of \(AgentFacts.printable(change)) not received: \(error)")
            return false
        }
    }

    /// The NORM receiver for `join` is listening: the core hears it at once, and the
    /// representative at its next check-in.
    private func joined(_ join: MulticastJoin) {
        guard listens[join.change]?.epoch == join.epoch else { return }
        multicastJoined.insert(join)
        nextCheckInSoon(within: 0)
    }

    /// Starts the send orders whose package this agent now holds verified (once per epoch),
    /// when every receiver has joined or the gathering wait is over; until then the agent
    /// checks in every second to hear who has joined.
    func startMulticasts() {
        for (change, order) in sendOrders {
            let key = "\(change)#\(order.epoch)"
            guard !multicastsStarted.contains(key), let entry = cache.entry(change), entry.phase >= .verified,
                entry.phase != .failed
            else { continue }
            let now = ContinuousClock.now
            let since = sendReadySince[key] ?? now
            sendReadySince[key] = since
            let missing = Set(order.send.receivers).subtracting(order.send.joined ?? []).count
            let gather = order.send.gatherSeconds.map { $0.isFinite ? min(max($0, 0), 600) : 30 } ?? 0
            if missing > 0 && now - since < .seconds(gather) {
                if since == now {
                    logger.info(
                        "waiting up to \(Int(gather)) s for \(missing) of \(order.send.receivers.count) receiver(s) to join the multicast of \(AgentFacts.printable(change))"
                    )
                }
                nextCheckInSoon(within: 1)
                continue
            }
            if missing > 0 {
                logger.warning(
                    "\(missing) receiver(s) did not join the multicast of \(AgentFacts.printable(change)) within \(Int(gather)) s: sending anyway"
                )
            }
            multicastsStarted.insert(key)
            sendReadySince[key] = nil
            Task { await self.send(entry, epoch: order.epoch, order: order.send) }
        }
    }

    /// Multicasts the verified package to the order's receivers and keeps the report.
    private func send(_ entry: CacheEntry, epoch: UInt64, order: MulticastSend) async {
        let change = entry.change
        var report = MulticastReport(
            change: change, epoch: epoch, receivers: order.receivers.count, acknowledged: 0, rounds: 0, seconds: 0,
            bytes: entry.manifest.size, error: nil)
        let receivers = order.receivers.prefix(100_000).compactMap(NormNode.init)
        if let node = NormNode(order.node), receivers.count == order.receivers.count, !receivers.contains(node) {
            let settings = NormSettings(group: order.group, port: order.port, rate: order.rate)
            let info = MulticastObject.info(change: change, epoch: epoch, digest: entry.manifest.digest)
            logger.info(
                "multicasting \(AgentFacts.printable(change)) to \(receivers.count) receiver(s) on \(order.group):\(order.port) at \(order.rate) B/s"
            )
            do {
                let sent = try await NormTransfer.send(
                    file: cache.packagePath(change), info: info, node: node, receivers: receivers, settings: settings,
                    rounds: 3, timeout: MulticastObject.sendTimeout(size: entry.manifest.size, rate: order.rate))
                report.acknowledged = sent.acknowledged.count
                report.rounds = sent.rounds
                report.seconds = sent.seconds
                logger.info(
                    "multicast of \(AgentFacts.printable(change)) ended: \(sent.acknowledged.count)/\(receivers.count) acknowledged in \(sent.rounds) round(s), \(String(format: "%.1f", sent.seconds)) s"
                )
            } catch {
                report.error = "\(error)".boundedTail(1000)
                logger.error("multicast of \(AgentFacts.printable(change)) failed: \(error)")
            }
        } else {
            report.error = "the send order named invalid NORM node ids"
        }
        multicastReports.append(report)
        if multicastReports.count > 64 { multicastReports.removeFirst(multicastReports.count - 64) }
        nextCheckInSoon()
    }
}
