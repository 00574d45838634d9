//! Gates (`ghvmm.gate=1`): points where the guest stops until L2 lets it go, so that L2 can
//! read the VMM's and the device server's access counters at exact points of the guest's
//! work, without timing. The guest prints `@@GATE <phase> <gpa-hex> wait` and waits until
//! the u64 at that guest-physical address equals `phase`; L2 writes it straight into the
//! VMM's guest RAM (`checker poke-ram`, ghvmm's `/memfd:ghvmm-ram`, whose file offset is the
//! guest-physical address below 3 GiB).

use std::io::Write;
use std::time::{Duration, Instant};

/// How long the guest waits at one gate before it gives up (the check fails, the guest goes
/// on): L2 answers in about a second; this only ends a run whose L2 side is broken.
const LIMIT: Duration = Duration::from_secs(180);

/// One locked page of the checker's own memory, and its guest-physical address.
pub struct Gate {
    page: *mut u64,
    gpa: u64,
}

const PAGE: usize = 4096;

impl Gate {
    pub fn new() -> Result<Self, String> {
        // SAFETY: an anonymous private mapping of one page, checked before use; it is never
        // unmapped (the checker is PID 1 and the gate lives until power-off).
        let page = unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            );
            if p == libc::MAP_FAILED {
                return Err(format!("mmap: {}", std::io::Error::last_os_error()));
            }
            if libc::mlock(p, PAGE) != 0 {
                return Err(format!("mlock: {}", std::io::Error::last_os_error()));
            }
            let p = p.cast::<u64>();
            // Touch it so that a page (not the shared zero page) backs it.
            p.write_volatile(0);
            p
        };
        let gpa = physical_address(page as usize)?;
        Ok(Gate { page, gpa })
    }

    /// Announces `phase` and waits until L2 writes `phase` into the page.
    pub fn pass(&self, phase: u64) -> Result<(), String> {
        println!("@@GATE {phase} {:#x} wait", self.gpa);
        let _ = std::io::stdout().flush();
        let start = Instant::now();
        loop {
            // SAFETY: our own mapped, locked page; volatile because another process (the VMM's
            // host side) writes it.
            if unsafe { self.page.read_volatile() } == phase {
                return Ok(());
            }
            if start.elapsed() > LIMIT {
                return Err(format!(
                    "gate {phase}: nobody opened it within {LIMIT:?} (page at guest-physical {:#x})",
                    self.gpa
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// The guest-physical address of the page holding `vaddr`, from /proc/self/pagemap (bits
/// 0-54 the frame number, bit 63 present; the frame is only shown to CAP_SYS_ADMIN, which
/// PID 1 has).
fn physical_address(vaddr: usize) -> Result<u64, String> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open("/proc/self/pagemap").map_err(|e| format!("pagemap: {e}"))?;
    let mut entry = [0u8; 8];
    f.read_exact_at(&mut entry, (vaddr / PAGE * 8) as u64)
        .map_err(|e| format!("pagemap: {e}"))?;
    frame_address(u64::from_le_bytes(entry), vaddr)
}

/// The physical address a pagemap entry gives for `vaddr`.
pub fn frame_address(entry: u64, vaddr: usize) -> Result<u64, String> {
    let pfn = entry & ((1 << 55) - 1);
    if entry >> 63 == 0 || pfn == 0 {
        return Err(format!(
            "pagemap entry {entry:#x}: page not present or frame hidden"
        ));
    }
    Ok(pfn * PAGE as u64 + (vaddr % PAGE) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pagemap_entries() {
        assert_eq!(
            frame_address((1 << 63) | 0x1234, 0x7000_0010),
            Ok(0x123_4010)
        );
        assert!(frame_address(0x1234, 0).is_err(), "not present");
        assert!(frame_address(1 << 63, 0).is_err(), "frame hidden");
    }
}
