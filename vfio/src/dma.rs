//! Memory of another process (a vfio-user client's guest RAM, passed as a file descriptor)
//! DMA-mapped for the container's devices. The mmap of that memory and its DMA mapping live
//! and die together, so nothing here lets a device reach memory this process has unmapped.

use std::fs::File;
use std::sync::Arc;

use vfio_ioctls::VfioContainer;
use vm_memory::{FileOffset, MmapRegion};

use crate::Error;

/// `size` bytes of a file mapped into this process and DMA-mapped at `iova`. Dropping it
/// removes the DMA mapping first and then the process mapping.
pub struct DmaRegion {
    iova: u64,
    size: usize,
    /// None once released.
    mmap: Option<MmapRegion<()>>,
    container: Arc<VfioContainer>,
}

impl DmaRegion {
    pub(crate) fn map(
        container: Arc<VfioContainer>,
        iova: u64,
        size: usize,
        file: File,
        offset: u64,
    ) -> Result<Self, Error> {
        let mmap =
            MmapRegion::<()>::from_file(FileOffset::new(file, offset), size).map_err(|error| {
                Error::DmaMmap {
                    iova,
                    size,
                    offset,
                    error,
                }
            })?;
        // SAFETY: the memory is this region's own mapping, which stays mapped until the DMA
        // mapping is removed (`release`), or forever if that fails.
        unsafe { container.vfio_dma_map(iova, size, mmap.as_ptr()) }
            .map_err(|error| Error::DmaMapRange { iova, size, error })?;
        Ok(DmaRegion {
            iova,
            size,
            mmap: Some(mmap),
            container,
        })
    }

    pub fn iova(&self) -> u64 {
        self.iova
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Removes the DMA mapping, then unmaps the memory.
    pub fn unmap(mut self) -> Result<(), Error> {
        self.release()
    }

    fn release(&mut self) -> Result<(), Error> {
        let Some(mmap) = self.mmap.take() else {
            return Ok(());
        };
        match self.container.vfio_dma_unmap(self.iova, self.size) {
            Ok(()) => Ok(()),
            Err(error) => {
                // The device may still reach the memory: it must stay mapped.
                std::mem::forget(mmap);
                Err(Error::DmaUnmap {
                    iova: self.iova,
                    size: self.size,
                    error,
                })
            }
        }
    }
}

impl Drop for DmaRegion {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            log::error!("{e}; the memory stays mapped");
        }
    }
}
