import ArgumentParser
import ChangeControl
import Foundation
import Lab
import Libvirt
import Model

struct LabCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lab",
        abstract: "Run commands and copy files in fresh restores of baselines, and manage kept VMs.",
        subcommands: [Exec.self, Copy.self, List.self, Discard.self, Key.self]
    )

    /// Where a lab command runs: a kept VM (by domain name) or a fresh restore of a baseline.
    static func withGuest<T: Sendable>(
        _ lab: Lab, _ name: String, keep: Bool, _ body: @escaping @Sendable (Domain, String) async throws -> T
    ) async throws -> T {
        if let kept = lab.keptGuest(name), kept.domain == name {
            return try await body(try await lab.attach(kept), kept.baseline)
        }
        let image = try lab.readyImage(name, allowUnvalidated: true)
        return try await lab.withRestored(image, keep: keep) { guest in
            let result = try await body(guest.domain, image.name)
            if keep {
                note("kept as \(guest.name): changelab lab exec \(guest.name) -- CMD; virsh console \(guest.name); changelab lab discard \(guest.name)")
            }
            return result
        }
    }

    static func missingCommand(_ error: GuestAgentError, baseline: String) -> Error {
        if case .commandNotFound(_, let command) = error {
            return ChangelabError(
                "'\(command)' is not installed in baseline '\(baseline)'",
                fix: "add the package that provides it to 'packages' in baselines/\(baseline).yaml and rebuild")
        }
        return error
    }

    struct Exec: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run a command on a fresh restore of a baseline (or in a kept VM); exit with its exit code.",
            discussion: "Output streams as the command runs. The VM is discarded afterwards unless --keep.")
        @OptionGroup var projectOptions: ProjectOptions
        @Argument(help: "A baseline (fresh restore) or the name of a kept VM.")
        var name: String
        @Flag(help: "Keep the VM running afterwards for debugging.")
        var keep = false
        @Option(help: "Kill the command after this many seconds (exit status 124).")
        var timeout: Int?
        @Argument(parsing: .postTerminator, help: "The command and its arguments, after --.")
        var command: [String] = []

        func validate() throws {
            if command.isEmpty {
                throw ValidationError("give the command after --, for example: changelab lab exec web -- uname -a")
            }
            if let timeout, timeout <= 0 { throw ValidationError("--timeout must be a positive number of seconds") }
        }

        func run() async throws {
            let lab = try Lab(project: try projectOptions.project(), progress: ConsoleProgress.handler(quiet: true))
            let command = self.command
            let limit = timeout.map { Duration.seconds($0) }
            let result = try await LabCommand.withGuest(lab, name, keep: keep) { domain, baseline in
                do {
                    return try await domain.agent.exec(command, timeout: limit) { stream, data in
                        (stream == .stdout ? FileHandle.standardOutput : FileHandle.standardError).write(data)
                    }
                } catch let error as GuestAgentError {
                    throw LabCommand.missingCommand(error, baseline: baseline)
                }
            }
            if result.timedOut {
                note("changelab: '\(command.joined(separator: " "))' timed out after \(timeout ?? 0) s and was killed")
                throw ExitCode(124)
            }
            if result.exitCode != 0 { throw ExitCode(result.exitCode) }
        }
    }

    struct Copy: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "cp",
            abstract: "Copy a file into or out of a guest: lab cp SRC VM:/PATH or lab cp VM:/PATH DEST.",
            discussion: """
                VM is a kept VM's name or a baseline. For a baseline, its newest kept VM is used; \
                without one, a fresh restore (discarded afterwards unless --keep), which is how to \
                fetch a file from the pristine baseline.
                """)
        @OptionGroup var projectOptions: ProjectOptions
        @Argument(help: "Source: a host path or VM:/guest/path.")
        var source: String
        @Argument(help: "Destination: a host path or VM:/guest/path.")
        var destination: String
        @Flag(help: "Keep a freshly restored VM running afterwards.")
        var keep = false
        @Option(help: "File mode for an upload, in octal (default 0644).")
        var mode = "0644"

        static func guestPath(_ text: String) -> (vm: String, path: String)? {
            guard let colon = text.firstIndex(of: ":") else { return nil }
            let vm = String(text[..<colon])
            let path = String(text[text.index(after: colon)...])
            guard !vm.isEmpty, !vm.contains("/"), path.hasPrefix("/") else { return nil }
            return (vm, path)
        }

        func run() async throws {
            let lab = try Lab(project: try projectOptions.project(), progress: ConsoleProgress.handler(quiet: true))
            let from = Self.guestPath(source)
            let to = Self.guestPath(destination)
            guard (from == nil) != (to == nil) else {
                throw ValidationError("exactly one side must be VM:/path, for example: changelab lab cp ./app.conf web:/etc/app.conf")
            }
            let started = Date()
            let bytes: Int
            if let to {
                guard let fileMode = Int(mode, radix: 8) else { throw ValidationError("--mode must be octal, like 0644") }
                guard FileManager.default.isReadableFile(atPath: source) else {
                    throw ChangelabError("cannot read \(source)", fix: "check the path of the file to upload")
                }
                let size = (try? FileManager.default.attributesOfItem(atPath: source)[.size] as? Int) ?? 0
                let localPath = source
                try await LabCommand.withGuest(lab, to.vm, keep: keep) { domain, _ in
                    try await domain.agent.upload(file: localPath, to: to.path, mode: fileMode)
                }
                bytes = size ?? 0
            } else if let from {
                var target = destination
                var isDirectory: ObjCBool = false
                if FileManager.default.fileExists(atPath: target, isDirectory: &isDirectory), isDirectory.boolValue {
                    target += "/" + (from.path as NSString).lastPathComponent
                }
                let localTarget = target
                bytes = try await LabCommand.withGuest(lab, from.vm, keep: keep) { domain, _ in
                    try await domain.agent.download(from.path, to: localTarget)
                }
            } else {
                bytes = 0
            }
            note(String(format: "copied %d bytes in %.2f s", bytes, Date().timeIntervalSince(started)))
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List VMs kept for debugging.")
        @OptionGroup var projectOptions: ProjectOptions
        @OptionGroup var output: OutputOptions

        func run() async throws {
            let lab = try Lab(project: try projectOptions.project())
            let kept = lab.keptGuests()
            if output.json { return try printJSON(kept) }
            if kept.isEmpty { return print("no kept VMs") }
            var table = Table("VM", "BASELINE", "AGE", "REASON", "CONSOLE LOG")
            for guest in kept { table.add(guest.domain, guest.baseline, age(since: guest.since), guest.reason, guest.console) }
            table.print()
        }
    }

    struct Key: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print the lab's evidence key (created on first use): list it under lab-keys in the approval policy.",
            discussion: "Every matrix run recorded in the CMDB is signed with this key; agents and the release gate trust only evidence signed by a key in the trust root.")
        @OptionGroup var projectOptions: ProjectOptions
        @OptionGroup var policyOptions: PolicyOptions
        @OptionGroup var output: OutputOptions
        @Flag(help: "Also list the key under lab-keys in the approval policy (--policy FILE), keeping its comments.")
        var register = false

        func run() async throws {
            let home = LabHome.fromEnvironment()
            let key = try home.evidenceKey().publicKey
            if register {
                let path = policyOptions.path(in: try projectOptions.project())
                try PolicyFile.register(labKey: key, in: path)
                note("the lab's evidence key \(key.keyID) is listed under lab-keys in \(path); sign a new trust root for agents to trust it")
            }
            if output.json { return try printJSON(["key": key.hex, "keyid": key.keyID, "path": home.evidenceKeyPath]) }
            print(key.hex)
        }
    }

    struct Discard: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Destroy kept VMs (by name or baseline, or --all) and whatever an interrupted run left running.")
        @OptionGroup var projectOptions: ProjectOptions
        @Argument(help: "Kept VM names or baselines.")
        var names: [String] = []
        @Flag(help: "Discard every kept VM.")
        var all = false

        func run() async throws {
            let lab = try Lab(project: try projectOptions.project())
            guard all || !names.isEmpty else {
                throw ValidationError("name the VMs to discard (see: changelab lab list), or pass --all")
            }
            let targets = all ? lab.keptGuests() : try names.map { name in
                guard let kept = lab.keptGuest(name) else {
                    throw ChangelabError("no kept VM called '\(name)'", fix: "see the kept VMs with: changelab lab list")
                }
                return kept
            }
            for kept in targets {
                try await lab.discard(kept)
                print("discarded \(kept.domain)")
            }
            for domain in try await lab.reapStale() { print("destroyed \(domain), left running by an interrupted run") }
        }
    }
}
