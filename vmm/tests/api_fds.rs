//! The API when ghvmm is out of file descriptors: a client is told so with a 503 instead of
//! waiting unanswered, and the API serves again as soon as descriptors are free. Alone in its
//! test binary because it lowers the process's descriptor limit.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm::api::{
    self, AddDevice, ApiError, ApiSocketConfig, Limits, PciDeviceInfo, VmControl, VmInfo,
};

struct NoVm;

impl VmControl for NoVm {
    fn info(&self) -> VmInfo {
        unreachable!("not asked")
    }
    fn add_device(&self, _: AddDevice) -> Result<PciDeviceInfo, ApiError> {
        unreachable!("not asked")
    }
    fn counters(&self) -> vmm::api::Counters {
        unreachable!("not asked")
    }
    fn remove_device(&self, _: &str) -> Result<(), ApiError> {
        unreachable!("not asked")
    }
    fn power_button(&self) -> Result<(), ApiError> {
        unreachable!("not asked")
    }
    fn shutdown_vm(&self) -> Result<(), ApiError> {
        unreachable!("not asked")
    }
    fn shutdown_vmm(&self) -> Result<(), ApiError> {
        unreachable!("not asked")
    }
}

fn ping(socket: &Path) -> (u16, String) {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(b"GET /api/v1/vmm.ping HTTP/1.1\r\n\r\n");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8(out).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an answer");
    (
        head.split(' ').nth(1).unwrap().parse().unwrap(),
        body.to_string(),
    )
}

fn nofile() -> libc::rlimit {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) }, 0);
    r
}

fn set_nofile(r: &libc::rlimit) {
    // SAFETY: setrlimit reads one rlimit.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, r) }, 0);
}

#[test]
fn out_of_descriptors() {
    let dir = std::env::temp_dir().join(format!("ghvmm-api-fds-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // Not group-writable whatever the umask: the socket's directory must not be.
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let socket: PathBuf = dir.join("api.sock");
    let listener = api::bind(&ApiSocketConfig::Path(socket.clone())).unwrap();
    api::spawn_with(listener, Arc::new(NoVm), Limits::default()).unwrap();
    assert_eq!(ping(&socket).0, 200);

    // Every descriptor taken. The accept thread took its next one before it began to wait,
    // so one client still gets through: one that sends nothing and keeps its connection.
    let saved = nofile();
    let open = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
    set_nofile(&libc::rlimit {
        rlim_cur: open + 16,
        ..saved
    });
    let mut fillers = Vec::new();
    while let Ok(f) = File::open("/dev/null") {
        fillers.push(f);
    }
    fillers.pop();
    let idle = UnixStream::connect(&socket).unwrap();
    // Now the server has none: a client (given the one descriptor freed for it) is told so
    // at once rather than left waiting.
    fillers.pop();
    for _ in 0..3 {
        let t = Instant::now();
        let (status, body) = ping(&socket);
        assert_eq!(
            (status, body.as_str()),
            (503, r#"["ghvmm is out of file descriptors; try again"]"#)
        );
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    }

    drop(idle);
    drop(fillers);
    set_nofile(&saved);
    assert_eq!(ping(&socket).0, 200);
    let _ = std::fs::remove_dir_all(&dir);
}
