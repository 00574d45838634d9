//! Address-range dispatch for trapped guest accesses (one `Bus` for port I/O, one for MMIO).
//!
//! Ranges never overlap; a lookup is a `BTreeMap` range query, so dispatch cost does not grow
//! with the number of devices in any way that matters for a VMM's device count.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

/// A device that answers trapped accesses inside the range it was inserted at.
///
/// `base` is the start of the range the device was registered with (a device may be inserted
/// at several ranges, e.g. one per BAR); `offset` is relative to that base. `data.len()` is the
/// access width (1, 2, 4 or 8 for CPU accesses).
pub trait BusDevice: Send {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]);
    fn write(&mut self, base: u64, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} is empty or wraps around")]
    InvalidRange { base: u64, len: u64 },
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap { base: u64, len: u64 },
    #[error("no device at bus address {0:#x}")]
    NoDevice(u64),
}

/// A half-open address range `[base, base + len)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct BusRange {
    pub base: u64,
    pub len: u64,
}

impl BusRange {
    pub fn new(base: u64, len: u64) -> Result<Self, BusError> {
        if len == 0 || base.checked_add(len - 1).is_none() {
            return Err(BusError::InvalidRange { base, len });
        }
        Ok(BusRange { base, len })
    }

    /// The last address inside the range (never overflows, unlike `base + len`).
    pub fn last(&self) -> u64 {
        self.base + (self.len - 1)
    }

    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.base && addr <= self.last()
    }

    pub fn overlaps(&self, other: &BusRange) -> bool {
        self.base <= other.last() && other.base <= self.last()
    }
}

pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// A set of non-overlapping ranges, each answered by one device.
#[derive(Default)]
pub struct Bus {
    devices: RwLock<BTreeMap<u64, (BusRange, SharedDevice)>>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let range = BusRange::new(base, len)?;
        let mut map = self.devices.write();
        // The only candidates for overlap are the neighbour below and the one at or above.
        let below = map.range(..=range.base).next_back().map(|(_, (r, _))| *r);
        let above = map.range(range.base..).next().map(|(_, (r, _))| *r);
        if below.iter().chain(above.iter()).any(|r| r.overlaps(&range)) {
            return Err(BusError::Overlap { base, len });
        }
        map.insert(range.base, (range, device));
        Ok(())
    }

    /// Removes the range that starts exactly at `base`.
    pub fn remove(&self, base: u64) -> Result<SharedDevice, BusError> {
        let mut map = self.devices.write();
        map.remove(&base)
            .map(|(_, d)| d)
            .ok_or(BusError::NoDevice(base))
    }

    /// Finds the device owning `addr`, with the range it was inserted at.
    pub fn resolve(&self, addr: u64) -> Option<(BusRange, SharedDevice)> {
        let map = self.devices.read();
        let (_, (range, dev)) = map.range(..=addr).next_back()?;
        range.contains(addr).then(|| (*range, dev.clone()))
    }

    /// Dispatches a read. An access that runs past the device's range is refused rather than
    /// handed to a device that did not ask for those bytes.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> Result<(), BusError> {
        let (range, dev) = self.resolve(addr).ok_or(BusError::NoDevice(addr))?;
        if !fits(&range, addr, data.len()) {
            return Err(BusError::NoDevice(addr));
        }
        dev.lock().read(range.base, addr - range.base, data);
        Ok(())
    }

    pub fn write(&self, addr: u64, data: &[u8]) -> Result<(), BusError> {
        let (range, dev) = self.resolve(addr).ok_or(BusError::NoDevice(addr))?;
        if !fits(&range, addr, data.len()) {
            return Err(BusError::NoDevice(addr));
        }
        dev.lock().write(range.base, addr - range.base, data);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.devices.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn fits(range: &BusRange, addr: u64, len: usize) -> bool {
    len == 0 || (len as u64 - 1) <= range.last() - addr
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo {
        last: Vec<(u64, u64, Vec<u8>)>,
    }

    impl BusDevice for Echo {
        fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = (offset as u8).wrapping_add(i as u8);
            }
            self.last.push((base, offset, data.to_vec()));
        }
        fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
            self.last.push((base, offset, data.to_vec()));
        }
    }

    fn echo() -> Arc<Mutex<Echo>> {
        Arc::new(Mutex::new(Echo { last: vec![] }))
    }

    #[test]
    fn dispatches_with_offset() {
        let bus = Bus::new();
        let dev = echo();
        bus.insert(dev.clone(), 0x1000, 0x10).unwrap();
        let mut buf = [0u8; 2];
        bus.read(0x1004, &mut buf).unwrap();
        assert_eq!(buf, [4, 5]);
        bus.write(0x100f, &[7]).unwrap();
        assert_eq!(dev.lock().last[1], (0x1000, 0xf, vec![7]));
    }

    #[test]
    fn refuses_overlaps_and_bad_ranges() {
        let bus = Bus::new();
        bus.insert(echo(), 0x1000, 0x10).unwrap();
        assert!(bus.insert(echo(), 0xff8, 0x10).is_err());
        assert!(bus.insert(echo(), 0x100f, 1).is_err());
        assert!(bus.insert(echo(), 0x1000, 1).is_err());
        assert!(bus.insert(echo(), 0x1010, 1).is_ok());
        assert!(bus.insert(echo(), 0xff0, 0x10).is_ok());
        assert_eq!(
            bus.insert(echo(), 5, 0),
            Err(BusError::InvalidRange { base: 5, len: 0 })
        );
        assert!(bus.insert(echo(), u64::MAX, 2).is_err());
        assert!(bus.insert(echo(), u64::MAX, 1).is_ok());
    }

    #[test]
    fn misses_and_straddles_are_errors() {
        let bus = Bus::new();
        bus.insert(echo(), 0x1000, 0x10).unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(bus.read(0xfff, &mut buf), Err(BusError::NoDevice(0xfff)));
        assert!(bus.read(0x100e, &mut buf).is_err());
        assert!(bus.read(0x1010, &mut buf).is_err());
        assert!(bus.read(0x100c, &mut buf).is_ok());
    }

    #[test]
    fn remove_frees_the_range() {
        let bus = Bus::new();
        bus.insert(echo(), 0x1000, 0x10).unwrap();
        assert!(bus.remove(0x1001).is_err());
        bus.remove(0x1000).unwrap();
        assert!(bus.is_empty());
        bus.insert(echo(), 0x1008, 0x10).unwrap();
    }
}
