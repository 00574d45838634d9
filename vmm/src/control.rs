//! The running VM as the REST API sees it (`api::VmControl`): information, hot plug through
//! `passthrough`, the power button, shutdown.

use std::sync::Arc;
use std::time::Duration;

use crate::api::{
    AddDevice, ApiError, DeviceInfo, PciDeviceInfo, Resources, VmControl, VmInfo, VmState,
};
use crate::config::{GhSlotRequest, VmConfig};
use crate::exit::{ExitReason, ExitState};
use crate::passthrough::{Passthrough, PassthroughError, Placement};
use crate::vfio::VfioSetupError;

/// How long `vm.remove-device` waits for the guest to eject.
pub use crate::passthrough::EJECT_TIMEOUT;

pub struct Control {
    pub config: VmConfig,
    pub passthrough: Arc<Passthrough>,
    pub ged: Arc<std::sync::Mutex<devices::Ged>>,
    pub exit: Arc<ExitState>,
}

/// Where an API request puts a device.
pub fn placement(req: &AddDevice) -> Placement {
    match (req.gh_slot, req.pci_segment) {
        (Some(GhSlotRequest::Index(k)), _) => Placement::GhSlot(k),
        (Some(GhSlotRequest::Auto), _) => Placement::AnyGhSlot,
        // Segment k+1 is GH slot k; the segment's only slot is its 00.0.
        (None, Some(s)) if s > 0 => Placement::GhSlot(s - 1),
        (None, _) => Placement::Segment0,
    }
}

/// The status an attach or detach failure answers with.
pub fn status(e: &PassthroughError) -> u16 {
    use ::vfio::Error as H;
    use PassthroughError as P;
    use VfioSetupError as V;
    match e {
        P::DuplicateId(_) | P::DuplicatePath(_) | P::SlotTaken(_) => 409,
        P::UnknownId(_) => 404,
        P::NoGhProfile | P::NoSuchSlot { .. } | P::NoSuchSegment(_) => 400,
        // The VM is full: no slot, no BAR space, no KVM memory slot left.
        P::NoFreeGhSlot | P::NoPciSlot { .. } => 409,
        P::Setup(V::BarSpace { .. } | V::MemSlot { .. }) => 409,
        // The device is not one ghvmm can take.
        P::Setup(V::Host(H::NotADevice { .. } | H::NotVfioBound { .. }) | V::Layout { .. }) => 400,
        P::Setup(V::Host(H::Device { .. } | H::NoIommuGroup { .. })) => 400,
        P::EjectTimeout { .. } => 504,
        P::Setup(_) | P::Notify(_) => 500,
    }
}

fn api_error(e: PassthroughError) -> ApiError {
    ApiError::new(status(&e), e.to_string())
}

/// The configuration as Cloud Hypervisor's `vm.info` shows it, for the parts ghvmm has.
fn config_json(c: &VmConfig) -> serde_json::Value {
    serde_json::json!({
        "cpus": { "boot_vcpus": c.cpus.boot, "max_vcpus": c.cpus.boot },
        "memory": { "size": c.memory.size },
        "payload": {
            "kernel": c.kernel.display().to_string(),
            "initramfs": c.initramfs.as_ref().map(|p| p.display().to_string()),
            "cmdline": c.cmdline,
        },
        "devices": c.devices.iter().map(|d| serde_json::json!({
            "path": d.path.display().to_string(),
            "id": d.id,
        })).collect::<Vec<_>>(),
        "numa": c.numa.iter().map(|n| serde_json::json!({
            "guest_numa_id": n.guest_numa_id,
            "cpus": n.cpus,
            "distances": n.distances.iter().map(|(d, v)| serde_json::json!({"destination": d, "distance": v})).collect::<Vec<_>>(),
            "device_id": n.device_id,
        })).collect::<Vec<_>>(),
        "gh": c.gh.as_ref().map(|g| serde_json::json!({
            "slots": g.slots, "nodes": g.nodes, "distance": g.distance, "dsd": g.dsd,
            "bar_space": g.bar_space,
        })),
    })
}

impl Control {
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
        let devices = self
            .passthrough
            .attached()
            .into_iter()
            .map(|(id, path, address)| DeviceInfo {
                id,
                bdf: address.to_string(),
                path: path.display().to_string(),
            })
            .collect();
        let slots = u64::from(
            self.passthrough
                .slots
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .in_use(),
        );
        VmInfo {
            state: if self.exit.is_set() {
                VmState::Shutdown
            } else {
                VmState::Running
            },
            config: config_json(&self.config),
            devices,
            resources: Resources::sample(slots).unwrap_or(Resources {
                open_fds: 0,
                memory_slots: slots,
                rss_kib: 0,
            }),
        }
    }

    fn add_device(&self, req: AddDevice) -> Result<PciDeviceInfo, ApiError> {
        let (id, address) = self
            .passthrough
            .hot_add(&req.path, req.id.clone(), placement(&req))
            .map_err(api_error)?;
        Ok(PciDeviceInfo {
            id,
            bdf: address.to_string(),
        })
    }

    fn remove_device(&self, id: &str) -> Result<(), ApiError> {
        self.passthrough
            .hot_remove(id, EJECT_TIMEOUT)
            .map_err(api_error)
    }

    fn power_button(&self) -> Result<(), ApiError> {
        self.ged
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .notify(devices::ged::EVENT_POWER_BUTTON)
            .map_err(|e| ApiError::internal(format!("GED interrupt: {e}")))
    }

    fn shutdown_vm(&self) -> Result<(), ApiError> {
        // ghvmm's process is the VM's: shutting the VM down ends it (Cloud Hypervisor keeps
        // an empty VMM around instead).
        self.exit_soon();
        Ok(())
    }

    fn shutdown_vmm(&self) -> Result<(), ApiError> {
        self.exit_soon();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn req(gh_slot: Option<GhSlotRequest>, pci_segment: Option<u16>) -> AddDevice {
        AddDevice {
            path: PathBuf::from("/x"),
            id: None,
            pci_segment,
            gh_slot,
        }
    }

    #[test]
    fn placements() {
        assert_eq!(placement(&req(None, None)), Placement::Segment0);
        assert_eq!(placement(&req(None, Some(0))), Placement::Segment0);
        assert_eq!(placement(&req(None, Some(2))), Placement::GhSlot(1));
        assert_eq!(
            placement(&req(Some(GhSlotRequest::Index(3)), None)),
            Placement::GhSlot(3)
        );
        assert_eq!(
            placement(&req(Some(GhSlotRequest::Auto), None)),
            Placement::AnyGhSlot
        );
    }

    #[test]
    fn statuses() {
        assert_eq!(status(&PassthroughError::UnknownId("x".into())), 404);
        assert_eq!(status(&PassthroughError::SlotTaken(0)), 409);
        assert_eq!(status(&PassthroughError::NoGhProfile), 400);
        assert_eq!(
            status(&PassthroughError::EjectTimeout {
                id: "x".into(),
                secs: 1
            }),
            504
        );
        let not_vfio = PassthroughError::Setup(VfioSetupError::Host(::vfio::Error::NotVfioBound {
            path: "/x".into(),
            driver: "driver e1000e".into(),
        }));
        assert_eq!(status(&not_vfio), 400);
        assert_eq!(
            not_vfio.to_string(),
            "/x: the device is bound to driver e1000e, not to a VFIO driver (bind it to vfio-pci \
             first)"
        );
        let no_group = PassthroughError::Setup(VfioSetupError::Host(::vfio::Error::NoIommuGroup {
            path: "/x".into(),
            error: std::io::ErrorKind::NotFound.into(),
        }));
        assert_eq!(status(&no_group), 400);
        let no_container =
            PassthroughError::Setup(VfioSetupError::Host(::vfio::Error::Container {
                path: "/x".into(),
                error: ::vfio::VfioError::OpenContainer(std::io::ErrorKind::NotFound.into()),
            }));
        assert_eq!(status(&no_container), 500);
    }
}
