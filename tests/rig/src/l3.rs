//! How L2 boots an L3 guest: which VMM, which kernel file, and the command line that carries
//! the checker's expectations. Scenarios, the bench and the demo all boot through here, so
//! switching a scenario's VMM is one field.

/// Kernel command line of every checker guest; expectations are appended as `ghvmm.*`.
/// `nokaslr`: an L3 RIP in a hung L2's register dump names the same code as in L2
/// (crate::symbols). `printk.time=0`: the guest's kernel messages share L2's console, and
/// only L2's carry a timestamp, which tells whose kernel reported a lockup (protocol.rs).
pub const QUIET_CMDLINE: &str = "console=ttyS0 quiet loglevel=1 panic=-1 nokaslr printk.time=0";

/// The VMM that runs the L3 guest inside L2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vmm {
    /// The VMM under test.
    Ghvmm,
    /// QEMU/KVM with SeaBIOS: the peer for the bench, and a rig self-test
    /// (`cargo xtask e2e --l3-vmm qemu`) that tells a rig problem from a ghvmm one.
    Qemu,
}

impl Vmm {
    pub fn name(self) -> &'static str {
        match self {
            Vmm::Ghvmm => "ghvmm",
            Vmm::Qemu => "qemu",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ghvmm" => Some(Vmm::Ghvmm),
            "qemu" => Some(Vmm::Qemu),
            _ => None,
        }
    }

    /// Checker checks that test ghvmm's own platform (docs/platform.md) and so mean nothing
    /// under another VMM; the checker skips them when told `ghvmm.platform=<other>`.
    pub fn skipped_checks(self) -> &'static [&'static str] {
        match self {
            Vmm::Ghvmm => &[],
            Vmm::Qemu => &["e820", "pci-host-bridge"],
        }
    }
}

/// The kernel file L2 hands to the VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Debian's bzImage, always in the L2 image.
    BzImage,
    /// The uncompressed ELF vmlinux extracted from it (PVH entry); an extra archive.
    Vmlinux,
}

impl Kernel {
    pub fn path(self) -> &'static str {
        match self {
            Kernel::BzImage => "/l3/vmlinuz",
            Kernel::Vmlinux => "/l3/vmlinux",
        }
    }
}

/// One L3 boot.
#[derive(Debug, Clone)]
pub struct L3 {
    pub vmm: Vmm,
    pub kernel: Kernel,
    pub cpus: u32,
    pub mem: &'static str,
    /// More words for the guest command line, e.g. `ghvmm.action=reboot`.
    pub cmdline: String,
    /// More VMM arguments (shell words; may use variables set earlier in the script).
    pub vmm_args: String,
    /// Guest RAM in a shared memfd (ghvmm's `--memory shared=on`, QEMU's memfd backend).
    pub shared_memory: bool,
    /// ghvmm's whole `--memory` value instead of `size=<mem>` (e.g. `size=0` with zones in
    /// `vmm_args`); `mem` stays the total the guest checks.
    pub memory_arg: Option<&'static str>,
    /// L2 kills the VMM after this many seconds (tests/l2/init `run_l3`), printing what it
    /// was doing; a guest boots in about 10 s of L2 time.
    pub watchdog_s: u32,
    /// Whether the checker prints its ACPI tables (`NO_ACPI_DUMP` on the command line when
    /// not): only a scenario that disassembles them wants the dump (`Scenario::acpi`).
    pub acpi_dump: bool,
}

impl L3 {
    pub fn new(vmm: Vmm, cpus: u32, mem: &'static str) -> Self {
        L3 {
            vmm,
            kernel: Kernel::BzImage,
            cpus,
            mem,
            cmdline: String::new(),
            vmm_args: String::new(),
            shared_memory: false,
            memory_arg: None,
            watchdog_s: 90,
            acpi_dump: true,
        }
    }

    /// The guest does not print its ACPI tables (see `Scenario::without_acpi_dump`).
    pub fn without_acpi_dump(mut self) -> Self {
        self.acpi_dump = false;
        self
    }

    pub fn kernel(mut self, k: Kernel) -> Self {
        self.kernel = k;
        self
    }

    pub fn cmdline(mut self, words: &str) -> Self {
        self.cmdline = words.to_string();
        self
    }

    pub fn vmm_args(mut self, args: &str) -> Self {
        self.vmm_args = args.to_string();
        self
    }

    pub fn memory_arg(mut self, arg: &'static str) -> Self {
        self.memory_arg = Some(arg);
        self
    }

    pub fn shared_memory(mut self) -> Self {
        self.shared_memory = true;
        self
    }

    /// The guest's kernel command line.
    pub fn guest_cmdline(&self) -> String {
        let mut words = vec![
            QUIET_CMDLINE.to_string(),
            format!("ghvmm.cpus={}", self.cpus),
            format!("ghvmm.mem={}", self.mem),
        ];
        if self.vmm != Vmm::Ghvmm {
            words.push(format!("ghvmm.platform={}", self.vmm.name()));
        }
        if !self.cmdline.is_empty() {
            words.push(self.cmdline.clone());
        }
        if !self.acpi_dump {
            words.push(crate::scenario::NO_ACPI_DUMP.to_string());
        }
        words.join(" ")
    }

    /// The value of a `ghvmm.<key>=` word this boot passes to the checker.
    pub fn expectation(&self, key: &str) -> Option<&str> {
        let prefix = format!("ghvmm.{key}=");
        self.cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix(prefix.as_str()))
    }

    /// The shell command that runs the VMM (without redirections).
    pub fn command(&self) -> String {
        let (kernel, cmdline, cpus, mem) = (
            self.kernel.path(),
            self.guest_cmdline(),
            self.cpus,
            self.mem,
        );
        let shared = self.shared_memory;
        let extra = if self.vmm_args.is_empty() {
            String::new()
        } else {
            format!(" {}", self.vmm_args)
        };
        match self.vmm {
            // RIG_GHVMM_ARGS (e.g. -vv) is for debugging a scenario by hand.
            Vmm::Ghvmm => format!(
                "/bin/ghvmm --kernel {kernel} --initramfs /l3/initramfs --cmdline \"{cmdline}\" \
                 --cpus boot={cpus} --memory {} --serial tty --console off{extra}{}",
                match (self.memory_arg, shared) {
                    (Some(arg), _) => arg.to_string(),
                    (None, true) => format!("size={mem},shared=on"),
                    (None, false) => format!("size={mem}"),
                },
                std::env::var("RIG_GHVMM_ARGS")
                    .map(|a| format!(" {a}"))
                    .unwrap_or_default()
            ),
            // -L: SeaBIOS and the option ROMs copied into L2; -nic none: no NIC ROM needed.
            Vmm::Qemu => format!(
                "/bin/qemu-system-x86_64 -enable-kvm -cpu host -m {mem} -smp {cpus} -L /qemu \
                 -nic none -vga none -display none -serial stdio -monitor none -no-reboot \
                 -kernel {kernel} -initrd /l3/initramfs -append \"{cmdline}\"{}{extra}",
                if shared {
                    format!(
                        " -object memory-backend-memfd,id=ram,size={mem},share=on \
                         -machine memory-backend=ram"
                    )
                } else {
                    String::new()
                }
            ),
        }
    }

    /// Shell that boots the guest under L2's watchdog and reports the VMM's exit code as the
    /// `vmm-exit` check.
    pub fn script(&self) -> String {
        format!(
            "run_l3 {} {}\nl2_check vmm-exit $rc \"{}: $why (expected exit code 0)\"\n",
            self.watchdog_s,
            self.command(),
            self.vmm.name()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ghvmm_command_carries_expectations() {
        let l3 = L3::new(Vmm::Ghvmm, 4, "1G")
            .cmdline("ghvmm.action=reboot ghvmm.gh_len=8192")
            .vmm_args("--device path=$IVSHMEM");
        let c = l3.command();
        assert!(c.starts_with("/bin/ghvmm --kernel /l3/vmlinuz --initramfs /l3/initramfs"));
        assert!(c.contains("--cpus boot=4 --memory size=1G"));
        assert!(c.contains(
            "\"console=ttyS0 quiet loglevel=1 panic=-1 nokaslr printk.time=0 ghvmm.cpus=4 ghvmm.mem=1G ghvmm.action=reboot"
        ));
        assert!(c.ends_with(" --device path=$IVSHMEM"));
        let shared = L3::new(Vmm::Ghvmm, 2, "512M").shared_memory().command();
        assert!(shared.contains("--memory size=512M,shared=on --serial"));
        assert!(!c.contains("platform"));
        assert_eq!(l3.expectation("gh_len"), Some("8192"));
        assert_eq!(l3.expectation("gh"), None);
        assert!(l3.script().starts_with("run_l3 90 /bin/ghvmm --kernel"));
        assert!(l3.script().contains("l2_check vmm-exit $rc \"ghvmm: $why"));
    }

    #[test]
    fn qemu_command_is_the_same_guest() {
        let l3 = L3::new(Vmm::Qemu, 2, "512M").kernel(Kernel::Vmlinux);
        let c = l3.command();
        assert!(c.starts_with("/bin/qemu-system-x86_64 -enable-kvm"));
        assert!(c.contains("-m 512M -smp 2 -L /qemu -nic none"));
        assert!(c.contains("-kernel /l3/vmlinux -initrd /l3/initramfs"));
        assert!(c.contains("ghvmm.platform=qemu"));
        assert_eq!(Vmm::parse("qemu"), Some(Vmm::Qemu));
        assert_eq!(Vmm::parse("cloud-hypervisor"), None);
    }
}
