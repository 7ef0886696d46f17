import Foundation
import Libvirt

/// Times a guest command by the guest's own clock: /proc/uptime read just before and just
/// after it, in the guest, so the figure leaves out the agent's round trips, the polling
/// and the output files. This is what a matrix cell counts as the package's own work.
enum GuestTiming {
    static let marker = "@@changelab-guest-time "

    static let settleMarker = "@@changelab-settle "

    /// Runs its arguments, then prints the two uptimes on a stderr line of its own; with
    /// `settlingWithin`, when the command succeeded, waits in the same guest command for
    /// systemd to settle (`GuestSettle`), bounded by what is left of that many seconds after
    /// the command (at least one), and reports the wait after the timing line: one round
    /// trip for a step and its settle wait. (`read` is a shell builtin: no fork is added
    /// around the command.)
    static func script(settlingWithin timeoutSeconds: Int? = nil) -> String {
        var script = """
            read s _ </proc/uptime
            "$@"
            rc=$?
            read e _ </proc/uptime
            printf '\\n\(marker)%s %s\\n' "$s" "$e" >&2

            """
        if let timeoutSeconds {
            script += """
                if [ "$rc" -eq 0 ]; then
                  l=$(( \(timeoutSeconds) - (${e%.*} - ${s%.*}) )); [ "$l" -ge 1 ] || l=1
                  read a _ </proc/uptime
                  out=$( ( \(GuestSettle.script(limit: "$l")) ) ); src=$?
                  read b _ </proc/uptime
                  printf '\(settleMarker)%s %s %s\\n%s\\n' "$src" "$a" "$b" "$out" >&2
                fi

                """
        }
        return script + "exit $rc\n"
    }

    /// `command` wrapped so that its guest run time (and, with `settlingWithin`, the settle
    /// wait after it) comes back with its result.
    static func argv(_ command: [String], settlingWithin timeoutSeconds: Int? = nil) -> [String] {
        ["/bin/sh", "-c", script(settlingWithin: timeoutSeconds), "changelab-timed"] + command
    }

    /// A timed command's result: its own output, the guest-measured seconds, and the settle
    /// wait that followed it (nil when none ran).
    struct Timed: Sendable {
        var result: GuestExecResult
        var guestSeconds: Double?
        var settle: GuestSettle.Outcome?
    }

    /// The result without the timing line, and the guest-measured seconds (nil when the
    /// line is missing: the command was killed at its time-out).
    static func split(_ result: GuestExecResult) -> (GuestExecResult, Double?) {
        let timed = parse(result)
        return (timed.result, timed.guestSeconds)
    }

    /// Separates the timing line and any settle report from the command's own stderr.
    static func parse(_ result: GuestExecResult) -> Timed {
        let needle = Data(("\n" + marker).utf8)
        guard let found = result.stderr.range(of: needle, options: .backwards) else {
            return Timed(result: result, guestSeconds: nil, settle: nil)
        }
        let trailer = String(decoding: result.stderr[found.upperBound...], as: UTF8.self)
        var lines = trailer.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        let fields = (lines.first ?? "").trimmingCharacters(in: .whitespaces).split(separator: " ")
        guard fields.count == 2, let start = Double(fields[0]), let end = Double(fields[1]), start.isFinite,
            end.isFinite, end >= start
        else { return Timed(result: result, guestSeconds: nil, settle: nil) }
        var stripped = result
        stripped.stderr = result.stderr.subdata(in: result.stderr.startIndex..<found.lowerBound)
        lines.removeFirst()
        return Timed(result: stripped, guestSeconds: end - start, settle: settle(in: lines))
    }

    /// The settle report: `@@changelab-settle RC START END`, then what the loop printed.
    static func settle(in lines: [String]) -> GuestSettle.Outcome? {
        guard let index = lines.firstIndex(where: { $0.hasPrefix(settleMarker) }) else { return nil }
        let fields = lines[index].dropFirst(settleMarker.count).split(separator: " ")
        guard fields.count == 3, let code = Int32(fields[0]), let start = Double(fields[1]), let end = Double(fields[2]),
            start.isFinite, end.isFinite, end >= start
        else { return nil }
        let output = lines[(index + 1)...].filter { !$0.isEmpty }.joined(separator: "\n")
        return GuestSettle.outcome(exitCode: code, output: output, timedOut: false, seconds: end - start)
    }
}
