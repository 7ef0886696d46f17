import Dispatch
import Foundation
import HostIO

/// Turns the first SIGINT or SIGTERM into a cancellation (so cleanup runs) and a second
/// one into an immediate exit, for the impatient.
final class InterruptTrap: @unchecked Sendable {
    // @unchecked: the sources are created once in init and only kept alive here.
    private let sources: [DispatchSourceSignal]

    init(onInterrupt: @escaping @Sendable () -> Void) {
        let state = InterruptCount()
        sources = [SIGINT, SIGTERM].map { signalNumber in
            signal(signalNumber, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: signalNumber, queue: .main)
            source.setEventHandler {
                if state.increment() == 1 {
                    FileHandle.standardError.write(Data("\nchangelab: interrupted, cleaning up (again to force)\n".utf8))
                    onInterrupt()
                } else {
                    Foundation.exit(130)
                }
            }
            source.resume()
            return source
        }
    }
}

private final class InterruptCount: @unchecked Sendable {
    // @unchecked: only touched on the main queue, where signal handlers run.
    private var count = 0
    func increment() -> Int {
        count += 1
        return count
    }
}
