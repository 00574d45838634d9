//! A passed-through function's capability list as both the config-space view (`config`) and
//! the interrupt emulation (`interrupts`) need it: the ids ghvmm knows and one linked entry.
//! A leaf of its own, so that neither of those modules imports the other for it; `config`
//! re-exports these.

/// The device's real configuration space is a VFIO region like any other.
pub use super::dispatch::RegionIo as DeviceConfig;

pub const CAP_PM: u8 = 0x01;
pub const CAP_MSI: u8 = 0x05;
pub const CAP_PCIE: u8 = 0x10;
pub const CAP_MSIX: u8 = 0x11;

/// One linked capability: where it is, its id, and the next exposed one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capability {
    pub offset: u8,
    pub id: u8,
    pub next: u8,
}
