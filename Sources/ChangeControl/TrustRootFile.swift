import Foundation
import HostIO
import Model

/// The change-control trust root chain as a file: every signed version of the approval
/// policy, oldest first. Agents pin the first root's digest at enrolment and follow the chain.
///
/// Default place: `trust-roots.json` beside the policy file (git-ignored in this repository:
/// the chain is made by the approvers' own keys, so each deployment has its own).
public struct TrustRootFile: Sendable {
    public static let formatVersion = 1

    struct Stored: Codable {
        var format: Int
        var roots: [SignedEnvelope]
    }

    public let path: String
    public private(set) var roots: [SignedEnvelope]

    /// The chain at `path`; empty when the file does not exist yet.
    public init(path: String) throws {
        self.path = path
        guard let data = FileManager.default.contents(atPath: path) else {
            roots = []
            return
        }
        guard let stored = try? StableJSON.decode(Stored.self, from: data) else {
            throw ChangelabError("\(path) is not a changelab trust root chain", fix: "restore it from where it was published")
        }
        guard stored.format == Self.formatVersion else {
            throw ChangelabError(
                "\(path) has trust root format \(stored.format); this changelab reads \(Self.formatVersion)",
                fix: "use a newer changelab")
        }
        roots = stored.roots
    }

    /// The chain file that goes with a policy file.
    public static func defaultPath(besidePolicy policy: String) -> String {
        ((policy as NSString).deletingLastPathComponent as NSString).appendingPathComponent("trust-roots.json")
    }

    /// What signing did.
    public enum Outcome: Sendable, Equatable {
        case created(version: Int)
        case appended(version: Int)
        case cosigned(version: Int)
    }

    /// Signs `policy` with `key`: the first root, a new version appended, or one more
    /// signature on the newest root when it is this very policy.
    public mutating func sign(_ policy: ApprovalPolicy, with key: SigningKey) throws -> Outcome {
        let problems = policy.problems()
        guard problems.isEmpty else {
            throw ChangelabError("the policy cannot be a trust root", why: problems.joined(separator: "; "))
        }
        let signer = policy.approver(with: key.publicKey)
        let payload = try StableJSON.data(policy)
        if let last = roots.last, Data(base64Encoded: last.payload) == payload {
            guard let previous = roots.dropLast().last?.unverifiedClaim(ApprovalPolicy.self) ?? Optional(policy),
                previous.approver(with: key.publicKey) != nil
            else {
                throw ChangelabError(
                    "this key is not an approver of the trust root version it would vouch for",
                    fix: "sign with the key of an approver listed in the previous trust root")
            }
            roots[roots.count - 1] = try key.cosign(last)
            return .cosigned(version: policy.version)
        }
        if let last = roots.last {
            guard let current = last.unverifiedClaim(ApprovalPolicy.self) else {
                throw ChangelabError("the newest trust root in \(path) does not read", fix: "restore the file")
            }
            guard policy.version > current.version else {
                throw ChangelabError(
                    "the policy is version \(policy.version) and the newest trust root is version \(current.version)",
                    fix: "raise 'version:' in the policy file to \(current.version + 1)")
            }
            guard current.approver(with: key.publicKey) != nil else {
                throw ChangelabError(
                    "a new trust root is signed by approvers of the current one (version \(current.version)); this key is not one",
                    fix: "sign with a key listed in trust root version \(current.version)")
            }
            roots.append(try TrustChain.sign(policy, with: [key]))
            return .appended(version: policy.version)
        }
        guard signer != nil else {
            throw ChangelabError(
                "the first trust root is signed by its own approvers; this key is not in its 'approvers:'",
                fix: "register the key (changelab approver keygen NAME) first")
        }
        roots.append(try TrustChain.sign(policy, with: [key]))
        return .created(version: policy.version)
    }

    public func save() throws {
        try AtomicFile.write(try StableJSON.data(Stored(format: Self.formatVersion, roots: roots)), to: path)
    }
}
