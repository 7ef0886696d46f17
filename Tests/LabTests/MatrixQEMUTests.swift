import CMDB
import Foundation
import HostIO
@testable import Lab
import Model
import Testing

/// A project in a temporary folder that shares this repository's baselines (so their
/// images are reused) and has packages of its own, for builds and installs meant to fail.
struct ScratchProject {
    let root: String

    /// - Parameters:
    ///   - packages: package folders to create (file path → text), or none to share the
    ///     repository's packages.
    ///   - hosts: the text of lab/hosts.yaml, if any.
    init(packages: [String: [String: String]], hosts: String? = nil) throws {
        root = NSTemporaryDirectory() + "changelab-scratch-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: root + "/baselines", withDestinationPath: SharedLab.repository + "/baselines")
        if packages.isEmpty {
            try FileManager.default.createSymbolicLink(atPath: root + "/packages", withDestinationPath: SharedLab.repository + "/packages")
        } else {
            try FileManager.default.createDirectory(atPath: root + "/packages", withIntermediateDirectories: true)
        }
        if let hosts {
            try FileManager.default.createDirectory(atPath: root + "/lab", withIntermediateDirectories: true)
            try hosts.write(toFile: root + "/lab/hosts.yaml", atomically: true, encoding: .utf8)
        }
        for (name, files) in packages {
            for (path, text) in files {
                let full = "\(root)/packages/\(name)/\(path)"
                try FileManager.default.createDirectory(
                    atPath: (full as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
                try text.write(toFile: full, atomically: true, encoding: .utf8)
                if path.hasPrefix("tests/") || path.hasPrefix("debian/") {
                    try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: full)
                }
            }
        }
    }

    func lab() throws -> Lab { try Lab(project: Project(root: root)) { print("[\($0.subject)] \($0.message)") } }

    func remove() { try? FileManager.default.removeItem(atPath: root) }
}

extension LabQEMUTests {
    static func options(_ lanes: [MatrixLane], baselines: [String] = [], cmdb: String? = nil) -> MatrixRunner.Options {
        var options = MatrixRunner.Options()
        options.lanes = lanes
        options.baselines = baselines
        options.cmdb = cmdb
        return options
    }

    @Test func theServicePackagePassesOnEveryApprovedBaselineAndIsRecorded() async throws {
        let (lab, _) = try await SharedLab.shared.lab()
        let cmdb = NSTemporaryDirectory() + "changelab-matrix-cmdb-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: cmdb) }
        let run = try await MatrixRunner(lab: lab).run(
            package: "greeterd", options: Self.options([.install, .uninstall], cmdb: cmdb))
        let failures = run.results.values.filter { !$0.passed }.map { "\($0.id): \($0.reason)" }
        #expect(failures.isEmpty, "\(failures)")
        #expect(Set(run.baselines.map(\.name)) == ["minimal", "web", "db"])
        #expect(run.cells.count == 6 && run.results.count == 6)

        // The install delta names what greeterd brought, and nothing outside its policy.
        let install = try #require(run.results["web.install"])
        let delta = try #require(install.delta)
        let added = CellAttempt.describe(delta)
        #expect(added.contains { $0.hasPrefix("packages greeterd") && $0.hasSuffix("added") }, "\(added)")
        #expect(added.contains { $0.contains("greeterd.service") })
        #expect(install.violations.isEmpty)
        // Uninstalling leaves the configuration exactly as the baseline had it.
        let uninstall = try #require(run.results["web.uninstall"])
        #expect(uninstall.residue?.isEmpty == true, "residue: \(uninstall.residue.map(CellAttempt.describe) ?? [])")

        // Every cell is evidence in the CMDB, tied to the artifact and the baseline versions.
        let store = try CMDBStore.open(cmdb)
        let cells = try store.cells(ofRun: run.id)
        #expect(cells.count == 6)
        #expect(cells.allSatisfy { $0.artifact == run.artifact && $0.verdict == .passed })
        #expect(Set(cells.map(\.baseline.name)) == ["minimal", "web", "db"])
        // The lab signed what it recorded: the evidence the release gate and agents judge.
        let record = try store.read(RunRecord.self, run.id)
        let envelope = try #require(record.evidence, "the run carries no signed evidence")
        let labKey = try lab.home.evidenceKey().publicKey
        let evidence = try envelope.open(EvidenceStatement.self, as: .evidence, trusting: [labKey])
        #expect(evidence.artifact == run.artifact && evidence.cells.count == 6)
        #expect(evidence.cells.allSatisfy { $0.isGreen && $0.commit != nil && $0.imageDigest != nil })
        #expect(Set(evidence.cells.map(\.lane)) == ["install", "uninstall"])
        #expect(throws: SignatureRefusal.self) {
            try envelope.open(EvidenceStatement.self, as: .evidence, trusting: [SigningKey().publicKey])
        }

        // The tested change becomes web's new standard configuration (issue: adopt), and the
        // adopted version's delta from the built one is greeterd's install.
        let adopt = try await HostCommand.run(
            SharedLab.binary,
            ["baseline", "adopt", "--root", SharedLab.repository, "--cmdb", cmdb, "web", "--from", run.id, "--json"])
        #expect(adopt.status == 0, "\(adopt.stderrText)")
        let adopted = try StableJSON.decode(BaselineVersionRecord.self, from: adopt.stdout)
        #expect(adopted.origin == .adopted)
        #expect(adopted.adoption?.cell == "web.install")
        #expect(adopted.adoption.map { CellAttempt.describe($0.delta).contains { $0.hasPrefix("packages greeterd") } } == true)
        // Recording the unchanged lab image again keeps the built version: it must not add a
        // version that drops the adopted change.
        let writer = try await CMDBWriter(path: cmdb, actor: "test")
        let again = try await lab.record(try lab.readyImage("web"), writer: writer)
        await writer.close()
        #expect(again.origin == .built && again.version == adopted.version - 1)
        #expect(try CMDBStore.open(cmdb).latestBaseline("web") == adopted)

        // The JUnit file of the real run parses, with a testcase per step.
        let counts = try JUnitCounts(MatrixReport.junit(run))
        #expect(counts.suites == 6)
        #expect(counts.testcases == run.results.values.reduce(0) { $0 + $1.steps.count })
        #expect(counts.failures == 0 && counts.errors == 0)
    }

    @Test func theBreakingPackageTurnsExactlyTheDbCellRedNamingItsRegressionTest() async throws {
        let (lab, _) = try await SharedLab.shared.lab()
        var options = Self.options([.install])
        options.keepFailed = true
        let run = try await MatrixRunner(lab: lab).run(package: "session-store", options: options)
        let red = run.results.values.filter { !$0.passed }
        #expect(red.map(\.id) == ["db.install"])
        let cell = try #require(run.results["db.install"])
        #expect(cell.verdict == .fail)
        #expect(cell.reason.contains("regression"))
        #expect(cell.reason.contains("30-cache-policy"), "reason: \(cell.reason)")
        // Its own test passed there: only the standing regression test caught it.
        #expect(cell.steps.first { $0.phase == .test }?.status == .passed)
        #expect(run.results["minimal.install"]?.passed == true)
        #expect(run.results["web.install"]?.passed == true)
        // --keep-failed: the red cell's VM is still there, with the change in it, to debug.
        let keptName = try #require(cell.keptVM)
        #expect(MatrixReport.table(run).contains("kept as \(keptName)"))
        let kept = try #require(lab.keptGuest(keptName))
        let domain = try await lab.attach(kept)
        let policy = try await domain.agent.capture(["redis-cli", "config", "get", "maxmemory-policy"])
        #expect(policy.stdoutText.contains("noeviction"))
        try await lab.discard(kept)
        #expect(lab.keptGuest(keptName) == nil)
    }

    /// Prerequisites are evaluated in the guest, and a change outside the expected-delta
    /// policy fails the cell even when every test passes.
    @Test func unmetPrerequisitesAndUnexpectedChangesFailTheCellWithTheReason() async throws {
        _ = try await SharedLab.shared.lab()
        let project = try ScratchProject(packages: [
            "cl-prereq-probe": [
                "package.yaml": """
                    name: cl-prereq-probe
                    version: 1.0
                    sources: [src]
                    build: [{run: mkdir -p "$DESTDIR/usr/share/doc/cl-prereq-probe"}]
                    prerequisites: {packages: [cl-not-installed-anywhere], memory: 99999}
                    """,
                "src/README": "needs what no baseline has\n",
            ],
            "cl-policy-probe": [
                "package.yaml": """
                    name: cl-policy-probe
                    version: 1.0
                    sources: [src]
                    build: [{run: install -D -m 0644 src/settings "$DESTDIR/etc/cl-policy-probe/settings"}]
                    install:
                      - {name: install, run: dpkg -i "$ARTIFACT"}
                      - {name: tweak, run: echo surprise > /etc/cl-surprise}
                    expected-delta: {paths: [/etc/cl-policy-probe], packages: [cl-policy-probe]}
                    """,
                "src/settings": "ok\n",
            ],
        ])
        defer { project.remove() }
        let lab = try project.lab()
        let unmet = try await MatrixRunner(lab: lab).run(
            package: "cl-prereq-probe", options: Self.options([.install], baselines: ["minimal"]))
        let refused = try #require(unmet.results["minimal.install"])
        #expect(refused.verdict == .fail)
        #expect(refused.reason.hasPrefix("prerequisite not met: package cl-not-installed-anywhere is not installed"))
        #expect(refused.reason.contains("needs 99999 MiB"))
        #expect(!refused.steps.contains { $0.phase == .install }, "nothing is installed when a prerequisite is not met")

        let surprise = try await MatrixRunner(lab: lab).run(
            package: "cl-policy-probe", options: Self.options([.install], baselines: ["minimal"]))
        let flagged = try #require(surprise.results["minimal.install"])
        #expect(flagged.verdict == .fail)
        #expect(flagged.reason.hasPrefix("unexpected configuration change"))
        #expect(flagged.reason.contains("/etc/cl-surprise"))
        #expect(flagged.violations.contains { $0.key == "/etc/cl-surprise" })
        #expect(!flagged.reason.contains("/etc/cl-policy-probe"), "what the policy allows is not flagged")
    }

    /// When the guest agent goes away in the middle of a cell, the cell is retried once on
    /// a fresh restore, and then reported as infrastructure (not as a product failure).
    @Test func anInfrastructureFailureIsRetriedOnceThenReportedAsError() async throws {
        _ = try await SharedLab.shared.lab()
        let project = try ScratchProject(packages: [
            "cl-agent-killer": [
                "package.yaml": """
                    name: cl-agent-killer
                    version: 1.0
                    sources: [src]
                    build: [{run: mkdir -p "$DESTDIR/usr/share/doc/cl-agent-killer"}]
                    install:
                      - {name: lose the agent, run: "systemctl mask --now qemu-guest-agent; sleep 30", timeout: 60}
                    """,
                "src/README": "takes the guest agent down\n",
            ]
        ])
        defer { project.remove() }
        let run = try await MatrixRunner(lab: try project.lab()).run(
            package: "cl-agent-killer", options: Self.options([.install], baselines: ["minimal"]))
        let cell = try #require(run.results["minimal.install"])
        #expect(cell.verdict == .error)
        #expect(cell.attempts == 2)
        #expect(cell.reason.hasPrefix("infrastructure (failed twice on fresh restores)"), "\(cell.reason)")
    }

    @Test func theRebootPackageRebootsInTheMiddleAndComesBack() async throws {
        let (lab, _) = try await SharedLab.shared.lab()
        let run = try await MatrixRunner(lab: lab).run(
            package: "kernel-tuning", options: Self.options([.install, .uninstall], baselines: ["minimal"]))
        let cell = try #require(run.results["minimal.install"])
        #expect(cell.passed, "\(cell.reason)")
        #expect(cell.steps.filter { $0.phase == .install }.map(\.name) == ["install", "reboot", "confirm"])
        #expect(cell.steps.contains { $0.name == "10-profile-active" && $0.status == .passed })
        // Its boot unit stays active after it ran; the package must stop it on removal,
        // or systemd keeps it loaded and the uninstall lane reports it as residue.
        let uninstall = try #require(run.results["minimal.uninstall"])
        #expect(uninstall.passed, "\(uninstall.reason)")
    }

    /// The race `lab/demo` lost on a loaded machine: after kernel-tuning's reboot step the
    /// agent answers before the guest has finished booting, and an inventory taken then
    /// reported `multi-user.target` and units still `activating` as changes. The cell must
    /// wait for the guest to settle, on every approved baseline, with both cores busy.
    @Test func theRebootPackageIsGreenOnEveryApprovedBaselineWhileBothCoresAreBusy() async throws {
        let (lab, _) = try await SharedLab.shared.lab()
        let hogs = try CPUHogs(count: 2)
        defer { hogs.stop() }
        let run = try await MatrixRunner(lab: lab).run(package: "kernel-tuning", options: Self.options([.install]))
        #expect(Set(run.baselines.map(\.name)) == ["minimal", "web", "db"])
        #expect(run.results.count == 3)
        for result in run.results.values {
            #expect(result.passed, "\(result.id): \(result.reason)")
            let units = result.delta?.entries.filter { $0.category == .units }.map(\.entry.key) ?? []
            #expect(units == ["kernel-tuning-boot.service"], "\(result.id): units in the delta: \(units)")
        }
    }

    /// A unit that never finishes starting is not hidden: the step that set it going times
    /// out and the verdict names the unit.
    @Test func aUnitStillStartingAtTheStepsTimeOutIsATimeoutNamingIt() async throws {
        _ = try await SharedLab.shared.lab()
        let project = try ScratchProject(packages: [
            "cl-stuck-probe": [
                "package.yaml": """
                    name: cl-stuck-probe
                    version: 1.0
                    sources: [src]
                    build: [{run: mkdir -p "$DESTDIR/usr/share/doc/cl-stuck-probe"}]
                    install:
                      - {name: start a slow unit, run: "systemd-run --no-block --unit=cl-stuck -p Type=oneshot sleep 600", timeout: 15}
                    """,
                "src/README": "starts a unit that stays activating\n",
            ]
        ])
        defer { project.remove() }
        let run = try await MatrixRunner(lab: try project.lab()).run(
            package: "cl-stuck-probe", options: Self.options([.install], baselines: ["minimal"]))
        let cell = try #require(run.results["minimal.install"])
        #expect(cell.verdict == .timeout)
        #expect(cell.reason.contains("'start a slow unit'"), "\(cell.reason)")
        #expect(cell.reason.contains("cl-stuck.service"), "\(cell.reason)")
        let step = try #require(cell.steps.first { $0.name == "start a slow unit" })
        #expect(step.status == .timedOut)
        #expect(step.seconds < 40, "bounded by the step's time-out of 15 s, took \(step.seconds) s")
    }

    /// The incremental inventory on a real guest gives the full inventory's snapshot — and so
    /// its delta — after every shipped package is installed and the hidden changes an
    /// mtime-only check would miss, on the same guest.
    @Test func theIncrementalInventoryEqualsTheFullOneOnTheSameGuest() async throws {
        let (lab, _) = try await SharedLab.shared.lab()
        let image = try lab.readyImage("db")
        let watch = try lab.baselines.load("db").watch
        let store = ArtifactStore(home: lab.home)
        var debs: [String] = []
        for package in ["greeterd", "kernel-tuning", "session-store"] {
            let manifest = try await PackageBuilder(lab: lab).build(package).manifest
            debs.append(store.debPath(manifest.digest))
        }
        let baseline = try await lab.baselineInventory(image)
        try await lab.withRestored(image) { guest in
            let (listing, _) = try await lab.slotListing(for: guest, watching: watch)
            let agent = guest.agent
            _ = try await agent.capture(["mkdir", "-p", "/var/tmp/changelab"])
            for (index, deb) in debs.enumerated() {
                try await agent.upload(file: deb, to: "/var/tmp/changelab/\(index).deb")
            }
            let changes = try await agent.shell(
                """
                set -e
                export DEBIAN_FRONTEND=noninteractive
                dpkg -i /var/tmp/changelab/0.deb /var/tmp/changelab/1.deb /var/tmp/changelab/2.deb
                # content changed, its mtime forced back
                touch -r /etc/hostname /tmp/stamp; echo changed >> /etc/hostname; touch -r /tmp/stamp /etc/hostname
                chmod 0600 /etc/issue.net
                chown 1:1 /etc/debian_version
                cp -p /etc/host.conf /tmp/hc; rm /etc/host.conf; cp -p /tmp/hc /etc/host.conf
                ln -s /etc/issue /etc/cl-link; ln -sfn /etc/motd /etc/cl-link
                ln /etc/issue /etc/cl-hardlink
                echo noise > /etc/ld.so.cache
                mkdir -p /etc/__pycache__; echo noise > /etc/__pycache__/x.pyc
                """, timeout: .seconds(300))
            #expect(changes.succeeded, "\(changes.stderrText)")
            let full = try await lab.collector(for: guest, watching: watch).collect().snapshot
            let incremental = try await lab.incrementalCollector(for: guest, watching: watch).collect(against: listing)
            #expect(incremental.inventory.snapshot == full)
            let delta = ConfigurationDelta(from: baseline, to: incremental.inventory.snapshot)
            #expect(delta == ConfigurationDelta(from: baseline, to: full))
            let items = CellAttempt.describe(delta)
            for expected in [
                "files /etc/hostname changed", "files /etc/issue.net changed", "files /etc/debian_version changed",
                "files /etc/cl-link added", "files /etc/cl-hardlink added", "packages session-store:all added",
            ] {
                #expect(items.contains(expected), "\(expected) missing from \(items)")
            }
            #expect(!items.contains { $0.contains("ld.so.cache") || $0.contains("__pycache__") })
            #expect(incremental.hashed < listing.entries.count / 4, "hashed \(incremental.hashed) files")
            // Unit-file states: only the units whose files or symlinks changed were asked about.
            let asked = try #require(incremental.unitsAsked, "every unit's state was asked: the listing has no unit data")
            #expect(asked.contains("greeterd.service") && asked.count < 40, "asked about \(asked)")
            // ...and the scan answered for them itself: one guest command in all.
            #expect(incremental.commands == 1, "\(incremental.commands) guest commands")
        }
    }

    @Test func theUpgradeLaneInstallsTheEarlierReleaseFirst() async throws {
        let (lab, _) = try await SharedLab.shared.lab()
        // Release 1.0.0 of a package, then test 1.1.0 with the upgrade lane.
        func files(_ version: String) -> [String: String] {
            [
                "package.yaml": """
                    name: cl-upgrade-probe
                    version: \(version)
                    sources: [src]
                    build:
                      - run: install -D -m 0644 src/version "$DESTDIR/etc/cl-upgrade-probe/version"
                    expected-delta: {paths: [/etc/cl-upgrade-probe], packages: [cl-upgrade-probe]}
                    """,
                "src/version": version + "\n",
                "tests/10-version": "#!/bin/sh\ngrep -qx '1.1.0' /etc/cl-upgrade-probe/version\n",
            ]
        }
        let old = try ScratchProject(packages: ["cl-upgrade-probe": files("1.0.0")])
        let new = try ScratchProject(packages: ["cl-upgrade-probe": files("1.1.0")])
        defer {
            old.remove()
            new.remove()
        }
        let released = try await PackageBuilder(lab: try old.lab()).build("cl-upgrade-probe").manifest
        try ArtifactStore(home: lab.home).markReleased(released)
        let run = try await MatrixRunner(lab: try new.lab()).run(
            package: "cl-upgrade-probe", options: Self.options([.upgrade], baselines: ["minimal"]))
        let cell = try #require(run.results["minimal.upgrade"])
        #expect(cell.passed, "\(cell.reason)")
        #expect(cell.upgradedFrom == "1.0.0")
        #expect(cell.steps.contains { $0.phase == .upgradeFrom && $0.status == .passed })
    }

    @Test func aHangingInstallAndARebootThatNeverComesBackAreTimeouts() async throws {
        _ = try await SharedLab.shared.lab()
        let project = try ScratchProject(packages: [
            "cl-hang-probe": [
                "package.yaml": """
                    name: cl-hang-probe
                    version: 1.0
                    sources: [src]
                    build: [{run: mkdir -p "$DESTDIR/usr/share/doc/cl-hang-probe"}]
                    install:
                      - {name: install, run: dpkg -i "$ARTIFACT"}
                      - {name: hang, run: sleep 600, timeout: 5}
                    """,
                "src/README": "hangs\n",
            ],
            "cl-noreboot-probe": [
                "package.yaml": """
                    name: cl-noreboot-probe
                    version: 1.0
                    sources: [src]
                    build: [{run: mkdir -p "$DESTDIR/usr/share/doc/cl-noreboot-probe"}]
                    install:
                      - {name: block reboots, run: systemctl mask reboot.target}
                      - {name: reboot, reboot: true, timeout: 20}
                    """,
                "src/README": "never reboots\n",
            ],
        ])
        defer { project.remove() }
        let lab = try project.lab()
        let hang = try await MatrixRunner(lab: lab).run(
            package: "cl-hang-probe", options: Self.options([.install], baselines: ["minimal"]))
        let hung = try #require(hang.results["minimal.install"])
        #expect(hung.verdict == .timeout)
        #expect(hung.reason == "install step 'hang' timed out after 5 s")

        let noReboot = try await MatrixRunner(lab: lab).run(
            package: "cl-noreboot-probe", options: Self.options([.install], baselines: ["minimal"]))
        let stuck = try #require(noReboot.results["minimal.install"])
        #expect(stuck.verdict == .timeout)
        #expect(stuck.reason.contains("did not come back from the reboot within 20 s"), "\(stuck.reason)")
        // Nothing is left running after either.
        let connection = try await lab.connection()
        for domain in try await connection.domains() where domain.name.hasPrefix("cl-minimal-") {
            #expect(try await domain.state().isActive == false || lab.isKept(domain.name) == false)
        }
    }

    @Test func aFailingBuildStepIsNamedWithTheTailOfItsLog() async throws {
        _ = try await SharedLab.shared.lab()
        let project = try ScratchProject(packages: [
            "cl-broken-build": [
                "package.yaml": """
                    name: cl-broken-build
                    version: 1.0
                    sources: [src]
                    build:
                      - {name: configure, run: echo checking for a compiler}
                      - {name: compile, run: "echo 'error: missing.h: no such file' >&2; exit 3"}
                    """,
                "src/main.c": "int main(void) { return 0; }\n",
            ]
        ])
        defer { project.remove() }
        do {
            _ = try await PackageBuilder(lab: try project.lab()).build("cl-broken-build")
            Issue.record("a failing build step must fail the build")
        } catch let error as PackageBuildError {
            #expect(error.step == "compile")
            #expect(error.status == "exit 3")
            #expect(error.logTail.contains("error: missing.h: no such file"))
            #expect("\(error)".contains("failed at step 'compile' (exit 3)"))
        }
    }

    /// A second lab host reached over qemu+ssh (this machine, through lab/setup
    /// --ssh-loopback, with CHANGELAB_HOME as the shared path): cells spread over both hosts
    /// and each host restores slots saved by its own libvirtd.
    @Test func cellsSpreadOverSeveralLabHostsIncludingOneReachedOverSSH() async throws {
        _ = try await SharedLab.shared.lab()
        let project = try ScratchProject(
            packages: [:],
            hosts: """
                hosts:
                  - {name: local, uri: 'qemu:///system', slots: 1}
                  - {name: loop, uri: 'qemu+ssh://root@127.0.0.1/system?keyfile=/root/.ssh/changelab_loopback&no_verify=1', slots: 1}
                """)
        defer { project.remove() }
        let lab = try project.lab()
        #expect(lab.hosts.totalSlots == 2)
        let run = try await MatrixRunner(lab: lab).run(
            package: "greeterd", options: Self.options([.install], baselines: ["minimal", "web"]))
        for result in run.results.values { #expect(result.passed, "\(result.id): \(result.reason)") }
        #expect(Set(run.results.values.map(\.host)) == ["local", "loop"])
        // The ssh host restored a slot its own libvirtd saved.
        let slots = try lab.readyImage("minimal").slots + lab.readyImage("web").slots
        #expect(slots.contains { $0.host == "loop" && $0.domain.contains("-loop-s") })
    }

    /// Cells after the first start from guests restored ahead, paused: a resume and a clock
    /// set. After the run no guest the pool restored is left running and its overlays are gone.
    @Test func cellsStartFromTheWarmPoolAndNothingIsLeftBehind() async throws {
        let (lab, _) = try await SharedLab.shared.lab()
        var options = Self.options([.install, .reinstall], baselines: ["minimal", "web"])
        options.parallel = 1
        let closed = PoolHistory()
        let run = try await MatrixRunner(lab: lab) { event in
            if case .note(let text) = event { print("[matrix] \(text)") }
            if case .warmPoolClosed(let domains, let overlays) = event { closed.set(domains, overlays) }
        }.run(package: "greeterd", options: options)
        #expect(run.allPassed, "\(MatrixReport.table(run))")
        let results = run.cells.compactMap { run.results[$0.id] }
        let pooled = results.filter(\.timings.fromPool)
        // The first cell restores (nothing was ahead of it); the others find their guest waiting
        // when a saved slot of their baseline was free to restore it on (other runs share the
        // slots, so not always all three).
        #expect(results.first?.timings.fromPool == false)
        #expect(pooled.count >= 1, "no cell started from the pool")
        print("from the pool: \(pooled.map(\.id)) of \(results.map(\.id))")
        for result in pooled {
            let start = result.timings.restore + result.timings.clock
            print(String(format: "%@ started from the pool in %.2f s (resume %.2f, clock %.2f)", result.id, start, result.timings.restore, result.timings.clock))
            // The resume itself; the clock set after it is the same step a restored cell pays
            // (a `date -s` through the agent: 0.3 s quiet, 1.6 s seen at load average 7).
            #expect(result.timings.restore < 1.5, "\(result.id): the resume took \(result.timings.restore) s")
            #expect(result.steps.first?.name.contains("warm pool") == true)
        }
        let history = try #require(closed.value)
        #expect(history.domains.count >= pooled.count)
        for overlay in history.overlays {
            #expect(!FileManager.default.fileExists(atPath: overlay), "\(overlay) left behind")
        }
        // Other engineers' runs share the slots: a domain still running must be theirs (its
        // slot lock held by another process), never one the pool left.
        let connection = try await lab.connection()
        for name in Set(history.domains) {
            guard let domain = try await connection.domain(named: name), try await domain.state().isActive else { continue }
            let lock = try FileLock.tryAcquire(lab.home.slotLock(domain: name))
            #expect(lock == nil, "\(name) is running with nobody holding its slot: the pool leaked it")
            lock?.release()
        }
    }

    @Test func resumeAfterKillingTheHarnessRunsOnlyTheUnfinishedCells() async throws {
        let (lab, _) = try await SharedLab.shared.lab()
        let process = Process()
        process.executableURL = URL(fileURLWithPath: SharedLab.binary)
        process.arguments = [
            "matrix", "run", "--root", SharedLab.repository, "greeterd", "--lanes", "install,uninstall",
            "--baselines", "minimal,web", "--parallel", "1", "--no-record",
        ]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        let exited = ExitWaiter(process)
        let started = Date()
        try process.run()
        // Wait for the first finished cell, then kill the harness without warning.
        var runID: String?
        var first: CellResult?
        for _ in 0..<1200 where first == nil {
            try await Task.sleep(for: .milliseconds(250))
            let runs = (try? FileManager.default.contentsOfDirectory(atPath: lab.home.root + "/runs")) ?? []
            for id in runs where id.hasPrefix("greeterd-") {
                guard let run = try? MatrixRun.load(home: lab.home, id: id), run.startedAt >= started.wholeSeconds else { continue }
                runID = id
                first = run.results.values.first
            }
        }
        let id = try #require(runID)
        let finished = try #require(first)
        kill(process.processIdentifier, SIGKILL)
        _ = await exited.status()
        let interrupted = try MatrixRun.load(home: lab.home, id: id)
        #expect(interrupted.status == .running)
        #expect(interrupted.unfinished.count == 3)

        let resumed = try await HostCommand.run(
            SharedLab.binary,
            ["matrix", "run", "--root", SharedLab.repository, "greeterd", "--resume", id, "--no-record", "--json"],
            timeout: .seconds(1800))
        #expect(resumed.status == 0, "\(resumed.stderrText.suffix(2000))")
        #expect(resumed.stderrText.contains("3 of 4 cells left"))
        let done = try MatrixRun.load(home: lab.home, id: id)
        #expect(done.status == .finished)
        #expect(done.results.count == 4)
        #expect(done.results[finished.id] == finished, "the cell finished before the kill is not run again")
        // Nothing of the killed harness is left running.
        let connection = try await lab.connection()
        let stale = try await connection.domains().filter { $0.name.hasPrefix("cl-") && !lab.isKept($0.name) }
        for domain in stale { #expect(try await domain.state().isActive == false, "\(domain.name) still running") }
    }
}

/// Matrix input errors that need no VM.
extension LabCLITests {
    @Test func anUnknownPackageIsNamedWithTheKnownOnes() async throws {
        let result = try await changelab(["matrix", "run", "no-such-package", "--no-record"])
        #expect(result.status != 0)
        #expect(result.stderrText.contains("unknown package 'no-such-package'"))
        #expect(result.stderrText.contains("greeterd"))
    }

    @Test func aDraftBaselineIsRefusedForTheMatrix() async throws {
        let result = try await changelab(["matrix", "run", "greeterd", "--baselines", "mailrelay", "--no-record"])
        #expect(result.status != 0)
        #expect(result.stderrText.contains("baseline 'mailrelay' is not approved (it is a draft)"))
    }

    @Test func anUnknownLaneIsNamed() async throws {
        let result = try await changelab(["matrix", "run", "greeterd", "--lanes", "install,sideways", "--no-record"])
        #expect(result.status != 0)
        #expect(result.stderrText.contains("unknown lane 'sideways'"))
    }
}

/// Processes that keep the host's cores busy while a test runs: a loaded lab host.
/// Each loop ends by itself after `seconds`, so a test killed without cleanup leaves none
/// behind for long; `stop` kills them (SIGKILL: a shell busy in builtins may not get to a
/// SIGTERM).
final class CPUHogs {
    private let processes: [Process]

    init(count: Int, seconds: Int = 1800) throws {
        var started: [Process] = []
        for _ in 0..<count {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/bin/sh")
            process.arguments = [
                "-c",
                "end=$(( $(date +%s) + \(seconds) )); while [ \"$(date +%s)\" -lt \"$end\" ]; do i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; done",
            ]
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try process.run()
            started.append(process)
        }
        processes = started
    }

    func stop() {
        for process in processes {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }
}

/// What the warm pool reported when it closed.
final class PoolHistory: @unchecked Sendable {
    // @unchecked: guarded by `lock`.
    private let lock = NSLock()
    private var stored: (domains: [String], overlays: [String])?

    func set(_ domains: [String], _ overlays: [String]) { lock.withLock { stored = (domains, overlays) } }
    var value: (domains: [String], overlays: [String])? { lock.withLock { stored } }
}
