//! An emulated type-0 configuration space: 4 KiB of registers with per-bit write masks,
//! write-1-to-clear status bits, and BAR registers that implement all-ones sizing,
//! 64-bit pairs and relocation.

pub const NUM_REGS: usize = 1024;
pub const NUM_BARS: usize = 6;
/// Bytes per configuration register.
pub const REG_BYTES: u64 = 4;
/// Byte offset of BAR 0's register; the other five follow, one register each (`bar_offset`).
pub const BAR0_OFFSET: u64 = 0x10;
const BAR0_REG: usize = (BAR0_OFFSET / REG_BYTES) as usize;
/// Byte offset of the capability pointer (its low two bits are reserved).
pub const CAP_PTR_OFFSET: u64 = 0x34;
/// BAR register bit 0: the BAR decodes I/O space (else memory).
pub const BAR_IO_SPACE: u32 = 1 << 0;
/// A memory BAR's type field, bits 2:1: 0b00 is 32-bit, 0b10 is 64-bit (its upper half in the
/// next register); 0b01 (below 1 MiB, obsolete) and 0b11 are reserved.
pub const BAR_MEM_TYPE_MASK: u32 = 0b11 << 1;
pub const BAR_MEM_TYPE_64: u32 = 0b10 << 1;
/// A memory BAR's bit 3: reads have no side effects, so they may be prefetched.
pub const BAR_PREFETCHABLE: u32 = 1 << 3;
const COMMAND_REG: usize = 1;
pub const COMMAND_IO: u32 = 1 << 0;
pub const COMMAND_MEMORY: u32 = 1 << 1;
/// Command bits a guest may change: I/O, memory, bus master, parity, SERR#, INTx disable.
const COMMAND_WRITABLE: u32 = 0x0547;
/// Status bits that are write-1-to-clear (detected parity, SERR, aborts, master data parity).
const STATUS_W1C: u32 = 0xf900 << 16;
const CACHE_LINE_REG: usize = 3;
const INTERRUPT_LINE_REG: usize = 15;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    Io,
    Mem32,
    Mem64,
}

/// What a BAR decodes. `size` is a power of two (the caller rounds up and validates).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarSpec {
    pub size: u64,
    pub kind: BarKind,
    pub prefetchable: bool,
}

impl BarSpec {
    fn type_bits(&self) -> u32 {
        let prefetchable = if self.prefetchable {
            BAR_PREFETCHABLE
        } else {
            0
        };
        match self.kind {
            BarKind::Io => BAR_IO_SPACE,
            BarKind::Mem32 => prefetchable,
            BarKind::Mem64 => BAR_MEM_TYPE_64 | prefetchable,
        }
    }
}

/// Byte offset of BAR `index`'s register (the low half, for a 64-bit BAR); `index` <
/// `NUM_BARS`.
pub const fn bar_offset(index: usize) -> u64 {
    BAR0_OFFSET + index as u64 * REG_BYTES
}

/// The low or high dword written with all ones: the guest is sizing the BAR, and the address
/// it reads back is not one it wants decoded. No legitimate address has all bits set in either
/// half (the flag bits of the low half are never all ones), so the pattern is unambiguous.
const SIZING_PATTERN: u32 = 0xffff_ffff;

#[derive(Debug, Clone, Copy)]
struct Bar {
    spec: BarSpec,
    /// The address in the BAR register(s).
    addr: u64,
    /// Where the BAR decodes, for its owner to map it there: the address it was added at, or
    /// the last final address of `addr` (not mid-sizing) seen while its address space was
    /// enabled. Differs from `addr` while the guest is sizing or has decoding off, so the
    /// owner never maps a BAR at a sizing pattern or an address the guest has not finished
    /// writing.
    live: u64,
    /// Whether the last write to the low / high register was a sizing write.
    sizing: [bool; 2],
}

#[derive(Debug, Clone, Copy)]
enum BarSlot {
    Empty,
    Bar(Bar),
    /// The upper half of the 64-bit BAR in the slot below.
    Upper,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BarError {
    #[error("BAR {0} does not exist (0-5)")]
    Index(usize),
    #[error("BAR {index}: size {size:#x} is not a power of two of at least 16 bytes (4 for I/O)")]
    Size { index: usize, size: u64 },
    #[error("BAR {0}: a 64-bit BAR needs two registers (BAR 5 cannot be 64-bit)")]
    NoUpperHalf(usize),
    #[error("BAR {0} overlaps a BAR that is already set")]
    Taken(usize),
    #[error("BAR {0}: a 32-bit BAR must be smaller than 4 GiB")]
    TooLarge(usize),
}

pub struct ConfigSpace {
    regs: Vec<u32>,
    writable: Vec<u32>,
    w1c: Vec<u32>,
    bars: [BarSlot; NUM_BARS],
}

impl Default for ConfigSpace {
    fn default() -> Self {
        Self::new()
    }
}

impl ConfigSpace {
    pub fn new() -> Self {
        let mut c = ConfigSpace {
            regs: vec![0; NUM_REGS],
            writable: vec![0; NUM_REGS],
            w1c: vec![0; NUM_REGS],
            bars: [BarSlot::Empty; NUM_BARS],
        };
        c.writable[COMMAND_REG] = COMMAND_WRITABLE;
        c.w1c[COMMAND_REG] = STATUS_W1C;
        c.writable[CACHE_LINE_REG] = 0x0000_ffff;
        c.writable[INTERRUPT_LINE_REG] = 0x0000_00ff;
        c
    }

    pub fn set_ids(&mut self, vendor: u16, device: u16) {
        self.regs[0] = u32::from(vendor) | (u32::from(device) << 16);
    }

    /// Class code, subclass, programming interface and revision.
    pub fn set_class(&mut self, class: u8, subclass: u8, prog_if: u8, revision: u8) {
        self.regs[2] = u32::from_be_bytes([class, subclass, prog_if, revision]);
    }

    pub fn set_header_type(&mut self, header_type: u8) {
        self.regs[3] = (self.regs[3] & 0xff00_ffff) | (u32::from(header_type) << 16);
    }

    pub fn command(&self) -> u32 {
        self.regs[COMMAND_REG] & 0xffff
    }

    /// Declares BAR `index` (and `index + 1` for a 64-bit BAR) at guest address `addr`
    /// (aligned down to `size`). The owner maps it there; from then on, [`ConfigSpace::bar`]
    /// follows the guest's moves once the address is final: not during sizing, and only while
    /// the command register enables the BAR's address space (a move made with decoding off
    /// takes effect when decoding is turned on).
    pub fn add_bar(&mut self, index: usize, spec: BarSpec, addr: u64) -> Result<(), BarError> {
        if index >= NUM_BARS {
            return Err(BarError::Index(index));
        }
        let min = if spec.kind == BarKind::Io { 4 } else { 16 };
        if !spec.size.is_power_of_two() || spec.size < min {
            return Err(BarError::Size {
                index,
                size: spec.size,
            });
        }
        if spec.kind != BarKind::Mem64 && spec.size > u64::from(u32::MAX) {
            return Err(BarError::TooLarge(index));
        }
        let is64 = spec.kind == BarKind::Mem64;
        if is64 && index + 1 >= NUM_BARS {
            return Err(BarError::NoUpperHalf(index));
        }
        let taken = |s: &BarSlot| !matches!(s, BarSlot::Empty);
        if taken(&self.bars[index]) || (is64 && taken(&self.bars[index + 1])) {
            return Err(BarError::Taken(index));
        }
        let addr = addr & !(spec.size - 1);
        self.bars[index] = BarSlot::Bar(Bar {
            spec,
            addr,
            live: addr,
            sizing: [false; 2],
        });
        if is64 {
            self.bars[index + 1] = BarSlot::Upper;
        }
        Ok(())
    }

    /// The BAR's spec and the base it decodes at (see [`ConfigSpace::add_bar`]).
    pub fn bar(&self, index: usize) -> Option<(BarSpec, u64)> {
        match self.bars.get(index)? {
            BarSlot::Bar(b) => Some((b.spec, b.live)),
            _ => None,
        }
    }

    /// The final address in BAR `index`'s register(s) now, `None` while the guest is sizing
    /// it (or there is no BAR): unlike [`ConfigSpace::bar`], it follows writes made with
    /// decoding off, so the owner can tell a BAR the guest moved from one it only parked.
    pub fn bar_register(&self, index: usize) -> Option<u64> {
        match self.bars.get(index)? {
            BarSlot::Bar(b) if !b.sizing.contains(&true) => Some(b.addr),
            _ => None,
        }
    }

    /// Whether the command register enables the address space BAR `index` decodes in.
    pub fn bar_decoding(&self, index: usize) -> bool {
        match self.bars.get(index) {
            Some(BarSlot::Bar(b)) => self.decoding(&b.spec),
            _ => false,
        }
    }

    pub fn read(&self, reg: usize) -> u32 {
        if reg >= NUM_REGS {
            return 0xffff_ffff;
        }
        match reg.checked_sub(BAR0_REG).filter(|i| *i < NUM_BARS) {
            Some(i) => self.read_bar(i),
            None => self.regs[reg],
        }
    }

    fn read_bar(&self, i: usize) -> u32 {
        match self.bars[i] {
            BarSlot::Empty => 0,
            BarSlot::Bar(Bar { spec, addr, .. }) => {
                // A BAR of 4 GiB or more has no size bits in its low register.
                let size_mask = !(spec.size as u32).wrapping_sub(1);
                let flag_bits = if spec.kind == BarKind::Io { 0x3 } else { 0xf };
                (addr as u32 & size_mask & !flag_bits) | spec.type_bits()
            }
            BarSlot::Upper => match self.bars[i - 1] {
                BarSlot::Bar(b) => (b.addr >> 32) as u32,
                _ => 0,
            },
        }
    }

    /// Writes `data` at byte `offset` of register `reg`.
    pub fn write(&mut self, reg: usize, offset: u64, data: &[u8]) {
        let Some(value) = merge(self.read(reg), offset, data) else {
            return;
        };
        if reg >= NUM_REGS {
            return;
        }
        let lanes = lane_mask(offset, data.len());
        if let Some(i) = reg.checked_sub(BAR0_REG).filter(|i| *i < NUM_BARS) {
            self.write_bar(i, value);
            return;
        }
        let old = self.regs[reg];
        let cleared = self.w1c[reg] & lanes & value;
        let w = self.writable[reg];
        self.regs[reg] = ((old & !w) | (value & w)) & !cleared;
        if reg == COMMAND_REG {
            // Turning decoding on makes the addresses programmed meanwhile live.
            (0..NUM_BARS).for_each(|i| self.sync_bar(i));
        }
    }

    fn decoding(&self, spec: &BarSpec) -> bool {
        let bit = if spec.kind == BarKind::Io {
            COMMAND_IO
        } else {
            COMMAND_MEMORY
        };
        self.command() & bit != 0
    }

    fn write_bar(&mut self, i: usize, value: u32) {
        let (owner, half) = match self.bars[i] {
            BarSlot::Empty => return,
            BarSlot::Bar(_) => (i, 0),
            BarSlot::Upper => (i - 1, 1),
        };
        let BarSlot::Bar(bar) = &mut self.bars[owner] else {
            return;
        };
        let new = if half == 1 {
            (bar.addr & 0xffff_ffff) | (u64::from(value) << 32)
        } else {
            let flag_bits = if bar.spec.kind == BarKind::Io {
                0x3
            } else {
                0xf
            };
            (bar.addr & !0xffff_ffff) | u64::from(value & !flag_bits)
        };
        bar.addr = new & !(bar.spec.size - 1);
        bar.sizing[half] = value == SIZING_PATTERN;
        self.sync_bar(owner);
    }

    /// Makes BAR `i` decode at the address in its register if that address is final and the
    /// BAR's address space is enabled.
    fn sync_bar(&mut self, i: usize) {
        let BarSlot::Bar(bar) = self.bars[i] else {
            return;
        };
        if bar.sizing.contains(&true) || !self.decoding(&bar.spec) {
            return;
        }
        self.bars[i] = BarSlot::Bar(Bar {
            live: bar.addr,
            ..bar
        });
    }
}

/// Replaces the bytes of `old` at `offset` with `data`; `None` for widths other than 1, 2 or 4
/// or an access that would cross the register.
pub fn merge(old: u32, offset: u64, data: &[u8]) -> Option<u32> {
    if !matches!(data.len(), 1 | 2 | 4) || offset.checked_add(data.len() as u64)? > 4 {
        return None;
    }
    let mut b = old.to_le_bytes();
    b[offset as usize..offset as usize + data.len()].copy_from_slice(data);
    Some(u32::from_le_bytes(b))
}

fn lane_mask(offset: u64, len: usize) -> u32 {
    let bits = (len as u32) * 8;
    let m = if bits >= 32 {
        u32::MAX
    } else {
        (1u32 << bits) - 1
    };
    m << (offset * 8)
}

/// Extracts `data.len()` bytes at `offset` from a register value; all-ones for bad accesses.
pub fn extract(value: u32, offset: u64, data: &mut [u8]) {
    let fits = offset
        .checked_add(data.len() as u64)
        .is_some_and(|end| end <= 4);
    if !matches!(data.len(), 1 | 2 | 4) || !fits {
        data.fill(0xff);
        return;
    }
    let b = value.to_le_bytes();
    data.copy_from_slice(&b[offset as usize..offset as usize + data.len()]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem64(size: u64) -> BarSpec {
        BarSpec {
            size,
            kind: BarKind::Mem64,
            prefetchable: true,
        }
    }

    #[test]
    fn ids_and_class_are_read_only() {
        let mut c = ConfigSpace::new();
        c.set_ids(0x8086, 0x0d57);
        c.set_class(0x06, 0, 0, 1);
        c.write(0, 0, &[0xff, 0xff, 0xff, 0xff]);
        c.write(2, 0, &[0, 0, 0, 0]);
        assert_eq!(c.read(0), 0x0d57_8086);
        assert_eq!(c.read(2), 0x0600_0001);
    }

    #[test]
    fn command_is_masked_and_status_is_w1c() {
        let mut c = ConfigSpace::new();
        c.regs[1] = 0x8000_0000; // detected parity error
        c.write(1, 0, &[0xff, 0xff]);
        assert_eq!(c.command(), COMMAND_WRITABLE);
        assert_eq!(
            c.read(1) >> 16,
            0x8000,
            "writing the command word leaves status alone"
        );
        c.write(1, 2, &[0x00, 0x80]);
        assert_eq!(c.read(1) >> 16, 0);
    }

    const MEM_ON: [u8; 2] = [0x02, 0x00];
    const IO_ON: [u8; 2] = [0x01, 0x00];
    const ALL_ONES: [u8; 4] = [0xff; 4];

    fn dword(v: u32) -> [u8; 4] {
        v.to_le_bytes()
    }

    #[test]
    fn bar64_sizing_reads_size_and_type_bits() {
        let mut c = ConfigSpace::new();
        c.add_bar(2, mem64(128 << 30), 0x80_0000_0000).unwrap();
        assert_eq!(c.read(6), 0x0000_000c, "64-bit prefetchable");
        assert_eq!(c.read(7), 0x80);
        c.write(6, 0, &ALL_ONES);
        c.write(7, 0, &ALL_ONES);
        assert_eq!(c.read(6), 0x0000_000c, "low bits below 4 GiB are size bits");
        assert_eq!(c.read(7), 0xffff_ffe0);
        c.write(6, 0, &dword(0));
        c.write(7, 0, &dword(0x80));
        assert_eq!(c.read(7), 0x80);
        assert_eq!(c.bar(2).unwrap().1, 0x80_0000_0000);
    }

    #[test]
    fn move_with_decoding_off_takes_effect_when_decoding_turns_on() {
        let mut c = ConfigSpace::new();
        c.add_bar(2, mem64(128 << 30), 0x80_0000_0000).unwrap();
        c.write(7, 0, &dword(0x40));
        c.write(6, 0, &dword(0));
        assert_eq!(
            c.bar(2).unwrap().1,
            0x80_0000_0000,
            "still decoding at the old base"
        );
        c.write(1, 0, &MEM_ON);
        assert_eq!(c.bar(2).unwrap().1, 0x40_0000_0000);
        // With decoding on, each register write that moves the BAR takes effect.
        c.write(7, 0, &dword(0x60));
        assert_eq!(c.bar(2).unwrap().1, 0x60_0000_0000);
    }

    #[test]
    fn sizing_with_decoding_on_is_not_a_move() {
        let mut c = ConfigSpace::new();
        c.add_bar(0, mem64(1 << 20), 0x20_0000_0000).unwrap();
        c.write(1, 0, &MEM_ON);
        c.write(4, 0, &ALL_ONES);
        assert_eq!(c.bar(0).unwrap().1, 0x20_0000_0000, "mid-sizing");
        c.write(5, 0, &ALL_ONES);
        assert_eq!(c.read(4), 0xfff0_000c);
        assert_eq!(c.read(5), 0xffff_ffff);
        assert_eq!(c.bar(0).unwrap().1, 0x20_0000_0000, "mid-sizing");
        c.write(4, 0, &dword(0x0000_000c));
        assert_eq!(
            c.bar(0).unwrap().1,
            0x20_0000_0000,
            "high half still sizing"
        );
        c.write(5, 0, &dword(0x20));
        assert_eq!(c.bar(0).unwrap().1, 0x20_0000_0000, "back where it was");
    }

    #[test]
    fn bar64_just_below_a_4g_boundary_is_a_real_address() {
        // Top-down allocation puts small BARs at addresses whose low dword has every address
        // bit set; only the exact all-ones pattern means sizing.
        let mut c = ConfigSpace::new();
        c.add_bar(0, mem64(4096), 0x20_0000_0000).unwrap();
        c.write(1, 0, &MEM_ON);
        c.write(5, 0, &dword(0x5f));
        c.write(4, 0, &dword(0xffff_f00c));
        assert_eq!(c.bar(0).unwrap().1, 0x5f_ffff_f000);
        assert_eq!(c.read(4), 0xffff_f00c);
    }

    #[test]
    fn type_and_prefetchable_bits_are_read_only() {
        let mut c = ConfigSpace::new();
        c.add_bar(0, mem64(4096), 0x1_0000_0000).unwrap();
        let mem32 = BarSpec {
            size: 4096,
            kind: BarKind::Mem32,
            prefetchable: false,
        };
        c.add_bar(2, mem32, 0xc000_0000).unwrap();
        c.write(4, 0, &dword(0x1000));
        c.write(6, 0, &dword(0xd000_100f));
        assert_eq!(c.read(4), 0x0000_100c);
        assert_eq!(c.read(6), 0xd000_1000);
        c.write(4, 0, &[0x00]);
        assert_eq!(c.read(4) & 0xf, 0xc);
    }

    #[test]
    fn io_bar_follows_the_io_enable_bit() {
        let mut c = ConfigSpace::new();
        let io = BarSpec {
            size: 32,
            kind: BarKind::Io,
            prefetchable: false,
        };
        c.add_bar(1, io, 0x1000).unwrap();
        c.write(1, 0, &MEM_ON);
        c.write(5, 0, &dword(0x2000));
        assert_eq!(c.bar(1).unwrap().1, 0x1000, "memory decoding is not I/O");
        c.write(1, 0, &IO_ON);
        assert_eq!(c.bar(1), Some((io, 0x2000)));
    }

    #[test]
    fn bar32_and_io_sizing() {
        let mut c = ConfigSpace::new();
        c.add_bar(
            0,
            BarSpec {
                size: 256,
                kind: BarKind::Mem32,
                prefetchable: false,
            },
            0xc000_0000,
        )
        .unwrap();
        c.add_bar(
            1,
            BarSpec {
                size: 32,
                kind: BarKind::Io,
                prefetchable: false,
            },
            0x1000,
        )
        .unwrap();
        c.write(4, 0, &[0xff; 4]);
        assert_eq!(c.read(4), 0xffff_ff00);
        c.write(5, 0, &[0xff; 4]);
        assert_eq!(c.read(5), 0xffff_ffe1);
        c.write(4, 1, &[0x12]);
        assert_eq!(c.read(4), 0xffff_1200);
    }

    #[test]
    fn bad_bars_are_refused() {
        let mut c = ConfigSpace::new();
        let s = |size| BarSpec {
            size,
            kind: BarKind::Mem32,
            prefetchable: false,
        };
        assert_eq!(c.add_bar(6, s(4096), 0), Err(BarError::Index(6)));
        assert!(c.add_bar(0, s(3000), 0).is_err());
        assert!(c.add_bar(0, s(8), 0).is_err());
        assert!(c.add_bar(0, s(1 << 32), 0).is_err());
        assert_eq!(c.add_bar(5, mem64(4096), 0), Err(BarError::NoUpperHalf(5)));
        c.add_bar(0, mem64(4096), 0).unwrap();
        assert_eq!(c.add_bar(1, s(4096), 0), Err(BarError::Taken(1)));
    }

    #[test]
    fn hostile_accesses() {
        let mut c = ConfigSpace::new();
        assert_eq!(c.read(5000), 0xffff_ffff);
        for (reg, offset, data) in [
            (5000, 0, &[1][..]),
            (1, 3, &[1, 2]),
            (1, u64::MAX, &[1]),
            (1, 0, &[1, 2, 3]),
            (1, 0, &[]),
        ] {
            c.write(reg, offset, data);
        }
        assert_eq!(c.read(1), 0, "no bad write reached the command register");
        let mut d = [0u8; 3];
        extract(0x1234_5678, 0, &mut d);
        assert_eq!(d, [0xff; 3]);
        let mut d = [0u8; 2];
        extract(0x1234_5678, 3, &mut d);
        assert_eq!(d, [0xff; 2]);
        extract(0x1234_5678, 2, &mut d);
        assert_eq!(d, [0x34, 0x12]);
        extract(0x1234_5678, u64::MAX, &mut d);
        assert_eq!(d, [0xff; 2]);
        assert_eq!(merge(0, u64::MAX, &[1]), None);
    }
}
