//! Guest RAM: the zones of `MemoryConfig` laid into the layout's RAM ranges, one mapping
//! (and one KVM memory slot) per piece. A zone is private anonymous memory, the user's file
//! (`file=`), or a memfd when it is shared (so another process, a vfio-user backend, can map
//! the same pages from the fd) or backed by huge pages; `backing` makes each mapping.

pub mod backing;
pub mod bar_allocator;
pub mod layout;
pub mod memslots;

use std::sync::Arc;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vm_memory::{GuestRegionMmap, MmapRegion};

use crate::config::{Backing, Zone};
use crate::memory::layout::{ram_pieces, Layout, RamPiece};

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot allocate guest memory: {0}")]
    Allocate(String),
    #[error("cannot create the memfd for guest memory: {0}")]
    Memfd(std::io::Error),
    #[error("cannot size the guest memory memfd to {size:#x} bytes: {error}")]
    ResizeMemfd { size: u64, error: std::io::Error },
    #[error("{zone}: file={}: {reason}", path.display())]
    BackingFile {
        zone: String,
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("huge pages: {0}")]
    HugePages(String),
    #[error("cannot bind guest RAM to host NUMA node {node}: {error}")]
    HostNode { node: u32, error: std::io::Error },
    #[error("cannot prefault guest RAM: {0}")]
    Prefault(std::io::Error),
    #[error("KVM refused memory slot {slot} ({size:#x} bytes at {addr:#x}): {error}")]
    SetSlot {
        slot: u32,
        addr: u64,
        size: u64,
        error: kvm_ioctls::Error,
    },
}

/// How a zone is named in messages.
fn zone_name(z: &Zone) -> String {
    match &z.id {
        Some(id) => format!("--memory-zone id={id}"),
        None => "--memory".into(),
    }
}

/// Maps guest RAM without KVM: each zone's pieces, in address order. The pieces of a zone
/// with a memfd sit at consecutive offsets of it, so each region's `file_offset()` is what a
/// vfio-user DMA_MAP must carry.
pub fn map_zones(pieces: &[RamPiece], zones: &[Zone]) -> Result<GuestMemoryMmap, MemoryError> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let files = zones
        .iter()
        .map(|z| backing::zone_file(&zone_name(z), z.size, &z.backing, &meminfo))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .map(|f| f.map(Arc::new))
        .collect::<Vec<_>>();
    let mut regions = Vec::with_capacity(pieces.len());
    for p in pieces {
        let zone = zones
            .get(p.zone)
            .ok_or_else(|| MemoryError::Allocate(format!("piece of unknown zone {}", p.zone)))?;
        let file = files[p.zone]
            .as_ref()
            .map(|f| FileOffset::from_arc(f.clone(), p.zone_offset));
        let mapping: MmapRegion = backing::map_piece(p.size, &zone.backing, file)?;
        let region = GuestRegionMmap::new(mapping, GuestAddress(p.start)).ok_or_else(|| {
            MemoryError::Allocate(format!("guest address {:#x} overflows", p.start))
        })?;
        regions.push(region);
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| MemoryError::Allocate(e.to_string()))
}

/// Maps `ranges` as one zone backed by `backing` (tests and the vfio-user tests).
pub fn map_guest_memory(
    ranges: &[(GuestAddress, usize)],
    shared: bool,
) -> Result<GuestMemoryMmap, MemoryError> {
    let mut offset = 0u64;
    let pieces: Vec<RamPiece> = ranges
        .iter()
        .map(|&(addr, size)| {
            let p = RamPiece {
                start: addr.0,
                size: size as u64,
                zone: 0,
                zone_offset: offset,
            };
            offset += size as u64;
            p
        })
        .collect();
    let zone = Zone {
        id: None,
        size: offset,
        backing: Backing {
            shared,
            ..Backing::default()
        },
    };
    map_zones(&pieces, &[zone])
}

/// Allocates guest RAM for `zones` and registers it with KVM; returns the memory and the
/// next free slot.
pub fn create_guest_memory(
    vm: &VmFd,
    layout: &Layout,
    zones: &[Zone],
) -> Result<(GuestMemoryMmap, u32), MemoryError> {
    let sizes: Vec<u64> = zones.iter().map(|z| z.size).collect();
    let mem = map_zones(&ram_pieces(&layout.ram, &sizes), zones)?;
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
    fn each_zone_has_its_own_backing() {
        let layout = Layout::new(96 << 20, None, 46).unwrap();
        let zones = [
            Zone {
                id: Some("a".into()),
                size: 32 << 20,
                backing: Backing::default(),
            },
            Zone {
                id: Some("b".into()),
                size: 64 << 20,
                backing: Backing {
                    shared: true,
                    ..Backing::default()
                },
            },
        ];
        let pieces = ram_pieces(&layout.ram, &[32 << 20, 64 << 20]);
        let mem = map_zones(&pieces, &zones).unwrap();
        let regions: Vec<_> = mem.iter().collect();
        assert_eq!(regions.len(), 2);
        assert!(regions[0].file_offset().is_none());
        let f = regions[1].file_offset().unwrap();
        assert_eq!(
            (f.start(), f.file().metadata().unwrap().len()),
            (0, 64 << 20)
        );
        assert_eq!(regions[1].start_addr(), GuestAddress(32 << 20));
    }

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

    /// Maps RANGES as one zone in `file` (the user's `file=`).
    fn map_in_file(file: &std::path::Path, shared: bool) -> Result<GuestMemoryMmap, MemoryError> {
        let zone = Zone {
            id: Some("m0".into()),
            size: 0x30_0000,
            backing: Backing {
                shared,
                file: Some(file.to_path_buf()),
                ..Backing::default()
            },
        };
        let pieces = [
            RamPiece {
                start: RANGES[0].0 .0,
                size: RANGES[0].1 as u64,
                zone: 0,
                zone_offset: 0,
            },
            RamPiece {
                start: RANGES[1].0 .0,
                size: RANGES[1].1 as u64,
                zone: 0,
                zone_offset: RANGES[0].1 as u64,
            },
        ];
        map_zones(&pieces, &[zone])
    }

    #[test]
    fn a_zone_file_is_the_guests_ram() {
        let dir = std::env::temp_dir().join(format!("ghvmm-zonefile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("zone0");
        // One byte more than the zone: a longer file is fine, its tail untouched.
        let mut content = vec![0u8; 0x30_0001];
        content[0x10_0000 + 0x20] = 0x77;
        content[0x30_0000] = 0x99;
        std::fs::write(&path, &content).unwrap();

        let mem = map_in_file(&path, true).unwrap();
        // The file's bytes are the guest's, at the piece's offset...
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(0x1_0000_0020)).unwrap(),
            0x77
        );
        // ...and the guest's writes are the file's, in both pieces.
        mem.write_obj(0xdead_beef_u32, GuestAddress(0x1234))
            .unwrap();
        mem.write_obj(0x0bad_cafe_u32, GuestAddress(0x1_0000_1234))
            .unwrap();
        let file = std::fs::read(&path).unwrap();
        assert_eq!(file.len(), 0x30_0001);
        let word = |at: usize| u32::from_le_bytes(file[at..at + 4].try_into().unwrap());
        assert_eq!(word(0x1234), 0xdead_beef);
        assert_eq!(word(0x10_0000 + 0x1234), 0x0bad_cafe);
        assert_eq!(file[0x30_0000], 0x99);
        drop(mem);

        // shared=off: the file is read, the guest's writes stay in private copies.
        let private = map_in_file(&path, false).unwrap();
        assert_eq!(
            private.read_obj::<u32>(GuestAddress(0x1234)).unwrap(),
            0xdead_beef
        );
        private.write_obj(0u32, GuestAddress(0x1234)).unwrap();
        let file = std::fs::read(&path).unwrap();
        assert_eq!(word_at(&file, 0x1234), 0xdead_beef);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn word_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }
}
