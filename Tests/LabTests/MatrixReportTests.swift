import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
@testable import Lab
import Model
import Testing

/// Reports rendered from a fixed run with every kind of verdict, compared as text.
@Suite struct MatrixReportTests {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")

    static func step(_ phase: StepOutcome.Phase, _ name: String, _ status: StepOutcome.Status = .passed, _ seconds: Double = 1, _ detail: String = "") -> StepOutcome {
        StepOutcome(phase: phase, name: name, status: status, exitCode: status == .passed ? 0 : 1, seconds: seconds, detail: detail)
    }

    static func result(
        _ id: String, _ verdict: CellVerdict, _ reason: String, _ steps: [StepOutcome], attempts: Int = 1
    ) -> CellResult {
        let parts = id.split(separator: ".")
        var timings = CellTimings()
        timings.restore = 1.25
        timings.upload = 0.5
        timings.discard = 0.25
        timings.total = 20
        return CellResult(
            id: id, baseline: String(parts[0]), lane: MatrixLane(rawValue: String(parts[1])) ?? .install, host: "local",
            verdict: verdict, reason: reason, attempts: attempts, startedAt: Date(timeIntervalSince1970: 1_795_939_200),
            timings: timings, steps: steps, delta: nil, residue: nil, violations: [], after: nil, upgradedFrom: nil,
            keptVM: verdict == .fail ? "cl-db-0123abcd-s0" : nil)
    }

    static var run: MatrixRun {
        let digest = SHA256Digest(of: "artifact")
        let cells = [
            CellPlan(baseline: "web", lane: .install), CellPlan(baseline: "db", lane: .install),
            CellPlan(baseline: "web", lane: .uninstall), CellPlan(baseline: "db", lane: .uninstall),
        ]
        var results: [String: CellResult] = [:]
        results["web.install"] = result(
            "web.install", .pass, "",
            [step(.restore, "restore web + set clock"), step(.install, "install"), step(.test, "10-greets"), step(.regression, "10-homepage")])
        results["db.install"] = result(
            "db.install", .fail, "regression: db's standing test 30-cache-policy failed (exit 1): maxmemory-policy is 'noeviction'",
            [step(.restore, "restore db + set clock"), step(.install, "install"), step(.test, "10-sessions-never-evicted"),
             step(.regression, "30-cache-policy", .failed, 0.5, "maxmemory-policy is 'noeviction', expected allkeys-lru")])
        results["web.uninstall"] = result(
            "web.uninstall", .timeout, "install step 'install' timed out after 5 s",
            [step(.restore, "restore web + set clock"), step(.install, "install", .timedOut, 5, "")])
        results["db.uninstall"] = result(
            "db.uninstall", .error, "infrastructure (failed twice on fresh restores): the guest agent did not answer",
            [step(.restore, "restore db + set clock")], attempts: 2)
        return MatrixRun(
            format: 1, id: "demo-1.0-20261129-000000-abcd", package: "demo", version: "1.0", artifact: digest,
            baselines: [
                .init(name: "web", imageDigest: SHA256Digest(of: "web"), recipeDigest: SHA256Digest(of: "w"), cmdbVersion: 1),
                .init(name: "db", imageDigest: SHA256Digest(of: "db"), recipeDigest: SHA256Digest(of: "d"), cmdbVersion: 2),
            ],
            lanes: [.install, .uninstall], cells: cells, notes: ["upgrade lane left out: no earlier release"],
            results: results, startedAt: Date(timeIntervalSince1970: 1_795_939_200), finishedAt: nil, status: .finished,
            wallSeconds: 45)
    }

    func golden(_ name: String, _ actual: String) throws {
        let path = Self.fixtures.appendingPathComponent(name)
        if ProcessInfo.processInfo.environment["CHANGELAB_UPDATE_GOLDEN"] != nil {
            try actual.write(to: path, atomically: true, encoding: .utf8)
        }
        let expected = try String(contentsOf: path, encoding: .utf8)
        #expect(actual == expected, "golden \(name) differs; rerun with CHANGELAB_UPDATE_GOLDEN=1 after checking the change")
    }

    @Test func theTableShowsEveryCellAndWhyItFailed() throws {
        try golden("matrix-table.txt", MatrixReport.table(Self.run))
    }

    @Test func junitHasATestcasePerStepAndTheRightCounts() throws {
        let xml = MatrixReport.junit(Self.run, logs: ["web.install": "log <with> & markup"])
        try golden("matrix-junit.xml", xml)
        let counts = try JUnitCounts(xml)
        #expect(counts.suites == 4)
        #expect(counts.testcases == 12)  // 4 + 4 + 2 steps, 1 step + the infrastructure case
        #expect(counts.failures == 2)  // the regression test and the timed-out install
        #expect(counts.errors == 1)
        #expect(counts.rootTests == 12 && counts.rootFailures == 2 && counts.rootErrors == 1)
    }

    @Test func htmlIsOneSelfContainedPageWithEveryCell() {
        let html = MatrixReport.html(Self.run, logs: ["db.install": "the <full> log"])
        #expect(html.hasPrefix("<!doctype html>"))
        #expect(!html.contains("<script"))
        #expect(!html.contains("http://") && !html.contains("https://"), "no external resources")
        for id in ["web.install", "db.install", "web.uninstall", "db.uninstall"] {
            #expect(html.contains("<section id=\"\(id)\">"))
            #expect(html.contains("href=\"#\(id)\""))
        }
        #expect(html.contains("the &lt;full&gt; log"))
        #expect(html.contains("1 of 4 cells passed"))
    }
}

/// Counts what Jenkins and GitLab count in a JUnit file, with a real XML parser.
final class JUnitCounts: NSObject, XMLParserDelegate {
    var suites = 0, testcases = 0, failures = 0, errors = 0
    var rootTests = 0, rootFailures = 0, rootErrors = 0

    init(_ xml: String) throws {
        super.init()
        let parser = XMLParser(data: Data(xml.utf8))
        parser.delegate = self
        guard parser.parse() else {
            throw ChangelabError("JUnit XML does not parse", why: parser.parserError.map { "\($0)" })
        }
    }

    func parser(
        _ parser: XMLParser, didStartElement element: String, namespaceURI: String?, qualifiedName: String?,
        attributes: [String: String] = [:]
    ) {
        switch element {
        case "testsuites":
            rootTests = Int(attributes["tests"] ?? "") ?? -1
            rootFailures = Int(attributes["failures"] ?? "") ?? -1
            rootErrors = Int(attributes["errors"] ?? "") ?? -1
        case "testsuite": suites += 1
        case "testcase": testcases += 1
        case "failure": failures += 1
        case "error": errors += 1
        default: break
        }
    }
}
