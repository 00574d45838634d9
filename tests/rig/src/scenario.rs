//! The e2e scenarios: what L2 runs, what must be reported, how long it may take.

use std::path::Path;
use std::time::Duration;

use crate::l3::{Kernel, Vmm, L3};
use crate::protocol::{Outcome, Transcript};
use crate::vfio_scenarios;

/// Host-side checks, run after L2 stopped: given the scenario, its directory (console.log,
/// ivshmem.bin, acpi/*.dat, ...) and the transcript (the guest's `@@FACT`s), named outcomes.
pub type HostChecks = Box<dyn Fn(&Scenario, &Path, &Transcript) -> Vec<(String, Outcome)>>;

pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    /// Shell L2's init runs first (tests/l2/init provides `l2_check` and
    /// `expect_clean_failure`): device set-up before an L3 boot, or the whole test without one.
    pub setup: String,
    /// The L3 guest, if any; its VMM's exit code is the `vmm-exit` check.
    pub l3: Option<L3>,
    /// Checks that must report PASS (L3's `@@CHECK`, L2's `@@L2CHECK`, host checks).
    pub expect: Vec<&'static str>,
    /// Whether the guest dumps ACPI tables to disassemble with iasl on the host.
    pub acpi: bool,
    pub host_checks: Option<HostChecks>,
    /// More arguments for the L2 QEMU (extra emulated devices).
    pub qemu_args: Vec<String>,
    /// Sizes of L2's ivshmem devices (powers of two), backed by ivshmem.bin, ivshmem1.bin, ...
    pub ivshmem: Vec<u64>,
    pub timeout: Duration,
}

/// What every checker guest reports, plus L2's `kvm` and `vmm-exit`.
pub const L3_CHECKS: &[&str] = &[
    "kvm",
    "init",
    "cpus",
    "memtotal",
    "e820",
    "pci-host-bridge",
    "acpi-dump",
    "vmm-exit",
];

/// On an L3 kernel command line: the guest does not dump its ACPI tables (`without_acpi_dump`).
pub const NO_ACPI_DUMP: &str = "ghvmm.acpi=off";

/// The L3 VMM of the boot scenarios: switching every `boot-*` scenario is this line.
pub const BOOT_VMM: Vmm = Vmm::Ghvmm;

impl Scenario {
    /// For a scenario whose L3 command line has `NO_ACPI_DUMP`: no `acpi-dump` check and no
    /// disassembly on the host. The dump is tens of thousands of serial port writes, each an
    /// exit through both KVMs, and it is where most guest triple faults under nested TCG came
    /// (docs/testing.md, "Known flakiness"); scenarios about faults and the API test nothing
    /// in the tables, which the boot and gh-* scenarios check for the same configurations.
    pub fn without_acpi_dump(mut self) -> Self {
        self.acpi = false;
        self.expect.retain(|c| *c != "acpi-dump");
        self
    }

    /// A scenario that boots a checker guest and expects its standard checks.
    pub fn boot(name: &'static str, about: &'static str, l3: L3) -> Self {
        Scenario {
            name,
            about,
            setup: String::new(),
            l3: Some(l3),
            expect: L3_CHECKS.to_vec(),
            acpi: false,
            host_checks: None,
            qemu_args: Vec::new(),
            ivshmem: crate::DEFAULT_IVSHMEM.to_vec(),
            // A run takes 15-40 s; L2's watchdog stops a hung L3 after 90 s, and a lockup
            // ends the run early. Only a silent L2 hang waits this long.
            timeout: Duration::from_secs(150),
        }
    }

    /// A scenario that only runs shell in L2.
    pub fn l2_only(name: &'static str, about: &'static str, setup: String) -> Self {
        Scenario {
            setup,
            l3: None,
            expect: vec!["kvm"],
            timeout: Duration::from_secs(120),
            ..Scenario::boot(name, about, L3::new(BOOT_VMM, 1, "256M"))
        }
    }

    /// Everything L2's init runs, as `/scenario.sh`.
    pub fn script(&self) -> String {
        let boot = self.l3.as_ref().map(L3::script).unwrap_or_default();
        format!("{}{boot}", self.setup)
    }

    /// The checks that must report, minus those the L3 VMM makes meaningless.
    pub fn expected(&self) -> Vec<&'static str> {
        let skip = self.l3.as_ref().map_or(&[][..], |l| l.vmm.skipped_checks());
        self.expect
            .iter()
            .copied()
            .filter(|c| !skip.contains(c))
            .collect()
    }

    pub fn needs_vmlinux(&self) -> bool {
        self.l3
            .as_ref()
            .is_some_and(|l| l.kernel == Kernel::Vmlinux)
    }

    pub fn needs_qemu(&self) -> bool {
        self.l3.as_ref().is_some_and(|l| l.vmm == Vmm::Qemu)
    }

    /// Runs the L3 guest under `vmm` instead. A scenario without an L3 guest is unchanged;
    /// one that passes VMM-specific arguments cannot switch.
    pub fn with_vmm(mut self, vmm: Vmm) -> Result<Self, String> {
        match &mut self.l3 {
            Some(l) if l.vmm != vmm && !l.vmm_args.is_empty() => Err(format!(
                "{} passes {} arguments ({})",
                self.name,
                l.vmm.name(),
                l.vmm_args
            )),
            Some(l) => {
                l.vmm = vmm;
                Ok(self)
            }
            None => Ok(self),
        }
    }
}

fn boot_scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            acpi: true,
            ..Scenario::boot(
                "boot-basic",
                "2 vCPUs, 512M: CPUs, memory, ACPI tables, power-off ends the VMM with 0",
                L3::new(BOOT_VMM, 2, "512M"),
            )
        },
        Scenario::boot(
            "boot-smp4",
            "4 vCPUs, 1G",
            L3::new(BOOT_VMM, 4, "1G").without_acpi_dump(),
        )
        .without_acpi_dump(),
        crate::reboot_scenarios::boot_reboot(),
        Scenario::boot(
            "boot-pvh",
            "the uncompressed vmlinux through its PVH entry (32-bit, hvm_start_info)",
            L3::new(BOOT_VMM, 2, "512M").kernel(Kernel::Vmlinux),
        ),
        Scenario {
            expect: vec![
                "kvm",
                "unknown-option",
                "bad-size",
                "missing-kernel",
                "bad-cpus",
                "device-not-vfio",
                "device-missing",
                "device-duplicate-id",
                "unsupported-option",
                "unsupported-option-named",
                "unsupported-key-named",
            ],
            ..Scenario::l2_only(
                "boot-bad-args",
                "malformed invocations exit 1 with one error line, no panic",
                "expect_clean_failure unknown-option --kernel /l3/vmlinuz --bogus\n\
                 expect_clean_failure bad-size --kernel /l3/vmlinuz --memory size=12Q\n\
                 expect_clean_failure missing-kernel --kernel /nonexistent/vmlinuz\n\
                 expect_clean_failure bad-cpus --kernel /l3/vmlinuz --cpus boot=0\n\
                 expect_clean_failure device-not-vfio --kernel /l3/vmlinuz --device path=/sys/bus/pci/devices/0000:00:00.0\n\
                 expect_clean_failure device-missing --kernel /l3/vmlinuz --device path=/sys/bus/pci/devices/0000:09:1f.7\n\
                 expect_clean_failure device-duplicate-id --kernel /l3/vmlinuz --device path=/a,id=x --device path=/b,id=x\n\
                 expect_clean_failure unsupported-option --kernel /l3/vmlinuz --disk path=/d.img path=/e.img\n\
                 grep -q '^ghvmm: error: --disk is not supported by ghvmm' /tmp/err\n\
                 l2_check unsupported-option-named $? \"stderr: $(head -c 300 /tmp/err)\"\n\
                 /bin/ghvmm --kernel /l3/vmlinuz --cpus boot=1,topology=1:1:1:1 2> /tmp/err < /dev/null\n\
                 grep -q \"^ghvmm: error: --cpus: parameter 'topology' is not supported by ghvmm\" /tmp/err\n\
                 l2_check unsupported-key-named $? \"stderr: $(head -c 300 /tmp/err)\"\n"
                    .into(),
            )
        },
        boot_shared(),
    ]
}

/// boot-basic's guest with its RAM in a memfd: L2 adds up ghvmm's `/memfd:ghvmm-ram`
/// mappings while the guest runs. It polls from the VMM's start rather than waiting for a guest
/// marker because the RAM is mapped before the guest boots and the guest powers off by
/// itself right after its checks, which a marker would race with.
fn boot_shared() -> Scenario {
    let l3 = L3::new(BOOT_VMM, 2, "512M")
        .shared_memory()
        .without_acpi_dump();
    let want = 512u64 << 20;
    let script = format!(
        "start_l3 {cmd}\n\
         ticks=0\n\
         while t=0; for r in $(grep ' /memfd:ghvmm-ram' /proc/$l3pid/maps 2>/dev/null | cut -d' ' -f1); do\n\
           t=$((t + 0x${{r#*-}} - 0x${{r%-*}}))\n\
         done; [ $t != {want} ] && [ $ticks -lt 600 ] \\\n\
           && l3_running; do\n\
           sleep 0.1; ticks=$((ticks + 1))\n\
         done\n\
         l2_say \"@@FACT shared-ram-bytes $t\"\n\
         [ $t = {want} ]\n\
         l2_check shared-memfd $? \"ghvmm maps $t bytes of /memfd:ghvmm-ram (want {want}, all guest RAM)\"\n\
         finish_l3 {watchdog}\n\
         l2_check vmm-exit $rc \"ghvmm: $why (expected exit code 0)\"\n",
        cmd = l3.command(),
        watchdog = l3.watchdog_s,
    );
    let mut expect = L3_CHECKS.to_vec();
    expect.push("shared-memfd");
    Scenario {
        setup: script,
        l3: None,
        expect,
        ..Scenario::boot(
            "boot-shared",
            "boot-basic's guest with --memory size=512M,shared=on: ghvmm maps all 512 MiB from one memfd",
            l3,
        )
    }
    .without_acpi_dump()
}

/// Every scenario, in the order `cargo xtask e2e` runs them.
pub fn all() -> Vec<Scenario> {
    let mut v = boot_scenarios();
    v.extend(vfio_scenarios::all());
    v.extend(crate::gh_scenarios::all());
    v.extend(crate::memory_scenarios::all());
    v.extend(crate::ch_scenarios::all());
    v.extend(crate::hotplug_scenarios::all());
    v.extend(crate::pause_scenarios::all());
    v.extend(crate::reboot_scenarios::all());
    v.extend(crate::vfio_user_scenarios::all());
    v.extend(crate::scale_scenarios::all());
    v.extend(crate::fault_scenarios::all());
    v.extend(crate::soak_scenarios::all());
    v
}

/// The area of the scenarios that run for many minutes: selected only by a filter that
/// names it.
pub const SOAK: &str = "soak";

/// Scenarios whose name contains any filter (all when no filter is given), except that the
/// soak scenarios need a filter containing `soak`: `cargo xtask e2e` and `cargo xtask test`
/// leave them out, and so does a filter such as `hotplug` that only happens to match one.
pub fn select<'a>(all: &'a [Scenario], filters: &[String]) -> Vec<&'a Scenario> {
    let soak = filters.iter().any(|f| f.contains(SOAK));
    all.iter()
        .filter(|s| soak || !s.name.starts_with(SOAK))
        .filter(|s| filters.is_empty() || filters.iter().any(|f| s.name.contains(f.as_str())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shell_test::assert_parses;

    /// The PVH boot finds the ACPI tables through another pointer (hvm_start_info's
    /// rsdp_paddr): its guest sends them, checked whole, though the host does not
    /// disassemble them again.
    const DUMPS_WITHOUT_DISASSEMBLY: [&str; 1] = ["boot-pvh"];

    /// The checker's ACPI dump is tens of thousands of serial-port exits, the stretch where
    /// nested TCG loses guests most (docs/testing.md, "Known flakiness"): a guest dumps its
    /// tables only in a scenario whose host disassembles them.
    #[test]
    fn only_scenarios_that_disassemble_the_tables_dump_them() {
        for s in all() {
            let sh = s.script();
            let boots = sh.matches("--cmdline \"").count();
            let quiet = sh.matches(NO_ACPI_DUMP).count();
            let dumps = s.acpi || DUMPS_WITHOUT_DISASSEMBLY.contains(&s.name);
            assert_eq!(quiet, if dumps { 0 } else { boots }, "{}", s.name);
            assert_eq!(
                s.expected().contains(&"acpi-dump"),
                dumps && boots > 0,
                "{}",
                s.name
            );
        }
    }

    #[test]
    fn names_start_with_their_area_and_are_unique() {
        let all = all();
        for s in &all {
            assert!(
                ["boot-", "vfio-", "gh-", "hotplug-", "scale-", "fault-", "api-", "soak-"]
                    .iter()
                    .any(|area| s.name.starts_with(area)),
                "{}",
                s.name
            );
            assert_eq!(all.iter().filter(|o| o.name == s.name).count(), 1);
        }
    }

    #[test]
    fn filters_by_substring() {
        let all = all();
        let soaks = all.iter().filter(|s| s.name.starts_with("soak-")).count();
        assert!(soaks > 0);
        assert_eq!(select(&all, &[]).len(), all.len() - soaks);
        let f = select(&all, &["smp".into(), "bad".into()]);
        let names: Vec<_> = f.iter().map(|s| s.name).collect();
        assert_eq!(
            names,
            [
                "boot-smp4",
                "boot-bad-args",
                "vfio-gh-bad-info",
                "gh-bad-args"
            ]
        );
        assert_eq!(select(&all, &["pvh".into()])[0].name, "boot-pvh");
        assert!(select(&all, &["nothing".into()]).is_empty());
    }

    /// Every scenario's script, with tests/l2/init's functions, is shell the host's sh can
    /// parse (busybox's ash in L2 reads the same POSIX syntax).
    #[test]
    fn every_script_parses() {
        let init =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../l2/init")).unwrap();
        for s in all() {
            assert_parses(s.name, &format!("{init}\n{}", s.script()));
        }
    }

    #[test]
    fn soak_scenarios_run_only_when_a_filter_says_soak() {
        let all = all();
        let names = |filters: &[&str]| -> Vec<&str> {
            let f: Vec<String> = filters.iter().map(|s| s.to_string()).collect();
            select(&all, &f).iter().map(|s| s.name).collect()
        };
        assert!(!names(&[]).contains(&"soak-hotplug"));
        assert!(!names(&["hotplug"]).contains(&"soak-hotplug"));
        assert_eq!(
            names(&["soak-"]),
            ["soak-hotplug", "soak-kernel-hotplug", "soak-eject-flood"]
        );
        assert_eq!(
            names(&["soak-hotplug", "fault-eject"]),
            ["fault-eject-flood", "soak-hotplug"]
        );
        assert!(
            names(&[]).contains(&"fault-eject-flood"),
            "in the default suite"
        );
    }

    #[test]
    fn scripts_and_images_follow_the_l3_boot() {
        let all = all();
        let pvh = all.iter().find(|s| s.name == "boot-pvh").unwrap();
        assert!(pvh.needs_vmlinux() && !pvh.needs_qemu());
        assert!(pvh
            .script()
            .starts_with("run_l3 90 /bin/ghvmm --kernel /l3/vmlinux"));
        let bad = all.iter().find(|s| s.name == "boot-bad-args").unwrap();
        assert!(!bad.script().contains("vmm-exit"));
        assert!(!bad.needs_vmlinux());
        let shared = all.iter().find(|s| s.name == "boot-shared").unwrap();
        let sh = shared.script();
        assert!(sh.starts_with("start_l3 /bin/ghvmm --kernel /l3/vmlinuz"));
        assert!(sh.contains("--memory size=512M,shared=on "));
        assert!(sh.contains("/proc/$l3pid/maps"));
        assert!(sh.contains("[ $t = 536870912 ]\nl2_check shared-memfd $? "));
        assert!(sh.ends_with("l2_check vmm-exit $rc \"ghvmm: $why (expected exit code 0)\"\n"));
    }

    #[test]
    fn switching_the_vmm() {
        let basic = boot_scenarios().remove(0).with_vmm(Vmm::Qemu).unwrap();
        assert!(basic.needs_qemu());
        assert!(basic
            .script()
            .starts_with("run_l3 90 /bin/qemu-system-x86_64"));
        let expected = basic.expected();
        assert!(expected.contains(&"cpus") && !expected.contains(&"e820"));
        let l2_only = boot_scenarios().remove(4).with_vmm(Vmm::Qemu).unwrap();
        assert!(!l2_only.needs_qemu());
        let passthrough = all()
            .into_iter()
            .find(|s| s.name == "vfio-ivshmem")
            .unwrap();
        assert!(passthrough.with_vmm(Vmm::Qemu).is_err());
    }
}
