import CMDB
import Foundation
import Model

/// The post-deployment review of one change: targets reached, failure rate, the chase list,
/// time in each phase, lab escapes and the close code, as Markdown and self-contained HTML.
///
/// Field outcomes come from what the targets reported to the CMDB: a target is reached when
/// its last inventory holds the change's package at the change's version.
public struct ChangeReview: Encodable, Sendable {
    public struct TargetOutcome: Codable, Sendable, Equatable {
        public var name: String
        public var baseline: String?
        public var reached: Bool
        /// Why not, for the chase list.
        public var reason: String?
        /// The lab passed this target's baseline but the target failed: a lab escape.
        public var labEscape: Bool
    }

    public struct Phase: Codable, Sendable, Equatable {
        public var dimension: String
        public var state: String
        public var seconds: Double
    }

    public var change: String
    public var title: String
    public var package: String
    public var version: String?
    public var artifact: String?
    public var targets: [TargetOutcome]
    public var reached: Int
    public var failureRate: Double?
    public var chaseList: [TargetOutcome]
    public var labEscapes: [String]
    public var phases: [Phase]
    public var plannedBytes: Int64?
    /// The impact assessment's unicast cost (size × targets): what today's engine sends.
    public var plannedUnicastBytes: Int64?
    /// What the core sent, as last reported to the change (nil when never followed up).
    public var bytesSent: Int64?
    /// Every target that was on the chase list during the delivery, and what became of it.
    public var chaseHistory: [DeliveryFollowUp.ChaseItem]
    public var closeCode: CloseCode
    public var lessons: String?
    public var recommendations: String?
    public var reviewedAt: Date

    /// Reviews `change` from the CMDB's targets and the change's own history.
    public init(
        _ change: ChangeRecord, store: ChangeStore, lessons: String?, recommendations: String?, code: CloseCode?, at date: Date
    ) throws {
        self.change = change.id
        title = change.title
        package = change.package
        version = change.version
        artifact = change.artifact?.description
        self.lessons = lessons
        self.recommendations = recommendations
        reviewedAt = date
        plannedBytes = change.impact?.seededBytes
        plannedUnicastBytes = change.impact?.unicastBytes
        bytesSent = change.followUp?.bytesSent
        chaseHistory = change.followUp?.chase ?? []
        let gate = try store.gate(for: change)
        let green = Set((gate?.grid ?? []).filter { $0.status == "green" && $0.lane == "install" }.map(\.baseline))
        let scoped = try ScopedTargets(query: change.scope.targets, store: store.store)
        targets = scoped.targets.map { target in
            let baseline = ScopedTargets.baseline(of: target)?.name
            var reason: String?
            if let digest = target.inventory, let inventory = try? store.store.inventory(digest) {
                let installed = inventory.packages.filter { $0.name == change.package }.map(\.version)
                if let version = change.version, !installed.contains(version) {
                    reason = installed.isEmpty
                        ? "\(change.package) is not installed (last report \(target.reportedAt.map { ISO8601DateFormatter().string(from: $0) } ?? "?"))"
                        : "\(change.package) \(installed.joined(separator: ", ")) installed, not \(version)"
                } else if change.version == nil {
                    reason = "the change has no built version"
                }
            } else {
                reason = "the target never reported an inventory"
            }
            let reached = reason == nil
            // Fleet targets are keyed by the core's agent id; the agent's own name is an attribute.
            return TargetOutcome(
                name: target.attributes["name"] ?? target.name, baseline: baseline, reached: reached, reason: reason,
                labEscape: !reached && target.inventory != nil && baseline.map(green.contains) == true)
        }
        reached = targets.filter(\.reached).count
        failureRate = targets.isEmpty ? nil : Double(targets.count - reached) / Double(targets.count)
        chaseList = targets.filter { !$0.reached }
        labEscapes = targets.filter(\.labEscape).map(\.name)
        var phases: [Phase] = []
        var entered: [ChangeTransition.Dimension: (String, Date)] = [:]
        for step in change.history where step.dimension != .record && step.from != step.to {
            if let previous = entered[step.dimension] {
                phases.append(
                    Phase(dimension: step.dimension.rawValue, state: previous.0, seconds: step.at.timeIntervalSince(previous.1)))
            }
            entered[step.dimension] = (step.to, step.at)
        }
        self.phases = phases
        if let code {
            closeCode = code
        } else if change.delivery == .rolledBack {
            closeCode = .unsuccessful
        } else if chaseList.isEmpty {
            closeCode = .successful
        } else {
            closeCode = Double(reached) / Double(max(targets.count, 1)) >= store.policy.readiness ? .successfulWithIssues : .unsuccessful
        }
    }

    static func time(_ date: Date) -> String { ISO8601DateFormatter().string(from: date) }

    /// What became of a chase entry: when the target got the change, or that it still has not.
    static func outcome(_ item: DeliveryFollowUp.ChaseItem) -> String {
        guard let resolved = item.resolved else { return "still on the chase list" }
        return "got the change \(duration(resolved.timeIntervalSince(item.since))) later (\(time(resolved)))"
    }

    /// " (1.02× the unicast plan of N)" when there is a plan.
    static func against(_ sent: Int64, _ planned: Int64?) -> String {
        guard let planned, planned > 0 else { return "" }
        return String(format: " (%.2f× the unicast plan of %lld)", Double(sent) / Double(planned), planned)
    }

    static func duration(_ seconds: Double) -> String {
        if seconds < 120 { return String(format: "%.0f s", seconds) }
        if seconds < 7200 { return String(format: "%.0f min", seconds / 60) }
        return String(format: "%.1f h", seconds / 3600)
    }

    public var markdown: String {
        var out = "# Post-deployment review: \(change) \(title)\n\n"
        out += "- package: \(package) \(version ?? "")\n- artifact: \(artifact ?? "none")\n"
        out += "- targets reached: \(reached) of \(targets.count)\n"
        out += "- failure rate: \(failureRate.map { String(format: "%.1f%%", $0 * 100) } ?? "n/a")\n"
        if let plannedBytes { out += "- planned network cost (one copy per segment): \(plannedBytes) bytes\n" }
        if let bytesSent { out += "- bytes the core sent: \(bytesSent)\(Self.against(bytesSent, plannedUnicastBytes))\n" }
        out += "- close code: **\(closeCode.rawValue)**\n\n## Chase list during the delivery\n\n"
        out += chaseHistory.isEmpty
            ? "No target was ever on the chase list.\n"
            : "| target | reason | on it since | then |\n|---|---|---|---|\n"
                + chaseHistory.map { "| \($0.target) | \($0.reason) | \(Self.time($0.since)) | \(Self.outcome($0)) |\n" }.joined()
        out += "\n## Chase list now\n\n"
        out += chaseList.isEmpty ? "Every target was reached.\n" : "| target | baseline | reason |\n|---|---|---|\n"
            + chaseList.map { "| \($0.name) | \($0.baseline ?? "?") | \($0.reason ?? "") |\n" }.joined()
        out += "\n## Lab prediction against field outcome\n\n"
        out += labEscapes.isEmpty
            ? "No lab escapes: no target failed on a baseline the lab passed.\n"
            : "Lab escapes (the lab passed the baseline, the target failed): \(labEscapes.joined(separator: ", "))\n"
        out += "\n## Time in each phase\n\n| dimension | state | time |\n|---|---|---|\n"
        out += phases.map { "| \($0.dimension) | \($0.state) | \(Self.duration($0.seconds)) |\n" }.joined()
        out += "\n## Lessons\n\n\(lessons ?? "(none written)")\n\n## Recommendations\n\n\(recommendations ?? "(none written)")\n"
        return out
    }

    /// One HTML file with no external resources.
    public var html: String {
        func h(_ text: String) -> String {
            text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
                .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
        }
        var page = """
            <!DOCTYPE html><html><head><meta charset="utf-8"><title>\(h(change)) review</title>
            <style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}.bad{color:#b00}</style>
            </head><body><h1>Post-deployment review: \(h(change)) \(h(title))</h1>
            <p>\(h(package)) \(h(version ?? "")) — targets reached \(reached) of \(targets.count), failure rate \(failureRate.map { String(format: "%.1f%%", $0 * 100) } ?? "n/a"), close code <b>\(h(closeCode.rawValue))</b></p>
            <p>\(bytesSent.map { "bytes the core sent: \($0)" + Self.against($0, plannedUnicastBytes) } ?? "")</p>
            <h2>Chase list during the delivery</h2>
            """
        page += chaseHistory.isEmpty ? "<p>No target was ever on the chase list.</p>" : "<table><tr><th>target</th><th>reason</th><th>on it since</th><th>then</th></tr>"
            + chaseHistory.map { "<tr><td>\(h($0.target))</td><td>\(h($0.reason))</td><td>\(Self.time($0.since))</td><td>\(h(Self.outcome($0)))</td></tr>" }.joined() + "</table>"
        page += "<h2>Chase list now</h2>"
        page += chaseList.isEmpty ? "<p>Every target was reached.</p>" : "<table><tr><th>target</th><th>baseline</th><th>reason</th></tr>"
            + chaseList.map { "<tr><td>\(h($0.name))</td><td>\(h($0.baseline ?? "?"))</td><td class=\"bad\">\(h($0.reason ?? ""))</td></tr>" }.joined() + "</table>"
        page += "<h2>Lab escapes</h2><p>\(labEscapes.isEmpty ? "none" : h(labEscapes.joined(separator: ", ")))</p>"
        page += "<h2>Time in each phase</h2><table><tr><th>dimension</th><th>state</th><th>time</th></tr>"
        page += phases.map { "<tr><td>\(h($0.dimension))</td><td>\(h($0.state))</td><td>\(Self.duration($0.seconds))</td></tr>" }.joined()
        page += "</table><h2>Lessons</h2><p>\(h(lessons ?? "(none written)"))</p>"
        page += "<h2>Recommendations</h2><p>\(h(recommendations ?? "(none written)"))</p></body></html>\n"
        return page
    }
}
