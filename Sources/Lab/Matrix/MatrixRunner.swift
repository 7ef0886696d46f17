import CMDB
import Foundation
import HostIO
import Model

/// What the matrix tells whoever watches it.
public enum MatrixEvent: Sendable {
    case planned(MatrixRun)
    case cellStarted(CellPlan, attempt: Int)
    case cellFinished(CellResult)
    case note(String)
    /// The warm pool closed: every guest it restored ahead (domain, overlay), all destroyed.
    case warmPoolClosed(restoredAhead: [String], overlays: [String])
}

/// `changelab matrix run`: the package on every approved baseline, one cell per lane, each
/// from a pristine restore, cells of different baselines in parallel.
public struct MatrixRunner: Sendable {
    public struct Options: Sendable {
        public var baselines: [String] = []
        public var lanes: [MatrixLane] = MatrixLane.allCases
        /// Cells at once (default: every slot of every lab host).
        public var parallel: Int?
        public var keepFailed = false
        /// The old full inventory after install instead of the incremental one.
        public var fullInventory = false
        /// The old way of running tests: one upload and guest command per test.
        public var testPerCommand = false
        /// Restore the next cells' guests ahead of time, paused (false: every cell restores
        /// on its own critical path, the old way).
        public var warmPool = true
        /// Where to record the run (nil: do not record).
        public var cmdb: String?
        /// The CMDB whose current baseline versions the cells test, adopted artifacts
        /// installed (default: `cmdb`; nil with no `cmdb`: the bare images).
        public var standardFrom: String?

        public init() {}
    }

    public let lab: Lab
    public let packages: Packages
    public let store: ArtifactStore
    public let events: @Sendable (MatrixEvent) -> Void

    public init(lab: Lab, events: @escaping @Sendable (MatrixEvent) -> Void = { _ in }) {
        self.lab = lab
        packages = Packages(project: lab.project)
        store = ArtifactStore(home: lab.home)
        self.events = events
    }

    /// Plans and runs the matrix for `package` (building its artifact first when needed).
    public func run(package: String, options: Options) async throws -> MatrixRun {
        let baselineRecipes = try selectBaselines(options.baselines)
        let built = try await PackageBuilder(lab: lab).build(package)
        let artifact = built.manifest
        try store.verify(artifact)

        var notes: [String] = []
        var lanes = Array(Set(options.lanes)).sorted()
        var previous: ArtifactManifest?
        if lanes.contains(.upgrade) {
            previous = try store.previousRelease(of: artifact.name, before: artifact.version)
            if previous == nil {
                lanes.removeAll { $0 == .upgrade }
                notes.append(
                    "upgrade lane left out: no released version of \(artifact.name) older than \(artifact.version) "
                        + "(mark one with: changelab package release \(artifact.name)@VERSION)")
            }
        }
        guard !lanes.isEmpty else {
            throw ChangelabError("no lane left to run", why: notes.joined(separator: "; "), fix: "add --lanes install")
        }
        var under: [MatrixRun.BaselineUnderTest] = []
        let standards = try StandardStore(path: options.standardFrom ?? options.cmdb)
        for baseline in baselineRecipes {
            let image = try await readyImage(baseline)
            let standard = try standards.current(of: baseline.name, image: image)
            if let standard {
                events(
                    .note(
                        "baseline \(baseline.name): testing \(standard.version), the image of \(standard.built) + "
                            + (standard.adopted.isEmpty ? "no adopted artifact (reverted)" : standard.adopted.map(\.label).joined(separator: " + "))))
            }
            under.append(
                .init(
                    name: baseline.name, imageDigest: image.imageDigest, recipeDigest: image.recipeDigest,
                    cmdbVersion: standard?.version.version, standard: standard))
        }
        // Round-robin over baselines, so parallel cells are of different baselines first.
        var cells: [CellPlan] = []
        for lane in lanes {
            for baseline in under { cells.append(CellPlan(baseline: baseline.name, lane: lane)) }
        }
        let id = Self.newID(package: artifact.name, version: artifact.version)
        var run = MatrixRun(
            format: MatrixRun.formatVersion, id: id, package: artifact.name, version: artifact.version,
            artifact: artifact.digest, baselines: under, lanes: lanes, cells: cells, notes: notes, results: [:],
            startedAt: Date(), finishedAt: nil, status: .running, wallSeconds: 0)
        try FileManager.default.createDirectory(
            atPath: MatrixRun.directory(lab.home, id) + "/cells", withIntermediateDirectories: true)
        try run.save(home: lab.home)
        for note in notes { events(.note(note)) }
        events(.planned(run))
        run = try await execute(run, artifact: artifact, previous: previous, options: options)
        return run
    }

    /// Runs the cells of an earlier run that did not finish (it was interrupted or killed).
    public func resume(_ id: String, options: Options) async throws -> MatrixRun {
        var run = try MatrixRun.load(home: lab.home, id: id)
        let artifact = try store.manifest(run.artifact)
        for baseline in run.baselines {
            let image = try lab.readyImage(baseline.name)
            guard image.imageDigest == baseline.imageDigest else {
                throw ChangelabError(
                    "cannot resume run \(id): baseline \(baseline.name) was rebuilt since (image \(image.imageDigest.short), "
                        + "the run tested \(baseline.imageDigest.short))",
                    fix: "start a new run: changelab matrix run \(run.package)")
            }
        }
        let previous = run.lanes.contains(.upgrade) ? try store.previousRelease(of: run.package, before: run.version) : nil
        run.status = .running
        run.finishedAt = nil
        events(.note("resuming run \(id): \(run.unfinished.count) of \(run.cells.count) cells left"))
        events(.planned(run))
        return try await execute(run, artifact: artifact, previous: previous, options: options)
    }

    private func selectBaselines(_ names: [String]) throws -> [BaselineRecipe] {
        if names.isEmpty {
            let approved = try lab.baselines.loadAll().filter(\.approved)
            guard !approved.isEmpty else {
                throw ChangelabError("there is no approved baseline to test on", fix: "approve one in baselines/NAME.yaml")
            }
            return approved
        }
        return try names.map { name in
            let recipe = try lab.baselines.load(name)
            guard recipe.approved else {
                throw ChangelabError(
                    "baseline '\(name)' is not approved (it is a draft)",
                    fix: "the matrix tests approved configurations only: approve it in baselines/\(name).yaml, or leave it out of --baselines")
            }
            return recipe
        }
    }

    /// The ready image of a baseline, building it first when it is missing or stale.
    private func readyImage(_ recipe: BaselineRecipe) async throws -> BaselineImage {
        if let image = try? lab.readyImage(recipe.name) { return image }
        events(.note("baseline \(recipe.name) is not built (or changed): building it first"))
        let outcome = try await lab.build(recipe)
        guard outcome.status == .ready else {
            throw ChangelabError(
                "baseline \(recipe.name) is not usable (\(outcome.status.rawValue))", fix: "changelab baseline build \(recipe.name)")
        }
        return outcome.image
    }

    private func execute(
        _ initial: MatrixRun, artifact: ArtifactManifest, previous: ArtifactManifest?, options: Options
    ) async throws -> MatrixRun {
        let reaped = try await lab.reapStale()
        for domain in reaped { events(.note("destroyed \(domain), left running by an interrupted run")) }

        var contexts: [String: CellContext] = [:]
        var inventories: [String: InventorySnapshot] = [:]
        for baseline in initial.baselines where initial.unfinished.contains(where: { $0.baseline == baseline.name }) {
            let image = try lab.readyImage(baseline.name)
            inventories[baseline.name] = try await lab.baselineInventory(image)
        }
        let standards = Dictionary(
            initial.baselines.compactMap { baseline in baseline.standard.map { (baseline.name, $0) } },
            uniquingKeysWith: { first, _ in first })
        var adoptedArtifacts: [SHA256Digest: Result<ArtifactManifest, ChangelabError>] = [:]
        for adopted in standards.values.flatMap(\.adopted) where adoptedArtifacts[adopted.artifact] == nil {
            adoptedArtifacts[adopted.artifact] = Self.adoptedArtifact(adopted, in: store)
        }
        for plan in initial.unfinished {
            let image = try lab.readyImage(plan.baseline)
            let recipe = try lab.baselines.load(plan.baseline)
            let preparation = standards[plan.baseline].map { standard in
                CellPreparation(
                    standard: standard,
                    installs: standard.installs(for: plan.lane, testing: artifact.name).map {
                        ($0, adoptedArtifacts[$0.artifact] ?? Self.adoptedArtifact($0, in: store))
                    })
            }
            var context = CellContext(
                lab: lab, plan: plan, image: image, artifact: artifact, previous: previous, preparation: preparation,
                packageTests: packages.tests(of: artifact.recipe), regressionTests: lab.baselines.tests(of: plan.baseline),
                baselineInventory: inventories[plan.baseline] ?? InventorySnapshot(), watch: recipe.watch, store: store,
                keepFailed: options.keepFailed,
                logPath: MatrixRun.cellLogPath(lab.home, initial.id, plan.id), incrementalInventory: !options.fullInventory,
                batchedTests: !options.testPerCommand)
            context.adoptedTests = preparation?.adoptedTests(testing: artifact.name, tests: packages.tests(of:)) ?? []
            contexts[plan.id] = context
        }

        // Wall time counts from the first cell: preparation (inventories) is not the matrix.
        let started = ContinuousClock.now
        let state = RunState(initial, home: lab.home)
        let parallel = max(1, min(options.parallel ?? lab.hosts.totalSlots, lab.hosts.totalSlots))
        let pool = HostPool(lab.hosts)
        let events = self.events
        let warm = options.warmPool ? warmPool(for: contexts.values.map(\.image), parallel: parallel) : nil
        if let warm { events(.note("warm pool: up to \(warm.capacity) guests restored ahead, paused")) }
        do {
            try await runCells(initial, contexts: contexts, parallel: parallel, pool: pool, warm: warm, state: state)
        } catch {
            await close(warm)
            throw error
        }
        await close(warm)
        var run = await state.run
        run.status = .finished
        run.finishedAt = Date()
        run.wallSeconds += started.secondsSince
        try run.save(home: lab.home)
        if let cmdb = options.cmdb {
            run = try await MatrixRecorder(lab: lab, cmdb: cmdb).record(run, artifact: artifact)
            try run.save(home: lab.home)
        }
        return run
    }

    /// An adopted artifact from the lab's store, its .deb verified against its digest; or why
    /// it cannot be installed, with the fix.
    static func adoptedArtifact(
        _ adopted: StandardConfiguration.Adopted, in store: ArtifactStore
    ) -> Result<ArtifactManifest, ChangelabError> {
        do {
            return .success(try store.manifest(adopted.artifact))
        } catch {
            let cause = (error as? ChangelabError).map { $0.what + ($0.why.map { ": \($0)" } ?? "") } ?? "\(error)"
            return .failure(
                ChangelabError(
                    "\(adopted.version)'s adopted artifact \(adopted.label) is not usable in the lab's artifact store: \(cause)",
                    fix: "build it again ('changelab package build \(adopted.package) --force', if its recipe still makes "
                        + "\(adopted.artifact.short)), or take it out of the standard configuration"
                        + (adopted.change.map { " ('changelab rollback \($0)' reverts its adoption)" }
                            ?? " (record a version without it: 'changelab baseline adopt \(adopted.version.name) --from RUN/CELL')")))
        }
    }

    /// The pool for this run: sized by the free memory and the slots, on the first lab host.
    private func warmPool(for images: [BaselineImage], parallel: Int) -> WarmPool? {
        let guestMiB = images.map(\.memoryMiB).max() ?? 0
        let capacity = WarmPool.capacity(
            slots: parallel, guestMiB: guestMiB, runningCells: parallel, availableMiB: WarmPool.availableMemoryMiB())
        guard capacity > 0 else {
            events(.note("warm pool: off (not enough free memory beside \(parallel) running guests)"))
            return nil
        }
        let events = self.events
        return WarmPool(lab: lab, host: lab.primaryHost, capacity: capacity) { events(.note($0)) }
    }

    private func close(_ warm: WarmPool?) async {
        guard let warm else { return }
        await warm.close()
        let history = await warm.history
        events(.warmPoolClosed(restoredAhead: history.map(\.domain), overlays: history.map(\.overlay)))
    }

    private func runCells(
        _ initial: MatrixRun, contexts: [String: CellContext], parallel: Int, pool: HostPool, warm: WarmPool?,
        state: RunState
    ) async throws {
        let events = self.events
        try await withThrowingTaskGroup(of: Void.self) { group in
            var queue = initial.unfinished[...]
            func upcoming() -> [BaselineImage] { queue.compactMap { contexts[$0.id]?.image } }
            func startNext() {
                guard let plan = queue.popFirst(), let context = contexts[plan.id] else { return }
                group.addTask {
                    let host = await pool.acquire()
                    // The cell's wall time is the slot's, every attempt included: what the
                    // harness share is measured against.
                    let taken = Date()
                    let pooled = await warm?.take(context.image, on: host)
                    var result: CellResult
                    do {
                        result = try await CellRunner.run(context, on: host, pooled: pooled) {
                            events(.cellStarted(plan, attempt: $0))
                        }
                    } catch {
                        await pool.release(host)
                        throw error
                    }
                    result.timings.slotTakenAt = taken
                    result.timings.slotReleasedAt = Date()
                    await pool.release(host)
                    try await state.finish(result)
                    events(.cellFinished(result))
                }
            }
            for _ in 0..<parallel { startNext() }
            await warm?.plan(upcoming(), slotFreed: false)
            while try await group.next() != nil {
                startNext()
                await warm?.plan(upcoming(), slotFreed: true)
            }
        }
    }

    static func newID(package: String, version: String) -> String {
        let formatter = DateFormatter()
        formatter.dateFormat = "yyyyMMdd-HHmmss"
        formatter.timeZone = TimeZone(identifier: "UTC")
        let suffix = String(UUID().uuidString.prefix(4)).lowercased()
        return "\(package)-\(version.replacingOccurrences(of: ":", with: "_"))-\(formatter.string(from: Date()))-\(suffix)"
    }
}

/// Hands each cell a lab host with a free slot: the host with the most free slots, so
/// cells spread over the hosts.
actor HostPool {
    private var free: [String: Int]
    private let hosts: [LabHosts.Host]
    private var waiters: [CheckedContinuation<LabHosts.Host, Never>] = []

    init(_ hosts: LabHosts) {
        self.hosts = hosts.hosts
        free = Dictionary(uniqueKeysWithValues: hosts.hosts.map { ($0.name, $0.slots) })
    }

    func acquire() async -> LabHosts.Host {
        if let host = take() { return host }
        return await withCheckedContinuation { waiters.append($0) }
    }

    func release(_ host: LabHosts.Host) {
        free[host.name, default: 0] += 1
        if !waiters.isEmpty, let next = take() { waiters.removeFirst().resume(returning: next) }
    }

    private func take() -> LabHosts.Host? {
        guard let best = hosts.max(by: { (free[$0.name] ?? 0) < (free[$1.name] ?? 0) }), (free[best.name] ?? 0) > 0 else {
            return nil
        }
        free[best.name, default: 0] -= 1
        return best
    }
}

/// The run being executed: results land here as cells finish, and the run file is saved
/// after each one, so a killed harness loses at most the cells that were running.
actor RunState {
    private(set) var run: MatrixRun
    let home: LabHome

    init(_ run: MatrixRun, home: LabHome) {
        self.run = run
        self.home = home
    }

    func finish(_ result: CellResult) throws {
        var stored = result
        // The inventory after install goes beside the cell's log; the run file stays small.
        if let after = result.after {
            try AtomicFile.write(try StableJSON.data(after), to: MatrixRun.afterInventoryPath(home, run.id, result.id))
        }
        if let before = result.before {
            try AtomicFile.write(try StableJSON.data(before), to: MatrixRun.beforeInventoryPath(home, run.id, result.id))
        }
        stored.after = nil
        stored.before = nil
        run.results[result.id] = stored
        try run.save(home: home)
    }
}
