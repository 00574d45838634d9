//! Answers a trapped access to a passed-through BAR. An access may straddle pieces of the
//! layout (a 4-byte read across the real/padding boundary, say): it is split, each part goes
//! to the device (`RegionIo`, the region's read/write) or is answered as padding, and the
//! results are put back together byte by byte.

use std::ops::Range;

use super::layout::{BarLayout, PieceKind};

/// The device side: VFIO region read/write at a region offset (pread/pwrite on the device fd).
/// Also how the configuration region is reached (`config::DeviceConfig`).
pub trait RegionIo: Send {
    fn read(&self, offset: u64, data: &mut [u8]) -> std::io::Result<()>;
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()>;
}

/// One part of a split access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessPart {
    /// Send bytes `buf` of the access to the device at region offset `offset`. Mapped pieces
    /// land here too: they trap only while their slot is absent (decode off, being moved), and
    /// the region's read/write has the same contents as the mapping.
    Device { offset: u64, buf: Range<usize> },
    /// Padding: reads 0, writes are dropped.
    Padding { buf: Range<usize> },
    /// Past the BAR (cannot happen for accesses the bus routes here): reads all-ones.
    Outside { buf: Range<usize> },
}

/// Splits an access of `len` bytes at BAR offset `offset` along the layout's pieces.
pub fn split_access(layout: &BarLayout, offset: u64, len: usize) -> Vec<AccessPart> {
    let mut parts = Vec::new();
    let mut done = 0usize;
    while done < len {
        let at = offset.saturating_add(done as u64);
        let piece = layout
            .pieces
            .iter()
            .find(|p| at >= p.offset && at < p.end());
        let Some(p) = piece else {
            parts.push(AccessPart::Outside { buf: done..len });
            break;
        };
        let take = ((p.end() - at).min((len - done) as u64)) as usize;
        let buf = done..done + take;
        parts.push(match p.kind {
            PieceKind::Padding => AccessPart::Padding { buf },
            PieceKind::Mapped { .. } | PieceKind::Forwarded => {
                AccessPart::Device { offset: at, buf }
            }
        });
        done += take;
    }
    parts
}

/// Outcome of a device access that failed: the caller logs it (rate-limited).
#[derive(Debug)]
pub struct DeviceError {
    pub offset: u64,
    pub error: std::io::Error,
}

/// Reads into `data`; device failures read as 0xff (what a PCI read of a dead device gives).
pub fn read(
    layout: &BarLayout,
    io: &dyn RegionIo,
    offset: u64,
    data: &mut [u8],
) -> Vec<DeviceError> {
    let mut errors = Vec::new();
    for part in split_access(layout, offset, data.len()) {
        match part {
            AccessPart::Device { offset, buf } => {
                if let Err(error) = io.read(offset, &mut data[buf.clone()]) {
                    data[buf].fill(0xff);
                    errors.push(DeviceError { offset, error });
                }
            }
            AccessPart::Padding { buf } => data[buf].fill(0),
            AccessPart::Outside { buf } => data[buf].fill(0xff),
        }
    }
    errors
}

/// Writes `data`; padding bytes never reach the device.
pub fn write(layout: &BarLayout, io: &dyn RegionIo, offset: u64, data: &[u8]) -> Vec<DeviceError> {
    let mut errors = Vec::new();
    for part in split_access(layout, offset, data.len()) {
        if let AccessPart::Device { offset, buf } = part {
            if let Err(error) = io.write(offset, &data[buf]) {
                errors.push(DeviceError { offset, error });
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfio::layout::{bar_layout, Limits, RegionDesc, SparseArea};
    use parking_lot::Mutex;

    const LIMITS: Limits = Limits {
        page_size: 4096,
        mmio32_size: 1 << 29,
        mmio64_size: 1 << 38,
    };

    /// A fake device region: `len` real bytes; like nvgrace-gpu, reads between `len` and
    /// `size` give 0xff and writes there are dropped; accesses past `size` fail.
    struct FakeRegion {
        bytes: Mutex<Vec<u8>>,
        len: u64,
        size: u64,
        fail: bool,
        log: Mutex<Vec<(char, u64, usize)>>,
    }

    impl FakeRegion {
        fn new(len: u64, size: u64) -> Self {
            FakeRegion {
                bytes: Mutex::new((0..len).map(|i| (i * 7 + 1) as u8).collect()),
                len,
                size,
                fail: false,
                log: Mutex::new(Vec::new()),
            }
        }
    }

    impl RegionIo for FakeRegion {
        fn read(&self, offset: u64, data: &mut [u8]) -> std::io::Result<()> {
            self.log.lock().push(('r', offset, data.len()));
            if self.fail || offset + data.len() as u64 > self.size {
                return Err(std::io::Error::from_raw_os_error(libc_eio()));
            }
            for (i, d) in data.iter_mut().enumerate() {
                let o = offset + i as u64;
                *d = if o < self.len {
                    self.bytes.lock()[o as usize]
                } else {
                    0xff
                };
            }
            Ok(())
        }
        fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            self.log.lock().push(('w', offset, data.len()));
            if self.fail || offset + data.len() as u64 > self.size {
                return Err(std::io::Error::from_raw_os_error(libc_eio()));
            }
            for (i, d) in data.iter().enumerate() {
                let o = offset + i as u64;
                if o < self.len {
                    self.bytes.lock()[o as usize] = *d;
                }
            }
            Ok(())
        }
    }

    fn libc_eio() -> i32 {
        5
    }

    fn vmm_pads(len: u64) -> (BarLayout, FakeRegion) {
        let r = RegionDesc {
            index: 2,
            size: len,
            mmap: true,
            sparse: None,
            is_64bit: true,
            trapped: vec![],
        };
        (
            bar_layout(&r, &LIMITS).unwrap().unwrap(),
            FakeRegion::new(len, len),
        )
    }

    fn kernel_pads(len: u64) -> (BarLayout, FakeRegion) {
        let size = len.next_power_of_two();
        let r = RegionDesc {
            index: 2,
            size,
            mmap: true,
            sparse: Some(vec![SparseArea {
                offset: 0,
                size: len,
            }]),
            is_64bit: true,
            trapped: vec![],
        };
        (
            bar_layout(&r, &LIMITS).unwrap().unwrap(),
            FakeRegion::new(len, size),
        )
    }

    #[test]
    fn straddling_reads_byte_by_byte_in_both_contracts() {
        // A length that is neither page- nor 8-byte aligned.
        let len = 3 * 4096 + 13;
        for (contract, pad) in [("vmm", 0x00u8), ("kernel", 0xff)] {
            let (layout, dev) = if contract == "vmm" {
                vmm_pads(len)
            } else {
                kernel_pads(len)
            };
            for width in [1usize, 2, 4, 8] {
                for start in len - 9..len + 2 {
                    let mut buf = vec![0xaau8; width];
                    let errs = read(&layout, &dev, start, &mut buf);
                    assert!(errs.is_empty());
                    for (i, b) in buf.iter().enumerate() {
                        let o = start + i as u64;
                        let want = if o < len {
                            dev.bytes.lock()[o as usize]
                        } else {
                            pad
                        };
                        assert_eq!(*b, want, "{contract} width {width} at {start:#x}+{i}");
                    }
                }
            }
        }
    }

    #[test]
    fn padding_writes_never_reach_the_device() {
        let len = 4096 + 3;
        let (layout, dev) = vmm_pads(len);
        let before = dev.bytes.lock().clone();
        write(&layout, &dev, len - 1, &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(dev.log.lock().as_slice(), &[('w', len - 1, 1)]);
        let after = dev.bytes.lock().clone();
        assert_eq!(after[..len as usize - 1], before[..len as usize - 1]);
        assert_eq!(after[len as usize - 1], 1);
        dev.log.lock().clear();
        write(&layout, &dev, len + 100, &[9; 8]);
        assert!(dev.log.lock().is_empty());
    }

    #[test]
    fn device_errors_read_as_all_ones_and_are_reported() {
        let (layout, mut dev) = vmm_pads(4096 + 3);
        dev.fail = true;
        let mut buf = [0u8; 8];
        let errs = read(&layout, &dev, 4096, &mut buf);
        assert_eq!(errs.len(), 1);
        assert_eq!(buf, [0xff, 0xff, 0xff, 0, 0, 0, 0, 0]);
        assert_eq!(write(&layout, &dev, 0, &[1]).len(), 1);
    }

    #[test]
    fn split_covers_every_byte_once() {
        let (layout, _) = kernel_pads(5000);
        for off in [0u64, 4095, 4999, 5000, 8191] {
            for len in [1usize, 2, 4, 8] {
                let parts = split_access(&layout, off, len);
                let mut covered = 0;
                for p in &parts {
                    let r = match p {
                        AccessPart::Device { buf, .. }
                        | AccessPart::Padding { buf }
                        | AccessPart::Outside { buf } => buf.clone(),
                    };
                    assert_eq!(r.start, covered);
                    covered = r.end;
                }
                assert_eq!(covered, len);
            }
        }
        assert!(matches!(
            split_access(&layout, u64::MAX, 8).as_slice(),
            [AccessPart::Outside { .. }]
        ));
    }
}
