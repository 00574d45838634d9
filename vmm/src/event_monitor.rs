//! `--event-monitor path=PATH|fd=N`: what happens to the VM (boot, hot plug, shutdown) as
//! JSON events in Cloud Hypervisor's format, so that tools written for its event monitor read
//! ghvmm's unchanged: each event is one pretty-printed object
//! `{"timestamp":{"secs","nanos"},"source","event","properties"}` followed by an empty line,
//! the timestamp counted from ghvmm's start.
//!
//! Whoever reports an event (a vCPU, the API thread) only queues it (`EventSink::emit` never
//! blocks); one writer thread writes the queue to the file, so a slow or stalled reader holds
//! up nothing but that thread. Beyond `QUEUE_EVENTS` queued events, new ones are dropped and
//! counted.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::EventMonitorConfig;

/// Events are rare (a boot, an operator's hot plug), so a full queue means the reader has
/// stopped reading; this bounds what waits for it.
pub const QUEUE_EVENTS: usize = 1024;
/// How long the end of the run waits for queued events to reach the file.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Serialize)]
struct Event<'a> {
    timestamp: Duration,
    source: &'a str,
    event: &'a str,
    properties: Option<&'a BTreeMap<&'a str, String>>,
}

/// One event as written to the file: Cloud Hypervisor's pretty-printed object and the empty
/// line after it.
pub fn format(
    timestamp: Duration,
    source: &str,
    event: &str,
    properties: &[(&str, String)],
) -> String {
    let props: BTreeMap<&str, String> = properties.iter().cloned().collect();
    let e = Event {
        timestamp,
        source,
        event,
        properties: (!props.is_empty()).then_some(&props),
    };
    // A struct of strings and numbers always serializes.
    let mut s = serde_json::to_string_pretty(&e).unwrap_or_default();
    s.push_str("\n\n");
    s
}

enum Message {
    Event(String),
    /// Answered once everything queued before it is written.
    Flush(SyncSender<()>),
}

struct Shared {
    tx: SyncSender<Message>,
    start: Instant,
    dropped: AtomicU64,
}

/// Where events go: cheap to clone; a disabled sink (no `--event-monitor`) drops them.
#[derive(Clone, Default)]
pub struct EventSink(Option<Arc<Shared>>);

/// The writer's side: the queue, to be drained into the file by `EventWriter::run`.
pub struct EventWriter {
    rx: Receiver<Message>,
    out: Box<dyn Write + Send>,
}

impl EventSink {
    /// A sink and the writer that drains it into `out`.
    pub fn new(out: Box<dyn Write + Send>) -> (EventSink, EventWriter) {
        let (tx, rx) = mpsc::sync_channel(QUEUE_EVENTS);
        let shared = Arc::new(Shared {
            tx,
            start: Instant::now(),
            dropped: AtomicU64::new(0),
        });
        (EventSink(Some(shared)), EventWriter { rx, out })
    }

    /// Queues one event; never blocks.
    pub fn emit(&self, source: &str, event: &str, properties: &[(&str, String)]) {
        let Some(shared) = &self.0 else { return };
        let line = format(shared.start.elapsed(), source, event, properties);
        match shared.tx.try_send(Message::Event(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                let n = shared.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                // Logged at the first drop and then rarely, so a stuck reader does not
                // turn into a flood of log lines.
                if n.is_power_of_two() {
                    log::warn!("event monitor: the reader is not keeping up; {n} events dropped");
                }
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Waits up to `timeout` for the events queued so far to be written.
    pub fn drain(&self, timeout: Duration) {
        let Some(shared) = &self.0 else { return };
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        if shared.tx.try_send(Message::Flush(done_tx)).is_ok() {
            let _ = done_rx.recv_timeout(timeout);
        }
    }
}

impl EventWriter {
    /// Writes events until every sink is gone; a write error ends it (logged once).
    pub fn run(mut self) {
        while let Ok(msg) = self.rx.recv() {
            match msg {
                Message::Event(line) => {
                    if let Err(e) = self
                        .out
                        .write_all(line.as_bytes())
                        .and_then(|()| self.out.flush())
                    {
                        log::error!("event monitor: cannot write: {e}; no more events");
                        return;
                    }
                }
                Message::Flush(done) => {
                    let _ = done.try_send(());
                }
            }
        }
    }
}

/// Opens where `--event-monitor` sends events: the file at `path=` (created, or truncated),
/// or the inherited descriptor `fd=`, which must be open.
pub fn open(cfg: &EventMonitorConfig) -> std::io::Result<File> {
    match cfg {
        EventMonitorConfig::Path(path) => File::create(path),
        EventMonitorConfig::Fd(fd) => {
            let fd = *fd;
            // SAFETY: F_GETFD only reads the descriptor's flags; it fails for a closed one.
            if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: fd is open (checked above) and the command line hands it over: nothing
            // else in the process uses it (parse_fd refuses the standard streams).
            let file = unsafe { File::from_raw_fd(fd) };
            // SAFETY: sets a flag on a descriptor we now own.
            if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(file)
        }
    }
}

/// The process's sink, set by `install`; disabled until then (and in tests).
static GLOBAL: OnceLock<EventSink> = OnceLock::new();
/// The writer `install` made, until `start_writer` starts its thread.
static PENDING: std::sync::Mutex<Option<EventWriter>> = std::sync::Mutex::new(None);

/// Makes `file` the process's event monitor. Events are queued from now on; `start_writer`
/// starts writing them.
pub fn install(file: File) {
    let (sink, writer) = EventSink::new(Box::new(file));
    if GLOBAL.set(sink).is_ok() {
        if let Ok(mut pending) = PENDING.lock() {
            *pending = Some(writer);
        }
    }
}

/// The process's sink (disabled without `--event-monitor`).
pub fn global() -> EventSink {
    GLOBAL.get().cloned().unwrap_or_default()
}

/// Queues an event on the process's sink.
pub fn emit(source: &str, event: &str, properties: &[(&str, String)]) {
    if let Some(sink) = GLOBAL.get() {
        sink.emit(source, event, properties);
    }
}

/// Starts the writer thread of `install`'s file, under the console-output thread's seccomp
/// filter (it does the same: drains a queue into a descriptor). Call after `seccomp::init`;
/// a filter that cannot be installed is an error here (before any VM exists), and the thread
/// ends without writing anything rather than run unfiltered.
pub fn start_writer() -> std::io::Result<()> {
    let writer = PENDING.lock().ok().and_then(|mut p| p.take());
    if let Some(writer) = writer {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("ghvmm-events".into())
            .spawn(move || {
                let installed = crate::seccomp::enter(crate::seccomp::ThreadKind::ConsoleOut);
                let ok = installed.is_ok();
                let _ = tx.send(installed);
                if ok {
                    writer.run();
                }
            })?;
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(std::io::Error::other(e.to_string())),
            Err(_) => return Err(std::io::Error::other("the thread ended before its filter")),
        }
    }
    Ok(())
}

/// A sink whose events tests read back.
#[cfg(test)]
pub mod testing {
    use super::*;
    use std::sync::Mutex;

    /// A `Write` whose bytes the test reads back.
    #[derive(Clone, Default)]
    pub struct Captured(pub Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        /// Every event written so far, parsed.
        pub fn events(&self) -> Vec<serde_json::Value> {
            let bytes = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let text = String::from_utf8(bytes).expect("UTF-8 events");
            serde_json::Deserializer::from_str(&text)
                .into_iter()
                .collect::<Result<_, _>>()
                .expect("JSON events")
        }
    }

    /// A sink with its writer running on a thread; `drain` the sink before reading.
    pub fn captured() -> (EventSink, Captured) {
        let out = Captured::default();
        let (sink, writer) = EventSink::new(Box::new(out.clone()));
        std::thread::spawn(move || writer.run());
        (sink, out)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn events_have_cloud_hypervisors_shape() {
        let s = format(
            Duration::new(3, 500),
            "vm",
            "device-removed",
            &[("id", "gpu0".into())],
        );
        assert_eq!(
            s,
            "{\n  \"timestamp\": {\n    \"secs\": 3,\n    \"nanos\": 500\n  },\n  \"source\": \"vm\",\n  \"event\": \"device-removed\",\n  \"properties\": {\n    \"id\": \"gpu0\"\n  }\n}\n\n"
        );
        let v: serde_json::Value =
            serde_json::from_str(&format(Duration::ZERO, "vm", "booted", &[])).unwrap();
        assert_eq!(v["properties"], serde_json::Value::Null);
        assert_eq!(v["event"], "booted");
    }

    #[test]
    fn queued_events_reach_the_writer_in_order() {
        let (sink, out) = captured();
        sink.emit("vm", "booting", &[]);
        sink.emit("vm", "booted", &[]);
        sink.drain(Duration::from_secs(10));
        let names: Vec<_> = out.events().iter().map(|e| e["event"].clone()).collect();
        assert_eq!(names, ["booting", "booted"]);
    }

    #[test]
    fn opens_a_path_or_an_inherited_descriptor() {
        use std::os::fd::IntoRawFd;
        let dir = std::env::temp_dir().join(format!("ghvmm-events-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("events.json");
        std::fs::write(&path, "old").unwrap();
        let mut f = open(&EventMonitorConfig::Path(path.clone())).unwrap();
        f.write_all(b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new", "truncated");
        let fd = File::options()
            .append(true)
            .open(&path)
            .unwrap()
            .into_raw_fd();
        let mut f = open(&EventMonitorConfig::Fd(fd)).unwrap();
        f.write_all(b"+fd").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new+fd");
        drop(f);
        // A descriptor that is not open (not the one just closed: another test's thread may
        // have been given its number since).
        assert!(open(&EventMonitorConfig::Fd(i32::MAX)).is_err());
        assert!(open(&EventMonitorConfig::Path(dir.join("no/such/dir"))).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_stalled_writer_never_blocks_the_sender() {
        // No writer runs: the queue fills and the rest are dropped, without blocking.
        let (sink, _writer) = EventSink::new(Box::new(Captured::default()));
        for _ in 0..QUEUE_EVENTS + 10 {
            sink.emit("vm", "booted", &[]);
        }
        let dropped = sink.0.as_ref().unwrap().dropped.load(Ordering::Relaxed);
        assert_eq!(dropped, 10);
        EventSink::default().emit("vm", "booted", &[]);
    }
}
