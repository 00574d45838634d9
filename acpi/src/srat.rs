//! SRAT (revision 3): which proximity domain each vCPU, guest RAM range and Generic Initiator
//! (a GPU's PCI function) belongs to.
//!
//! Built here rather than with `acpi_tables::srat`: that builder has no Processor Local APIC
//! or x2APIC affinity structures and no way to add a structure of its caller's, and it fixes
//! the table's revision at 1 (the current revision is 3; Linux reads the high bytes of a
//! processor's proximity domain only from revision 2 on). Its Generic Initiator PCI handle
//! is in the right order (segment, bus, devfn), but `Handle::new_pci` asserts on the device
//! and function numbers. So all four structures are ours, in this one place.

use zerocopy::{Immutable, IntoBytes};

use crate::encode::sdt;
use crate::{AcpiError, NumaDesc, PciAddress};

pub(crate) const REVISION: u8 = 3;

/// Every structure's flags word: bit 0, Enabled (a disabled entry is ignored).
const ENABLED: u32 = 1;
/// Device handle type of a Generic Initiator: 0 = ACPI (_HID/_UID), 1 = PCI.
const HANDLE_PCI: u8 = 1;
/// APIC ids up to 254 fit the 8-bit Processor Local APIC affinity; 255 is the xAPIC
/// broadcast id, so it and anything larger need x2APIC affinity (as in the MADT).
const MAX_XAPIC_ID: u32 = 0xfe;

#[repr(C, packed)]
#[derive(Clone, Copy, IntoBytes, Immutable)]
struct LocalApicAffinity {
    kind: u8,
    length: u8,
    domain_lo: u8,
    apic_id: u8,
    flags: u32,
    local_sapic_eid: u8,
    /// Bits 8-31 of the proximity domain (read by Linux from SRAT revision 2 on).
    domain_hi: [u8; 3],
    clock_domain: u32,
}

#[repr(C, packed)]
#[derive(Clone, Copy, IntoBytes, Immutable)]
struct MemoryAffinity {
    kind: u8,
    length: u8,
    domain: u32,
    reserved1: u16,
    base: u64,
    len: u64,
    reserved2: u32,
    flags: u32,
    reserved3: u64,
}

#[repr(C, packed)]
#[derive(Clone, Copy, IntoBytes, Immutable)]
struct X2ApicAffinity {
    kind: u8,
    length: u8,
    reserved1: u16,
    domain: u32,
    x2apic_id: u32,
    flags: u32,
    clock_domain: u32,
    reserved2: u32,
}

#[repr(C, packed)]
#[derive(Clone, Copy, IntoBytes, Immutable)]
struct GenericInitiatorAffinity {
    kind: u8,
    length: u8,
    reserved1: u8,
    handle_type: u8,
    domain: u32,
    /// The PCI device handle: segment, then bus, then devfn, then 12 reserved bytes. (QEMU
    /// 9.0-9.1 swapped bus and devfn; a guest matching on bus would miss the GPU.)
    segment: u16,
    bus: u8,
    devfn: u8,
    handle_reserved: [u8; 12],
    flags: u32,
    reserved2: u32,
}

const _: () = {
    assert!(size_of::<LocalApicAffinity>() == 16);
    assert!(size_of::<MemoryAffinity>() == 40);
    assert!(size_of::<X2ApicAffinity>() == 24);
    assert!(size_of::<GenericInitiatorAffinity>() == 32);
};

fn processor(domain: u32, apic_id: u32) -> Vec<u8> {
    let d = domain.to_le_bytes();
    match u8::try_from(apic_id) {
        Ok(id) if apic_id <= MAX_XAPIC_ID => LocalApicAffinity {
            kind: 0,
            length: 16,
            domain_lo: d[0],
            apic_id: id,
            flags: ENABLED,
            local_sapic_eid: 0,
            domain_hi: [d[1], d[2], d[3]],
            clock_domain: 0,
        }
        .as_bytes()
        .to_vec(),
        _ => X2ApicAffinity {
            kind: 2,
            length: 24,
            reserved1: 0,
            domain,
            x2apic_id: apic_id,
            flags: ENABLED,
            clock_domain: 0,
            reserved2: 0,
        }
        .as_bytes()
        .to_vec(),
    }
}

fn generic_initiator(domain: u32, pci: &PciAddress) -> GenericInitiatorAffinity {
    GenericInitiatorAffinity {
        kind: 5,
        length: 32,
        reserved1: 0,
        handle_type: HANDLE_PCI,
        domain,
        segment: pci.segment,
        bus: pci.bus,
        // Validated: device <= 31 and function <= 7, so nothing is shifted out or overlaps.
        devfn: (pci.device << 3) | pci.function,
        handle_reserved: [0; 12],
        flags: ENABLED,
        reserved2: 0,
    }
}

/// Expects a validated description (see `validate::numa`).
pub(crate) fn build(numa: &NumaDesc) -> Result<Vec<u8>, AcpiError> {
    // Reserved u32 that must be 1 (for backward compatibility), then 8 reserved bytes.
    let mut body = 1u32.to_le_bytes().to_vec();
    body.extend_from_slice(&[0; 8]);
    for node in &numa.nodes {
        let domain = node.proximity_domain;
        for &id in &node.apic_ids {
            body.extend_from_slice(&processor(domain, id));
        }
        for m in &node.memory {
            let entry = MemoryAffinity {
                kind: 1,
                length: 40,
                domain,
                reserved1: 0,
                base: m.base,
                len: m.len,
                reserved2: 0,
                flags: ENABLED,
                reserved3: 0,
            };
            body.extend_from_slice(entry.as_bytes());
        }
        if let Some(pci) = &node.generic_initiator {
            body.extend_from_slice(generic_initiator(domain, pci).as_bytes());
        }
    }
    sdt(*b"SRAT", REVISION, *b"GHVMMSRA", &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{numa_platform, GPU_FIRST_NODE, GPU_NODES};
    use crate::{AddrRange, NumaNode};

    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    }

    /// The structures after the 48-byte preamble, each checked to claim the length its type
    /// has, as (type, bytes).
    fn structures(t: &[u8]) -> Vec<(u8, &[u8])> {
        let mut out = Vec::new();
        let mut o = 48;
        while o < t.len() {
            let (kind, len) = (t[o], t[o + 1] as usize);
            let expected = match kind {
                0 => 16,
                1 => 40,
                2 => 24,
                5 => 32,
                _ => panic!("unexpected SRAT structure type {kind}"),
            };
            assert_eq!(len, expected, "length of type {kind}");
            out.push((kind, &t[o..o + len]));
            o += len;
        }
        assert_eq!(o, t.len(), "structures end at the table's end");
        out
    }

    fn srat(numa: &NumaDesc) -> Vec<u8> {
        build(numa).unwrap()
    }

    #[test]
    fn header_is_revision_3_with_valid_length_and_checksum() {
        let t = srat(numa_platform(4).numa.as_ref().unwrap());
        assert_eq!(&t[0..4], b"SRAT");
        assert_eq!(u32_at(&t, 4) as usize, t.len());
        assert_eq!(t[8], 3, "revision");
        assert_eq!(t.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0, "checksum");
        assert_eq!(&t[10..16], b"GHVMM ");
        assert_eq!(&t[16..24], b"GHVMMSRA");
        assert_eq!(u32_at(&t, 36), 1, "reserved, must be 1");
        assert_eq!(u64_at(&t, 40), 0, "reserved");
        // 4 CPUs, 2 memory ranges, 8 GIs.
        assert_eq!(t.len(), 48 + 4 * 16 + 2 * 40 + 8 * 32);
    }

    #[test]
    fn every_field_of_every_structure() {
        let t = srat(numa_platform(4).numa.as_ref().unwrap());
        let s = structures(&t);
        assert_eq!(s.len(), 4 + 2 + 8);
        // Node 0: APIC 0 and 1, then [0, 1 GiB); node 1: APIC 2 and 3, then [4 GiB, 5 GiB).
        let expect_cpu = |e: &[u8], domain: u8, apic: u8| {
            assert_eq!(e[0], 0, "Processor Local APIC affinity");
            assert_eq!((e[2], e[3]), (domain, apic), "domain bits 0-7, APIC id");
            assert_eq!(u32_at(e, 4), 1, "flags: Enabled");
            assert_eq!(e[8], 0, "local SAPIC EID");
            assert_eq!(&e[9..12], &[0, 0, 0], "domain bits 8-31");
            assert_eq!(u32_at(e, 12), 0, "clock domain");
        };
        let expect_memory = |e: &[u8], domain: u32, base: u64, len: u64| {
            assert_eq!(e[0], 1, "Memory affinity");
            assert_eq!(u32_at(e, 2), domain);
            assert_eq!(&e[6..8], &[0, 0], "reserved");
            assert_eq!((u64_at(e, 8), u64_at(e, 16)), (base, len));
            assert_eq!(u32_at(e, 24), 0, "reserved");
            assert_eq!(
                u32_at(e, 28),
                1,
                "flags: Enabled, not hot-pluggable or non-volatile"
            );
            assert_eq!(u64_at(e, 32), 0, "reserved");
        };
        expect_cpu(s[0].1, 0, 0);
        expect_cpu(s[1].1, 0, 1);
        expect_memory(s[2].1, 0, 0, 1 << 30);
        expect_cpu(s[3].1, 1, 2);
        expect_cpu(s[4].1, 1, 3);
        expect_memory(s[5].1, 1, 4 << 30, 1 << 30);
        for (i, (kind, e)) in s[6..].iter().enumerate() {
            assert_eq!(*kind, 5, "Generic Initiator affinity");
            assert_eq!(e[2], 0, "reserved");
            assert_eq!(e[3], 1, "device handle type: PCI");
            assert_eq!(u32_at(e, 4), GPU_FIRST_NODE + i as u32);
            assert_eq!(&e[8..24], &[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            assert_eq!(u32_at(e, 24), 1, "flags: Enabled");
            assert_eq!(u32_at(e, 28), 0, "reserved");
        }
        assert_eq!(s[6..].len(), GPU_NODES as usize);
    }

    fn gi_only(pci: PciAddress) -> NumaDesc {
        NumaDesc {
            nodes: vec![NumaNode {
                proximity_domain: 0,
                apic_ids: vec![],
                memory: vec![AddrRange { base: 0, len: 1 }],
                generic_initiator: Some(pci),
            }],
            distances: vec![vec![10]],
        }
    }

    /// The device handle is segment (LE), bus, devfn = device << 3 | function, 12 zeros:
    /// the order ACPI 6.3 specifies and QEMU 9.0-9.1 got wrong.
    #[test]
    fn generic_initiator_handle_is_segment_bus_devfn() {
        for (pci, handle) in [
            ((1, 0, 0, 0), [0x01, 0x00, 0x00, 0x00]),
            ((0, 0, 3, 1), [0x00, 0x00, 0x00, 0x19]),
            ((0x1234, 0x56, 31, 7), [0x34, 0x12, 0x56, 0xff]),
            ((0, 0x80, 0, 0), [0x00, 0x00, 0x80, 0x00]),
        ] {
            let pci = PciAddress {
                segment: pci.0,
                bus: pci.1,
                device: pci.2,
                function: pci.3,
            };
            let t = srat(&gi_only(pci));
            let (kind, e) = structures(&t)[1];
            assert_eq!(kind, 5);
            assert_eq!(&e[8..12], &handle, "{pci}");
            assert_eq!(&e[12..24], &[0; 12], "{pci}");
        }
    }

    /// A second, independent encoder of the same structure: acpi_tables' (which is right
    /// about the handle; it is the rest of its SRAT we cannot use).
    #[test]
    fn generic_initiator_matches_acpi_tables_encoding() {
        use acpi_tables::srat::{GenericInitiator, Handle, SRAT};
        use acpi_tables::Aml;
        let pci = PciAddress {
            segment: 0x0102,
            bus: 0x34,
            device: 5,
            function: 6,
        };
        let mut theirs = SRAT::new(crate::OEM_ID, *b"GHVMMSRA", 1);
        theirs.add_generic_initiator(
            GenericInitiator::new(0x0a0b_0c0d, Handle::new_pci(0x0102, 0x34, 5, 6)).enabled(),
        );
        let mut theirs_bytes = Vec::new();
        theirs.to_aml_bytes(&mut theirs_bytes);
        let ours = generic_initiator(0x0a0b_0c0d, &pci);
        assert_eq!(ours.as_bytes(), &theirs_bytes[48..80]);
        assert_eq!(
            theirs_bytes[8], 1,
            "acpi_tables' SRAT revision (why it is not used)"
        );
    }

    #[test]
    fn large_apic_ids_get_x2apic_affinity() {
        let mut numa = numa_platform(4).numa.unwrap();
        numa.nodes[1].apic_ids = vec![254, 255, 0x1234_5678];
        let t = srat(&numa);
        let cpus: Vec<&[u8]> = structures(&t)
            .into_iter()
            .filter(|(k, _)| *k == 0 || *k == 2)
            .map(|(_, e)| e)
            .collect();
        assert_eq!(cpus.len(), 2 + 3);
        assert_eq!((cpus[2][0], cpus[2][2], cpus[2][3]), (0, 1, 254), "xAPIC");
        for (e, id) in [(cpus[3], 255), (cpus[4], 0x1234_5678)] {
            assert_eq!(e[0], 2, "Processor Local x2APIC affinity");
            assert_eq!(&e[2..4], &[0, 0], "reserved");
            assert_eq!(u32_at(e, 4), 1, "proximity domain");
            assert_eq!(u32_at(e, 8), id, "x2APIC id");
            assert_eq!(u32_at(e, 12), 1, "flags: Enabled");
            assert_eq!(u32_at(e, 16), 0, "clock domain");
            assert_eq!(u32_at(e, 20), 0, "reserved");
        }
    }

    #[test]
    fn xapic_affinity_splits_a_32_bit_domain() {
        assert_eq!(
            processor(0x1234_5678, 7),
            [0, 16, 0x78, 7, 1, 0, 0, 0, 0, 0x56, 0x34, 0x12, 0, 0, 0, 0]
        );
    }
}
