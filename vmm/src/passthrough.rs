//! The VM's passed-through devices: where each one sits in the guest, and attaching or
//! detaching one (at boot, and by hot plug through the API) with everything it touches —
//! VFIO, BAR space, KVM slots, the PCI segment — so that nothing half-done stays behind.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use acpi::PciAddress;
use devices::{Bus, Ged, PciHotplug};
use kvm_ioctls::VmFd;
use pci::PciSegment;
use vm_memory::GuestMemoryMmap;

use crate::bar_allocator::BarAllocator;
use crate::device_manager::Ejects;
use crate::irq_routing::GsiRouting;
use crate::layout::Layout;
use crate::memslots::MemSlots;
use crate::numa::Topology;
use crate::vfio::{Containers, PassthroughDevice, VfioContext, VfioSetupError};

/// Cloud Hypervisor names VFIO devices that were given no id `_vfio<N>`; so does ghvmm.
const AUTO_ID_PREFIX: &str = "_vfio";

#[derive(Debug, thiserror::Error)]
pub enum PassthroughError {
    #[error(transparent)]
    Setup(#[from] VfioSetupError),
    #[error("a device with id '{0}' is already attached")]
    DuplicateId(String),
    #[error("{0} is already attached")]
    DuplicatePath(PathBuf),
    #[error("no device with id '{0}'")]
    UnknownId(String),
    #[error("gh_slot needs the GH profile (--gh)")]
    NoGhProfile,
    #[error("GH slot {slot} does not exist (the VM has {slots})")]
    NoSuchSlot { slot: u16, slots: usize },
    #[error("GH slot {0} is taken")]
    SlotTaken(u16),
    #[error("every GH slot is taken")]
    NoFreeGhSlot,
    #[error("PCI segment {0} does not exist")]
    NoSuchSegment(u16),
    #[error("no free PCI slot on segment {segment}: {error}")]
    NoPciSlot { segment: u16, error: pci::PciError },
    #[error("cannot notify the guest: {0}")]
    Notify(String),
    #[error(
        "the guest did not eject device '{id}' within {secs} s (is its OS running, with ACPI PCI hot plug?); it stays attached"
    )]
    EjectTimeout { id: String, secs: u64 },
}

/// The guest-facing half of hot plug: the controller the DSDT reads, the GED that interrupts
/// the guest, and the ejects the guest reports.
pub struct Hotplug {
    pub controller: Arc<Mutex<PciHotplug>>,
    pub ged: Arc<Mutex<Ged>>,
    pub ejects: Arc<Ejects>,
}

/// Where a device goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// The next free slot of segment 0.
    Segment0,
    /// 00:00.0 of GH slot k's segment (k+1).
    GhSlot(u16),
    /// The lowest GH slot that has no device.
    AnyGhSlot,
}

pub struct Attached {
    pub id: String,
    pub path: PathBuf,
    pub address: PciAddress,
    device: Arc<Mutex<PassthroughDevice>>,
}

/// Everything attaching and detaching needs from the VM.
pub struct Passthrough {
    pub vm: Arc<VmFd>,
    pub mem: GuestMemoryMmap,
    pub mmio_bus: Arc<Bus>,
    pub allocator: Arc<Mutex<BarAllocator>>,
    pub segments: Vec<Arc<Mutex<PciSegment>>>,
    pub layout: Layout,
    pub topology: Option<Topology>,
    pub containers: Arc<Containers>,
    pub slots: Arc<Mutex<MemSlots>>,
    pub routing: Arc<GsiRouting>,
    pub hotplug: Hotplug,
    devices: Mutex<Vec<Attached>>,
    next_auto_id: Mutex<u32>,
    /// One attach or detach at a time: they check and change the device list, the segments
    /// and the controller together.
    ops: Mutex<()>,
}

impl Passthrough {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        vm: Arc<VmFd>,
        mem: GuestMemoryMmap,
        mmio_bus: Arc<Bus>,
        allocator: Arc<Mutex<BarAllocator>>,
        segments: Vec<Arc<Mutex<PciSegment>>>,
        layout: Layout,
        topology: Option<Topology>,
        slots: Arc<Mutex<MemSlots>>,
        routing: Arc<GsiRouting>,
        hotplug: Hotplug,
    ) -> Self {
        Passthrough {
            vm,
            mem,
            mmio_bus,
            allocator,
            segments,
            layout,
            topology,
            containers: Arc::new(Containers::default()),
            slots,
            routing,
            hotplug,
            devices: Mutex::new(Vec::new()),
            next_auto_id: Mutex::new(0),
            ops: Mutex::new(()),
        }
    }

    fn list(&self) -> std::sync::MutexGuard<'_, Vec<Attached>> {
        self.devices.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// (id, path, address) of every attached device, in attach order.
    pub fn attached(&self) -> Vec<(String, PathBuf, PciAddress)> {
        self.list()
            .iter()
            .map(|a| (a.id.clone(), a.path.clone(), a.address))
            .collect()
    }

    /// The segment and slot a placement resolves to now.
    fn resolve(&self, placement: Placement) -> Result<(u16, Option<u8>), PassthroughError> {
        let gh_slots = self.topology.as_ref().map_or(0, |t| t.slots.len());
        let slot_taken = |k: u16| {
            self.list()
                .iter()
                .any(|a| a.address.segment == k + 1 && a.address.device == 0)
        };
        match placement {
            Placement::Segment0 => Ok((0, None)),
            Placement::GhSlot(_) | Placement::AnyGhSlot if gh_slots == 0 => {
                Err(PassthroughError::NoGhProfile)
            }
            Placement::GhSlot(k) if usize::from(k) >= gh_slots => {
                Err(PassthroughError::NoSuchSlot {
                    slot: k,
                    slots: gh_slots,
                })
            }
            Placement::GhSlot(k) if slot_taken(k) => Err(PassthroughError::SlotTaken(k)),
            Placement::GhSlot(k) => Ok((k + 1, Some(0))),
            Placement::AnyGhSlot => (0..gh_slots as u16)
                .find(|k| !slot_taken(*k))
                .map(|k| (k + 1, Some(0)))
                .ok_or(PassthroughError::NoFreeGhSlot),
        }
    }

    fn ops(&self) -> std::sync::MutexGuard<'_, ()> {
        self.ops.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Assigns the device at `path` and puts it in the guest's config space (the guest sees
    /// it at its next enumeration: at boot).
    pub fn attach(
        &self,
        path: &Path,
        id: Option<String>,
        placement: Placement,
    ) -> Result<(String, PciAddress), PassthroughError> {
        let _ops = self.ops();
        self.attach_locked(path, id, placement)
    }

    /// Hot plug: attaches the device, fully set up (BARs mapped, DMA ready), then tells the
    /// guest a device arrived in its slot; the guest's enumeration finds it.
    pub fn hot_add(
        &self,
        path: &Path,
        id: Option<String>,
        placement: Placement,
    ) -> Result<(String, PciAddress), PassthroughError> {
        let _ops = self.ops();
        let (id, address) = self.attach_locked(path, id, placement)?;
        let notified = self
            .hotplug
            .controller
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .slot_added(address.segment, address.device)
            .map_err(|e| e.to_string())
            .and_then(|()| self.raise_hotplug_event());
        if let Err(e) = notified {
            // Nothing half-added: the guest was never told, so it never saw the device.
            let _ = self.detach_locked(&id);
            return Err(PassthroughError::Notify(e));
        }
        Ok((id, address))
    }

    /// Hot unplug: asks the guest to eject the device, waits up to `timeout` for its `_EJ0`,
    /// then detaches it. On a timeout the device stays, and the guest may still eject it later
    /// (a second remove finds it gone from the guest at once).
    pub fn hot_remove(
        &self,
        id: &str,
        timeout: std::time::Duration,
    ) -> Result<(), PassthroughError> {
        let _ops = self.ops();
        let a = self
            .address_of(id)
            .ok_or_else(|| PassthroughError::UnknownId(id.to_string()))?;
        self.hotplug.ejects.forget(a.segment, a.device);
        self.hotplug
            .controller
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .removal_requested(a.segment, a.device)
            .map_err(|e| PassthroughError::Notify(e.to_string()))?;
        self.raise_hotplug_event()
            .map_err(PassthroughError::Notify)?;
        if !self.hotplug.ejects.wait(a.segment, a.device, timeout) {
            return Err(PassthroughError::EjectTimeout {
                id: id.to_string(),
                secs: timeout.as_secs(),
            });
        }
        self.detach_locked(id)
    }

    fn raise_hotplug_event(&self) -> Result<(), String> {
        self.hotplug
            .ged
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .notify(devices::ged::EVENT_PCI_HOTPLUG)
            .map_err(|e| format!("GED interrupt: {e}"))
    }

    fn attach_locked(
        &self,
        path: &Path,
        id: Option<String>,
        placement: Placement,
    ) -> Result<(String, PciAddress), PassthroughError> {
        {
            let list = self.list();
            if let Some(id) = &id {
                if list.iter().any(|a| &a.id == id) {
                    return Err(PassthroughError::DuplicateId(id.clone()));
                }
            }
            // The same function twice would share one VFIO device fd's state.
            let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
            if list
                .iter()
                .any(|a| std::fs::canonicalize(&a.path).unwrap_or_else(|_| a.path.clone()) == canon)
            {
                return Err(PassthroughError::DuplicatePath(path.to_path_buf()));
            }
        }
        let (segment, slot) = self.resolve(placement)?;
        let seg_layout = *self
            .layout
            .segments
            .iter()
            .find(|s| s.id == segment)
            .ok_or(PassthroughError::NoSuchSegment(segment))?;
        let ctx = VfioContext {
            vm: &self.vm,
            mem: &self.mem,
            mmio_bus: &self.mmio_bus,
            allocator: &self.allocator,
            containers: &self.containers,
            slots: &self.slots,
            segment: seg_layout,
            routing: &self.routing,
        };
        let device = crate::vfio::assign(&ctx, path)?;
        let pci_segment = &self.segments[usize::from(segment)];
        let added = pci_segment
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add_device(slot, device.clone());
        let dev_slot = match added {
            Ok(s) => s,
            Err(error) => {
                device.lock().unwrap_or_else(|e| e.into_inner()).teardown();
                return Err(PassthroughError::NoPciSlot { segment, error });
            }
        };
        let id = id.unwrap_or_else(|| {
            let mut n = self.next_auto_id.lock().unwrap_or_else(|e| e.into_inner());
            let list = self.list();
            loop {
                let candidate = format!("{AUTO_ID_PREFIX}{n}");
                *n += 1;
                if !list.iter().any(|a| a.id == candidate) {
                    break candidate;
                }
            }
        });
        let address = PciAddress {
            segment,
            bus: 0,
            device: dev_slot,
            function: 0,
        };
        log::info!("{}: attached as {id} at {address}", path.display());
        self.list().push(Attached {
            id: id.clone(),
            path: path.to_path_buf(),
            address,
            device,
        });
        Ok((id, address))
    }

    pub fn address_of(&self, id: &str) -> Option<PciAddress> {
        self.list().iter().find(|a| a.id == id).map(|a| a.address)
    }

    /// Takes the device out of the guest's config space and releases everything it holds.
    /// The caller has made sure the guest let go of it (ejected it), or the guest is gone.
    pub fn detach(&self, id: &str) -> Result<(), PassthroughError> {
        let _ops = self.ops();
        self.detach_locked(id)
    }

    fn detach_locked(&self, id: &str) -> Result<(), PassthroughError> {
        let attached = {
            let mut list = self.list();
            let i = list
                .iter()
                .position(|a| a.id == id)
                .ok_or_else(|| PassthroughError::UnknownId(id.to_string()))?;
            list.remove(i)
        };
        let a = attached.address;
        let _ = self.segments[usize::from(a.segment)]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove_device(a.device);
        attached
            .device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .teardown();
        log::info!("{}: detached ({id})", attached.path.display());
        Ok(())
    }
}
