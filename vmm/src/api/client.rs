//! `ghvmm-remote`: ch-remote's verbs and argument syntax, sent to ghvmm's API socket.
//! The binary (src/bin/ghvmm-remote.rs) only prints what `run` returns.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use pci::escape_controls;

use super::body::{AddDeviceBody, AddUserDeviceBody, RemoveDeviceBody};
use crate::config::DeviceConfig;

#[derive(Debug, Parser)]
#[command(
    name = "ghvmm-remote",
    version,
    about = "Control a running ghvmm through its --api-socket (ch-remote's commands)"
)]
pub struct RemoteCli {
    /// The socket ghvmm was started with (--api-socket).
    #[arg(long, value_name = "PATH")]
    pub api_socket: PathBuf,
    /// Give up after SECS (1-86400), connecting included. Default: 60 s; 300 s for
    /// add-device and add-user-device, 120 s for remove-device (60 s plus the time ghvmm
    /// gives the guest to eject).
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=MAX_TIMEOUT_SECS))]
    pub timeout: Option<u64>,
    #[command(subcommand)]
    pub command: RemoteCommand,
}

#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum RemoteCommand {
    /// Check that ghvmm answers; prints its version and pid.
    Ping,
    /// Print the VM's state, configuration, devices and resources.
    Info,
    /// Hot-plug a device; the argument has --device's syntax.
    AddDevice {
        #[arg(value_name = "path=PATH[,id=NAME][,gh_slot=K|auto|pci_segment=N]")]
        device: String,
    },
    /// Hot-plug a device served by a vfio-user server; the argument has --user-device's
    /// syntax.
    AddUserDevice {
        #[arg(value_name = "socket=PATH[,id=NAME][,gh_slot=K|auto|pci_segment=N]")]
        device: String,
    },
    /// Print every device's access counters (vm.counters).
    Counters,
    /// Hot-unplug the device with this id.
    RemoveDevice {
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Press the guest's ACPI power button.
    PowerButton,
    /// Shut the VM down (vm.shutdown).
    Shutdown,
    /// Shut the VMM down (vmm.shutdown).
    ShutdownVmm,
    /// Stop every vCPU (vm.pause).
    Pause,
    /// Let the vCPUs run again (vm.resume).
    Resume,
    /// Reboot the VM (vm.reboot): it is rebuilt and boots again in the same ghvmm.
    Reboot,
}

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// An add-device or add-user-device argument ghvmm would refuse: the verb and why.
    #[error("{0}: {1}")]
    Device(&'static str, String),
    #[error("cannot connect to {}: {source}", path.display())]
    Connect { path: PathBuf, source: io::Error },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("no complete answer from {} within {secs} s (see --timeout)", path.display())]
    Timeout { path: PathBuf, secs: u64 },
    #[error("malformed response: {0}")]
    BadResponse(String),
    /// The server's status and its one-line message.
    #[error("{status}: {message}")]
    Server { status: u16, message: String },
}

/// One API call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiRequest {
    pub method: &'static str,
    /// E.g. `vm.info`, under /api/v1/.
    pub endpoint: &'static str,
    pub body: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiResponse {
    pub status: u16,
    pub body: String,
}

/// Responses larger than this are not from ghvmm.
const MAX_RESPONSE: u64 = 16 << 20;

/// `--timeout`'s upper bound: a day.
const MAX_TIMEOUT_SECS: u64 = 86_400;
/// How long most requests may take: ghvmm answers them at once.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Adding a device opens it and, for the first VFIO device, pins all guest RAM for DMA,
/// which takes longer the more RAM the guest has.
const ADD_TIMEOUT: Duration = Duration::from_secs(300);
/// A removal waits for the guest's eject up to `EJECT_TIMEOUT`, then tears the device down.
const REMOVE_TIMEOUT: Duration =
    Duration::from_secs(DEFAULT_TIMEOUT.as_secs() + crate::hotplug::EJECT_TIMEOUT.as_secs());

impl RemoteCommand {
    pub fn request(&self) -> Result<ApiRequest, RemoteError> {
        let bare = |method, endpoint| ApiRequest {
            method,
            endpoint,
            body: None,
        };
        Ok(match self {
            RemoteCommand::Ping => bare("GET", "vmm.ping"),
            RemoteCommand::Info => bare("GET", "vm.info"),
            RemoteCommand::AddDevice { device } => {
                let d = DeviceConfig::parse(device).map_err(|e| device_error("add-device", e))?;
                ApiRequest {
                    method: "PUT",
                    endpoint: "vm.add-device",
                    body: Some(to_json(&AddDeviceBody::from_config(&d))),
                }
            }
            RemoteCommand::AddUserDevice { device } => {
                let d = DeviceConfig::parse_user(device)
                    .map_err(|e| device_error("add-user-device", e))?;
                ApiRequest {
                    method: "PUT",
                    endpoint: "vm.add-user-device",
                    body: Some(to_json(&AddUserDeviceBody::from_config(&d))),
                }
            }
            RemoteCommand::Counters => bare("GET", "vm.counters"),
            RemoteCommand::RemoveDevice { id } => ApiRequest {
                method: "PUT",
                endpoint: "vm.remove-device",
                body: Some(to_json(&RemoveDeviceBody { id: id.clone() })),
            },
            RemoteCommand::PowerButton => bare("PUT", "vm.power-button"),
            RemoteCommand::Shutdown => bare("PUT", "vm.shutdown"),
            RemoteCommand::ShutdownVmm => bare("PUT", "vmm.shutdown"),
            RemoteCommand::Pause => bare("PUT", "vm.pause"),
            RemoteCommand::Resume => bare("PUT", "vm.resume"),
            RemoteCommand::Reboot => bare("PUT", "vm.reboot"),
        })
    }
}

impl RemoteCli {
    /// How long the whole request may take: `--timeout`, or the command's default.
    pub fn deadline(&self) -> Duration {
        if let Some(secs) = self.timeout {
            return Duration::from_secs(secs);
        }
        match self.command {
            RemoteCommand::AddDevice { .. } | RemoteCommand::AddUserDevice { .. } => ADD_TIMEOUT,
            RemoteCommand::RemoveDevice { .. } => REMOVE_TIMEOUT,
            _ => DEFAULT_TIMEOUT,
        }
    }
}

/// The option parser's message without its `--device: ` (or `--user-device: `) prefix.
fn device_error(verb: &'static str, e: crate::config::ConfigError) -> RemoteError {
    let msg = e.to_string();
    let msg = msg
        .strip_prefix("--")
        .and_then(|m| m.split_once(": "))
        .map_or(msg.as_str(), |(_, rest)| rest);
    RemoteError::Device(verb, msg.into())
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    // Plain structs of strings and numbers always serialize.
    serde_json::to_string(v).unwrap_or_default()
}

/// Runs the command and returns what to print: the response body, JSON pretty-printed,
/// empty for a 204. A non-2xx status is an error.
pub fn run(cli: &RemoteCli) -> Result<String, RemoteError> {
    let req = cli.command.request()?;
    let resp = send(&cli.api_socket, &req, Some(cli.deadline()))?;
    if !(200..300).contains(&resp.status) {
        return Err(RemoteError::Server {
            status: resp.status,
            message: error_message(&resp.body),
        });
    }
    Ok(pretty(&resp.body))
}

/// An error body as one printable line: Cloud Hypervisor's array of strings (the error,
/// then its causes) joined by ": ", as its own log line joins them; any other body as it
/// came.
fn error_message(body: &str) -> String {
    match serde_json::from_str::<Vec<String>>(body) {
        Ok(messages) if !messages.is_empty() => one_line(&messages.join(": ")),
        _ => one_line(body.trim()),
    }
}

/// What the server said, as one printable line.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// JSON pretty-printed; anything else (not ghvmm's, or a proxy's page) as one line with its
/// control characters escaped, so a server cannot write to the terminal.
fn pretty(body: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(v) => serde_json::to_string_pretty(&v)
            .unwrap_or_else(|_| escape_controls(body.trim_end()).into_owned()),
        Err(_) => escape_controls(body.trim_end()).into_owned(),
    }
}

/// Connects, giving up at `deadline`. A connect to a Unix socket whose backlog is full
/// blocks; it is left to finish (or not) on its own thread, which the process's exit ends.
fn connect(socket: &Path, deadline: Option<Instant>) -> io::Result<UnixStream> {
    let Some(deadline) = deadline else {
        return UnixStream::connect(socket);
    };
    let (tx, rx) = mpsc::channel();
    let path = socket.to_path_buf();
    std::thread::Builder::new()
        .name("connect".into())
        .spawn(move || {
            let _ = tx.send(UnixStream::connect(path));
        })?;
    match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        Ok(r) => r,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

/// What is left until `deadline`, as a socket timeout; an error once it has passed.
fn left(deadline: Option<Instant>) -> io::Result<Option<Duration>> {
    match deadline {
        None => Ok(None),
        Some(d) => match d.checked_duration_since(Instant::now()) {
            Some(t) if !t.is_zero() => Ok(Some(t)),
            _ => Err(io::ErrorKind::TimedOut.into()),
        },
    }
}

/// Sends one request on a new connection and reads the whole response. `timeout` bounds the
/// whole exchange, connecting included; `None` waits as long as the server takes.
pub fn send(
    socket: &Path,
    req: &ApiRequest,
    timeout: Option<Duration>,
) -> Result<ApiResponse, RemoteError> {
    let deadline = timeout.map(|t| Instant::now() + t);
    let timed_out = || RemoteError::Timeout {
        path: socket.to_path_buf(),
        secs: timeout.map_or(0, |t| t.as_secs()),
    };
    let is_timeout = |e: &io::Error| {
        matches!(
            e.kind(),
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
        )
    };
    let mut stream = connect(socket, deadline).map_err(|source| {
        if is_timeout(&source) {
            timed_out()
        } else {
            RemoteError::Connect {
                path: socket.to_path_buf(),
                source,
            }
        }
    })?;
    let io_err = |source: io::Error| {
        if is_timeout(&source) {
            timed_out()
        } else {
            RemoteError::Io {
                path: socket.to_path_buf(),
                source,
            }
        }
    };
    stream
        .set_write_timeout(left(deadline).map_err(io_err)?)
        .map_err(io_err)?;
    let mut raw = format!(
        "{} /api/v1/{} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\nConnection: close\r\n",
        req.method, req.endpoint
    );
    if let Some(body) = &req.body {
        raw.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
    } else {
        raw.push_str("\r\n");
    }
    // The server may answer and close before taking all of the request (a 413, say): its
    // answer is still there to read, so a failed write is only reported if reading fails.
    let written = stream.write_all(raw.as_bytes());
    let mut buf = Vec::new();
    match read_all(&mut stream, &mut buf, deadline) {
        Ok(()) => {}
        // Whatever came, the server did not finish its answer in time.
        Err(e) if is_timeout(&e) => return Err(timed_out()),
        Err(e) if buf.is_empty() => return Err(io_err(written.err().unwrap_or(e))),
        // A reset after a complete response is no loss.
        Err(_) => {}
    }
    if buf.is_empty() {
        return Err(match written {
            Err(e) => io_err(e),
            Ok(()) => RemoteError::BadResponse("the connection closed without an answer".into()),
        });
    }
    parse_response(&buf)
}

/// Reads until the server closes, at most `MAX_RESPONSE` bytes, each read bounded by what is
/// left until `deadline` (so a server trickling bytes cannot keep the client forever).
fn read_all(
    stream: &mut UnixStream,
    buf: &mut Vec<u8>,
    deadline: Option<Instant>,
) -> io::Result<()> {
    let mut chunk = [0u8; 8192];
    loop {
        stream.set_read_timeout(left(deadline)?)?;
        let room = MAX_RESPONSE.saturating_sub(buf.len() as u64);
        let want = chunk.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(());
        }
        match stream.read(&mut chunk[..want]) {
            Ok(0) => return Ok(()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn parse_response(buf: &[u8]) -> Result<ApiResponse, RemoteError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return Err(RemoteError::BadResponse("incomplete headers".into()))
        }
        Err(e) => return Err(RemoteError::BadResponse(e.to_string())),
    };
    let status = resp
        .code
        .ok_or_else(|| RemoteError::BadResponse("no status".into()))?;
    let mut body = &buf[head_len..];
    if let Some(h) = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
    {
        let len: usize = std::str::from_utf8(h.value)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| RemoteError::BadResponse("bad Content-Length".into()))?;
        if body.len() < len {
            return Err(RemoteError::BadResponse(format!(
                "the body ended after {} of {len} bytes",
                body.len()
            )));
        }
        body = &body[..len];
    }
    Ok(ApiResponse {
        status,
        body: String::from_utf8_lossy(body).into_owned(),
    })
}

/// clap's error as one line: its first paragraph (which for a missing argument names it on
/// the next line), without the usage block and tips.
pub fn arg_error_line(e: &clap::Error) -> String {
    // With no arguments at all clap's "error" is the whole help text.
    if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        return "give --api-socket PATH and a command (see --help)".into();
    }
    let rendered = e.render().to_string();
    let first = rendered.split("\n\n").next().unwrap_or_default();
    let joined = first
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let joined = joined.strip_prefix("error: ").unwrap_or(&joined);
    if joined.is_empty() {
        "invalid arguments (see --help)".into()
    } else {
        format!("{joined} (see --help)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Result<RemoteCli, clap::Error> {
        RemoteCli::try_parse_from(std::iter::once("ghvmm-remote").chain(args.iter().copied()))
    }

    fn request(args: &[&str]) -> Result<ApiRequest, String> {
        let c = cli(args).map_err(|e| arg_error_line(&e))?;
        c.command.request().map_err(|e| e.to_string())
    }

    /// One `RemoteCli::command()` reused for many command lines (as the fuzzer does)
    /// answers each as `try_parse_from` does.
    #[test]
    fn a_reused_command_answers_as_a_fresh_one() {
        use clap::{CommandFactory, FromArgMatches};
        let lines: &[&[&str]] = &[
            &["--api-socket", "/s", "add-device", "path=/g,id=gpu1"],
            &["--api-socket", "/s", "no-such-verb"],
            &["--api-socket", "/s", "--timeout", "0", "info"],
            &["--api-socket", "/t", "remove-device", "gpu1"],
            &["--api-socket", "/s", "add-device", "path=/g,id=gpu1"],
        ];
        let mut reused = RemoteCli::command();
        for line in lines {
            let args = || std::iter::once("ghvmm-remote").chain(line.iter().copied());
            let fresh = cli(line).map_err(|e| arg_error_line(&e));
            let again = reused
                .try_get_matches_from_mut(args())
                .and_then(|m| RemoteCli::from_arg_matches(&m))
                .map_err(|e| arg_error_line(&e));
            assert_eq!(format!("{again:?}"), format!("{fresh:?}"), "{line:?}");
        }
    }

    #[test]
    fn verbs_map_to_ch_endpoints() {
        let s = ["--api-socket", "/s"];
        let ep = |verb: &[&str]| {
            let args: Vec<&str> = s.iter().chain(verb).copied().collect();
            let r = request(&args).unwrap();
            (r.method, r.endpoint)
        };
        assert_eq!(ep(&["ping"]), ("GET", "vmm.ping"));
        assert_eq!(ep(&["info"]), ("GET", "vm.info"));
        assert_eq!(ep(&["add-device", "path=/p"]), ("PUT", "vm.add-device"));
        assert_eq!(ep(&["remove-device", "gpu0"]), ("PUT", "vm.remove-device"));
        assert_eq!(
            ep(&["add-user-device", "socket=/s"]),
            ("PUT", "vm.add-user-device")
        );
        assert_eq!(ep(&["counters"]), ("GET", "vm.counters"));
        let r = request(&[
            "--api-socket",
            "/s",
            "add-user-device",
            "socket=/g.sock,id=gpu1",
        ])
        .unwrap();
        assert_eq!(
            r.body.as_deref(),
            Some(r#"{"socket":"/g.sock","id":"gpu1","pci_segment":0}"#)
        );
        assert_eq!(
            request(&["--api-socket", "/s", "add-user-device", "path=/x"]).unwrap_err(),
            "add-user-device: unknown parameter 'path' (accepted: socket, id, gh_slot, pci_segment)"
        );
        assert_eq!(ep(&["power-button"]), ("PUT", "vm.power-button"));
        assert_eq!(ep(&["shutdown"]), ("PUT", "vm.shutdown"));
        assert_eq!(ep(&["shutdown-vmm"]), ("PUT", "vmm.shutdown"));
        assert_eq!(ep(&["pause"]), ("PUT", "vm.pause"));
        assert_eq!(ep(&["resume"]), ("PUT", "vm.resume"));
        assert_eq!(ep(&["reboot"]), ("PUT", "vm.reboot"));
        let r = request(&[
            "--api-socket",
            "/s",
            "add-device",
            "path=/g,id=gpu1,gh_slot=1",
        ])
        .unwrap();
        assert_eq!(
            r.body.unwrap(),
            r#"{"path":"/g","iommu":false,"id":"gpu1","pci_segment":0,"x_nv_gpudirect_clique":null,"gh_slot":1}"#
        );
        let r = request(&["--api-socket", "/s", "remove-device", "gpu1"]).unwrap();
        assert_eq!(r.body.unwrap(), r#"{"id":"gpu1"}"#);
    }

    /// ch-remote's `add-device path=...,pci_segment=N` is sent as it gives it: the server
    /// maps segment k+1 to GH slot k.
    #[test]
    fn add_device_takes_cloud_hypervisors_pci_segment() {
        let body = |verb: &str, arg: &str| request(&["--api-socket", "/s", verb, arg]);
        assert_eq!(
            body("add-device", "path=/g,pci_segment=1")
                .unwrap()
                .body
                .unwrap(),
            r#"{"path":"/g","iommu":false,"id":null,"pci_segment":1,"x_nv_gpudirect_clique":null}"#
        );
        assert_eq!(
            body("add-user-device", "socket=/g.sock,pci_segment=2")
                .unwrap()
                .body
                .unwrap(),
            r#"{"socket":"/g.sock","id":null,"pci_segment":2}"#
        );
        assert_eq!(
            body("add-device", "path=/g,pci_segment=0")
                .unwrap()
                .body
                .unwrap(),
            r#"{"path":"/g","iommu":false,"id":null,"pci_segment":0,"x_nv_gpudirect_clique":null}"#
        );
        assert_eq!(
            body("add-device", "path=/g,pci_segment=1,gh_slot=0").unwrap_err(),
            "add-device: pci_segment=1 with gh_slot: a GH slot has its own segment"
        );
        assert_eq!(
            body("add-device", "path=/g,pci_segment=x").unwrap_err(),
            "add-device: pci_segment=x: 'x' is not a number"
        );
        assert_eq!(
            body("add-device", "path=/g,iommu=on").unwrap_err(),
            "add-device: parameter 'iommu' is not supported by ghvmm (accepted: path, id, gh_slot, pci_segment)"
        );
    }

    #[test]
    fn a_server_that_never_answers_times_out() {
        let dir = std::env::temp_dir().join(format!("ghvmm-remote-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s");
        // Accepts, reads nothing, answers nothing.
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let c = cli(&[
            "--api-socket",
            path.to_str().unwrap(),
            "--timeout",
            "1",
            "ping",
        ])
        .unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(run(&c).map_err(|e| e.to_string()));
        });
        let e = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("ghvmm-remote did not give up on a silent server")
            .unwrap_err();
        assert!(e.contains("within 1 s (see --timeout)"), "{e}");
        let req = RemoteCommand::Ping.request().unwrap();
        let e = send(&path, &req, Some(Duration::from_millis(200))).unwrap_err();
        assert!(matches!(e, RemoteError::Timeout { .. }), "{e}");
        drop(listener);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn deadlines_default_per_command_and_timeout_is_bounded() {
        let s = ["--api-socket", "/s"];
        let deadline = |args: &[&str]| {
            let all: Vec<&str> = s.iter().chain(args).copied().collect();
            cli(&all).map(|c| c.deadline().as_secs())
        };
        assert_eq!(deadline(&["ping"]).unwrap(), 60);
        assert_eq!(deadline(&["remove-device", "gpu0"]).unwrap(), 120);
        assert_eq!(deadline(&["add-device", "path=/p"]).unwrap(), 300);
        assert_eq!(
            deadline(&["--timeout", "5", "add-device", "path=/p"]).unwrap(),
            5
        );
        assert_eq!(deadline(&["--timeout", "86400", "info"]).unwrap(), 86_400);
        for bad in ["0", "86401", "x"] {
            let e = deadline(&["--timeout", bad, "ping"]).unwrap_err();
            assert!(arg_error_line(&e).contains("--timeout"), "{bad}");
        }
        assert!(deadline(&["--timeout", "-1", "ping"]).is_err());
    }

    #[test]
    fn clap_shape_is_valid() {
        use clap::CommandFactory;
        RemoteCli::command().debug_assert();
    }

    #[test]
    fn argument_errors_are_one_line() {
        let cases: &[&[&str]] = &[
            &[],
            &["ping"],
            &["--api-socket"],
            &["--api-socket", "/s"],
            &["--api-socket", "/s", "bogus"],
            &["--api-socket", "/s", "ping", "extra"],
            &["--api-socket", "/s", "add-device"],
            &["--api-socket", "/s", "add-device", "id=x"],
            &["--api-socket", "/s", "add-device", "path=/p,iommu=on"],
            &["--api-socket", "/s", "add-device", "path=/p,id=a b"],
            &["--api-socket", "/s", "add-device", "path=/p,gh_slot=x"],
            &["--api-socket", "/s", "remove-device"],
            &["--bogus"],
        ];
        for args in cases {
            let e = request(args).expect_err(&format!("{args:?}"));
            assert!(!e.contains('\n') && !e.is_empty(), "{args:?}: {e}");
            assert!(!e.starts_with("error:"), "{args:?}: {e}");
        }
        assert_eq!(
            request(&["--api-socket", "/s", "add-device", "path=/p,id=a b"]).unwrap_err(),
            "add-device: id=a b: use letters, digits, '_' and '-'"
        );
        assert_eq!(
            request(&[]).unwrap_err(),
            "give --api-socket PATH and a command (see --help)"
        );
        let e = request(&["--api-socket", "/s"]).unwrap_err();
        assert!(e.contains("requires a subcommand"), "{e}");
        let e = request(&["ping"]).unwrap_err();
        assert!(e.contains("--api-socket"), "{e}");
    }

    #[test]
    fn responses() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}trailing").unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "{}"));
        let r = parse_response(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
        assert_eq!((r.status, r.body.as_str()), (204, ""));
        let r = parse_response(b"HTTP/1.1 404 Not Found\r\n\r\nno such device\n").unwrap();
        assert_eq!((r.status, r.body.as_str()), (404, "no such device\n"));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{}").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
        assert!(parse_response(b"garbage").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert_eq!(pretty(r#"{"a":1}"#), "{\n  \"a\": 1\n}");
        assert_eq!(pretty("text\n"), "text");
        assert_eq!(
            pretty("<html>\r\n\x1b[2Jowned\n\tmore\n"),
            "<html>\\r\\n\\x1b[2Jowned\\n\\tmore"
        );
        assert_eq!(pretty("\"a\nb\""), "\"a\\nb\"");
        assert_eq!(one_line("a\nb\r\nc"), "a b  c");
        assert_eq!(
            error_message(r#"["vm.pause: failed", "the VM is \"paused\"\n"]"#),
            r#"vm.pause: failed: the VM is "paused" "#
        );
        assert_eq!(error_message("[]"), "[]");
        assert_eq!(error_message("plain\ntext\n"), "plain text");
        assert_eq!(error_message(r#"{"a":1}"#), r#"{"a":1}"#);
    }
}
