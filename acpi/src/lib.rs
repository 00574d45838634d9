//! The guest's ACPI tables, built with the `acpi_tables` crate from a plain description of the
//! platform. Pure: no KVM, no I/O; the VMM copies the result into guest memory.

#![forbid(unsafe_code)]

mod dsdt;
mod encode;
mod fadt;
pub mod ged;
pub mod hotplug;
mod madt;
mod mcfg;
mod names;
mod slit;
mod srat;
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
    #[error("PCI hot plug controller: {0}")]
    BadHotplug(String),
    #[error("the ACPI tables ({size} bytes at {base:#x}) do not fit below {limit:#x}")]
    TooLarge { base: u64, size: u64, limit: u64 },
    #[error("the RSDP must be 16-byte aligned, {0:#x} is not")]
    MisalignedBase(u64),
    #[error("the {signature} table is too large to encode ({size} bytes)")]
    TableTooLarge { signature: String, size: usize },
    #[error("{0} NUMA nodes do not fit in a SLIT")]
    TooManyNumaNodes(usize),
    #[error(
        "NUMA node {index} has proximity domain {domain}: domains must be 0..n-1 in node order \
         (the SLIT is indexed by them)"
    )]
    NumaDomainOrder { index: usize, domain: u32 },
    #[error("NUMA node {node}: {what}")]
    BadNumaNode { node: u32, what: String },
    #[error("no NUMA node has memory, and a guest ignores an SRAT without Memory Affinity")]
    NoNumaMemory,
    #[error("APIC id {0:#x} is listed twice in the NUMA nodes")]
    NumaApicIdTwice(u32),
    #[error("NUMA node APIC id {0:#x} is not one of the platform's vCPUs")]
    UnknownNumaApicId(u32),
    #[error("the NUMA distance matrix must be {0} x {0}, one row and one column per node")]
    DistanceMatrixShape(usize),
    #[error("the NUMA distance from node {node} to itself is {distance}, it must be 10")]
    BadLocalDistance { node: usize, distance: u8 },
    #[error(
        "the NUMA distance from node {from} to node {to} is {distance}, it must be 11-255 \
         (0-9 are reserved, 10 means local)"
    )]
    BadRemoteDistance {
        from: usize,
        to: usize,
        distance: u8,
    },
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
    /// The host bridge's `_PXM`: the NUMA node its devices are closest to (a node of
    /// `PlatformDesc::numa`).
    pub proximity_domain: Option<u32>,
    /// PCI functions that need an ACPI device object under the host bridge (for `_DSD`).
    pub functions: Vec<PciFunctionDesc>,
    /// Hot plug slots on the root bus: bit n set gives device number n a slot object
    /// (`_ADR`, `_SUN`, `_EJ0`) that the guest's acpiphp can hot plug into and eject from.
    /// Needs `PlatformDesc::pci_hotplug`. Leave out device numbers whose function must never
    /// be ejected (segment 0's host bridge at 00.0). A function 0 in `functions` at a slot's
    /// device number becomes the slot object itself (its name, its `_DSD`). 0: no slots.
    pub hotplug_slots: u32,
}

/// An ACPI device object for a PCI function on the segment's root bus (`bus_start`):
/// `Device(name) { _ADR [_DSD] }` under the host bridge, which is where the guest's PCI core
/// looks for a root-bus function's companion (a function behind a bridge would need the
/// bridge's own device object, which nothing here needs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciFunctionDesc {
    pub device: u8,
    pub function: u8,
    /// A four-character AML name, e.g. `GPU0`.
    pub name: String,
    /// Device properties (`_DSD`, ACPI Device Properties UUID), integer-valued, in order;
    /// e.g. `nvidia,gpu-mem-pxm-start`. No `_DSD` when empty.
    pub dsd: Vec<(String, u64)>,
}

/// A PCI function's address in the VM, segment included (where a device is placed, what a
/// Generic Initiator names). Not a config-cycle address (`pci::segment::ConfigAddress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciAddress {
    pub segment: u16,
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

/// `ssss:bb:dd.f`, as lspci prints it.
impl std::fmt::Display for PciAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.segment, self.bus, self.device, self.function
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumaNode {
    /// Must be the node's index in `NumaDesc::nodes`.
    pub proximity_domain: u32,
    /// APIC ids of the vCPUs in this node (Processor Local APIC affinity for ids < 255,
    /// x2APIC affinity otherwise).
    pub apic_ids: Vec<u32>,
    /// Guest RAM ranges in this node (Memory Affinity, flag Enabled).
    pub memory: Vec<AddrRange>,
    /// Makes the node a Generic Initiator node for this PCI function.
    pub generic_initiator: Option<PciAddress>,
}

/// The guest's NUMA topology: an SRAT and a SLIT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumaDesc {
    pub nodes: Vec<NumaNode>,
    /// distances[i][j]: SLIT distance from nodes[i] to nodes[j] (10 on the diagonal).
    pub distances: Vec<Vec<u8>>,
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

/// Where the PCI hot plug controller's MMIO register block (`hotplug::regs`) is, which the
/// DSDT's `\_SB.PHPR` drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciHotplugDesc {
    pub mmio_base: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformDesc {
    pub apic_ids: Vec<u32>,
    pub ioapic: IoApicDesc,
    pub pci_segments: Vec<PciSegmentDesc>,
    pub serial: Option<SerialDesc>,
    pub pm: PmDesc,
    pub ged: GedDesc,
    /// No SRAT and no SLIT when `None`.
    pub numa: Option<NumaDesc>,
    /// ACPI PCI hot plug (the GED's event bit 1). When `None` the DSDT has no hot plug
    /// objects and no segment may have `hotplug_slots`.
    pub pci_hotplug: Option<PciHotplugDesc>,
}
