//! Describes this VM to the `acpi` crate and copies the tables it builds into guest RAM.

use acpi::{
    AcpiBlob, AddrRange, GedDesc, IoApicDesc, PciSegmentDesc, PlatformDesc, PmDesc, SerialDesc,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::*;

#[derive(Debug, thiserror::Error)]
pub enum AcpiSetupError {
    #[error("building ACPI tables: {0}")]
    Build(#[from] acpi::AcpiError),
    #[error("writing ACPI tables into guest memory: {0}")]
    Write(#[from] vm_memory::GuestMemoryError),
}

pub fn platform_desc(vcpus: u8, layout: &Layout) -> PlatformDesc {
    PlatformDesc {
        apic_ids: (0..u32::from(vcpus)).collect(),
        ioapic: IoApicDesc {
            id: 0,
            address: IOAPIC_ADDR as u32,
            gsi_base: 0,
        },
        pci_segments: vec![PciSegmentDesc {
            segment: 0,
            bus_start: 0,
            bus_end: 0,
            ecam_base: ECAM_START,
            mmio32: AddrRange {
                base: MMIO32_START,
                len: MMIO32_SIZE,
            },
            mmio64: AddrRange {
                base: layout.mmio64_start,
                len: layout.mmio64_size,
            },
            io: true,
        }],
        serial: Some(SerialDesc {
            port: COM1_PORT,
            irq: COM1_IRQ,
        }),
        pm: PmDesc {
            sleep_control_port: ACPI_PM_PORT,
            sleep_status_port: ACPI_PM_PORT + 1,
            reset_port: ACPI_PM_PORT + 2,
            reset_value: ACPI_RESET_VALUE,
        },
        ged: GedDesc {
            mmio_base: GED_ADDR,
            irq: GED_IRQ,
        },
    }
}

/// Builds and writes the tables; returns the RSDP address for the zero page.
pub fn install(mem: &GuestMemoryMmap, desc: &PlatformDesc) -> Result<u64, AcpiSetupError> {
    let AcpiBlob { rsdp_addr, regions } = acpi::build_tables(desc, ACPI_START, ACPI_LIMIT)?;
    for (addr, bytes) in regions {
        mem.write_slice(&bytes, GuestAddress(addr))?;
    }
    Ok(rsdp_addr)
}
