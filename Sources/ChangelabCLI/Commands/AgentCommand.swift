import ArgumentParser
import Distribution
import Foundation
import HostIO
import Model

/// `changelab agent run`: one or several agent identities in this process.
struct AgentCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "agent", abstract: "Run the endpoint agent.",
        subcommands: [AgentRunCommand.self, AgentWaitForWakeCommand.self])
}

/// `changelab agent wait-for-wake`: blocks until this machine's own magic packet arrives, so a
/// test fleet (or a script) can start an agent only once its segment's representative woke it.
struct AgentWaitForWakeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "wait-for-wake",
        abstract: "Wait for a Wake-on-LAN magic packet for MAC (UDP, all addresses); exit 0 when it arrives.")

    @Option(name: .long, help: ArgumentHelp("The MAC address to wake for (52:54:00:ab:cd:ef).", valueName: "mac"))
    var mac: String

    @Option(name: .long, help: "UDP port to listen on.")
    var port: Int = 9

    @Option(name: .long, help: "Give up after this many seconds (exit 1).")
    var timeout: Double = 600

    func run() async throws {
        guard let address = MACAddress(mac.lowercased()) else {
            throw ValidationError("--mac '\(mac)' is not a unicast MAC address: write six hex pairs with ':', such as 52:54:00:ab:cd:ef")
        }
        guard let udp = UInt16(exactly: port), udp > 0 else { throw ValidationError("--port must be 1–65535") }
        guard timeout.isFinite, timeout > 0, timeout <= 7 * 86_400 else {
            throw ValidationError("--timeout must be a number of seconds above 0 and at most 604800 (7 days)")
        }
        let limit = timeout
        note("changelab agent: waiting up to \(Int(limit)) s for a magic packet for \(address) on UDP port \(udp)")
        let woken = try await BlockingWork.run {
            try WakeOnLAN.wait(for: address, port: udp, timeout: limit) { why in note("changelab agent: ignored \(why)") }
        }
        guard woken else {
            throw ChangelabError(
                "no magic packet for \(address) arrived on UDP port \(udp) within \(Int(limit)) s",
                fix: "check that the segment's representative is online ('changelab status CHG' shows it) and that UDP broadcast reaches this machine")
        }
        note("changelab agent: woken by a magic packet for \(address)")
    }
}

struct AgentRunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Enrol (first time), check in, seed the cache in the background and activate on command.")

    @Option(name: .long, help: ArgumentHelp("The core's URL (https://HOST:PORT).", valueName: "url"))
    var core: String

    @Option(
        name: .long,
        help: ArgumentHelp("The core's TLS key pin, from 'changelab core token' or 'core serve'.", valueName: "sha256:hex"))
    var corePin: String?

    @Option(
        name: .long,
        help: ArgumentHelp("Trust the core's certificate when it chains to a CA in this PEM file.", valueName: "file"))
    var caBundle: String?

    @Option(name: .long, help: ArgumentHelp("Where packages are fetched from (default: the core).", valueName: "url"))
    var artifacts: String?

    @Option(
        name: .long, help: ArgumentHelp("The core's release key (hex), from 'changelab core token'.", valueName: "hex"))
    var coreKey: String

    @Option(
        name: .long,
        help: ArgumentHelp(
            "The change-control trust root this agent obeys (sha256:…, from 'changelab trust-root show'), given out of band; without it the agent seeds but installs nothing.",
            valueName: "digest"))
    var trustRoot: String?

    @Option(
        name: .long,
        help: "Enrolment token: needed the first time, and to enrol again when the core no longer knows this agent.")
    var enrolToken: String?

    @Option(name: .long, help: ArgumentHelp("State directory (identity, cache).", valueName: "dir"))
    var state: String = "/var/lib/changelab/agent"

    @Option(name: .long, help: ArgumentHelp("Root to install into ('/' on a real endpoint).", valueName: "dir"))
    var root: String = "/"

    @Option(name: .long, help: "Agent name (default: the host name).")
    var name: String?

    @Option(name: .long, help: "Network segment this agent is on.")
    var segment: String = "default"

    @Option(
        name: .long, parsing: .singleValue,
        help: ArgumentHelp("An attribute such as site=paris (repeatable).", valueName: "key=value"))
    var attribute: [String] = []

    @Option(
        name: .long, parsing: .singleValue,
        help: ArgumentHelp(
            "Report this interface address instead of the host's (repeatable; the first decides the segment). Default: the host's IPv4 addresses, the one the route to the core leaves from first.",
            valueName: "a.b.c.d/prefix"))
    var address: [String] = []

    @Option(
        name: .long,
        help: "Run this many agent identities (NAME-01…), each with its own state and root under --state and --root.")
    var count: Int = 1

    @Option(name: .long, help: "Seconds before an installer is killed and reported as timed out.")
    var installTimeout: Double = 600

    @Option(
        name: .long, help: "With --count: how many identities may run an installer at the same time (default: all).")
    var parallelInstalls: Int?

    @Option(name: .long, help: "Check in at least this often (seconds), whatever the core asks.")
    var maxCheckIn: Double?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Serve verified packages to agents on this agent's segment over plain HTTP on this port (default: off; with --count, identity N uses PORT+N-1).",
            valueName: "port"))
    var peerPort: Int?

    @Flag(
        name: .long,
        help: "Do not send the magic packets the core asks this agent to send as its segment's representative (it reports them as not sent).")
    var noWakeOnLan = false

    @Flag(
        name: .long,
        help: "Take no part in the segment's multicast: download from peers or the core, and never send as representative.")
    var noMulticast = false

    @Option(name: .long, help: "With --peer-port: peer downloads served at once (more get 503).")
    var peerDownloads: Int = 4

    @Option(name: .long, help: "With --peer-port: bytes per second for all peer downloads together (default: unthrottled).")
    var peerRate: Int64?

    @Option(
        name: .long, parsing: .singleValue,
        help: ArgumentHelp(
            "A folder (under the root) whose files the inventory records with hashes (repeatable; default /etc /usr/local /opt /srv).",
            valueName: "path"))
    var watch: [String] = []

    func run() async throws {
        guard let key = ReleasePublicKey(hex: coreKey) else {
            throw ValidationError("--core-key must be the core's 64-hex-digit release key (see 'changelab core token')")
        }
        guard (1...10_000).contains(count) else { throw ValidationError("--count must be between 1 and 10000") }
        let pinnedRoot = try trustRoot.map { text in
            guard let digest = SHA256Digest(hex: text) else {
                throw ValidationError("--trust-root must be sha256: and 64 hex digits (see 'changelab trust-root show')")
            }
            return digest
        }
        guard installTimeout.isFinite, installTimeout > 0, installTimeout <= 7 * 24 * 3600 else {
            throw ValidationError("--install-timeout must be a number of seconds above 0 and at most 604800 (7 days)")
        }
        if let maxCheckIn, !(maxCheckIn.isFinite && maxCheckIn >= 0.05 && maxCheckIn <= 86_400) {
            throw ValidationError("--max-check-in must be a number of seconds from 0.05 to 86400")
        }
        if let parallelInstalls, !(1...10_000).contains(parallelInstalls) {
            throw ValidationError("--parallel-installs must be between 1 and 10000")
        }
        guard core.lowercased().hasPrefix("https://") else {
            throw ChangelabError(
                "--core \(core) is not HTTPS", why: "the core serves HTTPS only; the agent's credential never travels in the clear",
                fix: "write it as https://HOST:PORT")
        }
        let trust: CoreTrust
        switch (corePin, caBundle) {
        case (let text?, nil):
            guard let pin = CorePin.parse(text) else {
                throw ChangelabError("--core-pin '\(text)' is not a TLS key pin", fix: "write it as sha256: and 64 hex digits")
            }
            trust = .pin(pin)
        case (nil, let bundle?):
            trust = .caBundle(bundle)
        default:
            throw ChangelabError(
                "give exactly one of --core-pin and --ca-bundle",
                fix: "'changelab core token' prints the core's pin; --ca-bundle takes your organisation's CA certificates")
        }
        if count > 1 && root == "/" {
            throw ValidationError("several identities cannot share root '/'; pass --root DIR (each gets DIR/NAME-NN)")
        }
        var attributes: [String: String] = [:]
        for pair in attribute {
            let parts = pair.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2, !parts[0].isEmpty else {
                throw ValidationError("--attribute '\(pair)' must be KEY=VALUE, for example site=paris")
            }
            if parts[0] == BaselineAttribute.key, let problem = BaselineAttribute.problem(parts[1]) {
                throw ValidationError(
                    "--attribute \(problem): NAME@N is the approved baseline (baselines/NAME.yaml) and its CMDB "
                        + "version this endpoint runs ('changelab baseline list' shows them)")
            }
            attributes[parts[0]] = parts[1]
        }
        for text in address where InterfaceAddress(text) == nil {
            throw ValidationError("--address '\(text)' is not an IPv4 interface address; write it as 10.77.1.11/24")
        }
        if let peerPort, !(1...65535).contains(peerPort) || peerPort + count - 1 > 65535 {
            throw ValidationError("--peer-port must be 1–65535 (with --count, PORT+COUNT-1 too)")
        }
        guard (1...1024).contains(peerDownloads) else { throw ValidationError("--peer-downloads must be 1–1024") }
        if let peerRate, peerRate <= 0 { throw ValidationError("--peer-rate must be a positive number of bytes per second") }
        let slots = parallelInstalls.map { Semaphore($0) }
        let base = name ?? ProcessInfo.processInfo.hostName
        let configurations = (1...count).map { i -> AgentConfiguration in
            let id = count == 1 ? base : String(format: "%@-%02d", base, i)
            var c = AgentConfiguration(
                name: id, coreURL: core, stateDirectory: count == 1 ? state : "\(state)/\(id)",
                root: count == 1 ? root : "\(root)/\(id)", segment: segment, attributes: attributes, coreKey: key,
                enrolmentToken: enrolToken)
            c.coreTrust = trust
            c.trustRoot = pinnedRoot
            c.artifactURL = artifacts
            c.installTimeout = .milliseconds(Int(exactly: (installTimeout * 1000).rounded(.down)) ?? 600_000)
            c.maxCheckInInterval = maxCheckIn
            if !watch.isEmpty { c.watchedPaths = watch }
            c.installSlots = slots
            c.multicast = !noMulticast
            c.peerServing = peerPort.map { PeerServing(port: $0 + i - 1, maxDownloads: peerDownloads, rate: peerRate) }
            c.wakeOnLAN = !noWakeOnLan
            if !address.isEmpty { c.addresses = address }
            return c
        }
        note("changelab agent: \(count) identit\(count == 1 ? "y" : "ies") on segment \(segment), core \(core)")
        try await withHTTPClient(trust: trust, core: core) { client in
            try await withThrowingTaskGroup(of: Void.self) { group in
                for configuration in configurations {
                    group.addTask { try await Agent(configuration: configuration, client: client).run() }
                }
                try await group.waitForAll()
            }
        }
    }
}
