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

/// Shell that finds L2's ivshmem (1af4:1110), binds it to `driver` and reports `vfio-bind`;
/// `$IVSHMEM` is then its sysfs path.
fn bind_ivshmem(driver: &str) -> String {
    format!(
        "IVSHMEM=\n\
         for d in /sys/bus/pci/devices/*; do\n\
             [ \"$(cat $d/vendor)\" = 0x1af4 ] && [ \"$(cat $d/device)\" = 0x1110 ] && IVSHMEM=$d\n\
         done\n\
         echo {driver} > $IVSHMEM/driver_override\n\
         [ -e $IVSHMEM/driver ] && echo $(basename $IVSHMEM) > $IVSHMEM/driver/unbind\n\
         echo $(basename $IVSHMEM) > /sys/bus/pci/drivers_probe\n\
         readlink $IVSHMEM/driver 2>/dev/null | grep -q {driver}\n\
         l2_check vfio-bind $? \"ivshmem ($IVSHMEM) did not bind to {driver}\"\n"
    )
}

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

/// Default GPU-like device lengths: one a multiple of 2 MiB (not a power of two), one not.
pub const GH_LENGTHS: [u64; 2] = [48 << 20, (40 << 20) + (12 << 10)];
pub const GH_MODES: [&str; 2] = ["vmm_pads", "kernel_pads"];

pub fn bind_variant(mode: &str, len: u64, extra: &str) -> String {
    format!(
        "insmod /lib/modules/extra/ghvmm_test_vfio.ko mode={mode} length={len} {extra}\n{}",
        bind_ivshmem("ghvmm_test_vfio")
    )
}

fn short_len(len: u64) -> String {
    match (len >> 20, (len >> 10) & 1023) {
        (0, k) => format!("{k}K"),
        (m, 0) => format!("{m}M"),
        (m, k) => format!("{m}M{k}K"),
    }
}

/// The GPU-like device scenarios for `modes` x `lengths`.
pub fn gh_device_scenarios(modes: &[&'static str], lengths: &[u64]) -> Vec<Scenario> {
    let mut v = Vec::new();
    for &mode in modes {
        for &len in lengths {
            let name: &'static str = Box::leak(
                format!(
                    "vfio-gh-{}-{}",
                    mode.trim_end_matches("_pads"),
                    short_len(len)
                )
                .into_boxed_str(),
            );
            v.push(Scenario {
                name,
                about: if mode == "vmm_pads" {
                    "GPU-like BAR, region not a power of two: ghvmm pads (reads 0)"
                } else {
                    "GPU-like BAR, power-of-two region with a sparse area: the kernel pads (reads 0xff)"
                },
                script: format!(
                    "{}{}",
                    bind_variant(mode, len, ""),
                    ghvmm_boot_with(
                        "/l3/vmlinuz",
                        2,
                        "512M",
                        &format!("ghvmm.vfio=gh ghvmm.gh_mode={mode} ghvmm.gh_len={len}"),
                        "--device path=$IVSHMEM,id=gpu0"
                    )
                ),
                expect: [
                    L3_CHECKS,
                    &["vfio-bind", "gh-bar", "gh-data", "gh-padding-read", "gh-straddle", "gh-padding-write", "host-file"],
                ]
                .concat(),
                acpi: false,
                vmlinux: false,
                host_checks: Some(if mode == "vmm_pads" { gh_file_check::<0> } else { gh_file_check::<1> }),
                timeout: Duration::from_secs(240),
            });
        }
    }
    v
}

/// Reads back the scenario's length from its script and checks the host file: the guest's
/// patterns are there, and nothing it wrote into the padding reached the file.
fn gh_file_check<const KERNEL: u8>(
    dir: &std::path::Path,
) -> Vec<(String, crate::protocol::Outcome)> {
    use crate::protocol::Outcome;
    let len = std::fs::read_to_string(dir.join("gh_len"))
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    let outcome = match (std::fs::read(dir.join("ivshmem.bin")), len) {
        (Err(e), _) => Outcome::Fail(format!("reading ivshmem.bin: {e}")),
        (_, None) => Outcome::Fail("no gh_len next to the log".into()),
        (Ok(file), Some(len)) => {
            let mut bad = Vec::new();
            for (off, pat) in gh_patterns(len) {
                if file.get(off as usize..off as usize + pat.len()) != Some(&pat[..]) {
                    bad.push(format!("pattern missing at {off:#x}"));
                }
            }
            if let Some(i) = file.iter().skip(len as usize).position(|b| *b != 0) {
                bad.push(format!(
                    "padding write reached the file at {:#x}",
                    len as usize + i
                ));
            }
            if bad.is_empty() {
                Outcome::Pass
            } else {
                Outcome::Fail(bad.join("; "))
            }
        }
    };
    vec![("host-file".to_string(), outcome)]
}

/// The patterns the checker writes through the GPU-like BAR (tests/checker/src/gh.rs).
pub fn gh_patterns(len: u64) -> [(u64, [u8; 16]); 3] {
    let mid = (len / 2) & !15;
    [
        (0, *b"gh-mem-at-start!"),
        (mid, *b"gh-mem-in-middle"),
        (len - 16, *b"gh-mem-last-16B!"),
    ]
}

pub fn all() -> Vec<Scenario> {
    let mut v = base();
    v.extend(gh_device_scenarios(&GH_MODES, &GH_LENGTHS));
    v.push(Scenario {
        name: "vfio-gh-bad-info",
        about: "the variant driver reports a sparse area outside its region: ghvmm refuses, exit 1",
        script: format!(
            "{}expect_clean_failure refused --kernel /l3/vmlinuz --device path=$IVSHMEM\n\
             grep -q 'region 2' /tmp/err\n\
             l2_check names-region $? \"the error does not name region 2: $(cat /tmp/err)\"\n",
            bind_variant("kernel_pads", GH_LENGTHS[0], "bad_info=1")
        ),
        expect: vec!["kvm", "vfio-bind", "refused", "names-region"],
        acpi: false,
        vmlinux: false,
        host_checks: None,
        timeout: Duration::from_secs(120),
    });
    v
}

fn base() -> Vec<Scenario> {
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
            script: format!("{}{}", bind_ivshmem("vfio-pci"), ghvmm_boot_with(
                "/l3/vmlinuz", 2, "512M", "ghvmm.vfio=ivshmem", "--device path=$IVSHMEM,id=shm0")),
            expect: [L3_CHECKS, &["vfio-bind", "vfio-present", "vfio-bar2", "vfio-bar2-data", "vfio-bar0-padding", "vfio-decode-off", "vfio-bar-move", "host-file"]].concat(),
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
    fn gh_scenarios_cover_modes_and_lengths() {
        let v = gh_device_scenarios(&GH_MODES, &GH_LENGTHS);
        let names: Vec<_> = v.iter().map(|s| s.name).collect();
        assert_eq!(
            names,
            [
                "vfio-gh-vmm-48M",
                "vfio-gh-vmm-40M12K",
                "vfio-gh-kernel-48M",
                "vfio-gh-kernel-40M12K"
            ]
        );
        assert!(
            GH_LENGTHS.iter().any(|l| l % (2 << 20) != 0),
            "one length is not a multiple of 2 MiB"
        );
        assert!(v[3].script.contains("mode=kernel_pads length=41955328"));
        assert_eq!(gh_patterns(48 << 20)[2].0, (48 << 20) - 16);
    }

    #[test]
    fn filters_by_substring() {
        let all = all();
        assert_eq!(select(&all, &[]).len(), all.len());
        let f = select(&all, &["smp".into(), "bad".into()]);
        let names: Vec<_> = f.iter().map(|s| s.name).collect();
        assert_eq!(names, ["boot-smp4", "boot-bad-args", "vfio-gh-bad-info"]);
        assert_eq!(select(&all, &["pvh".into()])[0].name, "boot-pvh");
        assert!(select(&all, &["nothing".into()]).is_empty());
    }
}
