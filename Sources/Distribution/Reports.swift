import Foundation
import Model

/// One segment's (or the whole change's) counts for `changelab status`.
///
/// Counts are cumulative: a target that is activated is also counted as seeded and verified.
public struct SegmentStatus: Codable, Sendable, Equatable {
    public var segment: String
    public var targets = 0
    public var seeded = 0
    public var verified = 0
    public var activated = 0
    public var failed = 0
    public var offline = 0
    public var rolledBack = 0
    /// Bytes the core sent for this change (counted as they leave the core).
    public var bytesSent: Int64 = 0
    /// Verified bytes the agents report holding.
    public var bytesVerified: Int64 = 0
    /// Of the verified bytes, those peers on the segment delivered (as the agents report).
    public var bytesFromPeers: Int64 = 0
    /// Targets whose verified copy came from peers alone, from the core alone, from both.
    public var servedByPeers = 0
    public var servedByCore = 0
    public var servedByBoth = 0
    /// Targets whose verified copy came whole from their representative's multicast.
    public var servedByMulticast: Int? = 0

    public init(segment: String) {
        self.segment = segment
    }

    mutating func add(_ other: SegmentStatus) {
        targets += other.targets
        seeded += other.seeded
        verified += other.verified
        activated += other.activated
        failed += other.failed
        offline += other.offline
        rolledBack += other.rolledBack
        bytesSent += other.bytesSent
        bytesVerified += other.bytesVerified
        bytesFromPeers += other.bytesFromPeers
        servedByPeers += other.servedByPeers
        servedByCore += other.servedByCore
        servedByBoth += other.servedByBoth
        servedByMulticast = (servedByMulticast ?? 0) + (other.servedByMulticast ?? 0)
    }

    mutating func count(_ source: ByteSource?) {
        switch source {
        case .peer: servedByPeers += 1
        case .core: servedByCore += 1
        case .mixed: servedByBoth += 1
        case .multicast: servedByMulticast = (servedByMulticast ?? 0) + 1
        case nil: break
        }
    }
}

/// `changelab status CHG`: the change's progress per segment.
public struct StatusReport: Codable, Sendable, Equatable {
    public var change: ChangeID
    public var release: String
    public var origin: String
    public var query: String
    public var packageBytes: Int64
    public var rings: [Ring]
    public var activationRequested: Bool
    public var activeRing: Int
    public var halted: String?
    public var rollbackRequested: Bool
    public var segments: [SegmentStatus]
    public var total: SegmentStatus
    /// Per target, who delivered its copy (targets still without a verified copy are left out).
    public var sources: [TargetSource]? = nil
    /// Per segment (subnet): the representative for this change and its Wake-on-LAN attempts.
    public var representatives: [RepresentativeStatus]? = nil
    /// The job's multicast group and port (nil: the core runs without multicast).
    public var multicast: MulticastChannel? = nil
    /// The latest installer start any target reported for its activation (agents' clocks,
    /// seconds since 1970).
    public var lastInstallerStartAt: Double? = nil
}

/// Who served one target its package: peers on its segment, the core, or both.
public struct TargetSource: Codable, Sendable, Equatable {
    public var name: String
    public var segment: String
    public var subnet: String?
    public var source: ByteSource
    public var bytesFromPeers: Int64
    /// Bytes the core counted sending this target.
    public var bytesFromCore: Int64
}

/// One line of the chase list: a target that does not have the change yet, and why.
public struct ChaseEntry: Codable, Sendable, Equatable {
    public var agent: String
    public var name: String
    public var segment: String
    public var site: String
    public var department: String
    public var phase: TargetPhase
    /// The classified reason ("offline", "installer exit code 3", …) or the step still running.
    public var reason: String
    public var detail: String
    public var exitCode: Int32?
    public var seedAttempts: Int
    public var activationAttempts: Int
    public var lastSeen: Date
    public var nextRetry: Date?
    public var gaveUp: Bool

    static let csvHeader =
        "agent,name,segment,site,department,phase,reason,detail,exit_code,seed_attempts,activation_attempts,last_seen,next_retry,gave_up"

    var csvLine: String {
        let iso = ISO8601DateFormatter()
        let fields = [
            agent, name, segment, site, department, phase.rawValue, reason, detail,
            exitCode.map(String.init) ?? "", String(seedAttempts), String(activationAttempts),
            iso.string(from: lastSeen), nextRetry.map { iso.string(from: $0) } ?? "", gaveUp ? "yes" : "no",
        ]
        return fields.map(Self.csvField).joined(separator: ",")
    }

    /// RFC 4180 quoting: fields with commas, quotes or line breaks are quoted, quotes doubled.
    static func csvField(_ text: String) -> String {
        guard text.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" || $0 == "\r" }) else { return text }
        return "\"" + text.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }

    public static func csv(_ entries: [ChaseEntry]) -> String {
        ([csvHeader] + entries.map(\.csvLine)).joined(separator: "\n") + "\n"
    }
}

/// A summary of an agent for `changelab core agents`.
public struct AgentSummary: Codable, Sendable, Equatable {
    public var id: String
    public var name: String
    public var segment: String
    public var attributes: [String: String]
    public var addresses: [String]
    public var revoked: Bool
    public var online: Bool
    public var lastSeen: Date
    /// The MAC addresses it reported (protocol 4), for Wake-on-LAN.
    public var macAddresses: [String]? = nil
    /// Bytes its peer server has sent other agents since it started (its last check-in's word).
    public var peerServedBytes: Int64? = nil
}

/// Text renderings for the terminal.
public enum StatusText {
    /// `[██████░░░░]  60%`
    public static func bar(_ done: Int, of total: Int, width: Int = 24) -> String {
        guard total > 0 else { return "[" + String(repeating: "░", count: width) + "]   -" }
        let filled = min(width, done * width / total)
        let percent = done * 100 / total
        return "[" + String(repeating: "█", count: filled) + String(repeating: "░", count: width - filled) + "] "
            + String(repeating: " ", count: max(0, 3 - String(percent).count)) + "\(percent)%"
    }

    public static func bytes(_ n: Int64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var value = Double(n)
        var unit = 0
        while value >= 1024, unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        return unit == 0 ? "\(n) B" : String(format: "%.1f %@", value, units[unit])
    }

    public static func render(_ report: StatusReport) -> String {
        var lines: [String] = []
        let state: String
        if report.rollbackRequested {
            state = "rolling back"
        } else if let halted = report.halted {
            state = "HALTED: \(halted)"
        } else if report.activationRequested && report.total.activated == report.total.targets {
            state = "activated on every target"
        } else if report.activationRequested {
            state =
                "activating (ring \(report.activeRing + 1)/\(report.rings.count): \(Ring.name(of: report.activeRing, in: report.rings)))"
        } else if report.total.verified == report.total.targets {
            state = "seeded on every target; activate with 'changelab activate \(report.change)'"
        } else {
            state = "seeding"
        }
        lines.append(
            "change \(report.change)  release \(report.release) (\(bytes(report.packageBytes)))  targets: \(report.query)"
        )
        lines.append("state: \(state)")
        if let m = report.multicast {
            let whole = report.total.servedByMulticast ?? 0
            lines.append("multicast: \(m.group):\(m.port), \(whole) target(s) served whole by their segment's multicast")
        }
        lines.append(
            "seeded    \(bar(report.total.seeded, of: report.total.targets))  \(report.total.seeded)/\(report.total.targets)"
        )
        lines.append(
            "activated \(bar(report.total.activated, of: report.total.targets))  \(report.total.activated)/\(report.total.targets)"
        )
        lines.append("")
        let header = [
            "segment", "targets", "seeded", "verified", "activated", "failed", "offline", "bytes sent", "from peers",
        ]
        var rows = report.segments.map { s in
            [
                s.segment, "\(s.targets)", "\(s.seeded)", "\(s.verified)", "\(s.activated)", "\(s.failed)",
                "\(s.offline)",
                bytes(s.bytesSent), bytes(s.bytesFromPeers),
            ]
        }
        let t = report.total
        rows.append([
            "total", "\(t.targets)", "\(t.seeded)", "\(t.verified)", "\(t.activated)", "\(t.failed)",
            "\(t.offline)", bytes(t.bytesSent), bytes(t.bytesFromPeers),
        ])
        lines.append(contentsOf: table(header: header, rows: rows))
        if let sources = report.sources, !sources.isEmpty {
            lines.append("")
            lines.append(
                contentsOf: table(
                    header: ["target", "segment", "subnet", "served by", "from peers", "from core"],
                    rows: sources.map { t in
                        [
                            t.name, t.segment, t.subnet ?? "-", t.source == .mixed ? "peers+core" : t.source.rawValue,
                            bytes(t.bytesFromPeers), bytes(t.bytesFromCore),
                        ]
                    }))
        }
        if let representatives = report.representatives, !representatives.isEmpty {
            lines.append("")
            lines.append(
                contentsOf: table(
                    header: ["segment", "subnet", "representative", "lease", "offline", "wake", "multicast"],
                    rows: representatives.map(representativeRow)))
        }
        return lines.joined(separator: "\n")
    }

    /// `office  10.77.1.0/24  s1-h1 (epoch 2)  until 18:40:07  1  sent 1 (s1-h2 by s1-h1)`.
    static func representativeRow(_ r: RepresentativeStatus) -> [String] {
        let time = DateFormatter()
        time.dateFormat = "HH:mm:ss"
        time.timeZone = TimeZone(identifier: "UTC")
        let sent = r.wakeAttempts.filter { $0.error == nil }
        let failed = r.wakeAttempts.count - sent.count
        var wake = r.wakeAttempts.isEmpty ? "none" : "sent \(sent.count)"
        if let last = r.wakeAttempts.last { wake += " (last: \(last.target) by \(last.by))" }
        if failed > 0 { wake += ", \(failed) failed" }
        if r.wakePending > 0 { wake += ", \(r.wakePending) waiting" }
        return [
            r.segment, r.subnet, r.representative.map { "\($0) (epoch \(r.epoch))" } ?? "none: \(r.note ?? "all done")",
            r.leaseExpiresAt.map { "until \(time.string(from: $0)) UTC" } ?? "-", "\(r.offlineTargets)", wake,
            multicastCell(r.multicast),
        ]
    }

    /// `ended: 9/9 acknowledged, 1 round, 4.2 s (by s1-h1)`, `sending to 9 (by s1-h1)`, `-`.
    static func multicastCell(_ m: MulticastStatus?) -> String {
        guard let m else { return "-" }
        guard m.state == "ended" else { return "sending to \(m.receivers) (by \(m.sender))" }
        if let error = m.error { return "failed: \(error.prefix(40)) (by \(m.sender))" }
        let rounds = m.rounds ?? 0
        return "ended: \(m.acknowledged ?? 0)/\(m.receivers) acknowledged, \(rounds) round\(rounds == 1 ? "" : "s"), "
            + String(format: "%.1f s", m.seconds ?? 0) + " (by \(m.sender))"
    }

    public static func render(chase entries: [ChaseEntry]) -> String {
        guard !entries.isEmpty else { return "nothing to chase: every target has the change" }
        let header = ["name", "segment", "phase", "reason", "attempts", "detail"]
        let rows = entries.map { e in
            [
                e.name, e.segment, e.phase.rawValue, e.reason + (e.gaveUp ? " (gave up)" : ""),
                "seed \(e.seedAttempts), activate \(e.activationAttempts)",
                String(e.detail.split(separator: "\n").last ?? "").prefix(60).description,
            ]
        }
        return table(header: header, rows: rows).joined(separator: "\n")
    }

    static func table(header: [String], rows: [[String]]) -> [String] {
        var widths = header.map(\.count)
        for row in rows {
            for (i, cell) in row.enumerated() where i < widths.count { widths[i] = max(widths[i], cell.count) }
        }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { i, c in c.padding(toLength: widths[i], withPad: " ", startingAt: 0) }
                .joined(separator: "  ").trimmingCharacters(in: .whitespaces)
        }
        return [line(header)] + rows.map(line)
    }
}

extension ChaseEntry {
    /// The reason of a target that is still installing, or whose ring has not started.
    public static let inProgress = "in progress"
    public static let waitingForRing = "waiting for its ring"

    /// On its way rather than stuck: nothing to chase yet.
    public var isPending: Bool { reason == Self.inProgress || reason == Self.waitingForRing }
}
