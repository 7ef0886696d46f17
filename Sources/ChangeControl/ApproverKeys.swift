import Crypto
import Foundation
import HostIO
import Model

/// Approvers' private keys on the machine they sign on: `NAME.key` (0600) in a folder (0700)
/// outside any repository, by default `~/.config/changelab/approvers`.
public struct ApproverKeyring: Sendable, Equatable {
    public let directory: String

    public init(directory: String) {
        let full = directory.hasPrefix("/") ? directory : FileManager.default.currentDirectoryPath + "/" + directory
        self.directory = (full as NSString).standardizingPath
    }

    /// `$CHANGELAB_APPROVER_KEYS`, else `$XDG_CONFIG_HOME/changelab/approvers`, else
    /// `~/.config/changelab/approvers`.
    public static var `default`: ApproverKeyring {
        let environment = ProcessInfo.processInfo.environment
        if let folder = environment["CHANGELAB_APPROVER_KEYS"], !folder.isEmpty { return ApproverKeyring(directory: folder) }
        if let config = environment["XDG_CONFIG_HOME"], config.hasPrefix("/") {
            return ApproverKeyring(directory: config + "/changelab/approvers")
        }
        var home = NSHomeDirectory()
        if let pw = getpwuid(geteuid()), let dir = pw.pointee.pw_dir { home = String(cString: dir) }
        return ApproverKeyring(directory: home + "/.config/changelab/approvers")
    }

    /// The stored form of one key.
    struct KeyFile: Codable {
        var format: Int
        var name: String
        var role: ApproverRole
        /// 64 hex digits of the Ed25519 private key.
        var privateKey: String
    }

    public func path(of name: String) throws -> String {
        try SafeName.check(name, what: "the approver name")
        return "\(directory)/\(name).key"
    }

    /// Makes a new key for `name`; refuses when one exists or the folder is inside `repository`
    /// (or any git work tree).
    public func create(name: String, role: ApproverRole, repository: String?) throws -> SigningKey {
        let path = try path(of: name)
        if let inside = enclosingRepository(repository: repository) {
            throw ChangelabError(
                "the approver key folder \(directory) is inside the repository \(inside)",
                why: "a private key in a repository is one commit away from everyone who clones it",
                fix: "set CHANGELAB_APPROVER_KEYS to a folder outside it (default ~/.config/changelab/approvers)")
        }
        guard !FileManager.default.fileExists(atPath: path) else {
            throw ChangelabError(
                "\(name) already has an approver key at \(path)",
                fix: "use it (changelab change approve … --as \(name)); to replace it, remove the file and the policy entry first")
        }
        try FileManager.default.createDirectory(
            atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let key = SigningKey()
        let file = KeyFile(format: 1, name: name, role: role, privateKey: key.privateKey.rawRepresentation.hexString)
        try AtomicFile.write(try StableJSON.data(file), to: path, permissions: 0o600)
        return key
    }

    /// `name`'s key.
    public func key(_ name: String) throws -> SigningKey {
        let path = try path(of: name)
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ChangelabError(
                "there is no approver key for \(name) in \(directory)",
                fix: "sign where \(name)'s key is, or create one: changelab approver keygen \(name) --role ccb")
        }
        var info = stat()
        if stat(path, &info) == 0, info.st_mode & 0o077 != 0 {
            throw ChangelabError(
                "the approver key \(path) can be read by other accounts", fix: "chmod 600 \(path)")
        }
        guard let file = try? StableJSON.decode(KeyFile.self, from: data), file.format == 1,
            let bytes = Data(hexEncoded: file.privateKey),
            let privateKey = try? Curve25519.Signing.PrivateKey(rawRepresentation: bytes)
        else {
            throw ChangelabError("the approver key \(path) does not read as a changelab key", fix: "restore it from your backup")
        }
        return SigningKey(privateKey)
    }

    /// Names with a key here, sorted.
    public func names() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [])
            .filter { $0.hasSuffix(".key") }.map { String($0.dropLast(4)) }.filter { SafeName.problem($0) == nil }.sorted()
    }

    /// The repository the key folder is in: `repository` itself, or the nearest folder above
    /// it that holds a `.git`; nil when outside both.
    func enclosingRepository(repository: String?) -> String? {
        if let repository {
            let root = (repository as NSString).standardizingPath
            if directory == root || directory.hasPrefix(root + "/") { return root }
        }
        var folder = directory
        while folder.count > 1 {
            if FileManager.default.fileExists(atPath: folder + "/.git") { return folder }
            folder = (folder as NSString).deletingLastPathComponent
        }
        return nil
    }
}
