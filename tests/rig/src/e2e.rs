//! `cargo xtask e2e`: runs scenarios, one L2 boot each, and turns their transcripts, the
//! guests' ACPI tables and host-side checks into PASS/FAIL lines.

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::l3::Vmm;
use crate::protocol::{Outcome, Transcript};
use crate::retry::{self, FlakyRecord, NextAttempt, RetryBudget, ScenarioRecord, Verdict};
use crate::scenario::{self, Scenario};
use crate::setup::say;
use crate::vfio_scenarios::{self, GH_LENGTHS, GH_MODES};
use crate::{iasl, images, prepare, report, scenario_dir, CheckResult, L2Boot, Prepared};

/// One attempt at a scenario.
struct Attempt {
    results: Vec<CheckResult>,
    /// Full names of the checks L2 and the host made about the guest (retry::verdict).
    derived: Vec<String>,
}

/// Runs one scenario and returns its results (never an Err for a guest-side failure).
fn run_scenario(prep: &Prepared, s: &Scenario) -> Result<Attempt> {
    let dir = scenario_dir(&prep.paths, s.name);
    let _ = std::fs::remove_dir_all(&dir);
    let vmm =
        s.l3.as_ref()
            .map_or(String::new(), |l| format!(", L3 under {}", l.vmm.name()));
    say(&format!(
        "{}: {} (timeout {}s{vmm})",
        s.name,
        s.about,
        s.timeout.as_secs()
    ));
    let mut overlays = Vec::new();
    if s.needs_vmlinux() {
        overlays.push(images::vmlinux_overlay(&prep.paths)?);
    }
    if s.needs_qemu() {
        overlays.push(images::qemu_overlay(&prep.paths)?);
    }
    overlays.push(images::scenario_overlay(&s.script()));
    let boot = L2Boot {
        qemu_args: &s.qemu_args,
        ivshmem: &s.ivshmem,
        ..L2Boot::new(&overlays, s.timeout)
    };
    let (t, finished, took) = boot.boot(prep, &dir)?;
    say(&format!(
        "{}: finished in {:.1}s, console log in {}",
        s.name,
        took.as_secs_f64(),
        dir.join("console.log").display()
    ));
    // The tables first: host checks read them (acpi/*.dat, iasl's *.dsl).
    let acpi = if s.acpi {
        acpi_checks(&t, &dir.join("acpi"))?
    } else {
        Vec::new()
    };
    let mut reported = t.checks.clone();
    let mut host_names: Vec<String> = t
        .l2_checks
        .iter()
        .map(|n| format!("{}/{n}", s.name))
        .collect();
    if let Some(host_checks) = &s.host_checks {
        let host = host_checks(s, &dir, &t);
        host_names.extend(host.iter().map(|(n, _)| format!("{}/{n}", s.name)));
        reported.extend(host);
    }
    let mut results = collate(s.name, &s.expected(), &reported);
    for r in &mut results {
        if let Outcome::Skip(why) = &r.outcome {
            r.outcome = vet_skip(s, &r.name, why);
        }
    }
    let mut push = |check: &str, outcome: Outcome| {
        results.push(CheckResult {
            name: format!("{}/{check}", s.name),
            outcome,
        })
    };
    if let Some((line, _)) = &t.lockup {
        // Stopped early: waiting any longer only costs the timeout.
        let whose = if t.lockup_in_l2() {
            retry::L2_LOCKUP
        } else {
            "the guest's kernel stopped scheduling"
        };
        push(
            "lockup",
            Outcome::Fail(format!("{whose}, L2 stopped: {line}")),
        );
    } else if !finished {
        push(
            "timeout",
            Outcome::Fail(format!(
                "no end after {}s (L2's CPU registers in registers.txt)",
                s.timeout.as_secs()
            )),
        );
    } else if !t.l2_done {
        push(
            "l2-done",
            Outcome::Fail(
                "L2 stopped before its init finished (console.log; a CPU reset in qemu.log)".into(),
            ),
        );
    }
    for (check, outcome) in acpi {
        push(&check, outcome);
    }
    if results
        .iter()
        .any(|r| matches!(r.outcome, Outcome::Fail(_)))
    {
        if let Some(line) = locate(prep, &dir) {
            println!("  | where: {line}");
            let _ = std::fs::write(dir.join("where.txt"), line + "\n");
        }
    }
    Ok(Attempt {
        results,
        derived: host_names,
    })
}

/// Where the CPUs were in a failed run, named: L2's from the register dump QEMU's monitor
/// gave on a timeout (registers.txt), L3's from ghvmm's SIGUSR1 dump that L2's watchdog
/// asks for (console.log). A fresh L2 names the addresses (crate::symbols); None when there
/// is nothing to name.
fn locate(prep: &Prepared, dir: &Path) -> Option<String> {
    let registers = std::fs::read_to_string(dir.join("registers.txt")).unwrap_or_default();
    let console = std::fs::read(dir.join("console.log"))
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let mut cpus: Vec<(String, u64)> = crate::symbols::rips(&registers)
        .into_iter()
        .enumerate()
        .map(|(i, r)| (format!("L2 cpu{i}"), r))
        .collect();
    cpus.extend(
        crate::symbols::vcpu_rips(&console)
            .into_iter()
            .map(|(i, r)| (format!("L3 vCPU{i}"), r)),
    );
    if cpus.is_empty() {
        return None;
    }
    say("naming the CPUs' RIPs in a fresh L2 (/proc/kallsyms)");
    let addrs: Vec<String> = cpus.iter().map(|(_, r)| format!("{r:#x}")).collect();
    // The variant driver loads last in both, so its addresses match too.
    let script = format!(
        "insmod /lib/modules/extra/ghvmm_test_vfio.ko 2>/dev/null\n/bin/checker resolve {}\n",
        addrs.join(" ")
    );
    let overlays = [images::scenario_overlay(&script)];
    let names = L2Boot::new(&overlays, std::time::Duration::from_secs(120))
        .boot(prep, &dir.join("resolve"))
        .map(|(t, _, _)| t.resolved)
        .unwrap_or_default();
    Some(crate::symbols::describe(&cpus, &names))
}

/// Checks that have nothing to test when the GPU-like device's length is a power of two: it
/// fills its BAR, so there is no padding (tests/checker/src/gh.rs).
const PADDING_CHECKS: [&str; 3] = ["gh-padding-read", "gh-straddle", "gh-padding-write"];

/// A skip the scenario's configuration explains stays a skip; any other is a failure, so a
/// checker that skips by mistake cannot pass quietly.
fn vet_skip(s: &Scenario, name: &str, why: &str) -> Outcome {
    let check = name.rsplit('/').next().unwrap_or(name);
    let len =
        s.l3.as_ref()
            .and_then(|l| l.expectation("gh_len"))
            .and_then(|l| l.parse::<u64>().ok());
    match len {
        Some(len) if PADDING_CHECKS.contains(&check) && len >= 4096 && len.is_power_of_two() => {
            Outcome::Skip(why.to_string())
        }
        _ => Outcome::Fail(format!(
            "skipped ({why}), but the scenario (ghvmm.gh_len {len:?}) has something to check"
        )),
    }
}

/// Every expected check (a missing one fails), then any other reported check, prefixed by the
/// scenario's name.
fn collate(scenario: &str, expected: &[&str], reported: &[(String, Outcome)]) -> Vec<CheckResult> {
    let named = |check: &str, outcome: Outcome| CheckResult {
        name: format!("{scenario}/{check}"),
        outcome,
    };
    let mut results: Vec<CheckResult> = expected
        .iter()
        .map(|e| {
            // Reported twice (a guest that ran its checks again)? A failure must not hide.
            let mut got = reported.iter().filter(|(n, _)| n == e).map(|(_, o)| o);
            let outcome = match got.clone().find(|o| matches!(o, Outcome::Fail(_))) {
                Some(fail) => fail.clone(),
                None => got
                    .next()
                    .cloned()
                    .unwrap_or_else(|| Outcome::Fail("never reported (see console.log)".into())),
            };
            named(e, outcome)
        })
        .collect();
    for (name, outcome) in reported {
        if !expected.contains(&name.as_str()) {
            results.push(named(name, outcome.clone()));
        }
    }
    results
}

/// Writes the tables the guest dumped to `acpi_dir/<name>.dat` and disassembles each.
fn acpi_checks(t: &Transcript, acpi_dir: &Path) -> Result<Vec<(String, Outcome)>> {
    std::fs::create_dir_all(acpi_dir)?;
    let tables = t.complete_tables();
    let mut v = Vec::new();
    if tables.is_empty() {
        v.push((
            "acpi-tables".to_string(),
            Outcome::Fail("the guest sent no ACPI tables".into()),
        ));
    }
    for (name, bytes) in tables {
        let outcome = match bytes {
            Ok(b) => {
                let file = acpi_dir.join(format!("{name}.dat"));
                std::fs::write(&file, b).with_context(|| format!("writing {}", file.display()))?;
                iasl::disassemble(&file).map_or_else(Outcome::Fail, |()| Outcome::Pass)
            }
            Err(e) => Outcome::Fail(e),
        };
        v.push((format!("iasl-{name}"), outcome));
    }
    Ok(v)
}

/// Runs a scenario; if an attempt produced no result for some checks and no wrong value
/// (retry::verdict), runs it again, up to `retry::ATTEMPTS` times, and up to
/// `retry::EXTRA_ATTEMPTS_PER_SCENARIO` more while the run's `budget` lasts. The retries exist because QEMU's
/// TCG emulation of SVM, under which every L3 guest runs, now and then breaks a nested guest
/// or L2 itself (docs/testing.md, "Known flakiness"). An attempt with a wrong value is final:
/// retrying it could hide an intermittent bug. Each retry is printed with the failed
/// attempt's failures and evidence, that attempt's logs are kept, and the record says what
/// happened (flaky.json).
fn run_with_retries(
    prep: &Prepared,
    s: &Scenario,
    budget: &mut RetryBudget,
) -> Result<(Vec<CheckResult>, ScenarioRecord)> {
    let dir = scenario_dir(&prep.paths, s.name);
    let e2e = prep.paths.target().join("e2e");
    let mut record = ScenarioRecord::default();
    loop {
        record.attempts += 1;
        let attempt = record.attempts;
        let Attempt { results, derived } = run_scenario(prep, s)?;
        let verdict = retry::verdict(&results, &derived);
        if verdict == Verdict::Passed {
            record.passed = true;
            return Ok((results, record));
        }
        let failed = retry::failure_summary(&results);
        if attempt == 1 {
            record.first_attempt_failed = retry::failed_checks(&results);
        }
        record.causes.push(failed.clone());
        if verdict == Verdict::WrongValue {
            println!(
                "NO RETRY {}: attempt {attempt} reported a wrong value ({failed})",
                s.name
            );
            print_evidence(&dir.join("console.log"));
            return Ok((results, record));
        }
        let extra = match budget.after_no_result(attempt) {
            NextAttempt::Refused => {
                print_evidence(&dir.join("console.log"));
                let mut results = results;
                results.push(retry::no_result_in_any_attempt(s.name, &record));
                return Ok((results, record));
            }
            NextAttempt::Granted => String::new(),
            NextAttempt::Extra { left } => {
                format!(" (an extra attempt; {left} left in this run)")
            }
        };
        let kept = e2e.join(format!("{}.attempt{attempt}.log", s.name));
        let _ = std::fs::copy(dir.join("console.log"), &kept);
        // What a timeout or a lost CPU left besides the console; a file this attempt did not
        // leave must not be stood in for by an earlier run's.
        for file in ["qemu.log", "registers.txt", "where.txt"] {
            let to = e2e.join(format!("{}.attempt{attempt}.{file}", s.name));
            if std::fs::copy(dir.join(file), &to).is_err() {
                let _ = std::fs::remove_file(&to);
            }
        }
        println!(
            "RETRY {}: attempt {attempt} produced no result ({failed}); its log: {}; attempt {} follows{extra}",
            s.name,
            kept.display(),
            attempt + 1
        );
        print_evidence(&kept);
    }
}

/// A FAIL result when `s`'s first attempt failed a check its first attempt also failed in
/// the previous run: the same "flake" twice in a row is a bug.
fn repeated_first_failure(
    before: &FlakyRecord,
    scenario: &str,
    now: &ScenarioRecord,
) -> Option<CheckResult> {
    let repeated = before.repeated(scenario, now);
    (!repeated.is_empty()).then(|| CheckResult {
        name: format!("{scenario}/first-attempt-repeat"),
        outcome: Outcome::Fail(format!(
            "the first attempt failed {} in this run and in the previous one (flaky.json): a bug, not flakiness",
            repeated.join(", ")
        )),
    })
}

/// Console lines that say why a run went wrong (kernel bugs and their backtraces, faults,
/// VMM errors), at most `MAX` of them: CI keeps only the rig's output, not target/e2e.
pub fn evidence(console: &str) -> Vec<String> {
    const MAX: usize = 60;
    const MARKERS: [&str; 10] = [
        "BUG:",
        "Kernel panic",
        "RIP:",
        "Call Trace",
        "triple fault",
        "ghvmm: error",
        "WARNING:",
        "@@L2LOG watchdog",
        "registers: RIP=",
        "KVM counters",
    ];
    let mut out = Vec::new();
    let mut trace_left = 0;
    for line in console.lines() {
        let hit = MARKERS.iter().any(|m| line.contains(m));
        if hit || trace_left > 0 {
            out.push(line.trim_end().to_string());
            if out.len() >= MAX {
                break;
            }
        }
        if line.contains("Call Trace") {
            trace_left = 14;
        } else if trace_left > 0 {
            trace_left -= 1;
        }
    }
    out
}

fn print_evidence(console_log: &Path) {
    let text = std::fs::read(console_log)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    for line in evidence(&text) {
        println!("  | {line}");
    }
}

/// `cargo xtask e2e` arguments: filters, optionally one GPU-like device configuration
/// replacing the default modes x lengths, and optionally another L3 VMM.
pub struct E2eArgs {
    pub filters: Vec<String>,
    pub gh_mode: Option<String>,
    pub gh_len: Option<u64>,
    pub l3_vmm: Option<Vmm>,
}

impl E2eArgs {
    pub fn parse(args: &[String]) -> Result<Self> {
        let mut a = E2eArgs {
            filters: Vec::new(),
            gh_mode: None,
            gh_len: None,
            l3_vmm: None,
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--gh-mode" => {
                    let m = it
                        .next()
                        .context("--gh-mode needs vmm_pads or kernel_pads")?;
                    if !GH_MODES.contains(&m.as_str()) {
                        bail!("--gh-mode {m}: use vmm_pads or kernel_pads");
                    }
                    a.gh_mode = Some(m.clone());
                }
                "--gh-len" => {
                    let l = it.next().context("--gh-len needs a byte count")?;
                    let n: u64 = l
                        .parse()
                        .with_context(|| format!("--gh-len {l}: not a number of bytes"))?;
                    if !(4096..=64 << 20).contains(&n) || !n.is_multiple_of(4096) {
                        bail!("--gh-len {l}: a multiple of 4096 between 4 KiB and 64 MiB (ivshmem's BAR2)");
                    }
                    a.gh_len = Some(n);
                }
                "--l3-vmm" => {
                    let v = it.next().context("--l3-vmm needs ghvmm or qemu")?;
                    a.l3_vmm = Some(
                        Vmm::parse(v)
                            .with_context(|| format!("--l3-vmm {v}: use ghvmm or qemu"))?,
                    );
                }
                f if f.starts_with("--") => bail!("unknown option {f}"),
                f => a.filters.push(f.to_string()),
            }
        }
        Ok(a)
    }

    /// The scenarios these arguments select, in run order, and those left out because they
    /// cannot run under the requested L3 VMM (with the reason).
    pub fn scenarios(&self) -> Result<(Vec<Scenario>, Vec<String>)> {
        let mut all = scenario::all();
        if self.gh_mode.is_some() || self.gh_len.is_some() {
            let modes: Vec<&'static str> = match &self.gh_mode {
                Some(m) => GH_MODES.iter().copied().filter(|x| x == m).collect(),
                None => GH_MODES.to_vec(),
            };
            let lens: Vec<u64> = self.gh_len.map_or(GH_LENGTHS.to_vec(), |l| vec![l]);
            all.retain(|s| {
                !s.name.starts_with("vfio-gh-")
                    || ["vfio-gh-bad-info", "vfio-gh-cap-loop"].contains(&s.name)
            });
            all.extend(vfio_scenarios::gh_device_scenarios(&modes, &lens));
        }
        let chosen: Vec<&'static str> = scenario::select(&all, &self.filters)
            .iter()
            .map(|s| s.name)
            .collect();
        let (mut run, mut skipped) = (Vec::new(), Vec::new());
        for s in all.into_iter().filter(|s| chosen.contains(&s.name)) {
            match self.l3_vmm {
                None => run.push(s),
                Some(vmm) => match s.with_vmm(vmm) {
                    Ok(s) => run.push(s),
                    Err(why) => skipped.push(why),
                },
            }
        }
        if run.is_empty() {
            bail!(
                "no scenario matches {:?} (see --list){}",
                self.filters,
                if skipped.is_empty() {
                    String::new()
                } else {
                    format!("; left out: {}", skipped.join("; "))
                }
            );
        }
        Ok((run, skipped))
    }
}

pub fn e2e(root: &Path, args: &E2eArgs) -> Result<bool> {
    let (chosen, skipped) = args.scenarios()?;
    for why in skipped {
        say(&format!("left out under --l3-vmm: {why}"));
    }
    let prep = prepare(root)?;
    let flaky_path = prep.paths.target().join("e2e").join("flaky.json");
    let (before, note) = FlakyRecord::load(&flaky_path);
    if let Some(note) = note {
        say(&note);
    }
    let mut results = Vec::new();
    let mut records = Vec::new();
    let mut budget = RetryBudget::default();
    for s in &chosen {
        let (r, record) = run_with_retries(&prep, s, &mut budget)?;
        results.extend(r);
        results.extend(repeated_first_failure(&before, s.name, &record));
        records.push((s.name.to_string(), record));
    }
    let after = before.updated(&records);
    let json = serde_json::to_vec_pretty(&after)?;
    std::fs::create_dir_all(flaky_path.parent().unwrap_or(Path::new(".")))?;
    std::fs::write(&flaky_path, json)
        .with_context(|| format!("writing {}", flaky_path.display()))?;
    let mut notes = vec![format!("ran on {}", prep.paths.host.describe())];
    notes.extend(retry::retried_line(&records));
    Ok(report(&results, &notes))
}

pub fn list() {
    for s in scenario::all() {
        let only = if s.name.starts_with(scenario::SOAK) {
            " (only when a filter contains \"soak\")"
        } else {
            ""
        };
        println!("{:<22} {}{only}", s.name, s.about);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Result<E2eArgs> {
        E2eArgs::parse(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn e2e_arguments() {
        let a = args(&["--gh-mode", "kernel_pads", "--gh-len", "8192", "gh"]).unwrap();
        assert_eq!(
            (a.gh_mode.as_deref(), a.gh_len, a.filters.len()),
            (Some("kernel_pads"), Some(8192), 1)
        );
        assert!(args(&["--gh-mode", "both"]).is_err());
        assert!(args(&["--gh-len", "4097"]).is_err());
        assert!(args(&["--gh-len", "1G"]).is_err());
        assert!(args(&["--gh-len"]).is_err());
        assert!(args(&["--bogus"]).is_err());
        assert!(args(&["--l3-vmm", "xen"]).is_err());
    }

    #[test]
    fn selection_with_gh_configuration_and_vmm() {
        let names = |a: &[&str]| -> Vec<&'static str> {
            args(a)
                .unwrap()
                .scenarios()
                .unwrap()
                .0
                .iter()
                .map(|s| s.name)
                .collect()
        };
        assert_eq!(
            names(&["--gh-mode", "kernel_pads", "--gh-len", "8192", "vfio-gh"]),
            ["vfio-gh-bad-info", "vfio-gh-cap-loop", "vfio-gh-kernel-8K"]
        );
        let (q, skipped) = args(&["--l3-vmm", "qemu", "boot-basic", "smp", "vfio-ivshmem"])
            .unwrap()
            .scenarios()
            .unwrap();
        assert!(q.iter().all(|s| s.needs_qemu()) && q.len() == 2);
        // Passthrough scenarios pass ghvmm's --device: not runnable under QEMU.
        assert_eq!(skipped.len(), 1);
        assert!(skipped[0].starts_with("vfio-ivshmem passes ghvmm arguments"));
        assert!(args(&["--l3-vmm", "qemu", "vfio-ivshmem"])
            .unwrap()
            .scenarios()
            .is_err());
        assert!(args(&["nothing-matches"]).unwrap().scenarios().is_err());
    }

    #[test]
    fn evidence_keeps_bugs_and_backtraces_only() {
        let mut log =
            String::from("@@L2 up 2.2\nnoise\n[ 40.5] watchdog: BUG: soft lockup - CPU#0\n");
        log.push_str("[ 40.5] RIP: 0010:svm_vcpu_run+0x1\n[ 40.5] Call Trace:\n");
        for i in 0..20 {
            log.push_str(&format!("[ 40.5]  frame{i}\n"));
        }
        log.push_str("@@CHECK init PASS\nghvmm: error: vCPU 1: triple fault\n");
        let e = evidence(&log);
        assert!(e[0].contains("soft lockup") && e[1].contains("RIP:"));
        assert!(e.iter().any(|l| l.ends_with("frame13")));
        assert!(
            !e.iter().any(|l| l.ends_with("frame14")),
            "a trace is cut after 14 lines"
        );
        assert!(e.last().unwrap().contains("triple fault"));
        assert!(!e
            .iter()
            .any(|l| l.contains("noise") || l.contains("@@CHECK")));
    }

    #[test]
    fn a_first_attempt_failing_the_same_check_again_is_a_fail_line() {
        let first = |checks: &[&str]| ScenarioRecord {
            attempts: 2,
            passed: true,
            causes: vec!["never reported: init".into()],
            first_attempt_failed: checks.iter().map(|c| c.to_string()).collect(),
        };
        let before = FlakyRecord::default().updated(&[("s".into(), first(&["init", "cpus"]))]);
        let r = repeated_first_failure(&before, "s", &first(&["cpus"])).unwrap();
        assert_eq!(r.name, "s/first-attempt-repeat");
        assert!(
            matches!(&r.outcome, Outcome::Fail(w) if w.starts_with("the first attempt failed cpus"))
        );
        assert_eq!(repeated_first_failure(&before, "s", &first(&["kvm"])), None);
        assert_eq!(
            repeated_first_failure(&before, "t", &first(&["init"])),
            None
        );
    }

    #[test]
    fn only_padding_checks_of_a_power_of_two_length_may_skip() {
        let gh = |len: u64| {
            let mut all = vfio_scenarios::gh_device_scenarios(&["kernel_pads"], &[len]);
            all.remove(0)
        };
        let pow2 = gh(64 << 20);
        let odd = gh(48 << 20);
        let why = "no padding";
        assert_eq!(
            vet_skip(&pow2, "x/gh-padding-read", why),
            Outcome::Skip(why.into())
        );
        assert!(matches!(
            vet_skip(&odd, "x/gh-padding-read", why),
            Outcome::Fail(_)
        ));
        assert!(matches!(
            vet_skip(&pow2, "x/gh-data", why),
            Outcome::Fail(_)
        ));
        let none = scenario::all()
            .into_iter()
            .find(|s| s.name == "boot-basic")
            .unwrap();
        assert!(
            matches!(vet_skip(&none, "x/gh-straddle", why), Outcome::Fail(w) if w.contains("None"))
        );
    }

    #[test]
    fn collation_flags_missing_and_keeps_extra_checks() {
        let reported = vec![
            ("cpus".to_string(), Outcome::Fail("first".into())),
            ("cpus".to_string(), Outcome::Pass),
            ("bonus".to_string(), Outcome::Fail("x".into())),
        ];
        let r = collate("s", &["cpus", "init"], &reported);
        let names: Vec<&str> = r.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["s/cpus", "s/init", "s/bonus"]);
        assert_eq!(r[0].outcome, Outcome::Fail("first".into()));
        assert!(matches!(&r[1].outcome, Outcome::Fail(w) if w.contains("never reported")));
    }
}
