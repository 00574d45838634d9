//! Lays the tables out in guest memory and links them: RSDP -> XSDT -> FADT -> DSDT, MADT, MCFG.

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;

use crate::{dsdt, madt, AcpiError, PlatformDesc, OEM_ID, OEM_REVISION};

/// What to copy into guest memory, and where the guest finds the RSDP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiBlob {
    pub rsdp_addr: u64,
    pub regions: Vec<(u64, Vec<u8>)>,
}

const CHECKSUM_OFFSET: usize = 9;
const TABLE_ALIGN: u64 = 16;
/// IA-PC boot architecture flags: no VGA (bit 2), no CMOS RTC (bit 5). "No 8042" is bit 1
/// being clear, and "legacy devices" bit 0 clear: there is no ISA bus to probe.
const IAPC_BOOT_ARCH: u16 = (1 << 2) | (1 << 5);

/// Recomputes an SDT's checksum after its bytes were patched.
pub(crate) fn set_checksum(table: &mut [u8]) {
    table[CHECKSUM_OFFSET] = 0;
    let sum = table.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    table[CHECKSUM_OFFSET] = sum.wrapping_neg();
}

fn bytes(aml: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    aml.to_aml_bytes(&mut v);
    v
}

fn io_register(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port),
    )
}

fn fadt(desc: &PlatformDesc, dsdt_addr: u64) -> Vec<u8> {
    let mut f = FADTBuilder::new(OEM_ID, *b"GHVMMFAC", OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup);
    f.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    f.reset_reg = io_register(desc.pm.reset_port);
    f.reset_value = desc.pm.reset_value;
    f.sleep_control_reg = io_register(desc.pm.sleep_control_port);
    f.sleep_status_reg = io_register(desc.pm.sleep_status_port);
    bytes(&f.finalize())
}

fn mcfg(desc: &PlatformDesc) -> Vec<u8> {
    let mut m = MCFG::new(OEM_ID, *b"GHVMMMCF", OEM_REVISION);
    for s in &desc.pci_segments {
        m.add_ecam(s.ecam_base, s.segment, s.bus_start, s.bus_end);
    }
    bytes(&m)
}

fn align(v: u64) -> Option<u64> {
    v.checked_add(TABLE_ALIGN - 1)
        .map(|v| v & !(TABLE_ALIGN - 1))
}

/// Builds every table and places them from `base` (RSDP first) up to `limit`.
pub fn build_tables(desc: &PlatformDesc, base: u64, limit: u64) -> Result<AcpiBlob, AcpiError> {
    let dsdt = dsdt::build(desc)?;
    let madt = madt::build(desc)?;
    let mcfg = mcfg(desc);
    let rsdp_len = Rsdp::len() as u64;
    let xsdt_len = 36 + 8 * 3;
    let fadt_len = acpi_tables::fadt::FADT::len() as u64;

    let too_large = |end: Option<u64>| AcpiError::TooLarge {
        base,
        size: end.map_or(u64::MAX, |e| e.saturating_sub(base)),
        limit,
    };
    let mut cursor = Some(base);
    let mut place = |len: u64| -> Option<u64> {
        let at = align(cursor?)?;
        cursor = at.checked_add(len);
        Some(at)
    };
    let rsdp_addr = place(rsdp_len);
    let xsdt_addr = place(xsdt_len);
    let fadt_addr = place(fadt_len);
    let dsdt_addr = place(dsdt.len() as u64);
    let madt_addr = place(madt.len() as u64);
    let mcfg_addr = place(mcfg.len() as u64);
    let end = cursor;
    let (
        Some(rsdp_addr),
        Some(xsdt_addr),
        Some(fadt_addr),
        Some(dsdt_addr),
        Some(madt_addr),
        Some(mcfg_addr),
        Some(e),
    ) = (
        rsdp_addr, xsdt_addr, fadt_addr, dsdt_addr, madt_addr, mcfg_addr, end,
    )
    else {
        return Err(too_large(None));
    };
    if e > limit {
        return Err(too_large(end));
    }

    let mut xsdt = XSDT::new(OEM_ID, *b"GHVMMXSD", OEM_REVISION);
    for t in [fadt_addr, madt_addr, mcfg_addr] {
        xsdt.add_entry(t);
    }
    Ok(AcpiBlob {
        rsdp_addr,
        regions: vec![
            (rsdp_addr, bytes(&Rsdp::new(OEM_ID, xsdt_addr))),
            (xsdt_addr, bytes(&xsdt)),
            (fadt_addr, fadt(desc, dsdt_addr)),
            (dsdt_addr, dsdt),
            (madt_addr, madt),
            (mcfg_addr, mcfg),
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::platform;
    use crate::AddrRange;

    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    }
    fn table<'a>(blob: &'a AcpiBlob, sig: &[u8]) -> (u64, &'a [u8]) {
        blob.regions
            .iter()
            .find(|(_, b)| b.starts_with(sig))
            .map(|(a, b)| (*a, b.as_slice()))
            .unwrap()
    }

    #[test]
    fn every_table_has_a_valid_checksum_and_length() {
        let blob = build_tables(&platform(4), 0xe0000, 0x100000).unwrap();
        assert_eq!(blob.rsdp_addr, 0xe0000);
        for (addr, bytes) in &blob.regions {
            assert_eq!(addr % 16, 0);
            if bytes.starts_with(b"RSD PTR ") {
                assert_eq!(bytes[..20].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
                assert_eq!(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
                continue;
            }
            assert_eq!(u32_at(bytes, 4) as usize, bytes.len(), "{:?}", &bytes[..4]);
            assert_eq!(
                bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)),
                0,
                "{:?}",
                &bytes[..4]
            );
            assert_eq!(&bytes[10..16], b"GHVMM ");
        }
        // Regions never overlap.
        let mut r: Vec<(u64, u64)> = blob
            .regions
            .iter()
            .map(|(a, b)| (*a, *a + b.len() as u64))
            .collect();
        r.sort();
        assert!(r.windows(2).all(|w| w[0].1 <= w[1].0));
    }

    #[test]
    fn links_rsdp_xsdt_fadt_dsdt() {
        let blob = build_tables(&platform(1), 0xe0000, 0x100000).unwrap();
        let (_, rsdp) = table(&blob, b"RSD PTR ");
        assert_eq!(rsdp[15], 2, "revision 2");
        let (xsdt_addr, xsdt) = table(&blob, b"XSDT");
        assert_eq!(u64_at(rsdp, 24), xsdt_addr);
        let entries: Vec<u64> = (36..xsdt.len())
            .step_by(8)
            .map(|o| u64_at(xsdt, o))
            .collect();
        for sig in [&b"FACP"[..], b"APIC", b"MCFG"] {
            assert!(entries.contains(&table(&blob, sig).0), "{sig:?}");
        }
        let (_, fadt) = table(&blob, b"FACP");
        let (dsdt_addr, _) = table(&blob, b"DSDT");
        assert_eq!(u64_at(fadt, 140), dsdt_addr, "X_DSDT");
        assert_eq!(u32_at(fadt, 40), 0, "no 32-bit DSDT pointer");
    }

    #[test]
    fn fadt_is_hardware_reduced_with_sleep_and_reset_registers() {
        let blob = build_tables(&platform(1), 0xe0000, 0x100000).unwrap();
        let (_, f) = table(&blob, b"FACP");
        assert_eq!(f[8], 6, "FADT major version");
        let flags = u32_at(f, 112);
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        assert_eq!(
            u16::from_le_bytes([f[109], f[110]]),
            (1 << 2) | (1 << 5),
            "IAPC_BOOT_ARCH"
        );
        // RESET_REG GAS at 116: SystemIO, 8 bits, port 0x602; value at 128.
        assert_eq!((f[116], f[117], u64_at(f, 120), f[128]), (1, 8, 0x602, 1));
        // SLEEP_CONTROL_REG at 244 and SLEEP_STATUS_REG at 256.
        assert_eq!((f[244], f[245], u64_at(f, 248)), (1, 8, 0x600));
        assert_eq!((f[256], f[257], u64_at(f, 260)), (1, 8, 0x601));
    }

    #[test]
    fn madt_lists_every_cpu_ioapic_and_overrides() {
        let blob = build_tables(&platform(3), 0xe0000, 0x100000).unwrap();
        let (_, m) = table(&blob, b"APIC");
        assert_eq!(u32_at(m, 36), 0xfee0_0000);
        assert_eq!(u32_at(m, 40), 1, "PCAT_COMPAT");
        let mut o = 44;
        let mut kinds = Vec::new();
        while o < m.len() {
            kinds.push((m[o], m[o + 1]));
            if m[o] == 0 {
                assert_eq!(m[o + 3] as usize, kinds.len() - 1, "APIC id");
                assert_eq!(u32_at(m, o + 4), 1, "enabled");
            }
            if m[o] == 2 {
                assert_eq!((m[o + 3], u32_at(m, o + 4)), (0, 2), "IRQ0 -> GSI2");
            }
            o += m[o + 1] as usize;
        }
        assert_eq!(o, m.len());
        assert_eq!(
            kinds,
            vec![(0, 8), (0, 8), (0, 8), (1, 12), (2, 10), (4, 6)]
        );
    }

    #[test]
    fn many_cpus_use_x2apic_entries() {
        let blob = build_tables(&platform(300), 0xe0000, 0x100000).unwrap();
        let (_, m) = table(&blob, b"APIC");
        let x2 = (44..m.len()).scan(44usize, |o, _| {
            if *o >= m.len() {
                return None;
            }
            let k = m[*o];
            *o += m[*o + 1] as usize;
            Some(k)
        });
        assert_eq!(x2.filter(|k| *k == 9).count(), 300 - 255);
    }

    #[test]
    fn mcfg_has_one_entry_per_segment() {
        let mut p = platform(1);
        let mut s1 = p.pci_segments[0].clone();
        s1.segment = 1;
        s1.ecam_base = 0xe010_0000;
        s1.io = false;
        p.pci_segments.push(s1);
        let blob = build_tables(&p, 0xe0000, 0x100000).unwrap();
        let (_, m) = table(&blob, b"MCFG");
        assert_eq!(m.len(), 44 + 2 * 16);
        assert_eq!(
            (
                u64_at(m, 44),
                u16::from_le_bytes([m[52], m[53]]),
                m[54],
                m[55]
            ),
            (0xe000_0000, 0, 0, 0)
        );
        assert_eq!(
            (u64_at(m, 60), u16::from_le_bytes([m[68], m[69]])),
            (0xe010_0000, 1)
        );
    }

    #[test]
    fn hostile_descriptions_are_errors_not_panics() {
        let mut p = platform(0);
        assert_eq!(build_tables(&p, 0xe0000, 0x100000), Err(AcpiError::NoCpus));
        p = platform(5000);
        assert!(matches!(
            build_tables(&p, 0xe0000, 0x100000),
            Err(AcpiError::TooManyCpus(_))
        ));
        p = platform(1);
        p.pci_segments[0].mmio32 = AddrRange {
            base: 0xffff_0000,
            len: 0x2_0000,
        };
        assert!(matches!(
            build_tables(&p, 0xe0000, 0x100000),
            Err(AcpiError::BadSegment { .. })
        ));
        p = platform(1);
        p.pci_segments[0].mmio64 = AddrRange {
            base: u64::MAX,
            len: 2,
        };
        assert!(build_tables(&p, 0xe0000, 0x100000).is_err());
        p = platform(1);
        p.pci_segments[0].bus_end = 0;
        p.pci_segments[0].bus_start = 1;
        assert!(build_tables(&p, 0xe0000, 0x100000).is_err());
        p = platform(1);
        p.pci_segments[0].mmio64.len = 0;
        p.pci_segments[0].mmio32.len = 0;
        assert!(
            build_tables(&p, 0xe0000, 0x100000).is_ok(),
            "empty windows are skipped"
        );
        p.serial = None;
        p.pci_segments.clear();
        assert!(build_tables(&p, 0xe0000, 0x100000).is_ok());
        assert!(matches!(
            build_tables(&platform(1), 0xe0000, 0xe0100),
            Err(AcpiError::TooLarge { .. })
        ));
        assert!(build_tables(&platform(1), u64::MAX - 64, u64::MAX).is_err());
    }
}
