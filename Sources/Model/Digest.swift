import Crypto
import Foundation

/// A SHA-256 digest written as 64 lowercase hex characters, the way artifacts, images
/// and recipes are named everywhere in changelab.
public struct SHA256Digest: Hashable, Sendable, Codable, CustomStringConvertible, Comparable {
    public let hex: String

    /// Accepts exactly 64 hex digits (optionally prefixed `sha256:`); anything else is nil.
    public init?(hex: String) {
        let body = hex.hasPrefix("sha256:") ? String(hex.dropFirst(7)) : hex
        guard body.count == 64, body.allSatisfy({ $0.isHexDigit }) else { return nil }
        self.hex = body.lowercased()
    }

    public init(of data: some DataProtocol) {
        self.hex = SHA256.hash(data: data).hexString
    }

    public init(of string: String) {
        self.init(of: Data(string.utf8))
    }

    /// The first 12 hex digits: enough to tell images apart in tables and paths.
    public var short: String { String(hex.prefix(12)) }
    public var description: String { "sha256:\(hex)" }

    public static func < (lhs: SHA256Digest, rhs: SHA256Digest) -> Bool { lhs.hex < rhs.hex }

    public init(from decoder: Decoder) throws {
        let container = try decoder.singleValueContainer()
        let text = try container.decode(String.self)
        guard let digest = SHA256Digest(hex: text) else {
            throw DecodingError.dataCorruptedError(
                in: container, debugDescription: "'\(text)' is not a SHA-256 digest (64 hex digits)")
        }
        self = digest
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}

extension Sequence where Element == UInt8 {
    /// Lowercase hex, two digits per byte.
    public var hexString: String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(64)
        for byte in self {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0x0f)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}
