import Foundation

/// An IPv4 interface address with its prefix length, `10.77.1.11/24`, as agents report them.
///
/// A target's segment is the subnet of the first IPv4 interface address it reports (agents put
/// the one their route to the core leaves from first): that decides which peers it may
/// download from. Every part is range-checked; a
/// malformed string is nil, never a crash.
public struct InterfaceAddress: Sendable, Equatable, CustomStringConvertible {
    /// The address, host byte order.
    public var address: UInt32
    public var prefixLength: Int

    public init?(_ text: String) {
        guard text.utf8.count <= 18 else { return nil }
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let prefix = Self.decimal(parts[1], max: 32),
            let address = Self.dotted(parts[0])
        else { return nil }
        self.address = address
        self.prefixLength = prefix
    }

    /// `A.B.C.D`, each part 0–255 in at most three decimal digits.
    static func dotted(_ text: Substring) -> UInt32? {
        let octets = text.split(separator: ".", omittingEmptySubsequences: false)
        guard octets.count == 4 else { return nil }
        var value: UInt32 = 0
        for octet in octets {
            guard let byte = decimal(octet, max: 255) else { return nil }
            value = value << 8 | UInt32(byte)
        }
        return value
    }

    /// A decimal number of 1–3 ASCII digits no larger than `max`.
    static func decimal(_ text: Substring, max: Int) -> Int? {
        guard (1...3).contains(text.utf8.count), text.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
            let value = Int(text), value <= max
        else { return nil }
        return value
    }

    var mask: UInt32 { prefixLength == 0 ? 0 : UInt32.max << UInt32(32 - prefixLength) }

    /// The host part without the prefix: `10.77.1.11`.
    public var host: String { Self.text(address) }

    /// The network this address is on: `10.77.1.0/24`.
    public var subnet: String { "\(Self.text(address & mask))/\(prefixLength)" }

    /// Whether `other` (host byte order) is on this address's subnet.
    public func contains(_ other: UInt32) -> Bool { other & mask == address & mask }

    public var description: String { "\(host)/\(prefixLength)" }

    static func text(_ value: UInt32) -> String {
        "\(value >> 24 & 0xFF).\(value >> 16 & 0xFF).\(value >> 8 & 0xFF).\(value & 0xFF)"
    }

    /// The address that decides the segment among `addresses` (interface addresses as sent):
    /// the first well-formed IPv4 one in the order sent (agents before this rule sent them
    /// sorted, so their segment is unchanged); nil when there is none.
    public static func segmentAddress(of addresses: [String]) -> InterfaceAddress? {
        addresses.lazy.compactMap { InterfaceAddress($0) }.first
    }
}

extension AgentRecord {
    /// Takes the segment from a check-in: the subnet of its addresses decides it. The label the
    /// agent sends (`--segment`) only names the segment, and is taken when the subnet changes
    /// (the agent moved), never on its own. A protocol 2 agent, whose addresses carry no prefix,
    /// keeps the label as its segment, as before.
    mutating func apply(segmentOf checkIn: CheckIn, at now: Date = Date()) {
        guard WireProtocol.sendsPrefixes(checkIn.protocolVersion) else {
            segment = checkIn.segment
            subnet = nil
            peerURL = nil
            return
        }
        let address = InterfaceAddress.segmentAddress(of: checkIn.addresses)
        let derived = address?.subnet
        if derived != subnet || derived == nil {
            if subnet != nil && derived != subnet { subnetChangedAt = now }
            segment = checkIn.segment
            subnet = derived
        }
        peerURL = address.flatMap { address in checkIn.peerPort.map { "http://\(address.host):\($0)" } }
        peerServedBytes = checkIn.peerServedBytes
    }
}
