import FuzzDriver
import Foundation
import Model
@testable import CMDB

let probe = try? Query("package:openssl < 3.0.13 or (service:nginx enabled and not port:tcp/80) or site = paris")

/// libFuzzer entry: a corrupt `.git/changelab/query-index` is refused (so the store rebuilds
/// it from the records), never a trap; one that decodes answers a query without trapping.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzQueryIndex(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let data = Data(bytes: start, count: count)
    // Most inputs lack the magic; put it in front of half of them so the body gets fuzzed.
    for candidate in [data, Data(QueryIndex.magic) + data] {
        if let index = try? QueryIndex.decode(candidate), let probe {
            _ = index.run(probe, kinds: [])
        }
    }
    return 0
}

@_cdecl("fuzz_query_index_main")
public func main(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv) { fuzzQueryIndex($0, $1) }
}
