//! The nested-virtualization rig behind `cargo xtask e2e|bench|demo` (docs/testing.md).
//!
//! Host (this machine) -> QEMU TCG with an emulated AMD SVM CPU and Intel IOMMU = "L2 host",
//! booting Debian's kernel with a busybox initramfs -> inside L2, ghvmm on KVM boots the same
//! kernel as the "L3 guest" whose init is tests/checker. Results travel back as `@@` lines on
//! the consoles.

pub mod bench;
pub mod cpio;
pub mod iasl;
pub mod images;
pub mod modules;
pub mod protocol;
pub mod qemu;
pub mod scenario;
pub mod setup;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use images::Paths;
use protocol::{Outcome, Transcript};
use scenario::Scenario;
use setup::say;

/// Everything a run needs: packages installed, binaries built, the L2 base image written.
pub struct Prepared {
    pub paths: Paths,
    pub base: Vec<u8>,
}

pub fn prepare(root: &Path) -> Result<Prepared> {
    let abi = setup::ensure_packages()?;
    images::cargo_build(root)?;
    let paths = Paths {
        root: root.to_path_buf(),
        abi,
    };
    say("building the L2 initramfs (busybox, KVM/VFIO modules, ghvmm, L3 kernel + checker initramfs)");
    let base = images::l2_base(&paths)?;
    std::fs::create_dir_all(paths.rig_dir())?;
    Ok(Prepared { paths, base })
}

/// One named result line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    pub name: String,
    pub outcome: Outcome,
}

fn scenario_dir(p: &Paths, name: &str) -> PathBuf {
    p.target().join("e2e").join(name)
}

/// Boots L2 with `overlays` appended to the base image and collects the transcript.
pub fn boot_l2(
    prep: &Prepared,
    dir: &Path,
    overlays: &[Vec<u8>],
    timeout: Duration,
    echo: bool,
) -> Result<(Transcript, bool, Duration)> {
    std::fs::create_dir_all(dir)?;
    let initrd = dir.join("initrd.cpio");
    let mut image = prep.base.clone();
    for o in overlays {
        image.extend_from_slice(o);
    }
    std::fs::write(&initrd, &image).with_context(|| format!("writing {}", initrd.display()))?;
    let ivshmem = dir.join("ivshmem.bin");
    std::fs::write(&ivshmem, vec![0u8; 64 << 20])?;
    let l2 = qemu::L2 {
        kernel: prep.paths.kernel(),
        initrd,
        ivshmem,
        memory: "2G",
    };
    let mut t = Transcript::default();
    let start = Instant::now();
    let finished = l2.run(&dir.join("console.log"), timeout, echo, |line| {
        t.feed(line);
        t.l2_done
    })?;
    Ok((t, finished, start.elapsed()))
}

/// Runs one scenario and returns its results (never an Err for a guest-side failure).
pub fn run_scenario(prep: &Prepared, s: &Scenario) -> Result<Vec<CheckResult>> {
    let dir = scenario_dir(&prep.paths, s.name);
    let _ = std::fs::remove_dir_all(&dir);
    say(&format!(
        "{}: {} (timeout {}s)",
        s.name,
        s.about,
        s.timeout.as_secs()
    ));
    // Host checks may need the GPU-like device's length: keep it next to the log.
    if let Some(len) = s
        .script
        .split("ghvmm.gh_len=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
    {
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("gh_len"), len.trim_end_matches('"'))?;
    }
    let mut overlays = Vec::new();
    if s.vmlinux {
        overlays.push(images::vmlinux_overlay(&prep.paths)?);
    }
    overlays.push(images::scenario_overlay(&s.script));
    let (t, finished, took) = boot_l2(prep, &dir, &overlays, s.timeout, false)?;
    say(&format!(
        "{}: finished in {:.1}s, console log in {}",
        s.name,
        took.as_secs_f64(),
        dir.join("console.log").display()
    ));
    let mut results: Vec<CheckResult> = Vec::new();
    let mut push = |name: String, outcome: Outcome| results.push(CheckResult { name, outcome });
    let mut reported = t.checks.clone();
    if let Some(host_checks) = s.host_checks {
        reported.extend(host_checks(&dir));
    }
    for expected in &s.expect {
        let got = reported
            .iter()
            .find(|(n, _)| n == expected)
            .map(|(_, o)| o.clone());
        push(
            format!("{}/{expected}", s.name),
            got.unwrap_or_else(|| Outcome::Fail("never reported (see console.log)".into())),
        );
    }
    for (name, outcome) in &reported {
        if !s.expect.contains(&name.as_str()) {
            push(format!("{}/{name}", s.name), outcome.clone());
        }
    }
    if !finished {
        push(
            format!("{}/timeout", s.name),
            Outcome::Fail(format!("no end after {}s", s.timeout.as_secs())),
        );
    }
    if s.acpi {
        let acpi_dir = dir.join("acpi");
        std::fs::create_dir_all(&acpi_dir)?;
        let tables = t.complete_tables();
        if tables.is_empty() {
            push(
                format!("{}/acpi-tables", s.name),
                Outcome::Fail("the guest sent no ACPI tables".into()),
            );
        }
        for (name, bytes) in tables {
            let check = format!("{}/iasl-{name}", s.name);
            let outcome = match bytes {
                Ok(b) => {
                    let file = acpi_dir.join(format!("{name}.dat"));
                    std::fs::write(&file, b)?;
                    match iasl::disassemble(&file) {
                        Ok(()) => Outcome::Pass,
                        Err(e) => Outcome::Fail(e),
                    }
                }
                Err(e) => Outcome::Fail(e),
            };
            push(check, outcome);
        }
    }
    Ok(results)
}

/// Runs a scenario; if anything failed, runs it once more and reports the second attempt.
/// The retry exists because QEMU's TCG emulation of SVM, under which every L3 guest runs, very
/// rarely breaks a nested guest or L2 itself (docs/testing.md, "Known flakiness"); it is
/// printed, with the first attempt's failures, and the first log is kept.
fn run_with_one_retry(prep: &Prepared, s: &Scenario) -> Result<Vec<CheckResult>> {
    let first = run_scenario(prep, s)?;
    let failed: Vec<String> = first
        .iter()
        .filter_map(|r| match &r.outcome {
            Outcome::Fail(why) => Some(format!("{}: {why}", r.name)),
            Outcome::Pass => None,
        })
        .collect();
    if failed.is_empty() {
        return Ok(first);
    }
    let dir = scenario_dir(&prep.paths, s.name);
    let kept = prep
        .paths
        .target()
        .join("e2e")
        .join(format!("{}.attempt1.log", s.name));
    let _ = std::fs::copy(dir.join("console.log"), &kept);
    println!(
        "RETRY {}: first attempt failed ({}); its log: {}",
        s.name,
        failed.join("; "),
        kept.display()
    );
    run_scenario(prep, s)
}

/// Prints PASS/FAIL lines and the closing `N passed, M failed`; true when all passed.
pub fn report(results: &[CheckResult]) -> bool {
    let mut failed = 0;
    for r in results {
        match &r.outcome {
            Outcome::Pass => println!("PASS {}", r.name),
            Outcome::Fail(why) => {
                failed += 1;
                println!("FAIL {}: {why}", r.name);
            }
        }
    }
    println!("{} passed, {} failed", results.len() - failed, failed);
    failed == 0
}

/// `cargo xtask e2e` arguments: filters, and optionally one GPU-like device configuration
/// replacing the default modes x lengths.
pub struct E2eArgs {
    pub filters: Vec<String>,
    pub gh_mode: Option<String>,
    pub gh_len: Option<u64>,
}

impl E2eArgs {
    pub fn parse(args: &[String]) -> Result<Self> {
        let mut a = E2eArgs {
            filters: Vec::new(),
            gh_mode: None,
            gh_len: None,
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--gh-mode" => {
                    let m = it
                        .next()
                        .context("--gh-mode needs vmm_pads or kernel_pads")?;
                    if !scenario::GH_MODES.contains(&m.as_str()) {
                        anyhow::bail!("--gh-mode {m}: use vmm_pads or kernel_pads");
                    }
                    a.gh_mode = Some(m.clone());
                }
                "--gh-len" => {
                    let l = it.next().context("--gh-len needs a byte count")?;
                    let n: u64 = l
                        .parse()
                        .with_context(|| format!("--gh-len {l}: not a number of bytes"))?;
                    if !(4096..=64 << 20).contains(&n) || !n.is_multiple_of(4096) {
                        anyhow::bail!("--gh-len {l}: a multiple of 4096 between 4 KiB and 64 MiB (ivshmem's BAR2)");
                    }
                    a.gh_len = Some(n);
                }
                f if f.starts_with("--") => anyhow::bail!("unknown option {f}"),
                f => a.filters.push(f.to_string()),
            }
        }
        Ok(a)
    }
}

pub fn e2e(root: &Path, args: &E2eArgs) -> Result<bool> {
    let mut all = scenario::all();
    if args.gh_mode.is_some() || args.gh_len.is_some() {
        let modes: Vec<&'static str> = match &args.gh_mode {
            Some(m) => scenario::GH_MODES
                .iter()
                .copied()
                .filter(|x| x == m)
                .collect(),
            None => scenario::GH_MODES.to_vec(),
        };
        let lens: Vec<u64> = args
            .gh_len
            .map_or(scenario::GH_LENGTHS.to_vec(), |l| vec![l]);
        all.retain(|s| !s.name.starts_with("vfio-gh-") || s.name == "vfio-gh-bad-info");
        all.extend(scenario::gh_device_scenarios(&modes, &lens));
    }
    let filters = &args.filters;
    let chosen = scenario::select(&all, filters);
    if chosen.is_empty() {
        anyhow::bail!("no scenario matches {filters:?} (see --list)");
    }
    let prep = prepare(root)?;
    let mut results = Vec::new();
    for s in chosen {
        results.extend(run_with_one_retry(&prep, s)?);
    }
    Ok(report(&results))
}

pub fn list() {
    for s in scenario::all() {
        println!("{:<16} {}", s.name, s.about);
    }
}

/// Boots one guest in demo mode with its console on the terminal.
pub fn demo(root: &Path) -> Result<bool> {
    let prep = prepare(root)?;
    // The full kernel log this time: the point is to watch the guest boot.
    let script = "echo '@@L2 L2 host is up; starting ghvmm (2 vCPUs, 512M)'\n\
         /bin/ghvmm --kernel /l3/vmlinuz --initramfs /l3/initramfs \
         --cmdline \"console=ttyS0 panic=-1 ghvmm.mode=demo\" \
         --cpus boot=2 --memory size=512M --serial tty --console off\n\
         rc=$?\n\
         l2_check vmm-exit $rc \"ghvmm exit code $rc (expected 0)\"\n"
        .to_string();
    say("booting L2 (QEMU TCG) and, inside it, an L3 guest under ghvmm");
    let dir = scenario_dir(&prep.paths, "demo");
    let (t, finished, took) = boot_l2(
        &prep,
        &dir,
        &[images::scenario_overlay(&script)],
        Duration::from_secs(300),
        true,
    )?;
    let ok = finished
        && t.checks
            .iter()
            .any(|(n, o)| n == "vmm-exit" && *o == Outcome::Pass);
    say(&format!(
        "demo {} in {:.1}s (log: {})",
        if ok { "finished" } else { "FAILED" },
        took.as_secs_f64(),
        dir.join("console.log").display()
    ));
    Ok(ok)
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
    }
}
