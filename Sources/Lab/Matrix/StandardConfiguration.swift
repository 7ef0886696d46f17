import CMDB
import Foundation
import Model

/// What a baseline's current CMDB version adds to its built image: the artifacts adopted
/// into it (`baseline adopt`), which a cell installs on the restored guest, in adoption
/// order, before the package under test — so the matrix tests the standard configuration the
/// CMDB claims (image + adopted changes), not the bare image.
///
/// A version reverted by a rollback stands for the configuration from before the adoption:
/// the reverted artifact is not installed.
public struct StandardConfiguration: Codable, Sendable, Equatable {
    /// One adopted artifact, as the version that adopted it names it.
    public struct Adopted: Codable, Sendable, Equatable {
        /// The baseline version that adopted it (`NAME@N`).
        public var version: BaselineRef
        public var artifact: SHA256Digest
        public var package: String
        public var packageVersion: String
        /// The change record the adoption documented, if any.
        public var change: String?

        public init(
            version: BaselineRef, artifact: SHA256Digest, package: String, packageVersion: String, change: String? = nil
        ) {
            self.version = version
            self.artifact = artifact
            self.package = package
            self.packageVersion = packageVersion
            self.change = change
        }

        /// "greeterd 1.1.0 (e193b954c650, adopted as web@2 for CHG-0001)"
        public var label: String {
            "\(package) \(packageVersion) (\(artifact.short), adopted as \(version)\(change.map { " for \($0)" } ?? ""))"
        }
    }

    /// The version the cells test.
    public var version: BaselineRef
    /// The built version whose image the adoptions stand on.
    public var built: BaselineRef
    /// The adopted artifacts still in the configuration, oldest first.
    public var adopted: [Adopted]

    public init(version: BaselineRef, built: BaselineRef, adopted: [Adopted]) {
        self.version = version
        self.built = built
        self.adopted = adopted
    }

    /// The adopted artifacts a cell of `lane` installs before testing `package`.
    ///
    /// Adoptions of other packages are always installed. A release of `package` itself that
    /// was adopted is installed in the install and reinstall lanes — the artifact then goes
    /// over it, as it would on a target of this version, and the delta is what it changes
    /// there — and left out in the upgrade lane (which starts from the earlier release, not
    /// a downgrade) and the uninstall lane (whose residue must be measured against the
    /// standard configuration without the package, or removing it would always count).
    public func installs(for lane: MatrixLane, testing package: String) -> [Adopted] {
        switch lane {
        case .install, .reinstall: return adopted
        case .upgrade, .uninstall: return adopted.filter { $0.package != package }
        }
    }

    /// The newest version of `name` in `store` when adoptions stand on the image of
    /// `imageDigest` (its chain of adopted and reverted versions leads back to the built
    /// version of that image and recipe); nil
    /// when the newest version is a built one, or stands on another image (rebuilt since:
    /// the run records a new built version, as before).
    public static func current(
        of name: String, imageDigest: SHA256Digest, recipeDigest: SHA256Digest, in store: CMDBStore
    ) throws -> StandardConfiguration? {
        let versions = try store.baselineVersions(name)
        guard let latest = versions.last, latest.origin != .built else { return nil }
        let (built, adoptions) = try chain(from: latest, versions: versions)
        guard built.imageDigest == imageDigest, built.recipeDigest == recipeDigest else { return nil }
        let adopted = try adoptions.map { version -> Adopted in
            guard let adoption = version.adoption else {
                throw ChangelabError("\(version.ref) is adopted but names no artifact", fix: "run 'changelab cmdb verify'")
            }
            let artifact = try? store.read(ArtifactRecord.self, adoption.artifact.hex)
            return Adopted(
                version: version.ref, artifact: adoption.artifact, package: artifact?.package ?? "?",
                packageVersion: artifact?.version ?? "?", change: adoption.change)
        }
        return StandardConfiguration(version: latest.ref, built: built.ref, adopted: adopted)
    }

    /// Walks from `latest` back to its built version: an adopted version adds its artifact on
    /// top of its previous version; a reverted one is the configuration its previous
    /// (adopted) version was adopted onto.
    static func chain(
        from latest: BaselineVersionRecord, versions: [BaselineVersionRecord]
    ) throws -> (built: BaselineVersionRecord, adopted: [BaselineVersionRecord]) {
        let byNumber = Dictionary(versions.map { ($0.version, $0) }, uniquingKeysWith: { first, _ in first })
        func version(_ number: Int?, of record: BaselineVersionRecord) throws -> BaselineVersionRecord {
            guard let number, let found = byNumber[number] else {
                throw ChangelabError(
                    "\(record.ref) (\(record.origin.rawValue)) names no earlier version the CMDB has",
                    fix: "run 'changelab cmdb verify'; record the standard again with 'changelab baseline build \(record.name)'")
            }
            return found
        }
        var adopted: [BaselineVersionRecord] = []
        var current = latest
        // Each step goes to a lower version, so the walk ends within the number of versions.
        for _ in 0...versions.count {
            switch current.origin {
            case .built:
                return (current, adopted.reversed())
            case .adopted:
                adopted.append(current)
                current = try version(current.previousVersion, of: current)
            case .reverted:
                let undone = try version(current.previousVersion, of: current)
                guard undone.origin == .adopted else {
                    throw ChangelabError(
                        "\(current.ref) reverts \(undone.ref), which is not an adoption",
                        fix: "run 'changelab cmdb verify'")
                }
                current = try version(undone.previousVersion, of: undone)
            }
        }
        throw ChangelabError(
            "the versions of baseline \(latest.name) do not lead back to a built one", fix: "run 'changelab cmdb verify'")
    }
}

/// The CMDB the matrix reads baselines' standard configurations from, when there is one.
struct StandardStore {
    let store: CMDBStore?

    init(path: String?) throws {
        guard let path, FileManager.default.fileExists(atPath: path) else {
            store = nil
            return
        }
        store = try CMDBStore.open(path)
    }

    func current(of name: String, image: BaselineImage) throws -> StandardConfiguration? {
        guard let store else { return nil }
        return try StandardConfiguration.current(
            of: name, imageDigest: image.imageDigest, recipeDigest: image.recipeDigest, in: store)
    }
}

/// What one cell installs before the package under test: the adopted artifacts of its
/// baseline version for its lane, each resolved in the lab's artifact store (or why not).
struct CellPreparation: Sendable {
    let standard: StandardConfiguration
    let installs: [(StandardConfiguration.Adopted, Result<ArtifactManifest, ChangelabError>)]

    /// The own tests of every adopted package the cell installs, other than the package under
    /// test (whose tests the cell runs anyway), each package once with its latest adoption:
    /// they belong to the standard configuration as the baseline's standing suite does, so a
    /// package that breaks an adopted one fails on that version as it would on its targets.
    func adoptedTests(
        testing package: String, tests: (PackageRecipe) -> [String]
    ) -> [(adopted: StandardConfiguration.Adopted, tests: [String])] {
        var latest: [String: (StandardConfiguration.Adopted, ArtifactManifest)] = [:]
        var order: [String] = []
        for (adopted, resolved) in installs where adopted.package != package {
            guard case .success(let manifest) = resolved else { continue }
            if latest[adopted.package] == nil { order.append(adopted.package) }
            latest[adopted.package] = (adopted, manifest)
        }
        return order.compactMap { name in
            guard let (adopted, manifest) = latest[name] else { return nil }
            let found = tests(manifest.recipe)
            return found.isEmpty ? nil : (adopted, found)
        }
    }

    /// The first adopted artifact that cannot be installed, as the cell's reason.
    var unusable: ChangelabError? {
        for (_, resolved) in installs {
            if case .failure(let error) = resolved { return error }
        }
        return nil
    }
}
