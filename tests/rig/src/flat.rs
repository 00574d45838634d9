//! "Stays flat" checks from the host's side: L2 reads ghvmm's open descriptors, mappings and
//! resident memory from /proc at two points and compares them. The figures are the kernel's,
//! never ghvmm's own counts, so a leak ghvmm does not know about still shows.

/// Shell function `proc_figures PID`: four numbers, the process's open descriptors
/// (/proc/PID/fd), its mappings (lines of /proc/PID/maps), those naming a VFIO device, and
/// its VmRSS in KiB.
pub const PROC_FIGURES: &str = r#"proc_figures() {
    echo "$(ls /proc/$1/fd | wc -l) $(wc -l < /proc/$1/maps) $(grep -c vfio-device /proc/$1/maps) $(grep VmRSS /proc/$1/status | tr -dc 0-9)"
}
"#;

/// Shell: transparent huge pages off in L2, whose Debian kernel has them `always`: a huge
/// page fault or khugepaged's collapse of a partly used range adds 2 MiB to VmRSS at once,
/// which is no leak (a soak run saw VmRSS +2056 KiB between cycle 1 and cycle 100 with the
/// same mappings, where the run before saw +24 KiB).
pub const THP_OFF: &str = "echo never > /sys/kernel/mm/transparent_hugepage/enabled\n";

/// Shell: reports `<prefix>-fds`, `<prefix>-maps` and `<prefix>-rss` from two `proc_figures`
/// lines in the files `before` and `after`: the same descriptor count, the same mapping
/// counts (all and VFIO), VmRSS grown by at most `rss_tolerance_kib`. `what` says when the
/// second was taken, for the failure reasons. A missing figure fails, never passes.
pub fn flat_checks(
    prefix: &str,
    what: &str,
    before: &str,
    after: &str,
    rss_tolerance_kib: u64,
) -> String {
    format!(
        r#"ff0= fm0= fv0= fr0= ff1= fm1= fv1= fr1=
read -r ff0 fm0 fv0 fr0 < {before}; read -r ff1 fm1 fv1 fr1 < {after}
l2_say "@@FACT {prefix}-figures fds $ff0 $ff1 maps $fm0 $fm1 vfio-maps $fv0 $fv1 rss-kib $fr0 $fr1"
[ -n "$ff0" ] && [ "$ff0" = "$ff1" ]
l2_check {prefix}-fds $? "ghvmm has $ff1 open descriptors {what}, $ff0 before"
[ -n "$fm0" ] && [ -n "$fv0" ] && [ "$fm0" = "$fm1" ] && [ "$fv0" = "$fv1" ]
l2_check {prefix}-maps $? "ghvmm has $fm1 mappings ($fv1 of a VFIO device) {what}, $fm0 ($fv0) before"
[ -n "$fr0" ] && [ -n "$fr1" ] && [ $((fr1 - fr0)) -le {rss_tolerance_kib} ]
l2_check {prefix}-rss $? "ghvmm's VmRSS went from $fr0 KiB to $fr1 KiB {what} (tolerance +{rss_tolerance_kib} KiB)"
"#
    )
}

/// Shell function `figures_at_gate P SECONDS FILE`: waits up to SECONDS for the guest at gate
/// P, writes `proc_figures` of ghvmm to FILE, then opens the gate (`gates::GATE_HELPERS`'
/// `gate_open`, without reading ghvmm's counters: an API call between two readings would
/// start a connection thread, whose stack glibc keeps mapped). Sets `$gate_err` on failure.
pub const FIGURES_AT_GATE: &str = r#"figures_at_gate() {
    wait_marker "@@GATE $1 0x[0-9a-f]* wait" $2 || { gate_err="the guest never reached gate $1 within $2 s"; return 1; }
    proc_figures $l3pid > $3
    gate_open $1
}
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shell_test::{sh_stdout, ShellChecks};

    /// Runs `flat_checks` in the host's sh over two `proc_figures` lines; returns the checks'
    /// lines.
    fn judge(before: &str, after: &str, tolerance: u64) -> Vec<String> {
        let sh = ShellChecks::new("flat");
        let checks = flat_checks(
            "x",
            "after",
            &sh.write("a", before),
            &sh.write("b", after),
            tolerance,
        );
        sh.run(&checks, &["x-"])
    }

    #[test]
    fn flat_figures_pass_and_any_growth_fails() {
        assert_eq!(
            judge("12 140 4 528000", "12 140 4 528256", 256),
            ["x-fds PASS", "x-maps PASS", "x-rss PASS"]
        );
        assert_eq!(
            judge("12 140 4 528000", "12 140 4 520000", 256)[2],
            "x-rss PASS"
        );
        let failed = |after: &str| -> Vec<String> {
            judge("12 140 4 528000", after, 256)
                .into_iter()
                .filter(|l| l.contains(" FAIL "))
                .collect()
        };
        let f = failed("13 140 4 528000");
        assert!(
            f.len() == 1
                && f[0].starts_with("x-fds FAIL ghvmm has 13 open descriptors after, 12 before"),
            "{f:?}"
        );
        assert!(failed("12 141 4 528000")[0].starts_with("x-maps FAIL"));
        assert!(failed("12 140 5 528000")[0].starts_with("x-maps FAIL"));
        let f = failed("12 140 4 528257");
        assert_eq!(
            f,
            ["x-rss FAIL ghvmm's VmRSS went from 528000 KiB to 528257 KiB after (tolerance +256 KiB)"]
        );
        // A reading that was never taken fails every check, even after another comparison
        // set the same shell variables.
        let sh = ShellChecks::new("flat-missing");
        let a = sh.write("a", "12 140 4 528000");
        let missing = sh.path("missing");
        let script = format!(
            "{}{}",
            flat_checks("x", "after", &a, &a, 256),
            flat_checks("y", "after", &a, &missing, 256)
        );
        // The verdicts only: the reasons name the empty figures.
        let lines: Vec<String> = sh
            .run(&script, &["x-", "y-"])
            .iter()
            .map(|l| l.splitn(3, ' ').take(2).collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(
            lines,
            [
                "x-fds PASS",
                "x-maps PASS",
                "x-rss PASS",
                "y-fds FAIL",
                "y-maps FAIL",
                "y-rss FAIL"
            ]
        );
        // A missing reading fails every check.
        assert_eq!(
            judge("", "12 140 4 528000", 256)
                .iter()
                .filter(|l| l.contains(" FAIL"))
                .count(),
            3
        );
    }

    #[test]
    fn proc_figures_gives_four_numbers() {
        let text = sh_stdout(&format!("{PROC_FIGURES}proc_figures $$"));
        let n: Vec<u64> = text
            .split_whitespace()
            .map(|w| w.parse().unwrap())
            .collect();
        assert_eq!(n.len(), 4, "{text}");
        assert!(n[0] >= 3 && n[1] > 0 && n[3] > 0, "{text}");
    }
}
