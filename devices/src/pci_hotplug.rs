//! ACPI PCI hot plug controller: the MMIO registers the DSDT's `\_SB.PHPR` reads and writes
//! (the guest-visible half; Linux's acpiphp drives it through the DSDT's methods).
//!
//! The VMM marks a slot added or its removal requested, then raises the GED's
//! `EVENT_PCI_HOTPLUG`. The GED's `_EVT` calls `\_SB.PHPR.PSCN`, which selects each segment,
//! reads PCIU and PCID and notifies the slots' ACPI objects (device check, eject request).
//! When the guest has let go of a device it calls the slot's `_EJ0`, which writes the slot's
//! bit to B0EJ; that write reaches the VMM through the eject callback (one call per bit,
//! lowest slot first).
//!
//! The register block (offsets, widths, bits) is `acpi::hotplug::regs`, the layout the DSDT
//! declares. A PSEG value that is not a segment of the controller reads back as written but
//! selects nothing: PCIU and PCID read 0 and B0EJ writes are ignored. Any access that is not
//! a whole register reads 0 and is ignored when written: the DSDT declares the registers as a
//! DWord field, so the guest never needs anything else.

use acpi::hotplug::regs::{self, B0EJ, PCID, PCIU, PSEG, SLOTS};

use crate::BusDevice;

// The registers are u32s here: the ones the DSDT declares must be.
const _: () = assert!(regs::WIDTH == std::mem::size_of::<u32>() as u64);

/// Called with `(segment, slot)` for each slot the guest ejected. It runs on a vCPU thread
/// under the device's lock, so it should only hand the work on (e.g. send on a channel).
pub type EjectCallback = Box<dyn FnMut(u16, u8) + Send>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HotplugError {
    #[error("PCI hot plug: segment {segment} does not exist (the controller has {segments})")]
    NoSuchSegment { segment: u16, segments: u16 },
    #[error("PCI hot plug: slot {0} does not exist (a segment has slots 0-31)")]
    NoSuchSlot(u8),
}

/// What is pending on one segment, as bitmaps of slots (bit n = slot n).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    pub added: u32,
    pub removal_requested: u32,
}

pub struct PciHotplug {
    pending: Vec<Pending>,
    /// PSEG as the guest last wrote it (not necessarily a segment).
    selected: u32,
    on_eject: EjectCallback,
}

impl PciHotplug {
    /// A controller for segments `0..segments`.
    pub fn new(segments: u16, on_eject: EjectCallback) -> Self {
        PciHotplug {
            pending: vec![Pending::default(); usize::from(segments)],
            selected: 0,
            on_eject,
        }
    }

    /// A device appeared in `slot` of `segment`: the next scan sends the slot a device check.
    /// Cancels a removal request of the slot that the guest has not read yet (the device it
    /// named is gone).
    pub fn slot_added(&mut self, segment: u16, slot: u8) -> Result<(), HotplugError> {
        let (p, bit) = self.slot(segment, slot)?;
        p.added |= bit;
        p.removal_requested &= !bit;
        Ok(())
    }

    /// The VMM wants the device in `slot` of `segment` removed: the next scan sends the slot
    /// an eject request, and the guest writes B0EJ once it has let go of the device. Cancels
    /// an addition the guest has not read yet.
    pub fn removal_requested(&mut self, segment: u16, slot: u8) -> Result<(), HotplugError> {
        let (p, bit) = self.slot(segment, slot)?;
        p.removal_requested |= bit;
        p.added &= !bit;
        Ok(())
    }

    /// What the guest has not read yet on `segment`.
    pub fn pending(&self, segment: u16) -> Option<Pending> {
        self.pending.get(usize::from(segment)).copied()
    }

    fn slot(&mut self, segment: u16, slot: u8) -> Result<(&mut Pending, u32), HotplugError> {
        let bit = regs::slot_bit(slot).ok_or(HotplugError::NoSuchSlot(slot))?;
        let segments = self.segments();
        let p = self
            .pending
            .get_mut(usize::from(segment))
            .ok_or(HotplugError::NoSuchSegment { segment, segments })?;
        Ok((p, bit))
    }

    fn segments(&self) -> u16 {
        // `new` took a u16, so the length fits.
        u16::try_from(self.pending.len()).unwrap_or(u16::MAX)
    }

    /// The selected segment's number and state, if PSEG names one.
    fn selected(&mut self) -> Option<(u16, &mut Pending)> {
        let segment = u16::try_from(self.selected).ok()?;
        let p = self.pending.get_mut(usize::from(segment))?;
        Some((segment, p))
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        match offset {
            PCIU => self
                .selected()
                .map_or(0, |(_, p)| std::mem::take(&mut p.added)),
            PCID => self
                .selected()
                .map_or(0, |(_, p)| std::mem::take(&mut p.removal_requested)),
            PSEG => self.selected,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            PSEG => self.selected = value,
            B0EJ => {
                let Some((segment, p)) = self.selected() else {
                    crate::log_limited_here!(
                        log::Level::Debug,
                        "PCI hot plug: eject {value:#x} on no segment, ignored"
                    );
                    return;
                };
                // The guest has let go: a removal request it has not read is answered.
                p.removal_requested &= !value;
                for slot in 0..SLOTS {
                    if regs::slot_bit(slot).is_some_and(|bit| value & bit != 0) {
                        (self.on_eject)(segment, slot);
                    }
                }
            }
            _ => crate::log_limited_here!(
                log::Level::Debug,
                "PCI hot plug: ignored write {value:#x} at offset {offset:#x}"
            ),
        }
    }
}

impl BusDevice for PciHotplug {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        match <&mut [u8; 4]>::try_from(&mut *data) {
            Ok(d) if offset & (regs::WIDTH - 1) == 0 => {
                *d = self.read_register(offset).to_le_bytes()
            }
            _ => data.fill(0),
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        match <[u8; 4]>::try_from(data) {
            Ok(d) if offset & (regs::WIDTH - 1) == 0 => {
                self.write_register(offset, u32::from_le_bytes(d))
            }
            _ => crate::log_limited_here!(
                log::Level::Debug,
                "PCI hot plug: ignored write {data:x?} at offset {offset:#x}"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A controller whose ejects arrive on the returned channel.
    fn controller(segments: u16) -> (PciHotplug, mpsc::Receiver<(u16, u8)>) {
        let (tx, rx) = mpsc::channel();
        let dev = PciHotplug::new(
            segments,
            Box::new(move |seg, slot| {
                let _ = tx.send((seg, slot));
            }),
        );
        (dev, rx)
    }

    fn rd(d: &mut PciHotplug, offset: u64) -> u32 {
        let mut b = [0xaau8; 4];
        d.read(0x1000, offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn wr(d: &mut PciHotplug, offset: u64, value: u32) {
        d.write(0x1000, offset, &value.to_le_bytes());
    }

    fn ejects(rx: &mpsc::Receiver<(u16, u8)>) -> Vec<(u16, u8)> {
        rx.try_iter().collect()
    }

    #[test]
    fn pciu_reports_added_slots_and_clears_on_read() {
        let (mut d, _rx) = controller(3);
        d.slot_added(1, 0).unwrap();
        d.slot_added(1, 31).unwrap();
        d.slot_added(1, 0).unwrap();
        assert_eq!(rd(&mut d, PCIU), 0, "segment 0 is selected");
        wr(&mut d, PSEG, 1);
        assert_eq!(rd(&mut d, PCIU), 0x8000_0001);
        assert_eq!(rd(&mut d, PCIU), 0, "read-to-clear");
        assert_eq!(d.pending(1), Some(Pending::default()));
    }

    #[test]
    fn pcid_reports_removal_requests_and_clears_on_read() {
        let (mut d, _rx) = controller(2);
        d.removal_requested(0, 5).unwrap();
        d.removal_requested(0, 7).unwrap();
        assert_eq!(rd(&mut d, PCIU), 0);
        assert_eq!(rd(&mut d, PCID), 0xa0);
        assert_eq!(rd(&mut d, PCID), 0);
    }

    #[test]
    fn adding_and_removing_cancel_each_other() {
        let (mut d, _rx) = controller(1);
        d.removal_requested(0, 3).unwrap();
        d.slot_added(0, 3).unwrap();
        d.slot_added(0, 4).unwrap();
        assert_eq!(
            d.pending(0),
            Some(Pending {
                added: 0x18,
                removal_requested: 0
            })
        );
        d.removal_requested(0, 4).unwrap();
        assert_eq!(rd(&mut d, PCIU), 0x08);
        assert_eq!(rd(&mut d, PCID), 0x10);
    }

    #[test]
    fn segments_are_independent() {
        let (mut d, _rx) = controller(3);
        d.slot_added(0, 1).unwrap();
        d.slot_added(2, 2).unwrap();
        d.removal_requested(1, 3).unwrap();
        wr(&mut d, PSEG, 2);
        assert_eq!(rd(&mut d, PSEG), 2);
        assert_eq!((rd(&mut d, PCIU), rd(&mut d, PCID)), (4, 0));
        wr(&mut d, PSEG, 1);
        assert_eq!((rd(&mut d, PCIU), rd(&mut d, PCID)), (0, 8));
        wr(&mut d, PSEG, 0);
        assert_eq!((rd(&mut d, PCIU), rd(&mut d, PCID)), (2, 0));
        assert_eq!(d.pending(2), Some(Pending::default()));
    }

    #[test]
    fn b0ej_calls_back_per_slot_in_order_and_reads_zero() {
        let (mut d, rx) = controller(2);
        wr(&mut d, PSEG, 1);
        wr(&mut d, B0EJ, 0x8000_0005);
        assert_eq!(ejects(&rx), [(1, 0), (1, 2), (1, 31)]);
        wr(&mut d, B0EJ, 0);
        assert!(ejects(&rx).is_empty());
        assert_eq!(rd(&mut d, B0EJ), 0);
    }

    #[test]
    fn eject_answers_an_unread_removal_request_only() {
        let (mut d, rx) = controller(1);
        d.removal_requested(0, 1).unwrap();
        d.removal_requested(0, 2).unwrap();
        d.slot_added(0, 3).unwrap();
        wr(&mut d, B0EJ, 0b1010);
        assert_eq!(ejects(&rx), [(0, 1), (0, 3)]);
        assert_eq!(
            d.pending(0),
            Some(Pending {
                added: 0b1000,
                removal_requested: 0b100
            })
        );
    }

    #[test]
    fn a_segment_that_does_not_exist_selects_nothing() {
        let (mut d, rx) = controller(2);
        d.slot_added(1, 1).unwrap();
        d.removal_requested(1, 2).unwrap();
        for seg in [2, 0x1_0001, u32::MAX] {
            wr(&mut d, PSEG, seg);
            assert_eq!(rd(&mut d, PSEG), seg, "reads back as written");
            assert_eq!((rd(&mut d, PCIU), rd(&mut d, PCID)), (0, 0));
            wr(&mut d, B0EJ, u32::MAX);
        }
        assert!(ejects(&rx).is_empty());
        assert_eq!(
            d.pending(1),
            Some(Pending {
                added: 2,
                removal_requested: 4
            }),
            "0x10001 is not segment 1"
        );
        let (mut none, rx) = controller(0);
        wr(&mut none, B0EJ, 1);
        assert_eq!(rd(&mut none, PCIU), 0);
        assert!(ejects(&rx).is_empty());
    }

    #[test]
    fn bad_segments_and_slots_are_errors() {
        let (mut d, _rx) = controller(2);
        let no_seg = |segment| HotplugError::NoSuchSegment {
            segment,
            segments: 2,
        };
        assert_eq!(d.slot_added(2, 0), Err(no_seg(2)));
        assert_eq!(d.removal_requested(u16::MAX, 0), Err(no_seg(u16::MAX)));
        assert_eq!(d.slot_added(0, 32), Err(HotplugError::NoSuchSlot(32)));
        assert_eq!(
            d.removal_requested(1, u8::MAX),
            Err(HotplugError::NoSuchSlot(u8::MAX))
        );
        assert_eq!(d.pending(0), Some(Pending::default()));
        assert_eq!(d.pending(2), None);
        let (mut big, _rx) = controller(u16::MAX);
        big.slot_added(u16::MAX - 1, 31).unwrap();
        wr(&mut big, PSEG, u32::from(u16::MAX - 1));
        assert_eq!(rd(&mut big, PCIU), 1 << 31);
        for e in [no_seg(2), HotplugError::NoSuchSlot(32)] {
            assert!(!e.to_string().contains('\n'));
        }
    }

    #[test]
    fn hostile_widths_and_offsets_read_zero_and_change_nothing() {
        let (mut d, rx) = controller(2);
        d.slot_added(0, 0).unwrap();
        d.removal_requested(0, 1).unwrap();
        for offset in [1, 2, 3, 5, 0xd, 0x10, 0x11, 0xfff, u64::MAX - 3, u64::MAX] {
            assert_eq!(rd(&mut d, offset), 0, "{offset:#x}");
            wr(&mut d, offset, u32::MAX);
        }
        for len in [0, 1, 2, 3, 5, 8, 16] {
            for offset in [PCIU, PCID, B0EJ, PSEG] {
                let mut b = vec![0xaa; len];
                d.read(0, offset, &mut b);
                assert!(b.iter().all(|x| *x == 0), "{len} bytes at {offset:#x}");
                d.write(0, offset, &vec![0xff; len]);
            }
        }
        assert!(ejects(&rx).is_empty());
        assert_eq!(rd(&mut d, PSEG), 0);
        assert_eq!((rd(&mut d, PCIU), rd(&mut d, PCID)), (1, 2));
    }

    #[test]
    fn works_behind_a_bus() {
        let (d, rx) = controller(2);
        let d = std::sync::Arc::new(parking_lot::Mutex::new(d));
        let bus = crate::Bus::new();
        bus.insert(d.clone(), 0xfed0_1000, regs::LEN).unwrap();
        d.lock().slot_added(1, 4).unwrap();
        bus.write(0xfed0_100c, &1u32.to_le_bytes()).unwrap();
        let mut b = [0u8; 4];
        bus.read(0xfed0_1000, &mut b).unwrap();
        assert_eq!(u32::from_le_bytes(b), 0x10);
        bus.write(0xfed0_1008, &0x10u32.to_le_bytes()).unwrap();
        assert_eq!(ejects(&rx), [(1, 4)]);
    }
}
