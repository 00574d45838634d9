//! What `cargo xtask demo` shows of L2's console, and its verdict. The console carries the
//! whole run (console.log keeps it); the terminal gets the guest's `@@DEMO` lines, L2's
//! `@@DEMOL2` narration, L2 coming up and every failing check, nothing else.

use crate::protocol::{Outcome, Transcript};

/// ANSI bold cyan for the guest's lines, bold for L2's, red for failures (on a terminal).
const GUEST_STYLE: &str = "\x1b[1;36m";
const L2_STYLE: &str = "\x1b[1m";
const FAIL_STYLE: &str = "\x1b[1;31m";
const RESET: &str = "\x1b[0m";

fn styled(text: String, style: &str, color: bool) -> String {
    if color {
        format!("{style}{text}{RESET}")
    } else {
        text
    }
}

/// The terminal line for one console line, or None for the log only. Like the transcript,
/// the last `@@` record on a line counts (a record may follow an unfinished line).
pub fn render(raw: &str, color: bool) -> Option<String> {
    let line = raw.trim_end_matches(['\r', '\n']);
    let rec = &line[line.rfind("@@")? + 2..];
    let (kind, rest) = rec.split_once(' ').unwrap_or((rec, ""));
    match kind {
        "DEMO" => Some(styled(format!("  guest | {rest}"), GUEST_STYLE, color)),
        "DEMOL2" => Some(styled(format!("  L2    | {rest}"), L2_STYLE, color)),
        "L2" if rest.starts_with("up ") => Some(format!(
            "  L2    | up ({} s of L2's uptime); loading KVM and VFIO",
            rest.trim_start_matches("up ").trim()
        )),
        "CHECK" | "L2CHECK" => {
            let (name, verdict) = rest.split_once(' ')?;
            let reason = verdict.strip_prefix("FAIL")?;
            Some(styled(
                format!("  FAIL  | {name}:{reason}"),
                FAIL_STYLE,
                color,
            ))
        }
        _ => None,
    }
}

/// What went wrong in a demo run: every expected check that failed, was skipped or never
/// came, every unexpected check that failed, and an unfinished L2. Empty when it all worked.
pub fn failures(t: &Transcript, finished: bool, expected: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    if !finished || !t.l2_done {
        out.push("L2 did not finish (timeout or crash)".to_string());
    }
    for name in expected {
        let outcomes: Vec<&Outcome> = t
            .checks
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, o)| o)
            .collect();
        if outcomes.is_empty() {
            out.push(format!("{name}: never reported"));
        }
        for o in outcomes {
            match o {
                Outcome::Pass => {}
                Outcome::Fail(why) => out.push(format!("{name}: {why}")),
                Outcome::Skip(why) => out.push(format!("{name}: skipped ({why})")),
            }
        }
    }
    for (name, o) in &t.checks {
        if let (false, Outcome::Fail(why)) = (expected.contains(&name.as_str()), o) {
            out.push(format!("{name}: {why}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_demo_lines_and_failures_reach_the_terminal() {
        assert_eq!(
            render("@@DEMO 0001:00:00.0 RAM memory [0500]\r\n", false).as_deref(),
            Some("  guest | 0001:00:00.0 RAM memory [0500]")
        );
        assert_eq!(render("@@DEMO", false).as_deref(), Some("  guest | "));
        assert_eq!(
            render("@@DEMOL2 ghvmm-remote remove-device gpu1", false).as_deref(),
            Some("  L2    | ghvmm-remote remove-device gpu1")
        );
        assert_eq!(
            render("[ 1.0] half a line@@DEMO the rest", true).as_deref(),
            Some("\x1b[1;36m  guest | the rest\x1b[0m")
        );
        assert_eq!(
            render("@@L2CHECK demo-user-add FAIL no answer", false).as_deref(),
            Some("  FAIL  | demo-user-add: no answer")
        );
        assert!(render("@@L2 up 3.52", false).unwrap().contains("3.52 s"));
        for quiet in [
            "@@CHECK demo-numa PASS",
            "@@HOTPLUG present 1 0002:00:00.0",
            "@@L2LOG vu: served",
            "[    0.000000] Linux version 6.1.0",
            "@@ACPI DSDT 0a0b",
            "",
        ] {
            assert_eq!(render(quiet, false), None, "{quiet}");
        }
    }

    fn transcript(lines: &[&str]) -> Transcript {
        let mut t = Transcript::default();
        for l in lines {
            t.feed(l);
        }
        t
    }

    #[test]
    fn every_expected_check_must_pass() {
        let ok = transcript(&["@@CHECK a PASS", "@@L2CHECK b PASS", "@@L2DONE"]);
        assert!(failures(&ok, true, &["a", "b"]).is_empty());
        assert_eq!(failures(&ok, true, &["a", "b", "c"]), ["c: never reported"]);
        assert_eq!(
            failures(&ok, false, &["a"]),
            ["L2 did not finish (timeout or crash)"]
        );
        let bad = transcript(&[
            "@@CHECK a FAIL padding read 0xff",
            "@@CHECK s SKIP nothing",
            "@@L2CHECK seccomp FAIL ghvmm:57",
            "@@L2DONE",
        ]);
        assert_eq!(
            failures(&bad, true, &["a", "s"]),
            [
                "a: padding read 0xff",
                "s: skipped (nothing)",
                "seccomp: ghvmm:57"
            ]
        );
    }
}
