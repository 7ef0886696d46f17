import ArgumentParser
import CMDB
import ChangeControl
import Foundation
import HostIO
import Model

extension ChangeCommand {
    struct Review: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write the post-deployment review (Markdown and HTML) and record it with its close code.",
            discussion: """
                Targets reached are read from what the targets reported to the CMDB (their inventory holds the \
                package at the change's version); the rest are the chase list. The close code defaults to \
                successful (all reached), successful-with-issues (the policy's readiness reached) or unsuccessful.
                """)
        @OptionGroup var context: ChangeContext
        @Argument(help: "The change id.") var id: String
        @Option(help: "Lessons learned.") var lessons: String?
        @Option(help: "Recommendations.") var recommendations: String?
        @Option(help: "successful, successful-with-issues or unsuccessful (default: from the outcome).") var code: CloseCode?
        @Option(help: "Folder for the reports (default: reports/ in the project).") var out: String?

        func run() async throws {
            let folder = try out ?? (context.project().root + "/reports")
            let review = try await context.writing { store in
                let review = try ChangeReview(
                    try store.read(id), store: store, lessons: lessons, recommendations: recommendations, code: code,
                    at: Date())
                try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
                try AtomicFile.write(review.markdown, to: "\(folder)/\(id)-review.md")
                try AtomicFile.write(review.html, to: "\(folder)/\(id)-review.html")
                try await store.apply(
                    .reviewed(review.closeCode), to: id,
                    reason: "\(review.reached) of \(review.targets.count) targets reached; report \(folder)/\(id)-review.md")
                return review
            }
            print("\(id) reviewed: \(review.closeCode.rawValue); \(review.reached) of \(review.targets.count) targets reached")
            print("wrote \(folder)/\(id)-review.md and \(folder)/\(id)-review.html")
        }
    }

    struct Close: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Close a reviewed change.")
        @OptionGroup var context: ChangeContext
        @Argument(help: "The change id.") var id: String
        @Option(help: "Why.") var reason: String?

        func run() async throws { try await lifecycle(.closed, context: context, id: id, reason: reason) }
    }

    struct Metrics: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "The four DORA measures from the change records: frequency, lead time, failure rate, time to restore.")
        @OptionGroup var context: ChangeContext
        @OptionGroup var output: OutputOptions
        @Option(help: "Only from this date on (2026-01-31 or an ISO 8601 time).") var since: String?

        func run() async throws {
            let start = try since.map { text in
                let day = ISO8601DateFormatter()
                day.formatOptions = [.withFullDate]
                guard let date = ISO8601DateFormatter().date(from: text) ?? day.date(from: text) else {
                    throw ChangelabError("--since '\(text.prefix(40))' is not a date", fix: "write it like 2026-01-31")
                }
                return date
            }
            let metrics = ChangeMetrics.of(try context.cmdbOptions.store(), since: start, until: Date())
            if output.json { return try printJSON(metrics) }
            print(metrics.text, terminator: "")
        }
    }
}
