import Foundation
import HostIO
import Model
import Yams

/// The approval policy as a YAML file in the repository (`lab/approval-policy.yaml`).
///
/// Reading collects every problem with its file, line and column; writing registers an
/// approver's key by inserting one line into the `approvers:` list, so the comments that
/// explain the file survive `approver keygen`.
public enum PolicyFile {
    /// The matrix lanes a policy may require (the lab's `MatrixLane`s).
    public static let knownLanes = ["install", "upgrade", "reinstall", "uninstall"]
    static let keys = [
        "version", "time-zone", "root-threshold", "readiness", "default-rate", "approvers", "lab-keys",
        "change-types", "standard-packages", "freezes", "rollback-roles",
    ]
    static let stageKeys = ["approvals", "roles", "self-approval"]

    /// Reads and validates the policy at `path`; `display` is the name problems carry.
    public static func load(_ path: String, display: String? = nil) throws -> ApprovalPolicy {
        let shown = display ?? path
        guard FileManager.default.fileExists(atPath: path) else {
            throw ChangelabError(
                "there is no approval policy at \(shown)",
                fix: "copy the example: cp lab/approval-policy.yaml \(shown), or pass --policy FILE")
        }
        let reader = SpecReader(path: path, displayPath: shown)
        return try parse(reader)
    }

    /// Parses policy YAML `text`, naming it `file` in problems.
    public static func parse(_ text: String, file: String) throws -> ApprovalPolicy {
        try parse(SpecReader(file: file, text: text))
    }

    static func parse(_ reader: SpecReader) throws -> ApprovalPolicy {
        guard let root = reader.rootMapping(keys: keys) else {
            try reader.finish()
            throw SpecValidationError(problems: [SpecProblem(file: reader.file, line: 1, column: 1, message: "empty policy")])
        }
        var policy = ApprovalPolicy()
        policy.version = root.required("version", Int.self) ?? 1
        policy.timeZone = root.optional("time-zone", default: "UTC")
        if TimeZone(identifier: policy.timeZone) == nil {
            reader.report(at: root.value("time-zone"), "time zone '\(policy.timeZone)' is not an IANA name like Europe/Paris or UTC")
        }
        policy.rootThreshold = root.optional("root-threshold", default: 1)
        if let text = root.optional("readiness", String.self) {
            if let share = percentage(text) {
                policy.readiness = share
            } else {
                reader.report(at: root.value("readiness"), "'readiness' is a share of targets like 95% or 0.95, not '\(text)'")
            }
        }
        if let text = root.optional("default-rate", String.self) {
            if let rate = bytes(text), rate > 0 {
                policy.defaultRate = rate
            } else {
                reader.report(at: root.value("default-rate"), "'default-rate' is bytes per second like 1048576 or 10MiB, not '\(text)'")
            }
        }
        var names = Set<String>()
        for entry in root.mappings("approvers", keys: ["name", "role", "key"]) {
            let name = entry.required("name", String.self) ?? ""
            if !name.isEmpty, let problem = SafeName.problem(name) {
                reader.report(at: entry.value("name"), "approver name '\(name)': \(problem)")
            }
            if !name.isEmpty && !names.insert(name).inserted {
                reader.report(at: entry.value("name"), "approver \(name) is listed twice")
            }
            let role = readRole(entry.required("role", String.self), at: entry.value("role"), reader: reader)
            let key = entry.required("key", String.self) ?? ""
            if entry.has("key") && SigningPublicKey(hex: key) == nil {
                reader.report(at: entry.value("key"), "approver \(name)'s key is not 64 hex digits of an Ed25519 public key")
            }
            if let role { policy.approvers.append(Approver(name: name, role: role, key: key)) }
        }
        policy.labKeys = root.list("lab-keys", of: String.self)
        if let node = root.value("lab-keys"), case .sequence(let items) = node {
            for (item, key) in zip(items, policy.labKeys) where SigningPublicKey(hex: key) == nil {
                reader.report(at: item, "lab key '\(key.prefix(16))' is not 64 hex digits of an Ed25519 public key")
            }
        }
        if let types = root.mapping("change-types", keys: ChangeType.allCases.map(\.rawValue)) {
            for type in ChangeType.allCases {
                guard let rule = types.mapping(type.rawValue, keys: ["preliminary", "release", "lanes"]) else { continue }
                let lanes = rule.list("lanes", of: String.self)
                if let node = rule.value("lanes"), case .sequence(let items) = node {
                    for (item, lane) in zip(items, lanes) where !knownLanes.contains(lane) {
                        reader.report(at: item, "'\(lane)' is not a lane (lanes: \(knownLanes.joined(separator: ", ")))")
                    }
                }
                if lanes.isEmpty { reader.report(at: rule.node, "\(type.rawValue): 'lanes' must name at least one lane") }
                policy.changeTypes[type.rawValue] = ChangeTypeRule(
                    preliminary: readStage(rule, "preliminary", reader: reader),
                    release: readStage(rule, "release", reader: reader), lanes: lanes)
                if type == .standard && (rule.has("preliminary") || rule.has("release")) {
                    reader.report(at: rule.node, "standard changes are pre-authorised: they take no 'preliminary' or 'release' vote")
                }
                if type == .emergency && rule.has("preliminary") {
                    reader.report(at: rule.keyNode("preliminary"), "emergency changes have no preliminary stage")
                }
                if type == .normal && (!rule.has("preliminary") || !rule.has("release")) {
                    reader.report(at: rule.node, "normal changes need both a 'preliminary' and a 'release' stage")
                }
            }
        }
        policy.standardPackages = root.list("standard-packages", of: String.self)
        for entry in root.mappings("freezes", keys: ["name", "from", "until", "weekly-from", "weekly-until"]) {
            let name = entry.required("name", String.self) ?? ""
            var window = FreezeWindow(name: name)
            for (key, isStart) in [("from", true), ("until", false)] {
                guard let text = entry.optional(key, String.self) else { continue }
                guard let date = parseDate(text, timeZone: TimeZone(identifier: policy.timeZone)) else {
                    reader.report(at: entry.value(key), "'\(key)' is a date like 2030-12-24 or 2030-12-24T18:00:00Z, not '\(text)'")
                    continue
                }
                if isStart { window.from = date } else { window.until = date }
            }
            window.weeklyFrom = entry.optional("weekly-from", String.self)
            window.weeklyUntil = entry.optional("weekly-until", String.self)
            for key in ["weekly-from", "weekly-until"] {
                if let text = entry.optional(key, String.self), FreezeWindow.weekMinute(text) == nil {
                    reader.report(at: entry.value(key), "'\(key)' reads like 'fri 16:00', not '\(text)'")
                }
            }
            policy.freezes.append(window)
        }
        if root.has("rollback-roles") {
            let node = root.value("rollback-roles")
            policy.rollbackRoles = root.list("rollback-roles", of: String.self).compactMap {
                readRole($0, at: node, reader: reader)
            }
        }
        // What only the whole policy shows (thresholds against the approver count, freeze
        // shapes), placed at the key it is about.
        if reader.problems.isEmpty {
            for problem in policy.problems() {
                let key =
                    problem.hasPrefix("root-threshold") ? "root-threshold"
                    : problem.hasPrefix("freeze") ? "freezes"
                    : problem.hasPrefix("approver") ? "approvers"
                    : problem.hasPrefix("readiness") ? "readiness"
                    : problem.hasPrefix("version") ? "version" : "change-types"
                reader.report(at: root.value(key) ?? root.node, problem)
            }
        }
        try reader.finish()
        return policy
    }

    static func readRole(_ text: String?, at node: Node?, reader: SpecReader) -> ApproverRole? {
        guard let text else { return nil }
        guard let role = ApproverRole(rawValue: text) else {
            reader.report(
                at: node, "'\(text)' is not a board (boards: \(ApproverRole.allCases.map(\.rawValue).joined(separator: ", ")))")
            return nil
        }
        return role
    }

    static func readStage(_ rule: SpecMapping, _ key: String, reader: SpecReader) -> StageRule? {
        guard let stage = rule.mapping(key, keys: stageKeys) else { return nil }
        let approvals = stage.required("approvals", Int.self) ?? 1
        if approvals < 1 { reader.report(at: stage.value("approvals"), "'approvals' must be 1 or more") }
        let node = stage.value("roles")
        let roles = stage.list("roles", of: String.self).compactMap { readRole($0, at: node, reader: reader) }
        if roles.isEmpty && stage.has("roles") == false { reader.report(at: stage.node, "missing required key 'roles'") }
        return StageRule(approvals: approvals, roles: roles, selfApproval: stage.optional("self-approval", default: false))
    }

    /// `95%` or `0.95` as 0.95; nil for anything else.
    static func percentage(_ text: String) -> Double? {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        if trimmed.hasSuffix("%") { return Double(trimmed.dropLast()).map { $0 / 100 } }
        return Double(trimmed)
    }

    /// A rate as people write it: `1048576`, `512KiB`, `10MiB/s`; nil for anything else.
    public static func bytesPerSecond(_ text: String) -> Int64? { bytes(text) }

    /// `1048576`, `512KiB`, `10MiB`, `1GiB` (per second); nil for anything else or an overflow.
    static func bytes(_ text: String) -> Int64? {
        let trimmed = text.replacingOccurrences(of: " ", with: "").replacingOccurrences(of: "/s", with: "")
        for (suffix, factor) in [("GiB", Int64(1) << 30), ("MiB", 1 << 20), ("KiB", 1 << 10), ("B", 1), ("", 1)] {
            guard trimmed.hasSuffix(suffix), let number = Int64(trimmed.dropLast(suffix.count)), number >= 0 else { continue }
            let (product, overflow) = number.multipliedReportingOverflow(by: factor)
            return overflow ? nil : product
        }
        return nil
    }

    static func parseDate(_ text: String, timeZone: TimeZone?) -> Date? {
        let full = ISO8601DateFormatter()
        if let date = full.date(from: text) { return date }
        let day = ISO8601DateFormatter()
        day.formatOptions = [.withFullDate]
        day.timeZone = timeZone ?? TimeZone(secondsFromGMT: 0)
        return day.date(from: text)
    }

    // MARK: Writing

    /// Adds `approver` to the policy file at `path`, keeping every comment.
    ///
    /// - Throws: when the name or key is already listed, or when the edited file would not
    ///   read back as the same policy plus this approver (nothing is written then).
    public static func register(_ approver: Approver, in path: String) throws {
        let policy = try load(path)
        if policy.approvers.contains(where: { $0.name == approver.name }) {
            throw ChangelabError(
                "approver \(approver.name) is already in \(path)",
                fix: "remove their entry from 'approvers:' first (a new key means a new trust root), or pick another name")
        }
        let line = "  - {name: \(approver.name), role: \(approver.role.rawValue), key: \"\(approver.key)\"}"
        try insert(line, intoList: "approvers", in: path) { edited in
            var expected = policy
            expected.approvers.append(approver)
            return edited == expected
        }
    }

    /// Adds a lab evidence key to the policy file at `path`, keeping every comment.
    public static func register(labKey: SigningPublicKey, in path: String) throws {
        let policy = try load(path)
        guard !policy.labPublicKeys.contains(labKey) else { return }
        try insert("  - \"\(labKey.hex)\"", intoList: "lab-keys", in: path) { edited in
            var expected = policy
            expected.labKeys.append(labKey.hex)
            return edited == expected
        }
    }

    /// Inserts `line` as the last item of the top-level list `key` (turning `key: []` into a
    /// block list), checks the result with `accept`, and writes it atomically.
    static func insert(_ line: String, intoList key: String, in path: String, accept: (ApprovalPolicy) -> Bool) throws {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ChangelabError("cannot read the approval policy \(path)", fix: "check the path given with --policy")
        }
        var lines = String(decoding: data, as: UTF8.self).components(separatedBy: "\n")
        guard let start = lines.firstIndex(where: { $0.hasPrefix("\(key):") }) else {
            throw ChangelabError(
                "the approval policy \(path) has no top-level '\(key):' list", fix: "add a line '\(key): []' and run this again")
        }
        let rest = lines[start].dropFirst(key.count + 1).trimmingCharacters(in: .whitespaces)
        if rest.hasPrefix("[]") {
            lines[start] = "\(key):" + rest.dropFirst(2)
            lines.insert(line, at: start + 1)
        } else if rest.isEmpty || rest.hasPrefix("#") {
            // The list's items: indented or dash lines up to the next top-level key.
            var last = start
            var index = start + 1
            while index < lines.count {
                let text = lines[index]
                if text.hasPrefix(" ") || text.hasPrefix("-") { last = index } else if !text.isEmpty && !text.hasPrefix("#") { break }
                index += 1
            }
            lines.insert(line, at: last + 1)
        } else {
            throw ChangelabError(
                "the '\(key):' list in \(path) is written inline", why: "only a block list or [] can be extended safely",
                fix: "write it as one '- …' line per item, then run this again")
        }
        let text = lines.joined(separator: "\n")
        guard let edited = try? parse(text, file: path), accept(edited) else {
            throw ChangelabError(
                "adding to '\(key):' in \(path) would change the policy in another way",
                why: "the file's layout around '\(key):' is unusual", fix: "add the entry by hand:\n\(line)")
        }
        try AtomicFile.write(Data(text.utf8), to: path)
    }
}
