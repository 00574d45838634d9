//! Reboots in the same ghvmm (`boot-reboot`, `vfio-reboot`). The guest reboots itself after
//! its checks (`ghvmm.action=reboot`) on every boot; it cannot tell one boot from the next (no
//! storage), so L2 counts the boots on the console (`@@INIT`, `@@DONE`) and steers: once the
//! first boot has started it asks for a reboot through the API (`vm.reboot`), the second boot
//! then ends with the guest's own reboot, and once the third boot has reported its checks L2
//! shuts the VM down through the API (landing during the guest's next reboot or just after,
//! which must end ghvmm with 0 all the same). L2 compares ghvmm's descriptor count and VmRSS
//! at the first and the third boot's `@@INIT`, and requires one ghvmm process throughout.

use crate::l3::L3;
use crate::scenario::{Scenario, BOOT_VMM, L3_CHECKS, NO_ACPI_DUMP};
use crate::vfio_scenarios::{
    bind_ivshmem, bind_variant, gh_file_checks_for, GH_DEVICE_CHECKS, GH_LENGTHS, IVSHMEM_CHECKS,
};

/// Boots L2 waits for, in all.
pub const BOOTS: u32 = 3;
/// How many more descriptors the third boot may have than the first (none expected; a
/// connection of L2's own requests may still be closing).
pub const FD_SLACK: u32 = 2;
/// How much more VmRSS (KiB) the third boot may have: guest RAM the kernel touched by
/// `@@INIT` differs a little from boot to boot; a leaked VM would be the whole guest RAM.
pub const RSS_SLACK_KIB: u32 = 16 << 10;

/// The checks the script reports, besides the standard ones.
pub const REBOOT_CHECKS: &[&str] = &[
    "reboot-first-boot",
    "reboot-api",
    "reboot-boots",
    "reboot-same-pid",
    "reboot-info-running",
    "reboot-fds",
    "reboot-rss",
    "reboot-checks-done",
    "reboot-shutdown",
];

/// Shell: helpers over L3's console and ghvmm's /proc.
/// (`count` says 0 before tee has created the file: an empty count would end `wait_count`.)
const HELPERS: &str =
    "count() { c=$(grep -c -- \"$1\" /tmp/l3.out 2>/dev/null); echo \"${c:-0}\"; }\n\
    wait_count() {\n\
        t=0\n\
        while [ \"$(count \"$1\")\" -lt $2 ]; do\n\
            [ $t -ge $(($3 * 10)) ] && return 1\n\
            l3_running || return 1\n\
            sleep 0.1; t=$((t + 1))\n\
        done\n\
    }\n\
    fds() { ls /proc/$l3pid/fd | wc -l; }\n\
    rss() { awk '/^VmRSS:/ { print $2 }' /proc/$l3pid/status; }\n";

/// The whole L2 script around `command` (a ghvmm with `--api-socket path=/tmp/api.sock`);
/// `setup` runs first (device binding), `started` once ghvmm runs.
fn script(setup: &str, command: &str, started: &str) -> String {
    let (boots, fd_slack, rss_slack) = (BOOTS, FD_SLACK, RSS_SLACK_KIB);
    format!(
        "{setup}{HELPERS}\
         start_l3 {command}\n\
         R=\"/bin/ghvmm-remote --api-socket /tmp/api.sock\"\n\
         {started}\
         wait_count @@INIT 1 120\n\
         l2_check reboot-first-boot $? 'the guest never printed @@INIT'\n\
         fd1=$(fds); rss1=$(rss)\n\
         $R reboot > /tmp/reboot.out 2>&1\n\
         l2_check reboot-api $? \"ghvmm-remote reboot: $(cat /tmp/reboot.out)\"\n\
         wait_count @@INIT {boots} 240\n\
         l2_check reboot-boots $? \"$(count @@INIT) boots on the console within 240 s (want {boots})\"\n\
         fd3=$(fds); rss3=$(rss); done2=$(count @@DONE)\n\
         pids=$(pidof ghvmm)\n\
         [ \"$pids\" = \"$l3pid\" ]\n\
         l2_check reboot-same-pid $? \"ghvmm processes: $pids (started as $l3pid)\"\n\
         $R info > /tmp/info.json 2>&1\n\
         grep -q '\"state\": \"Running\"' /tmp/info.json\n\
         l2_check reboot-info-running $? \"vm.info after the reboots: $(grep state /tmp/info.json)\"\n\
         l2_say \"@@FACT reboot-footprint boot 1: $fd1 fds, VmRSS $rss1 kB; boot {boots}: $fd3 fds, VmRSS $rss3 kB\"\n\
         [ -n \"$fd3\" ] && [ \"$fd3\" -le $((fd1 + {fd_slack})) ]\n\
         l2_check reboot-fds $? \"descriptors: $fd1 at the first boot, $fd3 at boot {boots}\"\n\
         [ -n \"$rss3\" ] && [ \"$rss3\" -le $((rss1 + {rss_slack})) ]\n\
         l2_check reboot-rss $? \"VmRSS: $rss1 kB at the first boot, $rss3 kB at boot {boots}\"\n\
         wait_count @@DONE $((done2 + 1)) 240\n\
         l2_check reboot-checks-done $? \"boot {boots} did not report all its checks within 240 s ($(count @@DONE) @@DONE in all)\"\n\
         $R shutdown > /tmp/shutdown.out 2>&1\n\
         l2_check reboot-shutdown $? \"ghvmm-remote shutdown: $(cat /tmp/shutdown.out)\"\n\
         finish_l3 120\n\
         l2_check vmm-exit $rc \"ghvmm: $why (expected exit code 0)\"\n"
    )
}

/// A scenario whose L3 guest reboots under `script`; `setup`, `cmdline` and `vmm_args` as
/// for its plain counterpart.
fn reboot_scenario(
    name: &'static str,
    about: &'static str,
    (setup, started): (&str, &str),
    cmdline: &str,
    vmm_args: &str,
    more: &[&'static str],
) -> Scenario {
    let l3 = L3::new(BOOT_VMM, 2, "512M")
        .cmdline(&format!("ghvmm.action=reboot {NO_ACPI_DUMP} {cmdline}"))
        .vmm_args(&format!("--api-socket path=/tmp/api.sock {vmm_args}"));
    Scenario {
        setup: script(setup, &l3.command(), started),
        l3: None,
        expect: [L3_CHECKS, REBOOT_CHECKS, more].concat(),
        timeout: std::time::Duration::from_secs(600),
        ..Scenario::boot(name, about, l3)
    }
    .without_acpi_dump()
}

pub fn boot_reboot() -> Scenario {
    reboot_scenario(
        "boot-reboot",
        "vm.reboot, then the guest's own reboot: three boots in one ghvmm (same pid, same descriptors and VmRSS), then vm.shutdown exits 0",
        ("", ""),
        "",
        "",
        &[],
    )
}

fn vfio_reboot() -> Scenario {
    reboot_scenario(
        "vfio-reboot",
        "boot-reboot with L2's ivshmem passed through on vfio-pci: the device is there with its BARs on every boot (closed and opened again by each reboot)",
        (&bind_ivshmem("vfio-pci"), ""),
        "ghvmm.vfio=ivshmem",
        "--device path=$IVSHMEM,id=shm0",
        IVSHMEM_CHECKS,
    )
}

/// The checks of `hotplug-reboot` besides the ivshmem ones.
const HOT_ADD_CHECKS: &[&str] = &["hotadd-api", "hotadd-kept"];

/// Shell, once ghvmm runs: hot-adds `device` (`add-device`'s argument) as soon as the API
/// socket is there (the guest's kernel is still booting: it finds the device at its PCI
/// scan, or through the hot-plug notification if the scan came first).
fn hot_add(device: &str) -> String {
    format!(
        "t=0; while [ ! -S /tmp/api.sock ] && [ $t -lt 600 ]; do sleep 0.1; t=$((t + 1)); done\n\
         $R add-device {device} > /tmp/add.out 2>&1\n\
         l2_check hotadd-api $? \"ghvmm-remote add-device: $(cat /tmp/add.out)\"\n"
    )
}

/// Adds to `s`, at the third boot's `@@INIT` (the VM runs: not during the guest's next
/// reboot, when `vm.info` lists no device): `vm.info` lists the hot-added device (its
/// `"id": "ID"` line and `text`).
fn hot_added_kept(mut s: Scenario, id: &str, text: &str) -> Scenario {
    s.setup = s.setup.replace(
        "l2_say \"@@FACT reboot-footprint",
        &format!(
            "$R info > /tmp/info3.json 2>&1\n\
             grep -q '\"id\": \"{id}\"' /tmp/info3.json && grep -q -- '{text}' /tmp/info3.json\n\
             l2_check hotadd-kept $? \"vm.info after the reboots: $(tr -d '\\n' < /tmp/info3.json | tail -c 600)\"\n\
             l2_say \"@@FACT reboot-footprint"
        ),
    );
    s
}

fn hotplug_reboot() -> Scenario {
    let s = reboot_scenario(
        "hotplug-reboot",
        "boot-reboot with L2's ivshmem hot-added (vm.add-device) while the first boot starts: it is there with its BARs on the boots after the reboots",
        (&bind_ivshmem("vfio-pci"), &hot_add("path=$IVSHMEM,id=shm0")),
        "ghvmm.vfio=ivshmem",
        "",
        &[IVSHMEM_CHECKS, HOT_ADD_CHECKS].concat(),
    );
    hot_added_kept(s, "shm0", "shm0")
}

/// The GPU-like device's length in `gh-reboot`.
const GH_REBOOT_LEN: u64 = GH_LENGTHS[0];

/// The GPU-like device hot-added into GH slot 0: each reboot must put it back in its slot
/// (segment 1), where the guest's GH checks look for it.
fn gh_reboot() -> Scenario {
    let len = GH_REBOOT_LEN;
    let s = reboot_scenario(
        "gh-reboot",
        "boot-reboot with --gh slots=1 and the GPU-like device hot-added into slot 0 while the first boot starts: it is back in its slot (0001:00:00.0) with its BAR checks passing after the reboots",
        (
            &bind_variant("kernel_pads", len, ""),
            &hot_add("path=$IVSHMEM,id=gpu0,gh_slot=0"),
        ),
        &format!("ghvmm.vfio=gh ghvmm.gh_mode=kernel_pads ghvmm.gh_len={len}"),
        "--gh slots=1",
        &[GH_DEVICE_CHECKS, HOT_ADD_CHECKS].concat(),
    );
    Scenario {
        host_checks: Some(Box::new(move |_, d, _| gh_file_checks_for(d, len))),
        ..hot_added_kept(s, "gpu0", "0001:00:00.0")
    }
}

/// The server's socket in `vfio-user-reboot`.
const USER_SOCKET: &str = "/tmp/shm.sock";

/// L2's ivshmem served by ghvmm-vfio-user: each reboot closes the connection (the server
/// resets the device for the next client) and the next VM connects again.
fn vfio_user_reboot() -> Scenario {
    let setup = format!(
        "{}{}{}vu_start $IVSHMEM {USER_SOCKET}\n",
        crate::gates::GATE_HELPERS,
        crate::vfio_user_scenarios::HELPERS,
        bind_ivshmem("vfio-pci"),
    );
    let mut s = reboot_scenario(
        "vfio-user-reboot",
        "boot-reboot with L2's ivshmem served by ghvmm-vfio-user (--user-device): the next VM connects again and the device passes its checks on every boot",
        (&setup, ""),
        "ghvmm.vfio=ivshmem",
        &format!("--user-device socket={USER_SOCKET},id=shm0"),
        &[IVSHMEM_CHECKS, &["vu-server-up", "vu-server-stop"]].concat(),
    );
    // A server maps the guest's memory: it must be shared.
    s.setup = s
        .setup
        .replace("--memory size=512M", "--memory size=512M,shared=on");
    s.setup.push_str("vu_stop\n");
    s
}

pub fn all() -> Vec<Scenario> {
    vec![
        vfio_reboot(),
        hotplug_reboot(),
        vfio_user_reboot(),
        gh_reboot(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_check_the_script_reports_is_expected() {
        for s in [
            boot_reboot(),
            vfio_reboot(),
            hotplug_reboot(),
            vfio_user_reboot(),
            gh_reboot(),
        ] {
            let sh = s.script();
            assert!(sh.contains("--api-socket path=/tmp/api.sock"), "{}", s.name);
            assert!(sh.contains("ghvmm.action=reboot"), "{}", s.name);
            for check in REBOOT_CHECKS {
                assert!(sh.contains(&format!("l2_check {check} ")), "{check}");
                assert!(s.expected().contains(check), "{check}");
            }
            assert_eq!(sh.matches("l2_check reboot-").count(), REBOOT_CHECKS.len());
            assert!(!s.expected().contains(&"acpi-dump"));
        }
        let g = gh_reboot();
        assert!(g
            .script()
            .contains("add-device path=$IVSHMEM,id=gpu0,gh_slot=0"));
        assert!(g.script().contains("grep -q -- '0001:00:00.0'"));
        assert!(g.expected().contains(&"host-file") && g.host_checks.is_some());
        let h = hotplug_reboot();
        for c in HOT_ADD_CHECKS {
            assert!(h.script().contains(&format!("l2_check {c} ")), "{c}");
            assert!(h.expected().contains(c), "{c}");
        }
        assert!(!h.script().contains("--device"));
        let u = vfio_user_reboot().script();
        assert!(u.contains("--memory size=512M,shared=on"), "{u}");
        assert!(u.contains("--user-device socket=/tmp/shm.sock,id=shm0"));
        assert!(u.contains("vu_start $IVSHMEM /tmp/shm.sock") && u.ends_with("vu_stop\n"));
        let v = vfio_reboot();
        assert!(v.script().contains("--device path=$IVSHMEM,id=shm0"));
        for c in IVSHMEM_CHECKS {
            assert!(v.expected().contains(c), "{c}");
        }
    }
}
