//! The REST API: Cloud Hypervisor's endpoints over HTTP/1.1 on a Unix stream socket, and the
//! client behind `ghvmm-remote`.
//!
//! The server knows nothing about the VM: it parses and checks requests, then calls a
//! [`VmControl`], which the VM implements. Everything here is testable without KVM.
//! docs/api.md describes the endpoints, bodies, status codes and limits.

// The request path is public only for the fuzz targets (fuzz/src/api.rs).
#[doc(hidden)]
pub mod body;
pub mod client;
pub mod device_tree;
#[doc(hidden)]
pub mod http;
#[doc(hidden)]
pub mod routes;
mod server;
mod socket;

use serde::{Deserialize, Serialize};

pub use crate::config::ApiSocketConfig;
use crate::config::{DeviceSource, GhSlotRequest};
pub use body::AddDeviceBody;
pub use device_tree::{DeviceNode, DeviceResource, DeviceTree, PciBarType};
pub use http::Limits;
pub use server::{spawn, spawn_with, Server};
pub use socket::{bind, bind_owned, SocketFile};

/// What the API asks of the VM. Calls arrive on the API's connection threads, never on a vCPU
/// thread, and several may run at once (one per client connection).
pub trait VmControl: Send + Sync {
    fn info(&self) -> VmInfo;
    /// `PUT /api/v1/vm.add-device` and `vm.add-user-device`, already checked (path or socket
    /// present, id well formed, only the Cloud Hypervisor options ghvmm supports).
    fn add_device(&self, req: AddDevice) -> Result<PciDeviceInfo, ApiError>;
    /// `GET /api/v1/vm.counters`: each device's access counters, by device id.
    fn counters(&self) -> Counters;
    /// `PUT /api/v1/vm.remove-device`; an unknown id is a 404.
    fn remove_device(&self, id: &str) -> Result<(), ApiError>;
    fn power_button(&self) -> Result<(), ApiError>;
    fn shutdown_vm(&self) -> Result<(), ApiError>;
    /// Must return (and so let the 204 go out) before the process exits.
    fn shutdown_vmm(&self) -> Result<(), ApiError>;
    /// `PUT /api/v1/vm.pause`: returns once no vCPU runs guest code; pausing a paused VM is
    /// an error.
    fn pause(&self) -> Result<(), ApiError> {
        Err(ApiError::not_supported("vm.pause"))
    }
    /// `PUT /api/v1/vm.resume`: resuming a VM that is not paused is an error.
    fn resume(&self) -> Result<(), ApiError> {
        Err(ApiError::not_supported("vm.resume"))
    }
    /// `PUT /api/v1/vm.reboot`: returns once the reboot is asked for; the VM is rebuilt
    /// and boots again in the same process (a paused VM too).
    fn reboot(&self) -> Result<(), ApiError> {
        Err(ApiError::not_supported("vm.reboot"))
    }
}

/// Cloud Hypervisor's status for an action its build cannot do (501 Not Implemented).
pub const STATUS_NOT_SUPPORTED: u16 = 501;
/// Cloud Hypervisor's status for an action the VM refused or failed, e.g. an invalid state
/// change such as pausing a paused VM (its `InvalidStateTransition`).
pub const STATUS_VM_ACTION_FAILED: u16 = 500;

/// An error for the client: an HTTP status (400-599), a one-line message and its causes,
/// sent as the response body (a JSON array: the message, then the causes). Newlines are
/// replaced when it is sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    /// Outermost first.
    pub causes: Vec<String>,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            causes: Vec::new(),
        }
    }

    /// `message`, caused by `cause` and the whole chain of its sources.
    pub fn caused_by(
        status: u16,
        message: impl Into<String>,
        cause: &dyn std::error::Error,
    ) -> Self {
        let causes = std::iter::successors(Some(cause), |e| e.source())
            .map(|e| e.to_string())
            .collect();
        ApiError {
            status,
            message: message.into(),
            causes,
        }
    }

    /// 501: an action this VM cannot do.
    pub fn not_supported(action: &str) -> Self {
        Self::new(STATUS_NOT_SUPPORTED, format!("{action} is not supported"))
    }

    /// The response body's strings: the message, then the causes.
    pub fn messages(&self) -> Vec<String> {
        std::iter::once(self.message.clone())
            .chain(self.causes.iter().cloned())
            .collect()
    }

    /// 400: the request is well formed but cannot be carried out as given.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, message)
    }

    /// 404: e.g. no device with that id.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, message)
    }

    /// 409: e.g. a device with that id or path is already there.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(409, message)
    }

    /// 500: the VM failed to do what was asked.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, message)
    }
}

/// `vm.counters`' answer: counter name to value, by device id (Cloud Hypervisor's shape).
pub type Counters = std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>>;

/// A checked `vm.add-device` or `vm.add-user-device` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddDevice {
    pub source: DeviceSource,
    pub id: Option<String>,
    /// `Some(n)` only for a non-zero segment. `None` is segment 0 (Cloud Hypervisor's default,
    /// which ch-remote always sends), or the GH slot's segment when `gh_slot` is set; a
    /// non-zero segment together with `gh_slot` is refused before this is built.
    pub pci_segment: Option<u16>,
    pub gh_slot: Option<GhSlotRequest>,
}

/// The answer to `vm.add-device`: `{"id": "...", "bdf": "0001:00:00.0"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciDeviceInfo {
    pub id: String,
    pub bdf: String,
}

/// Cloud Hypervisor's VM states, spelled as its API spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    Created,
    Running,
    Shutdown,
    Paused,
}

/// The answer to `vm.info`. `state`, `config`, `memory_actual_size` and `device_tree` are
/// Cloud Hypervisor's fields; `devices` and `resources` are ghvmm's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmInfo {
    pub state: VmState,
    pub config: serde_json::Value,
    /// Guest RAM in bytes (ghvmm has no balloon or memory hot plug: the configured size).
    pub memory_actual_size: u64,
    pub device_tree: DeviceTree,
    pub devices: Vec<DeviceInfo>,
    pub resources: Resources,
}

/// A passed-through device as the guest sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub id: String,
    pub bdf: String,
    /// The host sysfs path it was added with.
    pub path: String,
}

/// ghvmm's own extension, for the hot-plug leak test: what the process holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub open_fds: u64,
    pub memory_slots: u64,
    pub rss_kib: u64,
}

impl Resources {
    /// This process's open descriptors and resident memory, read from /proc/self, with the
    /// KVM memory slot count the VM keeps itself.
    pub fn sample(memory_slots: u64) -> std::io::Result<Resources> {
        // Counts the descriptor that reads the directory too: the same in every sample.
        let open_fds = std::fs::read_dir("/proc/self/fd")?.count() as u64;
        let status = std::fs::read_to_string("/proc/self/status")?;
        Ok(Resources {
            open_fds,
            memory_slots,
            rss_kib: vm_rss_kib(&status).unwrap_or(0),
        })
    }
}

/// The `VmRSS:   1234 kB` line of /proc/PID/status.
fn vm_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The answer to `vmm.ping`, as Cloud Hypervisor gives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmmPingResponse {
    pub build_version: String,
    pub version: String,
    pub pid: i64,
    pub features: Vec<String>,
}

impl VmmPingResponse {
    pub fn of_this_process() -> Self {
        VmmPingResponse {
            build_version: concat!("v", env!("CARGO_PKG_VERSION")).to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: i64::from(std::process::id()),
            features: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shapes() {
        let info = VmInfo {
            state: VmState::Running,
            config: serde_json::json!({"cpus": {"boot_vcpus": 1}}),
            memory_actual_size: 1 << 30,
            device_tree: [(
                "gpu0".to_string(),
                DeviceNode::pci("gpu0", "0001:00:00.0", &[]),
            )]
            .into_iter()
            .collect(),
            devices: vec![DeviceInfo {
                id: "gpu0".into(),
                bdf: "0001:00:00.0".into(),
                path: "/sys/bus/pci/devices/0000:01:00.0".into(),
            }],
            resources: Resources {
                open_fds: 12,
                memory_slots: 3,
                rss_kib: 4096,
            },
        };
        assert_eq!(
            serde_json::to_string(&info).unwrap(),
            r#"{"state":"Running","config":{"cpus":{"boot_vcpus":1}},"memory_actual_size":1073741824,"device_tree":{"gpu0":{"id":"gpu0","resources":[],"parent":null,"children":[],"pci_bdf":"0001:00:00.0"}},"devices":[{"id":"gpu0","bdf":"0001:00:00.0","path":"/sys/bus/pci/devices/0000:01:00.0"}],"resources":{"open_fds":12,"memory_slots":3,"rss_kib":4096}}"#
        );
        let dev = PciDeviceInfo {
            id: "gpu0".into(),
            bdf: "0001:00:00.0".into(),
        };
        assert_eq!(
            serde_json::to_string(&dev).unwrap(),
            r#"{"id":"gpu0","bdf":"0001:00:00.0"}"#
        );
        let ping = serde_json::to_value(VmmPingResponse::of_this_process()).unwrap();
        assert_eq!(ping["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(ping["pid"], std::process::id());
        assert_eq!(ping["features"], serde_json::json!([]));
    }

    #[test]
    fn resources_of_this_process() {
        let r = Resources::sample(7).unwrap();
        assert!(r.open_fds >= 3, "{r:?}");
        assert!(r.rss_kib > 0, "{r:?}");
        assert_eq!(r.memory_slots, 7);
        assert_eq!(vm_rss_kib("Name:\tx\nVmRSS:\t  1234 kB\n"), Some(1234));
        assert_eq!(vm_rss_kib("Name:\tx\n"), None);
    }
}
