//! A device whose region read/write starts failing (`ghvmm.vfio=fault`): the test variant
//! driver runs with `map_length=` below `length=` (so part of the real memory is reached only
//! through ghvmm's forwarding to the region's read/write) and `fail_after=N` (after N such
//! calls every one fails with -EIO). Before the failure data goes through; after it reads give
//! 0xff and writes are dropped; the mmapped part keeps working and the guest keeps running.

use crate::checks::report;
use crate::vfio::{find, BarView};

/// Written before the failure at `map + 4096` (must land in the host's file).
pub const BEFORE: &[u8; 16] = b"fault-before-eio";
/// Written after the failure at `map + 8192` (must not land).
pub const AFTER: &[u8; 16] = b"fault-after--eio";
/// Written through the mapped part at 0 after the failure (must land).
pub const MAPPED: &[u8; 16] = b"fault-mapped-ok!";

/// Reads 8 bytes at a time: one trapped access, so one region call, per read. A mapping
/// that fails is an error, never the 0xff a failed region gives.
fn read16(m: &BarView, off: u64) -> Result<[u8; 16], String> {
    let lo = m.read_width(off, 8)?.to_le_bytes();
    let hi = m.read_width(off + 8, 8)?.to_le_bytes();
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&lo);
    out[8..].copy_from_slice(&hi);
    Ok(out)
}

fn write16(m: &BarView, off: u64, data: &[u8; 16]) -> Result<(), String> {
    for half in 0..2 {
        let mut v = [0u8; 8];
        v.copy_from_slice(&data[half * 8..half * 8 + 8]);
        m.write_width(off + half as u64 * 8, 8, u64::from_le_bytes(v))?;
    }
    Ok(())
}

/// Waits until everything written to the console has been sent, and a little more for the
/// VMM to pass it on.
fn quiet_console() {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    // SAFETY: tcdrain on our own stdout; it only waits.
    unsafe { libc::tcdrain(1) };
    std::thread::sleep(std::time::Duration::from_millis(300));
}

pub fn failing_region(len: u64, map: u64, fail_after: u64) {
    if len == 0 || map == 0 || map + 8192 + 16 > len || fail_after < 4 {
        report(
            "fault-before",
            Err(format!(
                "bad expectations: gh_len {len}, gh_map {map}, fail_after {fail_after}"
            )),
        );
        return;
    }
    let bar_size = len.next_power_of_two();
    let m = match find("0x1af4", "0x1110")
        .ok_or_else(|| "no 1af4:1110 device".to_string())
        .and_then(|dev| BarView::open(&dev, 2, bar_size))
    {
        Ok(m) => m,
        Err(e) => {
            report("fault-before", Err(e));
            return;
        }
    };
    let (x, y) = (map + 4096, map + 8192);
    // Four region calls: two writes, two reads.
    report(
        "fault-before",
        write16(&m, x, BEFORE)
            .and_then(|()| read16(&m, x))
            .and_then(|got| {
                if &got == BEFORE {
                    Ok(())
                } else {
                    Err(format!(
                        "read back {got:02x?} through the region before any failure"
                    ))
                }
            }),
    );
    // The failure below makes ghvmm log an error on the same console: let this line leave
    // the UART first, so the log line cannot land inside it.
    quiet_console();
    // Keep reading until the device fails; then every read must give 0xff.
    let limit = fail_after + 64;
    report(
        "fault-eio-read",
        (|| {
            let mut failed = false;
            for _ in 0..limit {
                if m.read_width(x, 8)? == u64::MAX {
                    failed = true;
                    break;
                }
            }
            if !failed {
                return Err(format!(
                    "{limit} reads after fail_after={fail_after}, none read 0xff"
                ));
            }
            let later = (0..32)
                .map(|_| m.read_width(x, 8))
                .collect::<Result<Vec<u64>, String>>()?;
            if later.iter().all(|v| *v == u64::MAX) {
                Ok(())
            } else {
                Err(format!("after the failure, reads gave {later:x?}"))
            }
        })(),
    );
    report(
        "fault-eio-write",
        write16(&m, y, AFTER)
            .and_then(|()| read16(&m, y))
            .and_then(|got| {
                if got == [0xff; 16] {
                    Ok(())
                } else {
                    Err(format!(
                        "after a write to the failed region it reads {got:02x?}"
                    ))
                }
            }),
    );
    // The mapped part never goes through the region's read/write.
    report(
        "fault-mapped",
        m.write(0, MAPPED)
            .and_then(|()| m.read(0, 16))
            .and_then(|got| {
                if got == MAPPED {
                    Ok(())
                } else {
                    Err(format!(
                        "the mapped part reads {got:02x?} after the region failed"
                    ))
                }
            }),
    );
}
