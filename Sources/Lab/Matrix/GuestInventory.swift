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

extension Lab {
    /// The incremental collector for a guest, watching its recipe's paths.
    func incrementalCollector(for guest: RestoredGuest, watching paths: [String]) -> IncrementalCollector {
        IncrementalCollector(runner: GuestShell(agent: guest.agent), options: InventoryOptions(watchedPaths: paths))
    }

    /// Where a slot's file listing lives: beside its frozen disk, so per slot and per lab
    /// host (each slot booted on its own; inodes and ctimes differ between them).
    func listingPath(disk: String, key: String) -> String {
        (disk as NSString).deletingPathExtension + ".listing-\(key).json"
    }

    /// Deletes every listing of the slot disk `disk` (it is about to be booted again).
    func removeListings(disk: String) {
        let folder = (disk as NSString).deletingLastPathComponent
        let stem = ((disk as NSString).lastPathComponent as NSString).deletingPathExtension + ".listing-"
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? [] where entry.hasPrefix(stem) {
            try? FileManager.default.removeItem(atPath: "\(folder)/\(entry)")
        }
    }

    /// The file listing of the slot `guest` was restored from. A slot saved before listings
    /// existed (or before its watched paths changed) gets one now, on this pristine restore,
    /// before the cell touches the guest: every later restore of the slot is the same state.
    func slotListing(for guest: RestoredGuest, watching paths: [String]) async throws -> (FileListing, recorded: Bool) {
        let collector = incrementalCollector(for: guest, watching: paths)
        let path = listingPath(disk: guest.slot.disk, key: collector.listingKey)
        if let data = FileManager.default.contents(atPath: path), let listing = try? FileListing.decode(data),
            listing.key == collector.listingKey
        {
            return (listing, false)
        }
        let (_, listing) = try await collector.record()
        try AtomicFile.write(try StableJSON.data(listing), to: path)
        return (listing, true)
    }

    /// Records the listing of a slot about to be saved (its guest settled, nothing else running).
    func recordListing(disk: String, agent: GuestAgent, watching paths: [String]) async throws {
        let collector = IncrementalCollector(runner: GuestShell(agent: agent), options: InventoryOptions(watchedPaths: paths))
        let (_, listing) = try await collector.record()
        try AtomicFile.write(try StableJSON.data(listing), to: listingPath(disk: disk, key: collector.listingKey))
    }
}
