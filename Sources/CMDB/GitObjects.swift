import Crypto
import Foundation
import HostIO
import Model

#if canImport(Glibc)
    import Glibc
#endif

/// Writes git objects and moves a branch directly, without spawning git.
///
/// Spawning `git add` + `git commit` costs about 35 ms per record here (git re-stats the
/// whole work tree); writing the blob, the few trees on the changed paths and the commit
/// ourselves costs a few file writes. Objects are loose, zlib-framed with stored
/// (uncompressed) deflate blocks, which every git reads; `git gc` packs them later. Reading
/// stays with git itself (`ls-tree`, `log`, `fsck`).
struct GitObjectWriter {
    let gitDirectory: String

    enum ObjectType: String {
        case blob, tree, commit
    }

    /// Writes an object (if not already there) and returns its SHA-1 in hex.
    @discardableResult
    func write(_ type: ObjectType, _ content: Data) throws -> String {
        let id = Self.id(type, content)
        let directory = "\(gitDirectory)/objects/\(id.prefix(2))"
        let path = "\(directory)/\(id.dropFirst(2))"
        if access(path, F_OK) == 0 { return id }
        var framed = Data("\(type.rawValue) \(content.count)\0".utf8)
        framed.append(content)
        try Self.writeObjectFile(Self.zlibStored(framed), directory: directory, path: path)
        return id
    }

    /// Temp file + rename, without an fsync each: the writer makes all of a transaction's
    /// objects durable with one `syncfs` before the journal and the branch name them (as
    /// git's `core.fsyncMethod=batch`). An fsync per object costs 1–6 ms on this machine's
    /// shared disk, five of them per transaction would halve the recording rate.
    static func writeObjectFile(_ data: Data, directory: String, path: String) throws {
        if mkdir(directory, 0o755) != 0 && errno != EEXIST { throw IOFailure.last("create \(directory)") }
        let temp = "\(directory)/tmp_obj_\(getpid())_\(UInt32.random(in: 0...UInt32.max))"
        let fd = open(temp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o444)
        guard fd >= 0 else { throw IOFailure.last("create \(temp)") }
        var ok = false
        defer {
            close(fd)
            if !ok { unlink(temp) }
        }
        try data.withUnsafeBytes { raw in
            guard let base = raw.baseAddress else { return }
            var offset = 0
            while offset < raw.count {
                let n = Glibc.write(fd, base + offset, raw.count - offset)
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { throw IOFailure.last("write \(temp)") }
                offset += n
            }
        }
        guard rename(temp, path) == 0 else { throw IOFailure.last("rename \(temp)") }
        ok = true
    }

    static func id(_ type: ObjectType, _ content: Data) -> String {
        var hasher = Insecure.SHA1()
        hasher.update(data: Data("\(type.rawValue) \(content.count)\0".utf8))
        hasher.update(data: content)
        return hasher.finalize().hexString
    }

    /// A zlib stream of stored deflate blocks (RFC 1950/1951) with its Adler-32 trailer.
    static func zlibStored(_ data: Data) -> Data {
        var out = Data([0x78, 0x01])
        out.reserveCapacity(data.count + data.count / 65535 * 5 + 16)
        var offset = 0
        repeat {
            let length = min(65535, data.count - offset)
            let final = offset + length == data.count
            out.append(final ? 1 : 0)
            out.append(UInt8(length & 0xff))
            out.append(UInt8(length >> 8))
            out.append(UInt8(~length & 0xff))
            out.append(UInt8((~length >> 8) & 0xff))
            out.append(data[data.startIndex + offset..<data.startIndex + offset + length])
            offset += length
        } while offset < data.count
        var a: UInt32 = 1
        var b: UInt32 = 0
        data.withUnsafeBytes { raw in
            var index = 0
            while index < raw.count {
                // 5552 bytes is the most that can be summed before the modulo overflows.
                let end = min(raw.count, index + 5552)
                while index < end {
                    a &+= UInt32(raw[index])
                    b &+= a
                    index += 1
                }
                a %= 65521
                b %= 65521
            }
        }
        let adler = b << 16 | a
        out.append(contentsOf: [
            UInt8(adler >> 24), UInt8((adler >> 16) & 0xff), UInt8((adler >> 8) & 0xff), UInt8(adler & 0xff),
        ])
        return out
    }

    /// A tree object from its entries, in git's order (folders sort as if followed by `/`).
    static func treeContent(_ entries: [String: TreeEntry]) -> Data {
        let sorted = entries.sorted { lhs, rhs in
            let l = Array(lhs.key.utf8) + (lhs.value.isTree ? [UInt8(ascii: "/")] : [])
            let r = Array(rhs.key.utf8) + (rhs.value.isTree ? [UInt8(ascii: "/")] : [])
            return l.lexicographicallyPrecedes(r)
        }
        var data = Data()
        for (name, entry) in sorted {
            data.append(contentsOf: Array("\(entry.mode) \(name)\0".utf8))
            data.append(contentsOf: Self.bytes(ofHex: entry.id))
        }
        return data
    }

    static func bytes(ofHex hex: String) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(20)
        var iterator = hex.utf8.makeIterator()
        func nibble(_ c: UInt8) -> UInt8 {
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
            default: return 0
            }
        }
        while let high = iterator.next(), let low = iterator.next() {
            bytes.append(nibble(high) << 4 | nibble(low))
        }
        return bytes
    }

    /// `.git/refs/heads/NAME`, or its line in packed-refs; nil before the first commit.
    func readBranch(_ name: String) -> String? {
        if let text = try? String(contentsOfFile: "\(gitDirectory)/refs/heads/\(name)", encoding: .utf8) {
            let id = text.trimmingCharacters(in: .whitespacesAndNewlines)
            if id.count == 40 { return id }
        }
        guard let packed = try? String(contentsOfFile: "\(gitDirectory)/packed-refs", encoding: .utf8) else {
            return nil
        }
        for line in packed.split(separator: "\n") where line.hasSuffix(" refs/heads/\(name)") {
            return String(line.prefix(40))
        }
        return nil
    }

    /// True when the loose ref file is there but does not hold an object id: a crash while
    /// the writer's last `syncfs` ran, on a file system that can keep a rename without the
    /// data renamed. Recovery then points the branch at the journal's commit.
    func branchFileIsTorn(_ name: String) -> Bool {
        guard let data = FileManager.default.contents(atPath: "\(gitDirectory)/refs/heads/\(name)") else { return false }
        let text = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        return !(text.count == 40 && text.allSatisfy(\.isHexDigit))
    }

    /// Points the branch at `id` the way git does: create `NAME.lock` exclusively, write,
    /// fsync, rename over the ref.
    ///
    /// The lock is git's own: while another git command holds it (a `git commit`, `gc`,
    /// `fetch` in the CMDB) this waits up to `timeout`, then fails naming the lock, and never
    /// removes it. With the lock held, the branch must still be at `expecting`, or a commit
    /// made behind the CMDB's back would be silently dropped.
    ///
    /// - Parameter durable: false skips the fsyncs, for the writer, which makes the whole
    ///   transaction durable with one `syncfs` after this.
    func updateBranch(
        _ name: String, to id: String, expecting: String?, timeout: Duration = .seconds(10), durable: Bool = true
    ) throws {
        let path = "\(gitDirectory)/refs/heads/\(name)"
        let lockPath = path + ".lock"
        let deadline = ContinuousClock.now + timeout
        var fd: Int32 = -1
        while true {
            fd = open(lockPath, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
            if fd >= 0 { break }
            guard errno == EEXIST else { throw IOFailure.last("create \(lockPath)") }
            guard ContinuousClock.now < deadline else {
                throw ChangelabError(
                    "cannot move the CMDB branch: git's lock \(lockPath) has been held for over \(timeout)",
                    why: "another git command is updating the branch, or one was killed and left its lock",
                    fix: "wait for that git command to finish; if no git runs in the CMDB any more, remove "
                        + "\(lockPath) and run 'changelab cmdb recover' (nothing acknowledged was lost)")
            }
            usleep(20_000)
        }
        var renamed = false
        defer {
            close(fd)
            if !renamed { unlink(lockPath) }
        }
        let current = readBranch(name)
        guard current == expecting else {
            throw ChangelabError(
                "the CMDB branch '\(name)' moved to \(current?.prefix(12) ?? "nothing") while this transaction was "
                    + "based on \(expecting?.prefix(12) ?? "no commit")",
                why: "something other than changelab committed to the CMDB (git by hand?)",
                fix: "run 'changelab cmdb verify' to see the foreign commit; undo it with git, then write again")
        }
        let line = Array((id + "\n").utf8)
        let written = line.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        guard written == line.count else { throw IOFailure.last("write \(lockPath)") }
        if durable { guard fsync(fd) == 0 else { throw IOFailure.last("fsync \(lockPath)") } }
        guard rename(lockPath, path) == 0 else { throw IOFailure.last("rename \(lockPath)") }
        renamed = true
        if durable { AtomicFile.syncDirectory((path as NSString).deletingLastPathComponent) }
    }
}

/// One entry of a tree: a blob (`100644`) or a subtree (`40000`).
struct TreeEntry: Equatable, Sendable {
    var mode: String
    var id: String
    var isTree: Bool { mode == "40000" }
}

/// The committed tree of the CMDB, folder by folder, so a transaction rewrites only the
/// trees on the paths it touches.
struct TreeCache: Sendable {
    /// The commit these trees belong to; nil for an empty repository.
    var commit: String?
    /// Folder path ("" for the root) → its entries.
    var folders: [String: [String: TreeEntry]] = ["": [:]]

    /// Reads the whole tree of `commit` with one `git ls-tree`.
    static func load(repository: String, commit: String?) async throws -> TreeCache {
        var cache = TreeCache(commit: commit)
        guard let commit else { return cache }
        let result = try await HostCommand.check(
            "git", ["-C", repository, "ls-tree", "-r", "-t", "-z", "--full-tree", commit], timeout: .seconds(300))
        for record in result.stdout.split(separator: 0) {
            // "<mode> <type> <id>\t<path>"
            guard let tab = record.firstIndex(of: 0x09) else { continue }
            let head = String(decoding: record[record.startIndex..<tab], as: UTF8.self).split(separator: " ")
            let path = String(decoding: record[(tab + 1)...], as: UTF8.self)
            guard head.count == 3 else { continue }
            let (folder, name) = split(path)
            let mode = head[0] == "040000" ? "40000" : String(head[0])
            cache.folders[folder, default: [:]][name] = TreeEntry(mode: mode, id: String(head[2]))
            if mode == "40000" { cache.folders[path, default: [:]] = cache.folders[path] ?? [:] }
        }
        return cache
    }

    static func split(_ path: String) -> (folder: String, name: String) {
        guard let slash = path.lastIndex(of: "/") else { return ("", path) }
        return (String(path[..<slash]), String(path[path.index(after: slash)...]))
    }

    /// Applies blob changes (path → blob id, nil to delete), writes the changed trees
    /// bottom-up and returns the new root tree id.
    mutating func apply(_ changes: [String: String?], writer: GitObjectWriter) throws -> String {
        var dirty = Set<String>([""])
        for (path, blob) in changes {
            let (folder, name) = Self.split(path)
            if let blob {
                folders[folder, default: [:]][name] = TreeEntry(mode: "100644", id: blob)
            } else {
                folders[folder]?[name] = nil
            }
            var current = folder
            while true {
                dirty.insert(current)
                if current.isEmpty { break }
                current = Self.split(current).folder
            }
        }
        // Deepest folders first, so each parent sees its children's new ids.
        for folder in dirty.sorted(by: { $0.split(separator: "/").count > $1.split(separator: "/").count }) {
            let entries = folders[folder] ?? [:]
            if folder.isEmpty { continue }
            let (parent, name) = Self.split(folder)
            if entries.isEmpty {
                folders[folder] = nil
                folders[parent]?[name] = nil
            } else {
                let id = try writer.write(.tree, GitObjectWriter.treeContent(entries))
                folders[parent, default: [:]][name] = TreeEntry(mode: "40000", id: id)
            }
        }
        return try writer.write(.tree, GitObjectWriter.treeContent(folders[""] ?? [:]))
    }

    /// The blob id of `path` in this tree, nil when it is not there.
    func blob(at path: String) -> String? {
        let (folder, name) = Self.split(path)
        return folders[folder]?[name].flatMap { $0.isTree ? nil : $0.id }
    }

    /// Every blob path in the tree.
    var allBlobs: [String: String] {
        var result: [String: String] = [:]
        for (folder, entries) in folders {
            for (name, entry) in entries where !entry.isTree {
                result[folder.isEmpty ? name : "\(folder)/\(name)"] = entry.id
            }
        }
        return result
    }
}
