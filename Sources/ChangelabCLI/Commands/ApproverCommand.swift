import ArgumentParser
import ChangeControl
import Foundation
import Model

struct ApproverCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "approver",
        abstract: "Approvers' Ed25519 keys: make one and register it in the approval policy; list them.",
        subcommands: [Keygen.self, List.self]
    )

    struct Keygen: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make an approver key (private, 0600, outside the repository) and list its public key in the policy.",
            discussion: """
                The private key goes to ~/.config/changelab/approvers/NAME.key (or $CHANGELAB_APPROVER_KEYS); \
                the public key is added to 'approvers:' in the policy file. Agents trust it only once a new \
                trust root that lists it is signed (changelab trust-root sign). Example: changelab approver \
                keygen alice --role ccb
                """)
        @OptionGroup var projectOptions: ProjectOptions
        @OptionGroup var policyOptions: PolicyOptions
        @Argument(help: "The approver's name (their operator name).") var name: String
        @Option(help: "ccb, tab or emergency-cab.") var role: ApproverRole

        func run() async throws {
            let project = try projectOptions.project()
            let path = policyOptions.path(in: project)
            _ = try PolicyFile.load(path, display: project.display(path))
            let keyring = ApproverKeyring.default
            let key = try keyring.create(name: name, role: role, repository: project.root)
            do {
                try PolicyFile.register(Approver(name: name, role: role, key: key.publicKey.hex), in: path)
            } catch {
                // The policy refused it: do not leave a key nobody trusts.
                try? FileManager.default.removeItem(atPath: try keyring.path(of: name))
                throw error
            }
            print("made \(name)'s key in \(try keyring.path(of: name)) (0600)")
            print("registered \(name) (\(role.rawValue)) in \(project.display(path)): \(key.publicKey.hex)")
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The policy's approvers, and which keys are on this machine.")
        @OptionGroup var projectOptions: ProjectOptions
        @OptionGroup var policyOptions: PolicyOptions
        @OptionGroup var output: OutputOptions

        struct Row: Encodable {
            var name: String
            var role: ApproverRole
            var key: String
            var keyHere: Bool
        }

        func run() async throws {
            let policy = try policyOptions.load(in: try projectOptions.project())
            let here = Set(ApproverKeyring.default.names())
            let rows = policy.approvers.map { Row(name: $0.name, role: $0.role, key: $0.key, keyHere: here.contains($0.name)) }
            if output.json { return try printJSON(rows) }
            var table = Table("NAME", "ROLE", "PRIVATE KEY HERE", "PUBLIC KEY")
            for row in rows { table.add(row.name, row.role.rawValue, row.keyHere ? "yes" : "no", row.key) }
            table.print()
        }
    }
}

struct TrustRootCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "trust-root",
        abstract: "Sign the approval policy as the change-control trust root agents pin; show the chain.",
        discussion: """
            The chain file (default: trust-roots.json beside the policy, git-ignored) holds every signed \
            version, oldest first. Agents pin the first root's digest at enrolment (--trust-root sha256:…) \
            and accept a later version only when root-threshold approvers of the one before signed it.
            """,
        subcommands: [Sign.self, Show.self]
    )

    struct ChainOptions: ParsableArguments {
        @Option(help: "The trust root chain file (default: trust-roots.json beside the policy).") var chain: String?

        func path(policy: String) -> String { chain ?? TrustRootFile.defaultPath(besidePolicy: policy) }
    }

    struct Sign: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Sign the policy as a trust root: the first one, a new version, or one more signature.")
        @OptionGroup var projectOptions: ProjectOptions
        @OptionGroup var policyOptions: PolicyOptions
        @OptionGroup var chainOptions: ChainOptions
        @Option(name: .customLong("as"), help: "Your approver name.") var approver: String

        func run() async throws {
            let project = try projectOptions.project()
            let path = policyOptions.path(in: project)
            let policy = try PolicyFile.load(path, display: project.display(path))
            let key = try ApproverKeyring.default.key(approver)
            var chain = try TrustRootFile(path: chainOptions.path(policy: path))
            let outcome = try chain.sign(policy, with: key)
            try chain.save()
            switch outcome {
            case .created(let version): print("signed trust root version \(version) (the first) in \(chain.path)")
            case .appended(let version): print("signed new trust root version \(version) in \(chain.path)")
            case .cosigned(let version): print("added \(approver)'s signature to trust root version \(version)")
            }
            if let first = chain.roots.first?.payloadDigest { print("agents pin: --trust-root \(first)") }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The chain: each version, its digest and signers.")
        @OptionGroup var projectOptions: ProjectOptions
        @OptionGroup var policyOptions: PolicyOptions
        @OptionGroup var chainOptions: ChainOptions
        @OptionGroup var output: OutputOptions

        struct Root: Encodable {
            var version: Int
            var digest: String
            var signatures: Int
            var signers: [String]
        }

        struct View: Encodable {
            var chain: String
            var pin: String?
            var current: String?
            var currentVersion: Int?
            var problem: String?
            var roots: [Root]
        }

        func run() async throws {
            let project = try projectOptions.project()
            let path = policyOptions.path(in: project)
            let chain = try TrustRootFile(path: chainOptions.path(policy: path))
            guard let first = chain.roots.first?.payloadDigest else {
                throw ChangelabError(
                    "there is no trust root in \(chain.path) yet", fix: "sign the policy: changelab trust-root sign --as NAME")
            }
            var roots: [Root] = []
            var previous: ApprovalPolicy?
            for envelope in chain.roots {
                let policy = envelope.unverifiedClaim(ApprovalPolicy.self)
                let signers = (try? envelope.signers(as: .trustRoot, trusting: (previous ?? policy)?.approverKeys ?? [])) ?? []
                let names = signers.compactMap { (previous ?? policy)?.approver(with: $0)?.name }
                roots.append(
                    Root(version: policy?.version ?? 0, digest: envelope.payloadDigest?.description ?? "?",
                        signatures: envelope.signatures.count, signers: names))
                previous = policy
            }
            var view = View(chain: chain.path, pin: first.description, roots: roots)
            do {
                let current = try TrustChain.current(chain.roots, pinned: first)
                view.current = current.digest.description
                view.currentVersion = current.policy.version
            } catch {
                view.problem = "\(error)"
            }
            if output.json { return try printJSON(view) }
            var table = Table("VERSION", "DIGEST", "SIGNED BY")
            for root in roots { table.add(String(root.version), root.digest, root.signers.joined(separator: ", ")) }
            table.print()
            print("agents pin: --trust-root \(first)")
            if let current = view.current, let version = view.currentVersion { print("current: version \(version), \(current)") }
            if let problem = view.problem { print("the chain stops early: \(problem)") }
        }
    }
}
