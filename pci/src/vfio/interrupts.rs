//! The interrupt capabilities of a passed-through function (MSI and MSI-X) as ghvmm emulates
//! them: which config-space registers and which BAR bytes (the MSI-X table) belong to them,
//! and what the guest's programming means for the VMM (`IrqUpdate`s handed to an `IrqSink`,
//! which the VMM turns into VFIO eventfds and KVM routes).
//!
//! The guest's writes to these registers and to the MSI-X table never reach the device: the
//! device's own vectors are programmed by the host kernel when the VMM enables them through
//! VFIO_DEVICE_SET_IRQS, and each fires an eventfd that KVM turns into the message the guest
//! asked for.

use std::sync::Arc;

use parking_lot::Mutex;

use super::capability::{Capability, DeviceConfig, CAP_MSI, CAP_MSIX};
pub use super::irq_types::{IrqKind, IrqSink, IrqUpdate, MsiMessage};
use super::msi::MsiState;
use super::msix::MsixState;
use crate::config::merge;

/// A byte range inside one BAR (the MSI-X table or PBA).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarRange {
    pub bar: usize,
    pub offset: u64,
    pub size: u64,
}

impl BarRange {
    /// Whether `[offset, offset + len)` in `bar` lies wholly inside this range.
    pub fn contains(&self, bar: usize, offset: u64, len: usize) -> bool {
        bar == self.bar
            && offset >= self.offset
            && offset
                .checked_add(len as u64)
                .is_some_and(|end| end <= self.offset + self.size)
    }
}

/// The emulated MSI and MSI-X capabilities, found at their config-space offsets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InterruptCaps {
    msi: Option<(u64, MsiState)>,
    msix: Option<(u64, MsixState)>,
}

fn read_u32(dev: &dyn DeviceConfig, offset: u64) -> Option<u32> {
    let mut b = [0u8; 4];
    dev.read(offset, &mut b).ok()?;
    Some(u32::from_le_bytes(b))
}

impl InterruptCaps {
    /// From the capabilities ghvmm exposes (`exposed_capabilities`), reading their static
    /// parts (capable bits, table and PBA location) from the device.
    pub fn from_device(caps: &[Capability], dev: &dyn DeviceConfig) -> Self {
        let mut out = InterruptCaps::default();
        for c in caps {
            let at = u64::from(c.offset);
            match c.id {
                CAP_MSI => {
                    if let Some(h) = read_u32(dev, at) {
                        out.msi = Some((at, MsiState::new((h >> 16) as u16)));
                    }
                }
                CAP_MSIX => {
                    let regs = (
                        read_u32(dev, at),
                        read_u32(dev, at + 4),
                        read_u32(dev, at + 8),
                    );
                    if let (Some(h), Some(t), Some(p)) = regs {
                        out.msix = Some((at, MsixState::new(h, t, p)));
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// Drops MSI-X (`check_msix_placement` refused where it lives): `PassthroughConfig` then
    /// unlinks the capability from the guest's list.
    pub fn hide_msix(&mut self) {
        self.msix = None;
    }

    pub fn msix(&self) -> Option<&MsixState> {
        self.msix.as_ref().map(|(_, s)| s)
    }

    pub fn msi(&self) -> Option<&MsiState> {
        self.msi.as_ref().map(|(_, s)| s)
    }

    /// The MSI-X table and PBA, which must stay trapped (never mapped).
    pub fn msix_ranges(&self) -> Vec<BarRange> {
        let Some(s) = self.msix() else {
            return Vec::new();
        };
        vec![
            BarRange {
                bar: s.table_bar,
                offset: s.table_offset,
                size: s.table_len(),
            },
            BarRange {
                bar: s.pba_bar,
                offset: s.pba_offset,
                size: u64::from(s.vectors()).div_ceil(64) * 8,
            },
        ]
    }

    fn msix_table(&self) -> Option<BarRange> {
        self.msix_ranges().first().copied()
    }

    /// The guest-visible value of config register `reg`, when an emulated capability owns
    /// it; `device` is what the device side would show (capability links already fixed).
    pub fn read(&self, reg: usize, device: u32) -> Option<u32> {
        let at = (reg as u64) * 4;
        if let Some((cap, s)) = &self.msix {
            if at == *cap {
                return Some((device & 0xffff) | (u32::from(s.control()) << 16));
            }
        }
        if let Some((cap, s)) = &self.msi {
            if at >= *cap && at < cap + s.size() {
                return Some(s.read(at - cap, device));
            }
        }
        None
    }

    /// A guest write to config register `reg`: `Some(updates)` when an emulated capability
    /// owns the register (the write is consumed), `None` when it is not theirs.
    pub fn write(&mut self, reg: usize, offset: u64, data: &[u8]) -> Option<Vec<IrqUpdate>> {
        let at = (reg as u64).checked_mul(4)?;
        if let Some((cap, s)) = &mut self.msix {
            if at == *cap {
                let control = u32::from(s.control()) << 16;
                return Some(match merge(control, offset, data) {
                    // Only the control word is writable; id and next are read-only.
                    Some(v) if offset + data.len() as u64 > 2 => s.write_control((v >> 16) as u16),
                    _ => Vec::new(),
                });
            }
            if at > *cap && at < *cap + 12 {
                return Some(Vec::new()); // table/PBA location: read-only
            }
        }
        if let Some((cap, s)) = &mut self.msi {
            if at >= *cap && at < *cap + s.size() {
                return Some(s.write(at - *cap, offset, data));
            }
        }
        None
    }

    /// A guest read inside `bar` at `offset`: answered from the emulated MSI-X table when the
    /// access lies wholly in it (true), else left to the caller (false).
    pub fn table_read(&self, bar: usize, offset: u64, data: &mut [u8]) -> bool {
        match (self.msix_table(), &self.msix) {
            (Some(t), Some((_, s))) if t.contains(bar, offset, data.len()) => {
                s.table_read(offset - t.offset, data);
                true
            }
            _ => false,
        }
    }

    /// A guest write inside `bar` at `offset`: `Some(updates)` when it lies wholly in the
    /// MSI-X table.
    pub fn table_write(&mut self, bar: usize, offset: u64, data: &[u8]) -> Option<Vec<IrqUpdate>> {
        let t = self.msix_table()?;
        if !t.contains(bar, offset, data.len()) {
            return None;
        }
        let (_, s) = self.msix.as_mut()?;
        Some(s.table_write(offset - t.offset, data))
    }
}

/// The capabilities and where their updates go, shared by the config-space path and the
/// BAR trap (the MSI-X table): whichever vCPU touches them applies its own updates under
/// this one lock, so updates reach the VMM in the order the guest made them.
pub struct Interrupts {
    caps: InterruptCaps,
    sink: Box<dyn IrqSink>,
}

pub type SharedInterrupts = Arc<Mutex<Interrupts>>;

impl Interrupts {
    pub fn new(caps: InterruptCaps, sink: Box<dyn IrqSink>) -> Self {
        Interrupts { caps, sink }
    }

    pub fn shared(self) -> SharedInterrupts {
        Arc::new(Mutex::new(self))
    }

    pub fn caps(&self) -> &InterruptCaps {
        &self.caps
    }

    /// Disables everything at the sink (unplug); later guest writes still update the
    /// emulated registers but the sink's routes stay gone only if nothing re-enables them, so
    /// call this after the device left the guest's config space.
    pub fn shutdown(&mut self) {
        self.sink.shutdown();
    }

    pub fn config_read(&self, reg: usize, device: u32) -> Option<u32> {
        self.caps.read(reg, device)
    }

    /// True when the write was an emulated capability's (and was applied).
    pub fn config_write(&mut self, reg: usize, offset: u64, data: &[u8]) -> bool {
        match self.caps.write(reg, offset, data) {
            Some(updates) => {
                if !updates.is_empty() {
                    self.sink.apply(updates);
                }
                true
            }
            None => false,
        }
    }

    pub fn table_read(&self, bar: usize, offset: u64, data: &mut [u8]) -> bool {
        self.caps.table_read(bar, offset, data)
    }

    pub fn table_write(&mut self, bar: usize, offset: u64, data: &[u8]) -> bool {
        match self.caps.table_write(bar, offset, data) {
            Some(updates) => {
                if !updates.is_empty() {
                    self.sink.apply(updates);
                }
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Records every update it is given.
    #[derive(Clone, Default)]
    pub struct Recorder(pub Arc<Mutex<Vec<IrqUpdate>>>);

    impl IrqSink for Recorder {
        fn apply(&mut self, updates: Vec<IrqUpdate>) {
            self.0.lock().extend(updates);
        }
    }

    /// A config space with MSI (64-bit, 1 vector) at 0x50 and MSI-X (3 vectors, table in
    /// BAR 1 at 0x2000, PBA in BAR 1 at 0x3000) at 0x70.
    struct Dev(Vec<u8>);

    impl DeviceConfig for Dev {
        fn read(&self, offset: u64, data: &mut [u8]) -> std::io::Result<()> {
            let o = offset as usize;
            data.copy_from_slice(
                self.0
                    .get(o..o + data.len())
                    .ok_or(std::io::ErrorKind::InvalidInput)?,
            );
            Ok(())
        }
        fn write(&self, _: u64, _: &[u8]) -> std::io::Result<()> {
            panic!("the emulation never writes the device")
        }
    }

    fn dev() -> Dev {
        let mut b = vec![0u8; 256];
        b[0x50..0x54].copy_from_slice(&0x0080_7005u32.to_le_bytes());
        b[0x70..0x74].copy_from_slice(&0x0002_0011u32.to_le_bytes());
        b[0x74..0x78].copy_from_slice(&0x0000_2001u32.to_le_bytes());
        b[0x78..0x7c].copy_from_slice(&0x0000_3001u32.to_le_bytes());
        Dev(b)
    }

    fn caps() -> InterruptCaps {
        let list = [
            Capability {
                offset: 0x50,
                id: CAP_MSI,
                next: 0x70,
            },
            Capability {
                offset: 0x70,
                id: CAP_MSIX,
                next: 0,
            },
        ];
        InterruptCaps::from_device(&list, &dev())
    }

    #[test]
    fn finds_both_capabilities_and_the_msix_ranges() {
        let c = caps();
        assert_eq!(c.msi().unwrap().size(), 0x10);
        assert_eq!(c.msix().unwrap().vectors(), 3);
        assert_eq!(
            c.msix_ranges(),
            [
                BarRange {
                    bar: 1,
                    offset: 0x2000,
                    size: 48
                },
                BarRange {
                    bar: 1,
                    offset: 0x3000,
                    size: 8
                }
            ]
        );
        assert_eq!(
            InterruptCaps::from_device(&[], &dev()),
            InterruptCaps::default()
        );
    }

    #[test]
    fn config_registers_are_claimed_by_their_capability() {
        let mut c = caps();
        // MSI-X header: the device's id/next, the emulated control.
        assert_eq!(c.read(0x70 / 4, 0x0000_0011), Some(0x0002_0011));
        assert_eq!(c.read(0x74 / 4, 0x2001), None, "table location: device's");
        assert_eq!(c.read(0x60 / 4, 0), None);
        assert_eq!(c.read(0x50 / 4, 0x7005), Some(0x0080_7005));
        assert_eq!(c.read(0x5c / 4, 0xdead), Some(0), "MSI data");
        assert_eq!(c.read(0x60 / 4, 0xdead), None, "past MSI");
        // Enabling MSI-X through the control word's high byte.
        let u = c.write(0x70 / 4, 3, &[0x80]).unwrap();
        assert_eq!(
            u,
            vec![IrqUpdate::Enable {
                kind: IrqKind::Msix,
                vectors: 3
            }]
        );
        assert_eq!(c.read(0x70 / 4, 0x11), Some(0x8002_0011));
        // A dword write of the whole header: id/next ignored, control applied.
        let u = c.write(0x70 / 4, 0, &0x0000_ffffu32.to_le_bytes()).unwrap();
        assert_eq!(
            u,
            vec![IrqUpdate::Disable {
                kind: IrqKind::Msix
            }]
        );
        assert_eq!(c.write(0x70 / 4, 0, &[0x11, 0x22]), Some(vec![]));
        assert_eq!(c.write(0x74 / 4, 0, &[0; 4]), Some(vec![]), "read-only");
        assert_eq!(c.write(0x7c / 4, 0, &[0; 4]), None, "past the MSI-X cap");
        assert_eq!(c.write(usize::MAX, 0, &[0; 4]), None);
    }

    #[test]
    fn the_table_is_answered_only_for_accesses_inside_it() {
        let rec = Recorder::default();
        let mut i = Interrupts::new(caps(), Box::new(rec.clone()));
        assert!(i.config_write(0x70 / 4, 2, &0x8000u16.to_le_bytes()));
        assert!(i.table_write(1, 0x2010, &0xfee0_0000u32.to_le_bytes()));
        assert!(i.table_write(1, 0x2018, &0x4055u32.to_le_bytes()));
        assert!(i.table_write(1, 0x201c, &0u32.to_le_bytes()));
        assert_eq!(
            rec.0.lock().last(),
            Some(&IrqUpdate::Route {
                kind: IrqKind::Msix,
                vector: 1,
                message: Some(MsiMessage {
                    addr: 0xfee0_0000,
                    data: 0x4055
                })
            })
        );
        let mut d = [0u8; 4];
        assert!(i.table_read(1, 0x2018, &mut d));
        assert_eq!(u32::from_le_bytes(d), 0x4055);
        assert!(!i.table_read(0, 0x2018, &mut d), "another BAR");
        assert!(!i.table_read(1, 0x3000, &mut d), "the PBA is the device's");
        assert!(!i.table_write(1, 0x202e, &[0; 4]), "runs past the table");
        assert!(!i.table_write(1, u64::MAX - 1, &[0; 4]));
        let mut q = [0u8; 8];
        assert!(!i.table_read(1, u64::MAX - 3, &mut q));
        // Non-interrupt config registers are left to the caller.
        assert!(!i.config_write(1, 0, &[6, 0]));
    }
}
