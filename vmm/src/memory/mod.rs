//! Guest RAM: anonymous mappings, one per `RamRange`, each registered as a KVM memory slot.

pub mod bar_allocator;
pub mod layout;
pub mod memslots;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::memory::layout::Layout;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot allocate guest memory: {0}")]
    Allocate(String),
    #[error("KVM refused memory slot {slot} ({size:#x} bytes at {addr:#x}): {error}")]
    SetSlot {
        slot: u32,
        addr: u64,
        size: u64,
        error: kvm_ioctls::Error,
    },
}

/// Allocates guest RAM and registers it with KVM; returns the memory and the next free slot.
pub fn create_guest_memory(
    vm: &VmFd,
    layout: &Layout,
) -> Result<(GuestMemoryMmap, u32), MemoryError> {
    let ranges: Vec<(GuestAddress, usize)> = layout
        .ram
        .iter()
        .map(|r| (GuestAddress(r.start), r.size as usize))
        .collect();
    let mem = GuestMemoryMmap::<()>::from_ranges(&ranges)
        .map_err(|e| MemoryError::Allocate(e.to_string()))?;
    let mut slot = 0u32;
    for region in mem.iter() {
        let addr = region.start_addr().0;
        let size = region.len();
        let host = region.as_ptr() as u64;
        let desc = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: addr,
            memory_size: size,
            userspace_addr: host,
        };
        // SAFETY: the mapping belongs to `mem`, which outlives the VM (the VM keeps it), and
        // slot numbers are unique because they are handed out in order here.
        unsafe { vm.set_user_memory_region(desc) }.map_err(|source| MemoryError::SetSlot {
            slot,
            addr,
            size,
            error: source,
        })?;
        slot += 1;
    }
    Ok((mem, slot))
}
