//! `Hotplug`: attaching a device at boot, adding and removing one through the API, and
//! giving one back to the host, one operation at a time and with nothing half-done left
//! behind when a step fails. A removal does not hold the operation lock while it waits for
//! the guest's eject: a guest that never ejects must not stall every other add and remove.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use parking_lot::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use acpi::PciAddress;

use super::attached::{Attached, AttachedDevice, Registry, Token};
use super::placement::{self, Placement};
use super::removal::{give_back, EjectSteps, GiveBack};
use super::{Backend, HotplugError, OnHostRequest, VmResources};
use crate::config::DeviceSource;
use crate::event_monitor::EventSink;
use crate::vm::exit::ExitState;
use crate::vm::threads::spawn_guarded;

/// The VM's passed-through devices and the policy of attaching and removing them, over the
/// VM side `B` (the VM's `VmResources`; a fake in the tests).
pub struct Hotplug<B: Backend = VmResources> {
    backend: B,
    /// Its own lock, not `ops`: listing the devices must not wait for a removal that waits
    /// for the guest.
    attached: Mutex<Registry<B::Device>>,
    /// One attach or removal step at a time: they check and change the device list, the
    /// segments and the controller together. Not held while a removal waits for the guest.
    ops: Mutex<()>,
    /// Signalled (with `attached`) when a removal ends, for a give-back waiting its turn.
    removal_ended: Condvar,
    eject_timeout: Duration,
    /// Where a panic on a give-back thread ends the VM.
    exit: Arc<ExitState>,
    /// `--event-monitor`: device-added and device-removed.
    events: EventSink,
    /// Itself, for the request watchers' callbacks (a weak reference: the devices it holds
    /// hold them).
    this: Weak<Self>,
}

/// Where `attach_locked` put a device.
struct Placed {
    id: String,
    address: PciAddress,
    token: Token,
}

impl<B: Backend> Hotplug<B> {
    /// `eject_timeout`: how long a removal waits for the guest's eject (`EJECT_TIMEOUT`);
    /// `exit`: the VM's, which a panic on a give-back thread ends.
    pub fn new(backend: B, eject_timeout: Duration, exit: Arc<ExitState>) -> Arc<Self> {
        Self::with_events(backend, eject_timeout, exit, crate::event_monitor::global())
    }

    /// `new`, reporting hot plug events to `events` instead of the process's monitor.
    pub fn with_events(
        backend: B,
        eject_timeout: Duration,
        exit: Arc<ExitState>,
        events: EventSink,
    ) -> Arc<Self> {
        Arc::new_cyclic(|this| Hotplug {
            backend,
            attached: Mutex::new(Registry::default()),
            ops: Mutex::new(()),
            removal_ended: Condvar::new(),
            eject_timeout,
            exit,
            events,
            this: this.clone(),
        })
    }

    fn registry(&self) -> MutexGuard<'_, Registry<B::Device>> {
        self.attached.lock()
    }

    /// Every attached device, in attach order.
    pub fn attached(&self) -> Vec<AttachedDevice> {
        self.registry().listed()
    }

    /// Every attached device with its BARs as the guest placed them, in attach order.
    pub fn attached_with_bars(&self) -> Vec<(AttachedDevice, Vec<super::GuestBar>)> {
        self.registry()
            .iter()
            .map(|a| (a.listed(), self.backend.guest_bars(&a.device)))
            .collect()
    }

    /// Every attached device's access counters, by id.
    pub fn counters(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        self.registry()
            .iter()
            .map(|a| (a.id.clone(), self.backend.counters(&a.device)))
            .collect()
    }

    /// Assigns the device at `path` and puts it in the guest's config space (the guest sees
    /// it at its next enumeration: at boot).
    pub fn attach(
        &self,
        source: &DeviceSource,
        id: Option<String>,
        placement: Placement,
    ) -> Result<(String, PciAddress), HotplugError> {
        let _ops = self.ops.lock();
        let placed = self.attach_locked(source, id, placement)?;
        Ok((placed.id, placed.address))
    }

    /// Hot plug: attaches the device, fully set up (BARs mapped, DMA ready), then tells the
    /// guest a device arrived in its slot; the guest's enumeration finds it.
    pub fn hot_add(
        &self,
        source: &DeviceSource,
        id: Option<String>,
        placement: Placement,
    ) -> Result<(String, PciAddress), HotplugError> {
        let _ops = self.ops.lock();
        let placed = self.attach_locked(source, id, placement)?;
        let a = placed.address;
        if let Err(e) = self.backend.announce_added(a.segment, a.device) {
            // Nothing half-added: the guest was never told, so it never saw the device.
            self.detach_locked(placed.token);
            return Err(HotplugError::Notify(e));
        }
        self.events.emit(
            "vm",
            "device-added",
            &[("id", placed.id.clone()), ("bdf", a.to_string())],
        );
        Ok((placed.id, placed.address))
    }

    /// Hot unplug: asks the guest to eject the device, waits up to the eject timeout for its
    /// `_EJ0` (without the operation lock, so other adds and removes go on meanwhile), then
    /// detaches it. On a timeout the device stays, and the guest may still eject it later (a
    /// second remove finds it gone from the guest at once). A second remove of the device
    /// while one waits is refused (`RemovalPending`).
    pub fn hot_remove(&self, id: &str) -> Result<(), HotplugError> {
        let mut removal = match self.start_removal(|a| a.id == id, false) {
            Start::Started(removal) => removal,
            Start::NotAttached => return Err(HotplugError::UnknownId(id.to_string())),
            Start::Pending(id) => return Err(HotplugError::RemovalPending(id)),
        };
        removal.request_eject().map_err(HotplugError::Notify)?;
        if !removal.wait_ejected(self.eject_timeout) {
            return Err(HotplugError::EjectTimeout {
                id: id.to_string(),
                secs: self.eject_timeout.as_secs(),
            });
        }
        if removal.detach_now() {
            Ok(())
        } else {
            Err(HotplugError::UnknownId(id.to_string()))
        }
    }

    /// The host wants the device of attachment `token` back (VFIO's request interrupt): it is
    /// removed as by `hot_remove`, and detached even if the guest does not eject it within
    /// the eject timeout (a surprise removal), so that the host's unbind completes. Runs on
    /// a thread of its own, started by the device's request watcher; a removal of the device
    /// already waiting for the guest is waited for first.
    fn give_back(&self, token: Token) {
        let mut removal = match self.start_removal(|a| a.token == token, true) {
            Start::Started(removal) => removal,
            Start::NotAttached | Start::Pending(_) => {
                log::info!("a device the host asked back was removed meanwhile");
                return;
            }
        };
        let (id, path) = (removal.id.clone(), removal.path.display().to_string());
        match give_back(&mut removal, self.eject_timeout) {
            GiveBack::Ejected => {
                log::info!("device '{id}' ({path}): ejected by the guest; the host has it back")
            }
            GiveBack::Forced { why } => log::warn!(
                "device '{id}' ({path}): {why}; removed it anyway (surprise removal), the host has it back"
            ),
        }
    }

    /// Starts the device's request watcher: when the host asks for the device, one warning
    /// is logged and `give_back` starts on a thread of its own.
    fn watch_host_requests(&self, id: &str, path: &Path, token: Token, device: &B::Device) {
        let (this, exit) = (self.this.clone(), self.exit.clone());
        let (name, shown) = (id.to_string(), path.display().to_string());
        let mut warned = false;
        let on_request: OnHostRequest = Box::new(move || {
            if !warned {
                log::warn!(
                    "device '{name}' ({shown}): the host asks for it back (driver unbind); ejecting it from the guest"
                );
                warned = true;
            }
            let this = this.clone();
            let spawned = spawn_guarded("ghvmm-giveback", exit.clone(), {
                let exit = exit.clone();
                move || {
                    if !crate::seccomp::enter_or_end(crate::seccomp::ThreadKind::Hotplug, &exit) {
                        return;
                    }
                    if let Some(hotplug) = this.upgrade() {
                        hotplug.give_back(token);
                    }
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
        let consequence = "if the host unbinds its driver, the unbind waits until the device is removed or ghvmm exits";
        match self.backend.watch_requests(device, on_request) {
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

    fn attach_locked(
        &self,
        source: &DeviceSource,
        id: Option<String>,
        placement: Placement,
    ) -> Result<Placed, HotplugError> {
        let path = source.path();
        let (key, target) = {
            let registry = self.registry();
            let key = registry.check_new(id.as_deref(), path)?;
            let target = placement::resolve(placement, self.backend.gh_slots(), |k| {
                registry.gh_slot_taken(k)
            })?;
            (key, target)
        };
        let segment = target.segment;
        let device = self.backend.assign(source, segment)?;
        let slot = match self.backend.plug(segment, target.slot, &device) {
            Ok(slot) => slot,
            Err(error) => {
                self.backend.teardown(&device);
                return Err(HotplugError::NoPciSlot { segment, error });
            }
        };
        let (id, token) = {
            let mut registry = self.registry();
            let id = id.unwrap_or_else(|| registry.auto_id());
            (id, registry.new_token())
        };
        let address = PciAddress {
            segment,
            bus: 0,
            device: slot,
            function: 0,
        };
        log::info!("{}: attached as {id} at {address}", path.display());
        self.watch_host_requests(&id, path, token, &device);
        self.registry().push(Attached {
            id: id.clone(),
            path: path.to_path_buf(),
            user: matches!(source, DeviceSource::User(_)),
            key,
            address,
            device,
            token,
        });
        Ok(Placed { id, address, token })
    }

    /// Detaches every device without asking the guest: for a VM being torn down (a reboot),
    /// whose guest is gone. Dropping the VM alone did not close them (the next VM found the
    /// VFIO group still open): the explicit teardown releases what each holds, as a removal
    /// does, whatever else still points at the device.
    pub fn detach_all(&self) {
        let _ops = self.ops.lock();
        let tokens: Vec<Token> = self.registry().iter().map(|a| a.token).collect();
        for token in tokens {
            self.detach_locked(token);
        }
    }

    /// Takes the device of attachment `token` out of the guest's config space and releases
    /// everything it holds; false if it is not attached. The caller has made sure the guest
    /// let go of it (ejected it), or the guest is gone, or is told afterwards.
    fn detach_locked(&self, token: Token) -> bool {
        let Some(attached) = self.registry().take(token) else {
            return false;
        };
        let a = attached.address;
        self.backend.unplug(a.segment, a.device);
        self.backend.teardown(&attached.device);
        log::info!("{}: detached ({})", attached.path.display(), attached.id);
        true
    }

    /// Starts the removal of the first attached device that `which` picks, marking it as
    /// being removed until the `Removal` drops. When a removal of it already runs:
    /// `wait_turn` waits for that one to end (and looks again), otherwise `Pending`.
    fn start_removal(
        &self,
        which: impl Fn(&Attached<B::Device>) -> bool,
        wait_turn: bool,
    ) -> Start<'_, B> {
        let mut registry = self.registry();
        loop {
            let Some(a) = registry.by(&which) else {
                return Start::NotAttached;
            };
            let (token, id) = (a.token, a.id.clone());
            if registry.start_removing(token) {
                let a = registry
                    .by(|a| a.token == token)
                    .map(|a| (a.path.clone(), a.address));
                let Some((path, address)) = a else {
                    return Start::NotAttached;
                };
                return Start::Started(Removal {
                    hotplug: self,
                    id,
                    path,
                    token,
                    address,
                });
            }
            if !wait_turn {
                return Start::Pending(id);
            }
            self.removal_ended.wait(&mut registry);
        }
    }
}

/// What `start_removal` found.
enum Start<'a, B: Backend> {
    Started(Removal<'a, B>),
    NotAttached,
    /// Another removal of the device (its id) is waiting for the guest.
    Pending(String),
}

impl Hotplug<VmResources> {
    /// KVM memory slots in use, RAM included.
    pub fn memory_slots_in_use(&self) -> u32 {
        self.backend.memory_slots_in_use()
    }
}

/// One attached device on its way out of the guest: `EjectSteps` on the VM's hot plug
/// controller. It names the device by its attachment's token and holds nothing of the
/// device list between steps; each step but the wait takes the operation lock for itself, so
/// the wait for the guest holds no lock. The device stays marked as being removed until
/// this drops.
struct Removal<'a, B: Backend> {
    hotplug: &'a Hotplug<B>,
    id: String,
    path: PathBuf,
    token: Token,
    address: PciAddress,
}

impl<B: Backend> Removal<'_, B> {
    /// Detaches the device; false if it is no longer attached.
    fn detach_now(&self) -> bool {
        let _ops = self.hotplug.ops.lock();
        let detached = self.hotplug.detach_locked(self.token);
        if detached {
            self.hotplug
                .events
                .emit("vm", "device-removed", &[("id", self.id.clone())]);
        }
        detached
    }
}

impl<B: Backend> Drop for Removal<'_, B> {
    fn drop(&mut self) {
        self.hotplug.registry().end_removing(self.token);
        self.hotplug.removal_ended.notify_all();
    }
}

impl<B: Backend> EjectSteps for Removal<'_, B> {
    fn request_eject(&mut self) -> Result<(), String> {
        let _ops = self.hotplug.ops.lock();
        let a = self.address;
        self.hotplug.backend.ejects().forget(a.segment, a.device);
        self.hotplug.backend.announce_removal(a.segment, a.device)
    }

    fn wait_ejected(&mut self, timeout: Duration) -> bool {
        let a = self.address;
        self.hotplug
            .backend
            .ejects()
            .wait(a.segment, a.device, timeout)
    }

    fn detach(&mut self) {
        if !self.detach_now() {
            let e = HotplugError::UnknownId(self.id.clone());
            log::error!("device '{}': {e}", self.id);
        }
    }

    fn notify_gone(&mut self) -> Result<(), String> {
        // The slot is empty now: the eject request makes Linux's acpiphp drop what it still
        // has there (`removal`); its `_EJ0` afterwards finds nothing to wait for it.
        let _ops = self.hotplug.ops.lock();
        let a = self.address;
        self.hotplug.backend.announce_removal(a.segment, a.device)
    }
}
