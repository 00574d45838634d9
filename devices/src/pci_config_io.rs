//! PCI configuration mechanism #1: CONFIG_ADDRESS at 0xCF8, CONFIG_DATA at 0xCFC-0xCFF.

use std::sync::Arc;

use parking_lot::Mutex;

use pci::config::extract;
use pci::segment::{read_config, write_config, ConfigAddress, PciSegment};

use crate::BusDevice;

const ENABLE: u32 = 1 << 31;
const DATA_OFFSET: u64 = 4;
const ADDRESS_MASK: u32 = 0x80ff_fffc;

pub struct PciConfigIo {
    segment: Arc<Mutex<PciSegment>>,
    address: u32,
}

impl PciConfigIo {
    pub fn new(segment: Arc<Mutex<PciSegment>>) -> Self {
        PciConfigIo {
            segment,
            address: 0,
        }
    }

    /// The function and register CONFIG_ADDRESS selects, if enabled.
    fn selected(&self) -> Option<ConfigAddress> {
        (self.address & ENABLE != 0).then_some(ConfigAddress {
            bus: (self.address >> 16) as u8,
            device: ((self.address >> 11) & 0x1f) as u8,
            function: ((self.address >> 8) & 0x7) as u8,
            reg: ((self.address >> 2) & 0x3f) as usize,
        })
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        if offset < DATA_OFFSET {
            if offset == 0 && data.len() == 4 {
                data.copy_from_slice(&self.address.to_le_bytes());
            } else {
                data.fill(0xff);
            }
            return;
        }
        match self.selected() {
            Some(addr) => extract(
                read_config(&self.segment, &addr),
                offset - DATA_OFFSET,
                data,
            ),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if offset < DATA_OFFSET {
            // CONFIG_ADDRESS only latches dword writes; narrower ones (e.g. 0xCF9, the reset
            // control port of Intel chipsets) go elsewhere on real hardware.
            match <[u8; 4]>::try_from(data) {
                // Bits 30:24 are reserved and the two low bits select a byte, not a register.
                Ok(d) if offset == 0 => self.address = u32::from_le_bytes(d) & ADDRESS_MASK,
                _ => crate::log_limited_here!(
                    log::Level::Debug,
                    "PCI config: ignored {}-byte write at {offset}",
                    data.len()
                ),
            }
            return;
        }
        if let Some(addr) = self.selected() {
            write_config(&self.segment, &addr, offset - DATA_OFFSET, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pci::HostBridge;

    fn io() -> PciConfigIo {
        let mut s = PciSegment::new(0);
        s.add_device(Some(0), Arc::new(Mutex::new(HostBridge::new())))
            .unwrap();
        PciConfigIo::new(Arc::new(Mutex::new(s)))
    }

    fn select(io: &mut PciConfigIo, v: u32) {
        io.write(0xcf8, 0, &v.to_le_bytes());
    }

    #[test]
    fn reads_host_bridge_ids_at_every_width() {
        let mut io = io();
        select(&mut io, 0x8000_0000);
        let mut d = [0u8; 4];
        io.read(0xcf8, 4, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x0d57_8086);
        let mut w = [0u8; 2];
        io.read(0xcf8, 6, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x0d57);
        let mut b = [0u8; 1];
        io.read(0xcf8, 7, &mut b);
        assert_eq!(b, [0x0d]);
        select(&mut io, 0x8000_0008);
        io.read(0xcf8, 4, &mut d);
        assert_eq!(d[3], 0x06, "class code: bridge");
    }

    #[test]
    fn address_register_reads_back_masked() {
        let mut io = io();
        select(&mut io, 0xffff_ffff);
        let mut d = [0u8; 4];
        io.read(0xcf8, 0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x80ff_fffc);
    }

    #[test]
    fn address_register_is_dword_only() {
        let mut io = io();
        select(&mut io, 0x8000_0008);
        io.write(0xcf8, 1, &[0x06]); // a chipset reset-control write to 0xCF9
        io.write(0xcf8, 0, &[0x00, 0x00]);
        let mut d = [0u8; 4];
        io.read(0xcf8, 0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x8000_0008);
        let mut w = [0u8; 2];
        io.read(0xcf8, 0, &mut w);
        assert_eq!(w, [0xff; 2]);
        let mut b = [0u8; 1];
        io.read(0xcf8, 3, &mut b);
        assert_eq!(b, [0xff]);
    }

    #[test]
    fn writes_reach_the_selected_register() {
        let mut io = io();
        select(&mut io, 0x8000_0004);
        io.write(0xcf8, 4, &[0x06, 0x00]); // command: memory + bus master
        io.write(0xcf8, 7, &[0xff]); // status: write-1-to-clear, nothing set
        let mut d = [0u8; 4];
        io.read(0xcf8, 4, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x0000_0006);
        select(&mut io, 0x8000_003c); // interrupt line
        io.write(0xcf8, 4, &[0x0b]);
        let mut b = [0u8; 1];
        io.read(0xcf8, 4, &mut b);
        assert_eq!(b, [0x0b]);
    }

    #[test]
    fn disabled_or_absent_reads_all_ones() {
        let mut io = io();
        select(&mut io, 0x0000_0000);
        let mut d = [0u8; 4];
        io.read(0xcf8, 4, &mut d);
        assert_eq!(d, [0xff; 4]);
        select(&mut io, 0x8000_0800); // device 1
        io.read(0xcf8, 4, &mut d);
        assert_eq!(d, [0xff; 4]);
    }

    #[test]
    fn hostile_widths() {
        let mut io = io();
        select(&mut io, 0x8000_0000);
        let mut d = [0u8; 3];
        io.read(0xcf8, 4, &mut d);
        assert_eq!(d, [0xff; 3]);
        let mut d = [0u8; 4];
        io.read(0xcf8, 6, &mut d);
        assert_eq!(d, [0xff; 4]);
        io.write(0xcf8, 7, &[1, 2, 3, 4]);
        io.write(0xcf8, 100, &[1]);
        io.read(0xcf8, 100, &mut d);
        io.write(0xcf8, 2, &[1, 2, 3, 4, 5, 6, 7, 8]);
    }
}
