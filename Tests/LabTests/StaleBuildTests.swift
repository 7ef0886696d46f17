import Foundation
import HostIO
import Model
import Testing

@testable import Lab

/// A build killed hard leaves its work folder with /proc mounted in it: the next build of
/// that baseline unmounts and removes it, and nothing of any other baseline.
@Suite struct StaleBuildTests {
    @Test func theNextBuildRemovesWhatAKilledBuildLeftMounted() async throws {
        let home = LabHome(root: NSTemporaryDirectory() + "changelab-stale-\(UUID().uuidString.prefix(8))")
        defer { try? FileManager.default.removeItem(atPath: home.root) }
        let killed = ImageBuilder.workName("web", recipeDigest: SHA256Digest(of: "web recipe v1"))
        let others = ["web-extra-0123456789ab", "db-0123456789ab", "web-notadigest1", "web"]
        for entry in [killed] + others {
            try FileManager.default.createDirectory(
                atPath: "\(home.builds)/\(entry)/rootfs/proc", withIntermediateDirectories: true)
        }
        let proc = "\(home.builds)/\(killed)/rootfs/proc"
        try await HostCommand.check("mount", ["-t", "proc", "proc", proc])
        func mounted() -> Bool {
            ((try? String(contentsOfFile: "/proc/mounts", encoding: .utf8)) ?? "").contains(" \(proc) ")
        }
        #expect(mounted())

        let removed = try await ImageBuilder.removeStaleWork(of: "web", home: home)
        #expect(removed == [killed])
        #expect(!mounted())
        #expect(!FileManager.default.fileExists(atPath: "\(home.builds)/\(killed)"))
        for entry in others { #expect(FileManager.default.fileExists(atPath: "\(home.builds)/\(entry)"), "\(entry)") }
        // The host's own /proc is untouched.
        #expect(FileManager.default.fileExists(atPath: "/proc/self/status"))
    }
}
