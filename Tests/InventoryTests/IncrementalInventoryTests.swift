import Foundation
import HostIO
@testable import Inventory
import Model
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The incremental inventory against the full one, on the same tree, for each kind of
/// change that metadata alone could miss.
@Suite struct IncrementalInventoryTests {
    /// A small system root in a temporary folder, watched at /etc and /var.
    struct Tree {
        let root: String
        var options: InventoryOptions { InventoryOptions(root: root, watchedPaths: ["/etc", "/var"]) }

        init() throws {
            root = NSTemporaryDirectory() + "changelab-incremental-\(UUID().uuidString.prefix(8))"
            for folder in ["etc/app", "etc/__pycache__", "var/cache/app", "var/lib/app"] {
                try FileManager.default.createDirectory(atPath: "\(root)/\(folder)", withIntermediateDirectories: true)
            }
            let files = [
                "etc/app/content": "one\n", "etc/app/mode": "mode\n", "etc/app/owner": "owner\n",
                "etc/app/recreated": "same text\n", "etc/app/linked": "shared\n", "etc/app/untouched": "quiet\n",
                "etc/ld.so.cache": "cache\n", "etc/__pycache__/x.pyc": "pyc\n", "var/cache/app/blob": "blob\n",
                "var/lib/app/state": "state\n",
            ]
            for (path, text) in files { try write(text, to: path) }
            try FileManager.default.createSymbolicLink(atPath: "\(root)/etc/app/current", withDestinationPath: "content")
        }

        func path(_ relative: String) -> String { "\(root)/\(relative)" }

        func write(_ text: String, to relative: String) throws {
            try Data(text.utf8).write(to: URL(fileURLWithPath: path(relative)))
        }

        func remove() { try? FileManager.default.removeItem(atPath: root) }
    }

    static func delta(_ before: InventorySnapshot, _ after: InventorySnapshot) -> [String] {
        // Only files: ports and disks are this host's, which other processes change meanwhile.
        ConfigurationDelta(from: before, to: after).entries.filter { $0.category == .files }
            .map { "\($0.category.rawValue) \($0.entry.key) \($0.kind.rawValue)" }
    }

    @Test func findsEveryChangeTheFullInventoryFindsAndHashesOnlyChangedFiles() async throws {
        let tree = try Tree()
        defer { tree.remove() }
        let incremental = IncrementalCollector(runner: LocalShell(), options: tree.options)
        let (baseline, listing) = try await incremental.record()
        let full = InventoryCollector(runner: LocalShell(), options: tree.options)
        // Files are compared whole; ports, disks and memory describe this (busy) host, not the root.
        #expect(baseline.snapshot.files == (try await full.collect()).snapshot.files, "the recorded snapshot is a full inventory")
        #expect(listing.entries["/etc/app/content"]?.sha256 != nil)

        // Content changed with its mtime forced back: only ctime tells.
        let content = tree.path("etc/app/content")
        let mtime = try #require(try FileManager.default.attributesOfItem(atPath: content)[.modificationDate] as? Date)
        try await Task.sleep(for: .milliseconds(20))
        try tree.write("two\n", to: "etc/app/content")
        try FileManager.default.setAttributes([.modificationDate: mtime], ofItemAtPath: content)
        // chmod only, chown only.
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: tree.path("etc/app/mode"))
        #expect(chown(tree.path("etc/app/owner"), 4242, 4343) == 0)
        // Deleted and recreated with the same text (and maybe the same inode number).
        try FileManager.default.removeItem(atPath: tree.path("etc/app/recreated"))
        try tree.write("same text\n", to: "etc/app/recreated")
        // A symlink pointed elsewhere, a new hard link, a new file, a removed file.
        try FileManager.default.removeItem(atPath: tree.path("etc/app/current"))
        try FileManager.default.createSymbolicLink(atPath: tree.path("etc/app/current"), withDestinationPath: "mode")
        #expect(link(tree.path("etc/app/linked"), tree.path("etc/app/hardlink")) == 0)
        try tree.write("new\n", to: "etc/app/added")
        try FileManager.default.removeItem(atPath: tree.path("var/lib/app/state"))
        // Changes in noise (pruned folders and filtered paths) stay out of both.
        try tree.write("changed\n", to: "var/cache/app/blob")
        try tree.write("changed\n", to: "etc/ld.so.cache")
        try tree.write("changed\n", to: "etc/__pycache__/x.pyc")

        let fullAfter = try await full.collect().snapshot
        let result = try await incremental.collect(against: listing)
        #expect(result.inventory.snapshot.files == fullAfter.files, "the incremental files are the full ones, hashes included")
        let expected = [
            "files /etc/app/added added", "files /etc/app/hardlink added", "files /var/lib/app/state removed",
            "files /etc/app/content changed", "files /etc/app/current changed", "files /etc/app/mode changed",
            "files /etc/app/owner changed",
        ]
        #expect(Self.delta(baseline.snapshot, result.inventory.snapshot) == expected)
        #expect(Self.delta(baseline.snapshot, result.inventory.snapshot) == Self.delta(baseline.snapshot, fullAfter))
        // Hashed: content, mode, owner, recreated, both names of the hard link, added, and the
        // noise file find cannot prune (__pycache__, filtered after) — not untouched, nor the
        // pruned /var/cache and /etc/ld.so.cache.
        #expect(result.hashed == 8, "hashed \(result.hashed) files")
    }

    @Test func anUnchangedTreeHashesNothingAndGivesTheSameSnapshot() async throws {
        let tree = try Tree()
        defer { tree.remove() }
        let incremental = IncrementalCollector(runner: LocalShell(), options: tree.options)
        let (baseline, listing) = try await incremental.record()
        let result = try await incremental.collect(against: listing)
        #expect(result.hashed == 0)
        #expect(result.inventory.snapshot.files == baseline.snapshot.files)
    }

    /// Counts the scripts a collector sends: each is a guest round trip in the lab.
    final class CountingShell: CommandRunner, @unchecked Sendable {
        // @unchecked: `count` is guarded by `lock`.
        private let lock = NSLock()
        private var sent = 0
        var count: Int { lock.withLock { sent } }

        func runShell(_ script: String, timeout: Duration) async throws -> CommandResult {
            lock.withLock { sent += 1 }
            return try await LocalShell().runShell(script, timeout: timeout)
        }
    }

    @Test func anInventoryAfterChangesIsOneCommandHashingOnlyFilesWithANewerCtime() async throws {
        let tree = try Tree()
        defer { tree.remove() }
        let (_, listing) = try await IncrementalCollector(runner: LocalShell(), options: tree.options).record()
        try await Task.sleep(for: .milliseconds(20))
        try tree.write("two\n", to: "etc/app/content")
        try tree.write("new\n", to: "etc/app/added")
        let shell = CountingShell()
        let result = try await IncrementalCollector(runner: shell, options: tree.options).collect(against: listing)
        #expect(shell.count == 1, "one command for the whole inventory, hashes included")
        #expect(result.hashed == 2)
        let full = try await InventoryCollector(runner: LocalShell(), options: tree.options).collect().snapshot
        #expect(result.inventory.snapshot.files == full.files)
    }

    @Test func aChangedFileTheCtimeTestMissedIsStillHashed() async throws {
        // A reference whose newest ctime lies in the future (a guest clock set backwards since):
        // the guest hashes nothing, the metadata comparison catches the change, and a second
        // command hashes it.
        let tree = try Tree()
        defer { tree.remove() }
        var (_, listing) = try await IncrementalCollector(runner: LocalShell(), options: tree.options).record()
        if var entry = listing.entries["/etc/app/untouched"] {
            var fields = entry.metadata.split(separator: "\t").map(String.init)
            fields[fields.count - 1] = "9999999999.0000000000"
            entry.metadata = fields.joined(separator: "\t")
            listing.entries["/etc/app/untouched"] = entry
        }
        try await Task.sleep(for: .milliseconds(20))
        try tree.write("two\n", to: "etc/app/content")
        let shell = CountingShell()
        let result = try await IncrementalCollector(runner: shell, options: tree.options).collect(against: listing)
        #expect(shell.count == 2)
        let full = try await InventoryCollector(runner: LocalShell(), options: tree.options).collect().snapshot
        #expect(result.inventory.snapshot.files == full.files)
    }

    /// The scan itself names the units whose folder entries changed since the reference's
    /// newest ctime (the entry, the unit a `.wants` or `.d` folder belongs to, a symlink's
    /// target, a template's instances), so the caller needs no second command for them.
    @Test func theScanAsksAboutTheUnitsChangedEntriesNameAndOnlyThose() async throws {
        let root = NSTemporaryDirectory() + "changelab-units-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: root) }
        let manager = FileManager.default
        for folder in ["etc/systemd/system/multi-user.target.wants", "etc/systemd/system/ssh.service.d", "lib/systemd/system"] {
            try manager.createDirectory(atPath: "\(root)/\(folder)", withIntermediateDirectories: true)
        }
        try Data("[Unit]\n".utf8).write(to: URL(fileURLWithPath: "\(root)/lib/systemd/system/old.service"))
        try Data("[Unit]\n".utf8).write(to: URL(fileURLWithPath: "\(root)/lib/systemd/system/getty@.service"))
        // Everything so far is the reference; what follows is newer than its newest ctime.
        let options = InventoryOptions(root: root, watchedPaths: ["/etc"])
        let before = try await LocalShell().runShell(
            InventoryScript.render(options, files: .listed(hashes: false), unitFiles: false), timeout: .seconds(30))
        let sections = IncrementalCollector.sections(["unit-dirs"], in: before.stdoutText)
        let reference = UnitReference(
            files: [], directories: UnitReference.directories(sections["unit-dirs"] ?? [], root: root), also: [])
        let since = try #require(IncrementalCollector.newestCtime(ofUnitDirectories: reference))
        try await Task.sleep(for: .milliseconds(20))
        try Data("[Unit]\n".utf8).write(to: URL(fileURLWithPath: "\(root)/lib/systemd/system/greeterd.service"))
        try manager.createSymbolicLink(
            atPath: "\(root)/etc/systemd/system/multi-user.target.wants/greeterd.service",
            withDestinationPath: "/lib/systemd/system/greeterd.service")
        try Data("[Service]\n".utf8).write(to: URL(fileURLWithPath: "\(root)/etc/systemd/system/ssh.service.d/x.conf"))
        try manager.createSymbolicLink(
            atPath: "\(root)/etc/systemd/system/getty@tty3.service", withDestinationPath: "/lib/systemd/system/getty@.service")
        let after = try await LocalShell().runShell(
            InventoryScript.render(options, files: .listed(hashes: false), unitFiles: false, unitsChangedSince: since),
            timeout: .seconds(30))
        let asked = Set((IncrementalCollector.sections(["unit-asked"], in: after.stdoutText)["unit-asked"] ?? []).map(String.init))
        for unit in ["greeterd.service", "multi-user.target", "ssh.service", "getty@tty3.service", "getty@.service", "getty@*.service"] {
            #expect(asked.contains(unit), "\(unit) not asked: \(asked.sorted())")
        }
        #expect(!asked.contains("old.service"), "an entry older than the reference was asked: \(asked.sorted())")
        #expect(!asked.contains("x.conf") && !asked.contains("system"))
        // What the host works out from the metadata is covered, so the scan's answer serves;
        // a unit the scan did not ask about is not.
        let now = UnitReference.directories(
            IncrementalCollector.sections(["unit-dirs"], in: after.stdoutText)["unit-dirs"] ?? [], root: root)
        let changed = try #require(UnitFileDiff.changed(reference: reference, directories: now, also: []))
        #expect(changed.contains("greeterd.service") && changed.contains("getty@tty3.service"), "\(changed.sorted())")
        #expect(UnitFileDiff.covers(Array(asked), changed), "\(changed.sorted()) not all in \(asked.sorted())")
        #expect(!UnitFileDiff.covers(Array(asked), changed.union(["old.service"])))
        #expect(UnitFileDiff.covers(["getty@*.service"], ["getty@tty1.service", "getty@.service"]))
    }

    @Test func aListingOfAnotherFormatIsRefused() throws {
        let data = Data(#"{"entries":{},"format":99,"key":"x"}"#.utf8)
        #expect(throws: ChangelabError.self) { try FileListing.decode(data) }
    }

    @Test func theFullScriptIsUnchangedByTheListingVariant() {
        let options = InventoryOptions()
        let script = InventoryCollector(runner: LocalShell(), options: options).script
        #expect(script.contains("-printf '%y\\t%m\\t%U\\t%G\\t%s\\t%l\\t%p\\n'\n"))
        #expect(!script.contains("-fprintf"))
        #expect(!script.contains("sec listing"))
    }
}

/// Which units an incremental inventory asks `systemctl list-unit-files` about again.
@Suite struct UnitFileDiffTests {
    static func entry(_ type: String, target: String = "") -> String { "\(type)\t644\t12\t100\t1.0\t1.0\t\(target)" }

    static let reference = UnitReference(
        files: ["getty@.service enabled enabled", "getty@tty1.service enabled enabled", "net.service disabled enabled",
                "net.socket disabled enabled", "ssh.service enabled enabled", "multi-user.target static -"],
        directories: [
            "/lib/systemd/system": entry("d"), "/lib/systemd/system/ssh.service": entry("f"),
            "/lib/systemd/system/net.service": entry("f"), "/lib/systemd/system/net.socket": entry("f"),
            "/lib/systemd/system/getty@.service": entry("f"),
            "/etc/systemd/system/multi-user.target.wants/ssh.service": entry("l", target: "/lib/systemd/system/ssh.service"),
        ],
        also: ["/lib/systemd/system/net.service:Also=net.socket"])

    @Test func nothingChangedAsksAboutNoUnit() {
        #expect(UnitFileDiff.changed(reference: Self.reference, directories: Self.reference.directories, also: Self.reference.also) == [])
    }

    @Test func aNewEnabledServiceNamesItselfAndTheTargetThatWantsIt() {
        var now = Self.reference.directories
        now["/lib/systemd/system/greeterd.service"] = Self.entry("f")
        now["/etc/systemd/system/multi-user.target.wants/greeterd.service"] = Self.entry("l", target: "/lib/systemd/system/greeterd.service")
        now["/lib/systemd/system"] = "d\t755\t12\t100\t2.0\t2.0\t"
        let changed = UnitFileDiff.changed(reference: Self.reference, directories: now, also: Self.reference.also)
        #expect(changed == ["greeterd.service", "multi-user.target"])
    }

    @Test func alsoTemplatesAndDropInsReachTheUnitsTheyTie() {
        var now = Self.reference.directories
        // A socket enabled: the service that names it in Also= may turn indirect.
        now["/etc/systemd/system/sockets.target.wants/net.socket"] = Self.entry("l", target: "/lib/systemd/system/net.socket")
        // A drop-in for an instance: the instance, its template and the template's other instances.
        now["/etc/systemd/system/getty@tty2.service.d/override.conf"] = Self.entry("f")
        // A removed unit file is named too.
        now["/lib/systemd/system/ssh.service"] = nil
        let changed = UnitFileDiff.changed(reference: Self.reference, directories: now, also: Self.reference.also) ?? []
        for name in ["net.socket", "net.service", "sockets.target", "getty@tty2.service", "getty@.service", "getty@tty1.service", "ssh.service"] {
            #expect(changed.contains(name), "\(name) missing from \(changed.sorted())")
        }
        #expect(!changed.contains("multi-user.target"))
    }

    @Test func escapedAndDashNamesAreAskedByNameNotByAskingForEveryUnit() {
        var now = Self.reference.directories
        now["/run/systemd/generator/-.mount"] = Self.entry("f")
        now["/lib/systemd/system/system-systemd\\x2dcryptsetup.slice"] = Self.entry("f")
        let changed = UnitFileDiff.changed(reference: Self.reference, directories: now, also: [])
        #expect(changed == ["-.mount", "system-systemd\\x2dcryptsetup.slice"])
        #expect(UnitFileDiff.patterns(changed ?? []) == ["-.mount", "system-systemd?x2dcryptsetup.slice"])
        now["/lib/systemd/system/odd*.service"] = Self.entry("f")
        #expect(UnitFileDiff.changed(reference: Self.reference, directories: now, also: []) == nil)
    }
}
