import Crypto
import Foundation

/// What a signed document is, with its format version: the only types an envelope may carry.
///
/// The type is part of what is signed (DSSE's pre-authentication encoding), so a signature
/// over a manifest can never be presented as a signature over a job, an approval or a key.
public enum PayloadType: String, Sendable, CaseIterable {
    /// A release manifest: the package's size, digest and chunk hashes (the core's key).
    case releaseManifest = "application/vnd.changelab.release-manifest+json; version=1"
    /// One job for one agent: kind, change, digest, agent id, sequence, expiry (the core's key).
    case job = "application/vnd.changelab.job+json; version=1"
    /// A new core release key, signed with the one it replaces.
    case keyRotation = "application/vnd.changelab.key-rotation+json; version=1"
    /// The change-control trust root: approvers, roles, thresholds and the lab's keys
    /// (signed by a threshold of the approvers of the root it replaces).
    case trustRoot = "application/vnd.changelab.trust-root+json; version=1"
    /// One approver's decision on one stage of one change (the approver's key).
    case approval = "application/vnd.changelab.approval+json; version=1"
    /// The lab's results of one matrix run for one artifact (the lab's key).
    case evidence = "application/vnd.changelab.evidence+json; version=1"
    /// An approver's order to roll a change back (a key whose role the policy lets roll back).
    case rollback = "application/vnd.changelab.rollback+json; version=1"
}

/// One signature in an envelope: the signer's key id (a hint for finding the key, never
/// trusted by itself) and the Ed25519 signature over the pre-authentication encoding.
public struct EnvelopeSignature: Codable, Sendable, Equatable {
    public var keyid: String
    public var sig: String

    public init(keyid: String, sig: String) {
        self.keyid = keyid
        self.sig = sig
    }
}

/// A typed, versioned, signed document in the style of DSSE (in-toto's envelope).
///
/// The payload travels as the signed bytes themselves (base64), never re-encoded, so a
/// verifier checks exactly what was signed. Each signature covers
/// `"DSSEv1" SP len(type) SP type SP len(payload) SP payload`, so the payload type cannot
/// be swapped. Several signatures may stand on one envelope (approvals need a threshold of
/// distinct keys); each is checked against the verifier's own list of trusted keys.
public struct SignedEnvelope: Codable, Sendable, Equatable {
    /// The envelope's own format; unknown versions are refused.
    public static let formatVersion = 2

    public var version: Int
    public var payloadType: String
    public var payload: String
    public var signatures: [EnvelopeSignature]

    public init(payloadType: String, payload: String, signatures: [EnvelopeSignature]) {
        self.version = Self.formatVersion
        self.payloadType = payloadType
        self.payload = payload
        self.signatures = signatures
    }

    /// Reads format 1 envelopes too (`payload`, `signature`, `key`: changelab before typed
    /// envelopes), so an upgraded core can load its old state and sign it again; they carry
    /// version 1 and no payload type, so nothing accepts them as signed documents.
    public init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        if let version = try container.decodeIfPresent(Int.self, forKey: .version) {
            self.version = version
            self.payloadType = try container.decode(String.self, forKey: .payloadType)
            self.payload = try container.decode(String.self, forKey: .payload)
            self.signatures = try container.decode([EnvelopeSignature].self, forKey: .signatures)
            return
        }
        let legacy = try decoder.container(keyedBy: LegacyKeys.self)
        self.version = 1
        self.payloadType = ""
        self.payload = try legacy.decode(String.self, forKey: .payload)
        self.signatures = [
            EnvelopeSignature(
                keyid: try legacy.decode(String.self, forKey: .key),
                sig: try legacy.decode(String.self, forKey: .signature))
        ]
    }

    private enum CodingKeys: String, CodingKey { case version, payloadType, payload, signatures }
    private enum LegacyKeys: String, CodingKey { case payload, signature, key }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(version, forKey: .version)
        try container.encode(payloadType, forKey: .payloadType)
        try container.encode(payload, forKey: .payload)
        try container.encode(signatures, forKey: .signatures)
    }

    /// DSSE's pre-authentication encoding of `type` and `body`: what every signature covers.
    public static func preAuthenticationEncoding(type: String, body: Data) -> Data {
        var data = Data("DSSEv1 \(type.utf8.count) \(type) \(body.count) ".utf8)
        data.append(body)
        return data
    }

    /// The payload bytes, after checking the envelope's own format.
    func checkedBody(as type: PayloadType) throws(SignatureRefusal) -> Data {
        guard version == Self.formatVersion else { throw .unsupportedFormat(version) }
        guard payloadType == type.rawValue else { throw .wrongType(expected: type.rawValue, found: payloadType) }
        guard !signatures.isEmpty else { throw .unsigned }
        guard let body = Data(base64Encoded: payload), body.count <= Self.maximumPayload else { throw .malformed }
        return body
    }

    /// Payloads larger than this are refused before any signature is checked.
    public static let maximumPayload = 16 << 20

    /// The trusted keys whose signatures on this envelope verify (each key counted once).
    public func signers(as type: PayloadType, trusting trusted: [SigningPublicKey]) throws(SignatureRefusal)
        -> [SigningPublicKey]
    {
        let body = try checkedBody(as: type)
        let message = Self.preAuthenticationEncoding(type: payloadType, body: body)
        var found: [SigningPublicKey] = []
        for key in trusted where !found.contains(key) {
            let verified = signatures.contains { signature in
                guard let bytes = Data(base64Encoded: signature.sig), bytes.count == 64 else { return false }
                return key.key.isValidSignature(bytes, for: message)
            }
            if verified { found.append(key) }
        }
        return found
    }

    /// Verifies that at least one trusted key signed this envelope and decodes the payload.
    ///
    /// - Throws: `SignatureRefusal` when the envelope is unsigned, of another type or format,
    ///   signed by no trusted key, altered, or when the payload is not a `T`.
    public func open<T: Decodable>(_ value: T.Type, as type: PayloadType, trusting trusted: [SigningPublicKey])
        throws(SignatureRefusal) -> T
    {
        let body = try checkedBody(as: type)
        guard try !signers(as: type, trusting: trusted).isEmpty else {
            let ids = signatures.map(\.keyid)
            let known = trusted.map(\.keyID)
            throw ids.contains(where: known.contains) ? .badSignature : .untrustedKey(ids.first ?? "")
        }
        do {
            return try StableJSON.decode(T.self, from: body)
        } catch {
            throw .malformed
        }
    }

    /// Decodes the payload WITHOUT verifying it: only to name what a refused document claimed
    /// to be in an error report. Nothing decoded this way may be acted on.
    public func unverifiedClaim<T: Decodable>(_ value: T.Type) -> T? {
        guard let body = Data(base64Encoded: payload), body.count <= Self.maximumPayload else { return nil }
        return try? StableJSON.decode(T.self, from: body)
    }
}

/// Why a signed envelope was refused.
public enum SignatureRefusal: Error, CustomStringConvertible, Sendable, Equatable {
    case unsigned
    case malformed
    case unsupportedFormat(Int)
    case wrongType(expected: String, found: String)
    case untrustedKey(String)
    case badSignature

    public var description: String {
        switch self {
        case .unsigned: return "it carries no signature"
        case .malformed: return "it is not a well-formed signed document"
        case .unsupportedFormat(let version):
            return "it is a signed document of format \(version); this changelab reads format \(SignedEnvelope.formatVersion) (upgrade the older side)"
        case .wrongType(let expected, let found): return "it is a '\(found)', not a '\(expected)'"
        case .untrustedKey(let key): return "it is signed by key \(key.prefix(16))…, which this side does not trust"
        case .badSignature: return "its signature does not match its content (forged or altered)"
        }
    }
}

/// An Ed25519 public key as verifiers hold it (agents pin the core's; approvers' keys are
/// listed in a trust root).
public struct SigningPublicKey: Sendable, Equatable, Hashable {
    public let key: Curve25519.Signing.PublicKey
    public var hex: String { key.rawRepresentation.hexString }
    /// SHA-256 of the raw key, first 16 bytes: the id signatures carry as a hint.
    public var keyID: String { String(SHA256.hash(data: key.rawRepresentation).hexString.prefix(32)) }

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

    public static func == (lhs: SigningPublicKey, rhs: SigningPublicKey) -> Bool { lhs.hex == rhs.hex }
    public func hash(into hasher: inout Hasher) { hasher.combine(hex) }
}

/// An Ed25519 private key that signs envelopes.
public struct SigningKey: Sendable {
    public let privateKey: Curve25519.Signing.PrivateKey
    public var publicKey: SigningPublicKey { SigningPublicKey(privateKey.publicKey) }

    public init(_ privateKey: Curve25519.Signing.PrivateKey = .init()) {
        self.privateKey = privateKey
    }

    /// Reads a key file's text: 64 hex digits of the raw private key (surrounding white space
    /// ignored); nil for anything else.
    public init?(fileText: String) {
        let text = fileText.trimmingCharacters(in: .whitespacesAndNewlines)
        guard text.count == 64, let raw = Data(hexEncoded: text),
            let key = try? Curve25519.Signing.PrivateKey(rawRepresentation: raw)
        else { return nil }
        self.privateKey = key
    }

    /// The key file's text (keep it mode 0600).
    public var fileText: String { privateKey.rawRepresentation.hexString + "\n" }

    /// Signs the stable JSON encoding of `value` as a document of `type`.
    public func sign(_ value: some Encodable, as type: PayloadType) throws -> SignedEnvelope {
        let body = try StableJSON.data(value)
        let signature = try privateKey.signature(
            for: SignedEnvelope.preAuthenticationEncoding(type: type.rawValue, body: body))
        return SignedEnvelope(
            payloadType: type.rawValue, payload: body.base64EncodedString(),
            signatures: [EnvelopeSignature(keyid: publicKey.keyID, sig: Data(signature).base64EncodedString())])
    }

    /// Adds this key's signature to an envelope others signed (an approval's co-signers).
    public func cosign(_ envelope: SignedEnvelope) throws -> SignedEnvelope {
        guard let body = Data(base64Encoded: envelope.payload) else { throw SignatureRefusal.malformed }
        let signature = try privateKey.signature(
            for: SignedEnvelope.preAuthenticationEncoding(type: envelope.payloadType, body: body))
        var signed = envelope
        signed.signatures.removeAll { $0.keyid == publicKey.keyID }
        signed.signatures.append(EnvelopeSignature(keyid: publicKey.keyID, sig: Data(signature).base64EncodedString()))
        return signed
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
        while i + 1 < chars.count {
            guard let hi = value(chars[i]), let lo = value(chars[i + 1]) else { return nil }
            bytes.append(hi << 4 | lo)
            i += 2
        }
        self.init(bytes)
    }
}

/// Names that reach a file system or a command line from outside (change ids, release
/// names, package names): a strict character set, bounded, never a path.
public enum SafeName {
    public static let maximumLength = 128

    /// Why `text` is not a safe name, or nil when it is: 1–128 characters of `A-Z a-z 0-9 . _ : + -`,
    /// starting with a letter or digit, no `..`.
    public static func problem(_ text: String) -> String? {
        if text.isEmpty { return "it is empty" }
        if text.utf8.count > maximumLength { return "it is longer than \(maximumLength) characters" }
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:+-".utf8)
        guard text.utf8.allSatisfy(allowed.contains) else {
            return "it contains characters other than letters, digits and . _ : + -"
        }
        guard let first = text.utf8.first, first != UInt8(ascii: "."), first != UInt8(ascii: "-") else {
            return "it starts with '.' or '-'"
        }
        if text.contains("..") { return "it contains '..'" }
        return nil
    }

    /// Throws a `ChangelabError` naming `what` when `text` is not a safe name.
    public static func check(_ text: String, what: String) throws {
        if let problem = problem(text) {
            let shown = text.count > 40 ? String(text.prefix(40)) + "…" : text
            throw ChangelabError("\(what) '\(shown)' is refused: \(problem)")
        }
    }
}
