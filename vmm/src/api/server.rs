//! The API's threads: one accept thread, and a thread per connection up to
//! `Limits::max_connections`. A connection carries one request; the whole request must arrive
//! within `Limits::request_timeout`, so a stalled client holds its thread for at most that
//! long and never holds up anyone else. The VM is only reached through `VmControl`, from
//! these threads, never from a vCPU thread.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::http::{read_request, DeadlineReader, Limits, ReadError, Response};
use super::{routes, VmControl};

/// Serves the API on `listener` (from `api::bind`) with the default limits until the
/// listener fails; the returned thread is the accept thread.
pub fn spawn(listener: UnixListener, vm: Arc<dyn VmControl>) -> io::Result<JoinHandle<()>> {
    spawn_with(listener, vm, Limits::default())
}

pub fn spawn_with(
    listener: UnixListener,
    vm: Arc<dyn VmControl>,
    limits: Limits,
) -> io::Result<JoinHandle<()>> {
    // An inherited fd may have been left non-blocking; the accept thread wants to block.
    listener.set_nonblocking(false)?;
    let limits = Arc::new(limits);
    thread::Builder::new()
        .name("ghvmm-api".into())
        .spawn(move || accept_loop(listener, vm, limits))
}

fn accept_loop(listener: UnixListener, vm: Arc<dyn VmControl>, limits: Arc<Limits>) {
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if is_fatal(&e) => {
                log::error!("API socket: accept failed: {e}; the API is no longer served");
                return;
            }
            Err(e) => {
                // Out of descriptors or memory, or a client gone before it was accepted:
                // try again, after a pause so that a lasting shortage does not spin.
                log::warn!("API socket: accept failed: {e}");
                if e.kind() != io::ErrorKind::Interrupted {
                    thread::sleep(Duration::from_millis(50));
                }
                continue;
            }
        };
        if active.load(Ordering::Acquire) >= limits.max_connections {
            // Answered here without reading: the reply fits in the socket buffer, so this
            // does not block the accept thread.
            reject(&stream, "too many API connections; try again");
            continue;
        }
        let slot = Slot::take(&active);
        let (vm, limits) = (Arc::clone(&vm), Arc::clone(&limits));
        let spawned = thread::Builder::new()
            .name("ghvmm-api-conn".into())
            .spawn(move || {
                let _slot = slot;
                serve_connection(&stream, &*vm, &limits);
            });
        if let Err(e) = spawned {
            // The closure, with the connection and its slot, is dropped: the client sees
            // the connection close.
            log::warn!("API socket: cannot start a connection thread: {e}");
        }
    }
}

/// Errors that mean the listener itself is unusable.
fn is_fatal(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EBADF | libc::EINVAL | libc::ENOTSOCK | libc::EOPNOTSUPP | libc::EFAULT)
    )
}

/// A counted connection; the count drops when the connection thread ends, even by a panic.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(active: &Arc<AtomicUsize>) -> Self {
        active.fetch_add(1, Ordering::AcqRel);
        Slot(Arc::clone(active))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn reject(stream: &UnixStream, message: &str) {
    let _ = send_response(
        stream,
        &Response::text(503, message),
        Duration::from_millis(100),
    );
}

fn serve_connection(stream: &UnixStream, vm: &dyn VmControl, limits: &Limits) {
    let mut reader = DeadlineReader::new(stream, limits.request_timeout);
    let response = match read_request(&mut reader, limits) {
        Ok(req) => {
            // A panic in the VM's handler must not take the API down with it; the client
            // gets a 500 and the panic message is on stderr already.
            let r = catch_unwind(AssertUnwindSafe(|| routes::handle(&req, vm)))
                .unwrap_or_else(|_| Response::text(500, "internal error (see ghvmm's log)"));
            log::debug!("API {} {}: {}", req.method, req.path, r.status);
            r
        }
        Err(ReadError::Closed) => return,
        Err(ReadError::Io(e)) => {
            log::debug!("API connection failed: {e}");
            return;
        }
        Err(ReadError::Respond(r)) => {
            log::debug!("API request refused: {}", r.status);
            r
        }
    };
    if let Err(e) = send_response(stream, &response, limits.write_timeout) {
        log::debug!("API: the response could not be sent: {e}");
    }
}

/// Sends with MSG_NOSIGNAL: a client that hung up must cost an EPIPE, not a SIGPIPE, whatever
/// the process's signal dispositions are.
fn send_response(stream: &UnixStream, r: &Response, timeout: Duration) -> io::Result<()> {
    stream.set_write_timeout(Some(timeout))?;
    let bytes = r.to_bytes();
    let mut buf = &bytes[..];
    while !buf.is_empty() {
        // SAFETY: send reads at most buf.len() bytes from a live slice, on a descriptor that
        // `stream` keeps open for the duration of the call.
        let n = unsafe {
            libc::send(
                stream.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        match usize::try_from(n) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n.min(buf.len())..],
            Err(_) => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}
