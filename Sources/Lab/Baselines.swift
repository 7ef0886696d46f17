import Foundation
import HostIO
import Model

/// The project's baseline recipes and the digests that key their images.
public struct Baselines: Sendable {
    public let project: Project
    /// Bump when the image builder changes what it makes, so old images are rebuilt.
    public static let builderVersion = "changelab-image-builder-1"

    public init(project: Project) {
        self.project = project
    }

    /// Names of the recipes in baselines/ (`*.yaml`), sorted.
    public func names() throws -> [String] {
        let directory = project.baselinesDirectory
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: directory) else {
            throw ChangelabError(
                "there is no baselines/ folder in \(project.root)",
                fix: "run changelab in a project folder, or pass --root DIR")
        }
        return entries.filter { $0.hasSuffix(".yaml") }.map { String($0.dropLast(5)) }.sorted()
    }

    /// Every recipe, validated; problems of all files are reported together.
    public func loadAll() throws -> [BaselineRecipe] {
        var recipes: [BaselineRecipe] = []
        var problems: [SpecProblem] = []
        for name in try names() {
            do {
                recipes.append(try load(name))
            } catch let error as SpecValidationError {
                problems += error.problems
            }
        }
        if !problems.isEmpty { throw SpecValidationError(problems: problems) }
        return recipes
    }

    /// One recipe by name.
    public func load(_ name: String) throws -> BaselineRecipe {
        let path = project.baselineRecipe(name)
        guard let data = FileManager.default.contents(atPath: path) else {
            let known = (try? names()) ?? []
            throw ChangelabError(
                "unknown baseline '\(name)'",
                why: "there is no \(project.display(path))",
                fix: known.isEmpty ? "add baselines/\(name).yaml" : "use one of: \(known.joined(separator: ", "))")
        }
        return try BaselineRecipe.parse(
            String(decoding: data, as: UTF8.self), file: project.display(path), expectedName: name)
    }

    /// The recipes named, or every approved one when none is named.
    public func select(_ requested: [String]) throws -> [BaselineRecipe] {
        if requested.isEmpty { return try loadAll().filter(\.approved) }
        return try requested.map { try load($0) }
    }

    /// The digest of everything that goes into the image: the builder, and of the recipe
    /// only what shapes the image (base, packages, files with their contents, services,
    /// resources, the name as hostname). Description, approval and watched paths are left
    /// out: approving a draft or watching another folder must not rebuild its image.
    public func recipeDigest(_ recipe: BaselineRecipe) throws -> SHA256Digest {
        struct ImageInputs: Encodable {
            var builder: String
            var name: String
            var base: BaselineRecipe.Base
            var packages: [String]
            var files: [FileInput]
            var enable: [String]
            var disable: [String]
            var resources: BaselineRecipe.Resources
        }
        struct FileInput: Encodable {
            var path: String
            var mode: Int
            var owner: String
            var content: SHA256Digest
        }
        var files: [FileInput] = []
        for file in recipe.files {
            let content: SHA256Digest
            switch file.body {
            case .content(let text): content = SHA256Digest(of: text)
            case .source(let relative):
                let path = "\(project.baselinesDirectory)/\(recipe.name)/\(relative)"
                guard let data = FileManager.default.contents(atPath: path) else {
                    throw ChangelabError(
                        "baseline '\(recipe.name)' lays down \(file.path) from \(project.display(path)), which cannot be read",
                        fix: "create the file or correct 'source' in baselines/\(recipe.name).yaml")
                }
                content = SHA256Digest(of: data)
            }
            files.append(FileInput(path: file.path, mode: file.mode, owner: file.owner, content: content))
        }
        let inputs = ImageInputs(
            builder: Self.builderVersion, name: recipe.name, base: recipe.base, packages: recipe.packages, files: files,
            enable: recipe.enableServices, disable: recipe.disableServices, resources: recipe.resources)
        return SHA256Digest(of: try StableJSON.data(inputs))
    }

    /// The standing regression suite: executables in baselines/<name>/tests, sorted.
    public func tests(of name: String) -> [String] {
        let directory = project.baselineTests(name)
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return entries.filter { !$0.hasPrefix(".") }.sorted().map { "\(directory)/\($0)" }
    }

    /// Digest of the suite (names, contents, executable bits): a changed suite re-validates
    /// the image without rebuilding it.
    public func testsDigest(of name: String) -> SHA256Digest {
        var text = "tests\n"
        for path in tests(of: name) {
            let data = FileManager.default.contents(atPath: path) ?? Data()
            let executable = FileManager.default.isExecutableFile(atPath: path)
            text += "\((path as NSString).lastPathComponent) \(executable) \(SHA256Digest(of: data).hex)\n"
        }
        return SHA256Digest(of: text)
    }
}
