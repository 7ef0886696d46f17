#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif
import Foundation
import Model

/// An Ethernet MAC address as agents report it: `52:54:00:ab:cd:ef`, six colon-separated
/// pairs of hex digits. Only unicast, non-zero addresses are accepted (a magic packet wakes
/// one interface; a group address or 00:00:00:00:00:00 names no machine).
public struct MACAddress: Hashable, Sendable, CustomStringConvertible {
    public let bytes: [UInt8]

    public init?(_ text: String) {
        guard text.utf8.count == 17 else { return nil }
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 6 else { return nil }
        var bytes: [UInt8] = []
        for part in parts {
            guard part.utf8.count == 2, part.utf8.allSatisfy({ $0.isHexDigit }), let byte = UInt8(part, radix: 16)
            else { return nil }
            bytes.append(byte)
        }
        self.init(bytes: bytes)
    }

    public init?(bytes: [UInt8]) {
        guard bytes.count == 6, bytes.contains(where: { $0 != 0 }), bytes[0] & 1 == 0 else { return nil }
        self.bytes = bytes
    }

    /// Lowercase, colon-separated: the form the core stores and compares.
    public var description: String { bytes.map { String(format: "%02x", $0) }.joined(separator: ":") }
}

extension UInt8 {
    fileprivate var isHexDigit: Bool {
        (0x30...0x39).contains(self) || (0x41...0x46).contains(self) || (0x61...0x66).contains(self)
    }
}

/// The Wake-on-LAN magic packet: six bytes 0xFF, then the target's MAC address sixteen times
/// (102 bytes), sent as a UDP broadcast on the target's segment (port 9, "discard").
public enum MagicPacket {
    public static let size = 6 + 16 * 6
    public static let port: UInt16 = 9

    public static func encode(_ mac: MACAddress) -> [UInt8] {
        [UInt8](repeating: 0xFF, count: 6) + (0..<16).flatMap { _ in mac.bytes }
    }

    /// The MAC address a datagram wakes, or nil when it is not exactly a magic packet (wrong
    /// length, no synchronisation stream, sixteen copies that differ, or a non-unicast address).
    public static func parse(_ datagram: [UInt8]) -> MACAddress? {
        guard datagram.count == size, datagram.prefix(6).allSatisfy({ $0 == 0xFF }) else { return nil }
        let first = Array(datagram[6..<12])
        for copy in 1..<16 where Array(datagram[(6 + copy * 6)..<(12 + copy * 6)]) != first { return nil }
        return MACAddress(bytes: first)
    }
}

/// Sends and awaits magic packets over real UDP sockets. Blocking: call through `BlockingWork`.
public enum WakeOnLAN {
    /// Sends one magic packet per address to `broadcast` (dotted IPv4, normally the segment's
    /// directed broadcast address) on `port`; returns how many went out.
    public static func send(_ macs: [MACAddress], broadcast: String, port: UInt16 = MagicPacket.port) throws -> Int {
        var destination = sockaddr_in()
        destination.sin_family = sa_family_t(AF_INET)
        destination.sin_port = port.bigEndian
        guard inet_pton(AF_INET, broadcast, &destination.sin_addr) == 1 else {
            throw ChangelabError(
                "'\(broadcast)' is not an IPv4 broadcast address", fix: "pass a dotted address such as 10.77.1.255")
        }
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else { throw socketError("cannot open a UDP socket to send Wake-on-LAN packets") }
        defer { close(fd) }
        var on: Int32 = 1
        guard setsockopt(fd, SOL_SOCKET, SO_BROADCAST, &on, socklen_t(MemoryLayout<Int32>.size)) == 0 else {
            throw socketError("cannot allow broadcast on the Wake-on-LAN socket")
        }
        var sent = 0
        for mac in macs {
            let packet = MagicPacket.encode(mac)
            let result = packet.withUnsafeBytes { buffer in
                withUnsafePointer(to: &destination) { pointer in
                    pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        sendto(fd, buffer.baseAddress, buffer.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                    }
                }
            }
            guard result == packet.count else {
                throw socketError("the magic packet for \(mac) to \(broadcast):\(port) was not sent")
            }
            sent += 1
        }
        return sent
    }

    /// Listens on UDP `port` (all addresses) until a magic packet for `mac` arrives (true) or
    /// `timeout` seconds pass (false). Every other datagram is passed to `ignored` with why.
    public static func wait(
        for mac: MACAddress, port: UInt16 = MagicPacket.port, timeout: Double,
        ignored: (String) -> Void = { _ in }
    ) throws -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else { throw socketError("cannot open a UDP socket to wait for a magic packet") }
        defer { close(fd) }
        var on: Int32 = 1
        _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = 0  // INADDR_ANY
        let bound = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard bound == 0 else {
            throw socketError(
                "cannot listen on UDP port \(port) for the magic packet (another listener, or not root for a port below 1024)"
            )
        }
        let deadline = Date().addingTimeInterval(timeout)
        var buffer = [UInt8](repeating: 0, count: 2048)
        while true {
            let left = deadline.timeIntervalSinceNow
            guard left > 0 else { return false }
            var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let milliseconds = Int32(exactly: min(1000, max(1, (left * 1000).rounded(.up)))) ?? 1000
            let ready = poll(&poller, 1, milliseconds)
            if ready < 0 && errno != EINTR { throw socketError("waiting for the magic packet failed") }
            guard ready > 0 else { continue }
            var sender = sockaddr_in()
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            let count = buffer.withUnsafeMutableBytes { raw in
                withUnsafeMutablePointer(to: &sender) { pointer in
                    pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        recvfrom(fd, raw.baseAddress, raw.count, 0, $0, &length)
                    }
                }
            }
            guard count >= 0 else { continue }
            let datagram = Array(buffer.prefix(count))
            let from = InterfaceAddress.text(UInt32(bigEndian: sender.sin_addr.s_addr))
            guard let target = MagicPacket.parse(datagram) else {
                ignored("\(count) bytes from \(from): not a magic packet (\(MagicPacket.size) bytes: 6×FF, 16×MAC)")
                continue
            }
            guard target == mac else {
                ignored("a magic packet from \(from) for \(target), not \(mac)")
                continue
            }
            return true
        }
    }

    /// This host's Ethernet MAC addresses (loopback and non-Ethernet interfaces left out),
    /// from `/sys/class/net`, sorted and without duplicates, at most `limit`.
    public static func localAddresses(limit: Int = 16) -> [String] {
        let base = "/sys/class/net"
        let names = (try? FileManager.default.contentsOfDirectory(atPath: base)) ?? []
        var found: Set<String> = []
        for name in names where name != "lo" {
            // type 1 is ARPHRD_ETHER (veth and bridges are too).
            guard let type = try? String(contentsOfFile: "\(base)/\(name)/type", encoding: .utf8),
                type.trimmingCharacters(in: .whitespacesAndNewlines) == "1",
                let text = try? String(contentsOfFile: "\(base)/\(name)/address", encoding: .utf8),
                let mac = MACAddress(text.trimmingCharacters(in: .whitespacesAndNewlines).lowercased())
            else { continue }
            found.insert(mac.description)
        }
        return Array(found.sorted().prefix(limit))
    }

    static func socketError(_ what: String) -> ChangelabError {
        ChangelabError(
            what, why: String(cString: strerror(errno)),
            fix: "run as root in the segment's network namespace, and check that UDP broadcast is allowed there")
    }
}

extension InterfaceAddress {
    /// The directed broadcast address of this address's subnet (`10.77.1.255` for
    /// `10.77.1.11/24`); the limited broadcast 255.255.255.255 for /31 and /32, which have none.
    public var broadcast: String {
        prefixLength >= 31 ? "255.255.255.255" : Self.text(address | ~mask)
    }
}
