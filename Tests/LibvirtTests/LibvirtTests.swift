import Foundation
import Libvirt
import Testing

/// The wrapper against libvirt's in-process test driver: fast, no daemon, real C API.
@Suite struct LibvirtTestDriverTests {
    static func domainXML(_ name: String) -> String {
        """
        <domain type='qemu'>
          <name>\(name)</name>
          <memory unit='MiB'>128</memory>
          <os><type arch='x86_64'>hvm</type></os>
        </domain>
        """
    }

    func uniqueName(_ stem: String) -> String { "\(stem)-\(UUID().uuidString.prefix(8))" }

    @Test func definesStartsAndDestroysADomain() async throws {
        let connection = try await Connection.open("test:///default")
        let name = uniqueName("define")
        let domain = try await connection.define(xml: Self.domainXML(name))
        #expect(domain.name == name)
        #expect(try await domain.state() == .shutOff)
        try await domain.start()
        #expect(try await domain.state() == .running)
        try await domain.destroy()
        #expect(try await domain.state() == .shutOff)
        // Destroying a stopped domain is not an error: cleanup paths call it blindly.
        try await domain.destroy()
        try await domain.undefine()
        #expect(try await connection.domain(named: name) == nil)
    }

    @Test func snapshotsCanBeCreatedListedRevertedAndDeleted() async throws {
        let connection = try await Connection.open("test:///default")
        let domain = try await connection.define(xml: Self.domainXML(uniqueName("snap")))
        try await domain.start()
        try await domain.createSnapshot("pristine", description: "baseline state")
        try await domain.suspend()
        #expect(try await domain.state() == .paused)
        try await domain.createSnapshot("paused")
        #expect(try await domain.snapshots() == ["paused", "pristine"])
        try await domain.revert(to: "pristine")
        #expect(try await domain.state() == .running)
        try await domain.deleteSnapshot("paused")
        #expect(try await domain.snapshots() == ["pristine"])
        try await domain.destroy()
        try await domain.undefine()
    }

    /// The test driver cannot restore onto an alternate XML; LabTests proves that on QEMU.
    @Test func savesAndRestoresAMemoryImage() async throws {
        let connection = try await Connection.open("test:///default")
        let name = uniqueName("save")
        let domain = try await connection.define(xml: Self.domainXML(name))
        try await domain.start()
        let path = NSTemporaryDirectory() + "\(name).save"
        defer { try? FileManager.default.removeItem(atPath: path) }
        try await domain.save(to: path)
        #expect(try await domain.state() == .shutOff)
        let saved = try await connection.savedImageXML(at: path)
        #expect(saved.contains("<name>\(name)</name>"))
        try await connection.restore(from: path)
        #expect(try await domain.state() == .running)
        try await domain.destroy()
        try await domain.undefine()
    }

    @Test func libvirtErrorsCarryLibvirtsOwnMessage() async throws {
        let connection = try await Connection.open("test:///default")
        let domain = try await connection.define(xml: Self.domainXML(uniqueName("errors")))
        // Reverting to a snapshot that does not exist must surface libvirt's error text.
        await #expect(throws: LibvirtError.self) { try await domain.revert(to: "nope") }
        do {
            try await domain.revert(to: "nope")
        } catch let error as LibvirtError {
            #expect(error.isNoSnapshot)
            #expect(error.message.contains("nope"))
            #expect(error.description.hasPrefix("cannot revert domain"))
        }
        await #expect(throws: LibvirtError.self) { try await connection.define(xml: "<domain>not valid") }
        try await domain.undefine()
    }

    @Test func aMissingDomainIsNilNotAnError() async throws {
        let connection = try await Connection.open("test:///default")
        #expect(try await connection.domain(named: "changelab-no-such-domain") == nil)
    }

    @Test func anUnreachableDaemonIsAnErrorWithLibvirtsReason() async throws {
        do {
            _ = try await Connection.open("qemu+unix:///system?socket=/nonexistent/changelab.sock")
            Issue.record("opening a missing socket should fail")
        } catch let error as LibvirtError {
            #expect(error.message.contains("/nonexistent/changelab.sock"))
        }
    }

    @Test func reportsVersionsAndListsDomains() async throws {
        let connection = try await Connection.open("test:///default")
        #expect(try await connection.libvirtVersion().split(separator: ".").count == 3)
        let name = uniqueName("list")
        let domain = try await connection.define(xml: Self.domainXML(name))
        #expect(try await connection.domains().map(\.name).contains(name))
        try await domain.undefine()
    }

    @Test func escapesXMLText() {
        #expect(XML.escape("a<b & 'c'>\"") == "a&lt;b &amp; &apos;c&apos;&gt;&quot;")
    }
}

/// Clean-up after a cancellation goes through the same libvirt threads (killing a guest
/// command after Ctrl-C, destroying a kept VM's overlay): it must not be refused.
@Suite struct LibvirtCancellationTests {
    @Test func aLibvirtCallStillRunsInATaskThatWasCancelled() async throws {
        let task = Task { () -> Bool in
            while !Task.isCancelled { try? await Task.sleep(for: .milliseconds(5)) }
            let connection = try await Connection.open("test:///default")
            _ = connection
            return true
        }
        task.cancel()
        #expect(try await task.value)
    }
}

@Suite struct GuestStatusTests {
    @Test func anExitStatusFromTheGuestOutsideItsRangeIsNeverATrap() {
        #expect(GuestAgent.exitCode(["exitcode": 3]) == 3)
        #expect(GuestAgent.exitCode(["signal": 9]) == 137)
        #expect(GuestAgent.exitCode(["exitcode": 1 << 40]) == nil)
        #expect(GuestAgent.exitCode(["exitcode": -1]) == nil)
        #expect(GuestAgent.exitCode(["signal": Int.max]) == nil)
        #expect(GuestAgent.exitCode(["exitcode": "3"]) == nil)
    }
}
