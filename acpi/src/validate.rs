//! Rejects descriptions that would produce tables a guest misreads (duplicate ids, ranges that
//! wrap, names AML cannot express), before any table is built, so every builder can assume a
//! coherent platform and each error names the field at fault.

use std::collections::HashSet;

use crate::{AcpiError, PciSegmentDesc, PlatformDesc};

/// Each bus decodes 1 MiB of ECAM (32 devices x 8 functions x 4 KiB).
pub(crate) const ECAM_BUS_SHIFT: u32 = 20;

/// Largest MADT we emit: 4096 x2APIC entries keep the tables well inside the 128 KiB BIOS area.
pub(crate) const MAX_CPUS: usize = 4096;

/// x2APIC id 0xFFFF_FFFF is the broadcast address, never a processor.
const X2APIC_BROADCAST: u32 = u32::MAX;

pub(crate) fn platform(desc: &PlatformDesc) -> Result<(), AcpiError> {
    apic_ids(&desc.apic_ids)?;
    let mut seen = HashSet::new();
    for seg in &desc.pci_segments {
        if !seen.insert(seg.segment) {
            return Err(bad(seg.segment, "segment listed twice"));
        }
        segment(seg)?;
    }
    Ok(())
}

fn apic_ids(ids: &[u32]) -> Result<(), AcpiError> {
    if ids.is_empty() {
        return Err(AcpiError::NoCpus);
    }
    if ids.len() > MAX_CPUS {
        return Err(AcpiError::TooManyCpus(ids.len()));
    }
    let mut seen = HashSet::new();
    for &id in ids {
        if id == X2APIC_BROADCAST {
            return Err(AcpiError::BadApicId(id));
        }
        if !seen.insert(id) {
            return Err(AcpiError::DuplicateApicId(id));
        }
    }
    Ok(())
}

fn segment(seg: &PciSegmentDesc) -> Result<(), AcpiError> {
    if seg.bus_end < seg.bus_start {
        return Err(bad(seg.segment, "bus_end is below bus_start"));
    }
    bridge_name(seg.segment)?;
    ecam_range(seg)?;
    if seg.mmio32.len > 0 {
        seg.mmio32
            .last()
            .filter(|l| *l <= u64::from(u32::MAX))
            .ok_or_else(|| bad(seg.segment, "32-bit window does not fit below 4 GiB"))?;
        // DWordMemory's length field is 32 bits: the whole 4 GiB cannot be described.
        if seg.mmio32.len > u64::from(u32::MAX) {
            return Err(bad(seg.segment, "32-bit window must be shorter than 4 GiB"));
        }
    }
    if seg.mmio64.len > 0 {
        seg.mmio64
            .last()
            .ok_or_else(|| bad(seg.segment, "64-bit window wraps around"))?;
    }
    Ok(())
}

/// The ECAM bytes the segment's buses decode: `(first address, length)`. MCFG's base is the
/// address of bus 0 even when the segment starts at a later bus, so the range starts above it.
pub(crate) fn ecam_range(seg: &PciSegmentDesc) -> Result<(u64, u64), AcpiError> {
    let buses = u64::from(seg.bus_end.saturating_sub(seg.bus_start)) + 1;
    let start = seg
        .ecam_base
        .checked_add(u64::from(seg.bus_start) << ECAM_BUS_SHIFT);
    let len = buses << ECAM_BUS_SHIFT;
    match start {
        Some(s) if s.checked_add(len - 1).is_some() => Ok((s, len)),
        _ => Err(bad(seg.segment, "ECAM range wraps around")),
    }
}

/// AML names are four characters: `PCI0`..`PCIF` for the first sixteen segments (the names
/// every guest expects for segment 0), then `P010`..`PFFF`.
pub(crate) fn bridge_name(segment: u16) -> Result<String, AcpiError> {
    match segment {
        0..=0xf => Ok(format!("PCI{segment:X}")),
        0x10..=0xfff => Ok(format!("P{segment:03X}")),
        _ => Err(bad(segment, "only segments 0-0xFFF can be named in AML")),
    }
}

pub(crate) fn bad(segment: u16, what: &str) -> AcpiError {
    AcpiError::BadSegment {
        segment,
        what: what.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::platform as typical;

    #[test]
    fn names_stay_four_characters() {
        assert_eq!(bridge_name(0).unwrap(), "PCI0");
        assert_eq!(bridge_name(0xf).unwrap(), "PCIF");
        assert_eq!(bridge_name(0x10).unwrap(), "P010");
        assert_eq!(bridge_name(0xfff).unwrap(), "PFFF");
        assert!(bridge_name(0x1000).is_err());
        assert!(bridge_name(u16::MAX).is_err());
    }

    #[test]
    fn ecam_range_starts_at_bus_start() {
        let mut s = typical(1).pci_segments[0].clone();
        s.bus_start = 2;
        s.bus_end = 3;
        assert_eq!(ecam_range(&s), Ok((0xe020_0000, 2 << 20)));
        s.ecam_base = u64::MAX - (1 << 20);
        assert!(ecam_range(&s).is_err());
        s.ecam_base = u64::MAX;
        s.bus_start = 0;
        s.bus_end = 0;
        assert!(ecam_range(&s).is_err());
        s.ecam_base = u64::MAX - ((1 << 20) - 1);
        assert!(ecam_range(&s).is_ok(), "the last MiB of the address space");
    }

    #[test]
    fn apic_ids_must_be_unique_and_addressable() {
        let mut p = typical(2);
        assert_eq!(platform(&p), Ok(()));
        p.apic_ids = vec![3, 3];
        assert_eq!(platform(&p), Err(AcpiError::DuplicateApicId(3)));
        p.apic_ids = vec![u32::MAX];
        assert_eq!(platform(&p), Err(AcpiError::BadApicId(u32::MAX)));
        p.apic_ids.clear();
        assert_eq!(platform(&p), Err(AcpiError::NoCpus));
    }

    #[test]
    fn windows_must_fit_their_descriptors() {
        let mut p = typical(1);
        p.pci_segments[0].mmio32 = crate::AddrRange {
            base: 0,
            len: 1 << 32,
        };
        assert!(platform(&p).is_err(), "DWordMemory cannot say 4 GiB");
        p.pci_segments[0].mmio32.len = (1 << 32) - 1;
        assert_eq!(platform(&p), Ok(()));
        p.pci_segments[0].mmio64 = crate::AddrRange {
            base: 2,
            len: u64::MAX,
        };
        assert!(platform(&p).is_err(), "wraps");
        p.pci_segments[0].mmio64.base = 0;
        assert_eq!(platform(&p), Ok(()), "QWordMemory can say 2^64 - 1");
    }

    #[test]
    fn segments_must_be_unique() {
        let mut p = typical(1);
        p.pci_segments.push(p.pci_segments[0].clone());
        assert!(matches!(
            platform(&p),
            Err(AcpiError::BadSegment { segment: 0, .. })
        ));
    }
}
