//! KVM memory slot numbers: guest RAM takes the first ones at boot, passed-through BARs take
//! one per mapped piece and give them back when the device goes (hot unplug), so a VM that
//! plugs and unplugs a GPU for weeks never runs out.

use std::collections::BTreeSet;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SlotError {
    #[error("all {0} KVM memory slots are in use")]
    Exhausted(u32),
}

pub struct MemSlots {
    /// Slots below this were handed out at least once.
    next: u32,
    free: BTreeSet<u32>,
    limit: u32,
}

impl MemSlots {
    /// `first` is the first slot not taken by guest RAM; `limit` is KVM_CAP_NR_MEMSLOTS.
    pub fn new(first: u32, limit: u32) -> Self {
        MemSlots {
            next: first,
            free: BTreeSet::new(),
            limit,
        }
    }

    /// The lowest free slot.
    pub fn allocate(&mut self) -> Result<u32, SlotError> {
        if let Some(s) = self.free.pop_first() {
            return Ok(s);
        }
        if self.next >= self.limit {
            return Err(SlotError::Exhausted(self.limit));
        }
        self.next += 1;
        Ok(self.next - 1)
    }

    /// Gives `slot` back (its KVM slot must already be deleted).
    pub fn release(&mut self, slot: u32) {
        if slot < self.next {
            self.free.insert(slot);
        }
    }

    /// Slots in use, RAM included.
    pub fn in_use(&self) -> u32 {
        self.next - self.free.len() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_reused_lowest_first_and_run_out_cleanly() {
        let mut s = MemSlots::new(2, 6);
        assert_eq!(s.in_use(), 2);
        let a: Vec<u32> = (0..4).map(|_| s.allocate().unwrap()).collect();
        assert_eq!(a, [2, 3, 4, 5]);
        assert_eq!(s.allocate(), Err(SlotError::Exhausted(6)));
        s.release(4);
        s.release(3);
        s.release(99); // never handed out: ignored
        assert_eq!(s.in_use(), 4);
        assert_eq!(s.allocate().unwrap(), 3);
        assert_eq!(s.allocate().unwrap(), 4);
        assert_eq!(s.in_use(), 6);
    }
}
