//! Requests to `VmControl` calls: the endpoint table, body parsing and status codes.

use serde::de::DeserializeOwned;

use super::body::{self, AddDeviceBody, AddUserDeviceBody, RemoveDeviceBody};
use super::http::{Request, Response};
use super::{ApiError, VmControl, VmmPingResponse};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    VmmPing,
    VmmShutdown,
    VmInfo,
    VmAddDevice,
    VmAddUserDevice,
    VmCounters,
    VmRemoveDevice,
    VmPowerButton,
    VmShutdown,
    VmPause,
    VmResume,
    VmReboot,
}

const PREFIX: &str = "/api/v1/";

/// Each endpoint takes exactly one method; `Allow` on a 405 names it.
const ENDPOINTS: &[(&str, &str, Endpoint)] = &[
    ("vmm.ping", "GET", Endpoint::VmmPing),
    ("vmm.shutdown", "PUT", Endpoint::VmmShutdown),
    ("vm.info", "GET", Endpoint::VmInfo),
    ("vm.add-device", "PUT", Endpoint::VmAddDevice),
    ("vm.add-user-device", "PUT", Endpoint::VmAddUserDevice),
    ("vm.counters", "GET", Endpoint::VmCounters),
    ("vm.remove-device", "PUT", Endpoint::VmRemoveDevice),
    ("vm.power-button", "PUT", Endpoint::VmPowerButton),
    ("vm.shutdown", "PUT", Endpoint::VmShutdown),
    ("vm.pause", "PUT", Endpoint::VmPause),
    ("vm.resume", "PUT", Endpoint::VmResume),
    ("vm.reboot", "PUT", Endpoint::VmReboot),
];

/// Whether the request adds or removes a device: those can wait for the guest (up to the
/// eject timeout), so the server caps how many run at once (`Limits::max_hotplug`).
pub fn is_hotplug(req: &Request) -> bool {
    let endpoint = req
        .path
        .strip_prefix(PREFIX)
        .and_then(|name| ENDPOINTS.iter().find(|(n, _, _)| *n == name));
    matches!(
        endpoint,
        Some((
            _,
            _,
            Endpoint::VmAddDevice | Endpoint::VmAddUserDevice | Endpoint::VmRemoveDevice
        ))
    )
}

pub fn handle(req: &Request, vm: &dyn VmControl) -> Response {
    let Some(&(name, method, endpoint)) = req
        .path
        .strip_prefix(PREFIX)
        .and_then(|name| ENDPOINTS.iter().find(|(n, _, _)| *n == name))
    else {
        return Response::error_line(404, &format!("unknown endpoint {}", req.path));
    };
    if req.method != method {
        let mut r =
            Response::error_line(405, &format!("{name} takes {method}, not {}", req.method));
        r.allow = Some(method);
        return r;
    }
    match call(endpoint, name, req, vm) {
        Ok(r) => r,
        Err(e) => error_response(e),
    }
}

fn call(
    endpoint: Endpoint,
    name: &str,
    req: &Request,
    vm: &dyn VmControl,
) -> Result<Response, ApiError> {
    match endpoint {
        Endpoint::VmmPing => Ok(Response::json(200, &VmmPingResponse::of_this_process())),
        Endpoint::VmInfo => Ok(Response::json(200, &vm.info())),
        Endpoint::VmAddDevice => {
            let body: AddDeviceBody = json_body(name, req)?;
            let dev = vm.add_device(body.into_request()?)?;
            Ok(Response::json(200, &dev))
        }
        Endpoint::VmAddUserDevice => {
            let body: AddUserDeviceBody = json_body(name, req)?;
            let dev = vm.add_device(body.into_request()?)?;
            Ok(Response::json(200, &dev))
        }
        Endpoint::VmCounters => Ok(Response::json(200, &vm.counters())),
        Endpoint::VmRemoveDevice => {
            let body: RemoveDeviceBody = json_body(name, req)?;
            vm.remove_device(&body.checked_id()?)?;
            Ok(Response::no_content())
        }
        Endpoint::VmPowerButton => vm.power_button().map(|()| Response::no_content()),
        Endpoint::VmShutdown => vm.shutdown_vm().map(|()| Response::no_content()),
        Endpoint::VmmShutdown => vm.shutdown_vmm().map(|()| Response::no_content()),
        Endpoint::VmPause => vm.pause().map(|()| Response::no_content()),
        Endpoint::VmResume => vm.resume().map(|()| Response::no_content()),
        Endpoint::VmReboot => vm.reboot().map(|()| Response::no_content()),
    }
}

/// A missing body is a 411: the request had no Content-Length. Anything serde refuses
/// (syntax, types, unknown or missing fields, bad UTF-8) is a 400 with serde's one-line
/// message, which names the field and the position.
fn json_body<T: DeserializeOwned>(name: &str, req: &Request) -> Result<T, ApiError> {
    let Some(body) = &req.body else {
        return Err(ApiError::new(
            411,
            format!("{name} needs a JSON body with a Content-Length"),
        ));
    };
    body::from_json(body).map_err(|e| ApiError::bad_request(format!("{name}: {e}")))
}

/// Statuses outside 400..=599 from a `VmControl` are a bug there; the client still gets an
/// error rather than a success it did not earn.
fn error_response(e: ApiError) -> Response {
    let status = if (400..=599).contains(&e.status) {
        e.status
    } else {
        500
    };
    Response::error(status, &e.messages())
}

#[cfg(test)]
pub(crate) mod tests {
    use parking_lot::Mutex;

    use super::*;
    use crate::api::http::{read_request, Limits, ReadError};
    use crate::api::{AddDevice, DeviceInfo, PciDeviceInfo, Resources, VmInfo, VmState};
    use crate::config::GhSlotRequest;

    /// Records calls; `gpu0` is the only device it has.
    #[derive(Default)]
    pub struct FakeVm {
        pub calls: Mutex<Vec<String>>,
        pub paused: Mutex<bool>,
    }

    impl FakeVm {
        fn log(&self, s: String) {
            self.calls.lock().push(s);
        }
    }

    impl VmControl for FakeVm {
        fn info(&self) -> VmInfo {
            self.log("info".into());
            VmInfo {
                state: VmState::Running,
                config: serde_json::json!({}),
                memory_actual_size: 512 << 20,
                device_tree: [(
                    "gpu0".to_string(),
                    crate::api::DeviceNode::pci("gpu0", "0001:00:00.0", &[]),
                )]
                .into_iter()
                .collect(),
                devices: vec![DeviceInfo {
                    id: "gpu0".into(),
                    bdf: "0001:00:00.0".into(),
                    path: "/sys/bus/pci/devices/0000:01:00.0".into(),
                }],
                resources: Resources {
                    open_fds: 10,
                    memory_slots: 2,
                    rss_kib: 1000,
                },
            }
        }
        fn add_device(&self, req: AddDevice) -> Result<PciDeviceInfo, ApiError> {
            self.log(format!("add {req:?}"));
            if req.id.as_deref() == Some("gpu0") {
                return Err(ApiError::conflict("device gpu0 already exists"));
            }
            if req.id.as_deref() == Some("weird") {
                return Err(ApiError::new(200, "not\nan error code"));
            }
            Ok(PciDeviceInfo {
                id: req.id.unwrap_or_else(|| "_vfio1".into()),
                bdf: "0002:00:00.0".into(),
            })
        }
        fn counters(&self) -> crate::api::Counters {
            self.log("counters".into());
            let mut gpu = std::collections::BTreeMap::new();
            gpu.insert("bar2.padding".to_string(), 1);
            [("gpu0".to_string(), gpu)].into_iter().collect()
        }
        fn remove_device(&self, id: &str) -> Result<(), ApiError> {
            self.log(format!("remove {id}"));
            match id {
                "gpu0" => Ok(()),
                _ => Err(ApiError::not_found(format!("no device with id '{id}'"))),
            }
        }
        fn power_button(&self) -> Result<(), ApiError> {
            self.log("power-button".into());
            Ok(())
        }
        fn shutdown_vm(&self) -> Result<(), ApiError> {
            self.log("shutdown-vm".into());
            Ok(())
        }
        fn shutdown_vmm(&self) -> Result<(), ApiError> {
            self.log("shutdown-vmm".into());
            Ok(())
        }
        fn pause(&self) -> Result<(), ApiError> {
            self.log("pause".into());
            let mut paused = self.paused.lock();
            if *paused {
                return Err(ApiError::caused_by(
                    crate::api::STATUS_VM_ACTION_FAILED,
                    "cannot pause the VM",
                    &crate::vm::pause::PauseError::AlreadyPaused,
                ));
            }
            *paused = true;
            Ok(())
        }
        fn resume(&self) -> Result<(), ApiError> {
            self.log("resume".into());
            let mut paused = self.paused.lock();
            if !*paused {
                return Err(ApiError::caused_by(
                    crate::api::STATUS_VM_ACTION_FAILED,
                    "cannot resume the VM",
                    &crate::vm::pause::PauseError::NotPaused,
                ));
            }
            *paused = false;
            Ok(())
        }
        fn reboot(&self) -> Result<(), ApiError> {
            self.log("reboot".into());
            Ok(())
        }
    }

    /// The whole server path short of the socket: raw bytes in, response out.
    fn serve(vm: &FakeVm, raw: &[u8]) -> Response {
        match read_request(&mut &raw[..], &Limits::default()) {
            Ok(req) => handle(&req, vm),
            Err(ReadError::Respond(r)) => r,
            Err(e) => panic!("{e:?}"),
        }
    }

    fn put(path: &str, body: &str) -> Vec<u8> {
        format!(
            "PUT {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    fn get(path: &str) -> Vec<u8> {
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").into_bytes()
    }

    fn put_empty(path: &str) -> Vec<u8> {
        format!("PUT {path} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n").into_bytes()
    }

    fn text(r: &Response) -> String {
        String::from_utf8(r.body.clone()).unwrap()
    }

    fn json(r: &Response) -> serde_json::Value {
        assert_eq!(r.content_type, "application/json");
        serde_json::from_slice(&r.body).unwrap()
    }

    /// An error body is Cloud Hypervisor's: a JSON array of one-line strings (the error,
    /// then its causes), and its status is `status`. Returns the strings joined by ": ".
    fn error(r: &Response, status: u16) -> String {
        assert_eq!(r.status, status, "{}", text(r));
        let messages: Vec<String> = serde_json::from_value(json(r))
            .unwrap_or_else(|e| panic!("not an array of strings ({e}): {}", text(r)));
        assert!(!messages.is_empty(), "{}", text(r));
        for m in &messages {
            assert!(!m.is_empty() && !m.chars().any(char::is_control), "{m:?}");
        }
        messages.join(": ")
    }

    #[test]
    fn every_endpoint() {
        let vm = FakeVm::default();
        let r = serve(&vm, &get("/api/v1/vmm.ping"));
        assert_eq!(r.status, 200);
        let ping = json(&r);
        assert_eq!(ping["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(ping["pid"], std::process::id());
        assert!(ping["build_version"].is_string());
        assert_eq!(ping["features"], serde_json::json!([]));

        let r = serve(&vm, &get("/api/v1/vm.counters"));
        assert_eq!(r.status, 200);
        assert_eq!(json(&r)["gpu0"]["bar2.padding"], 1);

        // Cloud Hypervisor's UserDeviceConfig, as ch-remote sends it.
        let r = serve(
            &vm,
            &put(
                "/api/v1/vm.add-user-device",
                r#"{"socket":"/run/gpu.sock","id":"gpu2","pci_segment":0}"#,
            ),
        );
        assert_eq!(r.status, 200);
        assert!(vm
            .calls
            .lock()
            .last()
            .unwrap()
            .contains(r#"User("/run/gpu.sock")"#));
        for (body, why) in [
            (r#"{"id":"x"}"#, "missing required field 'socket'"),
            (r#"{"socket":"/s","path":"/p"}"#, "unknown field `path`"),
            (
                r#"{"socket":"/s","pci_segment":2,"gh_slot":0}"#,
                "a GH slot has its own segment",
            ),
        ] {
            let r = serve(&vm, &put("/api/v1/vm.add-user-device", body));
            assert_eq!(r.status, 400, "{body}");
            let text = String::from_utf8_lossy(&r.body).to_string();
            assert!(text.contains(why), "{body}: {text}");
        }

        let r = serve(&vm, &get("/api/v1/vm.info"));
        assert_eq!(r.status, 200);
        let info = json(&r);
        assert_eq!(info["state"], "Running");
        assert_eq!(info["devices"][0]["bdf"], "0001:00:00.0");
        assert_eq!(info["resources"]["memory_slots"], 2);

        let r = serve(
            &vm,
            &put(
                "/api/v1/vm.add-device",
                r#"{"path":"/p","id":"gpu1","gh_slot":"auto"}"#,
            ),
        );
        assert_eq!(r.status, 200);
        assert_eq!(
            json(&r),
            serde_json::json!({"id": "gpu1", "bdf": "0002:00:00.0"})
        );

        let r = serve(&vm, &put("/api/v1/vm.remove-device", r#"{"id":"gpu0"}"#));
        assert_eq!((r.status, r.body.len()), (204, 0));
        for (path, call) in [
            ("/api/v1/vm.power-button", "power-button"),
            ("/api/v1/vm.shutdown", "shutdown-vm"),
            ("/api/v1/vmm.shutdown", "shutdown-vmm"),
        ] {
            let r = serve(&vm, &put_empty(path));
            assert_eq!(r.status, 204, "{path}");
            assert_eq!(vm.calls.lock().last().unwrap(), call);
            // A body, even an empty JSON object, is ignored.
            assert_eq!(serve(&vm, &put(path, "{}")).status, 204, "{path}");
        }
        let calls = vm.calls.lock();
        let calls: Vec<_> = calls
            .iter()
            .filter(|c| *c != "counters" && !c.contains("User("))
            .cloned()
            .collect();
        assert_eq!(calls[0], "info");
        assert_eq!(
            calls[1],
            format!(
                "add {:?}",
                AddDevice {
                    source: crate::config::DeviceSource::Vfio("/p".into()),
                    id: Some("gpu1".into()),
                    pci_segment: None,
                    gh_slot: Some(GhSlotRequest::Auto),
                }
            )
        );
        assert_eq!(calls[2], "remove gpu0");
    }

    #[test]
    fn pause_resume_reboot() {
        let vm = FakeVm::default();
        let put = |path| serve(&vm, &put_empty(path));
        // Cloud Hypervisor's statuses: 204, an invalid state change 500 with the error and
        // its cause.
        assert_eq!(put("/api/v1/vm.pause").status, 204);
        let r = put("/api/v1/vm.pause");
        assert_eq!(
            serde_json::from_slice::<Vec<String>>(&r.body).unwrap(),
            ["cannot pause the VM", "the VM is already paused"]
        );
        assert_eq!(
            error(&r, 500),
            "cannot pause the VM: the VM is already paused"
        );
        assert_eq!(put("/api/v1/vm.resume").status, 204);
        assert_eq!(
            error(&put("/api/v1/vm.resume"), 500),
            "cannot resume the VM: the VM is not paused"
        );
        assert_eq!(put("/api/v1/vm.reboot").status, 204);
        assert_eq!(
            *vm.calls.lock(),
            ["pause", "pause", "resume", "resume", "reboot"]
        );
        let r = serve(&vm, &get("/api/v1/vm.pause"));
        assert_eq!((r.status, r.allow), (405, Some("PUT")));
    }

    #[test]
    fn ch_remote_add_device_is_accepted() {
        let vm = FakeVm::default();
        // Byte for byte what ch-remote writes (request line and headers, then the
        // Content-Length, then the body).
        let body = r#"{"path":"/sys/bus/pci/devices/0000:01:00.0","iommu":false,"id":null,"pci_segment":0,"x_nv_gpudirect_clique":null}"#;
        let raw = format!(
            "PUT /api/v1/vm.add-device HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let r = serve(&vm, raw.as_bytes());
        assert_eq!(r.status, 200, "{}", text(&r));
        assert_eq!(json(&r)["id"], "_vfio1");
        let r = serve(
            &vm,
            &put(
                "/api/v1/vm.add-device",
                r#"{"pci_segment":0,"path":"/p","x_exclude_mmap_bars":[]}"#,
            ),
        );
        assert_eq!(r.status, 200, "{}", text(&r));
    }

    #[test]
    fn body_errors() {
        let vm = FakeVm::default();
        let add = |body: &str| serve(&vm, &put("/api/v1/vm.add-device", body));
        let cases = [
            ("{\"path\":", "EOF while parsing"),
            ("", "EOF while parsing"),
            ("not json", "expected"),
            (r#"{"path":"/p","bogus":true}"#, "unknown field `bogus`"),
            (
                r#"{"path":5}"#,
                "invalid type: integer `5`, expected a string",
            ),
            (r#"{"path":"/p","pci_segment":"0"}"#, "invalid type"),
            (r#"{"id":"x"}"#, "missing required field 'path'"),
            (r#"{"path":"/p","id":"a/b"}"#, "id=a/b"),
            (r#"{"path":"/p","iommu":true}"#, "iommu is not supported"),
            (
                r#"{"path":"/p","x_nv_gpudirect_clique":0}"#,
                "x_nv_gpudirect_clique",
            ),
        ];
        for (body, want) in cases {
            let t = error(&add(body), 400);
            assert!(t.starts_with("vm.add-device: "), "{body}: {t}");
            assert!(t.contains(want), "{body}: {t}");
        }
        // Not UTF-8, in and outside a string.
        for raw in [&b"{\"path\":\"/\xff\"}"[..], b"\xff\xfe"] {
            let mut req = format!(
                "PUT /api/v1/vm.add-device HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
                raw.len()
            )
            .into_bytes();
            req.extend_from_slice(raw);
            error(&serve(&vm, &req), 400);
        }
        let rm = |body: &str| serve(&vm, &put("/api/v1/vm.remove-device", body));
        assert!(error(&rm("{}"), 400).contains("missing field `id`"));
        assert!(error(&rm(r#"{"id":1}"#), 400).contains("invalid type"));
        assert!(error(&rm(r#"{"id":"gpu0","force":true}"#), 400).contains("unknown field"));
        assert!(error(&rm(r#"{"id":"a b"}"#), 400).contains("id=a b"));
        // A body-taking endpoint without Content-Length.
        assert!(
            error(&serve(&vm, &put_empty("/api/v1/vm.add-device")), 411).contains("Content-Length")
        );
        error(&serve(&vm, &put_empty("/api/v1/vm.remove-device")), 411);
        // None of these reached the VM.
        assert!(vm.calls.lock().is_empty());
    }

    #[test]
    fn vm_errors_pass_through() {
        let vm = FakeVm::default();
        let t = error(
            &serve(&vm, &put("/api/v1/vm.remove-device", r#"{"id":"nope"}"#)),
            404,
        );
        assert_eq!(t, "no device with id 'nope'");
        let t = error(
            &serve(
                &vm,
                &put("/api/v1/vm.add-device", r#"{"path":"/p","id":"gpu0"}"#),
            ),
            409,
        );
        assert_eq!(t, "device gpu0 already exists");
        // A success code in an error becomes a 500; newlines never reach the client.
        let t = error(
            &serve(
                &vm,
                &put("/api/v1/vm.add-device", r#"{"path":"/p","id":"weird"}"#),
            ),
            500,
        );
        assert_eq!(t, "not an error code");
    }

    #[test]
    fn routing_errors() {
        let vm = FakeVm::default();
        for path in [
            "/api/v1/vm.boot",
            "/api/v1/",
            "/api/v1",
            "/",
            "/api/v2/vmm.ping",
            "/api/v1/vmm.ping/",
            "/api/v1/VMM.PING",
            "*",
        ] {
            let t = error(&serve(&vm, &get(path)), 404);
            assert!(t.contains("unknown endpoint"), "{t}");
        }
        let r = serve(&vm, &put_empty("/api/v1/vmm.ping"));
        assert_eq!(r.allow, Some("GET"));
        assert_eq!(error(&r, 405), "vmm.ping takes GET, not PUT");
        let r = serve(&vm, &get("/api/v1/vm.add-device"));
        assert_eq!(r.allow, Some("PUT"));
        error(&r, 405);
        for m in ["POST", "DELETE", "HEAD", "OPTIONS", "get"] {
            let raw = format!("{m} /api/v1/vm.shutdown HTTP/1.1\r\n\r\n");
            let r = serve(&vm, raw.as_bytes());
            assert_eq!((r.status, r.allow), (405, Some("PUT")), "{m}");
        }
        assert!(vm.calls.lock().is_empty());
    }

    #[test]
    fn transport_errors() {
        let vm = FakeVm::default();
        error(&serve(&vm, b"GARBAGE\r\n\r\n"), 400);
        error(
            &serve(
                &vm,
                b"GET /api/v1/vm.info HTTP/1.1\r\nX: \r\nNo colon\r\n\r\n",
            ),
            400,
        );
        let long = format!(
            "GET /api/v1/vmm.ping HTTP/1.1\r\nCookie: {}\r\n\r\n",
            "c".repeat(17 << 10)
        );
        error(&serve(&vm, long.as_bytes()), 431);
        let big = format!("{{\"path\":\"{}\"}}", "p".repeat(65 << 10));
        error(&serve(&vm, &put("/api/v1/vm.add-device", &big)), 413);
        error(
            &serve(
                &vm,
                b"PUT /api/v1/vm.add-device HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            ),
            411,
        );
        assert!(vm.calls.lock().is_empty());
    }
}
