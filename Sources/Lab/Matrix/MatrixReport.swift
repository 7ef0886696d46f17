import Foundation
import Libvirt
import Model

/// Renders a matrix run for people (a table, an HTML page) and for CI (JUnit XML).
public enum MatrixReport {
    public static func verdictLabelText(_ verdict: CellVerdict) -> String { verdictLabel(verdict) }

    static func verdictLabel(_ verdict: CellVerdict) -> String {
        switch verdict {
        case .pass: return "PASS"
        case .fail: return "FAIL"
        case .error: return "ERROR"
        case .timeout: return "TIMEOUT"
        }
    }

    /// Baselines down, lanes across; failed cells' reasons listed below.
    public static func table(_ run: MatrixRun) -> String {
        var rows: [[String]] = [["BASELINE"] + run.lanes.map { $0.rawValue.uppercased() }]
        for baseline in run.baselines {
            var row = [baseline.name]
            for lane in run.lanes {
                let id = CellPlan(baseline: baseline.name, lane: lane).id
                if let result = run.results[id] {
                    row.append("\(verdictLabel(result.verdict)) \(Int(result.timings.total.rounded())) s")
                } else {
                    row.append(run.cells.contains { $0.id == id } ? "not run" : "-")
                }
            }
            rows.append(row)
        }
        var widths = [Int](repeating: 0, count: rows[0].count)
        for row in rows { for (index, cell) in row.enumerated() { widths[index] = max(widths[index], cell.count) } }
        var text = rows.map { row in
            row.enumerated().map { $1.padding(toLength: widths[$0], withPad: " ", startingAt: 0) }.joined(separator: "  ")
                .trimmingCharacters(in: .whitespaces)
        }.joined(separator: "\n") + "\n"
        let failed = run.cells.compactMap { run.results[$0.id] }.filter { !$0.passed }
        if !failed.isEmpty {
            text += "\n"
            for result in failed {
                text += "\(result.id): \(verdictLabel(result.verdict)): \(result.reason)\n"
                if let kept = result.keptVM {
                    text += "  kept as \(kept): changelab lab exec \(kept) -- CMD; virsh console \(kept); changelab lab discard \(kept)\n"
                }
            }
        }
        for note in run.notes { text += "note: \(note)\n" }
        return text
    }

    // MARK: JUnit

    /// JUnit XML as Jenkins and GitLab read it: a testsuite per cell, a testcase per step.
    /// Product failures and time-outs are `<failure>`, infrastructure failures `<error>`.
    public static func junit(_ run: MatrixRun, logs: [String: String] = [:]) -> String {
        var suites = ""
        var totals = (tests: 0, failures: 0, errors: 0, time: 0.0)
        for plan in run.cells {
            guard let result = run.results[plan.id] else {
                suites += """
                      <testsuite name="\(XML.escape(plan.id))" tests="1" failures="0" errors="0" skipped="1" time="0">
                        <testcase classname="\(XML.escape(plan.id))" name="cell" time="0"><skipped message="not run (the run was interrupted)"/></testcase>
                      </testsuite>

                    """
                totals.tests += 1
                continue
            }
            var cases = ""
            var failures = 0
            var errors = 0
            for step in result.steps {
                let classname = XML.escape("\(plan.id).\(step.phase.rawValue)")
                let time = String(format: "%.3f", step.seconds)
                var body = ""
                switch step.status {
                case .passed: break
                case .skipped: body = "<skipped/>"
                case .failed, .timedOut:
                    failures += 1
                    let kind = step.status == .timedOut ? "timeout" : step.phase.rawValue
                    body = "<failure type=\"\(kind)\" message=\"\(XML.escape(firstLine(step.detail, or: step.status.rawValue)))\">\(XML.escape(step.detail))</failure>"
                case .error:
                    errors += 1
                    body = "<error message=\"\(XML.escape(firstLine(step.detail, or: "error")))\">\(XML.escape(step.detail))</error>"
                }
                cases += "    <testcase classname=\"\(classname)\" name=\"\(XML.escape(step.name))\" time=\"\(time)\">\(body)</testcase>\n"
            }
            var count = result.steps.count
            if result.verdict == .error {
                // The harness gave up: the cell itself is an error testcase.
                errors += 1
                count += 1
                cases += "    <testcase classname=\"\(XML.escape(plan.id))\" name=\"infrastructure\" time=\"0\"><error message=\"\(XML.escape(result.reason))\"/></testcase>\n"
            }
            totals.tests += count
            totals.failures += failures
            totals.errors += errors
            totals.time += result.timings.total
            let log = logs[plan.id].map { "    <system-out>\(XML.escape(String($0.suffix(200_000))))</system-out>\n" } ?? ""
            suites += """
                  <testsuite name="\(XML.escape("\(run.package) \(run.version) on \(plan.baseline) (\(plan.lane.rawValue))"))" \
                id="\(XML.escape(plan.id))" tests="\(count)" failures="\(failures)" errors="\(errors)" skipped="0" \
                time="\(String(format: "%.3f", result.timings.total))" timestamp="\(iso(result.startedAt))" hostname="\(XML.escape(result.host))">
                    <properties>
                      <property name="artifact" value="\(run.artifact)"/>
                      <property name="verdict" value="\(result.verdict.rawValue)"/>
                      <property name="reason" value="\(XML.escape(result.reason))"/>
                      <property name="attempts" value="\(result.attempts)"/>
                    </properties>
                \(cases)\(log)  </testsuite>

                """
        }
        return """
            <?xml version="1.0" encoding="UTF-8"?>
            <testsuites name="changelab matrix \(XML.escape(run.id))" tests="\(totals.tests)" failures="\(totals.failures)" \
            errors="\(totals.errors)" time="\(String(format: "%.3f", totals.time))">
            \(suites)</testsuites>

            """
    }

    // MARK: HTML

    /// One self-contained page: the grid, then every cell with its steps, timings,
    /// configuration changes and log. No scripts, no external files.
    public static func html(_ run: MatrixRun, logs: [String: String] = [:]) -> String {
        func h(_ text: String) -> String { XML.escape(text) }
        let passed = run.count(.pass)
        var page = """
            <!doctype html>
            <html lang="en"><head><meta charset="utf-8">
            <title>\(h(run.package)) \(h(run.version)): matrix \(h(run.id))</title>
            <style>
            body{font:14px/1.45 system-ui,sans-serif;margin:2em;color:#1d2329}
            table{border-collapse:collapse;margin:.6em 0}th,td{border:1px solid #c9d1d9;padding:.3em .6em;text-align:left;vertical-align:top}
            th{background:#f3f5f7}.pass{background:#dcf5e3}.fail,.timeout{background:#fbe0e0}.error{background:#fff1cc}
            a{color:inherit}pre{background:#f6f8fa;padding:.6em;overflow:auto;max-height:30em;font-size:12px}
            section{border-top:2px solid #d0d7de;margin-top:2em}code{font-size:12px}.muted{color:#57606a}
            </style></head><body>
            <h1>\(h(run.package)) \(h(run.version))</h1>
            <p>Run <code>\(h(run.id))</code>, artifact <code>\(h(run.artifact.description))</code><br>
            Started \(h(iso(run.startedAt))), \(String(format: "%.0f", run.wallSeconds)) s wall time;
            <b>\(passed) of \(run.cells.count) cells passed</b>.</p>

            """
        for note in run.notes { page += "<p class=\"muted\">Note: \(h(note))</p>\n" }
        page += "<table><tr><th>Baseline</th><th>Image</th><th>CMDB version</th>"
        for lane in run.lanes { page += "<th>\(h(lane.rawValue))</th>" }
        page += "</tr>\n"
        for baseline in run.baselines {
            page += "<tr><td>\(h(baseline.name))</td><td><code>\(h(baseline.imageDigest.short))</code></td><td>\(baseline.cmdbVersion.map { "\(baseline.name)@\($0)" } ?? "-")</td>"
            for lane in run.lanes {
                let id = CellPlan(baseline: baseline.name, lane: lane).id
                if let result = run.results[id] {
                    page += "<td class=\"\(result.verdict.rawValue)\"><a href=\"#\(h(id))\">\(verdictLabel(result.verdict))</a>"
                    if !result.passed { page += "<br><span class=\"muted\">\(h(String(result.reason.prefix(90))))</span>" }
                    page += "</td>"
                } else {
                    page += "<td>not run</td>"
                }
            }
            page += "</tr>\n"
        }
        page += "</table>\n"

        for plan in run.cells {
            guard let result = run.results[plan.id] else { continue }
            page += """
                <section id="\(h(plan.id))">
                <h2 class="\(result.verdict.rawValue)">\(h(plan.id)): \(verdictLabel(result.verdict))</h2>
                \(result.reason.isEmpty ? "" : "<p><b>Reason:</b> \(h(result.reason))</p>")
                <p>Host \(h(result.host)), attempts \(result.attempts)\(result.upgradedFrom.map { ", upgraded from \(h($0))" } ?? "")\(result.keptVM.map { ", VM kept as <code>\(h($0))</code>" } ?? "").
                \(h(harnessLine(result)))</p>
                <table><tr><th>Phase</th><th>Step</th><th>Status</th><th>Seconds</th><th>Output</th></tr>

                """
            for step in result.steps {
                let status = step.status == .passed ? "pass" : (step.status == .skipped ? "" : "fail")
                page += "<tr><td>\(h(step.phase.rawValue))</td><td>\(h(step.name))</td><td class=\"\(status)\">\(h(step.status.rawValue))\(step.exitCode.map { " (\($0))" } ?? "")</td><td>\(String(format: "%.1f", step.seconds))</td><td>\(step.detail.isEmpty ? "" : "<pre>\(h(step.detail))</pre>")</td></tr>\n"
            }
            page += "</table>\n"
            if let delta = result.delta {
                page += "<h3>Configuration changes (baseline → after install)</h3><pre>\(h(delta.isEmpty ? "no change" : delta.summary()))</pre>\n"
            }
            if !result.violations.isEmpty {
                page += "<h3>Outside the expected-delta policy</h3><pre>\(h(result.violations.map(\.description).joined(separator: "\n")))</pre>\n"
            }
            if let residue = result.residue {
                page += "<h3>Residue (baseline → after uninstall)</h3><pre>\(h(residue.isEmpty ? "none: back to the baseline" : residue.summary()))</pre>\n"
            }
            if let log = logs[plan.id] {
                page += "<details><summary>Full log</summary><pre>\(h(String(log.suffix(400_000))))</pre></details>\n"
            }
            page += "</section>\n"
        }
        page += "</body></html>\n"
        return page
    }

    /// The cell's time and the harness's share of it: everything in the slot's wall time
    /// that was not the guest running the package's steps, its tests and the standing suite.
    static func harnessLine(_ result: CellResult) -> String {
        let t = result.timings
        func f(_ value: Double) -> String { String(format: "%.1f", value) }
        return "Time \(f(result.slotSeconds)) s in its slot, of which \(f(result.workSeconds)) s the package's steps, "
            + "tests and standing suite (guest-measured): harness overhead \(String(format: "%.0f", 100 * result.harnessShare))% "
            + "(\(f(result.harnessSeconds)) s: \(t.fromPool ? "resume" : "restore") \(f(t.restore)) s, clock \(f(t.clock)) s, "
            + "listing \(f(t.listing)) s, upload \(f(t.upload)) s, prerequisites \(f(t.prerequisites)) s, "
            + "inventory and delta \(f(t.inventory)) s, settle \(f(t.settle)) s, guest round trips \(f(result.roundTripSeconds)) s, "
            + "discard \(f(t.discard)) s, other \(f(result.unattributedHarnessSeconds)) s)."
    }

    /// The cell logs of a run, for the reports.
    public static func logs(_ run: MatrixRun, home: LabHome) -> [String: String] {
        var logs: [String: String] = [:]
        for plan in run.cells {
            if let text = try? String(contentsOfFile: MatrixRun.cellLogPath(home, run.id, plan.id), encoding: .utf8) {
                logs[plan.id] = text
            }
        }
        return logs
    }

    static func firstLine(_ text: String, or fallback: String) -> String {
        text.split(separator: "\n").first.map(String.init) ?? fallback
    }

    static func iso(_ date: Date) -> String {
        ISO8601DateFormatter().string(from: date)
    }
}
