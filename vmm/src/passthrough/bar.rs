//! One BAR of a passed-through function in the guest: KVM memory slots over host mappings of
//! the device fd for the mappable pieces, and one trap device on the MMIO bus for the rest
//! (forwarded to the device, ghvmm's padding, the emulated MSI-X table). They are installed,
//! moved and removed together.

use std::sync::Arc;

use parking_lot::Mutex;

use devices::{Bus, BusDevice};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use pci::vfio::dispatch;
use pci::vfio::{AccessKind, BarCounters, BarLayout, PieceKind, SharedInterrupts};
use vfio::HostMapping;

use super::host::Region;
use crate::memory::bar_allocator::Window;

/// The trapped parts of one BAR on the MMIO bus.
pub struct BarTrap {
    pub bar: usize,
    pub bar_base: u64,
    pub layout: BarLayout,
    pub region: Region,
    /// Only the BAR that holds the MSI-X table looks at the interrupt state; the others
    /// (a GPU's memory BAR and its padding) never take that lock.
    pub interrupts: Option<SharedInterrupts>,
    /// Every access this trap serves, by kind.
    counters: Arc<BarCounters>,
    reported: bool,
}

impl BarTrap {
    pub fn new(
        bar: usize,
        bar_base: u64,
        layout: BarLayout,
        region: Region,
        interrupts: Option<SharedInterrupts>,
        counters: Arc<BarCounters>,
    ) -> Self {
        BarTrap {
            bar,
            bar_base,
            layout,
            region,
            interrupts,
            counters,
            reported: false,
        }
    }

    fn report(&mut self, errors: Vec<dispatch::DeviceError>) {
        // Once per BAR: a failing device must not flood the log from a vCPU loop.
        if let Some(e) = errors.first() {
            if !self.reported {
                log::error!(
                    "BAR {}: region access at {:#x} failed: {}",
                    self.bar,
                    e.offset,
                    e.error
                );
                self.reported = true;
            }
        }
    }
}

impl BusDevice for BarTrap {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        let at = base - self.bar_base + offset;
        if let Some(irq) = &self.interrupts {
            let irq = irq.lock();
            if irq.table_read(self.bar, at, data) {
                self.counters.count(AccessKind::Msix);
                return;
            }
        }
        self.counters
            .count(AccessKind::of(&self.layout, at, data.len()));
        let errors = dispatch::read(&self.layout, &self.region, at, data);
        self.report(errors);
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        let at = base - self.bar_base + offset;
        if let Some(irq) = &self.interrupts {
            let mut irq = irq.lock();
            if irq.table_write(self.bar, at, data) {
                self.counters.count(AccessKind::Msix);
                return;
            }
        }
        self.counters
            .count(AccessKind::of(&self.layout, at, data.len()));
        let errors = dispatch::write(&self.layout, &self.region, at, data);
        self.report(errors);
    }
}

/// A mapped piece of a BAR: its host mapping and the KVM slot number reserved for it.
pub struct MappedPiece {
    pub offset: u64,
    pub size: u64,
    pub host: HostMapping,
    pub slot: u32,
}

/// Where the BAR's guest address range came from, to give it back.
#[derive(Debug, Clone, Copy)]
pub struct BarSpace {
    pub segment: u16,
    pub window: Window,
    pub base: u64,
    pub size: u64,
}

/// One BAR's pieces, installable at any guest address.
pub struct BarPlan {
    pub index: usize,
    pub space: BarSpace,
    pub mapped: Vec<MappedPiece>,
    pub trap: Arc<Mutex<BarTrap>>,
    /// (offset, length) of each unmapped run of the BAR, one bus range each.
    pub trap_runs: Vec<(u64, u64)>,
    pub installed: Option<u64>,
    /// The trap's counters, read without its lock.
    pub counters: Arc<BarCounters>,
}

/// The runs of pieces that are not mapped, merged: each becomes one range on the MMIO bus.
pub fn trap_runs(layout: &BarLayout) -> Vec<(u64, u64)> {
    let mut run: Option<(u64, u64)> = None;
    let mut runs = Vec::new();
    for piece in &layout.pieces {
        let trapped = !matches!(piece.kind, PieceKind::Mapped { .. });
        match (trapped, run) {
            (true, Some((s, l))) => run = Some((s, l + piece.size)),
            (true, None) => run = Some((piece.offset, piece.size)),
            (false, Some(r)) => {
                runs.push(r);
                run = None;
            }
            (false, None) => {}
        }
    }
    runs.extend(run);
    runs
}

impl BarPlan {
    fn set_slot(
        vm: &VmFd,
        p: &MappedPiece,
        gpa: u64,
        size: u64,
    ) -> std::result::Result<(), kvm_ioctls::Error> {
        let desc = kvm_userspace_memory_region {
            slot: p.slot,
            flags: 0,
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: p.host.addr(),
        };
        // SAFETY: the host mapping lives in `p` until the plan is dropped, and every slot is
        // deleted (size 0) before that (`uninstall`).
        unsafe { vm.set_user_memory_region(desc) }
    }

    /// Installs the BAR at `base`; on failure, whatever was installed is removed again.
    pub fn install(&mut self, vm: &VmFd, bus: &Bus, base: u64) -> Result<(), String> {
        self.uninstall(vm, bus);
        // Recorded first, so that `uninstall` undoes a partial install.
        self.installed = Some(base);
        let result = self.install_pieces(vm, bus, base);
        if result.is_err() {
            self.uninstall(vm, bus);
        }
        result
    }

    fn install_pieces(&mut self, vm: &VmFd, bus: &Bus, base: u64) -> Result<(), String> {
        for p in &self.mapped {
            Self::set_slot(vm, p, base + p.offset, p.size)
                .map_err(|e| format!("slot {} at {:#x}: {e}", p.slot, base + p.offset))?;
        }
        self.trap.lock().bar_base = base;
        for &(off, len) in &self.trap_runs {
            bus.insert(self.trap.clone(), base + off, len)
                .map_err(|e| format!("trap at {:#x}: {e}", base + off))?;
        }
        Ok(())
    }

    /// Removes the BAR's slots and trap ranges (deleting a slot that was never set is a
    /// harmless no-op for KVM; removing a bus range that is not ours is refused by address).
    pub fn uninstall(&mut self, vm: &VmFd, bus: &Bus) {
        let Some(base) = self.installed.take() else {
            return;
        };
        for p in &self.mapped {
            if let Err(e) = Self::set_slot(vm, p, base + p.offset, 0) {
                log::error!("BAR {}: removing slot {}: {e}", self.index, p.slot);
            }
        }
        for &(off, _) in &self.trap_runs {
            if let Some((range, dev)) = bus.resolve(base + off) {
                // Only our own trap: a partial install may have failed on someone else's.
                if range.base == base + off
                    && std::ptr::addr_eq(Arc::as_ptr(&dev), Arc::as_ptr(&self.trap))
                {
                    let _ = bus.remove(base + off);
                }
            }
        }
    }
}
