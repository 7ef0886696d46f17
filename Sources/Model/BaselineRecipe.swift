import Foundation

/// An approved (or draft) baseline configuration: what a standard machine of one kind is.
///
/// Written as `baselines/<name>.yaml`; its standing regression suite (the "current
/// applications" every change must not break) lives in `baselines/<name>/tests/`, and
/// files it lays down from disk in `baselines/<name>/files/`.
public struct BaselineRecipe: Sendable, Equatable, Codable {
    /// Debian release and debootstrap variant the image starts from.
    public struct Base: Sendable, Equatable, Codable {
        public var suite: String
        public var variant: String
        public var mirror: String

        public init(suite: String = "bookworm", variant: String = "minbase", mirror: String = Base.defaultMirror) {
            self.suite = suite
            self.variant = variant
            self.mirror = mirror
        }

        public static let defaultMirror = "http://deb.debian.org/debian"
    }

    /// A file the image must contain: inline `content` or a `source` under files/.
    public struct File: Sendable, Equatable, Codable {
        public enum Body: Sendable, Equatable, Codable {
            case content(String)
            /// Path relative to `baselines/<name>/`.
            case source(String)
        }

        public var path: String
        public var body: Body
        public var mode: Int
        public var owner: String

        public init(path: String, body: Body, mode: Int = 0o644, owner: String = "root:root") {
            self.path = path
            self.body = body
            self.mode = mode
            self.owner = owner
        }
    }

    public struct Resources: Sendable, Equatable, Codable {
        public var memoryMiB: Int
        public var vcpus: Int
        public var diskMiB: Int

        public init(memoryMiB: Int = 512, vcpus: Int = 1, diskMiB: Int = 2048) {
            self.memoryMiB = memoryMiB
            self.vcpus = vcpus
            self.diskMiB = diskMiB
        }
    }

    public var name: String
    public var description: String
    public var approved: Bool
    public var base: Base
    public var packages: [String]
    public var files: [File]
    public var enableServices: [String]
    public var disableServices: [String]
    public var resources: Resources
    /// Paths whose files the inventory records (hash, mode, owner) for deltas.
    public var watch: [String]

    public init(
        name: String, description: String = "", approved: Bool = false, base: Base = Base(), packages: [String] = [],
        files: [File] = [], enableServices: [String] = [], disableServices: [String] = [],
        resources: Resources = Resources(), watch: [String] = BaselineRecipe.defaultWatch
    ) {
        self.name = name
        self.description = description
        self.approved = approved
        self.base = base
        self.packages = packages
        self.files = files
        self.enableServices = enableServices
        self.disableServices = disableServices
        self.resources = resources
        self.watch = watch
    }

    public static let defaultWatch = ["/etc", "/usr/local", "/opt", "/srv", "/var/www"]
    public static let supportedSuites = ["bookworm"]
    public static let supportedVariants = ["minbase"]
    static let keys = [
        "name", "description", "approved", "base", "packages", "files", "services", "resources", "watch",
    ]

    /// Names are used in file names, domain names and CMDB keys.
    public static func isValidName(_ name: String) -> Bool {
        guard let first = name.unicodeScalars.first, name.count <= 40 else { return false }
        let allowed = CharacterSet(charactersIn: "abcdefghijklmnopqrstuvwxyz0123456789-")
        return CharacterSet.lowercaseLetters.contains(first)
            && name.unicodeScalars.allSatisfy { allowed.contains($0) }
    }

    /// Parses and validates a recipe, reporting every problem with its line and column.
    ///
    /// - Parameters:
    ///   - text: the YAML.
    ///   - file: the path shown in problems.
    ///   - expectedName: the name the file name implies (`web` for `web.yaml`), if any.
    public static func parse(_ text: String, file: String, expectedName: String? = nil) throws -> BaselineRecipe {
        let reader = SpecReader(file: file, text: text)
        guard let root = reader.rootMapping(keys: keys) else {
            try reader.finish()
            throw SpecValidationError(problems: [SpecProblem(file: file, line: 1, column: 1, message: "empty recipe")])
        }
        return try parse(root: root, reader: reader, expectedName: expectedName)
    }

    /// Parses an already-opened recipe (used when several files are validated together).
    public static func parse(root: SpecMapping, reader: SpecReader, expectedName: String?) throws -> BaselineRecipe {
        let name = root.required("name", String.self) ?? ""
        if !name.isEmpty && !isValidName(name) {
            reader.report(
                at: root.value("name"),
                "'name' must start with a lowercase letter and use only a-z, 0-9 and '-' (at most 40), not '\(name)'")
        }
        if let expectedName, !name.isEmpty, name != expectedName {
            reader.report(at: root.value("name"), "'name' is '\(name)' but the file is \(expectedName).yaml; make them match")
        }
        var recipe = BaselineRecipe(name: name)
        recipe.description = root.optional("description", default: "")
        recipe.approved = root.optional("approved", default: false)

        if let base = root.mapping("base", keys: ["suite", "variant", "mirror"]) {
            recipe.base.suite = base.optional("suite", default: recipe.base.suite)
            recipe.base.variant = base.optional("variant", default: recipe.base.variant)
            recipe.base.mirror = base.optional("mirror", default: recipe.base.mirror)
            if !supportedSuites.contains(recipe.base.suite) {
                reader.report(
                    at: base.value("suite"),
                    "suite '\(recipe.base.suite)' is not supported (supported: \(supportedSuites.joined(separator: ", ")))")
            }
            if !supportedVariants.contains(recipe.base.variant) {
                reader.report(
                    at: base.value("variant"),
                    "variant '\(recipe.base.variant)' is not supported (supported: \(supportedVariants.joined(separator: ", ")))"
                )
            }
            if !(recipe.base.mirror.hasPrefix("http://") || recipe.base.mirror.hasPrefix("https://")
                || recipe.base.mirror.hasPrefix("file:/"))
            {
                reader.report(at: base.value("mirror"), "'mirror' must be an http://, https:// or file:/ URL")
            }
        }

        recipe.packages = root.list("packages", of: String.self)
        if let node = root.value("packages"), case .sequence(let sequence) = node {
            for (item, package) in zip(sequence, recipe.packages) where !DebianNames.isValidPackageName(package) {
                reader.report(at: item, "'\(package)' is not a valid Debian package name")
            }
        }

        for entry in root.mappings("files", keys: ["path", "content", "source", "mode", "owner"]) {
            guard let path = entry.required("path", String.self) else { continue }
            if !path.hasPrefix("/") || path.split(separator: "/").contains("..") {
                reader.report(at: entry.value("path"), "file path '\(path)' must be absolute and must not contain '..'")
            }
            let content = entry.optional("content", String.self)
            let source = entry.optional("source", String.self)
            let body: File.Body
            switch (content, source) {
            case (let content?, nil): body = .content(content)
            case (nil, let source?):
                if source.hasPrefix("/") || source.split(separator: "/").contains("..") {
                    reader.report(
                        at: entry.value("source"), "'source' must be a path inside baselines/\(name)/, not '\(source)'")
                }
                body = .source(source)
            case (.some, .some):
                reader.report(at: entry.node, "a file has either 'content' or 'source', not both")
                continue
            case (nil, nil):
                reader.report(at: entry.node, "file \(path) needs 'content' (inline text) or 'source' (a file)")
                continue
            }
            var mode = 0o644
            if let text = entry.optional("mode", String.self) {
                if let parsed = Int(text, radix: 8), parsed >= 0, parsed <= 0o7777 {
                    mode = parsed
                } else {
                    reader.report(at: entry.value("mode"), "'mode' must be octal like \"0644\", not '\(text)'")
                }
            }
            let owner = entry.optional("owner", default: "root:root")
            if owner.split(separator: ":").count != 2 {
                reader.report(at: entry.value("owner"), "'owner' must be user:group, not '\(owner)'")
            }
            recipe.files.append(File(path: path, body: body, mode: mode, owner: owner))
        }

        if let services = root.mapping("services", keys: ["enable", "disable"]) {
            recipe.enableServices = services.list("enable", of: String.self)
            recipe.disableServices = services.list("disable", of: String.self)
            for service in recipe.enableServices + recipe.disableServices where !DebianNames.isValidUnitName(service) {
                reader.report(at: services.node, "'\(service)' is not a valid systemd unit name")
            }
            let both = Set(recipe.enableServices).intersection(recipe.disableServices)
            if !both.isEmpty {
                reader.report(at: services.node, "services both enabled and disabled: \(both.sorted().joined(separator: ", "))")
            }
        }

        if let resources = root.mapping("resources", keys: ["memory", "vcpus", "disk"]) {
            recipe.resources.memoryMiB = resources.optional("memory", default: recipe.resources.memoryMiB)
            recipe.resources.vcpus = resources.optional("vcpus", default: recipe.resources.vcpus)
            recipe.resources.diskMiB = resources.optional("disk", default: recipe.resources.diskMiB)
            if !(256...65536).contains(recipe.resources.memoryMiB) {
                reader.report(at: resources.value("memory"), "'memory' is in MiB and must be 256 to 65536")
            }
            if !(1...16).contains(recipe.resources.vcpus) {
                reader.report(at: resources.value("vcpus"), "'vcpus' must be 1 to 16")
            }
            if !(1024...262144).contains(recipe.resources.diskMiB) {
                reader.report(at: resources.value("disk"), "'disk' is in MiB and must be 1024 to 262144")
            }
        }

        if root.has("watch") {
            recipe.watch = root.list("watch", of: String.self)
            for path in recipe.watch where !path.hasPrefix("/") {
                reader.report(at: root.value("watch"), "watched path '\(path)' must be absolute")
            }
        }
        try reader.finish()
        return recipe
    }
}

/// Debian's naming rules, shared by recipes of every kind.
public enum DebianNames {
    /// Debian policy 5.6.1: lowercase letters, digits, + - . ; at least two characters;
    /// starting with an alphanumeric. An optional `:arch` qualifier is allowed.
    public static func isValidPackageName(_ name: String) -> Bool {
        let parts = name.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count <= 2, let package = parts.first, package.count >= 2 else { return false }
        if parts.count == 2, parts[1].isEmpty || !parts[1].allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" }) {
            return false
        }
        guard let first = package.first, first.isLowercase || first.isNumber else { return false }
        return package.allSatisfy { ($0.isLowercase && $0.isASCII) || $0.isNumber || "+-.".contains($0) }
    }

    /// A systemd unit name, with or without its type suffix (`nginx` or `nginx.service`).
    public static func isValidUnitName(_ name: String) -> Bool {
        !name.isEmpty && name.count <= 255
            && name.allSatisfy { ($0.isLetter && $0.isASCII) || $0.isNumber || ":-_.\\@".contains($0) }
    }
}
