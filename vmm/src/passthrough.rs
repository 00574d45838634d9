//! The VM's passed-through devices: where each one sits in the guest, and attaching or
//! detaching one (at boot, and by hot plug through the API) with everything it touches —
//! VFIO, BAR space, KVM slots, the PCI segment — so that nothing half-done stays behind.
//!
//! The host can ask for a device back (its VFIO driver is being unbound): each device's
//! request watcher (`vfio::RequestWatcher`) then starts `give_back` on a thread of its own,
//! which removes the device as `vm.remove-device` does and, if the guest does not eject it in
//! time, removes it anyway.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use ::vfio::{Containers, OnRequest};
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
use crate::vfio::request::{self, EjectSteps, GiveBack};
use crate::vfio::{PassthroughDevice, VfioContext, VfioSetupError};

/// Cloud Hypervisor names VFIO devices that were given no id `_vfio<N>`; so does ghvmm.
const AUTO_ID_PREFIX: &str = "_vfio";

/// How long a removal waits for the guest to eject (`vm.remove-device`, and a device the host
/// asks back). Linux under nested TCG needs a few seconds; a guest that has not ejected in
/// this time is not going to on its own.
pub const EJECT_TIMEOUT: Duration = Duration::from_secs(60);

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
    /// This attachment, unlike its id, is never reused: a request from the host names the
    /// device it came from even if the id now belongs to another.
    token: u64,
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
    next_token: AtomicU64,
    /// One attach or detach at a time: they check and change the device list, the segments
    /// and the controller together.
    ops: Mutex<()>,
    /// Itself, for the request watchers' callbacks (a weak reference: the devices it holds
    /// hold them).
    this: Weak<Passthrough>,
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
    ) -> Arc<Self> {
        Arc::new_cyclic(|this| Passthrough {
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
            next_token: AtomicU64::new(0),
            ops: Mutex::new(()),
            this: this.clone(),
        })
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
        let address = self
            .address_of(id)
            .ok_or_else(|| PassthroughError::UnknownId(id.to_string()))?;
        let mut steps = Steps {
            pt: self,
            id,
            address,
        };
        steps.request_eject().map_err(PassthroughError::Notify)?;
        if !steps.wait_ejected(timeout) {
            return Err(PassthroughError::EjectTimeout {
                id: id.to_string(),
                secs: timeout.as_secs(),
            });
        }
        self.detach_locked(id)
    }

    /// The host wants the device of attachment `token` back (VFIO's request interrupt): it is
    /// removed as by `hot_remove`, and detached even if the guest does not eject it within
    /// the eject timeout (a surprise removal), so that the host's unbind completes. Runs on
    /// a thread of its own, started by the device's request watcher.
    fn give_back(&self, token: u64) {
        let _ops = self.ops();
        let found = self
            .list()
            .iter()
            .find(|a| a.token == token)
            .map(|a| (a.id.clone(), a.path.clone(), a.address));
        let Some((id, path, address)) = found else {
            log::info!("a device the host asked back was removed meanwhile");
            return;
        };
        let mut steps = Steps {
            pt: self,
            id: &id,
            address,
        };
        match request::give_back(&mut steps, EJECT_TIMEOUT) {
            GiveBack::Ejected => log::info!(
                "device '{id}' ({}): ejected by the guest; the host has it back",
                path.display()
            ),
            GiveBack::Forced { why } => log::warn!(
                "device '{id}' ({}): {why}; removed it anyway (surprise removal), the host has it back",
                path.display()
            ),
        }
    }

    /// Starts the device's request watcher: when the host asks for the device, one warning
    /// is logged and `give_back` starts on a thread of its own.
    fn watch_host_requests(
        &self,
        id: &str,
        path: &Path,
        token: u64,
        device: &Mutex<PassthroughDevice>,
    ) {
        let this = self.this.clone();
        let (name, shown) = (id.to_string(), path.display().to_string());
        let mut warned = false;
        let on_request: OnRequest = Box::new(move || {
            if !warned {
                log::warn!(
                    "device '{name}' ({shown}): the host asks for it back (driver unbind); ejecting it from the guest"
                );
                warned = true;
            }
            let this = this.clone();
            let spawned = std::thread::Builder::new()
                .name("ghvmm-giveback".into())
                .spawn(move || {
                    if let Some(pt) = this.upgrade() {
                        pt.give_back(token);
                    }
                });
            match spawned {
                Ok(_) => true,
                Err(e) => {
                    log::error!(
                        "device '{name}' ({shown}): cannot start its removal ({e}); trying again at the host's next request"
                    );
                    false
                }
            }
        });
        let watching = device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .watch_requests(on_request);
        let consequence = "if the host unbinds its driver, the unbind waits until the device is removed or ghvmm exits";
        match watching {
            Ok(true) => log::debug!("{id}: watching VFIO's request interrupt"),
            Ok(false) => log::info!(
                "device '{id}' ({}): no VFIO request interrupt; {consequence}",
                path.display()
            ),
            Err(e) => log::warn!(
                "device '{id}' ({}): cannot watch VFIO's request interrupt ({e}); {consequence}",
                path.display()
            ),
        }
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
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        self.watch_host_requests(&id, path, token, &device);
        self.list().push(Attached {
            id: id.clone(),
            path: path.to_path_buf(),
            address,
            device,
            token,
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
        // The request watcher is stopped (its thread joined) without the device's lock held:
        // vCPUs take that lock for config accesses.
        let watcher = attached
            .device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take_request_watcher();
        drop(watcher);
        attached
            .device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .teardown();
        log::info!("{}: detached ({id})", attached.path.display());
        Ok(())
    }
}

/// `request::EjectSteps` on the VM's hot plug controller, for one attached device. The caller
/// holds `ops`.
struct Steps<'a> {
    pt: &'a Passthrough,
    id: &'a str,
    address: PciAddress,
}

impl Steps<'_> {
    /// Marks the slot for removal and raises the GED interrupt: the guest's next scan sends
    /// the slot an eject request.
    fn mark_for_removal(&self) -> Result<(), String> {
        let a = self.address;
        self.pt
            .hotplug
            .controller
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .removal_requested(a.segment, a.device)
            .map_err(|e| e.to_string())?;
        self.pt.raise_hotplug_event()
    }
}

impl EjectSteps for Steps<'_> {
    fn request_eject(&mut self) -> Result<(), String> {
        let a = self.address;
        self.pt.hotplug.ejects.forget(a.segment, a.device);
        self.mark_for_removal()
    }

    fn wait_ejected(&mut self, timeout: Duration) -> bool {
        let a = self.address;
        self.pt.hotplug.ejects.wait(a.segment, a.device, timeout)
    }

    fn detach(&mut self) {
        if let Err(e) = self.pt.detach_locked(self.id) {
            log::error!("device '{}': {e}", self.id);
        }
    }

    fn notify_gone(&mut self) -> Result<(), String> {
        // The slot is empty now: the eject request makes Linux's acpiphp drop what it still
        // has there (request.rs); its `_EJ0` afterwards finds nothing to wait for it.
        self.mark_for_removal()
    }
}
