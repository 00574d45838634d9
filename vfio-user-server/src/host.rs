//! What the backend needs from the host device: its regions and interrupts as VFIO reports
//! them, region access, VFIO_DEVICE_SET_IRQS, reset, and DMA mappings of client memory. The
//! production implementation is `vfio_host::VfioHost`; the unit tests and the fuzz target use
//! `fake::Fake` (feature `fake`).

use std::fs::File;
use std::io;
use std::os::unix::io::RawFd;

use pci::vfio::SparseArea;

/// VFIO_DEVICE_GET_REGION_INFO of one host region.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostRegion {
    pub size: u64,
    /// VFIO_REGION_INFO_FLAG_*.
    pub flags: u32,
    /// Where the region starts in the device fd (for pread/pwrite and mmap).
    pub offset: u64,
    /// The sparse-mmap capability's areas, when it is present.
    pub sparse: Option<Vec<SparseArea>>,
}

pub trait HostDevice: Send + Sync + 'static {
    /// Keeps one DMA mapping (and the memory behind it) alive until given back to
    /// `dma_unmap`.
    type Dma: Send;

    /// Region `index` (VFIO_PCI_*_REGION_INDEX); None when the device has none.
    fn region(&self, index: u32) -> Option<HostRegion>;
    /// Region read/write at `offset` inside region `index`.
    fn read(&self, index: u32, offset: u64, data: &mut [u8]) -> io::Result<()>;
    fn write(&self, index: u32, offset: u64, data: &[u8]) -> io::Result<()>;
    /// (flags, count) of interrupt `index`; None when the device has none.
    fn irq_info(&self, index: u32) -> Option<(u32, u32)>;
    /// VFIO_DEVICE_SET_IRQS with these arguments; `fds` are the eventfds for
    /// VFIO_IRQ_SET_DATA_EVENTFD.
    fn set_irqs(
        &self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        fds: &[File],
    ) -> io::Result<()>;
    /// VFIO_DEVICE_RESET.
    fn reset(&self) -> io::Result<()>;
    /// Maps `size` bytes of `file` at `offset` for the device to reach at `iova`.
    fn dma_map(&self, iova: u64, size: u64, file: File, offset: u64) -> io::Result<Self::Dma>;
    /// Removes a mapping `dma_map` made.
    fn dma_unmap(&self, dma: Self::Dma) -> io::Result<()>;
    /// The fd a client mmaps BAR areas from (the VFIO device fd): region offsets are in it.
    fn mmap_fd(&self) -> Option<RawFd>;
}
