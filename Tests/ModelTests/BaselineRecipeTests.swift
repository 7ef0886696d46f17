import Foundation
import Model
import Testing

@Suite struct BaselineRecipeTests {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")

    @Test func parsesEveryFieldOfAValidRecipe() throws {
        let text = """
            name: web
            description: Intranet web server
            approved: true
            base: {suite: bookworm, variant: minbase}
            packages: [nginx-light, curl]
            files:
              - path: /var/www/html/index.html
                source: files/index.html
              - path: /etc/motd
                content: hello
                mode: "0600"
                owner: root:adm
            services: {enable: [nginx], disable: [cron]}
            resources: {memory: 768, vcpus: 2, disk: 4096}
            watch: [/etc, /var/www]
            """
        let recipe = try BaselineRecipe.parse(text, file: "web.yaml", expectedName: "web")
        #expect(recipe.name == "web")
        #expect(recipe.approved)
        #expect(recipe.packages == ["nginx-light", "curl"])
        #expect(recipe.files.count == 2)
        #expect(recipe.files[0].body == .source("files/index.html"))
        #expect(recipe.files[1].body == .content("hello"))
        #expect(recipe.files[1].mode == 0o600)
        #expect(recipe.files[1].owner == "root:adm")
        #expect(recipe.enableServices == ["nginx"])
        #expect(recipe.disableServices == ["cron"])
        #expect(recipe.resources == BaselineRecipe.Resources(memoryMiB: 768, vcpus: 2, diskMiB: 4096))
        #expect(recipe.watch == ["/etc", "/var/www"])
    }

    @Test func defaultsAreADraftMinbaseBookworm() throws {
        let recipe = try BaselineRecipe.parse("name: tiny\n", file: "tiny.yaml")
        #expect(!recipe.approved)
        #expect(recipe.base == BaselineRecipe.Base())
        #expect(recipe.resources == BaselineRecipe.Resources())
        #expect(recipe.watch == BaselineRecipe.defaultWatch)
    }

    /// Golden: every problem of a broken recipe, each with its line and column, at once.
    @Test func reportsEveryProblemWithItsLineAndColumn() throws {
        let text = try String(contentsOf: Self.fixtures.appendingPathComponent("broken-baseline.yaml"), encoding: .utf8)
        let expected = try String(
            contentsOf: Self.fixtures.appendingPathComponent("broken-baseline.problems"), encoding: .utf8)
        do {
            _ = try BaselineRecipe.parse(text, file: "baselines/web.yaml", expectedName: "web")
            Issue.record("a broken recipe must not parse")
        } catch let error as SpecValidationError {
            #expect(error.description + "\n" == expected)
        }
    }

    @Test func problemsInsideListsAndMappingsAreAllReported() throws {
        let text = """
            name: x1
            files:
              - path: etc/motd
                content: hello
              - path: /etc/app.conf
              - path: /etc/both
                content: a
                source: files/b
              - path: /etc/mode
                content: x
                mode: "0999"
            resources:
              memory: 64
              vcpus: two
            """
        do {
            _ = try BaselineRecipe.parse(text, file: "x1.yaml")
            Issue.record("must not parse")
        } catch let error as SpecValidationError {
            let lines = error.problems.map(\.description)
            #expect(lines.contains("x1.yaml:3:11: file path 'etc/motd' must be absolute and must not contain '..'"))
            #expect(lines.contains("x1.yaml:5:5: file /etc/app.conf needs 'content' (inline text) or 'source' (a file)"))
            #expect(lines.contains("x1.yaml:6:5: a file has either 'content' or 'source', not both"))
            #expect(lines.contains("x1.yaml:11:11: 'mode' must be octal like \"0644\", not '0999'"))
            #expect(lines.contains("x1.yaml:13:11: 'memory' is in MiB and must be 256 to 65536"))
            #expect(lines.contains("x1.yaml:14:10: 'vcpus' must be a whole number, not 'two'"))
        }
    }

    @Test func malformedYAMLNamesItsPosition() throws {
        do {
            _ = try BaselineRecipe.parse("name: web\npackages: [nginx\n", file: "web.yaml")
            Issue.record("must not parse")
        } catch let error as SpecValidationError {
            let problem = try #require(error.problems.first)
            #expect(problem.file == "web.yaml")
            #expect(problem.line == 3)
            #expect(problem.message.hasPrefix("not valid YAML"))
        }
    }

    @Test func anEmptyFileIsAProblemNotACrash() {
        #expect(throws: SpecValidationError.self) { try BaselineRecipe.parse("", file: "empty.yaml") }
        #expect(throws: SpecValidationError.self) { try BaselineRecipe.parse("- just\n- a list\n", file: "list.yaml") }
    }

    @Test(arguments: [
        ("nginx", true), ("libc6:amd64", true), ("g++", true), ("a", false), ("Nginx", false), ("-x", false),
        ("foo bar", false), ("x:", false),
    ])
    func debianPackageNames(name: String, valid: Bool) {
        #expect(DebianNames.isValidPackageName(name) == valid)
    }
}

@Suite struct LabHostsTests {
    @Test func parsesHostsAndDefaultsToTheLocalDaemon() throws {
        let hosts = try LabHosts.parse(
            "hosts:\n  - {name: local, uri: 'qemu:///system', slots: 2}\n  - {name: lab2, uri: 'qemu+ssh://root@lab2/system', slots: 4}\n",
            file: "lab/hosts.yaml")
        #expect(hosts.hosts.map(\.name) == ["local", "lab2"])
        #expect(hosts.totalSlots == 6)
        #expect(hosts.hosts[0].isLocal)
        #expect(!hosts.hosts[1].isLocal)
        #expect(LabHosts.localDefault(cores: 2).hosts == [LabHosts.Host(name: "local", uri: "qemu:///system", slots: 2)])
    }

    @Test func rejectsBadHostsWithPositions() {
        do {
            _ = try LabHosts.parse("hosts:\n  - {uri: nowhere, slots: 0}\n", file: "lab/hosts.yaml")
            Issue.record("must not parse")
        } catch let error as SpecValidationError {
            #expect(error.problems.map(\.description).contains("lab/hosts.yaml:2:11: 'uri' must be a libvirt URI like qemu:///system, not 'nowhere'"))
            #expect(error.problems.contains { $0.message == "'slots' must be 1 to 64" })
        } catch {
            Issue.record("unexpected \(error)")
        }
    }
}
