import CMDB
import Foundation
import HostIO
@testable import Lab
import Model
import Testing

/// A CMDB in a temp folder where `name` was built from `image` and has artifacts adopted
/// into it from made-up cells: what `baseline adopt` leaves behind, without a matrix run.
struct AdoptionFixture {
    let path = NSTemporaryDirectory() + "changelab-standard-\(UUID().uuidString.prefix(8))"
    let writer: CMDBWriter
    let name: String

    init(_ name: String, imageDigest: SHA256Digest, recipeDigest: SHA256Digest, inventory: InventorySnapshot) async throws {
        self.name = name
        writer = try await CMDBWriter(path: path, actor: "test")
        try await writer.recordBuiltBaseline(
            name: name, inventory: inventory, recipeDigest: recipeDigest, imageDigest: imageDigest)
    }

    /// Adopts `artifact` into the newest version from a passed cell on it.
    @discardableResult
    func adopt(_ package: String, _ version: String, _ artifact: SHA256Digest, change: String? = nil) async throws
        -> BaselineVersionRecord
    {
        try await Self.adopt(package, version, artifact, change: change, into: name, with: writer)
    }

    @discardableResult
    static func adopt(
        _ package: String, _ version: String, _ artifact: SHA256Digest, change: String? = nil, into name: String,
        with writer: CMDBWriter
    ) async throws -> BaselineVersionRecord {
        let latest = try writer.store.latestBaseline(name)
        if let change, !writer.store.exists(CMDBReference(.change, change)) {
            try await writer.put(
                ChangeRecord(
                    id: change, title: package, need: "test", type: .normal, package: package, requester: "test",
                    scope: ChangeScope(targets: "all"), createdAt: Date()),
                operation: "propose-change")
        }
        if !writer.store.exists(CMDBReference(.artifact, artifact.hex)) {
            try await writer.record(
                artifact: ArtifactRecord(digest: artifact, package: package, version: version, recordedAt: Date()))
        }
        let run = "seed-\(package)-\(latest.version)"
        try await writer.record(
            run: RunRecord(
                id: run, artifact: artifact, baselines: [latest.ref], startedAt: Date(), finishedAt: Date(), status: .passed))
        try await writer.record(
            cell: CellRecord(
                run: run, name: "\(name).install", baseline: latest.ref, artifact: artifact, verdict: .passed,
                startedAt: Date(), seconds: 1, before: latest.inventory, after: latest.inventory,
                installDelta: ConfigurationDelta()))
        return try await writer.adoptBaseline(name, from: "\(run)/\(name).install", change: change)
    }

    func remove() async {
        await writer.close()
        try? FileManager.default.removeItem(atPath: path)
    }
}

@Suite struct StandardConfigurationTests {
    static let image = SHA256Digest(of: "web-image")
    static let recipe = SHA256Digest(of: "web-recipe")

    static func fixture() async throws -> AdoptionFixture {
        try await AdoptionFixture("web", imageDigest: image, recipeDigest: recipe, inventory: InventorySnapshot())
    }

    static func current(_ cmdb: AdoptionFixture, image: SHA256Digest = image) throws -> StandardConfiguration? {
        try StandardConfiguration.current(of: "web", imageDigest: image, recipeDigest: recipe, in: cmdb.writer.store)
    }

    @Test func anAdoptedVersionIsTheImagePlusItsAdoptionsAndARevertedOneIsNot() async throws {
        let cmdb = try await Self.fixture()
        let greeterd = SHA256Digest(of: "greeterd-1.1.0")
        let store = SHA256Digest(of: "session-store-1.0.0")
        #expect(try Self.current(cmdb) == nil)
        try await cmdb.adopt("greeterd", "1.1.0", greeterd, change: "CHG-0001")
        try await cmdb.adopt("session-store", "1.0.0", store, change: "CHG-0002")

        let both = try #require(try Self.current(cmdb))
        #expect(both.version.description == "web@3" && both.built.description == "web@1")
        #expect(both.adopted.map(\.artifact) == [greeterd, store])
        #expect(both.adopted.map(\.version.description) == ["web@2", "web@3"])
        #expect(both.adopted.first?.label == "greeterd 1.1.0 (\(greeterd.short), adopted as web@2 for CHG-0001)")

        // CHG-0002 rolled back: web@4 is web@2's configuration, session-store is not installed.
        try await cmdb.writer.revertAdoption("web", change: "CHG-0002")
        let reverted = try #require(try Self.current(cmdb))
        #expect(reverted.version.description == "web@4")
        #expect(reverted.adopted.map(\.artifact) == [greeterd])

        // Another image (web rebuilt since): the adoptions do not stand on it.
        #expect(try Self.current(cmdb, image: SHA256Digest(of: "web-image-2")) == nil)
        await cmdb.remove()
    }

    @Test func thePackageUnderTestGoesOverItsAdoptedReleaseExceptInTheUpgradeAndUninstallLanes() {
        let ref = BaselineRef(name: "web", version: 2)
        let standard = StandardConfiguration(
            version: BaselineRef(name: "web", version: 3), built: BaselineRef(name: "web", version: 1),
            adopted: [
                .init(version: ref, artifact: SHA256Digest(of: "g"), package: "greeterd", packageVersion: "1.1.0"),
                .init(version: ref, artifact: SHA256Digest(of: "s"), package: "session-store", packageVersion: "1.0.0"),
            ])
        #expect(standard.installs(for: .install, testing: "greeterd").map(\.package) == ["greeterd", "session-store"])
        #expect(standard.installs(for: .reinstall, testing: "greeterd").map(\.package) == ["greeterd", "session-store"])
        #expect(standard.installs(for: .upgrade, testing: "greeterd").map(\.package) == ["session-store"])
        #expect(standard.installs(for: .uninstall, testing: "greeterd").map(\.package) == ["session-store"])
        #expect(standard.installs(for: .uninstall, testing: "kernel-tuning").count == 2)
    }

    @Test func reAdoptingTheSameArtifactFromACellOfTheAdoptedVersionIsANoOp() async throws {
        let cmdb = try await Self.fixture()
        let greeterd = SHA256Digest(of: "greeterd-1.1.0")
        let first = try await cmdb.adopt("greeterd", "1.1.0", greeterd)
        // The next run tests web@2 (greeterd installed first) and its cell is adopted again.
        let again = try await cmdb.adopt("greeterd", "1.1.0", greeterd)
        #expect(again == first)
        #expect(try cmdb.writer.store.baselineVersions("web").count == 2)
        await cmdb.remove()
    }
}

extension LabQEMUTests {
    /// One cell of session-store on minimal, whose CMDB version has greeterd adopted: the cell
    /// installs greeterd from the artifact store before session-store, measures the delta from
    /// there, and is recorded as minimal@2. An adopted artifact the store lacks is an error
    /// naming the fix, without a VM.
    @Test func aCellOnAnAdoptedVersionInstallsTheAdoptedArtifactsFirst() async throws {
        let (lab, _) = try await SharedLab.shared.lab()
        let image = try lab.readyImage("minimal")
        let greeterd = try await PackageBuilder(lab: lab).build("greeterd").manifest
        let cmdb = try await AdoptionFixture(
            "minimal", imageDigest: image.imageDigest, recipeDigest: image.recipeDigest,
            inventory: try await lab.baselineInventory(image))
        let adopted = try await cmdb.adopt(greeterd.name, greeterd.version, greeterd.digest, change: "CHG-0001")
        #expect(adopted.ref.description == "minimal@2")
        await cmdb.writer.close()

        let run = try await MatrixRunner(lab: lab).run(
            package: "session-store", options: Self.options([.install], baselines: ["minimal"], cmdb: cmdb.path))
        let cell = try #require(run.results["minimal.install"])
        #expect(cell.passed, "\(cell.reason)")
        #expect(run.baselines.first?.standard?.version == adopted.ref)
        // greeterd's own install steps ran as the cell's preparation, before session-store's.
        let prepared = cell.steps.filter { $0.phase == .prepare }
        #expect(prepared.contains { $0.name.hasPrefix("upload greeterd") })
        #expect(prepared.contains { $0.name == "inventory of the standard configuration minimal@2" })
        #expect(prepared.allSatisfy { $0.status == .passed })
        let firstInstall = try #require(cell.steps.firstIndex { $0.phase == .install })
        #expect(cell.steps.lastIndex { $0.phase == .prepare }.map { $0 < firstInstall } == true)
        #expect(cell.timings.preparation > 0)
        // greeterd's own tests belong to minimal@2 as its standing suite does: they ran after
        // session-store's install, each as a regression step named for the adoption.
        let adoptedTests = cell.steps.filter { $0.phase == .regression && $0.name.hasPrefix("greeterd (adopted as minimal@2): ") }
        #expect(adoptedTests.map(\.name) == ["10-greets", "20-service", "30-conffile"].map { "greeterd (adopted as minimal@2): \($0)" })
        #expect(adoptedTests.allSatisfy { $0.status == .passed }, "\(adoptedTests.map(\.detail))")
        let lastStanding = try #require(cell.steps.lastIndex { $0.phase == .regression && !$0.name.hasPrefix("greeterd") })
        #expect(cell.steps.firstIndex { $0.name.hasPrefix("greeterd (adopted") }.map { $0 > lastStanding } == true)
        // greeterd is on the guest after the cell's install: it was installed, not just listed.
        let after = try StableJSON.decode(
            InventorySnapshot.self,
            from: try #require(FileManager.default.contents(atPath: MatrixRun.afterInventoryPath(lab.home, run.id, cell.id))))
        #expect(after.packages.contains { $0.name == "greeterd" && $0.version == greeterd.version })
        // The delta is session-store's alone: greeterd was part of the configuration before.
        let delta = CellAttempt.describe(try #require(cell.delta))
        #expect(delta.contains { $0.hasPrefix("packages session-store") }, "\(delta)")
        #expect(!delta.contains { $0.contains("greeterd") }, "\(delta)")
        // The evidence names the version it tested, and its before is the prepared configuration.
        let store = try CMDBStore.open(cmdb.path)
        let record = try store.read(CellRecord.self, "\(run.id)/minimal.install")
        #expect(record.baseline == adopted.ref)
        #expect(try store.inventory(record.before).packages.contains { $0.name == "greeterd" })

        // An adopted artifact whose own install fails on the guest (bytes dpkg cannot read, in
        // the store under their digest): the standard configuration cannot be reproduced, a
        // product failure of the adopted package that names the fix; session-store never ran.
        let junk = lab.home.root + "/adopted-broken.deb"
        let junkBytes = Data("this is not a Debian archive\n".utf8)
        try junkBytes.write(to: URL(fileURLWithPath: junk))
        var unreadable = greeterd
        unreadable.name = "adopted-broken"
        unreadable.recipe.name = "adopted-broken"
        unreadable.digest = SHA256Digest(of: junkBytes)
        unreadable.size = junkBytes.count
        unreadable.recipeDigest = SHA256Digest(of: "adopted-broken-recipe")
        try ArtifactStore(home: lab.home).add(deb: junk, manifest: unreadable, log: "made by the test\n")
        let writer = try await CMDBWriter(path: cmdb.path, actor: "test")
        try await AdoptionFixture.adopt(
            "adopted-broken", unreadable.version, unreadable.digest, change: "CHG-0002", into: "minimal", with: writer)
        await writer.close()
        let failing = try await MatrixRunner(lab: lab).run(
            package: "session-store", options: Self.options([.install], baselines: ["minimal"], cmdb: cmdb.path))
        let failed = try #require(failing.results["minimal.install"])
        #expect(failed.verdict == .fail && failed.attempts == 1, "\(failed.verdict): \(failed.reason)")
        #expect(failed.reason.contains("minimal@3 cannot be reproduced: fix adopted-broken"), "\(failed.reason)")
        #expect(failed.reason.contains("changelab rollback CHG-0002"), "\(failed.reason)")
        #expect(failed.steps.contains { $0.phase == .prepare && $0.status == .failed })
        #expect(!failed.steps.contains { $0.phase == .install }, "session-store was installed over a broken standard")

        // An adopted artifact that is not in the lab's store: an error that says how to fix it.
        let again = try await CMDBWriter(path: cmdb.path, actor: "test")
        try await AdoptionFixture.adopt(
            "phantom", "1.0", SHA256Digest(of: "phantom-artifact"), change: "CHG-0003", into: "minimal", with: again)
        await again.close()
        let broken = try await MatrixRunner(lab: lab).run(
            package: "session-store", options: Self.options([.install], baselines: ["minimal"], cmdb: cmdb.path))
        let error = try #require(broken.results["minimal.install"])
        #expect(error.verdict == .error && error.attempts == 1)
        #expect(error.reason.contains("minimal@4's adopted artifact"), "\(error.reason)")
        #expect(error.reason.contains("changelab rollback CHG-0003"), "\(error.reason)")
        #expect(error.reason.contains("changelab package build phantom"), "\(error.reason)")
        try? FileManager.default.removeItem(atPath: cmdb.path)
    }
}
