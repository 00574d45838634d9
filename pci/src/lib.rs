//! PCI for ghvmm, as pure logic: emulated configuration space, segments with their functions,
//! the host bridge, and the guest's view of a passed-through function (`vfio`). No bus and no
//! I/O: the trap devices through which a guest reaches configuration space (ports
//! 0xCF8/0xCFC and ECAM) are in the `devices` crate.

#![forbid(unsafe_code)]

pub mod config;
pub mod device;
mod escape;
pub mod host_bridge;
pub mod segment;
pub mod vfio;

pub use config::{BarKind, BarSpec, ConfigSpace};
pub use device::PciDevice;
pub use escape::escape_controls;
pub use host_bridge::HostBridge;
pub use segment::{ConfigAddress, PciSegment, SLOTS_PER_BUS};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciError {
    #[error("PCI slot {0} is out of range (0-31)")]
    SlotOutOfRange(u8),
    #[error("PCI slot {slot} of segment {segment} is taken")]
    SlotTaken { segment: u16, slot: u8 },
    #[error("no free PCI slot on segment {0}")]
    NoFreeSlot(u16),
    #[error("no device in PCI slot {slot} of segment {segment}")]
    NoDevice { segment: u16, slot: u8 },
}
