//! MSI of a passed-through function, emulated: ghvmm owns the whole capability (control,
//! address, data, per-vector mask) and turns the guest's programming into decisions for the
//! VMM, exactly like MSI-X (`msix.rs`): enable N vectors on the device, route each vector to
//! the message the guest programmed, or to nothing while it is masked.

use super::irq_types::{IrqKind, IrqUpdate, MsiMessage};
use crate::config::merge;

const CONTROL_ENABLE: u16 = 1 << 0;
const CONTROL_MMC_SHIFT: u16 = 1;
const CONTROL_MME_SHIFT: u16 = 4;
const CONTROL_64BIT: u16 = 1 << 7;
const CONTROL_PER_VECTOR_MASK: u16 = 1 << 8;
/// The largest multiple-message encoding the spec defines (32 vectors).
const MAX_LOG2_VECTORS: u16 = 5;

/// Which register of the capability a dword offset names; the layout depends on the
/// 64-bit and per-vector-masking bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reg {
    Header,
    AddrLo,
    AddrHi,
    Data,
    Mask,
    Pending,
}

/// The MSI capability's emulated state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsiState {
    /// Capable bits (64-bit, per-vector mask, multiple message capable) plus the guest's
    /// enable and multiple message enable.
    control: u16,
    addr: u64,
    data: u16,
    mask: u32,
    /// Vectors given to the device when the guest enabled MSI (0 while disabled).
    active: u16,
    applied: Vec<Option<MsiMessage>>,
}

impl MsiState {
    /// From the device's message control word; only its capability bits are kept.
    pub fn new(device_control: u16) -> Self {
        let mmc = ((device_control >> CONTROL_MMC_SHIFT) & 7).min(MAX_LOG2_VECTORS);
        let control = (device_control & (CONTROL_64BIT | CONTROL_PER_VECTOR_MASK))
            | (mmc << CONTROL_MMC_SHIFT);
        MsiState {
            control,
            addr: 0,
            data: 0,
            mask: 0,
            active: 0,
            applied: Vec::new(),
        }
    }

    fn is_64bit(&self) -> bool {
        self.control & CONTROL_64BIT != 0
    }

    fn per_vector_mask(&self) -> bool {
        self.control & CONTROL_PER_VECTOR_MASK != 0
    }

    pub fn enabled(&self) -> bool {
        self.control & CONTROL_ENABLE != 0
    }

    /// The vectors the device supports (multiple message capable).
    pub fn max_vectors(&self) -> u16 {
        1 << ((self.control >> CONTROL_MMC_SHIFT) & 7)
    }

    /// The vectors the guest asked for (multiple message enable).
    fn requested_vectors(&self) -> u16 {
        1 << ((self.control >> CONTROL_MME_SHIFT) & 7)
    }

    /// The capability's size in bytes (config space it covers).
    pub fn size(&self) -> u64 {
        match (self.is_64bit(), self.per_vector_mask()) {
            (false, false) => 0x0c,
            (true, false) => 0x10,
            (false, true) => 0x14,
            (true, true) => 0x18,
        }
    }

    fn reg(&self, rel: u64) -> Option<Reg> {
        Some(match (rel, self.is_64bit(), self.per_vector_mask()) {
            (0, _, _) => Reg::Header,
            (4, _, _) => Reg::AddrLo,
            (8, true, _) => Reg::AddrHi,
            (8, false, _) | (0x0c, true, _) => Reg::Data,
            (0x0c, false, true) | (0x10, true, true) => Reg::Mask,
            (0x10, false, true) | (0x14, true, true) => Reg::Pending,
            _ => return None,
        })
    }

    /// The dword at `rel` (a multiple of 4 inside the capability). The header's low half
    /// (id, next) is the caller's; `device_header` supplies it.
    pub fn read(&self, rel: u64, device_header: u32) -> u32 {
        match self.reg(rel) {
            Some(Reg::Header) => (device_header & 0xffff) | (u32::from(self.control) << 16),
            Some(Reg::AddrLo) => self.addr as u32,
            Some(Reg::AddrHi) => (self.addr >> 32) as u32,
            Some(Reg::Data) => u32::from(self.data),
            Some(Reg::Mask) => self.mask,
            // Pending bits are the device's business; with vectors routed by eventfd nothing
            // is ever pending in the emulated capability.
            Some(Reg::Pending) | None => 0,
        }
    }

    /// A guest write of `data` at byte `offset` of the dword at `rel`.
    pub fn write(&mut self, rel: u64, offset: u64, data: &[u8]) -> Vec<IrqUpdate> {
        let Some(reg) = self.reg(rel) else {
            return Vec::new();
        };
        let Some(value) = merge(self.read(rel, 0), offset, data) else {
            return Vec::new();
        };
        match reg {
            Reg::Header => return self.write_control((value >> 16) as u16),
            Reg::AddrLo => self.addr = (self.addr & !0xffff_ffff) | u64::from(value & !3),
            Reg::AddrHi => self.addr = (self.addr & 0xffff_ffff) | (u64::from(value) << 32),
            Reg::Data => self.data = value as u16,
            Reg::Mask => self.mask = value,
            Reg::Pending => {}
        }
        self.reroute()
    }

    fn write_control(&mut self, value: u16) -> Vec<IrqUpdate> {
        let was = self.enabled();
        // The guest may ask for at most what the device is capable of.
        let mme = ((value >> CONTROL_MME_SHIFT) & 7).min((self.control >> CONTROL_MMC_SHIFT) & 7);
        let writable = CONTROL_ENABLE | (7 << CONTROL_MME_SHIFT);
        self.control =
            (self.control & !writable) | (value & CONTROL_ENABLE) | (mme << CONTROL_MME_SHIFT);
        let mut updates = Vec::new();
        match (was, self.enabled()) {
            (false, true) => {
                // The vector count is fixed while enabled (changing MME then is undefined).
                self.active = self.requested_vectors();
                self.applied = vec![None; usize::from(self.active)];
                updates.push(IrqUpdate::Enable {
                    kind: IrqKind::Msi,
                    vectors: self.active,
                });
            }
            (true, false) => {
                updates.extend(self.reroute());
                self.active = 0;
                self.applied.clear();
                updates.push(IrqUpdate::Disable { kind: IrqKind::Msi });
                return updates;
            }
            _ => {}
        }
        updates.extend(self.reroute());
        updates
    }

    fn wanted(&self, vector: u16) -> Option<MsiMessage> {
        let masked = self.per_vector_mask() && self.mask & (1 << vector) != 0;
        // Multiple messages: the function puts the vector number in the data's low bits.
        let low = u32::from(self.active.max(1) - 1);
        (self.enabled() && !masked).then_some(MsiMessage {
            addr: self.addr,
            data: (u32::from(self.data) & !low) | u32::from(vector),
        })
    }

    fn reroute(&mut self) -> Vec<IrqUpdate> {
        let mut updates = Vec::new();
        for v in 0..self.active {
            let want = self.wanted(v);
            let slot = &mut self.applied[usize::from(v)];
            if *slot != want {
                *slot = want;
                updates.push(IrqUpdate::Route {
                    kind: IrqKind::Msi,
                    vector: v,
                    message: want,
                });
            }
        }
        updates
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(vector: u16, m: Option<(u64, u32)>) -> IrqUpdate {
        IrqUpdate::Route {
            kind: IrqKind::Msi,
            vector,
            message: m.map(|(addr, data)| MsiMessage { addr, data }),
        }
    }

    #[test]
    fn layouts_follow_the_capability_bits() {
        assert_eq!(MsiState::new(0).size(), 0x0c);
        assert_eq!(MsiState::new(CONTROL_64BIT).size(), 0x10);
        assert_eq!(MsiState::new(CONTROL_PER_VECTOR_MASK).size(), 0x14);
        let s = MsiState::new(CONTROL_64BIT | CONTROL_PER_VECTOR_MASK | (3 << 1));
        assert_eq!(s.size(), 0x18);
        assert_eq!(s.max_vectors(), 8);
        assert_eq!(s.reg(0x0c), Some(Reg::Data));
        assert_eq!(s.reg(0x10), Some(Reg::Mask));
        assert_eq!(s.reg(0x18), None);
        let s = MsiState::new(CONTROL_PER_VECTOR_MASK);
        assert_eq!(s.reg(0x08), Some(Reg::Data));
        assert_eq!(s.reg(0x0c), Some(Reg::Mask));
        assert_eq!(s.reg(0x10), Some(Reg::Pending));
    }

    #[test]
    fn linux_style_single_vector() {
        let mut s = MsiState::new(CONTROL_64BIT);
        assert!(s.write(4, 0, &0xfee0_1003u32.to_le_bytes()).is_empty());
        assert!(s.write(8, 0, &0u32.to_le_bytes()).is_empty());
        assert!(s.write(0x0c, 0, &0x4031u16.to_le_bytes()).is_empty());
        assert_eq!(s.read(4, 0), 0xfee0_1000, "address is dword aligned");
        let u = s.write(0, 2, &1u16.to_le_bytes());
        assert_eq!(
            u,
            vec![
                IrqUpdate::Enable {
                    kind: IrqKind::Msi,
                    vectors: 1
                },
                route(0, Some((0xfee0_1000, 0x4031)))
            ]
        );
        assert_eq!(s.read(0, 0x0000_7005) >> 16, 0x81, "enable + 64-bit");
        assert_eq!(s.read(0, 0x0000_7005) & 0xffff, 0x7005);
        // Reprogramming while enabled reroutes.
        assert_eq!(
            s.write(0x0c, 0, &0x4032u32.to_le_bytes()),
            vec![route(0, Some((0xfee0_1000, 0x4032)))]
        );
        assert_eq!(
            s.write(0, 2, &0u16.to_le_bytes()),
            vec![route(0, None), IrqUpdate::Disable { kind: IrqKind::Msi }]
        );
    }

    #[test]
    fn multiple_messages_and_masking() {
        // 4 vectors capable, per-vector masking, 32-bit address.
        let mut s = MsiState::new(CONTROL_PER_VECTOR_MASK | (2 << 1));
        s.write(4, 0, &0xfee0_0000u32.to_le_bytes());
        s.write(8, 0, &0x4043u32.to_le_bytes());
        s.write(0x0c, 0, &0b0010u32.to_le_bytes());
        // Asks for 8 (MME=3): clamped to what the device can do (4).
        let u = s.write(0, 2, &(1u16 | (3 << 4)).to_le_bytes());
        assert_eq!(
            u[0],
            IrqUpdate::Enable {
                kind: IrqKind::Msi,
                vectors: 4
            }
        );
        assert_eq!(
            u[1..],
            [
                route(0, Some((0xfee0_0000, 0x4040))),
                route(2, Some((0xfee0_0000, 0x4042))),
                route(3, Some((0xfee0_0000, 0x4043))),
            ]
        );
        assert_eq!((s.read(0, 0) >> 16) & 0x70, 0x20, "MME reads back clamped");
        assert_eq!(
            s.write(0x0c, 0, &0u32.to_le_bytes()),
            vec![route(1, Some((0xfee0_0000, 0x4041)))]
        );
        assert_eq!(s.read(0x10, 0), 0, "nothing pending");
        assert!(
            s.write(0x10, 0, &[0xff; 4]).is_empty(),
            "pending is read-only"
        );
    }

    #[test]
    fn capability_bits_are_read_only_and_hostile_writes_ignored() {
        let mut s = MsiState::new(CONTROL_64BIT);
        let before = s.clone();
        s.write(0, 2, &0xfffeu16.to_le_bytes());
        assert_eq!(
            s.read(0, 0) >> 16,
            0x80,
            "only enable/MME are writable; MMC=0"
        );
        let mut s = before.clone();
        assert!(s.write(4, 3, &[1, 2]).is_empty(), "crosses the dword");
        assert!(s.write(4, 0, &[1, 2, 3]).is_empty(), "odd width");
        assert!(s.write(0x40, 0, &[1; 4]).is_empty(), "outside");
        assert!(s.write(2, 0, &[1; 4]).is_empty(), "not a register start");
        assert_eq!(s, before);
        // A device claiming 128 vectors (reserved encoding) is held to 32.
        assert_eq!(MsiState::new(7 << 1).max_vectors(), 32);
    }
}
