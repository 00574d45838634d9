//! `cargo xtask demo`: one L3 guest under ghvmm with the whole L2 console on the terminal.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use crate::l3::{Vmm, L3};
use crate::protocol::Outcome;
use crate::setup::say;
use crate::{boot_l2, images, prepare, scenario_dir};

pub fn demo(root: &Path) -> Result<bool> {
    let prep = prepare(root)?;
    // The full kernel log this time: the point is to watch the guest boot.
    let l3 = L3 {
        verbose: true,
        ..L3::new(Vmm::Ghvmm, 2, "512M").cmdline("ghvmm.mode=demo")
    };
    let script = format!(
        "echo '@@L2 L2 host is up; starting ghvmm ({} vCPUs, {})'\n{}",
        l3.cpus,
        l3.mem,
        l3.script()
    );
    say("booting L2 (QEMU TCG) and, inside it, an L3 guest under ghvmm");
    let dir = scenario_dir(&prep.paths, "demo");
    let (t, finished, took) = boot_l2(
        &prep,
        &dir,
        &[images::scenario_overlay(&script)],
        &[],
        crate::DEFAULT_IVSHMEM,
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
