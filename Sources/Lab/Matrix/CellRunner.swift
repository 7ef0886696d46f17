import Foundation
import HostIO
import Inventory
import Libvirt
import Model

/// Everything one cell needs, fixed before it starts.
struct CellContext: Sendable {
    let lab: Lab
    let plan: CellPlan
    let image: BaselineImage
    let artifact: ArtifactManifest
    /// The earlier release the upgrade lane starts from.
    let previous: ArtifactManifest?
    /// The adopted artifacts of the baseline's current CMDB version this cell installs
    /// first (nil: the bare image is the baseline's standard configuration).
    let preparation: CellPreparation?
    let packageTests: [String]
    let regressionTests: [String]
    /// The own tests of the packages adopted into the cell's baseline version, run after the
    /// standing suite (empty on a built version).
    var adoptedTests: [(adopted: StandardConfiguration.Adopted, tests: [String])] = []
    let baselineInventory: InventorySnapshot
    let watch: [String]
    let store: ArtifactStore
    let keepFailed: Bool
    let logPath: String
    /// Hash only files whose metadata changed since the slot's listing (false: the old
    /// full inventory, kept to measure against and to fall back on).
    var incrementalInventory = true
    /// Run each suite as one guest command (false: the old upload-and-exec per test).
    var batchedTests = true
}

/// Runs one cell on a fresh restore; infrastructure failures get one more fresh restore.
enum CellRunner {
    static let guestDirectory = "/var/tmp/changelab"

    /// - Parameter pooled: a guest of the cell's baseline restored ahead, paused (the warm
    ///   pool), for the first attempt; a retry always gets a fresh restore.
    static func run(
        _ context: CellContext, on host: LabHosts.Host, pooled: RestoredGuest? = nil, onAttempt: @Sendable (Int) -> Void
    ) async throws -> CellResult {
        // An adopted artifact that is not in the store fails every restore alike: no VM, no retry.
        if let unusable = context.preparation?.unusable {
            await pooled?.finish(keep: false)
            onAttempt(1)
            let reason = "infrastructure: the standard configuration \(context.preparation?.standard.version.description ?? "") "
                + "cannot be prepared: \(unusable.what)\(unusable.why.map { ": \($0)" } ?? "")\(unusable.fix.map { "; fix: \($0)" } ?? "")"
            let log = TextLog()
            log.append(reason + "\n")
            log.write(to: context.logPath)
            return CellResult(
                id: context.plan.id, baseline: context.plan.baseline, lane: context.plan.lane, host: host.name,
                verdict: .error, reason: reason, attempts: 1, startedAt: Date(), timings: CellTimings(),
                steps: [StepOutcome(phase: .prepare, name: "adopted artifacts", status: .error, seconds: 0, detail: reason)],
                delta: nil, residue: nil, violations: [], after: nil, upgradedFrom: nil, keptVM: nil)
        }
        // A pooled guest the first attempt never got to (cancelled first) is torn down here;
        // one it used, it finished itself (finish acts once, so a kept VM stays kept).
        do {
            let result = try await attempts(context, on: host, pooled: pooled, onAttempt: onAttempt)
            await pooled?.finish(keep: false)
            return result
        } catch {
            await pooled?.finish(keep: false)
            throw error
        }
    }

    private static func attempts(
        _ context: CellContext, on host: LabHosts.Host, pooled: RestoredGuest?, onAttempt: @Sendable (Int) -> Void
    ) async throws -> CellResult {
        let log = TextLog()
        var lastError: Error?
        var lastSteps: [StepOutcome] = []
        let started = Date()
        for attempt in 1...2 {
            try Task.checkCancellation()
            onAttempt(attempt)
            log.append("==== attempt \(attempt) on a fresh restore of \(context.image.name) ====\n")
            let cell = CellAttempt(context: context, host: host, log: log, pooled: attempt == 1 ? pooled : nil)
            do {
                var result = try await cell.run()
                result.attempts = attempt
                result.startedAt = started
                log.write(to: context.logPath)
                return result
            } catch is CancellationError {
                log.write(to: context.logPath)
                throw CancellationError()
            } catch {
                if Task.isCancelled { throw CancellationError() }
                lastError = error
                lastSteps = cell.steps
                log.append("==== infrastructure failure: \(error) ====\n")
            }
        }
        log.write(to: context.logPath)
        let message = lastError.map { "\($0)".split(separator: "\n").first.map(String.init) ?? "" } ?? "unknown"
        return CellResult(
            id: context.plan.id, baseline: context.plan.baseline, lane: context.plan.lane, host: host.name,
            verdict: .error, reason: "infrastructure (failed twice on fresh restores): \(message)", attempts: 2,
            startedAt: started, timings: CellTimings(), steps: lastSteps, delta: nil, residue: nil, violations: [],
            after: nil, upgradedFrom: nil, keptVM: nil)
    }
}

/// One attempt of a cell. Product failures become the verdict; anything thrown is an
/// infrastructure failure (the VM, the agent, the host) and is retried by `CellRunner`.
final class CellAttempt: @unchecked Sendable {
    // @unchecked: used by one task at a time (the cell's); `steps` is read after it ends.
    let context: CellContext
    let host: LabHosts.Host
    let log: TextLog
    private(set) var steps: [StepOutcome] = []
    private var verdict = CellVerdict.pass
    private var reason = ""
    private var timings = CellTimings()
    /// The restored slot's file listing, for the incremental inventory.
    private var listing: FileListing?
    /// The inventory after the adopted artifacts were installed: what the delta is from.
    private var prepared: InventorySnapshot?
    /// A paused guest from the warm pool, to resume instead of restoring.
    private let pooled: RestoredGuest?
    /// The prerequisites check, when it ran in the cell's first guest command.
    private var earlyPrerequisites: GuestExecResult?

    init(context: CellContext, host: LabHosts.Host, log: TextLog, pooled: RestoredGuest? = nil) {
        self.context = context
        self.host = host
        self.log = log
        self.pooled = pooled
    }

    private var lab: Lab { context.lab }
    /// How long after a run step's time-out the host kills its command (the guest bounds
    /// the step's settle wait by the time-out itself).
    static let settleBackstopSeconds = 5
    private var recipe: PackageRecipe { context.artifact.recipe }

    private func record(_ outcome: StepOutcome) {
        steps.append(outcome)
        log.append("-- \(outcome.phase.rawValue) \(outcome.name): \(outcome.status.rawValue) (\(String(format: "%.1f", outcome.seconds)) s)\n")
    }

    /// The first failure decides the verdict and the reason.
    private func fail(_ verdict: CellVerdict, _ reason: String) {
        guard self.verdict == .pass else { return }
        self.verdict = verdict
        self.reason = reason
    }

    private var failed: Bool { verdict != .pass }

    func run() async throws -> CellResult {
        let started = ContinuousClock.now
        let guest: RestoredGuest
        if let pooled {
            do {
                (timings.restore, timings.clock) = try await pooled.resume()
            } catch {
                await pooled.finish(keep: false)
                throw error
            }
            guest = pooled
            timings.fromPool = true
            log.append(
                String(format: "resumed %@ from the warm pool (restored ahead, paused, in %.1f s)\n", guest.name, guest.restoreSeconds))
        } else {
            guest = try await lab.restore(context.image, on: host)
            timings.restore = max(0, guest.restoreSeconds - guest.clockSeconds)
            timings.clock = guest.clockSeconds
        }
        record(
            StepOutcome(
                phase: .restore,
                name: timings.fromPool
                    ? "resume \(context.image.name) from the warm pool + set clock" : "restore \(context.image.name) + set clock",
                status: .passed, seconds: timings.restore + timings.clock))
        var delta: ConfigurationDelta?
        var residue: ConfigurationDelta?
        var violations: [PolicyViolation] = []
        var after: InventorySnapshot?
        do {
            if context.incrementalInventory {
                let listed = ContinuousClock.now
                let (listing, recorded) = try await lab.slotListing(for: guest, watching: context.watch)
                self.listing = listing
                timings.listing = listed.secondsSince
                if recorded {
                    log.append(String(format: "recorded the slot's file listing (%.1f s, once per slot)\n", listed.secondsSince))
                }
            }
            // The cell's folder, and when nothing is prepared first the prerequisites check,
            // in one guest command (its time is the check's).
            let checkStarted = ContinuousClock.now
            let check = context.preparation?.installs.isEmpty == false ? nil : prerequisiteScript(installedRecipe)
            let made = try await guest.agent.capture(
                ["/bin/sh", "-c", "mkdir -p '\(CellRunner.guestDirectory)' || exit 125\n" + (check ?? "exit 0\n")],
                timeout: .seconds(60))
            guard !made.timedOut else {
                throw ChangelabError(
                    "the cell's first guest command (its folder\(check == nil ? "" : ", the prerequisites check")) did not finish within 60 s")
            }
            guard made.exitCode != 125 else {
                throw ChangelabError("cannot make \(CellRunner.guestDirectory) in the guest: \(made.stderrText)")
            }
            if check != nil {
                earlyPrerequisites = made
                timings.prerequisites = checkStarted.secondsSince
            }
            let uploadStarted = ContinuousClock.now
            for manifest in [context.artifact] + (context.plan.lane == .upgrade ? [context.previous].compactMap { $0 } : []) {
                try await guest.agent.upload(
                    file: context.store.debPath(manifest.digest), to: "\(CellRunner.guestDirectory)/\(manifest.debFileName)",
                    mode: 0o644)
            }
            timings.upload = uploadStarted.secondsSince
            record(StepOutcome(phase: .upload, name: "upload artifact", status: .passed, seconds: timings.upload))

            if try await prepare(guest), let inspection = try await runLane(guest) {
                (delta, residue, violations, after) = inspection
            }
        } catch {
            await guest.finish(keep: false)
            throw error
        }

        let keep = failed && context.keepFailed
        let discardStarted = ContinuousClock.now
        await guest.finish(keep: keep, reason: "cell \(context.plan.id) \(verdict.rawValue): \(reason)")
        timings.discard = discardStarted.secondsSince
        record(StepOutcome(phase: .discard, name: keep ? "keep VM for debugging" : "discard VM", status: .passed, seconds: timings.discard))
        timings.total = started.secondsSince
        return CellResult(
            id: context.plan.id, baseline: context.plan.baseline, lane: context.plan.lane, host: host.name,
            verdict: verdict, reason: reason, attempts: 1, startedAt: Date(), timings: timings, steps: steps, delta: delta,
            residue: residue, violations: violations, after: after, before: prepared,
            upgradedFrom: context.plan.lane == .upgrade ? context.previous?.version : nil, keptVM: keep ? guest.name : nil)
    }

    typealias Inspection = (ConfigurationDelta?, ConfigurationDelta?, [PolicyViolation], InventorySnapshot?)

    /// The lane's steps. The inventory is taken right after the install (or, in the
    /// uninstall lane, right after the uninstall), before any test can change the guest:
    /// the delta is what the package did, not what its tests or the standing suite did.
    private func runLane(_ guest: RestoredGuest) async throws -> Inspection? {
        let lane = context.plan.lane
        guard try await checkPrerequisites(installedRecipe, guest) else { return nil }
        switch lane {
        case .install, .uninstall:
            guard try await install(context.artifact, phase: .install, guest) else { return nil }
        case .upgrade:
            guard let previous = context.previous else { return nil }
            guard try await install(previous, phase: .upgradeFrom, guest) else { return nil }
            guard try await install(context.artifact, phase: .install, guest) else { return nil }
        case .reinstall:
            guard try await install(context.artifact, phase: .install, guest) else { return nil }
            guard try await install(context.artifact, phase: .reinstall, guest) else { return nil }
        }
        let inspection: Inspection
        // The standing suite and the adopted packages' tests; after an install, the package's
        // own tests too: all in one guest runner.
        var suites = [TestGroup(tests: context.regressionTests, phase: .regression, adopted: nil)]
            + context.adoptedTests.map { TestGroup(tests: $0.1, phase: .regression, adopted: $0.0) }
        if lane == .uninstall {
            try await runTests([TestGroup(tests: context.packageTests, phase: .test, adopted: nil)], guest)
            guard try await runSteps(recipe.uninstall, of: context.artifact, phase: .uninstall, guest) else { return nil }
            inspection = try await inspect(guest)
        } else {
            inspection = try await inspect(guest)
            suites.insert(TestGroup(tests: context.packageTests, phase: .test, adopted: nil), at: 0)
        }
        try await runTests(suites, guest)
        return inspection
    }

    // MARK: Steps

    /// Makes the restored guest the baseline version's standard configuration: uploads each
    /// adopted artifact, runs its own install steps in adoption order, and takes the
    /// inventory the package's delta is measured from. A failed install is a product failure
    /// (of the adopted package, not the one under test) that names the fix; true when the
    /// guest is ready for the lane.
    private func prepare(_ guest: RestoredGuest) async throws -> Bool {
        guard let preparation = context.preparation else { return true }
        let version = preparation.standard.version
        let started = ContinuousClock.now
        defer { timings.preparation = started.secondsSince }
        log.append(
            "preparing \(version): "
                + (preparation.installs.isEmpty
                    ? "nothing adopted to install for this lane\n"
                    : preparation.installs.map(\.0.label).joined(separator: ", ") + "\n"))
        for (adopted, resolved) in preparation.installs {
            let manifest = try resolved.get()
            let uploadStarted = ContinuousClock.now
            try await guest.agent.upload(
                file: context.store.debPath(manifest.digest), to: "\(CellRunner.guestDirectory)/\(manifest.debFileName)",
                mode: 0o644)
            record(
                StepOutcome(
                    phase: .prepare, name: "upload \(adopted.package) \(adopted.packageVersion) (adopted as \(adopted.version))",
                    status: .passed, seconds: uploadStarted.secondsSince))
            guard try await runSteps(manifest.recipe.install, of: manifest, phase: .prepare, guest) else {
                reason += "; the standard configuration \(version) cannot be reproduced: fix \(adopted.package) and adopt it again, "
                    + "or take it out of the standard"
                    + (adopted.change.map { " ('changelab rollback \($0)' reverts its adoption)" } ?? "")
                return false
            }
        }
        guard !preparation.installs.isEmpty else { return true }
        let inventoryStarted = ContinuousClock.now
        let (collected, how) = try await collectInventory(guest)
        prepared = collected.snapshot
        log.append(String(format: "-- %@ of the standard configuration %@ in %.2f s\n", how, version.description, inventoryStarted.secondsSince))
        record(
            StepOutcome(
                phase: .prepare, name: "inventory of the standard configuration \(version)", status: .passed,
                seconds: inventoryStarted.secondsSince,
                detail: ConfigurationDelta(from: context.baselineInventory, to: collected.snapshot).summary()))
        return true
    }

    /// The recipe the lane installs first (the earlier release's in the upgrade lane): whose
    /// prerequisites are checked.
    private var installedRecipe: PackageRecipe {
        (context.plan.lane == .upgrade ? (context.previous ?? context.artifact) : context.artifact).recipe
    }

    /// Checks the prerequisites (or judges the check the cell's first command already ran);
    /// false, with the verdict set, when one is not met.
    private func checkPrerequisites(_ recipe: PackageRecipe, _ guest: RestoredGuest) async throws -> Bool {
        guard let script = prerequisiteScript(recipe) else { return true }
        let result: GuestExecResult
        if let earlyPrerequisites {
            result = earlyPrerequisites
        } else {
            let checkStarted = ContinuousClock.now
            result = try await guest.agent.exec(["/bin/sh", "-c", script], timeout: .seconds(60))
            timings.prerequisites = checkStarted.secondsSince
        }
        let unmet = result.stdoutText.split(separator: "\n").map(String.init)
        log.append(result.stdoutText + result.stderrText)
        if result.exitCode == 0 {
            record(StepOutcome(phase: .prerequisites, name: "prerequisites", status: .passed, exitCode: 0, seconds: result.seconds))
            return true
        }
        let detail = unmet.isEmpty ? result.stderrText : unmet.joined(separator: "; ")
        record(StepOutcome(phase: .prerequisites, name: "prerequisites", status: .failed, exitCode: result.exitCode, seconds: result.seconds, detail: detail))
        fail(.fail, "prerequisite not met: \(detail)")
        return false
    }

    /// The guest script that checks `recipe`'s prerequisites (exit 1 and one line per unmet
    /// one); nil when it has none. Shell builtins where they do (a process costs ~40 ms
    /// under TCG).
    private func prerequisiteScript(_ recipe: PackageRecipe) -> String? {
        let needs = recipe.prerequisites
        guard !needs.isEmpty else { return nil }
        var script = "unmet=0\n"
        for package in needs.packages {
            script += """
                [ "$(dpkg-query -W -f='${Status}' '\(package)' 2>/dev/null)" = 'install ok installed' ] || { echo "package \(package) is not installed"; unmet=1; }

                """
        }
        if let disk = needs.diskMiB {
            script += """
                free=$(df -Pk / | { read -r _; read -r _ _ _ a _; echo $(( ${a:-0} / 1024 )); })
                [ "$free" -ge \(disk) ] || { echo "free disk on / is ${free} MiB, needs \(disk) MiB"; unmet=1; }

                """
        }
        if let memory = needs.memoryMiB {
            script += """
                mem=0; while read -r k v _; do [ "$k" = MemTotal: ] && { mem=$(( v / 1024 )); break; }; done </proc/meminfo
                [ "$mem" -ge \(memory) ] || { echo "memory is ${mem} MiB, needs \(memory) MiB"; unmet=1; }

                """
        }
        if let architecture = needs.architecture {
            script += """
                arch=$(dpkg --print-architecture)
                [ "$arch" = '\(architecture)' ] || { echo "architecture is ${arch}, needs \(architecture)"; unmet=1; }

                """
        }
        script += "exit $unmet\n"
        return script
    }

    private func install(_ manifest: ArtifactManifest, phase: StepOutcome.Phase, _ guest: RestoredGuest) async throws -> Bool {
        try await runSteps(manifest.recipe.install, of: manifest, phase: phase, guest)
    }

    /// Runs steps in order; the first failure ends the list (and decides the verdict).
    private func runSteps(
        _ steps: [PackageRecipe.Step], of manifest: ArtifactManifest, phase: StepOutcome.Phase, _ guest: RestoredGuest
    ) async throws -> Bool {
        let label: String
        switch phase {
        case .upgradeFrom: label = "install of the earlier release \(manifest.version), step"
        case .reinstall: label = "second install, step"
        case .uninstall: label = "uninstall step"
        case .prepare: label = "preparation: install of the adopted \(manifest.name) \(manifest.version), step"
        default: label = "install step"
        }
        for step in steps {
            let stepStarted = ContinuousClock.now
            var outcome: StepOutcome
            var settledInStep: GuestSettle.Outcome?
            switch step.action {
            case .run(let script):
                let environment = """
                    export ARTIFACT='\(CellRunner.guestDirectory)/\(manifest.debFileName)' PACKAGE='\(manifest.name)' \
                    VERSION='\(manifest.version)' DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true
                    cd '\(CellRunner.guestDirectory)'

                    """
                // The step and the settle wait after it in one guest command. The settle wait
                // is bounded by what is left of the step's time-out; the host's deadline is a
                // few seconds later, as a backstop for a hung command (killed there).
                let timed = GuestTiming.parse(
                    try await guest.agent.exec(
                        GuestTiming.argv(["/bin/sh", "-c", environment + script], settlingWithin: step.timeoutSeconds),
                        timeout: .seconds(step.timeoutSeconds + Self.settleBackstopSeconds)
                    ) { [log] _, data in log.append(String(decoding: data, as: UTF8.self)) })
                let (result, guestSeconds) = (timed.result, timed.guestSeconds)
                settledInStep = timed.settle
                // The settle wait is timed apart (by the guest's clock), not as a round trip.
                if phase.isWork {
                    timings.workCommands += max(0, result.seconds - (settledInStep?.seconds ?? 0))
                    timings.settle += settledInStep?.seconds ?? 0
                }
                let tail = CommandResult.tail(of: result.stdoutText + result.stderrText, lines: 15)
                // Killed at the backstop, or it ran past its time-out before it ended.
                if result.timedOut || (guestSeconds ?? 0) > Double(step.timeoutSeconds) {
                    outcome = StepOutcome(phase: phase, name: step.name, status: .timedOut, seconds: result.seconds, detail: tail)
                    fail(.timeout, "\(label) '\(step.name)' timed out after \(step.timeoutSeconds) s")
                } else if result.exitCode != 0 {
                    outcome = StepOutcome(phase: phase, name: step.name, status: .failed, exitCode: result.exitCode, seconds: result.seconds, detail: tail)
                    let last = tail.split(separator: "\n").last.map(String.init) ?? ""
                    fail(.fail, "\(label) '\(step.name)' failed (exit \(result.exitCode))\(last.isEmpty ? "" : ": \(last)")")
                } else {
                    outcome = StepOutcome(phase: phase, name: step.name, status: .passed, exitCode: 0, seconds: result.seconds, detail: tail)
                }
                outcome.guestSeconds = guestSeconds
            case .reboot:
                outcome = try await reboot(step, phase: phase, guest)
                // The guest's uptime restarts: the reboot counts whole, by the host's clock.
                outcome.guestSeconds = outcome.status == .passed ? outcome.seconds : nil
                if phase.isWork { timings.workCommands += outcome.seconds }
                if outcome.status != .passed {
                    fail(.timeout, "\(label) '\(step.name)': the guest did not come back from the reboot within \(step.timeoutSeconds) s")
                }
            }
            if outcome.status == .passed {
                outcome = try await settle(
                    after: outcome, started: stepStarted, step: step, label: label, waited: settledInStep, guest)
            }
            record(outcome)
            if outcome.status != .passed { return false }
        }
        return true
    }

    /// Waits, within what is left of the step's time-out, until the guest's systemd has
    /// finished what the step set going (a boot, or units a maintainer script restarted),
    /// so that neither the next step nor the inventory sees units half-way. A unit still
    /// busy at the step's deadline turns the step into a time-out that names it.
    /// - Parameter waited: the settle wait the step's own command ran (a run step); nil
    ///   waits here, in a command of its own (after a reboot, or when the report was lost).
    private func settle(
        after outcome: StepOutcome, started: ContinuousClock.Instant, step: PackageRecipe.Step, label: String,
        waited given: GuestSettle.Outcome?, _ guest: RestoredGuest
    ) async throws -> StepOutcome {
        var settled = outcome
        let waited: GuestSettle.Outcome
        if let given {
            waited = given
        } else {
            let deadline = started + .seconds(step.timeoutSeconds)
            let left = max(.seconds(1), deadline - ContinuousClock.now)
            let settleStarted = ContinuousClock.now
            waited = try await GuestSettle.wait(guest.agent, within: left)
            // Settling after an adopted artifact's install is preparation, timed as such.
            if outcome.phase.isWork { timings.settle += settleStarted.secondsSince }
        }
        switch waited {
        case .settled(let state, let seconds):
            log.append(String(format: "settled (%@) after %.1f s\n", state, seconds))
            settled.seconds = started.secondsSince
        case .stuck(let state, let busy, let seconds):
            log.append(String(format: "not settled after %.1f s (%@): %@\n", seconds, state, busy.joined(separator: ", ")))
            settled.status = .timedOut
            settled.seconds = started.secondsSince
            settled.detail = ([outcome.detail, "system \(state); still busy at the step's time-out:"] + busy)
                .filter { !$0.isEmpty }.joined(separator: "\n")
            fail(
                .timeout,
                "\(label) '\(step.name)': units still starting or stopping after its time-out of \(step.timeoutSeconds) s: "
                    + Self.brief(busy))
        }
        return settled
    }

    /// Reboots the guest, waits for its agent to go away and come back on a new boot, and
    /// sets the clock again.
    private func reboot(_ step: PackageRecipe.Step, phase: StepOutcome.Phase, _ guest: RestoredGuest) async throws -> StepOutcome {
        let agent = guest.agent
        let started = ContinuousClock.now
        let before = try await agent.bootID()
        log.append("rebooting (boot \(before))\n")
        try await agent.launch(["systemctl", "reboot"])
        let deadline = started + .seconds(step.timeoutSeconds)
        while ContinuousClock.now < deadline {
            try await Task.sleep(for: .seconds(1))
            guard (try? await agent.ping(timeoutSeconds: 2)) != nil,
                let now = try? await agent.bootID(), !now.isEmpty, now != before
            else {
                let state = try await guest.domain.state()
                if !state.isActive {
                    return StepOutcome(
                        phase: phase, name: step.name, status: .timedOut, seconds: started.secondsSince,
                        detail: "the VM stopped (\(state.rawValue)) during the reboot\n" + consoleTail(guest))
                }
                continue
            }
            try await agent.setTime()
            log.append("back on boot \(now) after \(String(format: "%.1f", started.secondsSince)) s\n")
            return StepOutcome(phase: phase, name: step.name, status: .passed, seconds: started.secondsSince)
        }
        return StepOutcome(
            phase: phase, name: step.name, status: .timedOut, seconds: started.secondsSince,
            detail: "no answer from a new boot within \(step.timeoutSeconds) s\n" + consoleTail(guest))
    }

    private func consoleTail(_ guest: RestoredGuest) -> String {
        let text = (try? String(contentsOfFile: guest.console, encoding: .utf8)) ?? ""
        return "serial console (last lines):\n" + CommandResult.tail(of: text, lines: 15)
    }

    /// Tests of one kind: the package's (`.test`), the standing suite or an adopted
    /// package's (`.regression`, with `adopted` naming the package whose own tests they are).
    struct TestGroup {
        var tests: [String]
        var phase: StepOutcome.Phase
        var adopted: StandardConfiguration.Adopted?
    }

    /// Runs every group's tests, in order, in one guest runner (one round trip), and records
    /// each outcome under its own group; each failure decides the verdict in that order.
    private func runTests(_ groups: [TestGroup], _ guest: RestoredGuest) async throws {
        let all = groups.flatMap(\.tests)
        guard !all.isEmpty else { return }
        let suiteStarted = ContinuousClock.now
        let outcomes = try await StandingSuite.run(
            all, in: guest, timeout: .seconds(recipe.defaultTimeoutSeconds), oneByOne: !context.batchedTests,
            progress: { _ in })
        timings.workCommands += suiteStarted.secondsSince
        var next = outcomes[...]
        for group in groups {
            for outcome in next.prefix(group.tests.count) {
                recordTest(outcome, group)
            }
            next = next.dropFirst(group.tests.count)
        }
    }

    private func recordTest(_ outcome: TestOutcome, _ group: TestGroup) {
        let (phase, adopted) = (group.phase, group.adopted)
        let name = adopted.map { "\($0.package) (adopted as \($0.version)): \(outcome.name)" } ?? outcome.name
        log.append("-- \(phase.rawValue) \(name) output:\n\(outcome.outputTail)\n")
        record(
            StepOutcome(
                phase: phase, name: name, status: outcome.passed ? .passed : (outcome.timedOut ? .timedOut : .failed),
                exitCode: outcome.exitCode, seconds: outcome.seconds, detail: outcome.outputTail,
                guestSeconds: outcome.guestSeconds))
        guard !outcome.passed else { return }
        let first = outcome.outputTail.split(separator: "\n").first.map(String.init) ?? ""
        let what =
            if let adopted {
                "regression: \(adopted.package), adopted as \(adopted.version), test \(outcome.name)"
            } else if phase == .regression {
                "regression: \(context.plan.baseline)'s standing test \(outcome.name)"
            } else {
                "package test \(outcome.name)"
            }
        if outcome.timedOut {
            fail(.timeout, "\(what) timed out")
        } else {
            fail(.fail, "\(what) failed (exit \(outcome.exitCode))\(first.isEmpty ? "" : ": \(first)")")
        }
    }

    /// Collects the inventory, computes the delta from the baseline, and checks it against
    /// the recipe's expected-delta policy (or, for the uninstall lane, for residue).
    private func inspect(_ guest: RestoredGuest) async throws -> Inspection {
        let started = ContinuousClock.now
        var (collected, how) = try await collectInventory(guest)
        let deltaStarted = ContinuousClock.now
        // On an adopted version, from the standard configuration the cell prepared.
        let delta = ConfigurationDelta(from: prepared ?? context.baselineInventory, to: collected.snapshot)
        how += String(format: "; delta %.2f s", deltaStarted.secondsSince)
        timings.inventory = started.secondsSince
        log.append(String(format: "-- %@ and delta in %.2f s\n", how, timings.inventory))
        record(
            StepOutcome(
                phase: .inventory, name: "inventory and delta", status: .passed, seconds: started.secondsSince,
                detail: delta.isEmpty ? "no change" : delta.summary()))
        log.append("-- delta from the baseline:\n\(delta.isEmpty ? "no change\n" : delta.summary())\n")
        if context.plan.lane == .uninstall {
            let items = Self.describe(delta)
            record(
                StepOutcome(
                    phase: .residue, name: "configuration back to the baseline", status: delta.isEmpty ? .passed : .failed,
                    seconds: 0, detail: items.joined(separator: "\n")))
            if !delta.isEmpty {
                fail(.fail, "uninstall left residue: \(Self.brief(items))")
            }
            return (nil, delta, [], collected.snapshot)
        }
        let violations = recipe.expectedDelta.isEmpty ? [] : delta.violations(of: recipe.expectedDelta)
        if !recipe.expectedDelta.isEmpty {
            let listed = violations.map(\.description)
            record(
                StepOutcome(
                    phase: .policy, name: "changes within the expected-delta policy", status: violations.isEmpty ? .passed : .failed,
                    seconds: 0, detail: listed.joined(separator: "\n")))
            if !violations.isEmpty {
                fail(.fail, "unexpected configuration change: \(Self.brief(listed))")
            }
        }
        return (delta, nil, violations, collected.snapshot)
    }

    /// The guest's inventory now (incremental against the slot's listing when there is one),
    /// and how it was taken, for the log.
    private func collectInventory(_ guest: RestoredGuest) async throws -> (CollectedInventory, String) {
        guard let listing else {
            return (try await lab.collector(for: guest, watching: context.watch).collect(), "full inventory")
        }
        let result = try await lab.incrementalCollector(for: guest, watching: context.watch).collect(against: listing)
        let how = String(
            format: "incremental inventory (%d guest command%@, %.2f s; parsing %.2f s), %d changed files hashed, %@",
            result.commands, result.commands == 1 ? "" : "s", result.commandSeconds,
            result.inventory.seconds - result.commandSeconds, result.hashed,
            result.unitsAsked.map { "unit-file states asked again for \($0.count) units (\(Self.brief($0)))" }
                ?? "every unit's state asked")
        return (result.inventory, how)
    }

    /// The first four items of a list for a one-line verdict reason; "…" when there are more.
    static func brief(_ items: [String]) -> String {
        items.prefix(4).joined(separator: "; ") + (items.count > 4 ? "; …" : "")
    }

    /// "files /etc/greeterd.conf added", one per changed item.
    static func describe(_ delta: ConfigurationDelta) -> [String] {
        delta.entries.map { "\($0.category.rawValue) \($0.entry.key) \($0.kind.rawValue)" }
    }
}
