#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import Model

/// How much the core accepts from the network: body sizes per route, what an agent may
/// report about itself, and how hard it may knock.
public struct CoreLimits: Sendable {
    /// Check-in bodies (the inventory included) and event batches.
    public var agentBody = 4 << 20
    /// Enrolment requests and admin JSON bodies.
    public var smallBody = 64 << 10
    /// Promote, activate and policy requests carry a change's signed authorization.
    public var authorizationBody = 1 << 20
    /// A published package.
    public var publishBody = 2 << 30
    public var maxAttributes = 64
    public var maxAttributeKey = 64
    public var maxAttributeValue = 256
    public var maxAddresses = 32
    /// MAC addresses an agent may report (Wake-on-LAN), and wake reports in one check-in.
    public var maxMACAddresses = 16
    public var maxWakeReports = 64
    /// Peers named in one answer to `GET /v1/agent/peers/sha256/HEX`.
    public var maxPeersListed = 16
    public var maxName = 64
    /// Installer output kept per target, and a failure's detail.
    public var maxOutputTail = 8 << 10
    public var maxFailureDetail = 4 << 10
    /// Packages plus files plus units… an inventory may list.
    public var maxInventoryItems = 200_000
    /// Check-ins per agent: a burst of so many, refilled at `checkInsPerSecond`.
    public var checkInBurst = 20.0
    public var checkInsPerSecond = 5.0
    /// A connection that sends nothing for this long (with no response being written) is closed.
    public var idleTimeoutMilliseconds: Int64 = 30_000
    /// Seconds between the comment lines that keep an event stream alive (and notice a client that left).
    public var streamPingSeconds = 15
    /// Connections served at once; more wait in the listen backlog.
    public var maxConnections = 4096
    /// Connections the kernel completes before the core accepts them (capped by
    /// `net.core.somaxconn`). A fleet reconnecting at once, or a flood of half-open
    /// connections, overflows a short queue: the kernel then drops the handshake's last ACK
    /// and the client waits for retransmissions (seconds, doubling) before it is even accepted.
    public var listenBacklog = 4096

    public init() {}
}

/// Why an agent's report about itself was refused, every problem named.
struct AgentFactsProblems: Error, CustomStringConvertible {
    var problems: [String]
    var description: String { problems.joined(separator: "; ") }
}

/// The `baseline` attribute: `NAME@N`, the approved baseline and its CMDB version an
/// endpoint runs. Change control matches lab evidence on it, so a malformed value is refused
/// where attributes are taken (the agent's command line and the core's enrolment/check-in).
public enum BaselineAttribute {
    public static let key = "baseline"

    /// Why `value` is not `NAME@N`, or nil when it is: NAME a baseline name (lowercase letters,
    /// digits and '-', starting with a letter, at most 40), N a positive integer.
    public static func problem(_ value: String) -> String? {
        let parts = value.split(separator: "@", omittingEmptySubsequences: false)
        let example = "for example baseline=minimal@1"
        guard parts.count == 2 else {
            return "attribute baseline '\(AgentFacts.printable(value))' must be NAME@VERSION, \(example)"
        }
        guard BaselineRecipe.isValidName(String(parts[0])) else {
            return "attribute baseline '\(AgentFacts.printable(value))' names '\(AgentFacts.printable(String(parts[0])))', which is not a baseline name "
                + "(lowercase letters, digits and '-', starting with a letter, at most 40 characters), \(example)"
        }
        let version = parts[1]
        guard !version.isEmpty, version.count <= 9, version.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
            version.first != "0"
        else {
            return "attribute baseline '\(AgentFacts.printable(value))' has version '\(AgentFacts.printable(String(version)))', "
                + "which is not a positive whole number (the baseline's CMDB version), \(example)"
        }
        return nil
    }
}

enum AgentFacts {
    /// Every problem with what an agent says about itself, empty when it is acceptable.
    static func problems(
        name: String, segment: String, addresses: [String], attributes: [String: String], limits: CoreLimits,
        prefixed: Bool = true, macAddresses: [String]? = nil
    ) -> [String] {
        var problems: [String] = []
        if let problem = identifierProblem(name, what: "agent name", limit: limits.maxName) { problems.append(problem) }
        if let problem = identifierProblem(segment, what: "segment", limit: limits.maxName) {
            problems.append(problem)
        }
        if addresses.count > limits.maxAddresses {
            problems.append("\(addresses.count) addresses (at most \(limits.maxAddresses))")
        }
        for address in addresses.prefix(limits.maxAddresses + 1) {
            if prefixed && !isInterfaceAddress(address) {
                problems.append(
                    "address '\(printable(address))' is not an interface address with its prefix length "
                        + "(10.77.1.11/24 or fd00::5/64)")
            } else if !prefixed && !isIPAddress(address) {
                problems.append("address '\(printable(address))' is not an IPv4 or IPv6 address")
            }
        }
        if let macAddresses {
            if macAddresses.count > limits.maxMACAddresses {
                problems.append("\(macAddresses.count) MAC addresses (at most \(limits.maxMACAddresses))")
            }
            for mac in macAddresses.prefix(limits.maxMACAddresses + 1) where MACAddress(mac)?.description != mac {
                problems.append(
                    "MAC address '\(printable(mac))' is not a unicast Ethernet address in lowercase "
                        + "(six pairs of hex digits separated by ':', such as 52:54:00:ab:cd:ef)")
            }
        }
        if attributes.count > limits.maxAttributes {
            problems.append("\(attributes.count) attributes (at most \(limits.maxAttributes))")
        }
        for (key, value) in attributes.sorted(by: { $0.key < $1.key }).prefix(limits.maxAttributes + 1) {
            if let problem = identifierProblem(key, what: "attribute name", limit: limits.maxAttributeKey) {
                problems.append(problem)
            }
            if value.utf8.count > limits.maxAttributeValue {
                problems.append("attribute \(printable(key)) is \(value.utf8.count) bytes (at most \(limits.maxAttributeValue))")
            } else if value.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) {
                problems.append("attribute \(printable(key)) contains control characters")
            }
            if key == BaselineAttribute.key, let problem = BaselineAttribute.problem(value) {
                problems.append(problem)
            }
        }
        return problems
    }

    /// Names: ASCII letters, digits and `._-`, starting with a letter or digit, 1–`limit` characters.
    static func identifierProblem(_ text: String, what: String, limit: Int) -> String? {
        guard !text.isEmpty, text.utf8.count <= limit,
            text.utf8.allSatisfy({ isAlphanumeric($0) || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: "-") }),
            let first = text.utf8.first, isAlphanumeric(first)
        else {
            return "\(what) '\(printable(text))' must be 1–\(limit) letters, digits, '.', '_' or '-', starting with a letter or digit"
        }
        return nil
    }

    static func isAlphanumeric(_ byte: UInt8) -> Bool {
        (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
    }

    static func isIPAddress(_ text: String) -> Bool {
        guard text.utf8.count <= 64 else { return false }
        var v4 = in_addr()
        var v6 = in6_addr()
        return inet_pton(AF_INET, text, &v4) == 1 || inet_pton(AF_INET6, text, &v6) == 1
    }

    /// `IPv4/0–32` or `IPv6/0–128`: what protocol 3 agents report.
    static func isInterfaceAddress(_ text: String) -> Bool {
        if InterfaceAddress(text) != nil { return true }
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, text.utf8.count <= 64, InterfaceAddress.decimal(parts[1], max: 128) != nil else {
            return false
        }
        var v6 = in6_addr()
        return inet_pton(AF_INET6, String(parts[0]), &v6) == 1
    }

    /// At most 80 characters of `text`, control characters shown as `?`, for error messages.
    static func printable(_ text: String) -> String {
        String(String.UnicodeScalarView(text.unicodeScalars.prefix(80).map { $0.value < 0x20 || $0.value == 0x7F ? "?" : $0 }))
    }
}

extension String {
    /// The last `bytes` bytes of the string at most (cut at a character boundary).
    func boundedTail(_ bytes: Int) -> String {
        guard utf8.count > bytes else { return self }
        var tail = Substring(self)
        while tail.utf8.count > bytes { tail = tail.dropFirst(max(1, (tail.utf8.count - bytes) / 4)) }
        return String(tail)
    }
}

extension CoreSettings {
    /// Refuses settings the rollout engine cannot compute with, naming each and its range.
    public func validate() throws {
        var problems: [String] = []
        func check(_ value: Double, _ name: String, _ range: ClosedRange<Double>) {
            if !value.isFinite || !range.contains(value) {
                problems.append("\(name) is \(value), it must be between \(range.lowerBound) and \(range.upperBound)")
            }
        }
        check(checkInInterval, "the check-in interval (--check-in, seconds)", 0.1...86_400)
        check(offlineAfter, "the offline time (--offline-after, seconds)", 1...30 * 86_400)
        check(retryBase, "the retry base (--retry-base, seconds)", 0.01...86_400)
        check(retryMax, "the retry maximum (seconds)", 0.01...30 * 86_400)
        check(maxFailureRate, "the default failure rate", 0...1)
        if offlineAfter.isFinite && checkInInterval.isFinite && offlineAfter <= checkInInterval {
            // Agents would show offline between check-ins, and representatives lose their lease.
            problems.append(
                "the offline time (--offline-after \(offlineAfter) s) must be longer than the check-in interval (--check-in \(checkInInterval) s)")
        }
        problems += multicast?.problems() ?? []
        if !(1...1000).contains(maxAttempts) {
            problems.append("the attempts per target (--max-attempts) are \(maxAttempts), they must be between 1 and 1000")
        }
        guard problems.isEmpty else {
            throw ChangelabError("the core's settings are out of range", why: problems.joined(separator: "; "), fix: "pass values within the ranges named")
        }
    }
}

/// Per-agent token buckets for check-ins: a burst is fine, a flood gets 429.
final class CheckInLimiter: @unchecked Sendable {
    // @unchecked: `buckets` is guarded by `lock`.
    private let lock = NSLock()
    private var buckets: [String: (tokens: Double, at: ContinuousClock.Instant)] = [:]
    let burst: Double
    let perSecond: Double

    init(burst: Double, perSecond: Double) {
        self.burst = burst
        self.perSecond = perSecond
    }

    /// Takes one check-in from `agent`'s bucket; false when it is empty.
    func allow(_ agent: String) -> Bool {
        let now = ContinuousClock.now
        lock.lock()
        defer { lock.unlock() }
        var bucket = buckets[agent] ?? (burst, now)
        let elapsed = now - bucket.at
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        bucket.tokens = min(burst, bucket.tokens + seconds * perSecond)
        bucket.at = now
        guard bucket.tokens >= 1 else {
            buckets[agent] = bucket
            return false
        }
        bucket.tokens -= 1
        buckets[agent] = bucket
        return true
    }
}

extension InventorySnapshot {
    /// Packages, disks, files, units, users, groups, ports and watched paths listed.
    var itemCount: Int {
        disks.count + packages.count + watchedPaths.count + files.count + units.count + users.count + groups.count
            + ports.count
    }
}
