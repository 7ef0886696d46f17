import Foundation
@testable import Lab
import Model
import Testing

@Suite struct ArtifactStoreTests {
    let home = LabHome(root: NSTemporaryDirectory() + "changelab-artifacts-\(UUID().uuidString)")

    func add(_ store: ArtifactStore, name: String, version: String, bytes: String) throws -> ArtifactManifest {
        let deb = home.root + "/\(name)-\(version).deb"
        try FileManager.default.createDirectory(atPath: home.root, withIntermediateDirectories: true)
        try Data(bytes.utf8).write(to: URL(fileURLWithPath: deb))
        let manifest = ArtifactManifest(
            format: 1, name: name, version: version, architecture: "all", digest: SHA256Digest(of: bytes),
            size: bytes.utf8.count, recipeDigest: SHA256Digest(of: "recipe \(name) \(version)"),
            builder: .init(baseline: "builder", imageDigest: SHA256Digest(of: "builder")), builtAt: Date().wholeSeconds,
            buildSeconds: 1, recipe: PackageRecipe(name: name, version: version))
        try store.add(deb: deb, manifest: manifest, log: "log of \(name) \(version)")
        return manifest
    }

    @Test func storesByDigestAndFindsItByItsInputs() throws {
        let store = ArtifactStore(home: home)
        let manifest = try add(store, name: "tool", version: "1.0", bytes: "deb one")
        #expect(store.lookup(recipeDigest: manifest.recipeDigest) == manifest)
        #expect(try store.manifest(manifest.digest) == manifest)
        #expect(try String(contentsOfFile: store.logPath(manifest.digest), encoding: .utf8) == "log of tool 1.0")
        #expect(try store.resolve("tool") == manifest)
        #expect(try store.resolve("tool@1.0") == manifest)
        #expect(try store.resolve(String(manifest.digest.hex.prefix(10))) == manifest)
        #expect(throws: ChangelabError.self) { try store.resolve("tool@9.9") }
    }

    @Test func anArtifactChangedAfterItsBuildIsRefusedByName() throws {
        let store = ArtifactStore(home: home)
        let manifest = try add(store, name: "tool", version: "1.0", bytes: "original bytes")
        try Data("tampered bytes".utf8).write(to: URL(fileURLWithPath: store.debPath(manifest.digest)))
        do {
            try store.verify(manifest)
            Issue.record("a changed artifact must not verify")
        } catch let error as ChangelabError {
            #expect(error.what == "artifact tool 1.0 does not match its manifest")
            #expect(error.fix?.contains("--force") == true)
        }
        #expect(throws: ChangelabError.self) { try store.manifest(manifest.digest) }
    }

    @Test func theUpgradeLaneStartsFromTheNewestOlderReleaseInDpkgOrder() throws {
        let store = ArtifactStore(home: home)
        let v19 = try add(store, name: "tool", version: "1.9", bytes: "1.9")
        let v110 = try add(store, name: "tool", version: "1.10", bytes: "1.10")
        let tilde = try add(store, name: "tool", version: "2.0~rc1", bytes: "rc")
        for manifest in [v110, v19, tilde] { try store.markReleased(manifest) }
        // As text "1.9" > "1.10"; dpkg says 1.10 is newer, and 2.0~rc1 sorts before 2.0.
        #expect(store.releases(of: "tool").map(\.version) == ["1.9", "1.10", "2.0~rc1"])
        #expect(try store.previousRelease(of: "tool", before: "2.0")?.version == "2.0~rc1")
        #expect(try store.previousRelease(of: "tool", before: "2.0~rc1")?.version == "1.10")
        #expect(try store.previousRelease(of: "tool", before: "1.9") == nil)
    }
}
