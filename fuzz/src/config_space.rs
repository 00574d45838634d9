//! Target `config_space`: the guest's view of a passed-through function's configuration space
//! (`pci::vfio::PassthroughConfig`) with its emulated MSI/MSI-X capabilities and the MSI-X
//! table behind a BAR, against a fake device whose config bytes, BAR registers, region sizes,
//! sparse areas and capability list come from the input. The device is set up exactly the way
//! `vmm::passthrough::assign` does it (capabilities, interrupt caps, `pci::vfio::probe_bars` with the
//! MSI-X ranges kept out of the mappings, guest BARs allocated naturally aligned), then the
//! guest does a
//! sequence of accesses of every width, BAR sizing and moves, MSI and MSI-X programming and
//! BAR accesses (answered like `vmm::passthrough::bar::BarTrap`: the MSI-X table first, then
//! `pci::vfio::dispatch`).
//!
//! Checked after every step: BAR registers keep their type bits and read back size-aligned
//! addresses, sizing reads back the size, a BAR's decoded address (where the VMM maps it)
//! changes only to the final, aligned address in its register and only while its address
//! space is enabled, the ROM BAR, interrupt pin and extended space read 0, the guest's
//! capability walk shows exactly the exposed capabilities, the device never receives a write
//! to a register ghvmm owns, the interrupt updates form a sane sequence (routes only for
//! enabled vectors, all routes gone before a disable) that matches the MSI-X table, table
//! writes read back, and no region access leaves its region.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;

use arbitrary::Arbitrary;
use pci::config::{bar_offset, NUM_BARS};
use pci::vfio::config::{read_bytes, CAP_MSI, CAP_MSIX};
use pci::vfio::dispatch;
use pci::vfio::interrupts::BarRange;
use pci::vfio::{
    probe_bars, BarLayout, FunctionInfo, InterruptCaps, Interrupts, IrqKind, IrqSink, IrqUpdate,
    Limits, MsiMessage, PassthroughConfig, RegionInfo, RegionIo, SharedInterrupts, SparseArea,
};
use pci::{BarKind, BarSpec, PciDevice};

use crate::seed::{Encode, Encoder};

#[derive(Arbitrary, Debug, Clone, PartialEq)]
pub struct Input {
    pub device: Device,
    pub ops: Vec<Op>,
}

/// The fake function. Its config space starts zeroed; `ids`..`cap_ptr` fill the header, each
/// `Cap` writes a capability header and its first two dwords at its offset, each BAR its
/// register, then `pokes` overwrite single bytes (hostile lists: loops, pointers into the
/// header, overlaps).
#[derive(Arbitrary, Debug, Clone, PartialEq)]
pub struct Device {
    pub ids: u32,
    /// Command (low half) and status (high half; bit 4 = capability list).
    pub command_status: u32,
    pub class_rev: u32,
    pub cap_ptr: u8,
    pub caps: Vec<Cap>,
    pub bars: Vec<Bar>,
    pub pokes: Vec<(u8, u8)>,
    /// A 4 KiB config region (PCIe); else 256 bytes, and reads past them fail.
    pub extended: bool,
    /// After this many successful reads, every read fails (a device that went away).
    pub reads_fail_after: Option<u16>,
    pub writes_fail: bool,
}

#[derive(Arbitrary, Debug, Clone, PartialEq)]
pub struct Cap {
    pub offset: u8,
    pub id: u8,
    pub next: u8,
    pub control: u16,
    pub dw1: u32,
    pub dw2: u32,
}

#[derive(Arbitrary, Debug, Clone, PartialEq)]
pub struct Bar {
    /// BAR number (modulo 6).
    pub index: u8,
    /// The device's BAR register: its type bits decide 32/64-bit, I/O, prefetchable.
    pub reg: u32,
    /// Region size: 2^(size_log2 % 40) - (size_sub modulo that), 0 when `size_log2` is 255.
    pub size_log2: u8,
    pub size_sub: u32,
    pub mmap: bool,
    /// Sparse-mmap areas as fractions of the region (`u32::MAX` means "to the end").
    pub sparse: Option<Vec<(u32, u32)>>,
}

#[derive(Arbitrary, Debug, Clone, PartialEq)]
pub enum Op {
    /// `read_bytes` at any offset and width 0-8 (only 1, 2 and 4 inside a dword are real).
    Read {
        offset: u16,
        width: u8,
    },
    /// `write_config_register` with any register, byte offset and width 0-8.
    Write {
        reg: u16,
        offset: u8,
        width: u8,
        value: u64,
    },
    /// The guest sizes BAR `bar % 6`: all ones, read back, restore.
    SizeBar {
        bar: u8,
    },
    /// The guest programs BAR `bar % 6` with `addr` (low dword, then high for 64-bit BARs).
    MoveBar {
        bar: u8,
        addr: u64,
    },
    Command {
        value: u16,
    },
    /// Linux's MSI sequence: address, data, mask, then control (enable, MME).
    Msi {
        addr: u64,
        data: u16,
        mask: u32,
        mme: u8,
        enable: bool,
    },
    MsixControl {
        value: u16,
    },
    /// An MSI-X table entry field through the BAR (dword or qword), read back.
    Table {
        entry: u16,
        field: u8,
        qword: bool,
        value: u64,
    },
    BarRead {
        bar: u8,
        offset: u64,
        width: u8,
    },
    BarWrite {
        bar: u8,
        offset: u64,
        width: u8,
        value: u64,
    },
}

const PAGE: u64 = 4096;
/// Segment 0's windows when GH slots exist (the smaller 32-bit one), as vmm's layout has them.
const LIMITS: Limits = Limits {
    page_size: PAGE,
    mmio32_size: 256 << 20,
    mmio64_size: 256 << 30,
};
const MMIO32_BASE: u64 = 0xc000_0000;
const MMIO64_BASE: u64 = 0x80_0000_0000;

// ---------------------------------------------------------------------------------------------
// The fake device: config region and BAR regions.

struct ConfigState {
    bytes: Vec<u8>,
    reads_left: Option<u32>,
    /// While the harness checks invariants, reads do not count towards `reads_left`.
    frozen: bool,
    writes_fail: bool,
    writes: Vec<(u64, Vec<u8>)>,
}

#[derive(Clone)]
struct FakeConfig(Arc<Mutex<ConfigState>>);

impl FakeConfig {
    fn healthy(&self) -> bool {
        self.0.lock().reads_left != Some(0)
    }

    fn freeze(&self, frozen: bool) {
        self.0.lock().frozen = frozen;
    }
}

impl RegionIo for FakeConfig {
    fn read(&self, offset: u64, data: &mut [u8]) -> std::io::Result<()> {
        let mut s = self.0.lock();
        let frozen = s.frozen;
        match &mut s.reads_left {
            Some(0) => return Err(std::io::Error::from_raw_os_error(19)),
            Some(n) if !frozen => *n -= 1,
            _ => {}
        }
        let o = usize::try_from(offset).unwrap_or(usize::MAX);
        match o
            .checked_add(data.len())
            .and_then(|end| s.bytes.get(o..end))
        {
            Some(b) => {
                data.copy_from_slice(b);
                Ok(())
            }
            None => Err(std::io::Error::from_raw_os_error(22)),
        }
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let mut s = self.0.lock();
        s.writes.push((offset, data.to_vec()));
        if s.writes_fail {
            return Err(std::io::Error::from_raw_os_error(5));
        }
        // Registers are read-only but the command word, like a device that decodes only what
        // it is told to.
        for (i, b) in data.iter().enumerate() {
            let at = offset + i as u64;
            if (4..6).contains(&at) {
                s.bytes[at as usize] = *b;
            }
        }
        Ok(())
    }
}

/// A BAR's region: `size` bytes whose contents are a function of the offset; accesses past the
/// region are a bug in ghvmm (on a real VFIO fd they would reach the next region).
struct FakeRegion {
    bar: usize,
    size: u64,
    written: Mutex<BTreeMap<u64, u8>>,
}

fn region_byte(bar: usize, offset: u64) -> u8 {
    (offset.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8 ^ bar as u8
}

impl FakeRegion {
    fn check(&self, offset: u64, len: usize) {
        let end = offset.checked_add(len as u64);
        assert!(
            end.is_some_and(|e| e <= self.size),
            "BAR {}: region access {offset:#x}+{len} past the region ({:#x} bytes)",
            self.bar,
            self.size
        );
    }
}

impl RegionIo for FakeRegion {
    fn read(&self, offset: u64, data: &mut [u8]) -> std::io::Result<()> {
        self.check(offset, data.len());
        let w = self.written.lock();
        for (i, d) in data.iter_mut().enumerate() {
            let o = offset + i as u64;
            *d = w
                .get(&o)
                .copied()
                .unwrap_or_else(|| region_byte(self.bar, o));
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.check(offset, data.len());
        let mut w = self.written.lock();
        for (i, d) in data.iter().enumerate() {
            w.insert(offset + i as u64, *d);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The interrupt side: a sink that checks the update sequence as the VMM would apply it.

#[derive(Default)]
struct KindState {
    vectors: Option<u16>,
    routes: BTreeMap<u16, MsiMessage>,
}

#[derive(Default)]
struct SinkState {
    msi: KindState,
    msix: KindState,
    msi_max: u16,
    msix_vectors: u16,
}

#[derive(Clone)]
struct CheckingSink(Arc<Mutex<SinkState>>);

impl IrqSink for CheckingSink {
    fn apply(&mut self, updates: Vec<IrqUpdate>) {
        let mut s = self.0.lock();
        let (msi_max, msix_vectors) = (s.msi_max, s.msix_vectors);
        for u in updates {
            let kind = match u {
                IrqUpdate::Enable { kind, .. }
                | IrqUpdate::Disable { kind }
                | IrqUpdate::Route { kind, .. } => kind,
            };
            let k = match kind {
                IrqKind::Msi => &mut s.msi,
                IrqKind::Msix => &mut s.msix,
            };
            match u {
                IrqUpdate::Enable { vectors, .. } => {
                    assert!(k.vectors.is_none(), "{kind:?} enabled twice");
                    assert!(vectors >= 1, "{kind:?} enabled with no vector");
                    match kind {
                        IrqKind::Msi => assert!(
                            vectors.is_power_of_two() && vectors <= msi_max && vectors <= 32,
                            "MSI enabled with {vectors} vectors (capable of {msi_max})"
                        ),
                        IrqKind::Msix => assert_eq!(vectors, msix_vectors, "MSI-X vectors"),
                    }
                    k.vectors = Some(vectors);
                }
                IrqUpdate::Disable { .. } => {
                    assert!(k.vectors.is_some(), "{kind:?} disabled while not enabled");
                    assert!(
                        k.routes.is_empty(),
                        "{kind:?} disabled with vectors still routed: {:?}",
                        k.routes
                    );
                    k.vectors = None;
                }
                IrqUpdate::Route {
                    vector, message, ..
                } => {
                    let n = k.vectors.expect("a route for a disabled interrupt kind");
                    assert!(vector < n, "{kind:?} route for vector {vector} of {n}");
                    match message {
                        Some(m) => k.routes.insert(vector, m),
                        None => k.routes.remove(&vector),
                    };
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Setting the device up, as vmm::passthrough::assign does.

struct GuestBar {
    spec: BarSpec,
    layout: BarLayout,
    region: FakeRegion,
}

struct Harness {
    cfg: PassthroughConfig,
    dev: FakeConfig,
    irq: SharedInterrupts,
    sink: Arc<Mutex<SinkState>>,
    bars: BTreeMap<usize, GuestBar>,
    /// The BAR whose trap consults the MSI-X table (the table's BAR, if it exists).
    table_bar: Option<usize>,
    /// Where each BAR decoded after the last config write (where the VMM has it mapped).
    mapped: BTreeMap<usize, u64>,
}

fn region_size(b: &Bar) -> u64 {
    if b.size_log2 == 255 {
        return 0;
    }
    let top = 1u64 << (b.size_log2 % 40);
    top - (u64::from(b.size_sub) % top)
}

fn fraction(x: u32, of: u64) -> u64 {
    if x == u32::MAX {
        of
    } else {
        ((u128::from(x) * u128::from(of)) >> 32) as u64
    }
}

fn bar_number(b: &Bar) -> usize {
    usize::from(b.index) % NUM_BARS
}

/// The fake function as `probe_bars` reads it: its config region, and a region for each BAR
/// the input lists (the last one listed for a number wins).
struct FakeFunction<'a> {
    config: &'a FakeConfig,
    regions: BTreeMap<usize, &'a Bar>,
}

impl FunctionInfo for FakeFunction<'_> {
    fn read_config(&self, offset: u64, data: &mut [u8]) -> std::io::Result<()> {
        self.config.read(offset, data)
    }

    fn bar_region(&self, bar: usize) -> Option<RegionInfo> {
        let b = self.regions.get(&bar)?;
        let size = region_size(b);
        let sparse = b.sparse.as_ref().map(|areas| {
            areas
                .iter()
                .map(|&(o, l)| {
                    let offset = fraction(o, size);
                    SparseArea {
                        offset,
                        size: fraction(l, size - offset),
                    }
                })
                .collect()
        });
        Some(RegionInfo {
            size,
            mmap: b.mmap,
            sparse,
        })
    }
}

fn config_bytes(d: &Device) -> Vec<u8> {
    let mut b = vec![0u8; if d.extended { 4096 } else { 256 }];
    b[0..4].copy_from_slice(&d.ids.to_le_bytes());
    b[4..8].copy_from_slice(&d.command_status.to_le_bytes());
    b[8..12].copy_from_slice(&d.class_rev.to_le_bytes());
    b[0x34] = d.cap_ptr;
    let mut put = |at: usize, bytes: &[u8]| {
        for (i, v) in bytes.iter().enumerate() {
            if let Some(x) = b.get_mut(at + i).filter(|_| at + i < 256) {
                *x = *v;
            }
        }
    };
    for c in &d.caps {
        let mut cap = vec![c.id, c.next];
        cap.extend_from_slice(&c.control.to_le_bytes());
        cap.extend_from_slice(&c.dw1.to_le_bytes());
        cap.extend_from_slice(&c.dw2.to_le_bytes());
        put(usize::from(c.offset), &cap);
    }
    for bar in &d.bars {
        put(bar_offset(bar_number(bar)) as usize, &bar.reg.to_le_bytes());
    }
    for &(at, v) in &d.pokes {
        b[usize::from(at)] = v;
    }
    b
}

impl Harness {
    fn new(d: &Device) -> Option<Harness> {
        let dev = FakeConfig(Arc::new(Mutex::new(ConfigState {
            bytes: config_bytes(d),
            reads_left: d.reads_fail_after.map(u32::from),
            frozen: false,
            writes_fail: d.writes_fail,
            writes: Vec::new(),
        })));
        let caps = pci::vfio::config::exposed_capabilities(&dev);
        let mut irq_caps = InterruptCaps::from_device(&caps, &dev);
        let function = FakeFunction {
            config: &dev,
            regions: d.bars.iter().map(|b| (bar_number(b), b)).collect(),
        };
        // As `assign`: MSI-X whose table or PBA is in no BAR ghvmm offers is hidden.
        if pci::vfio::check_msix_placement(&function, &irq_caps.msix_ranges()).is_err() {
            irq_caps.hide_msix();
        }
        let sink = Arc::new(Mutex::new(SinkState {
            msi_max: irq_caps.msi().map_or(0, |m| m.max_vectors()),
            msix_vectors: irq_caps.msix().map_or(0, |m| m.vectors()),
            ..Default::default()
        }));
        let msix = irq_caps.msix_ranges();
        let irq = Interrupts::new(irq_caps, Box::new(CheckingSink(sink.clone()))).shared();

        // A refused device fails the assignment, as in the VMM.
        let probe = probe_bars(&function, &msix, &LIMITS).ok()?;
        let mut next32 = MMIO32_BASE;
        let mut next64 = MMIO64_BASE;
        let mut bars = BTreeMap::new();
        let mut specs = Vec::new();
        for bar in probe.bars {
            let bar_size = bar.layout.bar_size;
            let (next, end) = if bar.is_64bit() {
                (&mut next64, MMIO64_BASE + LIMITS.mmio64_size)
            } else {
                (&mut next32, MMIO32_BASE + LIMITS.mmio32_size)
            };
            let base = next.checked_next_multiple_of(bar_size)?;
            if base.checked_add(bar_size)? > end {
                return None; // no BAR space left: assignment fails
            }
            *next = base + bar_size;
            let spec = bar.spec();
            specs.push((bar.index, spec, base));
            bars.insert(
                bar.index,
                GuestBar {
                    spec,
                    region: FakeRegion {
                        bar: bar.index,
                        size: bar.region.size,
                        written: Mutex::new(BTreeMap::new()),
                    },
                    layout: bar.layout,
                },
            );
        }
        let cfg = PassthroughConfig::new(Box::new(dev.clone()), &specs, irq.clone()).ok()?;
        let table_bar = msix.first().map(|t| t.bar).filter(|b| bars.contains_key(b));
        let mapped = specs.iter().map(|&(i, _, base)| (i, base)).collect();
        Some(Harness {
            cfg,
            dev,
            irq,
            sink,
            bars,
            table_bar,
            mapped,
        })
    }

    fn read_reg(&mut self, reg: usize) -> u32 {
        self.cfg.read_config_register(reg)
    }

    /// A config write; every BAR move it makes is checked and applied to the model.
    fn write(&mut self, reg: usize, offset: u64, data: &[u8]) {
        self.cfg.write_config_register(reg, offset, data);
        self.dev.freeze(true);
        // The decode bits are emulated: they read right even from a failed device.
        let command = self.read_reg(1);
        for i in 0..6 {
            let Some((spec, base)) = self.cfg.bar(i) else {
                continue;
            };
            let old = self.mapped.insert(i, base);
            if old == Some(base) {
                continue;
            }
            let m = format!("BAR {i}: {old:x?} -> {base:#x}");
            assert_eq!(spec, self.bars[&i].spec, "{m}");
            assert_eq!(base % spec.size, 0, "move to an unaligned base: {m}");
            let bit = if spec.kind == BarKind::Io { 1 } else { 2 };
            assert_ne!(
                command & bit,
                0,
                "move with its address space disabled: {m}"
            );
            let flags = if spec.kind == BarKind::Io { 0x3 } else { 0xf };
            let mut reg_addr = u64::from(self.read_reg(4 + i) & !flags);
            if spec.kind == BarKind::Mem64 {
                reg_addr |= u64::from(self.read_reg(5 + i)) << 32;
            }
            assert_eq!(
                reg_addr, base,
                "move to an address not in the register: {m}"
            );
        }
        self.dev.freeze(false);
    }

    fn bar_read(&self, bar: usize, at: u64, data: &mut [u8]) {
        let Some(b) = self.bars.get(&bar) else {
            return;
        };
        if self.table_bar == Some(bar) && self.irq.lock().table_read(bar, at, data) {
            return;
        }
        let _ = dispatch::read(&b.layout, &b.region, at, data);
    }

    fn bar_write(&self, bar: usize, at: u64, data: &[u8]) {
        let Some(b) = self.bars.get(&bar) else {
            return;
        };
        if self.table_bar == Some(bar) && self.irq.lock().table_write(bar, at, data) {
            return;
        }
        let _ = dispatch::write(&b.layout, &b.region, at, data);
    }

    fn msix_table(&self) -> Option<BarRange> {
        self.irq.lock().caps().msix_ranges().first().copied()
    }

    // -----------------------------------------------------------------------------------------
    // Invariants.

    fn check(&mut self) {
        self.dev.freeze(true);
        self.check_bars();
        self.check_hidden();
        self.check_device_writes();
        self.check_routes();
        if self.dev.healthy() {
            self.check_capability_walk();
        }
        self.dev.freeze(false);
    }

    fn check_bars(&mut self) {
        let indexes: Vec<usize> = (0..6).collect();
        let mut upper = [false; 6];
        for &i in &indexes {
            let Some((spec, base)) = self.cfg.bar(i) else {
                continue;
            };
            let gb = &self.bars[&i];
            assert_eq!(spec, gb.spec, "BAR {i} spec");
            assert_eq!(
                self.mapped.get(&i),
                Some(&base),
                "BAR {i} moved outside a config write"
            );
            let low = self.read_reg(4 + i);
            let (flags, type_bits) = match spec.kind {
                BarKind::Io => (0x3, 0x1),
                BarKind::Mem32 => (0xf, u32::from(spec.prefetchable) << 3),
                BarKind::Mem64 => (0xf, 0x4 | u32::from(spec.prefetchable) << 3),
            };
            assert_eq!(low & flags, type_bits, "BAR {i}: type bits changed");
            let mut addr = u64::from(low & !flags);
            if spec.kind == BarKind::Mem64 {
                upper[i + 1] = true;
                addr |= u64::from(self.read_reg(5 + i)) << 32;
            }
            assert_eq!(
                addr % spec.size,
                0,
                "BAR {i}: address {addr:#x} not aligned to its size {:#x}",
                spec.size
            );
        }
        for i in indexes {
            if self.cfg.bar(i).is_none() && !upper[i] {
                assert_eq!(self.read_reg(4 + i), 0, "BAR {i} absent but reads non-zero");
            }
        }
        // Decoding BARs are exactly those whose address space the command register enables.
        let command = self.read_reg(1) & 3;
        for (i, spec, _) in self.cfg.decoding_bars() {
            let bit = if spec.kind == BarKind::Io { 1 } else { 2 };
            assert_ne!(command & bit, 0, "BAR {i} decodes with its space disabled");
        }
    }

    fn check_hidden(&mut self) {
        assert_eq!(self.read_reg(12), 0, "expansion ROM BAR is hidden");
        assert_eq!(
            (self.read_reg(15) >> 8) & 0xff,
            0,
            "interrupt pin must be 0"
        );
        for reg in [64, 65, 100, 1023, 1024, 5000] {
            assert_eq!(
                self.read_reg(reg),
                0,
                "extended config register {reg} is hidden"
            );
        }
    }

    /// Byte ranges ghvmm owns: none of their writes may reach the device.
    fn owned_ranges(&self) -> Vec<(u64, u64, &'static str)> {
        let mut r = vec![
            (0x10, 0x28, "BAR"),
            (0x30, 0x38, "ROM BAR or capability pointer"),
            (0x3c, 0x40, "interrupt line/pin"),
            (0x100, u64::MAX, "extended config space"),
        ];
        let irq = self.irq.lock();
        let caps = irq.caps();
        for c in self.cfg.capabilities() {
            let at = u64::from(c.offset);
            match c.id {
                CAP_MSI => {
                    if let Some(m) = caps.msi() {
                        r.push((at, at + m.size(), "MSI capability"));
                    }
                }
                CAP_MSIX => r.push((at, at + 12, "MSI-X capability")),
                _ => {}
            }
        }
        r
    }

    fn check_device_writes(&mut self) {
        let owned = self.owned_ranges();
        let writes = std::mem::take(&mut self.dev.0.lock().writes);
        for (off, data) in writes {
            let end = off + data.len() as u64;
            for &(s, e, what) in &owned {
                assert!(
                    end <= s || off >= e,
                    "write of {data:?} at {off:#x} reached the device's {what} ({s:#x}-{e:#x})"
                );
            }
        }
    }

    /// The routes the VMM holds match what the guest programmed into the MSI-X table.
    fn check_routes(&self) {
        let irq = self.irq.lock();
        let sink = self.sink.lock();
        if let Some(m) = irq.caps().msix() {
            let live = m.enabled() && m.control() & (1 << 14) == 0;
            for v in 0..m.vectors() {
                let e = m.entry(usize::from(v)).unwrap();
                let want = (live && !e.masked).then_some(MsiMessage {
                    addr: e.addr,
                    data: e.data,
                });
                assert_eq!(
                    sink.msix.routes.get(&v).copied(),
                    want,
                    "MSI-X vector {v}: the VMM's route differs from the table"
                );
            }
            assert_eq!(
                sink.msix.vectors.is_some(),
                m.enabled(),
                "MSI-X enable state"
            );
        }
        if let Some(m) = irq.caps().msi() {
            assert_eq!(sink.msi.vectors.is_some(), m.enabled(), "MSI enable state");
        }
    }

    /// Walking the list from the capability pointer, as a guest does, gives exactly the
    /// exposed capabilities, each with an id ghvmm supports, and ends.
    fn check_capability_walk(&mut self) {
        let caps = self.cfg.capabilities().to_vec();
        let status_has_list = self.read_reg(1) & (1 << 20) != 0;
        assert_eq!(
            status_has_list,
            !caps.is_empty(),
            "status capability-list bit"
        );
        let mut ptr = self.read_reg(13) & 0xff;
        for c in &caps {
            assert_eq!(ptr, u32::from(c.offset), "capability walk: {caps:?}");
            assert!(
                c.offset >= 0x40 && c.offset % 4 == 0,
                "capability at {:#x}",
                c.offset
            );
            let header = self.read_reg(usize::from(c.offset) / 4);
            assert_eq!(header & 0xff, u32::from(c.id), "capability id at {ptr:#x}");
            assert!(
                [0x01, 0x05, 0x10, 0x11].contains(&c.id),
                "unsupported capability {:#x} exposed",
                c.id
            );
            ptr = (header >> 8) & 0xff;
        }
        assert_eq!(ptr, 0, "capability list does not end: {caps:?}");
        // An MSI-X capability the guest sees has its table and PBA in BARs the guest sees:
        // otherwise its programming would reach nothing.
        if self.cfg.capability(CAP_MSIX).is_some() {
            let ranges = self.irq.lock().caps().msix_ranges();
            assert!(
                self.table_bar.is_some(),
                "MSI-X exposed, its table in no guest BAR: {ranges:?}"
            );
            assert!(
                ranges.iter().all(|r| self.bars.contains_key(&r.bar)),
                "MSI-X exposed, its PBA in no guest BAR: {ranges:?}"
            );
        }
    }

    // -----------------------------------------------------------------------------------------
    // Operations.

    fn op(&mut self, op: &Op) {
        match *op {
            Op::Read { offset, width } => {
                let mut d = vec![0xa5u8; usize::from(width % 9)];
                read_bytes(&mut self.cfg, u64::from(offset), &mut d);
                let fits = offset % 4 + u16::from(width % 9) <= 4;
                if !matches!(d.len(), 1 | 2 | 4) || !fits {
                    assert!(d.iter().all(|b| *b == 0xff), "bad access reads all ones");
                } else if self.dev.healthy() {
                    // The same bytes as the whole register.
                    self.dev.freeze(true);
                    let v = self.read_reg(usize::from(offset / 4)).to_le_bytes();
                    self.dev.freeze(false);
                    let s = usize::from(offset % 4);
                    assert_eq!(d, v[s..s + d.len()], "partial read at {offset:#x}");
                }
            }
            Op::Write {
                reg,
                offset,
                width,
                value,
            } => {
                let data = &value.to_le_bytes()[..usize::from(width % 9)];
                let valid =
                    matches!(data.len(), 1 | 2 | 4) && u64::from(offset) + data.len() as u64 <= 4;
                let before = (!valid).then(|| self.snapshot());
                self.write(usize::from(reg), u64::from(offset), data);
                if let Some(before) = before {
                    if self.dev.healthy() {
                        assert_eq!(
                            before,
                            self.snapshot(),
                            "a malformed write changed something"
                        );
                    }
                    assert!(
                        self.dev.0.lock().writes.is_empty(),
                        "a malformed write reached the device"
                    );
                }
            }
            Op::SizeBar { bar } => self.size_bar(usize::from(bar % 6)),
            Op::MoveBar { bar, addr } => self.move_bar(usize::from(bar % 6), addr),
            Op::Command { value } => self.write(1, 0, &value.to_le_bytes()),
            Op::Msi {
                addr,
                data,
                mask,
                mme,
                enable,
            } => {
                let Some(c) = self.cfg.capability(CAP_MSI) else {
                    return;
                };
                let reg = usize::from(c.offset) / 4;
                let is64 = self.read_reg(reg) & (1 << 23) != 0;
                let pvm = self.read_reg(reg) & (1 << 24) != 0;
                self.write(reg + 1, 0, &(addr as u32).to_le_bytes());
                let mut next = reg + 2;
                if is64 {
                    self.write(next, 0, &((addr >> 32) as u32).to_le_bytes());
                    next += 1;
                }
                self.write(next, 0, &data.to_le_bytes());
                if pvm {
                    self.write(next + 1, 0, &mask.to_le_bytes());
                }
                let control = u16::from(enable) | (u16::from(mme & 7) << 4);
                self.write(reg, 2, &control.to_le_bytes());
                let read = (self.read_reg(reg) >> 16) as u16;
                assert_eq!(read & 1, u16::from(enable), "MSI enable bit reads back");
                assert!(
                    (read >> 4) & 7 <= (read >> 1) & 7,
                    "MME above MMC: {read:#x}"
                );
            }
            Op::MsixControl { value } => {
                if let Some(c) = self.cfg.capability(CAP_MSIX) {
                    let reg = usize::from(c.offset) / 4;
                    let before = self.read_reg(reg) >> 16;
                    self.write(reg, 2, &value.to_le_bytes());
                    let after = self.read_reg(reg) >> 16;
                    assert_eq!(
                        after & 0x7ff,
                        before & 0x7ff,
                        "MSI-X table size is read-only"
                    );
                    assert_eq!(
                        after & 0xc000,
                        u32::from(value) & 0xc000,
                        "enable/mask bits"
                    );
                }
            }
            Op::Table {
                entry,
                field,
                qword,
                value,
            } => self.table(entry, field, qword, value),
            Op::BarRead { bar, offset, width } => {
                let bar = usize::from(bar % 6);
                if let Some(b) = self.bars.get(&bar) {
                    let at = offset % (b.spec.size + 16);
                    let mut d = vec![0u8; usize::from(width % 9)];
                    self.bar_read(bar, at, &mut d);
                }
            }
            Op::BarWrite {
                bar,
                offset,
                width,
                value,
            } => {
                let bar = usize::from(bar % 6);
                if let Some(b) = self.bars.get(&bar) {
                    let at = offset % (b.spec.size + 16);
                    self.bar_write(bar, at, &value.to_le_bytes()[..usize::from(width % 9)]);
                }
            }
        }
    }

    /// Every register's guest-visible value (the emulated state a malformed write must not
    /// change).
    fn snapshot(&mut self) -> Vec<u32> {
        self.dev.freeze(true);
        let regs = (0..64).map(|r| self.read_reg(r)).collect();
        self.dev.freeze(false);
        regs
    }

    fn size_bar(&mut self, i: usize) {
        let Some((spec, _)) = self.cfg.bar(i) else {
            return;
        };
        let is64 = spec.kind == BarKind::Mem64;
        let old_low = self.read_reg(4 + i);
        let old_high = if is64 { self.read_reg(5 + i) } else { 0 };
        self.write(4 + i, 0, &[0xff; 4]);
        if is64 {
            self.write(5 + i, 0, &[0xff; 4]);
        }
        let mask = !(spec.size - 1);
        let (flags, type_bits) = match spec.kind {
            BarKind::Io => (0x3u32, 0x1u32),
            _ => (0xf, old_low & 0xf),
        };
        assert_eq!(
            self.read_reg(4 + i),
            (mask as u32 & !flags) | type_bits,
            "BAR {i} sizing (low) for size {:#x}",
            spec.size
        );
        if is64 {
            assert_eq!(
                self.read_reg(5 + i),
                (mask >> 32) as u32,
                "BAR {i} sizing (high)"
            );
        }
        self.write(4 + i, 0, &old_low.to_le_bytes());
        if is64 {
            self.write(5 + i, 0, &old_high.to_le_bytes());
        }
        assert_eq!(self.read_reg(4 + i), old_low, "BAR {i} restored (low)");
        if is64 {
            assert_eq!(self.read_reg(5 + i), old_high, "BAR {i} restored (high)");
        }
    }

    fn move_bar(&mut self, i: usize, addr: u64) {
        let Some((spec, _)) = self.cfg.bar(i) else {
            return;
        };
        let is64 = spec.kind == BarKind::Mem64;
        let flags: u64 = if spec.kind == BarKind::Io { 0x3 } else { 0xf };
        let addr = if is64 { addr } else { addr & 0xffff_ffff };
        self.write(4 + i, 0, &(addr as u32).to_le_bytes());
        if is64 {
            self.write(5 + i, 0, &((addr >> 32) as u32).to_le_bytes());
        }
        let mut got = u64::from(self.read_reg(4 + i)) & !flags;
        if is64 {
            got |= u64::from(self.read_reg(5 + i)) << 32;
        }
        assert_eq!(
            got,
            addr & !flags & !(spec.size - 1),
            "BAR {i} moved to {addr:#x}"
        );
        let decoding = self.cfg.decoding_bars().iter().any(|(b, _, _)| *b == i);
        // A final address (not the sizing pattern in either half) is where the BAR decodes.
        let sizing = addr as u32 == u32::MAX || (is64 && (addr >> 32) as u32 == u32::MAX);
        if decoding && !sizing {
            assert_eq!(
                self.cfg.bar(i).map(|b| b.1),
                Some(got),
                "BAR {i} decodes at {got:#x}"
            );
        }
    }

    fn table(&mut self, entry: u16, field: u8, qword: bool, value: u64) {
        let (Some(t), Some(bar)) = (self.msix_table(), self.table_bar) else {
            return;
        };
        let vectors = t.size / 16;
        let entry = u64::from(entry) % (vectors + 1);
        let at = t.offset + entry * 16 + u64::from(field % 4) * 4;
        let width = if qword { 8 } else { 4 };
        let data = &value.to_le_bytes()[..width];
        self.bar_write(bar, at, data);
        if !t.contains(bar, at, width) {
            return;
        }
        let mut back = vec![0u8; width];
        self.bar_read(bar, at, &mut back);
        for (k, chunk) in back.chunks(4).enumerate() {
            let f = (u64::from(field % 4) + k as u64) % 4;
            let wrote = u32::from_le_bytes(data[4 * k..4 * k + 4].try_into().unwrap());
            let want = if f == 3 { wrote & 1 } else { wrote };
            assert_eq!(
                u32::from_le_bytes(chunk.try_into().unwrap()),
                want,
                "MSI-X table dword at {:#x}",
                at + 4 * k as u64
            );
        }
    }
}

pub fn run(input: &Input) {
    let Some(mut h) = Harness::new(&input.device) else {
        return;
    };
    h.check();
    for op in input.ops.iter().take(256) {
        h.op(op);
        h.check();
    }
    // Unplug: the sink is told to undo everything.
    h.irq.lock().shutdown();
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
        self.ids.encode(e);
        self.command_status.encode(e);
        self.class_rev.encode(e);
        self.cap_ptr.encode(e);
        self.caps.encode(e);
        self.bars.encode(e);
        self.pokes.encode(e);
        self.extended.encode(e);
        self.reads_fail_after.encode(e);
        self.writes_fail.encode(e);
    }
}

impl Encode for Cap {
    fn encode(&self, e: &mut Encoder) {
        self.offset.encode(e);
        self.id.encode(e);
        self.next.encode(e);
        self.control.encode(e);
        self.dw1.encode(e);
        self.dw2.encode(e);
    }
}

impl Encode for Bar {
    fn encode(&self, e: &mut Encoder) {
        self.index.encode(e);
        self.reg.encode(e);
        self.size_log2.encode(e);
        self.size_sub.encode(e);
        self.mmap.encode(e);
        self.sparse.encode(e);
    }
}

impl Encode for Op {
    fn encode(&self, e: &mut Encoder) {
        const N: u32 = 10;
        match self {
            Op::Read { offset, width } => {
                e.variant(0, N);
                offset.encode(e);
                width.encode(e);
            }
            Op::Write {
                reg,
                offset,
                width,
                value,
            } => {
                e.variant(1, N);
                reg.encode(e);
                offset.encode(e);
                width.encode(e);
                value.encode(e);
            }
            Op::SizeBar { bar } => {
                e.variant(2, N);
                bar.encode(e);
            }
            Op::MoveBar { bar, addr } => {
                e.variant(3, N);
                bar.encode(e);
                addr.encode(e);
            }
            Op::Command { value } => {
                e.variant(4, N);
                value.encode(e);
            }
            Op::Msi {
                addr,
                data,
                mask,
                mme,
                enable,
            } => {
                e.variant(5, N);
                addr.encode(e);
                data.encode(e);
                mask.encode(e);
                mme.encode(e);
                enable.encode(e);
            }
            Op::MsixControl { value } => {
                e.variant(6, N);
                value.encode(e);
            }
            Op::Table {
                entry,
                field,
                qword,
                value,
            } => {
                e.variant(7, N);
                entry.encode(e);
                field.encode(e);
                qword.encode(e);
                value.encode(e);
            }
            Op::BarRead { bar, offset, width } => {
                e.variant(8, N);
                bar.encode(e);
                offset.encode(e);
                width.encode(e);
            }
            Op::BarWrite {
                bar,
                offset,
                width,
                value,
            } => {
                e.variant(9, N);
                bar.encode(e);
                offset.encode(e);
                width.encode(e);
                value.encode(e);
            }
        }
    }
}

fn cap(offset: u8, id: u8, next: u8, control: u16, dw1: u32, dw2: u32) -> Cap {
    Cap {
        offset,
        id,
        next,
        control,
        dw1,
        dw2,
    }
}

/// A region of exactly `size` bytes (a power of two or not).
fn bar(index: u8, reg: u32, size: u64, sparse: Option<Vec<(u32, u32)>>) -> Bar {
    let log2 = 64 - (size - 1).leading_zeros();
    let top = 1u64 << log2;
    Bar {
        index,
        reg,
        size_log2: log2 as u8,
        size_sub: (top - size) as u32,
        mmap: true,
        sparse,
    }
}

fn device(caps: Vec<Cap>, bars: Vec<Bar>) -> Device {
    Device {
        ids: 0x1110_1af4,
        command_status: 0x0010_0000,
        class_rev: 0x0500_0001,
        cap_ptr: caps.first().map_or(0, |c| c.offset),
        caps,
        bars,
        pokes: vec![],
        extended: true,
        reads_fail_after: None,
        writes_fail: false,
    }
}

/// Linux's probe: size every BAR, then program and enable them.
fn linux_probe() -> Vec<Op> {
    let mut ops: Vec<Op> = (0..6).map(|bar| Op::SizeBar { bar }).collect();
    ops.push(Op::Command { value: 0 });
    ops.push(Op::MoveBar {
        bar: 0,
        addr: 0xc100_0000,
    });
    ops.push(Op::MoveBar {
        bar: 2,
        addr: 0x90_0000_0000,
    });
    ops.push(Op::Command { value: 0x0006 });
    ops
}

fn msix_enable(vectors: u16) -> Vec<Op> {
    let mut ops = vec![Op::MsixControl { value: 0xc000 }];
    for v in 0..vectors {
        ops.push(Op::Table {
            entry: v,
            field: 0,
            qword: true,
            value: 0xfee0_0000 | (u64::from(v) << 12),
        });
        ops.push(Op::Table {
            entry: v,
            field: 2,
            qword: false,
            value: 0x4040 + u64::from(v),
        });
        ops.push(Op::Table {
            entry: v,
            field: 3,
            qword: false,
            value: 0,
        });
    }
    ops.push(Op::MsixControl { value: 0x8000 });
    ops
}

pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    // ivshmem on vfio-pci: BAR0 256 B registers, BAR1 MSI-X (2 vectors), BAR2 64-bit memory.
    let ivshmem = device(
        vec![cap(0x40, 0x11, 0, 1, 0x0000_0001, 0x0000_0801)],
        vec![
            bar(0, 0, 256, None),
            bar(1, 0, 4096, None),
            bar(2, 0xc, 4 << 20, None),
        ],
    );
    let mut ops = linux_probe();
    ops.extend(msix_enable(2));
    ops.push(Op::BarRead {
        bar: 0,
        offset: 252,
        width: 8,
    });
    ops.push(Op::BarWrite {
        bar: 0,
        offset: 255,
        width: 2,
        value: 0xffff,
    });
    out.push((
        "ivshmem-probe-msix",
        Input {
            device: ivshmem.clone(),
            ops,
        },
    ));
    // e1000e: PM, MSI (64-bit), PCIe, MSI-X (5 vectors in BAR3), four BARs.
    let e1000e = device(
        vec![
            cap(0xc8, 0x01, 0xd0, 0x0023, 0, 0),
            cap(0xd0, 0x05, 0xe0, 0x0080, 0, 0),
            cap(0xe0, 0x10, 0xa0, 0x0002, 0, 0),
            cap(0xa0, 0x11, 0x00, 0x0004, 0x0000_0003, 0x0000_2003),
        ],
        vec![
            bar(0, 0, 128 << 10, None),
            bar(1, 0, 128 << 10, None),
            bar(2, 1, 32, None),
            bar(3, 0, 16 << 10, None),
        ],
    );
    let mut ops = linux_probe();
    ops.extend(msix_enable(5));
    ops.push(Op::Table {
        entry: 3,
        field: 3,
        qword: false,
        value: 1,
    });
    ops.push(Op::MsixControl { value: 0x0000 });
    out.push((
        "e1000e-msix",
        Input {
            device: e1000e.clone(),
            ops,
        },
    ));
    let ops = vec![
        Op::Msi {
            addr: 0xfee0_1000,
            data: 0x4031,
            mask: 0,
            mme: 0,
            enable: true,
        },
        Op::Msi {
            addr: 0xfee0_2000,
            data: 0x4032,
            mask: 0,
            mme: 0,
            enable: false,
        },
    ];
    out.push((
        "e1000e-msi",
        Input {
            device: e1000e,
            ops,
        },
    ));
    // A GPU: BAR0 16 MiB registers, BAR2 128 GiB 64-bit prefetchable memory (the kernel pads:
    // one sparse area over the real 96 GiB), MSI with 4 vectors and per-vector masking.
    let gpu = device(
        vec![
            cap(0x60, 0x01, 0x68, 0x0003, 0, 0),
            cap(0x68, 0x05, 0x80, 0x0184, 0, 0),
            cap(0x80, 0x10, 0x00, 0x0002, 0, 0),
        ],
        vec![
            bar(0, 0, 16 << 20, None),
            bar(2, 0xc, 128 << 30, Some(vec![(0, 0xbfff_0000)])),
        ],
    );
    let mut ops = linux_probe();
    ops.push(Op::Msi {
        addr: 0xfee0_0000,
        data: 0x4043,
        mask: 0b0010,
        mme: 3,
        enable: true,
    });
    ops.push(Op::BarRead {
        bar: 2,
        offset: 96 << 30,
        width: 8,
    });
    out.push((
        "gpu-msi-multi",
        Input {
            device: gpu.clone(),
            ops,
        },
    ));
    // Odd widths and unaligned offsets everywhere.
    let ops = [0u16, 1, 2, 3, 0x10, 0x13, 0x3d, 0x62, 0xfe, 0x100]
        .iter()
        .flat_map(|&offset| {
            [1u8, 2, 3, 4, 8].into_iter().flat_map(move |width| {
                [
                    Op::Read { offset, width },
                    Op::Write {
                        reg: offset / 4,
                        offset: (offset % 4) as u8,
                        width,
                        value: u64::MAX,
                    },
                ]
            })
        })
        .collect();
    out.push((
        "odd-widths",
        Input {
            device: ivshmem.clone(),
            ops,
        },
    ));
    // Hostile capability lists: a loop, a pointer into the header, no list bit.
    let mut looped = gpu.clone();
    looped.pokes = vec![(0x81, 0x60)];
    out.push((
        "cap-loop",
        Input {
            device: looped,
            ops: vec![],
        },
    ));
    let mut into_header = gpu.clone();
    into_header.cap_ptr = 0x20;
    out.push((
        "cap-into-header",
        Input {
            device: into_header,
            ops: vec![],
        },
    ));
    let mut no_list = e1000e_like_without_list();
    no_list.reads_fail_after = Some(40);
    out.push((
        "device-dies",
        Input {
            device: no_list,
            ops: linux_probe(),
        },
    ));
    // Sizing and moving with decoding off, then on.
    let ops = vec![
        Op::Command { value: 0 },
        Op::MoveBar {
            bar: 2,
            addr: 0x40_0000_0000,
        },
        Op::SizeBar { bar: 2 },
        Op::Command { value: 2 },
        Op::MoveBar {
            bar: 2,
            addr: 0x5f_ffff_f00c,
        },
    ];
    out.push(("bar-moves", Input { device: gpu, ops }));
    out.into_iter()
        .map(|(name, input)| (name, crate::seed::encode(&input)))
        .collect()
}

fn e1000e_like_without_list() -> Device {
    let mut d = device(
        vec![cap(0x40, 0x11, 0, 3, 0x0000_0002, 0x0000_0802)],
        vec![bar(0, 0, 8192, None), bar(2, 0, 4096, None)],
    );
    d.command_status = 0;
    d
}

#[cfg(test)]
mod tests {
    #[test]
    fn seeds_hold_the_invariants() {
        for (name, bytes) in super::seeds() {
            let input = crate::seed::decode::<super::Input>(&bytes).unwrap();
            assert!(
                super::Harness::new(&input.device).is_some() || name == "device-dies",
                "{name}"
            );
            super::run(&input);
        }
    }
}
