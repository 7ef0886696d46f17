import ArgumentParser
import CMDB
import Foundation
import Model

extension BenchCommand {
    struct CMDBBench: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "cmdb",
            abstract: "Record N cells (one transaction each), then time queries across all of them and verify.",
            discussion: "Targets: a query over 10,000 cells in ≤ 200 ms; recording ≥ 50 cells per second.")
        @OptionGroup var output: OutputOptions
        @Option(name: .long, help: "How many cells to record.") var cells = 10_000
        @Option(
            name: .long,
            help: ArgumentHelp(
                "Build the CMDB here and keep it (default: a temporary folder, removed).", valueName: "dir"))
        var keep: String?
        @Flag(name: .long, help: "Print 'recorded CELL' on stdout as each cell's transaction commits.")
        var acknowledge = false
        @Flag(
            name: .long,
            help: ArgumentHelp(
                "Skip the first of each transaction's two syncfs calls, the one that makes its objects "
                    + "durable before the journal names them, to measure what it costs (only ever on this "
                    + "throwaway CMDB; the second, which makes the transaction durable, always runs)."))
        var skipObjectSync = false

        func run() async throws {
            guard cells > 0 else {
                throw ChangelabError(
                    "--cells \(cells) is not a positive number", fix: "pass --cells 10000, for example")
            }
            let path = keep ?? NSTemporaryDirectory() + "changelab-bench-cmdb-\(UUID().uuidString)"
            if keep != nil, let existing = try? FileManager.default.contentsOfDirectory(atPath: path), !existing.isEmpty
            {
                throw ChangelabError("\(path) is not empty", fix: "pass a new or empty folder to --keep")
            }
            defer { if keep == nil { try? FileManager.default.removeItem(atPath: path) } }
            var onRecorded: (@Sendable (String) -> Void)?
            if acknowledge {
                onRecorded = { id in FileHandle.standardOutput.write(Data("recorded \(id)\n".utf8)) }
            }
            var onProgress: (@Sendable (String) -> Void)?
            if !output.json { onProgress = { text in note(text) } }
            let result = try await CMDBBenchmark.run(
                cells: cells, path: path, objectSync: !skipObjectSync, acknowledge: onRecorded, progress: onProgress)
            if output.json { return try printJSON(result) }
            var lines = [
                "cells recorded        \(result.cells) in \(result.transactions) transactions, "
                    + String(format: "%.1f s", result.recordSeconds),
                "recording rate        " + String(format: "%.1f cells/s", result.cellsPerSecond)
                    + " (target ≥ 50)",
                "syncfs                " + syncLine(result),
                "query index rebuild   " + String(format: "%.2f s", result.indexRebuildSeconds),
            ]
            for timing in result.queries {
                lines.append(
                    String(format: "query %7.1f ms  %5d matches  ", timing.seconds * 1000, timing.matches)
                        + timing.query)
            }
            lines.append(
                "slowest query         " + String(format: "%.1f ms", result.slowestQuerySeconds * 1000)
                    + " (target ≤ 200 ms)")
            lines.append(
                "cmdb verify           " + String(format: "%.1f s", result.verifySeconds)
                    + (result.verifyPassed ? " (passed)" : " (FAILED)"))
            if keep != nil { lines.append("kept at               \(result.path)") }
            write(lines)
        }

        func syncLine(_ result: CMDBBenchmark.Result) -> String {
            let perTransaction = String(format: "%.2f ms per cell transaction", result.syncMillisecondsPerTransaction)
            return perTransaction + String(format: ", %.1f%% of the recording time", result.syncShare * 100)
                + (result.objectSync ? " (2 calls each)" : " (1 call each: the object sync skipped)")
        }
    }
}
