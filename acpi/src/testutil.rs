//! A typical platform for tests.

use crate::*;

pub fn platform(cpus: u32) -> PlatformDesc {
    PlatformDesc {
        apic_ids: (0..cpus).collect(),
        ioapic: IoApicDesc {
            id: 0,
            address: 0xfec0_0000,
            gsi_base: 0,
        },
        pci_segments: vec![PciSegmentDesc {
            segment: 0,
            bus_start: 0,
            bus_end: 0,
            ecam_base: 0xe000_0000,
            mmio32: AddrRange {
                base: 0xc000_0000,
                len: 0x2000_0000,
            },
            mmio64: AddrRange {
                base: 128 << 30,
                len: 256 << 30,
            },
            io: true,
        }],
        serial: Some(SerialDesc {
            port: 0x3f8,
            irq: 4,
        }),
        pm: PmDesc {
            sleep_control_port: 0x600,
            sleep_status_port: 0x601,
            reset_port: 0x602,
            reset_value: 1,
        },
        ged: GedDesc {
            mmio_base: 0xfed0_0000,
            irq: 5,
        },
    }
}
