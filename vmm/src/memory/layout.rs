//! The guest physical address map (docs/platform.md is the prose version of this file).

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;
pub const PAGE_SIZE: u64 = 4096;

// Boot structures in low RAM, where the 64-bit boot protocol expects identity-mapped memory.
pub const GDT_ADDR: u64 = 0x500;
pub const IDT_ADDR: u64 = 0x520;
/// PVH boot: hvm_start_info, its module list and memory map (below the zero page).
pub const PVH_INFO_ADDR: u64 = 0x6000;
pub const PVH_MODLIST_ADDR: u64 = 0x6040;
pub const PVH_MEMMAP_ADDR: u64 = 0x6080;
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
pub const BOOT_STACK: u64 = 0x8ff0;
pub const PML4_ADDR: u64 = 0x9000;
pub const PDPTE_ADDR: u64 = 0xa000;
pub const PDE_ADDR: u64 = 0xb000;
pub const CMDLINE_ADDR: u64 = 0x20000;
pub const CMDLINE_MAX: usize = 4096;
/// Where the kernel is loaded (the bzImage's protected-mode code; also HIMEM_START).
pub const KERNEL_ADDR: u64 = 0x10_0000;

/// The legacy hole: EBDA and BIOS area, reserved in e820 (the ACPI tables live in it).
pub const EBDA_START: u64 = 0x9_fc00;
pub const HIGH_RAM_START: u64 = 0x10_0000;
pub const ACPI_START: u64 = 0xe_0000;
pub const ACPI_LIMIT: u64 = 0xf_0000;
/// The x86 reset vector (F000:FFF0). ghvmm has no BIOS; a few bytes of real-mode code here
/// turn "jump to the reset vector" into a write of the ACPI reset register.
pub const RESET_VECTOR: u64 = 0xf_fff0;

/// Low RAM ends here at the latest; above it lies the 32-bit device hole.
pub const MEM_32BIT_HOLE: u64 = 3 * GIB;
pub const MMIO32_START: u64 = 0xc000_0000;
pub const MMIO32_SIZE: u64 = 512 * MIB;
pub const ECAM_START: u64 = 0xe000_0000;
pub const ECAM_SEGMENT_SIZE: u64 = MIB;
pub const ECAM_SIZE: u64 = 256 * MIB;
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
pub const GED_ADDR: u64 = 0xfed0_0000;
pub const GED_SIZE: u64 = 0x1000;
/// The PCI hot plug controller's registers (devices::pci_hotplug).
pub const PCI_HOTPLUG_ADDR: u64 = 0xfed0_1000;
pub const LAPIC_ADDR: u64 = 0xfee0_0000;
/// KVM needs three pages for the (Intel) real-mode TSS and one for the identity map; they sit
/// in the unused top of the 32-bit hole.
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
pub const RAM_64BIT_START: u64 = 4 * GIB;

// Port I/O.
pub const I8042_PORT: u16 = 0x60;
pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_IRQ: u32 = 4;
pub const ACPI_PM_PORT: u16 = 0x600;
pub const ACPI_RESET_VALUE: u8 = 0x01;
pub const PCI_CONFIG_IO_PORT: u16 = 0xcf8;
pub const GED_IRQ: u32 = 5;
pub const IOAPIC_PINS: u32 = 24;

/// Default size of the 64-bit PCI window: room for two naturally aligned 128 GiB BARs.
pub const DEFAULT_MMIO64_SIZE: u64 = 256 * GIB;
/// The 64-bit window starts on this boundary so that BARs of up to this size fit naturally
/// aligned at its start (the window itself may be larger).
pub const MMIO64_ALIGN: u64 = 128 * GIB;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error(
        "the 64-bit PCI window ({size:#x} bytes at {start:#x}) does not fit in the guest's \
         {phys_bits}-bit physical address space; use less memory or a smaller \
         --platform mmio64_size"
    )]
    Mmio64TooLarge {
        start: u64,
        size: u64,
        phys_bits: u8,
    },
    #[error(
        "{0} extra PCI segments requested; at most {MAX_EXTRA_SEGMENTS} fit the 32-bit window"
    )]
    TooManySegments(u16),
    #[error("the 64-bit BAR space per extra segment must be a power of two, not {0:#x}")]
    SegmentWindow(u64),
    #[error(
        "{count} extra PCI segments of {size:#x} bytes of BAR space each do not fit in the \
         guest's {phys_bits}-bit physical address space; lower the BAR space per slot"
    )]
    SegmentsTooLarge {
        count: u16,
        size: u64,
        phys_bits: u8,
    },
}

/// One contiguous range of guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamRange {
    pub start: u64,
    pub size: u64,
}

impl RamRange {
    pub fn end(&self) -> u64 {
        self.start + self.size
    }
}

/// The largest KVM memory slot ghvmm makes: KVM takes at most 2^31 - 1 pages per slot, and a
/// power of two keeps the pieces aligned.
pub const MAX_SLOT_BYTES: u64 = 1 << 42;

/// One mapping of guest RAM: a piece of one zone at one guest address, at most
/// `MAX_SLOT_BYTES` long (one KVM slot each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamPiece {
    pub start: u64,
    pub size: u64,
    /// Index of the zone (`MemoryConfig::layout_zones`) it belongs to.
    pub zone: usize,
    /// Where in its zone (its memfd, when it has one) the piece starts.
    pub zone_offset: u64,
}

/// Fills `ram` (in address order) with the zones of `zone_sizes`, one after the other: a zone
/// may straddle the 32-bit hole, so it may take several pieces. The sizes must add up to the
/// RAM's (`Layout::with_segments` made it from their sum).
pub fn ram_pieces(ram: &[RamRange], zone_sizes: &[u64]) -> Vec<RamPiece> {
    let mut pieces = Vec::new();
    let mut zones = zone_sizes.iter().copied().enumerate();
    let mut current = zones.next();
    let mut zone_offset = 0u64;
    for r in ram {
        let mut at = r.start;
        while at < r.end() {
            let Some((zone, size)) = current else {
                return pieces;
            };
            let take = (size - zone_offset).min(r.end() - at).min(MAX_SLOT_BYTES);
            if take > 0 {
                pieces.push(RamPiece {
                    start: at,
                    size: take,
                    zone,
                    zone_offset,
                });
            }
            at += take;
            zone_offset += take;
            if zone_offset == size {
                current = zones.next();
                zone_offset = 0;
            }
        }
    }
    pieces
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum E820Kind {
    Ram = 1,
    Reserved = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: E820Kind,
}

/// A guest-physical address range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioWindow {
    pub start: u64,
    pub size: u64,
}

/// One PCI segment (one bus, bus 0): where its configuration space and BAR windows are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentLayout {
    pub id: u16,
    pub ecam: u64,
    pub mmio32: MmioWindow,
    pub mmio64: MmioWindow,
}

/// The PCI segments beyond segment 0: one per GH slot (`--gh slots=S,bar_space=SIZE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExtraSegments {
    pub count: u16,
    /// 64-bit BAR space per extra segment (a power of two: its BARs are naturally aligned).
    pub mmio64_size: u64,
}

/// At most this many extra segments: each takes a slice of the 32-bit window.
pub const MAX_EXTRA_SEGMENTS: u16 = 16;
/// The 32-bit window of an extra segment: room for a GPU's 16 MiB register BAR.
pub const EXTRA_SEGMENT_MMIO32: u64 = 16 * MIB;

/// Where everything goes for one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub ram: Vec<RamRange>,
    pub mmio64_start: u64,
    pub mmio64_size: u64,
    /// Segment 0 first, then the extra segments in order.
    pub segments: Vec<SegmentLayout>,
}

impl Layout {
    /// Splits `mem_size` bytes of RAM around the 32-bit hole and places the 64-bit window above
    /// RAM, refusing a layout that the guest CPU could not address.
    pub fn new(
        mem_size: u64,
        mmio64_size: Option<u64>,
        phys_bits: u8,
    ) -> Result<Self, LayoutError> {
        Self::with_segments(mem_size, mmio64_size, ExtraSegments::default(), phys_bits)
    }

    /// The same with extra PCI segments: each gets 1 MiB of ECAM after segment 0's, a 16 MiB
    /// slice of the upper half of the 32-bit window (segment 0 keeps the lower half), and
    /// its own naturally aligned 64-bit window after segment 0's.
    pub fn with_segments(
        mem_size: u64,
        mmio64_size: Option<u64>,
        extra: ExtraSegments,
        phys_bits: u8,
    ) -> Result<Self, LayoutError> {
        let mut layout = Self::base(mem_size, mmio64_size, phys_bits)?;
        if extra.count == 0 {
            return Ok(layout);
        }
        if extra.count > MAX_EXTRA_SEGMENTS {
            return Err(LayoutError::TooManySegments(extra.count));
        }
        if !extra.mmio64_size.is_power_of_two() {
            return Err(LayoutError::SegmentWindow(extra.mmio64_size));
        }
        let half = MMIO32_SIZE / 2;
        layout.segments[0].mmio32.size = half;
        let limit = 1u64.checked_shl(u32::from(phys_bits)).unwrap_or(u64::MAX);
        let mut next = layout.mmio64_start + layout.mmio64_size;
        for k in 0..extra.count {
            let start = next
                .checked_next_multiple_of(extra.mmio64_size)
                .ok_or(LayoutError::SegmentWindow(extra.mmio64_size))?;
            let end = start
                .checked_add(extra.mmio64_size)
                .filter(|e| *e <= limit)
                .ok_or(LayoutError::SegmentsTooLarge {
                    count: extra.count,
                    size: extra.mmio64_size,
                    phys_bits,
                })?;
            let id = k + 1;
            layout.segments.push(SegmentLayout {
                id,
                ecam: ECAM_START + u64::from(id) * ECAM_SEGMENT_SIZE,
                mmio32: MmioWindow {
                    start: MMIO32_START + half + u64::from(k) * EXTRA_SEGMENT_MMIO32,
                    size: EXTRA_SEGMENT_MMIO32,
                },
                mmio64: MmioWindow {
                    start,
                    size: extra.mmio64_size,
                },
            });
            next = end;
        }
        Ok(layout)
    }

    fn base(mem_size: u64, mmio64_size: Option<u64>, phys_bits: u8) -> Result<Self, LayoutError> {
        let low = mem_size.min(MEM_32BIT_HOLE);
        let mut ram = vec![RamRange {
            start: 0,
            size: low,
        }];
        if mem_size > low {
            ram.push(RamRange {
                start: RAM_64BIT_START,
                size: mem_size - low,
            });
        }
        let ram_end = ram.last().map_or(0, |r| r.end());
        let mmio64_size = mmio64_size.unwrap_or(DEFAULT_MMIO64_SIZE);
        let start = align_up(ram_end.max(RAM_64BIT_START), MMIO64_ALIGN.min(mmio64_size));
        let limit = 1u64.checked_shl(u32::from(phys_bits)).unwrap_or(u64::MAX);
        match start.checked_add(mmio64_size) {
            Some(end) if end <= limit => Ok(Layout {
                ram,
                mmio64_start: start,
                mmio64_size,
                segments: vec![SegmentLayout {
                    id: 0,
                    ecam: ECAM_START,
                    mmio32: MmioWindow {
                        start: MMIO32_START,
                        size: MMIO32_SIZE,
                    },
                    mmio64: MmioWindow {
                        start,
                        size: mmio64_size,
                    },
                }],
            }),
            _ => Err(LayoutError::Mmio64TooLarge {
                start,
                size: mmio64_size,
                phys_bits,
            }),
        }
    }

    pub fn low_ram_end(&self) -> u64 {
        self.ram[0].end()
    }

    /// The e820 map the guest receives: RAM, the legacy hole and ECAM as reserved.
    pub fn e820(&self) -> Vec<E820Entry> {
        let mut map = vec![
            E820Entry {
                addr: 0,
                size: EBDA_START,
                kind: E820Kind::Ram,
            },
            E820Entry {
                addr: EBDA_START,
                size: HIGH_RAM_START - EBDA_START,
                kind: E820Kind::Reserved,
            },
        ];
        if self.low_ram_end() > HIGH_RAM_START {
            map.push(E820Entry {
                addr: HIGH_RAM_START,
                size: self.low_ram_end() - HIGH_RAM_START,
                kind: E820Kind::Ram,
            });
        }
        map.push(E820Entry {
            addr: ECAM_START,
            size: ECAM_SIZE,
            kind: E820Kind::Reserved,
        });
        for r in &self.ram[1..] {
            map.push(E820Entry {
                addr: r.start,
                size: r.size,
                kind: E820Kind::Ram,
            });
        }
        map
    }
}

pub fn align_up(v: u64, align: u64) -> u64 {
    debug_assert!(align.is_power_of_two());
    (v + (align - 1)) & !(align - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones_fill_ram_in_order_across_the_hole() {
        let layout = Layout::new(4 * GIB, None, 46).unwrap();
        // 2 GiB, then 1.5 GiB across the hole at 3 GiB, then 512 MiB above 4 GiB.
        let p = ram_pieces(&layout.ram, &[2 * GIB, 3 * GIB / 2, GIB / 2]);
        let short: Vec<(u64, u64, usize, u64)> = p
            .iter()
            .map(|p| (p.start, p.size, p.zone, p.zone_offset))
            .collect();
        assert_eq!(
            short,
            [
                (0, 2 * GIB, 0, 0),
                (2 * GIB, GIB, 1, 0),
                (RAM_64BIT_START, GIB / 2, 1, GIB),
                (RAM_64BIT_START + GIB / 2, GIB / 2, 2, 0),
            ]
        );
        // Pieces tile the RAM exactly.
        let total: u64 = p.iter().map(|p| p.size).sum();
        assert_eq!(total, layout.ram.iter().map(|r| r.size).sum::<u64>());
    }

    #[test]
    fn a_huge_zone_is_cut_into_slot_sized_pieces() {
        let size = 3 * MAX_SLOT_BYTES + 3 * GIB;
        let layout = Layout::new(size, None, 52).unwrap();
        let p = ram_pieces(&layout.ram, &[size]);
        assert!(p.iter().all(|p| p.size <= MAX_SLOT_BYTES && p.zone == 0));
        assert_eq!(p.len(), 4, "{p:x?}");
        assert_eq!(p.iter().map(|p| p.size).sum::<u64>(), size);
        // Offsets in the zone run on without gaps.
        for w in p.windows(2) {
            assert_eq!(w[1].zone_offset, w[0].zone_offset + w[0].size);
        }
    }

    #[test]
    fn small_vm_has_one_ram_range_and_a_window_at_128g() {
        let l = Layout::new(512 * MIB, None, 40).unwrap();
        assert_eq!(
            l.ram,
            vec![RamRange {
                start: 0,
                size: 512 * MIB
            }]
        );
        assert_eq!(l.mmio64_start, 128 * GIB);
        assert_eq!(l.mmio64_size, 256 * GIB);
    }

    #[test]
    fn large_vm_is_split_around_the_hole() {
        let l = Layout::new(8 * GIB, None, 40).unwrap();
        assert_eq!(
            l.ram[0],
            RamRange {
                start: 0,
                size: 3 * GIB
            }
        );
        assert_eq!(
            l.ram[1],
            RamRange {
                start: 4 * GIB,
                size: 5 * GIB
            }
        );
        assert_eq!(l.mmio64_start, 128 * GIB);
        let ram: u64 = l
            .e820()
            .iter()
            .filter(|e| e.kind == E820Kind::Ram)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, 8 * GIB - (HIGH_RAM_START - EBDA_START));
    }

    #[test]
    fn window_fits_two_aligned_128g_bars() {
        for mem in [64 * MIB, 3 * GIB, 100 * GIB, 200 * GIB] {
            let l = Layout::new(mem, None, 40).unwrap();
            assert_eq!(l.mmio64_start % (128 * GIB), 0);
            assert!(l.mmio64_size >= 2 * 128 * GIB);
            assert!(l.mmio64_start >= l.ram.last().unwrap().end());
        }
    }

    #[test]
    fn refuses_what_the_cpu_cannot_address() {
        assert!(Layout::new(512 * MIB, None, 36).is_err());
        assert!(Layout::new(512 * MIB, Some(1 << 40), 40).is_err());
        assert!(Layout::new(512 * MIB, Some(1 << 48), 48).is_err());
        assert!(Layout::new(512 * MIB, Some(4 * GIB), 36).is_ok());
    }

    #[test]
    fn extra_segments_get_their_own_windows() {
        let extra = ExtraSegments {
            count: 2,
            mmio64_size: 256 * GIB,
        };
        let l = Layout::with_segments(512 * MIB, None, extra, 40).unwrap();
        assert_eq!(l.segments.len(), 3);
        let s0 = l.segments[0];
        assert_eq!((s0.mmio32.start, s0.mmio32.size), (MMIO32_START, 256 * MIB));
        assert_eq!(s0.mmio64.start, 128 * GIB);
        let s1 = l.segments[1];
        assert_eq!(s1.id, 1);
        assert_eq!(s1.ecam, ECAM_START + MIB);
        assert_eq!(s1.mmio32.start, MMIO32_START + 256 * MIB);
        assert_eq!(
            s1.mmio64.start,
            512 * GIB,
            "naturally aligned after segment 0's window"
        );
        let s2 = l.segments[2];
        assert_eq!(s2.mmio32.start, s1.mmio32.start + 16 * MIB);
        assert_eq!(
            s2.mmio64.start + s2.mmio64.size,
            1 << 40,
            "ends exactly at 1 TiB"
        );
        // Windows never overlap, and no ECAM overlaps another.
        for (i, a) in l.segments.iter().enumerate() {
            for b in &l.segments[i + 1..] {
                assert!(a.mmio64.start + a.mmio64.size <= b.mmio64.start);
                assert!(a.mmio32.start + a.mmio32.size <= b.mmio32.start);
                assert!(a.ecam + ECAM_SEGMENT_SIZE <= b.ecam);
            }
        }
        assert!(l
            .segments
            .iter()
            .all(|s| s.ecam + ECAM_SEGMENT_SIZE <= ECAM_START + ECAM_SIZE));
        assert_eq!(Layout::new(512 * MIB, None, 40).unwrap().segments.len(), 1);
    }

    #[test]
    fn extra_segments_refuse_what_does_not_fit() {
        let seg = |count, size| ExtraSegments {
            count,
            mmio64_size: size,
        };
        assert!(matches!(
            Layout::with_segments(512 * MIB, None, seg(3, 256 * GIB), 40),
            Err(LayoutError::SegmentsTooLarge { .. })
        ));
        assert!(Layout::with_segments(512 * MIB, None, seg(3, 256 * GIB), 46).is_ok());
        assert!(matches!(
            Layout::with_segments(512 * MIB, None, seg(17, GIB), 46),
            Err(LayoutError::TooManySegments(17))
        ));
        assert!(matches!(
            Layout::with_segments(512 * MIB, None, seg(1, 3 * GIB), 46),
            Err(LayoutError::SegmentWindow(_))
        ));
        assert!(Layout::with_segments(512 * MIB, None, seg(16, GIB), 40).is_ok());
    }

    #[test]
    fn e820_is_sorted_and_disjoint() {
        for mem in [32 * MIB, 3 * GIB, 5 * GIB] {
            let map = Layout::new(mem, None, 40).unwrap().e820();
            for w in map.windows(2) {
                assert!(w[0].addr + w[0].size <= w[1].addr, "{map:?}");
            }
        }
    }
}
