import Foundation

/// Throttles a byte stream to `rate` bytes per second with a burst of a quarter second.
///
/// Seeding must not disturb users: each agent's downloads share one bucket.
public actor TokenBucket {
    private var rate: Double?
    private var tokens: Double = 0
    private var last = ContinuousClock.now

    public init(rate: Int64? = nil) {
        self.rate = rate.map(Double.init)
    }

    public func setRate(_ rate: Int64?) {
        self.rate = rate.flatMap { $0 > 0 ? Double($0) : nil }
    }

    /// Waits until `bytes` may pass.
    public func take(_ bytes: Int) async throws {
        guard let rate else { return }
        let now = ContinuousClock.now
        let elapsed = now - last
        last = now
        let burst = max(rate / 4, 16384)
        tokens = min(
            burst, tokens + rate * (Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18))
        tokens -= Double(bytes)
        if tokens < 0 {
            // Bounded and finite whatever the rate: a slow link waits in steps of at most a minute.
            let wait = min(60, max(0, -tokens / rate))
            try await Task.sleep(for: .milliseconds(Int(exactly: (wait * 1000).rounded(.down)) ?? 60_000))
        }
    }
}
