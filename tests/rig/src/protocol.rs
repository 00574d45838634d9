//! Parses the console lines of one scenario: `@@` records from the L3 checker and the L2 init
//! (tests/checker/src/main.rs documents them), wherever they start in a line.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail(String),
}

#[derive(Debug, Default)]
pub struct Transcript {
    /// Check name -> outcome, in the order first reported.
    pub checks: Vec<(String, Outcome)>,
    /// ACPI file name -> bytes, with the length and sum the guest announced.
    pub acpi: BTreeMap<String, Vec<u8>>,
    pub acpi_end: BTreeMap<String, (usize, u64)>,
    pub bench: Vec<(String, u64)>,
    pub l2_done: bool,
    pub l3_done: bool,
    pub malformed: Vec<String>,
}

impl Transcript {
    pub fn feed(&mut self, raw: &str) {
        let line = raw.trim_end_matches(['\r', '\n']);
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
                    _ => {
                        self.malformed.push(line.to_string());
                        return;
                    }
                };
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
            "L2DONE" => self.l2_done = true,
            "DONE" => self.l3_done = true,
            _ => {}
        }
    }

    /// The ACPI tables that arrived whole (length and sum match what the guest announced).
    pub fn complete_tables(&self) -> Vec<(String, Result<&[u8], String>)> {
        self.acpi_end
            .iter()
            .map(|(name, &(len, sum))| {
                let bytes = self.acpi.get(name).map(Vec::as_slice).unwrap_or(&[]);
                let got: u64 = bytes.iter().map(|b| u64::from(*b)).sum();
                let r = if bytes.len() == len && got == sum {
                    Ok(bytes)
                } else {
                    Err(format!(
                        "garbled on the console: {} of {len} bytes, sum {got} vs {sum}",
                        bytes.len()
                    ))
                };
                (name.clone(), r)
            })
            .collect()
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
    }

    #[test]
    fn reassembles_acpi_tables_and_detects_garbling() {
        let mut t = Transcript::default();
        t.feed("@@ACPI DSDT 0102");
        t.feed("@@ACPI DSDT ff");
        t.feed("@@ACPIEND DSDT 3 258");
        t.feed("@@ACPI APIC 01");
        t.feed("@@ACPIEND APIC 2 1");
        t.feed("@@ACPI FACP 0g");
        let tables = t.complete_tables();
        assert_eq!(tables[1], ("DSDT".into(), Ok(&[1u8, 2, 0xff][..])));
        assert!(tables[0].1.is_err());
        assert_eq!(t.malformed.len(), 1);
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
