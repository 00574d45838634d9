//! The BAR layout of one VFIO region: which parts of the guest BAR are mapped straight into
//! the guest (KVM memory slots), which are forwarded to the device's region read/write, and
//! which are padding that ghvmm answers itself.
//!
//! Both BAR-padding contracts fall out of one rule (docs/contract.md):
//! - *VMM pads*: the region's size is the real length (not a power of two). The BAR is the
//!   next power of two; `[size, bar_size)` is padding (reads 0, writes discarded).
//! - *Kernel pads* (nvgrace-gpu): the size is already a power of two and a sparse-mmap
//!   capability lists only the real part. Everything outside the sparse areas is forwarded,
//!   and the kernel answers the padding (0xff).

/// A mmappable area of the region, from the sparse-mmap capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SparseArea {
    pub offset: u64,
    pub size: u64,
}

/// What VFIO says about one BAR region, plus what the device's config space says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionDesc {
    /// VFIO region index (0-5 for BARs), used in error messages.
    pub index: u32,
    pub size: u64,
    /// VFIO_REGION_INFO_FLAG_MMAP.
    pub mmap: bool,
    /// VFIO_REGION_INFO_CAP_SPARSE_MMAP areas, if the capability is present.
    pub sparse: Option<Vec<SparseArea>>,
    /// A 64-bit memory BAR (else it must fit the 32-bit window).
    pub is_64bit: bool,
    /// Byte ranges inside this region that must stay trapped (MSI-X table and PBA).
    pub trapped: Vec<SparseArea>,
}

/// Platform limits the layout must respect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub page_size: u64,
    pub mmio32_size: u64,
    pub mmio64_size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceKind {
    /// A KVM memory slot over an mmap of the device fd. `host_align` is the modulus of the
    /// host mapping's placement (`Piece::host_placement`), chosen so that the host and the
    /// guest can both use huge pages for it.
    Mapped { host_align: u64 },
    /// Trapped and sent to the device's region read/write.
    Forwarded,
    /// Past the region's end: reads 0, writes are discarded, the device never sees them.
    Padding,
}

/// `[offset, offset + size)` of the BAR, handled as `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub offset: u64,
    pub size: u64,
    pub kind: PieceKind,
}

impl Piece {
    pub fn end(&self) -> u64 {
        self.offset + self.size
    }

    /// For a mapped piece, `(align, phase)`: its host mapping must start at an address
    /// congruent to `phase` modulo `align`. The guest address of the piece is the BAR's base
    /// (aligned to the BAR's size, a power of two at least `align`, also after the guest moves
    /// it) plus `offset`, so this is "host virtual ≡ guest physical (mod align)": a huge page
    /// of the guest then sits on a huge page of the host. The device's own pages are placed
    /// the same way in the host's physical space, which lets the host kernel's huge pfnmap
    /// faults apply too.
    pub fn host_placement(&self) -> Option<(u64, u64)> {
        match self.kind {
            PieceKind::Mapped { host_align } if host_align.is_power_of_two() => {
                Some((host_align, self.offset & (host_align - 1)))
            }
            _ => None,
        }
    }
}

/// Pieces sorted by offset, contiguous, covering exactly `[0, bar_size)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BarLayout {
    pub bar_size: u64,
    pub pieces: Vec<Piece>,
}

impl BarLayout {
    /// True when a part of the BAR is mapped, so the BAR needs a page-aligned guest address
    /// (it always gets one: BARs are naturally aligned and at least a page in size).
    pub fn has_mapped(&self) -> bool {
        self.pieces
            .iter()
            .any(|p| matches!(p.kind, PieceKind::Mapped { .. }))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("region {index}: size {size:#x} cannot be rounded up to a power of two")]
    Overflow { index: u32, size: u64 },
    #[error("region {index}: a {bar_size:#x}-byte BAR does not fit the {window} window ({limit:#x} bytes)")]
    TooLarge {
        index: u32,
        bar_size: u64,
        window: &'static str,
        limit: u64,
    },
    #[error("region {index}: sparse area {offset:#x}+{size:#x} lies outside the region ({region:#x} bytes)")]
    AreaOutside {
        index: u32,
        offset: u64,
        size: u64,
        region: u64,
    },
    #[error("region {index}: sparse areas at {a:#x} and {b:#x} overlap")]
    AreasOverlap { index: u32, a: u64, b: u64 },
    #[error("region {index}: trapped range {offset:#x}+{size:#x} lies outside the region")]
    TrappedOutside { index: u32, offset: u64, size: u64 },
    #[error("page size {0:#x} is not a power of two")]
    PageSize(u64),
}

const GIB: u64 = 1 << 30;
const HUGE_2M: u64 = 2 << 20;

fn align_up(v: u64, a: u64) -> Option<u64> {
    v.checked_add(a - 1).map(|v| v & !(a - 1))
}

fn align_down(v: u64, a: u64) -> u64 {
    v & !(a - 1)
}

/// The largest of 1 GiB, 2 MiB or the page size that fits in a mapped piece of `size` bytes
/// (QEMU's rule). Not the largest power of two dividing `size`: that is one page for a length
/// such as 96 GiB - 4 KiB and would rule out huge pages on the whole piece, while the kernel
/// only needs each huge page of the mapping to be congruent, not the mapping's ends.
pub fn host_alignment(size: u64, page: u64) -> u64 {
    [GIB, HUGE_2M]
        .into_iter()
        .find(|&a| a > page && a <= size)
        .unwrap_or(page)
}

/// Subtracts `holes` (sorted, disjoint) from `[start, end)`.
fn subtract(start: u64, end: u64, holes: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut cur = start;
    for &(hs, he) in holes {
        if he <= cur || hs >= end {
            continue;
        }
        if hs > cur {
            out.push((cur, hs));
        }
        cur = cur.max(he);
    }
    if cur < end {
        out.push((cur, end));
    }
    out
}

/// The layout of one BAR region; `Ok(None)` when the region is absent (size 0).
pub fn bar_layout(r: &RegionDesc, limits: &Limits) -> Result<Option<BarLayout>, LayoutError> {
    let page = limits.page_size;
    if !page.is_power_of_two() {
        return Err(LayoutError::PageSize(page));
    }
    if r.size == 0 {
        return Ok(None);
    }
    let index = r.index;
    let bar_size = r
        .size
        .max(page)
        .checked_next_power_of_two()
        .ok_or(LayoutError::Overflow {
            index,
            size: r.size,
        })?;
    let (window, limit) = if r.is_64bit {
        ("64-bit", limits.mmio64_size)
    } else {
        ("32-bit", limits.mmio32_size)
    };
    if bar_size > limit {
        return Err(LayoutError::TooLarge {
            index,
            bar_size,
            window,
            limit,
        });
    }

    // The mmappable areas, validated whether or not they end up used.
    let mut areas: Vec<(u64, u64)> = match &r.sparse {
        Some(list) => {
            let mut v = Vec::new();
            for a in list {
                let end = a.offset.checked_add(a.size).filter(|e| *e <= r.size);
                match end {
                    Some(_) if a.size == 0 => {}
                    Some(end) => v.push((a.offset, end)),
                    None => {
                        return Err(LayoutError::AreaOutside {
                            index,
                            offset: a.offset,
                            size: a.size,
                            region: r.size,
                        })
                    }
                }
            }
            v.sort_unstable();
            if let Some(w) = v.windows(2).find(|w| w[0].1 > w[1].0) {
                return Err(LayoutError::AreasOverlap {
                    index,
                    a: w[0].0,
                    b: w[1].0,
                });
            }
            v
        }
        None => vec![(0, r.size)],
    };
    if !r.mmap {
        areas.clear();
    }

    // MSI-X table and PBA stay trapped: whole pages around them are never mapped.
    let mut holes: Vec<(u64, u64)> = Vec::new();
    for t in &r.trapped {
        let end = t
            .offset
            .checked_add(t.size)
            .filter(|e| *e <= r.size)
            .ok_or(LayoutError::TrappedOutside {
                index,
                offset: t.offset,
                size: t.size,
            })?;
        let hs = align_down(t.offset, page);
        let he = align_up(end, page).unwrap_or(u64::MAX);
        holes.push((hs, he));
    }
    holes.sort_unstable();

    // Mapped pieces: the page-aligned interior of each area, minus the holes.
    let mut mapped: Vec<(u64, u64)> = Vec::new();
    for (s, e) in areas {
        for (s, e) in subtract(s, e, &holes) {
            let Some(ms) = align_up(s, page) else {
                continue;
            };
            let me = align_down(e, page);
            if me > ms {
                mapped.push((ms, me));
            }
        }
    }
    mapped.sort_unstable();

    let mut pieces = Vec::new();
    let mut cur = 0;
    for (s, e) in mapped {
        if s > cur {
            pieces.push(Piece {
                offset: cur,
                size: s - cur,
                kind: PieceKind::Forwarded,
            });
        }
        pieces.push(Piece {
            offset: s,
            size: e - s,
            kind: PieceKind::Mapped {
                host_align: host_alignment(e - s, page),
            },
        });
        cur = e;
    }
    if cur < r.size {
        pieces.push(Piece {
            offset: cur,
            size: r.size - cur,
            kind: PieceKind::Forwarded,
        });
    }
    if r.size < bar_size {
        pieces.push(Piece {
            offset: r.size,
            size: bar_size - r.size,
            kind: PieceKind::Padding,
        });
    }
    Ok(Some(BarLayout { bar_size, pieces }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: u64 = 4096;
    const MIB: u64 = 1 << 20;
    const LIMITS: Limits = Limits {
        page_size: PAGE,
        mmio32_size: 512 * MIB,
        mmio64_size: 256 * GIB,
    };

    fn region(size: u64) -> RegionDesc {
        RegionDesc {
            index: 2,
            size,
            mmap: true,
            sparse: None,
            is_64bit: true,
            trapped: vec![],
        }
    }

    fn kinds(l: &BarLayout) -> Vec<(u64, u64, &'static str)> {
        l.pieces
            .iter()
            .map(|p| {
                let k = match p.kind {
                    PieceKind::Mapped { .. } => "map",
                    PieceKind::Forwarded => "fwd",
                    PieceKind::Padding => "pad",
                };
                (p.offset, p.size, k)
            })
            .collect()
    }

    /// The placement rule spelt out: the largest huge page size that fits, else a page.
    fn expected_host_align(size: u64) -> u64 {
        if size >= GIB {
            GIB
        } else if size >= 2 * MIB {
            2 * MIB
        } else {
            PAGE
        }
    }

    /// Invariants every layout must satisfy.
    fn check(r: &RegionDesc, l: &BarLayout) {
        assert!(l.bar_size.is_power_of_two());
        assert!(l.bar_size >= r.size.max(PAGE));
        assert!(l.bar_size / 2 < r.size.max(PAGE), "smallest power of two");
        let mut cur = 0;
        for p in &l.pieces {
            assert_eq!(p.offset, cur, "{l:?}");
            assert!(p.size > 0, "{l:?}");
            match p.kind {
                PieceKind::Mapped { host_align } => {
                    assert_eq!(p.offset % PAGE, 0);
                    assert_eq!(p.size % PAGE, 0);
                    assert!(p.end() <= r.size);
                    assert_eq!(host_align, expected_host_align(p.size), "{l:?}");
                    let (align, phase) = p.host_placement().unwrap();
                    assert_eq!((align, phase), (host_align, p.offset % host_align));
                    for t in &r.trapped {
                        let (hs, he) = (
                            t.offset / PAGE * PAGE,
                            (t.offset + t.size).div_ceil(PAGE) * PAGE,
                        );
                        assert!(p.end() <= hs || p.offset >= he, "MSI-X page mapped: {l:?}");
                    }
                }
                PieceKind::Forwarded => assert!(p.end() <= r.size),
                PieceKind::Padding => assert!(p.offset >= r.size),
            }
            cur = p.end();
        }
        assert_eq!(cur, l.bar_size);
    }

    #[test]
    fn vmm_pads_a_non_power_of_two_region() {
        let r = region(96 * GIB - 2 * MIB);
        let l = bar_layout(&r, &LIMITS).unwrap().unwrap();
        check(&r, &l);
        assert_eq!(l.bar_size, 128 * GIB);
        assert_eq!(
            kinds(&l),
            vec![
                (0, 96 * GIB - 2 * MIB, "map"),
                (96 * GIB - 2 * MIB, 32 * GIB + 2 * MIB, "pad")
            ]
        );
        // 1 GiB huge pages although the length is only a multiple of 2 MiB.
        assert_eq!(l.pieces[0].kind, PieceKind::Mapped { host_align: GIB });
        assert_eq!(l.pieces[0].host_placement(), Some((GIB, 0)));
    }

    #[test]
    fn kernel_pads_with_a_sparse_area() {
        let mut r = region(128 * GIB);
        r.sparse = Some(vec![SparseArea {
            offset: 0,
            size: 96 * GIB - 2 * MIB,
        }]);
        let l = bar_layout(&r, &LIMITS).unwrap().unwrap();
        check(&r, &l);
        assert_eq!(l.bar_size, 128 * GIB);
        assert_eq!(
            kinds(&l),
            vec![
                (0, 96 * GIB - 2 * MIB, "map"),
                (96 * GIB - 2 * MIB, 32 * GIB + 2 * MIB, "fwd")
            ]
        );
    }

    #[test]
    fn a_256_byte_register_bar_is_forwarded_then_padded() {
        // ivshmem's BAR0: vfio-pci marks it mmappable, but a slot needs a whole page.
        let r = RegionDesc {
            index: 0,
            is_64bit: false,
            ..region(256)
        };
        let l = bar_layout(&r, &LIMITS).unwrap().unwrap();
        check(&r, &l);
        assert_eq!(l.bar_size, PAGE);
        assert_eq!(kinds(&l), vec![(0, 256, "fwd"), (256, PAGE - 256, "pad")]);
        assert!(!l.has_mapped());
    }

    #[test]
    fn msix_pages_stay_trapped() {
        let mut r = region(64 * 1024);
        r.trapped = vec![
            SparseArea {
                offset: 0x2000,
                size: 0x100,
            }, // table
            SparseArea {
                offset: 0x3800,
                size: 0x10,
            }, // PBA
        ];
        let l = bar_layout(&r, &LIMITS).unwrap().unwrap();
        check(&r, &l);
        assert_eq!(
            kinds(&l),
            vec![
                (0, 0x2000, "map"),
                (0x2000, 0x2000, "fwd"),
                (0x4000, 0xc000, "map")
            ]
        );
    }

    #[test]
    fn unaligned_sparse_areas_map_their_aligned_interior() {
        let mut r = region(MIB);
        r.sparse = Some(vec![
            SparseArea {
                offset: 0x800,
                size: 0x3000,
            },
            SparseArea {
                offset: 0x10000,
                size: 0x100,
            },
        ]);
        let l = bar_layout(&r, &LIMITS).unwrap().unwrap();
        check(&r, &l);
        assert_eq!(
            kinds(&l),
            vec![
                (0, 0x1000, "fwd"),
                (0x1000, 0x2000, "map"),
                (0x3000, MIB - 0x3000, "fwd")
            ]
        );
    }

    #[test]
    fn without_the_mmap_flag_everything_is_forwarded() {
        let mut r = region(3 * PAGE);
        r.mmap = false;
        let l = bar_layout(&r, &LIMITS).unwrap().unwrap();
        check(&r, &l);
        assert_eq!(
            kinds(&l),
            vec![(0, 3 * PAGE, "fwd"), (3 * PAGE, PAGE, "pad")]
        );
    }

    #[test]
    fn host_alignment_is_the_largest_huge_page_that_fits() {
        assert_eq!(host_alignment(96 * GIB, PAGE), GIB);
        // The lengths whose largest power-of-two divisor is one page still get huge pages.
        assert_eq!(host_alignment(96 * GIB - PAGE, PAGE), GIB);
        assert_eq!(host_alignment(40 * MIB + 12 * 1024, PAGE), 2 * MIB);
        assert_eq!(host_alignment(GIB - PAGE, PAGE), 2 * MIB);
        assert_eq!(host_alignment(2 * MIB - PAGE, PAGE), PAGE);
        assert_eq!(host_alignment(3 * PAGE, PAGE), PAGE);
        assert_eq!(host_alignment(u64::MAX, PAGE), GIB);
        // Degenerate sizes fall back to the page, never to 0 or a non-power of two.
        assert_eq!(host_alignment(0, PAGE), PAGE);
        assert_eq!(host_alignment(1, PAGE), PAGE);
        // A 64 KiB-page host: the page is the floor, 2 MiB and 1 GiB still apply above it.
        assert_eq!(host_alignment(MIB, 64 * 1024), 64 * 1024);
        assert_eq!(host_alignment(3 * MIB, 64 * 1024), 2 * MIB);
    }

    #[test]
    fn a_96g_minus_4k_piece_gets_1g_placement_and_later_pieces_keep_their_phase() {
        // vmm-pads with an MSI-X table in the middle: the piece after the hole starts at an
        // offset that is no multiple of its alignment.
        let mut r = region(96 * GIB - PAGE);
        r.trapped = vec![SparseArea {
            offset: 3 * MIB,
            size: 0x100,
        }];
        let l = bar_layout(&r, &LIMITS).unwrap().unwrap();
        check(&r, &l);
        assert_eq!(
            kinds(&l),
            vec![
                (0, 3 * MIB, "map"),
                (3 * MIB, PAGE, "fwd"),
                (3 * MIB + PAGE, 96 * GIB - 3 * MIB - 2 * PAGE, "map"),
                (96 * GIB - PAGE, 32 * GIB + PAGE, "pad"),
            ]
        );
        assert_eq!(l.pieces[0].host_placement(), Some((2 * MIB, 0)));
        assert_eq!(l.pieces[1].host_placement(), None);
        assert_eq!(l.pieces[2].host_placement(), Some((GIB, 3 * MIB + PAGE)));
        assert_eq!(l.pieces[3].host_placement(), None);
    }

    #[test]
    fn a_hand_made_piece_with_a_bad_alignment_has_no_placement() {
        for host_align in [0, 3 * PAGE] {
            let p = Piece {
                offset: PAGE,
                size: PAGE,
                kind: PieceKind::Mapped { host_align },
            };
            assert_eq!(p.host_placement(), None);
        }
        let p = Piece {
            offset: u64::MAX - PAGE + 1,
            size: PAGE,
            kind: PieceKind::Mapped { host_align: GIB },
        };
        assert_eq!(p.host_placement(), Some((GIB, GIB - PAGE)));
    }

    #[test]
    fn hostile_region_info_is_refused_by_region() {
        assert_eq!(bar_layout(&region(0), &LIMITS), Ok(None));
        let e = bar_layout(&region(u64::MAX), &LIMITS).unwrap_err();
        assert_eq!(
            e,
            LayoutError::Overflow {
                index: 2,
                size: u64::MAX
            }
        );
        assert!(e.to_string().starts_with("region 2:"));
        assert!(matches!(
            bar_layout(&region(512 * GIB), &LIMITS),
            Err(LayoutError::TooLarge {
                window: "64-bit",
                ..
            })
        ));
        let r32 = RegionDesc {
            is_64bit: false,
            ..region(GIB)
        };
        assert!(matches!(
            bar_layout(&r32, &LIMITS),
            Err(LayoutError::TooLarge {
                window: "32-bit",
                ..
            })
        ));
        let mut r = region(MIB);
        r.sparse = Some(vec![SparseArea {
            offset: MIB - 4096,
            size: 8192,
        }]);
        assert!(matches!(
            bar_layout(&r, &LIMITS),
            Err(LayoutError::AreaOutside { .. })
        ));
        r.sparse = Some(vec![SparseArea {
            offset: u64::MAX,
            size: 2,
        }]);
        assert!(matches!(
            bar_layout(&r, &LIMITS),
            Err(LayoutError::AreaOutside { .. })
        ));
        r.sparse = Some(vec![
            SparseArea {
                offset: 0,
                size: 0x2000,
            },
            SparseArea {
                offset: 0x1000,
                size: 0x2000,
            },
        ]);
        assert!(matches!(
            bar_layout(&r, &LIMITS),
            Err(LayoutError::AreasOverlap { .. })
        ));
        r.sparse = None;
        r.trapped = vec![SparseArea {
            offset: u64::MAX - 1,
            size: 8,
        }];
        assert!(matches!(
            bar_layout(&r, &LIMITS),
            Err(LayoutError::TrappedOutside { .. })
        ));
        let bad_page = Limits {
            page_size: 3000,
            ..LIMITS
        };
        assert!(bar_layout(&region(4096), &bad_page).is_err());
    }

    /// A deterministic sweep over many shapes: every layout keeps the invariants.
    #[test]
    fn exhaustive_sweep_keeps_invariants() {
        let sizes = [
            1,
            255,
            256,
            4095,
            4096,
            4097,
            3 * PAGE,
            64 * 1024 + 1,
            MIB - 1,
            96 * GIB - 2 * MIB,
        ];
        let offsets = [0, 1, 0x800, PAGE, PAGE + 1, 3 * PAGE];
        let mut n = 0;
        for &size in &sizes {
            for mmap in [false, true] {
                for &off in &offsets {
                    for len in [0, 1, PAGE, 2 * PAGE + 7] {
                        for trapped in [None, Some(PAGE / 2), Some(0)] {
                            let mut r = region(size);
                            r.mmap = mmap;
                            if off + len <= size && len > 0 {
                                r.sparse = Some(vec![SparseArea {
                                    offset: off,
                                    size: len,
                                }]);
                            }
                            if let Some(t) = trapped {
                                if t + 16 <= size {
                                    r.trapped = vec![SparseArea {
                                        offset: t,
                                        size: 16,
                                    }];
                                }
                            }
                            let l = bar_layout(&r, &LIMITS).unwrap().unwrap();
                            check(&r, &l);
                            n += 1;
                        }
                    }
                }
            }
        }
        assert!(n > 1000);
    }
}
