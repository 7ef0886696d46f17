import Crypto
import Foundation
import HostIO
import Model

/// A payload and the core's Ed25519 signature over its exact bytes.
///
/// The payload travels as the signed bytes themselves (base64), never re-encoded, so the
/// agent verifies exactly what the core signed.
public struct SignedEnvelope: Codable, Sendable, Equatable {
    public var payload: String
    public var signature: String
    /// The signer's public key (hex), so a refusal can say which key signed it.
    public var key: String

    public init(payload: String, signature: String, key: String) {
        self.payload = payload
        self.signature = signature
        self.key = key
    }

    /// Verifies the signature with `trusted` and decodes the payload.
    ///
    /// - Throws: `SignatureRefusal` when the envelope is unsigned, signed by another key or
    ///   altered, or when the payload is not a `T`.
    public func open<T: Decodable>(_ type: T.Type, trusting trusted: ReleasePublicKey) throws -> T {
        guard !signature.isEmpty else { throw SignatureRefusal.unsigned }
        guard let bytes = Data(base64Encoded: payload), let signatureBytes = Data(base64Encoded: signature) else {
            throw SignatureRefusal.malformed
        }
        guard key.lowercased() == trusted.hex else { throw SignatureRefusal.untrustedKey(key) }
        guard trusted.key.isValidSignature(signatureBytes, for: bytes) else { throw SignatureRefusal.badSignature }
        do {
            return try StableJSON.decode(T.self, from: bytes)
        } catch {
            throw SignatureRefusal.malformed
        }
    }
}

/// Why a signed envelope was refused.
public enum SignatureRefusal: Error, CustomStringConvertible, Sendable, Equatable {
    case unsigned
    case malformed
    case untrustedKey(String)
    case badSignature

    public var description: String {
        switch self {
        case .unsigned: return "it carries no signature"
        case .malformed: return "it is not a well-formed signed document"
        case .untrustedKey(let key): return "it is signed by key \(key.prefix(16))…, not this agent's core key"
        case .badSignature: return "its signature does not match its content (forged or altered)"
        }
    }
}

/// The public half of a core's release key, as agents hold it.
public struct ReleasePublicKey: Sendable, Equatable {
    public let key: Curve25519.Signing.PublicKey
    public var hex: String { key.rawRepresentation.hexString }

    public init(_ key: Curve25519.Signing.PublicKey) {
        self.key = key
    }

    /// Parses 64 hex digits (32 bytes); nil for anything else.
    public init?(hex: String) {
        let text = hex.trimmingCharacters(in: .whitespacesAndNewlines).lowercased()
        guard text.count == 64, let bytes = Data(hexEncoded: text),
            let key = try? Curve25519.Signing.PublicKey(rawRepresentation: bytes)
        else { return nil }
        self.key = key
    }

    public static func == (lhs: ReleasePublicKey, rhs: ReleasePublicKey) -> Bool { lhs.hex == rhs.hex }
}

/// The core's release key (Ed25519), kept in the core's state directory, readable by root only.
public struct ReleaseKey: Sendable {
    public let privateKey: Curve25519.Signing.PrivateKey
    public var publicKey: ReleasePublicKey { ReleasePublicKey(privateKey.publicKey) }

    public init(_ privateKey: Curve25519.Signing.PrivateKey = .init()) {
        self.privateKey = privateKey
    }

    /// Loads the key at `path`, creating it (mode 0600) the first time.
    public static func loadOrCreate(at path: String) throws -> ReleaseKey {
        if let data = FileManager.default.contents(atPath: path) {
            let text = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            guard let raw = Data(hexEncoded: text), let key = try? Curve25519.Signing.PrivateKey(rawRepresentation: raw)
            else {
                throw ChangelabError(
                    "the release key \(path) is damaged",
                    fix: "restore it from backup; deleting it makes every agent refuse this core's releases")
            }
            return ReleaseKey(key)
        }
        let key = ReleaseKey()
        try AtomicFile.write(key.privateKey.rawRepresentation.hexString + "\n", to: path, permissions: 0o600)
        return key
    }

    /// Signs the stable JSON encoding of `value`.
    public func sign(_ value: some Encodable) throws -> SignedEnvelope {
        let bytes = try StableJSON.data(value)
        let signature = try privateKey.signature(for: bytes)
        return SignedEnvelope(
            payload: bytes.base64EncodedString(), signature: Data(signature).base64EncodedString(),
            key: publicKey.hex)
    }
}

extension Data {
    /// Bytes from an even number of hex digits; nil for anything else.
    public init?(hexEncoded text: String) {
        let chars = Array(text.utf8)
        guard chars.count % 2 == 0 else { return nil }
        var bytes = [UInt8]()
        bytes.reserveCapacity(chars.count / 2)
        func value(_ c: UInt8) -> UInt8? {
            switch c {
            case 0x30...0x39: return c - 0x30
            case 0x61...0x66: return c - 0x61 + 10
            case 0x41...0x46: return c - 0x41 + 10
            default: return nil
            }
        }
        var i = 0
        while i < chars.count {
            guard let hi = value(chars[i]), let lo = value(chars[i + 1]) else { return nil }
            bytes.append(hi << 4 | lo)
            i += 2
        }
        self.init(bytes)
    }
}
