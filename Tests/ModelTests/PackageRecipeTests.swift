import Foundation
import Model
import Testing

@Suite struct PackageRecipeTests {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    @Test(arguments: ["greeterd", "kernel-tuning", "session-store"])
    func everyShippedRecipeParses(name: String) throws {
        let path = Self.repository.appendingPathComponent("packages/\(name)/package.yaml")
        let recipe = try PackageRecipe.parse(try String(contentsOf: path, encoding: .utf8), file: path.path, expectedName: name)
        #expect(recipe.name == name)
        #expect(!recipe.install.isEmpty)
        #expect(!recipe.uninstall.isEmpty)
        #expect(!recipe.expectedDelta.isEmpty)
    }

    @Test func theRebootPackageRebootsBetweenInstallAndConfirm() throws {
        let path = Self.repository.appendingPathComponent("packages/kernel-tuning/package.yaml")
        let recipe = try PackageRecipe.parse(try String(contentsOf: path, encoding: .utf8), file: "kernel-tuning")
        #expect(recipe.install.map(\.name) == ["install", "reboot", "confirm"])
        #expect(recipe.install[1].action == .reboot)
        #expect(recipe.install[1].timeoutSeconds == 400)
    }

    @Test func defaultsInstallWithDpkgAndPurgeOnUninstall() throws {
        let recipe = try PackageRecipe.parse("name: tool\nversion: 1.0\n", file: "tool.yaml")
        #expect(recipe.install == [.init(name: "install", action: .run("dpkg -i \"$ARTIFACT\""), timeoutSeconds: 300)])
        #expect(recipe.uninstall.first?.action == .run("dpkg --purge \"$PACKAGE\""))
        #expect(recipe.builder == "builder")
        #expect(recipe.debFileName == "tool_1.0_all.deb")
        #expect(recipe.expectedDelta.isEmpty)
    }

    @Test func everyProblemIsReportedWithItsPosition() {
        let text = """
            name: Bad_Name
            version: 1.0-
            architecture: sparc
            build:
              - name: oops
                reboot: true
              - name: empty
            install:
              - run: dpkg -i x
                reboot: true
              - run: true
                timeout: 0
            prerequisites:
              disk: -5
              packages: [UPPER]
            expected-delta:
              pathz: [/etc]
            """
        do {
            _ = try PackageRecipe.parse(text, file: "packages/bad/package.yaml", expectedName: "bad")
            Issue.record("a broken recipe must not parse")
        } catch let error as SpecValidationError {
            let lines = error.problems.map(\.description)
            let expected = [
                "packages/bad/package.yaml:1:7: 'Bad_Name' is not a valid Debian package name",
                "packages/bad/package.yaml:1:7: 'name' is 'Bad_Name' but the folder is packages/bad; make them match",
                "packages/bad/package.yaml:3:15: 'architecture' must be all or amd64, not 'sparc'",
                "packages/bad/package.yaml:5:5: a build step cannot reboot (only install and uninstall steps can)",
                "packages/bad/package.yaml:7:5: a step needs 'run: <shell script>' or 'reboot: true'",
                "packages/bad/package.yaml:9:5: a step either runs a script or reboots, not both",
                "packages/bad/package.yaml:12:14: 'timeout' must be a positive number of seconds, at most 604800 (a week)",
                "packages/bad/package.yaml:14:9: 'disk' is in MiB and cannot be negative",
                "packages/bad/package.yaml:15:13: 'UPPER' is not a valid Debian package name",
            ]
            for line in expected { #expect(lines.contains(line), "missing: \(line)\nall:\n\(lines.joined(separator: "\n"))") }
            #expect(lines.contains { $0.hasPrefix("packages/bad/package.yaml:2:10: '1.0-' is not a valid Debian version") })
            #expect(lines.contains { $0.contains("17:3: unknown key 'pathz'") && $0.contains("did you mean 'paths'") })
        } catch {
            Issue.record("unexpected error \(error)")
        }
    }
}
