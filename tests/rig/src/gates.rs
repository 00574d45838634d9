//! The counted gates of the GPU-like device scenarios (`vfio-gh-*` through kernel VFIO,
//! `vfio-user-gh-*` through ghvmm-vfio-user): the guest (`ghvmm.gate=1`,
//! tests/checker/src/gh.rs `gated_copy`) stops before its copy of the whole real range into
//! the mapped BAR, after it, and after exactly one 4-byte padding read; at each gate L2 reads
//! ghvmm's `vm.counters` (and the server's counters when one runs), then opens the gate by
//! writing into ghvmm's shared guest RAM (`checker poke-ram`). No timing is involved, so a
//! copy that trapped even once shows as a moved counter.

use crate::l3::L3;

/// ghvmm's API socket in a gated scenario: L2 reads `vm.counters` through it.
pub const API_SOCKET: &str = "/tmp/api.sock";

/// Shell functions of a gated scenario (after tests/l2/init's `start_l3`, `wait_marker`,
/// `l2_check`...; `$R` is `ghvmm-remote` on ghvmm's API socket):
///
/// - `gate_open P [count]`: waits for the guest at gate P (`@@GATE P <gpa> wait`); with
///   `count`, first puts ghvmm's `vm.counters` in /tmp/gcP.json and, when a vfio-user server
///   runs (`$vupid`, vfio_user_scenarios::HELPERS' `vu_counters`), its counters in
///   /tmp/scP.json; then opens the gate (`checker poke-ram`). Sets `$gate_err` on failure.
/// - `gates_counted CHECK`: the three gates, counted; reports CHECK (every gate opened).
/// - `gate_counter_checks SUFFIX WHO FILES ID WANT`: from the gate files FILES1..3.json (of
///   device ID in ghvmm's answer, or the server's flat object when ID is empty), reports
///   `copy-no-access<SUFFIX>` (no counter of any kind or BAR moved from gate 1 to gate 2) and
///   `padding-read-counted<SUFFIX>` (from gate 2 to gate 3 exactly WANT moved, e.g.
///   `bar2.padding +1`, and nothing else), each with what moved (`checker counters-delta`).
pub const GATE_HELPERS: &str = r#"GATE_CHECKER=/bin/checker
gate_open() {
    wait_marker "@@GATE $1 0x[0-9a-f]* wait" 240 || { gate_err="the guest never reached gate $1"; return 1; }
    gate_gpa=$(grep -o "@@GATE $1 0x[0-9a-f]* wait" /tmp/l3.out | tail -n 1 | cut -d' ' -f3)
    if [ -n "$2" ]; then
        $R counters > /tmp/gc$1.json 2>&1
        if [ -n "$vupid" ]; then vu_counters /tmp/sc$1.json; fi
    fi
    devmaps_snap $l3pid
    $GATE_CHECKER poke-ram $l3pid $gate_gpa $1 2> /tmp/poke.err || { l3_running || l3_gone; gate_err="gate $1 at $gate_gpa: $(cat /tmp/poke.err)"; return 1; }
}
gates_counted() {
    gate_err=
    gate_open 1 count && gate_open 2 count && gate_open 3 count
    l2_check $1 $? "$gate_err"
}
gate_counter_checks() {
    gc_sfx=$1; gc_who=$2; gc_f=$3; gc_id=$4; gc_want=$5
    for p in 1 2 3; do
        l2_say "@@L2LOG $gc_who counters at gate $p: $(tr -d '\n' < $gc_f$p.json 2>/dev/null | head -c 600)"
    done
    gc_copy=$($GATE_CHECKER counters-delta ${gc_f}1.json ${gc_f}2.json $gc_id 2>&1)
    [ $? = 0 ] && [ "$gc_copy" = none ]
    l2_check copy-no-access$gc_sfx $? "$gc_who's counters moved by the copy into the mapped range: $gc_copy (want none)"
    gc_pad=$($GATE_CHECKER counters-delta ${gc_f}2.json ${gc_f}3.json $gc_id 2>&1)
    [ $? = 0 ] && [ "$gc_pad" = "$gc_want" ]
    l2_check padding-read-counted$gc_sfx $? "$gc_who's counters moved by one padding read: $gc_pad (want exactly $gc_want)"
}
"#;

/// The checks `gate_counter_checks` reports with `suffix`.
pub fn counter_checks(suffix: &str) -> [String; 2] {
    [
        format!("copy-no-access{suffix}"),
        format!("padding-read-counted{suffix}"),
    ]
}

/// Shell: `gate_counter_checks` for ghvmm's device `id` (the server's counters when `id` is
/// empty), wanting `want` from the padding read.
pub fn gate_counter_checks_call(suffix: &str, id: &str, want: &str) -> String {
    let (who, files) = if id.is_empty() {
        ("server", "/tmp/sc")
    } else {
        ("ghvmm", "/tmp/gc")
    };
    format!("gate_counter_checks \"{suffix}\" {who} {files} \"{id}\" \"{want}\"\n")
}

/// What one 4-byte padding read of BAR `bar` moves in a process that answers it itself
/// (`answers`: ghvmm's padding under VMM pads, the server's) or passes it on (the kernel
/// pads, or ghvmm in front of a server).
pub fn padding_read(bar: usize, answers: bool) -> String {
    let kind = if answers { "padding" } else { "forwarded" };
    format!("bar{bar}.{kind} +1")
}

/// A guest of `l3` made gated: `ghvmm.gate=1` on its command line, its RAM in a memfd (the
/// gates are opened through it) and the API socket (the counters are read through it).
pub fn gated(l3: L3) -> L3 {
    let cmdline = format!("{} ghvmm.gate=1", l3.cmdline);
    let args = format!("--api-socket path={API_SOCKET} {}", l3.vmm_args);
    l3.cmdline(cmdline.trim())
        .vmm_args(args.trim())
        .shared_memory()
}

/// Shell: boots `l3` (made `gated`) in the background, opens its three gates counting at
/// each (reporting `gates_check`), waits for it to end (reporting `vmm-exit`).
pub fn gated_boot(l3: &L3, gates_check: &str) -> String {
    format!(
        "start_l3 {cmd}\n\
         R=\"/bin/ghvmm-remote --api-socket {API_SOCKET}\"\n\
         gates_counted {gates_check}\n\
         finish_l3 120\n\
         l2_check vmm-exit $rc \"ghvmm: $why (expected exit code 0)\"\n",
        cmd = l3.command(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::l3::Vmm;

    #[test]
    fn a_gated_guest_has_the_gate_shared_memory_and_the_api() {
        let l3 = gated(
            L3::new(Vmm::Ghvmm, 2, "512M")
                .cmdline("ghvmm.vfio=gh")
                .vmm_args("--device path=$IVSHMEM,id=gpu0"),
        );
        let c = l3.command();
        assert!(c.contains("ghvmm.vfio=gh ghvmm.gate=1\""), "{c}");
        assert!(c.contains("--memory size=512M,shared=on "), "{c}");
        assert!(
            c.ends_with("--api-socket path=/tmp/api.sock --device path=$IVSHMEM,id=gpu0"),
            "{c}"
        );
        let boot = gated_boot(&l3, "counter-gates");
        assert!(boot.starts_with("start_l3 /bin/ghvmm "));
        assert!(boot.contains("gates_counted counter-gates\nfinish_l3 120\n"));
    }

    #[test]
    fn padding_reads_name_the_counter() {
        assert_eq!(padding_read(2, true), "bar2.padding +1");
        assert_eq!(padding_read(2, false), "bar2.forwarded +1");
        assert_eq!(
            counter_checks("-server"),
            ["copy-no-access-server", "padding-read-counted-server"]
        );
    }

    /// Runs `body` after tests/l2/init's functions and GATE_HELPERS in the host's sh, in a
    /// scratch directory; returns stdout.
    fn run_shell(tag: &str, body: &str) -> String {
        let init =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../l2/init")).unwrap();
        let from = init.find("l2_say() {").unwrap();
        let to = init.find("if [ -f /scenario.sh ]").unwrap();
        let dir = std::env::temp_dir().join(format!("rig-gates-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = format!("{}\n{GATE_HELPERS}\n{body}", &init[from..to]);
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

    /// `gate_counter_checks` with a stand-in checker whose `counters-delta A B` prints the
    /// content of B.delta.
    #[test]
    fn counter_checks_want_nothing_then_exactly_one() {
        let out = run_shell(
            "checks",
            r#"printf '#!/bin/sh\ncat "$3.delta"\n' > fake-checker
chmod +x fake-checker
GATE_CHECKER=$PWD/fake-checker
for p in 1 2 3; do echo "{}" > f$p.json; done
echo none > f2.json.delta
echo "bar2.padding +1" > f3.json.delta
gate_counter_checks "" ghvmm f gpu0 "bar2.padding +1" | grep L2CHECK
echo "bar2.forwarded +10240" > f2.json.delta
echo "bar2.padding +1, config +1" > f3.json.delta
gate_counter_checks -x ghvmm f gpu0 "bar2.padding +1" | grep L2CHECK
"#,
        );
        assert_eq!(
            out,
            "@@L2CHECK copy-no-access PASS\n\
             @@L2CHECK padding-read-counted PASS\n\
             @@L2CHECK copy-no-access-x FAIL ghvmm's counters moved by the copy into the mapped range: bar2.forwarded +10240 (want none)\n\
             @@L2CHECK padding-read-counted-x FAIL ghvmm's counters moved by one padding read: bar2.padding +1, config +1 (want exactly bar2.padding +1)\n"
        );
    }

    /// tests/l2/init's `seccomp_report` over a stand-in dmesg: one failing check per thread
    /// name and syscall number however often the kernel logged it; PASS when it logged none.
    #[test]
    fn seccomp_violations_are_failing_l2_checks() {
        let line = |comm: &str, nr: u32| {
            format!(
                "[   12.5] audit: type=1326 audit(1796575852.825:1): auid=4294967295 uid=0 \
                 gid=0 ses=4294967295 pid=77 comm=\"{comm}\" exe=\"/bin/ghvmm\" sig=0 \
                 arch=c000003e syscall={nr} compat=0 ip=0x7f846e007829 code=0x7ffc0000"
            )
        };
        let lines = [
            line("vcpu0", 16),
            "[   12.6] audit: type=1400 something else".to_string(),
            line("ghvmm-api", 41),
            line("vcpu0", 16),
        ];
        let stub = |lines: &[String]| {
            let quoted: Vec<String> = lines.iter().map(|l| format!("'{l}'")).collect();
            format!(
                "dmesg() {{ printf '%s\\n' {}; }}\nseccomp_report",
                quoted.join(" ")
            )
        };
        assert_eq!(
            run_shell("seccomp", &stub(&lines)),
            "@@L2CHECK seccomp FAIL ghvmm-api:41\n@@L2CHECK seccomp FAIL vcpu0:16\n"
        );
        assert_eq!(
            run_shell("seccomp-none", &stub(&lines[1..2])),
            "@@L2CHECK seccomp PASS\n"
        );
    }
}
