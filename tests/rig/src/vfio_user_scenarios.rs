//! The vfio-user scenarios (`vfio-user-*`): in L2 a device is served by `ghvmm-vfio-user`
//! (vfio-user-server/, docs/vfio-user.md) and ghvmm uses it through `--user-device` (or
//! `add-user-device`), with its guest RAM in a shared memfd. The GPU-like test device gets the
//! `vfio-gh-*` checks, and proof that a copy into its mapped range reaches neither process
//! while one padding read reaches each exactly once: the guest stops at gates
//! (tests/checker/src/gate.rs) where L2 reads both processes' access counters (`gates`).

use crate::gates::{gate_counter_checks_call, gated, gated_boot, padding_read, GATE_HELPERS};
use crate::gh_scenarios::{numa_checks, NumaExpect, NUMA_CHECKS};
use crate::hotplug_scenarios::{cycles_script, start_api_guest, CYCLES, CYCLE_CHECKS};
use crate::l3::L3;
use crate::scenario::{Scenario, BOOT_VMM, L3_CHECKS, NO_ACPI_DUMP};
use crate::vfio_scenarios::{
    bind_variant, gh_file_checks_for, nic_qemu_args, nic_setup, GH_DEVICE_CHECKS, GH_LENGTHS,
    NIC_CHECKS,
};

/// The server's socket for the GPU-like device, and for the NIC.
const GPU_SOCKET: &str = "/tmp/gpu.sock";
const NIC_SOCKET: &str = "/tmp/nic.sock";
/// The lengths of the vfio-user GPU-like scenarios: not a multiple of 2 MiB.
const VU_LEN: u64 = GH_LENGTHS[1];
const _: () = assert!(!VU_LEN.is_multiple_of(2 << 20));

/// Shell functions of every vfio-user scenario (defined at the top of its /scenario.sh after
/// `gates::GATE_HELPERS`, beside tests/l2/init's `start_l3`, `wait_marker`, `l2_check`...).
///
/// - `vu_start DEVICE SOCKET [ARGS...]`: ghvmm-vfio-user serves DEVICE (a sysfs path) on
///   SOCKET in the background, its stdout and stderr in `$VU_LOG`, its pid in `$vupid`;
///   waits (30 s at most) for the socket and reports `vu-server-up` (the socket exists with
///   mode 0600).
/// - `vu_counters FILE`: sends the server SIGUSR1 and waits (10 s at most) for a new
///   `counters {...}` line in its log; the object goes to FILE. Fails when none came.
///   `gate_open` calls it at a counted gate while the server runs.
/// - `vu_resources N`: fds and maps lines of ghvmm (`$l3pid`) and of the server, in
///   /tmp/resN, their maps in /tmp/mapsN.{ghvmm,server}.
/// - `vu_stop`: SIGTERM to the server; it must exit 0 and remove its socket (`vu-server-stop`);
///   the tail of its log follows as `@@L2LOG vu:` lines.
pub const HELPERS: &str = r#"VU_LOG=/tmp/vu.log
VU_COUNTER_TICKS=100
vu_alive() {
    vu_st=$(cut -d' ' -f3 /proc/$vupid/stat 2>/dev/null) && [ -n "$vu_st" ] && [ "$vu_st" != Z ]
}
vu_log_tail() {
    tail -n 3 $VU_LOG 2>/dev/null | tr '\n' ' ' | head -c 400
}
vu_start() {
    vu_dev=$1; VU_SOCK=$2; shift 2
    rm -f $VU_SOCK
    /bin/ghvmm-vfio-user --device path=$vu_dev --socket $VU_SOCK "$@" > $VU_LOG 2>&1 < /dev/null &
    vupid=$!
    vu_n=0
    while [ ! -S $VU_SOCK ] && [ $vu_n -lt 300 ] && vu_alive; do sleep 0.1; vu_n=$((vu_n + 1)); done
    [ -S $VU_SOCK ] && [ "$(ls -l $VU_SOCK | cut -c1-10)" = srw------- ]
    l2_check vu-server-up $? "no socket $VU_SOCK with mode 0600 after $((vu_n / 10))s ($(ls -l $VU_SOCK 2>&1)): $(vu_log_tail)"
}
vu_counter_lines() {
    vu_c=$(grep -c 'counters {.*}' $VU_LOG 2>/dev/null)
    echo ${vu_c:-0}
}
vu_counters() {
    vu_before=$(vu_counter_lines)
    : > $1
    kill -USR1 $vupid 2>/dev/null || return 1
    vu_n=0
    while [ "$(vu_counter_lines)" -le "$vu_before" ]; do
        [ $vu_n -ge $VU_COUNTER_TICKS ] && return 1
        sleep 0.1; vu_n=$((vu_n + 1))
    done
    grep 'counters {.*}' $VU_LOG | tail -n 1 | sed 's/^.*counters {/{/' > $1
}
vu_resources() {
    cp /proc/$l3pid/maps /tmp/maps$1.ghvmm 2>/dev/null
    cp /proc/$vupid/maps /tmp/maps$1.server 2>/dev/null
    echo "ghvmm fds $(ls /proc/$l3pid/fd | wc -l) maps $(wc -l < /tmp/maps$1.ghvmm), server fds $(ls /proc/$vupid/fd | wc -l) maps $(wc -l < /tmp/maps$1.server)" > /tmp/res$1
}
vu_stop() {
    kill -TERM $vupid 2>/dev/null
    vu_n=0
    while vu_alive && [ $vu_n -lt 100 ]; do sleep 0.1; vu_n=$((vu_n + 1)); done
    vu_alive && kill -9 $vupid
    wait $vupid
    vu_rc=$?
    [ $vu_rc = 0 ] && [ ! -e $VU_SOCK ]
    l2_check vu-server-stop $? "ghvmm-vfio-user ended with $vu_rc on SIGTERM; socket: $(ls -l $VU_SOCK 2>&1)"
    tail -n 40 $VU_LOG | while read -r vu_line; do l2_say "@@L2LOG vu: $vu_line"; done
}
"#;

/// The L2 checks of `HELPERS` every scenario reports.
const SERVER_CHECKS: &[&str] = &["vu-server-up", "vu-server-stop"];

/// What the gated guest and `vu_counter_checks` report.
const COUNTER_CHECKS: &[&str] = &[
    "vu-gates",
    "gh-copy",
    "gh-gate",
    "copy-no-access-ghvmm",
    "copy-no-access-server",
    "padding-read-counted-ghvmm",
    "padding-read-counted-server",
];

/// Every helper a vfio-user scenario's script starts with.
fn helpers() -> String {
    format!("{GATE_HELPERS}{HELPERS}")
}

/// `--user-device` for the GPU-like device's socket, as id gpu0.
fn user_device() -> String {
    format!("--user-device socket={GPU_SOCKET},id=gpu0")
}

/// A guest of 2 vCPUs and 512M in a memfd (a vfio-user server maps it for DMA).
fn shared_guest(cmdline: &str, vmm_args: &str) -> L3 {
    L3::new(BOOT_VMM, 2, "512M")
        .shared_memory()
        .cmdline(cmdline)
        .vmm_args(vmm_args)
}

fn short_mode(mode: &str) -> &str {
    mode.trim_end_matches("_pads")
}

/// vfio-user-gh-<vmm|kernel>-40M12K: the GPU-like device through the server, with the
/// `vfio-gh-*` checks and the counters at the gates.
fn gh_scenario(mode: &'static str) -> Scenario {
    let len = VU_LEN;
    let name: &'static str = Box::leak(
        format!(
            "vfio-user-gh-{}-{}M{}K",
            short_mode(mode),
            len >> 20,
            (len >> 10) & 1023
        )
        .into_boxed_str(),
    );
    let l3 = gated(shared_guest(
        &format!("ghvmm.vfio=gh ghvmm.gh_mode={mode} ghvmm.gh_len={len} {NO_ACPI_DUMP}"),
        &user_device(),
    ));
    let mut expect = [L3_CHECKS, GH_DEVICE_CHECKS, SERVER_CHECKS, COUNTER_CHECKS].concat();
    // A user device without shared guest memory is refused at start (once is enough).
    let refused = if mode == "vmm_pads" {
        expect.push("user-device-needs-shared");
        format!(
            "expect_clean_failure user-device-needs-shared --kernel /l3/vmlinuz {}\n",
            user_device()
        )
    } else {
        String::new()
    };
    // ghvmm forwards the padding read to the server (its BAR is the server's power-of-two
    // region); the server answers it under VMM pads and forwards it to the kernel otherwise.
    let script = format!(
        "{helpers}{bind}\
         vu_start $IVSHMEM {GPU_SOCKET}\n\
         {refused}\
         {boot}\
         {ghvmm_checks}\
         {server_checks}\
         vu_stop\n",
        helpers = helpers(),
        bind = bind_variant(mode, len, ""),
        boot = gated_boot(&l3, "vu-gates"),
        ghvmm_checks = gate_counter_checks_call("-ghvmm", "gpu0", &padding_read(2, false)),
        server_checks =
            gate_counter_checks_call("-server", "", &padding_read(2, mode == "vmm_pads")),
    );
    let about = if mode == "vmm_pads" {
        "the GPU-like device (VMM pads) through ghvmm-vfio-user and --user-device: vfio-gh checks, a copy into the mapped range reaches neither process, one padding read reaches each once"
    } else {
        "the GPU-like device (kernel pads) through ghvmm-vfio-user and --user-device: vfio-gh checks, a copy into the mapped range reaches neither process, one padding read reaches each once"
    };
    Scenario {
        setup: script,
        l3: None,
        expect,
        // The boot is in `setup` (l3 is None): the length comes from here, not from the L3.
        host_checks: Some(Box::new(move |_, d, _| gh_file_checks_for(d, len))),
        timeout: std::time::Duration::from_secs(300),
        ..Scenario::boot(name, about, l3)
    }
}

/// vfio-user-kill: ghvmm killed with SIGKILL while its guest uses the device (held at gate 3,
/// after the copy and a padding read went through the server): the server lives on, lets go
/// of the client's memory and resets the device, and a second ghvmm passes every GH check.
fn kill_scenario() -> Scenario {
    let len = VU_LEN;
    let mode = "vmm_pads";
    let first = shared_guest(
        &format!(
            "ghvmm.vfio=gh ghvmm.gh_mode={mode} ghvmm.gh_len={len} ghvmm.gate=1 {NO_ACPI_DUMP}"
        ),
        &user_device(),
    );
    let second = shared_guest(
        &format!("ghvmm.vfio=gh ghvmm.gh_mode={mode} ghvmm.gh_len={len} {NO_ACPI_DUMP}"),
        &user_device(),
    );
    let ends = "grep -cE 'the client went away|the connection ended' $VU_LOG";
    let script = format!(
        "{helpers}{bind}\
         vu_start $IVSHMEM {GPU_SOCKET}\n\
         fds0=$(ls /proc/$vupid/fd | wc -l)\n\
         start_l3 {first}\n\
         gate_err=\n\
         gate_open 1 && gate_open 2 && {{ wait_marker '@@GATE 3 0x[0-9a-f]* wait' 240 || gate_err='the guest never reached gate 3'; }}\n\
         [ -z \"$gate_err\" ]\n\
         l2_check vu-kill-in-use $? \"$(early_why \"$gate_err\")\"\n\
         live=$(grep -c ' /memfd:ghvmm-ram' /proc/$vupid/maps)\n\
         ends=$({ends})\n\
         kill -9 $l3pid\n\
         finish_l3 30\n\
         [ $rc = 137 ]\n\
         l2_check vu-kill-killed $? \"$(early_why \"the first ghvmm ended with $why, not by SIGKILL\")\"\n\
         n=0\n\
         while [ \"$({ends})\" -le \"$ends\" ] && [ $n -lt 100 ] && vu_alive; do sleep 0.1; n=$((n + 1)); done\n\
         vu_alive && [ -S {GPU_SOCKET} ] && [ \"$({ends})\" -gt \"$ends\" ]\n\
         l2_check vu-kill-survives $? \"the server after its client's SIGKILL: running $(vu_alive && echo yes || echo no), socket $(ls {GPU_SOCKET} 2>&1): $(vu_log_tail)\"\n\
         maps=$(grep -c ' /memfd:ghvmm-ram' /proc/$vupid/maps)\n\
         fds=$(ls /proc/$vupid/fd | wc -l)\n\
         rel=\"the server mapped the client's RAM $live times during the session and $maps after it; it had $fds0 fds before the first client, $fds after\"\n\
         # A client that died by itself early may have gone before the server mapped its RAM:\n\
         # only then is no mapping during the session no result; a mapping left after is a bug.\n\
         [ \"$maps\" = 0 ] && [ \"$fds\" = \"$fds0\" ] && rel=$(early_why \"$rel\")\n\
         [ \"$live\" -gt 0 ] && [ \"$maps\" = 0 ] && [ \"$fds\" = \"$fds0\" ]\n\
         l2_check vu-kill-released $? \"$rel\"\n\
         if [ -e $IVSHMEM/reset_method ]; then\n\
           ! grep -qE 'reset after the client left|DMA unmap of|disabling interrupt' $VU_LOG\n\
         else\n\
           l2_say \"@@L2LOG $IVSHMEM has no reset method: the server's VFIO_DEVICE_RESET can only fail\"\n\
           ! grep -qE 'DMA unmap of|disabling interrupt' $VU_LOG\n\
         fi\n\
         l2_check vu-kill-reset $? \"the server's clean-up: $(grep -E 'reset after|DMA unmap of|disabling interrupt' $VU_LOG | head -n 2 | tr '\\n' ' ')\"\n\
         {second}\
         vu_stop\n",
        helpers = helpers(),
        bind = bind_variant(mode, len, ""),
        first = first.command(),
        second = second.script(),
    );
    let mut expect = [L3_CHECKS, GH_DEVICE_CHECKS, SERVER_CHECKS].concat();
    expect.extend([
        "vu-kill-in-use",
        "vu-kill-killed",
        "vu-kill-survives",
        "vu-kill-released",
        "vu-kill-reset",
    ]);
    Scenario {
        setup: script,
        l3: None,
        expect,
        host_checks: Some(Box::new(move |_, d, _| gh_file_checks_for(d, len))),
        timeout: std::time::Duration::from_secs(360),
        ..Scenario::boot(
            "vfio-user-kill",
            "ghvmm killed with SIGKILL while its guest uses the GPU-like device through the server: the server lets go and resets it, a second ghvmm passes every GH check",
            second,
        )
    }
}

/// vfio-user-hotplug: `CYCLES` add-user-device/remove-device cycles into GH slot 0 (the
/// hot-plug scenario's cycles and NUMA checks): neither ghvmm nor the server keeps a
/// descriptor, a mapping or a KVM slot of a removed device.
fn hotplug_scenario() -> Scenario {
    let len = VU_LEN;
    let mode = "kernel_pads";
    let l3 = shared_guest(
        &format!(
            "ghvmm.vfio=hotplug ghvmm.gh_mode={mode} ghvmm.gh_len={len} \
             ghvmm.cycles={CYCLES} ghvmm.bdf=0001:00:00.0 ghvmm.numa=report"
        ),
        "--gh slots=1 --api-socket path=/tmp/api.sock",
    );
    let script = format!(
        "{helpers}{bind}\
         vu_start $IVSHMEM {GPU_SOCKET}\n\
         {start}\
         {cycles}\
         vu_resources 2\n\
         l2_say \"@@L2LOG after cycle 1: $(cat /tmp/res1); after {CYCLES}: $(cat /tmp/res2)\"\n\
         [ -s /tmp/res1 ] && [ \"$(cat /tmp/res1)\" = \"$(cat /tmp/res2)\" ] && ! grep -q ' /memfd:ghvmm-ram' /tmp/maps2.server\n\
         r=$?\n\
         diff /tmp/maps1.ghvmm /tmp/maps2.ghvmm | grep '^[-+][0-9a-f]' | head -n 8 | while read -r l; do l2_say \"@@L2LOG ghvmm maps: $l\"; done\n\
         diff /tmp/maps1.server /tmp/maps2.server | grep '^[-+][0-9a-f]' | head -n 8 | while read -r l; do l2_say \"@@L2LOG server maps: $l\"; done\n\
         l2_check vu-no-leak $r \"after cycle 1: $(cat /tmp/res1); after {CYCLES}: $(cat /tmp/res2); guest RAM mappings left in the server: $(grep -c ' /memfd:ghvmm-ram' /tmp/maps2.server)\"\n\
         finish_l3 120\n\
         l2_check vmm-exit $rc \"ghvmm: $why (expected exit code 0)\"\n\
         vu_stop\n",
        helpers = helpers(),
        bind = bind_variant(mode, len, ""),
        start = start_api_guest(&l3.command()),
        cycles = cycles_script(
            &format!("add-user-device socket={GPU_SOCKET},id=gpu0,gh_slot=0"),
            "vu_resources 1\n",
            "",
        ),
    );
    let mut expect = [
        L3_CHECKS,
        GH_DEVICE_CHECKS,
        NUMA_CHECKS,
        CYCLE_CHECKS,
        SERVER_CHECKS,
    ]
    .concat();
    expect.push("vu-no-leak");
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
        timeout: std::time::Duration::from_secs(480),
        ..Scenario::boot(
            "vfio-user-hotplug",
            "--gh slots=1: add-user-device/remove-device of the GPU-like device through the server, 21 cycles; neither process keeps an fd, a mapping or a KVM slot; the GI nodes name the device",
            l3,
        )
    }
}

/// vfio-user-nic: the e1000e served by ghvmm-vfio-user: MSI-X interrupts and a ping over the
/// private link (DMA through the server's container).
fn nic_scenario() -> Scenario {
    let l3 = shared_guest(
        &format!("ghvmm.vfio=nic {NO_ACPI_DUMP}"),
        &format!("--user-device socket={NIC_SOCKET},id=nic0"),
    );
    let script = format!(
        "{helpers}{nic}\
         vu_start $NIC {NIC_SOCKET}\n\
         {boot}\
         vu_stop\n",
        helpers = helpers(),
        nic = nic_setup(),
        boot = l3.script(),
    );
    Scenario {
        setup: script,
        l3: None,
        expect: [L3_CHECKS, NIC_CHECKS, SERVER_CHECKS].concat(),
        qemu_args: nic_qemu_args(),
        ..Scenario::boot(
            "vfio-user-nic",
            "an e1000e served by ghvmm-vfio-user to ghvmm: its driver gets MSI-X interrupts and pings L2 over the private link (DMA through the server)",
            l3,
        )
    }
}

/// The vfio-user scenarios, in run order.
pub fn all() -> Vec<Scenario> {
    let v = vec![
        gh_scenario("vmm_pads"),
        gh_scenario("kernel_pads"),
        kill_scenario(),
        hotplug_scenario(),
        nic_scenario(),
    ];
    v.into_iter()
        .map(|s| if s.acpi { s } else { s.without_acpi_dump() })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shell_test::assert_parses;

    /// vu-kill-released as L2 runs it, after a first ghvmm that failed by itself (reaped
    /// with exit code 1 by wait_marker's `l3_gone`) or was killed while in use, with the
    /// figures given.
    fn released(ended: bool, live: u32, maps: u32, fds: u32) -> Vec<String> {
        let sh = kill_scenario().script();
        let from = sh.find("rel=").unwrap();
        let to = from + sh[from..].find("l2_check vu-kill-reset").unwrap();
        let fragment = format!(
            "{}l3pid=7\nl3_reaped={}\nl3_rc=1\nlive={live}\nmaps={maps}\nfds={fds}\nfds0=11\n{}",
            crate::shell_test::l2_init_functions(&["early_why"]),
            if ended { "7" } else { "" },
            &sh[from..to],
        );
        let fragment = &fragment[..fragment.find("\nif [ -e").unwrap_or(fragment.len())];
        crate::shell_test::ShellChecks::new("vu-released").run(fragment, &["vu-kill-released"])
    }

    #[test]
    fn released_is_no_result_only_when_the_first_client_died_before_it_was_mapped() {
        let early =
            "vu-kill-released FAIL the VMM ended by itself first (exit code 1): the server mapped";
        assert!(released(true, 0, 0, 11)[0].starts_with(early));
        // Mappings or fds left after the client are the server's bug however it ended.
        let left = "vu-kill-released FAIL the server mapped the client's RAM 0 times during the session and 2 after it";
        assert!(released(true, 0, 2, 11)[0].starts_with(left));
        assert!(released(true, 0, 0, 12)[0].starts_with("vu-kill-released FAIL the server"));
        // Killed while in use: no mapping during the session is the server's failure.
        assert!(released(false, 0, 0, 11)[0].starts_with("vu-kill-released FAIL the server"));
        assert_eq!(released(false, 3, 0, 11), ["vu-kill-released PASS"]);
    }

    #[test]
    fn names_and_lengths() {
        let names: Vec<_> = all().iter().map(|s| s.name).collect();
        assert_eq!(
            names,
            [
                "vfio-user-gh-vmm-40M12K",
                "vfio-user-gh-kernel-40M12K",
                "vfio-user-kill",
                "vfio-user-hotplug",
                "vfio-user-nic"
            ]
        );
    }

    #[test]
    fn every_guest_has_shared_memory_and_a_user_device() {
        for s in all() {
            let sh = s.script();
            let boots = sh.matches("/bin/ghvmm --kernel").count();
            assert!(boots >= 1, "{}", s.name);
            assert_eq!(sh.matches(",shared=on ").count(), boots, "{}", s.name);
            // Only the server opens the device (HELPERS' `--device` is the server's option).
            let body = sh.strip_prefix(&helpers()).unwrap();
            assert!(!body.contains("--device path="), "{}", s.name);
            assert!(sh.contains("vu_start $"), "{}", s.name);
            assert!(sh.ends_with("vu_stop\n"), "{}", s.name);
            // No guest dumps its tables except the hot-plug one, whose SRAT is checked.
            assert_eq!(s.acpi, s.name == "vfio-user-hotplug", "{}", s.name);
            assert_eq!(sh.contains(NO_ACPI_DUMP), !s.acpi, "{}", s.name);
        }
        let gh = gh_scenario("kernel_pads").script();
        assert!(gh.contains("mode=kernel_pads length=41955328"));
        assert!(gh.contains("--user-device socket=/tmp/gpu.sock,id=gpu0"));
        assert!(gh.contains("ghvmm.gate=1"));
        assert!(!gh.contains("user-device-needs-shared"));
        let vmm = gh_scenario("vmm_pads");
        let refused = vmm.script();
        assert!(refused.contains(
            "expect_clean_failure user-device-needs-shared --kernel /l3/vmlinuz --user-device socket=/tmp/gpu.sock,id=gpu0\n"
        ));
        assert!(vmm.expect.contains(&"user-device-needs-shared"));
        let hp = hotplug_scenario().script();
        assert!(hp.contains("$R add-user-device socket=/tmp/gpu.sock,id=gpu0,gh_slot=0 2>&1"));
        assert!(hp.contains("ghvmm.cycles=21"));
        let kill = kill_scenario().script();
        assert_eq!(
            kill.matches("ghvmm.gate=1").count(),
            1,
            "only the first guest"
        );
        assert!(kill.contains("kill -9 $l3pid"));
        assert!(kill.contains("run_l3 90 /bin/ghvmm"));
    }

    #[test]
    fn every_l2_check_is_expected() {
        for s in all() {
            let sh = s.script();
            let body = sh.strip_prefix(&helpers()).expect("the helpers come first");
            let mut reported: Vec<String> = SERVER_CHECKS.iter().map(|c| c.to_string()).collect();
            for word in body.split("l2_check ").skip(1) {
                reported.push(word.split_whitespace().next().unwrap().to_string());
            }
            for call in body.split("gate_counter_checks ").skip(1) {
                let suffix = call.split_whitespace().next().unwrap().trim_matches('"');
                reported.extend(crate::gates::counter_checks(suffix));
            }
            if body.contains("gates_counted ") {
                reported.push("vu-gates".into());
            }
            for name in &reported {
                assert!(
                    s.expect.contains(&name.as_str()),
                    "{}: {name} is reported but not expected",
                    s.name
                );
            }
        }
    }

    #[test]
    fn host_file_checks_know_the_length() {
        use crate::protocol::{Outcome, Transcript};
        use crate::vfio_scenarios::gh_patterns;
        let dir = std::env::temp_dir().join(format!("rig-vu-host-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut file = vec![0u8; 64 << 20];
        for (off, pat) in gh_patterns(VU_LEN) {
            file[off as usize..off as usize + 16].copy_from_slice(&pat);
        }
        std::fs::write(dir.join("ivshmem.bin"), &file).unwrap();
        let mut gpu = 0;
        for s in all() {
            let Some(checks) = &s.host_checks else {
                continue;
            };
            let got = checks(&s, &dir, &Transcript::default());
            let file = got.iter().find(|(n, _)| n == "host-file");
            assert_eq!(file.map(|(_, o)| o), Some(&Outcome::Pass), "{}", s.name);
            gpu += 1;
        }
        assert_eq!(
            gpu, 4,
            "every scenario with the GPU-like device checks the file"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Runs `body` after tests/l2/init's functions and HELPERS in the host's sh, with L2's
    /// paths moved into a scratch directory; returns stdout.
    fn run_shell(tag: &str, body: &str) -> String {
        let init =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../l2/init")).unwrap();
        // The functions only: from the first definition to the scenario's start.
        let from = init.find("l2_say() {").unwrap();
        let to = init.find("if [ -f /scenario.sh ]").unwrap();
        let dir = std::env::temp_dir().join(format!("rig-vu-sh-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = format!(
            "{}\n{HELPERS}\nVU_LOG={}/vu.log\n{body}",
            &init[from..to],
            dir.display()
        );
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .current_dir(&dir)
            .output()
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn every_script_parses() {
        for s in all() {
            assert_parses(s.name, &s.script());
        }
    }

    #[test]
    fn server_counters_come_from_a_new_line() {
        // A stand-in server: each SIGUSR1 adds a counters line (after an unrelated one).
        let out = run_shell(
            "new-line",
            r#"n=0
( trap 'n=$((n + 1)); echo "noise"; echo "counters {\"bar2.padding\":$n,\"bar2.forwarded\":1}" >&2' USR1
  echo "counters {\"bar2.padding\":99}" >&2
  while :; do sleep 0.05; done ) >> $VU_LOG 2>&1 &
vupid=$!
sleep 0.3
vu_counters c1 && cat c1
vu_counters c2 && cat c2
kill $vupid
"#,
        );
        assert_eq!(
            out,
            "{\"bar2.padding\":1,\"bar2.forwarded\":1}\n{\"bar2.padding\":2,\"bar2.forwarded\":1}\n"
        );
    }

    #[test]
    fn no_counters_line_fails() {
        let out = run_shell(
            "no-line",
            r#"VU_COUNTER_TICKS=5
( trap '' USR1; while :; do sleep 0.05; done ) &
vupid=$!
sleep 0.2
if vu_counters c1; then echo got; else echo none; fi
kill $vupid
"#,
        );
        assert!(out.ends_with("none\n"), "{out}");
    }
}
