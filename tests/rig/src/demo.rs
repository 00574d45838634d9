//! `cargo xtask demo`: what ghvmm is for, shown from inside an L3 guest. L2 binds two ivshmem
//! functions to the GPU-like variant driver (VMM pads, a length that is not a power of two)
//! and boots ghvmm with `--gh slots=2`, the first device in slot 0. The guest (the checker in
//! `ghvmm.mode=demo`, tests/checker/src/demo.rs) shows the device as lspci does, its real
//! length against its BAR, its NUMA nodes and distances, and the padding; then L2 hot-adds
//! the second device to slot 1 with `ghvmm-remote add-device`, removes it, and does the same
//! through `ghvmm-vfio-user` and `add-user-device`. Every step is a check: the demo fails
//! when one does.

use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use crate::demo_view::{failures, render};
use crate::gates::GATE_HELPERS;
use crate::hotplug_scenarios::start_api_guest;
use crate::l3::{Vmm, L3};
use crate::scale_scenarios::bind_all_variant;
use crate::setup::say;
use crate::vfio_scenarios::GH_LENGTHS;
use crate::vfio_user_scenarios::HELPERS as VU_HELPERS;
use crate::{images, prepare, scenario_dir, L2Boot};

/// The contract and real length shown: VMM pads, 40 MiB + 12 KiB in a 64 MiB BAR.
const MODE: &str = "vmm_pads";
const LEN: u64 = GH_LENGTHS[1];
const _: () = assert!(!LEN.is_power_of_two());
/// GH slots: the boot device in slot 0, the hot-added one in slot 1.
const SLOTS: u32 = 2;
/// Hot plugs: through ghvmm-remote, then through ghvmm-vfio-user.
const HOTPLUGS: u32 = 2;
/// L2's two ivshmem functions (the BARs behind the GPU-like devices).
const IVSHMEM: &[u64] = &[64 << 20, 64 << 20];
/// Where ghvmm-vfio-user serves the second device.
const VU_SOCKET: &str = "/tmp/gpu.sock";
/// Seconds L2 waits for each guest marker.
const MARKER_WAIT_S: u32 = 120;
/// The whole run: L2 and L3 boot, two hot plugs; a TCG hang ends here.
const TIMEOUT: Duration = Duration::from_secs(300);
/// The goal for a built tree's run.
const GOAL: Duration = Duration::from_secs(120);

/// The checks a demo run must pass: L2's (binding, API answers, the server, letting the
/// guest power off once ghvmm answered the last removal, exit codes, seccomp) and the
/// guest's (tests/checker/src/demo.rs).
pub const CHECKS: &[&str] = &[
    "kvm",
    "vfio-bind",
    "vfio-bind1",
    "hotplug-ready",
    "demo-device",
    "demo-length",
    "demo-numa",
    "demo-padding",
    "demo-remote-add",
    "demo-hotplug-1",
    "demo-remote-remove",
    "vu-server-up",
    "demo-user-add",
    "demo-hotplug-2",
    "demo-user-remove",
    "demo-release",
    "vmm-exit",
    "vu-server-stop",
    "seccomp",
];

/// Shell function `demo_step NAME STATUS REASON`: reports the L2 check NAME from STATUS and
/// remembers the first failure in `$demo_failed`, after which the later steps do not run
/// (each would wait for a guest that cannot answer).
const DEMO_STEP: &str = r#"demo_failed=
demo_step() {
    [ "$2" = 0 ] || demo_failed=${demo_failed:-$1}
    l2_check $1 $2 "$3"
}
"#;

/// The guest: 2 vCPUs, 512M in a memfd (the vfio-user server maps it), the GH profile with
/// the first device in slot 0, and the API socket for the hot plugs.
fn guest() -> L3 {
    L3::new(Vmm::Ghvmm, 2, "512M")
        .shared_memory()
        .cmdline(&format!(
            "ghvmm.mode=demo ghvmm.gh_mode={MODE} ghvmm.gh_len={LEN} ghvmm.gh_slots={SLOTS} \
             ghvmm.cycles={HOTPLUGS}"
        ))
        .vmm_args(&format!(
            "--gh slots={SLOTS} --device path=$IVSHMEM,id=gpu0,gh_slot=0 \
             --api-socket path=/tmp/api.sock"
        ))
}

/// Shell: one hot plug into slot 1, each half only while no step failed: say what L2 runs, `add` (a ghvmm-remote command) with the
/// guest seeing the device (check `add_check`), ghvmm's answer, then `remove-device id` with the
/// guest seeing it go (check `remove_check`) and, when another plug follows, waiting for the
/// guest to be ready for it. L2 speaks only while the guest waits, so that their lines do not
/// mix on the console.
fn hotplug(n: u32, add: &str, id: &str, add_check: &str, remove_check: &str) -> String {
    let next = if n < HOTPLUGS {
        format!(
            " && wait_marker '@@HOTPLUG ready {}' {MARKER_WAIT_S}",
            n + 1
        )
    } else {
        String::new()
    };
    format!(
        "if [ -z \"$demo_failed\" ]; then\n\
         echo \"@@DEMOL2 ghvmm-remote {add}\"\n\
         out=$($R {add} 2>&1) && wait_marker '@@HOTPLUG present {n} ' {MARKER_WAIT_S}\n\
         r=$?; out=$(echo \"$out\" | tr '\\n' ' ' | tr -s ' ')\n\
         echo \"@@DEMOL2 ghvmm answered: $out\"\n\
         demo_step {add_check} $r \"{add_verb} answered: $out; or the guest never saw the device\"\n\
         fi\n\
         if [ -z \"$demo_failed\" ]; then\n\
         echo \"@@DEMOL2 ghvmm-remote remove-device {id}\"\n\
         out=$($R remove-device {id} 2>&1) && wait_marker '@@HOTPLUG gone {n}' {MARKER_WAIT_S}{next}\n\
         r=$?; out=$(echo \"$out\" | tr '\\n' ' ' | tr -s ' ')\n\
         demo_step {remove_check} $r \"remove-device {id} answered: $out; or the device never left the guest\"\n\
         fi\n",
        add_verb = add.split_whitespace().next().unwrap_or(add),
    )
}

/// L2's /scenario.sh for the demo.
pub fn script() -> String {
    let l3 = guest();
    format!(
        "{GATE_HELPERS}{VU_HELPERS}{DEMO_STEP}\
         echo \"@@DEMOL2 the GPU-like variant driver ({MODE}, length {LEN}) takes both ivshmem functions\"\n\
         {bind}\
         echo \"@@DEMOL2 ghvmm --gh slots={SLOTS} --device path=$IVSHMEM,id=gpu0,gh_slot=0 --api-socket path=/tmp/api.sock ...\"\n\
         {start}\
         grep -q '@@HOTPLUG ready' /tmp/l3.out || demo_failed=hotplug-ready\n\
         {remote}\
         if [ -z \"$demo_failed\" ]; then\n\
         echo \"@@DEMOL2 ghvmm-vfio-user --device path=$IVSHMEM1 --socket {VU_SOCKET} (in the background)\"\n\
         vu_start $IVSHMEM1 {VU_SOCKET}\n\
         fi\n\
         {user}\
         if [ -z \"$demo_failed\" ]; then\n\
         gate_err=; gate_open 1\n\
         demo_step demo-release $? \"$gate_err\"\n\
         fi\n\
         [ -n \"$demo_failed\" ] && kill $l3pid 2>/dev/null\n\
         finish_l3 {MARKER_WAIT_S}\n\
         l2_check vmm-exit $rc \"ghvmm: $why (expected exit code 0)\"\n\
         [ -n \"$vupid\" ] && vu_stop\n",
        bind = bind_all_variant(MODE, LEN, 2),
        start = start_api_guest(&l3.command()),
        remote = hotplug(
            1,
            "add-device path=$IVSHMEM1,id=gpu1,gh_slot=1",
            "gpu1",
            "demo-remote-add",
            "demo-remote-remove"
        ),
        user = hotplug(
            2,
            &format!("add-user-device socket={VU_SOCKET},id=gpu2,gh_slot=1"),
            "gpu2",
            "demo-user-add",
            "demo-user-remove"
        ),
    )
}

pub fn demo(root: &Path) -> Result<bool> {
    let prep = prepare(root)?;
    say("booting L2 (QEMU TCG); inside it ghvmm boots the L3 guest whose lines follow");
    let dir = scenario_dir(&prep.paths, "demo");
    let color = std::io::stdout().is_terminal();
    let overlays = [images::scenario_overlay(&script())];
    let boot = L2Boot {
        ivshmem: IVSHMEM,
        ..L2Boot::new(&overlays, TIMEOUT)
    };
    let (t, finished, took) = boot.boot_watched(&prep, &dir, &mut |line| {
        if let Some(shown) = render(line, color) {
            println!("{shown}");
        }
    })?;
    let bad = failures(&t, finished, CHECKS);
    let log = dir.join("console.log");
    if bad.is_empty() {
        say(&format!(
            "demo passed: {} checks in {:.1}s{}",
            CHECKS.len(),
            took.as_secs_f64(),
            if took > GOAL {
                format!(" (over the {} s goal)", GOAL.as_secs())
            } else {
                String::new()
            }
        ));
    } else {
        say(&format!(
            "demo FAILED in {:.1}s ({} problems):",
            took.as_secs_f64(),
            bad.len()
        ));
        for b in &bad {
            say(&format!("  {b}"));
        }
    }
    say(&format!("full log: {}", log.display()));
    Ok(bad.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shell_test::{assert_parses, sh_stdout};

    #[test]
    fn the_script_boots_the_gh_profile_and_plugs_twice() {
        let sh = script();
        assert!(sh.contains(
            "insmod /lib/modules/extra/ghvmm_test_vfio.ko mode=vmm_pads length=41955328"
        ));
        assert!(sh.contains("l2_check vfio-bind1"));
        assert!(sh.contains("start_l3 /bin/ghvmm --kernel"));
        assert!(sh.contains("--memory size=512M,shared=on"));
        assert!(sh.contains(
            "--gh slots=2 --device path=$IVSHMEM,id=gpu0,gh_slot=0 --api-socket path=/tmp/api.sock"
        ));
        assert!(sh.contains("ghvmm.mode=demo ghvmm.gh_mode=vmm_pads ghvmm.gh_len=41955328 ghvmm.gh_slots=2 ghvmm.cycles=2"));
        assert!(sh.contains("out=$($R add-device path=$IVSHMEM1,id=gpu1,gh_slot=1 2>&1)"));
        assert!(sh.contains("vu_start $IVSHMEM1 /tmp/gpu.sock"));
        assert!(
            sh.contains("out=$($R add-user-device socket=/tmp/gpu.sock,id=gpu2,gh_slot=1 2>&1)")
        );
        assert!(sh.contains("wait_marker '@@HOTPLUG ready 2' 120"));
        // The remote plug comes before the vfio-user one.
        assert!(sh.find("add-device path").unwrap() < sh.find("add-user-device").unwrap());
        // Every L2 check the script itself (after the shared helpers) reports is one the demo
        // requires.
        let own = &sh[sh.find(DEMO_STEP).unwrap() + DEMO_STEP.len()..];
        for line in own.lines() {
            for word in ["demo_step ", "l2_check "] {
                if let Some(rest) = line.trim().strip_prefix(word) {
                    let name = rest.split_whitespace().next().unwrap();
                    if name.starts_with('$') {
                        continue; // demo_step's own body
                    }
                    assert!(
                        CHECKS.contains(&name),
                        "{name} is reported but not required"
                    );
                }
            }
        }
    }

    /// Runs the demo's step logic in the host's sh: `steps` are (name, exit status) pairs; the
    /// output is what l2_check said of each.
    fn run_steps(steps: &[(&str, u8)]) -> Vec<String> {
        let mut sh = format!(
            "l2_check() {{ if [ \"$2\" = 0 ]; then echo \"$1 PASS\"; else echo \"$1 FAIL $3\"; fi; }}\n{DEMO_STEP}"
        );
        for (name, status) in steps {
            sh += &format!(
                "if [ -z \"$demo_failed\" ]; then demo_step {name} {status} 'it failed'; fi\n"
            );
        }
        sh += "echo \"first failure: $demo_failed\"\n";
        sh_stdout(&sh).lines().map(String::from).collect()
    }

    #[test]
    fn a_failed_step_stops_the_later_ones() {
        assert_eq!(
            run_steps(&[("a", 0), ("b", 0)]),
            ["a PASS", "b PASS", "first failure: "]
        );
        assert_eq!(
            run_steps(&[("a", 0), ("b", 1), ("c", 0)]),
            ["a PASS", "b FAIL it failed", "first failure: b"]
        );
    }

    /// Runs one `hotplug` step in the host's sh with ghvmm-remote answering `answer` (several
    /// lines) with exit status `status`; the guest's markers always come.
    fn run_hotplug(answer: &str, status: u8) -> Vec<String> {
        let sh = format!(
            "l2_check() {{ if [ \"$2\" = 0 ]; then echo \"@@L2CHECK $1 PASS\"; else echo \"@@L2CHECK $1 FAIL $3\"; fi; }}\n\
             wait_marker() {{ return 0; }}\n\
             fake_remote() {{ printf '{answer}'; return {status}; }}\n\
             R=fake_remote\n{DEMO_STEP}{}echo \"first failure: $demo_failed\"\n",
            hotplug(1, "add-device path=/x,id=g,gh_slot=1", "g", "add", "remove")
        );
        sh_stdout(&sh).lines().map(String::from).collect()
    }

    #[test]
    fn a_hot_plug_reports_one_line_per_check() {
        let ok = run_hotplug("{\\n  \"bdf\": \"0002:00:00.0\"\\n}\\n", 0);
        assert!(ok.contains(&"@@L2CHECK add PASS".to_string()), "{ok:?}");
        assert!(ok.contains(&"@@L2CHECK remove PASS".to_string()), "{ok:?}");
        assert!(
            ok.iter()
                .any(|l| l.contains("ghvmm answered: { \"bdf\": \"0002:00:00.0\" }")),
            "{ok:?}"
        );
        let bad = run_hotplug("error: 400:\\nnot a VFIO driver\\n", 1);
        assert!(
            bad.contains(&"@@L2CHECK add FAIL add-device answered: error: 400: not a VFIO driver ; or the guest never saw the device".to_string()),
            "{bad:?}"
        );
        assert!(!bad.iter().any(|l| l.contains("remove")), "{bad:?}");
        assert_eq!(bad.last().map(String::as_str), Some("first failure: add"));
    }

    #[test]
    fn the_script_parses() {
        assert_parses("the demo's script", &script());
    }
}
