import FuzzDriver
import Model

/// libFuzzer entry: the same YAML through the baseline and the package recipe readers; each
/// either returns a recipe or throws a `SpecError`, never traps.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzRecipes(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let text = String(decoding: UnsafeRawBufferPointer(start: start, count: count), as: UTF8.self)
    _ = try? BaselineRecipe.parse(text, file: "fuzz.yaml")
    _ = try? PackageRecipe.parse(text, file: "fuzz.yaml")
    return 0
}

@_cdecl("fuzz_recipes_main")
public func main(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv) { fuzzRecipes($0, $1) }
}
