import AsyncHTTPClient
import Foundation
import HostIO
import Model
import Testing

@testable import Distribution

/// Saves land newest-last, streams let go of what they hold, uploads stop with their consumer.
@Suite struct DurabilityTests {
    @Test func anOlderSnapshotThatReachesTheStoreLastIsNotWrittenOverTheNewer() async throws {
        let scratch = Scratch("store-order")
        defer { scratch.cleanup() }
        let store = FileCoreStore(directory: scratch.path)
        var older = CoreSnapshot()
        older.policies["p"] = Policy(name: "p", query: "all", release: "old", createdAt: Date())
        var newer = older
        newer.policies["p"]?.release = "new"
        // The newer change reaches the store first (a suspended caller overtaken), the older one after.
        try await store.save(newer, sequence: 2)
        try await store.save(older, sequence: 1)
        #expect(try store.load()?.policies["p"]?.release == "new")
        // Many at once, in any order: the newest ends up on disk and every caller returned.
        try await withThrowingTaskGroup(of: Void.self) { group in
            for n in (3...60).shuffled() {
                var snapshot = older
                snapshot.policies["p"]?.release = "v\(n)"
                group.addTask { try await store.save(snapshot, sequence: UInt64(n)) }
            }
            try await group.waitForAll()
        }
        #expect(try store.load()?.policies["p"]?.release == "v60")
    }

    @Test func anOlderInventoryThatReachesTheStoreLastIsNotWrittenOverTheNewer() async throws {
        let scratch = Scratch("inventory-order")
        defer { scratch.cleanup() }
        let store = FileCoreStore(directory: scratch.path)
        try await store.saveInventory(InventorySnapshot(hostname: "new"), agent: "a-1", sequence: 2)
        try await store.saveInventory(InventorySnapshot(hostname: "old"), agent: "a-1", sequence: 1)
        #expect(try store.loadInventories()["a-1"]?.hostname == "new")
    }

    @Test func statusStreamsThatEndLeaveNothingRegisteredForShutdown() async throws {
        var limits = CoreLimits()
        limits.streamPingSeconds = 1
        try await withCore(limits: limits) { core, _, http in
            let admin = try core.admin
            for _ in 0..<10 {
                let watching = Task { try await admin.watch("none") { _ in } }
                try await Task.sleep(for: .milliseconds(150))
                watching.cancel()
                _ = try? await watching.value
            }
            #expect(
                await eventually(.seconds(10)) { core.server.shutdown.registered == 0 },
                "\(core.server.shutdown.registered) streams still registered")
        }
    }

    @Test func anUploadStopsReadingWhenItsConsumerGoesAway() async throws {
        let scratch = Scratch("chunks")
        defer { scratch.cleanup() }
        let path = scratch.path + "/big.bin"
        try Data(count: 16 << 20).write(to: URL(fileURLWithPath: path))
        func openDescriptors() -> Int {
            let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
            return fds.filter { (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\($0)")) == path }
                .count
        }
        do {
            var iterator = FileChunks(path: path).makeAsyncIterator()
            let first = try await iterator.next()
            #expect(first?.readableBytes == 1 << 20)
        }
        // The consumer is gone: nothing keeps the file open (or spins on it).
        #expect(await eventually(.seconds(3)) { openDescriptors() == 0 })
        // Read to the end, it yields the whole file.
        var total = 0
        for try await piece in FileChunks(path: path) { total += piece.readableBytes }
        #expect(total == 16 << 20)
    }
}
