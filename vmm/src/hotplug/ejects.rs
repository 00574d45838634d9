//! The slots the guest ejected (its `_EJ0` wrote the hot plug controller), for the removal
//! that waits on them.
//!
//! One bit per slot, one word per segment: the guest may write the eject register as often
//! as it likes (every write calls back once per set bit) and the state stays the same size,
//! where a list of ejects would grow until a removal emptied it.

use std::sync::Arc;

use parking_lot::{Condvar, Mutex};
use std::time::{Duration, Instant};

use acpi::hotplug::regs::slot_bit;
use devices::pci_hotplug::EjectCallback;

pub struct Ejects {
    /// Word s, bit n: the guest ejected slot n of segment s and no removal has taken it yet.
    ejected: Mutex<Box<[u32]>>,
    cv: Condvar,
}

impl Ejects {
    /// The state for segments `0..segments`, as the controller has them.
    pub fn new(segments: u16) -> Self {
        Ejects {
            ejected: Mutex::new(vec![0; usize::from(segments)].into_boxed_slice()),
            cv: Condvar::new(),
        }
    }

    /// The controller's eject callback: it records the eject and wakes the removal waiting
    /// for it, nothing more (it runs on a vCPU thread under the controller's lock).
    pub fn callback(self: &Arc<Self>) -> EjectCallback {
        let ejects = self.clone();
        Box::new(move |segment, slot| ejects.record(segment, slot))
    }

    pub(super) fn record(&self, segment: u16, slot: u8) {
        let mut ejected = self.ejected.lock();
        let (Some(word), Some(bit)) = (ejected.get_mut(usize::from(segment)), slot_bit(slot))
        else {
            return;
        };
        // Waiters were woken when the bit was set; a repeated eject has nothing to add.
        if *word & bit == 0 {
            *word |= bit;
            self.cv.notify_all();
        }
    }

    /// Forgets an eject of this slot that nobody waited for (a stale one must not satisfy
    /// the next removal).
    pub fn forget(&self, segment: u16, slot: u8) {
        let mut ejected = self.ejected.lock();
        if let (Some(word), Some(bit)) = (ejected.get_mut(usize::from(segment)), slot_bit(slot)) {
            *word &= !bit;
        }
    }

    /// Waits until the guest ejects this slot, and takes the eject; false after `timeout`.
    pub fn wait(&self, segment: u16, slot: u8, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let Some(bit) = slot_bit(slot) else {
            return false;
        };
        let mut ejected = self.ejected.lock();
        loop {
            if let Some(word) = ejected.get_mut(usize::from(segment)) {
                if *word & bit != 0 {
                    *word &= !bit;
                    return true;
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.cv.wait_for(&mut ejected, left);
        }
    }

    #[cfg(test)]
    fn snapshot(&self) -> Vec<u32> {
        self.ejected.lock().to_vec()
    }

    #[cfg(test)]
    fn footprint(&self) -> usize {
        std::mem::size_of_val::<[u32]>(&self.ejected.lock())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use acpi::hotplug::regs::{B0EJ, PSEG};
    use devices::{BusDevice, PciHotplug};

    const NO_WAIT: Duration = Duration::ZERO;

    #[test]
    fn a_wait_takes_the_eject_and_a_forget_drops_it() {
        let e = Ejects::new(2);
        assert!(!e.wait(1, 3, NO_WAIT));
        e.record(1, 3);
        e.record(1, 3);
        assert!(!e.wait(0, 3, NO_WAIT), "another segment");
        assert!(!e.wait(1, 4, NO_WAIT), "another slot");
        assert!(e.wait(1, 3, NO_WAIT));
        assert!(!e.wait(1, 3, NO_WAIT), "taken by the first wait");
        e.record(1, 3);
        e.forget(1, 3);
        assert!(!e.wait(1, 3, NO_WAIT), "forgotten");
    }

    #[test]
    fn a_wait_wakes_on_the_eject() {
        let e = Arc::new(Ejects::new(1));
        let guest = std::thread::spawn({
            let e = e.clone();
            move || {
                std::thread::sleep(Duration::from_millis(20));
                e.record(0, 31);
            }
        });
        assert!(e.wait(0, 31, Duration::from_secs(30)));
        guest.join().unwrap();
    }

    #[test]
    fn slots_and_segments_the_controller_does_not_have_are_ignored() {
        let e = Ejects::new(1);
        e.record(1, 0);
        e.record(0, 32);
        e.record(u16::MAX, u8::MAX);
        e.forget(1, 0);
        e.forget(0, u8::MAX);
        assert_eq!(e.snapshot(), [0]);
        assert!(!e.wait(1, 0, NO_WAIT));
        assert!(!e.wait(0, 32, NO_WAIT));
    }

    /// A guest looping `writel(~0, B0EJ)` over every segment, through the real controller.
    #[test]
    fn a_million_eject_writes_keep_the_state_the_same_size() {
        const SEGMENTS: u16 = 3;
        let ejects = Arc::new(Ejects::new(SEGMENTS));
        let mut controller = PciHotplug::new(SEGMENTS, ejects.callback());
        let size = ejects.footprint();
        assert_eq!(size, 4 * usize::from(SEGMENTS));
        for n in 0..1_000_000u32 {
            let segment = n % u32::from(SEGMENTS);
            controller.write(0, PSEG, &segment.to_le_bytes());
            controller.write(0, B0EJ, &u32::MAX.to_le_bytes());
            if n % 100_000 == 0 {
                assert_eq!(ejects.footprint(), size);
            }
        }
        assert_eq!(ejects.footprint(), size);
        assert_eq!(ejects.snapshot(), [u32::MAX; SEGMENTS as usize]);
        // Waiting and forgetting still work on what the flood left.
        ejects.forget(2, 5);
        assert!(!ejects.wait(2, 5, NO_WAIT), "forgotten");
        assert!(ejects.wait(2, 6, NO_WAIT));
        assert!(!ejects.wait(2, 6, NO_WAIT), "one eject, taken once");
        assert!(ejects.wait(0, 5, NO_WAIT));
        assert_eq!(ejects.snapshot(), [!(1 << 5), u32::MAX, !(1 << 5 | 1 << 6)]);
        // And the next eject the guest writes is seen.
        controller.write(0, PSEG, &2u32.to_le_bytes());
        controller.write(0, B0EJ, &(1u32 << 5).to_le_bytes());
        assert!(ejects.wait(2, 5, NO_WAIT));
        assert_eq!(ejects.footprint(), size);
    }
}
