import CLibvirt
import Foundation

/// An open connection to a libvirt daemon: `qemu:///system`, `test:///default`,
/// `qemu+ssh://user@host/system`, …
///
/// libvirt connections are safe to use from several threads at once; every call is made
/// on `LibvirtThreads`.
public final class Connection: @unchecked Sendable {
    // @unchecked: `handle` is immutable and libvirt's virConnect is thread-safe.
    let handle: OpaquePointer
    public let uri: String

    private init(handle: OpaquePointer, uri: String) {
        self.handle = handle
        self.uri = uri
    }

    deinit { virConnectClose(handle) }

    /// Opens `uri` read-write.
    public static func open(_ uri: String) async throws -> Connection {
        try await LibvirtThreads.run {
            guard let handle = virConnectOpen(uri) else { throw LibvirtError.last("connect to \(uri)") }
            return Connection(handle: handle, uri: uri)
        }
    }

    /// The libvirt library version on the daemon's side, e.g. "9.0.0".
    public func libvirtVersion() async throws -> String {
        try await call("read the libvirt version") { handle in
            var version: UInt = 0
            return virConnectGetLibVersion(handle, &version) < 0 ? nil : Self.format(version)
        }
    }

    /// The hypervisor's version (QEMU's for the qemu driver), e.g. "7.2.22".
    public func hypervisorVersion() async throws -> String {
        try await call("read the hypervisor version") { handle in
            var version: UInt = 0
            return virConnectGetVersion(handle, &version) < 0 ? nil : Self.format(version)
        }
    }

    public func hostname() async throws -> String {
        try await call("read the host name") { handle in
            guard let name = virConnectGetHostname(handle) else { return nil }
            defer { free(name) }
            return String(cString: name)
        }
    }

    /// Defines (or redefines) a persistent domain from XML.
    public func define(xml: String) async throws -> Domain {
        try await LibvirtThreads.run { [self] in
            guard let pointer = virDomainDefineXML(handle, xml) else { throw LibvirtError.last("define a domain") }
            return Domain(handle: pointer, connection: self)
        }
    }

    /// The domain called `name`, or nil when there is none.
    public func domain(named name: String) async throws -> Domain? {
        try await LibvirtThreads.run { [self] in
            guard let pointer = virDomainLookupByName(handle, name) else {
                let error = LibvirtError.last("look up domain \(name)")
                if error.isNoDomain { return nil }
                throw error
            }
            return Domain(handle: pointer, connection: self)
        }
    }

    /// Every domain, running or defined.
    public func domains() async throws -> [Domain] {
        try await LibvirtThreads.run { [self] in
            var list: UnsafeMutablePointer<OpaquePointer?>?
            let count = virConnectListAllDomains(handle, &list, 0)
            guard count >= 0 else { throw LibvirtError.last("list domains") }
            defer { free(list) }
            return (0..<Int(count)).compactMap { index in
                list?[index].map { Domain(handle: $0, connection: self) }
            }
        }
    }

    /// Starts a domain from a memory image made by `Domain.save(to:)`.
    ///
    /// `xml` replaces the saved domain definition (same name and UUID, other details may
    /// differ): this is how a saved image is restored onto a fresh disk overlay.
    public func restore(from path: String, xml: String? = nil, paused: Bool = false) async throws {
        try await LibvirtThreads.run { [self] in
            // Without PAUSED the domain resumes in the state it was saved in (running).
            let flags = paused ? VIR_DOMAIN_SAVE_PAUSED.rawValue : 0
            if virDomainRestoreFlags(handle, path, xml, flags) < 0 {
                throw LibvirtError.last("restore a domain from \(path)")
            }
        }
    }

    /// The domain XML stored in a saved memory image.
    public func savedImageXML(at path: String) async throws -> String {
        try await call("read the domain XML of \(path)") { handle in
            guard let xml = virDomainSaveImageGetXMLDesc(handle, path, 0) else { return nil }
            defer { free(xml) }
            return String(cString: xml)
        }
    }

    /// True when the daemon still answers on this connection.
    public func isAlive() async -> Bool {
        (try? await LibvirtThreads.run { [self] in virConnectIsAlive(handle) == 1 }) ?? false
    }

    /// Runs one C call and, when it yields nil, throws the error read on the same thread.
    func call<T: Sendable>(_ operation: String, _ body: @escaping @Sendable (OpaquePointer) -> T?) async throws -> T {
        try await LibvirtThreads.run { [self] in
            guard let value = body(handle) else { throw LibvirtError.last(operation) }
            return value
        }
    }

    static func format(_ version: UInt) -> String {
        "\(version / 1_000_000).\((version / 1000) % 1000).\(version % 1000)"
    }
}

extension Connection {
    /// Creates and starts a transient domain: it disappears when it stops, so nothing is
    /// left defined after a crash of ours.
    public func createTransient(xml: String) async throws -> Domain {
        try await LibvirtThreads.run { [self] in
            guard let pointer = virDomainCreateXML(handle, xml, 0) else {
                throw LibvirtError.last("create and start a domain")
            }
            return Domain(handle: pointer, connection: self)
        }
    }
}
