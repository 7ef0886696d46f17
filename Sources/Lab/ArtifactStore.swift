import Foundation
import HostIO
import Model

/// What `changelab package build` produced: a .deb named by its SHA-256, and how it was made.
public struct ArtifactManifest: Codable, Sendable, Equatable {
    public static let formatVersion = 1

    public struct Builder: Codable, Sendable, Equatable {
        public var baseline: String
        public var imageDigest: SHA256Digest
    }

    public var format: Int
    public var name: String
    public var version: String
    public var architecture: String
    public var digest: SHA256Digest
    public var size: Int
    public var recipeDigest: SHA256Digest
    public var builder: Builder
    public var builtAt: Date
    public var buildSeconds: Double
    /// The recipe it was built from: an old release installs with its own steps.
    public var recipe: PackageRecipe

    public var debFileName: String { recipe.debFileName }
}

/// Release artifacts on disk, content-addressed: `$CHANGELAB_HOME/artifacts/sha256/<digest>/`
/// holds `package.deb`, `manifest.json` and `build.log`. Unchanged inputs map to the same
/// artifact (`by-recipe/`), and released versions are listed per package (`releases/`).
public struct ArtifactStore: Sendable {
    public let root: String

    public init(home: LabHome) {
        root = home.root + "/artifacts"
    }

    func directory(_ digest: SHA256Digest) -> String { "\(root)/sha256/\(digest.hex)" }
    public func debPath(_ digest: SHA256Digest) -> String { directory(digest) + "/package.deb" }
    public func logPath(_ digest: SHA256Digest) -> String { directory(digest) + "/build.log" }
    private func recipeIndex(_ recipeDigest: SHA256Digest) -> String { "\(root)/by-recipe/\(recipeDigest.hex)" }
    private func releasesFile(_ name: String) -> String { "\(root)/releases/\(name).json" }

    /// The artifact built from exactly these inputs before, if it is still intact.
    public func lookup(recipeDigest: SHA256Digest) -> ArtifactManifest? {
        guard let text = try? String(contentsOfFile: recipeIndex(recipeDigest), encoding: .utf8),
            let digest = SHA256Digest(hex: text.trimmingCharacters(in: .whitespacesAndNewlines))
        else { return nil }
        return try? manifest(digest, verify: false)
    }

    /// The manifest of `digest`; with `verify`, the .deb is hashed and must match it.
    public func manifest(_ digest: SHA256Digest, verify: Bool = true) throws -> ArtifactManifest {
        let path = directory(digest) + "/manifest.json"
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ChangelabError(
                "there is no artifact \(digest.short)", fix: "build it: changelab package build NAME (see: changelab package list)")
        }
        let manifest = try StableJSON.decode(ArtifactManifest.self, from: data)
        guard manifest.format <= ArtifactManifest.formatVersion else {
            throw ChangelabError(
                "artifact \(digest.short) was written by a newer changelab (format \(manifest.format))",
                fix: "upgrade changelab")
        }
        if verify { try self.verify(manifest) }
        return manifest
    }

    /// Hashes the .deb: a corrupted or swapped artifact must never be tested or shipped.
    public func verify(_ manifest: ArtifactManifest) throws {
        let path = debPath(manifest.digest)
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ChangelabError(
                "artifact \(manifest.name) \(manifest.version) (\(manifest.digest.short)) has no package file at \(path)",
                fix: "rebuild it: changelab package build \(manifest.name) --force")
        }
        let actual = SHA256Digest(of: data)
        guard actual == manifest.digest else {
            throw ChangelabError(
                "artifact \(manifest.name) \(manifest.version) does not match its manifest",
                why: "\(path) has digest \(actual.short), the manifest says \(manifest.digest.short): it was changed after the build",
                fix: "rebuild it: changelab package build \(manifest.name) --force")
        }
    }

    /// Stores a built .deb with its manifest and log (atomically: a half-stored artifact is
    /// never visible) and indexes it by its inputs.
    public func add(deb: String, manifest: ArtifactManifest, log: String) throws {
        let target = directory(manifest.digest)
        let staging = "\(root)/sha256/.incoming-\(getpid())-\(manifest.digest.short)"
        try? FileManager.default.removeItem(atPath: staging)
        try FileManager.default.createDirectory(atPath: staging, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: deb, toPath: staging + "/package.deb")
        try AtomicFile.write(log, to: staging + "/build.log")
        try AtomicFile.write(try StableJSON.data(manifest), to: staging + "/manifest.json")
        if FileManager.default.fileExists(atPath: target) {
            // The same bytes again (a forced rebuild): keep the first copy, refresh its record.
            try? FileManager.default.removeItem(atPath: staging)
            try AtomicFile.write(try StableJSON.data(manifest), to: target + "/manifest.json")
            try AtomicFile.write(log, to: target + "/build.log")
        } else {
            try FileManager.default.moveItem(atPath: staging, toPath: target)
        }
        try AtomicFile.write(manifest.digest.hex + "\n", to: recipeIndex(manifest.recipeDigest))
    }

    /// Every stored artifact, newest build first.
    public func all() -> [ArtifactManifest] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: root + "/sha256")) ?? []
        return entries.compactMap { SHA256Digest(hex: $0) }.compactMap { try? manifest($0, verify: false) }
            .sorted { $0.builtAt > $1.builtAt }
    }

    /// Finds an artifact by digest (or a unique prefix of at least 8 digits), `NAME@VERSION`
    /// or `NAME` (its newest build).
    public func resolve(_ spec: String) throws -> ArtifactManifest {
        let all = all()
        let hex = spec.hasPrefix("sha256:") ? String(spec.dropFirst(7)) : spec
        if hex.count >= 8, hex.allSatisfy(\.isHexDigit) {
            let matches = all.filter { $0.digest.hex.hasPrefix(hex.lowercased()) }
            if matches.count == 1, let only = matches.first { return try manifest(only.digest) }
            if matches.count > 1 { throw ChangelabError("'\(spec)' matches \(matches.count) artifacts", fix: "give more digits") }
        }
        let parts = spec.split(separator: "@", maxSplits: 1).map(String.init)
        let candidates = all.filter { $0.name == parts[0] && (parts.count == 1 || $0.version == parts[1]) }
        guard let newest = candidates.first else {
            throw ChangelabError(
                "no artifact '\(spec)' has been built", fix: "build it first: changelab package build \(parts[0])")
        }
        return try manifest(newest.digest)
    }

    // MARK: Releases

    public struct Release: Codable, Sendable, Equatable {
        public var version: String
        public var digest: SHA256Digest
        public var releasedAt: Date
    }

    /// Marks an artifact as released: the upgrade lane installs the newest release older
    /// than the version under test first. (The CCB's release approval does this.)
    public func markReleased(_ manifest: ArtifactManifest, at date: Date = Date()) throws {
        var list = releases(of: manifest.name).filter { $0.version != manifest.version }
        list.append(Release(version: manifest.version, digest: manifest.digest, releasedAt: date))
        list.sort { Self.versionLess($0.version, $1.version) }
        try AtomicFile.write(try StableJSON.data(list), to: releasesFile(manifest.name))
    }

    public func releases(of name: String) -> [Release] {
        guard let data = FileManager.default.contents(atPath: releasesFile(name)) else { return [] }
        return (try? StableJSON.decode([Release].self, from: data)) ?? []
    }

    /// The newest released version older than `version` (dpkg's ordering), if any.
    public func previousRelease(of name: String, before version: String) throws -> ArtifactManifest? {
        guard let release = releases(of: name).filter({ Self.versionLess($0.version, version) }).last else { return nil }
        return try manifest(release.digest)
    }

    static func versionLess(_ a: String, _ b: String) -> Bool {
        guard let left = try? DebianVersion(lenient: a), let right = try? DebianVersion(lenient: b) else { return a < b }
        return left < right
    }
}
