//! The host bridge at 00:00.0 of segment 0: an identity and nothing else.

use crate::config::ConfigSpace;
use crate::device::PciDevice;

const VENDOR_INTEL: u16 = 0x8086;
/// A generic host bridge id (the one Cloud Hypervisor presents too); guests bind no driver.
const DEVICE_HOST_BRIDGE: u16 = 0x0d57;
const CLASS_BRIDGE: u8 = 0x06;
const SUBCLASS_HOST: u8 = 0x00;

pub struct HostBridge {
    config: ConfigSpace,
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl HostBridge {
    pub fn new() -> Self {
        let mut config = ConfigSpace::new();
        config.set_ids(VENDOR_INTEL, DEVICE_HOST_BRIDGE);
        config.set_class(CLASS_BRIDGE, SUBCLASS_HOST, 0, 0);
        config.set_header_type(0);
        HostBridge { config }
    }
}

impl PciDevice for HostBridge {
    fn read_config_register(&mut self, reg_idx: usize) -> u32 {
        self.config.read(reg_idx)
    }

    fn write_config_register(&mut self, reg_idx: usize, offset: u64, data: &[u8]) {
        self.config.write(reg_idx, offset, data)
    }
}
