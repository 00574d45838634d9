//! The e2e scenarios: what L2 runs, what must be reported, how long it may take.

use std::time::Duration;

/// Kernel command line of every L3 guest; expectations are appended as `ghvmm.*`.
pub const L3_CMDLINE: &str = "console=ttyS0 quiet loglevel=1 panic=-1";

/// Host-side checks: given the scenario directory, named outcomes.
pub type HostChecks = fn(&std::path::Path) -> Vec<(String, crate::protocol::Outcome)>;

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
    /// Checks run on the host after L2 stopped, given the scenario's directory (e.g. that data
    /// the guest wrote reached the ivshmem backing file).
    pub host_checks: Option<HostChecks>,
    pub timeout: Duration,
}

/// How L2 boots an L3 guest under ghvmm and reports ghvmm's exit code.
pub fn ghvmm_boot(cpus: u32, mem: &str, extra_cmdline: &str) -> String {
    ghvmm_boot_kernel("/l3/vmlinuz", cpus, mem, extra_cmdline)
}

pub fn ghvmm_boot_kernel(kernel: &str, cpus: u32, mem: &str, extra_cmdline: &str) -> String {
    ghvmm_boot_with(kernel, cpus, mem, extra_cmdline, "")
}

/// Finds L2's ivshmem (1af4:1110) and binds it to vfio-pci; `$IVSHMEM` is its sysfs path.
const BIND_IVSHMEM: &str = r#"IVSHMEM=
for d in /sys/bus/pci/devices/*; do
    [ "$(cat $d/vendor)" = 0x1af4 ] && [ "$(cat $d/device)" = 0x1110 ] && IVSHMEM=$d
done
if [ -n "$IVSHMEM" ]; then
    echo vfio-pci > $IVSHMEM/driver_override
    [ -e $IVSHMEM/driver ] && echo $(basename $IVSHMEM) > $IVSHMEM/driver/unbind
    echo $(basename $IVSHMEM) > /sys/bus/pci/drivers_probe
fi
readlink $IVSHMEM/driver 2>/dev/null | grep -q vfio-pci
l2_check vfio-bind $? "ivshmem ($IVSHMEM) did not bind to vfio-pci"
"#;

/// The patterns tests/checker/src/vfio.rs writes through BAR2, at the same offsets.
const IVSHMEM_PATTERNS: [(u64, &[u8; 16]); 3] = [
    (0, b"ghvmm-bar2-at-0!"),
    (1 << 20, b"ghvmm-bar2-at-1M"),
    ((64 << 20) - 16, b"ghvmm-bar2-atEnd"),
];

/// What the guest wrote through the passed-through BAR2 is in the host's backing file.
fn ivshmem_file_check(dir: &std::path::Path) -> Vec<(String, crate::protocol::Outcome)> {
    use crate::protocol::Outcome;
    let outcome = match std::fs::read(dir.join("ivshmem.bin")) {
        Err(e) => Outcome::Fail(format!("reading ivshmem.bin: {e}")),
        Ok(file) => {
            let bad: Vec<String> = IVSHMEM_PATTERNS
                .iter()
                .filter(|(off, pat)| file.get(*off as usize..*off as usize + 16) != Some(&pat[..]))
                .map(|(off, _)| format!("{off:#x}"))
                .collect();
            if bad.is_empty() {
                Outcome::Pass
            } else {
                Outcome::Fail(format!(
                    "pattern missing in the host file at {}",
                    bad.join(", ")
                ))
            }
        }
    };
    vec![("host-file".to_string(), outcome)]
}

pub fn ghvmm_boot_with(
    kernel: &str,
    cpus: u32,
    mem: &str,
    extra_cmdline: &str,
    extra_args: &str,
) -> String {
    format!(
        "/bin/ghvmm --kernel {kernel} --initramfs /l3/initramfs {extra_args} \
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
            host_checks: None,
            timeout: Duration::from_secs(240),
        },
        Scenario {
            name: "boot-smp4",
            about: "4 vCPUs, 1G",
            script: ghvmm_boot(4, "1G", ""),
            expect: L3_CHECKS.to_vec(),
            acpi: false,
            vmlinux: false,
            host_checks: None,
            timeout: Duration::from_secs(240),
        },
        Scenario {
            name: "boot-reboot",
            about: "the guest reboots: ghvmm ends with 0",
            script: ghvmm_boot(1, "256M", "ghvmm.action=reboot"),
            expect: L3_CHECKS.to_vec(),
            acpi: false,
            vmlinux: false,
            host_checks: None,
            timeout: Duration::from_secs(240),
        },
        Scenario {
            name: "boot-pvh",
            about: "the uncompressed vmlinux through its PVH entry (32-bit, hvm_start_info)",
            script: ghvmm_boot_kernel("/l3/vmlinux", 2, "512M", ""),
            expect: L3_CHECKS.to_vec(),
            acpi: false,
            vmlinux: true,
            host_checks: None,
            timeout: Duration::from_secs(240),
        },
        Scenario {
            name: "vfio-ivshmem",
            about: "L2's ivshmem on plain vfio-pci, passed through: BAR2 mapped (data reaches the host file), BAR0 trapped and padded",
            script: format!("{BIND_IVSHMEM}{}", ghvmm_boot_with(
                "/l3/vmlinuz", 2, "512M", "ghvmm.vfio=ivshmem", "--device path=$IVSHMEM,id=shm0")),
            expect: [L3_CHECKS, &["vfio-bind", "vfio-present", "vfio-bar2", "vfio-bar2-data", "vfio-bar0-padding", "host-file"]].concat(),
            acpi: false,
            vmlinux: false,
            host_checks: Some(ivshmem_file_check),
            timeout: Duration::from_secs(240),
        },
        Scenario {
            name: "boot-bad-args",
            about: "malformed invocations exit 1 with one error line, no panic",
            script: "expect_clean_failure unknown-option --kernel /l3/vmlinuz --bogus\n\
                     expect_clean_failure bad-size --kernel /l3/vmlinuz --memory size=12Q\n\
                     expect_clean_failure missing-kernel --kernel /nonexistent/vmlinuz\n\
                     expect_clean_failure bad-cpus --kernel /l3/vmlinuz --cpus boot=0\n\
                     expect_clean_failure device-not-vfio --kernel /l3/vmlinuz --device path=/sys/bus/pci/devices/0000:00:00.0\n\
                     expect_clean_failure device-missing --kernel /l3/vmlinuz --device path=/sys/bus/pci/devices/0000:09:1f.7\n\
                     expect_clean_failure device-duplicate-id --kernel /l3/vmlinuz --device path=/a,id=x --device path=/b,id=x\n"
                .into(),
            expect: vec![
                "kvm",
                "unknown-option",
                "bad-size",
                "missing-kernel",
                "bad-cpus",
                "device-not-vfio",
                "device-missing",
                "device-duplicate-id",
            ],
            acpi: false,
            vmlinux: false,
            host_checks: None,
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
            assert!(
                s.name.starts_with("boot-") || s.name.starts_with("vfio-"),
                "{}",
                s.name
            );
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
