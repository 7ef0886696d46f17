import ArgumentParser
import Foundation
import Inventory
import Model

/// How to collect an inventory on this host.
struct CollectionOptions: ParsableArguments {
    @Option(
        name: .customLong("inventory-root"),
        help: ArgumentHelp("The system's root folder (a fleet agent's dpkg --root).", valueName: "dir"))
    var inventoryRoot: String = "/"
    @Option(name: .long, help: "A path to record files under (repeatable; default: /etc /usr/local /opt /srv).")
    var watch: [String] = []
    @Flag(name: .long, help: "Keep what the noise rules drop (logs, caches, machine-id, …).")
    var keepNoise = false

    func collect() async throws -> CollectedInventory {
        for path in watch where !path.hasPrefix("/") {
            throw ChangelabError("--watch \(path) is not an absolute path", fix: "write it like --watch /etc/nginx")
        }
        let options = InventoryOptions(
            root: inventoryRoot, watchedPaths: watch.isEmpty ? InventoryOptions.defaultWatchedPaths : watch,
            noise: keepNoise ? NoiseRules() : .defaultNoise)
        return try await InventoryCollector(runner: LocalShell(), options: options).collect()
    }
}

struct InventoryCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inventory",
        abstract: "Collect inventories: packages, files, units, users, groups, ports.",
        subcommands: [Collect.self]
    )

    struct Collect: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Collect this host's inventory (or that of a root folder).")
        @OptionGroup var collection: CollectionOptions
        @OptionGroup var output: OutputOptions

        func run() async throws {
            let collected = try await collection.collect()
            for warning in collected.warnings.prefix(20) { note("warning: \(warning)") }
            if collected.warnings.count > 20 { note("… and \(collected.warnings.count - 20) more warnings") }
            if output.json { return try printJSON(collected.snapshot) }
            let s = collected.snapshot
            write([
                "\(s.hostname): \(s.os.prettyName), kernel \(s.kernel.release) (\(s.kernel.machine)), "
                    + "\(s.cpu.count) CPU, \(s.memory.totalKiB / 1024) MiB",
                "\(s.packages.count) packages, \(s.files.count) files under \(s.watchedPaths.joined(separator: " ")), "
                    + "\(s.units.count) units, \(s.users.count) users, \(s.groups.count) groups, "
                    + "\(s.ports.count) listening ports",
                "collected in \(String(format: "%.2f", collected.seconds)) s",
            ])
        }
    }
}
