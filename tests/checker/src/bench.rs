//! `ghvmm.mode=bench-gh`: measurements on the GPU-like device for `cargo xtask bench`.
//! Results are `@@BENCH <label> <value>` lines. Gates (tests/checker/src/gate.rs) stop the
//! guest before and after the timed copy into the BAR and after the timed padding reads, so
//! that L2 reads the VMM's access counters at exact points: the copy must move none, the
//! padding reads exactly `PROBES`.

use std::io::Write;
use std::time::Instant;

use crate::vfio::{find, Mapping};

const COPY: usize = 32 << 20;
const ROUNDS: usize = 4;
/// Padding reads timed (and counted: the rig's bench expects exactly this many,
/// tests/rig/src/bench.rs `PADDING_READS`).
const PROBES: usize = 2000;
/// An address inside the 32-bit PCI window where nothing is mapped (docs/platform.md).
const EMPTY_MMIO: u64 = 0xd800_0000;

fn line(s: &str) {
    println!("{s}");
    let _ = std::io::stdout().flush();
}

/// Microseconds for ROUNDS copies of `src` to `dst`.
fn copy_us(dst: *mut u8, src: &[u8]) -> u128 {
    let start = Instant::now();
    for _ in 0..ROUNDS {
        // black_box: the destination must be written even if nothing reads it afterwards.
        let d = std::hint::black_box(dst);
        // SAFETY: dst has room for src.len() bytes (checked by the callers).
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), d, src.len()) };
        std::hint::black_box(d);
    }
    start.elapsed().as_micros()
}

fn read_ns(m: &Mapping, off: u64) -> u128 {
    let start = Instant::now();
    for _ in 0..PROBES {
        std::hint::black_box(m.read_width(off, 4));
    }
    start.elapsed().as_nanos() / PROBES as u128
}

pub fn gh(len: u64) {
    let Some(dev) = find("0x1af4", "0x1110") else {
        line("@@LOG bench: no GPU-like device");
        return;
    };
    let bar_size = len.max(4096).next_power_of_two();
    // Write-combining, as a GPU driver maps device memory (plain resource2 is uncached).
    let (bar, empty) = match (
        Mapping::open_file(&dev, "resource2_wc", bar_size as usize),
        crate::vfio::devmem_public(EMPTY_MMIO, 4096),
    ) {
        (Ok(b), Ok(e)) => (b, e),
        (Err(e), _) | (_, Err(e)) => {
            line(&format!("@@LOG bench: {e}"));
            return;
        }
    };
    if (len as usize) < COPY {
        line("@@LOG bench: device memory smaller than the copy");
        return;
    }
    let gate = match crate::gate::Gate::new() {
        Ok(g) => g,
        Err(e) => {
            line(&format!("@@LOG bench: no gate page: {e}"));
            return;
        }
    };
    let src: Vec<u8> = (0..COPY).map(|i| i as u8).collect();
    let mut ram = vec![0u8; COPY];
    // Warm both destinations so first-touch faults are not measured.
    copy_us(ram.as_mut_ptr(), &src);
    copy_us(bar.as_ptr(), &src);
    let passed = gate.pass(1).and_then(|()| {
        let bar_us = copy_us(bar.as_ptr(), &src);
        gate.pass(2).map(|()| bar_us)
    });
    let bar_us = match passed {
        Ok(us) => us,
        Err(e) => {
            line(&format!("@@LOG bench: {e}"));
            return;
        }
    };
    let ram_us = copy_us(ram.as_mut_ptr(), &src);
    std::hint::black_box(&ram);
    // Neither the RAM copy nor the empty address is the device's: between gates 2 and 3 the
    // device's counters move by exactly the PROBES padding reads.
    let pad_ns = read_ns(&bar, len);
    let empty_ns = read_ns(&empty, 0);
    if let Err(e) = gate.pass(3) {
        line(&format!("@@LOG bench: {e}"));
        return;
    }
    line(&format!("@@BENCH gh-bar-copy-us {bar_us}"));
    line(&format!("@@BENCH gh-ram-copy-us {ram_us}"));
    line(&format!("@@BENCH gh-pad-read-ns {pad_ns}"));
    line(&format!("@@BENCH gh-empty-read-ns {empty_ns}"));
}
