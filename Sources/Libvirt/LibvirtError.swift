import CLibvirt

/// A libvirt call that failed, carrying libvirt's own message and codes.
///
/// Built only by `LibvirtError.last(_:)`, on the same thread and right after the failing
/// call: libvirt keeps its last error per thread, so reading it anywhere else (after an
/// `await`, on another thread) would report some other call's error or none.
public struct LibvirtError: Error, CustomStringConvertible, Sendable, Equatable {
    /// What we asked libvirt to do, e.g. "start domain cl-minimal-s0".
    public var operation: String
    /// libvirt's virErrorNumber (VIR_ERR_*).
    public var code: Int32
    /// libvirt's virErrorDomain (which subsystem raised it).
    public var domain: Int32
    /// libvirt's own message.
    public var message: String

    public init(operation: String, code: Int32, domain: Int32, message: String) {
        self.operation = operation
        self.code = code
        self.domain = domain
        self.message = message
    }

    /// Reads (and clears) this thread's last libvirt error.
    static func last(_ operation: String) -> LibvirtError {
        guard let error = virGetLastError() else {
            return LibvirtError(operation: operation, code: -1, domain: -1, message: "libvirt reported no error detail")
        }
        let message = error.pointee.message.map { String(cString: $0) } ?? "unknown libvirt error"
        let result = LibvirtError(
            operation: operation, code: Int32(error.pointee.code), domain: Int32(error.pointee.domain),
            message: message)
        virResetLastError()
        return result
    }

    public var isNoDomain: Bool { code == Int32(VIR_ERR_NO_DOMAIN.rawValue) }
    public var isNoSnapshot: Bool { code == Int32(VIR_ERR_NO_DOMAIN_SNAPSHOT.rawValue) }
    public var isOperationInvalid: Bool { code == Int32(VIR_ERR_OPERATION_INVALID.rawValue) }
    /// The guest agent is not connected or did not answer in time.
    public var isAgentUnresponsive: Bool { code == Int32(VIR_ERR_AGENT_UNRESPONSIVE.rawValue) }
    /// The agent answered with an error (for example guest-exec of a missing program).
    /// libvirt has no code of its own for this: it reports an internal error whose message
    /// says "unable to execute QEMU agent command".
    public var isAgentCommandFailed: Bool {
        code == Int32(VIR_ERR_INTERNAL_ERROR.rawValue) && message.contains("agent command")
    }
    /// The daemon cannot be reached (not running, no socket, connection refused).
    public var isNoConnection: Bool {
        code == Int32(VIR_ERR_NO_CONNECT.rawValue) || code == Int32(VIR_ERR_SYSTEM_ERROR.rawValue)
            && domain == Int32(VIR_FROM_RPC.rawValue)
    }

    public var description: String { "cannot \(operation): \(message)" }
}
