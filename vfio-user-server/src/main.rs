//! `ghvmm-vfio-user --device path=/sys/bus/pci/devices/BDF --socket PATH [--once] [-v]`
//!
//! SIGINT/SIGTERM stop it; SIGUSR1 prints the access counters (`reporter`).

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use anyhow::Context;
use clap::error::ErrorKind;
use clap::Parser;
use vmm_sys_util::eventfd::EventFd;

use ghvmm_vfio_user::options::{parse_device, DeviceOption};
use ghvmm_vfio_user::serve::{serve_one, SessionEnd};
use ghvmm_vfio_user::vfio_host::VfioHost;
use ghvmm_vfio_user::{socket, Backend, Counters};

/// Serves one host VFIO device to a vfio-user client.
#[derive(Parser, Debug)]
#[command(name = "ghvmm-vfio-user", version)]
struct Cli {
    /// The device: path=/sys/bus/pci/devices/BDF (bound to vfio-pci).
    #[arg(long, value_parser = parse_device, value_name = "path=SYSFS_PATH")]
    device: DeviceOption,
    /// The Unix socket to listen on (created with mode 0600, removed on exit).
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,
    /// Exit when the first client goes away instead of waiting for the next one.
    #[arg(long)]
    once: bool,
    /// More log output (-v: debug, -vv: trace); RUST_LOG overrides it.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

/// Set by SIGINT/SIGTERM.
static STOP: AtomicBool = AtomicBool::new(false);
/// Signalled by SIGINT/SIGTERM for `stopper`: the main thread may be waiting in an accept
/// that std restarts after the signal, so it cannot be the one to notice.
static WAKE: OnceLock<EventFd> = OnceLock::new();

extern "C" fn on_signal(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Only an atomic store and write(2): both async-signal-safe.
    STOP.store(true, Ordering::SeqCst);
    if let Some(wake) = WAKE.get() {
        let _ = wake.write(1);
    }
}

/// Signalled by SIGUSR1 for `reporter`.
static REPORT: OnceLock<EventFd> = OnceLock::new();

extern "C" fn on_report(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    if let Some(report) = REPORT.get() {
        let _ = report.write(1);
    }
}

/// On each SIGUSR1, prints one line to stderr: `counters {"bar2.padding":N,...}`, the region
/// accesses served so far (what the rig compares around a guest's copy and a padding read).
/// Printed by a thread of its own, so that the line comes even while a client is served.
///
/// SIGUSR1 is delivered to that thread only: `run` blocks it before any thread starts (the
/// others inherit the mask) and the reporter unblocks it. Otherwise the signal could land on
/// the serving thread, whose recvmsg in the vfio_user crate fails with EINTR (the handler
/// has no SA_RESTART) and ends the client's session.
fn reporter(counters: Counters) -> anyhow::Result<()> {
    let report = EventFd::new(0).context("creating the report eventfd")?;
    let wait = report.try_clone().context("creating the report eventfd")?;
    let _ = REPORT.set(report);
    std::thread::Builder::new()
        .name("ghvmm-vfio-user-counters".into())
        .spawn(move || {
            if let Err(e) = vmm_sys_util::signal::unblock_signal(libc::SIGUSR1) {
                log::warn!("SIGUSR1 stays blocked, no counters on request: {e}");
                return;
            }
            loop {
                match wait.read() {
                    Ok(_) => {
                        let json = serde_json::to_string(&counters.report()).unwrap_or_default();
                        eprintln!("counters {json}");
                    }
                    // The signal itself interrupts this read.
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        log::warn!("counters thread: {e}");
                        return;
                    }
                }
            }
        })
        .context("starting the counters thread")?;
    vmm_sys_util::signal::register_signal_handler(libc::SIGUSR1, on_report)
        .context("installing the SIGUSR1 handler")?;
    Ok(())
}

/// Waits for SIGINT/SIGTERM, then removes the socket and exits. Closing the process's fds
/// releases the device and the container (with every DMA mapping), and vfio-pci resets the
/// device when it is released.
fn stopper(socket: Arc<socket::Socket>) -> anyhow::Result<()> {
    let wake = EventFd::new(0).context("creating the stop eventfd")?;
    let wait = wake.try_clone().context("creating the stop eventfd")?;
    let _ = WAKE.set(wake);
    std::thread::Builder::new()
        .name("ghvmm-vfio-user-stop".into())
        .spawn(move || {
            while wait.read().is_err() {}
            log::info!("stopping on a signal");
            socket.remove();
            std::process::exit(0);
        })
        .context("starting the signal thread")?;
    Ok(())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // As ghvmm: clap's usage block after the first line is dropped; one line.
            let rendered = e.render().to_string();
            let mut lines = rendered.lines().map(str::trim).filter(|l| !l.is_empty());
            let mut first = lines.next().unwrap_or("invalid arguments").to_string();
            // "the following required arguments were not provided:" names them below.
            if first.ends_with(':') {
                first = format!("{first} {}", lines.next().unwrap_or_default());
            }
            let first = first.strip_prefix("error: ").unwrap_or(&first);
            return fail(&format!("{first} (see --help)"));
        }
    };
    // vfio-ioctls warns about routine things (a device without an error IRQ), as in ghvmm.
    let level = match cli.verbose {
        0 => "info,vfio_ioctls=error",
        1 => "debug",
        _ => "trace",
    };
    ghvmm_vfio_user::logging::init(level);
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&format!("{e:#}")),
    }
}

fn fail(message: &str) -> ExitCode {
    // One line, even when an underlying error (or a value the user gave) carries newlines
    // or control characters.
    let line: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    eprintln!("ghvmm-vfio-user: error: {line}");
    ExitCode::FAILURE
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    // Before any thread starts, so that every thread inherits it (`reporter`).
    vmm_sys_util::signal::block_signal(libc::SIGUSR1)
        .map_err(|e| anyhow::anyhow!("blocking SIGUSR1: {e}"))?;
    let path = &cli.device.path;
    let name = path.display().to_string();
    let host = VfioHost::open(path)?;
    let mut backend = Backend::new(host, &name)?;
    let (listener, socket) = socket::bind(&cli.socket)?;
    let socket = Arc::new(socket);
    stopper(socket.clone())?;
    reporter(backend.counters())?;
    for signal in [libc::SIGINT, libc::SIGTERM] {
        vmm_sys_util::signal::register_signal_handler(signal, on_signal)
            .context("installing the signal handlers")?;
    }
    let server =
        vfio_user::Server::from_owned_fd(listener.into(), true, backend.irqs(), backend.regions());
    log::info!("{name}: serving on {}", socket.path().display());
    while !STOP.load(Ordering::SeqCst) {
        match serve_one(&server, &mut backend) {
            SessionEnd::Left => log::info!("{name}: the client went away"),
            SessionEnd::Failed(e) if STOP.load(Ordering::SeqCst) => log::debug!("stopping: {e}"),
            SessionEnd::Failed(e) => {
                log::warn!("{name}: the connection ended: {e}");
                // An accept that keeps failing (out of fds) must not spin.
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            SessionEnd::Malformed => {
                log::error!("{name}: a malformed message; the client is dropped")
            }
        }
        if cli.once {
            break;
        }
    }
    drop(server);
    // Explicitly: the stop thread holds the socket too, so dropping ours would not remove it.
    socket.remove();
    Ok(())
}
