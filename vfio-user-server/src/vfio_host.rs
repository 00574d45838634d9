//! The host device through the `vfio` crate: opened in a type1 container of this process's
//! own, with no guest RAM in it (the client's memory arrives with DMA_MAP).

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::Arc;

use pci::vfio::SparseArea;
use vfio::{Containers, Device, DmaRegion, FdRegion};
use vfio_bindings::bindings::vfio::VFIO_PCI_CONFIG_REGION_INDEX;
use vm_memory::GuestMemoryMmap;

use crate::host::{HostDevice, HostRegion};

pub struct VfioHost {
    /// Declared before the container so that it closes first.
    device: Arc<Device>,
    containers: Containers,
}

impl VfioHost {
    pub fn open(path: &Path) -> Result<Self, vfio::Error> {
        let containers = Containers::default();
        let device = containers.open(path, &GuestMemoryMmap::default())?;
        Ok(VfioHost { device, containers })
    }

    fn region_io(&self, index: u32) -> io::Result<FdRegion> {
        // vfio-ioctls answers indexes past the config region from its neighbour's entry
        // (docs/background.md); nothing past it is a region this server uses.
        if index > VFIO_PCI_CONFIG_REGION_INDEX {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        Ok(FdRegion {
            device: self.device.clone(),
            base: self.device.get_region_offset(index),
        })
    }
}

impl HostDevice for VfioHost {
    type Dma = DmaRegion;

    fn region(&self, index: u32) -> Option<HostRegion> {
        if index > VFIO_PCI_CONFIG_REGION_INDEX {
            return None;
        }
        let sparse = self.device.sparse_areas(index).map(|areas| {
            areas
                .into_iter()
                .map(|(offset, size)| SparseArea { offset, size })
                .collect()
        });
        Some(HostRegion {
            size: self.device.get_region_size(index),
            flags: self.device.get_region_flags(index),
            offset: self.device.get_region_offset(index),
            sparse,
        })
    }

    fn read(&self, index: u32, offset: u64, data: &mut [u8]) -> io::Result<()> {
        self.region_io(index)?.pread(offset, data)
    }

    fn write(&self, index: u32, offset: u64, data: &[u8]) -> io::Result<()> {
        self.region_io(index)?.pwrite(offset, data)
    }

    fn irq_info(&self, index: u32) -> Option<(u32, u32)> {
        self.device.irq_info(index)
    }

    fn set_irqs(
        &self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        fds: &[File],
    ) -> io::Result<()> {
        let fds: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        self.device.set_irqs(index, flags, start, count, &fds)
    }

    fn reset(&self) -> io::Result<()> {
        self.device.reset().map_err(io::Error::other)
    }

    fn dma_map(&self, iova: u64, size: u64, file: File, offset: u64) -> io::Result<DmaRegion> {
        let size = usize::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        self.containers
            .dma_map_file(iova, size, file, offset)
            .map_err(io::Error::other)
    }

    fn dma_unmap(&self, dma: DmaRegion) -> io::Result<()> {
        dma.unmap().map_err(io::Error::other)
    }

    fn mmap_fd(&self) -> Option<RawFd> {
        Some(self.device.as_raw_fd())
    }
}
