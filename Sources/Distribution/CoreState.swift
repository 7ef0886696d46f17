import Foundation
import Model

/// An enrolled agent as the core knows it.
public struct AgentRecord: Codable, Sendable, Equatable {
    public var id: String
    public var name: String
    public var segment: String
    public var addresses: [String]
    public var attributes: [String: String]
    /// SHA-256 of the agent's secret: the secret itself is never stored.
    public var secretHash: String
    public var revoked: Bool
    public var enrolledAt: Date
    public var lastSeen: Date
    /// The last job this agent refused and why (a forged, misdirected or unsafe job), so an
    /// operator sees an attack even when it names no change the core knows.
    public var lastRefusal: String?
    /// The agent's segment as the core derived it from its addresses (`10.77.1.0/24`); nil for
    /// a protocol 2 agent, which reports no prefix lengths (it gets no peers).
    public var subnet: String?
    /// Its peer server, `http://HOST:PORT` on its segment address; nil when it serves no peers.
    public var peerURL: String?
    /// Bytes its peer server reports having sent other agents since it started.
    public var peerServedBytes: Int64?
    /// The protocol of its last check-in (nil: not checked in since enrolment, or an older core).
    public var protocolVersion: Int?
    /// Its Ethernet MAC addresses, as its last protocol 4 check-in reported them (Wake-on-LAN).
    public var macAddresses: [String]?
    /// Protocol 5: whether the agent takes part in its segment's multicast.
    public var receivesMulticast: Bool?
    /// Start of its current continuous online time (representatives prefer long-running agents).
    public var onlineSince: Date?
    /// When its subnet last changed (it moved): recently moved agents count as roaming.
    public var subnetChangedAt: Date?
}

/// A one-time (or N-time) enrolment token, stored as its hash.
public struct EnrolmentToken: Codable, Sendable, Equatable {
    public var hash: String
    public var usesLeft: Int
    public var expiresAt: Date
}

/// A published release: its manifest, signed once at publication.
public struct ReleaseRecord: Codable, Sendable, Equatable {
    public var manifest: ReleaseManifest
    public var signedManifest: SignedEnvelope
}

/// One activation ring: a share of the targets, activated after the rings before it passed
/// the health gate.
public struct Ring: Codable, Sendable, Equatable {
    public var name: String
    /// Share of all targets up to and including this ring (0…1); the last ring is 1.
    public var share: Double

    public init(name: String, share: Double) {
        self.name = name
        self.share = share
    }

    /// The name of ring `index` (the last ring's for anything past it), safe on any list.
    public static func name(of index: Int, in rings: [Ring]) -> String {
        rings.isEmpty ? "all" : rings[max(0, min(index, rings.count - 1))].name
    }

    /// Parses `canary:5%,pilot:25%,all`; the last ring always covers every target.
    /// The ring plan as `parseList` reads it (`canary:5%,all`): what a release approval's scope names.
    public static func planText(_ rings: [Ring]) -> String {
        rings.map { ring in
            ring.name == "all" && ring.share >= 1 ? "all" : "\(ring.name):\(String(format: "%g", ring.share * 100))%"
        }.joined(separator: ",")
    }

    public static func parseList(_ text: String) throws -> [Ring] {
        var rings: [Ring] = []
        for part in text.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) {
            if part == "all" {
                rings.append(Ring(name: "all", share: 1))
                continue
            }
            let pieces = part.split(separator: ":", maxSplits: 1).map(String.init)
            guard pieces.count == 2, pieces[1].hasSuffix("%"), let percent = Double(pieces[1].dropLast()),
                percent > 0, percent <= 100, !pieces[0].isEmpty
            else {
                throw ChangelabError(
                    "cannot read ring '\(part)' in '\(text)'", fix: "write rings like canary:5%,pilot:25%,all")
            }
            rings.append(Ring(name: pieces[0], share: percent / 100))
        }
        guard !rings.isEmpty, zip(rings, rings.dropFirst()).allSatisfy({ $0.share <= $1.share }) else {
            throw ChangelabError("rings '\(text)' must grow from first to last", fix: "for example canary:5%,all")
        }
        if let last = rings.last, last.share < 1 { rings.append(Ring(name: "all", share: 1)) }
        return rings
    }
}

/// Where one target stands with one change.
public struct TargetRecord: Codable, Sendable, Equatable {
    public var agent: String
    public var phase: TargetPhase
    /// Verified bytes the agent reports holding.
    public var bytes: Int64
    /// Bytes of this release the core sent this agent.
    public var bytesServed: Int64
    public var seedAttempts: Int
    public var activationAttempts: Int
    public var failure: Failure?
    /// Redeploy not before this time (back-off after a failure).
    public var retryAt: Date?
    /// True once the failure is final (attempts exhausted or refused).
    public var gaveUp: Bool
    public var exitCode: Int32?
    public var outputTail: String?
    /// When `phase` is `.failed`: the step that failed (see `TargetRecord.apply`).
    public var failedStep: FailedStep?
    /// The activation ring the target belongs to.
    public var ring: Int
    public var updatedAt: Date
    /// Who delivered the agent's verified copy, as its cache reports it.
    public var source: ByteSource?
    /// Of the verified bytes, how many came from peers on its segment.
    public var bytesFromPeers: Int64?
    /// When the agent started the installer of its last activation (its own clock, for the
    /// engine's fan-out: from `activate` to the last installer start).
    public var installerStartedAt: Double?

    public init(agent: String, ring: Int, at: Date) {
        self.agent = agent
        self.phase = .pending
        self.bytes = 0
        self.bytesServed = 0
        self.seedAttempts = 0
        self.activationAttempts = 0
        self.gaveUp = false
        self.ring = ring
        self.updatedAt = at
    }
}

/// A change being rolled out: one release to the targets a query selected.
public struct Deployment: Codable, Sendable, Equatable {
    public var change: ChangeID
    public var release: String
    public var query: String
    public var rings: [Ring]
    public var rate: Int64?
    /// Health gate: stop before the next ring when a ring's failure share exceeds this.
    public var maxFailureRate: Double
    /// `change` or `policy:NAME`.
    public var origin: String
    public var createdAt: Date
    /// Set by `activate`: the order (each target gets it in a ticket signed for it alone)
    /// and how far through the rings it has gone.
    public var activation: OrderRecord?
    public var activatedAt: Date?
    public var activeRing: Int
    /// Why activation stopped at a ring's health gate.
    public var halted: String?
    public var rollback: OrderRecord?
    public var targets: [String: TargetRecord]
    /// The change's trust root chain, lab evidence and approvals: relayed to every agent
    /// with its activation, and checked by it (nil until promoted or activated with one).
    public var authorization: ChangeAuthorization?
    /// Per segment (subnet): its representative's lease for this job and its Wake-on-LAN
    /// requests and attempts (nil in a state from before representatives).
    public var representatives: [String: SegmentRepresentation]?
    /// The job's multicast group and port (nil: multicast off, or a state from before it).
    public var multicast: MulticastChannel?
}

extension Deployment {
    /// Share of targets holding a verified copy: what the readiness threshold is judged on.
    var seededShare: Double {
        targets.isEmpty ? 0 : Double(targets.values.filter(\.holdsVerifiedCopy).count) / Double(targets.count)
    }
}

/// An activation or rollback order of one deployment: its id goes into every target's
/// signed ticket, so each agent carries it out once.
public struct OrderRecord: Codable, Sendable, Equatable {
    public var id: String
    public var issuedAt: Date

    public init(id: String = "o-" + UUID().uuidString.lowercased(), issuedAt: Date) {
        self.id = id
        self.issuedAt = issuedAt
    }

    /// Also reads the signed order envelope a format-1 core state kept in its place.
    public init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        if let id = try container.decodeIfPresent(String.self, forKey: .id) {
            self.id = id
            self.issuedAt = try container.decode(Date.self, forKey: .issuedAt)
            return
        }
        let envelope = try SignedEnvelope(from: decoder)
        guard let legacy = envelope.unverifiedClaim(LegacyActivationOrder.self) else {
            throw DecodingError.dataCorrupted(
                .init(codingPath: decoder.codingPath, debugDescription: "neither an order nor a format-1 signed order"))
        }
        self.id = legacy.id
        self.issuedAt = legacy.issuedAt
    }

    private enum CodingKeys: String, CodingKey { case id, issuedAt }
}

/// A passive deployment: targets matching `query` must have `release`.
public struct Policy: Codable, Sendable, Equatable {
    public var name: String
    public var query: String
    public var release: String
    public var createdAt: Date
    /// The approved change the policy carries out (nil in a state from before change control).
    public var approvedChange: ChangeID?

    public init(name: String, query: String, release: String, createdAt: Date, change: ChangeID? = nil) {
        self.name = name
        self.query = query
        self.release = release
        self.createdAt = createdAt
        self.approvedChange = change
    }

    public var change: ChangeID { "policy:\(name)" }
}

/// Everything the core keeps, except inventories (stored one file per agent).
public struct CoreSnapshot: Codable, Sendable, Equatable {
    /// 2: per-agent signed job tickets (`OrderRecord`s, typed envelopes). A format-1 state is
    /// read and upgraded when the core starts.
    public static let formatVersion = 2
    public static let readableVersions = 1...2

    public var version: Int = CoreSnapshot.formatVersion
    /// The last job ticket sequence number signed (absent before format 2).
    public var sequence: UInt64?
    /// The release key's rotations, oldest first, each signed by the key it replaced.
    public var keyRotations: [SignedEnvelope]?
    public var agents: [String: AgentRecord] = [:]
    public var tokens: [String: EnrolmentToken] = [:]
    public var releases: [String: ReleaseRecord] = [:]
    public var deployments: [String: Deployment] = [:]
    public var policies: [String: Policy] = [:]
    /// Named operators (nil in a state written before operators existed).
    public var operators: [String: OperatorRecord]? = nil
    /// Who published, promoted, activated, rolled back…, oldest first (bounded).
    public var audit: [AuditEntry]? = nil
    /// The newest change-control trust root a verified chain led to (nil: the one the core
    /// was started with).
    public var trustRoot: SHA256Digest? = nil

    public init() {}
}

/// What an operator may do. Each role includes the ones before it.
public enum OperatorRole: String, Codable, Sendable, CaseIterable, Comparable {
    /// Reads status, agents, releases, the chase list and the live stream.
    case viewer
    /// Also promotes, activates, rolls back and sets policies.
    case deployer
    /// Also publishes releases, creates enrolment tokens, revokes agents and manages operators.
    case admin

    var rank: Int { Self.allCases.firstIndex(of: self) ?? 0 }
    public static func < (lhs: OperatorRole, rhs: OperatorRole) -> Bool { lhs.rank < rhs.rank }
}

/// A named operator: the identity that publishes, promotes, activates and rolls back.
public struct OperatorRecord: Codable, Sendable, Equatable {
    public var name: String
    public var role: OperatorRole
    /// SHA-256 of the operator's token: the token itself is never stored.
    public var tokenHash: String
    public var createdAt: Date
}

/// Who did what to the fleet, kept in the core's state.
public struct AuditEntry: Codable, Sendable, Equatable {
    /// `publish`, `promote`, `activate`, `rollback`, `set-policy`, `remove-policy`, `create-token`,
    /// `revoke`, `add-operator`, `remove-operator`.
    public var action: String
    /// The release, change, agent or operator acted on.
    public var subject: String
    public var operatorName: String
    public var at: Date
}

extension CoreSnapshot {
    /// The snapshot with every number a rollout computes with back in range, so that a value
    /// stored by an older core (which did not validate it) cannot crash this one on every tick.
    func sanitized() -> CoreSnapshot {
        var copy = self
        for (change, deployment) in deployments {
            let rate = deployment.maxFailureRate
            copy.deployments[change]?.maxFailureRate = rate.isFinite ? min(1, max(0, rate)) : 0
            if let r = deployment.rate, r <= 0 { copy.deployments[change]?.rate = nil }
            copy.deployments[change]?.rings = deployment.rings.map { ring in
                Ring(name: ring.name, share: ring.share.isFinite ? min(1, max(0, ring.share)) : 1)
            }
        }
        return copy
    }
}
