import Foundation

/// Targeted multicast: per job a group and port from the core's range; per segment, the
/// representative is told whom to send to (in its role), each receiver whom to listen to (in
/// its check-in reply), and the representative's report ends the segment's multicast for its
/// lease epoch. What a receiver holds is what it reports verified, never NORM's acknowledgement.
extension Coordinator {
    /// Gives `change` the lowest channel of the range that no unfinished job uses.
    func assignMulticastChannel(_ change: ChangeID) {
        guard let settings = settings.multicast, var deployment = state.deployments[change],
            deployment.multicast == nil
        else { return }
        let used = Set(
            state.deployments.values.filter { $0.change != change && !isFinished($0) }.compactMap {
                $0.multicast?.index
            })
        guard let free = (0..<settings.groups).first(where: { !used.contains($0) }) else { return }
        deployment.multicast = settings.channel(free)
        state.deployments[change] = deployment
    }

    /// Whether no target of the job needs anything more (its channel is free again).
    private func isFinished(_ deployment: Deployment) -> Bool {
        deployment.targets.values.allSatisfy { target in
            target.gaveUp || (deployment.rollback != nil ? target.phase == .rolledBack : target.phase == .activated)
        }
    }

    /// Whether `agent` takes part in multicasts on `subnet` now.
    private func multicastCapable(_ agent: AgentRecord?, on subnet: String) -> Bool {
        guard let agent, !agent.revoked, agent.subnet == subnet, isOnline(agent),
            // An agent enrolled but not yet checked in has not said; it takes part unless it opts out.
            WireProtocol.takesMulticast(agent.protocolVersion), agent.receivesMulticast != false
        else { return false }
        return true
    }

    /// Whether the seeding ticket of `target` tells it to wait for its segment's multicast.
    func seedsByMulticast(_ target: TargetRecord, in deployment: Deployment) -> Bool {
        guard settings.multicast != nil, deployment.multicast != nil, deployment.rollback == nil,
            let agent = state.agents[target.agent], let subnet = agent.subnet
        else { return false }
        if let representation = deployment.representatives?[subnet], multicastEnded(representation) { return false }
        return multicastCapable(agent, on: subnet)
    }

    /// The segment's multicast has ended: its sender reported. One multicast per segment and
    /// job: a target that missed it (offline, joined late, or still lacking bytes afterwards)
    /// seeds from peers. Only a sender that vanished before reporting is replaced, by the next
    /// lease epoch's representative multicasting to whoever still lacks a copy.
    private func multicastEnded(_ representation: SegmentRepresentation) -> Bool {
        representation.multicast?.report != nil
    }

    /// Node ids for every target of `change` on `subnet`, kept in the segment's representation.
    private func nodes(of change: ChangeID, subnet: String) -> [String: UInt32] {
        guard let deployment = state.deployments[change] else { return [:] }
        let members = deployment.targets.keys.filter { state.agents[$0]?.subnet == subnet }
        var representation = deployment.representatives?[subnet] ?? SegmentRepresentation(subnet: subnet)
        let nodes = NormNodeIDs.assign(members, existing: representation.nodes ?? [:])
        if nodes != representation.nodes {
            representation.nodes = nodes
            var all = deployment.representatives ?? [:]
            all[subnet] = representation
            state.deployments[change]?.representatives = all
            markDirty()
        }
        return nodes
    }

    /// The send order for the representative `lease.agent` of `subnet` in `change`: the
    /// segment's online multicast-capable targets that still lack a verified copy, until the
    /// representative reports this epoch's multicast ended. nil: nothing to send.
    func multicastPlan(_ change: ChangeID, subnet: String, lease: RepresentativeLease) -> MulticastSend? {
        guard let channel = state.deployments[change]?.multicast, let settings = settings.multicast,
            let deployment = state.deployments[change], deployment.rollback == nil,
            let representation = deployment.representatives?[subnet], !multicastEnded(representation),
            multicastCapable(state.agents[lease.agent], on: subnet)
        else { return nil }
        let receivers = deployment.targets.values.filter { target in
            target.agent != lease.agent && !target.gaveUp && !target.holdsVerifiedCopy
                && multicastCapable(state.agents[target.agent], on: subnet)
        }.map(\.agent).sorted()
        guard !receivers.isEmpty else { return nil }
        let nodes = nodes(of: change, subnet: subnet)
        guard let own = nodes[lease.agent] else { return nil }
        var planned = representation.multicast
        if planned?.epoch != lease.epoch {
            planned = SegmentMulticast(
                epoch: lease.epoch, sender: lease.agent, receivers: receivers, plannedAt: clock(), report: nil)
        } else {
            planned?.receivers = receivers
        }
        if planned != representation.multicast {
            state.deployments[change]?.representatives?[subnet]?.multicast = planned
            markDirty()
        }
        let joined = Set(planned?.joined ?? []).intersection(receivers)
        return MulticastSend(
            group: channel.group, port: channel.port, node: own, receivers: receivers.compactMap { nodes[$0] },
            rate: max(1000, deployment.rate ?? settings.rate), joined: joined.sorted().compactMap { nodes[$0] },
            gatherSeconds: settings.gather)
    }

    /// Takes a receiver's word that its NORM receiver has joined: counted for the segment's
    /// multicast of that epoch (planned now if the representative has not checked in since).
    func take(joined: [MulticastJoin], from agent: String) {
        guard !joined.isEmpty, let subnet = state.agents[agent]?.subnet else { return }
        for join in joined {
            guard let representation = state.deployments[join.change]?.representatives?[subnet],
                let lease = representation.lease, lease.epoch == join.epoch, lease.agent != agent,
                lease.isActive(at: clock())
            else { continue }
            if representation.multicast?.epoch != join.epoch {
                _ = multicastPlan(join.change, subnet: subnet, lease: lease)
            }
            guard var multicast = state.deployments[join.change]?.representatives?[subnet]?.multicast,
                multicast.epoch == join.epoch, multicast.report == nil, multicast.receivers.contains(agent),
                !(multicast.joined ?? []).contains(agent)
            else { continue }
            multicast.joined = ((multicast.joined ?? []) + [agent]).sorted()
            state.deployments[join.change]?.representatives?[subnet]?.multicast = multicast
            markDirty()
        }
    }

    /// The multicasts `agent` should listen to now: jobs it lacks a verified copy of, on a
    /// segment whose representative (another agent) has not ended its multicast. A lease
    /// that expired and is not granted again yet still names its sender: the receivers keep
    /// waiting until the next epoch's order replaces it, rather than turning to the core.
    func multicastListens(for agent: String) -> [MulticastListen] {
        guard let settings = settings.multicast, let record = state.agents[agent], let subnet = record.subnet,
            multicastCapable(record, on: subnet)
        else { return [] }
        var listens: [MulticastListen] = []
        for change in state.deployments.keys.sorted() {
            guard let deployment = state.deployments[change], let channel = deployment.multicast,
                deployment.rollback == nil, let target = deployment.targets[agent], !target.gaveUp,
                !target.holdsVerifiedCopy, let representation = deployment.representatives?[subnet],
                let lease = representation.lease, lease.agent != agent,
                !multicastEnded(representation)
            else { continue }
            let nodes = nodes(of: change, subnet: subnet)
            guard let own = nodes[agent], let sender = nodes[lease.agent] else { continue }
            listens.append(
                MulticastListen(
                    change: change, subnet: subnet, epoch: lease.epoch, group: channel.group, port: channel.port,
                    node: own, sender: sender, waitSeconds: settings.wait))
        }
        return listens
    }

    /// Refuses multicast reports beyond the limit or out of range.
    func checkMulticastReports(_ reports: [MulticastReport]?, joined: [MulticastJoin]? = nil) throws {
        if let joined, joined.count > limits.maxWakeReports || joined.contains(where: { $0.change.utf8.count > 256 }) {
            throw CoreRefusal.badRequest(
                "the agent's report is refused: \(joined.count) multicast joins (at most \(limits.maxWakeReports)) or a change name over 256 bytes"
            )
        }
        guard let reports else { return }
        guard reports.count <= limits.maxWakeReports else {
            throw CoreRefusal.badRequest(
                "the agent's report is refused: \(reports.count) multicast reports (at most \(limits.maxWakeReports))")
        }
        for r in reports {
            let sane =
                (0...100_000).contains(r.receivers) && (0...r.receivers).contains(r.acknowledged)
                && (0...1000).contains(r.rounds) && r.seconds.isFinite && r.seconds >= 0 && r.seconds < 1e7
                && r.bytes >= 0 && (r.error?.utf8.count ?? 0) <= 1024 && r.change.utf8.count <= 256
            guard sane else {
                throw CoreRefusal.badRequest(
                    "the agent's report is refused: a multicast report with counts out of range or an error over 1 KiB")
            }
        }
    }

    /// Takes what a representative reports about its multicasts: only the report of the
    /// sender the core planned, for its own segment and that plan's epoch, counts.
    func take(_ reports: [MulticastReport], from agent: String) {
        guard !reports.isEmpty, let subnet = state.agents[agent]?.subnet else { return }
        for report in reports {
            // The sender the core recorded for that epoch (its lease may be over: a job done on
            // the segment releases it before the report comes in).
            guard let representation = state.deployments[report.change]?.representatives?[subnet],
                var multicast = representation.multicast, multicast.sender == agent, multicast.epoch == report.epoch,
                multicast.report == nil
            else { continue }
            multicast.report = report
            state.deployments[report.change]?.representatives?[subnet]?.multicast = multicast
            // The segment's targets that slept through it are woken now to catch up from peers.
            requestWake(report.change, purpose: "catch up after the multicast", only: subnet)
            markDirty()
        }
    }

    /// The status line of a segment's multicast.
    func multicastStatus(_ representation: SegmentRepresentation) -> MulticastStatus? {
        guard let m = representation.multicast else { return nil }
        return MulticastStatus(
            sender: state.agents[m.sender]?.name ?? m.sender, epoch: m.epoch, receivers: m.receivers.count,
            acknowledged: m.report?.acknowledged, rounds: m.report?.rounds, seconds: m.report?.seconds,
            error: m.report?.error, state: m.report == nil ? "sending" : "ended")
    }
}
