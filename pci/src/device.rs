//! The interface every emulated or passed-through PCI function implements.

use std::sync::Arc;

/// What kind of address space a BAR decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarRegionType {
    Io,
    Mem32,
    Mem64,
}

/// A BAR the guest moved: the VMM moves the bus ranges (and memory slots) with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarReprogram {
    pub bar: usize,
    pub old_base: u64,
    pub new_base: u64,
    pub len: u64,
    pub region: BarRegionType,
}

/// Applies BAR moves outside every device lock (a move touches the buses the device is on).
pub type BarHook = Arc<dyn Fn(&[BarReprogram]) + Send + Sync>;

pub trait PciDevice: Send {
    /// Reads one 32-bit configuration register (`reg_idx` = offset / 4, 0..1024).
    fn read_config_register(&mut self, reg_idx: usize) -> u32;
    /// Writes `data` (1, 2 or 4 bytes) at byte `offset` (0..4) inside register `reg_idx`.
    /// Returns the BAR moves the caller must apply.
    fn write_config_register(
        &mut self,
        reg_idx: usize,
        offset: u64,
        data: &[u8],
    ) -> Vec<BarReprogram>;
}
