import Foundation
import HostIO
@testable import Lab
@testable import Libvirt
import Model
import Testing

/// The harness share from fabricated timestamps: everything in the slot's wall time that
/// was not the guest running the package's steps, its tests and the standing suite.
@Suite struct HarnessShareTests {
    static let taken = Date(timeIntervalSince1970: 1_795_939_200)

    /// A cell of 40 s in its slot whose restore, upload and discard are small but whose
    /// inventory (13 s) and round trips are not: the old definition (restore + upload +
    /// discard over the cell's time) called it 3.7% overhead.
    static func cell(slot: Double = 40, total: Double = 38, id: String = "db.install") -> CellResult {
        var timings = CellTimings()
        timings.restore = 1.0
        timings.clock = 0.3
        timings.upload = 0.2
        timings.prerequisites = 0.5
        timings.inventory = 13
        timings.settle = 0.4
        timings.workCommands = 7.2  // host seconds of the install step and the two suites
        timings.discard = 0.2
        timings.total = total
        timings.slotTakenAt = taken
        timings.slotReleasedAt = taken.addingTimeInterval(slot)
        let steps = [
            StepOutcome(phase: .restore, name: "restore db + set clock", status: .passed, seconds: 1.3),
            StepOutcome(phase: .upload, name: "upload artifact", status: .passed, seconds: 0.2),
            StepOutcome(phase: .prerequisites, name: "prerequisites", status: .passed, seconds: 0.5),
            StepOutcome(phase: .install, name: "install", status: .passed, seconds: 5.4, guestSeconds: 4),
            StepOutcome(phase: .inventory, name: "inventory and delta", status: .passed, seconds: 13),
            StepOutcome(phase: .test, name: "10-greets", status: .passed, seconds: 0.05, guestSeconds: 0.05),
            StepOutcome(phase: .regression, name: "10-homepage", status: .passed, seconds: 0.1, guestSeconds: 0.1),
            // Not measured in the guest (killed, or a harness step): never counted as work.
            StepOutcome(phase: .regression, name: "20-unmeasured", status: .passed, seconds: 0.6),
            StepOutcome(phase: .discard, name: "discard VM", status: .passed, seconds: 0.2),
        ]
        let parts = id.split(separator: ".")
        return CellResult(
            id: id, baseline: String(parts[0]), lane: MatrixLane(rawValue: String(parts[1])) ?? .install, host: "local",
            verdict: .pass, reason: "", attempts: 1, startedAt: taken, timings: timings, steps: steps, delta: nil,
            residue: nil, violations: [], after: nil, upgradedFrom: nil, keptVM: nil)
    }

    @Test func theShareIsOneMinusGuestWorkOverTheSlotsWallTime() {
        let result = Self.cell()
        #expect(abs(result.workSeconds - 4.15) < 1e-9)
        #expect(abs(result.slotSeconds - 40) < 1e-9)
        #expect(abs(result.harnessShare - (1 - 4.15 / 40)) < 1e-9)
        // The old definition, a sum of three named steps over the cell's time, gave 3.7%.
        let old = (result.timings.restore + result.timings.clock + result.timings.upload + result.timings.discard)
            / result.timings.total
        #expect(old < 0.05)
        #expect(result.harnessShare > 0.85)
    }

    @Test func timeNoStepNamesStillCountsAsTheHarnesss() {
        // The same steps, but the slot was held 20 s longer (a retry, a slot warmed on the way).
        let short = Self.cell(slot: 40)
        let long = Self.cell(slot: 60)
        #expect(long.harnessShare > short.harnessShare)
        #expect(abs(long.harnessSeconds - (60 - 4.15)) < 1e-9)
        #expect(abs(long.unattributedHarnessSeconds - short.unattributedHarnessSeconds - 20) < 1e-9)
        // Round trips: host time of the work commands beyond the guest's own measure.
        #expect(abs(short.roundTripSeconds - (7.2 - 4.15)) < 1e-9)
    }

    @Test func aRunRecordedBeforeSlotTimestampsFallsBackToTheCellsTotal() throws {
        var result = Self.cell()
        result.timings.slotTakenAt = nil
        result.timings.slotReleasedAt = nil
        #expect(result.slotSeconds == 38)
        // And a stored run of the old format still reads, its new fields zero.
        let old = #"{"discard":0.2,"restore":1.5,"total":30,"upload":0.3}"#
        let timings = try JSONDecoder().decode(CellTimings.self, from: Data(old.utf8))
        #expect(timings.restore == 1.5 && timings.total == 30 && timings.inventory == 0 && timings.slotTakenAt == nil)
    }

    @Test func theBenchmarkReportsTheShareAndEveryStepsMedian() {
        var run = MatrixReportTests.run
        run.cells = [CellPlan(baseline: "db", lane: .install), CellPlan(baseline: "web", lane: .install)]
        run.results = ["db.install": Self.cell(slot: 40), "web.install": Self.cell(slot: 60, id: "web.install")]
        run.wallSeconds = 70
        let report = MatrixBenchmark.report(run, slots: 2, cores: 2)
        #expect(report.cells == 2)
        #expect(abs(report.harnessShare.median - ((1 - 4.15 / 40) + (1 - 4.15 / 60)) / 2) < 1e-9)
        #expect(abs(report.harnessShare.max - (1 - 4.15 / 60)) < 1e-9)
        #expect(report.steps.inventory.median == 13)
        #expect(abs(report.sumOfCellSeconds - 100) < 1e-9)
        #expect(!report.targets.met, "a 90% share and a 13 s inventory meet no target")
    }

    @Test func theHTMLReportsHarnessOverheadByTheSameDefinition() {
        var run = MatrixReportTests.run
        run.results["db.install"] = Self.cell()
        let html = MatrixReport.html(run)
        #expect(html.contains("harness overhead 90%"), "\(MatrixReport.harnessLine(Self.cell()))")
        #expect(html.contains("inventory and delta 13.0 s"))
    }

    @Test func theGuestTimingLineIsParsedAndStrippedFromStderr() {
        let stderr = Data("warning: something\n\n\(GuestTiming.marker)1234.50 1236.75\n".utf8)
        let result = GuestExecResult(exitCode: 0, stdout: Data("out\n".utf8), stderr: stderr, timedOut: false, seconds: 3)
        let (stripped, seconds) = GuestTiming.split(result)
        #expect(seconds == 2.25)
        #expect(stripped.stderrText == "warning: something\n")
        #expect(stripped.stdoutText == "out\n")
        let killed = GuestExecResult(exitCode: -1, stdout: Data(), stderr: Data("partial".utf8), timedOut: true, seconds: 9)
        let (untouched, none) = GuestTiming.split(killed)
        #expect(none == nil)
        #expect(untouched.stderrText == "partial")
    }

    /// A step and its settle wait in one command: the settle report after the timing line
    /// is parsed (settled, or stuck with the busy units) and stripped from the step's stderr.
    @Test func theSettleReportAfterTheTimingLineIsParsedAndStripped() {
        func run(_ trailer: String) -> GuestTiming.Timed {
            let stderr = Data("dpkg: warning\n\n\(GuestTiming.marker)10.00 16.50\n\(trailer)".utf8)
            return GuestTiming.parse(
                GuestExecResult(exitCode: 0, stdout: Data(), stderr: stderr, timedOut: false, seconds: 7.2))
        }
        let settled = run("\(GuestTiming.settleMarker)0 16.50 16.80\nrunning\n")
        #expect(settled.guestSeconds == 6.5)
        #expect(settled.result.stderrText == "dpkg: warning\n")
        #expect(settled.settle == .settled(state: "running", seconds: 16.8 - 16.5))
        let stuck = run("\(GuestTiming.settleMarker)124 16.50 30.50\ndegraded\ncl-stuck.service (activating/start)\n")
        #expect(stuck.settle == .stuck(state: "degraded", busy: ["cl-stuck.service (activating/start)"], seconds: 14))
        // No settle report (the step failed, or was not a run step): nil, the step's own result.
        let none = run("")
        #expect(none.settle == nil && none.guestSeconds == 6.5)
        // A mangled report is no settle report, never a crash.
        #expect(run("\(GuestTiming.settleMarker)x y\n").settle == nil)
        #expect(run("\(GuestTiming.settleMarker)0 9 3\n").settle == nil)
    }

    /// The wrapper's shell runs under dash: the step's exit code survives the settle wait,
    /// which runs only after a success and is bounded by what is left of the time-out.
    @Test func theSettlingWrapperKeepsTheStepsExitCodeAndSkipsTheWaitAfterAFailure() async throws {
        let script = GuestTiming.script(settlingWithin: 30)
        #expect(script.contains(GuestTiming.settleMarker))
        #expect(script.contains("l=$(( 30 - (${e%.*} - ${s%.*}) ))"))
        // Without systemd here the wait reports at once; only the exit code and the lines matter.
        let failed = try await HostCommand.run("/bin/sh", ["-c", script, "t", "/bin/sh", "-c", "exit 7"], timeout: .seconds(30))
        #expect(failed.status == 7)
        #expect(!failed.stderrText.contains(GuestTiming.settleMarker), "no settle wait after a failed step")
        #expect(failed.stderrText.contains(GuestTiming.marker))
    }
}
