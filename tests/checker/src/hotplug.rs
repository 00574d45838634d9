//! Hot plug, seen from inside the guest (`ghvmm.vfio=hotplug ghvmm.cycles=N`): the guest
//! boots with no GPU-like device; L2 adds and removes it through ghvmm's API N times. For
//! each arrival the checker prints `@@HOTPLUG present <n> <bdf>` and for each departure
//! `@@HOTPLUG gone <n>` (L2's script waits for these before its next request). The first
//! arrival also runs every BAR check of a boot-time device (tests/checker/src/gh.rs) and
//! checks the address the SRAT reserved for the slot.
//!
//! `@@HOTPLUG ready` says the checker is waiting for the first device.

use std::path::PathBuf;
use std::time::Duration;

use crate::checks::report;
use crate::util::wait_for;
use crate::vfio::find;

fn device() -> Option<PathBuf> {
    find("0x1af4", "0x1110")
}

fn say(line: &str) {
    use std::io::Write;
    println!("{line}");
    let _ = std::io::stdout().flush();
}

/// `len` 0 (no `ghvmm.gh_len`): only follow the device (the hot-plug bench), no BAR checks.
pub fn cycles(mode: &str, len: u64, cycles: u32, expect_bdf: &str) {
    say("@@HOTPLUG ready");
    let limit = Duration::from_secs(120);
    for n in 1..=cycles {
        let Some(dev) = wait_for(limit, device) else {
            report(
                "hotplug-arrive",
                Err(format!("cycle {n}: no 1af4:1110 device after {limit:?}")),
            );
            return;
        };
        let bdf = dev
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        // The first time, the BAR checks run before L2 hears of the arrival: it removes the
        // device as soon as it does.
        if n == 1 && len > 0 {
            // The function's directory appears before its resource files: wait for them.
            let _ = wait_for(Duration::from_secs(20), || {
                dev.join("resource2").exists().then_some(())
            });
            report("hotplug-arrive", Ok(()));
            report(
                "hotplug-bdf",
                if bdf == expect_bdf {
                    Ok(())
                } else {
                    Err(format!("the device arrived at {bdf}, not at {expect_bdf}"))
                },
            );
            crate::gh::gpu_like(mode, len);
        }
        say(&format!("@@HOTPLUG present {n} {bdf}"));
        let gone = wait_for(limit, || (!dev.exists()).then_some(()));
        if gone.is_none() {
            report(
                "hotplug-depart",
                Err(format!("cycle {n}: {bdf} still there after {limit:?}")),
            );
            return;
        }
        say(&format!("@@HOTPLUG gone {n}"));
    }
    report("hotplug-depart", Ok(()));
    report("hotplug-cycles", Ok(()));
}
