import ArgumentParser
import Foundation
import Lab

struct DoctorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "doctor",
        abstract: "Check that this host can run the lab; every failing check names the command that fixes it.")
    @OptionGroup var projectOptions: ProjectOptions
    @OptionGroup var output: OutputOptions

    struct Report: Codable {
        var ok: Bool
        var checks: [DoctorCheck]
    }

    func run() async throws {
        let lab = try Lab(project: try projectOptions.project())
        let checks = await Doctor(lab: lab).run()
        let ok = !checks.contains { $0.required && !$0.ok }
        if output.json {
            try printJSON(Report(ok: ok, checks: checks))
        } else {
            var table = Table("", "CHECK", "DETAIL")
            for check in checks { table.add(check.ok ? "ok" : (check.required ? "FAIL" : "warn"), check.name, check.detail) }
            table.print()
            for check in checks where !check.ok {
                if let fix = check.fix { print("\(check.name): fix with: \(fix)") }
            }
        }
        if !ok { throw ExitCode(1) }
    }
}
