//! Hot plug through the REST API (`hotplug-*`): L2 runs ghvmm in the background with
//! `--api-socket`, drives it with `ghvmm-remote` (and raw requests for the error classes) and
//! follows the guest through the checker's `@@HOTPLUG` lines (tests/checker/src/hotplug.rs).

use crate::gh_scenarios::{numa_checks, NumaExpect, NUMA_CHECKS};
use crate::l3::L3;
use crate::scenario::{Scenario, BOOT_VMM, L3_CHECKS};
use crate::vfio_scenarios::{bind_variant, gh_file_checks_for, GH_DEVICE_CHECKS, GH_LENGTHS};

/// Add/remove cycles: the first, then 20 in a row after which resources must be as after the
/// first.
pub const CYCLES: u32 = 21;

/// Shell: one raw request whose status must be `status` and whose body must contain `text`;
/// reports the L2 check `name`.
pub(crate) fn expect_status(
    name: &str,
    method: &str,
    path: &str,
    body: &str,
    status: u16,
    text: &str,
) -> String {
    format!(
        "out=$(/bin/checker http /tmp/api.sock {method} {path} '{body}')\n\
         case \"$out\" in \"{status} \"*\"{text}\"*) r=0 ;; *) r=1 ;; esac\n\
         l2_check {name} $r \"{method} {path} answered: $out (want {status} ... {text})\"\n"
    )
}

/// Shell: starts `cmd` (a ghvmm with `--api-socket path=/tmp/api.sock`) in the background,
/// sets `$R` to ghvmm-remote on that socket and waits for the checker's `@@HOTPLUG ready`
/// (check `hotplug-ready`).
pub(crate) fn start_api_guest(cmd: &str) -> String {
    start_api_guest_at(cmd, "@@HOTPLUG ready", "hotplug-ready")
}

/// `start_api_guest`, waiting for the guest's `marker` instead (check `check`).
pub(crate) fn start_api_guest_at(cmd: &str, marker: &str, check: &str) -> String {
    format!(
        "start_l3 {cmd}\n\
         R=\"/bin/ghvmm-remote --api-socket /tmp/api.sock\"\n\
         wait_marker '{marker}' 120\n\
         l2_check {check} $? 'the guest never printed {marker}'\n"
    )
}

/// Shell: the number after `"KEY": ` in a JSON file.
pub(crate) fn json_number(file: &str, key: &str) -> String {
    format!("$(grep -o '\"{key}\": *[0-9]*' {file} | grep -o '[0-9]*$')")
}

fn error_checks() -> String {
    let add = "/api/v1/vm.add-device";
    [
        expect_status("api-malformed-json", "PUT", add, "{\"path\": ", 400, ""),
        expect_status(
            "api-unknown-field",
            "PUT",
            add,
            "{\"path\": \"/x\", \"colour\": 1}",
            400,
            "colour",
        ),
        expect_status("api-wrong-type", "PUT", add, "{\"path\": 7}", 400, ""),
        expect_status(
            "api-missing-path",
            "PUT",
            add,
            "{\"id\": \"a\"}",
            400,
            "path",
        ),
        expect_status(
            "api-unknown-endpoint",
            "GET",
            "/api/v1/vm.nothing",
            "",
            404,
            "",
        ),
        expect_status("api-wrong-method", "GET", add, "", 405, ""),
        expect_status(
            "api-unknown-id",
            "PUT",
            "/api/v1/vm.remove-device",
            "{\"id\": \"nosuch\"}",
            404,
            "nosuch",
        ),
        expect_status(
            "api-not-vfio",
            "PUT",
            add,
            "{\"path\": \"/sys/bus/pci/devices/0000:00:00.0\"}",
            400,
            "VFIO driver",
        ),
        expect_status(
            "api-no-such-slot",
            "PUT",
            add,
            "{\"path\": \"/sys/bus/pci/devices/0000:00:00.0\", \"gh_slot\": 5}",
            400,
            "slot 5",
        ),
        expect_status(
            "api-no-such-segment",
            "PUT",
            add,
            "{\"path\": \"/sys/bus/pci/devices/0000:00:00.0\", \"pci_segment\": 2}",
            400,
            "PCI segment 2 does not exist",
        ),
    ]
    .concat()
}

/// What the kernel says of ghvmm's resources may grow by over the hot-plug cycles: its
/// resident set after the last cycle against after the first (KiB). Not against before the
/// first: that add DMA-maps the guest RAM and makes it resident for good (scale_scenarios.rs).
/// Heap reuse is not exact between cycles (allocator bins, the API thread's buffers), which
/// a few pages cover; 20 cycles each keeping a 64 KiB buffer or a page table of a touched
/// mapping would exceed it.
pub const LEAK_RSS_TOLERANCE_KIB: u64 = 1024;

/// Shell function `kernel_resources PID`: the process's open descriptors (/proc/PID/fd), its
/// mappings of a VFIO device (lines of /proc/PID/maps naming one) and its VmRSS in KiB, as
/// three numbers.
pub(crate) const KERNEL_RESOURCES: &str = r#"kernel_resources() {
    echo "$(ls /proc/$1/fd | wc -l) $(grep -c vfio-device /proc/$1/maps) $(grep VmRSS /proc/$1/status | tr -dc 0-9)"
}
"#;

/// Shell: the `leak-*` checks from `kernel_resources` before the first cycle (/tmp/kres0),
/// while its device is present (/tmp/kresp: the device's mappings must show there, or
/// `leak-maps` would compare two zeros that prove nothing), after it (/tmp/kres1) and after
/// the last (/tmp/kres2).
fn leak_checks() -> String {
    format!(
        r#"read -r fds0 maps0 rss0 < /tmp/kres0; read -r fdsp mapsp rssp < /tmp/kresp
read -r fds1 maps1 rss1 < /tmp/kres1; read -r fds2 maps2 rss2 < /tmp/kres2
l2_say "@@FACT leak-kernel before $fds0 $maps0 $rss0 present1 $fdsp $mapsp $rssp after1 $fds1 $maps1 $rss1 last $fds2 $maps2 $rss2"
[ -n "$fds0" ] && [ "$fds0" = "$fds2" ]
l2_check leak-fds $? "ghvmm has $fds2 open descriptors after the last cycle, $fds0 before the first ($fds1 after it)"
[ -n "$maps0" ] && [ "$maps0" = "$maps2" ] && [ "${{mapsp:-0}}" -gt "$maps0" ]
l2_check leak-maps $? "ghvmm maps a VFIO device $maps2 times after the last cycle, $maps0 before the first, $mapsp while it was present, $maps1 after it (want as many after as before, more while present)"
[ -n "$rss1" ] && [ -n "$rss2" ] && [ $((rss2 - rss1)) -le {LEAK_RSS_TOLERANCE_KIB} ]
l2_check leak-rss $? "ghvmm's VmRSS went from $rss1 KiB after the first cycle to $rss2 KiB after the last (tolerance +{LEAK_RSS_TOLERANCE_KIB} KiB; $rss0 KiB before the first)"
"#
    )
}

/// Shell: `CYCLES` hot-plug cycles. Each runs `$R <add>` (which must attach the device with
/// id gpu0 to GH slot 0; the first answer must name 0001:00:00.0, check `api-add-bdf`), waits
/// for the guest's `@@HOTPLUG present`, runs `at_second` during the second cycle, removes the
/// device and waits for `@@HOTPLUG gone`. After the first removal `vm.info` goes to
/// /tmp/info1.json and `after_first` runs; after the last, /tmp/info2.json. Reports
/// `api-cycles`, `hotplug-no-leak` (ghvmm's own count of open fds and KVM memory slots as
/// after the first cycle), and the kernel's view, `leak-fds`, `leak-maps` and `leak-rss`
/// (`leak_checks`).
pub(crate) fn cycles_script(add: &str, after_first: &str, at_second: &str) -> String {
    let (fds1, slots1, rss1) = (
        json_number("/tmp/info1.json", "open_fds"),
        json_number("/tmp/info1.json", "memory_slots"),
        json_number("/tmp/info1.json", "rss_kib"),
    );
    let (fds2, slots2, rss2) = (
        json_number("/tmp/info2.json", "open_fds"),
        json_number("/tmp/info2.json", "memory_slots"),
        json_number("/tmp/info2.json", "rss_kib"),
    );
    let indent = |sh: &str| sh.replace('\n', "\n             ");
    format!(
        "{KERNEL_RESOURCES}kernel_resources $l3pid > /tmp/kres0\n\
         i=1; failed=\n\
         while [ $i -le {CYCLES} ] && [ -z \"$failed\" ]; do\n\
           t0=$(cut -d' ' -f1 /proc/uptime)\n\
           out=$($R {add} 2>&1) || {{ failed=\"add $i: $out\"; break; }}\n\
           [ $i = 1 ] && {{ echo \"$out\" | grep -q '\"bdf\": *\"0001:00:00.0\"'; l2_check api-add-bdf $? \"{verb} answered: $out\"; }}\n\
           wait_marker \"@@HOTPLUG present $i \" 120 || {{ failed=\"cycle $i: the guest never saw the device\"; break; }}\n\
           l2_say \"@@L2LOG cycle $i: added at $t0, seen by $(cut -d' ' -f1 /proc/uptime)\"\n\
           [ $i = 1 ] && kernel_resources $l3pid > /tmp/kresp\n\
           if [ $i = 2 ]; then\n\
             :\n\
             {second}\
           fi\n\
           out=$($R remove-device gpu0 2>&1) || {{ failed=\"remove $i: $out\"; break; }}\n\
           wait_marker \"@@HOTPLUG gone $i\" 120 || {{ failed=\"cycle $i: the device never left the guest\"; break; }}\n\
           if [ $i = 1 ]; then\n\
             $R info > /tmp/info1.json\n\
             kernel_resources $l3pid > /tmp/kres1\n\
             {first}\
           fi\n\
           i=$((i + 1))\n\
         done\n\
         [ -z \"$failed\" ]\n\
         l2_check api-cycles $? \"$failed\"\n\
         $R info > /tmp/info2.json\n\
         kernel_resources $l3pid > /tmp/kres2\n\
         l2_say \"@@L2LOG after cycle 1: fds {fds1} slots {slots1} rss {rss1} KiB; after {CYCLES}: fds {fds2} slots {slots2} rss {rss2} KiB\"\n\
         [ -n \"{fds1}\" ] && [ -n \"{slots1}\" ] && [ \"{fds1}\" = \"{fds2}\" ] && [ \"{slots1}\" = \"{slots2}\" ]\n\
         l2_check hotplug-no-leak $? \"open fds {fds1} -> {fds2}, KVM memory slots {slots1} -> {slots2} over {n} cycles\"\n\
         {leaks}",
        verb = add.split_whitespace().next().unwrap_or(add),
        first = indent(after_first),
        second = indent(at_second),
        n = CYCLES - 1,
        leaks = leak_checks(),
    )
}

/// The checks `cycles_script` and the guest (`ghvmm.vfio=hotplug`) report.
pub(crate) const CYCLE_CHECKS: &[&str] = &[
    "hotplug-ready",
    "api-add-bdf",
    "hotplug-arrive",
    "hotplug-bdf",
    "hotplug-depart",
    "hotplug-cycles",
    "api-cycles",
    "hotplug-no-leak",
    "leak-fds",
    "leak-maps",
    "leak-rss",
];

fn hotplug_gh_scenario() -> Scenario {
    let len = GH_LENGTHS[0];
    let l3 = L3::new(BOOT_VMM, 2, "512M")
        .cmdline(&format!(
            "ghvmm.vfio=hotplug ghvmm.gh_mode=kernel_pads ghvmm.gh_len={len} \
             ghvmm.cycles={CYCLES} ghvmm.bdf=0001:00:00.0 ghvmm.numa=report"
        ))
        .vmm_args(
            "--gh slots=1 --platform num_pci_segments=2 --api-socket path=/tmp/api.sock --event-monitor path=/tmp/events.json",
        );
    let script = format!(
        "{bind}{start}\
         $R ping > /dev/null\n\
         l2_check api-ping $? 'vmm.ping failed'\n\
         {cycles}\
         finish_l3 120\n\
         l2_check vmm-exit $rc \"ghvmm: $why (expected exit code 0)\"\n\
         {events}",
        events = event_checks(),
        bind = bind_variant("kernel_pads", len, ""),
        start = start_api_guest(&l3.command()),
        cycles = cycles_script(
            // Cloud Hypervisor's spelling of GH slot 0 (the other scenarios use gh_slot=0).
            "add-device path=$IVSHMEM,id=gpu0,pci_segment=1",
            &error_checks(),
            &expect_status(
                "api-duplicate",
                "PUT",
                "/api/v1/vm.add-device",
                "{\"path\": \"'$IVSHMEM'\", \"id\": \"gpu1\"}",
                409,
                "already attached",
            ),
        ),
    );
    let mut expect = [L3_CHECKS, GH_DEVICE_CHECKS, NUMA_CHECKS, CYCLE_CHECKS].concat();
    expect.extend([
        "api-ping",
        "api-duplicate",
        "api-malformed-json",
        "api-unknown-field",
        "api-wrong-type",
        "api-missing-path",
        "api-unknown-endpoint",
        "api-wrong-method",
        "api-unknown-id",
        "api-not-vfio",
        "api-no-such-slot",
        "api-no-such-segment",
        "events-hotplug",
        "events-lifecycle",
    ]);
    // The nodes reserved at boot, and the SRAT naming the address the device arrived at.
    let numa = NumaExpect::gh("0-1", 1, 8, 20);
    Scenario {
        setup: script,
        l3: None,
        expect,
        acpi: true,
        host_checks: Some(Box::new(move |_, d, t| {
            let mut v = gh_file_checks_for(d, len);
            v.extend(numa_checks(&numa, d, t));
            v
        })),
        timeout: std::time::Duration::from_secs(420),
        ..Scenario::boot(
            "hotplug-gh",
            "--gh slots=1 and no GPU: ghvmm-remote adds the GPU-like device to slot 0 (BAR checks, the reserved BDF), removes it, 21 cycles without leaking fds or KVM slots, API errors",
            l3,
        )
    }
}

/// Shell: the `--event-monitor` file ghvmm wrote (/tmp/events.json, Cloud Hypervisor's
/// pretty-printed events) once it has exited: one device-added (the first at the GH slot's
/// BDF) and one device-removed per cycle, the API's refusals none (`events-hotplug`), and the
/// boot and shutdown around them (`events-lifecycle`).
fn event_checks() -> String {
    format!(
        r#"count_event() {{ grep -c "\"event\": \"$1\"" /tmp/events.json; }}
added=$(count_event device-added); removed=$(count_event device-removed)
l2_say "@@FACT events $(count_event booted) booted, $added device-added, $removed device-removed, $(count_event shutdown) shutdown"
[ "$added" = {CYCLES} ] && [ "$removed" = {CYCLES} ] && grep -q '"bdf": "0001:00:00.0"' /tmp/events.json
l2_check events-hotplug $? "device-added $added, device-removed $removed times (want {CYCLES} each, bdf 0001:00:00.0)"
[ "$(count_event booting)" = 1 ] && [ "$(count_event booted)" = 1 ] && [ "$(count_event shutdown)" = 2 ]
l2_check events-lifecycle $? "booting $(count_event booting), booted $(count_event booted), shutdown (vm and vmm) $(count_event shutdown) (want 1, 1, 2)"
"#
    )
}

/// The hot-plug scenarios, in run order.
pub fn all() -> Vec<Scenario> {
    vec![hotplug_gh_scenario()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shell_test::{sh_stdout, ShellChecks};

    #[test]
    fn the_script_drives_ghvmm_through_the_api() {
        let s = hotplug_gh_scenario();
        let sh = s.script();
        assert!(sh.contains("start_l3 /bin/ghvmm --kernel"));
        assert!(sh.contains(
            "--gh slots=1 --platform num_pci_segments=2 --api-socket path=/tmp/api.sock"
        ));
        assert!(sh.contains("add-device path=$IVSHMEM,id=gpu0,pci_segment=1"));
        assert!(sh.contains("ghvmm.cycles=21"));
        assert!(sh.contains("finish_l3 120"));
        // Every L2 check the script reports is expected, and vice versa for api-* checks.
        for check in s.expect.iter().filter(|c| c.starts_with("api-")) {
            assert!(sh.contains(&format!("l2_check {check} ")), "{check}");
        }
    }

    /// Runs `leak_checks` in the host's sh over the given `kernel_resources` lines (before,
    /// present, after the first, after the last); returns the checks' lines.
    fn leaks(kres: [&str; 4]) -> Vec<String> {
        let sh = ShellChecks::new("leak");
        for (name, line) in ["kres0", "kresp", "kres1", "kres2"].iter().zip(kres) {
            sh.write(name, line);
        }
        let checks = leak_checks().replace("/tmp/", &sh.path(""));
        sh.run(&checks, &["leak-"])
    }

    #[test]
    fn leak_checks_judge_the_kernels_figures() {
        let ok = ["10 0 1000", "12 1 500000", "10 0 528116", "10 0 528140"];
        assert_eq!(
            leaks(ok),
            ["leak-fds PASS", "leak-maps PASS", "leak-rss PASS"]
        );
        let fail = |kres, check: &str| {
            let out = leaks(kres);
            assert!(
                out.iter().any(|l| l.starts_with(&format!("{check} FAIL"))),
                "{out:?}"
            );
        };
        fail(
            ["10 0 1000", "12 1 500000", "10 0 528116", "11 0 528140"],
            "leak-fds",
        );
        fail(
            ["10 0 1000", "12 1 500000", "10 0 528116", "10 1 528140"],
            "leak-maps",
        );
        // Nothing seen while present: the pattern no longer names the device's mappings.
        fail(
            ["10 0 1000", "12 0 500000", "10 0 528116", "10 0 528140"],
            "leak-maps",
        );
        fail(
            ["10 0 1000", "12 1 500000", "10 0 528116", "10 0 529141"],
            "leak-rss",
        );
        // A missing snapshot is a failure, never a pass.
        fail(
            ["", "12 1 500000", "10 0 528116", "10 0 528140"],
            "leak-fds",
        );
    }

    /// Runs `event_checks` in the host's sh over an events file with `cycles` add/remove
    /// pairs, written as ghvmm writes it; returns the checks' lines.
    fn events(cycles: u32, shutdowns: u32) -> Vec<String> {
        let checks = ShellChecks::new("events");
        // As ghvmm writes them: Cloud Hypervisor's pretty-printed object and an empty line.
        let ev = |source: &str, event: &str, properties: serde_json::Value| {
            let e = serde_json::json!({
                "timestamp": {"secs": 1, "nanos": 2},
                "source": source,
                "event": event,
                "properties": properties,
            });
            serde_json::to_string_pretty(&e).unwrap() + "\n\n"
        };
        let none = serde_json::Value::Null;
        let mut text = ev("vmm", "starting", none.clone())
            + &ev("vm", "booting", none.clone())
            + &ev("vm", "booted", none.clone());
        for _ in 0..cycles {
            text += &ev(
                "vm",
                "device-added",
                serde_json::json!({"bdf": "0001:00:00.0", "id": "gpu0"}),
            );
            text += &ev("vm", "device-removed", serde_json::json!({"id": "gpu0"}));
        }
        for source in ["vm", "vmm"].iter().take(shutdowns as usize) {
            text += &ev(source, "shutdown", none.clone());
        }
        std::fs::write(checks.path("events.json"), text).unwrap();
        let fragment = event_checks().replace("/tmp/events.json", &checks.path("events.json"));
        checks.run(&fragment, &["events-"])
    }

    #[test]
    fn event_checks_count_the_events_ghvmm_wrote() {
        assert_eq!(
            events(CYCLES, 2),
            ["events-hotplug PASS", "events-lifecycle PASS"]
        );
        let out = events(CYCLES - 1, 2);
        assert!(
            out[0].starts_with("events-hotplug FAIL device-added 20"),
            "{out:?}"
        );
        let out = events(CYCLES, 1);
        assert!(out[1].starts_with("events-lifecycle FAIL"), "{out:?}");
    }

    #[test]
    fn kernel_resources_gives_three_numbers() {
        let text = sh_stdout(&format!("{KERNEL_RESOURCES}kernel_resources $$"));
        let n: Vec<u64> = text
            .split_whitespace()
            .map(|w| w.parse().unwrap())
            .collect();
        assert_eq!(n.len(), 3, "{text}");
        assert!(n[0] >= 3 && n[2] > 0, "{text}");
    }

    #[test]
    fn status_checks_match_the_status_and_text() {
        let sh = expect_status("x", "GET", "/p", "", 404, "nosuch");
        assert!(sh.contains("\"404 \"*\"nosuch\"*) r=0"));
        assert!(json_number("/f", "open_fds").contains("open_fds"));
    }
}
