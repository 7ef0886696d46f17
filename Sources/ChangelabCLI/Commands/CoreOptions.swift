import ArgumentParser
import AsyncHTTPClient
import Distribution
import Foundation
import Model

/// `--core URL` and the admin token: how the rollout commands reach the core.
struct CoreOptions: ParsableArguments {
    @Option(
        name: .long,
        help: ArgumentHelp("The core's URL (default: $CHANGELAB_CORE or http://127.0.0.1:7480).", valueName: "url"))
    var core: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "The core's state directory, whose admin.token is used (default: /var/lib/changelab/core).",
            valueName: "dir"))
    var coreState: String?

    var url: String {
        core ?? ProcessInfo.processInfo.environment["CHANGELAB_CORE"] ?? "http://127.0.0.1:7480"
    }

    /// `$CHANGELAB_ADMIN_TOKEN`, else the core state directory's admin.token.
    func adminToken() throws -> String {
        if let token = ProcessInfo.processInfo.environment["CHANGELAB_ADMIN_TOKEN"], !token.isEmpty { return token }
        let path = CoreLayout(directory: coreState ?? CoreServeCommand.defaultState).adminToken
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ChangelabError(
                "no admin token at \(path)",
                fix:
                    "pass --core-state DIR (the folder 'changelab core serve --state' uses) or set CHANGELAB_ADMIN_TOKEN"
            )
        }
        return String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Runs `body` with an admin client; network failures become errors that say what to do.
    func withClient<T: Sendable>(_ body: (CoreClient) async throws -> T) async throws -> T {
        let token = try adminToken()
        return try await withHTTPClient { http in
            try await reachingCore(url) { try await body(CoreClient(url: url, adminToken: token, client: http)) }
        }
    }
}

/// Runs `body` with an HTTP client that is shut down afterwards on every path.
func withHTTPClient<T: Sendable>(_ body: (HTTPClient) async throws -> T) async throws -> T {
    let client = HTTPLink.makeClient()
    do {
        let result = try await body(client)
        try? await client.shutdown()
        return result
    } catch {
        try? await client.shutdown()
        throw error
    }
}

/// Turns transport errors into a message naming the core and how to fix it.
func reachingCore<T>(_ url: String, _ body: () async throws -> T) async throws -> T {
    do {
        return try await body()
    } catch let error as LinkError {
        throw ChangelabError("\(error)")
    } catch let error as ChangelabError {
        throw error
    } catch is CancellationError {
        throw CancellationError()
    } catch {
        throw ChangelabError(
            "cannot reach the core at \(url)", why: "\(error)",
            fix: "start it with 'changelab core serve' or pass --core URL")
    }
}

/// Reads `--rate 10M` style values.
func parseRate(_ text: String?) throws -> Int64? {
    guard let text else { return nil }
    guard let value = ByteCount.parse(text), value > 0 else {
        throw ValidationError("'\(text)' is not a rate; write bytes per second like 500K, 10M or 1G")
    }
    return value
}

/// Reads `10%` or `0.1`.
func parseShare(_ text: String?) throws -> Double? {
    guard let text else { return nil }
    let body = text.hasSuffix("%") ? String(text.dropLast()) : text
    guard let value = Double(body) else {
        throw ValidationError("'\(text)' is not a share; write it like 10% or 0.1")
    }
    let share = text.hasSuffix("%") ? value / 100 : value
    guard share >= 0, share <= 1 else { throw ValidationError("'\(text)' must be between 0% and 100%") }
    return share
}
