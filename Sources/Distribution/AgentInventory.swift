import Foundation
import HostIO
import Model

/// What an agent reports about its host: OS release, kernel and the Debian packages
/// installed in its root.
///
/// A seam: the shared `InventorySnapshot` (module Inventory) will replace this once it
/// lands on main; until then agents carry what dpkg and os-release in their root say.
public struct AgentInventory: Codable, Sendable, Equatable {
    /// `/etc/os-release` fields of the agent's root (ID, VERSION_ID, …).
    public var osRelease: [String: String]
    public var kernel: String
    /// Installed packages (status `install ok installed`): name → version.
    public var packages: [String: String]
    public var collectedAt: Date

    public init(osRelease: [String: String] = [:], kernel: String = "", packages: [String: String] = [:],
                collectedAt: Date = Date()) {
        self.osRelease = osRelease
        self.kernel = kernel
        self.packages = packages
        self.collectedAt = collectedAt
    }
}

/// Where an agent's inventory comes from.
public protocol InventorySource: Sendable {
    func collect(root: String) throws -> AgentInventory
}

/// Reads the dpkg status file and os-release under a root directory.
public struct DpkgInventorySource: InventorySource {
    public init() {}

    public func collect(root: String) throws -> AgentInventory {
        let base = root == "/" ? "" : root
        let status = FileManager.default.contents(atPath: base + "/var/lib/dpkg/status") ?? Data()
        let osText = FileManager.default.contents(atPath: base + "/etc/os-release")
            ?? FileManager.default.contents(atPath: base + "/usr/lib/os-release") ?? Data()
        var uts = utsname()
        uname(&uts)
        let kernel = withUnsafeBytes(of: &uts.release) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        return AgentInventory(
            osRelease: Self.parseOSRelease(String(decoding: osText, as: UTF8.self)),
            kernel: kernel,
            packages: Self.parseDpkgStatus(String(decoding: status, as: UTF8.self)))
    }

    /// Installed packages from a dpkg status file (paragraphs of `Field: value`).
    public static func parseDpkgStatus(_ text: String) -> [String: String] {
        var result: [String: String] = [:]
        for paragraph in text.components(separatedBy: "\n\n") {
            var fields: [String: String] = [:]
            for line in paragraph.split(separator: "\n") where !line.hasPrefix(" ") {
                guard let colon = line.firstIndex(of: ":") else { continue }
                fields[String(line[..<colon])] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            }
            if let name = fields["Package"], let version = fields["Version"],
                fields["Status"]?.hasSuffix(" installed") == true
            {
                result[name] = version
            }
        }
        return result
    }

    public static func parseOSRelease(_ text: String) -> [String: String] {
        var result: [String: String] = [:]
        for line in text.split(separator: "\n") {
            guard let eq = line.firstIndex(of: "="), !line.hasPrefix("#") else { continue }
            var value = String(line[line.index(after: eq)...])
            if value.count >= 2, value.first == "\"" || value.first == "'" { value = String(value.dropFirst().dropLast()) }
            result[String(line[..<eq])] = value
        }
        return result
    }
}
