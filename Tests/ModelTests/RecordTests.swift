import Foundation
import Model
import Testing

@Suite struct RecordTests {
    @Test(arguments: [
        (CMDBReference(.baseline, "web@3"), "baselines/web/3.json"),
        (CMDBReference(.cell, "run-7/web-1"), "cells/\(CMDBRecordKind.shard("run-7"))/run-7/web-1.json"),
        (
            CMDBReference(.inventory, String(repeating: "ab", count: 32)),
            "inventories/ab/\(String(repeating: "ab", count: 32)).json"
        ),
        (
            CMDBReference(.artifact, String(repeating: "cd", count: 32)),
            "artifacts/cd/\(String(repeating: "cd", count: 32)).json"
        ),
        (CMDBReference(.target, "host-1"), "targets/\(CMDBRecordKind.shard("host-1"))/host-1.json"),
        (CMDBReference(.run, "run-7"), "runs/\(CMDBRecordKind.shard("run-7"))/run-7.json"),
        (CMDBReference(.change, "CHG-1"), "changes/\(CMDBRecordKind.shard("CHG-1"))/CHG-1.json"),
    ])
    func eachRecordHasOneFileAndTheFileNamesTheRecord(_ reference: CMDBReference, _ path: String) {
        #expect(reference.path == path)
        #expect(CMDBRecordKind.record(at: path) == reference)
    }

    @Test func shardsSpreadNamesAndComeFromTheirSHA256() {
        #expect(CMDBRecordKind.shard("run-7") == String(SHA256Digest(of: "run-7").hex.prefix(2)))
        #expect(Set((0..<1000).map { CMDBRecordKind.shard("run-\($0)") }).count > 200)
    }

    @Test(arguments: [
        "baselines/web.json", "cells/run-7/x.json", "inventories/cd/ab.json", "notes/x.json", "runs/run-7.json",
        "runs/00/run-7.json", "runs/x.txt", "targets/zz/host-1.json",
    ])
    func pathsOutsideTheLayoutAreNotRecords(_ path: String) {
        #expect(CMDBRecordKind.record(at: path) == nil)
    }

    @Test func inventoriesAreNamedByTheDigestOfTheirStableJSON() throws {
        let record = InventoryRecord(Sample.baseline)
        let data = try StableJSON.data(record)
        #expect(record.recordID == SHA256Digest(of: data).hex)
        var shuffled = Sample.baseline
        shuffled.packages.reverse()
        #expect(InventoryRecord(shuffled).recordID == record.recordID)
        #expect(InventoryRecord(Sample.afterInstall).recordID != record.recordID)
    }

    @Test func validationNamesWhatIsWrong() {
        let digest = SHA256Digest(of: "x")
        let cell = CellRecord(
            run: "run 1", name: "web", baseline: BaselineRef(name: "web", version: 1), artifact: digest,
            verdict: .failed,
            startedAt: Date(), seconds: 1, before: digest, installDelta: ConfigurationDelta())
        #expect(
            cell.problems() == [
                "the run id 'run 1' contains ' ' (use letters, digits, '.', '_', '-', '+')",
                "a failed cell has no failure class",
            ])
        let baseline = BaselineVersionRecord(
            name: "web", version: 2, recordedAt: Date(), origin: .adopted, inventory: digest, previousVersion: 2)
        #expect(
            baseline.problems() == [
                "previous version 2 is not older than version 2", "an adopted version has no adoption details",
            ])
        #expect(BaselineRef("web@3") == BaselineRef(name: "web", version: 3))
        #expect(BaselineRef("web") == nil && BaselineRef("web@0") == nil)
    }
}
