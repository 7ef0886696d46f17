import Foundation
import Lab

/// Prints lab progress to stderr as "[  35s web] message", so stdout stays clean for
/// `--json` and for the command output people pipe.
enum ConsoleProgress {
    static func handler(quiet: Bool = false) -> ProgressHandler {
        let start = Date()
        return { event in
            guard !quiet else { return }
            let elapsed = Int(Date().timeIntervalSince(start))
            let stamp = String(format: "%4ds", elapsed)
            note("[\(stamp) \(event.subject)] \(event.message)")
        }
    }
}
