import ArgumentParser
import Foundation
import Lab
import Model

/// `--root DIR`: the project whose baselines/, packages/ and lab/ a command works on.
struct ProjectOptions: ParsableArguments {
    @Option(
        name: .long,
        help: ArgumentHelp("The project directory (holds baselines/, packages/, lab/).", valueName: "dir"))
    var root: String?

    /// The project, with `--root` made absolute (default: the current directory).
    func project() throws -> Project {
        let cwd = FileManager.default.currentDirectoryPath
        let path = root.map { $0.hasPrefix("/") ? $0 : cwd + "/" + $0 } ?? cwd
        let standardized = (path as NSString).standardizingPath
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: standardized, isDirectory: &isDirectory), isDirectory.boolValue
        else {
            throw ChangelabError(
                "project directory \(standardized) does not exist",
                fix: "pass the folder that holds baselines/ and packages/ with --root DIR")
        }
        return Project(root: standardized)
    }
}

/// `--json`: machine-readable output instead of the table.
struct OutputOptions: ParsableArguments {
    @Flag(name: .long, help: "Print JSON instead of a table.")
    var json = false
}

/// The matrix's old code paths, kept to measure the new ones against.
struct MatrixPathOptions: ParsableArguments {
    @Flag(help: "The old path, to measure against: a full inventory (every file hashed) after install.")
    var fullInventory = false
    @Flag(help: "The old path, to measure against: one upload and guest command per test.")
    var testPerCommand = false
    @Flag(help: "The old path, to measure against: no warm pool (every cell restores on its own critical path).")
    var noWarmPool = false

    var path: MatrixBenchmark.Path {
        MatrixBenchmark.Path(fullInventory: fullInventory, testPerCommand: testPerCommand, warmPool: !noWarmPool)
    }

    var isNew: Bool { path == .new }
}

/// Prints `value` as stable JSON on stdout.
func printJSON(_ value: some Encodable) throws {
    FileHandle.standardOutput.write(try StableJSON.data(value))
}

/// Writes a line to stderr (progress and diagnostics never go to stdout, which scripts read).
func note(_ text: String) {
    FileHandle.standardError.write(Data((text + "\n").utf8))
}
