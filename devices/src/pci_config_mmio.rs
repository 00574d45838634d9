//! ECAM (PCI Express enhanced configuration access): 4 KiB of configuration space per
//! function, memory-mapped. ghvmm gives each segment one bus, so 1 MiB.

use std::sync::Arc;

use parking_lot::Mutex;

use pci::config::{extract, NUM_REGS};
use pci::segment::{read_config, write_config, ConfigAddress, PciSegment};

use crate::BusDevice;

pub struct PciConfigMmio {
    segment: Arc<Mutex<PciSegment>>,
}

impl PciConfigMmio {
    pub fn new(segment: Arc<Mutex<PciSegment>>) -> Self {
        PciConfigMmio { segment }
    }
}

fn decode(offset: u64) -> (ConfigAddress, u64) {
    (
        ConfigAddress {
            bus: ((offset >> 20) & 0xff) as u8,
            device: ((offset >> 15) & 0x1f) as u8,
            function: ((offset >> 12) & 0x7) as u8,
            reg: ((offset & 0xfff) >> 2) as usize % NUM_REGS,
        },
        offset & 0x3,
    )
}

impl BusDevice for PciConfigMmio {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        let (addr, byte) = decode(offset);
        if offset >> 28 != 0 {
            data.fill(0xff);
            return;
        }
        extract(read_config(&self.segment, &addr), byte, data);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if offset >> 28 != 0 {
            return;
        }
        let (addr, byte) = decode(offset);
        write_config(&self.segment, &addr, byte, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pci::HostBridge;

    fn ecam() -> PciConfigMmio {
        let mut s = PciSegment::new(0);
        s.add_device(Some(0), Arc::new(Mutex::new(HostBridge::new())))
            .unwrap();
        PciConfigMmio::new(Arc::new(Mutex::new(s)))
    }

    #[test]
    fn decodes_bus_device_function_register() {
        let (a, b) = decode((1 << 20) | (3 << 15) | (2 << 12) | 0x10a);
        assert_eq!((a.bus, a.device, a.function, a.reg, b), (1, 3, 2, 0x42, 2));
    }

    #[test]
    fn host_bridge_and_empty_slots() {
        let mut e = ecam();
        let mut d = [0u8; 4];
        e.read(0, 0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x0d57_8086);
        let mut w = [0u8; 2];
        e.read(0, 0xa, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x0600);
        e.read(0, 1 << 15, &mut d);
        assert_eq!(d, [0xff; 4]);
        e.read(0, 0xffc, &mut d);
        assert_eq!(
            d, [0; 4],
            "extended config space of the host bridge is empty"
        );
    }

    #[test]
    fn hostile_accesses() {
        let mut e = ecam();
        let mut d = [0u8; 8];
        e.read(0, 0, &mut d);
        assert_eq!(d, [0xff; 8]);
        e.read(0, u64::MAX, &mut d[..4]);
        e.write(0, u64::MAX, &[1]);
        e.write(0, 3, &[1, 2]);
        e.write(0, 0, &[]);
    }
}
