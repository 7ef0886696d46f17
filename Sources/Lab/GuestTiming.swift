import Foundation
import Libvirt

/// Times a guest command by the guest's own clock: /proc/uptime read just before and just
/// after it, in the guest, so the figure leaves out the agent's round trips, the polling
/// and the output files. This is what a matrix cell counts as the package's own work.
enum GuestTiming {
    static let marker = "@@changelab-guest-time "

    /// Runs its arguments, then prints the two uptimes on a last stderr line of its own.
    /// (`read` is a shell builtin: no fork is added around the command.)
    static let wrapper = """
        read s _ </proc/uptime
        "$@"
        rc=$?
        read e _ </proc/uptime
        printf '\\n\(marker)%s %s\\n' "$s" "$e" >&2
        exit $rc
        """

    /// `command` wrapped so that its guest run time comes back with its result.
    static func argv(_ command: [String]) -> [String] {
        ["/bin/sh", "-c", wrapper, "changelab-timed"] + command
    }

    /// The result without the timing line, and the guest-measured seconds (nil when the
    /// line is missing: the command was killed at its time-out).
    static func split(_ result: GuestExecResult) -> (GuestExecResult, Double?) {
        let needle = Data(("\n" + marker).utf8)
        guard let found = result.stderr.range(of: needle, options: .backwards) else { return (result, nil) }
        let line = String(decoding: result.stderr[found.upperBound...], as: UTF8.self)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let fields = line.split(separator: " ")
        guard fields.count == 2, let start = Double(fields[0]), let end = Double(fields[1]), start.isFinite,
            end.isFinite, end >= start
        else { return (result, nil) }
        var stripped = result
        stripped.stderr = result.stderr.subdata(in: result.stderr.startIndex..<found.lowerBound)
        return (stripped, end - start)
    }
}
