//! A host VFIO device and nothing of a VM: ghvmm's passthrough (in `vmm`) builds the guest's
//! view of the device on top of this, and nothing here touches KVM, so a process that is not
//! a VMM (a vfio-user server) can use it as well.
//!
//! vfio-ioctls 0.10 is used for the container/group/device set-up and region info. Its
//! `region_read`/`region_write` only log errors and it has no mmap helper, so `region` does
//! pread/pwrite and mmap on the device fd itself; its reset drops the ioctl's result, so
//! `Device::reset` does the ioctl itself; its walk of a region's capability chain is unbounded,
//! so `region_info` reads region info (and the sparse areas) itself, and `precheck` (through
//! the ioctls of `probe`) runs that bounded reader on every region before vfio-ioctls opens
//! the device.
//!
//! `container` holds the one type1 container and guest RAM's DMA mappings in it; `device`
//! opens the device so that closing it never depends on sysfs (vfio-ioctls' close panics
//! when the host has removed the device); `irq` hands VFIO the eventfds of MSI/MSI-X vectors;
//! `request` watches VFIO's request interrupt, through which the host asks for the device
//! back; `dma` maps another process's memory (a vfio-user client's, by fd) for DMA.

#![deny(clippy::undocumented_unsafe_blocks)]

mod container;
mod device;
mod dma;
mod error;
mod irq;
mod precheck;
mod private_dir;
mod probe;
mod region;
pub mod region_info;
mod request;

pub use container::Containers;
pub use device::Device;
pub use dma::DmaRegion;
pub use error::Error;
pub use irq::{DeviceIrqs, IrqError, IrqKind};
pub use precheck::{PrecheckError, MAX_REGIONS};
pub use private_dir::{fresh_private_dir, private_dir};
pub use region::{FdRegion, HostMapping};
pub use request::{OnRequest, OnStart, RequestWatcher, Spawn, WatchError, WatcherHooks};
// The vfio-ioctls types this API shows (a `Device` derefs to its `VfioDevice`), from the one
// version this crate pins, so that callers need no dependency of their own on it.
pub use vfio_ioctls::{VfioDevice, VfioError, VfioRegionInfoCap};
