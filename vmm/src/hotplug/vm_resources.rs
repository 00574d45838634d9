//! The VM's side of hot plug: everything a passed-through device touches, gathered once by
//! `vm::Vm::start`.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;

use devices::{Ged, PciHotplug};
use pci::PciSegment;

use super::{Backend, Ejects, HotplugError, OnHostRequest};
use crate::config::DeviceSource;
use crate::memory::layout::Layout;

use crate::passthrough::{PassthroughDevice, PassthroughVm};

/// The VM's resources that attaching and removing devices use.
pub struct VmResources {
    /// What each device's passthrough needs (KVM, guest memory, the MMIO bus, BAR space, KVM
    /// slots, GSI routes, the VFIO container); the devices share it.
    pub(crate) passthrough: Arc<PassthroughVm>,
    /// Indexed by segment number.
    pub(crate) segments: Vec<Arc<Mutex<PciSegment>>>,
    pub(crate) layout: Layout,
    /// GH slots of the topology (segment k+1 is GH slot k).
    pub(crate) gh_slots: usize,
    /// The guest-facing half: the controller the DSDT reads, the GED that interrupts the
    /// guest, and the ejects the guest reports.
    pub(crate) controller: Arc<Mutex<PciHotplug>>,
    pub(crate) ged: Arc<Mutex<Ged>>,
    pub(crate) ejects: Arc<Ejects>,
}

impl VmResources {
    /// KVM memory slots in use, RAM included.
    pub fn memory_slots_in_use(&self) -> u32 {
        self.passthrough.memory_slots_in_use()
    }

    fn segment(&self, segment: u16) -> Option<&Mutex<PciSegment>> {
        self.segments.get(usize::from(segment)).map(|s| &**s)
    }

    fn raise_hotplug_event(&self) -> Result<(), String> {
        self.ged
            .lock()
            .notify(devices::ged::EVENT_PCI_HOTPLUG)
            .map_err(|e| format!("GED interrupt: {e}"))
    }

    fn controller(&self) -> parking_lot::MutexGuard<'_, PciHotplug> {
        self.controller.lock()
    }
}

impl Backend for VmResources {
    type Device = Arc<Mutex<PassthroughDevice>>;

    fn gh_slots(&self) -> usize {
        self.gh_slots
    }

    fn ejects(&self) -> &Ejects {
        &self.ejects
    }

    fn assign(&self, source: &DeviceSource, segment: u16) -> Result<Self::Device, HotplugError> {
        let seg_layout = *self
            .layout
            .segments
            .iter()
            .find(|s| s.id == segment)
            .ok_or(HotplugError::NoSuchSegment(segment))?;
        Ok(crate::passthrough::assign(
            &self.passthrough,
            seg_layout,
            source,
        )?)
    }

    fn guest_bars(&self, device: &Self::Device) -> Vec<super::GuestBar> {
        device.lock().guest_bars()
    }

    fn counters(&self, device: &Self::Device) -> BTreeMap<String, u64> {
        device.lock().counters()
    }

    fn plug(
        &self,
        segment: u16,
        slot: Option<u8>,
        device: &Self::Device,
    ) -> Result<u8, pci::PciError> {
        let Some(pci_segment) = self.segment(segment) else {
            // The layout has the segment (`assign` checked), so this is a VM built wrong.
            return Err(pci::PciError::NoFreeSlot(segment));
        };
        pci_segment.lock().add_device(slot, device.clone())
    }

    fn unplug(&self, segment: u16, slot: u8) {
        if let Some(pci_segment) = self.segment(segment) {
            let _ = pci_segment.lock().remove_device(slot);
        }
    }

    fn teardown(&self, device: &Self::Device) {
        // The request watcher is stopped (its thread joined) without the device's lock held:
        // vCPUs take that lock for config accesses.
        let watcher = device.lock().take_request_watcher();
        drop(watcher);
        device.lock().teardown();
    }

    fn watch_requests(
        &self,
        device: &Self::Device,
        on_request: OnHostRequest,
    ) -> Result<bool, String> {
        device
            .lock()
            .watch_requests(on_request)
            .map_err(|e| e.to_string())
    }

    fn announce_added(&self, segment: u16, slot: u8) -> Result<(), String> {
        self.controller()
            .slot_added(segment, slot)
            .map_err(|e| e.to_string())?;
        self.raise_hotplug_event()
    }

    fn announce_removal(&self, segment: u16, slot: u8) -> Result<(), String> {
        self.controller()
            .removal_requested(segment, slot)
            .map_err(|e| e.to_string())?;
        self.raise_hotplug_event()
    }
}
