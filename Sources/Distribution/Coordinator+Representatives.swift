import Foundation

/// Representatives and Wake-on-LAN: per job (deployment) and segment (subnet) the coordinator
/// keeps one lease, changed only through `updateRepresentatives(of:renewing:)`, which hands the
/// facts to the pure `RepresentativeElection.next`.
extension Coordinator {
    /// How long a lease lasts without a renewing check-in: the time after which the core counts
    /// an agent offline, so a representative that stops answering is replaced when it would be
    /// shown offline, and not before.
    var leaseDuration: TimeInterval { settings.offlineAfter }

    /// An agent whose subnet changed less than this long ago counts as roaming.
    static let roamingWindow: TimeInterval = 3600

    /// The one transition path of the leases of `change`'s segments; true when a lease changed.
    @discardableResult
    func updateRepresentatives(of change: ChangeID, renewing: String? = nil) -> Bool {
        guard let deployment = state.deployments[change] else { return false }
        let now = clock()
        var members: [String: [TargetRecord]] = [:]
        for target in deployment.targets.values {
            guard let subnet = state.agents[target.agent]?.subnet else { continue }
            members[subnet, default: []].append(target)
        }
        var representations = deployment.representatives ?? [:]
        let before = representations
        for subnet in Set(members.keys).union(representations.keys).sorted() {
            var representation = representations[subnet] ?? SegmentRepresentation(subnet: subnet)
            let targets = members[subnet] ?? []
            let needed = targets.contains { !isDone($0, in: deployment) } || representation.pendingWake != nil
            // Candidates matter only when the lease is to be granted (none, or expired).
            let granting = needed && representation.lease?.isActive(at: now) != true
            let candidates =
                granting ? targets.compactMap { candidate($0.agent, for: change, subnet: subnet, now: now) } : []
            representation.lease = RepresentativeElection.next(
                current: representation.lease, lastEpoch: representation.epoch, candidates: candidates,
                renewing: renewing, needed: needed && !targets.isEmpty, now: now, duration: leaseDuration)
            representation.epoch = max(representation.epoch, representation.lease?.epoch ?? 0)
            representations[subnet] = representation
        }
        guard representations != before else { return false }
        state.deployments[change]?.representatives = representations
        return true
    }

    /// Every job's leases (from the tick: expired ones are granted again).
    func updateAllRepresentatives() -> Bool {
        var changed = false
        for change in state.deployments.keys.sorted() where updateRepresentatives(of: change) { changed = true }
        return changed
    }

    /// Whether a target needs nothing more from its segment for this job.
    private func isDone(_ target: TargetRecord, in deployment: Deployment) -> Bool {
        if target.gaveUp { return true }
        if deployment.rollback != nil { return target.phase == .rolledBack }
        if deployment.activation != nil { return target.phase == .activated }
        return target.holdsVerifiedCopy
    }

    /// `agent` as a candidate for representing `subnet` in `change`'s job, or nil when it
    /// cannot: offline, revoked, elsewhere, or of a protocol that does not take roles.
    private func candidate(_ agent: String, for change: ChangeID, subnet: String, now: Date)
        -> RepresentativeCandidate?
    {
        // Checked in within a lease's time, not merely holding a job stream: a killed agent's
        // stream can outlive it, and it must not win back the lease it just let expire.
        guard let record = state.agents[agent], !record.revoked, record.subnet == subnet, isOnline(record),
            now.timeIntervalSince(record.lastSeen) < leaseDuration, WireProtocol.takesRoles(record.protocolVersion)
        else { return nil }
        let busy = state.deployments.contains { other, deployment in
            other != change && [.seeding, .activating].contains(deployment.targets[agent]?.phase)
        }
        let leases = state.deployments.filter { other, deployment in
            other != change
                && (deployment.representatives ?? [:]).values.contains {
                    $0.lease?.agent == agent && $0.lease?.isActive(at: now) == true
                }
        }.count
        let roaming = record.subnetChangedAt.map { now.timeIntervalSince($0) < Self.roamingWindow } ?? false
        return RepresentativeCandidate(
            agent: agent, onlineSince: record.onlineSince ?? record.lastSeen, busy: busy, roaming: roaming,
            leasesHeld: leases)
    }

    /// Renews (or grants) the leases of the jobs `agent` is a target of, and returns its roles:
    /// the jobs it represents its segment for, with the wake order of each.
    func representativeRoles(renewedBy agent: String) -> [RepresentativeRole] {
        guard let subnet = state.agents[agent]?.subnet else { return [] }
        let now = clock()
        var roles: [RepresentativeRole] = []
        for change in state.deployments.keys.sorted() where state.deployments[change]?.targets[agent] != nil {
            if updateRepresentatives(of: change, renewing: agent) { markDirty() }
            guard var representation = state.deployments[change]?.representatives?[subnet],
                let lease = representation.lease, lease.agent == agent, lease.isActive(at: now)
            else { continue }
            // A request made while the whole segment slept can name agents that have come back
            // since (the representative itself among them): wake only those still asleep.
            if var request = representation.pendingWake {
                let asleep = request.targets.filter { state.agents[$0.agent].map { !isOnline($0) } ?? false }
                if asleep != request.targets {
                    request.targets = asleep
                    representation.pendingWake = asleep.isEmpty ? nil : request
                    state.deployments[change]?.representatives?[subnet] = representation
                    markDirty()
                }
            }
            let wake = representation.pendingWake.map { request in
                WakeOrder(request: request.id, macAddresses: request.targets.flatMap(\.macAddresses))
            }
            let multicast =
                WireProtocol.takesMulticast(state.agents[agent]?.protocolVersion)
                ? multicastPlan(change, subnet: subnet, lease: lease) : nil
            roles.append(
                RepresentativeRole(
                    change: change, subnet: subnet, epoch: lease.epoch,
                    leaseSeconds: lease.expiresAt.timeIntervalSince(now), wake: wake, multicast: multicast))
        }
        return roles
    }

    /// Before seeding or activation: for each segment of `change`, a wake request for its
    /// offline targets that reported a MAC address; the segment's representative carries it out.
    /// True when it made a request.
    @discardableResult
    func requestWake(_ change: ChangeID, purpose: String, only: String? = nil, triedFewerThan limit: Int? = nil)
        -> Bool
    {
        guard let deployment = state.deployments[change] else { return false }
        var offline: [String: [WakeTarget]] = [:]
        for target in deployment.targets.values.sorted(by: { $0.agent < $1.agent })
        where !isDone(target, in: deployment) {
            guard let agent = state.agents[target.agent], !agent.revoked, !isOnline(agent), let subnet = agent.subnet,
                only == nil || only == subnet, let macs = agent.macAddresses, !macs.isEmpty
            else { continue }
            if let limit,
                (deployment.representatives?[subnet]?.wakeAttempts ?? []).filter({ $0.target == target.agent }).count
                    >= limit
            {
                continue
            }
            offline[subnet, default: []].append(WakeTarget(agent: agent.id, macAddresses: macs))
        }
        var representations = deployment.representatives ?? [:]
        for (subnet, targets) in offline {
            var representation = representations[subnet] ?? SegmentRepresentation(subnet: subnet)
            representation.pendingWake = WakeRequest(
                id: "w-" + UUID().uuidString.lowercased(), purpose: purpose, targets: targets, requestedAt: clock())
            representations[subnet] = representation
        }
        state.deployments[change]?.representatives = representations
        updateRepresentatives(of: change)
        return !offline.isEmpty
    }

    /// A target still asleep this long after its segment's last wake attempt is woken again,
    /// up to `wakeAttemptsPerTarget` times per job: a machine can miss a packet (its NIC was
    /// not armed yet, a switch dropped it).
    static let wakeRepeat: TimeInterval = 15
    static let wakeAttemptsPerTarget = 5

    /// From the tick: a new wake request per segment whose targets slept through the last one.
    func repeatWakes() -> Bool {
        let now = clock()
        var changed = false
        for change in state.deployments.keys.sorted() {
            guard let deployment = state.deployments[change], deployment.halted == nil else { continue }
            for (subnet, representation) in (deployment.representatives ?? [:]).sorted(by: { $0.key < $1.key })
            where representation.pendingWake == nil {
                guard let last = representation.wakeAttempts.map(\.at).max(),
                    now.timeIntervalSince(last) >= Self.wakeRepeat
                else { continue }
                if requestWake(
                    change, purpose: "again: still asleep", only: subnet, triedFewerThan: Self.wakeAttemptsPerTarget)
                {
                    changed = true
                }
            }
        }
        return changed
    }

    /// Refuses wake reports beyond the limit or with an oversized error text.
    func checkWakeReports(_ reports: [WakeReport]?) throws {
        guard let reports else { return }
        guard reports.count <= limits.maxWakeReports else {
            throw CoreRefusal.badRequest(
                "the agent's report is refused: \(reports.count) wake reports (at most \(limits.maxWakeReports))")
        }
        for report in reports {
            guard (0...limits.maxMACAddresses * 1024).contains(report.packets), (report.error?.utf8.count ?? 0) <= 1024
            else {
                throw CoreRefusal.badRequest(
                    "the agent's report is refused: a wake report with \(report.packets) packets or an error over 1 KiB"
                )
            }
        }
    }

    /// Takes what a representative reports about its wake orders: only the current lease
    /// holder's report for the pending request of its own segment and epoch counts.
    func take(_ reports: [WakeReport], from agent: String) {
        guard !reports.isEmpty, let subnet = state.agents[agent]?.subnet else { return }
        for report in reports {
            guard var representation = state.deployments[report.change]?.representatives?[subnet],
                representation.take(report, from: agent, at: clock())
            else { continue }
            state.deployments[report.change]?.representatives?[subnet] = representation
            markDirty()
        }
    }

    /// Per segment of `change`: its representative, lease and wake attempts, for the status.
    func representativeStatus(of deployment: Deployment) -> [RepresentativeStatus] {
        let now = clock()
        var labels: [String: String] = [:]
        var offline: [String: Int] = [:]
        for target in deployment.targets.values {
            guard let agent = state.agents[target.agent], let subnet = agent.subnet else { continue }
            labels[subnet] = labels[subnet] ?? agent.segment
            if !isOnline(agent) { offline[subnet, default: 0] += 1 }
        }
        return (deployment.representatives ?? [:]).values.sorted { $0.subnet < $1.subnet }.map { r in
            let lease = r.lease.flatMap { $0.isActive(at: now) ? $0 : nil }
            func name(_ id: String) -> String { state.agents[id]?.name ?? id }
            return RepresentativeStatus(
                segment: labels[r.subnet] ?? r.subnet, subnet: r.subnet, representative: lease.map { name($0.agent) },
                agent: lease?.agent, epoch: r.epoch, leaseExpiresAt: lease?.expiresAt,
                offlineTargets: offline[r.subnet] ?? 0, wakePending: r.pendingWake?.targets.count ?? 0,
                wakeAttempts: r.wakeAttempts.map {
                    WakeAttemptStatus(
                        target: name($0.target), by: name($0.by), packets: $0.packets, error: $0.error, at: $0.at)
                },
                note: lease == nil && (offline[r.subnet] ?? 0) > 0 ? Self.noOneToWake : nil,
                multicast: multicastStatus(r))
        }
    }

    static let noOneToWake = "no online agent on this segment to wake its targets"

    /// The chase reason and detail of an offline target: whether its segment has a
    /// representative to wake it, and what Wake-on-LAN was tried.
    func offlineReason(_ agent: AgentRecord, in deployment: Deployment) -> (reason: String, detail: String) {
        let seen = "last seen \(ISO8601DateFormatter().string(from: agent.lastSeen))"
        guard let subnet = agent.subnet else {
            return (FailureReason.offline.rawValue, seen + "; no subnet known (protocol 2 agent): it cannot be woken")
        }
        let representation = deployment.representatives?[subnet]
        let attempts = representation?.wakeAttempts.filter { $0.target == agent.id } ?? []
        var detail = seen
        if let last = attempts.last {
            let by = state.agents[last.by]?.name ?? last.by
            detail +=
                "; Wake-on-LAN \(attempts.count)× (last by \(by) at \(ISO8601DateFormatter().string(from: last.at))"
                + (last.error.map { ": \($0)" } ?? "") + ")"
        } else if agent.macAddresses?.isEmpty ?? true {
            detail += "; it reported no MAC address, so it cannot be woken"
        }
        guard representation?.lease?.isActive(at: clock()) == true else {
            return ("offline, no one to wake it", detail + "; " + Self.noOneToWake)
        }
        return (FailureReason.offline.rawValue, detail)
    }
}
