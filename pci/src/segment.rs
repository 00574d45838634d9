//! A PCI segment: one bus (bus 0) of 32 slots, function 0 each. Multi-function devices and
//! bridges are not needed for passthrough of single-function GPUs.

use std::sync::Arc;

use parking_lot::Mutex;

use crate::device::PciDevice;
use crate::PciError;

pub const SLOTS_PER_BUS: u8 = 32;

pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

/// Which configuration register a config cycle (0xCF8/0xCFC or ECAM) reaches: a function
/// and a register in it. Not a PCI function's address in the VM (`acpi::PciAddress`, with a
/// segment and no register).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigAddress {
    pub bus: u8,
    pub device: u8,
    pub function: u8,
    /// Register index (offset / 4), 0..1024.
    pub reg: usize,
}

pub struct PciSegment {
    id: u16,
    slots: Vec<Option<SharedPciDevice>>,
}

impl PciSegment {
    pub fn new(id: u16) -> Self {
        PciSegment {
            id,
            slots: vec![None; SLOTS_PER_BUS as usize],
        }
    }

    pub fn id(&self) -> u16 {
        self.id
    }

    /// Puts `dev` in `slot`, or in the lowest free slot when `slot` is `None`.
    pub fn add_device(&mut self, slot: Option<u8>, dev: SharedPciDevice) -> Result<u8, PciError> {
        let slot = match slot {
            Some(s) if s >= SLOTS_PER_BUS => return Err(PciError::SlotOutOfRange(s)),
            Some(s) if self.slots[s as usize].is_some() => {
                return Err(PciError::SlotTaken {
                    segment: self.id,
                    slot: s,
                })
            }
            Some(s) => s,
            None => self
                .slots
                .iter()
                .position(Option::is_none)
                .ok_or(PciError::NoFreeSlot(self.id))? as u8,
        };
        self.slots[slot as usize] = Some(dev);
        Ok(slot)
    }

    pub fn remove_device(&mut self, slot: u8) -> Result<SharedPciDevice, PciError> {
        self.slots
            .get_mut(slot as usize)
            .and_then(Option::take)
            .ok_or(PciError::NoDevice {
                segment: self.id,
                slot,
            })
    }

    /// The function at `addr`, if one exists (bus 0, function 0 only).
    pub fn device(&self, addr: &ConfigAddress) -> Option<SharedPciDevice> {
        if addr.bus != 0 || addr.function != 0 {
            return None;
        }
        self.slots.get(addr.device as usize)?.clone()
    }
}

/// Reads a register through `segment` without holding the segment lock during the device
/// access; absent functions read all-ones.
pub fn read_config(segment: &Mutex<PciSegment>, addr: &ConfigAddress) -> u32 {
    let dev = segment.lock().device(addr);
    match dev {
        Some(d) => d.lock().read_config_register(addr.reg),
        None => 0xffff_ffff,
    }
}

/// Writes a register through `segment`, like [`read_config`]; writes to absent functions
/// are dropped.
pub fn write_config(segment: &Mutex<PciSegment>, addr: &ConfigAddress, offset: u64, data: &[u8]) {
    let dev = segment.lock().device(addr);
    if let Some(d) = dev {
        d.lock().write_config_register(addr.reg, offset, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HostBridge;

    fn bridge() -> SharedPciDevice {
        Arc::new(Mutex::new(HostBridge::new()))
    }

    #[test]
    fn slots() {
        let mut s = PciSegment::new(3);
        assert_eq!(s.add_device(Some(0), bridge()), Ok(0));
        assert_eq!(s.add_device(None, bridge()), Ok(1));
        assert_eq!(
            s.add_device(Some(1), bridge()),
            Err(PciError::SlotTaken {
                segment: 3,
                slot: 1
            })
        );
        assert_eq!(
            s.add_device(Some(32), bridge()),
            Err(PciError::SlotOutOfRange(32))
        );
        for _ in 2..32 {
            s.add_device(None, bridge()).unwrap();
        }
        assert_eq!(s.add_device(None, bridge()), Err(PciError::NoFreeSlot(3)));
        s.remove_device(5).unwrap();
        assert!(s.remove_device(5).is_err());
        assert!(s.remove_device(200).is_err());
        assert_eq!(s.add_device(None, bridge()), Ok(5));
    }

    #[test]
    fn only_bus0_function0_exists() {
        let mut s = PciSegment::new(0);
        s.add_device(Some(0), bridge()).unwrap();
        let seg = Mutex::new(s);
        let at = |bus, device, function| ConfigAddress {
            bus,
            device,
            function,
            reg: 0,
        };
        assert_eq!(read_config(&seg, &at(0, 0, 0)), 0x0d57_8086);
        assert_eq!(read_config(&seg, &at(0, 0, 1)), 0xffff_ffff);
        assert_eq!(read_config(&seg, &at(1, 0, 0)), 0xffff_ffff);
        assert_eq!(read_config(&seg, &at(0, 31, 0)), 0xffff_ffff);
        write_config(&seg, &at(0, 31, 0), 0, &[1]);
    }
}
