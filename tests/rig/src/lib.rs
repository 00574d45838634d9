//! The nested-virtualization rig behind `cargo xtask e2e|bench|demo` (docs/testing.md).
//!
//! Host (this machine) -> QEMU TCG with an emulated AMD SVM CPU and Intel IOMMU = "L2 host",
//! booting Debian's kernel with a busybox initramfs -> inside L2, ghvmm on KVM boots the same
//! kernel as the "L3 guest" whose init is tests/checker. Results travel back as `@@` lines on
//! the consoles.

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod backing;
pub mod bench;
pub mod cache;
pub mod ch_scenarios;
pub mod cpio;
mod demo;
mod demo_view;
mod e2e;
pub mod fault_scenarios;
pub mod flat;
pub mod gates;
pub mod gh_scenarios;
pub mod hotplug_scenarios;
pub mod hugepage;
pub mod iasl;
pub mod images;
pub mod l3;
pub mod memory_scenarios;
pub mod modules;
pub mod pause_scenarios;
pub mod protocol;
pub mod qemu;
pub mod reboot_scenarios;
pub mod retry;
pub mod scale_scenarios;
pub mod scenario;
pub mod setup;
#[cfg(test)]
mod shell_test;
pub mod soak_scenarios;
pub mod symbols;
pub mod vfio_scenarios;
pub mod vfio_user_scenarios;

pub use demo::demo;
pub use e2e::{e2e, list, E2eArgs};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use images::Paths;
use protocol::{Outcome, Transcript};

/// Everything a run needs: packages installed, binaries built, the L2 base image written.
pub struct Prepared {
    pub paths: Paths,
    pub base: Vec<u8>,
}

pub fn prepare(root: &Path) -> Result<Prepared> {
    let host = setup::ensure_host(&root.join("target/rig"))?;
    images::cargo_build(root)?;
    let paths = Paths {
        root: root.to_path_buf(),
        host,
    };
    let base = images::l2_base(&paths)?;
    Ok(Prepared { paths, base })
}

/// One named result line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    pub name: String,
    pub outcome: Outcome,
}

/// Prints PASS/FAIL/SKIP lines, `notes` (the retries) and the closing `N passed, M failed`
/// (`, K skipped` when some were); true when none failed.
pub fn report(results: &[CheckResult], notes: &[String]) -> bool {
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for r in results {
        match &r.outcome {
            Outcome::Pass => {
                passed += 1;
                println!("PASS {}", r.name);
            }
            Outcome::Fail(why) => {
                failed += 1;
                println!("FAIL {}: {why}", r.name);
            }
            Outcome::Skip(why) => {
                skipped += 1;
                println!("SKIP {}: {why}", r.name);
            }
        }
    }
    for n in notes {
        println!("{n}");
    }
    if skipped == 0 {
        println!("{passed} passed, {failed} failed");
    } else {
        println!("{passed} passed, {failed} failed, {skipped} skipped");
    }
    failed == 0
}

pub(crate) fn scenario_dir(p: &Paths, name: &str) -> PathBuf {
    p.target().join("e2e").join(name)
}

pub const GIB: u64 = 1 << 30;

/// The backing file of L2's `i`-th ivshmem device, in the scenario's directory.
pub fn ivshmem_file(i: usize) -> String {
    match i {
        0 => "ivshmem.bin".to_string(),
        i => format!("ivshmem{i}.bin"),
    }
}

/// L2's ivshmem devices when a scenario says nothing else: one of 64 MiB.
pub const DEFAULT_IVSHMEM: &[u64] = &[64 << 20];

/// One boot of L2: what goes into its image and QEMU's command line, and how long it may
/// take. `boot` runs it and collects the transcript.
pub struct L2Boot<'a> {
    /// Appended to the base image (a scenario's script, the vmlinux, QEMU for L2).
    pub overlays: &'a [Vec<u8>],
    /// Added to QEMU's arguments.
    pub qemu_args: &'a [String],
    /// The sizes of L2's ivshmem devices (sparse files in the run's directory).
    pub ivshmem: &'a [u64],
    pub timeout: Duration,
    /// Ends the run as unfinished when the console is silent this long.
    pub silence: Option<Duration>,
}

impl<'a> L2Boot<'a> {
    /// A boot with `overlays`, nothing added to QEMU's arguments, the default ivshmem device
    /// and no silence limit.
    pub fn new(overlays: &'a [Vec<u8>], timeout: Duration) -> Self {
        L2Boot {
            overlays,
            qemu_args: &[],
            ivshmem: DEFAULT_IVSHMEM,
            timeout,
            silence: None,
        }
    }

    /// Boots L2 in `dir` and collects the transcript; also returns whether L2 finished
    /// before the timeout, and how long it took.
    pub fn boot(&self, prep: &Prepared, dir: &Path) -> Result<(Transcript, bool, Duration)> {
        self.boot_watched(prep, dir, &mut |_| {})
    }

    /// `boot`, also handing every console line to `watch` (the demo shows some).
    pub fn boot_watched(
        &self,
        prep: &Prepared,
        dir: &Path,
        watch: &mut dyn FnMut(&str),
    ) -> Result<(Transcript, bool, Duration)> {
        std::fs::create_dir_all(dir)?;
        let initrd = dir.join("initrd.cpio");
        let mut image = prep.base.clone();
        for o in self.overlays {
            image.extend_from_slice(o);
        }
        std::fs::write(&initrd, &image).with_context(|| format!("writing {}", initrd.display()))?;
        let mut devices = Vec::new();
        for (i, &size) in self.ivshmem.iter().enumerate() {
            let path = dir.join(ivshmem_file(i));
            // Sparse: the device memory costs no disk until the guest writes it.
            std::fs::File::create(&path)?.set_len(size)?;
            devices.push((path, size));
        }
        std::fs::write(dir.join("versions.txt"), prep.paths.host.describe() + "\n")?;
        let l2 = qemu::L2 {
            qemu: prep.paths.host.qemu.clone(),
            kernel: prep.paths.kernel(),
            initrd,
            ivshmem: devices,
            qemu_log: dir.join("qemu.log"),
            // In the temp dir: a unix socket path must fit in 108 bytes, a checkout may be deep.
            monitor: std::env::temp_dir().join(format!("rig-monitor-{}.sock", std::process::id())),
            registers: dir.join("registers.txt"),
            memory: "2G",
            extra: self.qemu_args.to_vec(),
            silence: self.silence,
        };
        let mut t = Transcript::default();
        let start = Instant::now();
        let finished = l2.run(&dir.join("console.log"), self.timeout, |line| {
            watch(line);
            t.feed(line);
            t.over()
        })?;
        Ok((t, finished, start.elapsed()))
    }
}
