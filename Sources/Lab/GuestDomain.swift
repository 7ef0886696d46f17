import Libvirt

/// The libvirt definition of a lab VM: direct kernel boot of the image's own kernel, one
/// virtio disk, the guest agent's virtio-serial channel, the serial console to a file,
/// and no network (the guest agent is the only way in).
public struct GuestDomain: Sendable, Equatable {
    public var name: String
    /// `qemu` (TCG) everywhere KVM does not really work; `kvm` where the probe says it does.
    public var type: String
    public var memoryMiB: Int
    public var vcpus: Int
    public var kernel: String
    public var initrd: String
    public var disk: String
    public var consoleLog: String
    public var kernelArguments = "root=/dev/vda rw console=ttyS0 panic=10"

    public init(
        name: String, type: String, memoryMiB: Int, vcpus: Int, kernel: String, initrd: String, disk: String,
        consoleLog: String
    ) {
        self.name = name
        self.type = type
        self.memoryMiB = memoryMiB
        self.vcpus = vcpus
        self.kernel = kernel
        self.initrd = initrd
        self.disk = disk
        self.consoleLog = consoleLog
    }

    public var xml: String {
        """
        <domain type='\(XML.escape(type))'>
          <name>\(XML.escape(name))</name>
          <memory unit='MiB'>\(memoryMiB)</memory>
          <vcpu>\(vcpus)</vcpu>
          <os>
            <type arch='x86_64' machine='pc'>hvm</type>
            <kernel>\(XML.escape(kernel))</kernel>
            <initrd>\(XML.escape(initrd))</initrd>
            <cmdline>\(XML.escape(kernelArguments))</cmdline>
          </os>
          <features><acpi/></features>
          <clock offset='utc'/>
          <on_poweroff>destroy</on_poweroff>
          <on_reboot>restart</on_reboot>
          <on_crash>destroy</on_crash>
          <devices>
            <disk type='file' device='disk'>
              <driver name='qemu' type='qcow2' cache='unsafe' discard='unmap'/>
              <source file='\(XML.escape(disk))'/>
              <target dev='vda' bus='virtio'/>
            </disk>
            <channel type='unix'>
              <target type='virtio' name='org.qemu.guest_agent.0'/>
            </channel>
            <serial type='file'>
              <source path='\(XML.escape(consoleLog))'/>
              <target port='0'/>
            </serial>
            <console type='file'>
              <source path='\(XML.escape(consoleLog))'/>
              <target type='serial' port='0'/>
            </console>
            <memballoon model='none'/>
          </devices>
        </domain>
        """
    }
}

extension String {
    /// Replaces every XML attribute value `'old'` with `'new'`: how a saved domain's disk
    /// and console are pointed at a fresh overlay and log on restore.
    func replacingAttribute(_ old: String, with new: String) -> String {
        replacingOccurrences(of: "'\(XML.escape(old))'", with: "'\(XML.escape(new))'")
            .replacingOccurrences(of: "\"\(XML.escape(old))\"", with: "\"\(XML.escape(new))\"")
    }
}
