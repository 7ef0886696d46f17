import Foundation
import HostIO
import Model
import Testing

@testable import CMDB

/// A corrupt query index is rebuilt from the records, never trusted and never a trap.
@Suite struct CorruptIndexTests {
    static let varintMax: [UInt8] = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]

    @Test(arguments: [
        // A string table claiming 2^63-1 strings (reserveCapacity trapped).
        CorruptIndexTests.varintMax,
        // One string of length 2^63-1 (offset + length overflowed).
        [0x01] + CorruptIndexTests.varintMax,
        // A valid table, then an inventory count of 2^63-1.
        [0x01, 0x01, 0x61, 0x00] + CorruptIndexTests.varintMax,
        // Truncated in the middle of a varint.
        [0x01, 0x81],
    ])
    func aCorruptIndexIsRebuiltAndTheQueryAnswersAsBefore(body: [UInt8]) async throws {
        let path = Fixture.temporaryFolder()
        defer { Fixture.remove(path) }
        try await Fixture.make(at: path).close()
        let store = try CMDBStore.open(path)
        let query = try Query("package:openssl < 3.0.13")
        let expected = try await store.query(query)
        #expect(!expected.isEmpty)
        try Data(QueryIndex.magic + body).write(to: URL(fileURLWithPath: store.indexPath))
        #expect(throws: QueryIndex.Corrupt.self) { _ = try QueryIndex.decode(Data(QueryIndex.magic + body)) }
        #expect(try await store.query(query) == expected)
        let rebuilt = try Data(contentsOf: URL(fileURLWithPath: store.indexPath))
        #expect((try? QueryIndex.decode(rebuilt)) != nil)
    }
}
