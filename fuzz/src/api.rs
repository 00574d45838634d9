//! Target `api_request`: the REST API's request reader (`read_request`, over an in-memory
//! reader), its router and JSON body checks (`routes::handle`, `body`), with a fake
//! `VmControl`, from raw bytes.
//!
//! A hash of the input picks how it arrives (all at once or a few bytes per read, with
//! interrupted reads, ending in EOF or a timeout) and the limits (the defaults, or small ones
//! so that short inputs reach the head and body limits). Checked: every outcome is a request,
//! "closed" (only for an empty stream) or a response with a 4xx status; a request's body is
//! no larger than the limit and its path has no query; every response serializes to valid
//! HTTP/1.1 with a matching Content-Length (none for 204), an error body is one line of
//! text, a 200 body is JSON; the VM is only called with checked arguments.

pub use vmm::api::*;

use parking_lot::Mutex;
use std::io::{self, Read};

use http::{read_request, ReadError, Request, Response};

/// Answers like a VM with one device, `gpu0`; checks what it is asked.
#[derive(Default)]
pub struct FakeVm {
    pub calls: Mutex<Vec<String>>,
}

fn check_id(id: &str) {
    assert!(
        vmm::config::parse_id(id).is_ok(),
        "the VM got an unchecked id {id:?}"
    );
}

impl VmControl for FakeVm {
    fn info(&self) -> VmInfo {
        self.calls.lock().push("info".into());
        VmInfo {
            state: VmState::Running,
            config: serde_json::json!({"cpus": {"boot_vcpus": 2}}),
            memory_actual_size: 512 << 20,
            device_tree: Default::default(),
            devices: vec![DeviceInfo {
                id: "gpu0".into(),
                bdf: "0001:00:00.0".into(),
                path: "/sys/bus/pci/devices/0000:01:00.0".into(),
            }],
            resources: Resources {
                open_fds: 12,
                memory_slots: 2,
                rss_kib: 4096,
            },
        }
    }

    fn add_device(&self, req: AddDevice) -> Result<PciDeviceInfo, ApiError> {
        assert!(
            !req.source.path().as_os_str().is_empty(),
            "add_device without a path"
        );
        if let Some(id) = &req.id {
            check_id(id);
        }
        assert_ne!(req.pci_segment, Some(0), "segment 0 must arrive as None");
        assert!(
            req.pci_segment.is_none() || req.gh_slot.is_none(),
            "a segment and a GH slot together: {req:?}"
        );
        self.calls.lock().push(format!("add {req:?}"));
        match req.id.as_deref() {
            Some("gpu0") => Err(ApiError::conflict("device gpu0 already exists")),
            Some("weird") => Err(ApiError::new(200, "not\nan error")),
            _ => Ok(PciDeviceInfo {
                id: req.id.unwrap_or_else(|| "_vfio1".into()),
                bdf: "0000:00:05.0".into(),
            }),
        }
    }

    fn counters(&self) -> vmm::api::Counters {
        vmm::api::Counters::new()
    }

    fn remove_device(&self, id: &str) -> Result<(), ApiError> {
        check_id(id);
        self.calls.lock().push(format!("remove {id}"));
        match id {
            "gpu0" => Ok(()),
            _ => Err(ApiError::not_found(format!("no device with id '{id}'"))),
        }
    }

    fn power_button(&self) -> Result<(), ApiError> {
        Ok(())
    }

    fn shutdown_vm(&self) -> Result<(), ApiError> {
        Ok(())
    }

    fn shutdown_vmm(&self) -> Result<(), ApiError> {
        Err(ApiError::internal("cannot shut down\r\nright now"))
    }
}

/// Hands out `data` `step` bytes per read, optionally failing with `Interrupted` before each
/// read, and ending in EOF or (`timeout`) in `WouldBlock`, as a socket read timeout does.
struct Stream<'a> {
    data: &'a [u8],
    step: usize,
    interrupt: bool,
    interrupted: bool,
    timeout: bool,
}

impl Read for Stream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.interrupt && !self.interrupted {
            self.interrupted = true;
            return Err(io::ErrorKind::Interrupted.into());
        }
        self.interrupted = false;
        if self.data.is_empty() && self.timeout {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.data.len().min(self.step).min(buf.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// FNV-1a: a stable choice of the delivery mode per input.
pub fn hash(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The response as bytes is valid HTTP/1.1 with the right framing; error bodies are one line.
pub fn check_response(r: &Response) {
    assert!((200..=599).contains(&r.status), "status {}", r.status);
    let bytes = r.to_bytes();
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut parsed = httparse::Response::new(&mut headers);
    let head = match parsed.parse(&bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!(
            "unparsable response {other:?}: {:?}",
            String::from_utf8_lossy(&bytes)
        ),
    };
    assert_eq!(parsed.code, Some(r.status));
    let length = parsed
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| {
            std::str::from_utf8(h.value)
                .unwrap()
                .parse::<usize>()
                .unwrap()
        });
    if r.status == 204 {
        assert_eq!(length, None, "a 204 with a Content-Length");
        assert!(r.body.is_empty());
    } else {
        assert_eq!(length, Some(r.body.len()), "Content-Length");
    }
    assert_eq!(&bytes[head..], &r.body[..]);
    if r.status >= 400 {
        assert_eq!(r.content_type, "application/json", "{r:?}");
        let messages: Vec<String> =
            serde_json::from_slice(&r.body).expect("error body is a JSON array of strings");
        assert!(
            !messages.is_empty() && messages.iter().all(|m| !m.chars().any(char::is_control)),
            "error body is not clean one-line strings: {messages:?}"
        );
    } else if r.status == 200 {
        assert_eq!(r.content_type, "application/json");
        serde_json::from_slice::<serde_json::Value>(&r.body).expect("200 body is JSON");
    }
}

pub fn serve(vm: &FakeVm, req: &Request) -> Response {
    let r = routes::handle(req, vm);
    check_response(&r);
    r
}

pub fn fuzz(data: &[u8]) {
    let h = hash(data);
    let limits = if h & 1 == 0 {
        http::Limits::default()
    } else {
        http::Limits {
            max_head_bytes: 16 + (h >> 8) as usize % 512,
            max_body_bytes: (h >> 20) as usize % 300,
            ..http::Limits::default()
        }
    };
    let mut stream = Stream {
        data,
        step: if h & 2 == 0 {
            usize::MAX
        } else {
            1 + (h >> 32) as usize % 7
        },
        interrupt: h & 4 != 0,
        interrupted: false,
        timeout: h & 8 != 0,
    };
    let vm = FakeVm::default();
    match read_request(&mut stream, &limits) {
        Ok(req) => {
            if let Some(body) = &req.body {
                assert!(body.len() <= limits.max_body_bytes, "body over the limit");
            }
            assert!(!req.path.contains('?'), "query kept in {:?}", req.path);
            assert!(!req.method.is_empty());
            serve(&vm, &req);
        }
        Err(ReadError::Respond(r)) => {
            assert!(
                [400, 408, 411, 413, 431].contains(&r.status),
                "reader answered {}",
                r.status
            );
            check_response(&r);
        }
        Err(ReadError::Closed) => assert!(data.is_empty(), "closed with data sent"),
        Err(ReadError::Io(e)) => panic!("an in-memory stream failed: {e}"),
    }
}

pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let put = |path: &str, body: &str| {
        format!(
            "PUT {path} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    };
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").into_bytes();
    vec![
        ("ping", get("/api/v1/vmm.ping")),
        ("info", get("/api/v1/vm.info?verbose=1")),
        (
            "add-device-ch-remote",
            put(
                "/api/v1/vm.add-device",
                r#"{"path":"/sys/bus/pci/devices/0000:01:00.0","iommu":false,"id":null,"pci_segment":0,"x_nv_gpudirect_clique":null}"#,
            ),
        ),
        (
            "add-device-gh-slot",
            put(
                "/api/v1/vm.add-device",
                r#"{"path":"/g","id":"gpu1","gh_slot":"auto"}"#,
            ),
        ),
        (
            "add-device-segment",
            put(
                "/api/v1/vm.add-device",
                r#"{"path":"/g","pci_segment":2,"x_exclude_mmap_bars":[],"fd":null}"#,
            ),
        ),
        (
            "add-device-bad-json",
            put("/api/v1/vm.add-device", r#"{"path":"/g","bogus":[1,{"a":"\u0000"}]"#),
        ),
        (
            "remove-device",
            put("/api/v1/vm.remove-device", r#"{"id":"gpu0"}"#),
        ),
        ("remove-device-bad-id", put("/api/v1/vm.remove-device", r#"{"id":"../x"}"#)),
        (
            "power-button",
            b"PUT /api/v1/vm.power-button HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
        ),
        ("shutdown-vmm", put("/api/v1/vmm.shutdown", "{}")),
        ("wrong-method", get("/api/v1/vm.add-device")),
        ("unknown-endpoint", get("/api/v1/vm.boot")),
        (
            "chunked",
            b"PUT /api/v1/vm.add-device HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
                .to_vec(),
        ),
        (
            "two-lengths",
            b"PUT /api/v1/vm.remove-device HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx"
                .to_vec(),
        ),
        (
            "short-body",
            b"PUT /api/v1/vm.remove-device HTTP/1.0\r\ncontent-length: 99\r\n\r\n{\"id\":".to_vec(),
        ),
        ("garbage", b"\x00\x01GARBAGE\r\n\r\n".to_vec()),
    ]
}

#[cfg(test)]
mod tests {
    #[test]
    fn seeds_hold_the_invariants() {
        for (_, bytes) in super::seeds() {
            super::fuzz(&bytes);
        }
        super::fuzz(b"");
    }
}
