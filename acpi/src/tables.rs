//! Lays the tables out in guest memory and links them: RSDP -> XSDT -> FADT -> DSDT, and the
//! XSDT's other tables (MADT, MCFG, and SRAT and SLIT for a NUMA guest).

use acpi_tables::rsdp::Rsdp;
use acpi_tables::xsdt::XSDT;

use crate::encode::{bytes, HEADER_LEN};
use crate::{
    dsdt, fadt, madt, mcfg, slit, srat, validate, AcpiError, PlatformDesc, OEM_ID, OEM_REVISION,
};

/// What to copy into guest memory, and where the guest finds the RSDP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiBlob {
    pub rsdp_addr: u64,
    pub regions: Vec<(u64, Vec<u8>)>,
}

/// The RSDP must be 16-byte aligned for the legacy BIOS-area scan; the others just follow suit.
const TABLE_ALIGN: u64 = 16;

/// Hands out aligned addresses from `base` upwards and fails once anything crosses `limit`.
struct Placer {
    base: u64,
    limit: u64,
    cursor: u64,
}

impl Placer {
    fn new(base: u64, limit: u64) -> Result<Self, AcpiError> {
        if base % TABLE_ALIGN != 0 {
            return Err(AcpiError::MisalignedBase(base));
        }
        Ok(Placer {
            base,
            limit,
            cursor: base,
        })
    }

    fn place(&mut self, len: usize) -> Result<u64, AcpiError> {
        let at = self.cursor.checked_next_multiple_of(TABLE_ALIGN);
        let end = at.and_then(|a| a.checked_add(u64::try_from(len).ok()?));
        match (at, end) {
            (Some(at), Some(end)) if end <= self.limit => {
                self.cursor = end;
                Ok(at)
            }
            _ => Err(self.too_large(end)),
        }
    }

    fn too_large(&self, end: Option<u64>) -> AcpiError {
        AcpiError::TooLarge {
            base: self.base,
            size: end.map_or(u64::MAX, |e| e.saturating_sub(self.base)),
            limit: self.limit,
        }
    }
}

/// Builds every table and places them from `base` (RSDP first, at `base` itself) up to `limit`.
pub fn build_tables(desc: &PlatformDesc, base: u64, limit: u64) -> Result<AcpiBlob, AcpiError> {
    validate::platform(desc)?;
    let dsdt = dsdt::build(desc)?;
    // Tables the XSDT lists besides the FADT; each is complete (checksummed) already.
    let mut others = vec![madt::build(desc)?, mcfg::build(&desc.pci_segments)];
    if let Some(numa) = &desc.numa {
        others.push(srat::build(numa)?);
        others.push(slit::build(numa)?);
    }

    let mut placer = Placer::new(base, limit)?;
    let rsdp_addr = placer.place(Rsdp::len())?;
    let xsdt_addr = placer.place(HEADER_LEN + 8 * (1 + others.len()))?;
    let fadt_addr = placer.place(fadt::len())?;
    let dsdt_addr = placer.place(dsdt.len())?;
    let mut regions = Vec::with_capacity(4 + others.len());
    let mut xsdt = XSDT::new(OEM_ID, *b"GHVMMXSD", OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    let mut placed = Vec::with_capacity(others.len());
    for table in others {
        let addr = placer.place(table.len())?;
        xsdt.add_entry(addr);
        placed.push((addr, table));
    }
    regions.push((rsdp_addr, bytes(&Rsdp::new(OEM_ID, xsdt_addr))));
    regions.push((xsdt_addr, bytes(&xsdt)));
    regions.push((fadt_addr, fadt::build(&desc.pm, dsdt_addr)));
    regions.push((dsdt_addr, dsdt));
    regions.extend(placed);
    Ok(AcpiBlob { rsdp_addr, regions })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{numa_platform, platform};
    use crate::{
        AddrRange, NumaDesc, NumaNode, PciAddress, PciFunctionDesc, PciHotplugDesc, PciSegmentDesc,
        PlatformDesc,
    };

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
        for desc in [platform(4), numa_platform(4)] {
            every_table_is_valid(&desc);
        }
    }

    fn every_table_is_valid(desc: &PlatformDesc) {
        let blob = build_tables(desc, 0xe0000, 0x100000).unwrap();
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
        assert_eq!(rsdp.len(), 36);
        assert_eq!(u32_at(rsdp, 20), 36, "RSDP length");
        assert_eq!(u32_at(rsdp, 16), 0, "no RSDT");
        assert_eq!(&rsdp[9..15], b"GHVMM ");
        let (xsdt_addr, xsdt) = table(&blob, b"XSDT");
        assert_eq!(u64_at(rsdp, 24), xsdt_addr);
        let entries: Vec<u64> = (36..xsdt.len())
            .step_by(8)
            .map(|o| u64_at(xsdt, o))
            .collect();
        assert_eq!(entries.len(), 3, "FADT, MADT, MCFG");
        for sig in [&b"FACP"[..], b"APIC", b"MCFG"] {
            assert!(entries.contains(&table(&blob, sig).0), "{sig:?}");
        }
        let (_, fadt) = table(&blob, b"FACP");
        let (dsdt_addr, _) = table(&blob, b"DSDT");
        assert_eq!(u64_at(fadt, 140), dsdt_addr, "X_DSDT");
        assert_eq!(u32_at(fadt, 40), 0, "no 32-bit DSDT pointer");
    }

    fn xsdt_entries(blob: &AcpiBlob) -> Vec<u64> {
        let (_, xsdt) = table(blob, b"XSDT");
        (36..xsdt.len())
            .step_by(8)
            .map(|o| u64_at(xsdt, o))
            .collect()
    }

    #[test]
    fn without_numa_there_is_no_srat_or_slit() {
        let blob = build_tables(&platform(4), 0xe0000, 0x100000).unwrap();
        for sig in [&b"SRAT"[..], b"SLIT"] {
            assert!(!blob.regions.iter().any(|(_, b)| b.starts_with(sig)));
        }
        assert_eq!(xsdt_entries(&blob).len(), 3);
    }

    #[test]
    fn numa_links_srat_and_slit_from_the_xsdt() {
        let blob = build_tables(&numa_platform(4), 0xe0000, 0x100000).unwrap();
        let entries = xsdt_entries(&blob);
        assert_eq!(entries.len(), 5, "FADT, MADT, MCFG, SRAT, SLIT");
        for sig in [&b"FACP"[..], b"APIC", b"MCFG", b"SRAT", b"SLIT"] {
            assert!(entries.contains(&table(&blob, sig).0), "{sig:?}");
        }
        assert_eq!(table(&blob, b"SRAT").1[8], 3, "SRAT revision");
        assert_eq!(table(&blob, b"SLIT").1[8], 1, "SLIT revision");
    }

    /// Many nodes are the VMM's choice; the SLIT grows as n², and past what the ACPI area
    /// holds that is an error, never a panic.
    #[test]
    fn many_numa_nodes_fit_or_fail_cleanly() {
        let mut p = numa_platform(4);
        let numa = p.numa.as_mut().unwrap();
        let gi = numa.nodes[2].clone();
        for d in 10..1000 {
            numa.nodes.push(NumaNode {
                proximity_domain: d,
                ..gi.clone()
            });
        }
        let n = numa.nodes.len();
        numa.distances = (0..n)
            .map(|i| (0..n).map(|j| if i == j { 10 } else { 255 }).collect())
            .collect();
        assert!(matches!(
            build_tables(&p, 0xe0000, 0x100000),
            Err(AcpiError::TooLarge { .. })
        ));
        let blob = build_tables(&p, 0x1_0000_0000, 0x1_0100_0000).unwrap();
        let (_, slit) = table(&blob, b"SLIT");
        assert_eq!(slit.len(), 44 + 1000 * 1000);
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
        assert!(build_tables(&platform(1), 0x10_0000, 0xe_0000).is_err());
        assert_eq!(
            build_tables(&platform(1), 0xe0008, 0x100000),
            Err(AcpiError::MisalignedBase(0xe0008))
        );
        p = platform(1);
        p.pci_segments[0].ecam_base = u64::MAX;
        assert!(matches!(
            build_tables(&p, 0xe0000, 0x100000),
            Err(AcpiError::BadSegment { .. })
        ));
        p = platform(1);
        p.pci_segments[0].segment = 0x1000;
        assert!(matches!(
            build_tables(&p, 0xe0000, 0x100000),
            Err(AcpiError::BadSegment { .. })
        ));
        p = platform(300);
        p.apic_ids[299] = 7;
        assert_eq!(
            build_tables(&p, 0xe0000, 0x100000),
            Err(AcpiError::DuplicateApicId(7))
        );
    }

    #[test]
    fn huge_windows_are_valid() {
        let mut p = platform(1);
        p.pci_segments[0].mmio32 = AddrRange {
            base: 0,
            len: u64::from(u32::MAX),
        };
        p.pci_segments[0].mmio64 = AddrRange {
            base: 0,
            len: u64::MAX,
        };
        p.pci_segments[0].bus_end = 255;
        let blob = build_tables(&p, 0xe0000, 0x100000).unwrap();
        let (_, m) = table(&blob, b"MCFG");
        assert_eq!(m[55], 255, "end bus");
    }

    #[test]
    fn the_most_cpus_still_fit() {
        let mut p = platform(4096);
        p.apic_ids = (0..4096).map(|i| i * 1000).collect();
        let blob = build_tables(&p, 0xe0000, 0x100000).unwrap();
        let end = blob
            .regions
            .iter()
            .map(|(a, b)| a + b.len() as u64)
            .max()
            .unwrap();
        assert!(end <= 0x100000);
    }

    /// A cheap fuzzer: arbitrary descriptions give tables or an error, never a panic, and
    /// whatever they give stays inside [base, limit).
    #[test]
    fn arbitrary_descriptions_never_panic() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let iterations = std::env::var("ACPI_FUZZ_ITERATIONS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3000);
        for _ in 0..iterations {
            let mut p = platform((rng.next() % 40) as u32);
            for id in p.apic_ids.iter_mut() {
                if rng.next() % 4 == 0 {
                    *id = rng.value() as u32;
                }
            }
            for _ in 0..rng.next() % 4 {
                p.pci_segments.push(PciSegmentDesc {
                    segment: rng.next() as u16 % 0x20,
                    bus_start: rng.next() as u8,
                    bus_end: rng.next() as u8,
                    ecam_base: rng.value(),
                    mmio32: AddrRange {
                        base: rng.value(),
                        len: rng.value(),
                    },
                    mmio64: AddrRange {
                        base: rng.value(),
                        len: rng.value(),
                    },
                    io: rng.next() % 2 == 0,
                    proximity_domain: (rng.next() % 2 == 0).then(|| rng.next() as u32 % 6),
                    functions: (0..rng.next() % 3).map(|_| rng.function()).collect(),
                    hotplug_slots: if rng.next() % 2 == 0 {
                        rng.value() as u32
                    } else {
                        0
                    },
                });
            }
            if rng.next() % 2 == 0 {
                p.pci_hotplug = Some(PciHotplugDesc {
                    mmio_base: rng.value(),
                });
            }
            if rng.next() % 2 == 0 {
                p.numa = Some(rng.numa(&p.apic_ids));
            }
            let (base, limit) = if rng.next() % 8 == 0 {
                (rng.value() & !15, rng.value())
            } else {
                (0xe0000, 0x100000)
            };
            if let Ok(blob) = build_tables(&p, base, limit) {
                assert_eq!(blob.rsdp_addr, base);
                let has_srat = blob.regions.iter().any(|(_, b)| b.starts_with(b"SRAT"));
                assert_eq!(has_srat, p.numa.is_some());
                for (a, b) in &blob.regions {
                    assert!(*a >= base && a + b.len() as u64 <= limit);
                }
            }
        }
    }

    /// Small mutations of a valid NUMA platform: most stay valid or fail one check, so the
    /// SRAT/SLIT builders see many inputs (random descriptions rarely get past validation).
    /// Whatever builds must say exactly what was described.
    #[test]
    fn mutated_numa_descriptions_never_panic() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let iterations = std::env::var("ACPI_FUZZ_ITERATIONS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3000);
        let mut built = 0;
        for _ in 0..iterations {
            let mut p = numa_platform(2 + (rng.next() % 300) as u32);
            for _ in 0..rng.next() % 4 {
                rng.mutate(&mut p);
            }
            let Ok(blob) = build_tables(&p, 0xe0000, 0x100000) else {
                continue;
            };
            built += 1;
            let numa = p.numa.as_ref().unwrap();
            let n = numa.nodes.len();
            let (_, slit) = table(&blob, b"SLIT");
            assert_eq!(u64_at(slit, 36), n as u64);
            assert_eq!(slit[44..], numa.distances.concat()[..]);
            let (_, srat) = table(&blob, b"SRAT");
            let mut o = 48;
            let mut counts = [0usize; 6];
            while o < srat.len() {
                counts[usize::from(srat[o])] += 1;
                o += usize::from(srat[o + 1]);
            }
            assert_eq!(o, srat.len());
            let sum = |f: fn(&NumaNode) -> usize| numa.nodes.iter().map(f).sum::<usize>();
            assert_eq!(counts[0] + counts[2], sum(|n| n.apic_ids.len()));
            assert_eq!(counts[1], sum(|n| n.memory.len()));
            assert_eq!(
                counts[5],
                sum(|n| usize::from(n.generic_initiator.is_some()))
            );
        }
        assert!(
            built * 10 > iterations,
            "only {built} of {iterations} built"
        );
    }

    /// Mutations of the hot plug platform: tables or an error, never a panic, and every slot
    /// that builds has exactly one `_EJ0`.
    #[test]
    fn mutated_hotplug_descriptions_never_panic() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let mut built = 0;
        for _ in 0..1000 {
            let mut p = crate::testutil::hotplug_platform(4);
            for _ in 0..rng.next() % 4 {
                let seg = (rng.next() % 3) as usize;
                match rng.next() % 5 {
                    0 => {
                        let base = rng.value() & !15;
                        if let Some(h) = &mut p.pci_hotplug {
                            h.mmio_base = base;
                        }
                    }
                    1 => p.pci_segments[seg].hotplug_slots = rng.next() as u32,
                    2 => {
                        let f = rng.function();
                        p.pci_segments[seg].functions.push(f);
                    }
                    3 => p.pci_hotplug = None,
                    _ => p.pci_segments[seg].segment = rng.next() as u16 % 0x1010,
                }
            }
            let Ok(blob) = build_tables(&p, 0xe0000, 0x100000) else {
                continue;
            };
            built += 1;
            let (_, dsdt) = table(&blob, b"DSDT");
            let ej0 = dsdt.windows(4).filter(|w| *w == b"_EJ0").count();
            let slots: u32 = p
                .pci_segments
                .iter()
                .map(|s| s.hotplug_slots.count_ones())
                .sum();
            assert_eq!(ej0, slots as usize);
        }
        assert!(built > 300, "only {built} built");
    }

    /// The largest GH guest with hot plug (255 vCPUs, 16 segments of 32 slots, 121 NUMA
    /// nodes) still fits the 64 KiB the VMM gives the tables (0xE0000-0xEFFFF).
    #[test]
    fn the_largest_hotplug_guest_fits_the_acpi_area() {
        let p = crate::testutil::hotplug_platform_with(255, 16);
        let blob = build_tables(&p, 0xe0000, 0xf0000).unwrap();
        let (_, dsdt) = table(&blob, b"DSDT");
        assert!(dsdt.len() < 40 << 10, "DSDT {} bytes", dsdt.len());
    }

    /// xorshift64: deterministic, so a failure reproduces.
    struct Rng(u64);

    impl Rng {
        /// Mostly plausible (so some descriptions get through validation), sometimes not.
        fn function(&mut self) -> PciFunctionDesc {
            const NAMES: [&str; 6] = ["GPU0", "GPU1", "NIC_", "gpu0", "_ADR", "GPU00"];
            const KEYS: [&str; 4] = ["nvidia,gpu-mem-pxm-start", "a", "", "k\0y"];
            PciFunctionDesc {
                device: self.next() as u8 % 40,
                function: self.next() as u8 % 10,
                name: NAMES[(self.next() % 6) as usize].into(),
                dsd: (0..self.next() % 3)
                    .map(|_| (KEYS[(self.next() % 4) as usize].into(), self.value()))
                    .collect(),
            }
        }

        fn numa(&mut self, cpus: &[u32]) -> NumaDesc {
            let n = (self.next() % 6) as usize;
            let mut nodes = Vec::new();
            for i in 0..n {
                let proximity_domain = if self.next() % 8 == 0 {
                    self.next() as u32 % 8
                } else {
                    i as u32
                };
                let mut apic_ids: Vec<u32> = Vec::new();
                for &id in cpus {
                    if self.next() % n as u64 == 0 {
                        apic_ids.push(id);
                    }
                }
                if self.next() % 16 == 0 {
                    apic_ids.push(self.value() as u32);
                }
                let mut memory = Vec::new();
                for _ in 0..self.next() % 3 {
                    memory.push(AddrRange {
                        base: self.value(),
                        len: self.value(),
                    });
                }
                let generic_initiator = (self.next() % 3 == 0).then(|| PciAddress {
                    segment: self.next() as u16 % 0x20,
                    bus: self.next() as u8 % 4,
                    device: self.next() as u8 % 40,
                    function: self.next() as u8 % 10,
                });
                nodes.push(NumaNode {
                    proximity_domain,
                    apic_ids,
                    memory,
                    generic_initiator,
                });
            }
            let rows = if self.next() % 8 == 0 { n + 1 } else { n };
            let mut distances = Vec::new();
            for i in 0..rows {
                let mut row = Vec::new();
                for j in 0..n {
                    row.push(match self.next() % 16 {
                        0 => self.next() as u8,
                        _ if i == j => 10,
                        _ => 11 + self.next() as u8 % 100,
                    });
                }
                distances.push(row);
            }
            NumaDesc { nodes, distances }
        }

        /// One random change to a NUMA platform's description.
        fn mutate(&mut self, p: &mut PlatformDesc) {
            let numa = p.numa.as_mut().unwrap();
            let n = numa.nodes.len();
            let i = (self.next() as usize) % n.max(1);
            let j = (self.next() as usize) % n.max(1);
            let byte = self.next() as u8;
            match self.next() % 12 {
                0 if n > 0 => numa.nodes[i].proximity_domain = byte.into(),
                1 if n > 0 => numa.nodes[i].apic_ids.push(u32::from(byte)),
                2 if n > 0 => numa.nodes[i].apic_ids.clear(),
                3 if n > 0 => numa.nodes[i].memory.push(AddrRange {
                    base: self.value(),
                    len: self.value(),
                }),
                4 if n > 0 => numa.nodes[i].memory.clear(),
                5 if n > 0 => {
                    let pci = numa.nodes[i].generic_initiator.get_or_insert(PciAddress {
                        segment: 0,
                        bus: 0,
                        device: 0,
                        function: 0,
                    });
                    match self.next() % 4 {
                        0 => pci.segment = u16::from(byte % 4),
                        1 => pci.bus = byte % 2,
                        2 => pci.device = byte % 40,
                        _ => pci.function = byte % 10,
                    }
                }
                6 if n > 0 => numa.distances[i][j] = byte,
                7 => match self.next() % 3 {
                    0 => drop(numa.distances.pop()),
                    1 => {
                        numa.distances.get_mut(i).and_then(|r| r.pop());
                    }
                    _ => numa.distances.push(vec![10; n]),
                },
                8 => {
                    // A node more, at the end, with a consistent distance row and column.
                    let mut node = numa.nodes[n.saturating_sub(1)].clone();
                    node.proximity_domain = n as u32;
                    node.apic_ids.clear();
                    numa.nodes.push(node);
                    for row in numa.distances.iter_mut() {
                        row.push(40);
                    }
                    let mut row = vec![40; n + 1];
                    row[n] = 10;
                    numa.distances.push(row);
                }
                9 => {
                    let seg = &mut p.pci_segments[(self.next() % 2) as usize];
                    seg.proximity_domain = (self.next() % 2 == 0).then_some(u32::from(byte % 12));
                }
                10 => {
                    let f = self.function();
                    p.pci_segments[(self.next() % 2) as usize].functions.push(f);
                }
                _ => {
                    let fs = &mut p.pci_segments[1].functions;
                    if let Some(f) = fs.first_mut() {
                        f.dsd.push(("a".repeat(byte.into()), self.value()));
                    }
                }
            }
        }

        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        /// Boundaries are where arithmetic breaks; plain random values rarely land on them.
        fn value(&mut self) -> u64 {
            const EDGES: [u64; 8] = [
                0,
                1,
                (1 << 32) - 1,
                1 << 32,
                (1 << 32) + 1,
                u64::MAX - (1 << 20),
                u64::MAX - 1,
                u64::MAX,
            ];
            let n = self.next();
            match self.next() % 4 {
                0 => EDGES[(n % 8) as usize],
                1 => n % (1 << 33),
                _ => n,
            }
        }
    }
}
