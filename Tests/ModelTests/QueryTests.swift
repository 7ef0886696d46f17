import Model
import Testing

@Suite struct QueryTests {
    let delta = ConfigurationDelta(from: Sample.baseline, to: Sample.afterInstall)
    var before: QuerySubject {
        QuerySubject(
            attributes: ["site": "paris", "department": "finance", "kind": "target"], inventory: Sample.baseline)
    }
    var after: QuerySubject {
        QuerySubject(attributes: ["site": "lyon", "kind": "cell"], inventory: Sample.afterInstall, delta: delta)
    }

    func check(_ text: String, before expectedBefore: Bool, after expectedAfter: Bool) throws {
        let query = try Query(text)
        #expect(query.matches(before) == expectedBefore, "\(text) on the baseline")
        #expect(query.matches(after) == expectedAfter, "\(text) after install")
    }

    @Test func comparesPackageVersionsByDpkgRules() throws {
        try check("package:openssl < 3.0.13", before: true, after: false)
        try check("package:openssl >= 3.0.13-1~deb12u1", before: false, after: true)
        try check("package:openssl version < 3.0.9", before: false, after: false)
        try check("package:openssh-server > 9", before: true, after: true)  // the epoch wins
        try check("package:nginx", before: false, after: true)
        try check("package:nginx absent", before: true, after: false)
        try check("package:nginx* = 1.22.1-9", before: false, after: true)
        try check("package:old-tool", before: false, after: false)  // only config files left
        try check("package:old-tool status = \"deinstall ok config-files\"", before: false, after: false)
        try check("package:openssl arch = amd64", before: true, after: true)
    }

    @Test func testsFilesServicesUsersGroupsAndPorts() throws {
        try check("file:/etc/ssh/sshd_config changed", before: false, after: true)
        try check("file:/etc/ssh/sshd_config mode = 0600", before: false, after: true)
        try check("file:/etc/nginx added", before: false, after: true)
        try check("file:/etc/motd removed", before: false, after: true)
        try check("file:/etc/hosts modified", before: false, after: false)
        try check("file:/etc/machine-id changed", before: false, after: false)  // noise is not in the delta
        try check(
            "file:\"/etc/nginx/sites-enabled/default\" target = /etc/nginx/sites-available/*", before: false,
            after: true)
        try check("service:nginx enabled", before: false, after: true)
        try check("service:ssh active and unit:cron.service enabled", before: true, after: true)
        try check("service:nginx disabled", before: false, after: false)
        try check("user:www-data", before: false, after: true)
        try check("user:root uid = 0", before: true, after: true)
        try check("group:adm members = *www-data*", before: false, after: true)
        try check("port:tcp/80 open", before: false, after: true)
        try check("port:22", before: true, after: true)
        try check("port:80 closed", before: true, after: false)
    }

    @Test func combinesWithAndOrNotAndParentheses() throws {
        try check("not package:nginx", before: true, after: false)
        try check("package:nginx or site = paris", before: true, after: true)
        try check("site = paris and package:nginx", before: false, after: false)
        try check("(site = lyon or site = paris) and not (package:nginx and port:tcp/80)", before: true, after: false)
        try check("NOT package:nginx OR department = finance", before: true, after: false)
        // `and` binds tighter than `or`.
        try check("site = lyon or site = paris and package:nginx", before: false, after: true)
    }

    @Test func comparesAttributesAndSystemFacts() throws {
        try check("os = debian and os.version >= 12", before: true, after: true)
        try check("os.version > 9", before: true, after: true)  // numbers, not text
        try check("kernel >= 6.1.0-9-amd64", before: true, after: true)
        try check("department != finance", before: false, after: true)  // a missing attribute is not equal
        try check("department = finance", before: true, after: false)
        try check("site = p*", before: true, after: false)
        try check("hostname = web1 and arch = x86_64", before: true, after: true)
    }

    @Test(arguments: [
        ("", 1, "a predicate", "the end of the query"),
        ("package:openssl <", 18, "a value to compare version with", "the end of the query"),
        ("package:openssl < 3..0_1", 19, "a Debian version", "'3..0_1'"),
        ("packge:openssl", 1, "an item kind", "'packge'"),
        ("package:openssl and", 20, "a predicate", "the end of the query"),
        ("(package:a or package:b", 24, "')'", "the end of the query"),
        ("package:a)", 10, "the end of the query", "')'"),
        ("service:nginx enabeld", 15, "a test for service", "'enabeld'"),
        ("site paris", 6, "an operator", "'paris'"),
        ("file:/etc/x < 3", 13, "a test before the operator", "'<'"),
        ("site = \"paris", 8, "a closing '\"'", "the end of the query"),
        ("site ! paris", 6, "an operator", "'!'"),
        ("file: changed", 6, "a name or pattern after 'file:'", "'changed'"),
        ("package:a package:b", 11, "'and', 'or' or the end of the query", "'package:b'"),
    ])
    func malformedQueriesReportTheColumnAndWhatWasExpected(
        _ text: String, _ column: Int, _ expected: String, _ found: String
    ) {
        do {
            let query = try Query(text)
            Issue.record("'\(text)' parsed as \(query.expression)")
        } catch let error as QuerySyntaxError {
            #expect(error.column == column, "\(error)")
            #expect(error.expected.contains(expected), "\(error)")
            #expect(error.found == found, "\(error)")
            #expect(error.description.contains("column \(column)"))
        } catch {
            Issue.record("unexpected \(error)")
        }
    }

    @Test func theErrorShowsACaretUnderTheProblem() {
        #expect(throws: QuerySyntaxError.self) { try Query("package:openssl << 3") }
        do {
            _ = try Query("site = paris and and")
        } catch {
            #expect("\(error)".hasSuffix("  site = paris and and\n                   ^"))
        }
    }
}

@Suite struct QueryRobustnessTests {
    @Test func everyPrefixOfAQueryParsesOrSaysWhereItStopped() {
        let queries = [
            "(package:openssl < 1:3.0.13-1~deb12u1 or not file:\"/etc/a b\" mode = 0600) and site != \"New York\"",
            "service:nginx enabled and port:tcp/80 open or os.version >= 12 and kernel > 6",
        ]
        for query in queries {
            for length in 0...query.count {
                let text = String(query.prefix(length))
                do {
                    _ = try Query(text)
                } catch let error as QuerySyntaxError {
                    #expect(error.column >= 1 && error.column <= text.count + 1, "\(text): \(error)")
                } catch {
                    Issue.record("\(text): unexpected \(error)")
                }
            }
        }
    }
}

/// Deep or long queries end in a `QuerySyntaxError`, never a stack overflow.
@Suite struct QueryLimitTests {
    @Test(arguments: [
        String(repeating: "not ", count: 100_000) + "site = paris",
        String(repeating: "(", count: 100_000) + "site = paris" + String(repeating: ")", count: 100_000),
        String(repeating: "not (", count: 50_000) + "site = paris",
        Array(repeating: "site = paris", count: 100_000).joined(separator: " and "),
    ])
    func aQueryTooDeepOrLongIsRefusedWithAClearError(text: String) {
        #expect {
            _ = try Query(text)
        } throws: { error in
            let description = "\(error)"
            return error is QuerySyntaxError && description.contains("at most")
        }
    }

    @Test func queriesWithinTheLimitsStillParseAndEvaluate() throws {
        let nested = String(repeating: "not ", count: 64) + "site = paris"
        let subject = QuerySubject(attributes: ["site": "paris"], inventory: nil)
        #expect(try Query(nested).matches(subject))
        let long = Array(repeating: "site = paris", count: 512).joined(separator: " and ")
        #expect(try Query(long).matches(subject))
        let parenthesised = String(repeating: "(", count: 64) + "site = lyon" + String(repeating: ")", count: 64)
        #expect(try Query(parenthesised).matches(subject) == false)
    }
}
