import AsyncHTTPClient
import Foundation
import HostIO
import Model
import Testing

@testable import Distribution

/// An agent the core no longer knows enrols again when given a new token.
@Suite struct ReenrolmentTests {
    @Test func anAgentRefusedAfterACoreRestoreEnrolsAgainWithANewToken() async throws {
        let scratch = Scratch("reenrol")
        defer { scratch.cleanup() }
        let http = try TestTLS.client()
        defer { _ = http.shutdown() }
        let directory = scratch.path + "/core"
        let core = try TestCore(directory: directory, http: http)
        try await core.start()
        // The backup is taken before the agent enrols.
        try await Task.sleep(for: .milliseconds(200))
        try FileManager.default.copyItem(atPath: directory, toPath: scratch.path + "/backup")
        let first = try await core.admin.createToken(uses: 1, lifetime: 600)
        let key = await core.key
        var configuration = makeAgentConfiguration(
            core: core, base: scratch.path, name: "pc-1", token: first.token, key: key)
        let group = AgentGroup()
        _ = group.start(configuration, http: http)
        #expect(try await eventually { try await core.admin.agents().count == 1 })
        await group.stop()
        await core.stop()

        // The core is restored from the backup: it has never heard of the agent.
        try FileManager.default.removeItem(atPath: directory)
        try FileManager.default.copyItem(atPath: scratch.path + "/backup", toPath: directory)
        let restored = try TestCore(directory: directory, http: http)
        // On a port of its own: a test running beside this one may have taken the old one.
        try await restored.start()
        #expect(try await restored.admin.agents().isEmpty)
        let second = try await restored.admin.createToken(uses: 1, lifetime: 600)
        configuration.enrolmentToken = second.token
        configuration.coreURL = restored.url
        let again = AgentGroup()
        let agent = again.start(configuration, http: http)
        // Refused (401), it enrols again with the new token and checks in as a new identity.
        // The core lists the new identity as soon as it answers; the agent takes it up just after.
        let back = try await eventually(.seconds(30)) {
            let listed = try await restored.admin.agents()
            let id = await agent.agentID
            return listed.first?.name == "pc-1" && listed.map(\.id) == [id ?? ""]
        }
        let id = await agent.agentID
        let listed = try await restored.admin.agents().map(\.id)
        await again.stop()
        await restored.stop()
        #expect(back)
        #expect(id != nil && listed == [id ?? ""])
        let saved = try StableJSON.decode(
            AgentIdentity.self, from: try Data(contentsOf: URL(fileURLWithPath: configuration.stateDirectory + "/identity.json")))
        #expect(saved.agent == id)
    }
}
