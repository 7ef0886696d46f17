/// Where a changelab project keeps its inputs: baselines/, packages/, lab/ under one root.
public struct Project: Sendable, Equatable {
    /// Absolute path of the project root.
    public let root: String

    public init(root: String) {
        self.root = root.count > 1 && root.hasSuffix("/") ? String(root.dropLast()) : root
    }

    public var baselinesDirectory: String { root + "/baselines" }
    public var packagesDirectory: String { root + "/packages" }
    public var labDirectory: String { root + "/lab" }
    /// `lab/hosts.yaml`: the libvirt hosts the lab may use.
    public var hostsFile: String { labDirectory + "/hosts.yaml" }
    /// The default CMDB location (`--cmdb` and `CHANGELAB_CMDB` override it).
    public var defaultCMDB: String { root + "/cmdb" }

    public func baselineRecipe(_ name: String) -> String { "\(baselinesDirectory)/\(name).yaml" }
    public func baselineTests(_ name: String) -> String { "\(baselinesDirectory)/\(name)/tests" }
    public func packageDirectory(_ name: String) -> String { "\(packagesDirectory)/\(name)" }
    public func packageRecipe(_ name: String) -> String { "\(packageDirectory(name))/package.yaml" }

    /// `path` relative to the root when it is inside it, for messages people read.
    public func display(_ path: String) -> String {
        path.hasPrefix(root + "/") ? String(path.dropFirst(root.count + 1)) : path
    }
}
