//! The passthrough scenarios: L2's ivshmem (backed by a host file) on vfio-pci or on the
//! GPU-like test variant driver (tests/variant-driver), passed through to an L3 guest.

use std::path::Path;

use crate::gates::{gate_counter_checks_call, gated, gated_boot, padding_read, GATE_HELPERS};
use crate::hugepage;
use crate::l3::L3;
use crate::protocol::Outcome;
use crate::scenario::{Scenario, BOOT_VMM, L3_CHECKS};

/// Shell that binds the PCI device whose sysfs path is in `$var` to `driver` (taking it from
/// the driver it has) and reports the L2 check `check`.
pub fn bind_device(var: &str, driver: &str, check: &str) -> String {
    format!(
        "echo {driver} > ${var}/driver_override\n\
         [ -e ${var}/driver ] && echo $(basename ${var}) > ${var}/driver/unbind\n\
         echo $(basename ${var}) > /sys/bus/pci/drivers_probe\n\
         readlink ${var}/driver 2>/dev/null | grep -q {driver}\n\
         l2_check {check} $? \"${var} did not bind to {driver}\"\n"
    )
}

/// Shell that finds L2's ivshmem (1af4:1110), binds it to `driver` and reports `vfio-bind`;
/// `$IVSHMEM` is then its sysfs path.
pub fn bind_ivshmem(driver: &str) -> String {
    format!(
        "IVSHMEM=\n\
         for d in /sys/bus/pci/devices/*; do\n\
             [ \"$(cat $d/vendor)\" = 0x1af4 ] && [ \"$(cat $d/device)\" = 0x1110 ] && IVSHMEM=$d\n\
         done\n{}",
        bind_device("IVSHMEM", driver, "vfio-bind")
    )
}

/// Loads the GPU-like test device in `mode` with `len` bytes and binds ivshmem to it.
pub fn bind_variant(mode: &str, len: u64, extra: &str) -> String {
    format!(
        "insmod /lib/modules/extra/ghvmm_test_vfio.ko mode={mode} length={len} {extra}\n{}",
        bind_ivshmem("ghvmm_test_vfio")
    )
}

/// The patterns tests/checker/src/vfio.rs writes through BAR2, at the same offsets.
const IVSHMEM_PATTERNS: [(u64, &[u8; 16]); 3] = [
    (0, b"ghvmm-bar2-at-0!"),
    (1 << 20, b"ghvmm-bar2-at-1M"),
    ((64 << 20) - 16, b"ghvmm-bar2-atEnd"),
];

fn read_backing_file(dir: &Path) -> Result<Vec<u8>, Outcome> {
    std::fs::read(dir.join("ivshmem.bin"))
        .map_err(|e| Outcome::Fail(format!("reading ivshmem.bin: {e}")))
}

/// What the guest wrote through the passed-through BAR2 is in the host's backing file.
fn ivshmem_file_check(_: &Scenario, dir: &Path) -> Vec<(String, Outcome)> {
    let outcome = read_backing_file(dir).map_or_else(
        |o| o,
        |file| {
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
        },
    );
    vec![("host-file".to_string(), outcome)]
}

/// What the guest and host check for every GPU-like device: the variant driver bound in L2,
/// the BAR checks of tests/checker/src/gh.rs, and the backing file (`gh_file_checks`).
pub const GH_DEVICE_CHECKS: &[&str] = &[
    "vfio-bind",
    "gh-bar",
    "gh-data",
    "gh-padding-read",
    "gh-straddle",
    "gh-padding-write",
    "host-file",
];

/// Default GPU-like device lengths: one a multiple of 2 MiB (not a power of two), one not.
pub const GH_LENGTHS: [u64; 2] = [48 << 20, (40 << 20) + (12 << 10)];
pub const GH_MODES: [&str; 2] = ["vmm_pads", "kernel_pads"];

fn short_len(len: u64) -> String {
    match (len >> 20, (len >> 10) & 1023) {
        (0, k) => format!("{k}K"),
        (m, 0) => format!("{m}M"),
        (m, k) => format!("{m}M{k}K"),
    }
}

/// What L2 and the gated guest report in a `vfio-gh-*` scenario besides `GH_DEVICE_CHECKS`
/// (`counted_gh_scenario`).
pub const GH_GATE_CHECKS: &[&str] = &[
    "counter-gates",
    "gh-copy",
    "gh-gate",
    "copy-no-access",
    "padding-read-counted",
];

/// The GPU-like device's BAR (ivshmem's BAR2).
const GH_BAR: usize = 2;

/// The GPU-like device scenarios for `modes` x `lengths`. A length with padding (below its
/// power of two) gets the counted gates (`counted_gh_scenario`); a power-of-two length has no
/// padding read to count, and keeps the plain boot.
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
            let about = if mode == "vmm_pads" {
                "GPU-like BAR, region not a power of two: ghvmm pads (reads 0)"
            } else {
                "GPU-like BAR, power-of-two region with a sparse area: the kernel pads (reads 0xff)"
            };
            let l3 = L3::new(BOOT_VMM, 2, "512M")
                .cmdline(&format!(
                    "ghvmm.vfio=gh ghvmm.gh_mode={mode} ghvmm.gh_len={len}"
                ))
                .vmm_args("--device path=$IVSHMEM,id=gpu0")
                .without_acpi_dump();
            let plain = Scenario {
                setup: format!("{}{}", hugepage::COLLECT, bind_variant(mode, len, "")),
                expect: [L3_CHECKS, GH_DEVICE_CHECKS, &[hugepage::CHECK]].concat(),
                host_checks: Some(Box::new(|s, d, t| {
                    let mut v = gh_file_checks(s, d);
                    v.push(hugepage::congruence(t));
                    v
                })),
                ..Scenario::boot(name, about, l3)
            }
            .without_acpi_dump();
            v.push(if len < len.max(4096).next_power_of_two() {
                counted_gh_scenario(plain, mode, len)
            } else {
                plain
            });
        }
    }
    v
}

/// `plain` with the counted gates (crate::gates): ghvmm runs with shared memory and its API,
/// the guest stops before and after its copy into the mapped range and after one padding
/// read, and L2 checks that the copy moved no counter of the device (`copy-no-access`) and
/// the padding read exactly one, by one (`padding-read-counted`: ghvmm's padding under VMM
/// pads, its forwarded count under kernel pads, where the kernel answers).
fn counted_gh_scenario(plain: Scenario, mode: &str, len: u64) -> Scenario {
    let Some(l3) = plain.l3.clone() else {
        return plain;
    };
    let l3 = gated(l3);
    let script = format!(
        "{GATE_HELPERS}{setup}{boot}{checks}",
        setup = plain.setup,
        boot = gated_boot(&l3, "counter-gates"),
        checks = gate_counter_checks_call("", "gpu0", &padding_read(GH_BAR, mode == "vmm_pads")),
    );
    let expect = [plain.expect.as_slice(), GH_GATE_CHECKS].concat();
    Scenario {
        setup: script,
        // The boot is in `setup`: the length for the host-file check comes from here.
        l3: None,
        expect,
        host_checks: Some(Box::new(move |_, d, t| {
            let mut v = gh_file_checks_for(d, len);
            v.push(hugepage::congruence(t));
            v
        })),
        timeout: std::time::Duration::from_secs(300),
        ..plain
    }
}

/// The host file holds the guest's patterns, and nothing the guest wrote into the padding;
/// the real length comes from the scenario's `ghvmm.gh_len`.
pub fn gh_file_checks(s: &Scenario, dir: &Path) -> Vec<(String, Outcome)> {
    let len =
        s.l3.as_ref()
            .and_then(|l| l.expectation("gh_len"))
            .and_then(|v| v.parse::<u64>().ok());
    match len {
        Some(len) => gh_file_checks_for(dir, len),
        None => vec![(
            "host-file".to_string(),
            Outcome::Fail("the scenario sets no ghvmm.gh_len".into()),
        )],
    }
}

/// The same for a device of `len` real bytes.
pub fn gh_file_checks_for(dir: &Path, len: u64) -> Vec<(String, Outcome)> {
    vec![(
        "host-file".to_string(),
        gh_file_outcome(&dir.join("ivshmem.bin"), len),
    )]
}

/// The guest's patterns are in `file` and nothing past `len` was written. Reads only the
/// patterns and the file's data extents: a GH-sized file is 128 GiB, sparse.
pub fn gh_file_outcome(file: &Path, len: u64) -> Outcome {
    let name = file
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut bad = Vec::new();
    for (off, pat) in gh_patterns(len) {
        match crate::backing::read_at(file, off, pat.len()) {
            Ok(got) if got == pat => {}
            Ok(_) => bad.push(format!("pattern missing at {off:#x}")),
            Err(e) => return Outcome::Fail(format!("reading {name}: {e}")),
        }
    }
    match crate::backing::first_nonzero_from(file, len) {
        Ok(None) => {}
        Ok(Some(at)) => bad.push(format!("padding write reached the file at {at:#x}")),
        Err(e) => return Outcome::Fail(format!("reading {name}: {e}")),
    }
    if bad.is_empty() {
        Outcome::Pass
    } else {
        Outcome::Fail(format!("{name}: {}", bad.join("; ")))
    }
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

/// The checks tests/checker/src/vfio.rs reports for L2's ivshmem (`ghvmm.vfio=ivshmem`).
pub const IVSHMEM_CHECKS: &[&str] = &[
    "vfio-bind",
    "vfio-present",
    "vfio-bar2",
    "vfio-bar2-data",
    "vfio-bar0-padding",
    "vfio-decode-off",
    "vfio-bar-move",
];

fn ivshmem_scenario() -> Scenario {
    let l3 = L3::new(BOOT_VMM, 2, "512M")
        .cmdline("ghvmm.vfio=ivshmem")
        .vmm_args("--device path=$IVSHMEM,id=shm0")
        .without_acpi_dump();
    Scenario {
        setup: bind_ivshmem("vfio-pci"),
        expect: [L3_CHECKS, IVSHMEM_CHECKS, &["host-file"]].concat(),
        host_checks: Some(Box::new(|s, d, _| ivshmem_file_check(s, d))),
        ..Scenario::boot(
            "vfio-ivshmem",
            "L2's ivshmem on plain vfio-pci, passed through: BAR2 mapped (data reaches the host file), BAR0 trapped and padded",
            l3,
        )
    }
    .without_acpi_dump()
}

fn bad_info_scenario() -> Scenario {
    Scenario {
        expect: vec!["kvm", "vfio-bind", "refused", "names-region"],
        ..Scenario::l2_only(
            "vfio-gh-bad-info",
            "the variant driver reports a sparse area outside its region: ghvmm refuses, exit 1",
            format!(
                "{}expect_clean_failure refused --kernel /l3/vmlinuz --device path=$IVSHMEM\n\
                 grep -q 'region 2' /tmp/err\n\
                 l2_check names-region $? \"the error does not name region 2: $(cat /tmp/err)\"\n",
                bind_variant("kernel_pads", GH_LENGTHS[0], "bad_info=1")
            ),
        )
    }
}

/// The variant driver's capability chain is a loop (a capability naming itself as the next),
/// which vfio-ioctls would follow for ever: ghvmm must check it first and refuse, exit 1,
/// within `expect_clean_failure`'s limit.
fn cap_loop_scenario() -> Scenario {
    Scenario {
        expect: vec!["kvm", "vfio-bind", "refused", "names-chain"],
        ..Scenario::l2_only(
            "vfio-gh-cap-loop",
            "the variant driver's region capability chain loops: ghvmm refuses at once, exit 1",
            format!(
                "{}expect_clean_failure refused --kernel /l3/vmlinuz --device path=$IVSHMEM\n\
                 grep -q \"region 2's capability chain\" /tmp/err\n\
                 l2_check names-chain $? \"the error does not name region 2's capability chain: $(cat /tmp/err)\"\n",
                bind_variant("kernel_pads", GH_LENGTHS[0], "cap_loop=1")
            ),
        )
    }
}

/// L2's two e1000e NICs: the one passed through to L3 and L2's own, joined by a QEMU hub
/// and to nothing else (no user-mode networking, no tap: the rig never reaches a real
/// network).
pub const NIC_PASSTHROUGH: &str = "0000:00:05.0";
pub const NIC_L2: &str = "0000:00:06.0";
/// L2's address on the private link (the checker pings it, tests/checker/src/nic.rs).
const NIC_L2_ADDR: &str = "10.99.0.1/24";

/// L2's two e1000e on the QEMU hub (`-netdev hubport`, hub 0, nothing else on it).
pub(crate) fn nic_qemu_args() -> Vec<String> {
    [
        "-netdev",
        "hubport,id=pt,hubid=0",
        "-device",
        "e1000e,netdev=pt,bus=pcie.0,addr=0x5",
        "-netdev",
        "hubport,id=l2,hubid=0",
        "-device",
        "e1000e,netdev=l2,bus=pcie.0,addr=0x6",
    ]
    .map(String::from)
    .to_vec()
}

/// Shell: `$NIC` is the NIC to pass through, bound to vfio-pci (check `nic-bind`), and L2's
/// own e1000e has its address on the private link (check `nic-l2-up`).
pub(crate) fn nic_setup() -> String {
    format!(
        "NIC=/sys/bus/pci/devices/{NIC_PASSTHROUGH}\n{}\
         L2IF=$(ls /sys/bus/pci/devices/{NIC_L2}/net 2>/dev/null | head -n 1)\n\
         [ -n \"$L2IF\" ] && ip addr add {NIC_L2_ADDR} dev $L2IF && ip link set $L2IF up\n\
         l2_check nic-l2-up $? \"L2's own e1000e ({NIC_L2}, interface '$L2IF') did not come up\"\n",
        bind_device("NIC", "vfio-pci", "nic-bind")
    )
}

/// What L2 (`nic_setup`) and the guest (`ghvmm.vfio=nic`, tests/checker/src/nic.rs) report
/// for a passed-through NIC.
pub(crate) const NIC_CHECKS: &[&str] = &[
    "nic-bind",
    "nic-l2-up",
    "nic-present",
    "nic-link",
    "nic-ping",
    "nic-msix",
];

fn nic_scenario() -> Scenario {
    let l3 = L3::new(BOOT_VMM, 2, "512M")
        .cmdline("ghvmm.vfio=nic")
        .vmm_args("--device path=$NIC,id=nic0")
        .without_acpi_dump();
    Scenario {
        setup: nic_setup(),
        expect: [L3_CHECKS, NIC_CHECKS].concat(),
        qemu_args: nic_qemu_args(),
        ..Scenario::boot(
            "vfio-nic",
            "an e1000e on vfio-pci passed through: its driver gets MSI-X interrupts and pings L2 over a private link (DMA)",
            l3,
        )
    }
    .without_acpi_dump()
}

/// The passthrough scenarios, in run order.
pub fn all() -> Vec<Scenario> {
    let mut v = vec![ivshmem_scenario(), nic_scenario()];
    v.extend(gh_device_scenarios(&GH_MODES, &GH_LENGTHS));
    v.push(bad_info_scenario());
    v.push(cap_loop_scenario());
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shell_test::assert_parses;

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
        assert!(v[3].script().contains("mode=kernel_pads length=41955328"));
        assert!(v[3].script().contains("--device path=$IVSHMEM,id=gpu0"));
        assert_eq!(gh_patterns(48 << 20)[2].0, (48 << 20) - 16);
    }

    #[test]
    fn gh_scenarios_with_padding_are_gated_and_count() {
        for s in gh_device_scenarios(&GH_MODES, &GH_LENGTHS) {
            let sh = s.script();
            assert!(s.l3.is_none(), "{}: the boot is in the script", s.name);
            assert_eq!(sh.matches("/bin/ghvmm --kernel").count(), 1, "{}", s.name);
            assert!(sh.contains(",shared=on "), "{}", s.name);
            assert!(sh.contains("ghvmm.gate=1"), "{}", s.name);
            assert!(
                sh.contains("--api-socket path=/tmp/api.sock --device path=$IVSHMEM,id=gpu0"),
                "{}",
                s.name
            );
            let want = if s.name.starts_with("vfio-gh-vmm") {
                "bar2.padding +1"
            } else {
                "bar2.forwarded +1"
            };
            assert!(
                sh.ends_with(&format!(
                    "gate_counter_checks \"\" ghvmm /tmp/gc \"gpu0\" \"{want}\"\n"
                )),
                "{}",
                s.name
            );
            let body = sh
                .strip_prefix(GATE_HELPERS)
                .expect("the helpers come first");
            let mut reported: Vec<String> = crate::gates::counter_checks("").into();
            for word in body.split("l2_check ").skip(1) {
                reported.push(word.split_whitespace().next().unwrap().to_string());
            }
            reported.push("counter-gates".into());
            for name in &reported {
                assert!(s.expect.contains(&name.as_str()), "{}: {name}", s.name);
            }
            for c in GH_GATE_CHECKS.iter().chain(GH_DEVICE_CHECKS) {
                assert!(s.expect.contains(c), "{}: {c}", s.name);
            }
            assert_parses(s.name, &sh);
        }
        // No padding, nothing to count: the plain boot.
        let pow2 = gh_device_scenarios(&["vmm_pads"], &[32 << 20]).remove(0);
        assert!(pow2.l3.is_some());
        assert!(!pow2.script().contains("ghvmm.gate=1"));
        assert!(!pow2.expect.contains(&"copy-no-access"));
    }

    #[test]
    fn gh_host_check_reads_the_length_from_the_scenario() {
        let len = 8192u64;
        let s = gh_device_scenarios(&["vmm_pads"], &[len]).remove(0);
        let dir = std::env::temp_dir().join(format!("rig-gh-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut file = vec![0u8; 16384];
        for (off, pat) in gh_patterns(len) {
            file[off as usize..off as usize + 16].copy_from_slice(&pat);
        }
        std::fs::write(dir.join("ivshmem.bin"), &file).unwrap();
        assert_eq!(gh_file_checks(&s, &dir)[0].1, Outcome::Pass);
        file[len as usize + 5] = 0xff;
        std::fs::write(dir.join("ivshmem.bin"), &file).unwrap();
        assert!(matches!(gh_file_checks(&s, &dir)[0].1, Outcome::Fail(_)));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
