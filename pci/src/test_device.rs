//! A PCI function with one 64-bit BAR, for tests of the paths that carry BAR moves.

use std::sync::{Arc, Mutex};

use crate::config::{BarKind, BarSpec, ConfigSpace};
use crate::device::{BarHook, BarReprogram, PciDevice};
use crate::segment::PciSegment;

pub const BAR_BASE: u64 = 0x40_0000_0000;
pub const BAR_SIZE: u64 = 1 << 20;

pub struct BarDevice(ConfigSpace);

impl BarDevice {
    pub fn new() -> Self {
        let mut c = ConfigSpace::new();
        c.set_ids(0x1234, 0x5678);
        let spec = BarSpec {
            size: BAR_SIZE,
            kind: BarKind::Mem64,
            prefetchable: true,
        };
        c.add_bar(0, spec, BAR_BASE).expect("valid BAR");
        BarDevice(c)
    }
}

impl PciDevice for BarDevice {
    fn read_config_register(&mut self, reg_idx: usize) -> u32 {
        self.0.read(reg_idx)
    }

    fn write_config_register(
        &mut self,
        reg_idx: usize,
        offset: u64,
        data: &[u8],
    ) -> Vec<BarReprogram> {
        self.0.write(reg_idx, offset, data)
    }
}

/// Each move the hook was given, with whether the segment lock was free during the call.
pub type HookLog = Arc<Mutex<Vec<(BarReprogram, bool)>>>;

/// A segment with a `BarDevice` in `slot`, and a hook that records the moves it is given and
/// whether the segment was free to lock at that moment (it must be).
pub fn segment_with_bar_device(slot: u8) -> (Arc<Mutex<PciSegment>>, BarHook, HookLog) {
    let mut s = PciSegment::new(0);
    s.add_device(Some(slot), Arc::new(Mutex::new(BarDevice::new())))
        .expect("free slot");
    let segment = Arc::new(Mutex::new(s));
    let seen = HookLog::default();
    let (seg, log) = (segment.clone(), seen.clone());
    let hook: BarHook = Arc::new(move |moves: &[BarReprogram]| {
        let unlocked = seg.try_lock().is_ok();
        let mut log = log.lock().unwrap();
        log.extend(moves.iter().map(|m| (*m, unlocked)));
    });
    (segment, hook, seen)
}
