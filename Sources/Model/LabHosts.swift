import Foundation

/// The libvirt hosts the lab runs VMs on (`lab/hosts.yaml`). One local host by default;
/// more hosts (qemu+ssh://…) are how the lab grows past one machine.
public struct LabHosts: Sendable, Equatable, Codable {
    public struct Host: Sendable, Equatable, Codable {
        /// A short name for tables and logs.
        public var name: String
        /// The libvirt URI, e.g. qemu:///system or qemu+ssh://root@lab2/system.
        public var uri: String
        /// How many VMs may run on this host at once.
        public var slots: Int

        public init(name: String, uri: String, slots: Int) {
            self.name = name
            self.uri = uri
            self.slots = slots
        }

        public var isLocal: Bool { uri.hasPrefix("qemu:///") || uri.hasPrefix("test:///") }
    }

    public var hosts: [Host]

    public init(hosts: [Host]) {
        self.hosts = hosts
    }

    /// The local qemu:///system with one slot per core (TCG guests keep a core busy each).
    public static func localDefault(cores: Int = ProcessInfo.processInfo.activeProcessorCount) -> LabHosts {
        LabHosts(hosts: [Host(name: "local", uri: "qemu:///system", slots: max(1, cores))])
    }

    public var totalSlots: Int { hosts.reduce(0) { $0 + $1.slots } }

    public static func parse(_ text: String, file: String) throws -> LabHosts {
        let reader = SpecReader(file: file, text: text)
        guard let root = reader.rootMapping(keys: ["hosts"]) else {
            try reader.finish()
            return localDefault()
        }
        var hosts: [Host] = []
        for entry in root.mappings("hosts", keys: ["name", "uri", "slots"]) {
            let uri = entry.required("uri", String.self) ?? ""
            let slots = entry.optional("slots", default: 1)
            let name = entry.optional("name", default: uri)
            if !uri.isEmpty && !uri.contains(":/") {
                entry.reader.report(at: entry.value("uri"), "'uri' must be a libvirt URI like qemu:///system, not '\(uri)'")
            }
            if !(1...64).contains(slots) {
                entry.reader.report(at: entry.value("slots"), "'slots' must be 1 to 64")
            }
            if hosts.contains(where: { $0.name == name }) {
                entry.reader.report(at: entry.node, "two hosts are named '\(name)'; names must be unique")
            }
            hosts.append(Host(name: name, uri: uri, slots: slots))
        }
        if hosts.isEmpty { reader.report(at: root.node, "'hosts' must list at least one libvirt host") }
        try reader.finish()
        return LabHosts(hosts: hosts)
    }
}
