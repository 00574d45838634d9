//! `ghvmm.mode=bench-gh`: measurements on the GPU-like device for `cargo xtask bench`.
//! Results are `@@BENCH <label> <value>` lines; `@@COPY-START`/`@@COPY-END` bracket the copy
//! into the BAR so L2 can read KVM's MMIO exit counter around it.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::vfio::{find, Mapping};

const COPY: usize = 32 << 20;
const ROUNDS: usize = 4;
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
    let src: Vec<u8> = (0..COPY).map(|i| i as u8).collect();
    let mut ram = vec![0u8; COPY];
    // Warm both destinations so first-touch faults are not measured.
    copy_us(ram.as_mut_ptr(), &src);
    copy_us(bar.as_ptr(), &src);
    line("@@COPY-START");
    std::thread::sleep(Duration::from_secs(2));
    let bar_us = copy_us(bar.as_ptr(), &src);
    line("@@COPY-END");
    std::thread::sleep(Duration::from_secs(2));
    let ram_us = copy_us(ram.as_mut_ptr(), &src);
    std::hint::black_box(&ram);
    line(&format!("@@BENCH gh-bar-copy-us {bar_us}"));
    line(&format!("@@BENCH gh-ram-copy-us {ram_us}"));
    line(&format!("@@BENCH gh-pad-read-ns {}", read_ns(&bar, len)));
    line(&format!("@@BENCH gh-empty-read-ns {}", read_ns(&empty, 0)));
}
