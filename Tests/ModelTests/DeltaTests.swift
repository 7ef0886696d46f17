import Foundation
import Model
import Testing

@Suite struct GlobTests {
    @Test(arguments: [
        ("/etc/*.conf", "/etc/a.conf", true), ("/etc/*.conf", "/etc/x/a.conf", false),
        ("/etc/**/a.conf", "/etc/x/y/a.conf", true), ("/etc/**/a.conf", "/etc/a.conf", true),
        ("/etc/**", "/etc/x/y", true), ("/var/lib/dpkg/*-old", "/var/lib/dpkg/status-old", true),
        ("linux-image-*", "linux-image-6.1.0-18-amd64", true), ("nginx?", "nginx1", true), ("nginx?", "nginx", false),
        ("**/__pycache__", "/usr/lib/python3/x/__pycache__", true), ("/etc/hosts", "/etc/hosts", true),
        ("/etc/hosts", "/etc/hostsx", false),
    ])
    func matchesLikeAShell(_ pattern: String, _ text: String, _ expected: Bool) {
        #expect(Glob(pattern).matches(text) == expected)
    }

    @Test func aFolderPatternCoversEverythingBelowIt() {
        #expect(Glob("/var/log").matchesPathOrAncestor("/var/log/apt/history.log"))
        #expect(Glob("/var/log/**").matchesPathOrAncestor("/var/log"))
        #expect(!Glob("/var/log").matchesPathOrAncestor("/var/logs/x"))
        #expect(Glob("/etc/nginx/*").matchesPathOrAncestor("/etc/nginx/sites-enabled/default"))
    }
}

@Suite struct DeltaTests {
    let delta = ConfigurationDelta(from: Sample.baseline, to: Sample.afterInstall)

    @Test func findsAddedRemovedAndChangedItemsAndIgnoresNoise() {
        #expect(delta[.packages].added.map(\.key) == ["nginx-common:all", "nginx:amd64"])
        #expect(delta[.packages].changed.map(\.key) == ["openssl:amd64"])
        #expect(delta[.packages].changed.first?.before?["version"] == "3.0.11-1~deb12u2")
        #expect(delta[.packages].changed.first?.after?["version"] == "3.0.13-1~deb12u1")
        #expect(delta[.files].removed.map(\.key) == ["/etc/motd"])
        #expect(delta[.files].changed.map(\.key) == ["/etc/ssh/sshd_config"])
        #expect(delta[.files].changed.first?.changedFields == ["mode", "sha256"])
        #expect(!delta[.files].changed.contains { $0.key == "/etc/machine-id" })
        #expect(delta[.units].added.map(\.key) == ["nginx.service"])
        #expect(delta[.users].added.map(\.key) == ["www-data"])
        #expect(delta[.groups].changed.map(\.key) == ["adm"])
        #expect(delta[.ports].added.map(\.key) == ["tcp 0.0.0.0:80"])
        #expect(delta[.system].isEmpty)
    }

    @Test func withoutNoiseRulesTheNoiseShows() {
        let raw = ConfigurationDelta(from: Sample.baseline, to: Sample.afterInstall, noise: NoiseRules())
        #expect(raw[.files].changed.map(\.key).contains("/etc/machine-id"))
        #expect(raw[.units].added.map(\.key).contains("dev-vdb.device"))
    }

    @Test func identicalInventoriesHaveAnEmptyDelta() {
        let none = ConfigurationDelta(from: Sample.baseline, to: Sample.baseline)
        #expect(none.isEmpty)
        #expect(none.summary() == "no changes\n")
    }

    @Test func summaryAndJSONMatchTheGoldenFiles() throws {
        try Golden.check(delta.summary(), against: "delta-summary.txt")
        try Golden.check(try StableJSON.string(delta), against: "delta.json")
    }

    @Test func jsonRoundTripsAndIsStable() throws {
        let data = try StableJSON.data(delta)
        let decoded = try StableJSON.decode(ConfigurationDelta.self, from: data)
        #expect(decoded == delta)
        #expect(try StableJSON.data(decoded) == data)
    }

    @Test func applyingTheDeltaToTheBaselineGivesTheAfterState() {
        let noise = NoiseRules.defaultNoise
        let rebuilt = InventoryState(Sample.baseline).applying(delta)
        #expect(noise.removing(from: rebuilt) == noise.removing(from: InventoryState(Sample.afterInstall)))
        let snapshot = InventorySnapshot(
            state: noise.removing(from: InventoryState(Sample.afterInstall)), watchedPaths: ["/etc"])
        #expect(InventoryState(snapshot) == noise.removing(from: InventoryState(Sample.afterInstall)))
    }

    @Test func flagsChangesOutsideTheExpectedDelta() {
        let policy = ExpectedDeltaPolicy(
            paths: ["/etc/nginx"], packages: ["nginx*", "openssl"], units: ["nginx"], users: ["www-data"],
            groups: ["adm"], ports: ["tcp/80"])
        let violations = delta.violations(of: policy)
        #expect(
            violations.map(\.description) == [
                "files: /etc/motd removed, outside the expected delta",
                "files: /etc/ssh/sshd_config changed, outside the expected delta",
            ])
        #expect(delta.violations(of: ExpectedDeltaPolicy()).count == delta.entries.count)
    }

    @Test func policiesDecodeFromJSONWithMissingCategories() throws {
        let policy = try StableJSON.decode(ExpectedDeltaPolicy.self, from: Data(#"{"paths": ["/etc/nginx/**"]}"#.utf8))
        #expect(policy.paths == [Glob("/etc/nginx/**")])
        #expect(policy.packages.isEmpty)
    }
}
