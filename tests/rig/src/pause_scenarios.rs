//! `api-pause`: `vm.pause` and `vm.resume` on a running guest. The guest
//! (`ghvmm.mode=ticks`, tests/checker/src/ticks.rs) keeps vCPU 0 busy and prints `@@TICK n`
//! every 100 ms of its time. L2 pauses it and then requires, over `QUIET_S` seconds, that
//! `vm.info` says "Paused", that no vCPU thread of ghvmm is running and none used any CPU
//! time (utime and stime in /proc/PID/task/TID/stat, exact), and that the console did not
//! grow by a byte; it also requires the vCPU threads to have used CPU time over as long
//! before the pause, so the standstill is not vacuous. After `vm.resume` the counter must
//! go on. The wrong state changes answer Cloud Hypervisor's 500.
//! L2's ivshmem is passed through on vfio-pci, so a VM with a VFIO device pauses, and
//! `vm.info`'s `device_tree` must give its BDF and its BAR 2 with L2's size for it.

use crate::hotplug_scenarios::{expect_status, start_api_guest_at};
use crate::l3::L3;
use crate::scenario::{Scenario, BOOT_VMM, L3_CHECKS, NO_ACPI_DUMP};
use crate::vfio_scenarios::bind_ivshmem;

/// How long L2 watches the paused VM (and, before the pause, the running one).
pub const QUIET_S: u32 = 3;
/// Ticks the guest must print after the resume.
pub const TICKS_AFTER_RESUME: u32 = 5;

/// Shell: `vcpu_times`: one `comm:state:utime:stime` word per vCPU thread of ghvmm ($l3pid).
const VCPU_TIMES: &str = "vcpu_times() {\n\
    for t in /proc/$l3pid/task/*; do\n\
        case \"$(cat $t/comm 2>/dev/null)\" in vcpu*)\n\
            printf '%s:%s ' \"$(cat $t/comm)\" \"$(cut -d' ' -f3,14,15 $t/stat | tr ' ' :)\" ;;\n\
        esac\n\
    done\n\
}\n";

/// Where the first `--device` lands: slot 1 of segment 0 (the host bridge is slot 0).
const SHM_BDF: &str = "0000:00:01.0";

/// Shell: `vm.info`'s `device_tree` names `shm0` at `SHM_BDF` with its BAR 2 as large as
/// L2's (line 3 of sysfs `resource`: start, end, flags), and the UART as `__serial` at COM1's
/// ports and IRQ; check `info-device-tree`.
fn device_tree_check() -> String {
    // ghvmm-remote prints the keys of each object sorted, so each part is matched alone.
    format!(
        "sz2=$(sed -n 3p $IVSHMEM/resource | {{ read s e f; echo $((e - s + 1)); }})\n\
         $R info | tr -d ' \\n' > /tmp/info0.json\n\
         bar2=$(grep -o '{{\"PciBar\":{{[^}}]*}}}}' /tmp/info0.json | grep '\"index\":2[,}}]')\n\
         grep -q '\"device_tree\":{{.*\"shm0\":{{' /tmp/info0.json && \
         grep -q '\"__serial\":{{\"children\":\\[\\],\"id\":\"__serial\",\"parent\":null,\"pci_bdf\":null,\"resources\":\\[{{\"PioAddressRange\":{{\"base\":1016,\"size\":8}}}},{{\"LegacyIrq\":4}}\\]' /tmp/info0.json && \
         echo \"$bar2\" | grep -q \"\\\"size\\\":$sz2[,}}]\" && \
         grep -q '\"pci_bdf\":\"{SHM_BDF}\"' /tmp/info0.json\n\
         l2_check info-device-tree $? \"vm.info: $(grep -o '\"device_tree.*' /tmp/info0.json | head -c 600) (want shm0 at {SHM_BDF}, BAR 2 of $sz2 bytes; __serial at ports 0x3f8-0x3ff, IRQ 4)\"\n"
    )
}

/// The checks the script reports, besides the standard ones.
pub const PAUSE_CHECKS: &[&str] = &[
    "vfio-bind",
    "pause-ticking",
    "info-device-tree",
    "pause-vcpus-ran",
    "pause-resume-running",
    "pause-api",
    "pause-info-state",
    "pause-twice",
    "pause-vcpus-still",
    "pause-console-quiet",
    "pause-resume",
    "pause-info-running",
    "pause-progress",
    "pause-shutdown",
];

fn script(command: &str) -> String {
    let q = QUIET_S;
    let after = TICKS_AFTER_RESUME;
    format!(
        "{bind}{VCPU_TIMES}{start}{tree}\
         before=$(vcpu_times); sleep {q}; running=$(vcpu_times)\n\
         [ -n \"$before\" ] && [ \"$before\" != \"$running\" ]\n\
         l2_check pause-vcpus-ran $? \"vCPU threads over {q} s before the pause: $before -> $running\"\n\
         {resume_running}\
         $R pause > /tmp/pause.out 2>&1\n\
         l2_check pause-api $? \"ghvmm-remote pause: $(cat /tmp/pause.out)\"\n\
         $R info > /tmp/info.json 2>&1\n\
         grep -q '\"state\": \"Paused\"' /tmp/info.json\n\
         l2_check pause-info-state $? \"vm.info while paused: $(grep state /tmp/info.json)\"\n\
         {twice}\
         # Output queued before the pause may still be on its way out.\n\
         sleep 1\n\
         a=$(vcpu_times); a_out=$(wc -c < /tmp/l3.out); sleep {q}; b=$(vcpu_times); b_out=$(wc -c < /tmp/l3.out)\n\
         r=0; [ -n \"$a\" ] && [ \"$a\" = \"$b\" ] || r=1\n\
         case \"$a\" in *:R:*) r=1 ;; esac\n\
         l2_check pause-vcpus-still $r \"vCPU threads (comm:state:utime:stime) over {q} s paused: $a -> $b\"\n\
         [ \"$a_out\" = \"$b_out\" ]\n\
         l2_check pause-console-quiet $? \"the console grew from $a_out to $b_out bytes while paused\"\n\
         last=$(grep -o '@@TICK [0-9]*' /tmp/l3.out | tail -n 1 | grep -o '[0-9]*$')\n\
         l2_say \"@@FACT pause-figures running: $before -> $running; paused: $a -> $b; console $a_out -> $b_out bytes; last tick $last\"\n\
         $R resume > /tmp/resume.out 2>&1\n\
         l2_check pause-resume $? \"ghvmm-remote resume: $(cat /tmp/resume.out)\"\n\
         $R info > /tmp/info.json 2>&1\n\
         grep -q '\"state\": \"Running\"' /tmp/info.json\n\
         l2_check pause-info-running $? \"vm.info after resume: $(grep state /tmp/info.json)\"\n\
         wait_marker \"@@TICK $((last + {after}))\" 60\n\
         l2_check pause-progress $? \"no @@TICK $((last + {after})) within 60 s of the resume (last before: $last)\"\n\
         $R shutdown > /tmp/shutdown.out 2>&1\n\
         l2_check pause-shutdown $? \"ghvmm-remote shutdown: $(cat /tmp/shutdown.out)\"\n\
         finish_l3 60\n\
         l2_check vmm-exit $rc \"ghvmm: $why (expected exit code 0)\"\n",
        bind = bind_ivshmem("vfio-pci"),
        start = start_api_guest_at(command, "@@TICK 3", "pause-ticking"),
        tree = device_tree_check(),
        resume_running = expect_status(
            "pause-resume-running",
            "PUT",
            "/api/v1/vm.resume",
            "",
            500,
            "the VM is not paused",
        ),
        twice = expect_status(
            "pause-twice",
            "PUT",
            "/api/v1/vm.pause",
            "",
            500,
            "the VM is already paused",
        ),
    )
}

fn pause_scenario() -> Scenario {
    let l3 = L3::new(BOOT_VMM, 2, "512M")
        .cmdline(&format!("ghvmm.mode=ticks {NO_ACPI_DUMP}"))
        .vmm_args("--api-socket path=/tmp/api.sock --device path=$IVSHMEM,id=shm0");
    let mut expect = L3_CHECKS.to_vec();
    expect.extend(PAUSE_CHECKS);
    Scenario {
        setup: script(&l3.command()),
        l3: None,
        expect,
        timeout: std::time::Duration::from_secs(300),
        ..Scenario::boot(
            "api-pause",
            "vm.pause stops every vCPU (no CPU time, no console output, vm.info Paused), vm.resume lets the guest's counter go on; a second pause and a resume while running (500)",
            l3,
        )
    }
    .without_acpi_dump()
}

pub fn all() -> Vec<Scenario> {
    vec![pause_scenario()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_check_the_script_reports_is_expected_and_vice_versa() {
        let s = pause_scenario();
        let sh = s.script();
        assert!(sh.contains("--api-socket path=/tmp/api.sock"));
        assert!(sh.contains("ghvmm.mode=ticks"));
        for check in PAUSE_CHECKS.iter().filter(|c| **c != "vfio-bind") {
            assert!(sh.contains(&format!("l2_check {check} ")), "{check}");
            assert!(s.expected().contains(check), "{check}");
        }
        let reported = sh.matches("l2_check pause-").count();
        let expected = PAUSE_CHECKS
            .iter()
            .filter(|c| c.starts_with("pause-"))
            .count();
        assert_eq!(reported, expected);
        assert!(!s.expected().contains(&"acpi-dump"));
    }
}

#[cfg(test)]
mod device_tree_tests {
    use super::*;
    use crate::shell_test::ShellChecks;

    /// Runs `device_tree_check` against `info` printed as ghvmm-remote prints it (pretty,
    /// keys sorted) and an ivshmem whose BAR 2 is 64 MiB.
    fn check(info: serde_json::Value) -> Vec<String> {
        let c = ShellChecks::new("device-tree");
        c.write("info.json", &serde_json::to_string_pretty(&info).unwrap());
        std::fs::create_dir_all(c.path("ivshmem")).unwrap();
        c.write(
            "ivshmem/resource",
            "0x0 0x0 0x0\n0x0 0x0 0x0\n0x0000000800000000 0x0000000803ffffff 0x14220c",
        );
        let fragment = format!(
            "R=fake_remote\nfake_remote() {{ cat {}; }}\nIVSHMEM={}\n{}",
            c.path("info.json"),
            c.path("ivshmem"),
            device_tree_check().replace("/tmp/", &(c.path("") + "/")),
        );
        c.run(&fragment, &["info-device-tree"])
    }

    fn info(serial_base: u16) -> serde_json::Value {
        serde_json::json!({"device_tree": {
            "__serial": {"id": "__serial", "parent": null, "children": [], "pci_bdf": null,
                         "resources": [{"PioAddressRange": {"base": serial_base, "size": 8}},
                                       {"LegacyIrq": 4}]},
            "shm0": {"id": "shm0", "parent": null, "children": [], "pci_bdf": SHM_BDF,
                     "resources": [{"PciBar": {"index": 2, "base": 1u64 << 39,
                                               "size": 64u64 << 20, "type_": "Mmio64",
                                               "prefetchable": true}}]}}})
    }

    #[test]
    fn the_tree_must_name_the_device_and_the_uart() {
        assert_eq!(check(info(0x3f8)), ["info-device-tree PASS"]);
        let moved = check(info(0x2f8));
        assert!(
            moved[0].starts_with("info-device-tree FAIL vm.info: "),
            "{moved:?}"
        );
    }
}
