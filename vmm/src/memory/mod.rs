//! Guest RAM: one mapping per `RamRange`, each registered as a KVM memory slot. The mappings
//! are private anonymous memory, or, with `--memory shared=on`, consecutive pieces of one memfd
//! so that another process (a vfio-user backend) can map the same pages from the fd.

pub mod bar_allocator;
pub mod layout;
pub mod memslots;

use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::Arc;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::memory::layout::Layout;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot allocate guest memory: {0}")]
    Allocate(String),
    #[error("cannot create the memfd for shared guest memory: {0}")]
    Memfd(std::io::Error),
    #[error("cannot size the shared guest memory memfd to {size:#x} bytes: {error}")]
    ResizeMemfd { size: u64, error: std::io::Error },
    #[error("KVM refused memory slot {slot} ({size:#x} bytes at {addr:#x}): {error}")]
    SetSlot {
        slot: u32,
        addr: u64,
        size: u64,
        error: kvm_ioctls::Error,
    },
}

/// Maps guest RAM for `ranges` (guest address, size), without KVM: private anonymous memory,
/// or with `shared` one memfd mapped MAP_SHARED, range after range at consecutive offsets, so
/// each region's `file_offset()` is what a vfio-user DMA_MAP must carry.
pub fn map_guest_memory(
    ranges: &[(GuestAddress, usize)],
    shared: bool,
) -> Result<GuestMemoryMmap, MemoryError> {
    fn allocate(e: impl std::fmt::Display) -> MemoryError {
        MemoryError::Allocate(e.to_string())
    }
    if !shared {
        return GuestMemoryMmap::<()>::from_ranges(ranges).map_err(allocate);
    }
    let file = Arc::new(ram_memfd()?);
    let total: u64 = ranges.iter().map(|(_, size)| *size as u64).sum();
    // A memfd grows only through ftruncate; its pages are allocated on first touch, as with
    // anonymous memory.
    file.set_len(total)
        .map_err(|error| MemoryError::ResizeMemfd { size: total, error })?;
    let mut offset = 0u64;
    let with_files: Vec<(GuestAddress, usize, Option<FileOffset>)> = ranges
        .iter()
        .map(|&(addr, size)| {
            let piece = FileOffset::from_arc(file.clone(), offset);
            offset += size as u64;
            (addr, size, Some(piece))
        })
        .collect();
    GuestMemoryMmap::<()>::from_ranges_with_files(&with_files).map_err(allocate)
}

fn ram_memfd() -> Result<File, MemoryError> {
    // SAFETY: the name is a NUL-terminated literal; the call only returns a new fd or -1.
    let fd = unsafe { libc::memfd_create(c"ghvmm-ram".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Allocates guest RAM and registers it with KVM; returns the memory and the next free slot.
pub fn create_guest_memory(
    vm: &VmFd,
    layout: &Layout,
    shared: bool,
) -> Result<(GuestMemoryMmap, u32), MemoryError> {
    let ranges: Vec<(GuestAddress, usize)> = layout
        .ram
        .iter()
        .map(|r| (GuestAddress(r.start), r.size as usize))
        .collect();
    let mem = map_guest_memory(&ranges, shared)?;
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use vm_memory::{Bytes, MmapRegion};

    use super::*;

    const RANGES: [(GuestAddress, usize); 2] = [
        (GuestAddress(0), 0x10_0000),
        (GuestAddress(0x1_0000_0000), 0x20_0000),
    ];

    #[test]
    fn private_memory_has_no_file() {
        let mem = map_guest_memory(&RANGES, false).unwrap();
        assert!(mem.iter().all(|r| r.file_offset().is_none()));
    }

    #[test]
    fn shared_memory_is_one_memfd_at_consecutive_offsets() {
        let mem = map_guest_memory(&RANGES, true).unwrap();
        let regions: Vec<_> = mem.iter().collect();
        assert_eq!(regions.len(), 2);
        let (first, second) = (
            regions[0].file_offset().unwrap(),
            regions[1].file_offset().unwrap(),
        );
        assert_eq!((first.start(), second.start()), (0, 0x10_0000));
        assert!(Arc::ptr_eq(first.arc(), second.arc()));
        let file = first.file();
        assert_eq!(file.metadata().unwrap().len(), 0x30_0000);

        // A write through the guest memory reaches the fd at the region's offset...
        let addr = GuestAddress(0x1_0000_0000 + 0x1234);
        mem.write_obj(0xdead_beef_u32, addr).unwrap();
        let mut buf = [0u8; 4];
        file.read_exact_at(&mut buf, 0x10_0000 + 0x1234).unwrap();
        assert_eq!(u32::from_le_bytes(buf), 0xdead_beef);

        // ...and a second mapping of the fd, as a vfio-user backend makes, shares the pages.
        let other = MmapRegion::<()>::from_file(
            FileOffset::from_arc(first.arc().clone(), 0x10_0000),
            0x20_0000,
        )
        .unwrap();
        // SAFETY: `other` maps 0x20_0000 bytes, so offset 0x10 is inside it.
        unsafe { other.as_ptr().add(0x10).write_volatile(0x5a) };
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(0x1_0000_0010)).unwrap(),
            0x5a
        );
    }
}
