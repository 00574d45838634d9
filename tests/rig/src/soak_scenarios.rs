//! Soak (`soak-*`): long runs that prove from the host's side that ghvmm does not drift. Not
//! in the default suite (they take many minutes): `cargo xtask e2e` runs them only when a
//! filter contains `soak` (scenario::select).

use crate::flat::{flat_checks, FIGURES_AT_GATE, PROC_FIGURES, THP_OFF};
use crate::gates::{API_SOCKET, GATE_HELPERS};
use crate::hotplug_scenarios::start_api_guest;
use crate::l3::L3;
use crate::scenario::{Scenario, BOOT_VMM, L3_CHECKS, NO_ACPI_DUMP};
use crate::vfio_scenarios::{bind_variant, GH_LENGTHS};

/// Hot-plug add/remove cycles before the hammer.
pub const SOAK_CYCLES: u32 = 100;
/// Seconds the guest hammers the BAR padding and the hot plug registers.
pub const SOAK_HAMMER_S: u32 = 180;
/// What VmRSS may grow by over the cycles (after the first against after the last, KiB):
/// allocator reuse is not byte-exact; a leak of 16 KiB per cycle would exceed it.
pub const SOAK_CYCLES_RSS_TOLERANCE_KIB: u64 = 1024;
/// What VmRSS may grow by over the hammer (KiB): the device is attached throughout and
/// nothing is allocated per access.
pub const SOAK_HAMMER_RSS_TOLERANCE_KIB: u64 = 256;
/// The device's length under both contracts: not a multiple of 2 MiB.
const LEN: u64 = GH_LENGTHS[1];

/// soak-hotplug (`vmm_pads`: ghvmm answers the padding) and soak-kernel-hotplug
/// (`kernel_pads`: the padding is forwarded to the variant driver's region read/write):
/// `SOAK_CYCLES` hot-plug cycles of the GPU-like device through ghvmm-remote;
/// the device added once more; `SOAK_HAMMER_S` seconds of the guest's padding and register
/// accesses between two gates (tests/checker/src/stress.rs); a final removal. L2 reads
/// ghvmm's descriptors, mappings and VmRSS from /proc after the first cycle, after the last,
/// at both gates and after the final removal (at gate 3, before the guest powers off).
fn soak_hotplug_scenario(name: &'static str, mode: &str, summary: &'static str) -> Scenario {
    let last = SOAK_CYCLES + 1;
    let l3 = L3::new(BOOT_VMM, 2, "512M")
        .cmdline(&format!(
            "ghvmm.vfio=soak ghvmm.gh_mode={mode} ghvmm.gh_len={LEN} ghvmm.cycles={SOAK_CYCLES} \
             ghvmm.soak_s={SOAK_HAMMER_S} ghvmm.bdf=0001:00:00.0 {NO_ACPI_DUMP}"
        ))
        .vmm_args(&format!("--gh slots=1 --api-socket path={API_SOCKET}"))
        .shared_memory();
    let add = "$R add-device path=$IVSHMEM,id=gpu0,gh_slot=0";
    let script = format!(
        "{GATE_HELPERS}{PROC_FIGURES}{FIGURES_AT_GATE}{THP_OFF}{bind}{start}\
         i=1; failed=\n\
         while [ $i -le {SOAK_CYCLES} ] && [ -z \"$failed\" ]; do\n\
           out=$({add} 2>&1) || {{ failed=\"add $i: $out\"; break; }}\n\
           wait_marker \"@@HOTPLUG present $i \" 120 || {{ failed=\"cycle $i: the guest never saw the device\"; break; }}\n\
           out=$($R remove-device gpu0 2>&1) || {{ failed=\"remove $i: $out\"; break; }}\n\
           wait_marker \"@@HOTPLUG gone $i\" 120 || {{ failed=\"cycle $i: the device never left the guest\"; break; }}\n\
           [ $i = 1 ] && proc_figures $l3pid > /tmp/soak1\n\
           [ $((i % 10)) = 0 ] && l2_say \"@@L2LOG soak: cycle $i done at $(cut -d' ' -f1 /proc/uptime)\"\n\
           i=$((i + 1))\n\
         done\n\
         [ -z \"$failed\" ]\n\
         l2_check soak-cycles $? \"$failed\"\n\
         proc_figures $l3pid > /tmp/soakn\n\
         gate_err=\n\
         out=$({add} 2>&1) || gate_err=\"add-device: $(echo \"$out\" | tr '\\n' ' ')\"\n\
         [ -z \"$gate_err\" ] && figures_at_gate 1 240 /tmp/soaka && figures_at_gate 2 {hammer_wait} /tmp/soakb\n\
         l2_check soak-hammer-gates $? \"$gate_err\"\n\
         out=\n\
         wait_marker '@@HOTPLUG present {last} ' 120 && out=$($R remove-device gpu0 2>&1) && wait_marker '@@HOTPLUG gone {last}' 120\n\
         l2_check soak-final-remove $? \"the final removal: $out\"\n\
         figures_at_gate 3 120 /tmp/soakf\n\
         {cycles_flat}{hammer_flat}{final_flat}\
         finish_l3 120\n\
         l2_check vmm-exit $rc \"ghvmm: $why (expected exit code 0)\"\n",
        bind = bind_variant(mode, LEN, ""),
        start = start_api_guest(&l3.command()),
        // The guest's clock ends the hammer; this only ends a run whose guest went astray.
        hammer_wait = SOAK_HAMMER_S + 600,
        cycles_flat = flat_checks(
            "soak-cycles",
            &format!("after cycle {SOAK_CYCLES} (the first reading after cycle 1)"),
            "/tmp/soak1",
            "/tmp/soakn",
            SOAK_CYCLES_RSS_TOLERANCE_KIB,
        ),
        hammer_flat = flat_checks(
            "soak-hammer",
            &format!("after {SOAK_HAMMER_S} s of padding and register accesses"),
            "/tmp/soaka",
            "/tmp/soakb",
            SOAK_HAMMER_RSS_TOLERANCE_KIB,
        ),
        final_flat = flat_checks(
            "soak-final",
            "after the final removal (the first reading after cycle 1)",
            "/tmp/soak1",
            "/tmp/soakf",
            SOAK_CYCLES_RSS_TOLERANCE_KIB,
        ),
    );
    let mut expect = L3_CHECKS.to_vec();
    expect.extend([
        "vfio-bind",
        "hotplug-ready",
        "hotplug-depart",
        "hotplug-cycles",
        "soak-cycles",
        "soak-hammer-gates",
        "soak-padding",
        "soak-hotplug-regs",
        "soak-final-depart",
        "soak-final-remove",
        "soak-cycles-fds",
        "soak-cycles-maps",
        "soak-cycles-rss",
        "soak-hammer-fds",
        "soak-hammer-maps",
        "soak-hammer-rss",
        "soak-final-fds",
        "soak-final-maps",
        "soak-final-rss",
    ]);
    Scenario {
        setup: script,
        l3: None,
        expect,
        // Measured: see docs/testing.md; 100 cycles of 2-4 s, the hammer, two boots' worth.
        timeout: std::time::Duration::from_secs(2400),
        ..Scenario::boot(name, summary, l3)
    }
}

/// The soak scenarios, in run order.
pub fn all() -> Vec<Scenario> {
    vec![
        soak_hotplug_scenario(
            "soak-hotplug",
            "vmm_pads",
            "100 hot-plug cycles, then 180 s of BAR padding and hot plug register accesses (VMM pads): ghvmm's fds, mappings and VmRSS (from /proc) stay flat, a final removal works",
        )
        .without_acpi_dump(),
        soak_hotplug_scenario(
            "soak-kernel-hotplug",
            "kernel_pads",
            "soak-hotplug under the kernel-pads contract: the padding accesses are forwarded to the variant driver (reads 0xff)",
        )
        .without_acpi_dump(),
        crate::fault_scenarios::soak_eject_flood().without_acpi_dump(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_contracts_are_soaked() {
        let all = all();
        let names: Vec<_> = all.iter().map(|s| s.name).collect();
        assert_eq!(
            names,
            ["soak-hotplug", "soak-kernel-hotplug", "soak-eject-flood"]
        );
        for (s, mode) in all.iter().zip(["vmm_pads", "kernel_pads"]) {
            let sh = s.script();
            assert!(sh.contains(&format!("ghvmm.gh_mode={mode} ")), "{}", s.name);
            assert!(
                sh.contains(&format!("mode={mode} length={LEN}")),
                "{}",
                s.name
            );
            assert_eq!(s.expect, all[0].expect);
        }
    }

    #[test]
    fn the_soak_cycles_then_hammers_between_gates_then_removes() {
        let s = &all()[0];
        let sh = s.script();
        assert!(sh.contains("ghvmm.cycles=100 ghvmm.soak_s=180 "));
        assert!(sh.contains("--memory size=512M,shared=on "));
        assert!(sh.contains("while [ $i -le 100 ]"));
        let cycles = sh.find("proc_figures $l3pid > /tmp/soakn").unwrap();
        let gates = sh
            .find("&& figures_at_gate 1 240 /tmp/soaka && figures_at_gate 2 780 /tmp/soakb")
            .unwrap();
        let last = sh.find("wait_marker '@@HOTPLUG present 101 '").unwrap();
        let final_reading = sh.find("figures_at_gate 3 120 /tmp/soakf").unwrap();
        assert!(cycles < gates && gates < last && last < final_reading);
        let thp = sh.find(crate::flat::THP_OFF).unwrap();
        assert!(thp < sh.find("start_l3 ").unwrap());
        // The guest reports these three itself.
        let guest = ["soak-padding", "soak-hotplug-regs", "soak-final-depart"];
        for check in s
            .expect
            .iter()
            .filter(|c| c.starts_with("soak-") && !guest.contains(c))
        {
            assert!(
                sh.contains(&format!("l2_check {check} ")),
                "{check} is never reported"
            );
        }
        assert!(!s.acpi && !s.expect.contains(&"acpi-dump"));
    }
}
