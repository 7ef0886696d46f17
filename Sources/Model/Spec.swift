import Foundation
import Yams

/// One problem in a spec file (a recipe, a hosts file), with where it is.
public struct SpecProblem: Hashable, Sendable, CustomStringConvertible, Codable {
    public var file: String
    public var line: Int
    public var column: Int
    public var message: String

    public init(file: String, line: Int, column: Int, message: String) {
        self.file = file
        self.line = line
        self.column = column
        self.message = message
    }

    /// `file:line:column: message`, the form editors and CI logs link to.
    public var description: String { "\(file):\(line):\(column): \(message)" }
}

/// Every problem found in one or more spec files, reported together.
public struct SpecValidationError: Error, CustomStringConvertible, Sendable {
    public var problems: [SpecProblem]

    public init(problems: [SpecProblem]) {
        self.problems = problems
    }

    public var description: String {
        let files = Set(problems.map(\.file)).sorted()
        let count = problems.count == 1 ? "1 problem" : "\(problems.count) problems"
        let lines = problems.map { "  \($0)" }.joined(separator: "\n")
        return "\(count) in \(files.joined(separator: ", ")):\n\(lines)"
    }
}

/// Reads a YAML spec and collects every problem in it, each with its line and column.
///
/// Typical use: open, take the root mapping, read each key with `required`/`optional`,
/// then call `finish()`, which throws one `SpecValidationError` listing everything wrong.
/// Readers never throw on a single bad value, so one run reports the whole file.
public final class SpecReader {
    public let file: String
    public private(set) var problems: [SpecProblem] = []
    /// The document's root node, nil when the text is not YAML or is empty.
    public private(set) var root: Node?

    public init(file: String, text: String) {
        self.file = file
        do {
            root = try Yams.compose(yaml: text)
            if root == nil { report(line: 1, column: 1, "the file is empty; expected a YAML mapping") }
        } catch let error as YamlError {
            recordParseError(error)
        } catch {
            report(line: 1, column: 1, "not valid YAML: \(error)")
        }
    }

    /// Reads `path` from disk; a missing or unreadable file is a problem, not a crash.
    public convenience init(path: String, displayPath: String? = nil) {
        let shown = displayPath ?? path
        if let data = FileManager.default.contents(atPath: path) {
            self.init(file: shown, text: String(decoding: data, as: UTF8.self))
        } else {
            self.init(file: shown, text: "")
            problems = [SpecProblem(file: shown, line: 1, column: 1, message: "cannot read the file")]
        }
    }

    /// Records a problem at `node` (or the start of the file when the node has no mark).
    public func report(at node: Node?, _ message: String) {
        let mark = node?.mark
        report(line: mark?.line ?? 1, column: mark?.column ?? 1, message)
    }

    public func report(line: Int, column: Int, _ message: String) {
        problems.append(SpecProblem(file: file, line: line, column: column, message: message))
    }

    /// The root as a mapping whose keys must come from `keys`.
    public func rootMapping(keys: [String]) -> SpecMapping? {
        guard let root else { return nil }
        return SpecMapping(node: root, reader: self, allowedKeys: keys, what: "the document")
    }

    /// Throws every recorded problem, or returns when there is none.
    public func finish() throws {
        if !problems.isEmpty {
            let ordered = problems.enumerated().sorted { a, b in
                (a.element.line, a.element.column, a.offset) < (b.element.line, b.element.column, b.offset)
            }.map(\.element)
            throw SpecValidationError(problems: ordered)
        }
    }

    private func recordParseError(_ error: YamlError) {
        switch error {
        case .scanner(let context, let problem, let mark, _),
            .parser(let context, let problem, let mark, _),
            .composer(let context, let problem, let mark, _):
            let detail = context.map { "\(problem) (\($0.text) at \($0.mark.line):\($0.mark.column))" } ?? problem
            report(line: mark.line, column: mark.column, "not valid YAML: \(detail)")
        case .duplicatedKeysInMapping(let duplicates, let context):
            report(
                line: context.mark.line, column: context.mark.column,
                "duplicate key \(duplicates.map { "'\($0)'" }.joined(separator: ", "))")
        case .reader(let problem, _, _, _):
            report(line: 1, column: 1, "not valid YAML: \(problem)")
        default:
            report(line: 1, column: 1, "not valid YAML: \(error)")
        }
    }
}

/// A YAML mapping being read; unknown keys are reported once, when it is created.
public struct SpecMapping {
    public let node: Node
    public let reader: SpecReader
    private let pairs: [(key: String, keyNode: Node, value: Node)]

    /// Nil (and a problem recorded) when `node` is not a mapping.
    public init?(node: Node, reader: SpecReader, allowedKeys: [String], what: String) {
        guard case .mapping(let mapping) = node else {
            reader.report(at: node, "\(what) must be a mapping of keys to values")
            return nil
        }
        self.node = node
        self.reader = reader
        var pairs: [(String, Node, Node)] = []
        for (key, value) in mapping {
            guard let name = key.string else {
                reader.report(at: key, "keys must be plain strings")
                continue
            }
            if !allowedKeys.contains(name) {
                let hint = SpecMapping.nearest(name, in: allowedKeys).map { "; did you mean '\($0)'?" } ?? ""
                reader.report(
                    at: key,
                    "unknown key '\(name)' in \(what)\(hint) (known keys: \(allowedKeys.joined(separator: ", ")))")
            }
            pairs.append((name, key, value))
        }
        self.pairs = pairs
    }

    public func has(_ key: String) -> Bool { pairs.contains { $0.key == key } }

    public func value(_ key: String) -> Node? { pairs.first { $0.key == key }?.value }

    /// Where `key` is written, for problems about a key's meaning rather than its type.
    public func keyNode(_ key: String) -> Node? { pairs.first { $0.key == key }?.keyNode }

    /// A required value; records "missing key" or a type problem and returns nil.
    public func required<T: SpecScalar>(_ key: String, _ type: T.Type = T.self) -> T? {
        guard let node = value(key) else {
            reader.report(at: self.node, "missing required key '\(key)'")
            return nil
        }
        return T.read(node, key: key, reader: reader)
    }

    public func optional<T: SpecScalar>(_ key: String, _ type: T.Type = T.self) -> T? {
        guard let node = value(key), !node.isNull else { return nil }
        return T.read(node, key: key, reader: reader)
    }

    public func optional<T: SpecScalar>(_ key: String, default fallback: T) -> T {
        optional(key, T.self) ?? fallback
    }

    /// A list of scalars; a single scalar is not accepted, so typos show up.
    public func list<T: SpecScalar>(_ key: String, of type: T.Type = T.self) -> [T] {
        guard let node = value(key), !node.isNull else { return [] }
        guard case .sequence(let sequence) = node else {
            reader.report(at: node, "'\(key)' must be a list")
            return []
        }
        return sequence.compactMap { T.read($0, key: key, reader: reader) }
    }

    /// A nested mapping, nil when absent (or wrong, with a problem recorded).
    public func mapping(_ key: String, keys: [String]) -> SpecMapping? {
        guard let node = value(key), !node.isNull else { return nil }
        return SpecMapping(node: node, reader: reader, allowedKeys: keys, what: "'\(key)'")
    }

    /// A list of mappings, each with the allowed `keys`.
    public func mappings(_ key: String, keys: [String]) -> [SpecMapping] {
        guard let node = value(key), !node.isNull else { return [] }
        guard case .sequence(let sequence) = node else {
            reader.report(at: node, "'\(key)' must be a list")
            return []
        }
        return sequence.compactMap { SpecMapping(node: $0, reader: reader, allowedKeys: keys, what: "an entry of '\(key)'") }
    }

    /// A mapping of string keys to scalar values (for example environment variables).
    public func dictionary<T: SpecScalar>(_ key: String, of type: T.Type = T.self) -> [String: T] {
        guard let node = value(key), !node.isNull else { return [:] }
        guard case .mapping(let mapping) = node else {
            reader.report(at: node, "'\(key)' must be a mapping")
            return [:]
        }
        var result: [String: T] = [:]
        for (k, v) in mapping {
            guard let name = k.string else {
                reader.report(at: k, "keys of '\(key)' must be strings")
                continue
            }
            if let value = T.read(v, key: "\(key).\(name)", reader: reader) { result[name] = value }
        }
        return result
    }

    /// Suggests the allowed key closest to a misspelt one (edit distance ≤ 2).
    static func nearest(_ word: String, in candidates: [String]) -> String? {
        func distance(_ a: [Character], _ b: [Character]) -> Int {
            var previous = Array(0...b.count)
            for (i, ca) in a.enumerated() {
                var current = [i + 1]
                for (j, cb) in b.enumerated() {
                    current.append(min(previous[j + 1] + 1, current[j] + 1, previous[j] + (ca == cb ? 0 : 1)))
                }
                previous = current
            }
            return previous[b.count]
        }
        let scored = candidates.map { ($0, distance(Array(word), Array($0))) }.filter { $0.1 <= 2 }
        return scored.min { $0.1 < $1.1 }?.0
    }
}

extension Node {
    var isNull: Bool {
        guard case .scalar(let scalar) = self, scalar.style == .plain else { return false }
        return ["", "~", "null", "Null", "NULL"].contains(scalar.string)
    }
}

/// A scalar type a spec can hold: strings, integers, booleans, doubles.
public protocol SpecScalar {
    static var typeName: String { get }
    static func read(_ node: Node, key: String, reader: SpecReader) -> Self?
}

extension SpecScalar {
    static func mismatch(_ node: Node, key: String, reader: SpecReader) -> Self? {
        let shown: String
        switch node {
        case .scalar(let scalar): shown = "'\(scalar.string)'"
        case .mapping: shown = "a mapping"
        case .sequence: shown = "a list"
        case .alias: shown = "an alias"
        }
        reader.report(at: node, "'\(key)' must be \(typeName), not \(shown)")
        return nil
    }
}

extension String: SpecScalar {
    public static var typeName: String { "a string" }
    public static func read(_ node: Node, key: String, reader: SpecReader) -> String? {
        guard case .scalar(let scalar) = node else { return mismatch(node, key: key, reader: reader) }
        return scalar.string
    }
}

extension Int: SpecScalar {
    public static var typeName: String { "a whole number" }
    public static func read(_ node: Node, key: String, reader: SpecReader) -> Int? {
        guard case .scalar = node, let value = node.int else { return mismatch(node, key: key, reader: reader) }
        return value
    }
}

extension Double: SpecScalar {
    public static var typeName: String { "a number" }
    public static func read(_ node: Node, key: String, reader: SpecReader) -> Double? {
        guard case .scalar = node, let value = node.float ?? node.int.map(Double.init) else {
            return mismatch(node, key: key, reader: reader)
        }
        return value
    }
}

extension Bool: SpecScalar {
    public static var typeName: String { "true or false" }
    public static func read(_ node: Node, key: String, reader: SpecReader) -> Bool? {
        guard case .scalar = node, let value = node.bool else { return mismatch(node, key: key, reader: reader) }
        return value
    }
}
