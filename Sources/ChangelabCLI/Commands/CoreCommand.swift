import ArgumentParser
import Distribution
import Foundation
import Lab
import Model

/// `changelab core …`: the distribution core server and its administration.
struct CoreCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "core",
        abstract: "Run and administer the distribution core (artifact repository, agents, rollouts).",
        subcommands: [
            CoreServeCommand.self, CorePublishCommand.self, CoreTokenCommand.self, CoreAgentsCommand.self,
            CoreRevokeCommand.self, CoreOperatorCommand.self, CorePinCommand.self, CoreRotateKeyCommand.self,
        ])
}

struct CoreServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve", abstract: "Serve the core: artifacts, enrolment, check-in, jobs, status, dashboard.")
    static let defaultState = "/var/lib/changelab/core"

    @Option(name: .long, help: ArgumentHelp("State directory (created if missing).", valueName: "dir"))
    var state: String = CoreServeCommand.defaultState

    @Option(name: .long, help: ArgumentHelp("Address and port to listen on.", valueName: "host:port"))
    var listen: String = "127.0.0.1:7480"

    @Option(
        name: .long, parsing: .singleValue,
        help: ArgumentHelp(
            "A DNS name or IP address the TLS certificate must cover, besides localhost, 127.0.0.1, ::1, the listen "
                + "address and this host's name (repeatable; the key stays, so pins stay valid).",
            valueName: "name"))
    var tlsName: [String] = []

    @Option(name: .long, help: "Seconds between agent check-ins.")
    var checkIn: Double = 30

    @Option(name: .long, help: "Seconds without contact after which an agent counts as offline.")
    var offlineAfter: Double = 90

    @Option(name: .long, help: "Seconds before the first redeploy to a failed target (doubles each time).")
    var retryBase: Double = 30

    @Option(name: .long, help: "Tries per target and step before it is left to the chase list.")
    var maxAttempts: Int = 4

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Record every agent as a fleet target (attributes and reported inventory) in this CMDB "
                + "(default: $CHANGELAB_CMDB; without either, targets are not recorded).",
            valueName: "path"))
    var cmdb: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "The change-control trust root (sha256:…, from 'changelab trust-root show'): the core activates only changes its approvers signed.",
            valueName: "digest"))
    var trustRoot: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Targeted multicast: each segment's representative sends the package to its segment as a NORM object, "
                + "one group and port per concurrent job from this range (in 239.0.0.0/8; default: off).",
            valueName: "group/prefix"))
    var multicastGroups: String?

    @Option(name: .long, help: "The first port of the multicast range (job i uses port + i).")
    var multicastPort: Int = 7700

    @Option(name: .long, help: "Bytes per second a representative multicasts at when the job sets no rate.")
    var multicastRate: Double = 12_500_000

    @Option(name: .long, help: "Seconds a receiver waits for its representative's multicast before it turns to peers.")
    var multicastWait: Double = 300

    @Option(
        name: .long,
        help: "Seconds a representative waits for its receivers to join the group before it sends anyway.")
    var multicastGather: Double = 30

    func run() async throws {
        let parts = listen.split(separator: ":")
        guard parts.count == 2, let port = Int(parts[1]), (0...65535).contains(port) else {
            throw ValidationError("--listen must be HOST:PORT, for example 0.0.0.0:7480")
        }
        var settings = CoreSettings()
        settings.checkInInterval = checkIn
        settings.offlineAfter = offlineAfter
        settings.retryBase = retryBase
        settings.maxAttempts = maxAttempts
        if let multicastGroups {
            guard let port = UInt16(exactly: multicastPort) else {
                throw ValidationError("--multicast-port must be 1024–65535, not \(multicastPort)")
            }
            guard multicastRate.isFinite, multicastRate >= 1000, multicastRate <= 12_500_000_000 else {
                throw ValidationError(
                    "--multicast-rate must be 1000 … 12500000000 bytes per second, not \(multicastRate)")
            }
            var multicast = try MulticastSettings(range: multicastGroups, firstPort: port)
            multicast.rate = Int64(multicastRate)
            multicast.wait = multicastWait
            multicast.gather = multicastGather
            settings.multicast = multicast
        }
        if let trustRoot {
            guard let digest = SHA256Digest(hex: trustRoot) else {
                throw ValidationError("--trust-root must be sha256: and 64 hex digits (see 'changelab trust-root show')")
            }
            settings.trustRoot = digest
        }
        try settings.validate()
        var names = tlsName
        let listenHost = String(parts[0])
        if listenHost != "0.0.0.0" && listenHost != "::" { names.append(listenHost) }
        let hostName = ProcessInfo.processInfo.hostName
        if CoreTLSIdentity.isAcceptableName(hostName) { names.append(hostName) }
        let cmdbPath = cmdb ?? ProcessInfo.processInfo.environment["CHANGELAB_CMDB"].flatMap { $0.isEmpty ? nil : $0 }
        var recorder: CMDBFleetRecorder?
        if let cmdbPath { recorder = try await CMDBFleetRecorder(path: cmdbPath) }
        let server = try CoreServer(directory: state, settings: settings, tlsNames: names, observer: recorder)
        let key = await server.coordinator.publicKey.hex
        let pin = server.tls.pin
        let tlsNames = server.tls.names.joined(separator: " ")
        let host = String(parts[0])
        let state = self.state
        // Whatever way the server stops, targets still queued reach the CMDB.
        do {
            try await server.run(host: host, port: port) { bound in
                note("changelab core: serving on https://\(host):\(bound)  state \(state)")
                note("  release key: \(key)   (agents need it: --core-key \(key))")
                note("  core pin:    \(pin)   (agents and the CLI: --core-pin \(pin))")
                note("  TLS names:   \(tlsNames)   (add more with --tls-name)")
                note("  dashboard:   https://\(host):\(bound)/  (log in with an operator token)")
                note("  fleet CMDB:  " + (cmdbPath.map { "targets recorded in \($0)" } ?? "targets not recorded (pass --cmdb PATH)"))
            }
        } catch {
            await recorder?.close()
            throw error
        }
        await recorder?.close()
    }
}

struct CorePublishCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "publish",
        abstract: "Publish a .deb into the core's repository as a signed, chunked release.",
        discussion: """
            Give a .deb file, or --artifact DIGEST for a package that 'changelab package build' stored (it is verified against its build manifest before it is sent).
            """)

    @Argument(help: ArgumentHelp("The .deb file (or use --artifact).", valueName: "file.deb"))
    var file: String?

    @Option(name: .long, help: ArgumentHelp("A built artifact's digest from 'changelab package build'.", valueName: "sha256"))
    var artifact: String?

    @Option(name: .long, help: "Release name (the change id promote and activate use until change control lands).")
    var release: String

    @Option(name: .long, help: "Chunk size for verification and resume (default 256K).")
    var chunkSize: String?

    @OptionGroup var core: CoreOptions
    @OptionGroup var output: OutputOptions

    func validate() throws {
        guard (file == nil) != (artifact == nil) else {
            throw ValidationError("give either a .deb file or --artifact DIGEST")
        }
    }

    func run() async throws {
        let chunk = try chunkSize.map { text -> Int in
            guard let value = ByteCount.parse(text), value >= 4096, value <= 64 << 20 else {
                throw ChangelabError("--chunk-size '\(text)' is not a chunk size", fix: "give between 4K and 64M, e.g. 256K")
            }
            return Int(value)
        }
        var path = file ?? ""
        if let artifact {
            guard let digest = SHA256Digest(hex: artifact) else {
                throw ValidationError("--artifact must be a SHA-256 digest (64 hex digits), see 'changelab package list'")
            }
            let store = ArtifactStore(home: LabHome.fromEnvironment())
            try store.verify(try store.manifest(digest, verify: false))
            path = store.debPath(digest)
        }
        note("publishing \(path) as \(release)…")
        let manifest = try await core.withClient { try await $0.publish(file: path, release: release, chunkSize: chunk) }
        if output.json {
            try printJSON(manifest)
        } else {
            print(
                "published \(manifest.release): \(manifest.package) \(manifest.packageVersion), \(StatusText.bytes(manifest.size)), \(manifest.chunkCount) chunks, \(manifest.digest)"
            )
        }
    }
}

struct CoreTokenCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "token", abstract: "Create an enrolment token for new agents.")

    @Option(name: .long, help: "How many agents may enrol with it.")
    var uses: Int = 1

    @Option(name: .long, help: "Hours it stays valid.")
    var hours: Double = 24

    @OptionGroup var core: CoreOptions
    @OptionGroup var output: OutputOptions

    func run() async throws {
        guard (1...100_000).contains(uses) else {
            throw ChangelabError("--uses \(uses) is out of range", fix: "give between 1 and 100000 agents")
        }
        guard hours.isFinite, hours > 0, hours <= 366 * 24 else {
            throw ChangelabError("--hours \(hours) is out of range", fix: "give more than 0 and at most 8784 hours (a year)")
        }
        let reply = try await core.withClient { try await $0.createToken(uses: uses, lifetime: hours * 3600) }
        if output.json {
            try printJSON(reply)
        } else {
            print("token:    \(reply.token)")
            print("core key: \(reply.coreKey)")
            print("core pin: \(reply.corePin ?? "?")")
            print(
                "enrol with: changelab agent run --core \(core.url) --enrol-token \(reply.token) --core-key \(reply.coreKey) --core-pin \(reply.corePin ?? "?") …"
            )
        }
    }
}

struct CoreRotateKeyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rotate-key",
        abstract: "Replace the core's release key; agents follow the rotation, signed by the old key, at their next check-in.")

    @OptionGroup var core: CoreOptions
    @OptionGroup var output: OutputOptions

    func run() async throws {
        let reply = try await core.withClient { try await $0.rotateReleaseKey() }
        if output.json {
            try printJSON(reply)
        } else {
            print("release key: \(reply["key"] ?? "?") (was \(reply["previous"] ?? "?"))")
            print("agents enrolled before follow it; give new agents the new key with --core-key")
        }
    }
}

struct CoreAgentsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "agents", abstract: "List enrolled agents.")

    @OptionGroup var core: CoreOptions
    @OptionGroup var output: OutputOptions

    func run() async throws {
        let agents = try await core.withClient { try await $0.agents() }
        if output.json { return try printJSON(agents) }
        for a in agents {
            let state = a.revoked ? "revoked" : a.online ? "online" : "offline"
            let attributes = a.attributes.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(
                separator: " ")
            print("\(a.id)  \(a.name)  \(a.segment)  \(state)  \(attributes)")
        }
    }
}

struct CoreRevokeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "revoke", abstract: "Revoke an agent's credential: the core refuses it from now on.")

    @Argument(help: "The agent id (see 'changelab core agents').")
    var agent: String

    @OptionGroup var core: CoreOptions

    func run() async throws {
        try await core.withClient { try await $0.revoke(agent: agent) }
        print("revoked \(agent)")
    }
}

/// `changelab core operator add|list|remove`: named operator tokens with roles.
struct CoreOperatorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "operator", abstract: "Manage named operators (admin, deployer, viewer) and their tokens.",
        subcommands: [CoreOperatorAddCommand.self, CoreOperatorListCommand.self, CoreOperatorRemoveCommand.self])
}

struct CoreOperatorAddCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "add",
        abstract: "Create an operator and print their token (shown once; the core keeps only its hash).",
        discussion: "viewer reads; deployer also promotes, activates and rolls back; admin also publishes, creates tokens, revokes agents and manages operators.")

    @Argument(help: "The operator's name (their identity in the core's records and the CMDB).")
    var name: String

    @Option(name: .long, help: "admin, deployer or viewer.")
    var role: String

    @OptionGroup var core: CoreOptions
    @OptionGroup var output: OutputOptions

    func run() async throws {
        guard let role = OperatorRole(rawValue: role) else {
            throw ChangelabError("--role '\(role)' is not a role", fix: "give admin, deployer or viewer")
        }
        let reply = try await core.withClient { try await $0.addOperator(name, role: role) }
        if output.json { return try printJSON(reply) }
        print("operator \(reply.name) (\(reply.role.rawValue)) token: \(reply.token)")
        print("use it with CHANGELAB_ADMIN_TOKEN=\(reply.token) or log in to the dashboard with it")
    }
}

struct CoreOperatorListCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List operators and roles.")

    @OptionGroup var core: CoreOptions
    @OptionGroup var output: OutputOptions

    func run() async throws {
        let operators = try await core.withClient { try await $0.operators() }
        if output.json { return try printJSON(operators) }
        for o in operators { print("\(o.name)  \(o.role.rawValue)") }
    }
}

struct CoreOperatorRemoveCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "remove", abstract: "Remove an operator: their token stops working at once.")

    @Argument(help: "The operator's name.")
    var name: String

    @OptionGroup var core: CoreOptions

    func run() async throws {
        try await core.withClient { try await $0.removeOperator(name) }
        print("removed operator \(name)")
    }
}

/// `changelab core pin`: the pin of the core's TLS key, read from its state directory.
struct CorePinCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pin", abstract: "Print the core's TLS key pin (for --core-pin), from its state directory.")

    @Option(name: .long, help: ArgumentHelp("State directory of the core.", valueName: "dir"))
    var state: String = CoreServeCommand.defaultState

    func run() throws {
        let path = CoreLayout(directory: state).tls + "/certificate.pem"
        guard FileManager.default.isReadableFile(atPath: path) else {
            throw ChangelabError("no TLS certificate at \(path)", fix: "start the core once with 'changelab core serve --state \(state)'")
        }
        print(try CorePin.of(certificateFile: path))
    }
}
