import Foundation
import HostIO
@testable import Lab
import Model
import Testing

/// The guest-side runner's report, read without a VM.
@Suite struct StandingSuiteReportTests {
    static func report(_ token: String, _ index: Int, _ code: Int, _ start: String, _ end: String, _ out: String, _ err: String)
        -> String
    {
        "\(StandingSuite.marker)\(token) \(index) \(code) \(start) \(end)\n\(out)\n\(StandingSuite.separator)\(token)\n"
            + "\(err)\n\(StandingSuite.ending)\(token)\n"
    }

    @Test func eachTestKeepsItsExitCodeOutputAndGuestTime() {
        let output =
            Self.report("k", 0, 0, "10.00", "10.25", "fine\n", "")
            + Self.report("k", 1, 3, "11.00", "11.50", "out\n", "it broke\n")
            + Self.report("k", 2, 124, "12.00", "17.00", "", "")
            + Self.report("k", 3, 124, "20.00", "20.10", "", "")
        let outcomes = StandingSuite.parse(output, names: ["10-ok", "20-bad", "30-slow", "40-says-124"], timeoutSeconds: 5)
        #expect(outcomes.map(\.name) == ["10-ok", "20-bad", "30-slow", "40-says-124"])
        #expect(outcomes[0].passed && outcomes[0].seconds == 0.25 && outcomes[0].outputTail == "fine")
        #expect(outcomes[1].exitCode == 3 && outcomes[1].outputTail == "out\nit broke")
        #expect(outcomes[2].timedOut && !outcomes[2].passed)
        #expect(!outcomes[3].timedOut && outcomes[3].exitCode == 124, "a test that exits 124 quickly did not time out")
    }

    @Test func outputThatLooksLikeTheReportDoesNotConfuseIt() {
        let sneaky = "\(StandingSuite.marker)other 0 0 1 2\n\(StandingSuite.separator)other\n"
        let outcomes = StandingSuite.parse(Self.report("tok", 0, 1, "1.0", "2.0", sneaky, ""), names: ["a"], timeoutSeconds: 5)
        #expect(outcomes.count == 1 && outcomes.first?.exitCode == 1)
    }

    @Test func aMangledReportLosesTheTestRatherThanCrashing() {
        let outcomes = StandingSuite.parse(
            "\(StandingSuite.marker)k 7 0 1 2\nxx\n\(StandingSuite.marker)zero\n\(StandingSuite.marker)k 0 0 5", names: ["a"],
            timeoutSeconds: 5)
        #expect(outcomes.isEmpty)
    }
}

extension LabQEMUTests {
    /// A suite runs as one guest command: a trivial test costs tens of milliseconds, and
    /// each test keeps its own exit code, output and time.
    @Test func aWholeSuiteRunsInOneGuestCommandWithPerTestResults() async throws {
        let (lab, image) = try await SharedLab.shared.lab()
        let folder = NSTemporaryDirectory() + "changelab-suite-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let tests = [
            "10-true": "#!/bin/sh\ntrue\n", "20-fails": "#!/bin/sh\necho checking; echo 'no such thing' >&2; exit 4\n",
            "30-hangs": "#!/bin/sh\nsleep 60\n", "40-true": "#!/bin/sh\nexit 0\n",
        ]
        for (name, text) in tests { try text.write(toFile: "\(folder)/\(name)", atomically: true, encoding: .utf8) }
        let paths = tests.keys.sorted().map { "\(folder)/\($0)" }
        try await lab.withRestored(image) { guest in
            let started = ContinuousClock.now
            let outcomes = try await StandingSuite.run(paths, in: guest, timeout: .seconds(3), progress: { _ in })
            let wall = started.secondsSince
            #expect(outcomes.map(\.name) == ["10-true", "20-fails", "30-hangs", "40-true"])
            #expect(outcomes[0].passed && outcomes[3].passed)
            #expect(outcomes[1].exitCode == 4 && outcomes[1].outputTail == "checking\nno such thing")
            #expect(outcomes[2].timedOut)
            #expect(outcomes[0].seconds < 0.2, "a trivial test took \(outcomes[0].seconds) s in the guest")
            // Against the old way on the same guest: an upload and a guest command per test.
            let before = ContinuousClock.now
            let old = try await StandingSuite.run(paths, in: guest, timeout: .seconds(3), oneByOne: true, progress: { _ in })
            let oldWall = before.secondsSince
            print(
                String(
                    format: "suite of 4 (one hangs 3 s): %.2f s in one command, %.2f s one by one; a trivial test %.3f s in the guest",
                    wall, oldWall, outcomes[0].seconds))
            #expect(old.map(\.passed) == outcomes.map(\.passed))
            #expect(wall < oldWall, "one command: \(wall) s, one by one: \(oldWall) s")
        }
    }
}
