//! Target `bar_layout`: `pci::vfio::layout::bar_layout` with arbitrary region information
//! (size, mmap flag, sparse areas, trapped MSI-X ranges) and platform limits, then
//! `pci::vfio::dispatch::{split_access, read, write}` with arbitrary accesses against a fake
//! region.
//!
//! Checked: an `Ok` layout's BAR is the smallest power of two holding the region and a page,
//! within the window; its pieces tile `[0, bar_size)` in order without gaps or overlap;
//! mapped pieces are page-aligned, inside the region, inside a sparse area (or the whole
//! region), never on a trapped page; they are exactly the pages that could be mapped; each is
//! placed modulo the largest of 1 GiB, 2 MiB or the page that fits in it, in phase with its
//! offset; forwarded pieces stay inside the region and padding
//! outside it. An `Err` names a real problem of the input. `split_access` parts cover exactly
//! the access, in order, each inside one piece of the right kind; device accesses never leave
//! the region; padding reads 0 and its writes reach nothing; past the BAR reads all ones;
//! device failures read all ones and are reported.

use parking_lot::Mutex;

use arbitrary::Arbitrary;
use pci::vfio::dispatch::{self, AccessPart};
use pci::vfio::layout::host_alignment;
use pci::vfio::{
    bar_layout, BarLayout, LayoutError, Limits, PieceKind, RegionDesc, RegionIo, SparseArea,
};

use crate::seed::{Encode, Encoder};

/// A 64-bit quantity the fuzzer can aim: raw, or a power of two plus a small offset (sizes,
/// page sizes and boundaries are mostly the latter).
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq)]
pub enum Num {
    Raw(u64),
    Pow2(u8, i32),
}

impl Num {
    pub fn get(self) -> u64 {
        match self {
            Num::Raw(v) => v,
            Num::Pow2(s, d) => (1u64 << (s % 64)).wrapping_add(i64::from(d) as u64),
        }
    }
}

#[derive(Arbitrary, Debug, Clone, PartialEq)]
pub struct Input {
    pub index: u32,
    pub size: Num,
    pub mmap: bool,
    pub sparse: Option<Vec<(Num, Num)>>,
    pub is_64bit: bool,
    pub trapped: Vec<(Num, Num)>,
    pub page_size: Num,
    pub mmio32_size: Num,
    pub mmio64_size: Num,
    /// The device's real length, past which its region reads 0xff (kernel pads); `None`: all.
    pub real_len: Option<Num>,
    pub fail_device: bool,
    pub accesses: Vec<Access>,
}

#[derive(Arbitrary, Debug, Clone, PartialEq)]
pub struct Access {
    pub offset: Num,
    /// 0-64 bytes; a real trap sees 1, 2, 4 or 8.
    pub len: u8,
    pub write: bool,
}

/// `size` bytes; reads past `real` give 0xff, writes there are dropped; accesses past `size`
/// are a bug of the dispatcher (they would reach the next VFIO region) and fail the run.
struct FakeRegion {
    size: u64,
    real: u64,
    fail: bool,
    writes: Mutex<Vec<(u64, usize)>>,
}

fn byte_at(o: u64) -> u8 {
    (o.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8
}

impl FakeRegion {
    fn check(&self, offset: u64, len: usize) {
        assert!(len > 0, "empty device access at {offset:#x}");
        assert!(
            offset
                .checked_add(len as u64)
                .is_some_and(|e| e <= self.size),
            "device access {offset:#x}+{len} past the region ({:#x} bytes)",
            self.size
        );
    }
}

impl RegionIo for FakeRegion {
    fn read(&self, offset: u64, data: &mut [u8]) -> std::io::Result<()> {
        self.check(offset, data.len());
        if self.fail {
            return Err(std::io::Error::from_raw_os_error(5));
        }
        for (i, d) in data.iter_mut().enumerate() {
            let o = offset + i as u64;
            *d = if o < self.real { byte_at(o) } else { 0xff };
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.check(offset, data.len());
        self.writes.lock().push((offset, data.len()));
        if self.fail {
            return Err(std::io::Error::from_raw_os_error(5));
        }
        Ok(())
    }
}

fn areas(v: &[(Num, Num)]) -> Vec<SparseArea> {
    v.iter()
        .take(64)
        .map(|(o, s)| SparseArea {
            offset: o.get(),
            size: s.get(),
        })
        .collect()
}

fn align_up(v: u64, a: u64) -> Option<u64> {
    v.checked_add(a - 1).map(|v| v & !(a - 1))
}

/// Merges touching or overlapping ranges (sorted input).
fn merge(mut v: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (s, e) in v {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// What the input must satisfy for a layout to exist, checked independently of `bar_layout`.
fn expected_error(r: &RegionDesc, l: &Limits) -> Option<&'static str> {
    if !l.page_size.is_power_of_two() {
        return Some("page");
    }
    if r.size == 0 {
        return None;
    }
    let Some(bar) = r.size.max(l.page_size).checked_next_power_of_two() else {
        return Some("overflow");
    };
    if bar
        > if r.is_64bit {
            l.mmio64_size
        } else {
            l.mmio32_size
        }
    {
        return Some("too large");
    }
    if let Some(sparse) = &r.sparse {
        if sparse
            .iter()
            .any(|a| a.offset.checked_add(a.size).is_none_or(|e| e > r.size))
        {
            return Some("area outside");
        }
        let mut v: Vec<(u64, u64)> = sparse
            .iter()
            .filter(|a| a.size > 0)
            .map(|a| (a.offset, a.offset + a.size))
            .collect();
        v.sort_unstable();
        if v.windows(2).any(|w| w[0].1 > w[1].0) {
            return Some("areas overlap");
        }
    }
    if r.trapped
        .iter()
        .any(|t| t.offset.checked_add(t.size).is_none_or(|e| e > r.size))
    {
        return Some("trapped outside");
    }
    None
}

fn error_kind(e: &LayoutError) -> &'static str {
    match e {
        LayoutError::PageSize(_) => "page",
        LayoutError::Overflow { .. } => "overflow",
        LayoutError::TooLarge { .. } => "too large",
        LayoutError::AreaOutside { .. } => "area outside",
        LayoutError::AreasOverlap { .. } => "areas overlap",
        LayoutError::TrappedOutside { .. } => "trapped outside",
    }
}

/// The mappable pages, computed the slow and obvious way: page-aligned interiors of the areas,
/// minus every page a trapped range touches.
fn expected_mapped(r: &RegionDesc, page: u64) -> Vec<(u64, u64)> {
    if !r.mmap {
        return Vec::new();
    }
    let areas: Vec<(u64, u64)> = match &r.sparse {
        Some(a) => a.iter().map(|a| (a.offset, a.offset + a.size)).collect(),
        None => vec![(0, r.size)],
    };
    let holes = merge(
        r.trapped
            .iter()
            .map(|t| {
                let s = t.offset & !(page - 1);
                let e = align_up(t.offset + t.size, page).unwrap_or(u64::MAX);
                (s, e)
            })
            .collect(),
    );
    let mut out = Vec::new();
    for (s, e) in areas {
        let (Some(mut s), e) = (align_up(s, page), e & !(page - 1)) else {
            continue;
        };
        for &(hs, he) in &holes {
            if s >= e {
                break;
            }
            if he <= s || hs >= e {
                continue;
            }
            if hs > s {
                out.push((s, hs));
            }
            s = s.max(he);
        }
        if s < e {
            out.push((s, e));
        }
    }
    merge(out)
}

fn check_layout(r: &RegionDesc, limits: &Limits, l: &BarLayout) {
    let page = limits.page_size;
    let min = r.size.max(page);
    assert!(l.bar_size.is_power_of_two(), "{l:?}");
    assert!(
        l.bar_size >= min && l.bar_size / 2 < min,
        "not the smallest BAR: {l:?}"
    );
    let window = if r.is_64bit {
        limits.mmio64_size
    } else {
        limits.mmio32_size
    };
    assert!(l.bar_size <= window, "BAR larger than its window");
    let mut cur = 0u64;
    let mut mapped = Vec::new();
    for p in &l.pieces {
        assert_eq!(p.offset, cur, "pieces must tile the BAR: {l:?}");
        assert!(p.size > 0, "empty piece: {l:?}");
        let end = p.offset.checked_add(p.size).expect("piece end overflows");
        match p.kind {
            PieceKind::Mapped { host_align } => {
                assert_eq!(p.offset % page, 0, "{l:?}");
                assert_eq!(p.size % page, 0, "{l:?}");
                assert!(end <= r.size, "mapped past the region: {l:?}");
                assert!(r.mmap, "mapped without the mmap flag");
                assert_eq!(host_align, host_alignment(p.size, page));
                // The largest of 1 GiB, 2 MiB or the page that fits in the piece.
                let fits = |a: u64| a >= page && a <= p.size;
                assert!(host_align.is_power_of_two() && host_align >= page);
                assert!(host_align == page || fits(host_align), "{l:?}");
                assert!(
                    [1u64 << 30, 2 << 20]
                        .into_iter()
                        .all(|a| a <= host_align || !fits(a)),
                    "a larger huge page fits: {l:?}"
                );
                assert_eq!(
                    p.host_placement(),
                    Some((host_align, p.offset % host_align)),
                    "{l:?}"
                );
                mapped.push((p.offset, end));
            }
            PieceKind::Forwarded => assert!(end <= r.size, "forwarded past the region: {l:?}"),
            PieceKind::Padding => assert!(p.offset >= r.size, "padding inside the region"),
        }
        cur = end;
    }
    assert_eq!(cur, l.bar_size, "pieces must cover the BAR: {l:?}");
    assert_eq!(
        merge(mapped),
        expected_mapped(r, page),
        "mapped pieces are not exactly the mappable pages: {r:?} -> {l:?}"
    );
}

fn check_access(l: &BarLayout, dev: &FakeRegion, offset: u64, len: usize, write: bool) {
    let parts = dispatch::split_access(l, offset, len);
    let mut covered = 0usize;
    let mut device_parts = Vec::new();
    for part in &parts {
        let buf = match part {
            AccessPart::Device { buf, .. }
            | AccessPart::Padding { buf }
            | AccessPart::Outside { buf } => buf.clone(),
        };
        assert_eq!(buf.start, covered, "parts out of order: {parts:?}");
        assert!(buf.end > buf.start, "empty part: {parts:?}");
        covered = buf.end;
        let at = offset.checked_add(buf.start as u64);
        let end = at.and_then(|a| a.checked_add(buf.len() as u64));
        match part {
            AccessPart::Device { offset: o, .. } => {
                assert_eq!(Some(*o), at, "device part at the wrong offset");
                let piece = l
                    .pieces
                    .iter()
                    .find(|p| p.offset <= *o && *o < p.end())
                    .expect("device part outside every piece");
                assert!(
                    !matches!(piece.kind, PieceKind::Padding),
                    "padding sent to the device"
                );
                assert!(
                    end.is_some_and(|e| e <= piece.end()),
                    "part crosses a piece"
                );
                device_parts.push((*o, buf.len()));
            }
            AccessPart::Padding { .. } => {
                let at = at.expect("padding at an overflowing offset");
                let piece = l
                    .pieces
                    .iter()
                    .find(|p| p.offset <= at && at < p.end())
                    .expect("padding outside every piece");
                assert!(matches!(piece.kind, PieceKind::Padding));
                assert!(
                    end.is_some_and(|e| e <= piece.end()),
                    "part crosses a piece"
                );
            }
            AccessPart::Outside { .. } => {
                assert!(
                    at.is_none_or(|a| a >= l.bar_size),
                    "inside the BAR but answered as outside: {parts:?}"
                );
                assert_eq!(buf.end, len, "outside must be the last part");
            }
        }
    }
    assert_eq!(covered, len, "parts do not cover the access: {parts:?}");

    if write {
        dev.writes.lock().clear();
        let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let errors = dispatch::write(l, dev, offset, &data);
        let writes = std::mem::take(&mut *dev.writes.lock());
        assert_eq!(
            writes, device_parts,
            "device writes are not the device parts"
        );
        assert_eq!(errors.len(), if dev.fail { writes.len() } else { 0 });
    } else {
        let mut data = vec![0xa5u8; len];
        let errors = dispatch::read(l, dev, offset, &mut data);
        assert_eq!(errors.len(), if dev.fail { device_parts.len() } else { 0 });
        for part in &parts {
            match part {
                AccessPart::Device { offset: o, buf } => {
                    for (k, b) in data[buf.clone()].iter().enumerate() {
                        let at = o + k as u64;
                        let want = if dev.fail || at >= dev.real {
                            0xff
                        } else {
                            byte_at(at)
                        };
                        assert_eq!(*b, want, "device byte at {at:#x}");
                    }
                }
                AccessPart::Padding { buf } => {
                    assert!(data[buf.clone()].iter().all(|b| *b == 0), "padding reads 0")
                }
                AccessPart::Outside { buf } => assert!(
                    data[buf.clone()].iter().all(|b| *b == 0xff),
                    "past the BAR reads all ones"
                ),
            }
        }
    }
}

pub fn run(input: &Input) {
    let r = RegionDesc {
        index: input.index,
        size: input.size.get(),
        mmap: input.mmap,
        sparse: input.sparse.as_deref().map(areas),
        is_64bit: input.is_64bit,
        trapped: areas(&input.trapped),
    };
    let limits = Limits {
        page_size: input.page_size.get(),
        mmio32_size: input.mmio32_size.get(),
        mmio64_size: input.mmio64_size.get(),
    };
    let result = bar_layout(&r, &limits);
    let expected = expected_error(&r, &limits);
    let layout = match result {
        Ok(None) => {
            assert_eq!(r.size, 0, "no layout for a region of {:#x} bytes", r.size);
            assert_eq!(expected, None);
            return;
        }
        Ok(Some(l)) => {
            assert_eq!(expected, None, "{r:?} {limits:?} gave a layout");
            l
        }
        Err(e) => {
            // Which problem is reported first is the function's choice; that it is one the
            // input has is not.
            assert!(
                expected.is_some(),
                "{e} for a valid region {r:?} {limits:?}"
            );
            let msg = e.to_string();
            assert!(!msg.contains('\n'));
            assert!(
                matches!(e, LayoutError::PageSize(_))
                    || msg.starts_with(&format!("region {}:", r.index)),
                "{msg}"
            );
            let _ = error_kind(&e);
            return;
        }
    };
    check_layout(&r, &limits, &layout);
    let dev = FakeRegion {
        size: r.size,
        real: input.real_len.map_or(r.size, |n| n.get().min(r.size)),
        fail: input.fail_device,
        writes: Mutex::new(Vec::new()),
    };
    for a in input.accesses.iter().take(64) {
        let len = usize::from(a.len % 65);
        // Aim near the BAR: any offset modulo a little more than the BAR, or a raw one.
        let offset = match a.offset {
            Num::Raw(v) => v,
            n => n.get() % layout.bar_size.saturating_add(64),
        };
        check_access(&layout, &dev, offset, len, a.write);
    }
}

pub fn fuzz(data: &[u8]) {
    if let Some(input) = crate::seed::decode::<Input>(data) {
        run(&input);
    }
}

// ---------------------------------------------------------------------------------------------
// Seeds.

impl Encode for Num {
    fn encode(&self, e: &mut Encoder) {
        match self {
            Num::Raw(v) => {
                e.variant(0, 2);
                v.encode(e);
            }
            Num::Pow2(s, d) => {
                e.variant(1, 2);
                s.encode(e);
                d.encode(e);
            }
        }
    }
}

impl Encode for Access {
    fn encode(&self, e: &mut Encoder) {
        self.offset.encode(e);
        self.len.encode(e);
        self.write.encode(e);
    }
}

impl Encode for Input {
    fn encode(&self, e: &mut Encoder) {
        self.index.encode(e);
        self.size.encode(e);
        self.mmap.encode(e);
        self.sparse.encode(e);
        self.is_64bit.encode(e);
        self.trapped.encode(e);
        self.page_size.encode(e);
        self.mmio32_size.encode(e);
        self.mmio64_size.encode(e);
        self.real_len.encode(e);
        self.fail_device.encode(e);
        self.accesses.encode(e);
    }
}

/// `v` spelled as the fuzzer aims: a power of two plus a small offset when it is near one.
pub(crate) fn n(v: u64) -> Num {
    if v.is_power_of_two() {
        Num::Pow2(v.trailing_zeros() as u8, 0)
    } else {
        let near = v
            .checked_next_power_of_two()
            .and_then(|p| Some((p, i32::try_from(v as i128 - p as i128).ok()?)));
        match near {
            Some((p, d)) => Num::Pow2(p.trailing_zeros() as u8, d),
            None => Num::Raw(v),
        }
    }
}

fn region(size: u64) -> Input {
    Input {
        index: 2,
        size: n(size),
        mmap: true,
        sparse: None,
        is_64bit: true,
        trapped: vec![],
        page_size: n(4096),
        mmio32_size: n(512 << 20),
        mmio64_size: n(256 << 30),
        real_len: None,
        fail_device: false,
        accesses: vec![],
    }
}

/// Reads and writes of widths 1, 2, 4 and 8 straddling `at`.
fn straddle(at: u64) -> Vec<Access> {
    let mut v = Vec::new();
    for len in [1u8, 2, 4, 8] {
        for back in 0..len as u64 {
            for write in [false, true] {
                v.push(Access {
                    offset: n(at - back),
                    len,
                    write,
                });
            }
        }
    }
    v
}

pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;
    let mut out = Vec::new();
    // The two padding contracts at the rig's lengths.
    let mut vmm_pads = region(40 * MIB + 12 * 1024);
    vmm_pads.accesses = straddle(40 * MIB + 12 * 1024);
    out.push(("vmm-pads-40M12K", vmm_pads));
    let mut kernel_pads = region(64 * MIB);
    kernel_pads.sparse = Some(vec![(n(0), n(40 * MIB + 12 * 1024))]);
    kernel_pads.real_len = Some(n(40 * MIB + 12 * 1024));
    kernel_pads.accesses = straddle(40 * MIB + 12 * 1024);
    out.push(("kernel-pads-40M12K", kernel_pads));
    // GH-sized: 96 GiB - 2 MiB in a 128 GiB BAR.
    let mut gh = region(96 * GIB - 2 * MIB);
    gh.accesses = straddle(96 * GIB - 2 * MIB);
    out.push(("gh-96G", gh));
    // ivshmem's 256-byte register BAR, 32-bit: forwarded then padded to a page.
    let mut regs = region(256);
    regs.is_64bit = false;
    regs.index = 0;
    regs.accesses = straddle(256);
    out.push(("regs-256", regs));
    // MSI-X table and PBA in a 64 KiB BAR.
    let mut msix = region(64 * 1024);
    msix.trapped = vec![(n(0x2000), n(0x100)), (n(0x3800), n(0x10))];
    msix.accesses = straddle(0x2000);
    out.push(("msix-trapped", msix));
    // Unaligned sparse areas, no mmap flag, a failing device.
    let mut sparse = region(MIB);
    sparse.sparse = Some(vec![(n(0x800), n(0x3000)), (n(0x10000), n(0x100))]);
    sparse.accesses = straddle(0x1000);
    out.push(("sparse-unaligned", sparse));
    let mut nommap = region(3 * 4096);
    nommap.mmap = false;
    nommap.fail_device = true;
    nommap.accesses = straddle(3 * 4096);
    out.push(("no-mmap-failing", nommap));
    // Refusals: overlapping areas, a 32-bit BAR too large, a bad page size.
    let mut overlap = region(MIB);
    overlap.sparse = Some(vec![(n(0), n(0x2000)), (n(0x1000), n(0x2000))]);
    out.push(("areas-overlap", overlap));
    let mut big32 = region(GIB);
    big32.is_64bit = false;
    out.push(("too-large-32", big32));
    let mut page = region(4096);
    page.page_size = Num::Raw(3000);
    out.push(("bad-page", page));
    out.into_iter()
        .map(|(name, input)| (name, crate::seed::encode(&input)))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn seeds_hold_the_invariants() {
        for (_, bytes) in super::seeds() {
            super::run(&crate::seed::decode(&bytes).unwrap());
        }
    }
}
