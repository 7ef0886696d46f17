import AsyncHTTPClient
import Foundation
import HostIO
import Model
import Testing

@testable import Distribution

/// The operators' console: each change with what blocks it (the gate's own list), the evidence
/// grid, approvals, seeding per segment, the chase list and the agents — from a real core over
/// TLS, and rendered by headless Chromium logged in through the page's own form.
@Suite struct ConsoleTests {
    struct Fleet {
        let agents: AgentGroup
        let manifest: ReleaseManifest
    }

    /// Publishes demo 1.0 as `r1`, enrols pc-gone (s2, minimal@1; stopped at once), pc-min (s1,
    /// minimal@1) and pc-web (s2, web@2), and promotes `r1` to all of them with the lab's evidence
    /// of a green install on minimal and no approval yet.
    static func promoted(
        _ core: TestCore, scratch: Scratch, http: HTTPClient, sites: [String: String] = [:]
    ) async throws -> Fleet {
        let admin = try core.admin
        let deb = try await TestPackage.build(in: scratch.path, size: 40_000)
        let manifest = try await admin.publish(file: deb, release: "r1")
        let token = try await admin.createToken(uses: 3, lifetime: 600)
        let key = await core.key
        func configuration(_ name: String, segment: String, baseline: String) -> AgentConfiguration {
            var attributes = ["baseline": baseline]
            attributes["site"] = sites[name]
            return makeAgentConfiguration(
                core: core, base: scratch.path, name: name, segment: segment, attributes: attributes,
                token: token.token, key: key)
        }
        let gone = AgentGroup()
        _ = gone.start(configuration("pc-gone", segment: "s2", baseline: "minimal@1"), http: http)
        #expect(try await eventually { try await admin.agents().count == 1 })
        await gone.stop()
        let agents = AgentGroup()
        _ = agents.start(configuration("pc-min", segment: "s1", baseline: "minimal@1"), http: http)
        _ = agents.start(configuration("pc-web", segment: "s2", baseline: "web@2"), http: http)
        #expect(try await eventually { try await admin.agents().count == 3 })
        let evidenceOnly = try TestAuthority.shared.authorization(
            change: "r1", package: manifest.package, version: manifest.packageVersion, artifact: manifest.digest,
            baselines: ["minimal"], approvals: 0)
        _ = try await admin.promote(
            "r1",
            PromoteRequest(
                release: nil, targets: "all", rings: nil, rate: nil, maxFailureRate: nil, authorization: evidenceOnly))
        #expect(try await eventually { try await admin.status("r1").total.verified == 2 })
        return Fleet(agents: agents, manifest: manifest)
    }

    @Test func theConsoleShowsEachChangeWithTheGatesBlockersEvidenceGridSegmentsChaseListAndAgents() async throws {
        try await withCore { core, scratch, http in
            let admin = try core.admin
            let fleet = try await Self.promoted(core, scratch: scratch, http: http)
            let viewer = CoreClient(
                url: core.url, adminToken: try await admin.addOperator("vera", role: .viewer).token, client: http)

            let console = try await viewer.console()
            #expect(console.trustRoot == TestAuthority.shared.digest)
            let change = try #require(console.changes.first)
            #expect(console.changes.count == 1 && console.changesTotal == 1)
            #expect(change.change == "r1" && change.package == "demo" && change.version == "1.0")
            #expect(change.digest == fleet.manifest.digest)
            #expect(change.phase == .seeding, "pc-gone holds no copy")
            #expect(!change.releaseApproved)
            #expect(change.nextStep == "activation")
            #expect(change.blockers == ["the release has 0 of the 2 approval(s) it needs from ccb"])
            // The blockers are the gate's refusal, sentence for sentence.
            do {
                _ = try await admin.activate("r1")
                Issue.record("the core activated a change without release approvals")
            } catch {
                #expect(
                    "\(error)".contains("may not be activated: " + change.blockers.joined(separator: "; ")), "\(error)")
            }

            // The grid: the tested baseline green, the untested one a target runs shown missing.
            #expect(change.evidence.lanes == ["install"] && change.evidence.requiredLanes == ["install"])
            #expect(change.evidence.rows.map(\.baseline) == ["minimal", "web"])
            #expect(change.evidence.rows.map(\.targets) == [2, 1])
            #expect(
                change.evidence.rows.first?.cells
                    == [ConsoleEvidenceCell(lane: "install", verdict: "passed", green: true, tested: "minimal@1")])
            #expect(change.evidence.rows.last?.cells.map(\.verdict) == ["missing"])
            #expect(change.evidence.statements.map(\.verified) == [true])
            #expect(change.evidence.statements.first?.cells == 1)
            #expect(change.evidence.statements.first?.shownTo == [], "no approval names it yet")
            #expect(change.approvals.isEmpty)

            #expect(change.segments.map(\.segment) == ["s1", "s2"])
            #expect(change.segments.map(\.targets) == [1, 2])
            #expect(change.segments.map(\.verified) == [1, 1])
            #expect(change.chase.map(\.name) == ["pc-gone"] && change.chaseTotal == 1)

            #expect(console.agents.map(\.name) == ["pc-min", "pc-gone", "pc-web"], "by segment, then name")
            #expect(console.agents.map(\.baseline) == ["minimal@1", "minimal@1", "web@2"])
            #expect(console.agentsTotal == 3)
            #expect(
                try await eventually(.seconds(15)) {
                    let agents = try await viewer.console().agents
                    return agents.first { $0.name == "pc-gone" }?.online == false
                        && agents.first { $0.name == "pc-min" }?.online == true
                })
            #expect(try await viewer.console().changes.first?.chase.first?.reason == "offline")

            // Approved: activation runs; the target whose baseline was never tested is chased.
            _ = try await admin.activateApproved("r1")
            #expect(
                try await eventually {
                    try await viewer.console().changes.first?.chase.contains {
                        $0.name == "pc-web" && $0.reason == "baseline not tested"
                    } == true
                })
            #expect(try await eventually { try await viewer.console().changes.first?.total.activated == 1 })
            let after = try #require(try await viewer.console().changes.first)
            #expect(after.releaseApproved)
            #expect(after.phase == .activating)
            #expect(after.blockers == ["2 target(s) do not have it yet: see the chase list"])
            #expect(after.approvals.map(\.signer) == ["ccb-one", "ccb-two"])
            #expect(
                after.evidence.statements.map(\.shownTo) == [["ccb-one", "ccb-two"]], "the evidence behind the approval"
            )
            #expect(
                after.approvals.allSatisfy {
                    $0.verified && $0.counts && $0.role == .ccb && $0.stage == .release && $0.decision == .approve
                })

            // Bounded, with the totals beside what was cut.
            var limits = ConsoleLimits()
            limits.agents = 1
            limits.chase = 1
            limits.text = 20
            let small = await core.server.coordinator.console(limits: limits)
            #expect(small.agents.count == 1 && small.agentsTotal == 3)
            #expect(small.changes.first?.chase.count == 1 && small.changes.first?.chaseTotal == 2)
            #expect(small.changes.first?.blockers.allSatisfy { $0.count <= 20 } == true)

            // Viewers and up only.
            let stranger = CoreClient(url: core.url, adminToken: "nobody:wrong", client: http)
            do {
                _ = try await stranger.console()
                Issue.record("the console answered without a credential")
            } catch let error as LinkError {
                #expect(error.status == 401)
            }
            await fleet.agents.stop()
        }
    }

    @Test func evidenceAndApprovalsThatDoNotVerifyUnderTheTrustRootAreMarkedUnverifiedAndAddNoCell() throws {
        let real = TestAuthority.shared
        let artifact = SHA256Digest(of: "the artifact")
        let scope = ChangeScope(targets: "all")
        let genuine = try real.evidence(package: "demo", version: "1.0", artifact: artifact, baselines: ["minimal"])
        let forged = try real.evidence(
            package: "demo", version: "1.0", artifact: artifact, baselines: ["web"], signer: SigningKey())
        // The attacker's approvers carry the same names as the real ones: only keys decide.
        let attacker = try ThrowawayAuthority()
        let approvals =
            try real.approvals(
                change: "CHG-1", package: "demo", artifact: artifact, scope: scope, evidence: [genuine], count: 1)
            + attacker.approvals(
                change: "CHG-1", package: "demo", artifact: artifact, scope: scope, evidence: [genuine], count: 1)
        let authorization = ChangeAuthorization(
            change: "CHG-1", type: .normal, scope: scope, trustRoots: [real.root], evidence: [genuine, forged],
            approvals: approvals)
        let deployment = Deployment(
            change: "CHG-1", release: "r1", query: "all", rings: [Ring(name: "all", share: 1)], rate: nil,
            maxFailureRate: 0.1, origin: "change", createdAt: Date(), activation: nil, activatedAt: nil, activeRing: 0,
            halted: nil, rollback: nil, targets: [:], authorization: authorization)
        let builder = ConsoleBuilder(
            gate: CoreChangeGate(pinned: real.digest), releases: [:], agents: [:], now: Date(), limits: ConsoleLimits())

        let evidence = builder.evidence(deployment, policy: real.policy, artifact: artifact)
        #expect(evidence.statements.map(\.verified) == [true, false])
        #expect(evidence.statements.map(\.shownTo) == [["ccb-one"], []], "only the trusted approver's approval counts")
        #expect(evidence.statements.last?.problem?.contains("is not the lab's") == true, "\(evidence.statements)")
        #expect(evidence.statements.last?.cells == 0)
        #expect(evidence.rows.map(\.baseline) == ["minimal"], "the forged web cell is not in the grid")

        let shown = builder.approvals(authorization, policy: real.policy, artifact: artifact)
        #expect(shown.map(\.signer) == ["ccb-one", "ccb-one"])
        #expect(shown.map(\.verified) == [true, false])
        #expect(shown.map(\.counts) == [true, false])
        #expect(shown.last?.problem == "not signed by an approver on the trust root")

        // Under another core's trust root nothing is evidence and nobody an approver.
        let elsewhere = builder.evidence(deployment, policy: nil, artifact: artifact)
        #expect(elsewhere.statements.map(\.verified) == [false, false] && elsewhere.rows.isEmpty)
        #expect(builder.approvals(authorization, policy: nil, artifact: artifact).allSatisfy { !$0.verified })
    }

    @Test func anApprovedChangeInAFreezeWindowBelowReadinessShowsTheGatesOwnRefusalAsItsBlockers() throws {
        let authority = try ThrowawayAuthority(readiness: 0.95)
        var policy = authority.policy
        policy.freezes = [
            FreezeWindow(
                name: "year-end", from: Date().addingTimeInterval(-3600), until: Date().addingTimeInterval(3600))
        ]
        let root = try TrustChain.sign(policy, with: authority.approvers.map(\.key))
        let scratch = Scratch("console-freeze")
        defer { scratch.cleanup() }
        try Data("a package".utf8).write(to: URL(fileURLWithPath: scratch.path + "/demo.deb"))
        let manifest = try ReleaseManifest.build(
            file: scratch.path + "/demo.deb", release: "r1", package: "demo", packageVersion: "1.0", chunkSize: 4096)
        var authorization = try authority.authorization(
            change: "CHG-1", package: "demo", version: "1.0", artifact: manifest.digest, baselines: ["minimal"])
        authorization.trustRoots = [root]
        let gate = CoreChangeGate(pinned: try #require(root.payloadDigest))
        let all = [Ring(name: "all", share: 1)]

        // Half the targets hold a verified copy.
        var seeded = TargetRecord(agent: "a-1", ring: 0, at: Date())
        seeded.phase = .verified
        let deployment = Deployment(
            change: "CHG-1", release: "r1", query: "all", rings: all, rate: nil, maxFailureRate: 0.1, origin: "change",
            createdAt: Date(), activation: nil, activatedAt: nil, activeRing: 0, halted: nil, rollback: nil,
            targets: ["a-1": seeded, "a-2": TargetRecord(agent: "a-2", ring: 0, at: Date())],
            authorization: authorization)
        let found = gate.activationBlockers(
            authorization, change: "CHG-1", manifest: manifest, query: "all", rings: all,
            seededShare: deployment.seededShare, now: Date())
        #expect(found.release.isEmpty && found.refusal == nil)
        #expect(
            found.timing == [
                "the freeze window 'year-end' is open (only emergency changes may activate in it)",
                "50% of the targets hold a verified copy; the policy needs 95% before activation",
            ])
        do {
            _ = try gate.checkActivation(
                authorization, change: "CHG-1", manifest: manifest, query: "all", rings: all,
                seededShare: deployment.seededShare, now: Date())
            Issue.record("the gate activated in a freeze window")
        } catch {
            #expect("\(error)" == "change CHG-1 may not be activated: " + found.all.joined(separator: "; "))
        }

        var total = SegmentStatus(segment: "total")
        total.targets = 2
        total.verified = 1
        let status = StatusReport(
            change: "CHG-1", release: "r1", origin: "change", query: "all", packageBytes: 9, rings: all,
            activationRequested: false, activeRing: 0, halted: nil, rollbackRequested: false, segments: [], total: total
        )
        let builder = ConsoleBuilder(
            gate: gate,
            releases: [
                "r1": ReleaseRecord(
                    manifest: manifest, signedManifest: try SigningKey().sign(manifest, as: .releaseManifest))
            ],
            agents: [:], now: Date(), limits: ConsoleLimits())
        let change = builder.change(deployment, status: status, chase: [])
        #expect(change.releaseApproved, "approved, only not now")
        #expect(change.phase == .seeding)
        #expect(change.blockers == found.all)
        #expect(change.approvals.count == 2 && change.approvals.allSatisfy(\.counts))

        // A scope the approval does not cover is refused with the gate's status and shown as the one blocker.
        let wider = gate.activationBlockers(
            authorization, change: "CHG-1", manifest: manifest, query: "site = paris", rings: all, seededShare: 1,
            now: Date())
        #expect(wider.refusal != nil && wider.release.count == 1)
        #expect(wider.release.first?.contains("approved for targets 'all', not 'site = paris'") == true)
    }

    @Test func deliveryPhasesFollowTheOrdersAndTheTargetsCounts() {
        func report(
            targets: Int, verified: Int = 0, activated: Int = 0, rolledBack: Int = 0, activation: Bool = false,
            halted: String? = nil, rollback: Bool = false
        ) -> StatusReport {
            var total = SegmentStatus(segment: "total")
            total.targets = targets
            total.verified = verified
            total.activated = activated
            total.rolledBack = rolledBack
            return StatusReport(
                change: "c", release: "r", origin: "change", query: "all", packageBytes: 1, rings: [],
                activationRequested: activation, activeRing: 0, halted: halted, rollbackRequested: rollback,
                segments: [], total: total)
        }
        #expect(DeliveryPhase(report(targets: 3, verified: 2)) == .seeding)
        #expect(DeliveryPhase(report(targets: 3, verified: 3)) == .seeded)
        #expect(DeliveryPhase(report(targets: 3, verified: 3, activated: 1, activation: true)) == .activating)
        #expect(
            DeliveryPhase(report(targets: 3, verified: 3, activated: 1, activation: true, halted: "ring canary"))
                == .halted)
        #expect(DeliveryPhase(report(targets: 3, verified: 3, activated: 3, activation: true)) == .deployed)
        #expect(
            DeliveryPhase(report(targets: 3, activated: 3, rolledBack: 1, activation: true, rollback: true))
                == .rollingBack)
        #expect(DeliveryPhase(report(targets: 3, rolledBack: 3, activation: true, rollback: true)) == .rolledBack)
    }

    @Test(
        .enabled(
            if: FileManager.default.isExecutableFile(atPath: "/usr/bin/chromium")
                && HostCommand.resolve("python3") != nil,
            "needs Debian's chromium and python3 (which drives it over the DevTools pipe)"))
    func theConsoleInHeadlessChromiumAgainstARealCoreShowsBlockersEvidenceChaseAndAgentsAndStaysLive() async throws {
        try await withMachineToItself {
            let hostileImage = "<img src=x onerror=\"document.title='pwned'\">"
            let hostileScript = "<script>document.title='pwned'</script>"
            try await withCore { core, scratch, http in
                let admin = try core.admin
                let fleet = try await Self.promoted(
                    core, scratch: scratch, http: http, sites: ["pc-min": hostileImage, "pc-gone": hostileScript])
                let token = try await admin.addOperator("vera", role: .viewer).token
                let driver = scratch.path + "/drive.py"
                try Self.driver.write(toFile: driver, atomically: true, encoding: .utf8)
                // The page logs in through its own form, renders, then must follow the activation live:
                // within 25 s, before its own 30 s timer would refresh it, so through the status stream.
                let browser = Task {
                    try await HostCommand.run(
                        "python3",
                        [
                            driver, "/usr/bin/chromium", core.url + "/", token, scratch.path,
                            "the release has 0 of the 2 approval(s)", "baseline not tested",
                        ], timeout: .seconds(180))
                }
                let first = scratch.path + "/dom1.json"
                let rendered = await eventually(.seconds(120)) { FileManager.default.fileExists(atPath: first) }
                if rendered { _ = try await admin.activateApproved("r1") }
                let result = try await browser.value
                #expect(result.succeeded, "\(result.stdoutText) \(result.stderrText)")
                let before = try Self.snapshot(first)
                let after = try Self.snapshot(scratch.path + "/dom2.json")
                for snapshot in [before, after] {
                    let dom = snapshot.console
                    #expect(snapshot.found)
                    #expect(snapshot.elements == 0, "an element was made from hostile text")
                    #expect(snapshot.title != "pwned")
                    #expect(dom.contains("&lt;img src=x onerror="), "the hostile site shows as text")
                    #expect(dom.contains("&lt;script&gt;document.title="))
                    #expect(!dom.contains("<img") && !dom.contains("<script"))
                    for name in ["pc-min", "pc-web", "pc-gone", "r1", "demo 1.0", "s1", "s2"] {
                        #expect(dom.contains(name), "\(name) is not on the console")
                    }
                    #expect(snapshot.login == "logged in as vera (viewer)")
                }
                // Before approval: the blocker, the grid (green on minimal, missing on web), the chased target.
                let dom = before.console
                #expect(dom.contains("not release-approved"))
                #expect(dom.contains("the release has 0 of the 2 approval(s) it needs from ccb"))
                #expect(dom.contains("<td class=\"green\">passed (minimal@1)</td>"), "\(dom.prefix(2000))")
                #expect(dom.contains("<td class=\"missing\">missing</td>"))
                #expect(dom.contains("install (required)"))
                #expect(dom.contains("verified lab evidence, 1 cell(s), named by no counted approval"))
                #expect(dom.contains("Chase list (1)"))
                // After: approved by two CCB members, and pc-web chased for its untested baseline.
                #expect(after.console.contains("release approved") && !after.console.contains("not release-approved"))
                #expect(after.console.contains("ccb-one") && after.console.contains("ccb-two"))
                #expect(after.console.contains("baseline not tested"))
                #expect(after.console.contains("verified lab evidence, 1 cell(s), shown to ccb-one, ccb-two"))
                await fleet.agents.stop()
            }
        }
    }

    struct Snapshot: Decodable {
        var html: String
        var title: String
        var elements: Int
        var login: String
        var found: Bool

        /// The console's part of the page (the rest holds the script's own source).
        var console: String {
            guard let start = html.range(of: "<main id=\"console\">"),
                let end = html[start.upperBound...].range(of: "</main>")
            else { return "" }
            return String(html[start.upperBound..<end.lowerBound])
        }
    }

    static func snapshot(_ path: String) throws -> Snapshot {
        try JSONDecoder().decode(Snapshot.self, from: try Data(contentsOf: URL(fileURLWithPath: path)))
    }

    /// Drives headless Chromium over the DevTools pipe (fds 3 and 4): opens the console, logs in
    /// through its form, and saves the DOM (as `domN.json`) once it shows each expected text.
    static let driver = #"""
        import json, os, subprocess, sys, time

        chrome, url, token, out = sys.argv[1:5]
        needles = sys.argv[5:]
        cmd_r, cmd_w = os.pipe()
        res_r, res_w = os.pipe()

        def child():
            a, b = os.dup(cmd_r), os.dup(res_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        proc = subprocess.Popen(
            [chrome, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
             "--ignore-certificate-errors", "--no-first-run", "--user-data-dir=" + out + "/profile", "about:blank"],
            preexec_fn=child, close_fds=False, stdout=subprocess.DEVNULL, stderr=open(out + "/chromium.log", "w"))
        os.close(cmd_r)
        os.close(res_w)
        buffer = b""
        counter = 0
        session = None

        def send(method, params=None, session=None):
            global buffer, counter
            counter += 1
            message = {"id": counter, "method": method, "params": params or {}}
            if session:
                message["sessionId"] = session
            os.write(cmd_w, json.dumps(message).encode() + b"\0")
            while True:
                while b"\0" not in buffer:
                    chunk = os.read(res_r, 1 << 16)
                    if not chunk:
                        sys.exit("chromium closed the DevTools pipe during " + method)
                    buffer += chunk
                raw, buffer = buffer.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == counter:
                    if "error" in reply:
                        sys.exit(method + " failed: " + json.dumps(reply["error"]))
                    return reply.get("result", {})

        def evaluate(expression):
            result = send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session)
            if "exceptionDetails" in result:
                sys.exit("the page threw on " + expression[:60] + ": " + json.dumps(result["exceptionDetails"])[:400])
            return result.get("result", {}).get("value")

        def wait_for(expression, seconds):
            deadline = time.time() + seconds
            while time.time() < deadline:
                if evaluate(expression):
                    return True
                time.sleep(0.2)
            return False

        try:
            target = send("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            send("Page.navigate", {"url": url}, session)
            if not wait_for("document.readyState === 'complete' && !!document.getElementById('login')", 30):
                sys.exit("the console page did not load")
            evaluate("document.getElementById('token').value = " + json.dumps(token)
                     + "; document.getElementById('login').requestSubmit(); true")
            for index, needle in enumerate(needles, start=1):
                # After the first: 25 s, less than the page's own 30 s timer, so only the status stream can bring it.
                found = wait_for("document.getElementById('console').textContent.includes(" + json.dumps(needle) + ")",
                                 60 if index == 1 else 25)
                state = evaluate(
                    "JSON.stringify({html: document.documentElement.outerHTML, title: document.title, "
                    + "elements: document.querySelectorAll('#console img, #console script, #console iframe, "
                    + "#console svg, #console a, #console object').length, "
                    + "login: document.getElementById('login-status').textContent})")
                snapshot = json.loads(state)
                snapshot["found"] = found
                with open(out + "/dom%d.tmp" % index, "w") as f:
                    json.dump(snapshot, f)
                os.rename(out + "/dom%d.tmp" % index, out + "/dom%d.json" % index)
                if not found:
                    sys.exit("the page never showed " + json.dumps(needle))
        finally:
            try:
                send("Browser.close")
            except BaseException:
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        """#
}
