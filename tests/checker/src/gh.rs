//! Checks on the GPU-like device (tests/variant-driver) as the guest sees it: one BAR of the
//! next power of two, data through the real part, and the padding behaving per contract
//! (0x00 when ghvmm pads, 0xff when the kernel pads), byte by byte across the boundary.

use crate::checks::{report, skip};
use crate::vfio::{find_all, resource, BarView, IORESOURCE_MEM_64, IORESOURCE_PREFETCH};

/// Must match tests/rig/src/scenario.rs `gh_patterns` (the host looks for them in its file).
fn patterns(len: u64) -> [(u64, [u8; 16]); 3] {
    let mid = (len / 2) & !15;
    [
        (0, *b"gh-mem-at-start!"),
        (mid, *b"gh-mem-in-middle"),
        (len - 16, *b"gh-mem-last-16B!"),
    ]
}

pub fn gpu_like(mode: &str, len: u64) {
    gpu_like_devices(mode, len, 1, false);
}

/// The checks on each of `count` GPU-like devices (`ghvmm.gh_devices=`); each check reports
/// once, failing if it fails on any device (named by its address). With `gate`
/// (`ghvmm.gate=1`, one device) the BAR checks start with the gated copy (`gated_copy`).
pub fn gpu_like_devices(mode: &str, len: u64, count: usize, gate: bool) {
    let devices = find_all("0x1af4", "0x1110");
    if devices.is_empty() {
        report("gh-bar", Err("no 1af4:1110 device".into()));
        return;
    }
    if count != 1 {
        report(
            "gh-count",
            if devices.len() == count {
                Ok(())
            } else {
                Err(format!("{} GPU-like devices, want {count}", devices.len()))
            },
        );
    }
    if padding_free(len) {
        // Nothing to check, and a PASS would claim the padding was tested.
        for name in PADDING_CHECKS {
            skip(
                name,
                &format!("no padding: the length {len:#x} is a power of two"),
            );
        }
    }
    let mut merged: Vec<(&'static str, Vec<String>)> = Vec::new();
    for dev in &devices {
        let bdf = dev
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        for (name, result) in check_device(dev, mode, len, gate && devices.len() == 1) {
            let i = match merged.iter().position(|(n, _)| *n == name) {
                Some(i) => i,
                None => {
                    merged.push((name, Vec::new()));
                    merged.len() - 1
                }
            };
            if let Err(e) = result {
                merged[i].1.push(if devices.len() > 1 {
                    format!("{bdf}: {e}")
                } else {
                    e
                });
            }
        }
    }
    for (name, errors) in merged {
        report(
            name,
            if errors.is_empty() {
                Ok(())
            } else {
                Err(errors.join("; "))
            },
        );
    }
}

type Results = Vec<(&'static str, Result<(), String>)>;

/// The checks of the padding between the real length and the BAR's power of two.
const PADDING_CHECKS: [&str; 3] = ["gh-padding-read", "gh-straddle", "gh-padding-write"];

/// The BAR the guest sees for a region of `len` bytes: at least a page, a power of two.
fn bar_size(len: u64) -> u64 {
    len.max(4096).next_power_of_two()
}

/// Whether a length leaves no padding in either contract (it fills its BAR).
fn padding_free(len: u64) -> bool {
    len >= bar_size(len)
}

fn check_device(dev: &std::path::Path, mode: &str, len: u64, gate: bool) -> Results {
    let mut out: Results = Vec::new();
    let mut report = |name: &'static str, r: Result<(), String>| out.push((name, r));
    let pad: u8 = if mode == "kernel_pads" { 0xff } else { 0x00 };
    let bar_size = bar_size(len);
    report(
        "gh-bar",
        resource(dev, 2).and_then(|(start, size, flags)| {
            let want = IORESOURCE_MEM_64 | IORESOURCE_PREFETCH;
            if size != bar_size || flags & want != want || start % bar_size != 0 {
                return Err(format!(
                    "BAR2 at {start:#x}, {size:#x} bytes, flags {flags:#x}; want {bar_size:#x}, 64-bit prefetchable, aligned"
                ));
            }
            Ok(())
        }),
    );
    // Where the guest put the BAR, for the rig's hugepage-congruence check (the host pairs
    // it with ghvmm's mappings of the device).
    if let Ok((start, size, _)) = resource(dev, 2) {
        println!("@@FACT gh-bar2 {start:#x} {size:#x}");
    }
    let m = match BarView::open(dev, 2, bar_size) {
        Ok(m) => m,
        Err(e) => {
            report("gh-data", Err(e));
            return out;
        }
    };
    if gate {
        // Before the patterns below: the copy overwrites the whole real range.
        out.extend(gated_copy(&m, len, pad, bar_size));
    }
    let mut report = |name: &'static str, r: Result<(), String>| out.push((name, r));
    report(
        "gh-data",
        (|| {
            for (off, pat) in patterns(len) {
                m.write(off, &pat)?;
            }
            for (off, pat) in patterns(len) {
                let got = m.read(off, 16)?;
                if got != pat {
                    return Err(format!("read back {got:02x?} at {off:#x}"));
                }
            }
            Ok(())
        })(),
    );
    if padding_free(len) {
        // Reported as skipped once by gpu_like_devices.
        return out;
    }
    report("gh-padding-read", padding_read(&m, len, pad, bar_size));
    report(
        "gh-straddle",
        (|| {
            // Four bytes across the end of the real memory: two real, two padding.
            let at = len - 2;
            let real = m.read(at, 2)?;
            let got = m.read_width(at, 4)?.to_le_bytes();
            let want = [real[0], real[1], pad, pad];
            if got[..4] != want {
                return Err(format!(
                    "straddling read at {at:#x} gave {:02x?}, want {want:02x?}",
                    &got[..4]
                ));
            }
            let got8 = m.read_width(len - 4, 8)?.to_le_bytes();
            let real4 = m.read(len - 4, 4)?;
            if got8[..4] != real4[..] || got8[4..] != [pad; 4] {
                return Err(format!(
                    "8-byte straddling read at {:#x} gave {got8:02x?}",
                    len - 4
                ));
            }
            Ok(())
        })(),
    );
    report(
        "gh-padding-write",
        (|| {
            for width in [1usize, 2, 4, 8] {
                for off in [len, bar_size - 8] {
                    m.write_width(off, width, 0xaaaa_aaaa_aaaa_aaaa)?;
                    let got = m.read_width(off, width)?;
                    let want = u64::from_le_bytes([pad; 8]) & (u64::MAX >> (64 - 8 * width));
                    if got != want {
                        return Err(format!(
                            "after a {width}-byte write at {off:#x} the padding reads {got:#x}"
                        ));
                    }
                }
            }
            // A write straddling the end changes only the real bytes.
            m.write_width(len - 2, 4, 0x4443_4241)?;
            let back = m.read(len - 2, 2)?;
            if back != [0x41, 0x42] {
                return Err(format!(
                    "straddling write left {back:02x?} in the last real bytes"
                ));
            }
            // Restore the last pattern for the host-side check.
            let (off, pat) = patterns(len)[2];
            m.write(off, &pat)
        })(),
    );
    out
}

/// Reads of every width at the start of the padding, just after it, at its first page and
/// at its end give the contract's byte `pad`.
fn padding_read(m: &BarView, len: u64, pad: u8, bar_size: u64) -> Result<(), String> {
    for width in [1usize, 2, 4, 8] {
        for off in [len, len + 1, len + 3, (len + 4096) & !4095, bar_size - 8] {
            if off + width as u64 > bar_size {
                continue;
            }
            let got = m.read_width(off, width)?;
            let want = u64::from_le_bytes([pad; 8]) & (u64::MAX >> (64 - 8 * width));
            if got != want {
                return Err(format!(
                    "{width}-byte read at {off:#x} gave {got:#x}, want {want:#x}"
                ));
            }
        }
    }
    Ok(())
}

/// The value the gated copy writes at `off`: different in every 8 bytes.
fn copy_word(off: u64) -> u64 {
    off.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x6768_2d63_6f70_7921
}

/// Gate 1, a copy of the whole real range through the mapped BAR and its read-back, gate 2,
/// exactly one 4-byte read of the padding, gate 3 (tests/checker/src/gate.rs): L2 reads the
/// VMM's and the server's access counters at each gate and expects the copy to add none and
/// the padding read one. Reports `gh-copy` (the data read back) and `gh-gate` (every gate
/// opened, the padding read gave the contract's value).
fn gated_copy(m: &BarView, len: u64, pad: u8, bar_size: u64) -> Results {
    let gate = match crate::gate::Gate::new() {
        Ok(g) => g,
        Err(e) => return vec![("gh-gate", Err(format!("no gate page: {e}")))],
    };
    // The first access to a mapped piece exits once: it is when ghvmm builds the BAR's KVM
    // slot (docs/architecture.md: not at boot or hot add, where it would cost time linear in
    // the BAR). Made before gate 1, so that the gates count the copy of a mapped BAR.
    if let Err(e) = m.read_width(0, 8) {
        return vec![("gh-gate", Err(format!("the first touch of the BAR: {e}")))];
    }
    if let Err(e) = gate.pass(1) {
        return vec![("gh-gate", Err(e))];
    }
    let copy = m.fill_and_verify(len, copy_word);
    if let Err(e) = gate.pass(2) {
        return vec![("gh-copy", copy), ("gh-gate", Err(e))];
    }
    // The one access L2 counts (a padding exists: len is below the power of two).
    let padding = (len < bar_size).then(|| m.read_width(len, 4));
    let third = gate.pass(3);
    let gated = third.and_then(|()| match padding {
        None => Err(format!("no padding: the length {len:#x} is a power of two")),
        Some(Err(e)) => Err(e),
        Some(Ok(v)) if v != u64::from(u32::from_le_bytes([pad; 4])) => Err(format!(
            "the single 4-byte padding read at {len:#x} gave {v:#x}"
        )),
        Some(Ok(_)) => Ok(()),
    });
    vec![("gh-copy", copy), ("gh-gate", gated)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfio::tests::{file_bar, unmappable_bar};

    const LEN: u64 = (40 << 10) + 4096;
    const BAR: u64 = 64 << 10;

    #[test]
    fn power_of_two_lengths_have_no_padding_to_check() {
        assert!(padding_free(64 << 20) && padding_free(4096));
        assert!(!padding_free(48 << 20) && !padding_free(LEN) && !padding_free(2048));
        assert_eq!(bar_size(LEN), BAR);
        assert_eq!(bar_size(16), 4096);
    }

    #[test]
    fn an_unmappable_bar_fails_the_padding_check_of_either_contract() {
        // All-ones is exactly what kernel_pads expects: a read that cannot happen must not
        // produce it.
        for pad in [0xff, 0x00] {
            let err = padding_read(&unmappable_bar(BAR), LEN, pad, BAR).unwrap_err();
            assert!(err.contains("/nonexistent"), "{err}");
        }
    }

    #[test]
    fn the_padding_check_reads_the_padding() {
        let (dir, bar) = file_bar("pad", BAR, 0xff);
        assert_eq!(padding_read(&bar, LEN, 0xff, BAR), Ok(()));
        let err = padding_read(&bar, LEN, 0x00, BAR).unwrap_err();
        assert!(err.starts_with("1-byte read at 0xb000 gave 0xff"), "{err}");
        bar.write(BAR - 1, &[0]).unwrap();
        assert!(padding_read(&bar, LEN, 0xff, BAR).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
