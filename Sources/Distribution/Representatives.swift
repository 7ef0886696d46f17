import Foundation

/// What the election knows about one target that could represent its segment for a job.
public struct RepresentativeCandidate: Sendable, Equatable {
    public var agent: String
    /// Start of its current continuous online time (earlier: long-running, preferred).
    public var onlineSince: Date
    /// Seeding or installing for another job now.
    public var busy: Bool
    /// Its subnet changed recently (a laptop moving between offices).
    public var roaming: Bool
    /// Active representative leases it holds for other jobs.
    public var leasesHeld: Int

    public init(agent: String, onlineSince: Date, busy: Bool = false, roaming: Bool = false, leasesHeld: Int = 0) {
        self.agent = agent
        self.onlineSince = onlineSince
        self.busy = busy
        self.roaming = roaming
        self.leasesHeld = leasesHeld
    }
}

/// One segment's representative for one job: the agent that acts for the segment (sends its
/// Wake-on-LAN packets) until `expiresAt`. Renewed by that agent's check-ins; `epoch` grows
/// with every new grant, so an order of a former representative is told apart.
public struct RepresentativeLease: Codable, Sendable, Equatable {
    public var agent: String
    public var epoch: UInt64
    public var grantedAt: Date
    public var expiresAt: Date

    public func isActive(at now: Date) -> Bool { now < expiresAt }
}

/// Picks and keeps representatives. Pure: the coordinator feeds it facts and stores the lease.
public enum RepresentativeElection {
    /// Candidates best first: not roaming, then idle, then the fewest other leases (so the role
    /// spreads across jobs), then the longest continuous online time, then by id (stable).
    public static func rank(_ candidates: [RepresentativeCandidate]) -> [RepresentativeCandidate] {
        candidates.sorted { a, b in
            if a.roaming != b.roaming { return !a.roaming }
            if a.busy != b.busy { return !a.busy }
            if a.leasesHeld != b.leasesHeld { return a.leasesHeld < b.leasesHeld }
            if a.onlineSince != b.onlineSince { return a.onlineSince < b.onlineSince }
            return a.agent < b.agent
        }
    }

    /// The one transition of a segment's lease for a job.
    ///
    /// - An active lease stays with its holder until it expires, whoever else is online (so a
    ///   segment never has two representatives for one job); the holder's check-in
    ///   (`renewing` == holder) extends it to `now + duration`.
    /// - An expired lease, or none, goes to the best candidate with the next epoch; nil when
    ///   there is no candidate (no online target on the segment).
    /// - When the job no longer needs a representative on the segment (`needed` false) the
    ///   lease ends.
    public static func next(
        current: RepresentativeLease?, lastEpoch: UInt64, candidates: [RepresentativeCandidate], renewing: String?,
        needed: Bool, now: Date, duration: TimeInterval
    ) -> RepresentativeLease? {
        guard needed else { return nil }
        if var lease = current, lease.isActive(at: now) {
            if renewing == lease.agent { lease.expiresAt = max(lease.expiresAt, now.addingTimeInterval(duration)) }
            return lease
        }
        guard let best = rank(candidates).first else { return nil }
        return RepresentativeLease(
            agent: best.agent, epoch: max(lastEpoch, current?.epoch ?? 0) &+ 1, grantedAt: now,
            expiresAt: now.addingTimeInterval(duration))
    }
}

/// A request to wake a segment's offline targets, made before seeding or activation and
/// carried out by whichever agent represents the segment when it next checks in.
public struct WakeRequest: Codable, Sendable, Equatable {
    public var id: String
    /// `seed` or `activate`: what the targets are woken for.
    public var purpose: String
    /// The offline targets and the MAC addresses they reported.
    public var targets: [WakeTarget]
    public var requestedAt: Date
}

public struct WakeTarget: Codable, Sendable, Equatable {
    public var agent: String
    public var macAddresses: [String]
}

/// A magic packet a representative reports having sent (or failed to send) for a target.
public struct WakeAttempt: Codable, Sendable, Equatable {
    public var request: String
    public var target: String
    /// The representative that sent it, and its lease's epoch.
    public var by: String
    public var epoch: UInt64
    public var packets: Int
    /// Why sending failed (nil: sent).
    public var error: String?
    public var at: Date
}

/// Per job and segment (subnet): the lease, the highest epoch granted, the wake request
/// waiting for a representative, and the wake attempts made.
public struct SegmentRepresentation: Codable, Sendable, Equatable {
    /// Kept per segment and job; older attempts are dropped.
    static let maxAttempts = 64

    public var subnet: String
    public var lease: RepresentativeLease?
    public var epoch: UInt64 = 0
    public var pendingWake: WakeRequest?
    public var wakeAttempts: [WakeAttempt] = []
    /// The segment's NORM node ids (agent id → node), stable once given.
    public var nodes: [String: UInt32]?
    /// The multicast of the current (or last) lease epoch.
    public var multicast: SegmentMulticast?

    public init(subnet: String) {
        self.subnet = subnet
    }

    /// Records what the representative reports for the pending request; true when it was taken
    /// (from the current holder, for the pending request, with its epoch).
    mutating func take(_ report: WakeReport, from agent: String, at now: Date) -> Bool {
        guard let lease, lease.agent == agent, lease.epoch == report.epoch, let request = pendingWake,
            request.id == report.request
        else { return false }
        for target in request.targets {
            wakeAttempts.append(
                WakeAttempt(
                    request: request.id, target: target.agent, by: agent, epoch: lease.epoch,
                    packets: report.error == nil ? target.macAddresses.count : 0, error: report.error, at: now))
        }
        if wakeAttempts.count > Self.maxAttempts { wakeAttempts.removeFirst(wakeAttempts.count - Self.maxAttempts) }
        pendingWake = nil
        return true
    }
}

// MARK: Wire (protocol 4)

/// Protocol 4, in a check-in reply: this agent represents `subnet` for `change`'s job.
public struct RepresentativeRole: Codable, Sendable, Equatable {
    public var change: ChangeID
    public var subnet: String
    public var epoch: UInt64
    /// Seconds the lease has left (relative, so the agent's clock does not matter).
    public var leaseSeconds: Double
    /// Offline targets of the segment to wake now.
    public var wake: WakeOrder?
    /// Protocol 5: send the job's package to the segment by multicast once it is verified here.
    public var multicast: MulticastSend?
}

public struct WakeOrder: Codable, Sendable, Equatable {
    public var request: String
    public var macAddresses: [String]
}

/// Protocol 4, in a check-in: what the agent did with a wake order.
public struct WakeReport: Codable, Sendable, Equatable {
    public var change: ChangeID
    public var request: String
    public var epoch: UInt64
    /// Magic packets sent.
    public var packets: Int
    public var error: String?
}

/// `changelab status`: one segment's representative for the change and its wake attempts.
public struct RepresentativeStatus: Codable, Sendable, Equatable {
    public var segment: String
    public var subnet: String
    /// The representative's name and id (nil: none).
    public var representative: String?
    public var agent: String?
    public var epoch: UInt64
    public var leaseExpiresAt: Date?
    public var offlineTargets: Int
    /// Wake requests not yet carried out (waiting for a representative).
    public var wakePending: Int
    public var wakeAttempts: [WakeAttemptStatus]
    /// Why there is no representative, when there is none.
    public var note: String?
    /// The segment's multicast (nil: none planned).
    public var multicast: MulticastStatus?
}

public struct WakeAttemptStatus: Codable, Sendable, Equatable {
    public var target: String
    public var by: String
    public var packets: Int
    public var error: String?
    public var at: Date
}
