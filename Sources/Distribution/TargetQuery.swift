import Foundation
import Model

/// What a target query can look at: the agent's attributes and reported inventory.
public struct TargetFacts: Sendable {
    public var name: String
    public var segment: String
    public var attributes: [String: String]
    public var inventory: AgentInventory

    public init(name: String, segment: String, attributes: [String: String], inventory: AgentInventory) {
        self.name = name
        self.segment = segment
        self.attributes = attributes
        self.inventory = inventory
    }
}

/// Selects targets. A seam: the shared query language (module Inventory) replaces the
/// interim parser below once it lands on main; callers only see `parse` and `matches`.
public protocol TargetSelector: Sendable {
    func matches(_ facts: TargetFacts) -> Bool
}

/// The interim query language, a subset of the shared one:
///
///     all
///     site:paris   department:finance   segment:s1   name:web-01   os:12
///     package:openssl                      (installed)
///     package:openssl < 3.0.13             (<, <=, =, >=, >, != by dpkg's rules)
///     A and B    A or B    not A    ( A )
public indirect enum TargetQuery: TargetSelector, Equatable {
    case all
    case attribute(String, String)
    case installed(String)
    case version(String, String, String)
    case and(TargetQuery, TargetQuery)
    case or(TargetQuery, TargetQuery)
    case not(TargetQuery)

    public static func parse(_ text: String) throws -> TargetQuery {
        var parser = QueryParser(tokens: QueryParser.tokenize(text), text: text)
        let query = try parser.parseOr()
        if let extra = parser.peek() {
            throw parser.problem("unexpected '\(extra)'")
        }
        return query
    }

    public func matches(_ facts: TargetFacts) -> Bool {
        switch self {
        case .all: return true
        case .attribute(let key, let value):
            switch key {
            case "segment": return facts.segment == value
            case "name": return facts.name == value
            case "os":
                return facts.inventory.osRelease["VERSION_ID"] == value
                    || facts.inventory.osRelease["PRETTY_NAME"] == value
            default: return facts.attributes[key] == value
            }
        case .installed(let name): return facts.inventory.packages[name] != nil
        case .version(let name, let op, let version):
            guard let installed = facts.inventory.packages[name] else { return false }
            let c = InterimDebianVersion.compare(installed, version)
            switch op {
            case "<": return c < 0
            case "<=": return c <= 0
            case "=", "==": return c == 0
            case ">=": return c >= 0
            case ">": return c > 0
            default: return c != 0
            }
        case .and(let a, let b): return a.matches(facts) && b.matches(facts)
        case .or(let a, let b): return a.matches(facts) || b.matches(facts)
        case .not(let a): return !a.matches(facts)
        }
    }
}

private struct QueryParser {
    var tokens: [String]
    var text: String
    var position = 0

    static func tokenize(_ text: String) -> [String] {
        var tokens: [String] = []
        var current = ""
        let chars = Array(text)
        var i = 0
        func flush() {
            if !current.isEmpty { tokens.append(current) }
            current = ""
        }
        while i < chars.count {
            let c = chars[i]
            if c == " " || c == "\t" {
                flush()
            } else if c == "(" || c == ")" {
                flush()
                tokens.append(String(c))
            } else if "<>=!".contains(c) {
                flush()
                if i + 1 < chars.count, chars[i + 1] == "=" {
                    tokens.append(String([c, "="]))
                    i += 1
                } else {
                    tokens.append(String(c))
                }
            } else {
                current.append(c)
            }
            i += 1
        }
        flush()
        return tokens
    }

    func peek() -> String? { position < tokens.count ? tokens[position] : nil }

    mutating func next() -> String? {
        defer { position += 1 }
        return peek()
    }

    func problem(_ message: String) -> ChangelabError {
        ChangelabError(
            "cannot read the target query '\(text)'", why: message,
            fix: "write terms like 'site:paris', 'package:openssl < 3.0.13' joined by and/or/not, or 'all'")
    }

    mutating func parseOr() throws -> TargetQuery {
        var left = try parseAnd()
        while peek()?.lowercased() == "or" {
            position += 1
            left = .or(left, try parseAnd())
        }
        return left
    }

    mutating func parseAnd() throws -> TargetQuery {
        var left = try parseNot()
        while peek()?.lowercased() == "and" {
            position += 1
            left = .and(left, try parseNot())
        }
        return left
    }

    mutating func parseNot() throws -> TargetQuery {
        if peek()?.lowercased() == "not" {
            position += 1
            return .not(try parseNot())
        }
        return try parseTerm()
    }

    mutating func parseTerm() throws -> TargetQuery {
        guard let token = next() else { throw problem("it ends where a term was expected") }
        if token == "(" {
            let inner = try parseOr()
            guard next() == ")" else { throw problem("a '(' is not closed") }
            return inner
        }
        if token.lowercased() == "all" || token == "*" { return .all }
        guard let colon = token.firstIndex(of: ":") else {
            throw problem("'\(token)' is not a term (expected KEY:VALUE)")
        }
        let key = String(token[..<colon]).lowercased()
        let value = String(token[token.index(after: colon)...])
        guard !value.isEmpty else { throw problem("'\(token)' has no value after the colon") }
        if key == "package" {
            if let op = peek(), ["<", "<=", "=", "==", ">=", ">", "!="].contains(op) {
                position += 1
                guard let version = next(), !["and", "or", "not", "(", ")"].contains(version.lowercased()) else {
                    throw problem("'\(token) \(op)' needs a version after it")
                }
                return .version(value, op, version)
            }
            return .installed(value)
        }
        guard key.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" || $0 == "-" }) else {
            throw problem("'\(key)' is not an attribute name")
        }
        return .attribute(key, value)
    }
}

/// dpkg's version ordering (epoch, upstream, revision, `~` before everything), needed by
/// `package:NAME < VERSION` until the shared `DebianVersion` lands in Model.
enum InterimDebianVersion {
    static func compare(_ a: String, _ b: String) -> Int {
        let (ea, ua, ra) = split(a)
        let (eb, ub, rb) = split(b)
        if ea != eb { return ea < eb ? -1 : 1 }
        let u = compareFragment(ua, ub)
        return u != 0 ? u : compareFragment(ra, rb)
    }

    private static func split(_ v: String) -> (Int, String, String) {
        var rest = Substring(v)
        var epoch = 0
        if let colon = rest.firstIndex(of: ":"), let e = Int(rest[..<colon]) {
            epoch = e
            rest = rest[rest.index(after: colon)...]
        }
        if let dash = rest.lastIndex(of: "-") {
            return (epoch, String(rest[..<dash]), String(rest[rest.index(after: dash)...]))
        }
        return (epoch, String(rest), "")
    }

    private static func order(_ c: Character?) -> Int {
        guard let c else { return 0 }
        if c == "~" { return -1 }
        if c.isLetter { return Int(c.asciiValue ?? 0) }
        return Int(c.asciiValue ?? 0) + 256
    }

    private static func compareFragment(_ a: String, _ b: String) -> Int {
        var x = Array(a)[...]
        var y = Array(b)[...]
        while !x.isEmpty || !y.isEmpty {
            while (x.first.map { !$0.isNumber } ?? false) || (y.first.map { !$0.isNumber } ?? false) {
                let cx = x.first.flatMap { $0.isNumber ? nil : $0 }
                let cy = y.first.flatMap { $0.isNumber ? nil : $0 }
                let ox = order(cx)
                let oy = order(cy)
                if ox != oy { return ox < oy ? -1 : 1 }
                if cx != nil { x = x.dropFirst() }
                if cy != nil { y = y.dropFirst() }
            }
            let nx = x.prefix { $0.isNumber }
            let ny = y.prefix { $0.isNumber }
            x = x.dropFirst(nx.count)
            y = y.dropFirst(ny.count)
            let vx = Int(String(nx.drop { $0 == "0" }).prefix(18)) ?? 0
            let vy = Int(String(ny.drop { $0 == "0" }).prefix(18)) ?? 0
            if vx != vy { return vx < vy ? -1 : 1 }
        }
        return 0
    }
}
