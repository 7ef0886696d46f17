import Foundation
import Model

/// Which step a failed target failed in: it decides what the target is handed next.
public enum FailedStep: String, Codable, Sendable {
    /// Its copy is missing or no longer verifies: it is seeded again.
    case seeding
    /// It holds a verified copy but the installer failed: it is activated again.
    case activation
    /// The rollback failed: it is rolled back again.
    case rollback
}

/// What moves a target from one phase to the next.
enum TargetInput {
    /// The core hands the target a job of this kind (a new try counts an attempt).
    case handOut(JobKind)
    /// The agent reported an event; `rollingBack` says whether the change is being rolled back.
    case event(AgentEvent, packageSize: Int64, rollingBack: Bool)
    /// The agent's cache says what it holds (sent at every check-in).
    case cacheReport(CacheReport)
}

extension TargetRecord {
    /// Whether the target has a verified copy of the package (seeding is done for it).
    var holdsVerifiedCopy: Bool {
        phase == .failed ? failedStep != .seeding : phase >= .verified
    }

    /// Whether the installer failed on it: the ring's health gate counts these.
    var failedActivation: Bool { phase == .failed && failedStep == .activation }

    /// The job the target needs next, if any.
    ///
    /// - Parameters:
    ///   - rollingBack: the change is being rolled back.
    ///   - mayActivate: activation is ordered, not halted, and the target's ring is open.
    func nextJob(rollingBack: Bool, mayActivate: Bool) -> JobKind? {
        if rollingBack {
            let installedOrTried =
                [.activated, .activating].contains(phase)
                || phase == .failed && (failedStep == .activation || failedStep == .rollback)
            return installedOrTried ? .rollback : nil
        }
        if !holdsVerifiedCopy { return .seed }
        if mayActivate, phase == .verified || phase == .activating || failedActivation { return .activate }
        return nil
    }

    /// The one transition function: every change of a target's phase goes through here.
    mutating func apply(_ input: TargetInput, now: Date, settings: CoreSettings) {
        switch input {
        case .handOut(let kind):
            switch kind {
            case .seed:
                if phase == .pending || phase == .failed {
                    seedAttempts += 1
                    phase = .seeding
                    failure = nil
                    failedStep = nil
                }
            case .activate:
                if phase != .activating {
                    activationAttempts += 1
                    phase = .activating
                    failure = nil
                    failedStep = nil
                }
            case .rollback:
                break
            }
            retryAt = nil
        case .cacheReport(let report):
            if report.phase > phase, phase != .failed || report.phase == .activated {
                phase = report.phase
                if phase != .failed { failedStep = nil }
            }
            bytes = max(bytes, report.bytes)
            if let source = report.source {
                self.source = source
                bytesFromPeers = max(0, min(report.bytesFromPeers ?? 0, report.bytes))
            }
        case .event(let event, let size, let rollingBack):
            updatedAt = now
            if let reported = event.bytes { bytes = max(bytes, reported) }
            switch event.kind {
            case .progress:
                if phase < .seeded && phase != .failed { phase = .seeding }
            case .seeded:
                if phase < .seeded { phase = .seeded }
            case .verified:
                if phase < .verified || phase == .failed && failedStep == .seeding {
                    phase = .verified
                    failure = nil
                    failedStep = nil
                    retryAt = nil
                }
                bytes = size
            case .activating:
                phase = .activating
            case .inventory:
                break
            case .activated, .rolledBack:
                phase = event.kind == .activated ? .activated : .rolledBack
                failure = nil
                failedStep = nil
                retryAt = nil
                exitCode = event.exitCode
                outputTail = event.outputTail
            case .failed, .refused:
                let reported = event.failure ?? Failure(reason: .downloadFailed, detail: "the agent reported no reason")
                let step: FailedStep
                if reported.reason == .hashMismatch {
                    // The agent's copy no longer verifies: it seeds again before the next activation.
                    step = .seeding
                    bytes = 0
                } else if rollingBack, [.activated, .activating].contains(phase) || failedStep == .rollback {
                    step = .rollback
                } else if phase == .activating || phase == .failed && failedStep == .activation {
                    step = .activation
                } else if phase == .failed, let previous = failedStep {
                    step = previous
                } else {
                    step = holdsVerifiedCopy && phase != .failed ? .activation : .seeding
                }
                phase = .failed
                failedStep = step
                failure = reported
                exitCode = event.exitCode ?? reported.exitCode
                outputTail = event.outputTail
                let attempts = step == .seeding ? seedAttempts : activationAttempts
                // A refused downgrade or approval does not change by trying again: it goes to the chase list.
                if attempts >= settings.maxAttempts || reported.reason.isFinal {
                    gaveUp = true
                    retryAt = nil
                } else {
                    let delay = min(settings.retryMax, settings.retryBase * pow(2, Double(max(0, attempts - 1))))
                    retryAt = now.addingTimeInterval(delay)
                }
            }
        }
    }

    /// The step a target saved before explicit states failed in, from the counters it kept.
    mutating func migrateFailedStep(packageSize: Int64) {
        guard phase == .failed, failedStep == nil else { return }
        failedStep = bytes >= packageSize && packageSize > 0 && activationAttempts > 0 ? .activation : .seeding
    }
}
