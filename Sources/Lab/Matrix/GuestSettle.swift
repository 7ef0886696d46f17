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

        /// How long the wait took.
        var seconds: Double {
            switch self {
            case .settled(_, let seconds), .stuck(_, _, let seconds): seconds
            }
        }
    }

    /// The guest-side loop, bounded by `limit` seconds of the guest's clock (which the lab
    /// has just set; `limit` may be a shell arithmetic expression). Prints the system state
    /// on the first line, then any busy units and queued jobs; exits 0 when settled, 124 when not.
    ///
    /// One `systemctl show` of the manager's state and job count per look (systemctl costs
    /// ~0.15 s a call under TCG): while the system is still starting it blocks in
    /// `is-system-running --wait`; once no job is queued, one `list-units` confirms that no
    /// unit is activating, deactivating or reloading without a job (a service waiting to
    /// restart). The old loop made three systemctl calls on every look.
    static func script(limit: String) -> String {
        """
        read up _ </proc/uptime; end=$(( ${up%.*} + \(limit) ))
        busy_units() { systemctl list-units --all --no-legend --no-pager --plain --state=activating,deactivating,reloading 2>/dev/null | awk '{print $1" ("$3"/"$4")"}'; }
        while :; do
          state=unknown; jobs=0
          for kv in $(systemctl show -p SystemState -p NJobs 2>/dev/null); do
            case $kv in (SystemState=*) state=${kv#*=} ;; (NJobs=*) jobs=${kv#*=} ;; esac
          done
          read up _ </proc/uptime; left=$(( end - ${up%.*} ))
          case $state in
            (initializing|starting)
              [ "$left" -gt 0 ] && timeout "$left" systemctl is-system-running --wait >/dev/null 2>&1
              state=$(systemctl is-system-running 2>/dev/null) ;;
          esac
          busy=
          if [ "$jobs" = 0 ]; then
            busy=$(busy_units)
            case $state in (initializing|starting) busy="${busy:-system $state}" ;; esac
            if [ -z "$busy" ]; then echo "$state"; exit 0; fi
          fi
          read up _ </proc/uptime
          if [ "${up%.*}" -ge "$end" ]; then
            echo "$state"
            [ -n "$busy" ] || busy=$(busy_units)
            [ -n "$busy" ] && echo "$busy"
            systemctl list-jobs --no-legend --no-pager --plain 2>/dev/null | awk '{print $2" (job "$3", "$4")"}'
            exit 124
          fi
          sleep 0.2
        done

        """
    }

    /// What the script printed and how it exited, as an outcome (`seconds` is the caller's).
    static func outcome(exitCode: Int32, output: String, timedOut: Bool, seconds: Double) -> Outcome {
        let lines = output.split(separator: "\n").map(String.init)
        let state = lines.first ?? (timedOut ? "no answer" : "unknown")
        if exitCode == 0 && !timedOut {
            return .settled(state: state, seconds: seconds)
        }
        let busy = Array(lines.dropFirst())
        return .stuck(
            state: state, busy: busy.isEmpty ? ["systemctl did not answer in time"] : busy, seconds: seconds)
    }

    /// Waits at most `limit` for the guest to settle.
    static func wait(_ agent: GuestAgent, within limit: Duration) async throws -> Outcome {
        let started = ContinuousClock.now
        let seconds = max(1, Int(limit.components.seconds))
        // The guest loop keeps its own deadline; the host's is a backstop for a hung systemctl.
        let result = try await agent.exec(["/bin/sh", "-c", script(limit: String(seconds))], timeout: limit + .seconds(20))
        return outcome(
            exitCode: result.exitCode, output: result.stdoutText, timedOut: result.timedOut, seconds: started.secondsSince)
    }
}
