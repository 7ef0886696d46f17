import CLibvirt
import Foundation

/// What a domain is doing, as libvirt reports it.
public enum DomainState: String, Sendable, Codable {
    case noState = "no state"
    case running
    case blocked
    case paused
    case shuttingDown = "shutting down"
    case shutOff = "shut off"
    case crashed
    case suspended

    init(_ raw: Int32) {
        switch UInt32(raw) {
        case VIR_DOMAIN_RUNNING.rawValue: self = .running
        case VIR_DOMAIN_BLOCKED.rawValue: self = .blocked
        case VIR_DOMAIN_PAUSED.rawValue: self = .paused
        case VIR_DOMAIN_SHUTDOWN.rawValue: self = .shuttingDown
        case VIR_DOMAIN_SHUTOFF.rawValue: self = .shutOff
        case VIR_DOMAIN_CRASHED.rawValue: self = .crashed
        case VIR_DOMAIN_PMSUSPENDED.rawValue: self = .suspended
        default: self = .noState
        }
    }

    /// True while a QEMU process exists for the domain.
    public var isActive: Bool { self != .shutOff && self != .noState && self != .crashed }
}

/// A libvirt domain (a virtual machine definition, running or not).
public final class Domain: @unchecked Sendable {
    // @unchecked: `handle` is immutable; libvirt domain objects are thread-safe.
    let handle: OpaquePointer
    public let connection: Connection
    public let name: String

    init(handle: OpaquePointer, connection: Connection) {
        self.handle = handle
        self.connection = connection
        self.name = virDomainGetName(handle).map { String(cString: $0) } ?? "?"
    }

    deinit { virDomainFree(handle) }

    public func start() async throws {
        try await check("start domain \(name)") { virDomainCreate($0) }
    }

    /// Stops the domain at once (pulls the plug). A domain that is not running, or that is
    /// already gone (a transient domain that stopped meanwhile), is what was asked for.
    public func destroy() async throws {
        try await LibvirtThreads.run { [self] in
            if virDomainDestroy(handle) < 0 {
                let error = LibvirtError.last("destroy domain \(name)")
                if !error.isOperationInvalid && !error.isNoDomain { throw error }
            }
        }
    }

    /// Removes the definition, with its snapshot metadata and any managed save image.
    public func undefine() async throws {
        // No NVRAM flag: our domains boot a kernel directly, and the test driver rejects it.
        let flags = VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA.rawValue | VIR_DOMAIN_UNDEFINE_MANAGED_SAVE.rawValue
        try await check("undefine domain \(name)") { virDomainUndefineFlags($0, flags) }
    }

    public func state() async throws -> DomainState {
        try await LibvirtThreads.run { [self] in
            var state: Int32 = 0
            var reason: Int32 = 0
            guard virDomainGetState(handle, &state, &reason, 0) == 0 else {
                throw LibvirtError.last("read the state of domain \(name)")
            }
            return DomainState(state)
        }
    }

    /// The domain's XML; `inactive` gives the persistent definition rather than the live one.
    public func xml(inactive: Bool = false) async throws -> String {
        try await LibvirtThreads.run { [self] in
            let flags = inactive ? VIR_DOMAIN_XML_INACTIVE.rawValue : 0
            guard let xml = virDomainGetXMLDesc(handle, flags) else {
                throw LibvirtError.last("read the XML of domain \(name)")
            }
            defer { free(xml) }
            return String(cString: xml)
        }
    }

    /// Saves memory and device state to `path` and stops the domain.
    public func save(to path: String, xml: String? = nil) async throws {
        try await check("save domain \(name) to \(path)") { virDomainSaveFlags($0, path, xml, 0) }
    }

    public func suspend() async throws {
        try await check("pause domain \(name)") { virDomainSuspend($0) }
    }

    public func resume() async throws {
        try await check("resume domain \(name)") { virDomainResume($0) }
    }

    // MARK: Snapshots

    /// Creates a snapshot (internal, with memory when the domain runs) named `snapshot`.
    public func createSnapshot(_ snapshot: String, description: String = "") async throws {
        let xml = """
            <domainsnapshot><name>\(XML.escape(snapshot))</name>\
            <description>\(XML.escape(description))</description></domainsnapshot>
            """
        try await LibvirtThreads.run { [self] in
            guard let pointer = virDomainSnapshotCreateXML(handle, xml, 0) else {
                throw LibvirtError.last("snapshot domain \(name) as \(snapshot)")
            }
            virDomainSnapshotFree(pointer)
        }
    }

    /// Names of the domain's snapshots, sorted.
    public func snapshots() async throws -> [String] {
        try await LibvirtThreads.run { [self] in
            var list: UnsafeMutablePointer<OpaquePointer?>?
            let count = virDomainListAllSnapshots(handle, &list, 0)
            guard count >= 0 else { throw LibvirtError.last("list snapshots of domain \(name)") }
            defer { free(list) }
            var names: [String] = []
            for index in 0..<Int(count) {
                guard let snapshot = list?[index] else { continue }
                if let cName = virDomainSnapshotGetName(snapshot) { names.append(String(cString: cName)) }
                virDomainSnapshotFree(snapshot)
            }
            return names.sorted()
        }
    }

    /// Reverts to `snapshot`; the domain ends running when the snapshot was taken running.
    public func revert(to snapshot: String) async throws {
        try await withSnapshot(snapshot, "revert domain \(name) to snapshot \(snapshot)") { virDomainRevertToSnapshot($0, 0) }
    }

    public func deleteSnapshot(_ snapshot: String) async throws {
        try await withSnapshot(snapshot, "delete snapshot \(snapshot) of domain \(name)") { virDomainSnapshotDelete($0, 0) }
    }

    private func withSnapshot(
        _ snapshot: String, _ operation: String, _ body: @escaping @Sendable (OpaquePointer) -> Int32
    ) async throws {
        try await LibvirtThreads.run { [self] in
            guard let pointer = virDomainSnapshotLookupByName(handle, snapshot, 0) else {
                throw LibvirtError.last(operation)
            }
            defer { virDomainSnapshotFree(pointer) }
            if body(pointer) < 0 { throw LibvirtError.last(operation) }
        }
    }

    // MARK: Guest agent

    /// How long libvirt waits for the guest agent by default (seconds; -1 blocks, -2 default).
    public func setAgentResponseTimeout(seconds: Int32) async throws {
        try await check("set the agent timeout of domain \(name)") {
            virDomainAgentSetResponseTimeout($0, seconds, 0)
        }
    }

    /// Sends one raw JSON command to the QEMU guest agent and returns its raw JSON reply.
    public func agentCommand(_ json: String, timeoutSeconds: Int32) async throws -> String {
        try await LibvirtThreads.run { [self] in
            guard let reply = virDomainQemuAgentCommand(handle, json, timeoutSeconds, 0) else {
                throw LibvirtError.last("run guest agent command on domain \(name)")
            }
            defer { free(reply) }
            return String(cString: reply)
        }
    }

    /// The guest agent of this domain.
    public var agent: GuestAgent { GuestAgent(domain: self) }

    private func check(_ operation: String, _ body: @escaping @Sendable (OpaquePointer) -> Int32) async throws {
        try await LibvirtThreads.run { [self] in
            if body(handle) < 0 { throw LibvirtError.last(operation) }
        }
    }
}

/// XML text escaping for the values we put into domain and snapshot XML.
public enum XML {
    public static func escape(_ text: String) -> String {
        var out = ""
        out.reserveCapacity(text.count)
        for character in text {
            switch character {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&apos;"
            default: out.append(character)
            }
        }
        return out
    }
}
