import CNorm
import Foundation
import Glibc
import HostIO
import Model

/// How one NORM (RFC 5740) file transfer runs on a segment: the group, the rate, the FEC
/// code and the timers. The defaults are the settings measured on the test fleet's
/// segments (DESIGN.md): Reed–Solomon blocks of 128 segments with 32 parity segments, 8
/// of them sent proactively, and a round-trip estimate capped for a LAN — NORM's own
/// defaults are tuned for wide-area paths and make every repair round take seconds.
public struct NormSettings: Sendable, Equatable, Codable {
    /// The IPv4 multicast group (administratively scoped 239.0.0.0/8 by default).
    public var group: String
    public var port: UInt16
    /// The interface multicast leaves by (the segment's), or nil for the route's.
    public var interface: String?
    /// The sender's rate in bytes per second: the ceiling with congestion control, the
    /// fixed rate without.
    public var rate: Int64
    /// NORM-CC: back off when the segment is busy (background seeding).
    public var congestionControl = false
    public var segmentSize: UInt16 = 1400
    public var blockSize: UInt16 = 128
    public var parity: UInt16 = 32
    /// Parity segments sent with every block before any NACK (forward error correction).
    public var autoParity: UInt8 = 8
    public var grttEstimate = 0.01
    public var grttMax = 0.05
    public var ttl: UInt8 = 1

    public init(group: String, port: UInt16, interface: String? = nil, rate: Int64) {
        self.group = group
        self.port = port
        self.interface = interface
        self.rate = rate
    }

    /// Every problem with these settings, each naming the fix; empty when they are usable.
    public func problems() -> [String] {
        var problems: [String] = []
        if !Self.isMulticast(group) {
            problems.append("group '\(group)' is not an IPv4 multicast address: give one in 239.0.0.0/8, like 239.77.1.1")
        }
        if port < 1024 { problems.append("port \(port) is privileged or zero: give 1024-65535") }
        if let interface, !Self.isInterfaceName(interface) {
            problems.append("interface '\(interface)' is not an interface name (1-15 letters, digits, '.', '_', '-')")
        }
        if rate < 1000 || rate > 1 << 34 { problems.append("rate \(rate) B/s is outside 1000 B/s-16 GiB/s") }
        if segmentSize < 256 || segmentSize > 8192 { problems.append("segment size \(segmentSize) is outside 256-8192") }
        if blockSize < 1 || parity > 255 || Int(blockSize) + Int(parity) > 255 {
            problems.append("block \(blockSize) + parity \(parity) must be at most 255 (Reed–Solomon over GF(2^8))")
        }
        if autoParity > parity { problems.append("auto-parity \(autoParity) exceeds the parity \(parity)") }
        if !(grttEstimate > 0 && grttEstimate <= grttMax && grttMax <= 10) {
            problems.append("round-trip estimate \(grttEstimate) s must be positive and at most the cap \(grttMax) s (≤ 10 s)")
        }
        if ttl < 1 { problems.append("TTL must be at least 1") }
        return problems
    }

    func check() throws {
        let problems = problems()
        guard problems.isEmpty else {
            throw ChangelabError("the multicast settings are not usable", why: problems.joined(separator: "; "))
        }
    }

    /// Whether `text` is a dotted IPv4 address in 224.0.0.0/4.
    public static func isMulticast(_ text: String) -> Bool {
        var address = in_addr()
        guard text.utf8.count <= 15, inet_pton(AF_INET, text, &address) == 1 else { return false }
        return UInt32(bigEndian: address.s_addr) >> 28 == 0xE
    }

    static func isInterfaceName(_ text: String) -> Bool {
        !text.isEmpty && text.utf8.count <= 15
            && text.utf8.allSatisfy { $0.isASCIIAlphanumeric || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: "-") }
    }
}

extension UInt8 {
    fileprivate var isASCIIAlphanumeric: Bool {
        (0x30...0x39).contains(self) || (0x41...0x5A).contains(self) || (0x61...0x7A).contains(self)
    }
}

/// A NORM node id: 32 bits, never 0 (NORM_NODE_NONE) or 0xFFFFFFFF (NORM_NODE_ANY).
public struct NormNode: Sendable, Hashable, Codable, Comparable, CustomStringConvertible {
    public let id: UInt32

    public init?(_ id: UInt32) {
        guard id != 0, id != .max else { return nil }
        self.id = id
    }

    public init?(_ text: String) {
        guard let value = UInt32(text) else { return nil }
        self.init(value)
    }

    public var description: String { String(id) }
    public static func < (a: NormNode, b: NormNode) -> Bool { a.id < b.id }

    public init(from decoder: Decoder) throws {
        let container = try decoder.singleValueContainer()
        let value = try container.decode(UInt32.self)
        guard let node = NormNode(value) else {
            throw DecodingError.dataCorruptedError(in: container, debugDescription: "\(value) is not a NORM node id")
        }
        self = node
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(id)
    }
}

/// What a sender learned from its receivers' acknowledgements.
public struct NormSendReport: Sendable, Codable, Equatable {
    /// Receivers that acknowledged the whole object (NORM's positive-ack watermark).
    public var acknowledged: [NormNode]
    /// Receivers that had not acknowledged when the last round ended: stragglers that fall
    /// back to a peer or the core.
    public var missing: [NormNode]
    /// Watermark rounds run (the first plus each re-request from the stragglers).
    public var rounds: Int
    public var seconds: Double
}

/// What a receiver got.
public struct NormReceiveReport: Sendable, Codable, Equatable {
    public var size: Int64
    public var seconds: Double
    /// Objects refused: from another sender than the job's, of another size or kind, or
    /// announcing another release. Their bytes were never written to the destination.
    public var refused: Int
    /// With a manifest: the chunks of the received file that do not match it (empty: every
    /// byte is the signed package).
    public var failingChunks: [Int]?
}

public enum NormTransferError: Error, CustomStringConvertible, Equatable {
    case setup(String)
    case timedOut(String)
    case aborted(String)
    case incomplete(String)

    public var description: String {
        switch self {
        case .setup(let text): return "NORM could not start: \(text)"
        case .timedOut(let text): return "the multicast transfer timed out: \(text)"
        case .aborted(let text): return "the multicast sender aborted the object: \(text)"
        case .incomplete(let text): return "the multicast transfer ended incomplete: \(text)"
        }
    }
}

/// One NORM file object from a segment's representative to its receivers, each transfer on
/// a NORM instance and a thread of its own (NORM runs one protocol thread per instance;
/// changelab pulls that instance's events from one thread, so no handle is used after the
/// event that carried it).
public enum NormTransfer {
    /// The command a sender multicasts once every receiver acknowledged (or the rounds
    /// ran out): receivers that hold the object stop then.
    static let endCommand = Array("changelab-norm-end".utf8)
    /// Socket buffers of a NORM session (bytes).
    static let socketBuffer: UInt32 = 4 << 20

    /// Sends `file` to `receivers` (their NORM node ids) as one file object announced with
    /// `info`, waits for every receiver's positive acknowledgement, and re-requests from the
    /// stragglers for up to `rounds` watermark rounds.
    public static func send(
        file: String, info: [UInt8], node: NormNode, receivers: [NormNode], settings: NormSettings, rounds: Int = 3,
        timeout: Duration
    ) async throws -> NormSendReport {
        try settings.check()
        guard info.count <= 1000 else { throw NormTransferError.setup("object info is \(info.count) bytes (at most 1000)") }
        guard FileManager.default.isReadableFile(atPath: file) else {
            throw ChangelabError("cannot read \(file)", fix: "check the path and its permissions")
        }
        let receivers = Array(Set(receivers)).sorted()
        return try await onOwnThread(timeout: timeout) { stop, deadline in
            try sendNow(
                file: file, info: info, node: node, receivers: receivers, settings: settings,
                rounds: max(1, rounds), stop: stop, deadline: deadline)
        }
    }

    /// Receives the one file object `sender` multicasts with exactly `info` and `size`
    /// into `destination` (a path the caller derived; NORM's object names never become
    /// paths). NORM writes into a fresh folder of `workDirectory` first; the file is renamed
    /// into place only once complete. Returns when the sender ends the transfer (or goes
    /// quiet) after the object completed; acknowledges the sender's watermark meanwhile.
    public static func receive(
        into destination: String, workDirectory: String, node: NormNode, sender: NormNode, size: Int64,
        info: [UInt8], manifest: ReleaseManifest? = nil, settings: NormSettings, timeout: Duration,
        linger: Duration = .seconds(10), ready: (@Sendable () -> Void)? = nil
    ) async throws -> NormReceiveReport {
        try settings.check()
        guard size > 0 else { throw NormTransferError.setup("the expected size must be positive") }
        guard info.count <= 1000 else { throw NormTransferError.setup("object info is \(info.count) bytes (at most 1000)") }
        if let manifest, manifest.size != size {
            throw NormTransferError.setup("the manifest is for \(manifest.size) bytes, not the expected \(size)")
        }
        let scratch = workDirectory + "/norm-" + UUID().uuidString.lowercased()
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        return try await onOwnThread(timeout: timeout) { stop, deadline in
            try receiveNow(
                into: destination, scratch: scratch, node: node, sender: sender, size: size, info: info,
                manifest: manifest, settings: settings, linger: linger, stop: stop, deadline: deadline, ready: ready)
        }
    }

    // MARK: The protocol thread's side

    private static func sendNow(
        file: String, info: [UInt8], node: NormNode, receivers: [NormNode], settings: NormSettings, rounds: Int,
        stop: AtomicFlag, deadline: ContinuousClock.Instant
    ) throws -> NormSendReport {
        let started = ContinuousClock.now
        let (instance, session) = try open(settings, node: node)
        defer { close(instance, session) }
        NormSetGrttEstimate(session, settings.grttEstimate)
        NormSetGrttMax(session, settings.grttMax)
        let bits = Double(settings.rate) * 8
        if settings.congestionControl {
            NormSetCongestionControl(session, true, true)
            NormSetTxRateBounds(session, -1, bits)
        } else {
            NormSetTxRate(session, bits)
        }
        NormSetAutoParity(session, settings.autoParity)
        for receiver in receivers { _ = NormAddAckingNode(session, receiver.id) }
        let buffer = UInt32(16 << 20)
        guard
            NormStartSender(
                session, NormGetRandomSessionId(), buffer, settings.segmentSize, settings.blockSize, settings.parity, 0)
        else { throw NormTransferError.setup("NormStartSender refused \(settings.group):\(settings.port)") }
        _ = NormSetTxSocketBuffer(session, Self.socketBuffer)
        _ = NormSetRxSocketBuffer(session, Self.socketBuffer)
        let object = info.withUnsafeBufferPointer { pointer in
            pointer.withMemoryRebound(to: CChar.self) {
                NormFileEnqueue(session, file, $0.baseAddress, UInt32($0.count))
            }
        }
        guard object != nil else { throw NormTransferError.setup("NormFileEnqueue refused \(file)") }
        // NORM's positive acknowledgement says a receiver has nothing left to ask for up to
        // the watermark. A receiver that refused the object says that too, so the sender's
        // list is not proof of a copy: what a receiver holds verified is its own report.
        _ = NormSetWatermark(session, object, true)
        var round = 1
        var acknowledged: [NormNode] = []
        var missing = receivers
        var ended = false
        let outcome = pump(instance, stop: stop, deadline: deadline) { event in
            switch event.type {
            case NORM_TX_WATERMARK_COMPLETED:
                acknowledged = receivers.filter { NormGetAckingStatus(session, $0.id) == NORM_ACK_SUCCESS }
                missing = receivers.filter { !acknowledged.contains($0) }
                if missing.isEmpty || round >= rounds {
                    ended = true
                    endCommand.withUnsafeBufferPointer { pointer in
                        pointer.withMemoryRebound(to: CChar.self) {
                            _ = NormSendCommand(session, $0.baseAddress, UInt32($0.count), true)
                        }
                    }
                } else {
                    // Ask the stragglers again.
                    round += 1
                    _ = NormResetWatermark(session)
                }
                return false
            case NORM_TX_CMD_SENT:
                return ended
            default:
                return false
            }
        }
        switch outcome {
        case .done: break
        case .stopped: throw CancellationError()
        case .timedOut:
            if !ended {
                throw NormTransferError.timedOut(
                    "\(missing.count) of \(receivers.count) receivers had not acknowledged after \(round) round(s)")
            }
        }
        return NormSendReport(
            acknowledged: acknowledged, missing: missing, rounds: round, seconds: started.secondsSince)
    }

    private static func receiveNow(
        into destination: String, scratch: String, node: NormNode, sender: NormNode, size: Int64, info: [UInt8],
        manifest: ReleaseManifest?, settings: NormSettings, linger: Duration, stop: AtomicFlag, deadline: ContinuousClock.Instant,
        ready: (@Sendable () -> Void)?
    ) throws -> NormReceiveReport {
        let started = ContinuousClock.now
        let (instance, session) = try open(settings, node: node, cache: scratch)
        defer { close(instance, session) }
        // Only this job's group reaches the socket (several jobs may share a port).
        NormSetRxPortReuse(session, true, settings.group, nil, 0)
        NormSetDefaultUnicastNack(session, false)
        guard NormStartReceiver(session, UInt32(16 << 20)) else {
            throw NormTransferError.setup("NormStartReceiver refused \(settings.group):\(settings.port)")
        }
        // A receiver that falls behind (a busy machine) loses what overflows its socket: a
        // larger buffer than the default 208 KiB turns that loss into waiting (the kernel caps
        // it at net.core.rmem_max; lab/setup raises that to 4 MiB).
        _ = NormSetRxSocketBuffer(session, Self.socketBuffer)
        // Joined the group: a sender started from now on reaches this receiver from its first packet.
        ready?()
        var refused = 0
        var completedAt: ContinuousClock.Instant?
        var failing: [Int]?
        var failure: NormTransferError?
        // Whether an object is the job's: from its sender, a file of the manifest's size and,
        // once NORM_INFO arrived (always before completion), announcing the job's info.
        func acceptable(_ object: NormObjectHandle?, infoRequired: Bool) -> Bool {
            guard let object, NormNodeGetId(NormObjectGetSender(object)) == sender.id,
                NormObjectGetType(object) == NORM_OBJECT_FILE, NormObjectGetSize(object) == size
            else { return false }
            let length = Int(NormObjectGetInfoLength(object))
            if length == 0 && !infoRequired { return true }
            guard length == info.count else { return false }
            var announced = [CChar](repeating: 0, count: max(1, length))
            let got = NormObjectGetInfo(object, &announced, UInt16(announced.count))
            return Int(got) == length && announced.prefix(length).map { UInt8(bitPattern: $0) } == info
        }
        let outcome = pump(instance, stop: stop, deadline: deadline) { event in
            if let completedAt, ContinuousClock.now - completedAt > linger { return true }
            switch event.type {
            case NORM_RX_OBJECT_NEW, NORM_RX_OBJECT_INFO:
                if !acceptable(event.object, infoRequired: event.type == NORM_RX_OBJECT_INFO) {
                    refused += 1
                    NormObjectCancel(event.object)
                }
            case NORM_RX_OBJECT_COMPLETED:
                guard completedAt == nil, acceptable(event.object, infoRequired: true) else { return false }
                do {
                    try place(event.object, from: scratch, at: destination, size: size)
                    failing = try manifest.map { try $0.failingChunks(in: destination) } ?? []
                    completedAt = ContinuousClock.now
                } catch {
                    failure = .incomplete("\(error)")
                    return true
                }
            case NORM_RX_OBJECT_ABORTED:
                if completedAt == nil, event.object != nil,
                    NormNodeGetId(NormObjectGetSender(event.object)) == sender.id
                {
                    failure = .aborted("the object from node \(sender) was aborted before it completed")
                    return true
                }
            case NORM_RX_CMD_NEW:
                guard event.sender != nil, NormNodeGetId(event.sender) == sender.id else { return false }
                var command = [CChar](repeating: 0, count: 64)
                var length = UInt32(command.count)
                guard NormNodeGetCommand(event.sender, &command, &length), Int(length) <= command.count else {
                    return false
                }
                if command.prefix(Int(length)).map({ UInt8(bitPattern: $0) }) == endCommand {
                    if completedAt != nil { return true }
                    failure = .incomplete("the sender ended the transfer before this receiver had the whole object")
                    return true
                }
            case NORM_REMOTE_SENDER_INACTIVE:
                if completedAt != nil, event.sender != nil, NormNodeGetId(event.sender) == sender.id { return true }
            default:
                break
            }
            return false
        }
        if let failure { throw failure }
        switch outcome {
        case .stopped: throw CancellationError()
        case .timedOut where completedAt == nil:
            throw NormTransferError.timedOut("no complete object from node \(sender) on \(settings.group):\(settings.port)")
        default: break
        }
        return NormReceiveReport(
            size: size, seconds: started.secondsSince, refused: refused,
            failingChunks: manifest == nil ? nil : failing)
    }

    /// Moves the completed object's file (inside `scratch`, NORM's cache folder) to `destination`.
    private static func place(_ object: NormObjectHandle?, from scratch: String, at destination: String, size: Int64)
        throws
    {
        var name = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        guard NormFileGetName(object, &name, UInt32(name.count - 1)) else {
            throw ChangelabError("NORM did not name the received file")
        }
        let path = String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        // NORM names the temporary file itself, inside the folder it was given.
        guard (path as NSString).deletingLastPathComponent == scratch, !path.contains("/../") else {
            throw ChangelabError("NORM's received file \(path) is outside its folder \(scratch)")
        }
        var status = stat()
        guard lstat(path, &status) == 0, (status.st_mode & S_IFMT) == S_IFREG, Int64(status.st_size) == size else {
            throw ChangelabError("the received file \(path) is not a regular file of \(size) bytes")
        }
        guard rename(path, destination) == 0 else {
            throw ChangelabError(
                "cannot move the received file to \(destination)", why: String(cString: strerror(errno)),
                fix: "the destination must be on the same file system as the work folder")
        }
    }

    // MARK: Instances, sessions and the event pump

    private static func open(_ settings: NormSettings, node: NormNode, cache: String? = nil) throws
        -> (NormInstanceHandle, NormSessionHandle)
    {
        NormSetDebugLevel(0)
        guard let instance = NormCreateInstance(false) else { throw NormTransferError.setup("NormCreateInstance failed") }
        if let cache, !NormSetCacheDirectory(instance, cache + "/") {
            NormDestroyInstance(instance)
            throw NormTransferError.setup("NormSetCacheDirectory refused \(cache)")
        }
        guard let session = NormCreateSession(instance, settings.group, settings.port, node.id) else {
            NormDestroyInstance(instance)
            throw NormTransferError.setup("NormCreateSession refused \(settings.group):\(settings.port)")
        }
        if let interface = settings.interface, !NormSetMulticastInterface(session, interface) {
            close(instance, session)
            throw NormTransferError.setup("no multicast interface \(interface)")
        }
        _ = NormSetTTL(session, settings.ttl)
        _ = NormSetLoopback(session, false)
        return (instance, session)
    }

    private static func close(_ instance: NormInstanceHandle, _ session: NormSessionHandle) {
        NormDestroySession(session)
        NormDestroyInstance(instance)
    }

    enum PumpOutcome { case done, stopped, timedOut }

    /// Polls the instance's descriptor and hands every queued event to `handle` (which
    /// returns true when the transfer is over), until then, a stop or the deadline.
    private static func pump(
        _ instance: NormInstanceHandle, stop: AtomicFlag, deadline: ContinuousClock.Instant,
        handle: (NormEvent) -> Bool
    ) -> PumpOutcome {
        let descriptor = NormGetDescriptor(instance)
        while true {
            if stop.isSet { return .stopped }
            if ContinuousClock.now >= deadline { return .timedOut }
            var poller = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
            _ = poll(&poller, 1, 50)
            var event = NormEvent()
            while NormGetNextEvent(instance, &event, false) {
                if event.type == NORM_EVENT_INVALID { break }
                if handle(event) { return .done }
            }
            // A timer-like check for handlers that end after a quiet period (a receiver's linger).
            event = NormEvent(type: NORM_EVENT_INVALID, session: nil, sender: nil, object: nil)
            if handle(event) { return .done }
        }
    }

    /// Runs `body` on a thread of its own (NORM's calls block and its events are pulled
    /// there), with a stop flag that task cancellation sets and a deadline.
    private static func onOwnThread<T: Sendable>(
        timeout: Duration, _ body: @escaping @Sendable (AtomicFlag, ContinuousClock.Instant) throws -> T
    ) async throws -> T {
        let stop = AtomicFlag()
        let deadline = ContinuousClock.now + timeout
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, Error>) in
                let thread = Thread {
                    continuation.resume(with: Result { try body(stop, deadline) })
                }
                thread.name = "changelab-norm"
                thread.start()
            }
        } onCancel: {
            stop.set()
        }
    }
}
