//! MCFG: one ECAM allocation per PCI segment.

use acpi_tables::mcfg::MCFG;

use crate::encode::bytes;
use crate::{PciSegmentDesc, OEM_ID, OEM_REVISION};

pub(crate) fn build(segments: &[PciSegmentDesc]) -> Vec<u8> {
    let mut m = MCFG::new(OEM_ID, *b"GHVMMMCF", OEM_REVISION);
    for s in segments {
        m.add_ecam(s.ecam_base, s.segment, s.bus_start, s.bus_end);
    }
    bytes(&m)
}
