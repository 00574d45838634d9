//! Guests that hammer ghvmm's trapped registers while L2 watches ghvmm's descriptors,
//! mappings and resident memory from /proc (tests/rig/src/stress_scenarios.rs):
//!
//! - `ghvmm.vfio=eject-flood ghvmm.flood=N`: with the GPU-like device attached at boot and
//!   no removal pending, N writes of all ones to the hot plug controller's eject register
//!   between gates 1 and 2 (L2 reads ghvmm's figures at both), then one hot-plug cycle in
//!   which L2 removes the device (`@@HOTPLUG present 1` / `gone 1`).
//! - `ghvmm.vfio=soak ghvmm.cycles=N ghvmm.soak_s=S`: N hot-plug cycles followed as
//!   `ghvmm.vfio=hotplug` does, then in cycle N+1, between gates 1 and 2, S seconds of aligned
//!   accesses of every width to the device's BAR padding and of the hot plug registers, each
//!   read checked; then L2 removes the device and reads ghvmm's figures at gate 3.

use std::time::{Duration, Instant};

use crate::checks::report;
use crate::gate::Gate;
use crate::vfio::{devmem_shared_type, find, BarView, Mapping};

/// ghvmm's PCI hot plug controller (docs/platform.md) and its registers
/// (`acpi::hotplug::regs`): 32-bit, accessed whole.
const HOTPLUG_BASE: u64 = 0xfed0_1000;
const PCIU: u64 = 0x0;
const PCID: u64 = 0x4;
const B0EJ: u64 = 0x8;
const PSEG: u64 = 0xc;
/// The segment of GH slot 0, where the scenarios put the device (its bit 0 is the slot).
const GH_SEGMENT: u32 = 1;

/// Every this many eject writes the guest says how far it is.
const FLOOD_PROGRESS: u64 = 100_000;

/// How long the guest waits for the device to arrive or leave.
const DEVICE_LIMIT: Duration = Duration::from_secs(120);

fn controller() -> Result<Mapping, String> {
    devmem_shared_type(HOTPLUG_BASE, 4096).map_err(|e| format!("the hot plug controller: {e}"))
}

/// One 32-bit write of a whole register (`writel`): volatile, so a loop of the same value
/// stays that many writes. `reg` is one of the register offsets above.
fn writel(regs: &Mapping, reg: u64, value: u32) {
    // SAFETY: `reg` is a 4-byte aligned register offset inside the mapped page.
    unsafe {
        regs.as_ptr()
            .add(reg as usize)
            .cast::<u32>()
            .write_volatile(value)
    };
}

/// `ghvmm.vfio=eject-flood`: reports `eject-flood` (the controller mapped, both gates
/// opened) and then follows one hot-plug cycle (removal only: the device is there at boot).
pub fn eject_flood(writes: u64, bdf: &str) {
    let gate = match Gate::new() {
        Ok(g) => g,
        Err(e) => {
            report("eject-flood", Err(format!("no gate page: {e}")));
            return;
        }
    };
    report("eject-flood", flood(&gate, writes));
    crate::hotplug::cycles("", 0, 1, bdf);
    // Gate 3: L2 opens it once ghvmm has answered the removal. Powering off at once would
    // end ghvmm before it sends that answer (seen: the client got no answer).
    report("eject-flood-end", gate.pass(3));
}

fn flood(gate: &Gate, writes: u64) -> Result<(), String> {
    if writes == 0 {
        return Err("no ghvmm.flood= count".into());
    }
    find("0x1af4", "0x1110").ok_or("no 1af4:1110 device at boot")?;
    let regs = controller()?;
    gate.pass(1)?;
    // The device's own segment: every write also "ejects" the slot the device is in, which
    // the next real removal must not take for the guest's answer.
    writel(&regs, PSEG, GH_SEGMENT);
    let start = Instant::now();
    for n in 1..=writes {
        writel(&regs, B0EJ, u32::MAX);
        // Progress for whoever reads the console: the flood takes minutes under nesting.
        if n % FLOOD_PROGRESS == 0 {
            println!(
                "@@LOG eject-flood: {n} writes in {} ms",
                start.elapsed().as_millis()
            );
        }
    }
    let ms = start.elapsed().as_millis();
    gate.pass(2)?;
    println!("@@FACT eject-flood writes {writes} ms {ms}");
    Ok(())
}

/// `ghvmm.vfio=soak`. Reports `soak-padding` and `soak-hotplug-regs` (every read of the
/// hammer gave what it must) besides the hot-plug cycles' checks.
pub fn soak(mode: &str, len: u64, cycles: u32, seconds: u64, bdf: &str) {
    crate::hotplug::cycles(mode, 0, cycles, bdf);
    let last = cycles + 1;
    let Some(dev) = crate::util::wait_for(DEVICE_LIMIT, || find("0x1af4", "0x1110")) else {
        report(
            "soak-padding",
            Err(format!("cycle {last}: no 1af4:1110 device")),
        );
        return;
    };
    let _ = crate::util::wait_for(Duration::from_secs(20), || {
        dev.join("resource2").exists().then_some(())
    });
    let gate = match Gate::new() {
        Ok(g) => g,
        Err(e) => {
            report("soak-padding", Err(format!("no gate page: {e}")));
            return;
        }
    };
    let (padding, regs) = match hammer(&gate, mode, len, Duration::from_secs(seconds)) {
        Ok(results) => results,
        Err(e) => (Err(e.clone()), Err(e)),
    };
    report("soak-padding", padding);
    report("soak-hotplug-regs", regs);
    let name = dev
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    println!("@@HOTPLUG present {last} {name}");
    if crate::util::wait_for(DEVICE_LIMIT, || (!dev.exists()).then_some(())).is_none() {
        report(
            "soak-final-depart",
            Err(format!("{name} still there after {DEVICE_LIMIT:?}")),
        );
        return;
    }
    println!("@@HOTPLUG gone {last}");
    // L2 reads ghvmm's figures after the final removal while ghvmm still runs: the guest
    // powers off right after its last check.
    report("soak-final-depart", gate.pass(3));
}

type Outcome = Result<(), String>;

/// Gate 1, the hammer for `duration`, gate 2: the padding's and the registers' outcomes.
fn hammer(
    gate: &Gate,
    mode: &str,
    len: u64,
    duration: Duration,
) -> Result<(Outcome, Outcome), String> {
    let bar_size = len.max(4096).next_power_of_two();
    if len == 0 || len + 8 > bar_size {
        return Err(format!("no padding to hammer with gh_len {len}"));
    }
    let dev = find("0x1af4", "0x1110").ok_or("the device left before the hammer")?;
    let bar = BarView::open(&dev, 2, bar_size)?;
    let regs = controller()?;
    let pad = if mode == "kernel_pads" { 0xff } else { 0x00 };
    gate.pass(1)?;
    let start = Instant::now();
    let (mut rounds, mut accesses) = (0u64, 0u64);
    let (mut padding, mut registers): (Outcome, Outcome) = (Ok(()), Ok(()));
    while start.elapsed() < duration && padding.is_ok() && registers.is_ok() {
        padding = padding_round(&bar, len, bar_size, pad, &mut accesses);
        registers = register_round(&regs, rounds, &mut accesses);
        rounds += 1;
    }
    // Leave the selection as the guest's own scan expects to find it.
    regs.write_width(PSEG, 4, 0);
    gate.pass(2)?;
    println!(
        "@@FACT soak-hammer rounds {rounds} accesses {accesses} ms {}",
        start.elapsed().as_millis()
    );
    Ok((padding, registers))
}

/// The padding offsets hammered: its start, the next 8 bytes, its first whole page, its
/// middle and its last 8 bytes (none past the last); all 8-byte aligned, so aligned for
/// every width. `len` is below `bar_size - 8`.
fn padding_offsets(len: u64, bar_size: u64) -> [u64; 5] {
    let start = (len + 7) & !7;
    let end = bar_size - 8;
    [
        start,
        start + 8,
        (len + 4095) & !4095,
        (start + (bar_size - start) / 2) & !7,
        end,
    ]
    .map(|off| off.min(end))
}

/// Reads, a write of a pattern and a read again at every width and padding offset: each
/// read must give the contract's byte `pad`.
fn padding_round(m: &BarView, len: u64, bar_size: u64, pad: u8, n: &mut u64) -> Outcome {
    for width in [1usize, 2, 4, 8] {
        let want = u64::from_le_bytes([pad; 8]) & (u64::MAX >> (64 - 8 * width));
        for off in padding_offsets(len, bar_size) {
            let first = m.read_width(off, width)?;
            m.write_width(off, width, 0xa5a5_a5a5_a5a5_a5a5)?;
            let again = m.read_width(off, width)?;
            *n += 3;
            if first != want || again != want {
                return Err(format!(
                    "{width}-byte padding read at {off:#x} gave {first:#x}, then {again:#x} after a write; want {want:#x}"
                ));
            }
        }
    }
    Ok(())
}

/// The segment selected in round `round`: both segments, then one the controller does not
/// have, then an out-of-range value.
fn segment(round: u64) -> u32 {
    [0, GH_SEGMENT, 2, u32::MAX][(round % 4) as usize]
}

/// PSEG written and read back, an eject of every slot, PCIU and PCID read (nothing is
/// pending: 0), and accesses that are not whole registers (ignored, read 0).
fn register_round(regs: &Mapping, round: u64, n: &mut u64) -> Outcome {
    let seg = segment(round);
    regs.write_width(PSEG, 4, u64::from(seg));
    let selected = regs.read_width(PSEG, 4);
    regs.write_width(B0EJ, 4, u64::from(u32::MAX));
    let added = regs.read_width(PCIU, 4);
    let removing = regs.read_width(PCID, 4);
    // Not whole registers: a byte, a half, a quad and a misaligned dword.
    regs.write_width(PSEG + 1, 1, 0x5a);
    regs.write_width(B0EJ, 2, 0xffff);
    let partial = [
        regs.read_width(PSEG + 1, 1),
        regs.read_width(PSEG, 2),
        regs.read_width(PCIU, 8),
        regs.read_width(PCID + 2, 4),
    ];
    let after = regs.read_width(PSEG, 4);
    *n += 12;
    if selected != u64::from(seg) || after != u64::from(seg) {
        return Err(format!(
            "PSEG reads {selected:#x} then {after:#x} after writing {seg:#x}"
        ));
    }
    if added != 0 || removing != 0 {
        return Err(format!(
            "with nothing pending on segment {seg:#x}, PCIU reads {added:#x} and PCID {removing:#x}"
        ));
    }
    if partial != [0; 4] {
        return Err(format!(
            "partial register reads gave {partial:#x?} (byte at PSEG+1, half at PSEG, quad at PCIU, dword at PCID+2), want 0"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_offsets_are_aligned_and_inside_the_padding() {
        for (len, bar) in [
            ((40 << 20) + (12 << 10), 64 << 20),
            (48 << 20, 64 << 20),
            (4100, 8192),
        ] {
            for off in padding_offsets(len, bar) {
                assert!(off >= len && off + 8 <= bar, "{len:#x}: {off:#x}");
                assert_eq!(off % 8, 0);
            }
        }
    }

    #[test]
    fn segments_cycle_through_real_and_missing_ones() {
        let s: Vec<u32> = (0..5).map(segment).collect();
        assert_eq!(s, [0, 1, 2, u32::MAX, 0]);
    }
}
