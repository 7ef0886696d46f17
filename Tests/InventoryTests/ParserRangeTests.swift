import Inventory
import Model
import Testing

/// Numbers in collection output are range-checked: an impossible port, mode or id is a
/// warning or a skipped line, never a record with a nonsense value.
@Suite struct ParserRangeTests {
    @Test func outOfRangePortsModesAndIDsAreNotRecorded() {
        let output = """
            @@changelab tcp
               0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
               1: 00000000:FFFFFFFFFFFF 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1
               2: 00000000:-1 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1
            @@changelab files
            f	644	0	0	12		/etc/app.conf
            f	777777777	0	0	12		/etc/huge-mode
            f	-7	0	0	12		/etc/negative-mode
            f	644	-1	0	12		/etc/negative-uid
            f	644	0	99999999999	12		/etc/huge-gid
            f	644	0	0	-5		/etc/negative-size
            @@changelab end

            """
        let (snapshot, warnings) = InventoryParser.parse(output, options: InventoryOptions(watchedPaths: ["/etc"]))
        #expect(snapshot.ports.map(\.port) == [22])
        #expect(snapshot.files.map(\.path).sorted() == ["/etc/app.conf", "/etc/negative-size"])
        #expect(snapshot.files.first { $0.path == "/etc/negative-size" }?.size == nil)
        #expect(warnings.filter { $0.hasPrefix("unreadable file line") }.count == 4)
    }
}
