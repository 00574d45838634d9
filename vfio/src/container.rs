//! The VM's one VFIO type1 container and guest RAM's DMA mappings in it.
//!
//! The kernel drops a container's IOMMU setup, mappings included, when its last group leaves
//! (after the last passed-through device is unplugged); vfio-ioctls sets the IOMMU type
//! again when the next group joins. So RAM is DMA-mapped whenever a device arrives in a
//! container that has no device, and the count of live devices is kept here.
//!
//! Once no device is left, the container itself is dropped and the next device gets a new
//! one: an empty container holds nothing worth keeping, and a group that a failed open or
//! close left attached to it (vfio-ioctls does not detach the group when opening its device
//! fails, nor when its close panics: `device`) is released with it.

use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;

use vfio_ioctls::VfioContainer;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::device::Device;
use crate::dma::DmaRegion;
use crate::Error;

#[derive(Default)]
struct State {
    container: Option<Arc<VfioContainer>>,
    devices: usize,
}

/// The VM's one container, made when a device arrives in it and dropped when the last one
/// leaves.
#[derive(Default)]
pub struct Containers {
    state: Mutex<State>,
}

impl Containers {
    /// Opens the device at `path` (a sysfs device directory; it must be bound to a VFIO
    /// driver) in the container (created on first use), with guest RAM DMA-mapped
    /// (IOVA = guest physical address) if it is the only device.
    pub fn open(&self, path: &Path, mem: &GuestMemoryMmap) -> Result<Arc<Device>, Error> {
        check_bound_to_vfio(path)?;
        let mut st = self.state.lock();
        let container = match &st.container {
            Some(c) => c.clone(),
            None => {
                let c = Arc::new(VfioContainer::new(None).map_err(|error| Error::Container {
                    path: path.into(),
                    error,
                })?);
                st.container = Some(c.clone());
                c
            }
        };
        let device = match Device::open(path, container.clone()) {
            Ok(d) => Arc::new(d),
            Err(e) => {
                if st.devices == 0 {
                    st.container = None;
                }
                return Err(e);
            }
        };
        if st.devices == 0 {
            for region in mem.iter() {
                let gpa = region.start_addr().0;
                // SAFETY: guest RAM is mapped for the life of the VM, which outlives its
                // devices; the mapping is removed by the kernel when the last group leaves the
                // container.
                let r =
                    unsafe { container.vfio_dma_map(gpa, region.len() as usize, region.as_ptr()) };
                if let Err(error) = r {
                    // Dropping the device detaches its group, which also drops what was
                    // mapped so far.
                    drop(device);
                    st.container = None;
                    return Err(Error::DmaMap {
                        path: path.into(),
                        gpa,
                        error,
                    });
                }
            }
        }
        st.devices += 1;
        Ok(device)
    }

    /// Closes a device opened by `open`: waits until every other reference (a vCPU still
    /// inside one of its traps) is gone, so that its fds and group are released before this
    /// returns and a new device can take the group at once.
    pub fn close(&self, device: Arc<Device>) {
        let mut st = self.state.lock();
        let mut device = device;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            match Arc::try_unwrap(device) {
                Ok(d) => {
                    drop(d);
                    break;
                }
                Err(d) if std::time::Instant::now() < deadline => {
                    device = d;
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(d) => {
                    log::error!("a VFIO device is still referenced; it closes when released");
                    drop(d);
                    break;
                }
            }
        }
        st.devices = st.devices.saturating_sub(1);
        if st.devices == 0 {
            st.container = None;
        }
    }

    pub fn devices(&self) -> usize {
        self.state.lock().devices
    }

    /// The container while a device is open in it: there is none to map into otherwise.
    fn container(&self) -> Result<Arc<VfioContainer>, Error> {
        self.state
            .lock()
            .container
            .clone()
            .ok_or(Error::NoContainer)
    }

    /// DMA-maps `size` bytes of host memory at `host` for the devices to reach at `iova`, on
    /// top of the guest RAM that `open` mapped. The mapping lasts until `dma_unmap`, or until
    /// the last device is closed, which drops the container with its mappings.
    ///
    /// # Safety
    ///
    /// `[host, host + size)` must be memory of this process that stays mapped until the DMA
    /// mapping goes: the devices read and write it at any time.
    pub unsafe fn dma_map(&self, iova: u64, size: usize, host: *mut u8) -> Result<(), Error> {
        let container = self.container()?;
        // SAFETY: the caller keeps the memory mapped (this function's contract).
        unsafe { container.vfio_dma_map(iova, size, host) }.map_err(|error| Error::DmaMapRange {
            iova,
            size,
            error,
        })
    }

    /// Maps `size` bytes of `file` at `offset` into this process and DMA-maps them for the
    /// devices to reach at `iova` (a vfio-user client's guest memory). The mapping lasts
    /// until the returned region is unmapped or dropped, or until the last device is closed.
    pub fn dma_map_file(
        &self,
        iova: u64,
        size: usize,
        file: std::fs::File,
        offset: u64,
    ) -> Result<DmaRegion, Error> {
        DmaRegion::map(self.container()?, iova, size, file, offset)
    }

    /// Removes the DMA mapping of `[iova, iova + size)` (which must cover whole mappings, as
    /// VFIO_IOMMU_UNMAP_DMA wants).
    pub fn dma_unmap(&self, iova: u64, size: usize) -> Result<(), Error> {
        self.container()?
            .vfio_dma_unmap(iova, size)
            .map_err(|error| Error::DmaUnmap { iova, size, error })
    }
}

/// Checks `path` before anything is opened, so that the common mistakes (a path that is not
/// a device, a device still bound to its host driver) get an error that says so.
fn check_bound_to_vfio(path: &Path) -> Result<(), Error> {
    std::fs::metadata(path.join("config")).map_err(|source| Error::NotADevice {
        path: path.into(),
        error: source,
    })?;
    let driver = std::fs::read_link(path.join("driver"))
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "no driver".into());
    let driver = if driver == "no driver" {
        driver
    } else {
        format!("driver {driver}")
    };
    if !driver.contains("vfio") {
        return Err(Error::NotVfioBound {
            path: path.into(),
            driver,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::tempdir::TempDir;

    fn driver(dev: &Path, name: &str) {
        let link = dev.join("driver");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(format!("../../../bus/pci/drivers/{name}"), link).unwrap();
    }

    #[test]
    fn only_a_device_bound_to_a_vfio_driver_is_opened() {
        let tmp = TempDir::new().unwrap();
        let dev = tmp.as_path().join("0000:01:00.0");
        let e = check_bound_to_vfio(&dev).unwrap_err();
        assert!(matches!(e, Error::NotADevice { .. }), "{e:?}");
        std::fs::create_dir(&dev).unwrap();
        std::fs::write(dev.join("config"), [0u8; 64]).unwrap();
        let e = check_bound_to_vfio(&dev).unwrap_err();
        assert!(
            matches!(&e, Error::NotVfioBound { driver, .. } if driver == "no driver"),
            "{e:?}"
        );
        driver(&dev, "e1000e");
        let e = check_bound_to_vfio(&dev).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}: the device is bound to driver e1000e, not to a VFIO driver (bind it to \
                 vfio-pci first)",
                dev.display()
            )
        );
        for vfio in ["vfio-pci", "ghvmm_test_vfio"] {
            driver(&dev, vfio);
            check_bound_to_vfio(&dev).unwrap();
        }
    }

    #[test]
    fn without_a_device_there_is_nothing_to_map_into() {
        let c = Containers::default();
        assert!(matches!(c.dma_unmap(0, 4096), Err(Error::NoContainer)));
        assert_eq!(c.devices(), 0);
    }
}
