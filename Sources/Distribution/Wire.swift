import Foundation
import Model

// The messages agents and the core exchange over HTTP (JSON, StableJSON dialect).

/// How far one target is with one change. Phases only move forward, except that a failure
/// sends a target back for a retry and a rollback ends in `rolledBack`.
public enum TargetPhase: String, Codable, Sendable, CaseIterable, Comparable {
    case pending, seeding, seeded, verified, activating, activated, failed, rolledBack

    var rank: Int { Self.allCases.firstIndex(of: self) ?? 0 }
    public static func < (lhs: TargetPhase, rhs: TargetPhase) -> Bool { lhs.rank < rhs.rank }
}

/// Why a target did not get a change: the chase list's classification.
public enum FailureReason: String, Codable, Sendable, CaseIterable {
    case offline
    case downloadFailed = "download-failed"
    case hashMismatch = "hash-mismatch"
    case prerequisiteNotMet = "prerequisite-not-met"
    case installerExit = "installer-exit"
    case installerTimeout = "installer-timeout"
    case diskFull = "disk-full"
    /// A manifest or activation order whose signature did not verify.
    case untrusted
    case rollbackFailed = "rollback-failed"
    /// An activation that would install an older version than this agent already installed.
    case downgrade = "downgrade-refused"
    /// An activation without the change-control approvals and lab evidence the agent's
    /// trust root requires (below threshold, unknown keys, wrong digest or scope, none sent).
    case notApproved = "not-approved"
    /// The lab's evidence has no green cell on this target's baseline.
    case baselineNotTested = "baseline-not-tested"

    /// Trying again changes nothing: the target goes to the chase list at once.
    public var isFinal: Bool { [.downgrade, .notApproved, .baselineNotTested].contains(self) }
}

/// A classified failure with what a person needs to chase it (thrown where a step refuses).
public struct Failure: Codable, Sendable, Equatable, Error {
    public var reason: FailureReason
    public var detail: String
    public var exitCode: Int32?
    public var at: Date

    public init(reason: FailureReason, detail: String, exitCode: Int32? = nil, at: Date = Date()) {
        self.reason = reason
        self.detail = detail
        self.exitCode = exitCode
        self.at = at
    }

    /// The chase list's words: "installer exit code 3", "disk full", …
    public var summary: String {
        switch reason {
        case .offline: return "offline"
        case .downloadFailed: return "download failed"
        case .hashMismatch: return "hash mismatch"
        case .prerequisiteNotMet: return "prerequisite not met"
        case .installerExit: return "installer exit code \(exitCode.map(String.init) ?? "?")"
        case .installerTimeout: return "installer timed out"
        case .diskFull: return "disk full"
        case .untrusted: return "refused unsigned or forged document"
        case .rollbackFailed: return "rollback failed"
        case .downgrade: return "downgrade refused"
        case .notApproved: return "not approved"
        case .baselineNotTested: return "baseline not tested"
        }
    }
}

public struct EnrolRequest: Codable, Sendable {
    /// `WireProtocol.version` of the agent (absent: protocol 1).
    public var protocolVersion: Int?
    public var token: String
    public var name: String
    public var segment: String
    public var addresses: [String]
    public var attributes: [String: String]

    public init(
        protocolVersion: Int? = WireProtocol.version, token: String, name: String, segment: String,
        addresses: [String], attributes: [String: String]
    ) {
        self.protocolVersion = protocolVersion
        self.token = token
        self.name = name
        self.segment = segment
        self.addresses = addresses
        self.attributes = attributes
    }
}

public struct EnrolReply: Codable, Sendable {
    public var agent: String
    public var secret: String
}

/// What an agent holds for one change, sent at every check-in so the core can rebuild its
/// view after a restart (the agent's cache is the truth about bytes on the agent).
public struct CacheReport: Codable, Sendable, Equatable {
    public var change: String
    public var release: String
    public var phase: TargetPhase
    public var bytes: Int64
    /// Protocol 3: where the verified bytes came from (nil while nothing verified).
    public var source: ByteSource?
    /// Protocol 3: of the bytes, how many came from peers.
    public var bytesFromPeers: Int64?

    public init(
        change: String, release: String, phase: TargetPhase, bytes: Int64, source: ByteSource? = nil,
        bytesFromPeers: Int64? = nil
    ) {
        self.change = change
        self.release = release
        self.phase = phase
        self.bytes = bytes
        self.source = source
        self.bytesFromPeers = bytesFromPeers
    }
}

/// Who delivered a cached package's bytes: peers on the agent's segment, the core (or its
/// mirror), or both (a download that switched to the core part-way).
public enum ByteSource: String, Codable, Sendable {
    case peer, core, mixed
    /// Protocol 5: the representative's multicast on the segment, whole and verified.
    case multicast
}

/// The peers on the asking agent's own segment that hold a verified copy of a package.
public struct PeerList: Codable, Sendable, Equatable {
    public var digest: SHA256Digest
    /// The asker's segment (its subnet), as the core derived it.
    public var subnet: String?
    public var peers: [PeerLocation]

    public init(digest: SHA256Digest, subnet: String?, peers: [PeerLocation]) {
        self.digest = digest
        self.subnet = subnet
        self.peers = peers
    }
}

public struct PeerLocation: Codable, Sendable, Equatable {
    /// The peer's agent id (to avoid a peer that served bad bytes for the rest of a job).
    public var agent: String
    /// `http://HOST:PORT`, the host its address on the segment.
    public var url: String
}

/// The peer route of a package on an agent's peer server.
public func peerPath(_ digest: SHA256Digest) -> String { "/v1/peer/sha256/\(digest.hex)" }

public struct CheckIn: Codable, Sendable {
    /// `WireProtocol.version` of the agent (absent: protocol 1).
    public var protocolVersion: Int?
    public var name: String
    public var segment: String
    public var addresses: [String]
    public var attributes: [String: String]
    /// The whole inventory, sent only when it changed since the core last acknowledged it.
    public var inventory: InventorySnapshot?
    /// Digest of the agent's current inventory (always sent).
    public var inventoryDigest: String
    public var cache: [CacheReport]
    /// Protocol 3: the port of the agent's peer server (nil: it serves no peers).
    public var peerPort: Int?
    /// Protocol 3: bytes its peer server sent other agents since it started.
    public var peerServedBytes: Int64?
    /// Protocol 4: the host's Ethernet MAC addresses (`52:54:00:ab:cd:ef`), for Wake-on-LAN.
    public var macAddresses: [String]?
    /// Protocol 4: what the agent did with the wake orders of its representative roles.
    public var wakeReports: [WakeReport]?
    /// Protocol 5: the agent receives its segment's multicast (off: `agent run --no-multicast`).
    public var receivesMulticast: Bool?
    /// Protocol 5: how the multicasts it sent as representative ended.
    public var multicastReports: [MulticastReport]?
    /// Protocol 5: the multicasts this agent's NORM receiver has joined now (the
    /// representative sends once its receivers have joined, or after a bounded wait).
    public var multicastJoined: [MulticastJoin]?

    public init(
        name: String, segment: String, addresses: [String], attributes: [String: String],
        inventory: InventorySnapshot?, inventoryDigest: String, cache: [CacheReport], peerPort: Int? = nil,
        peerServedBytes: Int64? = nil, macAddresses: [String]? = nil, wakeReports: [WakeReport]? = nil,
        receivesMulticast: Bool? = nil, multicastReports: [MulticastReport]? = nil,
        multicastJoined: [MulticastJoin]? = nil
    ) {
        self.multicastJoined = multicastJoined
        self.receivesMulticast = receivesMulticast
        self.multicastReports = multicastReports
        self.peerPort = peerPort
        self.peerServedBytes = peerServedBytes
        self.macAddresses = macAddresses
        self.wakeReports = wakeReports
        self.protocolVersion = WireProtocol.version
        self.name = name
        self.segment = segment
        self.addresses = addresses
        self.attributes = attributes
        self.inventory = inventory
        self.inventoryDigest = inventoryDigest
        self.cache = cache
    }
}

extension InventorySnapshot {
    /// SHA-256 of the snapshot's stable JSON: equal inventories have equal digests.
    public var digest: String {
        ((try? StableJSON.data(self.normalized())).map { SHA256Digest(of: $0) } ?? SHA256Digest(of: Data())).hex
    }
}

public enum JobKind: String, Codable, Sendable { case seed, activate, rollback }

/// What the core tells one agent to do, signed as a whole with the core's release key.
///
/// Everything an agent acts on is in here, bound to the agent it is for, numbered and short
/// lived: a job captured on one agent (or on the wire) cannot be replayed on another, after
/// its expiry, or after a newer order for the same change; the agent's ledger (outside its
/// cache) remembers which orders it carried out.
public struct JobTicket: Codable, Sendable, Equatable {
    /// How long a ticket is good for: the core signs a fresh one at every hand-out.
    public static let lifetime: TimeInterval = 3600

    public var kind: JobKind
    public var change: ChangeID
    public var release: String
    /// The package the job is about: it must be the digest of the signed manifest.
    public var digest: SHA256Digest
    /// The core-issued id of the one agent this job is for.
    public var agent: String
    /// Increases with every ticket the core signs.
    public var sequence: UInt64
    /// For activate and rollback: the order this carries out (the same for every re-send and
    /// retry of one `activate` or `rollback`), so an agent runs each order once.
    public var order: String?
    /// `change` for a promoted change, `policy:NAME` for passive deployment.
    public var origin: String
    /// Throttle for seeding, bytes per second (nil: unthrottled).
    public var rate: Int64?
    /// Seeding on a segment served by multicast: wait for the representative's multicast (or,
    /// as representative, pull from the core) instead of downloading at once.
    public var multicast: Bool?
    /// 1 for the first try, more for redeploys.
    public var attempt: Int
    public var issuedAt: Date
    public var expiresAt: Date

    public init(
        kind: JobKind, change: ChangeID, release: String, digest: SHA256Digest, agent: String, sequence: UInt64,
        order: String?, origin: String, rate: Int64?, attempt: Int, issuedAt: Date,
        lifetime: TimeInterval = JobTicket.lifetime
    ) {
        self.kind = kind
        self.change = change
        self.release = release
        self.digest = digest
        self.agent = agent
        self.sequence = sequence
        self.order = order
        self.origin = origin
        self.rate = rate
        self.attempt = attempt
        self.issuedAt = issuedAt
        self.expiresAt = issuedAt.addingTimeInterval(lifetime)
    }
}

/// Work the core hands an agent (at check-in or pushed on the agent's stream): the signed
/// ticket and the release's signed manifest. Nothing outside the two signatures travels.
public struct Job: Codable, Sendable, Equatable {
    /// A `JobTicket`, signed by the core.
    public var ticket: SignedEnvelope
    /// The release manifest, signed by the core.
    public var manifest: SignedEnvelope
    /// Activation only: the change's trust root chain, the lab's evidence and the approvers'
    /// signatures. The core relays them; the agent checks them against its own pinned root.
    public var authorization: ChangeAuthorization?

    public init(ticket: SignedEnvelope, manifest: SignedEnvelope, authorization: ChangeAuthorization? = nil) {
        self.ticket = ticket
        self.manifest = manifest
        self.authorization = authorization
    }

    /// What the ticket claims, unverified: only to name a refused job in a report.
    public var claim: JobTicket? { ticket.unverifiedClaim(JobTicket.self) }
}

/// The artifact route of a package: `/v1/artifacts/sha256/<hex>` on the artifact base URL.
public func artifactPath(_ digest: SHA256Digest) -> String { "/v1/artifacts/sha256/\(digest.hex)" }

/// The wire protocol agents and the core speak; the core refuses agents of another one.
public enum WireProtocol {
    /// 2: signed per-agent job tickets, typed envelopes, key rotation.
    /// 3: interface addresses with prefix lengths (the segment is the subnet), peer download.
    /// 4: MAC addresses and wake reports at check-in, representative roles in the reply.
    /// 5: targeted multicast: send orders in roles, listen orders in the reply, reports.
    public static let version = 5
    /// Protocols the core still serves: a protocol 2 agent sends bare addresses, so the core
    /// knows no subnet for it and it gets no peers (it downloads from the core as before); a
    /// protocol 3 agent reports no MAC address and is never made a representative (it would
    /// not understand the role), so it can neither be woken nor wake others.
    public static let supported = 2...5

    /// The refusal an agent of an unsupported protocol gets.
    public static func refusal(_ sent: Int?) -> String? {
        let spoken = sent ?? 1
        guard !supported.contains(spoken) else { return nil }
        return "this agent speaks changelab protocol \(spoken), the core speaks \(supported.lowerBound)–\(version): upgrade changelab on the agent"
    }

    /// Whether an agent of protocol `sent` reports addresses with prefix lengths.
    public static func sendsPrefixes(_ sent: Int?) -> Bool { (sent ?? 1) >= 3 }

    /// Whether an agent of protocol `sent` understands representative roles and wake orders.
    public static func takesRoles(_ sent: Int?) -> Bool { (sent ?? 1) >= 4 }

    /// Whether an agent of protocol `sent` sends and receives its segment's multicast.
    public static func takesMulticast(_ sent: Int?) -> Bool { (sent ?? 1) >= 5 }
}

public struct CheckInReply: Codable, Sendable {
    public var jobs: [Job]
    /// Seconds until the next check-in.
    public var checkInAfter: Double
    /// The core does not hold the inventory with the digest the agent sent: send it whole.
    public var sendInventory: Bool?
    /// The core's release key rotations, oldest first: each signed by the key it replaces.
    public var keyRotations: [SignedEnvelope]?
    /// Protocol 4: the jobs for which this agent represents its segment (nil: none).
    public var representing: [RepresentativeRole]?
    /// Protocol 5: the jobs whose package this agent receives by its segment's multicast.
    public var multicast: [MulticastListen]?
}

public enum AgentEventKind: String, Codable, Sendable {
    case progress, seeded, verified, activating, activated, rolledBack = "rolled-back", failed, refused
    /// A fresh inventory (sent right after an activation or rollback result).
    case inventory
}

/// A status event from an agent about one change.
public struct AgentEvent: Codable, Sendable {
    public var change: String
    public var release: String
    public var kind: AgentEventKind
    /// Verified bytes in the agent's cache.
    public var bytes: Int64?
    public var failure: Failure?
    /// For activation results: exit code and the tail of the installer's output.
    public var exitCode: Int32?
    public var outputTail: String?
    /// After an activation or rollback: the agent's inventory.
    public var inventory: InventorySnapshot?
    public var at: Date
    /// Protocol 5, for activation and rollback results: when the installer started (the
    /// agent's clock, seconds since 1970 with a fraction: JSON dates here carry whole seconds),
    /// so the engine's fan-out is measured apart from dpkg's own time.
    public var installerStartedAt: Double?

    public init(
        change: String, release: String, kind: AgentEventKind, bytes: Int64? = nil, failure: Failure? = nil,
        exitCode: Int32? = nil, outputTail: String? = nil, inventory: InventorySnapshot? = nil, at: Date = Date()
    ) {
        self.change = change
        self.release = release
        self.kind = kind
        self.bytes = bytes
        self.failure = failure
        self.exitCode = exitCode
        self.outputTail = outputTail
        self.inventory = inventory
        self.at = at
    }
}

/// A change id: until change control lands, a plain release name; `policy:NAME` for
/// deployments a policy created.
public typealias ChangeID = String
