//! `cargo xtask fuzz [SECONDS] [TARGET...]`: builds the cargo-fuzz project in fuzz/ and runs
//! every target (or the named ones) for SECONDS each (default 60), one after the other, then
//! prints each target's executions, executions per second, new corpus entries and result.
//! Fails when a target crashes, leaks, times out on one input or runs out of memory; the
//! input that did it is in fuzz/artifacts/<target>/ (docs/reliability.md says how to replay
//! it).
//!
//! - cargo-fuzz is installed with `cargo install cargo-fuzz --locked` when missing.
//! - The nightly toolchain is used when rustup has one; otherwise the stable one with
//!   RUSTC_BOOTSTRAP=1, which accepts the `-Z` flags cargo-fuzz passes (the sanitizer).
//! - The checked-in seeds (fuzz/corpus/<target>/) are only read: libFuzzer writes what it
//!   finds to the first corpus directory, a scratch one under fuzz/target/corpus/<target>/,
//!   kept between runs so that later runs start from what earlier ones found. Logs go to
//!   fuzz/target/logs/<target>.log. Nothing the fuzzer writes is tracked by git.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

/// Every target, with the longest input it is given (bytes).
pub const TARGETS: &[(&str, usize)] = &[
    ("config_space", 4096),
    ("bar_layout", 1024),
    ("api_request", 4096),
    ("cli", 1024),
    ("acpi_tables", 4096),
    ("vfio_user_backend", 4096),
    ("guest_bus", 4096),
];

pub const DEFAULT_SECONDS: u64 = 60;

/// One input taking longer than this is a hang.
const TIMEOUT_S: u64 = 10;
/// RSS (and single allocation) limit.
const RSS_LIMIT_MB: u64 = 2048;

/// How to call cargo for fuzzing: the rustup proxy with a toolchain, or plain cargo.
struct Toolchain {
    cargo: PathBuf,
    plus: Option<String>,
    bootstrap: bool,
}

impl Toolchain {
    fn detect() -> Toolchain {
        // The rustup proxy understands `+toolchain`; $CARGO (the toolchain's own cargo,
        // which runs xtask) does not.
        let home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
        let proxy = home
            .map(|h| h.join("bin").join("cargo"))
            .filter(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("cargo"));
        let list = Command::new("rustup")
            .args(["toolchain", "list"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
        Self::choose(list.as_deref(), proxy)
    }

    /// From `rustup toolchain list` (`None`: no rustup): a nightly if there is one, else
    /// stable with RUSTC_BOOTSTRAP=1, else whatever `cargo` is, with RUSTC_BOOTSTRAP=1.
    fn choose(list: Option<&str>, cargo: PathBuf) -> Toolchain {
        let Some(list) = list else {
            return Toolchain {
                cargo,
                plus: None,
                bootstrap: true,
            };
        };
        let name = |prefix: &str| {
            list.lines()
                .filter_map(|l| l.split_whitespace().next())
                .find(|n| n.starts_with(prefix))
                .map(str::to_string)
        };
        match name("nightly") {
            Some(n) => Toolchain {
                cargo,
                plus: Some(n),
                bootstrap: false,
            },
            None => Toolchain {
                cargo,
                plus: Some(name("stable").unwrap_or_else(|| "stable".into())),
                bootstrap: true,
            },
        }
    }

    fn describe(&self) -> String {
        let name = self.plus.as_deref().unwrap_or("the default toolchain");
        if self.bootstrap {
            format!("{name} with RUSTC_BOOTSTRAP=1 (no nightly toolchain installed)")
        } else {
            name.to_string()
        }
    }

    fn command(&self, root: &Path) -> Command {
        let mut c = Command::new(&self.cargo);
        c.current_dir(root);
        if let Some(p) = &self.plus {
            c.arg(format!("+{p}"));
        }
        // What `cargo xtask` set for itself must not pick the toolchain or the target dir of
        // the fuzz build.
        for var in [
            "RUSTUP_TOOLCHAIN",
            "RUSTC",
            "RUSTDOC",
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_TARGET_DIR",
        ] {
            c.env_remove(var);
        }
        if self.bootstrap {
            c.env("RUSTC_BOOTSTRAP", "1");
        }
        c
    }
}

fn ensure_cargo_fuzz(tc: &Toolchain, root: &Path) -> Result<()> {
    let installed = tc
        .command(root)
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if installed {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-fuzz (cargo install cargo-fuzz --locked)");
    let status = Command::new(&tc.cargo)
        .current_dir(root)
        .args(["install", "cargo-fuzz", "--locked"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .status()
        .context("running cargo install")?;
    if !status.success() {
        bail!("`cargo install cargo-fuzz --locked` failed");
    }
    Ok(())
}

/// What one run of a target did, read from libFuzzer's output.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Outcome {
    pub executions: u64,
    pub exec_per_sec: u64,
    pub new_units: u64,
    pub peak_rss_mb: u64,
    /// `None` when the run ended normally; else what libFuzzer reported.
    pub failure: Option<String>,
    pub artifact: Option<String>,
    /// The panic message or sanitizer summary, for the report.
    pub detail: Option<String>,
}

fn stat(log: &str, key: &str) -> Option<u64> {
    log.lines()
        .rev()
        .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
}

/// Parses libFuzzer's output (final stats, or the last status line after a crash).
pub fn parse_log(log: &str, success: bool) -> Outcome {
    let last_status = log
        .lines()
        .rev()
        .find(|l| l.starts_with('#') && l.split_whitespace().next().is_some_and(|w| w.len() > 1));
    let from_status = |key: &str| -> Option<u64> {
        let l = last_status?;
        let words: Vec<&str> = l.split_whitespace().collect();
        let i = words.iter().position(|w| *w == key)?;
        words.get(i + 1)?.trim_end_matches("Mb").parse().ok()
    };
    let executions = stat(log, "stat::number_of_executed_units:").or_else(|| {
        last_status
            .and_then(|l| l.split_whitespace().next())
            .and_then(|w| w.trim_start_matches('#').parse().ok())
    });
    let failure = if success {
        None
    } else if log.contains("ERROR: libFuzzer: timeout") {
        Some("timeout".to_string())
    } else if log.contains("LeakSanitizer: detected memory leaks") {
        Some("leak".to_string())
    } else if log.contains("ERROR: libFuzzer: out-of-memory") {
        Some("out of memory".to_string())
    } else if log.contains("panicked at") {
        Some("panic".to_string())
    } else if log.contains("ERROR: AddressSanitizer") {
        Some("memory error".to_string())
    } else if log.contains("ERROR: libFuzzer: deadly signal") {
        Some("crash".to_string())
    } else {
        Some("the fuzzer failed (see the log)".to_string())
    };
    let detail = failure.as_ref().and_then(|_| {
        let lines: Vec<&str> = log.lines().collect();
        lines
            .iter()
            .position(|l| l.contains("panicked at"))
            .map(|i| {
                let msg = lines.get(i + 1).copied().unwrap_or_default();
                format!("{} {}", lines[i].trim(), msg.trim())
            })
            .or_else(|| {
                lines
                    .iter()
                    .find(|l| l.starts_with("SUMMARY:") || l.contains("ERROR:"))
                    .map(|l| l.trim().to_string())
            })
    });
    Outcome {
        executions: executions.unwrap_or(0),
        exec_per_sec: stat(log, "stat::average_exec_per_sec:")
            .or_else(|| from_status("exec/s:"))
            .unwrap_or(0),
        new_units: stat(log, "stat::new_units_added:").unwrap_or(0),
        peak_rss_mb: stat(log, "stat::peak_rss_mb:")
            .or_else(|| from_status("rss:"))
            .unwrap_or(0),
        artifact: log.lines().rev().find_map(|l| {
            l.split("Test unit written to ")
                .nth(1)
                .map(|a| a.trim().to_string())
        }),
        failure,
        detail,
    }
}

/// Parses `[SECONDS] [TARGET...]`.
pub fn parse_args(args: &[String]) -> Result<(u64, Vec<String>)> {
    let mut seconds = DEFAULT_SECONDS;
    let mut targets = Vec::new();
    for (i, a) in args.iter().enumerate() {
        if i == 0 && a.bytes().all(|b| b.is_ascii_digit()) {
            seconds = a.parse().context("SECONDS")?;
            if seconds == 0 {
                bail!("SECONDS must be at least 1");
            }
        } else if TARGETS.iter().any(|(t, _)| t == a) {
            targets.push(a.clone());
        } else {
            let names: Vec<&str> = TARGETS.iter().map(|(t, _)| *t).collect();
            bail!("unknown fuzz target '{a}' (targets: {})", names.join(", "));
        }
    }
    Ok((seconds, targets))
}

/// Builds and runs the targets; false when any of them found something.
pub fn run(root: &Path, seconds: u64, only: &[String]) -> Result<bool> {
    let started = Instant::now();
    let tc = Toolchain::detect();
    eprintln!("xtask: fuzz: toolchain {}", tc.describe());
    ensure_cargo_fuzz(&tc, root)?;
    let fuzz_dir = root.join("fuzz");
    let build = Instant::now();
    eprintln!("xtask: cargo fuzz build (all targets, release with debug assertions, ASan)");
    let status = tc
        .command(root)
        .args(["fuzz", "build", "--fuzz-dir", "fuzz"])
        .status()
        .context("running cargo fuzz build")?;
    if !status.success() {
        bail!("`cargo fuzz build` failed");
    }
    let build_s = build.elapsed().as_secs_f64();
    let logs = fuzz_dir.join("target").join("logs");
    fs::create_dir_all(&logs)?;
    let mut results = Vec::new();
    for &(target, max_len) in TARGETS {
        if !only.is_empty() && !only.iter().any(|t| t == target) {
            continue;
        }
        let scratch = fuzz_dir.join("target").join("corpus").join(target);
        fs::create_dir_all(&scratch)?;
        let mut args = vec![
            "fuzz".to_string(),
            "run".into(),
            "--fuzz-dir".into(),
            "fuzz".into(),
            target.into(),
            format!("fuzz/target/corpus/{target}"),
            format!("fuzz/corpus/{target}"),
            "--".into(),
            format!("-max_total_time={seconds}"),
            format!("-timeout={TIMEOUT_S}"),
            format!("-rss_limit_mb={RSS_LIMIT_MB}"),
            format!("-malloc_limit_mb={RSS_LIMIT_MB}"),
            format!("-max_len={max_len}"),
            "-print_final_stats=1".into(),
            // No rereading of the scratch corpus every second for units other processes
            // wrote: one process fuzzes a target at a time, and the stat of thousands of
            // files each second is measurable.
            "-reload=0".into(),
        ];
        let dict = fuzz_dir.join("dict").join(format!("{target}.dict"));
        if dict.exists() {
            args.push(format!("-dict=fuzz/dict/{target}.dict"));
        }
        let log_path = logs.join(format!("{target}.log"));
        let log_file = fs::File::create(&log_path)?;
        eprintln!(
            "xtask: fuzz {target} for {seconds} s (log: {})",
            log_path.display()
        );
        let t0 = Instant::now();
        let status = tc
            .command(root)
            .args(&args)
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .status()
            .with_context(|| format!("running cargo fuzz run {target}"))?;
        let wall = t0.elapsed().as_secs_f64();
        let log = fs::read_to_string(&log_path).unwrap_or_default();
        let outcome = parse_log(&log, status.success());
        match &outcome.failure {
            None => eprintln!(
                "xtask: fuzz {target}: {} executions, {} exec/s, {} new corpus entries: nothing found",
                outcome.executions, outcome.exec_per_sec, outcome.new_units
            ),
            Some(f) => {
                eprintln!(
                    "xtask: fuzz {target}: FOUND a {f} after {} executions: {}",
                    outcome.executions,
                    outcome.detail.as_deref().unwrap_or("")
                );
                if let Some(a) = &outcome.artifact {
                    eprintln!(
                        "xtask: fuzz {target}: input in {a}; replay: cargo +nightly fuzz run --fuzz-dir fuzz {target} {a}"
                    );
                }
            }
        }
        results.push((target, wall, outcome));
    }

    println!();
    println!(
        "fuzz results ({seconds} s per target, build {build_s:.0} s, total {:.0} s):",
        started.elapsed().as_secs_f64()
    );
    println!(
        "{:<18} {:>8} {:>12} {:>9} {:>6} {:>7}  result",
        "target", "seconds", "executions", "exec/s", "new", "rss MB"
    );
    let mut failed = 0;
    for (target, wall, o) in &results {
        let result = match &o.failure {
            None => "nothing found".to_string(),
            Some(f) => {
                failed += 1;
                format!(
                    "FAILED: {f} ({})",
                    o.artifact.as_deref().unwrap_or("no artifact")
                )
            }
        };
        println!(
            "{target:<18} {wall:>8.0} {:>12} {:>9} {:>6} {:>7}  {result}",
            o.executions, o.exec_per_sec, o.new_units, o.peak_rss_mb
        );
    }
    println!("fuzz: {} passed, {failed} failed", results.len() - failed);
    Ok(failed == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clean_run() {
        let log = "INFO: Seed: 1\n#2\tINITED cov: 10 ft: 10 corp: 3/30b exec/s: 0 rss: 40Mb\n\
                   #70000\tDONE   cov: 900 ft: 3000 corp: 150/10Kb lim: 4096 exec/s: 2333 rss: 85Mb\n\
                   Done 70000 runs in 31 second(s)\n\
                   stat::number_of_executed_units: 70000\n\
                   stat::average_exec_per_sec:     2258\n\
                   stat::new_units_added:          147\n\
                   stat::slowest_unit_time_sec:    0\n\
                   stat::peak_rss_mb:              85\n";
        let o = parse_log(log, true);
        assert_eq!(
            o,
            Outcome {
                executions: 70000,
                exec_per_sec: 2258,
                new_units: 147,
                peak_rss_mb: 85,
                failure: None,
                artifact: None,
                detail: None,
            }
        );
    }

    #[test]
    fn a_panic_and_a_leak() {
        let log = "#1431\tNEW    cov: 1983 ft: 6459 corp: 186/59Kb lim: 1323 exec/s: 1431 rss: 93Mb L: 1323/1323\n\n\
                   thread '<unnamed>' (19228) panicked at src/config_space.rs:693:13:\n\
                   assertion `left == right` failed: capability id at 0xe0\n\
                   ==19228== ERROR: libFuzzer: deadly signal\n\
                   artifact_prefix='fuzz/artifacts/config_space/'; Test unit written to fuzz/artifacts/config_space/crash-4fd6\n";
        let o = parse_log(log, false);
        assert_eq!(o.failure.as_deref(), Some("panic"));
        assert_eq!(o.executions, 1431);
        assert_eq!(o.exec_per_sec, 1431);
        assert_eq!(o.peak_rss_mb, 93);
        assert_eq!(
            o.artifact.as_deref(),
            Some("fuzz/artifacts/config_space/crash-4fd6")
        );
        assert!(o.detail.unwrap().contains("capability id at 0xe0"));
        let leak = "==1==ERROR: LeakSanitizer: detected memory leaks\nSUMMARY: AddressSanitizer: 41 byte(s) leaked in 1 allocation(s).\n";
        assert_eq!(parse_log(leak, false).failure.as_deref(), Some("leak"));
        let timeout = "==1== ERROR: libFuzzer: timeout after 10 seconds\n";
        assert_eq!(
            parse_log(timeout, false).failure.as_deref(),
            Some("timeout")
        );
    }

    #[test]
    fn toolchain_choice() {
        let c = || PathBuf::from("cargo");
        let list = "stable-x86_64-unknown-linux-gnu (active, default)\nnightly-x86_64-unknown-linux-gnu\n1.95.0-x86_64-unknown-linux-gnu\n";
        let t = Toolchain::choose(Some(list), c());
        assert_eq!(t.plus.as_deref(), Some("nightly-x86_64-unknown-linux-gnu"));
        assert!(!t.bootstrap);
        let t = Toolchain::choose(Some("stable-x86_64-unknown-linux-gnu (default)\n"), c());
        assert_eq!(t.plus.as_deref(), Some("stable-x86_64-unknown-linux-gnu"));
        assert!(t.bootstrap);
        let mut cmd = t.command(Path::new("/"));
        let envs: Vec<_> = cmd.get_envs().collect();
        assert!(envs.contains(&(
            std::ffi::OsStr::new("RUSTC_BOOTSTRAP"),
            Some(std::ffi::OsStr::new("1"))
        )));
        assert_eq!(
            cmd.get_args().next().unwrap(),
            "+stable-x86_64-unknown-linux-gnu"
        );
        let _ = cmd.arg("fuzz");
        let t = Toolchain::choose(None, c());
        assert_eq!((t.plus, t.bootstrap), (None, true));
    }

    #[test]
    fn arguments() {
        let a = |v: &[&str]| parse_args(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(a(&[]).unwrap(), (60, vec![]));
        assert_eq!(a(&["30"]).unwrap(), (30, vec![]));
        assert_eq!(a(&["600", "cli"]).unwrap(), (600, vec!["cli".to_string()]));
        assert_eq!(a(&["cli"]).unwrap(), (60, vec!["cli".to_string()]));
        assert!(a(&["0"]).is_err());
        assert!(a(&["30", "nope"]).is_err());
        assert!(a(&["cli", "30"]).is_err());
    }
}
