import Foundation
import HostIO
import Model

/// Guests restored ahead of time for the cells that come next, paused: starting such a
/// cell is a resume and a clock set instead of a restore.
///
/// A paused guest costs memory, not CPU, and holds a saved slot of its baseline (its lock,
/// its own overlay), not one of the matrix's concurrency slots: the pool never lowers
/// parallelism. It restores one guest at a time, when a cell starts or ends — never a burst
/// that would take the cores from the running cells — and only onto slots already saved (a
/// cold boot is what it exists to avoid). Pooled guests are slot domains under their slot's
/// lock, so a harness killed with SIGKILL leaves nothing the next run does not destroy
/// (`Lab.reapStale`); `close()` destroys whatever is left on every other path.
actor WarmPool {
    let lab: Lab
    let host: LabHosts.Host
    let capacity: Int
    private let note: @Sendable (String) -> Void
    /// Paused guests by baseline.
    private var ready: [String: [RestoredGuest]] = [:]
    /// The baselines of the cells still queued, in order.
    private var upcoming: [BaselineImage] = []
    /// Baselines with no free saved slot at the last try: skipped until a cell ends.
    private var noFreeSlot: Set<String> = []
    /// The baseline being restored now (one at a time), and who waits for it.
    private var restoring: String?
    private var waiters: [CheckedContinuation<Void, Never>] = []
    private var filler: Task<Void, Never>?
    private var closed = false
    /// Every guest the pool restored (domain, overlay): what must be gone after the run.
    private(set) var history: [(domain: String, overlay: String)] = []

    init(lab: Lab, host: LabHosts.Host, capacity: Int, note: @escaping @Sendable (String) -> Void) {
        self.lab = lab
        self.host = host
        self.capacity = max(0, capacity)
        self.note = note
    }

    /// How many paused guests fit beside the running cells: the slots, bounded by the
    /// memory available now, less the cells' own guests and a reserve for the host.
    static func capacity(slots: Int, guestMiB: Int, runningCells: Int, availableMiB: Int?, reserveMiB: Int = 2048)
        -> Int
    {
        guard let availableMiB, guestMiB > 0 else { return 0 }
        // A guest's memory plus QEMU's own (about 100 MiB under TCG).
        let perGuest = guestMiB + 128
        let spare = availableMiB - reserveMiB - runningCells * perGuest
        return max(0, min(slots, spare / perGuest))
    }

    /// MemAvailable from /proc/meminfo, in MiB.
    static func availableMemoryMiB() -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("MemAvailable:") {
            let fields = line.split(separator: " ")
            if fields.count >= 2, let kib = Int(fields[1]) { return kib / 1024 }
        }
        return nil
    }

    /// The queue changed (a cell started) or a slot freed (a cell ended): restore ahead for
    /// the next cells, one guest at a time.
    func plan(_ next: [BaselineImage], slotFreed: Bool) {
        guard !closed, capacity > 0 else { return }
        upcoming = next
        if slotFreed { noFreeSlot.removeAll() }
        if filler == nil, wanted() != nil {
            filler = Task { await self.fill() }
        }
    }

    /// A paused guest of `image` on `host`, if the pool has one (waiting for it when it is
    /// being restored right now); nil otherwise.
    func take(_ image: BaselineImage, on host: LabHosts.Host) async -> RestoredGuest? {
        guard host == self.host else { return nil }
        while ready[image.name]?.isEmpty ?? true, restoring == image.name {
            await withCheckedContinuation { waiters.append($0) }
        }
        guard var guests = ready[image.name], !guests.isEmpty else { return nil }
        let guest = guests.removeFirst()
        ready[image.name] = guests
        return guest
    }

    /// Stops restoring ahead and destroys every guest still in the pool.
    func close() async {
        closed = true
        upcoming = []
        await filler?.value
        let left = ready.values.flatMap { $0 }
        ready = [:]
        for guest in left { await guest.finish(keep: false) }
    }

    /// The first of the next `capacity` cells' baselines that has fewer guests in the pool
    /// than those cells need; nil when the pool is full or has what they need.
    private func wanted() -> BaselineImage? {
        guard ready.values.reduce(0, { $0 + $1.count }) < capacity else { return nil }
        var needed: [String: Int] = [:]
        for image in upcoming.prefix(capacity) {
            let count = needed[image.name, default: 0] + 1
            needed[image.name] = count
            if (ready[image.name]?.count ?? 0) < count, !noFreeSlot.contains(image.name) { return image }
        }
        return nil
    }

    private func fill() async {
        while !closed, let image = wanted() {
            restoring = image.name
            let started = ContinuousClock.now
            do {
                if let guest = try await lab.restorePaused(image, on: host) {
                    history.append((guest.domain.name, guest.overlay))
                    if closed {
                        await guest.finish(keep: false)
                    } else {
                        ready[image.name, default: []].append(guest)
                        note(String(format: "warm pool: %@ restored ahead, paused, in %.1f s", guest.domain.name, started.secondsSince))
                    }
                } else {
                    noFreeSlot.insert(image.name)
                }
            } catch {
                noFreeSlot.insert(image.name)
                note("warm pool: restoring \(image.name) ahead failed (\(error)); its cell restores as usual")
            }
            restoring = nil
            let woken = waiters
            waiters = []
            for waiter in woken { waiter.resume() }
        }
        filler = nil
    }
}
