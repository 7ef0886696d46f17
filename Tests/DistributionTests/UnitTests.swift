import Crypto
import Foundation
import Model
import Testing

@testable import Distribution

@Suite struct SigningTests {
    let key = ReleaseKey()
    let ticket = JobTicket(
        kind: .activate, change: "chg-1", release: "r1", digest: SHA256Digest(of: "x"), agent: "a-1", sequence: 7,
        order: "o1", origin: "change", rate: nil, attempt: 1, issuedAt: Date(timeIntervalSince1970: 1_800_000_000))

    @Test func aSignedTicketOpensWithTheCoreKey() throws {
        let envelope = try key.sign(ticket, as: .job)
        #expect(try envelope.open(JobTicket.self, as: .job, trusting: [key.publicKey]) == ticket)
        #expect(envelope.signatures.first?.keyid == key.publicKey.keyID)
    }

    @Test func anAlteredPayloadIsRefusedAsForged() throws {
        var envelope = try key.sign(ticket, as: .job)
        var forged = ticket
        forged.agent = "a-2"
        envelope.payload = try StableJSON.data(forged).base64EncodedString()
        #expect(throws: SignatureRefusal.badSignature) {
            try envelope.open(JobTicket.self, as: .job, trusting: [key.publicKey])
        }
    }

    @Test func aSignatureOverAnotherPayloadTypeIsRefused() throws {
        // The same bytes signed as a manifest are no job: the type is inside the signature.
        let asManifest = try key.sign(ticket, as: .releaseManifest)
        var relabelled = asManifest
        relabelled.payloadType = PayloadType.job.rawValue
        #expect(throws: SignatureRefusal.badSignature) {
            try relabelled.open(JobTicket.self, as: .job, trusting: [key.publicKey])
        }
        #expect(throws: SignatureRefusal.self) {
            try asManifest.open(JobTicket.self, as: .job, trusting: [key.publicKey])
        }
    }

    @Test func anotherKeysSignatureIsRefused() throws {
        let envelope = try ReleaseKey().sign(ticket, as: .job)
        #expect(throws: SignatureRefusal.self) { try envelope.open(JobTicket.self, as: .job, trusting: [key.publicKey]) }
        // Even when the forger claims the core's key id, the signature gives it away.
        var claimed = envelope
        claimed.signatures[0].keyid = key.publicKey.keyID
        #expect(throws: SignatureRefusal.badSignature) {
            try claimed.open(JobTicket.self, as: .job, trusting: [key.publicKey])
        }
    }

    @Test func anUnsignedOrUnknownFormatDocumentIsRefused() throws {
        var envelope = try key.sign(ticket, as: .job)
        envelope.signatures = []
        #expect(throws: SignatureRefusal.unsigned) {
            try envelope.open(JobTicket.self, as: .job, trusting: [key.publicKey])
        }
        var future = try key.sign(ticket, as: .job)
        future.version = 3
        #expect(throws: SignatureRefusal.unsupportedFormat(3)) {
            try future.open(JobTicket.self, as: .job, trusting: [key.publicKey])
        }
    }

    @Test func aThresholdCountsDistinctTrustedKeysOnly() throws {
        let second = ReleaseKey()
        let outsider = ReleaseKey()
        var envelope = try key.sign(ticket, as: .job)
        envelope = try second.signing.cosign(envelope)
        envelope = try outsider.signing.cosign(envelope)
        envelope = try second.signing.cosign(envelope)
        let signers = try envelope.signers(as: .job, trusting: [key.publicKey, second.publicKey, second.publicKey])
        #expect(Set(signers.map(\.hex)) == [key.publicKey.hex, second.publicKey.hex])
        #expect(envelope.signatures.count == 3)
    }

    @Test func aFormatOneEnvelopeDecodesButIsNeverAccepted() throws {
        let legacy = #"{"key":"\#(key.publicKey.hex)","payload":"e30K","signature":"AAAA"}"#
        let envelope = try StableJSON.decode(SignedEnvelope.self, from: Data(legacy.utf8))
        #expect(envelope.version == 1)
        #expect(throws: SignatureRefusal.unsupportedFormat(1)) {
            try envelope.open(JobTicket.self, as: .job, trusting: [key.publicKey])
        }
    }

    @Test func rotationsAreFollowedOnlyWhenSignedByTheKeyTheyReplace() throws {
        let second = ReleaseKey()
        let third = ReleaseKey()
        let forger = ReleaseKey()
        let chain = [
            try key.rotation(to: second, at: Date()), try second.rotation(to: third, at: Date()),
        ]
        #expect(KeyRotation.follow(chain, from: key.publicKey) == third.publicKey)
        #expect(KeyRotation.follow(chain.reversed(), from: key.publicKey) == third.publicKey)
        // A rotation the pinned key did not sign leads nowhere.
        let forged = [try forger.rotation(to: ReleaseKey(), at: Date())]
        #expect(KeyRotation.follow(forged, from: key.publicKey) == key.publicKey)
        var relabelled = try forger.rotation(to: forger, at: Date())
        relabelled.signatures[0].keyid = key.publicKey.keyID
        #expect(KeyRotation.follow([relabelled], from: key.publicKey) == key.publicKey)
    }

    @Test func safeNamesRefuseEverythingThatCouldBeAPath() {
        for bad in ["", "../../etc", "a/b", "..", ".hidden", "-rf", "a..b", "x\u{0}", String(repeating: "a", count: 129), "é"] {
            #expect(SafeName.problem(bad) != nil, "\(bad.debugDescription) was accepted")
        }
        for good in ["CHG-0001", "greeterd-1.1.0", "policy:web-tls", "r1", "libfoo+bar_2.0"] {
            #expect(SafeName.problem(good) == nil, "\(good) was refused")
        }
    }

    @Test func theReleaseKeyPersistsAndAPublicKeyParsesFromHex() throws {
        let scratch = Scratch()
        defer { scratch.cleanup() }
        let first = try ReleaseKey.loadOrCreate(at: scratch.path + "/key")
        let second = try ReleaseKey.loadOrCreate(at: scratch.path + "/key")
        #expect(first.publicKey == second.publicKey)
        #expect(ReleasePublicKey(hex: first.publicKey.hex) == first.publicKey)
        #expect(ReleasePublicKey(hex: "zz") == nil)
        let mode =
            (try FileManager.default.attributesOfItem(atPath: scratch.path + "/key")[.posixPermissions] as? NSNumber)?
            .intValue
        #expect(mode == 0o600)
    }
}

@Suite struct ManifestTests {
    @Test func chunksCoverTheFileAndTheLastMayBeShort() throws {
        let scratch = Scratch()
        defer { scratch.cleanup() }
        let data = Data((0..<10_000).map { UInt8($0 % 251) })
        try data.write(to: URL(fileURLWithPath: scratch.path + "/f"))
        let m = try ReleaseManifest.build(
            file: scratch.path + "/f", release: "r", package: "p", packageVersion: "1", chunkSize: 4096)
        #expect(m.chunks.count == 3)
        #expect(m.range(ofChunk: 2) == 8192..<10_000)
        #expect(m.range(ofChunk: 3) == 10_000..<10_000)
        #expect(m.digest == SHA256Digest(of: data))
        #expect(m.chunks[0] == SHA256.hash(data: data.prefix(4096)).hexString)
        try m.validate()
        var broken = m
        broken.chunks.removeLast()
        #expect(throws: ChangelabError.self) { try broken.validate() }
    }

    @Test(arguments: [
        ("bytes=0-", 100, 0...99), ("bytes=10-19", 100, 10...19), ("bytes=90-200", 100, 90...99),
        ("bytes=-10", 100, 90...99),
    ])
    func rangeHeadersAreUnderstood(header: String, size: Int, expected: ClosedRange<Int>) {
        #expect(CoreServer.parseRange(header, size: size) == expected)
    }

    @Test(arguments: ["bytes=100-", "bytes=5-2", "items=0-1", "bytes=0-1,3-4", "bytes=x-"])
    func unsatisfiableRangesAreRefused(header: String) {
        #expect(CoreServer.parseRange(header, size: 100) == nil)
    }
}

@Suite struct QueryTests {
    func facts(_ packages: [String: String], site: String = "paris", os: String = "12") -> TargetFacts {
        TargetFacts(
            name: "pc1", segment: "s1", attributes: ["site": site, "department": "finance"],
            inventory: InventorySnapshot(
                os: OSRelease(id: "debian", versionID: os),
                packages: packages.map { PackageRecord(name: $0.key, architecture: "amd64", version: $0.value) }))
    }

    @Test func packageVersionsCompareByDpkgRulesNotAsText() throws {
        let q = try TargetQuery.parse("package:openssl < 3.0.13")
        #expect(q.matches(facts(["openssl": "3.0.9-1"])))
        #expect(!q.matches(facts(["openssl": "3.0.13-1~deb12u1"])))
        #expect(!q.matches(facts([:])))
    }

    @Test func attributesSegmentAndOSCombineWithAndOrNot() throws {
        let q = try TargetQuery.parse(
            "(site = paris or site = lyon) and department = finance and not package:nginx and os.version = 12 and segment = s1"
        )
        #expect(q.matches(facts([:])))
        #expect(q.matches(facts([:], site: "lyon")))
        #expect(!q.matches(facts([:], site: "nice")))
        #expect(!q.matches(facts(["nginx": "1.22"])))
        #expect(!q.matches(facts([:], os: "11")))
        #expect(try TargetQuery.parse("all").matches(facts([:])))
        #expect(try TargetQuery.parse("name = pc1").matches(facts([:])))
    }

    @Test(arguments: ["site", "site = paris and", "(site = paris", "package:x <", "site = paris )"])
    func badQueriesAreRefusedWithAFix(text: String) {
        do {
            _ = try TargetQuery.parse(text)
            Issue.record("'\(text)' should not parse")
        } catch let error as ChangelabError {
            #expect(error.fix?.contains("site = paris") == true)
        } catch {
            Issue.record("unexpected \(error)")
        }
    }

    @Test func ringsParseAndAlwaysEndWithAll() throws {
        let rings = try Ring.parseList("canary:5%,pilot:25%")
        #expect(rings.map(\.name) == ["canary", "pilot", "all"])
        #expect(rings.map(\.share) == [0.05, 0.25, 1])
        #expect(throws: ChangelabError.self) { try Ring.parseList("canary:50%,pilot:10%") }
        #expect(throws: ChangelabError.self) { try Ring.parseList("canary") }
        // 5% of 100 targets is 5 targets in the canary ring.
        let members = (0..<100).map { Coordinator.ring(of: $0, count: 100, rings: rings) }
        #expect(members.filter { $0 == 0 }.count == 5)
        #expect(members.filter { $0 == 1 }.count == 20)
    }
}

@Suite struct InstallerClassificationTests {
    @Test func aMaintainerScriptsOwnExitCodeIsReported() {
        let output = """
            Setting up demo (1.0) ...
            dpkg: error processing package demo (--install):
             installed demo package post-installation script subprocess returned error exit status 3
            Errors were encountered while processing:
             demo
            """
        let failure = DpkgInstaller.classify(status: 1, timedOut: false, output: output, timeoutSeconds: 60)
        #expect(failure?.reason == .installerExit)
        #expect(failure?.exitCode == 3)
        #expect(failure?.summary == "installer exit code 3")
    }

    @Test func dependencyProblemsAreAPrerequisiteNotMet() {
        let output = """
            dpkg: dependency problems prevent configuration of demo:
             demo depends on libfoo (>= 2); however:
              Package libfoo is not installed.
            """
        #expect(
            DpkgInstaller.classify(status: 1, timedOut: false, output: output, timeoutSeconds: 60)?.reason
                == .prerequisiteNotMet)
    }

    @Test func noSpaceIsDiskFullAndATimeOutIsATimeOut() {
        let full =
            "dpkg: error processing archive x.deb (--install):\n cannot copy extracted data: No space left on device"
        #expect(
            DpkgInstaller.classify(status: 2, timedOut: false, output: full, timeoutSeconds: 60)?.reason == .diskFull)
        #expect(
            DpkgInstaller.classify(status: 143, timedOut: true, output: "", timeoutSeconds: 5)?.reason
                == .installerTimeout)
        #expect(DpkgInstaller.classify(status: 0, timedOut: false, output: "ok", timeoutSeconds: 5) == nil)
    }
}

@Suite struct CacheTests {
    func entry(_ cache: AgentCache, change: String, pinned: Bool, expires: Date) throws {
        let m = ReleaseManifest(
            release: change, package: "p", packageVersion: "1", size: 0, digest: SHA256Digest(of: Data()),
            chunkSize: 4096,
            chunks: [], publishedAt: Date())
        var e = try cache.open(change: change, manifest: m, signed: SignedEnvelope(payloadType: "", payload: "", signatures: []))
        e.pinned = pinned
        e.expiresAt = expires
        try cache.save(e)
    }

    @Test func expiredEntriesGoButPinnedOnesStay() throws {
        let scratch = Scratch()
        defer { scratch.cleanup() }
        let cache = AgentCache(directory: scratch.path)
        let past = Date().addingTimeInterval(-1)
        try entry(cache, change: "old-activated", pinned: false, expires: past)
        try entry(cache, change: "old-not-activated", pinned: true, expires: past)
        try entry(cache, change: "fresh", pinned: false, expires: Date().addingTimeInterval(3600))
        #expect(cache.expire() == ["old-activated"])
        #expect(cache.entries().map(\.change) == ["fresh", "old-not-activated"])
    }

    @Test func theDefaultLifetimeIsSixtyDays() {
        #expect(AgentCache(directory: "/x").lifetime == 60 * 24 * 3600)
    }

    @Test func aDamagedTailIsCutBackToTheVerifiedPrefix() throws {
        let scratch = Scratch()
        defer { scratch.cleanup() }
        let data = Data((0..<10_000).map { UInt8($0 % 253) })
        try data.write(to: URL(fileURLWithPath: scratch.path + "/src"))
        let m = try ReleaseManifest.build(
            file: scratch.path + "/src", release: "r", package: "p", packageVersion: "1", chunkSize: 4096)
        let cache = AgentCache(directory: scratch.path + "/cache")
        let e = try cache.open(change: "r", manifest: m, signed: SignedEnvelope(payloadType: "", payload: "", signatures: []))
        var damaged = data.prefix(9000)
        damaged[5000] ^= 0xFF
        try Data(damaged).write(to: URL(fileURLWithPath: cache.packagePath("r")))
        #expect(try cache.verifiedPrefix(e) == 1)
        #expect(
            (try FileManager.default.attributesOfItem(atPath: cache.packagePath("r"))[.size] as? NSNumber)?.intValue
                == 4096)
    }
}

@Suite struct ReportTests {
    @Test func chaseCSVQuotesFieldsThatNeedIt() {
        let entry = ChaseEntry(
            agent: "a-1", name: "pc,1", segment: "s1", site: "paris", department: "", phase: .failed,
            reason: "installer exit code 3", detail: "line one\n\"quoted\"", exitCode: 3, seedAttempts: 1,
            activationAttempts: 2, lastSeen: Date(timeIntervalSince1970: 0), nextRetry: nil, gaveUp: true)
        let csv = ChaseEntry.csv([entry])
        #expect(csv.hasPrefix("agent,name,segment,site,department,phase,reason,detail,exit_code,seed_attempts"))
        #expect(
            csv.contains(
                "a-1,\"pc,1\",s1,paris,,failed,installer exit code 3,\"line one\n\"\"quoted\"\"\",3,1,2,1970-01-01T00:00:00Z,,yes"
            ))
    }

    @Test func byteCountsAndRatesParse() {
        #expect(ByteCount.parse("20M") == Int64(20 << 20))
        #expect(ByteCount.parse("512K/s") == Int64(512 << 10))
        #expect(ByteCount.parse("1000") == 1000)
        #expect(ByteCount.parse("fast") == nil)
    }

    @Test func theProgressBarFillsInProportion() {
        #expect(StatusText.bar(5, of: 10, width: 10) == "[█████░░░░░]  50%")
        #expect(StatusText.bar(0, of: 0, width: 4) == "[░░░░]   -")
    }
}

@Suite struct ThrottleTests {
    @Test func theTokenBucketHoldsAStreamToItsRate() async throws {
        let bucket = TokenBucket(rate: 400_000)
        let start = ContinuousClock.now
        // 200 KB beyond the initial quarter-second burst must take about half a second.
        for _ in 0..<30 { try await bucket.take(10_000) }
        let elapsed = ContinuousClock.now - start
        #expect(elapsed >= .milliseconds(400))
        // An upper bound only against a bucket that never refills; a loaded machine is slow.
        #expect(elapsed < .seconds(20))
    }

    @Test func withoutARateNothingWaits() async throws {
        let bucket = TokenBucket()
        let start = ContinuousClock.now
        for _ in 0..<1000 { try await bucket.take(1 << 20) }
        #expect(ContinuousClock.now - start < .milliseconds(500))
    }
}

@Suite struct InstallSlotTests {
    @Test func atMostTheGivenNumberOfInstallersRunAtOnce() async {
        let slots = Semaphore(2)
        let running = Locked(0)
        let peak = Locked(0)
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<8 {
                group.addTask {
                    await slots.wait()
                    running.mutate { $0 += 1 }
                    peak.mutate { $0 = max($0, running.value) }
                    try? await Task.sleep(for: .milliseconds(20))
                    running.mutate { $0 -= 1 }
                    await slots.signal()
                }
            }
        }
        #expect(peak.value == 2)
        #expect(running.value == 0)
    }
}
