import ArgumentParser
import Distribution
import Foundation
import Model

/// `changelab multicast send|receive`: one NORM file transfer on a segment, by hand. The
/// engine's representatives and receivers run the same code; these commands exist to try a
/// segment (is multicast getting through? at what loss?) and for the fleet tests.
struct MulticastCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "multicast",
        abstract: "Send or receive one file over NORM reliable multicast on this segment (RFC 5740).",
        discussion: """
            Start the receivers first, then the sender: the sender waits for every receiver named by \
            --receivers to acknowledge the whole file, re-requests from stragglers, then ends the \
            transfer. Receivers accept only the object of the named sender node, of exactly --size bytes, \
            announcing exactly --info; with --manifest they check every chunk against a release manifest.
            """,
        subcommands: [Send.self, Receive.self]
    )

    struct Settings: ParsableArguments {
        @Option(help: "The multicast group (IPv4, 239.0.0.0/8 recommended).")
        var group = "239.77.0.1"
        @Option(help: "The UDP port.")
        var port: UInt16 = 7700
        @Option(help: "The interface multicast leaves by (default: the route's).")
        var interface: String?
        @Option(help: "This node's NORM id (1-4294967294, unique on the segment).")
        var node: UInt32
        @Option(help: "The sender's rate in bytes per second, e.g. 10M (with --congestion-control: the ceiling).")
        var rate = "10M"
        @Flag(help: "Use NORM's congestion control (background seeding on a busy segment).")
        var congestionControl = false
        @Option(help: "Parity segments sent with every block of 128 before any NACK (0-32).")
        var autoParity: UInt8 = 8
        @Option(help: "Seconds before giving up.")
        var timeout = 300

        func settings() throws -> (NormSettings, NormNode, Duration) {
            guard let node = NormNode(node) else {
                throw ValidationError("--node \(node) is not a NORM node id: give 1-4294967294")
            }
            guard let bytes = try parseRate(rate) else { throw ValidationError("--rate is required") }
            guard (1...86_400).contains(timeout) else { throw ValidationError("--timeout must be 1-86400 seconds") }
            var settings = NormSettings(group: group, port: port, interface: interface, rate: bytes)
            settings.congestionControl = congestionControl
            settings.autoParity = autoParity
            let problems = settings.problems()
            guard problems.isEmpty else {
                throw ChangelabError("the multicast settings are not usable", why: problems.joined(separator: "; "))
            }
            return (settings, node, .seconds(timeout))
        }
    }

    struct Send: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Multicast FILE to the receivers and wait for their acknowledgements.")

        @Argument(help: "The file to send.")
        var file: String
        @Option(help: "The receivers' node ids, comma-separated (each must acknowledge).")
        var receivers: String
        @Option(help: "Text announced with the object (receivers must expect exactly it).")
        var info = ""
        @Option(help: "Watermark rounds (the first, then re-requests from stragglers).")
        var rounds = 3
        @OptionGroup var multicast: Settings
        @OptionGroup var output: OutputOptions

        func run() async throws {
            let (settings, node, timeout) = try multicast.settings()
            var nodes: [NormNode] = []
            for part in receivers.split(separator: ",") {
                guard let receiver = NormNode(String(part)) else {
                    throw ValidationError("--receivers: '\(part)' is not a node id (1-4294967294)")
                }
                nodes.append(receiver)
            }
            guard !nodes.isEmpty else { throw ValidationError("--receivers names no node") }
            guard (1...20).contains(rounds) else { throw ValidationError("--rounds must be 1-20") }
            let report = try await NormTransfer.send(
                file: file, info: Array(info.utf8), node: node, receivers: nodes, settings: settings, rounds: rounds,
                timeout: timeout)
            if output.json {
                try printJSON(report)
            } else {
                print(
                    "sent \(file) to \(report.acknowledged.count) of \(nodes.count) receivers in "
                        + String(format: "%.2f s", report.seconds) + " (\(report.rounds) round(s))")
                if !report.missing.isEmpty {
                    print("no acknowledgement from: \(report.missing.map(\.description).joined(separator: ", "))")
                }
            }
            if !report.missing.isEmpty { throw ExitCode(3) }
        }
    }

    struct Receive: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Receive the one file a sender multicasts, into OUT.")

        @Option(help: "Where the file goes once complete (its folder holds NORM's partial file meanwhile).")
        var out: String
        @Option(help: "The sender's node id: objects from any other node are refused.")
        var sender: UInt32
        @Option(help: "The exact size in bytes.")
        var size: Int64
        @Option(help: "The text the sender announces with the object.")
        var info = ""
        @Option(help: "A release manifest (JSON) to check every chunk against after reassembly.")
        var manifest: String?
        @Option(help: "An empty file written once the receiver has joined the group (for scripts that start the sender).")
        var readyFile: String?
        @OptionGroup var multicast: Settings
        @OptionGroup var output: OutputOptions

        struct Result: Codable {
            var file: String
            var transfer: NormReceiveReport
            var failingChunks: [Int]?
        }


        /// Writes `path`, empty, once the receiver has joined its group.
        static func announceReady(at path: String) -> @Sendable () -> Void {
            { _ = FileManager.default.createFile(atPath: path, contents: Data()) }
        }

        func run() async throws {
            let (settings, node, timeout) = try multicast.settings()
            guard let senderNode = NormNode(sender) else { throw ValidationError("--sender \(sender) is not a node id") }
            guard size > 0, size <= 1 << 40 else { throw ValidationError("--size must be 1 byte to 1 TiB") }
            let checked = try manifest.map { path -> ReleaseManifest in
                let manifest = try StableJSON.decode(ReleaseManifest.self, from: Data(contentsOf: URL(fileURLWithPath: path)))
                try manifest.validate()
                guard manifest.size == size else {
                    throw ChangelabError("--manifest \(path) is for \(manifest.size) bytes, not --size \(size)")
                }
                return manifest
            }
            let absolute = out.hasPrefix("/") ? out : FileManager.default.currentDirectoryPath + "/" + out
            let report = try await NormTransfer.receive(
                into: absolute, workDirectory: (absolute as NSString).deletingLastPathComponent, node: node,
                sender: senderNode, size: size, info: Array(info.utf8), manifest: checked, settings: settings,
                timeout: timeout, ready: readyFile.map(Self.announceReady))
            let failing = report.failingChunks
            if output.json {
                try printJSON(Result(file: absolute, transfer: report, failingChunks: failing))
            } else {
                print("received \(absolute) (\(size) bytes) in " + String(format: "%.2f s", report.seconds))
                if report.refused > 0 { print("refused \(report.refused) object(s) not of this job") }
                if let failing { print(failing.isEmpty ? "every chunk matches the manifest" : "chunks failing the manifest: \(failing)") }
            }
            if let failing, !failing.isEmpty {
                throw ChangelabError(
                    "\(failing.count) chunk(s) of \(absolute) do not match the manifest",
                    why: "forged or corrupted multicast data",
                    fix: "fetch those chunks again from a peer or the core (the engine does this itself)")
            }
        }
    }
}
