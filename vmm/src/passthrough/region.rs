//! A device region as `pci::vfio` reaches it (`RegionIo`: the config space emulation and the
//! BAR dispatcher). The region access itself is the vfio crate's; the impl is here because
//! neither crate depends on the other.

use std::ops::Deref;

use pci::vfio::dispatch::RegionIo;

pub struct Region(pub vfio::FdRegion);

impl Deref for Region {
    type Target = vfio::FdRegion;
    fn deref(&self) -> &vfio::FdRegion {
        &self.0
    }
}

impl RegionIo for Region {
    fn read(&self, offset: u64, data: &mut [u8]) -> std::io::Result<()> {
        self.0.pread(offset, data)
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.0.pwrite(offset, data)
    }
}
