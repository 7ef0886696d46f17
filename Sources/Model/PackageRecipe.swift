import Foundation

/// A package a release engineer builds and QA tests on every approved baseline:
/// `packages/<name>/package.yaml` plus its sources, maintainer scripts and tests.
public struct PackageRecipe: Sendable, Equatable, Codable {
    /// One step of a build, install or uninstall: a shell script, or a reboot.
    public struct Step: Sendable, Equatable, Codable {
        public enum Action: Sendable, Equatable, Codable {
            /// Run with /bin/sh -c in the guest.
            case run(String)
            /// Reboot the guest and wait for its agent to go away and come back.
            case reboot
        }

        public var name: String
        public var action: Action
        public var timeoutSeconds: Int

        public init(name: String, action: Action, timeoutSeconds: Int) {
            self.name = name
            self.action = action
            self.timeoutSeconds = timeoutSeconds
        }
    }

    /// What must hold in the guest before installing; checked there, each failure named.
    public struct Prerequisites: Sendable, Equatable, Codable {
        /// Debian packages that must be installed.
        public var packages: [String]
        /// Free space on / in MiB.
        public var diskMiB: Int?
        /// Total memory in MiB.
        public var memoryMiB: Int?
        /// `dpkg --print-architecture` must print this.
        public var architecture: String?

        public init(packages: [String] = [], diskMiB: Int? = nil, memoryMiB: Int? = nil, architecture: String? = nil) {
            self.packages = packages
            self.diskMiB = diskMiB
            self.memoryMiB = memoryMiB
            self.architecture = architecture
        }

        public var isEmpty: Bool { packages.isEmpty && diskMiB == nil && memoryMiB == nil && architecture == nil }
    }

    public var name: String
    public var version: String
    public var description: String
    public var maintainer: String
    /// Debian architecture of the .deb: `all` or `amd64`.
    public var architecture: String
    /// Debian `Depends`, which must already be satisfied on every baseline (guests have no network).
    public var depends: [String]
    /// The baseline whose fresh restore the package is built in.
    public var builder: String
    /// Files and folders under `packages/<name>/` copied into the build folder.
    public var sources: [String]
    /// Steps run in the build folder; they install the package's files into `$DESTDIR`.
    public var build: [Step]
    /// Folder under `packages/<name>/` with preinst/postinst/prerm/postrm, if any.
    public var maintainerScripts: String?
    public var prerequisites: Prerequisites
    /// Silent install steps; `$ARTIFACT` is the .deb in the guest.
    public var install: [Step]
    /// Steps that take the package off again (the uninstall lane and rollback).
    public var uninstall: [Step]
    /// Folder under `packages/<name>/` with the package's own test executables.
    public var tests: String
    /// What the install may change; empty means anything goes.
    public var expectedDelta: ExpectedDeltaPolicy
    /// Per-step time-out used when a step names none.
    public var defaultTimeoutSeconds: Int

    public static let defaultBuilder = "builder"
    static let keys = [
        "name", "version", "description", "maintainer", "architecture", "depends", "builder", "sources", "build",
        "maintainer-scripts", "prerequisites", "install", "uninstall", "tests", "expected-delta", "timeout",
    ]

    public init(name: String, version: String) {
        self.name = name
        self.version = version
        description = ""
        maintainer = "changelab <changelab@localhost>"
        architecture = "all"
        depends = []
        builder = Self.defaultBuilder
        sources = ["src"]
        build = []
        maintainerScripts = nil
        prerequisites = Prerequisites()
        install = [Step(name: "install", action: .run("dpkg -i \"$ARTIFACT\""), timeoutSeconds: 300)]
        uninstall = [Step(name: "purge", action: .run("dpkg --purge \"$PACKAGE\""), timeoutSeconds: 300)]
        tests = "tests"
        expectedDelta = ExpectedDeltaPolicy()
        defaultTimeoutSeconds = 300
    }

    /// `name_version_arch.deb`, as Debian names package files.
    public var debFileName: String {
        let plainVersion = version.split(separator: ":").last.map(String.init) ?? version
        return "\(name)_\(plainVersion)_\(architecture).deb"
    }

    /// Parses and validates a recipe, reporting every problem with its line and column.
    public static func parse(_ text: String, file: String, expectedName: String? = nil) throws -> PackageRecipe {
        let reader = SpecReader(file: file, text: text)
        guard let root = reader.rootMapping(keys: keys) else {
            try reader.finish()
            throw SpecValidationError(problems: [SpecProblem(file: file, line: 1, column: 1, message: "empty recipe")])
        }
        let name = root.required("name", String.self) ?? ""
        if !name.isEmpty && !DebianNames.isValidPackageName(name) || name.contains(":") {
            reader.report(at: root.value("name"), "'\(name)' is not a valid Debian package name")
        }
        if let expectedName, !name.isEmpty, name != expectedName {
            reader.report(
                at: root.value("name"), "'name' is '\(name)' but the folder is packages/\(expectedName); make them match")
        }
        let version = root.required("version", String.self) ?? "0"
        if root.has("version") {
            do {
                _ = try DebianVersion(version)
            } catch {
                reader.report(at: root.value("version"), "\(error)")
            }
        }
        var recipe = PackageRecipe(name: name, version: version)
        recipe.description = root.optional("description", default: "")
        recipe.maintainer = root.optional("maintainer", default: recipe.maintainer)
        recipe.architecture = root.optional("architecture", default: recipe.architecture)
        if !["all", "amd64"].contains(recipe.architecture) {
            reader.report(at: root.value("architecture"), "'architecture' must be all or amd64, not '\(recipe.architecture)'")
        }
        recipe.depends = root.list("depends", of: String.self)
        recipe.builder = root.optional("builder", default: recipe.builder)
        if !BaselineRecipe.isValidName(recipe.builder) {
            reader.report(at: root.value("builder"), "'builder' must name a baseline, not '\(recipe.builder)'")
        }
        if root.has("sources") { recipe.sources = root.list("sources", of: String.self) }
        for source in recipe.sources where source.hasPrefix("/") || source.split(separator: "/").contains("..") {
            reader.report(at: root.value("sources"), "source '\(source)' must be a path inside packages/\(name)/")
        }
        recipe.defaultTimeoutSeconds = root.optional("timeout", default: recipe.defaultTimeoutSeconds)
        if !(1...PackageRecipe.maximumTimeoutSeconds).contains(recipe.defaultTimeoutSeconds) {
            reader.report(at: root.value("timeout"), "'timeout' must be a positive number of seconds, at most 604800 (a week)")
        }
        recipe.build = steps(root, "build", default: recipe.defaultTimeoutSeconds, rebootAllowed: false)
        if root.has("install") {
            recipe.install = steps(root, "install", default: recipe.defaultTimeoutSeconds, rebootAllowed: true)
            if recipe.install.isEmpty { reader.report(at: root.value("install"), "'install' needs at least one step") }
        }
        if root.has("uninstall") {
            recipe.uninstall = steps(root, "uninstall", default: recipe.defaultTimeoutSeconds, rebootAllowed: true)
        }
        recipe.maintainerScripts = root.optional("maintainer-scripts", String.self)
        recipe.tests = root.optional("tests", default: recipe.tests)

        if let prerequisites = root.mapping("prerequisites", keys: ["packages", "disk", "memory", "architecture"]) {
            recipe.prerequisites.packages = prerequisites.list("packages", of: String.self)
            recipe.prerequisites.diskMiB = prerequisites.optional("disk", Int.self)
            recipe.prerequisites.memoryMiB = prerequisites.optional("memory", Int.self)
            recipe.prerequisites.architecture = prerequisites.optional("architecture", String.self)
            for package in recipe.prerequisites.packages where !DebianNames.isValidPackageName(package) {
                reader.report(at: prerequisites.value("packages"), "'\(package)' is not a valid Debian package name")
            }
            for key in ["disk", "memory"] {
                if let value = prerequisites.optional(key, Int.self), value < 0 {
                    reader.report(at: prerequisites.value(key), "'\(key)' is in MiB and cannot be negative")
                }
            }
        }
        if let policy = root.mapping(
            "expected-delta", keys: ["paths", "packages", "units", "users", "groups", "ports"])
        {
            recipe.expectedDelta = ExpectedDeltaPolicy(
                paths: policy.list("paths", of: String.self), packages: policy.list("packages", of: String.self),
                units: policy.list("units", of: String.self), users: policy.list("users", of: String.self),
                groups: policy.list("groups", of: String.self), ports: policy.list("ports", of: String.self))
        }
        try reader.finish()
        return recipe
    }

    /// A week: longer is a typo, and callers convert timeouts to narrower types.
    static let maximumTimeoutSeconds = 604_800

    private static func steps(_ root: SpecMapping, _ key: String, default timeout: Int, rebootAllowed: Bool) -> [Step] {
        var result: [Step] = []
        for (index, entry) in root.mappings(key, keys: ["name", "run", "reboot", "timeout"]).enumerated() {
            let stepTimeout = entry.optional("timeout", default: timeout)
            if !(1...PackageRecipe.maximumTimeoutSeconds).contains(stepTimeout) {
                entry.reader.report(at: entry.value("timeout"), "'timeout' must be a positive number of seconds, at most 604800 (a week)")
            }
            let script = entry.optional("run", String.self)
            let reboot = entry.optional("reboot", default: false)
            let name = entry.optional("name", default: reboot ? "reboot" : "\(key) step \(index + 1)")
            switch (script, reboot) {
            case (let script?, false):
                result.append(Step(name: name, action: .run(script), timeoutSeconds: stepTimeout))
            case (nil, true) where rebootAllowed:
                result.append(Step(name: name, action: .reboot, timeoutSeconds: stepTimeout))
            case (nil, true):
                entry.reader.report(at: entry.node, "a \(key) step cannot reboot (only install and uninstall steps can)")
            case (.some, true):
                entry.reader.report(at: entry.node, "a step either runs a script or reboots, not both")
            case (nil, false):
                entry.reader.report(at: entry.node, "a step needs 'run: <shell script>' or 'reboot: true'")
            }
        }
        return result
    }
}
