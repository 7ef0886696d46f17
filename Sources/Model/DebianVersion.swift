/// A Debian package version, `[epoch:]upstream[-revision]`, ordered by dpkg's rules.
///
/// Versions never compare as text: `3.0.9 < 3.0.13`, `1.0~rc1 < 1.0`, `1:0.9 > 2.0`, and
/// `1.0000-1 == 1.0-1`. Parsing follows dpkg's `parseversion`: what dpkg rejects as an
/// error (an empty or non-numeric epoch, an empty upstream or revision, embedded spaces)
/// is always refused; what dpkg only warns about (an upstream that does not start with a
/// digit, characters outside the allowed set) is refused by `init(_:)` and accepted by
/// `init(lenient:)`, which is how versions that dpkg itself reports are read.
public struct DebianVersion: Sendable, Comparable, CustomStringConvertible, Codable {
    /// The text as given (trimmed of surrounding blanks).
    public let text: String
    public let epoch: Int
    public let upstream: String
    /// The Debian revision; empty when the version has none.
    public let revision: String

    /// Why a version string is not a valid Debian version.
    public struct ParseError: Error, CustomStringConvertible, Sendable, Equatable {
        public var version: String
        public var reason: String
        /// True for problems dpkg treats as errors (refused even by `init(lenient:)`).
        public var isFatal: Bool

        public var description: String { "'\(version)' is not a valid Debian version: \(reason)" }
    }

    /// Parses strictly: anything dpkg would warn about is refused too.
    public init(_ text: String) throws {
        self = try DebianVersion.parse(text, lenient: false)
    }

    /// Parses the way dpkg does: refuses only what dpkg refuses.
    public init(lenient text: String) throws {
        self = try DebianVersion.parse(text, lenient: true)
    }

    private init(text: String, epoch: Int, upstream: String, revision: String) {
        self.text = text
        self.epoch = epoch
        self.upstream = upstream
        self.revision = revision
    }

    public var description: String { text }

    private static func isBlank(_ c: UInt8) -> Bool { c == 0x20 || c == 0x09 }
    private static func isDigit(_ c: UInt8) -> Bool { c >= 0x30 && c <= 0x39 }
    private static func isAlpha(_ c: UInt8) -> Bool { (c | 0x20) >= 0x61 && (c | 0x20) <= 0x7a }

    private static func parse(_ input: String, lenient: Bool) throws -> DebianVersion {
        func fail(_ reason: String, fatal: Bool = true) -> ParseError {
            ParseError(version: input, reason: reason, isFatal: fatal)
        }
        var bytes = Array(input.utf8)
        while let first = bytes.first, isBlank(first) { bytes.removeFirst() }
        while let last = bytes.last, isBlank(last) { bytes.removeLast() }
        guard !bytes.isEmpty else { throw fail("the version string is empty") }
        if bytes.contains(where: isBlank) { throw fail("the version string has embedded spaces") }

        var epoch = 0
        var rest = bytes[...]
        if let colon = bytes.firstIndex(of: UInt8(ascii: ":")) {
            // Like strtol: an optional sign, then digits, which must end exactly at the colon.
            var index = 0
            var negative = false
            if bytes[index] == UInt8(ascii: "-") || bytes[index] == UInt8(ascii: "+") {
                negative = bytes[index] == UInt8(ascii: "-")
                index += 1
            }
            let digitsStart = index
            var value = 0
            var tooBig = false
            while index < colon, isDigit(bytes[index]) {
                value = value * 10 + Int(bytes[index] - 0x30)
                if value > Int(Int32.max) { tooBig = true; value = Int(Int32.max) }
                index += 1
            }
            if index == digitsStart { throw fail("the epoch is empty") }
            if index != colon { throw fail("the epoch is not a number") }
            if negative && value > 0 { throw fail("the epoch is negative") }
            if tooBig { throw fail("the epoch is too big") }
            if colon + 1 == bytes.count { throw fail("nothing follows the colon after the epoch") }
            epoch = value
            rest = bytes[(colon + 1)...]
        }
        var upstream = rest
        var revision = rest[rest.endIndex...]
        if let hyphen = rest.lastIndex(of: UInt8(ascii: "-")) {
            upstream = rest[rest.startIndex..<hyphen]
            revision = rest[(hyphen + 1)...]
            if revision.isEmpty { throw fail("the revision after the last '-' is empty") }
        }
        guard let first = upstream.first else { throw fail("the upstream version is empty") }
        if !lenient {
            if !isDigit(first) { throw fail("the upstream version does not start with a digit", fatal: false) }
            let allowedUpstream = Set(".-+~:".utf8)
            if let bad = upstream.first(where: { !isDigit($0) && !isAlpha($0) && !allowedUpstream.contains($0) }) {
                throw fail(
                    "'\(Character(Unicode.Scalar(bad)))' is not allowed in the upstream version "
                        + "(only letters, digits and . + - ~ :)", fatal: false)
            }
            let allowedRevision = Set(".+~".utf8)
            if let bad = revision.first(where: { !isDigit($0) && !isAlpha($0) && !allowedRevision.contains($0) }) {
                throw fail(
                    "'\(Character(Unicode.Scalar(bad)))' is not allowed in the revision (only letters, digits and . + ~)",
                    fatal: false)
            }
        }
        return DebianVersion(
            text: String(decoding: bytes, as: UTF8.self), epoch: epoch,
            upstream: String(decoding: upstream, as: UTF8.self), revision: String(decoding: revision, as: UTF8.self))
    }

    /// dpkg's ordering: epoch numerically, then upstream, then revision, each by `compareParts`.
    public static func compare(_ a: DebianVersion, _ b: DebianVersion) -> Int {
        if a.epoch != b.epoch { return a.epoch < b.epoch ? -1 : 1 }
        let upstream = compareParts(Array(a.upstream.utf8), Array(b.upstream.utf8))
        if upstream != 0 { return upstream }
        return compareParts(Array(a.revision.utf8), Array(b.revision.utf8))
    }

    /// dpkg's `verrevcmp`: alternate non-digit runs (letters before other characters, `~`
    /// before everything, even the end) and digit runs compared as numbers.
    static func compareParts(_ a: [UInt8], _ b: [UInt8]) -> Int {
        func order(_ c: UInt8?) -> Int {
            guard let c else { return 0 }
            if isDigit(c) { return 0 }
            if isAlpha(c) { return Int(c) }
            if c == UInt8(ascii: "~") { return -1 }
            return Int(c) + 256
        }
        var i = 0
        var j = 0
        func at(_ s: [UInt8], _ k: Int) -> UInt8? { k < s.count ? s[k] : nil }
        while i < a.count || j < b.count {
            var firstDifference = 0
            while (at(a, i).map { !isDigit($0) } ?? false) || (at(b, j).map { !isDigit($0) } ?? false) {
                let ac = order(at(a, i))
                let bc = order(at(b, j))
                if ac != bc { return ac < bc ? -1 : 1 }
                i += 1
                j += 1
            }
            while at(a, i) == UInt8(ascii: "0") { i += 1 }
            while at(b, j) == UInt8(ascii: "0") { j += 1 }
            while let ca = at(a, i), let cb = at(b, j), isDigit(ca), isDigit(cb) {
                if firstDifference == 0 { firstDifference = Int(ca) - Int(cb) }
                i += 1
                j += 1
            }
            if let ca = at(a, i), isDigit(ca) { return 1 }
            if let cb = at(b, j), isDigit(cb) { return -1 }
            if firstDifference != 0 { return firstDifference < 0 ? -1 : 1 }
        }
        return 0
    }

    public static func < (lhs: DebianVersion, rhs: DebianVersion) -> Bool { compare(lhs, rhs) < 0 }
    /// Equal by dpkg's rules, so `1.0000-1 == 1.0-1` and `0:1 == 1`.
    public static func == (lhs: DebianVersion, rhs: DebianVersion) -> Bool { compare(lhs, rhs) == 0 }

    public init(from decoder: Decoder) throws {
        let container = try decoder.singleValueContainer()
        let text = try container.decode(String.self)
        do {
            self = try DebianVersion(lenient: text)
        } catch let error as ParseError {
            throw DecodingError.dataCorruptedError(in: container, debugDescription: error.description)
        }
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(text)
    }
}
