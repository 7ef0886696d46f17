extension ContinuousClock.Instant {
    /// Seconds from this instant to now, as a Double for reports and timings.
    public var secondsSince: Double {
        (ContinuousClock.now - self).seconds
    }
}

extension Duration {
    /// The duration in seconds, as a Double.
    public var seconds: Double {
        Double(components.seconds) + Double(components.attoseconds) / 1e18
    }
}
