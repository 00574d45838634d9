//! What a passed-through function is reached through: a host VFIO device (`--device`) or a
//! vfio-user server (`--user-device`). The rest of `passthrough` asks it for the same four
//! things — region info, region access, what to mmap, the interrupts' eventfds — and only
//! opening and closing differ.

use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::Arc;

use pci::vfio::{RegionInfo, RegionIo, SparseArea};
use vfio::{Device, DeviceIrqs, FdRegion};
use vfio_bindings::bindings::vfio::VFIO_REGION_INFO_FLAG_MMAP;

use super::user::UserDevice;

#[derive(Clone)]
pub enum Host {
    Vfio(Arc<Device>),
    User(Arc<UserDevice>),
}

impl Host {
    pub fn region_info(&self, index: u32) -> Option<RegionInfo> {
        match self {
            Host::Vfio(d) => {
                let sparse = d.sparse_areas(index).map(|areas| {
                    areas
                        .into_iter()
                        .map(|(offset, size)| SparseArea { offset, size })
                        .collect()
                });
                Some(RegionInfo {
                    size: d.get_region_size(index),
                    mmap: d.get_region_flags(index) & VFIO_REGION_INFO_FLAG_MMAP != 0,
                    sparse,
                })
            }
            Host::User(u) => u.region_info(index),
        }
    }

    /// Region `index` for reads and writes (config space, a BAR's trapped parts).
    pub fn region(&self, index: u32) -> Region {
        match self {
            Host::Vfio(d) => Region::Vfio(FdRegion {
                device: d.clone(),
                base: d.get_region_offset(index),
            }),
            Host::User(u) => Region::User {
                device: u.clone(),
                index,
            },
        }
    }

    /// The descriptor region `index`'s mappable parts are mmapped from, and the region's
    /// offset in it.
    pub fn mmap_source(&self, index: u32) -> Option<(RawFd, u64)> {
        match self {
            Host::Vfio(d) => Some((d.as_raw_fd(), d.get_region_offset(index))),
            Host::User(u) => u.mmap_source(index),
        }
    }

    pub fn irqs(&self) -> Arc<dyn DeviceIrqs> {
        match self {
            Host::Vfio(d) => d.clone(),
            Host::User(u) => u.clone(),
        }
    }
}

/// One region of the device, as `pci::vfio` reaches it (`RegionIo`: the config space
/// emulation and the BAR dispatcher).
pub enum Region {
    Vfio(FdRegion),
    User { device: Arc<UserDevice>, index: u32 },
}

impl RegionIo for Region {
    fn read(&self, offset: u64, data: &mut [u8]) -> io::Result<()> {
        match self {
            Region::Vfio(r) => r.pread(offset, data),
            Region::User { device, index } => device.read(*index, offset, data),
        }
    }
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        match self {
            Region::Vfio(r) => r.pwrite(offset, data),
            Region::User { device, index } => device.write(*index, offset, data),
        }
    }
}
