import Foundation
import Model

/// What a target query can look at: the agent's attributes and reported inventory.
public struct TargetFacts: Sendable {
    public var name: String
    public var segment: String
    public var attributes: [String: String]
    public var inventory: InventorySnapshot?

    public init(name: String, segment: String, attributes: [String: String], inventory: InventorySnapshot?) {
        self.name = name
        self.segment = segment
        self.attributes = attributes
        self.inventory = inventory
    }
}

/// Selects targets with changelab's query language (Model's `Query`) over what agents
/// reported: attributes (`site = paris`, `department = finance`, `segment = s1`,
/// `name = pc-01`), system attributes (`os.version >= 12`) and inventory items
/// (`package:openssl < 3.0.13`, `service:nginx enabled`); `all` selects every agent.
public struct TargetQuery: Sendable, Equatable {
    /// nil selects every target.
    public let query: Query?

    public static func parse(_ text: String) throws -> TargetQuery {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        if trimmed.lowercased() == "all" || trimmed == "*" { return TargetQuery(query: nil) }
        do {
            return TargetQuery(query: try Query(trimmed))
        } catch let error as QuerySyntaxError {
            throw ChangelabError(
                "cannot read the target query", why: "\(error)",
                fix:
                    "write terms like 'site = paris', 'package:openssl < 3.0.13', 'os.version >= 12' joined by and/or/not, or 'all'"
            )
        }
    }

    public func matches(_ facts: TargetFacts) -> Bool {
        guard let query else { return true }
        var attributes = facts.attributes
        attributes["segment"] = attributes["segment"] ?? facts.segment
        attributes["name"] = attributes["name"] ?? facts.name
        return query.matches(QuerySubject(attributes: attributes, inventory: facts.inventory))
    }
}
