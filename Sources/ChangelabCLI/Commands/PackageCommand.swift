import ArgumentParser
import Foundation
import Lab
import Model

struct PackageCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "package",
        abstract: "Build packages (packages/*/package.yaml) into content-addressed .deb artifacts.",
        subcommands: [Build.self, List.self, Release.self]
    )

    struct Build: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Build a package's .deb inside a fresh restore of its builder baseline.",
            discussion: """
                The artifact is stored by its SHA-256 with a manifest (name, version, digest, recipe \
                digest, builder baseline image digest) and the build log. Unchanged inputs are a cache \
                hit; --force builds again.
                """)
        @OptionGroup var projectOptions: ProjectOptions
        @OptionGroup var output: OutputOptions
        @Argument(help: "The package (a folder under packages/).")
        var name: String
        @Flag(help: "Build even when nothing changed.")
        var force = false

        struct Report: Codable {
            var name: String
            var version: String
            var digest: String
            var size: Int
            var cacheHit: Bool
            var recipeDigest: String
            var builder: String
            var builderImageDigest: String
            var seconds: Double
            var path: String
            var log: String
        }

        func run() async throws {
            let lab = try Lab(project: try projectOptions.project(), progress: ConsoleProgress.handler())
            let builder = PackageBuilder(lab: lab)
            let outcome = try await builder.build(name, force: force)
            let manifest = outcome.manifest
            let report = Report(
                name: manifest.name, version: manifest.version, digest: manifest.digest.description, size: manifest.size,
                cacheHit: outcome.cacheHit, recipeDigest: manifest.recipeDigest.description,
                builder: manifest.builder.baseline, builderImageDigest: manifest.builder.imageDigest.description,
                seconds: outcome.seconds, path: builder.store.debPath(manifest.digest),
                log: builder.store.logPath(manifest.digest))
            if output.json { return try printJSON(report) }
            print("\(report.name) \(report.version)  \(manifest.digest)  \(report.size) bytes  \(outcome.cacheHit ? "cache hit" : String(format: "built in %.0f s", outcome.seconds))")
            print("  \(report.path)")
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List package recipes and their built artifacts.")
        @OptionGroup var projectOptions: ProjectOptions
        @OptionGroup var output: OutputOptions

        struct Row: Codable {
            var name: String
            var recipeVersion: String?
            var problem: String?
            var artifacts: [Artifact]
        }
        struct Artifact: Codable {
            var version: String
            var digest: String
            var builtAt: Date
            var released: Bool
        }

        func run() async throws {
            let lab = try Lab(project: try projectOptions.project())
            let packages = Packages(project: lab.project)
            let store = ArtifactStore(home: lab.home)
            let artifacts = store.all()
            var rows: [Row] = []
            for name in packages.names() {
                let released = Set(store.releases(of: name).map(\.digest))
                let built = artifacts.filter { $0.name == name }.map {
                    Artifact(version: $0.version, digest: $0.digest.description, builtAt: $0.builtAt, released: released.contains($0.digest))
                }
                do {
                    rows.append(Row(name: name, recipeVersion: try packages.load(name).version, problem: nil, artifacts: built))
                } catch {
                    rows.append(Row(name: name, recipeVersion: nil, problem: "\(error)", artifacts: built))
                }
            }
            if output.json { return try printJSON(rows) }
            var table = Table("PACKAGE", "RECIPE", "ARTIFACT", "VERSION", "BUILT", "RELEASED")
            for row in rows {
                if row.artifacts.isEmpty {
                    table.add(row.name, row.recipeVersion ?? "invalid", "-", "-", "-", "-")
                }
                for (index, artifact) in row.artifacts.enumerated() {
                    table.add(
                        index == 0 ? row.name : "", index == 0 ? (row.recipeVersion ?? "invalid") : "",
                        SHA256Digest(hex: artifact.digest)?.short ?? "?", artifact.version, age(since: artifact.builtAt),
                        artifact.released ? "yes" : "")
                }
            }
            table.print()
        }
    }

    struct Release: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Mark an artifact released (the upgrade lane upgrades from the newest older release).",
            discussion: "ARTIFACT is NAME (its newest build), NAME@VERSION, or a digest (8+ hex digits).")
        @OptionGroup var projectOptions: ProjectOptions
        @Argument(help: "The artifact to mark released.")
        var artifact: String

        func run() async throws {
            let lab = try Lab(project: try projectOptions.project())
            let store = ArtifactStore(home: lab.home)
            let manifest = try store.resolve(artifact)
            try store.markReleased(manifest)
            print("released \(manifest.name) \(manifest.version) (\(manifest.digest.short))")
        }
    }
}
