//! The API's threads: one accept thread, and a thread per connection up to
//! `Limits::max_connections`. A connection carries one request; the whole request must arrive
//! within `Limits::request_timeout`, so a stalled client holds its thread for at most that
//! long and never holds up anyone else. The VM is only reached through `VmControl`, from
//! these threads, never from a vCPU thread.
//!
//! When every connection is taken, a new one takes the place of the oldest connection still
//! waiting for its request (which is answered 503 and closed): a well-formed request arrives
//! in one write straight after the connect, so idle or trickling clients (a slowloris flood)
//! cannot keep it out. Only when all connections are running a request is a new one refused
//! with 503. Out of descriptors, the accept thread still answers 503, through a descriptor
//! it holds in reserve for that, rather than leaving clients queued unanswered.
//!
//! Hot-plug requests may wait up to a minute for the guest's eject: at most
//! `Limits::max_hotplug` run at once, and one beyond that is answered 503 at once, so they
//! never take every connection and `vm.info`, `vm.shutdown` or `vmm.ping` always get an
//! answer.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::http::{read_request, DeadlineReader, Limits, ReadError, Response};
use super::{routes, VmControl};

/// Serves the API on `listener` (from `api::bind`) with the default limits until the
/// listener fails; the returned thread is the accept thread.
pub fn spawn(listener: UnixListener, vm: Arc<dyn VmControl>) -> io::Result<Server> {
    spawn_with(listener, vm, Limits::default())
}

/// The running API: its accept thread, and the requests being answered.
pub struct Server {
    pub thread: JoinHandle<()>,
    answering: Arc<Answering>,
}

impl Server {
    /// Waits until no request that was read is still waiting for its answer to be sent, or
    /// `timeout` passes; true when none is. ghvmm calls it when the VM has ended, so that a
    /// request the guest's last moments answered (a removal whose eject came just before the
    /// power-off) gets its answer rather than a closed connection.
    pub fn wait_answered(&self, timeout: Duration) -> bool {
        self.answering.wait_idle(timeout)
    }
}

/// How many requests are between being read and their answer being sent.
#[derive(Default)]
struct Answering {
    count: parking_lot::Mutex<usize>,
    idle: parking_lot::Condvar,
}

/// One request being answered; counted until it drops (after the answer went out).
struct Answer<'a>(&'a Answering);

impl Answering {
    fn start(&self) -> Answer<'_> {
        *self.count.lock() += 1;
        Answer(self)
    }

    fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut count = self.count.lock();
        while *count > 0 {
            if self.idle.wait_until(&mut count, deadline).timed_out() {
                return *count == 0;
            }
        }
        true
    }
}

impl Drop for Answer<'_> {
    fn drop(&mut self) {
        let mut count = self.0.count.lock();
        *count -= 1;
        if *count == 0 {
            self.0.idle.notify_all();
        }
    }
}

pub fn spawn_with(
    listener: UnixListener,
    vm: Arc<dyn VmControl>,
    limits: Limits,
) -> io::Result<Server> {
    // An inherited fd may have been left non-blocking; the accept thread wants to block.
    listener.set_nonblocking(false)?;
    let limits = Arc::new(limits);
    let answering = Arc::new(Answering::default());
    let theirs = answering.clone();
    // The thread says whether its filter is in before it serves anything: a failed install
    // fails the start rather than leave the API unfiltered.
    let (tell, entered) = std::sync::mpsc::sync_channel(1);
    let thread = thread::Builder::new()
        .name("ghvmm-api".into())
        .spawn(move || {
            // Connection threads start from this one and keep its filter.
            let filtered = crate::seccomp::enter(crate::seccomp::ThreadKind::Api);
            let go = filtered.is_ok();
            let _ = tell.send(filtered);
            if go {
                accept_loop(listener, vm, limits, theirs)
            }
        })?;
    match entered.recv() {
        Ok(Ok(())) => Ok(Server { thread, answering }),
        Ok(Err(e)) => Err(io::Error::other(e)),
        Err(_) => Err(io::Error::other(
            "the API thread ended before it started serving",
        )),
    }
}

const FULL: &str = "too many API connections; try again";
const EVICTED: &str =
    "too many API connections, and this one had not sent its request yet; try again";
const NO_FDS: &str = "ghvmm is out of file descriptors; try again";
const NO_THREAD: &str = "ghvmm cannot start a thread for this connection; try again";

/// Hot-plug requests running now, against `Limits::max_hotplug`.
#[derive(Default)]
struct HotplugRunning(AtomicUsize);

/// One running hot-plug request; its place is given back when this drops.
struct HotplugTurn<'a>(&'a HotplugRunning);

impl HotplugRunning {
    fn take(&self, max: usize) -> Option<HotplugTurn<'_>> {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| HotplugTurn(self))
    }
}

impl Drop for HotplugTurn<'_> {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn accept_loop(
    listener: UnixListener,
    vm: Arc<dyn VmControl>,
    limits: Arc<Limits>,
    answering: Arc<Answering>,
) {
    let conns = Arc::new(Conns::new(limits.max_connections));
    let hotplug = Arc::new(HotplugRunning::default());
    let mut reserve = Reserve::new(&listener);
    let mut accept_failed = Throttle::default();
    let mut full = Throttle::default();
    let mut no_thread = Throttle::default();
    // Out of descriptors, accept fails at once whether or not a client is waiting (it takes
    // the new descriptor before it waits): so wait for one, try again, and only if that fails
    // too answer it through the reserve.
    let mut client_waiting = false;
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if is_fatal(&e) => {
                log::error!("API socket: accept failed: {e}; the API is no longer served");
                return;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if is_fd_shortage(&e) => {
                accept_failed.warn(format_args!("API socket: accept failed: {e}"));
                if !client_waiting {
                    client_waiting = wait_for_client(&listener, Duration::from_secs(1));
                } else {
                    client_waiting = false;
                    if !reserve.answer(&listener, NO_FDS) {
                        thread::sleep(Duration::from_millis(50));
                    }
                }
                continue;
            }
            Err(e) => {
                // Out of memory, or a client gone before it was accepted: pause, so that a
                // lasting shortage does not spin.
                accept_failed.warn(format_args!("API socket: accept failed: {e}"));
                thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        client_waiting = false;
        let guard = match conns.admit(&stream) {
            Admission::Admitted(guard) => guard,
            Admission::MadeRoom(guard) => {
                full.warn(format_args!(
                    "API socket: all {} connections taken; closing the longest idle ones",
                    limits.max_connections
                ));
                guard
            }
            Admission::Full => {
                full.warn(format_args!(
                    "API socket: all {} connections busy; refusing new ones with 503",
                    limits.max_connections
                ));
                reject(&stream, FULL);
                continue;
            }
        };
        let conn = Arc::new(Conn { guard, stream });
        let theirs = Arc::clone(&conn);
        let (vm, limits, hotplug) = (Arc::clone(&vm), Arc::clone(&limits), Arc::clone(&hotplug));
        let answering = Arc::clone(&answering);
        let spawned = thread::Builder::new()
            .name("ghvmm-api-conn".into())
            .spawn(move || serve_connection(&theirs, &*vm, &limits, &hotplug, &answering));
        if let Err(e) = spawned {
            // The thread's reference went with the closure: this is the last one.
            no_thread.warn(format_args!(
                "API socket: cannot start a connection thread: {e}"
            ));
            reject(&conn.stream, NO_THREAD);
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

fn is_fd_shortage(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Waits up to `timeout` for a connection to accept (or an error on the listener, which the
/// next accept reports); polling takes no descriptor.
fn wait_for_client(listener: &UnixListener, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: poll reads and writes one pollfd that lives across the call.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    if n < 0 {
        // Interrupted, or no memory: do not spin.
        thread::sleep(Duration::from_millis(50));
    }
    n > 0
}

/// A connection and its entry in the table; the entry goes first (fields drop in order), so
/// the accept thread never acts on a descriptor number that has been closed.
struct Conn {
    guard: ConnGuard,
    stream: UnixStream,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for its request: may be evicted.
    Reading,
    /// Running its request or sending the answer.
    Busy,
    /// Answered 503 and shut down by the accept thread; its thread is about to end.
    Evicted,
}

struct Entry {
    id: u64,
    fd: RawFd,
    state: State,
}

/// The open connections, oldest first. Only the accept thread adds and evicts; a connection
/// thread removes its own entry before its descriptor is closed.
struct Conns {
    max: usize,
    table: Mutex<(u64, Vec<Entry>)>,
}

enum Admission {
    Admitted(ConnGuard),
    /// Admitted in place of the oldest connection still waiting for its request.
    MadeRoom(ConnGuard),
    Full,
}

impl Conns {
    fn new(max: usize) -> Self {
        Conns {
            max,
            table: Mutex::new((0, Vec::new())),
        }
    }

    fn admit(self: &Arc<Self>, stream: &UnixStream) -> Admission {
        let mut guard = self.table.lock();
        let (next_id, table) = &mut *guard;
        let live = table.iter().filter(|e| e.state != State::Evicted).count();
        let mut evicted = false;
        if live >= self.max {
            // Evicted threads end at once; the bound only keeps the thread count finite
            // whatever happens.
            if table.len() - live >= self.max {
                return Admission::Full;
            }
            // The oldest connection waiting for its request; but one with bytes its thread
            // has not read yet (a request that has just arrived) only if there is no other.
            let waiting = |e: &Entry| e.state == State::Reading;
            let pick = (table.iter())
                .position(|e| waiting(e) && !has_input(e.fd))
                .or_else(|| table.iter().position(waiting));
            let Some(i) = pick else {
                return Admission::Full;
            };
            let victim = &mut table[i];
            // Under the lock, so the victim's descriptor is still open: its thread removes
            // the entry before closing it.
            send_now(victim.fd, &Response::error_line(503, EVICTED));
            // SAFETY: shutdown on an open descriptor; it wakes the victim's blocked read,
            // which then sees the end of the stream.
            unsafe { libc::shutdown(victim.fd, libc::SHUT_RDWR) };
            victim.state = State::Evicted;
            evicted = true;
        }
        let id = *next_id;
        *next_id += 1;
        table.push(Entry {
            id,
            fd: stream.as_raw_fd(),
            state: State::Reading,
        });
        let guard = ConnGuard {
            conns: Arc::clone(self),
            id,
        };
        if evicted {
            Admission::MadeRoom(guard)
        } else {
            Admission::Admitted(guard)
        }
    }
}

/// Whether the socket has received bytes not read yet.
fn has_input(fd: RawFd) -> bool {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int; the caller keeps `fd` open.
    let r = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    r == 0 && n > 0
}

/// A connection's entry; dropping it removes the entry (also when its thread panics).
struct ConnGuard {
    conns: Arc<Conns>,
    id: u64,
}

impl ConnGuard {
    /// The request is in: from now on the connection is not evicted. False when it already
    /// was, and so has its answer.
    fn start_busy(&self) -> bool {
        let mut guard = self.conns.table.lock();
        match guard.1.iter_mut().find(|e| e.id == self.id) {
            Some(e) if e.state == State::Reading => {
                e.state = State::Busy;
                true
            }
            _ => false,
        }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut guard = self.conns.table.lock();
        if let Some(i) = guard.1.iter().position(|e| e.id == self.id) {
            guard.1.remove(i);
        }
    }
}

/// One descriptor kept free, so that when the process is out of them the accept thread can
/// still take a waiting connection and tell its client so, instead of leaving it queued.
struct Reserve(Option<OwnedFd>);

impl Reserve {
    fn new(listener: &UnixListener) -> Self {
        Reserve(dup(listener.as_raw_fd()))
    }

    /// Frees the reserve, answers one waiting connection with 503 `message` and takes the
    /// reserve again; false if no connection could be taken.
    fn answer(&mut self, listener: &UnixListener, message: &str) -> bool {
        let Some(fd) = self.0.take() else {
            self.0 = dup(listener.as_raw_fd());
            return false;
        };
        drop(fd);
        // Without blocking: the connection may have gone meanwhile.
        let taken = listener.set_nonblocking(true).is_ok()
            && match listener.accept() {
                Ok((stream, _)) => {
                    reject(&stream, message);
                    true
                }
                Err(_) => false,
            };
        if let Err(e) = listener.set_nonblocking(false) {
            log::warn!("API socket: cannot make the listener blocking again: {e}");
        }
        self.0 = dup(listener.as_raw_fd());
        taken
    }
}

fn dup(fd: RawFd) -> Option<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC only creates a descriptor; on success we own it.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    // SAFETY: `new` is a fresh descriptor nothing else owns.
    (new >= 0).then(|| unsafe { OwnedFd::from_raw_fd(new) })
}

/// Logs a warning at most once per `WARN_EVERY`, with the number left out since: a flood
/// must not flood the log too.
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
    skipped: u64,
}

const WARN_EVERY: Duration = Duration::from_secs(10);

impl Throttle {
    fn warn(&mut self, message: fmt::Arguments<'_>) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < WARN_EVERY)
        {
            self.skipped += 1;
            return;
        }
        match self.skipped {
            0 => log::warn!("{message}"),
            n => log::warn!("{message} ({n} more since the last such warning)"),
        }
        self.last = Some(now);
        self.skipped = 0;
    }
}

/// Answered by the accept thread without reading the request: the reply fits in the
/// socket's buffer, and is sent without waiting in case it does not.
fn reject(stream: &UnixStream, message: &str) {
    send_now(stream.as_raw_fd(), &Response::error_line(503, message));
}

fn send_now(fd: RawFd, r: &Response) {
    let bytes = r.to_bytes();
    // SAFETY: send reads at most bytes.len() bytes from a live buffer; the caller keeps
    // `fd` open for the duration of the call.
    unsafe {
        libc::send(
            fd,
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
}

fn serve_connection(
    conn: &Conn,
    vm: &dyn VmControl,
    limits: &Limits,
    hotplug: &HotplugRunning,
    answering: &Answering,
) {
    let stream = &conn.stream;
    let mut reader = DeadlineReader::new(stream, limits.request_timeout);
    let request = match read_request(&mut reader, limits) {
        Err(ReadError::Closed) => return,
        Err(ReadError::Io(e)) => {
            log::debug!("API connection failed: {e}");
            return;
        }
        other => other,
    };
    if !conn.guard.start_busy() {
        log::debug!("API connection closed to make room for another");
        return;
    }
    // Counted from here until the answer is sent (`Server::wait_answered`).
    let _answer = answering.start();
    let response = match request {
        Ok(req) => {
            let turn = routes::is_hotplug(&req)
                .then(|| hotplug.take(limits.max_hotplug).ok_or(()))
                .transpose();
            // A panic in the VM's handler must not take the API down with it; the client
            // gets a 500 and the panic message is on stderr already.
            let r = match turn {
                Ok(_turn) => catch_unwind(AssertUnwindSafe(|| routes::handle(&req, vm)))
                    .unwrap_or_else(|_| {
                        Response::error_line(500, "internal error (see ghvmm's log)")
                    }),
                Err(()) => Response::error_line(
                    503,
                    &format!(
                        "too many hot-plug requests (at most {} at once); try again",
                        limits.max_hotplug
                    ),
                ),
            };
            log::debug!("API {} {}: {}", req.method, req.path, r.status);
            r
        }
        Err(ReadError::Respond(r)) => {
            log::debug!("API request refused: {}", r.status);
            r
        }
        Err(ReadError::Closed | ReadError::Io(_)) => return,
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

#[cfg(test)]
mod tests {
    //! The real server on a real socket, flooded: these run in the unit-test process next to
    //! other tests, so the server's own threads and descriptors are told apart by name and by
    //! socket address rather than by the process's totals alone.

    use std::collections::HashSet;
    use std::io::{Read, Write};
    use std::net::Shutdown;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::api::routes::tests::FakeVm;

    /// The tests that count the process's connection threads run one at a time.
    static SERIAL: Mutex<()> = Mutex::new(());

    struct TempDir(PathBuf);

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn temp_dir(name: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("ghvmm-srv-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        // Not group-writable whatever the umask: the socket's directory must not be.
        std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        TempDir(d)
    }

    /// The process's threads, and how many of them are API connection threads.
    fn threads() -> (usize, usize) {
        let mut total = 0;
        let mut conn = 0;
        for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            total += 1;
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            if comm.trim_end() == "ghvmm-api-conn" {
                conn += 1;
            }
        }
        (total, conn)
    }

    /// The process's descriptors, and how many of them are server-side sockets of the
    /// listener bound at `path` (the listener itself, its reserve, accepted connections):
    /// /proc/net/unix gives an accepted socket its listener's address.
    fn fds(path: &Path) -> (usize, usize) {
        let path = path.to_str().unwrap();
        let table = std::fs::read_to_string("/proc/net/unix").unwrap();
        let inodes: HashSet<&str> = table
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 8 && f[7] == path).then(|| f[6])
            })
            .collect();
        let mut total = 0;
        let mut server = 0;
        for fd in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
            total += 1;
            let Ok(link) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let link = link.to_string_lossy();
            if let Some(ino) = link
                .strip_prefix("socket:[")
                .and_then(|l| l.strip_suffix(']'))
            {
                if inodes.contains(ino) {
                    server += 1;
                }
            }
        }
        (total, server)
    }

    /// The status of the answer, if one came before the end of the stream (or a reset).
    fn read_status(s: &mut UnixStream) -> Option<u16> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n) = s.read(&mut chunk) {
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        if buf.is_empty() {
            return None;
        }
        let head = std::str::from_utf8(&buf).unwrap();
        assert!(head.starts_with("HTTP/1.1 "), "{head:?}");
        head.split(' ').nth(1)?.parse().ok()
    }

    /// One request, the client's side half-closed after it: the status of the answer.
    fn send(socket: &Path, raw: &[u8]) -> Option<u16> {
        let mut s = UnixStream::connect(socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // The server may answer and close before taking all of a refused request.
        let _ = s.write_all(raw);
        let _ = s.shutdown(Shutdown::Write);
        read_status(&mut s)
    }

    fn get_ok(socket: &Path, endpoint: &str) -> Duration {
        let t = Instant::now();
        let raw = format!("GET /api/v1/{endpoint} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        assert_eq!(send(socket, raw.as_bytes()), Some(200), "{endpoint}");
        t.elapsed()
    }

    fn with_body(head: &str, body: &[u8]) -> Vec<u8> {
        let mut r = head.as_bytes().to_vec();
        r.extend_from_slice(body);
        r
    }

    fn put(endpoint: &str, body: &[u8]) -> Vec<u8> {
        with_body(
            &format!(
                "PUT /api/v1/{endpoint} HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
                body.len()
            ),
            body,
        )
    }

    /// Malformed requests and the status each must get; `None`: nothing, or a 400.
    fn malformed() -> Vec<(Vec<u8>, Option<u16>)> {
        let v = |s: &[u8]| s.to_vec();
        let many: String = (0..40).map(|i| format!("X-{i}: v\r\n")).collect();
        vec![
            // Garbage and bad request lines.
            (v(b"GARBAGE\r\n\r\n"), Some(400)),
            (v(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"), Some(400)),
            (v(b"\x00\x01\x02\xff\xfe\r\n\r\n"), Some(400)),
            (v(b"GET\r\n\r\n"), Some(400)),
            (v(b"GET /api/v1/vm.info\r\n\r\n"), Some(400)),
            (v(b"GET /api/v1/vm.info HTTP/9.9\r\n\r\n"), Some(400)),
            (v(b"GET  /api/v1/vm.info  HTTP/1.1\r\n\r\n"), Some(400)),
            (v(b"\r\n\r\n\r\n\r\n"), Some(400)),
            // Bad methods and unknown paths.
            (v(b"G@T /api/v1/vm.info HTTP/1.1\r\n\r\n"), Some(400)),
            (v(b"BREW /api/v1/vm.info HTTP/1.1\r\n\r\n"), Some(405)),
            (v(b"get /api/v1/vm.info HTTP/1.1\r\n\r\n"), Some(405)),
            (v(b"PUT /api/v1/vm.info HTTP/1.1\r\n\r\n"), Some(405)),
            (v(b"GET /api/v1/nothing HTTP/1.1\r\n\r\n"), Some(404)),
            (v(b"GET /../../etc/passwd HTTP/1.1\r\n\r\n"), Some(404)),
            (v(b"GET * HTTP/1.1\r\n\r\n"), Some(404)),
            // Non-UTF-8 in the target and in a body.
            (v(b"GET /api/v1/\xc3\x28 HTTP/1.1\r\n\r\n"), Some(400)),
            (put("vm.add-device", b"\xff\xfe\xfd\xfc"), Some(400)),
            // Headers: malformed, oversized, too many.
            (v(b"GET /api/v1/vm.info HTTP/1.1\r\nNo-Colon\r\n\r\n"), Some(400)),
            (
                format!(
                    "GET /api/v1/vm.info HTTP/1.1\r\nX: {}\r\n\r\n",
                    "h".repeat(20 << 10)
                )
                .into_bytes(),
                Some(431),
            ),
            (
                format!("GET /api/v1/vm.info HTTP/1.1\r\n{many}\r\n").into_bytes(),
                Some(431),
            ),
            (vec![b'A'; 40 << 10], Some(431)),
            // Bodies: bad JSON, wrong or conflicting lengths, truncated, oversized.
            (put("vm.add-device", b"{\"path\":"), Some(400)),
            (put("vm.add-device", br#"{"path":["/p"]}"#), Some(400)),
            (put("vm.remove-device", b"{}"), Some(400)),
            (
                v(b"PUT /api/v1/vm.remove-device HTTP/1.1\r\nContent-Length: abc\r\n\r\n{}"),
                Some(400),
            ),
            (
                v(b"PUT /api/v1/vm.remove-device HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n{}"),
                Some(400),
            ),
            (
                // Shorter than the body: the JSON is cut.
                v(b"PUT /api/v1/vm.remove-device HTTP/1.1\r\nContent-Length: 5\r\n\r\n{\"id\":\"gpu0\"}"),
                Some(400),
            ),
            (
                // Longer than the body: it never comes.
                v(b"PUT /api/v1/vm.remove-device HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"id\":"),
                Some(400),
            ),
            (
                with_body(
                    &format!(
                        "PUT /api/v1/vm.add-device HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
                        100 << 10
                    ),
                    &vec![b'b'; 100 << 10],
                ),
                Some(413),
            ),
            (
                v(b"PUT /api/v1/vm.add-device HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n"),
                Some(413),
            ),
            (
                v(b"PUT /api/v1/vm.add-device HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"),
                Some(411),
            ),
            (v(b"PUT /api/v1/vm.add-device HTTP/1.1\r\n\r\n"), Some(411)),
            // Cut off inside the head, and nothing at all.
            (v(b"GET /api/v1/vmm.ping HTTP/1.1\r\nHost: x"), None),
            (Vec::new(), None),
        ]
    }

    /// 1000 malformed requests and 100 concurrent connections, idle or partial;
    /// afterwards every well-formed request is answered at once, and the server's threads
    /// and descriptors are back to what they were.
    #[test]
    fn flood_then_well_formed_requests() {
        let _serial = SERIAL.lock();
        let started = Instant::now();
        let dir = temp_dir("flood");
        let socket = dir.0.join("api.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let vm = Arc::new(FakeVm::default());
        let limits = Limits {
            request_timeout: Duration::from_secs(5),
            ..Limits::default()
        };
        let max = limits.max_connections;
        spawn_with(listener, vm.clone(), limits).unwrap();
        get_ok(&socket, "vmm.ping");
        // The ping's thread has closed the connection, but may not have ended yet.
        let deadline = Instant::now() + Duration::from_secs(3);
        while threads().1 > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        let (base_threads, base_conn) = threads();
        let (base_fds, base_server) = fds(&socket);
        // No connection thread; the listener and the reserve descriptor.
        assert_eq!((base_conn, base_server), (0, 2));

        // 1000 malformed requests, from 4 clients at a time.
        let kinds = Arc::new(malformed());
        let client_errors = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = (0..4)
            .map(|w| {
                let (socket, kinds, client_errors) =
                    (socket.clone(), kinds.clone(), client_errors.clone());
                thread::spawn(move || {
                    for i in 0..250 {
                        let (raw, want) = &kinds[(w * 250 + i) % kinds.len()];
                        let got = send(&socket, raw);
                        let what = String::from_utf8_lossy(&raw[..raw.len().min(80)]);
                        match want {
                            Some(_) => assert_eq!(got, *want, "{what:?}"),
                            None => assert!(matches!(got, None | Some(400)), "{what:?}: {got:?}"),
                        }
                        if got.is_some_and(|s| (400..500).contains(&s)) {
                            client_errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        let client_errors = client_errors.load(Ordering::Relaxed);
        assert!(
            client_errors >= 1000 - 2 * 1000 / kinds.len() - 2,
            "{client_errors}"
        );
        // None of them reached the VM.
        assert!(vm.calls.lock().is_empty());

        // 100 connections held at once: 60 idle, 30 partway through a request, 10 that send
        // a whole request and do not wait for the answer.
        let partial: [&[u8]; 3] = [
            b"GET /api/v1/vm.info HTTP/1.1\r\nHost: loc",
            b"PUT /api/v1/vm.remove-device HTTP/1.1\r\nContent-Length: 50\r\n\r\n{\"id\":",
            b"G",
        ];
        let mut held: Vec<UnixStream> = (0..100)
            .map(|i| {
                let mut s = UnixStream::connect(&socket).unwrap();
                if (60..90).contains(&i) {
                    let _ = s.write_all(partial[i % partial.len()]);
                } else if i >= 90 {
                    let _ = s.write_all(b"GET /api/v1/vm.info HTTP/1.1\r\n\r\n");
                }
                s.set_nonblocking(true).unwrap();
                s
            })
            .collect();
        // Beyond the cap the oldest waiting ones give way, and are told so with a 503: at
        // least one for each of the 90 that never send a whole request beyond the 64 (those
        // that do are served and leave room).
        let waiting = 90;
        let mut told = vec![None; held.len()];
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            for (s, t) in held.iter_mut().zip(told.iter_mut()) {
                let mut b = [0u8; 512];
                if t.is_none() {
                    if let Ok(n @ 1..) = s.read(&mut b) {
                        *t = std::str::from_utf8(&b[..n])
                            .ok()
                            .and_then(|h| h.split(' ').nth(1)?.parse::<u16>().ok());
                    }
                }
            }
            let evicted = told.iter().filter(|t| **t == Some(503)).count();
            if evicted >= waiting - max || Instant::now() > deadline {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let evicted = told.iter().filter(|t| **t == Some(503)).count();
        assert!(evicted >= waiting - max, "{told:?}");
        assert!(
            told.iter().all(|t| matches!(t, None | Some(200 | 503))),
            "{told:?}"
        );
        // The evicted ones' threads end: as many threads as connections served.
        let deadline = Instant::now() + Duration::from_secs(3);
        while threads().1 > max && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        assert!(threads().1 <= max, "{:?}", threads());
        // Even now, with the connections all taken, a request is served.
        let during = get_ok(&socket, "vm.info");
        assert!(during < Duration::from_secs(1), "{during:?}");

        // The flood ends: the next requests are answered at once.
        drop(held);
        let first = get_ok(&socket, "vm.info");
        assert!(first < Duration::from_secs(1), "{first:?}");
        for _ in 0..5 {
            get_ok(&socket, "vm.info");
            get_ok(&socket, "vmm.ping");
        }

        // And the server holds what it held before: no connection thread, no connection.
        let deadline = Instant::now() + Duration::from_secs(3);
        let settled = loop {
            let now = (threads(), fds(&socket));
            let settled = now.0 .1 == base_conn
                && now.1 .1 == base_server
                && now.0 .0 <= base_threads + 4
                && now.1 .0 <= base_fds + 16;
            if settled || Instant::now() > deadline {
                break now;
            }
            thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(
            (settled.0 .1, settled.1 .1),
            (base_conn, base_server),
            "connection threads and server sockets, after and before"
        );
        // Other tests run in this process meanwhile: the totals get some slack.
        assert!(
            settled.0 .0 <= base_threads + 4 && settled.1 .0 <= base_fds + 16,
            "threads {} (before {base_threads}), fds {} (before {base_fds})",
            settled.0 .0,
            settled.1 .0
        );
        eprintln!("flood test took {:?}", started.elapsed());
    }

    /// `FakeVm`, but every removal waits until `release` (a guest that never ejects).
    #[derive(Default)]
    struct StuckRemovals {
        inner: FakeVm,
        released: Mutex<bool>,
        wake: parking_lot::Condvar,
        waiting: AtomicUsize,
    }

    impl StuckRemovals {
        fn release(&self) {
            *self.released.lock() = true;
            self.wake.notify_all();
        }
    }

    impl VmControl for StuckRemovals {
        fn info(&self) -> crate::api::VmInfo {
            self.inner.info()
        }
        fn add_device(
            &self,
            req: crate::api::AddDevice,
        ) -> Result<crate::api::PciDeviceInfo, crate::api::ApiError> {
            self.inner.add_device(req)
        }
        fn counters(&self) -> crate::api::Counters {
            self.inner.counters()
        }
        fn remove_device(&self, id: &str) -> Result<(), crate::api::ApiError> {
            self.waiting.fetch_add(1, Ordering::SeqCst);
            let mut released = self.released.lock();
            while !*released {
                self.wake.wait(&mut released);
            }
            drop(released);
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            self.inner.remove_device(id)
        }
        fn power_button(&self) -> Result<(), crate::api::ApiError> {
            self.inner.power_button()
        }
        fn shutdown_vm(&self) -> Result<(), crate::api::ApiError> {
            self.inner.shutdown_vm()
        }
        fn shutdown_vmm(&self) -> Result<(), crate::api::ApiError> {
            self.inner.shutdown_vmm()
        }
    }

    /// 64 removals the guest never answers, one per connection the server has: only
    /// `max_hotplug` of them wait, the others are told 503 at once, and `vm.info`,
    /// `vmm.ping` and `vm.shutdown` are still answered while they wait.
    /// A request read before the VM ended is answered before ghvmm exits: `wait_answered`
    /// holds until its answer is sent.
    #[test]
    fn wait_answered_waits_for_a_request_in_progress() {
        let _serial = SERIAL.lock();
        let dir = temp_dir("answered");
        let socket = dir.0.join("api.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let vm = Arc::new(StuckRemovals::default());
        let server = spawn_with(listener, vm.clone(), Limits::default()).unwrap();
        assert!(
            server.wait_answered(Duration::ZERO),
            "nothing in flight yet"
        );
        let removal = {
            let socket = socket.clone();
            thread::spawn(move || send(&socket, &put("vm.remove-device", br#"{"id":"gpu0"}"#)))
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while vm.waiting.load(Ordering::SeqCst) < 1 {
            assert!(Instant::now() < deadline, "the removal did not arrive");
            thread::sleep(Duration::from_millis(10));
        }
        assert!(!server.wait_answered(Duration::from_millis(200)));
        vm.release();
        assert!(server.wait_answered(Duration::from_secs(10)));
        assert_eq!(removal.join().unwrap(), Some(204));
    }

    #[test]
    fn pending_removals_leave_room_for_every_other_request() {
        let _serial = SERIAL.lock();
        let dir = temp_dir("stuck");
        let socket = dir.0.join("api.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let vm = Arc::new(StuckRemovals::default());
        let limits = Limits::default();
        let (conns, max_hotplug) = (limits.max_connections, limits.max_hotplug);
        spawn_with(listener, vm.clone(), limits).unwrap();
        let removals: Vec<_> = (0..conns)
            .map(|_| {
                let socket = socket.clone();
                thread::spawn(move || send(&socket, &put("vm.remove-device", br#"{"id":"gpu0"}"#)))
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        while vm.waiting.load(Ordering::SeqCst) < max_hotplug.min(conns) {
            assert!(Instant::now() < deadline, "the removals did not arrive");
            thread::sleep(Duration::from_millis(10));
        }
        // Let the refused ones be answered and their connections close.
        thread::sleep(Duration::from_millis(300));
        for endpoint in ["vm.info", "vmm.ping", "vm.info"] {
            let took = get_ok(&socket, endpoint);
            assert!(took < Duration::from_secs(2), "{endpoint}: {took:?}");
        }
        assert_eq!(send(&socket, &put("vm.shutdown", b"")), Some(204));
        assert!(vm.waiting.load(Ordering::SeqCst) <= max_hotplug);

        vm.release();
        let statuses: Vec<Option<u16>> = removals.into_iter().map(|t| t.join().unwrap()).collect();
        let ok = statuses.iter().filter(|s| **s == Some(204)).count();
        let refused = statuses.iter().filter(|s| **s == Some(503)).count();
        assert_eq!(
            (ok, refused),
            (max_hotplug, conns - max_hotplug),
            "{statuses:?}"
        );
    }
}
