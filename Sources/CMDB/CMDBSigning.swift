import Crypto
import Foundation
import HostIO
import Model

#if canImport(Glibc)
    import Glibc
#endif

/// Where a writer keeps its signing key and which writer keys a verifier trusts.
///
/// Both live outside the CMDB's folder and its history (default `~/.config/changelab/`), so
/// someone who can rewrite the history can neither take the key nor trust a key of their own:
///
///     cmdb-writer.key            this writer's Ed25519 private key, mode 0600
///     cmdb-trusted-keys.json     the writer public keys `cmdb verify` accepts
///
/// The first write on a machine creates the key and lists it in the trusted keys file next
/// to it. A verifier elsewhere (a replica, an auditor) lists the writers it trusts in its own
/// file, given with `cmdb verify --trusted-keys FILE`.
public struct CMDBKeyring: Sendable, Equatable {
    public let directory: String

    public init(directory: String) {
        self.directory = CMDBStore.absolute(directory)
    }

    public var keyPath: String { directory + "/cmdb-writer.key" }
    public var trustedKeysPath: String { directory + "/cmdb-trusted-keys.json" }

    /// `$CHANGELAB_CMDB_KEYS`, else `$XDG_CONFIG_HOME/changelab`, else `~/.config/changelab`.
    public static var `default`: CMDBKeyring {
        let environment = ProcessInfo.processInfo.environment
        if let folder = environment["CHANGELAB_CMDB_KEYS"], !folder.isEmpty { return CMDBKeyring(directory: folder) }
        if let config = environment["XDG_CONFIG_HOME"], config.hasPrefix("/") {
            return CMDBKeyring(directory: config + "/changelab")
        }
        return CMDBKeyring(directory: homeDirectory + "/.config/changelab")
    }

    static var homeDirectory: String {
        if let pw = getpwuid(geteuid()), let dir = pw.pointee.pw_dir { return String(cString: dir) }
        return NSHomeDirectory()
    }

    /// Loads this writer's key, creating it (and trusting it here) on first use.
    public func writerKey(name: String, refusingInside cmdb: String? = nil) throws -> CMDBWriterKey {
        if let cmdb, directory == cmdb || directory.hasPrefix(cmdb + "/") {
            throw ChangelabError(
                "the CMDB writer key folder \(directory) is inside the CMDB \(cmdb)",
                why: "a key kept in the repository protects nothing: whoever can rewrite the history can read it",
                fix: "set CHANGELAB_CMDB_KEYS to a folder outside the CMDB (default ~/.config/changelab)")
        }
        if let key = try CMDBWriterKey.load(keyPath) { return key }
        try FileManager.default.createDirectory(
            atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let key = CMDBWriterKey(name: name, privateKey: Curve25519.Signing.PrivateKey())
        // link() fails when another process created the key first: then that key is ours.
        let temp = "\(keyPath).tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try AtomicFile.write(try StableJSON.data(key.file), to: temp, permissions: 0o600)
        defer { unlink(temp) }
        if link(temp, keyPath) != 0 {
            guard errno == EEXIST, let existing = try CMDBWriterKey.load(keyPath) else {
                throw ChangelabError(
                    "cannot create the CMDB writer key \(keyPath)", why: IOFailure.last("link").description,
                    fix: "make \(directory) writable, or point CHANGELAB_CMDB_KEYS at a folder you own")
            }
            return existing
        }
        AtomicFile.syncDirectory(directory)
        try trust(key.publicKey)
        return key
    }

    /// Adds a writer's public key to the trusted keys file (once).
    public func trust(_ key: CMDBTrustedKey) throws {
        try FileManager.default.createDirectory(
            atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        guard let lock = try FileLock.tryAcquireBlocking(trustedKeysPath + ".lock") else {
            throw ChangelabError("cannot lock \(trustedKeysPath).lock", fix: "check the folder's permissions")
        }
        defer { lock.release() }
        var file = try CMDBTrustedKeys.load(trustedKeysPath) ?? CMDBTrustedKeys(keys: [])
        guard !file.keys.contains(where: { $0.publicKey == key.publicKey }) else { return }
        file.keys.append(key)
        try AtomicFile.write(try StableJSON.data(file), to: trustedKeysPath, permissions: 0o644)
    }
}

extension FileLock {
    /// Waits for the lock on this thread (callers are on a blocking thread or at start-up).
    static func tryAcquireBlocking(_ path: String) throws -> FileLock? {
        for _ in 0..<600 {
            if let lock = try FileLock.tryAcquire(path) { return lock }
            usleep(50_000)
        }
        return nil
    }
}

/// One writer's Ed25519 signing key (swift-crypto's `Curve25519.Signing`).
public struct CMDBWriterKey: Sendable {
    /// Who holds the key (the name it was created for); a hint for people, not an identity.
    public let name: String
    let privateKey: Curve25519.Signing.PrivateKey

    init(name: String, privateKey: Curve25519.Signing.PrivateKey) {
        self.name = name
        self.privateKey = privateKey
    }

    public var publicKey: CMDBTrustedKey {
        CMDBTrustedKey(name: name, publicKey: privateKey.publicKey.rawRepresentation.base64EncodedString())
    }

    struct File: Codable {
        var format = "changelab-cmdb-writer-key"
        var version = 1
        var name: String
        var privateKey: String
    }

    var file: File { File(name: name, privateKey: privateKey.rawRepresentation.base64EncodedString()) }

    /// Reads a key file; nil when there is none. Refuses one others can read.
    static func load(_ path: String) throws -> CMDBWriterKey? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        guard info.st_mode & 0o077 == 0 else {
            throw ChangelabError(
                "the CMDB writer key \(path) can be read by others (mode \(String(info.st_mode & 0o777, radix: 8)))",
                why: "anyone who can read it can sign CMDB commits as this writer",
                fix: "run 'chmod 600 \(path)'; if others may have copied it, remove it from every trusted keys file "
                    + "and delete it (the next write makes a new one)")
        }
        guard let data = FileManager.default.contents(atPath: path),
            let file = try? StableJSON.decode(File.self, from: data), file.format == "changelab-cmdb-writer-key"
        else {
            throw ChangelabError(
                "\(path) is not a CMDB writer key", fix: "restore it from a backup, or remove it to make a new key")
        }
        guard file.version == 1 else {
            throw ChangelabError(
                "the CMDB writer key \(path) has format version \(file.version); this changelab reads version 1",
                fix: "use a newer changelab")
        }
        guard let raw = Data(base64Encoded: file.privateKey),
            let key = try? Curve25519.Signing.PrivateKey(rawRepresentation: raw)
        else {
            throw ChangelabError(
                "the CMDB writer key \(path) is damaged", fix: "restore it from a backup, or remove it to make a new key")
        }
        return CMDBWriterKey(name: file.name, privateKey: key)
    }

    /// The `Changelab-Signature:` trailer for a commit object whose text ends just before it.
    func signature(forCommitText text: String) throws -> String {
        let signature = try privateKey.signature(for: CommitSignature.payload(text))
        return "\(CommitSignature.trailer)ed25519 \(signature.base64EncodedString())\n"
    }
}

/// A writer public key a verifier trusts.
public struct CMDBTrustedKey: Codable, Sendable, Equatable {
    public var name: String
    /// The raw 32-byte Ed25519 public key, base64.
    public var publicKey: String

    public init(name: String, publicKey: String) {
        self.name = name
        self.publicKey = publicKey
    }

    /// The first 16 hex digits of the key's SHA-256: the hint a commit names.
    public var id: String {
        String(SHA256Digest(of: Data(base64Encoded: publicKey) ?? Data()).hex.prefix(16))
    }

    var key: Curve25519.Signing.PublicKey? {
        Data(base64Encoded: publicKey).flatMap { try? Curve25519.Signing.PublicKey(rawRepresentation: $0) }
    }
}

/// `cmdb-trusted-keys.json`.
public struct CMDBTrustedKeys: Codable, Sendable {
    public var format = "changelab-cmdb-trusted-keys"
    public var version = 1
    public var keys: [CMDBTrustedKey]

    public init(keys: [CMDBTrustedKey]) { self.keys = keys }

    /// Reads a trusted keys file; nil when there is none.
    public static func load(_ path: String) throws -> CMDBTrustedKeys? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        let file: CMDBTrustedKeys
        do {
            file = try StableJSON.decode(CMDBTrustedKeys.self, from: data)
        } catch {
            throw ChangelabError(
                "the trusted keys file \(path) does not parse", why: describe(decoding: error),
                fix: "restore it; it lists {\"name\", \"publicKey\"} entries under \"keys\"")
        }
        guard file.format == "changelab-cmdb-trusted-keys", file.version == 1 else {
            throw ChangelabError(
                "\(path) is not a version 1 CMDB trusted keys file (format '\(file.format)', version \(file.version))",
                fix: "pass a trusted keys file made by this changelab")
        }
        for key in file.keys where key.key == nil {
            throw ChangelabError(
                "the trusted keys file \(path) holds a damaged key for '\(key.name)'",
                fix: "replace it with the writer's public key as 'changelab cmdb key' prints it")
        }
        return file
    }

    func key(id: String) -> CMDBTrustedKey? { keys.first { $0.id == id } }
}

/// How a commit carries its signature.
///
/// The writer signs the commit object's exact text up to its last line, which is
/// `Changelab-Signature: ed25519 BASE64`: tree, parent, author, committer, message and the
/// other trailers (operation, actor, key id). The parent links every earlier commit, so a
/// rewritten old commit breaks every later signature.
enum CommitSignature {
    static let trailer = "Changelab-Signature: "
    static let domain = Data("changelab-cmdb-commit 1\n".utf8)

    static func payload(_ text: String) -> Data { domain + Data(text.utf8) }

    struct Parsed {
        var signed: String
        var signature: Data
    }

    /// Splits a raw commit object into what was signed and the signature; nil when unsigned.
    static func parse(_ object: Data) -> Parsed? {
        let text = String(decoding: object, as: UTF8.self)
        guard let range = text.range(of: "\n" + trailer, options: .backwards) else { return nil }
        let signed = String(text[..<range.lowerBound]) + "\n"
        let line = text[range.upperBound...]
        // Nothing may follow the signature line: it would not be covered.
        guard line.hasPrefix("ed25519 "), line.hasSuffix("\n"), line.dropLast().firstIndex(of: "\n") == nil,
            let signature = Data(base64Encoded: String(line.dropFirst("ed25519 ".count).dropLast()))
        else { return nil }
        return Parsed(signed: signed, signature: signature)
    }

    /// A trailer's value in a commit's text, nil when absent.
    static func trailer(_ key: String, in text: String) -> String? {
        for line in text.split(separator: "\n").reversed() where line.hasPrefix(key + ": ") {
            return String(line.dropFirst(key.count + 2))
        }
        return nil
    }
}

/// Makes every object written since the last call durable with one `syncfs(2)` of the file
/// system holding the repository: a handful of loose objects per transaction cost one call
/// instead of an fsync each (git's `core.fsyncMethod=batch` does the same).
func syncFileSystem(of path: String) throws {
    let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    guard fd >= 0 else { throw IOFailure.last("open \(path)") }
    defer { close(fd) }
    if let syncfs = syncfsFunction {
        guard syncfs(fd) == 0 else { throw IOFailure.last("syncfs \(path)") }
    } else {
        sync()
    }
}

/// `syncfs` once for each file system among `paths` (one, unless the CMDB's `.git` was put
/// on another file system than its records).
func syncFileSystems(of paths: [String]) throws {
    var devices: Set<UInt64> = []
    for path in paths {
        var info = stat()
        guard stat(path, &info) == 0 else { throw IOFailure.last("stat \(path)") }
        if devices.insert(UInt64(info.st_dev)).inserted { try syncFileSystem(of: path) }
    }
}

/// Glibc's `syncfs`, which Swift's Glibc module hides behind `_GNU_SOURCE`.
let syncfsFunction = hiddenLibcFunction("syncfs", as: (@convention(c) (Int32) -> Int32).self)
