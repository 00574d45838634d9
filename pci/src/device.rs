//! The interface every emulated or passed-through PCI function implements.

pub trait PciDevice: Send {
    /// Reads one 32-bit configuration register (`reg_idx` = offset / 4, 0..1024).
    fn read_config_register(&mut self, reg_idx: usize) -> u32;
    /// Writes `data` (1, 2 or 4 bytes) at byte `offset` (0..4) inside register `reg_idx`.
    /// A function whose BARs the guest moves applies the move itself, before returning: only
    /// it knows what backs the BAR (a passed-through function's memory slots and traps).
    fn write_config_register(&mut self, reg_idx: usize, offset: u64, data: &[u8]);
}
