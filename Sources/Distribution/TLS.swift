#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import AsyncHTTPClient
import Crypto
import Foundation
import HostIO
import Model
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS
import SwiftASN1
import X509

/// The core's TLS identity: a P-256 key made at first start (never replaced), a root
/// certificate for that key (self-signed, made once) and a server certificate for the core's
/// names signed by it, renewed with the same key when the names change.
///
/// Clients pin the key. A client trusts the root it saw in its pinned handshake, so a
/// renewed server certificate (same key, same root) verifies without a new handshake.
public struct CoreTLSIdentity: Sendable {
    public let directory: String
    /// Names the certificate covers (DNS names and IP addresses).
    public let names: [String]
    /// `sha256:HEX` of the key's SubjectPublicKeyInfo: what `--core-pin` takes.
    public let pin: String
    let certificatePEM: String
    let keyPEM: String

    public var keyPath: String { directory + "/key.pem" }
    /// The server certificate followed by the root.
    public var certificatePath: String { directory + "/certificate.pem" }
    public var rootPath: String { directory + "/root.pem" }
    static let defaultNames = ["localhost", "127.0.0.1", "::1"]

    struct Stored: Codable {
        var names: [String]
        var notAfter: Date
    }

    /// Loads the key and certificate in `directory`, making the key the first time and a new
    /// certificate (same key) when `names` are not all covered or it is within 30 days of expiry.
    public static func loadOrCreate(directory: String, names extra: [String]) throws -> CoreTLSIdentity {
        for name in extra where !isValidName(name) {
            throw ChangelabError(
                "'\(name)' cannot be a TLS name", fix: "give --tls-name a DNS name (letters, digits, '-', '.') or an IP address")
        }
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        chmod(directory, 0o700)
        let keyPath = directory + "/key.pem"
        let certificatePath = directory + "/certificate.pem"
        let infoPath = directory + "/certificate.json"
        let key: P256.Signing.PrivateKey
        if let data = FileManager.default.contents(atPath: keyPath) {
            do {
                key = try P256.Signing.PrivateKey(pemRepresentation: String(decoding: data, as: UTF8.self))
            } catch {
                throw ChangelabError(
                    "the core's TLS key \(keyPath) cannot be read", why: "\(error)",
                    fix: "restore it from backup (agents pin it); only if it is lost for good, remove it and re-pin every agent")
            }
        } else {
            key = P256.Signing.PrivateKey()
            try AtomicFile.write(Data(key.pemRepresentation.utf8), to: keyPath, permissions: 0o600)
        }
        let rootPath = directory + "/root.pem"
        let rootPEM: String
        if let data = FileManager.default.contents(atPath: rootPath) {
            rootPEM = String(decoding: data, as: UTF8.self)
        } else {
            rootPEM = try makeRoot(key: key)
            try AtomicFile.write(Data(rootPEM.utf8), to: rootPath, permissions: 0o600)
        }
        var wanted = Set(defaultNames).union(extra)
        let stored = FileManager.default.contents(atPath: infoPath).flatMap { try? StableJSON.decode(Stored.self, from: $0) }
        var certificatePEM = FileManager.default.contents(atPath: certificatePath).map { String(decoding: $0, as: UTF8.self) }
        if let stored, certificatePEM != nil, wanted.isSubset(of: stored.names),
            stored.notAfter > Date().addingTimeInterval(30 * 86_400)
        {
            wanted = Set(stored.names)
        } else {
            wanted.formUnion(stored?.names ?? [])
            let notAfter = Date().addingTimeInterval(5 * 365 * 86_400)
            let pem = try makeCertificate(key: key, names: wanted.sorted(), notAfter: notAfter) + rootPEM
            try AtomicFile.write(Data(pem.utf8), to: certificatePath, permissions: 0o600)
            try AtomicFile.write(
                try StableJSON.data(Stored(names: wanted.sorted(), notAfter: notAfter)), to: infoPath, permissions: 0o600)
            certificatePEM = pem
        }
        return CoreTLSIdentity(
            directory: directory, names: wanted.sorted(),
            pin: CorePin.format(SHA256.hash(data: key.publicKey.derRepresentation)),
            certificatePEM: certificatePEM ?? "", keyPEM: key.pemRepresentation)
    }

    static let rootName = "changelab core root"

    /// The root: a CA certificate for the core's own key, valid 30 years.
    static func makeRoot(key: P256.Signing.PrivateKey) throws -> String {
        let subject = try DistinguishedName {
            CommonName(rootName)
            OrganizationName("changelab")
        }
        let extensions = try Certificate.Extensions {
            Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
            Critical(KeyUsage(digitalSignature: true, keyCertSign: true))
        }
        let certificate = try Certificate(
            version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: .init(key.publicKey),
            notValidBefore: Date().addingTimeInterval(-3600), notValidAfter: Date().addingTimeInterval(30 * 365 * 86_400),
            issuer: subject, subject: subject, signatureAlgorithm: .ecdsaWithSHA256, extensions: extensions,
            issuerPrivateKey: .init(key))
        return try certificate.serializeAsPEM().pemString + "\n"
    }

    static func makeCertificate(key: P256.Signing.PrivateKey, names: [String], notAfter: Date) throws -> String {
        let issuer = try DistinguishedName {
            CommonName(rootName)
            OrganizationName("changelab")
        }
        let subject = try DistinguishedName {
            CommonName("changelab core")
            OrganizationName("changelab")
        }
        let alternatives = names.map { name -> GeneralName in
            if let bytes = ipBytes(name) { return .ipAddress(ASN1OctetString(contentBytes: bytes[...])) }
            return .dnsName(name)
        }
        let extensions = try Certificate.Extensions {
            Critical(BasicConstraints.notCertificateAuthority)
            Critical(KeyUsage(digitalSignature: true))
            try ExtendedKeyUsage([.serverAuth])
            SubjectAlternativeNames(alternatives)
        }
        let certificate = try Certificate(
            version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: .init(key.publicKey),
            notValidBefore: Date().addingTimeInterval(-3600), notValidAfter: notAfter, issuer: issuer,
            subject: subject, signatureAlgorithm: .ecdsaWithSHA256, extensions: extensions,
            issuerPrivateKey: .init(key))
        return try certificate.serializeAsPEM().pemString + "\n"
    }

    /// The server side: this certificate and key, TLS 1.2 at least.
    public func serverConfiguration() throws -> TLSConfiguration {
        let chain = try NIOSSLCertificate.fromPEMBytes(Array(certificatePEM.utf8))
        let key = try NIOSSLPrivateKey(bytes: Array(keyPEM.utf8), format: .pem)
        var configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
        configuration.minimumTLSVersion = .tlsv12
        return configuration
    }

    static func ipBytes(_ text: String) -> [UInt8]? {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 { return withUnsafeBytes(of: &v4) { Array($0) } }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 { return withUnsafeBytes(of: &v6) { Array($0) } }
        return nil
    }

    /// Whether `name` can go into the certificate (a DNS name or an IP address).
    public static func isAcceptableName(_ name: String) -> Bool { isValidName(name) }

    static func isValidName(_ name: String) -> Bool {
        if ipBytes(name) != nil { return true }
        return !name.isEmpty && name.utf8.count <= 253 && !name.hasPrefix("-") && !name.hasPrefix(".")
            && name.utf8.allSatisfy { AgentFacts.isAlphanumeric($0) || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: ".") }
    }
}

/// A pinned TLS key: `sha256:` and the hex SHA-256 of its SubjectPublicKeyInfo (DER).
public enum CorePin {
    /// The normalised pin, or nil when `text` is not `sha256:` and 64 hex digits.
    public static func parse(_ text: String) -> String? {
        let lower = text.lowercased()
        guard lower.hasPrefix("sha256:") else { return nil }
        let hex = lower.dropFirst(7)
        guard hex.count == 64, hex.allSatisfy(\.isHexDigit) else { return nil }
        return lower
    }

    static func format(_ digest: SHA256.Digest) -> String {
        "sha256:" + digest.map { String(format: "%02x", $0) }.joined()
    }

    /// The pin of a presented certificate's key.
    static func of(_ certificate: NIOSSLCertificate) throws -> String {
        format(SHA256.hash(data: try certificate.extractPublicKey().toSPKIBytes()))
    }

    /// The pin of a PEM certificate file (the core's own, read on the core's machine).
    public static func of(certificateFile path: String) throws -> String {
        let certificates = try NIOSSLCertificate.fromPEMFile(path)
        guard let first = certificates.first else { throw ChangelabError("\(path) holds no certificate") }
        return try of(first)
    }
}

/// How agents and the CLI decide that they talk to the real core.
public enum CoreTrust: Sendable, Equatable {
    /// The core's TLS key must hash to this pin (`sha256:HEX`).
    case pin(String)
    /// The core's certificate must chain to a certificate in this PEM file (an organisation's CA).
    case caBundle(String)
    /// The system's trust store (a core with a certificate from a public CA).
    case system
}

/// Connects once to the core with a verification callback that accepts exactly the pinned key,
/// and returns the certificate it presented.
///
/// The HTTP client then trusts that one certificate (full verification, host name included),
/// and nothing else: a different key at the same address fails both here and there.
enum PinnedCertificate {
    final class Seen: @unchecked Sendable {
        // @unchecked: written once on the event loop before the handshake promise completes.
        var certificate: NIOSSLCertificate?
        var presented: String?
    }

    final class HandshakeWaiter: ChannelInboundHandler, RemovableChannelHandler {
        typealias InboundIn = ByteBuffer
        let done: EventLoopPromise<Void>
        init(done: EventLoopPromise<Void>) { self.done = done }

        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if case TLSUserEvent.handshakeCompleted = event { done.succeed(()) }
            context.fireUserInboundEventTriggered(event)
        }

        func errorCaught(context: ChannelHandlerContext, error: Error) {
            done.fail(error)
            context.close(promise: nil)
        }

        func channelInactive(context: ChannelHandlerContext) {
            done.fail(ChannelError.ioOnClosedChannel)
            context.fireChannelInactive()
        }
    }

    static func fetch(url: String, pin: String) async throws -> NIOSSLCertificate {
        guard let components = URLComponents(string: url), components.scheme == "https",
            let host = components.host, !host.isEmpty
        else {
            throw ChangelabError("the core URL '\(url)' is not https://HOST:PORT", fix: "the core serves HTTPS only")
        }
        let port = components.port ?? 443
        let context = try NIOSSLContext(configuration: .makeClientConfiguration())
        let seen = Seen()
        let group = MultiThreadedEventLoopGroup.singleton
        let done = group.next().makePromise(of: Void.self)
        let serverName = CoreTLSIdentity.ipBytes(host) == nil ? host : nil
        let bootstrap = ClientBootstrap(group: group).connectTimeout(.seconds(10)).channelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                let handler = try NIOSSLClientHandler(
                    context: context, serverHostname: serverName,
                    customVerificationCallback: { certificates, promise in
                        guard let leaf = certificates.first, let anchor = certificates.last,
                            let presented = try? CorePin.of(leaf)
                        else {
                            promise.succeed(.failed)
                            return
                        }
                        seen.presented = presented
                        // Trust the root it came with (or the certificate itself if it came alone), and
                        // only if that root is for the same key: nothing else can sign for the core.
                        if presented == pin, (try? CorePin.of(anchor)) == pin, let der = try? anchor.toDERBytes(),
                            let copy = try? NIOSSLCertificate(bytes: der, format: .der)
                        {
                            // A copy of its own: the handshake's certificate objects belong to that connection.
                            seen.certificate = copy
                            promise.succeed(.certificateVerified)
                        } else {
                            promise.succeed(.failed)
                        }
                    })
                try channel.pipeline.syncOperations.addHandler(handler)
                try channel.pipeline.syncOperations.addHandler(HandshakeWaiter(done: done))
            }
        }
        let channel: Channel
        do {
            channel = try await bootstrap.connect(host: host, port: port).get()
        } catch {
            done.fail(error)
            throw ChangelabError(
                "cannot reach the core at \(url)", why: "\(error)", fix: "start it with 'changelab core serve' or pass --core URL")
        }
        let timeout = channel.eventLoop.scheduleTask(in: .seconds(10)) {
            done.fail(ChangelabError("the TLS handshake with \(url) did not finish in 10 s"))
        }
        defer {
            timeout.cancel()
            channel.close(promise: nil)
        }
        do {
            try await done.futureResult.get()
        } catch {
            if let presented = seen.presented, presented != pin {
                throw ChangelabError(
                    "the server at \(url) presented TLS key \(presented), not the pinned \(pin)",
                    why: "either someone else answers at this address, or the core's TLS key was replaced",
                    fix: "check with the core's operator; the core prints its pin at start ('core pin:') and in 'changelab core token'")
            }
            throw ChangelabError("the TLS handshake with the core at \(url) failed", why: "\(error)")
        }
        guard let certificate = seen.certificate else {
            throw ChangelabError("the core at \(url) presented no certificate")
        }
        return certificate
    }
}
