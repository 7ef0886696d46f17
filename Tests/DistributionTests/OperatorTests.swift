import AsyncHTTPClient
import CMDB
import Foundation
import HostIO
import Model
import NIOCore
import NIOHTTP1
import Testing

@testable import Distribution

/// Named operators with roles, the audit trail, and a dashboard that cannot be turned
/// against the operator who opens it.
@Suite struct OperatorTests {
    /// The status code and body of a raw request to the core.
    func exchange(
        _ http: HTTPClient, _ method: HTTPMethod, _ url: String, headers: [(String, String)] = [], body: String? = nil
    ) async throws -> (status: Int, headers: HTTPHeaders, body: String) {
        var request = HTTPClientRequest(url: url)
        request.method = method
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        if let body { request.body = .bytes(ByteBuffer(string: body)) }
        let response = try await http.execute(request, timeout: .seconds(30))
        let data = try await response.body.collect(upTo: 1 << 20)
        return (Int(response.status.code), response.headers, String(buffer: data))
    }

    @Test func rolesAreEnforcedPerRouteAndEveryActionNamesItsOperator() async throws {
        try await withCore { core, scratch, http in
            let admin = try core.admin
            let viewerToken = try await admin.addOperator("vera", role: .viewer).token
            let deployerToken = try await admin.addOperator("dan", role: .deployer).token
            let viewer = CoreClient(url: core.url, adminToken: viewerToken, client: http)
            let deployer = CoreClient(url: core.url, adminToken: deployerToken, client: http)
            let deb = try await TestPackage.build(in: scratch.path, size: 20_000)

            // A viewer reads, and nothing more.
            #expect(try await viewer.agents().isEmpty)
            await #expect(throws: LinkError.self) { _ = try await viewer.promote("r1", .everyone()) }
            await #expect(throws: LinkError.self) { _ = try await viewer.createToken(uses: 1, lifetime: 60) }
            // A deployer promotes and activates, but cannot publish, make tokens or operators.
            do {
                _ = try await deployer.publish(file: deb, release: "r1")
                Issue.record("a deployer published a release")
            } catch let error as LinkError {
                #expect(error.status == 403)
            }
            await #expect(throws: LinkError.self) { _ = try await deployer.addOperator("eve", role: .admin) }
            _ = try await admin.publish(file: deb, release: "r1")
            _ = try await deployer.promote("r1", .everyone())
            _ = try await deployer.activateApproved("r1")
            _ = try await deployer.rollbackApproved("r1")

            // Who did what is in the core's state, under the operators' names.
            let trail = try await admin.auditTrail().map { "\($0.action) \($0.subject) \($0.operatorName)" }
            for line in ["publish r1 admin", "promote r1 dan", "activate r1 dan", "rollback r1 dan"] {
                #expect(trail.contains(line), "\(trail)")
            }
            let state = try String(contentsOfFile: core.directory + "/state.json", encoding: .utf8)
            #expect(state.contains("\"operatorName\" : \"dan\""))
            // Only token hashes are stored.
            #expect(!state.contains(String(deployerToken.split(separator: ":")[1])))
            // A removed operator's token stops working at once.
            try await admin.removeOperator("dan")
            await #expect(throws: LinkError.self) { _ = try await deployer.agents() }
            #expect(try await admin.operators().map(\.name) == ["admin", "vera"])
        }
    }

    @Test func withACMDBEveryOperatorActionIsATransactionByThatOperator() async throws {
        let cmdb = Scratch("operator-cmdb")
        defer { cmdb.cleanup() }
        let recorder = try await CMDBFleetRecorder(path: cmdb.path + "/cmdb", interval: .seconds(3600), log: { _ in })
        try await withCore(observer: recorder) { core, scratch, http in
            let admin = try core.admin
            let alice = CoreClient(
                url: core.url, adminToken: try await admin.addOperator("alice", role: .admin).token, client: http)
            let deb = try await TestPackage.build(in: scratch.path, size: 20_000)
            _ = try await alice.publish(file: deb, release: "r1")
            _ = try await alice.promote("r1", .everyone())
            _ = try await alice.activateApproved("r1")
            _ = try await alice.rollbackApproved("r1")
            _ = try await alice.setApprovedPolicy("keep-r1", targets: "all", release: "r1")
            try await alice.removePolicy("keep-r1")
            _ = try await alice.addOperator("bob", role: .viewer)
            try await alice.removeOperator("bob")
            _ = try await alice.rotateReleaseKey()
        }
        await recorder.close()

        let store = try CMDBStore.open(cmdb.path + "/cmdb")
        let log = try await store.log().reversed().map { "\($0.operation) \($0.actor): \($0.message)" }
        let expected = [
            "add-operator admin: add-operator alice (admin) (operator admin)",
            "publish alice: publish r1 (operator alice)",
            "promote alice: promote r1 (operator alice)",
            "activate alice: activate r1 (operator alice)",
            "rollback alice: rollback r1 (operator alice)",
            "set-policy alice: set-policy keep-r1 (operator alice)",
            "remove-policy alice: remove-policy keep-r1 (operator alice)",
            "add-operator alice: add-operator bob (viewer) (operator alice)",
            "remove-operator alice: remove-operator bob (operator alice)",
        ]
        #expect(Array(log.dropFirst().prefix(expected.count)) == expected, "\(log)")
        #expect(log.last?.hasPrefix("rotate-release-key alice: rotate-release-key ") == true, "\(log)")
        // Named as an operator, not as the account the core runs as, and signed by the core's writer key.
        let trailers = try await HostCommand.check(
            "git", ["-C", store.path, "log", "-1", "--format=%(trailers:key=Changelab-Actor-Source,valueonly)"])
        #expect(trailers.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines) == "operator")
        let verified = try await store.verify()
        #expect(verified.problems.isEmpty, "\(verified.problems)")
    }

    @Test func theOriginalAdminTokenKeepsWorkingAsOperatorAdmin() async throws {
        try await withCore { core, _, http in
            let bare = try String(contentsOfFile: CoreLayout(directory: core.directory).adminToken, encoding: .utf8)
                .trimmingCharacters(in: .whitespacesAndNewlines)
            let reply = try await exchange(
                http, .GET, core.url + "/v1/admin/operators", headers: [("Authorization", "Bearer \(bare)")])
            #expect(reply.status == 200)
            #expect(reply.body.contains("\"name\" : \"admin\"") && reply.body.contains("\"role\" : \"admin\""))
        }
    }

    @Test func theTokenIsNeverAcceptedFromTheQueryString() async throws {
        try await withCore { core, _, http in
            let token = try core.adminCredential
            let bare = String(token.dropFirst(6))
            for query in [bare, token] {
                let reply = try await exchange(
                    http, .GET,
                    core.url + "/v1/admin/agents?token=" + (query.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? ""))
                #expect(reply.status == 401)
            }
        }
    }

    @Test func theDashboardLogsInWithAnHttpOnlyCookieAndChecksOrigin() async throws {
        try await withCore { core, _, http in
            let token = try core.adminCredential
            let origin = "https://127.0.0.1:\(core.port)"
            let page = try await exchange(http, .GET, core.url + "/")
            let policy = page.headers.first(name: "Content-Security-Policy") ?? ""
            #expect(policy.contains("script-src 'self'") && !policy.contains("unsafe-inline"))
            #expect(page.body.contains("<script src=\"/dashboard.js\"></script>"))
            #expect(!page.body.contains("<script>"), "no inline script")
            #expect(!Dashboard.script.contains("innerHTML"))

            let refused = try await exchange(
                http, .POST, core.url + "/v1/login", headers: [("Origin", origin)], body: "{\"token\":\"admin:wrong\"}")
            #expect(refused.status == 401)
            let login = try await exchange(
                http, .POST, core.url + "/v1/login", headers: [("Origin", origin)], body: "{\"token\":\"\(token)\"}")
            #expect(login.status == 200)
            let cookie = try #require(login.headers.first(name: "Set-Cookie"))
            for flag in ["HttpOnly", "Secure", "SameSite=Strict"] { #expect(cookie.contains(flag), "\(cookie)") }
            let session = try #require(cookie.split(separator: ";").first.map(String.init))
            // The cookie reads…
            #expect(try await exchange(http, .GET, core.url + "/v1/admin/agents", headers: [("Cookie", session)]).status == 200)
            // …and changes state only from the core's own page.
            let path = core.url + "/v1/admin/tokens"
            let body = "{\"uses\":1,\"lifetime\":60}"
            #expect(try await exchange(http, .POST, path, headers: [("Cookie", session)], body: body).status == 403)
            #expect(
                try await exchange(
                    http, .POST, path, headers: [("Cookie", session), ("Origin", "https://evil.example")], body: body
                ).status == 403)
            #expect(
                try await exchange(http, .POST, path, headers: [("Cookie", session), ("Origin", origin)], body: body)
                    .status == 200)
        }
    }

    @Test func anAgentWithAHostileSegmentIsRefusedAtEnrolment() async throws {
        try await withCore { core, _, http in
            let token = try await core.admin.createToken(uses: 1, lifetime: 600)
            let link = HTTPLink(baseURL: core.url, credential: nil, client: http)
            do {
                _ = try await link.post(
                    "/v1/enrol",
                    EnrolRequest(
                        token: token.token, name: "pc-1", segment: "<img src=x onerror=alert(1)>", addresses: [],
                        attributes: [:]), as: EnrolReply.self)
                Issue.record("a hostile segment was enrolled")
            } catch let error as LinkError {
                #expect(error.status == 400)
                #expect(error.description.contains("segment"))
            }
            #expect(try await core.admin.agents().isEmpty)
        }
    }

    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/chromium"), "needs Debian's chromium"))
    func theDashboardInHeadlessChromiumCreatesNoElementFromHostileText() async throws {
        try await withMachineToItself {
            let scratch = Scratch("dashboard")
            defer { scratch.cleanup() }
            // Hostile text in every field the console shows, where an older core may have stored it.
            let hostile = "<img src=x onerror=\"document.title='pwned'\">"
            let text = try String(data: JSONEncoder().encode(hostile), encoding: .utf8) ?? "\"\""
            let segment = "{\"segment\":\(text),\"targets\":1,\"seeded\":1,\"verified\":1,\"activated\":0,\"failed\":0,\"offline\":0,\"bytesSent\":0}"
            let cell = "{\"lane\":\(text),\"verdict\":\(text),\"green\":false,\"tested\":\(text)}"
            let evidence = "{\"lanes\":[\(text)],\"requiredLanes\":[\(text)],\"rows\":[{\"baseline\":\(text),\"targets\":1,\"cells\":[\(cell)]}],"
                + "\"statements\":[{\"run\":\(text),\"verified\":false,\"problem\":\(text),\"cells\":0}]}"
            let approval = "{\"signer\":\(text),\"verified\":false,\"stage\":\(text),\"counts\":false,\"problem\":\(text)}"
            let chase = "{\"name\":\(text),\"segment\":\(text),\"site\":\(text),\"phase\":\(text),\"reason\":\(text),\"detail\":\(text),"
                + "\"seedAttempts\":1,\"activationAttempts\":0,\"lastSeen\":\(text),\"gaveUp\":false}"
            let change = "{\"change\":\(text),\"release\":\(text),\"package\":\(text),\"version\":\(text),\"digest\":\(text),"
                + "\"query\":\(text),\"rings\":\(text),\"phase\":\(text),\"releaseApproved\":false,\"nextStep\":\(text),"
                + "\"blockers\":[\(text)],\"evidence\":\(evidence),\"approvals\":[\(approval)],\"segments\":[\(segment)],"
                + "\"total\":\(segment),\"chase\":[\(chase)],\"chaseTotal\":1}"
            let agent = "{\"name\":\(text),\"segment\":\(text),\"baseline\":\(text),\"site\":\(text),\"online\":true,"
                + "\"revoked\":false,\"lastSeen\":\(text),\"lastRefusal\":\(text)}"
            let reports = "{\"generatedAt\":\(text),\"changes\":[\(change)],\"changesTotal\":1,\"agents\":[\(agent)],\"agentsTotal\":1}"
            // The dashboard's own page and script, with the core's answers stubbed in.
            let page = Dashboard.html.replacingOccurrences(
                of: "<script src=\"/dashboard.js\"></script>",
                with: """
                    <script>
                    window.fetch = async () => ({ok: true, json: async () => (\(reports))});
                    window.EventSource = class { addEventListener() {} };
                    </script><script>\(Dashboard.script)</script>
                    """)
            let file = scratch.path + "/dashboard.html"
            try page.write(toFile: file, atomically: true, encoding: .utf8)
            let result = try await HostCommand.run(
                "/usr/bin/chromium",
                [
                    "--headless", "--no-sandbox", "--disable-gpu", "--user-data-dir=\(scratch.path)/profile",
                    "--virtual-time-budget=3000", "--dump-dom", "file://\(file)",
                ], timeout: .seconds(90))
            // What the script rendered (the stub above holds the hostile text too, as script source).
            let output = result.stdoutText
            let rendered = output.range(of: "<main id=\"console\">").flatMap { start in
                output[start.upperBound...].range(of: "</main>").map { String(output[start.upperBound..<$0.lowerBound]) }
            }
            let dom = try #require(rendered, "no console in: \(output.prefix(300)) \(result.stderrText.suffix(300))")
            #expect(dom.contains("<h2>Changes (1 of 1)</h2>") && dom.contains("<h2>Agents (1 of 1)</h2>"), "the console rendered")
            #expect(dom.contains("<table>") && dom.contains("<li>"), "every section rendered: \(dom.prefix(600))")
            #expect(!dom.contains("<img"), "an element was made from hostile text")
            // Each field shows as text: the change, blocker, grid, approval, segment, chase and agent columns.
            let shown = dom.components(separatedBy: "&lt;img src=x onerror=").count - 1
            #expect(shown >= 25, "the hostile text shows as text in every field (\(shown) times)")
            #expect(!output.contains("<title>pwned</title>"))
        }
    }
}
