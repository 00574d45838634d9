//! The REST API over a real Unix socket, with a fake VM behind it: every endpoint through raw
//! HTTP, the client library and the `ghvmm-remote` binary; the socket's mode; many clients at
//! once, a flood of malformed requests, stalled and slow clients, the connection cap and
//! idle connections giving way to requests.

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Barrier};

use parking_lot::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use vmm::api::client::{self, ApiRequest, RemoteCli, RemoteCommand, RemoteError};
use vmm::api::{
    self, AddDevice, ApiError, ApiSocketConfig, DeviceInfo, Limits, PciDeviceInfo, Resources,
    VmControl, VmInfo, VmState,
};

#[derive(Default)]
struct FakeVm {
    devices: Mutex<Vec<DeviceInfo>>,
    calls: Mutex<Vec<String>>,
}

impl FakeVm {
    fn log(&self, s: &str) {
        self.calls.lock().push(s.to_string());
    }
}

impl VmControl for FakeVm {
    fn info(&self) -> VmInfo {
        VmInfo {
            state: VmState::Running,
            config: serde_json::json!({"memory": {"size": 536870912}}),
            memory_actual_size: 536870912,
            device_tree: Default::default(),
            devices: self.devices.lock().clone(),
            resources: Resources {
                open_fds: 9,
                memory_slots: 1,
                rss_kib: 2048,
            },
        }
    }

    fn add_device(&self, req: AddDevice) -> Result<PciDeviceInfo, ApiError> {
        self.log("add");
        if req.id.as_deref() == Some("slow") {
            // A VM operation that takes a while must not hold up other clients.
            thread::sleep(Duration::from_secs(3));
        }
        let mut devs = self.devices.lock();
        let id = req.id.unwrap_or_else(|| format!("_vfio{}", devs.len()));
        if devs.iter().any(|d| d.id == id) {
            return Err(ApiError::conflict(format!(
                "a device with id '{id}' exists"
            )));
        }
        let bdf = format!("{:04x}:00:00.0", devs.len() + 1);
        devs.push(DeviceInfo {
            id: id.clone(),
            bdf: bdf.clone(),
            path: req.source.path().to_string_lossy().into_owned(),
        });
        Ok(PciDeviceInfo { id, bdf })
    }

    fn counters(&self) -> vmm::api::Counters {
        vmm::api::Counters::new()
    }

    fn remove_device(&self, id: &str) -> Result<(), ApiError> {
        self.log("remove");
        let mut devs = self.devices.lock();
        let before = devs.len();
        devs.retain(|d| d.id != id);
        if devs.len() == before {
            return Err(ApiError::not_found(format!("no device with id '{id}'")));
        }
        Ok(())
    }

    fn power_button(&self) -> Result<(), ApiError> {
        self.log("power-button");
        Ok(())
    }

    fn shutdown_vm(&self) -> Result<(), ApiError> {
        self.log("shutdown-vm");
        Ok(())
    }

    fn shutdown_vmm(&self) -> Result<(), ApiError> {
        self.log("shutdown-vmm");
        Ok(())
    }
}

/// A temporary directory removed when the test ends.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let d = std::env::temp_dir().join(format!("ghvmm-api-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        // Not group-writable whatever the umask: the socket's directory must not be.
        std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Server {
    _dir: TempDir,
    socket: PathBuf,
    vm: Arc<FakeVm>,
}

fn start(name: &str, limits: Limits) -> Server {
    let dir = TempDir::new(name);
    let socket = dir.0.join("api.sock");
    let listener = api::bind(&ApiSocketConfig::Path(socket.clone())).unwrap();
    let vm = Arc::new(FakeVm::default());
    api::spawn_with(listener, vm.clone(), limits).unwrap();
    Server {
        _dir: dir,
        socket,
        vm,
    }
}

/// Sends raw bytes and returns (status, body); `None` if the server answered nothing.
fn raw(socket: &Path, request: &[u8]) -> Option<(u16, String)> {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // The server may answer before taking all of a refused request.
    let _ = s.write_all(request);
    read_response(&mut s)
}

fn read_response(s: &mut UnixStream) -> Option<(u16, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // A reset after the answer (the server closed with our request unread) ends it too.
    while let Ok(n) = s.read(&mut chunk) {
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    if buf.is_empty() {
        return None;
    }
    let text = String::from_utf8(buf).expect("responses are UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete head");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    Some((status, body.to_string()))
}

fn put(endpoint: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "PUT /api/v1/{endpoint} HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

fn ping_ok(socket: &Path) {
    let r = client::send(
        socket,
        &ApiRequest {
            method: "GET",
            endpoint: "vmm.ping",
            body: None,
        },
        Some(Duration::from_secs(5)),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
}

fn remote(socket: &Path, command: RemoteCommand) -> Result<String, RemoteError> {
    client::run(&RemoteCli {
        api_socket: socket.to_path_buf(),
        timeout: None,
        command,
    })
}

#[test]
fn socket_mode_and_every_endpoint() {
    let srv = start("endpoints", Limits::default());
    let meta = std::fs::symlink_metadata(&srv.socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    // Raw HTTP, as curl --unix-socket or ch-remote would send it.
    let (st, body) = raw(
        &srv.socket,
        b"GET /api/v1/vmm.ping HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    assert_eq!(st, 200);
    let ping: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ping["pid"], std::process::id());
    let add = br#"{"path":"/sys/bus/pci/devices/0000:01:00.0","iommu":false,"id":null,"pci_segment":0,"x_nv_gpudirect_clique":null}"#;
    let mut req = format!(
        "PUT /api/v1/vm.add-device HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\nContent-Length: {}\r\n\r\n",
        add.len()
    )
    .into_bytes();
    req.extend_from_slice(add);
    let (st, body) = raw(&srv.socket, &req).unwrap();
    assert_eq!(st, 200, "{body}");
    assert_eq!(body, r#"{"id":"_vfio0","bdf":"0001:00:00.0"}"#);
    let (st, _) = raw(&srv.socket, b"PUT /api/v1/vm.power-button HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(st, 204);
    let (st, body) = raw(&srv.socket, b"DELETE /api/v1/vm.info HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(
        (st, body.as_str()),
        (405, r#"["vm.info takes GET, not DELETE"]"#)
    );

    // The client library, verb by verb.
    let out = remote(&srv.socket, RemoteCommand::Ping).unwrap();
    assert!(out.contains("\"version\": "), "{out}");
    let out = remote(
        &srv.socket,
        RemoteCommand::AddDevice {
            device: "path=/sys/bus/pci/devices/0000:02:00.0,id=gpu1,gh_slot=auto".into(),
        },
    )
    .unwrap();
    let dev: PciDeviceInfo = serde_json::from_str(&out).unwrap();
    assert_eq!(dev.id, "gpu1");
    let info: VmInfo =
        serde_json::from_str(&remote(&srv.socket, RemoteCommand::Info).unwrap()).unwrap();
    assert_eq!(info.devices.len(), 2);
    assert_eq!(info.resources.rss_kib, 2048);
    let e = remote(
        &srv.socket,
        RemoteCommand::AddDevice {
            device: "path=/x,id=gpu1".into(),
        },
    )
    .unwrap_err();
    assert_eq!(e.to_string(), "409: a device with id 'gpu1' exists");
    assert_eq!(
        remote(
            &srv.socket,
            RemoteCommand::RemoveDevice { id: "gpu1".into() }
        )
        .unwrap(),
        ""
    );
    let e = remote(
        &srv.socket,
        RemoteCommand::RemoveDevice { id: "gpu1".into() },
    )
    .unwrap_err();
    assert_eq!(e.to_string(), "404: no device with id 'gpu1'");
    for cmd in [
        RemoteCommand::PowerButton,
        RemoteCommand::Shutdown,
        RemoteCommand::ShutdownVmm,
    ] {
        assert_eq!(remote(&srv.socket, cmd).unwrap(), "");
    }
    let calls = srv.vm.calls.lock().clone();
    assert_eq!(
        calls,
        [
            "add",
            "power-button",
            "add",
            "add",
            "remove",
            "remove",
            "power-button",
            "shutdown-vm",
            "shutdown-vmm"
        ]
    );
}

#[test]
fn concurrent_clients_and_malformed_flood() {
    let srv = start("flood", Limits::default());
    let socket = srv.socket.clone();

    // 100 clients connected at once, then all asking.
    let barrier = Arc::new(Barrier::new(100));
    let clients: Vec<_> = (0..100)
        .map(|_| {
            let (socket, barrier) = (socket.clone(), barrier.clone());
            thread::spawn(move || {
                let mut s = UnixStream::connect(&socket).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                barrier.wait();
                let _ = s.write_all(b"GET /api/v1/vm.info HTTP/1.1\r\n\r\n");
                read_response(&mut s).map(|(st, _)| st)
            })
        })
        .collect();
    let statuses: Vec<_> = clients.into_iter().map(|t| t.join().unwrap()).collect();
    let ok = statuses.iter().filter(|s| **s == Some(200)).count();
    // Beyond the cap of 64 served at once, a client is told 503 at once rather than kept
    // waiting; the first 64 are always served.
    assert!(
        statuses.iter().all(|s| matches!(s, Some(200 | 503))),
        "{statuses:?}"
    );
    assert!(ok >= 64, "{ok} of 100 served: {statuses:?}");
    ping_ok(&socket);

    // 1000 malformed requests of every kind, from 4 clients at a time.
    let long_header = format!(
        "GET /api/v1/vmm.ping HTTP/1.1\r\nX: {}\r\n\r\n",
        "h".repeat(20 << 10)
    );
    let big_body = format!(
        "PUT /api/v1/vm.add-device HTTP/1.1\r\nContent-Length: {}\r\n\r\n{}",
        100 << 10,
        "b".repeat(100 << 10)
    );
    let kinds: Arc<Vec<(Vec<u8>, Option<u16>)>> = Arc::new(vec![
        (b"GARBAGE\r\n\r\n".to_vec(), Some(400)),
        (
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
            Some(400),
        ),
        (b"GET /\xc3\x28 HTTP/1.1\r\n\r\n".to_vec(), Some(400)),
        (
            b"GET /api/v1/vm.info HTTP/1.1\r\nNo-Colon\r\n\r\n".to_vec(),
            Some(400),
        ),
        (long_header.into_bytes(), Some(431)),
        (big_body.into_bytes(), Some(413)),
        (
            b"PUT /api/v1/vm.add-device HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
            Some(411),
        ),
        (
            b"PUT /api/v1/vm.add-device HTTP/1.1\r\n\r\n".to_vec(),
            Some(411),
        ),
        (put("vm.add-device", b"{\"path\":"), Some(400)),
        (put("vm.add-device", b"\xff\xfe\xfd\xfc"), Some(400)),
        (
            put("vm.add-device", br#"{"path":"/p","iommu":true}"#),
            Some(400),
        ),
        (put("vm.add-device", br#"{"path":"/p","wat":1}"#), Some(400)),
        (
            put("vm.add-device", br#"{"path":"/p","id":"no spaces"}"#),
            Some(400),
        ),
        (put("vm.add-device", br#"{"path":["/p"]}"#), Some(400)),
        (put("vm.remove-device", b"{}"), Some(400)),
        (
            b"PUT /api/v1/vm.remove-device HTTP/1.1\r\nContent-Length: 9\r\n\r\n{}".to_vec(),
            Some(400),
        ),
        (
            b"GET /api/v1/vm.add-device HTTP/1.1\r\n\r\n".to_vec(),
            Some(405),
        ),
        (b"GET /api/v1/nothing HTTP/1.1\r\n\r\n".to_vec(), Some(404)),
        (b"GET /api/v1/vmm.ping HTTP/1.1\r\n".to_vec(), None), // closes mid-head: 400, or nothing
        (Vec::new(), None),                                    // connects and hangs up
    ]);
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (socket, kinds) = (socket.clone(), kinds.clone());
            thread::spawn(move || {
                for i in 0..250 {
                    let (req, want) = &kinds[(w * 250 + i) % kinds.len()];
                    let mut s = UnixStream::connect(&socket).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                    let _ = s.write_all(req);
                    // Half-close: the server sees the end of what we send.
                    let _ = s.shutdown(std::net::Shutdown::Write);
                    let got = read_response(&mut s).map(|(st, _)| st);
                    match want {
                        Some(w) => assert_eq!(got, Some(*w), "{:?}", String::from_utf8_lossy(req)),
                        None => assert!(matches!(got, None | Some(400)), "{got:?}"),
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    ping_ok(&socket);
    // None of them reached the VM.
    assert!(srv.vm.calls.lock().is_empty());
}

#[test]
fn stalled_and_slow_clients_block_nobody() {
    let limits = Limits {
        request_timeout: Duration::from_secs(3),
        ..Limits::default()
    };
    let srv = start("stalled", limits);
    // Connects and sends nothing.
    let mut idle = UnixStream::connect(&srv.socket).unwrap();
    // Sends a byte at a time, never finishing within the deadline.
    let slow_socket = srv.socket.clone();
    let slow = thread::spawn(move || {
        let mut s = UnixStream::connect(&slow_socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let head = b"GET /api/v1/vmm.ping HTTP/1.1\r\nX-Pad: ";
        for b in head.iter().chain(std::iter::repeat(&b'a')).take(100) {
            if s.write_all(&[*b]).is_err() {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
        read_response(&mut s)
    });
    // A VM call that takes three seconds.
    let busy_socket = srv.socket.clone();
    let busy = thread::spawn(move || {
        remote(
            &busy_socket,
            RemoteCommand::AddDevice {
                device: "path=/p,id=slow".into(),
            },
        )
    });
    thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    ping_ok(&srv.socket);
    // Well before the stalled clients' deadline and the VM call's end.
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );

    // The stalled ones are cut off at the deadline, with a 408.
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (st, body) = read_response(&mut idle).unwrap();
    assert_eq!(st, 408, "{body}");
    assert_eq!(slow.join().unwrap().map(|r| r.0), Some(408));
    assert!(busy.join().unwrap().is_ok());
    ping_ok(&srv.socket);
}

#[test]
fn connection_cap() {
    let limits = Limits {
        max_connections: 2,
        ..Limits::default()
    };
    let srv = start("cap", limits);
    // Two clients that connect and send nothing take both connections...
    let mut idle: Vec<_> = (0..2)
        .map(|_| UnixStream::connect(&srv.socket).unwrap())
        .collect();
    thread::sleep(Duration::from_millis(100));
    // ...but a request takes the place of the one idle longest, which is told so, well
    // before the 10 s request deadline.
    let t = Instant::now();
    ping_ok(&srv.socket);
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    idle[0]
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let (st, body) = read_response(&mut idle[0]).unwrap();
    assert_eq!(
        (st, body.as_str()),
        (
            503,
            r#"["too many API connections, and this one had not sent its request yet; try again"]"#
        )
    );
    // The other one is still there, and served.
    idle[1]
        .write_all(b"GET /api/v1/vmm.ping HTTP/1.1\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut idle[1]).map(|r| r.0), Some(200));

    // Both connections running a request (a VM call of 3 s): a new one is refused at once.
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let socket = srv.socket.clone();
            thread::spawn(move || {
                raw(
                    &socket,
                    &put("vm.add-device", br#"{"path":"/p","id":"slow"}"#),
                )
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let (st, body) = raw(&srv.socket, b"GET /api/v1/vmm.ping HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(
        (st, body.as_str()),
        (503, r#"["too many API connections; try again"]"#)
    );
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    let mut done: Vec<_> = slow
        .into_iter()
        .map(|t| t.join().unwrap().unwrap().0)
        .collect();
    done.sort();
    assert_eq!(done, [200, 409]);
    ping_ok(&srv.socket);
}

#[test]
fn client_errors_are_one_line() {
    let dir = TempDir::new("client-errors");
    let missing = dir.0.join("missing.sock");
    let e = remote(&missing, RemoteCommand::Ping)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!("cannot connect to {}: ", missing.display())),
        "{e}"
    );
    // A socket file nobody listens on.
    let stale = dir.0.join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    let e = remote(&stale, RemoteCommand::Ping).unwrap_err().to_string();
    assert!(e.contains("Connection refused"), "{e}");
    assert!(!e.contains('\n'));
}

fn ghvmm_remote(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ghvmm-remote"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

/// Exit code 1 and exactly one stderr line, `ghvmm-remote: error: ...`.
fn one_error_line(out: &Output) -> String {
    let err = String::from_utf8(out.stderr.clone()).unwrap();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.matches('\n').count(), 1, "{err:?}");
    assert!(err.starts_with("ghvmm-remote: error: "), "{err:?}");
    assert!(out.stdout.is_empty());
    err.trim_end().to_string()
}

#[test]
fn ghvmm_remote_binary() {
    let srv = start("binary", Limits::default());
    let sock = srv.socket.to_str().unwrap();
    let out = ghvmm_remote(&["--api-socket", sock, "ping"]);
    assert!(out.status.success());
    let ping: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ping["pid"], std::process::id());
    // Pretty-printed.
    assert!(String::from_utf8_lossy(&out.stdout).contains("\n  \"pid\": "));

    let out = ghvmm_remote(&[
        "--api-socket",
        sock,
        "add-device",
        "path=/p,id=gpu0,gh_slot=1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dev: PciDeviceInfo = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(dev.id, "gpu0");
    let out = ghvmm_remote(&["--api-socket", sock, "info"]);
    let info: VmInfo = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info.devices[0].path, "/p");
    let out = ghvmm_remote(&["--api-socket", sock, "shutdown"]);
    assert!(out.status.success() && out.stdout.is_empty());

    assert_eq!(
        one_error_line(&ghvmm_remote(&[
            "--api-socket",
            sock,
            "remove-device",
            "nope"
        ])),
        "ghvmm-remote: error: 404: no device with id 'nope'"
    );
    assert_eq!(
        one_error_line(&ghvmm_remote(&[
            "--api-socket",
            sock,
            "add-device",
            "path=/p,iommu=on"
        ])),
        "ghvmm-remote: error: add-device: parameter 'iommu' is not supported by ghvmm (accepted: path, id, gh_slot, pci_segment)"
    );
    let e = one_error_line(&ghvmm_remote(&[
        "--api-socket",
        "/nonexistent/x.sock",
        "ping",
    ]));
    assert!(e.contains("cannot connect to /nonexistent/x.sock"), "{e}");
    // ch-remote's reboot verb reaches the VM (this fake one cannot do it).
    let e = one_error_line(&ghvmm_remote(&["--api-socket", sock, "reboot"]));
    assert!(
        e.starts_with("ghvmm-remote: error: 501: vm.reboot is not supported"),
        "{e}"
    );
    for args in [
        &[][..],
        &["ping"],
        &["--api-socket", sock],
        &["--api-socket", sock, "nmi"],
        &["--api-socket", sock, "add-device"],
        &["--api-socket", sock, "ping", "--bogus"],
    ] {
        let e = one_error_line(&ghvmm_remote(args));
        assert!(e.ends_with("(see --help)"), "{args:?}: {e}");
    }
    assert_eq!(
        one_error_line(&ghvmm_remote(&[])),
        "ghvmm-remote: error: give --api-socket PATH and a command (see --help)"
    );
    let out = ghvmm_remote(&["--help"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("remove-device"));
}

#[test]
fn ghvmm_remote_into_a_closed_pipe_exits_quietly() {
    let srv = start("closed-pipe", Limits::default());
    let sock = srv.socket.to_str().unwrap();
    // `ghvmm-remote info | head -0`: the reader is gone before anything is written.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_ghvmm-remote"))
        .args(["--api-socket", sock, "info"])
        .env_remove("RUST_LOG")
        .stdout(writer)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.is_empty(), "{err:?}");
    assert!(out.status.success(), "{:?}", out.status);
}
