//! `cargo xtask bench`: boot time of an L3 guest under ghvmm vs QEMU/KVM, both inside the same
//! L2, alternating, measured on L2's clock from VMM start to the checker's first line.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::images;
use crate::scenario::L3_CMDLINE;
use crate::setup::say;

const RUNS: usize = 3;
const MEM: &str = "512M";
const CPUS: u32 = 2;

fn script() -> String {
    let cmdline = format!("{L3_CMDLINE} ghvmm.cpus={CPUS} ghvmm.mem={MEM}");
    let ghvmm = format!(
        "/bin/checker time-to-marker ghvmm @@INIT -- /bin/ghvmm --kernel /l3/vmlinuz \
         --initramfs /l3/initramfs --cmdline \"{cmdline}\" --cpus boot={CPUS} \
         --memory size={MEM} --serial tty --console off"
    );
    let qemu = format!(
        "/bin/checker time-to-marker qemu @@INIT -- /bin/qemu-system-x86_64 -enable-kvm \
         -cpu host -m {MEM} -smp {CPUS} -L /qemu -nic none -display none -serial stdio \
         -monitor none -no-reboot -kernel /l3/vmlinuz -initrd /l3/initramfs \
         -append \"{cmdline}\""
    );
    let mut s = String::new();
    for _ in 0..RUNS {
        s.push_str(&format!("{ghvmm}\n{qemu}\n"));
    }
    s
}

fn median(v: &mut [u64]) -> Option<u64> {
    v.sort_unstable();
    v.get(v.len() / 2).copied()
}

pub fn run(root: &Path) -> Result<()> {
    let prep = crate::prepare(root)?;
    say("bench: booting L2 with ghvmm and QEMU, alternating, 3 boots each");
    let dir = prep.paths.target().join("bench");
    let (t, finished, _) = crate::boot_l2(
        &prep,
        &dir,
        &[images::qemu_overlay()?, images::scenario_overlay(&script())],
        Duration::from_secs(900),
        false,
    )?;
    if !finished {
        bail!(
            "the bench run timed out (log: {})",
            dir.join("console.log").display()
        );
    }
    let times = |label: &str| -> Vec<u64> {
        t.bench
            .iter()
            .filter(|(l, _)| l == label)
            .map(|(_, ms)| *ms)
            .collect()
    };
    let (mut g, mut q) = (times("ghvmm"), times("qemu"));
    if g.len() != RUNS || q.len() != RUNS {
        bail!(
            "expected {RUNS} timings per VMM, got ghvmm {g:?} qemu {q:?} (log: {})",
            dir.join("console.log").display()
        );
    }
    let (gm, qm) = (
        median(&mut g.clone()).unwrap_or(0),
        median(&mut q.clone()).unwrap_or(0),
    );
    let ratio = gm as f64 / qm.max(1) as f64;
    println!();
    println!("boot to L3 init (ms, L2 clock)   runs                 median");
    println!(
        "ghvmm                            {:<20} {gm}",
        format!("{g:?}")
    );
    println!(
        "qemu -enable-kvm                 {:<20} {qm}",
        format!("{q:?}")
    );
    println!(
        "ratio ghvmm/qemu: {ratio:.2} (goal <= 0.50: {})",
        if ratio <= 0.5 { "met" } else { "not met" }
    );
    g.sort_unstable();
    q.sort_unstable();
    let json = format!(
        "{{\n  \"boot_to_init_ms\": {{\n    \"ghvmm\": {g:?},\n    \"qemu\": {q:?},\n    \
         \"ghvmm_median\": {gm},\n    \"qemu_median\": {qm},\n    \"ratio\": {ratio:.3},\n    \
         \"goal\": 0.5\n  }},\n  \"guest\": {{ \"cpus\": {CPUS}, \"memory\": \"{MEM}\" }}\n}}\n"
    );
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("results.json"), json)?;
    say(&format!("wrote {}", dir.join("results.json").display()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_alternates_vmms() {
        let s = script();
        let order: Vec<&str> = s
            .lines()
            .map(|l| {
                if l.contains("time-to-marker ghvmm") {
                    "g"
                } else {
                    "q"
                }
            })
            .collect();
        assert_eq!(order, ["g", "q", "g", "q", "g", "q"]);
    }

    #[test]
    fn median_of_three() {
        assert_eq!(median(&mut [30, 10, 20]), Some(20));
        assert_eq!(median(&mut []), None);
    }
}
