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
use std::sync::{Arc, Mutex};

use vfio_ioctls::VfioContainer;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::device::Device;
use super::VfioSetupError;

#[derive(Default)]
struct State {
    container: Option<Arc<VfioContainer>>,
    devices: usize,
}

#[derive(Default)]
pub struct Containers {
    state: Mutex<State>,
}

impl Containers {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens the device at `path` in the container (created on first use), with guest RAM
    /// DMA-mapped (IOVA = guest physical address) if it is the only device.
    pub fn open(&self, path: &Path, mem: &GuestMemoryMmap) -> Result<Arc<Device>, VfioSetupError> {
        let mut st = self.lock();
        let container = match &st.container {
            Some(c) => c.clone(),
            None => {
                let c = Arc::new(VfioContainer::new(None).map_err(|error| {
                    VfioSetupError::Container {
                        path: path.into(),
                        error,
                    }
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
                // SAFETY: guest RAM is mapped for the life of the VM; the mapping is removed
                // by the kernel when the last group leaves the container.
                let r =
                    unsafe { container.vfio_dma_map(gpa, region.len() as usize, region.as_ptr()) };
                if let Err(error) = r {
                    // Dropping the device detaches its group, which also drops what was
                    // mapped so far.
                    drop(device);
                    st.container = None;
                    return Err(VfioSetupError::DmaMap {
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
        let mut st = self.lock();
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
        self.lock().devices
    }
}
