import Foundation
import HostIO
import Libvirt
import Model

/// The project's package recipes (`packages/<name>/package.yaml`).
public struct Packages: Sendable {
    public let project: Project
    /// Bump when packaging changes what it makes, so old artifacts are not reused.
    public static let packagerVersion = "changelab-packager-1"

    public init(project: Project) {
        self.project = project
    }

    public func names() -> [String] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: project.packagesDirectory)) ?? []
        return entries.filter { FileManager.default.fileExists(atPath: project.packageRecipe($0)) }.sorted()
    }

    public func load(_ name: String) throws -> PackageRecipe {
        let path = project.packageRecipe(name)
        guard let data = FileManager.default.contents(atPath: path) else {
            let known = names()
            throw ChangelabError(
                "unknown package '\(name)'", why: "there is no \(project.display(path))",
                fix: known.isEmpty ? "add packages/\(name)/package.yaml" : "use one of: \(known.joined(separator: ", "))")
        }
        return try PackageRecipe.parse(String(decoding: data, as: UTF8.self), file: project.display(path), expectedName: name)
    }

    /// Test executables of the package, sorted.
    public func tests(of recipe: PackageRecipe) -> [String] {
        let directory = "\(project.packageDirectory(recipe.name))/\(recipe.tests)"
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return entries.filter { !$0.hasPrefix(".") }.sorted().map { "\(directory)/\($0)" }
    }

    /// Everything that goes into the .deb: the packager, the recipe, every file of its
    /// sources and maintainer scripts, and the builder image. Tests are not inputs.
    public func recipeDigest(_ recipe: PackageRecipe, builderImage: SHA256Digest) throws -> SHA256Digest {
        let directory = project.packageDirectory(recipe.name)
        var text = "\(Self.packagerVersion)\nbuilder \(builderImage.hex)\n"
        guard let recipeData = FileManager.default.contents(atPath: project.packageRecipe(recipe.name)) else {
            throw ChangelabError("cannot read \(project.display(project.packageRecipe(recipe.name)))")
        }
        text += "recipe \(SHA256Digest(of: recipeData).hex)\n"
        for input in recipe.sources + (recipe.maintainerScripts.map { [$0] } ?? []) {
            let path = "\(directory)/\(input)"
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
                throw ChangelabError(
                    "package '\(recipe.name)' lists '\(input)', but \(project.display(path)) does not exist",
                    fix: "create it or correct packages/\(recipe.name)/package.yaml")
            }
            let files = isDirectory.boolValue
                ? ((try? FileManager.default.subpathsOfDirectory(atPath: path)) ?? []).sorted().map { "\(input)/\($0)" }
                : [input]
            for file in files {
                let full = "\(directory)/\(file)"
                var fileIsDirectory: ObjCBool = false
                guard FileManager.default.fileExists(atPath: full, isDirectory: &fileIsDirectory), !fileIsDirectory.boolValue
                else { continue }
                let data = FileManager.default.contents(atPath: full) ?? Data()
                text += "file \(file) \(FileManager.default.isExecutableFile(atPath: full)) \(SHA256Digest(of: data).hex)\n"
            }
        }
        return SHA256Digest(of: text)
    }
}

/// A package build that failed at one step, with the tail of its log.
public struct PackageBuildError: Error, CustomStringConvertible, Sendable {
    public var package: String
    public var step: String
    public var status: String
    public var logTail: String
    public var logPath: String?

    public var description: String {
        var text = "package build of \(package) failed at step '\(step)' (\(status))"
        if !logTail.isEmpty { text += ":\n" + logTail.split(separator: "\n", omittingEmptySubsequences: false).map { "  | \($0)" }.joined(separator: "\n") }
        if let logPath { text += "\n  full log: \(logPath)" }
        text += "\n  fix: correct the step or the sources in packages/\(package)/ and build again"
        return text
    }
}

/// Builds a package's .deb inside a fresh restore of its builder baseline.
public struct PackageBuilder: Sendable {
    public let lab: Lab
    public let packages: Packages
    public let store: ArtifactStore

    public init(lab: Lab) {
        self.lab = lab
        packages = Packages(project: lab.project)
        store = ArtifactStore(home: lab.home)
    }

    public struct Outcome: Sendable {
        public var manifest: ArtifactManifest
        /// True when unchanged inputs reused an earlier build.
        public var cacheHit: Bool
        public var seconds: Double
    }

    static let buildRoot = "/var/tmp/changelab-build"

    public func build(_ name: String, force: Bool = false) async throws -> Outcome {
        let started = ContinuousClock.now
        let recipe = try packages.load(name)
        let builderRecipe = try lab.baselines.load(recipe.builder)
        var builderImage = try lab.currentImage(of: builderRecipe)
        if builderImage?.status(testsDigest: lab.baselines.testsDigest(of: builderRecipe.name)) != .ready {
            lab.say(name, "building its builder baseline '\(builderRecipe.name)' first")
            builderImage = try await lab.build(builderRecipe).image
        }
        let image = try lab.readyImage(builderRecipe.name)
        let recipeDigest = try packages.recipeDigest(recipe, builderImage: image.imageDigest)
        if !force, let cached = store.lookup(recipeDigest: recipeDigest) {
            // A stored artifact that no longer matches its manifest was changed after its
            // build: say so rather than quietly building another.
            try store.verify(cached)
            lab.say(name, "unchanged inputs: reusing artifact \(cached.digest.short) (cache hit)")
            return Outcome(manifest: cached, cacheHit: true, seconds: started.secondsSince)
        }

        let scratch = lab.home.builds + "/package-\(name)-\(getpid())"
        try? FileManager.default.removeItem(atPath: scratch)
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let tarball = scratch + "/sources.tar"
        let inputs = recipe.sources + (recipe.maintainerScripts.map { [$0] } ?? [])
        try await HostCommand.check(
            "tar", ["-C", lab.project.packageDirectory(name), "--owner=0", "--group=0", "-cf", tarball] + inputs)

        let log = TextLog()
        let debPath = scratch + "/" + recipe.debFileName
        lab.say(name, "building \(recipe.name) \(recipe.version) in a fresh restore of '\(image.name)'")
        try await lab.withRestored(image) { guest in
            let agent = guest.agent
            let work = Self.buildRoot + "/work"
            let stage = Self.buildRoot + "/stage"
            _ = try await agent.capture(["rm", "-rf", Self.buildRoot])
            _ = try await agent.capture(["mkdir", "-p", work, stage + "/DEBIAN"])
            try await agent.upload(file: tarball, to: Self.buildRoot + "/sources.tar")
            try await run(
                PackageRecipe.Step(name: "unpack sources", action: .run("tar -xf ../sources.tar"), timeoutSeconds: 120),
                in: agent, work: work, stage: stage, recipe: recipe, log: log)
            for step in recipe.build {
                try await run(step, in: agent, work: work, stage: stage, recipe: recipe, log: log)
            }
            try await writeControl(recipe, agent: agent, work: work, stage: stage, log: log)
            let pack = PackageRecipe.Step(
                name: "dpkg-deb",
                action: .run("dpkg-deb --root-owner-group -Zgzip --build \"$DESTDIR\" \(Self.buildRoot)/out.deb"),
                timeoutSeconds: 300)
            try await run(pack, in: agent, work: work, stage: stage, recipe: recipe, log: log)
            try await agent.download(Self.buildRoot + "/out.deb", to: debPath)
        }

        guard let deb = FileManager.default.contents(atPath: debPath), !deb.isEmpty else {
            throw ChangelabError("the build of \(name) produced no .deb")
        }
        let info = try await HostCommand.run("dpkg-deb", ["--field", debPath, "Package", "Version"])
        guard info.succeeded, info.stdoutText.contains(recipe.name) else {
            throw ChangelabError("the .deb built for \(name) is not a valid Debian package", why: info.tail())
        }
        let manifest = ArtifactManifest(
            format: ArtifactManifest.formatVersion, name: recipe.name, version: recipe.version,
            architecture: recipe.architecture, digest: SHA256Digest(of: deb), size: deb.count, recipeDigest: recipeDigest,
            builder: .init(baseline: image.name, imageDigest: image.imageDigest), builtAt: Date().wholeSeconds,
            buildSeconds: started.secondsSince, recipe: recipe)
        try store.add(deb: debPath, manifest: manifest, log: log.text)
        lab.say(name, String(format: "built %@ (%d bytes, %@) in %.0f s", recipe.debFileName, deb.count, manifest.digest.short, manifest.buildSeconds))
        return Outcome(manifest: manifest, cacheHit: false, seconds: started.secondsSince)
    }

    /// Runs one build step in the build folder and appends its output to the log.
    private func run(
        _ step: PackageRecipe.Step, in agent: GuestAgent, work: String, stage: String, recipe: PackageRecipe,
        log: TextLog
    ) async throws {
        guard case .run(let script) = step.action else { return }
        log.append("== \(step.name) ==\n")
        let environment = "export DESTDIR='\(stage)' PACKAGE='\(recipe.name)' VERSION='\(recipe.version)'; cd '\(work)'\n"
        let result = try await agent.exec(
            ["/bin/sh", "-c", environment + script], timeout: .seconds(step.timeoutSeconds)
        ) { _, data in log.append(String(decoding: data, as: UTF8.self)) }
        guard result.succeeded else {
            let status = result.timedOut ? "timed out after \(step.timeoutSeconds) s" : "exit \(result.exitCode)"
            log.append("== \(step.name) failed: \(status) ==\n")
            throw PackageBuildError(
                package: recipe.name, step: step.name, status: status, logTail: CommandResult.tail(of: log.text, lines: 20),
                logPath: nil)
        }
    }

    /// DEBIAN/control, conffiles (every file under /etc, as Debian policy wants) and the
    /// maintainer scripts.
    private func writeControl(
        _ recipe: PackageRecipe, agent: GuestAgent, work: String, stage: String, log: TextLog
    ) async throws {
        let size = try await agent.capture(["du", "-sk", "--exclude=DEBIAN", stage])
        let installedSize = size.stdoutText.split(separator: "\t").first.map(String.init) ?? "0"
        var control = """
            Package: \(recipe.name)
            Version: \(recipe.version)
            Architecture: \(recipe.architecture)
            Maintainer: \(recipe.maintainer)
            Installed-Size: \(installedSize)
            Section: misc
            Priority: optional

            """
        if !recipe.depends.isEmpty { control += "Depends: \(recipe.depends.joined(separator: ", "))\n" }
        let summary = recipe.description.isEmpty ? recipe.name : recipe.description
        control += "Description: \(summary.split(separator: "\n").first ?? "")\n Built by changelab from packages/\(recipe.name).\n"
        try await agent.write(Data(control.utf8), to: stage + "/DEBIAN/control", mode: 0o644)
        log.append("== control ==\n\(control)")

        let etc = try await agent.capture(["/bin/sh", "-c", "cd '\(stage)' && find etc -type f 2>/dev/null | sort"])
        let conffiles = etc.stdoutText.split(separator: "\n").map { "/\($0)" }
        if !conffiles.isEmpty {
            try await agent.write(Data((conffiles.joined(separator: "\n") + "\n").utf8), to: stage + "/DEBIAN/conffiles", mode: 0o644)
            log.append("== conffiles ==\n\(conffiles.joined(separator: "\n"))\n")
        }
        if let scripts = recipe.maintainerScripts {
            for script in ["preinst", "postinst", "prerm", "postrm"] {
                let source = "\(work)/\(scripts)/\(script)"
                let copy = try await agent.capture([
                    "/bin/sh", "-c", "[ ! -e '\(source)' ] || install -m 0755 '\(source)' '\(stage)/DEBIAN/\(script)'",
                ])
                guard copy.succeeded else {
                    throw PackageBuildError(
                        package: recipe.name, step: "maintainer scripts", status: "cannot copy \(script)",
                        logTail: copy.stderrText, logPath: nil)
                }
            }
        }
    }
}

/// A log appended to from streamed output (a package build, a matrix cell).
final class TextLog: @unchecked Sendable {
    // @unchecked: guarded by `lock`.
    private let lock = NSLock()
    private var buffer = ""

    func append(_ text: String) {
        lock.lock()
        buffer += text
        lock.unlock()
    }

    var text: String {
        lock.lock()
        defer { lock.unlock() }
        return buffer
    }

    /// Writes the log so far to `path` (atomically).
    func write(to path: String) {
        try? AtomicFile.write(text, to: path)
    }
}
