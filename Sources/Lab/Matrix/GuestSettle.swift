import Foundation
import HostIO
import Libvirt

/// Waits until a guest's systemd has nothing left to do: the boot finished (`systemctl
/// is-system-running --wait`) and no job is queued and no unit is still activating,
/// deactivating or reloading — what a reboot, or a maintainer script that restarts a
/// unit, leaves behind for a while.
///
/// An inventory taken before that records units half-way (`multi-user.target` inactive,
/// a service `activating`) and reports a configuration change the package never made.
/// `degraded` counts as settled: a failed unit is a finished state the delta reports.
enum GuestSettle {
    /// How the wait ended.
    enum Outcome: Sendable, Equatable {
        /// Nothing is starting or stopping; `state` is what is-system-running said.
        case settled(state: String, seconds: Double)
        /// Still busy at the deadline: the units (and queued jobs) that never finished.
        case stuck(state: String, busy: [String], seconds: Double)
    }

    /// The guest-side loop, bounded by `limit` seconds of the guest's clock (which the lab
    /// has just set). Prints the system state on the first line, then any busy units.
    static func script(limit: Int) -> String {
        """
        limit=\(limit)
        end=$(( $(date +%s) + limit ))
        state=$(timeout "$limit" systemctl is-system-running --wait 2>/dev/null)
        [ -n "$state" ] || state=$(systemctl is-system-running 2>/dev/null)
        while :; do
          busy=$(systemctl list-units --all --no-legend --no-pager --plain --state=activating,deactivating,reloading 2>/dev/null | awk '{print $1" ("$3"/"$4")"}')
          jobs=$(systemctl list-jobs --no-legend --no-pager --plain 2>/dev/null | awk '{print $2" (job "$3", "$4")"}')
          if [ -z "$busy" ] && [ -z "$jobs" ]; then echo "$state"; exit 0; fi
          if [ "$(date +%s)" -ge "$end" ]; then
            echo "$state"; [ -n "$busy" ] && echo "$busy"; [ -n "$jobs" ] && echo "$jobs"; exit 124
          fi
          sleep 0.2
        done

        """
    }

    /// Waits at most `limit` for the guest to settle.
    static func wait(_ agent: GuestAgent, within limit: Duration) async throws -> Outcome {
        let started = ContinuousClock.now
        let seconds = max(1, Int(limit.components.seconds))
        // The guest loop keeps its own deadline; the host's is a backstop for a hung systemctl.
        let result = try await agent.exec(["/bin/sh", "-c", script(limit: seconds)], timeout: limit + .seconds(20))
        let lines = result.stdoutText.split(separator: "\n").map(String.init)
        let state = lines.first ?? (result.timedOut ? "no answer" : "unknown")
        if result.exitCode == 0 && !result.timedOut {
            return .settled(state: state, seconds: started.secondsSince)
        }
        let busy = Array(lines.dropFirst())
        return .stuck(
            state: state, busy: busy.isEmpty ? ["systemctl did not answer within \(seconds) s"] : busy,
            seconds: started.secondsSince)
    }
}
