/// Runs blocking work (file I/O, fsync, hashing, C calls) off Swift's cooperative pool.
///
/// The one helper every module uses for this: each call gets a thread of its own
/// (``BlockingThread``), so a slow disk never starves the tasks that serve the network.
public enum BlockingWork {
    /// Runs `work` on a thread of its own and returns (or throws) what it did.
    public static func run<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            BlockingThread.start {
                continuation.resume(with: Result { try work() })
            }
        }
    }
}
