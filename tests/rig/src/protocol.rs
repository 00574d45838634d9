//! Parses the console lines of one scenario: `@@` records from the L3 checker and the L2 init
//! (tests/checker/src/main.rs documents them), wherever they start in a line.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail(String),
    /// Nothing to check in this configuration (the reason); never counted as passed.
    Skip(String),
}

#[derive(Debug, Default)]
pub struct Transcript {
    /// Check name -> outcome, in the order first reported.
    pub checks: Vec<(String, Outcome)>,
    /// The names of the checks L2 reported (`@@L2CHECK`), in `checks` too.
    pub l2_checks: Vec<String>,
    /// ACPI file name -> bytes, with the length and sum the guest announced.
    pub acpi: BTreeMap<String, Vec<u8>>,
    pub acpi_end: BTreeMap<String, (usize, u64)>,
    pub bench: Vec<(String, u64)>,
    pub l2_done: bool,
    pub l3_done: bool,
    pub malformed: Vec<String>,
    /// A kernel's report that a CPU stopped scheduling (soft lockup, RCU stall): the
    /// scenario cannot end any more. The line, and how many lines came after it (the
    /// backtrace, which the rig waits for before it stops L2). `lockup_in_l2` says whose.
    pub lockup: Option<(String, usize)>,
    /// `checker resolve` answers: address -> symbol.
    pub resolved: Vec<(String, String)>,
    /// `@@FACT <key> <value>`: what the guest saw, for host checks to compare.
    pub facts: Vec<(String, String)>,
}

/// Kernel messages after which a scenario can only time out.
const LOCKUP_MARKERS: [&str; 3] = [
    "BUG: soft lockup",
    "rcu_preempt detected stalls",
    "rcu_sched detected stalls",
];

/// Lines kept after a lockup report before L2 is stopped: enough for the backtraces of
/// both of L2's CPUs at the rig's log level.
pub const LOCKUP_TAIL_LINES: usize = 120;

impl Transcript {
    /// Whether the lockup was L2's kernel's, the host under the VMM, rather than the
    /// guest's: L2's kernel messages carry a timestamp, the guest's do not (`printk.time=0`
    /// in l3.rs `QUIET_CMDLINE`).
    pub fn lockup_in_l2(&self) -> bool {
        self.lockup
            .as_ref()
            .is_some_and(|(line, _)| line.starts_with('['))
    }

    pub fn feed(&mut self, raw: &str) {
        let line = raw.trim_end_matches(['\r', '\n']);
        match &mut self.lockup {
            Some((_, after)) => *after += 1,
            None if LOCKUP_MARKERS.iter().any(|m| line.contains(m)) => {
                self.lockup = Some((line.trim().to_string(), 0));
            }
            None => {}
        }
        // The last record on a line wins: when a writer dies mid-line (a guest cut off in the
        // middle of a table dump), the next record is appended to the unfinished line.
        let Some(at) = line.rfind("@@") else { return };
        let rec = &line[at + 2..];
        let mut words = rec.splitn(3, ' ');
        let kind = words.next().unwrap_or("");
        let a = words.next().unwrap_or("");
        let rest = words.next().unwrap_or("");
        match kind {
            "CHECK" | "L2CHECK" => {
                let (verdict, reason) = rest.split_once(' ').unwrap_or((rest, ""));
                let outcome = match verdict {
                    "PASS" => Outcome::Pass,
                    "FAIL" => Outcome::Fail(reason.to_string()),
                    "SKIP" => Outcome::Skip(reason.to_string()),
                    _ => {
                        self.malformed.push(line.to_string());
                        return;
                    }
                };
                if kind == "L2CHECK" {
                    self.l2_checks.push(a.to_string());
                }
                self.checks.push((a.to_string(), outcome));
            }
            "ACPI" => match decode_hex(rest) {
                Some(bytes) => self.acpi.entry(a.to_string()).or_default().extend(bytes),
                None => self.malformed.push(line.to_string()),
            },
            "ACPIEND" => {
                let mut it = rest.split_whitespace();
                match (
                    it.next().and_then(|v| v.parse().ok()),
                    it.next().and_then(|v| v.parse().ok()),
                ) {
                    (Some(len), Some(sum)) => {
                        self.acpi_end.insert(a.to_string(), (len, sum));
                    }
                    _ => self.malformed.push(line.to_string()),
                }
            }
            "BENCH" => match rest.trim().parse() {
                Ok(ms) => self.bench.push((a.to_string(), ms)),
                Err(_) => self.malformed.push(line.to_string()),
            },
            "RESOLVE" => self.resolved.push((a.to_string(), rest.trim().to_string())),
            "FACT" => self.facts.push((a.to_string(), rest.trim().to_string())),
            "L2DONE" => self.l2_done = true,
            "DONE" => self.l3_done = true,
            _ => {}
        }
    }

    /// Whether there is nothing more to wait for: L2 finished, or a lockup was reported and
    /// its backtrace has arrived.
    pub fn over(&self) -> bool {
        self.l2_done
            || self
                .lockup
                .as_ref()
                .is_some_and(|(_, after)| *after >= LOCKUP_TAIL_LINES)
    }

    /// The ACPI tables that arrived whole: their chunks inflate (the checker deflates each
    /// table) to the length and byte sum the guest announced.
    pub fn complete_tables(&self) -> Vec<(String, Result<Vec<u8>, String>)> {
        self.acpi_end
            .iter()
            .map(|(name, &(len, sum))| {
                let deflated = self.acpi.get(name).map(Vec::as_slice).unwrap_or(&[]);
                (name.clone(), inflate_table(deflated, len, sum))
            })
            .collect()
    }
}

/// Largest table the rig accepts: far above any table the VMM builds (a DSDT of a few KiB),
/// so that a garbled stream cannot make the rig allocate without bound.
const MAX_TABLE: usize = 1 << 20;

/// One table from its deflated bytes, checked against the announced length and sum. Every
/// failure starts with "garbled on the console" (retry.rs counts that as no result).
fn inflate_table(deflated: &[u8], len: usize, sum: u64) -> Result<Vec<u8>, String> {
    let bytes = miniz_oxide::inflate::decompress_to_vec_with_limit(deflated, MAX_TABLE.min(len))
        .map_err(|e| {
            format!(
                "garbled on the console: {} deflated bytes do not inflate to {len} ({:?})",
                deflated.len(),
                e.status
            )
        })?;
    let got: u64 = bytes.iter().map(|b| u64::from(*b)).sum();
    if bytes.len() == len && got == sum {
        Ok(bytes)
    } else {
        Err(format!(
            "garbled on the console: {} of {len} bytes, sum {got} vs {sum}",
            bytes.len()
        ))
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_checks_anywhere_in_a_line() {
        let mut t = Transcript::default();
        t.feed("@@CHECK cpus PASS\r\n");
        t.feed("[    3.1] noise @@L2CHECK vmm-exit FAIL exit code 1: boom\n");
        t.feed("@@CHECK x MAYBE\n");
        t.feed("no record here\n");
        t.feed("@@ACPI FACP 4641ghvmm: error: x@@L2CHECK vmm-exit PASS\n");
        assert_eq!(t.checks[0], ("cpus".into(), Outcome::Pass));
        assert_eq!(
            t.checks[1],
            ("vmm-exit".into(), Outcome::Fail("exit code 1: boom".into()))
        );
        assert_eq!(t.checks[2], ("vmm-exit".into(), Outcome::Pass));
        assert_eq!(t.malformed.len(), 1);
        assert_eq!(t.l2_checks, ["vmm-exit", "vmm-exit"]);
        t.feed("@@CHECK gh-straddle SKIP no padding: 0x4000000\n");
        assert_eq!(
            t.checks[3],
            (
                "gh-straddle".into(),
                Outcome::Skip("no padding: 0x4000000".into())
            )
        );
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn reassembles_deflated_acpi_tables_and_detects_garbling() {
        let dsdt: Vec<u8> = b"DSDT".iter().copied().cycle().take(600).collect();
        let deflated = miniz_oxide::deflate::compress_to_vec(&dsdt, 10);
        assert!(deflated.len() < 100, "a repetitive table deflates");
        let (first, second) = deflated.split_at(deflated.len() / 2);
        let sum: u64 = dsdt.iter().map(|b| u64::from(*b)).sum();
        let mut t = Transcript::default();
        t.feed(&format!("@@ACPI DSDT {}", hex(first)));
        t.feed(&format!("@@ACPI DSDT {}", hex(second)));
        t.feed(&format!("@@ACPIEND DSDT 600 {sum}"));
        // A table whose chunks are not DEFLATE (the format before), one announced longer
        // than it inflates, one whose bytes changed on the way, and a chunk that is not hex.
        t.feed("@@ACPI APIC 0102");
        t.feed("@@ACPIEND APIC 2 3");
        let facp = miniz_oxide::deflate::compress_to_vec(b"FACP", 10);
        t.feed(&format!("@@ACPI FACP {}", hex(&facp)));
        t.feed("@@ACPIEND FACP 5 288");
        let mut mcfg = miniz_oxide::deflate::compress_to_vec(b"MCFG", 0);
        *mcfg.last_mut().unwrap() ^= 1;
        t.feed(&format!("@@ACPI MCFG {}", hex(&mcfg)));
        t.feed("@@ACPIEND MCFG 4 290");
        t.feed("@@ACPI SRAT 0g");
        let tables = t.complete_tables();
        let names: Vec<&str> = tables.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["APIC", "DSDT", "FACP", "MCFG"]);
        assert_eq!(tables[1].1, Ok(dsdt));
        for (name, r) in [&tables[0], &tables[2], &tables[3]] {
            let why = r.as_ref().unwrap_err();
            assert!(why.starts_with("garbled on the console"), "{name}: {why}");
        }
        assert_eq!(t.malformed.len(), 1);
    }

    #[test]
    fn a_table_announced_huge_cannot_make_the_rig_allocate_without_bound() {
        let bomb = miniz_oxide::deflate::compress_to_vec(&vec![0u8; 4 << 20], 10);
        let mut t = Transcript::default();
        t.feed(&format!("@@ACPI DSDT {}", hex(&bomb)));
        t.feed(&format!("@@ACPIEND DSDT {} 0", 4 << 20));
        let tables = t.complete_tables();
        assert!(tables[0].1.as_ref().unwrap_err().contains("do not inflate"));
    }

    #[test]
    fn a_lockup_ends_the_wait_after_its_backtrace() {
        let mut t = Transcript::default();
        t.feed("[   40.55] watchdog: BUG: soft lockup - CPU#0 stuck for 26s! [vcpu1:150]\r\n");
        assert!(!t.over(), "waits for the backtrace");
        for _ in 0..LOCKUP_TAIL_LINES {
            t.feed("[   40.56]  ? kvm_arch_vcpu_ioctl_run+0x1/0x2 [kvm]");
        }
        assert!(t.over());
        let (line, _) = t.lockup.clone().unwrap();
        assert!(line.starts_with("[   40.55] watchdog: BUG: soft lockup"));
        assert!(t.lockup_in_l2());
        t.feed("BUG: soft lockup - CPU#1");
        assert!(
            t.lockup.unwrap().0.contains("CPU#0"),
            "the first report is kept"
        );
    }

    #[test]
    fn a_lockup_without_a_timestamp_is_the_guests() {
        let mut t = Transcript::default();
        t.feed("watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [swapper/1:0]\r\n");
        assert!(t.lockup.is_some() && !t.lockup_in_l2());
        assert!(!Transcript::default().lockup_in_l2());
    }

    #[test]
    fn bench_and_done_markers() {
        let mut t = Transcript::default();
        t.feed("@@BENCH ghvmm 1234");
        t.feed("@@BENCH qemu x");
        t.feed("@@DONE");
        t.feed("@@L2DONE");
        assert_eq!(t.bench, vec![("ghvmm".to_string(), 1234)]);
        assert!(t.l3_done && t.l2_done);
    }
}
