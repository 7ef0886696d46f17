#if canImport(Glibc)
import Glibc
#endif

/// A libc function that Swift's Glibc module does not declare (glibc puts it behind
/// `_GNU_SOURCE`, or it is newer than the module map), looked up in the running process; nil
/// when this libc does not have it, so callers fall back.
///
///     let pipe2 = hiddenLibcFunction("pipe2", as: (@convention(c) (UnsafeMutablePointer<Int32>, Int32) -> Int32).self)
public func hiddenLibcFunction<Function>(_ name: String, as type: Function.Type) -> Function? {
    guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), name) else { return nil }
    return unsafeBitCast(symbol, to: type)
}
