import Foundation
import HostIO
import Model
import Testing

/// dpkg's own comparison vectors (the data table of dpkg's scripts/t/Dpkg_Version.t), plus
/// cases this project cares about; the expected sign is dpkg's.
let dpkgVectors: [(String, String, Int)] = [
    ("1.0-1", "2.0-2", -1), ("2.2~rc-4", "2.2-1", -1), ("2.2-1", "2.2~rc-4", 1), ("1.0000-1", "1.0-1", 0),
    ("1", "0:1", 0), ("0", "0:0-0", 0), ("2:2.5", "1:7.5", 1), ("1:0foo", "0foo", 1), ("0:0foo", "0foo", 0),
    ("0foo", "0foo", 0), ("0foo-", "0foo", 0), ("0foo-", "0foo-0", 0), ("0foo", "0fo", 1), ("0foo-", "0foo+", -1),
    ("0foo~1", "0foo", -1), ("0foo~foo+Bar", "0foo~foo+bar", -1), ("0foo~~", "0foo~", -1), ("1~", "1", -1),
    ("12345+that-really-is-some-ver-0", "12345+that-really-is-some-ver-10", -1), ("0foo-0", "0foo-01", -1),
    ("0foo.bar", "0foobar", 1), ("0foo.bar", "0foo1bar", 1), ("0foo.bar", "0foo0bar", 1),
    ("0foo1bar-1", "0foobar-1", -1), ("0foo2.0", "0foo2", 1), ("0foo2.0.0", "0foo2.10.0", -1),
    ("0foo2.0", "0foo2.0.0", -1), ("0foo2.0", "0foo2.10", -1), ("0foo2.1", "0foo2.10", -1), ("1.09", "1.9", 0),
    ("1.0.8+nmu1", "1.0.8", 1), ("3.11", "3.10+nmu1", 1), ("0.9j-20080306-4", "0.9i-20070324-2", 1),
    ("1.2.0~b7-1", "1.2.0~b6-1", 1), ("1.011-1", "1.06-2", 1), ("0.0.9+dfsg1-1", "0.0.8+dfsg1-3", 1),
    ("4.6.99+svn6582-1", "4.6.99+svn6496-1", 1), ("53", "52", 1), ("0.9.9~pre122-1", "0.9.9~pre111-1", 1),
    ("2:2.3.2-2+lenny2", "2:2.3.2-2", 1), ("1:3.8.1-1", "3.8.GA-1", 1), ("1.0.1+gpl-1", "1.0.1-2", 1),
    ("1a", "1000a", -1), ("-0.6.5", "0.9.1", -1),
    // This project's own: the iTop bug, tildes, epochs, Debian security revisions.
    ("3.0.9", "3.0.13", -1), ("3.0.13-1~deb12u1", "3.0.11-1~deb12u2", 1), ("3.0.13-1~deb12u1", "3.0.13-1", -1),
    ("1.0~rc1", "1.0", -1), ("1:0.9", "2.0", 1), ("6.1.0-18-amd64", "6.1.0-9-amd64", 1), ("1.2.3", "1.2.3", 0),
    ("1_2", "1", 1), ("a1", "1", 1), ("1.0@", "1", 1),
]

@Suite struct DebianVersionTests {
    @Test(arguments: dpkgVectors.indices)
    func ordersLikeDpkgAndAgreesWithDpkgOnThisMachine(_ index: Int) async throws {
        let (a, b, expected) = dpkgVectors[index]
        let dpkg = try await dpkgCompare(a, b)
        switch dpkg {
        case .refused:
            // Newer dpkg accepts some of its own vectors that this dpkg refuses; we follow this one.
            #expect(throws: DebianVersion.ParseError.self) {
                _ = try DebianVersion(lenient: a)
                _ = try DebianVersion(lenient: b)
            }
        case .compared(let sign, let warned):
            #expect(sign == expected, "dpkg on this machine says \(a) vs \(b) is \(sign)")
            let va = try DebianVersion(lenient: a)
            let vb = try DebianVersion(lenient: b)
            #expect(DebianVersion.compare(va, vb) == expected, "\(a) vs \(b)")
            #expect((va < vb) == (expected < 0))
            #expect((va == vb) == (expected == 0))
            #expect((va > vb) == (expected > 0))
            // What dpkg only warns about, the strict parser refuses.
            let strictRefuses = (try? DebianVersion(a)) == nil || (try? DebianVersion(b)) == nil
            #expect(strictRefuses == warned, "strict parse of \(a), \(b)")
        }
    }

    @Test func splitsEpochUpstreamAndRevision() throws {
        let version = try DebianVersion("2:1.2-3-4~deb12u1")
        #expect(version.epoch == 2)
        #expect(version.upstream == "1.2-3")
        #expect(version.revision == "4~deb12u1")
        let plain = try DebianVersion("7.88.1")
        #expect(plain.epoch == 0 && plain.upstream == "7.88.1" && plain.revision == "")
    }

    @Test(arguments: [
        ("", "empty"), ("1.0 2", "embedded spaces"), (":1", "epoch is empty"), ("a:1", "epoch is empty"),
        ("1a:1", "epoch is not a number"), ("-1:2", "negative"), ("99999999999:1", "too big"),
        ("1:", "nothing follows"), ("1.0-", "revision"), ("-1", "upstream version is empty"),
        ("abc", "does not start with a digit"), ("1.0_beta", "'_' is not allowed"), ("1.0-a_b", "in the revision"),
    ])
    func refusesInvalidVersionsWithTheReason(_ text: String, _ reason: String) {
        do {
            let parsed = try DebianVersion(text)
            Issue.record("\(text) parsed as \(parsed)")
        } catch let error as DebianVersion.ParseError {
            #expect(error.reason.contains(reason), "\(error)")
            #expect(error.description.contains("'\(text)'"))
        } catch {
            Issue.record("unexpected \(error)")
        }
    }

    @Test func roundTripsThroughJSONAsText() throws {
        let version = try DebianVersion("1:2.0~rc1-3")
        let data = try StableJSON.data([version])
        #expect(String(decoding: data, as: UTF8.self) == "[\n  \"1:2.0~rc1-3\"\n]\n")
        #expect(try StableJSON.decode([DebianVersion].self, from: data) == [version])
        #expect(throws: DecodingError.self) { try StableJSON.decode([DebianVersion].self, from: Data("[\"1:\"]".utf8)) }
    }
}

enum DpkgAnswer {
    case refused
    case compared(sign: Int, warned: Bool)
}

/// Asks this machine's dpkg how `a` compares with `b`.
func dpkgCompare(_ a: String, _ b: String) async throws -> DpkgAnswer {
    var warned = false
    for (op, sign) in [("lt", -1), ("eq", 0), ("gt", 1)] {
        let result = try await HostCommand.run("dpkg", ["--compare-versions", "--", a, op, b])
        if result.status == 2 || result.stderrText.contains("error") { return .refused }
        if result.stderrText.contains("warning") { warned = true }
        if result.status == 0 { return .compared(sign: sign, warned: warned) }
    }
    return .refused
}
