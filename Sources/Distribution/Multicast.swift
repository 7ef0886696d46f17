import Foundation
import Model

// Targeted multicast in the engine: per job, each segment's representative pulls the package
// once over the WAN and sends it to the segment's other targets as one NORM file object; the
// receivers verify it against the signed manifest and report it like any other copy. What a
// receiver still lacks afterwards comes from peers on its segment (the representative among
// them), never from the core while a peer holds it.

/// The core's multicast settings (`core serve --multicast-groups`): one group and port per
/// concurrent job, from a configured range; TTL 1, so a group never leaves its segment.
public struct MulticastSettings: Sendable, Equatable {
    /// The first group address of the range (IPv4, host order) and how many groups it holds.
    public var firstGroup: UInt32
    public var groups: Int
    /// Job `i` of the range uses group `firstGroup + i` and port `firstPort + i`.
    public var firstPort: UInt16
    /// Bytes per second a representative sends at when the job sets no rate.
    public var rate: Int64 = 12_500_000
    /// How long a receiver waits for its representative's multicast before it turns to peers.
    public var wait: TimeInterval = 300
    /// How long a representative waits for its receivers to join before it sends anyway
    /// (a receiver that joins late costs repair traffic; one that never joins, peer downloads).
    public var gather: TimeInterval = 30

    /// Parses `239.77.0.0/24` (a block of administratively scoped groups, 239.0.0.0/8) with the
    /// first port; at most 256 groups are used.
    public init(range: String, firstPort: UInt16) throws {
        guard let block = InterfaceAddress(range), block.prefixLength >= 8 else {
            throw ChangelabError(
                "'\(range)' is not a multicast range", fix: "give GROUP/PREFIX, for example 239.77.0.0/24")
        }
        let mask = block.mask
        let first = block.address & mask
        guard first >> 24 == 239, (first | ~mask) >> 24 == 239 else {
            throw ChangelabError(
                "'\(range)' is outside 239.0.0.0/8", why: "jobs use administratively scoped groups only",
                fix: "give a range such as 239.77.0.0/24")
        }
        let count = min(256, Int(~mask) + 1)
        guard firstPort >= 1024, Int(firstPort) + count - 1 <= 65535 else {
            throw ChangelabError(
                "ports \(firstPort)…\(Int(firstPort) + count - 1) do not fit 1024–65535",
                fix: "give --multicast-port between 1024 and \(65536 - count)")
        }
        // Group .0 of a /24 is legal but confusing; skip the range's first address when it has more.
        firstGroup = count > 1 ? first + 1 : first
        groups = count > 1 ? count - 1 : 1
        self.firstPort = firstPort
    }

    public func channel(_ index: Int) -> MulticastChannel {
        MulticastChannel(
            group: InterfaceAddress.text(firstGroup + UInt32(index)), port: firstPort + UInt16(index), index: index)
    }

    public func problems() -> [String] {
        var problems: [String] = []
        if !(rate >= 1000 && rate <= 12_500_000_000) {
            problems.append("--multicast-rate must be 1000 B/s … 100 Gbit/s")
        }
        if !(wait.isFinite && wait >= 1 && wait <= 3600) { problems.append("--multicast-wait must be 1–3600 seconds") }
        if !(gather.isFinite && gather >= 0 && gather <= 600) {
            problems.append("--multicast-gather must be 0–600 seconds")
        }
        return problems
    }
}

/// A job's group and port.
public struct MulticastChannel: Codable, Sendable, Equatable {
    public var group: String
    public var port: UInt16
    /// Its place in the core's range (to hand out the lowest free one).
    public var index: Int
}

/// To a segment's representative, in its role: send the job's package to these receivers.
public struct MulticastSend: Codable, Sendable, Equatable {
    public var group: String
    public var port: UInt16
    /// The representative's own NORM node id, and its receivers' (the acking nodes).
    public var node: UInt32
    public var receivers: [UInt32]
    public var rate: Int64
    /// The receivers whose NORM receiver has joined the group (the core's latest word); the
    /// representative starts once all have, or `gatherSeconds` after it first could.
    public var joined: [UInt32]?
    public var gatherSeconds: Double?
}

/// From a receiver, at check-in: its NORM receiver for this change and epoch is listening.
public struct MulticastJoin: Codable, Sendable, Equatable, Hashable {
    public var change: ChangeID
    public var epoch: UInt64
}

/// To a receiver, in the check-in reply: the job's package comes from `sender` on this group.
public struct MulticastListen: Codable, Sendable, Equatable {
    public var change: ChangeID
    public var subnet: String
    /// The representative's lease epoch: a new one means a new sender.
    public var epoch: UInt64
    public var group: String
    public var port: UInt16
    public var node: UInt32
    public var sender: UInt32
    /// How long to wait for the object before turning to peers.
    public var waitSeconds: Double
}

/// From the representative, at check-in: how its multicast of a job ended.
public struct MulticastReport: Codable, Sendable, Equatable {
    public var change: ChangeID
    public var epoch: UInt64
    public var receivers: Int
    /// Receivers that acknowledged NORM's watermark (not proof of a copy: the receivers' own
    /// verified reports are).
    public var acknowledged: Int
    public var rounds: Int
    public var seconds: Double
    /// The package's size: what one multicast copy puts on the segment, before FEC and repair.
    public var bytes: Int64
    public var error: String?

    public init(
        change: ChangeID, epoch: UInt64, receivers: Int, acknowledged: Int, rounds: Int, seconds: Double,
        bytes: Int64, error: String?
    ) {
        self.change = change
        self.epoch = epoch
        self.receivers = receivers
        self.acknowledged = acknowledged
        self.rounds = rounds
        self.seconds = seconds
        self.bytes = bytes
        self.error = error
    }
}

/// A segment's multicast for one lease epoch, as the core keeps it.
public struct SegmentMulticast: Codable, Sendable, Equatable {
    public var epoch: UInt64
    public var sender: String
    /// The agents the representative was told to send to.
    public var receivers: [String]
    /// The agents whose NORM receiver reported joined for this epoch.
    public var joined: [String]? = nil
    public var plannedAt: Date
    /// The representative's report: once it is in, the segment's receivers stop waiting.
    public var report: MulticastReport?
}

/// `changelab status`: a segment's multicast.
public struct MulticastStatus: Codable, Sendable, Equatable {
    public var sender: String
    public var epoch: UInt64
    public var receivers: Int
    public var acknowledged: Int?
    public var rounds: Int?
    public var seconds: Double?
    public var error: String?
    /// `sending` until the representative reports, then `ended`.
    public var state: String
}

enum MulticastObject {
    /// The NORM object info both ends require: job, epoch and package digest, so an object of
    /// another job, an older representative or another package is refused before it lands.
    static func info(change: ChangeID, epoch: UInt64, digest: SHA256Digest) -> [UInt8] {
        Array("changelab/1 \(change) \(epoch) \(digest.hex)".utf8.prefix(1000))
    }

    /// Generous bound on one send: the package at the rate, three times, plus a minute.
    static func sendTimeout(size: Int64, rate: Int64) -> Duration {
        let seconds = Double(size) / Double(max(1, rate)) * 3 + 60
        return .seconds(min(max(seconds, 10), 6 * 3600))
    }
}

/// NORM node ids of a segment's agents: 32 bits, unique within the segment, stable once given.
enum NormNodeIDs {
    /// Ids for `agents`, keeping those in `existing`; new ones from the agent id's digest,
    /// moved on by one while taken (or 0 / 0xFFFFFFFF, which NORM reserves).
    static func assign(_ agents: [String], existing: [String: UInt32]) -> [String: UInt32] {
        var ids = existing
        var taken = Set(existing.values)
        for agent in agents.sorted() where ids[agent] == nil {
            var id = UInt32(SHA256Digest(of: agent).hex.prefix(8), radix: 16) ?? 1
            while id == 0 || id == .max || taken.contains(id) { id &+= 1 }
            ids[agent] = id
            taken.insert(id)
        }
        return ids
    }
}
