//! The guest's ACPI tables, built with the `acpi_tables` crate from a plain description of the
//! platform. Pure: no KVM, no I/O; the VMM copies the result into guest memory.

mod dsdt;
mod fadt;
mod madt;
mod mcfg;
mod tables;
#[doc(hidden)]
pub mod testutil;
mod validate;

pub use tables::{build_tables, AcpiBlob};

/// OEM ID in every table header.
pub const OEM_ID: [u8; 6] = *b"GHVMM ";
pub const OEM_REVISION: u32 = 1;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AcpiError {
    #[error("a VM needs at least one vCPU for its MADT")]
    NoCpus,
    #[error("{0} local APICs do not fit in the MADT")]
    TooManyCpus(usize),
    #[error("APIC id {0:#x} is listed twice")]
    DuplicateApicId(u32),
    #[error("APIC id {0:#x} is the x2APIC broadcast id, not a processor")]
    BadApicId(u32),
    #[error("PCI segment {segment}: {what}")]
    BadSegment { segment: u16, what: String },
    #[error("the ACPI tables ({size} bytes at {base:#x}) do not fit below {limit:#x}")]
    TooLarge { base: u64, size: u64, limit: u64 },
    #[error("the RSDP must be 16-byte aligned, {0:#x} is not")]
    MisalignedBase(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrRange {
    pub base: u64,
    pub len: u64,
}

impl AddrRange {
    /// The last address, or `None` for an empty or wrapping range.
    pub fn last(&self) -> Option<u64> {
        self.len
            .checked_sub(1)
            .and_then(|l| self.base.checked_add(l))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoApicDesc {
    pub id: u8,
    pub address: u32,
    pub gsi_base: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciSegmentDesc {
    pub segment: u16,
    pub bus_start: u8,
    pub bus_end: u8,
    pub ecam_base: u64,
    pub mmio32: AddrRange,
    pub mmio64: AddrRange,
    /// Segment 0 decodes port I/O: the config ports and the I/O windows.
    pub io: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SerialDesc {
    pub port: u16,
    pub irq: u32,
}

/// The hardware-reduced ACPI registers (one byte each, in port I/O space).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PmDesc {
    pub sleep_control_port: u16,
    pub sleep_status_port: u16,
    pub reset_port: u16,
    pub reset_value: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GedDesc {
    pub mmio_base: u64,
    pub irq: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformDesc {
    pub apic_ids: Vec<u32>,
    pub ioapic: IoApicDesc,
    pub pci_segments: Vec<PciSegmentDesc>,
    pub serial: Option<SerialDesc>,
    pub pm: PmDesc,
    pub ged: GedDesc,
}
