//! Target `vfio_user_backend`: the vfio-user server's device model (`ghvmm_vfio_user::Backend`,
//! vfio-user-server/src/backend.rs) answering a hostile client, over the fake host device of
//! its unit tests (`ghvmm_vfio_user::fake`, feature `fake`). The input makes the device: BARs in
//! the two padding shapes (kernel pads: a power-of-two region whose sparse area covers the
//! memory, 0xff after it; VMM pads: a region of any size, which the server pads) or with raw
//! region info (any size, flags, offset, sparse areas outside, overlapping or overflowing),
//! any BAR register type bits, MSI and MSI-X capabilities, raw config-space bytes, the host's
//! vector counts, other regions (ROM, VGA, indexes past them), a device fd to map or none.
//! Then the client's messages: region reads and writes at any region, offset and width
//! 0-4104, DMA_MAP (with a small file or none) and DMA_UNMAP of any range and flags, SET_IRQS
//! with any index, flags, start, count and number of descriptors, resets, the client leaving
//! (and the next one coming), DMA maps failing on the host.
//!
//! Checked (besides no panic): `Backend::new` refuses with one line or builds a backend,
//! which offers BAR regions that are powers of two of at least a page holding the host
//! region, whose sparse areas are page-aligned, inside the host region, in order, and come
//! with the fd to map them; a config region of at least 256 bytes; INTx with no vector.
//! Region accesses succeed exactly inside a BAR or the config region; BAR reads give the
//! device's bytes inside the host region (outside the emulated MSI-X table) and zeros in the
//! padding after it; a write reaches the device with exactly its bytes inside the host
//! region, or nothing when the MSI-X table takes it; no access reaches a BAR's region outside
//! it. DMA_MAP and DMA_UNMAP succeed or fail as VFIO's type1 rules say (no overlaps, whole
//! mappings only), and the backend's mappings are always exactly the device's. SET_IRQS
//! outside what is offered never reaches the device. A reset reaches the device. After the
//! client leaves, no DMA mapping and no enabled interrupt index remain and the device was
//! reset; dropping the backend unmaps everything.

use std::collections::BTreeMap;
use std::fs::File;

use arbitrary::Arbitrary;
use ghvmm_vfio_user::backend::client_interrupts;
use ghvmm_vfio_user::backend::CONFIG_REGION;
use ghvmm_vfio_user::fake::{Fake, FakeRegion};
use ghvmm_vfio_user::{Backend, HostDevice, HostRegion};
use pci::vfio::interrupts::BarRange;
use pci::vfio::SparseArea;
use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE,
    VFIO_PCI_INTX_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_MSI_IRQ_INDEX, VFIO_PCI_NUM_REGIONS,
    VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vfio_user::{DmaMapFlags, DmaUnmapFlags, ServerBackend};
use vmm_sys_util::tempfile::TempFile;

use crate::bar_layout::{n, Num};
use crate::seed::{Encode, Encoder};

#[derive(Arbitrary, Debug, Clone, PartialEq)]
pub struct Input {
    pub device: Device,
    pub ops: Vec<Op>,
}

#[derive(Arbitrary, Debug, Clone, PartialEq)]
pub struct Device {
    /// At most 8; a later BAR with the same number replaces the earlier one's region.
    pub bars: Vec<Bar>,
    pub msi: Option<Msi>,
    pub msix: Option<Msix>,
    /// Config-space bytes written last (offset modulo 4096): broken capability lists.
    pub pokes: Vec<(u16, u8)>,
    pub config_size: ConfigSize,
    /// Regions that are no BAR: index (modulo 16; 6 is the ROM, 8 VGA), shape.
    pub others: Vec<(u8, Shape)>,
    /// The vectors the host reports for INTx, MSI and MSI-X; `None`: no such index.
    pub irq_counts: [Option<Pick>; 3],
    /// The device has an fd for the client to mmap BAR areas from.
    pub mmap_fd: bool,
}

#[derive(Arbitrary, Debug, Clone, PartialEq)]
pub struct Bar {
    /// BAR number, modulo 6.
    pub index: u8,
    pub kind: BarKind,
    pub shape: Shape,
}

/// The BAR register's type bits.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq)]
pub enum BarKind {
    Mem32,
    Mem64,
    Mem64Prefetchable,
    Io,
    Raw(u32),
}

#[derive(Arbitrary, Debug, Clone, PartialEq)]
pub enum Shape {
    /// `size` bytes of memory, no sparse areas: the server pads the BAR to a power of two.
    VmmPads { size: Num, mmap: bool },
    /// 2^(12 + log2 % 36) bytes of which the first `real` (modulo the size plus one) are
    /// memory and a sparse area, the rest reading 0xff (nvgrace-gpu).
    KernelPads { log2: u8, real: Num },
    /// Any region info; `real` bytes of memory, 0xff after them.
    Raw {
        size: Num,
        flags: u32,
        offset: u64,
        sparse: Option<Vec<(Num, Num)>>,
        real: Num,
    },
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq)]
pub struct Msi {
    /// Message Control: 64-bit, per-vector masking, Multiple Message Capable (the rest of
    /// its bits).
    pub control: u16,
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq)]
pub struct Msix {
    /// Table size minus one (11 bits; the rest is the control word's).
    pub control: u16,
    /// Offset | BIR of the table and of the PBA.
    pub table: u32,
    pub pba: u32,
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq)]
pub enum ConfigSize {
    Pcie,
    Conventional,
    Raw(Num),
}

/// A number that is usually small, sometimes anything: a count, a region index (small: 0-9,
/// the BARs, ROM, config, VGA and one past), an access width (small: 0-8, what a CPU does;
/// else 0-4104).
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq)]
pub enum Pick {
    Small(u8),
    Raw(u32),
}

pub const MAX_ACCESS: usize = 4096 + 8;

impl Pick {
    fn count(self) -> u32 {
        match self {
            Pick::Small(n) => u32::from(n),
            Pick::Raw(n) => n,
        }
    }

    fn region(self) -> u32 {
        match self {
            Pick::Small(i) => u32::from(i % 10),
            Pick::Raw(i) => i,
        }
    }

    fn width(self) -> usize {
        match self {
            Pick::Small(w) => usize::from(w % 9),
            Pick::Raw(w) => w as usize % (MAX_ACCESS + 1),
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq)]
pub enum IrqFlags {
    /// DATA_EVENTFD | ACTION_TRIGGER: enable, or set vectors.
    Eventfds,
    /// DATA_NONE | ACTION_TRIGGER: with count 0, disable.
    None,
    Raw(u32),
}

impl IrqFlags {
    fn get(self) -> u32 {
        match self {
            IrqFlags::Eventfds => VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            IrqFlags::None => VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
            IrqFlags::Raw(f) => f,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq)]
pub enum UnmapFlags {
    Empty,
    All,
    Raw(u32),
}

#[derive(Arbitrary, Debug, Clone, PartialEq)]
pub enum Op {
    /// `offset`: a raw one, or else aimed at the region (modulo its size plus 64).
    Read {
        region: Pick,
        offset: Num,
        width: Pick,
    },
    Write {
        region: Pick,
        offset: Num,
        width: Pick,
        byte: u8,
    },
    /// `flags`: `None` is READ_WRITE; `file`: a 8 KiB file comes with it.
    DmaMap {
        iova: Num,
        size: Num,
        offset: u64,
        flags: Option<u32>,
        file: bool,
    },
    DmaUnmap {
        iova: Num,
        size: Num,
        flags: UnmapFlags,
    },
    /// `index`: 255 is `u32::MAX`; `fds`: how many descriptors (at most 64), `None`: `count`
    /// of them (at most 64).
    SetIrqs {
        index: u8,
        flags: IrqFlags,
        start: Pick,
        count: Pick,
        fds: Option<u8>,
    },
    Reset,
    ClientGone,
    FailDmaMap(bool),
}

const PAGE: u64 = 4096;
const MAX_BARS: usize = 8;
const MAX_OTHERS: usize = 4;
const MAX_AREAS: usize = 16;
const MAX_POKES: usize = 64;
const MAX_OPS: usize = 256;
const MAX_FDS: usize = 64;
const DMA_FILE_SIZE: u64 = 0x2000;
const RW: u32 = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
const MSI_AT: usize = 0x50;
const MSIX_AT: usize = 0x70;

// ---------------------------------------------------------------------------------------------
// The device.

fn host_offset(index: u32) -> u64 {
    u64::from(index) << 40
}

impl BarKind {
    fn register(self) -> u32 {
        match self {
            BarKind::Mem32 => 0,
            BarKind::Mem64 => 0x4,
            BarKind::Mem64Prefetchable => 0xc,
            BarKind::Io => 0x1,
            BarKind::Raw(r) => r,
        }
    }
}

impl Shape {
    fn region(&self, index: u32) -> FakeRegion {
        let info = |size, flags, sparse| HostRegion {
            size,
            flags,
            offset: host_offset(index),
            sparse,
        };
        match self {
            Shape::VmmPads { size, mmap } => {
                let size = size.get();
                let flags = if *mmap {
                    RW | VFIO_REGION_INFO_FLAG_MMAP
                } else {
                    RW
                };
                FakeRegion::new(info(size, flags, None), size)
            }
            Shape::KernelPads { log2, real } => {
                let size = 1u64 << (12 + log2 % 36);
                let real = real.get() % (size + 1);
                let area = SparseArea {
                    offset: 0,
                    size: real,
                };
                let flags = RW | VFIO_REGION_INFO_FLAG_MMAP;
                FakeRegion::new(info(size, flags, Some(vec![area])), real)
            }
            Shape::Raw {
                size,
                flags,
                offset,
                sparse,
                real,
            } => {
                let sparse = sparse.as_ref().map(|a| {
                    a.iter()
                        .take(MAX_AREAS)
                        .map(|(o, s)| SparseArea {
                            offset: o.get(),
                            size: s.get(),
                        })
                        .collect()
                });
                let mut r = FakeRegion::new(info(size.get(), *flags, sparse), real.get());
                r.info.offset = *offset;
                r
            }
        }
    }
}

fn put(b: &mut [u8], at: usize, v: &[u8]) {
    b[at..at + v.len()].copy_from_slice(v);
}

/// The device's config space: ids, the capability-list bit, BAR registers, MSI at 0x50 and
/// MSI-X at 0x70 linked from 0x34, then the pokes.
fn config_bytes(d: &Device) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    put(&mut b, 0, &0x2342_10deu32.to_le_bytes());
    b[6] = 0x10;
    for bar in d.bars.iter().take(MAX_BARS) {
        let at = 0x10 + 4 * usize::from(bar.index % 6);
        put(&mut b, at, &bar.kind.register().to_le_bytes());
    }
    let mut link = 0x34;
    if let Some(msi) = d.msi {
        b[link] = MSI_AT as u8;
        b[MSI_AT] = 0x05;
        put(&mut b, MSI_AT + 2, &msi.control.to_le_bytes());
        link = MSI_AT + 1;
    }
    if let Some(msix) = d.msix {
        b[link] = MSIX_AT as u8;
        b[MSIX_AT] = 0x11;
        put(&mut b, MSIX_AT + 2, &msix.control.to_le_bytes());
        put(&mut b, MSIX_AT + 4, &msix.table.to_le_bytes());
        put(&mut b, MSIX_AT + 8, &msix.pba.to_le_bytes());
    }
    for &(at, v) in d.pokes.iter().take(MAX_POKES) {
        b[usize::from(at) % 4096] = v;
    }
    b
}

fn fake(d: &Device) -> Fake {
    let mut regions = BTreeMap::new();
    for bar in d.bars.iter().take(MAX_BARS) {
        let index = u32::from(bar.index % 6);
        regions.insert(index, bar.shape.region(index));
    }
    for (index, shape) in d.others.iter().take(MAX_OTHERS) {
        let index = 6 + u32::from(index % 10);
        regions.insert(index, shape.region(index));
    }
    let config_size = match d.config_size {
        ConfigSize::Pcie => 4096,
        ConfigSize::Conventional => 256,
        ConfigSize::Raw(n) => n.get(),
    };
    let info = HostRegion {
        size: config_size,
        flags: RW,
        offset: host_offset(CONFIG_REGION),
        sparse: None,
    };
    regions.insert(CONFIG_REGION, FakeRegion::with_bytes(info, config_bytes(d)));
    let indexes = [
        VFIO_PCI_INTX_IRQ_INDEX,
        VFIO_PCI_MSI_IRQ_INDEX,
        VFIO_PCI_MSIX_IRQ_INDEX,
    ];
    let irqs = indexes
        .into_iter()
        .zip(d.irq_counts)
        .filter_map(|(i, n)| Some((i, n?.count())))
        // ERR and REQ: the backend offers neither.
        .chain([(3, 1), (4, 1)]);
    Fake::with(regions, irqs, d.mmap_fd)
}

/// Where the emulated MSI-X table is, found by the backend's own code: none when the table
/// or the PBA is in a BAR that cannot trap it (the backend hides MSI-X then).
fn msix_table(fake: &Fake) -> Option<BarRange> {
    let (caps, _) = client_interrupts(&std::sync::Arc::new(fake.clone()));
    caps.msix_ranges().first().copied()
}

// ---------------------------------------------------------------------------------------------
// The client.

struct Harness {
    backend: Backend<Fake>,
    fake: Fake,
    /// Per region index: (size the client sees, size of the host region).
    sizes: BTreeMap<u32, (u64, u64)>,
    config_size: u64,
    table: Option<BarRange>,
    /// The file DMA maps and SET_IRQS send, made on first use.
    file: Option<File>,
    resets: usize,
}

fn overlaps(a: u64, s: u64, b: u64, t: u64) -> bool {
    a < b.saturating_add(t) && b < a.saturating_add(s)
}

impl Harness {
    fn new(d: &Device) -> Option<Harness> {
        let fake = fake(d);
        let table = msix_table(&fake);
        let backend = match Backend::new(fake.clone(), "fuzz") {
            Ok(b) => b,
            Err(e) => {
                let msg = e.to_string();
                assert!(!msg.is_empty() && !msg.contains('\n'), "{msg:?}");
                return None;
            }
        };
        let mut h = Harness {
            backend,
            fake,
            sizes: BTreeMap::new(),
            config_size: 0,
            table,
            file: None,
            resets: 0,
        };
        h.check_offer();
        Some(h)
    }

    /// What the client is told about regions and interrupts.
    fn check_offer(&mut self) {
        let regions = self.backend.regions();
        assert_eq!(regions.len(), VFIO_PCI_NUM_REGIONS as usize);
        let fd = self.fake.mmap_fd();
        for (index, r) in (0u32..).zip(&regions) {
            let info = &r.region_info;
            assert_eq!(info.index, index);
            if index == CONFIG_REGION {
                let host = self.fake.region(index).map_or(0, |h| h.size);
                assert_eq!(info.size, host.max(256), "config region size");
                self.config_size = info.size;
                continue;
            }
            if info.size == 0 {
                assert!(r.sparse_areas.is_empty() && r.mmap_fd.is_none());
                continue;
            }
            assert!(index < 6, "region {index} offered");
            let host = self
                .fake
                .region(index)
                .expect("a BAR without a host region");
            assert!(
                info.size.is_power_of_two() && info.size >= PAGE && info.size >= host.size,
                "BAR {index}: {:#x} bytes for a host region of {:#x}",
                info.size,
                host.size
            );
            assert_eq!(info.offset, host.offset, "BAR {index}: offset in the fd");
            let mut end = 0;
            for a in &r.sparse_areas {
                let (o, s) = (a.area.offset, a.area.size);
                assert!(
                    o >= end && s > 0 && o % PAGE == 0 && s % PAGE == 0,
                    "BAR {index}: area {o:#x}+{s:#x}"
                );
                end = o + s;
                assert!(end <= host.size, "BAR {index}: area past the host region");
            }
            let mapped = !r.sparse_areas.is_empty();
            assert_eq!(r.mmap_fd, if mapped { fd } else { None });
            assert_eq!(info.flags & VFIO_REGION_INFO_FLAG_MMAP != 0, mapped);
            self.sizes.insert(index, (info.size, host.size));
        }
        let irqs = self.backend.irqs();
        let indexes: Vec<u32> = irqs.iter().map(|i| i.index).collect();
        assert_eq!(indexes, [0, 1, 2]);
        assert_eq!(irqs[0].count, 0, "INTx offered");
    }

    fn region_size(&self, region: u32) -> u64 {
        if region == CONFIG_REGION {
            return self.config_size;
        }
        self.sizes.get(&region).map_or(0, |s| s.0)
    }

    fn aim(&self, region: u32, offset: Num) -> u64 {
        match offset {
            Num::Raw(v) => v,
            n => n.get() % self.region_size(region).saturating_add(64),
        }
    }

    fn in_table(&self, region: u32, offset: u64, len: usize) -> bool {
        let bar = usize::try_from(region).unwrap_or(usize::MAX);
        self.table.is_some_and(|t| t.contains(bar, offset, len))
    }

    fn file(&mut self) -> File {
        let f = self.file.get_or_insert_with(|| {
            let f = TempFile::new().expect("a temporary file").into_file();
            f.set_len(DMA_FILE_SIZE).expect("sizing the DMA file");
            f
        });
        f.try_clone().expect("dup")
    }

    /// No access reached a BAR's region outside it; forgets the writes seen.
    fn check_device_accesses(&self) {
        let log = self.fake.log();
        let mut log = log.lock();
        let stray: Vec<_> = log.refused.iter().filter(|r| r.0 < 6).collect();
        assert!(
            stray.is_empty(),
            "BAR accesses outside the region: {stray:x?}"
        );
        log.refused.clear();
        log.writes.clear();
    }

    fn access(&mut self, region: u32, offset: u64, len: usize, write: Option<u8>) {
        let size = self.region_size(region);
        let offered = region == CONFIG_REGION || self.sizes.contains_key(&region);
        let fits = offered && offset.checked_add(len as u64).is_some_and(|e| e <= size);
        let result = match write {
            None => {
                let mut data = vec![0xa5; len];
                let r = self.backend.region_read(region, offset, &mut data);
                if r.is_ok() {
                    self.check_read(region, offset, &data);
                }
                r
            }
            Some(byte) => {
                let r = self.backend.region_write(region, offset, &vec![byte; len]);
                if r.is_ok() {
                    self.check_write(region, offset, len);
                }
                r
            }
        };
        assert_eq!(
            result.is_ok(),
            fits,
            "region {region} ({size:#x} bytes): {offset:#x}+{len}: {result:?}"
        );
        self.check_device_accesses();
    }

    fn check_read(&self, region: u32, offset: u64, data: &[u8]) {
        let Some(&(_, host)) = self.sizes.get(&region) else {
            return;
        };
        if self.in_table(region, offset, data.len()) {
            return;
        }
        for (at, b) in (offset..).zip(data) {
            let want = if at < host {
                self.fake.byte(region, at).expect("the region")
            } else {
                0
            };
            assert_eq!(
                *b, want,
                "BAR {region} ({host:#x} bytes on the host): byte at {at:#x}"
            );
        }
    }

    fn check_write(&self, region: u32, offset: u64, len: usize) {
        let Some(&(_, host)) = self.sizes.get(&region) else {
            return;
        };
        let log = self.fake.log();
        let written: usize = log
            .lock()
            .writes
            .iter()
            .filter(|w| w.0 == region)
            .map(|w| w.2.len())
            .sum();
        let want = if self.in_table(region, offset, len) {
            0
        } else {
            (offset.saturating_add(len as u64).min(host)).saturating_sub(offset) as usize
        };
        assert_eq!(
            written, want,
            "BAR {region}: bytes of {offset:#x}+{len} written"
        );
    }

    /// The backend's DMA mappings are the device's, in order, none overlapping.
    fn dma(&self) -> Vec<(u64, u64)> {
        let mine = self.backend.dma_mappings();
        let host: Vec<(u64, u64)> = self.fake.log().lock().dma.clone().into_iter().collect();
        assert_eq!(
            mine, host,
            "the backend's DMA mappings are not the device's"
        );
        for w in mine.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0, "DMA mappings overlap: {w:x?}");
        }
        mine
    }

    fn dma_map(&mut self, iova: u64, size: u64, offset: u64, flags: u32, file: bool) {
        let before = self.dma();
        let fail = self.fake.log().lock().fail_dma_map;
        let ok = file
            && DmaMapFlags::READ_WRITE.bits() & flags == flags
            && size > 0
            && iova.checked_add(size).is_some()
            && !before.iter().any(|&(a, s)| overlaps(a, s, iova, size))
            && !fail;
        let fd = file.then(|| self.file());
        let flags = DmaMapFlags::from_bits_retain(flags);
        let r = self.backend.dma_map(flags, offset, iova, size, fd);
        assert_eq!(r.is_ok(), ok, "DMA map {iova:#x}+{size:#x}: {r:?}");
        let mut want = before;
        if ok {
            want.push((iova, size));
            want.sort_unstable();
        }
        assert_eq!(self.dma(), want);
    }

    fn dma_unmap(&mut self, iova: u64, size: u64, flags: UnmapFlags) {
        let before = self.dma();
        let flags = match flags {
            UnmapFlags::Empty => DmaUnmapFlags::empty(),
            UnmapFlags::All => DmaUnmapFlags::UNMAP_ALL,
            UnmapFlags::Raw(f) => DmaUnmapFlags::from_bits_retain(f),
        };
        let r = self.backend.dma_unmap(flags, iova, size);
        let (ok, want) = if flags == DmaUnmapFlags::UNMAP_ALL {
            (true, Vec::new())
        } else if !flags.is_empty() {
            (false, before.clone())
        } else {
            match iova.checked_add(size) {
                None => (false, before.clone()),
                Some(end) => {
                    let hit = |&&(a, s): &&(u64, u64)| overlaps(a, s, iova, size);
                    let whole = before
                        .iter()
                        .filter(hit)
                        .all(|&(a, s)| a >= iova && a + s <= end);
                    let any = before.iter().any(|m| hit(&m));
                    if any && whole {
                        (true, before.iter().filter(|m| !hit(m)).copied().collect())
                    } else {
                        (false, before.clone())
                    }
                }
            }
        };
        assert_eq!(
            r.is_ok(),
            ok,
            "DMA unmap {iova:#x}+{size:#x} {flags:?}: {r:?}"
        );
        assert_eq!(self.dma(), want, "DMA unmap {iova:#x}+{size:#x} {flags:?}");
    }

    fn set_irqs(&mut self, index: u32, flags: u32, start: u32, count: u32, fds: usize) {
        let offered = self
            .backend
            .irqs()
            .iter()
            .find(|i| i.index == index)
            .map_or(0, |i| i.count);
        let log = self.fake.log();
        let calls = log.lock().set_irqs.len();
        let fds: Vec<File> = (0..fds).map(|_| self.file()).collect();
        let r = self.backend.set_irqs(index, flags, start, count, fds);
        let inside = offered > 0 && start.checked_add(count).is_some_and(|e| e <= offered);
        if !inside {
            assert!(r.is_err(), "SET_IRQS {index} {start}+{count} of {offered}");
            assert_eq!(log.lock().set_irqs.len(), calls, "reached the device");
        }
    }

    fn client_gone(&mut self) {
        self.backend.client_gone();
        self.resets += 1;
        assert!(
            self.backend.dma_mappings().is_empty(),
            "DMA mapped after the client left"
        );
        let log = self.fake.log();
        let log = log.lock();
        assert!(
            log.dma.is_empty(),
            "the device keeps DMA mappings: {:x?}",
            log.dma
        );
        assert_eq!(
            log.irq_enabled, None,
            "interrupt index left enabled after the client left"
        );
        assert_eq!(log.resets, self.resets);
    }

    fn op(&mut self, op: &Op) {
        match *op {
            Op::Read {
                region,
                offset,
                width,
            } => {
                let region = region.region();
                let offset = self.aim(region, offset);
                self.access(region, offset, width.width(), None);
            }
            Op::Write {
                region,
                offset,
                width,
                byte,
            } => {
                let region = region.region();
                let offset = self.aim(region, offset);
                self.access(region, offset, width.width(), Some(byte));
            }
            Op::DmaMap {
                iova,
                size,
                offset,
                flags,
                file,
            } => {
                let flags = flags.unwrap_or(DmaMapFlags::READ_WRITE.bits());
                self.dma_map(iova.get(), size.get(), offset, flags, file);
            }
            Op::DmaUnmap { iova, size, flags } => self.dma_unmap(iova.get(), size.get(), flags),
            Op::SetIrqs {
                index,
                flags,
                start,
                count,
                fds,
            } => {
                let index = if index == u8::MAX {
                    u32::MAX
                } else {
                    u32::from(index)
                };
                let (start, count) = (start.count(), count.count());
                let fds = match fds {
                    Some(n) => usize::from(n),
                    None => usize::try_from(count).unwrap_or(usize::MAX),
                };
                self.set_irqs(index, flags.get(), start, count, fds.min(MAX_FDS));
            }
            Op::Reset => {
                self.backend.reset().expect("the fake resets");
                self.resets += 1;
                assert_eq!(self.fake.log().lock().resets, self.resets);
            }
            Op::ClientGone => self.client_gone(),
            Op::FailDmaMap(fail) => self.fake.log().lock().fail_dma_map = fail,
        }
    }
}

pub fn run(input: &Input) {
    let Some(mut h) = Harness::new(&input.device) else {
        return;
    };
    for op in input.ops.iter().take(MAX_OPS) {
        h.op(op);
    }
    // The session ends as serve_one ends it, then the process drops the backend.
    h.client_gone();
    let fake = h.fake.clone();
    drop(h);
    assert!(fake.log().lock().dma.is_empty());
}

pub fn fuzz(data: &[u8]) {
    if let Some(input) = crate::seed::decode::<Input>(data) {
        run(&input);
    }
}

// ---------------------------------------------------------------------------------------------
// Seeds.

impl Encode for Input {
    fn encode(&self, e: &mut Encoder) {
        self.device.encode(e);
        self.ops.encode(e);
    }
}

impl Encode for Device {
    fn encode(&self, e: &mut Encoder) {
        self.bars.encode(e);
        self.msi.encode(e);
        self.msix.encode(e);
        self.pokes.encode(e);
        self.config_size.encode(e);
        self.others.encode(e);
        self.irq_counts.encode(e);
        self.mmap_fd.encode(e);
    }
}

impl Encode for Bar {
    fn encode(&self, e: &mut Encoder) {
        self.index.encode(e);
        self.kind.encode(e);
        self.shape.encode(e);
    }
}

impl Encode for BarKind {
    fn encode(&self, e: &mut Encoder) {
        match self {
            BarKind::Mem32 => e.variant(0, 5),
            BarKind::Mem64 => e.variant(1, 5),
            BarKind::Mem64Prefetchable => e.variant(2, 5),
            BarKind::Io => e.variant(3, 5),
            BarKind::Raw(r) => {
                e.variant(4, 5);
                r.encode(e);
            }
        }
    }
}

impl Encode for Shape {
    fn encode(&self, e: &mut Encoder) {
        match self {
            Shape::VmmPads { size, mmap } => {
                e.variant(0, 3);
                size.encode(e);
                mmap.encode(e);
            }
            Shape::KernelPads { log2, real } => {
                e.variant(1, 3);
                log2.encode(e);
                real.encode(e);
            }
            Shape::Raw {
                size,
                flags,
                offset,
                sparse,
                real,
            } => {
                e.variant(2, 3);
                size.encode(e);
                flags.encode(e);
                offset.encode(e);
                sparse.encode(e);
                real.encode(e);
            }
        }
    }
}

impl Encode for Msi {
    fn encode(&self, e: &mut Encoder) {
        self.control.encode(e);
    }
}

impl Encode for Msix {
    fn encode(&self, e: &mut Encoder) {
        self.control.encode(e);
        self.table.encode(e);
        self.pba.encode(e);
    }
}

impl Encode for ConfigSize {
    fn encode(&self, e: &mut Encoder) {
        match self {
            ConfigSize::Pcie => e.variant(0, 3),
            ConfigSize::Conventional => e.variant(1, 3),
            ConfigSize::Raw(n) => {
                e.variant(2, 3);
                n.encode(e);
            }
        }
    }
}

impl Encode for Pick {
    fn encode(&self, e: &mut Encoder) {
        match self {
            Pick::Small(n) => {
                e.variant(0, 2);
                n.encode(e);
            }
            Pick::Raw(n) => {
                e.variant(1, 2);
                n.encode(e);
            }
        }
    }
}

impl Encode for IrqFlags {
    fn encode(&self, e: &mut Encoder) {
        match self {
            IrqFlags::Eventfds => e.variant(0, 3),
            IrqFlags::None => e.variant(1, 3),
            IrqFlags::Raw(f) => {
                e.variant(2, 3);
                f.encode(e);
            }
        }
    }
}

impl Encode for UnmapFlags {
    fn encode(&self, e: &mut Encoder) {
        match self {
            UnmapFlags::Empty => e.variant(0, 3),
            UnmapFlags::All => e.variant(1, 3),
            UnmapFlags::Raw(f) => {
                e.variant(2, 3);
                f.encode(e);
            }
        }
    }
}

impl Encode for Op {
    fn encode(&self, e: &mut Encoder) {
        const N: u32 = 8;
        match self {
            Op::Read {
                region,
                offset,
                width,
            } => {
                e.variant(0, N);
                region.encode(e);
                offset.encode(e);
                width.encode(e);
            }
            Op::Write {
                region,
                offset,
                width,
                byte,
            } => {
                e.variant(1, N);
                region.encode(e);
                offset.encode(e);
                width.encode(e);
                byte.encode(e);
            }
            Op::DmaMap {
                iova,
                size,
                offset,
                flags,
                file,
            } => {
                e.variant(2, N);
                iova.encode(e);
                size.encode(e);
                offset.encode(e);
                flags.encode(e);
                file.encode(e);
            }
            Op::DmaUnmap { iova, size, flags } => {
                e.variant(3, N);
                iova.encode(e);
                size.encode(e);
                flags.encode(e);
            }
            Op::SetIrqs {
                index,
                flags,
                start,
                count,
                fds,
            } => {
                e.variant(4, N);
                index.encode(e);
                flags.encode(e);
                start.encode(e);
                count.encode(e);
                fds.encode(e);
            }
            Op::Reset => e.variant(5, N),
            Op::ClientGone => e.variant(6, N),
            Op::FailDmaMap(f) => {
                e.variant(7, N);
                f.encode(e);
            }
        }
    }
}

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn bar(index: u8, kind: BarKind, shape: Shape) -> Bar {
    Bar { index, kind, shape }
}

fn vmm_pads(size: u64) -> Shape {
    Shape::VmmPads {
        size: n(size),
        mmap: true,
    }
}

fn kernel_pads(size: u64, real: u64) -> Shape {
    Shape::KernelPads {
        log2: (size.trailing_zeros() - 12) as u8,
        real: n(real),
    }
}

fn device(bars: Vec<Bar>) -> Device {
    Device {
        bars,
        msi: None,
        msix: None,
        pokes: vec![],
        config_size: ConfigSize::Pcie,
        others: vec![],
        irq_counts: [
            Some(Pick::Small(1)),
            Some(Pick::Small(1)),
            Some(Pick::Small(3)),
        ],
        mmap_fd: true,
    }
}

/// The unit tests' device: BAR0 64-bit VMM pads (0x5000, MSI-X table at 0x2000, PBA at
/// 0x3000), BAR2 64-bit prefetchable kernel pads (0x10000, memory 0x9000), BAR4 32-bit 256
/// bytes, a ROM; MSI (64-bit, 1 vector) and MSI-X (3 vectors).
fn standard() -> Device {
    let mut d = device(vec![
        bar(0, BarKind::Mem64, vmm_pads(0x5000)),
        bar(2, BarKind::Mem64Prefetchable, kernel_pads(0x10000, 0x9000)),
        bar(4, BarKind::Mem32, vmm_pads(0x100)),
    ]);
    d.msi = Some(Msi { control: 0x0080 });
    d.msix = Some(Msix {
        control: 0x0002,
        table: 0x2000,
        pba: 0x3000,
    });
    d.others = vec![(
        0,
        Shape::Raw {
            size: n(0x20000),
            flags: 0,
            offset: 6 << 40,
            sparse: None,
            real: n(0),
        },
    )];
    d
}

fn read(region: u8, offset: u64, width: usize) -> Op {
    Op::Read {
        region: Pick::Small(region),
        offset: n(offset),
        width: width_of(width),
    }
}

fn write(region: u8, offset: u64, width: usize, byte: u8) -> Op {
    Op::Write {
        region: Pick::Small(region),
        offset: n(offset),
        width: width_of(width),
        byte,
    }
}

fn width_of(w: usize) -> Pick {
    if w <= 8 {
        Pick::Small(w as u8)
    } else {
        Pick::Raw(w as u32)
    }
}

/// Reads and writes of widths 1, 2, 4 and 8 straddling `at` in BAR `region`, and a page-wide
/// read across it.
fn straddle(region: u8, at: u64) -> Vec<Op> {
    let mut v = Vec::new();
    for w in [1u64, 2, 4, 8] {
        for back in 0..w {
            v.push(read(region, at - back, w as usize));
            v.push(write(region, at - back, w as usize, 0xee));
        }
    }
    v.push(read(region, at - 2048, 4096));
    v
}

fn map(iova: u64, size: u64) -> Op {
    Op::DmaMap {
        iova: n(iova),
        size: n(size),
        offset: 0,
        flags: None,
        file: true,
    }
}

fn unmap(iova: u64, size: u64) -> Op {
    Op::DmaUnmap {
        iova: n(iova),
        size: n(size),
        flags: UnmapFlags::Empty,
    }
}

fn irqs(index: u8, flags: IrqFlags, start: u8, count: u8) -> Op {
    Op::SetIrqs {
        index,
        flags,
        start: Pick::Small(start),
        count: Pick::Small(count),
        fds: None,
    }
}

pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();

    // A client's session on the unit tests' device, then a second client's.
    let mut ops = vec![read(7, 0, 4), write(7, 4, 2, 6)];
    ops.extend(straddle(0, 0x5000));
    ops.extend([
        write(0, 0x2010, 4, 0x41),
        read(0, 0x2010, 4),
        read(0, 0x2000, 8),
        read(0, 0x3000, 8),
        write(0, 0x1ffc, 8, 0x42),
        read(2, 0x8ffc, 8),
        read(2, 0xa000, 4),
        read(4, 0xfc, 8),
        map(0x10000, 0x10000),
        irqs(2, IrqFlags::Eventfds, 0, 3),
        Op::Reset,
        Op::ClientGone,
        irqs(1, IrqFlags::Eventfds, 0, 1),
        map(0, 0x1000),
    ]);
    out.push((
        "standard-two-clients",
        Input {
            device: standard(),
            ops,
        },
    ));

    // The two padding contracts at the rig's length, and a GH-sized BAR.
    let len = 40 * MIB + 12 * KIB;
    let vmm = device(vec![bar(0, BarKind::Mem64Prefetchable, vmm_pads(len))]);
    out.push((
        "vmm-pads-40M12K",
        Input {
            device: vmm,
            ops: straddle(0, len),
        },
    ));
    let kernel = device(vec![bar(
        2,
        BarKind::Mem64Prefetchable,
        kernel_pads(64 * MIB, len),
    )]);
    out.push((
        "kernel-pads-40M12K",
        Input {
            device: kernel,
            ops: straddle(2, len),
        },
    ));
    let gh = device(vec![bar(
        2,
        BarKind::Mem64Prefetchable,
        vmm_pads(96 * GIB - 2 * MIB),
    )]);
    let mut ops = straddle(2, 96 * GIB - 2 * MIB);
    ops.push(read(2, 128 * GIB - 8, 8));
    ops.push(read(2, 128 * GIB - 4, 8));
    out.push((
        "gh-96G",
        Input {
            device: gh.clone(),
            ops,
        },
    ));

    // DMA: overlaps, cuts, overflow, no file, odd flags, UNMAP_ALL, host failures.
    let ops = vec![
        map(0x10000, 0x10000),
        map(0x20000, 0x1000),
        map(0xf000, 0x2000),
        map(u64::MAX - 0xfff, 0x2000),
        map(0x40000, 0),
        Op::DmaMap {
            iova: n(0x50000),
            size: n(0x1000),
            offset: 0,
            flags: None,
            file: false,
        },
        Op::DmaMap {
            iova: n(0x50000),
            size: n(0x1000),
            offset: u64::MAX,
            flags: Some(8),
            file: true,
        },
        unmap(0x18000, 0x1000),
        unmap(0x10000, 0x10800),
        unmap(u64::MAX, 2),
        unmap(0, 0x30000),
        map(0, 0x1000),
        Op::DmaUnmap {
            iova: n(0),
            size: n(0x1000),
            flags: UnmapFlags::Raw(2),
        },
        Op::DmaUnmap {
            iova: n(0),
            size: n(0),
            flags: UnmapFlags::All,
        },
        Op::FailDmaMap(true),
        map(0, 0x1000),
        Op::FailDmaMap(false),
        map(0x1000, 0x1000),
        Op::ClientGone,
        map(0x1000, 0x1000),
    ];
    out.push(("dma", Input { device: gh, ops }));

    // SET_IRQS: enable, the other kind while one is on, masking, off, out of range, indexes
    // not offered, descriptors that do not match, eventfds for no vector.
    let ops = vec![
        irqs(1, IrqFlags::Eventfds, 0, 1),
        irqs(2, IrqFlags::Eventfds, 0, 3),
        irqs(1, IrqFlags::None, 0, 1),
        irqs(1, IrqFlags::Raw(VFIO_IRQ_SET_DATA_NONE | 2), 0, 1),
        irqs(1, IrqFlags::None, 0, 0),
        irqs(2, IrqFlags::Eventfds, 1, 2),
        irqs(2, IrqFlags::Eventfds, 3, 1),
        irqs(0, IrqFlags::Eventfds, 0, 1),
        irqs(3, IrqFlags::Eventfds, 0, 1),
        irqs(255, IrqFlags::None, 0, 0),
        Op::SetIrqs {
            index: 2,
            flags: IrqFlags::Eventfds,
            start: Pick::Raw(u32::MAX),
            count: Pick::Small(2),
            fds: Some(2),
        },
        Op::SetIrqs {
            index: 2,
            flags: IrqFlags::Eventfds,
            start: Pick::Small(0),
            count: Pick::Small(2),
            fds: Some(1),
        },
        Op::ClientGone,
        irqs(2, IrqFlags::Eventfds, 0, 2),
        irqs(2, IrqFlags::None, 0, 0),
        // Enables MSI-X for one vector with no eventfd: turned off when the client leaves.
        irqs(2, IrqFlags::Eventfds, 1, 0),
    ];
    out.push((
        "irqs",
        Input {
            device: standard(),
            ops,
        },
    ));

    // No fd to map, a 256-byte config region, every config width.
    let mut d = standard();
    d.mmap_fd = false;
    d.config_size = ConfigSize::Conventional;
    let mut ops = Vec::new();
    for at in [0x10, 0x30, 0x3c, 0x50, 0x70, 0xfc, 0xfe, 0x100] {
        for w in [1, 2, 4, 8] {
            ops.push(read(7, at, w));
            ops.push(write(7, at, w, 0xff));
        }
    }
    out.push(("no-fd-conventional", Input { device: d, ops }));

    // Refused: a sparse area past the region, no config region, BAR 5 64-bit, a 32-bit BAR
    // of 4 GiB.
    let mut d = standard();
    d.bars[0].shape = Shape::Raw {
        size: n(0x5000),
        flags: RW | VFIO_REGION_INFO_FLAG_MMAP,
        offset: 0,
        sparse: Some(vec![(n(0x4000), n(0x2000))]),
        real: n(0x5000),
    };
    out.push((
        "refused-area-outside",
        Input {
            device: d,
            ops: vec![],
        },
    ));
    let mut d = standard();
    d.config_size = ConfigSize::Raw(n(0));
    out.push((
        "refused-no-config",
        Input {
            device: d,
            ops: vec![],
        },
    ));
    let d = device(vec![bar(5, BarKind::Mem64, vmm_pads(0x1000))]);
    out.push((
        "refused-bar5-64",
        Input {
            device: d,
            ops: vec![],
        },
    ));
    let d = device(vec![bar(1, BarKind::Mem32, vmm_pads(4 * GIB))]);
    out.push((
        "refused-32bit-4G",
        Input {
            device: d,
            ops: vec![],
        },
    ));

    out.into_iter()
        .map(|(name, input)| (name, crate::seed::encode(&input)))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn seeds_hold_the_invariants() {
        for (name, bytes) in super::seeds() {
            let input = crate::seed::decode::<super::Input>(&bytes).unwrap();
            let refused = name.starts_with("refused");
            assert_eq!(
                super::Harness::new(&input.device).is_none(),
                refused,
                "{name}"
            );
            super::run(&input);
        }
    }
}
