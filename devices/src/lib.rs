//! Devices that ghvmm emulates by trapping guest port I/O and MMIO.
//!
//! Everything here is reached through a [`Bus`]: the vCPU loop looks up the device that owns
//! the accessed address and calls [`BusDevice::read`] or [`BusDevice::write`] with the offset
//! inside the device's range.

#![forbid(unsafe_code)]

pub mod acpi_pm;
pub mod bus;
pub mod exit;
pub mod ged;
pub mod i8042;
pub mod log_limit;
pub mod pci_config_io;
pub mod pci_config_mmio;
pub mod pci_hotplug;
pub mod serial;

pub use acpi_pm::AcpiPmDevice;
pub use bus::{Bus, BusDevice, BusError, BusRange, SharedDevice};
pub use exit::{ExitCallback, VmExitRequest};
pub use ged::Ged;
pub use i8042::I8042;
pub use log_limit::LogLimit;
pub use pci_config_io::PciConfigIo;
pub use pci_config_mmio::PciConfigMmio;
pub use pci_hotplug::{EjectCallback, HotplugError, PciHotplug};
pub use serial::Serial;
