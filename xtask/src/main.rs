//! `cargo xtask`: everything that is not plain cargo.
//!
//!   cargo xtask e2e [--list] [--gh-mode vmm_pads|kernel_pads] [--gh-len BYTES]
//!                   [--l3-vmm ghvmm|qemu] [FILTER...]
//!                                          nested-virtualization scenarios
//!   cargo xtask bench                      boot-time comparison with QEMU, in the rig
//!   cargo xtask demo                       show, from a guest, a GPU-like device under ghvmm's GH profile
//!   cargo xtask fuzz [SECONDS] [TARGET...] every cargo-fuzz target for SECONDS each (60)
//!   cargo xtask test                       fmt, clippy, unit tests, 30 s of each fuzz target,
//!                                          then every e2e scenario

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

mod fuzz;

/// How long `cargo xtask test` runs each fuzz target (at least 30 s: long enough to find the shallow bugs, short enough for CI).
const TEST_FUZZ_SECONDS: u64 = 30;

fn root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

fn cargo(root: &PathBuf, args: &[&str]) -> Result<()> {
    eprintln!("xtask: cargo {}", args.join(" "));
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root)
        .args(args)
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("`cargo {}` failed", args.join(" "));
    }
    Ok(())
}

/// Stages of `cargo xtask test` with how long each took, printed last whatever the outcome,
/// so a slow CI run says where its time went.
#[derive(Default)]
struct Stages(Vec<(&'static str, Duration)>);

impl Stages {
    fn time<T>(&mut self, name: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let start = Instant::now();
        let r = f();
        self.0.push((name, start.elapsed()));
        r
    }

    fn line(&self) -> String {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(name, d)| format!("{name} {}s", d.as_secs()))
            .collect();
        format!("xtask: time per stage: {}", parts.join(", "))
    }
}

fn test(root: &PathBuf) -> Result<bool> {
    let mut stages = Stages::default();
    let r = test_stages(root, &mut stages);
    println!("{}", stages.line());
    r
}

fn test_stages(root: &PathBuf, stages: &mut Stages) -> Result<bool> {
    // First, because unit tests use host tools too (the ACPI tests run iasl).
    stages.time("host tools", rig::setup::ensure_tools)?;
    stages.time("fmt", || cargo(root, &["fmt", "--all", "--", "--check"]))?;
    stages.time("clippy", || {
        cargo(
            root,
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
        )
    })?;
    stages.time("unit tests", || cargo(root, &["test", "--workspace"]))?;
    eprintln!("xtask: fuzz ({TEST_FUZZ_SECONDS} s per target)");
    if !stages.time("fuzz", || fuzz::run(root, TEST_FUZZ_SECONDS, &[]))? {
        bail!("a fuzz target found a crash, leak or hang (see above)");
    }
    eprintln!("xtask: e2e (nested rig)");
    stages.time("e2e", || rig::e2e(root, &rig::E2eArgs::parse(&[])?))
}

const USAGE: &str = "usage: cargo xtask <e2e [--list] [--gh-mode M] [--gh-len BYTES] [--l3-vmm ghvmm|qemu] [FILTER...] | bench [devices|scale] | demo | fuzz [SECONDS] [TARGET...] | test>";

fn run() -> Result<bool> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = root();
    match args.first().map(String::as_str) {
        Some("e2e") if args.get(1).map(String::as_str) == Some("--list") => {
            rig::list();
            Ok(true)
        }
        Some("e2e") => rig::e2e(&root, &rig::E2eArgs::parse(&args[1..])?),
        Some("bench") => {
            rig::bench::run(&root, rig::bench::Part::parse(&args[1..])?).map(|()| true)
        }
        Some("demo") => rig::demo(&root),
        Some("fuzz") => {
            let (seconds, targets) = fuzz::parse_args(&args[1..])?;
            fuzz::run(&root, seconds, &targets)
        }
        Some("test") => test(&root),
        _ => bail!("{USAGE}"),
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stage_is_timed_even_the_one_that_fails() {
        let mut stages = Stages::default();
        assert_eq!(stages.time("fmt", || Ok(1)).unwrap(), 1);
        assert!(stages
            .time("clippy", || -> Result<()> { bail!("warnings") })
            .is_err());
        assert_eq!(stages.line(), "xtask: time per stage: fmt 0s, clippy 0s");
    }
}
