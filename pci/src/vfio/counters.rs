//! Counts of the accesses a process serves: every guest BAR access that traps into ghvmm and
//! every guest config-space register access it answers, and every region access a vfio-user
//! server answers. They are what proves that a copy into a
//! mapped BAR reaches neither process (it moves no counter) while one padding read moves one
//! counter by exactly one. Atomics, so that counting takes no lock on the access path.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use super::dispatch::{split_access, AccessPart};
use super::layout::BarLayout;

/// What one access was, as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessKind {
    /// Only padding: answered by the process itself (reads 0, writes dropped).
    Padding,
    /// At least one byte went to the device (or, for a vfio-user client, to the server).
    Forwarded,
    /// The emulated MSI-X table or PBA.
    Msix,
}

impl AccessKind {
    const ALL: [AccessKind; 3] = [AccessKind::Padding, AccessKind::Forwarded, AccessKind::Msix];

    pub fn name(self) -> &'static str {
        match self {
            AccessKind::Padding => "padding",
            AccessKind::Forwarded => "forwarded",
            AccessKind::Msix => "msix",
        }
    }

    /// An access of `len` bytes at BAR offset `offset`, dispatched along `layout`: padding
    /// only when no byte of it reaches the device.
    pub fn of(layout: &BarLayout, offset: u64, len: usize) -> AccessKind {
        let device = split_access(layout, offset, len)
            .iter()
            .any(|p| !matches!(p, AccessPart::Padding { .. }));
        if device {
            AccessKind::Forwarded
        } else {
            AccessKind::Padding
        }
    }
}

/// One BAR's counters.
#[derive(Debug, Default)]
pub struct BarCounters {
    counts: [AtomicU64; 3],
}

impl BarCounters {
    pub fn count(&self, kind: AccessKind) {
        self.counts[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, kind: AccessKind) -> u64 {
        self.counts[kind as usize].load(Ordering::Relaxed)
    }

    /// Adds `barN.padding`, `barN.forwarded` and `barN.msix` to `out`, zeros included, so
    /// that a reader can tell "not counted" from "no such counter".
    pub fn report(&self, bar: usize, out: &mut BTreeMap<String, u64>) {
        for kind in AccessKind::ALL {
            out.insert(format!("bar{bar}.{}", kind.name()), self.get(kind));
        }
    }
}

/// The key of `ConfigCounter` in a report.
pub const CONFIG_KEY: &str = "config";

/// A function's config-space register accesses, reads and writes alike. One per function,
/// not per BAR: a config access belongs to no BAR. A guest that only copies into a mapped
/// BAR makes none, so it belongs in the "nothing moved" proof as much as the BARs' counters.
#[derive(Debug, Default)]
pub struct ConfigCounter(AtomicU64);

impl ConfigCounter {
    pub fn count(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Adds `config` to `out`, zero included.
    pub fn report(&self, out: &mut BTreeMap<String, u64>) {
        out.insert(CONFIG_KEY.to_string(), self.get());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfio::layout::{Piece, PieceKind};

    fn layout() -> BarLayout {
        BarLayout {
            bar_size: 0x4000,
            pieces: vec![
                Piece {
                    offset: 0,
                    size: 0x1000,
                    kind: PieceKind::Mapped { host_align: 0x1000 },
                },
                Piece {
                    offset: 0x1000,
                    size: 0x1000,
                    kind: PieceKind::Forwarded,
                },
                Piece {
                    offset: 0x2000,
                    size: 0x2000,
                    kind: PieceKind::Padding,
                },
            ],
        }
    }

    #[test]
    fn an_access_is_padding_only_when_no_byte_reaches_the_device() {
        let l = layout();
        assert_eq!(AccessKind::of(&l, 0x2000, 8), AccessKind::Padding);
        assert_eq!(AccessKind::of(&l, 0x3ff8, 8), AccessKind::Padding);
        assert_eq!(AccessKind::of(&l, 0x1ffc, 8), AccessKind::Forwarded);
        assert_eq!(AccessKind::of(&l, 0x10, 4), AccessKind::Forwarded);
        assert_eq!(AccessKind::of(&l, 0x1000, 1), AccessKind::Forwarded);
        // Past the BAR is not padding either: it is answered all-ones.
        assert_eq!(AccessKind::of(&l, 0x4000, 4), AccessKind::Forwarded);
        assert_eq!(AccessKind::of(&l, u64::MAX, 8), AccessKind::Forwarded);
    }

    #[test]
    fn counters_are_reported_per_bar_and_kind_with_zeros() {
        let c = BarCounters::default();
        c.count(AccessKind::Padding);
        c.count(AccessKind::Padding);
        c.count(AccessKind::Msix);
        let mut out = BTreeMap::new();
        c.report(2, &mut out);
        assert_eq!(out["bar2.padding"], 2);
        assert_eq!(out["bar2.forwarded"], 0);
        assert_eq!(out["bar2.msix"], 1);
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn config_accesses_are_one_counter_beside_the_bars() {
        let c = ConfigCounter::default();
        let mut out = BTreeMap::new();
        c.report(&mut out);
        assert_eq!(out[CONFIG_KEY], 0, "reported before any access");
        c.count();
        c.count();
        let bar = BarCounters::default();
        bar.count(AccessKind::Forwarded);
        bar.report(0, &mut out);
        c.report(&mut out);
        assert_eq!(out["config"], 2);
        assert_eq!(out["bar0.forwarded"], 1);
        assert_eq!(out.len(), 4);
    }

    #[test]
    fn counting_from_many_threads_loses_nothing() {
        let c = std::sync::Arc::new(ConfigCounter::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || (0..1000).for_each(|_| c.count()))
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(c.get(), 4000);
    }
}
