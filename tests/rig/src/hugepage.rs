//! `hugepage-congruence`: every host mapping ghvmm made of the GPU-like device's BAR2 starts
//! at a host virtual address congruent to the guest physical address of the same bytes,
//! modulo the largest of 1 GiB, 2 MiB or the page that fits in the mapping (docs/testing.md).
//! With that, a huge page of the guest sits on a huge page of the host whatever the length;
//! the rule the guest cannot see, so only ghvmm's maps tell.
//!
//! The guest reports where its BAR2 is (`@@FACT gh-bar2 <start> <size>`,
//! tests/checker/src/gh.rs); L2 reports ghvmm's mappings of a VFIO device
//! (`@@FACT vmm-devmap <line of /proc/PID/maps>`, tests/l2/init `devmaps_snap`).

use crate::protocol::{Outcome, Transcript};

pub const CHECK: &str = "hugepage-congruence";

/// Shell a scenario's setup starts with so that L2 reports ghvmm's device mappings.
pub const COLLECT: &str = "DEVMAPS=1\n";

/// The VFIO region of the BAR (BAR2 of the GPU-like device).
const REGION: u64 = 2;
/// vfio-pci's mmap offsets: the region index above bit 40, the offset into it below. The test
/// variant driver leaves them as the VMM asked (plain vfio-pci-core rewrites them to the
/// BAR's physical page number, which is why the check is on the variant driver's devices).
const OFFSET_SHIFT: u32 = 40;
/// The host's page size (x86-64) and the huge page sizes, largest first.
const PAGE: u64 = 4096;
const HUGE: [u64; 2] = [1 << 30, 2 << 20];

/// The largest of 1 GiB, 2 MiB or the page that fits in `size` bytes.
pub fn modulus(size: u64) -> u64 {
    HUGE.into_iter().find(|&a| a <= size).unwrap_or(PAGE)
}

/// One mapping of the device: `[start, end)` in the host, at `offset` of the device fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DevMap {
    start: u64,
    end: u64,
    offset: u64,
}

fn hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).ok()
}

/// `7f0000000000-7f0003000000 rw-s 20000000000 00:0e 1234 anon_inode:[vfio-device]`.
fn parse_map(line: &str) -> Option<DevMap> {
    let mut words = line.split_whitespace();
    let (start, end) = words.next()?.split_once('-')?;
    let offset = hex(words.nth(1)?)?;
    let (start, end) = (hex(start)?, hex(end)?);
    (end > start).then_some(DevMap { start, end, offset })
}

/// The outcome of the check from the transcript's facts.
pub fn congruence(t: &Transcript) -> (String, Outcome) {
    (CHECK.to_string(), outcome(t))
}

fn outcome(t: &Transcript) -> Outcome {
    let mut bars = Vec::new();
    let mut maps = Vec::new();
    for (key, value) in &t.facts {
        match key.as_str() {
            "gh-bar2" => {
                let mut w = value.split_whitespace().map(hex);
                match (w.next().flatten(), w.next().flatten()) {
                    (Some(start), Some(size)) if size > 0 => bars.push((start, size)),
                    _ => return Outcome::Fail(format!("malformed gh-bar2 fact: {value:?}")),
                }
            }
            "vmm-devmap" => match parse_map(value) {
                Some(m) if m.offset >> OFFSET_SHIFT == REGION => maps.push(m),
                Some(_) => {}
                None => return Outcome::Fail(format!("malformed vmm-devmap fact: {value:?}")),
            },
            _ => {}
        }
    }
    if bars.is_empty() {
        return Outcome::Fail("the guest reported no BAR2 address (gh-bar2)".into());
    }
    // Each device has at least one mapped piece in BAR2; fewer mappings than BARs means
    // something is forwarded that should be mapped, or L2 saw none of them.
    if maps.len() < bars.len() {
        return Outcome::Fail(format!(
            "{} mapping(s) of region {REGION} in ghvmm's maps for {} BAR(s): {maps:x?}",
            maps.len(),
            bars.len()
        ));
    }
    let mut bad = Vec::new();
    for m in &maps {
        let size = m.end - m.start;
        let a = modulus(size);
        let in_region = m.offset & ((1 << OFFSET_SHIFT) - 1);
        // Facts do not say which device a mapping belongs to; every BAR's base is a multiple
        // of its size, itself at least `a`, so each gives the same residue: check them all.
        for &(bar, bar_size) in &bars {
            let Some(gpa) = bar
                .checked_add(in_region)
                .filter(|_| in_region.saturating_add(size) <= bar_size)
            else {
                bad.push(format!(
                    "mapping {:#x}+{size:#x} at region offset {in_region:#x} lies outside the {bar_size:#x}-byte BAR at {bar:#x}",
                    m.start
                ));
                continue;
            };
            if m.start % a != gpa % a {
                bad.push(format!(
                    "hva {:#x} ({size:#x} bytes, region offset {in_region:#x}) mod {a:#x} = {:#x}, gpa {gpa:#x} mod {a:#x} = {:#x}",
                    m.start,
                    m.start % a,
                    gpa % a
                ));
                // The same residue for every BAR: one line per mapping is enough.
                break;
            }
        }
    }
    if bad.is_empty() {
        Outcome::Pass
    } else {
        Outcome::Fail(bad.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn transcript(lines: &[String]) -> Transcript {
        let mut t = Transcript::default();
        for l in lines {
            t.feed(l);
        }
        t
    }

    fn devmap(start: u64, size: u64, offset: u64) -> String {
        format!(
            "@@FACT vmm-devmap {start:x}-{:x} rw-s {offset:x} 00:0e 1055 anon_inode:[vfio-device]",
            start + size
        )
    }

    const BAR2: u64 = 2 << OFFSET_SHIFT;

    #[test]
    fn the_modulus_is_the_largest_huge_page_that_fits() {
        assert_eq!(modulus(96 * GIB - PAGE), GIB);
        assert_eq!(modulus(40 * MIB + 12 * 1024), 2 * MIB);
        assert_eq!(modulus(2 * MIB - PAGE), PAGE);
        assert_eq!(modulus(0), PAGE);
    }

    #[test]
    fn congruent_mappings_pass_for_odd_lengths() {
        let len = 40 * MIB + 12 * 1024;
        let t = transcript(&[
            "@@FACT gh-bar2 0x380000000000 0x4000000".into(),
            devmap(0x7f12_3460_0000, len, BAR2),
            "@@FACT vmm-devmap 7f0000000000-7f0000001000 rw-s 0 00:0e 1 anon_inode:[vfio-device]"
                .into(),
        ]);
        assert_eq!(congruence(&t).1, Outcome::Pass);
        // 96 GiB - 4 KiB at a 1 GiB-aligned address, and a piece at an odd offset in phase.
        let t = transcript(&[
            "@@FACT gh-bar2 0x2000000000 0x2000000000".into(),
            devmap(0x7f40_0000_0000, 96 * GIB - PAGE, BAR2),
            devmap(0x7e00_0030_1000, 3 * GIB, BAR2 + 3 * MIB + PAGE),
        ]);
        assert_eq!(congruence(&t).1, Outcome::Pass);
    }

    #[test]
    fn a_mapping_out_of_phase_fails_with_the_figures() {
        let len = 40 * MIB + 12 * 1024;
        let t = transcript(&[
            "@@FACT gh-bar2 0x380000000000 0x4000000".into(),
            devmap(0x7f12_3460_1000, len, BAR2),
        ]);
        let Outcome::Fail(why) = congruence(&t).1 else {
            panic!("passed")
        };
        assert!(why.contains("hva 0x7f1234601000"), "{why}");
        assert!(why.contains("mod 0x200000 = 0x1000"), "{why}");
        // Placed for the offset's phase but the piece's phase forgotten.
        let t = transcript(&[
            "@@FACT gh-bar2 0x2000000000 0x2000000000".into(),
            devmap(0x7e00_0000_0000, 3 * GIB, BAR2 + 3 * MIB + PAGE),
        ]);
        assert!(matches!(congruence(&t).1, Outcome::Fail(_)));
    }

    #[test]
    fn missing_or_malformed_facts_fail() {
        let map = devmap(0x7f12_3460_0000, 48 * MIB, BAR2);
        for lines in [
            vec![map.clone()],
            vec!["@@FACT gh-bar2 0x380000000000 0x4000000".to_string()],
            vec!["@@FACT gh-bar2 nothing".to_string(), map.clone()],
            vec![
                "@@FACT gh-bar2 0x380000000000 0x4000000".to_string(),
                "@@FACT vmm-devmap garbage".to_string(),
            ],
            // Two devices, one mapping: something was not mapped.
            vec![
                "@@FACT gh-bar2 0x380000000000 0x4000000".to_string(),
                "@@FACT gh-bar2 0x384000000000 0x4000000".to_string(),
                map.clone(),
            ],
            // A mapping larger than the BAR.
            vec![
                "@@FACT gh-bar2 0x380000000000 0x1000000".to_string(),
                map.clone(),
            ],
        ] {
            let lines: Vec<String> = lines;
            assert!(
                matches!(congruence(&transcript(&lines)).1, Outcome::Fail(_)),
                "{lines:?}"
            );
        }
    }
}
