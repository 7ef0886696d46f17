/// A shell-style pattern for paths and names: `*` matches within one path segment, `**`
/// across segments (`/etc/**/x.conf` also matches `/etc/x.conf`), `?` one character.
public struct Glob: Sendable, Hashable, CustomStringConvertible, Codable {
    public let pattern: String
    private let bytes: [UInt8]
    /// True when the pattern has no wildcard, so it matches only its own text.
    public let isLiteral: Bool
    /// For `/a/b` and `/a/b/**`: `/a/b`, which covers a path by a plain prefix test.
    private let folder: String?

    public init(_ pattern: String) {
        self.pattern = pattern
        self.bytes = Array(pattern.utf8)
        let literal = !pattern.contains { $0 == "*" || $0 == "?" }
        self.isLiteral = literal
        if literal {
            folder = pattern
        } else if pattern.hasSuffix("/**"), !pattern.dropLast(3).contains(where: { $0 == "*" || $0 == "?" }) {
            folder = String(pattern.dropLast(3))
        } else {
            folder = nil
        }
    }

    public var description: String { pattern }

    public func matches(_ text: String) -> Bool {
        if isLiteral { return text == pattern }
        var failed = Set<Int>()
        return match(0, Array(text.utf8), 0, &failed)
    }

    /// Matches the path itself or any folder above it, so `/var/log` and `/var/log/**`
    /// both cover `/var/log/syslog`.
    public func matchesPathOrAncestor(_ path: String) -> Bool {
        if let folder {
            return path == folder || (path.hasPrefix(folder) && path.dropFirst(folder.count).first == "/")
        }
        if matches(path) { return true }
        if pattern.hasSuffix("/**"), path == String(pattern.dropLast(3)) { return true }
        var current = Substring(path)
        while let slash = current.lastIndex(of: "/"), slash > current.startIndex {
            current = current[..<slash]
            if matches(String(current)) { return true }
        }
        return false
    }

    private func match(_ p: Int, _ text: [UInt8], _ t: Int, _ failed: inout Set<Int>) -> Bool {
        let memo = p &* 1_000_003 &+ t
        if failed.contains(memo) { return false }
        let result: Bool
        if p == bytes.count {
            result = t == text.count
        } else if bytes[p] == UInt8(ascii: "*") {
            let double = p + 1 < bytes.count && bytes[p + 1] == UInt8(ascii: "*")
            let next = double ? p + 2 : p + 1
            if double, next < bytes.count, bytes[next] == UInt8(ascii: "/"), match(next + 1, text, t, &failed) {
                result = true
            } else {
                var k = t
                var found = false
                while true {
                    if match(next, text, k, &failed) {
                        found = true
                        break
                    }
                    if k == text.count || (!double && text[k] == UInt8(ascii: "/")) { break }
                    k += 1
                }
                result = found
            }
        } else if t < text.count,
            bytes[p] == text[t] || (bytes[p] == UInt8(ascii: "?") && text[t] != UInt8(ascii: "/"))
        {
            result = match(p + 1, text, t + 1, &failed)
        } else {
            result = false
        }
        if !result { failed.insert(memo) }
        return result
    }

    public init(from decoder: Decoder) throws {
        self.init(try decoder.singleValueContainer().decode(String.self))
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(pattern)
    }
}
