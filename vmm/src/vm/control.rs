//! The running VM as the REST API sees it (`api::VmControl`): information, hot plug through
//! `hotplug`, the power button, pause and resume, reboot, shutdown. The API thread outlives
//! each VM of a reboot loop: it holds the current VM's parts only between `attach` and
//! `detach`, and a request holds them (a read lock) only while it runs, so the VM the reboot
//! drops is really dropped (its devices closed) before the next one opens them again.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::{MappedRwLockReadGuard, RwLock, RwLockReadGuard};

use crate::api::{
    AddDevice, ApiError, Counters, DeviceInfo, DeviceNode, PciDeviceInfo, Resources, VmControl,
    VmInfo, VmState, STATUS_VM_ACTION_FAILED,
};
use crate::config::VmConfig;
use crate::hotplug::{Hotplug, HotplugError, Placement};
use crate::passthrough::VfioSetupError;
use crate::vm::exit::{ExitReason, ExitState};
use crate::vm::pause::{VcpuPause, PAUSE_TIMEOUT};
use crate::vm::VcpuThreads;

/// The parts of one VM the API uses.
pub struct VmParts {
    pub config: VmConfig,
    pub hotplug: Arc<Hotplug>,
    pub ged: Arc<parking_lot::Mutex<devices::Ged>>,
    pub pause: Arc<VcpuPause>,
    /// The platform devices' `vm.info` nodes: fixed for the VM's life.
    pub platform_nodes: Vec<crate::api::DeviceNode>,
}

pub struct Control {
    /// None while a reboot rebuilds the VM.
    vm: RwLock<Option<VmParts>>,
    /// The last VM's configuration: what `vm.info` shows while the next one is built.
    config: parking_lot::Mutex<VmConfig>,
    exit: Arc<ExitState>,
    vcpu_threads: VcpuThreads,
}

/// How long a request that needs the VM waits for a reboot's rebuild (Cloud Hypervisor's
/// API waits for its VMM thread, busy rebooting): well inside a connection's deadline.
pub const REBUILD_WAIT: Duration = Duration::from_secs(5);
/// How often a waiting request looks again.
const REBUILD_POLL: Duration = Duration::from_millis(20);

/// What a request that needs the VM answers when the rebuild takes longer than it waits.
fn rebooting(waited: Duration) -> ApiError {
    ApiError::new(
        STATUS_VM_ACTION_FAILED,
        format!(
            "the VM is still rebooting after {:.1} s; try again",
            waited.as_secs_f64()
        ),
    )
}

fn shutting_down() -> ApiError {
    ApiError::new(STATUS_VM_ACTION_FAILED, "the VM is shutting down")
}

/// Waits while a reboot rebuilds the VM (`has_vm` false, the VM not ending) for at most
/// `timeout`: Ok once there is a VM.
fn wait_for_vm(
    has_vm: &dyn Fn() -> bool,
    exit: &ExitState,
    timeout: Duration,
) -> Result<(), ApiError> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if has_vm() {
            return Ok(());
        }
        // Not a reboot's reset: a power-off or fault, during the rebuild or after it.
        if exit.is_set() && !exit.is_rebooting() {
            return Err(shutting_down());
        }
        if std::time::Instant::now() >= deadline {
            return Err(rebooting(timeout));
        }
        std::thread::sleep(REBUILD_POLL);
    }
}

/// The status an attach or detach failure answers with.
pub fn status(e: &HotplugError) -> u16 {
    use vfio::Error as H;
    use HotplugError as P;
    use VfioSetupError as V;
    match e {
        P::DuplicateId(_) | P::DuplicatePath(_) | P::SlotTaken(_) => 409,
        P::UnknownId(_) => 404,
        // Another removal of the device waits for the guest: this one would only wait too.
        P::RemovalPending(_) => 409,
        P::NoGhProfile | P::NoSuchSlot { .. } | P::NoSuchSegment(_) => 400,
        // The VM is full: no slot, no BAR space, no KVM memory slot left.
        P::NoFreeGhSlot | P::NoPciSlot { .. } => 409,
        P::Setup(V::BarSpace { .. } | V::MemSlot { .. }) => 409,
        // The device is not one ghvmm can take.
        P::Setup(V::Host(H::NotADevice { .. } | H::NotVfioBound { .. }) | V::Layout { .. }) => 400,
        P::Setup(V::Host(H::Device { .. } | H::NoIommuGroup { .. })) => 400,
        // No server on that socket, or one whose device ghvmm cannot take.
        P::Setup(V::User(_) | V::NoMmapSource { .. }) => 400,
        P::EjectTimeout { .. } => 504,
        P::Setup(_) | P::Notify(_) => 500,
    }
}

fn api_error(e: HotplugError) -> ApiError {
    ApiError::new(status(&e), e.to_string())
}

/// The configuration `vm.info` shows: with a VM, its devices are those attached now (as in
/// Cloud Hypervisor, whose config follows hot add and removal); during a reboot's rebuild,
/// the configuration being booted.
fn info_config(config: &VmConfig, attached: Option<&[crate::hotplug::AttachedDevice]>) -> VmConfig {
    match attached {
        Some(attached) => crate::vm::lifecycle::next_config(config, attached),
        None => config.clone(),
    }
}

/// The configuration as Cloud Hypervisor's `vm.info` shows it, for the parts ghvmm has.
fn config_json(c: &VmConfig) -> serde_json::Value {
    serde_json::json!({
        "cpus": { "boot_vcpus": c.cpus.boot, "max_vcpus": c.cpus.boot },
        "memory": crate::config::memory::info_json(&c.memory),
        "payload": {
            "kernel": c.kernel.display().to_string(),
            "initramfs": c.initramfs.as_ref().map(|p| p.display().to_string()),
            "cmdline": c.cmdline,
        },
        "devices": c.devices.iter().map(|d| serde_json::json!({
            d.source.key(): d.source.path().display().to_string(),
            "id": d.id,
        })).collect::<Vec<_>>(),
        "numa": c.numa.iter().map(|n| serde_json::json!({
            "guest_numa_id": n.guest_numa_id,
            "cpus": n.cpus,
            "distances": n.distances.iter().map(|(d, v)| serde_json::json!({"destination": d, "distance": v})).collect::<Vec<_>>(),
            "device_id": n.device_id,
            "memory_zones": (!n.memory_zones.is_empty()).then_some(&n.memory_zones),
        })).collect::<Vec<_>>(),
        "gh": c.gh.as_ref().map(|g| serde_json::json!({
            "slots": g.slots, "nodes": g.nodes, "distance": g.distance, "dsd": g.dsd,
            "bar_space": g.bar_space,
        })),
    })
}

impl Control {
    pub fn new(vm: VmParts, exit: Arc<ExitState>, vcpu_threads: VcpuThreads) -> Self {
        Control {
            config: parking_lot::Mutex::new(vm.config.clone()),
            vm: RwLock::new(Some(vm)),
            exit,
            vcpu_threads,
        }
    }

    /// The VM of the next boot.
    pub fn attach(&self, vm: VmParts) {
        *self.config.lock() = vm.config.clone();
        *self.vm.write() = Some(vm);
    }

    /// Lets go of the VM (for a reboot), once the requests using it have answered.
    pub fn detach(&self) {
        self.vm.write().take();
    }

    /// The current VM's parts, for one request.
    /// During a reboot, once the next VM runs (`REBUILD_WAIT` at most).
    fn vm(&self) -> Result<MappedRwLockReadGuard<'_, VmParts>, ApiError> {
        loop {
            wait_for_vm(&|| self.vm.read().is_some(), &self.exit, REBUILD_WAIT)?;
            // Another reboot may have taken it meanwhile: wait for that one too.
            if let Ok(vm) = RwLockReadGuard::try_map(self.vm.read(), Option::as_ref) {
                return Ok(vm);
            }
        }
    }

    /// Lets the API answer, then ends the VM: the process exits with 0, as after a guest
    /// power-off.
    fn exit_soon(&self) {
        let exit = self.exit.clone();
        let _ = std::thread::Builder::new()
            .name("api-exit".into())
            .spawn(move || {
                std::thread::sleep(Duration::from_millis(200));
                exit.request(ExitReason::PowerOff);
            });
    }
}

impl VmControl for Control {
    fn info(&self) -> VmInfo {
        let vm = self.vm();
        let attached = vm
            .as_ref()
            .map(|vm| vm.hotplug.attached_with_bars())
            .unwrap_or_default();
        let platform: Vec<_> = vm
            .as_ref()
            .map(|vm| vm.platform_nodes.clone())
            .unwrap_or_default();
        let platform = platform.into_iter().map(|n| (n.id.clone(), n));
        let device_tree = attached
            .iter()
            .map(|(d, bars)| {
                let node = DeviceNode::pci(&d.id, &d.address.to_string(), bars);
                (d.id.clone(), node)
            })
            .chain(platform)
            .collect();
        // As Cloud Hypervisor does, `config.devices` follows hot add and removal: the
        // devices the next boot would have.
        let current: Vec<_> = attached.iter().map(|(d, _)| d.clone()).collect();
        let have_vm = vm.is_ok();
        let devices = attached
            .into_iter()
            .map(|(d, _)| DeviceInfo {
                id: d.id,
                bdf: d.address.to_string(),
                path: d.path.display().to_string(),
            })
            .collect();
        let slots = vm
            .as_ref()
            .map_or(0, |vm| u64::from(vm.hotplug.memory_slots_in_use()));
        let paused = vm.as_ref().is_ok_and(|vm| vm.pause.is_paused());
        drop(vm);
        let config = self.config.lock().clone();
        let config = info_config(&config, have_vm.then_some(current.as_slice()));
        VmInfo {
            // A reboot is not a state of Cloud Hypervisor's: the VM runs again in a moment.
            state: if self.exit.is_set() && !self.exit.is_rebooting() {
                VmState::Shutdown
            } else if paused {
                VmState::Paused
            } else {
                VmState::Running
            },
            config: config_json(&config),
            // All zones: with `--memory size=0` the zones are the RAM.
            memory_actual_size: config.memory.total(),
            device_tree,
            devices,
            resources: Resources::sample(slots).unwrap_or(Resources {
                open_fds: 0,
                memory_slots: slots,
                rss_kib: 0,
            }),
        }
    }

    fn add_device(&self, req: AddDevice) -> Result<PciDeviceInfo, ApiError> {
        let placement = Placement::requested(req.gh_slot, req.pci_segment);
        let (id, address) = self
            .vm()?
            .hotplug
            .hot_add(&req.source, req.id, placement)
            .map_err(api_error)?;
        Ok(PciDeviceInfo {
            id,
            bdf: address.to_string(),
        })
    }

    fn counters(&self) -> Counters {
        self.vm()
            .map(|vm| vm.hotplug.counters())
            .unwrap_or_default()
    }

    fn remove_device(&self, id: &str) -> Result<(), ApiError> {
        self.vm()?.hotplug.hot_remove(id).map_err(api_error)
    }

    fn power_button(&self) -> Result<(), ApiError> {
        self.vm()?
            .ged
            .lock()
            .notify(devices::ged::EVENT_POWER_BUTTON)
            .map_err(|e| ApiError::internal(format!("GED interrupt: {e}")))
    }

    fn shutdown_vm(&self) -> Result<(), ApiError> {
        // ghvmm's process is the VM's: shutting the VM down ends it (Cloud Hypervisor keeps
        // an empty VMM around instead). During a reboot it ends the process instead of the
        // next boot (`ExitState::rearm`).
        self.exit_soon();
        Ok(())
    }

    fn reboot(&self) -> Result<(), ApiError> {
        // As Cloud Hypervisor, a paused VM reboots too (and runs after it). During a reboot
        // this one waits for the next VM, and reboots it.
        let vm = self.vm()?;
        if self.exit.is_set() {
            return Err(shutting_down());
        }
        self.exit.request(ExitReason::Reset);
        // Only now: the reboot's `detach` waits for this request.
        drop(vm);
        Ok(())
    }

    fn shutdown_vmm(&self) -> Result<(), ApiError> {
        self.exit_soon();
        Ok(())
    }

    fn pause(&self) -> Result<(), ApiError> {
        let kick = || {
            use vmm_sys_util::signal::Killable;
            for t in self.vcpu_threads.lock().iter() {
                // A thread that has ended cannot be kicked, and needs no kick.
                let _ = t.kill(crate::vm::vcpu_dump::kick_signal());
            }
        };
        self.vm()?
            .pause
            .pause(&kick, &|| self.exit.is_set(), PAUSE_TIMEOUT)
            .map_err(|e| ApiError::caused_by(STATUS_VM_ACTION_FAILED, "cannot pause the VM", &e))
    }

    fn resume(&self) -> Result<(), ApiError> {
        self.vm()?
            .pause
            .resume()
            .map_err(|e| ApiError::caused_by(STATUS_VM_ACTION_FAILED, "cannot resume the VM", &e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_info_config_shows_the_memory_zones() {
        use clap::Parser;
        let cfg = crate::config::cli::Cli::try_parse_from([
            "ghvmm",
            "--kernel",
            "/k",
            "--memory",
            "size=0",
            "--memory-zone",
            "id=m0,size=1G,hugepages=on",
            "id=m1,size=512M,shared=on,host_numa_node=0",
            "--numa",
            "guest_numa_id=0,memory_zones=m0:m1",
        ])
        .unwrap()
        .into_config()
        .unwrap();
        let j = config_json(&cfg);
        let m = &j["memory"];
        assert_eq!(
            (m["size"].as_u64(), m["thp"].as_bool()),
            (Some(0), Some(true))
        );
        assert_eq!(m["zones"][0]["id"], "m0");
        assert_eq!(m["zones"][0]["hugepages"], true);
        assert_eq!(m["zones"][1]["host_numa_node"], 0);
        assert_eq!(
            j["numa"][0]["memory_zones"],
            serde_json::json!(["m0", "m1"])
        );
        assert_eq!(cfg.memory.total(), 3 << 29, "memory_actual_size");
    }

    #[test]
    fn vm_info_config_devices_follow_hot_add_and_removal() {
        use clap::Parser;
        let cfg = crate::config::cli::Cli::try_parse_from([
            "ghvmm",
            "--kernel",
            "/k",
            "--device",
            "path=/boot-dev,id=a",
        ])
        .unwrap()
        .into_config()
        .unwrap();
        let devices = |attached: Option<&[crate::hotplug::AttachedDevice]>| {
            config_json(&info_config(&cfg, attached))["devices"].clone()
        };
        // `a` removed, `b` hot-added.
        let now = [crate::hotplug::AttachedDevice {
            id: "b".into(),
            path: "/hot-dev".into(),
            user: false,
            address: acpi::PciAddress {
                segment: 0,
                bus: 0,
                device: 2,
                function: 0,
            },
        }];
        assert_eq!(
            devices(Some(&now)),
            serde_json::json!([{"path": "/hot-dev", "id": "b"}])
        );
        // Mid-rebuild: the configuration being booted.
        assert_eq!(
            devices(None),
            serde_json::json!([{"path": "/boot-dev", "id": "a"}])
        );
    }

    #[test]
    fn a_request_during_a_rebuild_waits_for_the_next_vm() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let exit = Arc::new(ExitState::default());
        let has = Arc::new(AtomicBool::new(true));
        let has_vm = {
            let has = has.clone();
            move || has.load(Ordering::SeqCst)
        };
        let wait = |t| wait_for_vm(&has_vm, &exit, t).map_err(|e| e.messages());
        assert_eq!(wait(Duration::ZERO), Ok(()));
        // A reboot: the VM is gone for a while, then the next one is there.
        exit.request(ExitReason::Reset);
        has.store(false, Ordering::SeqCst);
        let later = {
            let has = has.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                has.store(true, Ordering::SeqCst);
            })
        };
        assert_eq!(wait(Duration::from_secs(5)), Ok(()));
        later.join().unwrap();
        // A rebuild slower than the wait.
        has.store(false, Ordering::SeqCst);
        let slow = vec!["the VM is still rebooting after 0.1 s; try again".to_string()];
        assert_eq!(wait(Duration::from_millis(100)), Err(slow));
        // A shutdown during the rebuild ends the wait at once.
        exit.request(ExitReason::PowerOff);
        assert_eq!(exit.rearm(), Some(ExitReason::PowerOff));
        let ending = vec!["the VM is shutting down".to_string()];
        assert_eq!(wait(Duration::from_secs(5)), Err(ending));
    }

    #[test]
    fn statuses() {
        assert_eq!(status(&HotplugError::UnknownId("x".into())), 404);
        assert_eq!(status(&HotplugError::SlotTaken(0)), 409);
        assert_eq!(status(&HotplugError::RemovalPending("x".into())), 409);
        assert_eq!(status(&HotplugError::NoGhProfile), 400);
        assert_eq!(
            status(&HotplugError::EjectTimeout {
                id: "x".into(),
                secs: 1
            }),
            504
        );
        let not_vfio = HotplugError::Setup(VfioSetupError::Host(vfio::Error::NotVfioBound {
            path: "/x".into(),
            driver: "driver e1000e".into(),
        }));
        assert_eq!(status(&not_vfio), 400);
        assert_eq!(
            not_vfio.to_string(),
            "/x: the device is bound to driver e1000e, not to a VFIO driver (bind it to vfio-pci \
             first)"
        );
        let no_group = HotplugError::Setup(VfioSetupError::Host(vfio::Error::NoIommuGroup {
            path: "/x".into(),
            error: std::io::ErrorKind::NotFound.into(),
        }));
        assert_eq!(status(&no_group), 400);
        let no_container = HotplugError::Setup(VfioSetupError::Host(vfio::Error::Container {
            path: "/x".into(),
            error: vfio::VfioError::OpenContainer(std::io::ErrorKind::NotFound.into()),
        }));
        assert_eq!(status(&no_container), 500);
    }
}
