//! Which BARs a passed-through function has and how each is laid out: its BAR registers say
//! the type (I/O or memory, 32- or 64-bit, prefetchable), VFIO's region info says the size,
//! whether it may be mmapped and where (sparse areas), and the MSI-X table and PBA must stay
//! trapped. The result is what the VMM places in its windows, maps and installs.
//!
//! Everything read here comes from the device or the host kernel and is checked: a register
//! or region the rules cannot make sense of refuses the device (`ProbeError`) or leaves that
//! BAR out, never more.

use super::config::bar_spec;
use super::interrupts::BarRange;
use super::layout::{bar_layout, BarLayout, LayoutError, Limits, RegionDesc, SparseArea};
use crate::config::{
    bar_offset, BarSpec, BAR_IO_SPACE, BAR_MEM_TYPE_64, BAR_MEM_TYPE_MASK, BAR_PREFETCHABLE,
    NUM_BARS, REG_BYTES,
};

/// What VFIO says about the region behind one BAR.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RegionInfo {
    pub size: u64,
    /// VFIO_REGION_INFO_FLAG_MMAP.
    pub mmap: bool,
    /// VFIO_REGION_INFO_CAP_SPARSE_MMAP areas, if the capability is present.
    pub sparse: Option<Vec<SparseArea>>,
}

/// The function as the probe sees it: a VFIO device in the VMM, a fake one in tests and the
/// fuzzer.
pub trait FunctionInfo {
    /// Reads the function's own configuration space (VFIO's config region) at byte `offset`.
    fn read_config(&self, offset: u64, data: &mut [u8]) -> std::io::Result<()>;

    /// The region behind BAR `bar` (0-5); `None`, like a size of 0, when there is none.
    fn bar_region(&self, bar: usize) -> Option<RegionInfo>;
}

/// A memory BAR ghvmm offers the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbedBar {
    /// BAR number (0-5); a 64-bit BAR also takes the next one, its upper half.
    pub index: usize,
    /// What the layout was made from: the region info, the BAR's width and the ranges that
    /// stay trapped.
    pub region: RegionDesc,
    pub prefetchable: bool,
    pub layout: BarLayout,
}

impl ProbedBar {
    pub fn is_64bit(&self) -> bool {
        self.region.is_64bit
    }

    /// The BAR as the guest's config space emulates it.
    pub fn spec(&self) -> BarSpec {
        bar_spec(
            self.layout.bar_size,
            self.region.is_64bit,
            self.prefetchable,
        )
    }
}

/// The function's BARs, in BAR order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Probe {
    pub bars: Vec<ProbedBar>,
    /// I/O BARs that have a region: ghvmm offers no I/O space, so these stay hidden (the VMM
    /// says so, as a driver may need them).
    pub hidden_io: Vec<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("BAR {bar}: cannot read its register: {error}")]
    ConfigRead { bar: usize, error: std::io::Error },
    #[error("BAR {0}: a 64-bit BAR needs two registers (BAR 5 cannot be 64-bit)")]
    NoUpperHalf(usize),
    #[error(transparent)]
    Layout(#[from] LayoutError),
}

/// Why the MSI-X table or PBA cannot be emulated where the capability puts it. ghvmm then
/// hides the MSI-X capability from the guest (its driver falls back to MSI): listed but not
/// emulated, the guest's table writes would go nowhere and its interrupts never come.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MsixPlacementError {
    #[error("the MSI-X {what} is in BAR {bar}, which does not exist")]
    NoSuchBar { what: &'static str, bar: usize },
    #[error("the MSI-X {what} is in BAR {bar}, an I/O BAR")]
    IoBar { what: &'static str, bar: usize },
    #[error("the MSI-X {what} is in BAR {bar}, which is not implemented")]
    Unimplemented { what: &'static str, bar: usize },
    #[error(
        "the MSI-X {what} at {offset:#x}+{size:#x} lies outside BAR {bar} ({region:#x} bytes)"
    )]
    Outside {
        what: &'static str,
        bar: usize,
        offset: u64,
        size: u64,
        region: u64,
    },
    #[error("the MSI-X {what} is in BAR {bar}, whose register cannot be read")]
    Unreadable { what: &'static str, bar: usize },
}

/// Checks that the MSI-X table and PBA (`InterruptCaps::msix_ranges`: table first) each lie
/// inside a memory BAR that `probe_bars` offers: a BAR register of its own (not the upper
/// half of a 64-bit BAR, not I/O), a region behind it, and the range inside that region.
pub fn check_msix_placement(
    dev: &dyn FunctionInfo,
    ranges: &[BarRange],
) -> Result<(), MsixPlacementError> {
    for (i, r) in ranges.iter().enumerate() {
        let what = if i == 0 { "table" } else { "PBA" };
        let bar = r.bar;
        if bar >= NUM_BARS {
            return Err(MsixPlacementError::NoSuchBar { what, bar });
        }
        // Walk the registers as `probe_bars` does to tell a BAR's own register from the
        // upper half of the 64-bit BAR before it.
        let mut start = 0;
        let reg = loop {
            let mut reg = [0u8; REG_BYTES as usize];
            dev.read_config(bar_offset(start), &mut reg)
                .map_err(|_| MsixPlacementError::Unreadable { what, bar })?;
            let reg = u32::from_le_bytes(reg);
            let is_64bit = reg & BAR_IO_SPACE == 0 && reg & BAR_MEM_TYPE_MASK == BAR_MEM_TYPE_64;
            if start == bar {
                break reg;
            }
            start += if is_64bit { 2 } else { 1 };
            if start > bar {
                return Err(MsixPlacementError::Unimplemented { what, bar });
            }
        };
        if reg & BAR_IO_SPACE != 0 {
            return Err(MsixPlacementError::IoBar { what, bar });
        }
        let is_64bit = reg & BAR_MEM_TYPE_MASK == BAR_MEM_TYPE_64;
        if is_64bit && bar + 1 >= NUM_BARS {
            return Err(MsixPlacementError::Unimplemented { what, bar });
        }
        let region = dev.bar_region(bar).map_or(0, |info| info.size);
        if region == 0 {
            return Err(MsixPlacementError::Unimplemented { what, bar });
        }
        if r.offset.checked_add(r.size).is_none_or(|end| end > region) {
            return Err(MsixPlacementError::Outside {
                what,
                bar,
                offset: r.offset,
                size: r.size,
                region,
            });
        }
    }
    Ok(())
}

/// Probes every BAR of `dev` and lays out its memory BARs within `limits`; `trapped` are the
/// byte ranges (the MSI-X table and PBA) that must never be mapped. BARs without a region are
/// left out; the first BAR the rules refuse refuses the whole function, so that a device is
/// either offered as it is or not at all.
pub fn probe_bars(
    dev: &dyn FunctionInfo,
    trapped: &[BarRange],
    limits: &Limits,
) -> Result<Probe, ProbeError> {
    let mut probe = Probe::default();
    let mut bar = 0;
    while bar < NUM_BARS {
        let this = bar;
        let mut reg = [0u8; REG_BYTES as usize];
        dev.read_config(bar_offset(this), &mut reg)
            .map_err(|error| ProbeError::ConfigRead { bar: this, error })?;
        let reg = u32::from_le_bytes(reg);
        let is_io = reg & BAR_IO_SPACE != 0;
        // The reserved memory types are taken as 32-bit, the only width that cannot claim a
        // register that is not the BAR's own.
        let is_64bit = !is_io && reg & BAR_MEM_TYPE_MASK == BAR_MEM_TYPE_64;
        bar += if is_64bit { 2 } else { 1 };
        let Some(info) = dev.bar_region(this).filter(|r| r.size != 0) else {
            continue;
        };
        if is_io {
            probe.hidden_io.push(this);
            continue;
        }
        if is_64bit && this + 1 >= NUM_BARS {
            return Err(ProbeError::NoUpperHalf(this));
        }
        let region = RegionDesc {
            // `this` < NUM_BARS: the cast cannot truncate.
            index: this as u32,
            size: info.size,
            mmap: info.mmap,
            sparse: info.sparse,
            is_64bit,
            trapped: trapped
                .iter()
                .filter(|r| r.bar == this)
                .map(|r| SparseArea {
                    offset: r.offset,
                    size: r.size,
                })
                .collect(),
        };
        let Some(layout) = bar_layout(&region, limits)? else {
            continue;
        };
        probe.bars.push(ProbedBar {
            index: this,
            region,
            prefetchable: reg & BAR_PREFETCHABLE != 0,
            layout,
        });
    }
    Ok(probe)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BarKind;
    use crate::vfio::layout::PieceKind;
    use std::collections::HashMap;

    const PAGE: u64 = 4096;
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    const LIMITS: Limits = Limits {
        page_size: PAGE,
        mmio32_size: 256 * MIB,
        mmio64_size: 256 * GIB,
    };

    const MEM32: u32 = 0;
    const MEM64: u32 = BAR_MEM_TYPE_64;
    const IO: u32 = BAR_IO_SPACE;

    /// BAR registers and regions as given; reads fail from `fail_at` on.
    #[derive(Default)]
    struct Fake {
        regs: [u32; NUM_BARS],
        regions: HashMap<usize, RegionInfo>,
        fail_at: Option<u64>,
        asked: std::cell::RefCell<Vec<usize>>,
    }

    impl Fake {
        fn bar(mut self, bar: usize, reg: u32, size: u64) -> Self {
            self.regs[bar] = reg;
            self.regions.insert(
                bar,
                RegionInfo {
                    size,
                    mmap: true,
                    sparse: None,
                },
            );
            self
        }

        fn sparse(mut self, bar: usize, areas: &[(u64, u64)]) -> Self {
            self.regions.get_mut(&bar).unwrap().sparse = Some(
                areas
                    .iter()
                    .map(|&(offset, size)| SparseArea { offset, size })
                    .collect(),
            );
            self
        }
    }

    impl FunctionInfo for Fake {
        fn read_config(&self, offset: u64, data: &mut [u8]) -> std::io::Result<()> {
            if self.fail_at.is_some_and(|f| offset >= f) {
                return Err(std::io::Error::other("the device went away"));
            }
            let i = usize::try_from((offset - bar_offset(0)) / REG_BYTES).unwrap();
            data.copy_from_slice(&self.regs[i].to_le_bytes()[..data.len()]);
            Ok(())
        }

        fn bar_region(&self, bar: usize) -> Option<RegionInfo> {
            self.asked.borrow_mut().push(bar);
            self.regions.get(&bar).cloned()
        }
    }

    fn probe(f: &Fake) -> Result<Probe, ProbeError> {
        probe_bars(f, &[], &LIMITS)
    }

    fn indexes(p: &Probe) -> Vec<usize> {
        p.bars.iter().map(|b| b.index).collect()
    }

    #[test]
    fn a_gpu_like_function() {
        // BAR0 16 MiB registers, BAR1 an I/O port range, BAR2 64-bit prefetchable memory
        // whose kernel-padded region maps only its real part, BAR4 a 64-bit 32 MiB BAR.
        let f = Fake::default()
            .bar(0, MEM32, 16 * MIB)
            .bar(1, IO, 128)
            .bar(2, MEM64 | BAR_PREFETCHABLE, 128 * GIB)
            .sparse(2, &[(0, 96 * GIB - 2 * MIB)])
            .bar(4, MEM64, 32 * MIB);
        let p = probe(&f).unwrap();
        assert_eq!(indexes(&p), [0, 2, 4]);
        assert_eq!(p.hidden_io, [1]);
        let specs: Vec<BarSpec> = p.bars.iter().map(|b| b.spec()).collect();
        assert_eq!(
            specs,
            [
                bar_spec(16 * MIB, false, false),
                bar_spec(128 * GIB, true, true),
                bar_spec(32 * MIB, true, false)
            ]
        );
        assert_eq!(specs[1].kind, BarKind::Mem64);
        let gpu = &p.bars[1];
        assert_eq!(gpu.region.index, 2);
        assert_eq!(gpu.region.size, 128 * GIB);
        assert!(gpu.is_64bit() && gpu.prefetchable);
        assert_eq!(gpu.layout.pieces[1].kind, PieceKind::Forwarded);
        // The upper halves are never asked about.
        assert_eq!(*f.asked.borrow(), [0, 1, 2, 4]);
    }

    #[test]
    fn msix_in_a_bar_ghvmm_cannot_trap_is_reported() {
        let f = Fake::default()
            .bar(0, MEM64, MIB)
            .bar(2, IO, 256)
            .bar(4, MEM32, 16 * 1024);
        let at = |bar: usize, offset: u64, size: u64| {
            let table = BarRange { bar, offset, size };
            let pba = BarRange {
                bar: 0,
                offset: 0x1000,
                size: 8,
            };
            check_msix_placement(&f, &[table, pba])
        };
        assert_eq!(at(0, 0, 0x800), Ok(()));
        assert_eq!(at(4, 0x3000, 0x1000), Ok(()));
        let err = |bar, offset, size| at(bar, offset, size).unwrap_err().to_string();
        assert_eq!(
            err(1, 0, 16),
            "the MSI-X table is in BAR 1, which is not implemented"
        );
        assert_eq!(err(2, 0, 16), "the MSI-X table is in BAR 2, an I/O BAR");
        assert_eq!(
            err(3, 0, 16),
            "the MSI-X table is in BAR 3, which is not implemented"
        );
        assert_eq!(
            err(5, 0, 16),
            "the MSI-X table is in BAR 5, which is not implemented"
        );
        assert_eq!(
            err(6, 0, 16),
            "the MSI-X table is in BAR 6, which does not exist"
        );
        assert_eq!(
            err(4, 0x3ff0, 0x20),
            "the MSI-X table at 0x3ff0+0x20 lies outside BAR 4 (0x4000 bytes)"
        );
        assert!(at(4, u64::MAX, 2).is_err());
        let pba_in_io = [
            BarRange {
                bar: 0,
                offset: 0,
                size: 16,
            },
            BarRange {
                bar: 2,
                offset: 0,
                size: 8,
            },
        ];
        assert_eq!(
            check_msix_placement(&f, &pba_in_io)
                .unwrap_err()
                .to_string(),
            "the MSI-X PBA is in BAR 2, an I/O BAR"
        );
    }

    #[test]
    fn msix_ranges_stay_trapped_in_their_own_bar() {
        let f = Fake::default()
            .bar(0, MEM32, 64 * 1024)
            .bar(1, MEM32, 16 * 1024);
        let trapped = [
            BarRange {
                bar: 1,
                offset: 0x2000,
                size: 0x50,
            },
            BarRange {
                bar: 1,
                offset: 0x3000,
                size: 8,
            },
        ];
        let p = probe_bars(&f, &trapped, &LIMITS).unwrap();
        assert!(p.bars[0].region.trapped.is_empty());
        assert_eq!(
            p.bars[1].region.trapped,
            [
                SparseArea {
                    offset: 0x2000,
                    size: 0x50
                },
                SparseArea {
                    offset: 0x3000,
                    size: 8
                }
            ]
        );
        assert!(p.bars[1]
            .layout
            .pieces
            .iter()
            .any(|p| p.kind == PieceKind::Forwarded && p.offset == 0x2000));
    }

    #[test]
    fn trapped_ranges_of_bars_that_are_not_there_are_ignored() {
        // An MSI-X table claimed in the upper half of a 64-bit BAR, an I/O BAR, an absent BAR
        // and the reserved BIRs 6 and 7.
        let f = Fake::default().bar(0, MEM64, MIB).bar(2, IO, 256);
        let trapped: Vec<BarRange> = [1, 2, 3, 6, 7, usize::MAX]
            .into_iter()
            .map(|bar| BarRange {
                bar,
                offset: 0,
                size: 16,
            })
            .collect();
        let p = probe_bars(&f, &trapped, &LIMITS).unwrap();
        assert_eq!(indexes(&p), [0]);
        assert!(p.bars[0].region.trapped.is_empty());
    }

    #[test]
    fn a_64_bit_bar_in_slot_5_is_refused() {
        let f = Fake::default().bar(0, MEM32, PAGE).bar(5, MEM64, PAGE);
        let e = probe(&f).unwrap_err();
        assert!(matches!(e, ProbeError::NoUpperHalf(5)), "{e:?}");
        assert!(e.to_string().starts_with("BAR 5:"));
        // Without a region the register says nothing that matters.
        let mut f = Fake::default().bar(0, MEM32, PAGE);
        f.regs[5] = MEM64;
        assert_eq!(indexes(&probe(&f).unwrap()), [0]);
    }

    #[test]
    fn absent_and_empty_regions_are_skipped() {
        let mut f = Fake::default().bar(1, MEM32, 0).bar(3, IO, 0);
        f.regs[0] = MEM32 | BAR_PREFETCHABLE; // a register but no region
        f.regs[4] = 0xffff_ffff; // garbage, no region
        assert_eq!(probe(&f).unwrap(), Probe::default());
    }

    #[test]
    fn hostile_sizes_are_refused_by_the_layout() {
        for size in [u64::MAX, u64::MAX / 2 + 2, 512 * GIB] {
            let f = Fake::default().bar(2, MEM64, size);
            let e = probe(&f).unwrap_err();
            assert!(
                matches!(
                    e,
                    ProbeError::Layout(LayoutError::Overflow { index: 2, .. })
                        | ProbeError::Layout(LayoutError::TooLarge { index: 2, .. })
                ),
                "{size:#x}: {e:?}"
            );
            assert!(e.to_string().starts_with("region 2:"), "{e}");
        }
        // A 32-bit BAR must fit the 32-bit window, however large the region.
        let f = Fake::default().bar(0, MEM32, GIB);
        assert!(matches!(
            probe(&f),
            Err(ProbeError::Layout(LayoutError::TooLarge {
                window: "32-bit",
                ..
            }))
        ));
    }

    #[test]
    fn hostile_sparse_areas_are_refused_by_the_layout() {
        for areas in [
            &[(MIB - PAGE, 2 * PAGE)][..],
            &[(u64::MAX, 2)],
            &[(0, u64::MAX)],
            &[(0, 0x2000), (0x1000, 0x2000)],
        ] {
            let f = Fake::default().bar(2, MEM64, MIB).sparse(2, areas);
            let e = probe(&f).unwrap_err();
            assert!(
                matches!(
                    e,
                    ProbeError::Layout(LayoutError::AreaOutside { index: 2, .. })
                        | ProbeError::Layout(LayoutError::AreasOverlap { index: 2, .. })
                ),
                "{areas:?}: {e:?}"
            );
        }
        // Empty areas are no areas.
        let f = Fake::default()
            .bar(2, MEM64, MIB)
            .sparse(2, &[(0, 0), (0, 0)]);
        let p = probe(&f).unwrap();
        assert!(!p.bars[0].layout.has_mapped());
    }

    #[test]
    fn a_trapped_range_outside_its_bar_is_refused() {
        let f = Fake::default().bar(0, MEM32, PAGE);
        for (offset, size) in [(PAGE, 16), (u64::MAX - 1, 8), (0, u64::MAX)] {
            let trapped = [BarRange {
                bar: 0,
                offset,
                size,
            }];
            assert!(matches!(
                probe_bars(&f, &trapped, &LIMITS),
                Err(ProbeError::Layout(LayoutError::TrappedOutside {
                    index: 0,
                    ..
                }))
            ));
        }
    }

    #[test]
    fn reserved_memory_types_are_32_bit() {
        let f = Fake::default()
            .bar(0, 0b01 << 1, PAGE)
            .bar(1, BAR_MEM_TYPE_MASK, PAGE)
            .bar(2, MEM32, PAGE);
        let p = probe(&f).unwrap();
        assert_eq!(indexes(&p), [0, 1, 2]);
        assert!(p.bars.iter().all(|b| b.spec().kind == BarKind::Mem32));
    }

    #[test]
    fn an_io_bar_is_never_64_bit() {
        // The type bits of an I/O BAR are address bits: BAR1 is a BAR of its own.
        let f = Fake::default()
            .bar(0, IO | BAR_MEM_TYPE_64, 256)
            .bar(1, MEM32, PAGE);
        let p = probe(&f).unwrap();
        assert_eq!(p.hidden_io, [0]);
        assert_eq!(indexes(&p), [1]);
    }

    #[test]
    fn all_six_32_bit_bars() {
        let mut f = Fake::default();
        for bar in 0..NUM_BARS {
            f = f.bar(bar, MEM32, 16 << bar);
        }
        let p = probe(&f).unwrap();
        assert_eq!(indexes(&p), [0, 1, 2, 3, 4, 5]);
        assert!(p.bars.iter().all(|b| b.layout.bar_size == PAGE));
    }

    #[test]
    fn an_unreadable_register_refuses_the_function() {
        let mut f = Fake::default().bar(0, MEM32, PAGE).bar(2, MEM32, PAGE);
        f.fail_at = Some(bar_offset(2));
        let e = probe(&f).unwrap_err();
        assert!(matches!(e, ProbeError::ConfigRead { bar: 2, .. }), "{e:?}");
        assert!(e.to_string().starts_with("BAR 2: cannot read"));
    }

    #[test]
    fn a_bad_page_size_is_refused_only_when_a_bar_needs_a_layout() {
        let bad = Limits {
            page_size: 3000,
            ..LIMITS
        };
        assert_eq!(
            probe_bars(&Fake::default(), &[], &bad).unwrap(),
            Probe::default()
        );
        let f = Fake::default().bar(0, MEM32, PAGE);
        assert!(matches!(
            probe_bars(&f, &[], &bad),
            Err(ProbeError::Layout(LayoutError::PageSize(3000)))
        ));
    }

    /// Every register value against every region shape: no panic, and what comes out holds
    /// together.
    #[test]
    fn sweep_of_hostile_functions() {
        let regs = [
            0,
            IO,
            MEM64,
            MEM64 | BAR_PREFETCHABLE,
            BAR_MEM_TYPE_MASK,
            0xffff_ffff,
            0xffff_fff0,
        ];
        let sizes = [0, 1, 16, PAGE + 1, 3 * MIB, GIB, u64::MAX];
        let mut n = 0;
        for &r0 in &regs {
            for &r5 in &regs {
                for &size in &sizes {
                    let mut f = Fake::default()
                        .bar(0, r0, size)
                        .bar(1, MEM32, PAGE)
                        .bar(4, r0, size)
                        .bar(5, r5, size);
                    f.regs[2] = r5;
                    let Ok(p) = probe(&f) else {
                        continue;
                    };
                    n += 1;
                    let mut taken = [false; NUM_BARS];
                    for b in &p.bars {
                        let width = if b.is_64bit() { 2 } else { 1 };
                        assert!(b.index + width <= NUM_BARS, "{p:?}");
                        for t in &mut taken[b.index..b.index + width] {
                            assert!(!*t, "BARs overlap: {p:?}");
                            *t = true;
                        }
                        assert!(b.layout.bar_size >= b.region.size.max(PAGE));
                        assert!(!p.hidden_io.contains(&b.index));
                    }
                }
            }
        }
        assert!(n > 50, "{n}");
    }
}
