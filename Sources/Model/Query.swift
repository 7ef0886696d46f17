/// changelab's query language: which baselines, cells or fleet targets have some
/// configuration.
///
///     package:openssl < 3.0.13
///     file:/etc/ssh/sshd_config changed
///     service:nginx enabled and not port:tcp/80
///     site = paris and (os.version >= 12 or package:linux-image-* >= 6.1)
///
/// Grammar (keywords in any case; `and` binds tighter than `or`):
///
///     query     := or
///     or        := and { "or" and }
///     and       := unary { "and" unary }
///     unary     := "not" unary | "(" query ")" | predicate
///     predicate := KIND ":" PATTERN [test] | ATTRIBUTE OP VALUE
///     test      := keyword | OP VALUE | FIELD OP VALUE
///     OP        := = | == | != | < | <= | > | >=
///
/// Parsing is pure; evaluation asks a `QueryFacts` for items and attributes, so the same
/// query runs over the CMDB's index and over a live inventory a fleet agent reported.
public struct Query: Sendable, Equatable, CustomStringConvertible {
    public let text: String
    public let expression: QueryExpression

    /// Parses `text`, or throws a `QuerySyntaxError` naming the column and what was expected.
    public init(_ text: String) throws {
        self.text = text
        var parser = QueryParser(text: text)
        self.expression = try parser.parseQuery()
    }

    public var description: String { text }

    public func matches(_ facts: some QueryFacts) -> Bool { expression.evaluate(facts) }
}

/// A parsed query.
public indirect enum QueryExpression: Sendable, Equatable {
    case and(QueryExpression, QueryExpression)
    case or(QueryExpression, QueryExpression)
    case not(QueryExpression)
    case item(ItemPredicate)
    case attribute(name: String, op: QueryOperator, value: String)

    public func evaluate(_ facts: some QueryFacts) -> Bool {
        switch self {
        case .and(let a, let b): return a.evaluate(facts) && b.evaluate(facts)
        case .or(let a, let b): return a.evaluate(facts) || b.evaluate(facts)
        case .not(let a): return !a.evaluate(facts)
        case .item(let predicate): return predicate.evaluate(facts)
        case .attribute(let name, let op, let value):
            guard let actual = facts.attribute(name) else { return op == .notEqual }
            return op.compare(actual, value, field: name)
        }
    }
}

/// `KIND:PATTERN [test]`.
public struct ItemPredicate: Sendable, Equatable {
    public var category: InventoryCategory
    public var pattern: Glob
    public var test: ItemTest

    public func evaluate(_ facts: some QueryFacts) -> Bool {
        switch test {
        case .exists:
            let items = facts.items(category, matching: pattern)
            return category == .packages
                ? items.contains { $0.attributes["status"]?.hasSuffix(" installed") ?? true }
                : !items.isEmpty
        case .absent:
            let items = facts.items(category, matching: pattern)
            return category == .packages
                ? !items.contains { $0.attributes["status"]?.hasSuffix(" installed") ?? true }
                : items.isEmpty
        case .change(let kinds):
            return facts.changes(category, matching: pattern).contains { kinds.contains($0) }
        case .attribute(let field, let allowed):
            return facts.items(category, matching: pattern).contains { allowed.contains($0.attributes[field] ?? "") }
        case .compare(let field, let op, let value):
            return facts.items(category, matching: pattern).contains { item in
                guard let actual = item.attributes[field] else { return false }
                if category == .packages, !(item.attributes["status"]?.hasSuffix(" installed") ?? true) { return false }
                return op.compare(actual, value, field: field)
            }
        }
    }
}

public enum ItemTest: Sendable, Equatable {
    /// Present (for packages: installed).
    case exists
    case absent
    /// The subject's delta has a change of one of these kinds.
    case change(Set<ChangeKind>)
    /// An attribute takes one of these values (`enabled`, `active`, …).
    case attribute(String, Set<String>)
    case compare(field: String, QueryOperator, String)
}

public enum QueryOperator: String, Sendable, CaseIterable {
    case equal = "="
    case notEqual = "!="
    case less = "<"
    case lessOrEqual = "<="
    case greater = ">"
    case greaterOrEqual = ">="

    /// Compares an actual value with the query's: versions by dpkg's rules, whole numbers
    /// as numbers, `=`/`!=` with `*` or `?` as a glob, anything else as text.
    public func compare(_ actual: String, _ wanted: String, field: String) -> Bool {
        let order: Int
        if field == "version" || field.hasSuffix(".version") {
            guard let a = try? DebianVersion(lenient: actual), let b = try? DebianVersion(lenient: wanted) else {
                return self == .notEqual
            }
            order = DebianVersion.compare(a, b)
        } else if let a = Int(actual), let b = Int(wanted) {
            order = a < b ? -1 : (a == b ? 0 : 1)
        } else if self == .equal || self == .notEqual {
            let glob = Glob(wanted)
            let same = glob.isLiteral ? actual == wanted : glob.matches(actual)
            return (self == .equal) == same
        } else if let a = try? DebianVersion(lenient: actual), let b = try? DebianVersion(lenient: wanted) {
            order = DebianVersion.compare(a, b)
        } else {
            order = actual < wanted ? -1 : (actual == wanted ? 0 : 1)
        }
        switch self {
        case .equal: return order == 0
        case .notEqual: return order != 0
        case .less: return order < 0
        case .lessOrEqual: return order <= 0
        case .greater: return order > 0
        case .greaterOrEqual: return order >= 0
        }
    }
}

/// What a query needs to know about one subject (a baseline, a cell, a fleet target).
public protocol QueryFacts {
    /// The subject's items of `category` that `pattern` names, in its current state.
    func items(_ category: InventoryCategory, matching pattern: Glob) -> [InventoryItem]
    /// The kinds of change its delta records for items `pattern` names.
    func changes(_ category: InventoryCategory, matching pattern: Glob) -> [ChangeKind]
    /// A named attribute (`site`, `kind`, `os.version`, …), nil when it has none.
    func attribute(_ name: String) -> String?
}

/// A subject built from values: attributes, an inventory state and optionally the delta
/// that led to it. Fleet targeting uses this over reported inventories.
public struct QuerySubject: QueryFacts, Sendable {
    public var attributes: [String: String]
    public var state: InventoryState
    public var delta: ConfigurationDelta?

    public init(attributes: [String: String], state: InventoryState, delta: ConfigurationDelta? = nil) {
        self.attributes = attributes
        self.state = state
        self.delta = delta
    }

    public init(attributes: [String: String], inventory: InventorySnapshot?, delta: ConfigurationDelta? = nil) {
        self.init(attributes: attributes, state: inventory.map(InventoryState.init) ?? InventoryState(), delta: delta)
    }

    public func items(_ category: InventoryCategory, matching pattern: Glob) -> [InventoryItem] {
        let byKey = state[category]
        if pattern.isLiteral, let exact = byKey[pattern.pattern], category != .files { return [exact] }
        return byKey.values.filter { ItemPatterns.glob(pattern, matches: category, key: $0.key, name: $0.name) }
    }

    public func changes(_ category: InventoryCategory, matching pattern: Glob) -> [ChangeKind] {
        guard let delta else { return [] }
        let change = delta[category]
        func matching(_ entries: [DeltaEntry]) -> Bool {
            entries.contains { entry in
                let name = InventoryItem.name(
                    for: category, key: entry.key, attributes: entry.after ?? entry.before ?? [:])
                return ItemPatterns.glob(pattern, matches: category, key: entry.key, name: name)
            }
        }
        return [(ChangeKind.added, change.added), (.removed, change.removed), (.changed, change.changed)]
            .filter { matching($0.1) }.map(\.0)
    }

    public func attribute(_ name: String) -> String? {
        attributes[name] ?? Self.systemAttribute(name, in: state)
    }

    /// Attributes every subject with an inventory has: `os`, `os.version`, `os.codename`,
    /// `kernel`, `arch`, `hostname`.
    public static func systemAttribute(_ name: String, in state: InventoryState) -> String? {
        let system = state[.system]
        switch name {
        case "os": return system["os"]?.attributes["id"]
        case "os.version": return system["os"]?.attributes["version"]
        case "os.codename": return system["os"]?.attributes["codename"]
        case "kernel": return system["kernel"]?.attributes["release"]
        case "arch": return system["kernel"]?.attributes["machine"]
        case "hostname": return system["hostname"]?.attributes["name"]
        default: return nil
        }
    }
}

/// A query that does not parse: where, what was expected and what was found.
public struct QuerySyntaxError: Error, CustomStringConvertible, Sendable, Equatable {
    public var query: String
    /// 1-based column (in characters) of the offending token.
    public var column: Int
    public var expected: String
    public var found: String

    public var description: String {
        let caret = String(repeating: " ", count: max(0, column - 1)) + "^"
        return "query error at column \(column): expected \(expected), found \(found)\n  \(query)\n  \(caret)"
    }
}

private struct QueryToken: Equatable {
    enum Kind: Equatable { case word, string, op(QueryOperator), open, close, end }
    var kind: Kind
    var text: String
    var column: Int

    var shown: String {
        switch kind {
        case .end: return "the end of the query"
        case .string: return "\"\(text)\""
        default: return "'\(text)'"
        }
    }

    func isKeyword(_ word: String) -> Bool { kind == .word && text.lowercased() == word }
}

private struct QueryParser {
    let text: String
    var tokens: [QueryToken] = []
    var position = 0
    var lexError: QuerySyntaxError?
    /// How deep `not` and parentheses nest right now.
    var depth = 0
    /// Predicates read so far: each `and`/`or` deepens the expression tree by one, and
    /// evaluating or freeing it recurses that deep.
    var predicates = 0

    /// Far beyond any query a person writes; far below what overflows a thread's stack.
    static let maximumDepth = 64
    static let maximumPredicates = 512

    init(text: String) {
        self.text = text
        tokenize()
    }

    static let kinds: [String: InventoryCategory] = [
        "package": .packages, "pkg": .packages, "file": .files, "service": .units, "unit": .units,
        "user": .users, "group": .groups, "port": .ports, "system": .system,
    ]

    static func fields(_ category: InventoryCategory) -> [String] {
        switch category {
        case .packages: return ["version", "arch", "status"]
        case .files: return ["type", "mode", "owner", "group", "size", "sha256", "target"]
        case .units: return ["enabled", "active"]
        case .users: return ["uid", "gid", "home", "shell"]
        case .groups: return ["gid", "members"]
        case .ports: return ["address", "transport", "port"]
        case .system: return ["id", "version", "codename", "release", "machine", "model", "count", "total_kib", "name"]
        }
    }

    static func keywords(_ category: InventoryCategory) -> [String: ItemTest] {
        var tests: [String: ItemTest] = [
            "exists": .exists, "present": .exists, "absent": .absent, "added": .change([.added]),
            "removed": .change([.removed]), "modified": .change([.changed]),
            "changed": .change([.added, .removed, .changed]),
        ]
        switch category {
        case .packages:
            tests["installed"] = .exists
            tests["missing"] = .absent
        case .units:
            tests["enabled"] = .attribute("enabled", ["enabled", "enabled-runtime"])
            tests["disabled"] = .attribute("enabled", ["disabled"])
            tests["masked"] = .attribute("enabled", ["masked", "masked-runtime"])
            tests["static"] = .attribute("enabled", ["static"])
            tests["active"] = .attribute("active", ["active"])
            tests["inactive"] = .attribute("active", ["inactive", "failed"])
            tests["failed"] = .attribute("active", ["failed"])
        case .ports:
            tests["open"] = .exists
            tests["closed"] = .absent
        default:
            break
        }
        return tests
    }

    // MARK: Tokens

    mutating func tokenize() {
        let chars = Array(text)
        var i = 0
        func isDelimiter(_ c: Character) -> Bool {
            c.isWhitespace || "()<>=!\"".contains(c)
        }
        while i < chars.count {
            let c = chars[i]
            let column = i + 1
            if c.isWhitespace {
                i += 1
            } else if c == "(" || c == ")" {
                tokens.append(QueryToken(kind: c == "(" ? .open : .close, text: String(c), column: column))
                i += 1
            } else if "<>=!".contains(c) {
                let two = i + 1 < chars.count ? String(chars[i...(i + 1)]) : String(c)
                let op: QueryOperator?
                var length = 2
                switch two {
                case "<=": op = .lessOrEqual
                case ">=": op = .greaterOrEqual
                case "!=": op = .notEqual
                case "==": op = .equal
                default:
                    length = 1
                    op = c == "<" ? .less : (c == ">" ? .greater : (c == "=" ? .equal : nil))
                }
                guard let op else {
                    lexError = QuerySyntaxError(
                        query: text, column: column, expected: "an operator (=, !=, <, <=, >, >=)", found: "'\(c)'")
                    return
                }
                tokens.append(QueryToken(kind: .op(op), text: String(chars[i..<(i + length)]), column: column))
                i += length
            } else if c == "\"" {
                guard let value = readString(chars, &i, column: column) else { return }
                tokens.append(QueryToken(kind: .string, text: value, column: column))
            } else {
                var word = ""
                while i < chars.count, !isDelimiter(chars[i]) {
                    word.append(chars[i])
                    i += 1
                }
                // `file:"/a path"`: a quoted pattern right after the colon belongs to the word.
                if word.hasSuffix(":"), i < chars.count, chars[i] == "\"" {
                    guard let value = readString(chars, &i, column: i + 1) else { return }
                    word += value
                }
                tokens.append(QueryToken(kind: .word, text: word, column: column))
            }
        }
        tokens.append(QueryToken(kind: .end, text: "", column: chars.count + 1))
    }

    mutating func readString(_ chars: [Character], _ i: inout Int, column: Int) -> String? {
        var value = ""
        i += 1
        while i < chars.count, chars[i] != "\"" {
            if chars[i] == "\\", i + 1 < chars.count { i += 1 }
            value.append(chars[i])
            i += 1
        }
        guard i < chars.count else {
            lexError = QuerySyntaxError(
                query: text, column: column, expected: "a closing '\"' for the string", found: "the end of the query")
            return nil
        }
        i += 1
        return value
    }

    var current: QueryToken { tokens[min(position, tokens.count - 1)] }

    func error(_ expected: String, at token: QueryToken? = nil) -> QuerySyntaxError {
        let token = token ?? current
        return QuerySyntaxError(query: text, column: token.column, expected: expected, found: token.shown)
    }

    // MARK: Grammar

    mutating func parseQuery() throws -> QueryExpression {
        if let lexError { throw lexError }
        if current.kind == .end { throw error("a predicate such as package:openssl < 3.0.13") }
        let expression = try parseOr()
        guard current.kind == .end else {
            throw error(
                current.kind == .close
                    ? "the end of the query (this ')' has no '(')" : "'and', 'or' or the end of the query")
        }
        return expression
    }

    mutating func parseOr() throws -> QueryExpression {
        var left = try parseAnd()
        while current.isKeyword("or") {
            position += 1
            left = .or(left, try parseAnd())
        }
        return left
    }

    mutating func parseAnd() throws -> QueryExpression {
        var left = try parseUnary()
        while current.isKeyword("and") {
            position += 1
            left = .and(left, try parseUnary())
        }
        return left
    }

    mutating func parseUnary() throws -> QueryExpression {
        guard current.isKeyword("not") || current.kind == .open else {
            predicates += 1
            guard predicates <= Self.maximumPredicates else {
                throw error("at most \(Self.maximumPredicates) predicates in one query (split it into several queries)")
            }
            return try parsePredicate()
        }
        guard depth < Self.maximumDepth else {
            throw error("at most \(Self.maximumDepth) nested 'not' or '(' (simplify the query: 'not not X' is X)")
        }
        depth += 1
        defer { depth -= 1 }
        if current.isKeyword("not") {
            position += 1
            return .not(try parseUnary())
        }
        position += 1
        let inner = try parseOr()
        guard current.kind == .close else { throw error("')' or 'and'/'or'") }
        position += 1
        return inner
    }

    mutating func parsePredicate() throws -> QueryExpression {
        let token = current
        guard token.kind == .word || token.kind == .string,
            !["and", "or"].contains(token.text.lowercased()) || token.kind == .string
        else {
            throw error("a predicate such as package:NAME, file:PATH, service:NAME or an attribute like site = paris")
        }
        position += 1
        if token.kind == .word, let colon = token.text.firstIndex(of: ":") {
            let kindName = token.text[..<colon].lowercased()
            guard let category = Self.kinds[kindName] else {
                throw QuerySyntaxError(
                    query: text, column: token.column,
                    expected: "an item kind (package, file, service, unit, user, group, port, system) before ':'",
                    found: "'\(token.text[..<colon])'")
            }
            let pattern = String(token.text[token.text.index(after: colon)...])
            guard !pattern.isEmpty else {
                throw QuerySyntaxError(
                    query: text, column: token.column + token.text.count,
                    expected: "a name or pattern after '\(kindName):'", found: current.shown)
            }
            let test = try parseTest(category, kindName: kindName)
            return .item(ItemPredicate(category: category, pattern: Glob(pattern), test: test))
        }
        guard case .op(let op) = current.kind else {
            throw error("an operator (=, !=, <, <=, >, >=) after the attribute '\(token.text)'")
        }
        position += 1
        return .attribute(name: token.text, op: op, value: try parseValue(for: token.text))
    }

    mutating func parseTest(_ category: InventoryCategory, kindName: String) throws -> ItemTest {
        let keywords = Self.keywords(category)
        let fields = Self.fields(category)
        if case .op(let op) = current.kind {
            guard category == .packages else {
                throw error("a test before the operator (for \(kindName): \(fields.joined(separator: ", ")))")
            }
            position += 1
            return .compare(field: "version", op, try parseValue(for: "version"))
        }
        guard current.kind == .word, !["and", "or"].contains(current.text.lowercased()) else { return .exists }
        let word = current.text.lowercased()
        if let test = keywords[word] {
            position += 1
            return test
        }
        if fields.contains(word) {
            position += 1
            guard case .op(let op) = current.kind else {
                throw error("an operator (=, !=, <, <=, >, >=) after '\(word)'")
            }
            position += 1
            return .compare(field: word, op, try parseValue(for: word))
        }
        throw error(
            "a test for \(kindName) (\((keywords.keys.sorted() + fields.map { "\($0) OP VALUE" }).joined(separator: ", "))), 'and', 'or' or the end of the query"
        )
    }

    mutating func parseValue(for field: String) throws -> String {
        let token = current
        guard token.kind == .word || token.kind == .string else { throw error("a value to compare \(field) with") }
        position += 1
        if field == "version" {
            do {
                _ = try DebianVersion(token.text)
            } catch let problem as DebianVersion.ParseError {
                throw QuerySyntaxError(
                    query: text, column: token.column, expected: "a Debian version (\(problem.reason))",
                    found: token.shown)
            }
        }
        return token.text
    }
}
