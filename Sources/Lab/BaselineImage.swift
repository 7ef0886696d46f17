import Foundation
import HostIO
import Model

/// What the lab knows about one built version of a baseline (`build.json` in its image
/// folder). Versioned: a newer format is refused rather than misread.
public struct BaselineImage: Codable, Sendable, Equatable {
    public static let formatVersion = 1

    /// One parallel slot: a booted copy of the image saved to memory, which restores in
    /// about a second onto a fresh overlay. libvirt restores a saved image only under the
    /// same domain name and UUID, so each slot has its own.
    public struct Slot: Codable, Sendable, Equatable {
        public var index: Int
        public var domain: String
        /// The slot's frozen disk overlay (read-only): the disk state the memory image matches.
        public var disk: String
        /// Where the console log was when the slot was saved (rewritten on restore).
        public var console: String
        public var saveFile: String
        public var bootSeconds: Double
        public var savedAt: Date
        /// Units that failed to start while the slot booted (empty on a healthy image).
        public var failedUnits: [String]
        /// The lab host (by name in lab/hosts.yaml) whose libvirtd saved it; nil means the
        /// first host. A memory image restores only where it was saved.
        public var host: String?
    }

    /// The standing regression suite's run on a fresh restore, right after the build.
    public struct Validation: Codable, Sendable, Equatable {
        public var testsDigest: SHA256Digest
        public var results: [TestOutcome]
        public var at: Date
        public var passed: Bool { results.allSatisfy(\.passed) }
    }

    public var format: Int
    public var name: String
    public var recipeDigest: SHA256Digest
    public var imageDigest: SHA256Digest
    public var suite: String
    public var memoryMiB: Int
    public var vcpus: Int
    /// `qemu` or `kvm`: a memory image only restores under the accelerator that made it.
    public var domainType: String
    public var directory: String
    public var builtAt: Date
    public var imageSeconds: Double
    public var slots: [Slot]
    public var validation: Validation?

    public var disk: String { directory + "/base.qcow2" }
    public var kernel: String { directory + "/vmlinuz" }
    public var initrd: String { directory + "/initrd.img" }
    public var recordPath: String { directory + "/build.json" }

    public enum Status: String, Codable, Sendable {
        /// The disk exists but no slot has been booted and saved yet.
        case imaged
        /// Saved, but its standing suite has not run for the current tests.
        case unvalidated
        /// Saved and its standing suite passed: usable by the matrix.
        case ready
        /// Its own standing suite failed: not usable.
        case failed
    }

    public func status(testsDigest: SHA256Digest) -> Status {
        guard !slots.isEmpty else { return .imaged }
        guard let validation, validation.testsDigest == testsDigest else { return .unvalidated }
        return validation.passed ? .ready : .failed
    }

    public static func load(from directory: String) throws -> BaselineImage? {
        let path = directory + "/build.json"
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        struct Header: Decodable { var format: Int }
        let header = try? StableJSON.decode(Header.self, from: data)
        guard let header else {
            throw ChangelabError(
                "\(path) is not a readable image record", fix: "rebuild it: changelab baseline build --force <name>")
        }
        guard header.format <= formatVersion else {
            throw ChangelabError(
                "\(path) was written by a newer changelab (format \(header.format), this one reads \(formatVersion))",
                fix: "upgrade changelab, or rebuild with --force")
        }
        return try StableJSON.decode(BaselineImage.self, from: data)
    }

    public func save() throws {
        try AtomicFile.write(try StableJSON.data(self), to: recordPath)
    }
}

/// One standing (or package) test's result.
public struct TestOutcome: Codable, Sendable, Equatable {
    public var name: String
    public var exitCode: Int32
    public var timedOut: Bool
    public var seconds: Double
    /// The last lines of its output, to say why it failed.
    public var outputTail: String
    /// Its run time by the guest's own clock (nil when not measured, e.g. killed).
    public var guestSeconds: Double?

    public var passed: Bool { exitCode == 0 && !timedOut }

    public init(
        name: String, exitCode: Int32, timedOut: Bool, seconds: Double, outputTail: String, guestSeconds: Double? = nil
    ) {
        self.name = name
        self.exitCode = exitCode
        self.timedOut = timedOut
        self.seconds = seconds
        self.outputTail = outputTail
        self.guestSeconds = guestSeconds
    }
}
