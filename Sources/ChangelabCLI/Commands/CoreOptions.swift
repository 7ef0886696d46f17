import ArgumentParser
import AsyncHTTPClient
import Distribution
import Foundation
import Model

/// `--core URL` and the admin token: how the rollout commands reach the core.
struct CoreOptions: ParsableArguments {
    @Option(
        name: .long,
        help: ArgumentHelp("The core's URL (default: $CHANGELAB_CORE or https://127.0.0.1:7480).", valueName: "url"))
    var core: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "The core's TLS key pin, as 'changelab core serve' and 'core token' print it (default: $CHANGELAB_CORE_PIN, "
                + "else the pin of the certificate in --core-state).",
            valueName: "sha256:hex"))
    var corePin: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Trust the core's certificate when it chains to a CA in this PEM file (instead of a pin).", valueName: "file"))
    var caBundle: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "The core's state directory, whose admin.token is used (default: /var/lib/changelab/core).",
            valueName: "dir"))
    var coreState: String?

    var url: String {
        core ?? ProcessInfo.processInfo.environment["CHANGELAB_CORE"] ?? "https://127.0.0.1:7480"
    }

    /// How the CLI knows it talks to the real core: a pin, a CA bundle, or the pin of the
    /// certificate in the core's own state directory (on the core's machine).
    func trust() throws -> CoreTrust {
        let environment = ProcessInfo.processInfo.environment
        if let text = corePin ?? environment["CHANGELAB_CORE_PIN"].flatMap({ $0.isEmpty ? nil : $0 }) {
            guard let pin = CorePin.parse(text) else {
                throw ChangelabError(
                    "'\(text)' is not a TLS key pin", fix: "write it as sha256: and 64 hex digits, as 'changelab core token' prints it")
            }
            return .pin(pin)
        }
        if let bundle = caBundle ?? environment["CHANGELAB_CA_BUNDLE"].flatMap({ $0.isEmpty ? nil : $0 }) {
            return .caBundle(bundle)
        }
        let local = CoreLayout(directory: coreState ?? CoreServeCommand.defaultState).tls + "/certificate.pem"
        if FileManager.default.isReadableFile(atPath: local) { return .pin(try CorePin.of(certificateFile: local)) }
        throw ChangelabError(
            "no way to check the core's identity",
            fix: "pass --core-pin sha256:HEX (printed by 'changelab core serve' and 'core token'), --ca-bundle FILE, or --core-state DIR on the core's machine")
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
        let url = self.url
        guard url.lowercased().hasPrefix("https://") else {
            throw ChangelabError(
                "the core URL \(url) is not HTTPS", why: "the core serves HTTPS only; tokens never travel in the clear",
                fix: "write it as https://HOST:PORT")
        }
        let token = try adminToken()
        let trust = try trust()
        return try await withHTTPClient(trust: trust, core: url) { http in
            try await reachingCore(url) { try await body(CoreClient(url: url, adminToken: token, client: http)) }
        }
    }
}

/// Runs `body` with an HTTP client for the core at `core`, shut down afterwards on every path.
func withHTTPClient<T: Sendable>(trust: CoreTrust, core: String, _ body: (HTTPClient) async throws -> T) async throws
    -> T
{
    let client = try await HTTPLink.makeClient(trust: trust, core: core)
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

/// Reads `--rate 10M` style values (at most 1 TiB/s: anything more is a typo, not a rate).
func parseRate(_ text: String?) throws -> Int64? {
    guard let text else { return nil }
    guard let value = ByteCount.parse(text), value > 0, value <= 1 << 40 else {
        throw ChangelabError(
            "--rate '\(text)' is not a rate", fix: "write bytes per second between 1 and 1T, like 500K, 10M or 1G")
    }
    return value
}

/// Reads `10%` or `0.1`.
func parseShare(_ text: String?) throws -> Double? {
    guard let text else { return nil }
    let body = text.hasSuffix("%") ? String(text.dropLast()) : text
    guard let value = Double(body), value.isFinite else {
        throw ChangelabError("'\(text)' is not a share", fix: "write it like 10% or 0.1")
    }
    let share = text.hasSuffix("%") ? value / 100 : value
    guard share >= 0, share <= 1 else { throw ChangelabError("'\(text)' is out of range", fix: "give between 0% and 100%") }
    return share
}
