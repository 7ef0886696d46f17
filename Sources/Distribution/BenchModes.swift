import AsyncHTTPClient
import Foundation
import HostIO
import Model

/// The modes of `changelab bench distribution`, each on a fresh fleet in the same run.
public enum BenchMode: String, CaseIterable, Codable, Sendable {
    /// Every agent downloads from the core (part 1).
    case unicast
    /// Targeted multicast: per segment one WAN copy to the representative, one NORM object to the rest.
    case multicast
    /// Targeted multicast with 5% random loss of the multicast datagrams every host receives.
    case multicastLoss = "multicast-loss-5"
    /// Targeted multicast with 20% of each segment's agents asleep during seeding; woken by
    /// Wake-on-LAN once their segment's multicast has ended, they catch up from peers.
    case multicastOffline = "multicast-offline-20"

    public var usesMulticast: Bool { self != .unicast }

    /// Parses `unicast,multicast,…` (or `all`).
    public static func parse(_ text: String) throws -> [BenchMode] {
        if text == "all" { return allCases }
        return try text.split(separator: ",").map { name in
            guard let mode = BenchMode(rawValue: String(name)) else {
                throw ChangelabError(
                    "no bench mode '\(name)'",
                    fix: "give some of \(allCases.map(\.rawValue).joined(separator: ",")) or all")
            }
            return mode
        }
    }
}

extension DistributionBench {
    /// One mode's core: its admin client, TLS pin and the change-control authority it trusts.
    struct CoreHandle {
        var admin: CoreClient
        var pin: String
        var trustRoot: String
        var authority: ThrowawayAuthority
    }

    /// One mode on a fresh fleet: seeds, activates, and returns its figures.
    static func measure(
        _ mode: BenchMode, options base: BenchOptions, work: String, clients: ClientList, processes: ProcessList,
        progress: @escaping @Sendable (String) -> Void
    ) async throws -> BenchModeResult {
        var o = base
        if mode == .multicastLoss {
            // 5% of the multicast datagrams every host receives, independently per host.
            o.multicastLoss = Dictionary(uniqueKeysWithValues: (1...o.segments).map { ($0, 0.05) })
        }
        let fleet = TestFleet(options: o)
        let total = o.segments * o.agentsPerSegment
        progress(
            "\(mode.rawValue): fleet of \(o.segments) segment(s) × \(o.agentsPerSegment) agent(s) on \(o.hostsPerSegment) host(s) each, WAN \(o.wanRate)"
        )
        try await fleet.up()
        // Agents of an earlier mode enrolled with another core: each mode starts afresh.
        for folder in ["agents", "roots"] { try? FileManager.default.removeItem(atPath: "\(work)/\(folder)") }
        let deb = try await buildPackage(in: work, bytes: o.packageBytes)
        var coreArguments = ["--check-in", "10"]
        if mode.usesMulticast { coreArguments += ["--multicast-groups", "239.77.0.0/24"] }
        // Asleep agents show offline after 30 s (three missed check-ins) instead of 90.
        if mode == .multicastOffline { coreArguments += ["--offline-after", "30"] }
        let f = try await startCore(fleet, work: work, extra: coreArguments, clients: clients, processes: processes)
        let manifest = try await f.admin.publish(file: deb, release: "bench-1")
        let token = try await f.admin.createToken(uses: total, lifetime: 3600)

        progress("starting \(total) agents")
        var commands: [String: [String]] = [:]
        var agents: [String: DetachedProcess] = [:]
        for segment in 1...o.segments {
            for host in 1...o.hostsPerSegment {
                let count =
                    o.agentsPerSegment / o.hostsPerSegment + (host <= o.agentsPerSegment % o.hostsPerSegment ? 1 : 0)
                guard count > 0 else { continue }
                let name = "s\(segment)-h\(host)"
                let command = agentCommand(
                    name: name, segment: segment, count: count, fleet: fleet, core: f, token: token, work: work,
                    options: o, peers: mode.usesMulticast)
                commands[name] = command
                let process = try await DetachedProcess.start(
                    "ip", ["netns", "exec", fleet.namespace(segment: segment, host: host)] + command,
                    log: "\(work)/agent-\(name).log")
                processes.add(process)
                agents[name] = process
            }
        }
        // Online, and checked in once: enrolment alone does not report the MAC addresses that
        // Wake-on-LAN needs.
        guard
            try await poll(
                o.timeout, { try await f.admin.agents().filter { $0.online && $0.macAddresses != nil }.count >= total })
        else {
            throw ChangelabError(
                "only \(try await f.admin.agents().filter(\.online).count) of \(total) agents came online",
                fix: "see the agent logs in \(work)")
        }

        // The offline mode: the last 20% of each segment's hosts go to sleep (their agents
        // stop) and wait for their own magic packet.
        var sleepers: [(name: String, segment: Int, host: Int)] = []
        if mode == .multicastOffline {
            let asleep = max(1, Int((Double(o.hostsPerSegment) * 0.2).rounded()))
            for segment in 1...o.segments {
                for host in (o.hostsPerSegment - asleep + 1)...o.hostsPerSegment {
                    sleepers.append(("s\(segment)-h\(host)", segment, host))
                }
            }
            for sleeper in sleepers { agents[sleeper.name]?.kill() }
            let names = Set(sleepers.map(\.name))
            progress("\(sleepers.count) agents asleep")
            guard
                try await poll(
                    .seconds(60), { try await f.admin.agents().filter { names.contains($0.name) && $0.online }.isEmpty })
            else { throw ChangelabError("the sleeping agents still show online", fix: "see \(work)/core.log") }
        }
        // Give every agent a moment to open its job stream.
        try await Task.sleep(for: .seconds(2))

        let before = try await fleet.counters()
        let portsBefore = try await fleet.portCounters()
        progress("seeding \(StatusText.bytes(manifest.size)) to \(total) agents")
        let seedStart = ContinuousClock.now
        let authorization = try f.authority.authorization(
            change: "bench-1", package: manifest.package, version: manifest.packageVersion, artifact: manifest.digest,
            baselines: ["minimal"])
        _ = try await f.admin.promote(
            "bench-1",
            PromoteRequest(
                release: nil, targets: "all", rings: nil, rate: o.seedRate, maxFailureRate: nil,
                authorization: authorization))
        if !sleepers.isEmpty {
            // Asleep until the multicast of their segment has ended: then the waiters start.
            let subnets = Set(sleepers.map { "10.77.\($0.segment).0/24" })
            guard
                try await poll(
                    o.timeout,
                    {
                        let ended = try await f.admin.status("bench-1").representatives?.filter {
                            $0.multicast?.state == "ended"
                        }.map(\.subnet) ?? []
                        return subnets.isSubset(of: Set(ended))
                    })
            else { throw ChangelabError("a segment's multicast did not end", fix: "see the agent logs in \(work)") }
            progress("multicasts ended: waking \(sleepers.count) agents")
            for s in sleepers {
                let namespace = fleet.namespace(segment: s.segment, host: s.host)
                let mac = try await HostCommand.check(
                    "ip", ["netns", "exec", namespace, "cat", "/sys/class/net/eth0/address"]
                ).stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
                let waiter = [o.executable, "agent", "wait-for-wake", "--mac", mac, "--timeout", "600"]
                let script =
                    waiter.map { "'\($0)'" }.joined(separator: " ") + " && exec "
                    + (commands[s.name] ?? []).map { "'\($0)'" }.joined(separator: " ")
                processes.add(
                    try await DetachedProcess.start(
                        "ip", ["netns", "exec", namespace, "sh", "-c", script], log: "\(work)/agent-\(s.name)-woken.log"))
            }
        }
        var lastShown = -1
        guard
            try await poll(
                o.timeout,
                {
                    let status = try await f.admin.status("bench-1")
                    if status.total.verified / max(1, total / 10) != lastShown {
                        lastShown = status.total.verified / max(1, total / 10)
                        progress(
                            "  seeded \(status.total.verified)/\(total)  \(StatusText.bytes(status.total.bytesSent)) sent"
                        )
                    }
                    return status.total.verified + status.total.failed >= total
                })
        else { throw ChangelabError("seeding did not finish within \(o.timeout)", fix: "see \(work)/core.log") }
        let seeding = seconds(ContinuousClock.now - seedStart)
        let after = try await fleet.counters()
        let portsAfter = try await fleet.portCounters()
        // Who served each copy comes with the agents' next check-in (cache reports).
        var seeded = try await f.admin.status("bench-1")
        _ = try await poll(.seconds(30)) {
            seeded = try await f.admin.status("bench-1")
            return (seeded.sources ?? []).count >= seeded.total.verified
        }
        // Peer bytes by server, as each agent reports them at check-in: wait for the reports
        // to cover what the receivers say they got from peers.
        let fromPeers = (seeded.sources ?? []).reduce(Int64(0)) { $0 + $1.bytesFromPeers }
        var peerServed: [String: Int64] = [:]
        _ = try await poll(.seconds(30)) {
            peerServed = Dictionary(
                (try await f.admin.agents()).map { ($0.name, $0.peerServedBytes ?? 0) }, uniquingKeysWith: +)
            return peerServed.values.reduce(0, +) >= fromPeers
        }

        progress("activating")
        let activateCommand = Date()
        let activateStart = ContinuousClock.now
        _ = try await f.admin.activate("bench-1", authorization: authorization)
        var final = try await f.admin.status("bench-1")
        var shownResults = 0
        _ = try await poll(
            o.timeout,
            {
                final = try await f.admin.status("bench-1")
                let results = final.total.activated + final.total.failed
                if results >= shownResults + max(1, total / 10) || results == total && shownResults < total {
                    shownResults = results
                    progress(
                        String(
                            format: "  %d/%d results after %.2f s", results, total,
                            seconds(ContinuousClock.now - activateStart)))
                }
                return results >= final.total.targets
            }, every: .milliseconds(50))
        let activation = seconds(ContinuousClock.now - activateStart)
        let wan = after.wan - before.wan
        let lan = after.lan - before.lan
        let unit = Double(manifest.size) * Double(o.segments)
        var result = BenchModeResult(
            mode: mode.rawValue, agents: total, segments: o.segments, packageBytes: manifest.size, wanBytes: wan,
            lanBytes: lan, seedingSeconds: seeding, activationSeconds: activation, wanRatio: Double(wan) / unit,
            lanRatio: Double(lan) / unit, activated: final.total.activated, failed: final.total.failed,
            activationWithin5s: activation <= 5 && final.total.activated + final.total.failed >= total)
        addSegmentFigures(
            to: &result, seeded, ports: (portsBefore, portsAfter), unit: unit, size: manifest.size,
            sleepers: Set(sleepers.map(\.name)), peerServed: peerServed,
            fanout: final.lastInstallerStartAt.map { $0 - activateCommand.timeIntervalSince1970 })
        progress(
            String(
                format: "%@: seeding %.1f s, activation %.2f s, wan_ratio %.3f, lan_ratio %.3f, lan_segment_ratio %.3f",
                mode.rawValue, seeding, activation, result.wanRatio, result.lanRatio,
                result.lanSegmentRatio ?? 0))
        for process in processes.all { process.kill(SIGTERM) }
        for process in processes.all { await process.stop(grace: .seconds(2)) }
        processes.removeAll()
        await fleet.down()
        return result
    }

    /// The LAN split and sources of one seeded job, into `result`'s part 2 fields.
    static func addSegmentFigures(
        to result: inout BenchModeResult, _ status: StatusReport,
        ports: (before: [String: Int64], after: [String: Int64]), unit: Double, size: Int64, sleepers: Set<String>,
        peerServed: [String: Int64], fanout: Double?
    ) {
        func sent(_ port: String) -> Int64 { (ports.after[port] ?? 0) - (ports.before[port] ?? 0) }
        // Ports are named sNhJ after host sN-hJ; an agent is named after its host.
        func port(of agent: String) -> String { agent.replacingOccurrences(of: "-", with: "") }
        let senders = Set((status.representatives ?? []).compactMap { $0.multicast.map { port(of: $0.sender) } })
        let sources = status.sources ?? []
        let peerServedByReceivers = sources.reduce(Int64(0)) { $0 + $1.bytesFromPeers }
        var hosts: Int64 = 0
        var senderBytes: Int64 = 0
        for port in ports.after.keys {
            hosts += sent(port)
            if senders.contains(port) { senderBytes += sent(port) }
        }
        let servedBySenders = peerServed.filter { senders.contains(port(of: $0.key)) }.values.reduce(0, +)
        let servedByOthers = peerServed.values.reduce(0, +) - servedBySenders
        let multicastCopies = Int64(senders.count) * size
        var served: [String: Int] = [:]
        for source in sources { served[source.source.rawValue, default: 0] += 1 }
        result.lanSegmentRatio = Double(hosts) / unit
        result.lanFeedbackBytes = max(0, hosts - senderBytes - servedByOthers)
        result.payloadBytes = [
            "multicast": multicastCopies, "repair": max(0, senderBytes - multicastCopies - servedBySenders),
            "peer": peerServedByReceivers, "core": sources.reduce(Int64(0)) { $0 + $1.bytesFromCore },
        ]
        result.served = served
        result.offlineAgents = sleepers.count
        result.offlineCoreBytes = sources.filter { sleepers.contains($0.name) }.reduce(Int64(0)) { $0 + $1.bytesFromCore }
        result.activationFanoutSeconds = fanout
    }

    /// `changelab agent run …` for host `name`'s agents.
    static func agentCommand(
        name: String, segment: Int, count: Int, fleet: TestFleet, core f: CoreHandle, token: TokenReply, work: String,
        options o: BenchOptions, peers: Bool
    ) -> [String] {
        [
            o.executable, "agent", "run", "--core", "https://\(fleet.coreAddress):\(fleet.port)", "--core-key",
            token.coreKey, "--core-pin", f.pin, "--trust-root", f.trustRoot, "--attribute", "baseline=minimal@1",
            "--enrol-token", token.token, "--state", "\(work)/agents/\(name)", "--root", "\(work)/roots/\(name)",
            "--name", name, "--segment", "s\(segment)", "--attribute", "site=site-\(segment)", "--count",
            String(count), "--watch", "/etc",
        ] + (o.parallelInstalls.map { ["--parallel-installs", String($0)] } ?? [])
            + (peers ? ["--peer-port", "7481"] : [])
    }

    /// The fleet's core, reachable over pinned TLS from this host.
    static func startCore(
        _ fleet: TestFleet, work: String, extra: [String], clients: ClientList, processes: ProcessList
    ) async throws -> CoreHandle {
        let o = fleet.options
        // Real change control: throwaway approvers sign a real release approval, which the
        // core and every agent check against the trust root they were started with.
        let authority = try ThrowawayAuthority()
        let trustRoot = authority.digest.description
        let coreState = work + "/core"
        try? FileManager.default.removeItem(atPath: coreState)
        processes.add(
            try await DetachedProcess.start(
                "ip",
                [
                    "netns", "exec", fleet.coreNamespace, o.executable, "core", "serve", "--state", coreState,
                    "--listen", "0.0.0.0:\(fleet.port)", "--tls-name", fleet.coreAddress, "--tls-name",
                    try await fleet.managementAddress(), "--trust-root", trustRoot,
                ] + extra,
                log: work + "/core.log"))
        let tokenPath = CoreLayout(directory: coreState).adminToken
        let certificate = CoreLayout(directory: coreState).tls + "/certificate.pem"
        let managementURL = "https://\(try await fleet.managementAddress()):\(fleet.port)"
        _ = try await poll(.seconds(30)) { FileManager.default.isReadableFile(atPath: certificate) }
        let pin = try CorePin.of(certificateFile: certificate)
        // The core may still be starting: the pinned connection is retried until it answers.
        var pinned: HTTPClient?
        let deadline = ContinuousClock.now + .seconds(30)
        while pinned == nil && ContinuousClock.now < deadline {
            pinned = try? await HTTPLink.makeClient(trust: .pin(pin), core: managementURL)
            if pinned == nil { try await Task.sleep(for: .milliseconds(200)) }
        }
        guard let http = pinned else {
            // Once more, so the error says why the core cannot be reached.
            _ = try await HTTPLink.makeClient(trust: .pin(pin), core: managementURL)
            throw ChangelabError("the core did not answer over TLS", fix: "see core.log in the bench folder")
        }
        clients.add(http)
        let admin = try await waitForCore(url: managementURL, tokenPath: tokenPath, http: http)
        return CoreHandle(admin: admin, pin: pin, trustRoot: trustRoot, authority: authority)
    }
}
