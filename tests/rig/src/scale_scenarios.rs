//! GH-sized device memory (`scale-*`): L2's ivshmem backed by a sparse 128 GiB file, the test
//! variant driver reporting just under 96 GiB of it, so the guest sees a 128 GiB BAR. The
//! guest writes and reads its first, middle and last real bytes and the padding; the host
//! finds the bytes in the file; ghvmm's resident memory barely moves when the device arrives
//! (nothing of the BAR is pre-faulted or copied).

use std::path::Path;

use crate::hotplug_scenarios::json_number;
use crate::hugepage;
use crate::l3::L3;
use crate::protocol::Outcome;
use crate::scenario::{Scenario, BOOT_VMM, L3_CHECKS};
use crate::vfio_scenarios::{bind_device, bind_variant, gh_file_outcome, GH_DEVICE_CHECKS};
use crate::GIB;

/// L2's ivshmem size: the next power of two above the real length.
pub const BAR: u64 = 128 * GIB;
/// The real length: just under 96 GiB (a page short), so the BAR is twice a 64 GiB piece.
pub const LEN: u64 = 96 * GIB - 4096;
/// The goal for ghvmm's RSS with the device attached minus without.
pub const RSS_GOAL_KIB: u64 = 16 * 1024;
// Padding exists (not a power of two), the BAR is the next power of two, the length is whole
// pages and more than the 64 GiB half.
const _: () = assert!(
    !LEN.is_power_of_two()
        && LEN.next_power_of_two() == BAR
        && LEN > 64 * GIB
        && LEN.is_multiple_of(4096)
);

/// QEMU arguments for L2: a 64-bit PCI hole that holds two 128 GiB BARs, naturally aligned.
pub fn big_hole() -> Vec<String> {
    ["-global", "q35-pcihost.pci-hole64-size=512G"]
        .map(String::from)
        .to_vec()
}

/// Shell: loads the variant driver in `mode` and binds every ivshmem device of L2 to it;
/// `$IVSHMEM` is the first, `$IVSHMEM1` the second (check `vfio-bind`, `vfio-bind1`).
pub fn bind_all_variant(mode: &str, len: u64, devices: usize) -> String {
    let mut sh = bind_variant(mode, len, "");
    if devices > 1 {
        sh += "IVSHMEM1=\n\
               for d in /sys/bus/pci/devices/*; do\n\
                   [ \"$(cat $d/vendor)\" = 0x1af4 ] && [ \"$(cat $d/device)\" = 0x1110 ] && [ $d != $IVSHMEM ] && IVSHMEM1=$d\n\
               done\n";
        sh += &bind_device("IVSHMEM1", "ghvmm_test_vfio", "vfio-bind1");
    }
    sh
}

/// The host-side check of every backing file.
fn file_checks(dir: &Path, files: usize) -> Vec<(String, Outcome)> {
    let outcomes: Vec<Outcome> = (0..files)
        .map(|i| gh_file_outcome(&dir.join(crate::ivshmem_file(i)), LEN))
        .collect();
    let fails: Vec<String> = outcomes
        .into_iter()
        .filter_map(|o| match o {
            Outcome::Fail(m) => Some(m),
            _ => None,
        })
        .collect();
    let outcome = if fails.is_empty() {
        Outcome::Pass
    } else {
        Outcome::Fail(fails.join("; "))
    };
    vec![("host-file".to_string(), outcome)]
}

/// One 128 GiB device, hot-added twice: the first time the guest checks it; ghvmm's RSS is
/// compared before and after the second add. (The first add of any VFIO device pins all guest
/// RAM for DMA, which makes it resident; that is the price of passthrough, not of the BAR, and
/// it stays resident after the device leaves, so the second add shows the BAR's own cost.)
fn scale_gh() -> Scenario {
    let l3 = L3::new(BOOT_VMM, 2, "512M")
        .cmdline(&format!(
            "ghvmm.vfio=hotplug ghvmm.gh_mode=vmm_pads ghvmm.gh_len={LEN} ghvmm.cycles=2 \
             ghvmm.bdf=0001:00:00.0"
        ))
        .vmm_args("--gh slots=1 --api-socket path=/tmp/api.sock")
        .without_acpi_dump();
    let rss = |n: u32| json_number(&format!("/tmp/info{n}.json"), "rss_kib");
    let script = format!(
        "{collect}{bind}{start}\
         failed=\n\
         for i in 1 2; do\n\
           $R info > /tmp/info$((2 * i - 1)).json\n\
           out=$($R add-device path=$IVSHMEM,id=gpu0,gh_slot=0 2>&1) || {{ failed=\"add $i: $out\"; break; }}\n\
           $R info > /tmp/info$((2 * i)).json\n\
           wait_marker \"@@HOTPLUG present $i \" 180 || {{ failed=\"cycle $i: the guest never saw the device\"; break; }}\n\
           devmaps_snap $l3pid\n\
           out=$($R remove-device gpu0 2>&1) || {{ failed=\"remove $i: $out\"; break; }}\n\
           wait_marker \"@@HOTPLUG gone $i\" 120 || {{ failed=\"cycle $i: the device never left\"; break; }}\n\
         done\n\
         [ -z \"$failed\" ]\n\
         l2_check api-cycles $? \"$failed\"\n\
         r1={r1}; r2={r2}; r3={r3}; r4={r4}\n\
         l2_say \"@@FACT scale-rss-kib $r1 $r2 $r3 $r4\"\n\
         [ -n \"$r3\" ] && [ -n \"$r4\" ] && [ $((r4 - r3)) -le {RSS_GOAL_KIB} ]\n\
         l2_check scale-rss $? \"ghvmm's RSS went from $r3 to $r4 KiB when the 128 GiB BAR arrived (goal: +{RSS_GOAL_KIB} KiB at most; first add, with the RAM pinned for DMA: $r1 -> $r2)\"\n\
         finish_l3 120\n\
         l2_check vmm-exit $rc \"ghvmm: $why (expected exit code 0)\"\n",
        collect = hugepage::COLLECT,
        bind = bind_variant("vmm_pads", LEN, ""),
        start = crate::hotplug_scenarios::start_api_guest(&l3.command()),
        r1 = rss(1),
        r2 = rss(2),
        r3 = rss(3),
        r4 = rss(4),
    );
    let mut expect = [L3_CHECKS, GH_DEVICE_CHECKS].concat();
    expect.extend([
        "hotplug-ready",
        "hotplug-arrive",
        "hotplug-bdf",
        "hotplug-depart",
        "hotplug-cycles",
        "api-cycles",
        "scale-rss",
        hugepage::CHECK,
    ]);
    Scenario {
        setup: script,
        l3: None,
        expect,
        host_checks: Some(Box::new(|_, d, t| {
            let mut v = file_checks(d, 1);
            v.push(hugepage::congruence(t));
            v
        })),
        qemu_args: big_hole(),
        ivshmem: vec![BAR],
        timeout: std::time::Duration::from_secs(300),
        ..Scenario::boot(
            "scale-gh",
            "a GH-sized device (96 GiB - 4 KiB in a 128 GiB BAR, sparse host file) hot-added: BAR checks at its first/middle/last bytes, ghvmm's RSS grows <= 16 MiB",
            l3,
        )
    }
    .without_acpi_dump()
}

/// Two 128 GiB devices at boot, one per GH slot, the kernel padding each.
fn scale_gh2() -> Scenario {
    let l3 = L3::new(BOOT_VMM, 2, "512M")
        .cmdline(&format!(
            "ghvmm.vfio=gh ghvmm.gh_mode=kernel_pads ghvmm.gh_len={LEN} ghvmm.gh_devices=2"
        ))
        .vmm_args(
            "--gh slots=2 --device path=$IVSHMEM,id=gpu0,gh_slot=0 \
             --device path=$IVSHMEM1,id=gpu1,gh_slot=1",
        )
        .without_acpi_dump();
    let mut expect = [L3_CHECKS, GH_DEVICE_CHECKS].concat();
    expect.extend(["vfio-bind1", "gh-count", hugepage::CHECK]);
    Scenario {
        setup: format!(
            "{}{}",
            hugepage::COLLECT,
            bind_all_variant("kernel_pads", LEN, 2)
        ),
        expect,
        host_checks: Some(Box::new(|_, d, t| {
            let mut v = file_checks(d, 2);
            v.push(hugepage::congruence(t));
            v
        })),
        qemu_args: big_hole(),
        ivshmem: vec![BAR, BAR],
        timeout: std::time::Duration::from_secs(300),
        ..Scenario::boot(
            "scale-gh2",
            "two GH-sized devices (128 GiB BARs, the kernel pads) in two GH slots at once",
            l3,
        )
    }
    .without_acpi_dump()
}

/// The scale scenarios, in run order.
pub fn all() -> Vec<Scenario> {
    vec![scale_gh(), scale_gh2()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_bind_and_attach_every_device() {
        let s = scale_gh2();
        let sh = s.script();
        assert!(sh.contains("mode=kernel_pads length=103079211008"));
        assert!(sh.contains("l2_check vfio-bind1"));
        assert!(sh.contains("--device path=$IVSHMEM1,id=gpu1,gh_slot=1"));
        assert_eq!(s.ivshmem, [BAR, BAR]);
        let sh = scale_gh().script();
        assert!(sh.contains("l2_check scale-rss"));
        for check in ["hotplug-ready", "api-cycles", "scale-rss"] {
            assert!(sh.contains(&format!("l2_check {check} ")), "{check}");
        }
    }
}
