//! The e2e scenarios: what L2 runs, what must be reported, how long it may take.

use std::time::Duration;

/// Kernel command line of every L3 guest; expectations are appended as `ghvmm.*`.
pub const L3_CMDLINE: &str = "console=ttyS0 quiet loglevel=1 panic=-1";

pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    /// Shell run by L2's init (tests/l2/init provides `l2_check` and `expect_clean_failure`).
    pub script: String,
    /// Checks that must report PASS (L3's `@@CHECK`, L2's `@@L2CHECK`).
    pub expect: Vec<&'static str>,
    /// Whether the guest dumps ACPI tables to disassemble with iasl on the host.
    pub acpi: bool,
    /// Whether L2 also gets the uncompressed vmlinux (at /l3/vmlinux) for PVH boots.
    pub vmlinux: bool,
    pub timeout: Duration,
}

/// How L2 boots an L3 guest under ghvmm and reports ghvmm's exit code.
pub fn ghvmm_boot(cpus: u32, mem: &str, extra_cmdline: &str) -> String {
    ghvmm_boot_kernel("/l3/vmlinuz", cpus, mem, extra_cmdline)
}

pub fn ghvmm_boot_kernel(kernel: &str, cpus: u32, mem: &str, extra_cmdline: &str) -> String {
    format!(
        "/bin/ghvmm --kernel {kernel} --initramfs /l3/initramfs \
         --cmdline \"{L3_CMDLINE} ghvmm.cpus={cpus} ghvmm.mem={mem} {extra_cmdline}\" \
         --cpus boot={cpus} --memory size={mem} --serial tty --console off\n\
         rc=$?\n\
         l2_check vmm-exit $rc \"ghvmm exit code $rc (expected 0)\"\n"
    )
}

const L3_CHECKS: &[&str] = &[
    "kvm",
    "init",
    "cpus",
    "memtotal",
    "e820",
    "pci-host-bridge",
    "acpi-dump",
    "vmm-exit",
];

pub fn all() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "boot-basic",
            about: "2 vCPUs, 512M: CPUs, memory, ACPI tables, power-off ends ghvmm with 0",
            script: ghvmm_boot(2, "512M", ""),
            expect: L3_CHECKS.to_vec(),
            acpi: true,
            vmlinux: false,
            timeout: Duration::from_secs(240),
        },
        Scenario {
            name: "boot-smp4",
            about: "4 vCPUs, 1G",
            script: ghvmm_boot(4, "1G", ""),
            expect: L3_CHECKS.to_vec(),
            acpi: false,
            vmlinux: false,
            timeout: Duration::from_secs(240),
        },
        Scenario {
            name: "boot-reboot",
            about: "the guest reboots: ghvmm ends with 0",
            script: ghvmm_boot(1, "256M", "ghvmm.action=reboot"),
            expect: L3_CHECKS.to_vec(),
            acpi: false,
            vmlinux: false,
            timeout: Duration::from_secs(240),
        },
        Scenario {
            name: "boot-pvh",
            about: "the uncompressed vmlinux through its PVH entry (32-bit, hvm_start_info)",
            script: ghvmm_boot_kernel("/l3/vmlinux", 2, "512M", ""),
            expect: L3_CHECKS.to_vec(),
            acpi: false,
            vmlinux: true,
            timeout: Duration::from_secs(240),
        },
        Scenario {
            name: "boot-bad-args",
            about: "malformed invocations exit 1 with one error line, no panic",
            script: "expect_clean_failure unknown-option --kernel /l3/vmlinuz --bogus\n\
                     expect_clean_failure bad-size --kernel /l3/vmlinuz --memory size=12Q\n\
                     expect_clean_failure missing-kernel --kernel /nonexistent/vmlinuz\n\
                     expect_clean_failure bad-cpus --kernel /l3/vmlinuz --cpus boot=0\n"
                .into(),
            expect: vec![
                "kvm",
                "unknown-option",
                "bad-size",
                "missing-kernel",
                "bad-cpus",
            ],
            acpi: false,
            vmlinux: false,
            timeout: Duration::from_secs(120),
        },
    ]
}

/// Scenarios whose name contains any filter (all when no filter is given).
pub fn select<'a>(all: &'a [Scenario], filters: &[String]) -> Vec<&'a Scenario> {
    all.iter()
        .filter(|s| filters.is_empty() || filters.iter().any(|f| s.name.contains(f.as_str())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_start_with_their_area_and_are_unique() {
        let all = all();
        for s in &all {
            assert!(s.name.starts_with("boot-"), "{}", s.name);
            assert_eq!(all.iter().filter(|o| o.name == s.name).count(), 1);
        }
    }

    #[test]
    fn filters_by_substring() {
        let all = all();
        assert_eq!(select(&all, &[]).len(), all.len());
        let f = select(&all, &["smp".into(), "bad".into()]);
        let names: Vec<_> = f.iter().map(|s| s.name).collect();
        assert_eq!(names, ["boot-smp4", "boot-bad-args"]);
        assert_eq!(select(&all, &["pvh".into()])[0].name, "boot-pvh");
        assert!(select(&all, &["nothing".into()]).is_empty());
    }
}
