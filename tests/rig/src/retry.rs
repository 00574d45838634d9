//! Which failed attempts of a scenario may run again, and the record of retries across runs
//! (`target/e2e/flaky.json`).
//!
//! Nested TCG sometimes kills a run (docs/testing.md, "Known flakiness"): the guest or L2
//! stops, and checks never report. A retry is for that only. A check that reported a wrong
//! value is a result; retrying until it happens to pass would hide an intermittent bug, so
//! such an attempt is final. And a scenario whose first attempt fails the same check in two
//! runs in a row fails that run: the same "flake" twice is a bug with a pattern.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::protocol::Outcome;
use crate::CheckResult;

/// Checks the rig adds when L2 or the guest never got to the end: their failure is the
/// absence of a result, not a wrong one.
const RUN_ENDED_EARLY: [&str; 3] = ["lockup", "timeout", "l2-done"];
/// The L3 VMM's exit status: a guest that triple-faults or hangs (killed by L2's watchdog)
/// makes it non-zero, and what went wrong shows as the guest's checks that never reported.
const VMM_EXIT: &str = "vmm-exit";
/// Reasons the rig gives for a check that produced nothing (e2e.rs `collate`, the ACPI dump,
/// protocol.rs `complete_tables`, tests/l2/init `early_why`: in a scenario that kills its
/// first VMM and starts a second, the first one's guest died before the checked point, and
/// the second VMM's clean exit leaves no `vmm-exit` failure to say the run ended early).
const NO_RESULT_REASONS: [&str; 4] = [
    "never reported",
    "the guest sent no ACPI tables",
    "garbled on the console",
    "the VMM ended by itself first",
];

/// The reason of the `lockup` failure when L2's own kernel reported it (e2e.rs). L2 is the
/// host the VMM runs on: once its kernel stops scheduling, what the guest then sees (a
/// hot-plugged device that never arrives because L2's init is stuck, a late answer) says
/// nothing about the VMM, so such an attempt has no result at all, the guest's own failures
/// included. A lockup in the guest's kernel keeps the usual rule.
pub const L2_LOCKUP: &str = "L2's kernel stopped scheduling";

/// What one attempt allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Passed,
    /// Every failure is a missing result: the attempt may run again.
    NoResult,
    /// Some check reported a wrong value: the attempt's results are final.
    WrongValue,
}

/// Whether the failure of `check` (its name without the scenario) with reason `why` is a
/// missing result, leaving aside host checks (see `verdict`).
fn is_missing_result(check: &str, why: &str) -> bool {
    RUN_ENDED_EARLY.contains(&check)
        || check == VMM_EXIT
        || NO_RESULT_REASONS.iter().any(|r| why.starts_with(r))
}

fn short(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

/// Attempts every scenario gets while its attempts produce no result.
pub const ATTEMPTS: u32 = 3;
/// Attempts a scenario may take beyond `ATTEMPTS`, each drawn from `RetryBudget`.
pub const EXTRA_ATTEMPTS_PER_SCENARIO: u32 = 2;
/// Extra attempts one run of the rig may spend in all: enough for a run whose nested
/// emulation is having a bad day (CI lost every attempt of one scenario in two runs in a
/// row with three each), few enough that a change breaking every guest still ends within
/// the suite's time budget (each attempt costs a minute or two).
pub const EXTRA_ATTEMPTS_PER_RUN: u32 = 8;

/// The run's account of attempts beyond `ATTEMPTS`. Only an attempt without a result is
/// ever retried (`verdict`); this bounds how often.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryBudget {
    extra_left: u32,
}

/// Whether a scenario runs again after an attempt without a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextAttempt {
    /// Within the `ATTEMPTS` every scenario has.
    Granted,
    /// Beyond them, from the run's budget; `left` extra attempts remain after this one.
    Extra { left: u32 },
    /// No more: the scenario took its own limit, or the run spent its budget.
    Refused,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self::new(EXTRA_ATTEMPTS_PER_RUN)
    }
}

impl RetryBudget {
    pub fn new(extra: u32) -> Self {
        Self { extra_left: extra }
    }

    /// After a scenario's `attempt`-th attempt (from 1) gave no result: may it run again?
    /// An extra attempt is taken from the budget when granted.
    pub fn after_no_result(&mut self, attempt: u32) -> NextAttempt {
        if attempt < ATTEMPTS {
            NextAttempt::Granted
        } else if attempt >= ATTEMPTS + EXTRA_ATTEMPTS_PER_SCENARIO || self.extra_left == 0 {
            NextAttempt::Refused
        } else {
            self.extra_left -= 1;
            NextAttempt::Extra {
                left: self.extra_left,
            }
        }
    }
}

/// The verdict on one attempt. `derived` are the full names of the checks made about the
/// guest from outside: by L2 (markers it waited for, API calls to the VMM) and by the host
/// (the guest's files and facts). When the run ended early they judge an unfinished guest or
/// a VMM that had gone, so their failures then count as missing results too; in a complete
/// run they are results like any other. The guest's own checks are always results.
pub fn verdict(results: &[CheckResult], derived: &[String]) -> Verdict {
    let failures: Vec<(&str, &str)> = results
        .iter()
        .filter_map(|r| match &r.outcome {
            Outcome::Fail(why) => Some((r.name.as_str(), why.as_str())),
            Outcome::Pass | Outcome::Skip(_) => None,
        })
        .collect();
    if failures.is_empty() {
        return Verdict::Passed;
    }
    if failures
        .iter()
        .any(|(name, why)| short(name) == "lockup" && why.starts_with(L2_LOCKUP))
    {
        return Verdict::NoResult;
    }
    let is_derived = |name: &str| derived.iter().any(|h| h == name);
    let ended_early = failures
        .iter()
        .any(|(name, why)| !is_derived(name) && is_missing_result(short(name), why));
    // A derived check judges what an unfinished guest left when the run ended early.
    let no_result = |name: &str, why: &str| {
        is_missing_result(short(name), why) || ended_early && is_derived(name)
    };
    if failures.iter().any(|(name, why)| !no_result(name, why)) {
        Verdict::WrongValue
    } else {
        Verdict::NoResult
    }
}

/// The failures of one attempt in one line, the checks that never reported named together.
pub fn failure_summary(results: &[CheckResult]) -> String {
    let mut silent = Vec::new();
    let mut failed = Vec::new();
    for r in results {
        if let Outcome::Fail(why) = &r.outcome {
            if why.starts_with(NO_RESULT_REASONS[0]) {
                silent.push(short(&r.name).to_string());
            } else {
                failed.push(format!("{}: {why}", r.name));
            }
        }
    }
    if !silent.is_empty() {
        failed.push(format!("never reported: {}", silent.join(", ")));
    }
    failed.join("; ")
}

/// Longest part of one attempt's cause that `no_result_in_any_attempt` quotes.
const CAUSE_CHARS: usize = 400;

/// The failure that closes a scenario none of whose attempts produced a result, with each
/// attempt's cause: printed among the FAIL lines, so a report that keeps those and cuts the
/// RETRY lines (CI's excerpt) still says what every attempt died of.
pub fn no_result_in_any_attempt(scenario: &str, record: &ScenarioRecord) -> CheckResult {
    let causes: Vec<String> = record
        .causes
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let cut: String = c.chars().take(CAUSE_CHARS).collect();
            let more = if cut.len() < c.len() { " [...]" } else { "" };
            format!("attempt {}: {cut}{more}", i + 1)
        })
        .collect();
    CheckResult {
        name: format!("{scenario}/attempts"),
        outcome: Outcome::Fail(format!(
            "none of {} attempts produced a result ({})",
            record.attempts,
            causes.join(" | ")
        )),
    }
}

/// The names (without the scenario) of the checks that failed.
pub fn failed_checks(results: &[CheckResult]) -> Vec<String> {
    results
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Fail(_)))
        .map(|r| short(&r.name).to_string())
        .collect()
}

/// One scenario in one run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScenarioRecord {
    pub attempts: u32,
    pub passed: bool,
    /// Each failed attempt's `failure_summary`, in order.
    pub causes: Vec<String>,
    /// The checks the first attempt failed (empty when it passed).
    pub first_attempt_failed: Vec<String>,
}

impl ScenarioRecord {
    pub fn passed_after_retry(&self) -> bool {
        self.passed && self.attempts > 1
    }
}

/// The content of flaky.json: the latest run of each scenario, and counts over this run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlakyRecord {
    /// Scenarios run this time.
    pub run: usize,
    /// Of those, how many needed more than one attempt, and how many passed after a retry.
    pub retried: usize,
    pub passed_after_retry: usize,
    /// Scenario -> its latest run (this run's, or an earlier one's for scenarios not run now).
    pub scenarios: BTreeMap<String, ScenarioRecord>,
}

impl FlakyRecord {
    /// The previous run's record; an absent or unreadable file is an empty history (said so
    /// by the returned note, so that losing the history is visible).
    pub fn load(path: &Path) -> (Self, Option<String>) {
        match std::fs::read(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Self::default(), None),
            Err(e) => (
                Self::default(),
                Some(format!(
                    "{}: {e}; no earlier runs to compare",
                    path.display()
                )),
            ),
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(r) => (r, None),
                Err(e) => (
                    Self::default(),
                    Some(format!(
                        "{}: {e}; no earlier runs to compare",
                        path.display()
                    )),
                ),
            },
        }
    }

    /// The checks that `scenario`'s first attempt failed now and in its previous run. Not
    /// when either first attempt lost L2 itself (a lockup, a CPU reset, a hang: the
    /// `RUN_ENDED_EARLY` checks): the guest's checks then fail because L2 stopped, whatever
    /// they test, so two such runs share failing checks without sharing a cause, and the
    /// emulation kills L2 often enough (docs/testing.md) for a long scenario to meet it
    /// twice in a row. A guest or VMM that dies twice under a living L2 is still reported.
    pub fn repeated(&self, scenario: &str, now: &ScenarioRecord) -> Vec<String> {
        let Some(before) = self.scenarios.get(scenario) else {
            return Vec::new();
        };
        let lost_l2 = |r: &ScenarioRecord| {
            r.first_attempt_failed
                .iter()
                .any(|c| RUN_ENDED_EARLY.contains(&c.as_str()))
        };
        if lost_l2(now) || lost_l2(before) {
            return Vec::new();
        }
        now.first_attempt_failed
            .iter()
            .filter(|c| before.first_attempt_failed.contains(c))
            .cloned()
            .collect()
    }

    /// This run's records over the previous history.
    pub fn updated(&self, now: &[(String, ScenarioRecord)]) -> Self {
        let mut scenarios = self.scenarios.clone();
        for (name, r) in now {
            scenarios.insert(name.clone(), r.clone());
        }
        FlakyRecord {
            run: now.len(),
            retried: now.iter().filter(|(_, r)| r.attempts > 1).count(),
            passed_after_retry: now.iter().filter(|(_, r)| r.passed_after_retry()).count(),
            scenarios,
        }
    }
}

/// The line for the scenarios that passed only after a retry, with each failed attempt's
/// cause; None when there were none.
pub fn retried_line(now: &[(String, ScenarioRecord)]) -> Option<String> {
    let parts: Vec<String> = now
        .iter()
        .filter(|(_, r)| r.passed_after_retry())
        .map(|(name, r)| {
            let causes: Vec<String> = r
                .causes
                .iter()
                .enumerate()
                .map(|(i, c)| format!("attempt {}: {c}", i + 1))
                .collect();
            format!("{name} ({})", causes.join("; "))
        })
        .collect();
    (!parts.is_empty()).then(|| {
        format!(
            "PASSED ONLY AFTER A RETRY ({}): {}",
            parts.len(),
            parts.join(" | ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scenario_gets_its_attempts_and_the_extra_ones_come_from_the_run() {
        let mut b = RetryBudget::new(3);
        // Attempts 1 and 2 failed: the third is every scenario's own.
        assert_eq!(b.after_no_result(1), NextAttempt::Granted);
        assert_eq!(b.after_no_result(2), NextAttempt::Granted);
        // Beyond ATTEMPTS, each one is taken from the budget, and the scenario's own limit
        // ends it even with budget left.
        assert_eq!(b.after_no_result(3), NextAttempt::Extra { left: 2 });
        assert_eq!(b.after_no_result(4), NextAttempt::Extra { left: 1 });
        assert_eq!(b.after_no_result(5), NextAttempt::Refused);
        // The next scenario takes the last one; the one after gets only its own three.
        assert_eq!(b.after_no_result(3), NextAttempt::Extra { left: 0 });
        assert_eq!(b.after_no_result(4), NextAttempt::Refused);
        assert_eq!(b.after_no_result(1), NextAttempt::Granted);
        assert_eq!(b.after_no_result(3), NextAttempt::Refused);
    }

    #[test]
    fn a_run_that_loses_every_guest_spends_a_bounded_number_of_attempts() {
        let mut b = RetryBudget::default();
        let mut attempts = 0;
        for _scenario in 0..100 {
            for attempt in 1.. {
                attempts += 1;
                if b.after_no_result(attempt) == NextAttempt::Refused {
                    break;
                }
            }
        }
        assert_eq!(attempts, 100 * ATTEMPTS + EXTRA_ATTEMPTS_PER_RUN);
    }

    fn r(name: &str, outcome: Outcome) -> CheckResult {
        CheckResult {
            name: format!("s/{name}"),
            outcome,
        }
    }
    fn fail(name: &str, why: &str) -> CheckResult {
        r(name, Outcome::Fail(why.into()))
    }
    fn silent(name: &str) -> CheckResult {
        fail(name, "never reported (see console.log)")
    }

    #[test]
    fn a_scenario_without_any_result_names_each_attempt_among_its_failures() {
        let record = ScenarioRecord {
            attempts: 3,
            passed: false,
            causes: vec![
                "s/lockup: a kernel stopped scheduling".into(),
                "x".repeat(1000),
                "s/timeout: no end after 150s".into(),
            ],
            first_attempt_failed: vec!["lockup".into()],
        };
        let r = no_result_in_any_attempt("s", &record);
        assert_eq!(r.name, "s/attempts");
        let Outcome::Fail(why) = r.outcome else {
            panic!("{r:?}")
        };
        assert!(why.starts_with(
            "none of 3 attempts produced a result (attempt 1: s/lockup: a kernel stopped scheduling | attempt 2: xxx"
        ));
        assert!(why.contains(&format!(
            "{} [...] | attempt 3: s/timeout",
            "x".repeat(CAUSE_CHARS)
        )));
        assert!(!why.contains(&"x".repeat(CAUSE_CHARS + 1)));
    }

    #[test]
    fn only_missing_results_may_be_retried() {
        let none: &[String] = &[];
        assert_eq!(verdict(&[r("init", Outcome::Pass)], none), Verdict::Passed);
        // A guest that triple-faulted: its checks never reported, ghvmm exited 1.
        let crash = [
            r("kvm", Outcome::Pass),
            silent("cpus"),
            silent("gh-data"),
            fail("vmm-exit", "ghvmm: exit code 1 (expected exit code 0)"),
        ];
        assert_eq!(verdict(&crash, none), Verdict::NoResult);
        for early in ["timeout", "lockup", "l2-done"] {
            assert_eq!(
                verdict(&[silent("init"), fail(early, "x")], none),
                Verdict::NoResult
            );
        }
        assert_eq!(
            verdict(
                &[fail("iasl-SRAT", "garbled on the console: 10 of 300 bytes")],
                none
            ),
            Verdict::NoResult
        );
    }

    #[test]
    fn an_l2_lockup_voids_the_attempt_but_a_guest_lockup_does_not() {
        let none: &[String] = &[];
        // hotplug-gh in a local run: L2's init stuck in its kernel, so cycle 13's device
        // never reached the guest, which said so itself.
        let wrong = fail("hotplug-arrive", "cycle 13: no 1af4:1110 device after 120s");
        let l2 = fail(
            "lockup",
            &format!("{L2_LOCKUP}, L2 stopped: [  159.06] watchdog: BUG: soft lockup - CPU#1 stuck for 23s! [init:1]"),
        );
        assert_eq!(verdict(&[wrong.clone(), l2], none), Verdict::NoResult);
        let guest = fail(
            "lockup",
            "the guest's kernel stopped scheduling, L2 stopped: watchdog: BUG: soft lockup - CPU#0 stuck for 23s! [init:1]",
        );
        assert_eq!(verdict(&[wrong, guest.clone()], none), Verdict::WrongValue);
        assert_eq!(verdict(&[silent("init"), guest], none), Verdict::NoResult);
    }

    #[test]
    fn a_wrong_value_is_final_even_among_silent_checks() {
        let none: &[String] = &[];
        let mixed = [
            fail(
                "gh-padding-read",
                "4-byte read at 0x3000 gave 0x0, want 0xffffffff",
            ),
            silent("gh-straddle"),
            fail("timeout", "no end after 150s"),
        ];
        assert_eq!(verdict(&mixed, none), Verdict::WrongValue);
        assert_eq!(
            verdict(&[fail("numa-nodes", "node 1 distances 20,10")], none),
            Verdict::WrongValue
        );
        // A table that arrived whole but does not disassemble is ghvmm's.
        assert_eq!(
            verdict(&[fail("iasl-DSDT", "iasl: 2 errors")], none),
            Verdict::WrongValue
        );
        // "never reported" is recognised at the start only, not inside a guest's reason.
        assert_eq!(
            verdict(
                &[fail("gh-data", "the device: never reported its size")],
                none
            ),
            Verdict::WrongValue
        );
    }

    #[test]
    fn host_checks_are_results_only_in_a_complete_run() {
        let host = vec!["s/host-file".to_string()];
        let missing = fail("host-file", "pattern gh-mem-at-start! not in the file");
        // The guest died before writing: the host file cannot hold its patterns.
        assert_eq!(
            verdict(&[silent("gh-data"), missing.clone()], &host),
            Verdict::NoResult
        );
        // The guest finished and said its data was right: the file is a result.
        assert_eq!(
            verdict(&[r("gh-data", Outcome::Pass), missing.clone()], &host),
            Verdict::WrongValue
        );
        // A host check that never got a result does not make the others unfinished.
        assert_eq!(
            verdict(&[silent("host-file"), fail("gh-bar", "BAR2 at 0")], &host),
            Verdict::WrongValue
        );
        // L2 waited in vain for a guest that had triple-faulted (ghvmm exited 1).
        let l2 = vec!["s/hotplug-arrive".to_string()];
        let waited = fail("hotplug-arrive", "the guest never saw the device");
        let exit1 = fail("vmm-exit", "ghvmm: exit code 1 (expected exit code 0)");
        assert_eq!(
            verdict(&[waited.clone(), exit1.clone(), silent("gh-data")], &l2),
            Verdict::NoResult
        );
        // The same L2 check with a VMM that ended well is a result.
        assert_eq!(
            verdict(&[waited.clone(), r("vmm-exit", Outcome::Pass)], &l2),
            Verdict::WrongValue
        );
        // And a guest's wrong value stays final whatever else failed.
        assert_eq!(
            verdict(&[waited, exit1, fail("gh-data", "read back 00")], &l2),
            Verdict::WrongValue
        );
    }

    #[test]
    fn summary_names_silent_checks_together() {
        let s = failure_summary(&[
            silent("a"),
            r("b", Outcome::Pass),
            fail("c", "wrong"),
            silent("d"),
        ]);
        assert_eq!(s, "s/c: wrong; never reported: a, d");
        assert_eq!(
            failed_checks(&[silent("a"), r("b", Outcome::Pass), fail("c", "x")]),
            ["a", "c"]
        );
    }

    fn rec(attempts: u32, passed: bool, first: &[&str]) -> ScenarioRecord {
        ScenarioRecord {
            attempts,
            passed,
            causes: (1..attempts.max(1) + u32::from(!passed))
                .map(|i| format!("cause {i}"))
                .collect(),
            first_attempt_failed: first.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn the_same_first_attempt_failure_twice_is_found() {
        let before = FlakyRecord::default().updated(&[
            ("a".into(), rec(2, true, &["gh-data", "vmm-exit"])),
            ("b".into(), rec(1, true, &[])),
        ]);
        assert_eq!(before.retried, 1);
        assert_eq!(before.passed_after_retry, 1);
        // Same check again: reported. A different one, or a clean first attempt: not.
        assert_eq!(
            before.repeated("a", &rec(2, true, &["init", "gh-data"])),
            ["gh-data"]
        );
        assert!(before.repeated("a", &rec(2, true, &["init"])).is_empty());
        assert!(before.repeated("a", &rec(1, true, &[])).is_empty());
        assert!(before.repeated("b", &rec(2, true, &["init"])).is_empty());
        assert!(before.repeated("new", &rec(2, true, &["init"])).is_empty());
        // L2 lost in either first attempt: its checks failed for want of L2, not repeated.
        let l2_lost = ["gh-data", "l2-done"];
        assert!(before.repeated("a", &rec(2, true, &l2_lost)).is_empty());
        assert!(before
            .repeated("a", &rec(2, true, &["gh-data", "timeout"]))
            .is_empty());
        let after_l2_loss = FlakyRecord::default().updated(&[("a".into(), rec(2, true, &l2_lost))]);
        assert!(after_l2_loss
            .repeated("a", &rec(2, true, &["gh-data", "vmm-exit"]))
            .is_empty());
        // The guest or its VMM lost twice under a living L2: still a repeat.
        assert_eq!(
            before.repeated("a", &rec(2, true, &["vmm-exit"])),
            ["vmm-exit"]
        );
        // A run of only "b" keeps "a"'s history for the next run of "a".
        let after = before.updated(&[("b".into(), rec(1, true, &[]))]);
        assert_eq!(after.scenarios["a"], before.scenarios["a"]);
        assert_eq!((after.run, after.retried), (1, 0));
    }

    #[test]
    fn flaky_json_round_trips_and_bad_files_are_said() {
        let dir = std::env::temp_dir().join(format!("rig-flaky-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("flaky.json");
        assert_eq!(FlakyRecord::load(&path), (FlakyRecord::default(), None));
        let r = FlakyRecord::default().updated(&[("a".into(), rec(3, false, &["x"]))]);
        std::fs::write(&path, serde_json::to_vec_pretty(&r).unwrap()).unwrap();
        assert_eq!(FlakyRecord::load(&path), (r, None));
        std::fs::write(&path, b"{ not json").unwrap();
        let (empty, note) = FlakyRecord::load(&path);
        assert_eq!(empty, FlakyRecord::default());
        assert!(note.unwrap().contains("no earlier runs"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn retried_line_lists_causes_per_attempt() {
        assert_eq!(retried_line(&[("a".into(), rec(1, true, &[]))]), None);
        // Failed in all attempts: not "passed after a retry" (its FAIL lines say it).
        assert_eq!(retried_line(&[("a".into(), rec(3, false, &["x"]))]), None);
        let line = retried_line(&[
            ("a".into(), rec(3, true, &["x"])),
            ("b".into(), rec(1, true, &[])),
        ])
        .unwrap();
        assert_eq!(
            line,
            "PASSED ONLY AFTER A RETRY (1): a (attempt 1: cause 1; attempt 2: cause 2)"
        );
    }
}
