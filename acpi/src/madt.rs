//! MADT: the local APICs, the IOAPIC, and the two structures acpi_tables lacks (interrupt
//! source override, local APIC NMI) plus x2APIC entries for APIC ids above 254.

use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::{Aml, AmlSink};
use zerocopy::{Immutable, IntoBytes};

use crate::encode::set_checksum;
use crate::validate::MAX_CPUS;
use crate::{AcpiError, PlatformDesc, OEM_ID, OEM_REVISION};

const LAPIC_ADDR: u32 = 0xfee0_0000;
/// MADT flags: PCAT_COMPAT, dual 8259s are present (the in-kernel PIC); Linux masks them.
const PCAT_COMPAT: u32 = 1;
const MADT_FLAGS_OFFSET: usize = 40;

#[repr(C, packed)]
#[derive(Clone, Copy, IntoBytes, Immutable)]
struct InterruptSourceOverride {
    kind: u8,
    length: u8,
    bus: u8,
    source: u8,
    gsi: u32,
    flags: u16,
}

#[repr(C, packed)]
#[derive(Clone, Copy, IntoBytes, Immutable)]
struct LocalApicNmi {
    kind: u8,
    length: u8,
    uid: u8,
    flags: u16,
    lint: u8,
}

#[repr(C, packed)]
#[derive(Clone, Copy, IntoBytes, Immutable)]
struct ProcessorLocalX2Apic {
    kind: u8,
    length: u8,
    reserved: u16,
    x2apic_id: u32,
    flags: u32,
    uid: u32,
}

macro_rules! raw_aml {
    ($t:ty) => {
        impl Aml for $t {
            fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
                sink.vec(self.as_bytes());
            }
        }
    };
}
raw_aml!(InterruptSourceOverride);
raw_aml!(LocalApicNmi);
raw_aml!(ProcessorLocalX2Apic);

pub fn build(desc: &PlatformDesc) -> Result<Vec<u8>, AcpiError> {
    if desc.apic_ids.is_empty() {
        return Err(AcpiError::NoCpus);
    }
    if desc.apic_ids.len() > MAX_CPUS {
        return Err(AcpiError::TooManyCpus(desc.apic_ids.len()));
    }
    let mut madt = MADT::new(
        OEM_ID,
        *b"GHVMMAPI",
        OEM_REVISION,
        LocalInterruptController::Address(LAPIC_ADDR),
    );
    for (uid, &id) in desc.apic_ids.iter().enumerate() {
        match (u8::try_from(uid), u8::try_from(id)) {
            (Ok(uid), Ok(id)) if id < 0xff => {
                madt.add_structure(ProcessorLocalApic::new(uid, id, EnabledStatus::Enabled))
            }
            _ => madt.add_structure(ProcessorLocalX2Apic {
                kind: 9,
                length: 16,
                reserved: 0,
                x2apic_id: id,
                flags: 1,
                uid: uid as u32,
            }),
        }
    }
    madt.add_structure(IoApic::new(
        desc.ioapic.id,
        desc.ioapic.address,
        desc.ioapic.gsi_base,
    ));
    // The PIT's IRQ 0 is wired to IOAPIC pin 2 (as on every PC since the IOAPIC).
    madt.add_structure(InterruptSourceOverride {
        kind: 2,
        length: 10,
        bus: 0,
        source: 0,
        gsi: 2,
        flags: 0,
    });
    // LINT1 of every processor (uid 0xff = all) is the NMI input.
    madt.add_structure(LocalApicNmi {
        kind: 4,
        length: 6,
        uid: 0xff,
        flags: 0,
        lint: 1,
    });
    let mut bytes = Vec::new();
    madt.to_aml_bytes(&mut bytes);
    bytes[MADT_FLAGS_OFFSET..MADT_FLAGS_OFFSET + 4].copy_from_slice(&PCAT_COMPAT.to_le_bytes());
    set_checksum(&mut bytes);
    Ok(bytes)
}
