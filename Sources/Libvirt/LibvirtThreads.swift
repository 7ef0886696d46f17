import CLibvirt
import NIOPosix

/// Where every libvirt call runs: a dedicated thread pool, never Swift's cooperative pool.
///
/// libvirt calls block (a save takes seconds, an agent command waits for the guest), and
/// each call must read its error on the thread that made it, so a call and its error read
/// are always one synchronous closure here.
enum LibvirtThreads {
    /// Wide enough for several parallel cells, each of which may block on an agent call.
    static let pool: NIOThreadPool = {
        initializeLibvirt()
        let pool = NIOThreadPool(numberOfThreads: 24)
        pool.start()
        return pool
    }()

    /// Runs `body` on the pool and returns its result, also when the calling task is
    /// cancelled: a libvirt call cannot be interrupted anyway, and the clean-up that runs
    /// after a cancellation (killing a guest command, destroying a domain) must not be refused,
    /// as NIO's cancellable `runIfActive` would.
    static func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, Error>) in
            pool.submit { state in
                guard case .active = state else {
                    continuation.resume(throwing: CancellationError())
                    return
                }
                continuation.resume(with: Result(catching: body))
            }
        }
    }

    /// virInitialize, and silence libvirt's default handler, which prints every error
    /// (including expected ones like "domain not found") to stderr.
    private static func initializeLibvirt() {
        virInitialize()
        virSetErrorFunc(nil) { _, _ in }
    }
}
