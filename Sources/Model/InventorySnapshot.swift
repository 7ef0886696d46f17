/// Everything changelab records about one system's configuration at one moment.
///
/// A snapshot holds no timestamps or other values that change on their own, so two
/// collections of an unchanged system encode to the same bytes and the CMDB stores them
/// once, under the SHA-256 of their stable JSON. When and by whom a snapshot was taken is
/// kept by the record that refers to it.
public struct InventorySnapshot: Codable, Sendable, Equatable {
    public var hostname: String
    public var os: OSRelease
    public var kernel: KernelInfo
    public var cpu: CPUInfo
    public var memory: MemoryInfo
    public var disks: [DiskRecord]
    public var packages: [PackageRecord]
    /// The paths whose files were collected; files elsewhere are not in `files`.
    public var watchedPaths: [String]
    public var files: [FileRecord]
    public var units: [UnitRecord]
    public var users: [UserRecord]
    public var groups: [GroupRecord]
    public var ports: [PortRecord]

    public init(
        hostname: String = "", os: OSRelease = OSRelease(), kernel: KernelInfo = KernelInfo(), cpu: CPUInfo = CPUInfo(),
        memory: MemoryInfo = MemoryInfo(), disks: [DiskRecord] = [], packages: [PackageRecord] = [],
        watchedPaths: [String] = [], files: [FileRecord] = [], units: [UnitRecord] = [], users: [UserRecord] = [],
        groups: [GroupRecord] = [], ports: [PortRecord] = []
    ) {
        self.hostname = hostname
        self.os = os
        self.kernel = kernel
        self.cpu = cpu
        self.memory = memory
        self.disks = disks
        self.packages = packages
        self.watchedPaths = watchedPaths
        self.files = files
        self.units = units
        self.users = users
        self.groups = groups
        self.ports = ports
    }

    /// Sorts every list by its key, so equal systems encode identically.
    public func normalized() -> InventorySnapshot {
        var copy = self
        copy.disks.sort { $0.mountPoint < $1.mountPoint }
        copy.packages.sort { ($0.name, $0.architecture) < ($1.name, $1.architecture) }
        copy.watchedPaths.sort()
        copy.files.sort { $0.path < $1.path }
        copy.units.sort { $0.name < $1.name }
        copy.users.sort { $0.name < $1.name }
        copy.groups.sort { $0.name < $1.name }
        copy.ports.sort { $0.key < $1.key }
        return copy
    }
}

/// `/etc/os-release`, the fields that identify a distribution release.
public struct OSRelease: Codable, Sendable, Equatable {
    public var id: String
    public var versionID: String
    public var versionCodename: String
    public var prettyName: String

    public init(id: String = "", versionID: String = "", versionCodename: String = "", prettyName: String = "") {
        self.id = id
        self.versionID = versionID
        self.versionCodename = versionCodename
        self.prettyName = prettyName
    }
}

public struct KernelInfo: Codable, Sendable, Equatable {
    /// `uname -r`, for example `6.1.0-18-amd64`.
    public var release: String
    /// `uname -m`, for example `x86_64`.
    public var machine: String

    public init(release: String = "", machine: String = "") {
        self.release = release
        self.machine = machine
    }
}

public struct CPUInfo: Codable, Sendable, Equatable {
    public var model: String
    public var count: Int

    public init(model: String = "", count: Int = 0) {
        self.model = model
        self.count = count
    }
}

public struct MemoryInfo: Codable, Sendable, Equatable {
    public var totalKiB: Int

    public init(totalKiB: Int = 0) { self.totalKiB = totalKiB }
}

/// A mounted file system; its used and free space are left out: they change on their own.
public struct DiskRecord: Codable, Sendable, Equatable {
    public var mountPoint: String
    public var device: String
    public var fileSystem: String
    public var sizeKiB: Int

    public init(mountPoint: String, device: String, fileSystem: String, sizeKiB: Int) {
        self.mountPoint = mountPoint
        self.device = device
        self.fileSystem = fileSystem
        self.sizeKiB = sizeKiB
    }
}

/// A package dpkg knows, as `dpkg-query` reports it.
public struct PackageRecord: Codable, Sendable, Equatable {
    public var name: String
    public var architecture: String
    /// The version text as dpkg reports it; compare through `debianVersion`, never as text.
    public var version: String
    /// dpkg's status triple, for example `install ok installed` or `deinstall ok config-files`.
    public var status: String

    public init(name: String, architecture: String, version: String, status: String = "install ok installed") {
        self.name = name
        self.architecture = architecture
        self.version = version
        self.status = status
    }

    public var debianVersion: DebianVersion? { try? DebianVersion(lenient: version) }
    public var isInstalled: Bool { status.hasSuffix(" installed") }
}

/// A file, directory or link under a watched path.
public struct FileRecord: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable {
        case file, directory, symlink, other
    }

    public var path: String
    public var kind: Kind
    /// Permission bits in octal, four digits: `0644`, `4755`.
    public var mode: String
    public var owner: String
    public var group: String
    /// Size in bytes, for regular files only (a directory's size is noise).
    public var size: Int?
    /// SHA-256 of a regular file's content; nil when it could not be read.
    public var sha256: String?
    /// Where a symbolic link points.
    public var linkTarget: String?

    public init(
        path: String, kind: Kind, mode: String, owner: String, group: String, size: Int? = nil, sha256: String? = nil,
        linkTarget: String? = nil
    ) {
        self.path = path
        self.kind = kind
        self.mode = mode
        self.owner = owner
        self.group = group
        self.size = size
        self.sha256 = sha256
        self.linkTarget = linkTarget
    }
}

/// A systemd unit: whether it is enabled (its unit-file state) and whether it runs.
public struct UnitRecord: Codable, Sendable, Equatable {
    public var name: String
    /// `enabled`, `disabled`, `static`, `masked`, … (`systemctl list-unit-files`).
    public var enabled: String
    /// `active`, `inactive`, `failed`, … or `unknown` when systemd was not running.
    public var active: String

    public init(name: String, enabled: String, active: String) {
        self.name = name
        self.enabled = enabled
        self.active = active
    }
}

public struct UserRecord: Codable, Sendable, Equatable {
    public var name: String
    public var uid: Int
    public var gid: Int
    public var home: String
    public var shell: String

    public init(name: String, uid: Int, gid: Int, home: String, shell: String) {
        self.name = name
        self.uid = uid
        self.gid = gid
        self.home = home
        self.shell = shell
    }
}

public struct GroupRecord: Codable, Sendable, Equatable {
    public var name: String
    public var gid: Int
    public var members: [String]

    public init(name: String, gid: Int, members: [String] = []) {
        self.name = name
        self.gid = gid
        self.members = members
    }
}

/// A listening TCP socket or a bound, unconnected UDP socket.
public struct PortRecord: Codable, Sendable, Equatable {
    public enum Transport: String, Codable, Sendable {
        case tcp, udp
    }

    public var transport: Transport
    /// The local address: `0.0.0.0`, `127.0.0.1`, `::`, `::1`, …
    public var address: String
    public var port: Int

    public init(transport: Transport, address: String, port: Int) {
        self.transport = transport
        self.address = address
        self.port = port
    }

    /// `tcp 0.0.0.0:22`, `udp [::]:53`.
    public var key: String {
        let host = address.contains(":") ? "[\(address)]" : address
        return "\(transport.rawValue) \(host):\(port)"
    }
}
