import FuzzDriver
import Model

/// libFuzzer entry: any text is either a query or a `QuerySyntaxError`, never a trap; a query
/// that parses also evaluates against an empty subject.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzQuery(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let text = String(decoding: UnsafeRawBufferPointer(start: start, count: count), as: UTF8.self)
    if let query = try? Query(text) {
        _ = query.matches(QuerySubject(attributes: ["site": "paris", "kind": "target"], inventory: nil))
    }
    return 0
}

@_cdecl("fuzz_query_main")
public func main(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv) { fuzzQuery($0, $1) }
}
