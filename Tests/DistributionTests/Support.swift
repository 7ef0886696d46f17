import AsyncHTTPClient
import Distribution
import Foundation
import HostIO
import Model
import NIOSSL
import Testing

/// One TLS key and certificate (localhost, 127.0.0.1, ::1) for every test core of this run,
/// so test clients can be made before their core starts; tests of TLS itself make their own.
enum TestTLS {
    static let identity: CoreTLSIdentity = {
        let directory = "/tmp/changelab-test-tls-\(getpid())"
        // A failure here fails every test that uses it, with this message.
        do {
            return try CoreTLSIdentity.loadOrCreate(directory: directory, names: [])
        } catch {
            fatalError("cannot make the test TLS identity in \(directory): \(error)")
        }
    }()

    /// Gives the core state directory `directory` the shared test TLS identity.
    static func install(in directory: String) throws {
        let target = CoreLayout(directory: directory).tls
        try FileManager.default.createDirectory(atPath: target, withIntermediateDirectories: true)
        for file in ["key.pem", "certificate.pem", "certificate.json"] {
            try? FileManager.default.removeItem(atPath: "\(target)/\(file)")
            try FileManager.default.copyItem(atPath: "\(identity.directory)/\(file)", toPath: "\(target)/\(file)")
        }
    }

    /// One client for the whole run, never shut down (a static outlives every test, so it is
    /// never deinitialised unshut either).
    static let sharedClient: HTTPClient? = try? client()

    /// An HTTP client that trusts the shared test certificate (full verification).
    static func client() throws -> HTTPClient {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(identity.certificatePath))
        return HTTPLink.makeClient(tls: tls)
    }
}

/// A fresh temporary directory, removed by `cleanup()`.
struct Scratch {
    let path: String

    init(_ name: String = "dist") {
        path = "/tmp/changelab-test-\(name)-\(UUID().uuidString.prefix(8))"
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    func cleanup() { try? FileManager.default.removeItem(atPath: path) }
}

/// Builds a real .deb with dpkg-deb (uncompressed, so unpacking is cheap).
enum TestPackage {
    static func build(
        in dir: String, name: String = "demo", version: String = "1.0", size: Int = 600_000,
        depends: String? = nil, postinst: String? = nil
    ) async throws -> String {
        let tree = "\(dir)/pkg-\(name)-\(version)-\(UUID().uuidString.prefix(6))"
        try FileManager.default.createDirectory(atPath: "\(tree)/DEBIAN", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: "\(tree)/opt/\(name)", withIntermediateDirectories: true)
        var control = "Package: \(name)\nVersion: \(version)\nArchitecture: all\nMaintainer: QA <qa@example.invalid>\n"
        if let depends { control += "Depends: \(depends)\n" }
        control += "Description: changelab test package\n"
        try control.write(toFile: "\(tree)/DEBIAN/control", atomically: true, encoding: .utf8)
        if let postinst {
            try ("#!/bin/sh\n" + postinst + "\n").write(
                toFile: "\(tree)/DEBIAN/postinst", atomically: true, encoding: .utf8)
            chmod("\(tree)/DEBIAN/postinst", 0o755)
        }
        var generator = SystemRandomNumberGenerator()
        let payload = Data((0..<size).map { _ in UInt8.random(in: 0...255, using: &generator) })
        try payload.write(to: URL(fileURLWithPath: "\(tree)/opt/\(name)/payload"))
        let deb = "\(dir)/\(name)_\(version).deb"
        try await HostCommand.check("dpkg-deb", ["-Znone", "--root-owner-group", "--build", tree, deb])
        try? FileManager.default.removeItem(atPath: tree)
        return deb
    }
}

/// An in-process core on a loopback port.
final class TestCore: @unchecked Sendable {
    // @unchecked: `task` and `port` are set once in start(), before anything reads them.
    let directory: String
    let server: CoreServer
    var task: Task<Void, Error>?
    var port = 0
    let http: HTTPClient
    /// Whether `stop()` shuts `http` down (a client made for this core alone).
    let ownsHTTP: Bool

    init(
        directory: String, settings: CoreSettings = TestCore.fastSettings, limits: CoreLimits = CoreLimits(),
        observer: (any FleetObserver)? = nil, http: HTTPClient, sharedTLS: Bool = true, tlsNames: [String] = [],
        ownsHTTP: Bool = false
    ) throws {
        self.directory = directory
        self.ownsHTTP = ownsHTTP
        if sharedTLS { try TestTLS.install(in: directory) }
        self.server = try CoreServer(
            directory: directory, settings: settings, limits: limits, tlsNames: tlsNames, observer: observer)
        self.http = http
    }

    static var fastSettings: CoreSettings {
        var s = CoreSettings()
        s.checkInInterval = 1
        s.offlineAfter = 5
        s.retryBase = 0.3
        s.retryMax = 2
        s.maxAttempts = 3
        s.trustRoot = TestAuthority.shared.digest
        return s
    }

    var url: String { "https://127.0.0.1:\(port)" }

    func start(port wanted: Int = 0) async throws {
        let ready = AsyncStream<Int>.makeStream()
        let server = self.server
        // A server that cannot start (its port taken) ends the stream, so start() never waits forever.
        task = Task {
            defer { ready.continuation.finish() }
            try await server.run(host: "127.0.0.1", port: wanted) { ready.continuation.yield($0) }
        }
        var bound: Int?
        for await value in ready.stream {
            bound = value
            break
        }
        guard let bound else {
            // Say why: the server's own error (a port in use, a TLS or state problem).
            var cause = "it stopped without an error"
            do { try await task?.value } catch { cause = "\(error)" }
            throw ChangelabError("the test core did not start on port \(wanted): \(cause)")
        }
        port = bound
    }

    func stop() async {
        task?.cancel()
        _ = try? await task?.value
        if ownsHTTP { try? await http.shutdown() }
    }

    var admin: CoreClient {
        get throws {
            let token = try String(contentsOfFile: CoreLayout(directory: directory).adminToken, encoding: .utf8)
                .trimmingCharacters(in: .whitespacesAndNewlines)
            return CoreClient(url: url, adminToken: token, client: http)
        }
    }

    /// `admin:TOKEN`, the original admin token as operator `admin`.
    var adminCredential: String {
        get throws {
            "admin:" + (try String(contentsOfFile: CoreLayout(directory: directory).adminToken, encoding: .utf8))
                .trimmingCharacters(in: .whitespacesAndNewlines)
        }
    }

    var key: ReleasePublicKey {
        get async { await server.coordinator.publicKey }
    }
}

/// Agents run in this process, each with its own state and root under `base`.
func makeAgentConfiguration(
    core: TestCore, base: String, name: String, segment: String = "s1", attributes: [String: String] = [:],
    token: String, key: ReleasePublicKey, artifactURL: String? = nil, installTimeout: Duration = .seconds(60)
) -> AgentConfiguration {
    makeAgentConfiguration(
        coreURL: core.url, base: base, name: name, segment: segment, attributes: attributes, token: token, key: key,
        artifactURL: artifactURL, installTimeout: installTimeout)
}

func makeAgentConfiguration(
    coreURL: String, base: String, name: String, segment: String = "s1", attributes: [String: String] = [:],
    token: String, key: ReleasePublicKey, artifactURL: String? = nil, installTimeout: Duration = .seconds(60)
) -> AgentConfiguration {
    var c = AgentConfiguration(
        name: name, coreURL: coreURL, stateDirectory: "\(base)/agents/\(name)", root: "\(base)/roots/\(name)",
        segment: segment, attributes: attributes, coreKey: key, enrolmentToken: token)
    c.artifactURL = artifactURL
    c.trustRoot = TestAuthority.shared.digest
    if c.attributes["baseline"] == nil { c.attributes["baseline"] = "minimal@1" }
    c.maxCheckInInterval = 1
    c.installTimeout = installTimeout
    c.watchedPaths = ["/etc"]
    // These agents share the machine's own network namespace: their segment is its real LAN,
    // where a test must send nothing (fleet tests give agents namespaces of their own).
    c.wakeOnLAN = false
    // Nor may their segment follow the machine's interfaces, which fleet tests beside them add
    // and remove (a peer server then closes: "left segment"); loopback keeps peer URLs local.
    c.addresses = ["127.0.0.1/8"]
    return c
}

/// Runs agents until `stop()`.
final class AgentGroup: @unchecked Sendable {
    // @unchecked: `agents` and `tasks` are only touched from the test's task.
    var agents: [Agent] = []
    var tasks: [Task<Void, Error>] = []

    func start(_ configuration: AgentConfiguration, http: HTTPClient) -> Agent {
        let agent = Agent(configuration: configuration, client: http)
        agents.append(agent)
        tasks.append(Task { try await agent.run() })
        return agent
    }

    func stop() async {
        for task in tasks { task.cancel() }
        for task in tasks { _ = try? await task.value }
    }
}

/// Polls `condition` every 100 ms until it holds or `timeout` passes; returns whether it held.
@discardableResult
func eventually(_ timeout: Duration = .seconds(30), _ condition: () async throws -> Bool) async rethrows -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try await condition() { return true }
        try? await Task.sleep(for: .milliseconds(100))
    }
    return try await condition()
}

/// The `changelab` executable next to the test bundle (swift test builds it).
func changelabExecutable() -> String? {
    let runner = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    for dir in [runner, runner.deletingLastPathComponent()] {
        let candidate = dir.appendingPathComponent("changelab").path
        if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
    }
    let source = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    let built = source.appendingPathComponent(".build/debug/changelab").path
    return FileManager.default.isExecutableFile(atPath: built) ? built : nil
}

/// Starts the whole test: an HTTP client, a core with one published release and an
/// enrolment token; runs `body`, then tears everything down.
func withCore<T>(
    settings: CoreSettings = TestCore.fastSettings, limits: CoreLimits = CoreLimits(),
    observer: (any FleetObserver)? = nil,
    _ body: (TestCore, Scratch, HTTPClient) async throws -> T
) async throws -> T {
    let scratch = Scratch()
    let http = try TestTLS.client()
    let core = try TestCore(
        directory: scratch.path + "/core", settings: settings, limits: limits, observer: observer, http: http)
    try await core.start()
    do {
        let result = try await body(core, scratch, http)
        await core.stop()
        try? await http.shutdown()
        scratch.cleanup()
        return result
    } catch {
        await core.stop()
        try? await http.shutdown()
        scratch.cleanup()
        throw error
    }
}

/// Runs `body` while no other test that asked for the machine to itself runs: a headless
/// browser and a flood of 2,000 half-open connections each load a two-core host enough that
/// the other's timing fails (seen: the flood's check-ins time out while Chromium starts).
func withMachineToItself<T>(_ body: () async throws -> T) async throws -> T {
    await MachineLoad.exclusive.acquire()
    do {
        let result = try await body()
        await MachineLoad.exclusive.release()
        return result
    } catch {
        await MachineLoad.exclusive.release()
        throw error
    }
}

/// One test at a time among those that load the whole machine (see ``withMachineToItself``).
actor MachineLoad {
    static let exclusive = MachineLoad()
    private var busy = false
    private var waiting: [CheckedContinuation<Void, Never>] = []

    func acquire() async {
        guard busy else {
            busy = true
            return
        }
        await withCheckedContinuation { waiting.append($0) }
    }

    func release() {
        if waiting.isEmpty { busy = false } else { waiting.removeFirst().resume() }
    }
}

/// The version of `package` installed in an agent's root (from its dpkg database).
func installed(_ package: String, in root: String) -> String? {
    DpkgStatus.installedVersion(of: package, root: root)
}

/// Enrols `names` as agents of `core` (each with its own state and root under `scratch`),
/// starts them and waits until the core lists them.
func startAgents(
    _ names: [String], core: TestCore, scratch: Scratch, http: HTTPClient, attributes: [String: String] = [:],
    configure: (inout AgentConfiguration) -> Void = { _ in }
) async throws -> AgentGroup {
    let admin = try core.admin
    let before = try await admin.agents().count
    let token = try await admin.createToken(uses: names.count, lifetime: 600)
    let key = await core.key
    let group = AgentGroup()
    for name in names {
        var configuration = makeAgentConfiguration(
            core: core, base: scratch.path, name: name, attributes: attributes, token: token.token, key: key)
        configure(&configuration)
        _ = group.start(configuration, http: http)
    }
    let expected = before + names.count
    guard try await eventually(.seconds(30), { try await admin.agents().count == expected }) else {
        throw ChangelabError("only \(try await admin.agents().count - before) of \(names.count) agents enrolled")
    }
    return group
}

extension PromoteRequest {
    /// Every agent, in the given rings.
    static func everyone(rings: String? = nil, maxFailureRate: Double? = nil, rate: Int64? = nil) -> PromoteRequest {
        PromoteRequest(release: nil, targets: "all", rings: rings, rate: rate, maxFailureRate: maxFailureRate)
    }
}

/// This process's environment with `extra` set: for running the changelab executable.
func testEnvironment(_ extra: [String: String]) -> [String: String] {
    ProcessInfo.processInfo.environment.merging(extra) { _, new in new }
}

/// The change-control authority every test core and agent trusts: throwaway approvers and a
/// lab key that sign real approvals and evidence (install lane, readiness 0).
enum TestAuthority {
    static let shared: ThrowawayAuthority = {
        do {
            return try ThrowawayAuthority()
        } catch {
            preconditionFailure("making throwaway keys cannot fail: \(error)")
        }
    }()
}

extension CoreClient {
    /// The signed authorization for `change` as the core has it promoted: evidence of a green
    /// install on `baselines`, and `approvals` CCB release approvals over its digest and scope.
    func authorization(
        for change: String, baselines: [String] = ["minimal"], approvals: Int = 2,
        authority: ThrowawayAuthority = TestAuthority.shared
    ) async throws -> ChangeAuthorization {
        let status = try await status(change)
        guard let manifest = try await releases().first(where: { $0.release == status.release }) else {
            throw ChangelabError("release \(status.release) is not published")
        }
        return try authority.authorization(
            change: change, package: manifest.package, version: manifest.packageVersion, artifact: manifest.digest,
            baselines: baselines, scope: ChangeScope(targets: status.query, rings: Ring.planText(status.rings)),
            approvals: approvals)
    }

    /// Activates `change` with a release approval from the test authority.
    @discardableResult
    func activateApproved(_ change: String, baselines: [String] = ["minimal"]) async throws -> StatusReport {
        try await activate(change, authorization: try await authorization(for: change, baselines: baselines))
    }

    /// Rolls `change` back with an order signed by a test approver.
    @discardableResult
    func rollbackApproved(_ change: String) async throws -> StatusReport {
        let status = try await status(change)
        guard let manifest = try await releases().first(where: { $0.release == status.release }) else {
            throw ChangelabError("release \(status.release) is not published")
        }
        let authorization = try TestAuthority.shared.rollingBack(
            try await authorization(for: change), artifact: manifest.digest)
        return try await rollback(change, authorization: authorization)
    }

    /// Sets a policy that carries an approved change of `release` over `targets`.
    @discardableResult
    func setApprovedPolicy(_ name: String, targets: String, release: String) async throws -> Policy {
        guard let manifest = try await releases().first(where: { $0.release == release }) else {
            throw ChangelabError("release \(release) is not published")
        }
        let authorization = try TestAuthority.shared.authorization(
            change: "CHG-\(name)", package: manifest.package, version: manifest.packageVersion,
            artifact: manifest.digest, baselines: ["minimal"], scope: ChangeScope(targets: targets))
        return try await setPolicy(name, targets: targets, release: release, authorization: authorization)
    }
}
