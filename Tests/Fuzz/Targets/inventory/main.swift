import FuzzDriver
import Inventory
import Model

/// libFuzzer entry: any collection-script output gives a snapshot plus warnings, never a trap.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzInventory(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let text = String(decoding: UnsafeRawBufferPointer(start: start, count: count), as: UTF8.self)
    let (snapshot, _) = InventoryParser.parse(text, options: InventoryOptions())
    _ = InventoryState(snapshot)
    return 0
}

@_cdecl("fuzz_inventory_main")
public func main(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv) { fuzzInventory($0, $1) }
}
