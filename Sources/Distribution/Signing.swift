import Crypto
import Foundation
import HostIO
import Model

/// The public half of a core's release key, as agents pin it.
public typealias ReleasePublicKey = SigningPublicKey

/// The core's release key (Ed25519), kept in the core's state directory, readable by root only.
///
/// It signs release manifests and every job the core hands an agent; a rotation statement
/// signed with it moves agents to its successor.
public struct ReleaseKey: Sendable {
    public let signing: SigningKey
    public var privateKey: Curve25519.Signing.PrivateKey { signing.privateKey }
    public var publicKey: ReleasePublicKey { signing.publicKey }

    public init(_ privateKey: Curve25519.Signing.PrivateKey = .init()) {
        self.signing = SigningKey(privateKey)
    }

    /// Loads the key at `path`, creating it (mode 0600) the first time.
    public static func loadOrCreate(at path: String) throws -> ReleaseKey {
        if let data = FileManager.default.contents(atPath: path) {
            guard let key = SigningKey(fileText: String(decoding: data, as: UTF8.self)) else {
                throw ChangelabError(
                    "the release key \(path) is damaged",
                    fix: "restore it from backup; deleting it makes every agent refuse this core's releases")
            }
            return ReleaseKey(key.privateKey)
        }
        let key = ReleaseKey()
        try key.save(to: path)
        return key
    }

    /// Writes the key (mode 0600, atomically).
    public func save(to path: String) throws {
        try AtomicFile.write(signing.fileText, to: path, permissions: 0o600)
    }

    public func sign(_ value: some Encodable, as type: PayloadType) throws -> SignedEnvelope {
        try signing.sign(value, as: type)
    }

    /// A statement, signed with this key, that `successor` replaces it.
    public func rotation(to successor: ReleaseKey, at date: Date) throws -> SignedEnvelope {
        try sign(KeyRotation(previous: publicKey.hex, next: successor.publicKey.hex, issuedAt: date), as: .keyRotation)
    }
}

/// "The core's release key `previous` is replaced by `next`", signed by `previous`.
public struct KeyRotation: Codable, Sendable, Equatable {
    public var previous: String
    public var next: String
    public var issuedAt: Date
}

extension KeyRotation {
    /// Follows a chain of rotation statements from the key an agent trusts now: each link
    /// must be signed by the key it replaces. Links that do not continue the chain (older
    /// ones, or forged ones) are skipped; the result is the newest key reached.
    public static func follow(_ chain: [SignedEnvelope], from trusted: ReleasePublicKey) -> ReleasePublicKey {
        var current = trusted
        var progressed = true
        var seen: Set<String> = [trusted.hex]
        // Bounded: each pass either moves to a key not seen before or stops.
        while progressed, seen.count <= chain.count + 1 {
            progressed = false
            for link in chain {
                guard let rotation = try? link.open(KeyRotation.self, as: .keyRotation, trusting: [current]),
                    rotation.previous == current.hex, let next = ReleasePublicKey(hex: rotation.next),
                    !seen.contains(next.hex)
                else { continue }
                current = next
                seen.insert(next.hex)
                progressed = true
            }
        }
        return current
    }
}
