// swift-tools-version:6.0
import PackageDescription

// Dependencies point one way:
//   changelab (exe) → ChangelabCLI → ChangeControl / Lab / Distribution → CMDB / Inventory → Model
//                                    Lab → Libvirt → CLibvirt
//                                    Distribution → CNorm (libnorm)
let package = Package(
    name: "changelab",
    products: [
        .executable(name: "changelab", targets: ["changelab"])
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.0.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.80.0"),
        .package(url: "https://github.com/apple/swift-crypto", "3.0.0"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.5.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.0.0"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.20.0"),
        // The core serves HTTPS only: its certificate is made at first start and pinned by clients.
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.29.0"),
        .package(url: "https://github.com/apple/swift-certificates", from: "1.0.0"),
        .package(url: "https://github.com/apple/swift-asn1", from: "1.0.0"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.0.0"),
        // Already pulled in by Hummingbird; named so the core can shut down gracefully.
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.0.0"),
    ],
    targets: [
        // C enters only here: libvirt's client library from Debian's libvirt-dev.
        .systemLibrary(
            name: "CLibvirt",
            pkgConfig: "libvirt",
            providers: [.apt(["libvirt-dev"])]
        ),
        // Swift API over libvirt: connections, domains, snapshots, save/restore, guest agent.
        .target(
            name: "Libvirt",
            dependencies: [
                "CLibvirt", "HostIO",
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        // NORM (RFC 5740) reliable multicast from Debian's libnorm-dev: the segment transport
        // of the distribution engine. shim.h declares the C API it uses (normApi.h is not valid C).
        .systemLibrary(
            name: "CNorm",
            pkgConfig: "norm",
            providers: [.apt(["libnorm-dev"])]
        ),
        // Host plumbing every module shares: atomic files, file locks, child processes.
        .target(name: "HostIO"),
        // The shared vocabulary: recipes, inventories, deltas, versions, records. No I/O.
        .target(
            name: "Model",
            dependencies: [
                .product(name: "Yams", package: "Yams"),
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        // Inventory collection (guest or host) and configuration deltas.
        .target(name: "Inventory", dependencies: ["Model", "HostIO"]),
        // The CMDB: a git-backed store of pretty, stable JSON records.
        .target(
            name: "CMDB",
            dependencies: ["Model", "HostIO", .product(name: "Crypto", package: "swift-crypto")]
        ),
        // The lab: baseline images, restore, guest exec, package builds, the matrix.
        .target(
            name: "Lab",
            dependencies: [
                "Libvirt", "Model", "Inventory", "CMDB", "HostIO",
            ]
        ),
        // Seed-and-activate distribution: core server, agents, rollout control.
        .target(
            name: "Distribution",
            dependencies: [
                "Model", "Inventory", "CMDB", "HostIO", "CNorm",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
            ]
        ),
        // Change control: change records, the approval policy, approvers' keys and signed
        // approvals, the release gate over the lab's signed evidence.
        .target(
            name: "ChangeControl",
            dependencies: [
                "Model", "CMDB", "HostIO",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Yams", package: "Yams"),
            ]
        ),
        // Command-line front end: one file per command under Commands/.
        .target(
            name: "ChangelabCLI",
            dependencies: [
                "Lab", "CMDB", "Inventory", "Distribution", "ChangeControl", "Model", "Libvirt", "HostIO",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
            ]
        ),
        .executableTarget(name: "changelab", dependencies: ["ChangelabCLI"]),

        .testTarget(name: "LibvirtTests", dependencies: ["Libvirt"]),
        .testTarget(name: "ModelTests", dependencies: ["Model", "HostIO"], exclude: ["Fixtures"]),
        .testTarget(name: "HostIOTests", dependencies: ["HostIO"]),
        .testTarget(name: "LabTests", dependencies: ["Lab", "Libvirt", "Model", "HostIO", "changelab"], exclude: ["Fixtures"]),
        .testTarget(name: "InventoryTests", dependencies: ["Inventory", "Model", "HostIO"], exclude: ["Fixtures"]),
        .testTarget(name: "ChangeControlTests", dependencies: ["ChangeControl", "CMDB", "Model", "HostIO", "Lab"]),
        .testTarget(name: "CMDBTests", dependencies: ["CMDB", "Model", "HostIO", "changelab"]),
        .testTarget(
            name: "DistributionTests",
            dependencies: [
                "Distribution", "CMDB", "Model", "HostIO", "changelab",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
