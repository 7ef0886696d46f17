import Foundation
import HostIO
import Inventory
import Libvirt
import Model

/// Runs the inventory script in a lab guest through its agent: the collector's seam for VMs.
public struct GuestShell: CommandRunner {
    public let agent: GuestAgent

    public init(agent: GuestAgent) {
        self.agent = agent
    }

    public func runShell(_ script: String, timeout: Duration) async throws -> CommandResult {
        let result = try await agent.exec(["/bin/sh", "-s"], input: Data(script.utf8), timeout: timeout)
        return CommandResult(status: result.exitCode, stdout: result.stdout, stderr: result.stderr, timedOut: result.timedOut)
    }
}

extension Lab {
    /// The collector for a guest of `image`, watching its recipe's paths.
    func collector(for guest: RestoredGuest, watching paths: [String]) -> InventoryCollector {
        InventoryCollector(runner: GuestShell(agent: guest.agent), options: InventoryOptions(watchedPaths: paths))
    }

    /// The inventory of a pristine restore of `image`: collected once per image and
    /// collector script, then read from the image folder (every restore is identical).
    public func baselineInventory(_ image: BaselineImage) async throws -> InventorySnapshot {
        let recipe = try baselines.load(image.name)
        let probe = InventoryCollector(runner: LocalShell(), options: InventoryOptions(watchedPaths: recipe.watch))
        let key = SHA256Digest(of: probe.script).short
        let path = "\(image.directory)/inventory-\(key).json"
        if let data = FileManager.default.contents(atPath: path), let cached = try? StableJSON.decode(InventorySnapshot.self, from: data) {
            return cached
        }
        say(image.name, "collecting the baseline's inventory on a fresh restore")
        let snapshot = try await withRestored(image) { guest in
            try await collector(for: guest, watching: recipe.watch).collect().snapshot
        }
        try AtomicFile.write(try StableJSON.data(snapshot), to: path)
        return snapshot
    }
}
