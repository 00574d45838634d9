//! Where a silently hung L2 was: when L2 hangs with no message at all (both CPUs spinning
//! with interrupts off, which the soft-lockup detector cannot see, and there is no NMI
//! watchdog without a PMU), the rig saves the CPUs' registers from QEMU's monitor, then boots
//! a fresh L2 that names each RIP from its /proc/kallsyms (`checker resolve`). Debian's
//! System.map is a stub and its vmlinux is stripped, so a booted kernel is the only symbol
//! table at hand; L2 and L3 boot with `nokaslr`, so the same kernel puts the same code at the
//! same address every time (module addresses hold when the modules load in the same order).

/// The `RIP=` of every CPU in QEMU's `info registers -a` output, in order.
pub fn rips(info_registers: &str) -> Vec<u64> {
    info_registers
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("RIP="))
        .filter_map(|v| u64::from_str_radix(v, 16).ok())
        .collect()
}

/// `(vCPU index, RIP)` from ghvmm's `ghvmm: vCPU N registers: RIP=...` lines (its SIGUSR1
/// dump), the last dump of each vCPU.
pub fn vcpu_rips(console: &str) -> Vec<(u32, u64)> {
    let mut out: Vec<(u32, u64)> = Vec::new();
    for line in console.lines() {
        let Some(rest) = line.split("ghvmm: vCPU ").nth(1) else {
            continue;
        };
        let Some((index, regs)) = rest.split_once(" registers: ") else {
            continue;
        };
        let (Ok(index), Some(rip)) = (index.parse::<u32>(), rips(regs).first().copied()) else {
            continue;
        };
        out.retain(|(i, _)| *i != index);
        out.push((index, rip));
    }
    out.sort();
    out
}

/// One line naming where each CPU was: `L2 cpu0 RIP=... (symbol) | ...`; `names` maps an
/// address (as `0x...`) to its symbol.
pub fn describe(cpus: &[(String, u64)], names: &[(String, String)]) -> String {
    cpus.iter()
        .map(|(cpu, rip)| {
            let key = format!("{rip:#x}");
            let name = names
                .iter()
                .find(|(a, _)| *a == key)
                .map_or(String::new(), |(_, n)| format!(" ({n})"));
            format!("{cpu} RIP={key}{name}")
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_cpus_rip() {
        let info = "CPU#0\nRAX=0 RBX=1\nRIP=ffffffff81002010 RFL=00000046 [---Z-P-] CPL=0\n\
CPU#1\nRIP=ffffffff81001004 RFL=00000002\n";
        let r = rips(info);
        assert_eq!(r, [0xffff_ffff_8100_2010, 0xffff_ffff_8100_1004]);
        let names = vec![(
            "0xffffffff81002010".to_string(),
            "qi_submit_sync+0x10".to_string(),
        )];
        let cpus: Vec<(String, u64)> = r
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("L2 cpu{i}"), *r))
            .collect();
        assert_eq!(
            describe(&cpus, &names),
            "L2 cpu0 RIP=0xffffffff81002010 (qi_submit_sync+0x10) | L2 cpu1 RIP=0xffffffff81001004"
        );
        assert!(rips("garbage").is_empty());
    }

    #[test]
    fn reads_ghvmms_vcpu_dumps() {
        let console = "noise\n\
ghvmm: vCPU 1 registers: RIP=0000000000001000 RSP=0\n\
[  3.1] ghvmm: vCPU 0 registers: RIP=ffffffff81002010 RSP=ff\n\
ghvmm: vCPU 1 registers: RIP=ffffffff81001004 RSP=0\n\
ghvmm: vCPU x registers: RIP=1\n";
        assert_eq!(
            vcpu_rips(console),
            [(0, 0xffff_ffff_8100_2010), (1, 0xffff_ffff_8100_1004)],
            "the last dump of each vCPU"
        );
    }
}
