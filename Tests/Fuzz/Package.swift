// swift-tools-version:6.0
import PackageDescription

// libFuzzer targets for changelab's parsers, built apart from the main package so the
// instrumented build never slows `swift build` there and never pulls in NIO.
//
// Sources/{HostIO,Model,Inventory,CMDB} are symlinks to the real modules; Sources/Wire links
// Distribution's NIO-free Wire.swift and Signing.swift, so the wire messages are decoded by
// the very types the core and the agents use. Build and run with `lab/fuzz` (see README).
let package = Package(
    name: "changelab-fuzz",
    dependencies: [
        .package(url: "https://github.com/jpsim/Yams", from: "6.0.0"),
        .package(url: "https://github.com/apple/swift-crypto", "3.0.0"..<"5.0.0"),
    ],
    targets: [
        .target(name: "HostIO"),
        .target(name: "FuzzDriver"),
        .target(
            name: "Model",
            dependencies: [
                .product(name: "Yams", package: "Yams"), .product(name: "Crypto", package: "swift-crypto"),
            ]),
        .target(name: "Inventory", dependencies: ["Model", "HostIO"]),
        .target(name: "CMDB", dependencies: ["Model", "HostIO", .product(name: "Crypto", package: "swift-crypto")]),
        .target(
            name: "Wire", dependencies: ["Model", "HostIO", .product(name: "Crypto", package: "swift-crypto")]),
        .executableTarget(name: "fuzz-query", dependencies: ["FuzzDriver", "Model"], path: "Targets/query"),
        .executableTarget(name: "fuzz-recipes", dependencies: ["FuzzDriver", "Model"], path: "Targets/recipes"),
        .executableTarget(name: "fuzz-inventory", dependencies: ["FuzzDriver", "Inventory", "Model"], path: "Targets/inventory"),
        .executableTarget(name: "fuzz-query-index", dependencies: ["FuzzDriver", "CMDB", "Model"], path: "Targets/query-index"),
        .executableTarget(name: "fuzz-wire", dependencies: ["FuzzDriver", "Wire", "Model"], path: "Targets/wire"),
    ],
    swiftLanguageModes: [.v6]
)
