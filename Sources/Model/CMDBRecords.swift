import Foundation

/// The kinds of configuration item the CMDB records, each in a folder of its own.
public enum CMDBRecordKind: String, Codable, Sendable, CaseIterable {
    case baseline, inventory, artifact, run, cell, target, change

    /// The top-level folder of this kind in the CMDB.
    public var folder: String {
        switch self {
        case .baseline: return "baselines"
        case .inventory: return "inventories"
        case .artifact: return "artifacts"
        case .run: return "runs"
        case .cell: return "cells"
        case .target: return "targets"
        case .change: return "changes"
        }
    }

    /// The file of the record `id` relative to the CMDB root.
    ///
    /// Folders that grow with use are sharded by two hex digits (of the digest itself, or
    /// of the SHA-256 of the name), so no tree a transaction rewrites grows past a few
    /// hundred entries: `cells/3f/run-7/web.json`, `targets/a1/paris-1.json`. Baselines are
    /// few and stay `baselines/NAME/VERSION.json`.
    public func path(of id: String) -> String {
        switch self {
        case .baseline:
            let parts = id.split(separator: "@", maxSplits: 1)
            return "\(folder)/\(parts.first ?? "")/\(parts.count > 1 ? parts[1] : "").json"
        case .inventory, .artifact:
            return "\(folder)/\(id.prefix(2))/\(id).json"
        case .cell:
            let run = id.split(separator: "/", maxSplits: 1).first.map(String.init) ?? id
            return "\(folder)/\(Self.shard(run))/\(id).json"
        case .run, .target, .change:
            return "\(folder)/\(Self.shard(id))/\(id).json"
        }
    }

    /// Two hex digits that spread names evenly over 256 folders.
    public static func shard(_ name: String) -> String { String(SHA256Digest(of: name).hex.prefix(2)) }

    /// The kind and id of the record stored at `path`, nil for a path outside the layout.
    public static func record(at path: String) -> CMDBReference? {
        let parts = path.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        guard parts.count >= 2, let last = parts.last, last.hasSuffix(".json"),
            let kind = allCases.first(where: { $0.folder == parts[0] })
        else { return nil }
        let stem = String(last.dropLast(5))
        let id: String
        switch (kind, parts.count) {
        case (.baseline, 3): id = "\(parts[1])@\(stem)"
        case (.cell, 4): id = "\(parts[2])/\(stem)"
        case (.inventory, 3), (.artifact, 3), (.run, 3), (.target, 3), (.change, 3): id = stem
        default: return nil
        }
        let reference = CMDBReference(kind, id)
        return kind.path(of: id) == path ? reference : nil
    }
}

/// A pointer from one record to another: `baseline:web@3`, `cell:run-7/web`.
public struct CMDBReference: Hashable, Sendable, Codable, CustomStringConvertible, Comparable {
    public var kind: CMDBRecordKind
    public var id: String

    public init(_ kind: CMDBRecordKind, _ id: String) {
        self.kind = kind
        self.id = id
    }

    public var description: String { "\(kind.rawValue):\(id)" }
    public var path: String { kind.path(of: id) }

    public static func < (lhs: CMDBReference, rhs: CMDBReference) -> Bool { lhs.description < rhs.description }
}

/// A record the CMDB stores: a kind, an id that names its file, what makes it valid, and
/// which other records it points to (checked by `cmdb verify`).
public protocol CMDBRecord: Codable, Sendable {
    static var kind: CMDBRecordKind { get }
    var recordID: String { get }
    /// Everything wrong with the record; empty when it is valid.
    func problems() -> [String]
    var references: [CMDBReference] { get }
}

extension CMDBRecord {
    public var reference: CMDBReference { CMDBReference(Self.kind, recordID) }
}

/// Names that become file names: letters, digits, `.`, `_`, `-`, `+`; not starting with a dot.
public func cmdbNameProblem(_ name: String, what: String) -> String? {
    let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-+")
    if name.isEmpty { return "\(what) is empty" }
    if name.count > 120 { return "\(what) '\(name.prefix(20))…' is longer than 120 characters" }
    if name.hasPrefix(".") { return "\(what) '\(name)' starts with a dot" }
    if let bad = name.first(where: { !allowed.contains($0) }) {
        return "\(what) '\(name)' contains '\(bad)' (use letters, digits, '.', '_', '-', '+')"
    }
    return nil
}

/// Points at one version of a baseline: `web@3`.
public struct BaselineRef: Hashable, Sendable, Codable, CustomStringConvertible {
    public var name: String
    public var version: Int

    public init(name: String, version: Int) {
        self.name = name
        self.version = version
    }

    /// Parses `NAME@VERSION`.
    public init?(_ text: String) {
        let parts = text.split(separator: "@")
        guard parts.count == 2, let version = Int(parts[1]), version > 0 else { return nil }
        self.init(name: String(parts[0]), version: version)
    }

    public var description: String { "\(name)@\(version)" }
    public var reference: CMDBReference { CMDBReference(.baseline, description) }
}

/// One version of an approved baseline: what it was built from and its configuration.
///
/// Version 1 is built from the recipe; later versions are rebuilt or adopted, the latter
/// recording a tested change as the new standard configuration, linked to its evidence.
public struct BaselineVersionRecord: CMDBRecord, Equatable {
    public static let kind = CMDBRecordKind.baseline

    public enum Origin: String, Codable, Sendable {
        /// A built image's configuration; `adopted` includes a tested change; `reverted` is the
        /// configuration before an adoption, recorded when its change was rolled back.
        case built, adopted, reverted
    }

    /// Where an adopted version's change came from.
    public struct Adoption: Codable, Sendable, Equatable {
        public var run: String
        public var cell: String
        public var artifact: SHA256Digest
        /// The change between the previous version and this one.
        public var delta: ConfigurationDelta
        /// The change record that approved it, once change records exist.
        public var change: String?

        public init(run: String, cell: String, artifact: SHA256Digest, delta: ConfigurationDelta, change: String? = nil)
        {
            self.run = run
            self.cell = cell
            self.artifact = artifact
            self.delta = delta
            self.change = change
        }
    }

    public var name: String
    public var version: Int
    public var recordedAt: Date
    public var origin: Origin
    public var recipeDigest: SHA256Digest?
    public var imageDigest: SHA256Digest?
    /// The inventory record of this configuration.
    public var inventory: SHA256Digest
    public var previousVersion: Int?
    public var adoption: Adoption?
    public var notes: String?

    public init(
        name: String, version: Int, recordedAt: Date, origin: Origin, recipeDigest: SHA256Digest? = nil,
        imageDigest: SHA256Digest? = nil, inventory: SHA256Digest, previousVersion: Int? = nil,
        adoption: Adoption? = nil, notes: String? = nil
    ) {
        self.name = name
        self.version = version
        self.recordedAt = recordedAt
        self.origin = origin
        self.recipeDigest = recipeDigest
        self.imageDigest = imageDigest
        self.inventory = inventory
        self.previousVersion = previousVersion
        self.adoption = adoption
        self.notes = notes
    }

    public var ref: BaselineRef { BaselineRef(name: name, version: version) }
    public var recordID: String { ref.description }

    public func problems() -> [String] {
        var problems: [String] = []
        if let problem = cmdbNameProblem(name, what: "the baseline name") { problems.append(problem) }
        if version < 1 { problems.append("version \(version) is not a positive number") }
        if let previous = previousVersion, previous >= version {
            problems.append("previous version \(previous) is not older than version \(version)")
        }
        if origin == .adopted && adoption == nil { problems.append("an adopted version has no adoption details") }
        if origin == .built && adoption != nil { problems.append("a built version has adoption details") }
        return problems
    }

    public var references: [CMDBReference] {
        var refs = [CMDBReference(.inventory, inventory.hex)]
        if let previousVersion { refs.append(BaselineRef(name: name, version: previousVersion).reference) }
        if let adoption {
            refs.append(CMDBReference(.cell, "\(adoption.run)/\(adoption.cell)"))
            refs.append(CMDBReference(.artifact, adoption.artifact.hex))
            if let change = adoption.change { refs.append(CMDBReference(.change, change)) }
        }
        return refs
    }
}

/// A stored inventory: the snapshot itself, named by the SHA-256 of its stable JSON.
public struct InventoryRecord: CMDBRecord, Equatable {
    public static let kind = CMDBRecordKind.inventory
    public var snapshot: InventorySnapshot

    public init(_ snapshot: InventorySnapshot) { self.snapshot = snapshot.normalized() }

    public var digest: SHA256Digest {
        (try? StableJSON.data(snapshot)).map { SHA256Digest(of: $0) } ?? SHA256Digest(of: "")
    }
    public var recordID: String { digest.hex }
    public func problems() -> [String] { [] }
    public var references: [CMDBReference] { [] }

    public init(from decoder: Decoder) throws { snapshot = try InventorySnapshot(from: decoder) }
    public func encode(to encoder: Encoder) throws { try snapshot.encode(to: encoder) }
}

/// A release artifact the lab tested, by content digest.
public struct ArtifactRecord: CMDBRecord, Equatable {
    public static let kind = CMDBRecordKind.artifact
    public var digest: SHA256Digest
    public var package: String
    public var version: String
    public var size: Int?
    public var recipeDigest: SHA256Digest?
    public var recordedAt: Date

    public init(
        digest: SHA256Digest, package: String, version: String, size: Int? = nil, recipeDigest: SHA256Digest? = nil,
        recordedAt: Date
    ) {
        self.digest = digest
        self.package = package
        self.version = version
        self.size = size
        self.recipeDigest = recipeDigest
        self.recordedAt = recordedAt
    }

    public var recordID: String { digest.hex }
    public func problems() -> [String] {
        var problems: [String] = []
        if package.isEmpty { problems.append("the package name is empty") }
        if (try? DebianVersion(lenient: version)) == nil { problems.append("'\(version)' is not a Debian version") }
        return problems
    }
    public var references: [CMDBReference] { [] }
}

/// One matrix run: an artifact against a set of baselines.
public struct RunRecord: CMDBRecord, Equatable {
    public static let kind = CMDBRecordKind.run

    public enum Status: String, Codable, Sendable {
        case running, passed, failed, aborted
    }

    public var id: String
    public var artifact: SHA256Digest
    public var baselines: [BaselineRef]
    public var startedAt: Date
    public var finishedAt: Date?
    public var status: Status
    public var actor: String?
    /// The lab's signed `EvidenceStatement` of this run (payload type `.evidence`): what release
    /// approvals are judged on and what agents check before they install.
    public var evidence: SignedEnvelope?

    public init(
        id: String, artifact: SHA256Digest, baselines: [BaselineRef], startedAt: Date, finishedAt: Date? = nil,
        status: Status, actor: String? = nil, evidence: SignedEnvelope? = nil
    ) {
        self.id = id
        self.artifact = artifact
        self.baselines = baselines
        self.startedAt = startedAt
        self.finishedAt = finishedAt
        self.status = status
        self.actor = actor
        self.evidence = evidence
    }

    public var recordID: String { id }
    public func problems() -> [String] {
        var problems: [String] = []
        if let problem = cmdbNameProblem(id, what: "the run id") { problems.append(problem) }
        if let finishedAt, finishedAt < startedAt { problems.append("it finished before it started") }
        return problems
    }
    public var references: [CMDBReference] {
        [CMDBReference(.artifact, artifact.hex)] + baselines.map(\.reference)
    }
}

/// One cell of a run: the artifact installed and tested on one baseline version.
public struct CellRecord: CMDBRecord, Equatable {
    public static let kind = CMDBRecordKind.cell

    public enum Verdict: String, Codable, Sendable {
        case passed, failed
    }

    public enum FailureClass: String, Codable, Sendable {
        case product, infrastructure, timeout
    }

    public struct TestResult: Codable, Sendable, Equatable {
        public var name: String
        public var passed: Bool
        public var seconds: Double?
        public var detail: String?

        public init(name: String, passed: Bool, seconds: Double? = nil, detail: String? = nil) {
            self.name = name
            self.passed = passed
            self.seconds = seconds
            self.detail = detail
        }
    }

    public var run: String
    public var name: String
    public var baseline: BaselineRef
    public var artifact: SHA256Digest
    public var verdict: Verdict
    public var failure: FailureClass?
    public var reason: String?
    public var attempts: Int
    public var startedAt: Date
    public var seconds: Double
    /// The inventory the cell started from (its baseline's).
    public var before: SHA256Digest
    /// The inventory after install, when it was stored in full.
    public var after: SHA256Digest?
    /// Baseline → after install.
    public var installDelta: ConfigurationDelta
    /// Baseline → after uninstall: what the package left behind.
    public var residue: ConfigurationDelta?
    public var violations: [PolicyViolation]
    public var tests: [TestResult]

    public init(
        run: String, name: String, baseline: BaselineRef, artifact: SHA256Digest, verdict: Verdict,
        failure: FailureClass? = nil, reason: String? = nil, attempts: Int = 1, startedAt: Date, seconds: Double,
        before: SHA256Digest, after: SHA256Digest? = nil, installDelta: ConfigurationDelta,
        residue: ConfigurationDelta? = nil, violations: [PolicyViolation] = [], tests: [TestResult] = []
    ) {
        self.run = run
        self.name = name
        self.baseline = baseline
        self.artifact = artifact
        self.verdict = verdict
        self.failure = failure
        self.reason = reason
        self.attempts = attempts
        self.startedAt = startedAt
        self.seconds = seconds
        self.before = before
        self.after = after
        self.installDelta = installDelta
        self.residue = residue
        self.violations = violations
        self.tests = tests
    }

    public var recordID: String { "\(run)/\(name)" }

    public func problems() -> [String] {
        var problems: [String] = []
        if let problem = cmdbNameProblem(run, what: "the run id") { problems.append(problem) }
        if let problem = cmdbNameProblem(name, what: "the cell name") { problems.append(problem) }
        if verdict == .passed && failure != nil { problems.append("a passed cell has a failure class") }
        if verdict == .failed && failure == nil { problems.append("a failed cell has no failure class") }
        if attempts < 1 { problems.append("attempts must be at least 1") }
        if seconds < 0 { problems.append("the duration is negative") }
        return problems
    }

    public var references: [CMDBReference] {
        var refs = [
            CMDBReference(.run, run), baseline.reference, CMDBReference(.artifact, artifact.hex),
            CMDBReference(.inventory, before.hex),
        ]
        if let after { refs.append(CMDBReference(.inventory, after.hex)) }
        return refs
    }
}

/// A host of the fleet: its attributes, the baseline it should match, and its last
/// reported inventory.
public struct TargetRecord: CMDBRecord, Equatable {
    public static let kind = CMDBRecordKind.target
    public var name: String
    /// Free-form facts used for targeting: `site`, `department`, …
    public var attributes: [String: String]
    /// The approved baseline the target should match; drift is measured against it.
    public var baseline: BaselineRef?
    public var inventory: SHA256Digest?
    public var reportedAt: Date?

    public init(
        name: String, attributes: [String: String] = [:], baseline: BaselineRef? = nil, inventory: SHA256Digest? = nil,
        reportedAt: Date? = nil
    ) {
        self.name = name
        self.attributes = attributes
        self.baseline = baseline
        self.inventory = inventory
        self.reportedAt = reportedAt
    }

    public var recordID: String { name }
    public func problems() -> [String] {
        var problems: [String] = []
        if let problem = cmdbNameProblem(name, what: "the target name") { problems.append(problem) }
        if inventory != nil && reportedAt == nil { problems.append("an inventory without a report time") }
        return problems
    }
    public var references: [CMDBReference] {
        var refs: [CMDBReference] = []
        if let baseline { refs.append(baseline.reference) }
        if let inventory { refs.append(CMDBReference(.inventory, inventory.hex)) }
        return refs
    }
}
