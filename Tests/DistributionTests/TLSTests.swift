import AsyncHTTPClient
import Foundation
import HostIO
import Model
import NIOSSL
import Testing

@testable import Distribution

/// The core serves HTTPS only; agents and the CLI pin its TLS key and refuse anything else.
@Suite struct TLSTests {
    /// A core with its own, freshly made TLS identity on `port` (0: any).
    /// Ports below Linux's ephemeral range (32768–60999), so no core of a test running beside
    /// this one (they bind port 0) takes the address a restarted core comes back on.
    static let reservedPorts = 20_000...29_999

    func startCore(in directory: String, port: Int? = nil, names: [String] = []) async throws -> TestCore {
        let http = try #require(TestTLS.sharedClient)
        let core = try TestCore(directory: directory, http: http, sharedTLS: false, tlsNames: names)
        if let port {
            // The core that just left this port may take a while to release it when the machine
            // is busy (seen: more than 5 s while every other suite runs beside this one).
            for _ in 0..<120 {
                do {
                    try await core.start(port: port)
                    return core
                } catch {
                    try await Task.sleep(for: .milliseconds(250))
                }
            }
            try await core.start(port: port)
            return core
        }
        var errors: [String] = []
        for _ in 0..<8 {
            do {
                try await core.start(port: Int.random(in: Self.reservedPorts))
                return core
            } catch {
                errors.append("\(error)")
            }
        }
        throw ChangelabError("no free port for the test core: " + errors.joined(separator: " | "))
    }

    @Test func anotherSelfSignedCertificateAtTheSameAddressIsRefusedByTheAgentAndTheCLI() async throws {
        let binary = try #require(changelabExecutable(), "build the changelab executable first (swift build)")
        let scratch = Scratch("tls-pin")
        defer { scratch.cleanup() }
        let real = try await startCore(in: scratch.path + "/real")
        let port = real.port
        let pin = real.server.tls.pin
        let url = "https://127.0.0.1:\(port)"
        let token = try real.adminCredential
        // The real core: a pinned client gets in.
        let pinned = try await HTTPLink.makeClient(trust: .pin(pin), core: url)
        defer { _ = pinned.shutdown() }
        #expect(try await CoreClient(url: url, adminToken: token, client: pinned).agents().isEmpty)
        let enrolment = try await CoreClient(url: url, adminToken: token, client: pinned).createToken(
            uses: 2, lifetime: 600)
        #expect(enrolment.corePin == pin)
        await real.stop()

        // An impostor with its own self-signed certificate (localhost, 127.0.0.1) takes the address.
        let impostor = try await startCore(in: scratch.path + "/impostor", port: port)
        #expect(impostor.server.tls.pin != pin)
        // A fresh client (a restarted agent, the CLI) refuses it during the pinned handshake…
        await #expect(throws: ChangelabError.self) { _ = try await HTTPLink.makeClient(trust: .pin(pin), core: url) }
        do {
            _ = try await HTTPLink.makeClient(trust: .pin(pin), core: url)
        } catch {
            #expect("\(error)".contains("not the pinned \(pin)"))
        }
        // …and a running agent's client, which trusts only the real certificate, sends it nothing.
        let agentLink = HTTPLink(baseURL: url, credential: nil, client: pinned)
        await #expect(throws: (any Error).self) {
            _ = try await agentLink.post(
                "/v1/enrol",
                EnrolRequest(token: enrolment.token, name: "pc-1", segment: "s1", addresses: [], attributes: [:]),
                as: EnrolReply.self)
        }
        let own = try await HTTPLink.makeClient(trust: .pin(impostor.server.tls.pin), core: url)
        defer { _ = own.shutdown() }
        #expect(try await CoreClient(url: url, adminToken: try impostor.adminCredential, client: own).agents().isEmpty)
        // The CLI, given the real core's pin, refuses the impostor with a clear error and exit 1.
        let cli = try await HostCommand.run(
            binary, ["core", "agents", "--core", url, "--core-pin", pin],
            environment: testEnvironment(["CHANGELAB_ADMIN_TOKEN": try impostor.adminCredential]))
        #expect(cli.status == 1)
        #expect(cli.stderrText.contains("not the pinned"), "\(cli.stderrText)")
        // With the impostor's own pin the same command works: the refusal was the pin.
        let right = try await HostCommand.run(
            binary, ["core", "agents", "--core", url, "--core-pin", impostor.server.tls.pin],
            environment: testEnvironment(["CHANGELAB_ADMIN_TOKEN": try impostor.adminCredential]))
        #expect(right.status == 0, "\(right.stderrText)")
        await impostor.stop()
    }

    @Test func plainHTTPToTheAdminAPIIsRefused() async throws {
        try await withCore { core, _, _ in
            let token = try core.adminCredential
            let curl = try await HostCommand.run(
                "curl",
                [
                    "-sS", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}", "-H",
                    "Authorization: Bearer \(token)", "http://127.0.0.1:\(core.port)/v1/admin/agents",
                ])
            #expect(curl.status != 0)
            #expect(curl.stdoutText == "000", "no HTTP answer at all over plain HTTP")
            // And the CLI refuses to send a token to an http:// URL in the first place.
            let binary = try #require(changelabExecutable(), "build the changelab executable first (swift build)")
            let cli = try await HostCommand.run(
                binary, ["core", "agents", "--core", "http://127.0.0.1:\(core.port)", "--core-pin", core.server.tls.pin],
                environment: testEnvironment(["CHANGELAB_ADMIN_TOKEN": token]))
            #expect(cli.status == 1)
            #expect(cli.stderrText.contains("is not HTTPS"), "\(cli.stderrText)")
        }
    }

    @Test func aRenewedCertificateWithTheSameKeyKeepsWorking() async throws {
        let scratch = Scratch("tls-renew")
        defer { scratch.cleanup() }
        let first = try await startCore(in: scratch.path + "/core")
        let port = first.port
        let pin = first.server.tls.pin
        let before = first.server.tls.certificatePEM
        let url = "https://127.0.0.1:\(port)"
        let client = try await HTTPLink.makeClient(trust: .pin(pin), core: url)
        defer { _ = client.shutdown() }
        #expect(try await CoreClient(url: url, adminToken: try first.adminCredential, client: client).agents().isEmpty)
        await first.stop()
        // Restarted with another name: a new certificate, the same key, the same pin.
        let renewed = try await startCore(in: scratch.path + "/core", port: port, names: ["core.fleet.test"])
        #expect(renewed.server.tls.pin == pin)
        #expect(renewed.server.tls.certificatePEM != before)
        #expect(renewed.server.tls.names.contains("core.fleet.test"))
        // A client made before the renewal keeps working, and so does a new one.
        #expect(try await CoreClient(url: url, adminToken: try renewed.adminCredential, client: client).agents().isEmpty)
        let fresh = try await HTTPLink.makeClient(trust: .pin(pin), core: url)
        defer { _ = fresh.shutdown() }
        #expect(try await CoreClient(url: url, adminToken: try renewed.adminCredential, client: fresh).agents().isEmpty)
        // The key stays private to the core.
        let mode = try FileManager.default.attributesOfItem(atPath: renewed.server.tls.keyPath)[.posixPermissions] as? Int
        #expect(mode == 0o600)
        await renewed.stop()
    }

    @Test func theCertificateNamesAreVerified() async throws {
        let scratch = Scratch("tls-names")
        defer { scratch.cleanup() }
        let core = try await startCore(in: scratch.path + "/core")
        // Trusting the core's certificate as a CA bundle: localhost and 127.0.0.1 are in it…
        let client = try await HTTPLink.makeClient(
            trust: .caBundle(core.server.tls.certificatePath), core: "https://localhost:\(core.port)")
        defer { _ = client.shutdown() }
        for host in ["localhost", "127.0.0.1"] {
            let admin = CoreClient(url: "https://\(host):\(core.port)", adminToken: try core.adminCredential, client: client)
            #expect(try await admin.agents().isEmpty)
        }
        // …127.0.0.2 (the same machine, another name) is not: host names are checked.
        let other = CoreClient(
            url: "https://127.0.0.2:\(core.port)", adminToken: try core.adminCredential, client: client)
        await #expect(throws: (any Error).self) { _ = try await other.agents() }
        await core.stop()
    }

    @Test func noSettingInTheSourcesTurnsCertificateVerificationOff() throws {
        let sources = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("Sources")
        let files = FileManager.default.enumerator(atPath: sources.path)?.compactMap { $0 as? String } ?? []
        #expect(files.contains { $0.hasSuffix("HTTPLink.swift") })
        for file in files where file.hasSuffix(".swift") {
            let text = try String(contentsOfFile: sources.path + "/" + file, encoding: .utf8)
            for forbidden in ["noHostnameVerification", "certificateVerification = .none", "certificateVerification: .none"] {
                #expect(!text.contains(forbidden), "\(file) contains \(forbidden)")
            }
        }
    }
}
