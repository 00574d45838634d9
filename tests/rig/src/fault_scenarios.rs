//! Fault injection (`fault-*`): a device whose region read/write starts failing, ghvmm killed
//! with SIGKILL while it holds a device, the host taking a device back while the VM runs, the
//! API socket flooded, and the guest flooding the hot plug controller's eject register. In
//! each, the VM (or the next one) must carry on.

use std::path::Path;

use crate::flat::{flat_checks, FIGURES_AT_GATE, PROC_FIGURES, THP_OFF};
use crate::gates::{API_SOCKET, GATE_HELPERS};
use crate::l3::L3;
use crate::protocol::Outcome;
use crate::scenario::{Scenario, BOOT_VMM, L3_CHECKS, NO_ACPI_DUMP};
use crate::vfio_scenarios::{bind_variant, GH_DEVICE_CHECKS, GH_LENGTHS};

const MIB: u64 = 1 << 20;

/// fault-eio: 48 MiB of device memory, the first 32 MiB mmappable, the rest only through the
/// region's read/write, which fails after this many calls.
const EIO_LEN: u64 = 48 * MIB;
const EIO_MAP: u64 = 32 * MIB;
const EIO_AFTER: u64 = 16;
// The checker's probes (map + 4096, map + 8192) lie in the real, unmapped part.
const _: () = assert!(EIO_MAP + 8192 + 16 <= EIO_LEN);

/// Must match tests/checker/src/fault.rs.
const BEFORE: &[u8; 16] = b"fault-before-eio";
const AFTER: &[u8; 16] = b"fault-after--eio";
const MAPPED: &[u8; 16] = b"fault-mapped-ok!";

/// The text ghvmm logs for a failed region access (vmm/src/vfio/bar.rs).
const REGION_ERROR_LOG: &str = "region access at";

/// What the guest wrote before the failure is in the file; what it wrote after is not; the
/// mapped part took its write after the failure too.
fn eio_file_checks(dir: &Path) -> Vec<(String, Outcome)> {
    let file = dir.join("ivshmem.bin");
    let at = |off: u64| crate::backing::read_at(&file, off, 16).map_err(|e| e.to_string());
    let outcome = (|| {
        let mut bad = Vec::new();
        if at(EIO_MAP + 4096)? != BEFORE {
            bad.push("the write before the failure is not in the file");
        }
        if at(EIO_MAP + 8192)? == AFTER {
            bad.push("a write after the failure reached the file");
        }
        if at(0)? != MAPPED {
            bad.push("the write to the mapped part after the failure is not in the file");
        }
        Ok::<_, String>(bad)
    })();
    let outcome = match outcome {
        Ok(bad) if bad.is_empty() => Outcome::Pass,
        Ok(bad) => Outcome::Fail(bad.join("; ")),
        Err(e) => Outcome::Fail(format!("reading ivshmem.bin: {e}")),
    };
    vec![("host-file".to_string(), outcome)]
}

fn eio_scenario() -> Scenario {
    let l3 = L3::new(BOOT_VMM, 2, "512M")
        .cmdline(&format!(
            "ghvmm.vfio=fault ghvmm.gh_len={EIO_LEN} ghvmm.gh_map={EIO_MAP} \
             ghvmm.fail_after={EIO_AFTER} {NO_ACPI_DUMP}"
        ))
        .vmm_args("--device path=$IVSHMEM,id=gpu0");
    let script = format!(
        "{bind}\
         start_l3 {cmd}\n\
         finish_l3 90\n\
         l2_check vmm-exit $rc \"ghvmm: $why (expected exit code 0)\"\n\
         n=$(grep -c '{REGION_ERROR_LOG}' /tmp/l3.out)\n\
         grep '{REGION_ERROR_LOG}' /tmp/l3.out | head -n 3 | sed 's/^/@@L2LOG ghvmm said: /'\n\
         [ \"$n\" = 1 ]\n\
         l2_check fault-log-once $? \"ghvmm logged the region error $n times (want once)\"\n",
        bind = bind_variant(
            "kernel_pads",
            EIO_LEN,
            &format!("map_length={EIO_MAP} fail_after={EIO_AFTER}")
        ),
        cmd = l3.command(),
    );
    let mut expect = L3_CHECKS.to_vec();
    expect.extend([
        "vfio-bind",
        "fault-before",
        "fault-eio-read",
        "fault-eio-write",
        "fault-mapped",
        "fault-log-once",
        "host-file",
    ]);
    Scenario {
        setup: script,
        l3: None,
        expect,
        host_checks: Some(Box::new(|_, d, _| eio_file_checks(d))),
        ..Scenario::boot(
            "fault-eio",
            "the device's region read/write fails with EIO mid-run: the guest reads 0xff, writes are dropped, ghvmm logs it once, the mapped part and the VM carry on",
            l3,
        )
    }
}

/// fault-sigkill: ghvmm killed with SIGKILL while it holds the device; a new ghvmm attaches
/// the same device and the guest's BAR checks pass.
fn sigkill_scenario() -> Scenario {
    let len = GH_LENGTHS[0];
    let first = L3::new(BOOT_VMM, 2, "512M")
        .cmdline(&format!("ghvmm.vfio=hotplug ghvmm.cycles=1 {NO_ACPI_DUMP}"))
        .vmm_args("--device path=$IVSHMEM,id=gpu0");
    let second = L3::new(BOOT_VMM, 2, "512M")
        .cmdline(&format!(
            "ghvmm.vfio=gh ghvmm.gh_mode=vmm_pads ghvmm.gh_len={len} {NO_ACPI_DUMP}"
        ))
        .vmm_args("--device path=$IVSHMEM,id=gpu0");
    let script = format!(
        "{bind}\
         start_l3 {first}\n\
         wait_marker '@@HOTPLUG present 1 ' 120\n\
         l2_check sigkill-attached $? \"$(early_why 'the first guest never saw the device')\"\n\
         kill -9 $l3pid\n\
         finish_l3 30\n\
         [ $rc = 137 ]\n\
         l2_check sigkill-killed $? \"$(early_why \"the first ghvmm ended with $why, not by SIGKILL\")\"\n\
         readlink $IVSHMEM/driver | grep -q ghvmm_test_vfio\n\
         l2_check sigkill-still-bound $? 'the device left its driver'\n\
         {second}",
        bind = bind_variant("vmm_pads", len, ""),
        first = first.command(),
        second = second.script(),
    );
    let mut expect = [L3_CHECKS, GH_DEVICE_CHECKS].concat();
    expect.retain(|c| *c != "host-file");
    expect.extend(["sigkill-attached", "sigkill-killed", "sigkill-still-bound"]);
    Scenario {
        setup: script,
        l3: None,
        expect,
        ..Scenario::boot(
            "fault-sigkill",
            "ghvmm killed with SIGKILL while it holds the GPU-like device: a new ghvmm attaches it and the guest's BAR checks pass",
            second,
        )
    }
}

/// The warning ghvmm logs when the host asks for a device back (vmm/src/passthrough.rs).
const GIVEBACK_LOG: &str = "the host asks for it back";

/// fault-unbind: the host unbinds the variant driver from a device the running guest uses.
/// ghvmm hears VFIO's request interrupt, has the guest eject the device and lets it go, so the
/// unbind completes; the VM runs on, the API knows the device is gone, and the device (bound
/// again) can be added and removed once more.
fn unbind_scenario() -> Scenario {
    let len = GH_LENGTHS[0];
    let l3 = L3::new(BOOT_VMM, 2, "512M")
        .cmdline(&format!(
            "ghvmm.vfio=hotplug ghvmm.gh_mode=vmm_pads ghvmm.gh_len={len} ghvmm.cycles=2 \
             ghvmm.bdf=0001:00:00.0 {NO_ACPI_DUMP}"
        ))
        .vmm_args(
            "--gh slots=1 --api-socket path=/tmp/api.sock --device path=$IVSHMEM,id=gpu0,gh_slot=0",
        );
    let script = format!(
        "{bind}\
         start_l3 {cmd}\n\
         R=\"/bin/ghvmm-remote --api-socket /tmp/api.sock\"\n\
         wait_marker '@@HOTPLUG present 1 ' 120\n\
         l2_check unbind-attached $? 'the guest never saw the device'\n\
         BDF=$(basename $IVSHMEM)\n\
         rm -f /tmp/unbind.rc\n\
         (echo $BDF > /sys/bus/pci/drivers/ghvmm_test_vfio/unbind; echo $? > /tmp/unbind.rc) &\n\
         wait_marker '@@HOTPLUG gone 1' 100\n\
         l2_check unbind-ejected $? 'the guest still has the device after the host unbound it'\n\
         n=0; while [ ! -e /tmp/unbind.rc ] && [ $n -lt 300 ]; do sleep 0.1; n=$((n + 1)); done\n\
         [ \"$(cat /tmp/unbind.rc 2>/dev/null)\" = 0 ] && [ ! -e $IVSHMEM/driver ]\n\
         l2_check unbind-completes $? \"the host's unbind did not complete (rc '$(cat /tmp/unbind.rc 2>/dev/null)')\"\n\
         grep '{GIVEBACK_LOG}' /tmp/l3.out | head -n 2 | sed 's/^/@@L2LOG ghvmm said: /' > /tmp/said\n\
         grep -q '{GIVEBACK_LOG}' /tmp/l3.out\n\
         l2_check unbind-reported $? 'ghvmm did not report the request'\n\
         {gone}\
         echo $BDF > /sys/bus/pci/drivers_probe\n\
         readlink $IVSHMEM/driver 2>/dev/null | grep -q ghvmm_test_vfio\n\
         l2_check unbind-rebound $? 'the device did not bind to the variant driver again'\n\
         out=$($R add-device path=$IVSHMEM,id=gpu0,gh_slot=0 2>&1) && wait_marker '@@HOTPLUG present 2 ' 120\n\
         l2_check unbind-readd $? \"add-device after the unbind: $out\"\n\
         out=$($R remove-device gpu0 2>&1) && wait_marker '@@HOTPLUG gone 2' 120\n\
         l2_check unbind-remove $? \"remove-device after the unbind: $out\"\n\
         finish_l3 120\n\
         l2_check vmm-exit $rc \"ghvmm: $why (expected exit code 0)\"\n\
         cat /tmp/said\n",
        bind = bind_variant("vmm_pads", len, ""),
        cmd = l3.command(),
        gone = crate::hotplug_scenarios::expect_status(
            "unbind-api-gone",
            "PUT",
            "/api/v1/vm.remove-device",
            "{\"id\": \"gpu0\"}",
            404,
            "gpu0",
        ),
    );
    let mut expect = [L3_CHECKS, GH_DEVICE_CHECKS].concat();
    expect.extend([
        "hotplug-arrive",
        "hotplug-bdf",
        "hotplug-depart",
        "hotplug-cycles",
        "unbind-attached",
        "unbind-ejected",
        "unbind-completes",
        "unbind-reported",
        "unbind-api-gone",
        "unbind-rebound",
        "unbind-readd",
        "unbind-remove",
    ]);
    Scenario {
        setup: script,
        l3: None,
        expect,
        host_checks: Some(Box::new(move |_, d, _| {
            crate::vfio_scenarios::gh_file_checks_for(d, len)
        })),
        timeout: std::time::Duration::from_secs(300),
        ..Scenario::boot(
            "fault-unbind",
            "the host unbinds the variant driver while the guest uses the device: ghvmm has the guest eject it, the unbind completes, the VM and the API carry on, the device can be added and removed again",
            l3,
        )
    }
}

/// fault-api-flood: 1000 malformed requests and 100 concurrent connections on the API socket
/// (`checker flood`, tests/checker/src/flood.rs); then well-formed requests are answered and a
/// hot add and remove still reach the running guest.
fn api_flood_scenario() -> Scenario {
    let len = GH_LENGTHS[0];
    let l3 = L3::new(BOOT_VMM, 2, "512M")
        .cmdline(&format!("ghvmm.vfio=hotplug ghvmm.cycles=1 {NO_ACPI_DUMP}"))
        .vmm_args("--gh slots=1 --api-socket path=/tmp/api.sock");
    let script = format!(
        "{bind}{start}\
         /bin/checker flood /tmp/api.sock --malformed 1000 --concurrent 100 > /tmp/flood.out 2>&1\n\
         r=$?\n\
         while read -r line; do l2_say \"$line\"; done < /tmp/flood.out\n\
         l2_check api-flood $r \"after the flood: $(grep -E 'after_ok|result' /tmp/flood.out | tr '\\n' ' ')\"\n\
         out=$($R add-device path=$IVSHMEM,id=gpu0,gh_slot=0 2>&1) && wait_marker '@@HOTPLUG present 1 ' 120\n\
         l2_check api-flood-add $? \"after the flood, add-device: $out\"\n\
         out=$($R remove-device gpu0 2>&1) && wait_marker '@@HOTPLUG gone 1' 120\n\
         l2_check api-flood-remove $? \"after the flood, remove-device: $out\"\n\
         finish_l3 120\n\
         l2_check vmm-exit $rc \"ghvmm: $why (expected exit code 0)\"\n",
        bind = bind_variant("vmm_pads", len, ""),
        start = crate::hotplug_scenarios::start_api_guest(&l3.command()),
    );
    let mut expect = L3_CHECKS.to_vec();
    expect.extend([
        "vfio-bind",
        "hotplug-ready",
        "api-flood",
        "api-flood-add",
        "api-flood-remove",
        "hotplug-depart",
    ]);
    Scenario {
        setup: script,
        l3: None,
        expect,
        ..Scenario::boot(
            "fault-api-flood",
            "1000 malformed API requests and 100 concurrent connections: every well-formed request afterwards is answered, hot add and remove still reach the guest",
            l3,
        )
    }
}

/// fault-eject-flood's writes of all ones to the eject register, with no removal pending.
/// Every write is an exit through both KVMs, and the nested emulation now and then breaks an
/// L3 guest in a stretch of exits (docs/testing.md, "Known flakiness"): a tenth of a million
/// keeps the suite's scenario about as exposed as a boot. The original bug (one list entry
/// per ejected slot, 32 per write) would grow VmRSS by over 12 MiB here, 50 times the
/// tolerance. The million the finding asked for runs in `soak-eject-flood`.
pub const EJECT_FLOOD_WRITES: u64 = 100_000;
/// soak-eject-flood's writes.
pub const EJECT_SOAK_WRITES: u64 = 1_000_000;
/// How long L2 waits for the guest at the gate after the flood, per 1000 writes: each write
/// is an exit through both KVMs, about 100 us under nested TCG on an idle host and over
/// 600 us on a host shared with other rigs (docs/testing.md).
const EJECT_FLOOD_WAIT_S_PER_1000: u64 = 2;
/// What ghvmm's VmRSS may grow by over the flood (KiB): a few pages of allocator or stack
/// noise; a leak of even 3 bytes per write would exceed it in the suite's flood.
pub const EJECT_FLOOD_RSS_TOLERANCE_KIB: u64 = 256;

/// fault-eject-flood, in the suite.
fn fault_eject_flood() -> Scenario {
    eject_flood_scenario(
        "fault-eject-flood",
        EJECT_FLOOD_WRITES,
        "the guest writes all ones to the hot plug eject register 100,000 times: ghvmm's fds, mappings and VmRSS (from /proc) stay flat, the API answers, the device can still be removed",
    )
}

/// soak-eject-flood (`soak_scenarios`): the million writes.
pub fn soak_eject_flood() -> Scenario {
    eject_flood_scenario(
        "soak-eject-flood",
        EJECT_SOAK_WRITES,
        "fault-eject-flood with a million writes to the eject register",
    )
}

/// How long an eject flood's VMM may go on once the guest has missed a gate: the rest of
/// the scenario judges what the guest did after the gate, so it cannot be judged at all,
/// and its waits (up to 120 s each) would together outlast the rig's timeout and end the
/// attempt as a silent L2 (CI, 2026-12-07: 846 s). L2 stops the VMM with its diagnostics,
/// the failed `vmm-exit` marks the attempt as without a result.
const GATES_LOST_GRACE_S: u64 = 10;

/// An eject flood: with the GPU-like device at boot (GH slot 0, segment 1) and no removal
/// pending, the guest writes all ones to the hot plug controller's eject register `writes`
/// times (tests/checker/src/stress.rs) between two gates; at each L2 reads ghvmm's
/// descriptors, mappings and VmRSS from /proc. Afterwards the API answers and a real
/// removal of the device reaches the guest (the flood's stale "ejects" of its slot must not
/// stand in for the guest's answer). One vCPU: the guest has one loop to run, and a second
/// vCPU only adds to what the nested emulation can break.
fn eject_flood_scenario(name: &'static str, writes: u64, summary: &'static str) -> Scenario {
    let len = GH_LENGTHS[0];
    let wait_s = (writes / 1000 * EJECT_FLOOD_WAIT_S_PER_1000).max(240);
    let l3 = L3::new(BOOT_VMM, 1, "512M")
        .cmdline(&format!(
            "ghvmm.vfio=eject-flood ghvmm.flood={writes} {NO_ACPI_DUMP}"
        ))
        .vmm_args(&format!(
            "--gh slots=1 --api-socket path={API_SOCKET} --device path=$IVSHMEM,id=gpu0,gh_slot=0"
        ))
        .shared_memory();
    let script = format!(
        "{GATE_HELPERS}{PROC_FIGURES}{FIGURES_AT_GATE}{THP_OFF}{bind}\
         start_l3 {cmd}\n\
         R=\"/bin/ghvmm-remote --api-socket {API_SOCKET}\"\n\
         gate_err=\n\
         figures_at_gate 1 240 /tmp/flood0 && figures_at_gate 2 {wait_s} /tmp/flood1\n\
         gates=$?\n\
         l2_check eject-flood-gates $gates \"$gate_err\"\n\
         if [ $gates = 0 ]; then\n\
         {flat}\
         out=$($R ping 2>&1)\n\
         l2_check eject-flood-ping $? \"vmm.ping after the flood: $out\"\n\
         out=\n\
         wait_marker '@@HOTPLUG present 1 ' 120 && out=$($R remove-device gpu0 2>&1) && wait_marker '@@HOTPLUG gone 1' 120\n\
         l2_check eject-flood-remove $? \"removing the device after the flood: $out\"\n\
         gate_err=\n\
         gate_open 3\n\
         l2_check eject-flood-gate3 $? \"$gate_err\"\n\
         finish_l3 120\n\
         else\n\
         finish_l3 {GATES_LOST_GRACE_S}\n\
         fi\n\
         l2_check vmm-exit $rc \"ghvmm: $why (expected exit code 0)\"\n",
        bind = bind_variant("vmm_pads", len, ""),
        cmd = l3.command(),
        flat = flat_checks(
            "eject-flood",
            &format!("after {writes} eject writes"),
            "/tmp/flood0",
            "/tmp/flood1",
            EJECT_FLOOD_RSS_TOLERANCE_KIB,
        ),
    );
    let mut expect = L3_CHECKS.to_vec();
    expect.extend([
        "vfio-bind",
        "eject-flood",
        "eject-flood-gates",
        "eject-flood-ping",
        "eject-flood-remove",
        "eject-flood-gate3",
        "eject-flood-end",
        "eject-flood-fds",
        "eject-flood-maps",
        "eject-flood-rss",
        "hotplug-depart",
        "hotplug-cycles",
    ]);
    Scenario {
        setup: script,
        l3: None,
        expect,
        timeout: std::time::Duration::from_secs(wait_s + 600),
        ..Scenario::boot(name, summary, l3)
    }
}

/// The fault-injection scenarios, in run order.
pub fn all() -> Vec<Scenario> {
    [
        eio_scenario(),
        sigkill_scenario(),
        unbind_scenario(),
        api_flood_scenario(),
        fault_eject_flood(),
    ]
    .into_iter()
    .map(Scenario::without_acpi_dump)
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retry::Verdict;
    use crate::CheckResult;

    #[test]
    fn eio_layout_puts_the_probes_in_the_unmapped_real_part() {
        let sh = eio_scenario().script();
        assert!(sh.contains("map_length=33554432 fail_after=16"));
        assert!(sh.contains("ghvmm.gh_map=33554432"));
        assert!(sh.contains("l2_check fault-log-once"));
    }

    #[test]
    fn eio_host_check_reads_the_three_probes() {
        let dir = std::env::temp_dir().join(format!("rig-eio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut file = vec![0u8; EIO_LEN as usize];
        file[(EIO_MAP + 4096) as usize..][..16].copy_from_slice(BEFORE);
        file[..16].copy_from_slice(MAPPED);
        std::fs::write(dir.join("ivshmem.bin"), &file).unwrap();
        assert_eq!(eio_file_checks(&dir)[0].1, Outcome::Pass);
        file[(EIO_MAP + 8192) as usize..][..16].copy_from_slice(AFTER);
        std::fs::write(dir.join("ivshmem.bin"), &file).unwrap();
        assert!(matches!(eio_file_checks(&dir)[0].1, Outcome::Fail(_)));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn fault_guests_do_not_dump_their_acpi_tables() {
        for s in all() {
            assert!(!s.acpi && !s.expect.contains(&"acpi-dump"), "{}", s.name);
            let sh = s.script();
            let boots = sh.matches("/bin/ghvmm ").count();
            assert!(boots >= 1, "{}", s.name);
            assert_eq!(sh.matches(NO_ACPI_DUMP).count(), boots, "{}", s.name);
        }
    }

    #[test]
    fn eject_flood_reads_the_figures_at_both_gates_without_api_calls_between() {
        let (s, soak) = (fault_eject_flood(), soak_eject_flood());
        assert_eq!(
            (s.name, soak.name),
            ("fault-eject-flood", "soak-eject-flood")
        );
        assert!(soak
            .script()
            .contains("ghvmm.vfio=eject-flood ghvmm.flood=1000000 "));
        assert!(soak
            .script()
            .contains("figures_at_gate 2 2000 /tmp/flood1\n"));
        assert_eq!(soak.expect, s.expect);
        assert!(soak.timeout.as_secs() > 2000);
        let sh = s.script();
        assert!(sh.contains("ghvmm.vfio=eject-flood ghvmm.flood=100000 "));
        assert!(sh.contains("--memory size=512M,shared=on "));
        assert!(sh.contains("ghvmm.cpus=1 "));
        let gates = sh
            .find("figures_at_gate 1 240 /tmp/flood0 && figures_at_gate 2 240 /tmp/flood1\n")
            .unwrap();
        let start = sh.find("start_l3 ").unwrap();
        assert!(start < gates && !sh[start..gates].contains("$R "));
        // The guest powers off only after L2 has ghvmm's answer to the removal.
        let removal = sh.find("out=$($R remove-device gpu0 2>&1)").unwrap();
        let last_gate = sh.find("gate_open 3\n").unwrap();
        assert!(removal < last_gate && last_gate < sh.find("finish_l3").unwrap());
        for check in s
            .expect
            .iter()
            .filter(|c| c.starts_with("eject-flood-") && **c != "eject-flood-end")
        {
            assert!(sh.contains(&format!("l2_check {check} ")), "{check}");
        }
        assert!(s.timeout.as_secs() > 240);
    }

    /// fault-eject-flood's checks from its gates on, run by sh with L2's own functions around
    /// a stand-in VMM (`vmm`, a shell command run in the background) whose guest reaches
    /// gate 1 but not gate 2, classified as the rig would: the lines and the verdict.
    fn eject_flood_after_lost_gate(vmm: &str) -> (Vec<String>, Verdict, std::time::Duration) {
        let sh = fault_eject_flood().script();
        let from = sh.find("figures_at_gate 1 ").unwrap();
        let to = from + sh[from..].find("l2_check vmm-exit").unwrap();
        let to = to + sh[to..].find('\n').unwrap();
        let checks = sh[from..to].replace(
            &format!("finish_l3 {GATES_LOST_GRACE_S}\n"),
            "finish_l3 1\n",
        );
        let fragment = format!(
            "{}l3_diagnostics() {{ :; }}\ndevmaps_report() {{ :; }}\ndevmaps_snap() {{ :; }}\n\
             figures_at_gate() {{ [ $1 = 1 ] && return 0; gate_err=\"the guest never reached gate $1 within $2 s\"; return 1; }}\n\
             L2_DEFER=\n{vmm} &\nl3pid=$!\nsleep 0.3\n{checks}\n",
            crate::shell_test::l2_init_functions(&[
                "l2_say",
                "l2_check",
                "pid_running",
                "l3_running",
                "l3_gone",
                "finish_l3"
            ]),
        );
        let shell = crate::shell_test::ShellChecks::new("eject-flood-gates");
        let t0 = std::time::Instant::now();
        let lines = shell.run(&fragment, &["@@L2CHECK "]);
        let took = t0.elapsed();
        let results: Vec<CheckResult> = lines
            .iter()
            .map(|l| {
                let (name, rest) = l["@@L2CHECK ".len()..].split_once(' ').unwrap();
                CheckResult {
                    name: format!("fault-eject-flood/{name}"),
                    outcome: match rest.strip_prefix("FAIL ") {
                        Some(why) => Outcome::Fail(why.into()),
                        None => Outcome::Pass,
                    },
                }
            })
            .collect();
        let derived = vec!["fault-eject-flood/eject-flood-gates".to_string()];
        (lines, crate::retry::verdict(&results, &derived), took)
    }

    #[test]
    fn a_guest_lost_between_the_gates_ends_the_attempt_at_once_without_a_result() {
        let gates = "@@L2CHECK eject-flood-gates FAIL the guest never reached gate 2 within 240 s";
        // A hung guest: its VMM runs on, and is stopped after the grace, not the 120 s
        // waits of every later step.
        let (lines, verdict, took) = eject_flood_after_lost_gate("sleep 30");
        assert_eq!(
            lines,
            [
                gates,
                "@@L2CHECK vmm-exit FAIL ghvmm: still running after 1s, killed (diagnostics in console.log) (expected exit code 0)"
            ]
        );
        assert_eq!(verdict, Verdict::NoResult);
        assert!(took.as_secs() < 10, "{took:?}");
        // A guest that triple-faulted: its VMM has exited 1.
        let (lines, verdict, _) = eject_flood_after_lost_gate("sh -c 'exit 1'");
        assert_eq!(
            lines,
            [
                gates,
                "@@L2CHECK vmm-exit FAIL ghvmm: exit code 1 (expected exit code 0)"
            ]
        );
        assert_eq!(verdict, Verdict::NoResult);
        let sh = fault_eject_flood().script();
        let timeout = fault_eject_flood().timeout.as_secs();
        assert!(240 + 240 + GATES_LOST_GRACE_S + 120 < timeout, "{timeout}");
        assert!(sh.contains("\nelse\nfinish_l3 10\nfi\nl2_check vmm-exit"));
    }

    /// The first VMM's checks of fault-sigkill, run by sh with L2's own `wait_marker`,
    /// `early_why` and `finish_l3` around a stand-in first VMM (`first`, a shell command run
    /// in the background), classified as the rig would with the second VMM's clean exit.
    fn sigkill_first_vmm(first: &str) -> (Vec<String>, Verdict) {
        let sh = sigkill_scenario().script();
        let from = sh.find("wait_marker '@@HOTPLUG present 1 '").unwrap();
        let to = from + sh[from..].find("readlink $IVSHMEM/driver").unwrap();
        // No console file: the marker never comes, after 1 s rather than 120.
        let checks = sh[from..to]
            .replace(
                "wait_marker '@@HOTPLUG present 1 ' 120",
                "wait_marker '@@NEVER' 1",
            )
            .replace("/tmp/l3.out", "/nonexistent");
        let fragment = format!(
            "{}l3_diagnostics() {{ :; }}\ndevmaps_report() {{ :; }}\nL2_DEFER=/dev/null\n\
             {first} &\nl3pid=$!\nsleep 0.3\n{checks}",
            crate::shell_test::l2_init_functions(&[
                "pid_running",
                "l3_running",
                "l3_gone",
                "wait_marker",
                "early_why",
                "finish_l3"
            ]),
        );
        let shell = crate::shell_test::ShellChecks::new("sigkill-first");
        let lines = shell.run(&fragment, &["sigkill-"]);
        let mut results: Vec<CheckResult> = lines
            .iter()
            .map(|l| {
                let (name, rest) = l.split_once(' ').unwrap();
                CheckResult {
                    name: format!("fault-sigkill/{name}"),
                    outcome: match rest.strip_prefix("FAIL ") {
                        Some(why) => Outcome::Fail(why.into()),
                        None => Outcome::Pass,
                    },
                }
            })
            .collect();
        let derived: Vec<String> = results.iter().map(|r| r.name.clone()).collect();
        results.push(CheckResult {
            name: "fault-sigkill/vmm-exit".into(),
            outcome: Outcome::Pass,
        });
        (lines, crate::retry::verdict(&results, &derived))
    }

    #[test]
    fn a_first_vmm_that_failed_by_itself_is_no_result_but_a_live_one_is_a_failure() {
        let never = "sigkill-attached FAIL the first guest never saw the device";
        let cases = [
            // Its guest triple-faulted: ghvmm exited 1 before the device showed.
            (
                "sh -c 'exit 1'",
                [
                    "sigkill-attached FAIL the VMM ended by itself first (exit code 1): the first guest never saw the device",
                    "sigkill-killed FAIL the VMM ended by itself first (exit code 1): the first ghvmm ended with exit code 1, not by SIGKILL",
                ],
                Verdict::NoResult,
            ),
            // Its guest powered off without ever seeing the device: a result, and wrong.
            (
                "sh -c 'exit 0'",
                [
                    never,
                    "sigkill-killed FAIL the first ghvmm ended with exit code 0, not by SIGKILL",
                ],
                Verdict::WrongValue,
            ),
            // Alive, and the device never shows: ghvmm's failure, final.
            ("sleep 30", [never, "sigkill-killed PASS"], Verdict::WrongValue),
        ];
        for (first, want, verdict) in cases {
            assert_eq!(
                sigkill_first_vmm(first),
                (want.map(String::from).to_vec(), verdict),
                "{first}"
            );
        }
    }

    #[test]
    fn sigkill_boots_twice_with_the_same_device() {
        let sh = sigkill_scenario().script();
        assert_eq!(sh.matches("--device path=$IVSHMEM,id=gpu0").count(), 2);
        assert!(sh.contains("kill -9 $l3pid"));
        assert!(sh.contains("run_l3 90"));
    }
}
