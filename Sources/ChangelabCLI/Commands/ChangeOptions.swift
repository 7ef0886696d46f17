import ArgumentParser
import CMDB
import ChangeControl
import Foundation
import Lab
import Model

/// `--policy FILE`: the approval policy (default lab/approval-policy.yaml in the project).
struct PolicyOptions: ParsableArguments {
    @Option(
        name: .long,
        help: ArgumentHelp("The approval policy file (default: lab/approval-policy.yaml in the project).", valueName: "file"))
    var policy: String?

    func path(in project: Project) -> String {
        guard let policy, !policy.isEmpty else { return project.labDirectory + "/approval-policy.yaml" }
        return policy.hasPrefix("/") ? policy : FileManager.default.currentDirectoryPath + "/" + policy
    }

    func load(in project: Project) throws -> ApprovalPolicy {
        let path = path(in: project)
        return try PolicyFile.load(path, display: project.display(path))
    }
}

/// What every change command opens: the CMDB, the policy and the baseline recipes.
struct ChangeContext: ParsableArguments {
    @OptionGroup var cmdbOptions: CMDBOptions
    @OptionGroup var actor: ActorOptions
    @OptionGroup var policyOptions: PolicyOptions

    func project() throws -> Project { try cmdbOptions.projectOptions.project() }

    /// The project's baseline recipes; a project without baselines/ has none.
    func recipes() throws -> [BaselineRecipe] {
        let baselines = Baselines(project: try project())
        guard FileManager.default.fileExists(atPath: try project().baselinesDirectory) else { return [] }
        return try baselines.loadAll()
    }

    func policy() throws -> ApprovalPolicy { try policyOptions.load(in: try project()) }

    /// Opens the change store for writing, runs `body`, and closes the writer on every path.
    func writing<T>(_ body: (ChangeStore) async throws -> T) async throws -> T {
        let policy = try policy()
        let recipes = try recipes()
        let writer = try await CMDBWriter(path: try cmdbOptions.path(), actor: actor.name)
        let store = ChangeStore(writer: writer, policy: policy, recipes: recipes)
        do {
            let result = try await body(store)
            await writer.close()
            return result
        } catch {
            await writer.close()
            throw error
        }
    }

    func reading() throws -> ChangeStore {
        ChangeStore(readingFrom: try cmdbOptions.store(), policy: try policy(), recipes: try recipes())
    }
}

/// Reads a signed approval file, with an error that names the file.
func readEnvelope(_ path: String) throws -> SignedEnvelope {
    guard let data = FileManager.default.contents(atPath: path) else {
        throw ChangelabError("cannot read the approval file \(path)", fix: "check the path")
    }
    guard data.count <= SignedEnvelope.maximumPayload * 2, let envelope = try? StableJSON.decode(SignedEnvelope.self, from: data) else {
        throw ChangelabError(
            "\(path) is not a signed approval", fix: "pass the file 'changelab change approve … --out FILE' wrote")
    }
    return envelope
}

/// Parses `sha256:HEX` or `HEX`.
func parseDigest(_ text: String, what: String) throws -> SHA256Digest {
    let hex = text.hasPrefix("sha256:") ? String(text.dropFirst(7)) : text
    guard let digest = SHA256Digest(hex: hex.lowercased()) else {
        throw ChangelabError("\(what) '\(text.prefix(80))' is not a SHA-256 digest", fix: "write it as sha256: and 64 hex digits")
    }
    return digest
}

extension ChangeStage: ExpressibleByArgument {}
extension ChangeType: ExpressibleByArgument {}
extension ApproverRole: ExpressibleByArgument {}
extension CloseCode: ExpressibleByArgument {}
