use std::path::PathBuf;

use vfio_ioctls::VfioError;

/// Why a host VFIO device could not be opened, reset or DMA-mapped. One line each: they reach
/// the log and the REST API's answers as they are.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path} is not a PCI device in sysfs: {error}")]
    NotADevice {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "{path}: the device is bound to {driver}, not to a VFIO driver (bind it to vfio-pci first)"
    )]
    NotVfioBound { path: PathBuf, driver: String },
    #[error("{path}: cannot open the VFIO container /dev/vfio/vfio: {error}")]
    Container { path: PathBuf, error: VfioError },
    #[error("{path}: cannot read the device's IOMMU group (is the IOMMU on?): {error}")]
    NoIommuGroup {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: {error}")]
    RegionCheck {
        path: PathBuf,
        error: crate::precheck::PrecheckError,
    },
    #[error("{path}: cannot open the device through its IOMMU group: {error}")]
    Device { path: PathBuf, error: VfioError },
    #[error("{path}: cannot DMA-map guest RAM at {gpa:#x}: {error}")]
    DmaMap {
        path: PathBuf,
        gpa: u64,
        error: VfioError,
    },
    #[error("{path}: VFIO_DEVICE_RESET: {error}")]
    Reset {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("no VFIO device is open, so there is no container for DMA mappings")]
    NoContainer,
    #[error("cannot DMA-map {size:#x} bytes at IOVA {iova:#x}: {error}")]
    DmaMapRange {
        iova: u64,
        size: usize,
        error: VfioError,
    },
    #[error("cannot DMA-unmap {size:#x} bytes at IOVA {iova:#x}: {error}")]
    DmaUnmap {
        iova: u64,
        size: usize,
        error: VfioError,
    },
    #[error("cannot mmap {size:#x} bytes at file offset {offset:#x} for IOVA {iova:#x}: {error}")]
    DmaMmap {
        iova: u64,
        size: usize,
        offset: u64,
        error: vm_memory::mmap::MmapRegionError,
    },
}
