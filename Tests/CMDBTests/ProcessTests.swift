import Foundation
import HostIO
import Model
import Testing

@testable import CMDB

/// The `changelab` executable built beside this test bundle.
func changelabBinary() throws -> String {
    let me = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
    var folder = (me as NSString).deletingLastPathComponent
    // swift-testing may run from inside the .xctest bundle on some layouts.
    while !folder.isEmpty, folder != "/" {
        let candidate = folder + "/changelab"
        if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        folder = (folder as NSString).deletingLastPathComponent
    }
    throw ChangelabError("the changelab executable is not built", fix: "run 'swift build' before 'swift test'")
}

@Suite(.serialized) struct ProcessTests {
    /// Starts a burst of cell records in a real `changelab` process and SIGKILLs it after
    /// `after` acknowledgements — at once, or (`inTransaction`) as soon as a transaction's
    /// journal is on disk, its record files written and its branch not yet moved. Returns
    /// the acknowledged cell ids.
    func killWriter(at path: String, after acknowledged: Int, inTransaction: Bool) async throws -> [String] {
        let binary = try changelabBinary()
        let acks = path + ".acks"
        let script = """
            "$0" bench cmdb --cells 100000 --keep "$1" --acknowledge > "$2" 2>"$2.err" &
            pid=$!
            n=0
            while :; do
              count=$(grep -c '^recorded ' "$2" 2>/dev/null)
              [ "${count:-0}" -ge "$3" ] && break
              n=$((n + 1)); [ $n -gt 2400 ] && break
              kill -0 $pid 2>/dev/null || break
              sleep 0.05
            done
            if [ "$4" = yes ]; then
              n=0
              while [ ! -f "$1/.git/changelab/journal.json" ] && [ $n -lt 2000 ]; do n=$((n + 1)); sleep 0.005; done
            fi
            kill -9 $pid
            wait $pid
            exit 0
            """
        let result = try await HostCommand.run(
            "/bin/sh", ["-c", script, binary, path, acks, String(acknowledged), inTransaction ? "yes" : "no"],
            environment: inTransaction ? ["CHANGELAB_CMDB_TEST_PAUSE_MS": "200"] : nil, timeout: .seconds(300))
        #expect(result.status == 0, "\(result.stderrText)")
        let text = try String(contentsOfFile: acks, encoding: .utf8)
        return text.split(separator: "\n").filter { $0.hasPrefix("recorded ") }.map { String($0.dropFirst(9)) }
    }

    @Test(arguments: [(7, false), (23, false), (5, true), (19, true)])
    func killingAWriterMidBurstLosesNoAcknowledgedWrite(_ after: Int, _ inTransaction: Bool) async throws {
        let path = Fixture.temporaryFolder("crash")
        defer { Fixture.remove(path) }
        let acknowledged = try await killWriter(at: path, after: after, inTransaction: inTransaction)
        #expect(acknowledged.count >= after)
        let store = try CMDBStore.open(path)
        if inTransaction {
            // Killed inside a transaction: readers refuse, naming it, until a writer finishes it.
            #expect(store.unfinishedTransaction != nil)
            await #expect(throws: ChangelabError.self) { _ = try await store.query(try Query("kind = cell")) }
        }
        let writer = try await CMDBWriter(path: path, actor: "next-writer")
        let outcome = try await writer.recover()
        if inTransaction {
            guard case .rolledForward = outcome else {
                Issue.record(
                    "expected the interrupted transaction to be rolled forward, got \(String(describing: outcome))")
                return
            }
        }
        await writer.close()
        let report = try await store.verify()
        #expect(report.problems == [], "\(report.problems)")
        let committed = try await TreeCache.load(repository: path, commit: store.head)
        for id in acknowledged {
            #expect(committed.blob(at: CMDBReference(.cell, id).path) != nil, "acknowledged \(id) is not committed")
        }
        #expect(try await git(path, "status", "--porcelain").isEmpty)
    }

    /// The order a power cut depends on, read from a real writer's system calls (strace): the
    /// objects renamed into place, one syncfs, then the journal, the record file and the
    /// branch renamed, one syncfs; no fsync of any single file in between (each would be one
    /// more flush waiting for everything else on the disk).
    @Test func aTransactionFlushesTwiceObjectsFirstAndNeverPerFile() async throws {
        let binary = try changelabBinary()
        let path = Fixture.temporaryFolder("strace")
        let trace = path + ".trace"
        defer { Fixture.remove(path); unlink(trace) }
        try await Fixture.make(at: path)
        let result = try await HostCommand.run(
            "strace",
            [
                "-f", "-qq", "-o", trace, "-e", "trace=execve,rename,renameat,renameat2,syncfs,sync,fsync,fdatasync",
                binary, "cmdb", "record-target", "traced", "--attribute", "site=brest", "--cmdb", path, "--actor", "a",
            ], timeout: .seconds(120))
        #expect(result.status == 0, "\(result.stderrText)")
        var events: [String] = []
        var children: Set<Substring> = []
        var first: Substring?
        for line in try String(contentsOfFile: trace, encoding: .utf8).split(separator: "\n") {
            guard let pid = line.split(separator: " ").first, !line.contains("resumed>") else { continue }
            if first == nil { first = pid }
            // The git commands the CLI runs (ls-tree before, read-tree and update-index after) are not the writer.
            if line.contains("execve(") && pid != first { children.insert(pid) }
            if children.contains(pid) { continue }
            // strace pads the pid column ("6266  rename(" but "31266 rename(").
            let call = line.dropFirst(pid.count).drop { $0 == " " }.prefix { $0 != "(" }
            switch call {
            case "syncfs", "sync": events.append("syncfs")
            case "fsync", "fdatasync": events.append("fsync")
            case "rename", "renameat", "renameat2":
                guard line.contains(path), line.hasSuffix("= 0") || line.hasSuffix("<unfinished ...>") else { continue }
                let target = line.split(separator: "\"").dropLast().last.map(String.init) ?? ""
                if target.contains("/objects/") {
                    events.append("object")
                } else if target.hasSuffix("/journal.json") {
                    events.append("journal")
                } else if target.hasSuffix("/refs/heads/main") {
                    events.append("branch")
                } else if target.hasSuffix(CMDBReference(.target, "traced").path) {
                    events.append("record")
                }
            default: continue
            }
        }
        let start = try #require(events.firstIndex(of: "object"), "no object renamed: \(events)")
        let transaction = events[start...].reduce(into: [String]()) { if $0.last != $1 { $0.append($1) } }
        #expect(
            Array(transaction.prefix(6)) == ["object", "syncfs", "journal", "record", "branch", "syncfs"],
            "\(events)")
    }

    @Test func writersInTwoProcessesInterleaveWithoutLosingARecord() async throws {
        let binary = try changelabBinary()
        let path = Fixture.temporaryFolder("two")
        defer { Fixture.remove(path) }
        try await Fixture.make(at: path)
        let script = """
            for i in 1 2 3 4 5 6 7 8; do "$0" cmdb record-target "a-$i" --attribute site=a --cmdb "$1" --actor a >/dev/null || exit 1; done &
            for i in 1 2 3 4 5 6 7 8; do "$0" cmdb record-target "b-$i" --attribute site=b --cmdb "$1" --actor b >/dev/null || exit 1; done &
            wait %1 && wait %2
            """
        let result = try await HostCommand.run("/bin/sh", ["-c", script, binary, path], timeout: .seconds(300))
        #expect(result.status == 0, "\(result.stderrText)")
        let store = try CMDBStore.open(path)
        #expect(try await store.query(try Query("site = a or site = b")).count == 16)
        #expect(try await store.verify().problems == [])
        let actors = try await git(path, "log", "--format=%an", "-16", "main").split(separator: "\n")
        #expect(Set(actors) == ["a", "b"])
    }

    func changelab(_ arguments: [String], environment: [String: String]? = nil) async throws -> CommandResult {
        try await HostCommand.run(try changelabBinary(), arguments, environment: environment, timeout: .seconds(120))
    }

    @Test func commandsAnswerInTextAndJSON() async throws {
        let path = Fixture.temporaryFolder("cli")
        defer { Fixture.remove(path) }
        try await Fixture.make(at: path)
        let query = try await changelab([
            "cmdb", "query", "package:openssl < 3.0.13", "--kind", "target", "--cmdb", path,
        ])
        #expect(query.status == 0)
        #expect(query.stdoutText.contains("target  lyon-1"))
        #expect(query.stderrText.contains("2 matches"))
        let json = try await changelab(
            ["cmdb", "query", "site = paris", "--json"], environment: ["CHANGELAB_CMDB": path])
        let matches = try StableJSON.decode([QueryMatch].self, from: json.stdout)
        #expect(matches.map(\.id) == ["paris-1"])
        let diff = try await changelab(["cmdb", "diff", "baseline:web", "cell:run-1/web", "--cmdb", path])
        #expect(diff.stdoutText.contains("+ nginx:amd64 1.22.1-9"))
        let show = try await changelab(["cmdb", "show", "target:lyon-1", "--cmdb", path])
        #expect(show.stdoutText.contains("drift from web@1:"))
        #expect(show.stdoutText.contains("~ /etc/ssh/sshd_config: sha256 aaaaaaaaaaaa → cccccccccccc"))
        let log = try await changelab(["cmdb", "log", "cell:run-1/db", "--json", "--cmdb", path])
        #expect(try StableJSON.decode([CMDBLogEntry].self, from: log.stdout).map(\.operation) == ["record-cell"])
        let verify = try await changelab(["cmdb", "verify", "--json", "--cmdb", path])
        #expect(verify.status == 0)
        #expect(try StableJSON.decode(CMDBVerifyReport.self, from: verify.stdout).passed)
        let export = try await changelab(["cmdb", "export", "--json", "--cmdb", path])
        #expect(try StableJSON.decode(CMDBExport.self, from: export.stdout).cells.count == 2)
    }

    @Test(arguments: [
        (["cmdb", "query", "package:openssl <"], "column 18"),
        (["cmdb", "show", "baseline:nope"], "there is no baseline 'nope'"),
        (["cmdb", "show", "gadget:x"], "unknown item kind 'gadget'"),
        (["cmdb", "diff", "run-1", "web@1"], "has no configuration to compare"),
        (["cmdb", "log", "--limit", "0"], "--limit 0"),
        (["cmdb", "query", "x = 1", "--kind", "run"], "--kind run cannot be queried"),
    ])
    func badInputIsANamedErrorAndANonZeroExit(_ arguments: [String], _ message: String) async throws {
        let path = Fixture.temporaryFolder("bad")
        defer { Fixture.remove(path) }
        try await Fixture.make(at: path)
        let head = try CMDBStore.open(path).head
        let result = try await changelab(arguments + ["--cmdb", path])
        #expect(result.status != 0)
        #expect(result.stderrText.contains(message), "\(result.stderrText)")
        #expect(try CMDBStore.open(path).head == head)
    }

    @Test func aFolderThatIsNotACMDBAndANewerCMDBAreRefusedByEveryCommand() async throws {
        let plain = Fixture.temporaryFolder("plain")
        defer { Fixture.remove(plain) }
        try FileManager.default.createDirectory(atPath: plain, withIntermediateDirectories: true)
        try "keep me".write(toFile: plain + "/notes.txt", atomically: true, encoding: .utf8)
        for command in [["cmdb", "verify"], ["cmdb", "query", "kind = cell"], ["cmdb", "record-target", "x"]] {
            let result = try await changelab(command + ["--cmdb", plain])
            #expect(result.status != 0)
            #expect(result.stderrText.contains("is not a changelab CMDB"), "\(command): \(result.stderrText)")
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: plain) == ["notes.txt"])
        let newer = Fixture.temporaryFolder("newer")
        defer { Fixture.remove(newer) }
        try await Fixture.make(at: newer)
        try "{\"format\": \"changelab-cmdb\", \"version\": 9}".write(
            toFile: newer + "/format.json", atomically: true, encoding: .utf8)
        let result = try await changelab(["cmdb", "record-target", "x", "--cmdb", newer])
        #expect(result.status != 0)
        #expect(result.stderrText.contains("format version 9"))
        #expect(!FileManager.default.fileExists(atPath: newer + "/" + CMDBReference(.target, "x").path))
    }
}
