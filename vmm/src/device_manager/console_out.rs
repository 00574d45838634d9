//! Guest console output: COM1 hands each byte the guest transmits to a bounded queue, and a
//! thread of its own (`console-out`) writes the queue to ghvmm's stdout (or the
//! `--serial file=` file). COM1 is written by a vCPU under the serial device's lock, so a
//! stdout that stalls (a terminal on hold, a pipe nobody reads) must cost the guest output
//! bytes, never a blocked vCPU: bytes beyond the bound are dropped and counted, and said so
//! once in the log and again at exit. At exit the queue is drained for a bounded time.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::vm::exit::ExitState;
use crate::vm::threads::spawn_guarded;

/// Guest output held while the output stalls: a screenful of boot log many times over.
pub const QUEUE_BYTES: usize = 1 << 20;
/// How long the exit waits for the queue to be written out.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// The most the thread writes in one call.
const CHUNK_BYTES: usize = 64 << 10;

#[derive(Default)]
struct State {
    queue: VecDeque<u8>,
    /// Bytes the guest sent while the queue was full (or the output had failed).
    dropped: u64,
    /// Bytes the thread took out of the queue and is writing.
    writing: usize,
    /// The output failed: later bytes are dropped rather than queued.
    failed: bool,
}

struct Shared {
    state: Mutex<State>,
    bound: usize,
    /// Bytes were queued.
    queued: Condvar,
    /// The queue was written out.
    emptied: Condvar,
}

/// COM1's end of the queue: `write` never waits for the output. Each VM of a reboot loop
/// gets a clone.
#[derive(Clone)]
pub struct QueueWriter(Arc<Shared>);

impl Write for QueueWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut s = self.0.state.lock();
        let room = if s.failed {
            0
        } else {
            self.0.bound.saturating_sub(s.queue.len())
        };
        let take = buf.len().min(room);
        s.queue.extend(&buf[..take]);
        s.dropped += (buf.len() - take) as u64;
        if take > 0 {
            self.0.queued.notify_one();
        }
        // All of it is taken: the UART would otherwise retry, under the vCPU.
        Ok(buf.len())
    }

    /// The thread writes whatever is queued as soon as it can; nothing to wait for here.
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The `console-out` thread's queue, for the exit to drain.
pub struct ConsoleOut(Arc<Shared>);

/// What the exit's drain left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Bytes still queued (or being written) when the drain gave up.
    pub left: usize,
    pub dropped: u64,
}

impl ConsoleOut {
    /// Starts the `console-out` thread writing to `out`, queueing at most `bound` bytes;
    /// returns the queue and COM1's end of it. A panic of the thread ends the VM (`exit`).
    pub fn start(
        out: Box<dyn Write + Send>,
        bound: usize,
        exit: Arc<ExitState>,
    ) -> std::io::Result<(ConsoleOut, QueueWriter)> {
        let shared = Arc::new(Shared {
            state: Mutex::default(),
            bound,
            queued: Condvar::new(),
            emptied: Condvar::new(),
        });
        let theirs = shared.clone();
        spawn_guarded("console-out", exit.clone(), move || {
            if crate::seccomp::enter_or_end(crate::seccomp::ThreadKind::ConsoleOut, &exit) {
                run(&theirs, out)
            }
        })?;
        Ok((ConsoleOut(shared.clone()), QueueWriter(shared)))
    }

    /// Waits up to `timeout` for the queue to be written out, then says what was dropped or
    /// left unwritten (one log line each).
    pub fn drain(&self, timeout: Duration) -> Drained {
        let deadline = Instant::now() + timeout;
        let mut s = self.0.state.lock();
        while (!s.queue.is_empty() || s.writing > 0) && !s.failed {
            if self.0.emptied.wait_until(&mut s, deadline).timed_out() {
                break;
            }
        }
        let drained = Drained {
            left: s.queue.len() + s.writing,
            dropped: s.dropped,
        };
        drop(s);
        if drained.dropped > 0 {
            log::warn!(
                "console: {} bytes of guest output were dropped (the output did not keep up)",
                drained.dropped
            );
        }
        if drained.left > 0 {
            log::warn!(
                "console: the output stalled; {} bytes of guest output were not written",
                drained.left
            );
        }
        drained
    }
}

/// The `console-out` thread: writes the queue out, chunk by chunk, until the output fails.
fn run(shared: &Shared, mut out: Box<dyn Write + Send>) {
    let mut told_dropped = false;
    loop {
        let mut s = shared.state.lock();
        while s.queue.is_empty() {
            s.writing = 0;
            shared.emptied.notify_all();
            shared.queued.wait(&mut s);
        }
        let n = s.queue.len().min(CHUNK_BYTES);
        let chunk: Vec<u8> = s.queue.drain(..n).collect();
        s.writing = n;
        let dropped = s.dropped;
        drop(s);
        // Said once, from here rather than from the vCPU that drops them.
        if dropped > 0 && !told_dropped {
            log::warn!(
                "console: the output does not keep up; guest output beyond {} queued bytes is dropped (counted, reported at exit)",
                shared.bound
            );
            told_dropped = true;
        }
        if let Err(e) = out.write_all(&chunk).and_then(|()| out.flush()) {
            log::warn!("console: writing guest output failed ({e}); it is dropped from now on");
            let mut s = shared.state.lock();
            s.dropped += (chunk.len() + s.queue.len()) as u64;
            s.queue.clear();
            s.failed = true;
            s.writing = 0;
            shared.emptied.notify_all();
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use devices::{BusDevice, Serial};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    use super::*;

    /// An output whose first write blocks until the test drops the sender.
    struct Stalled(mpsc::Receiver<()>);

    impl Write for Stalled {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            let _ = self.0.recv();
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Records what it is given.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    const BOUND: usize = 4096;
    const SENT: usize = 20_000;

    #[test]
    fn a_stalled_output_never_blocks_the_vcpu_and_drops_are_counted() {
        let (release, stalled) = mpsc::channel();
        let (console, queue) = ConsoleOut::start(
            Box::new(Stalled(stalled)),
            BOUND,
            Arc::new(ExitState::default()),
        )
        .unwrap();
        let mut serial = Serial::new(EventFd::new(EFD_NONBLOCK).unwrap(), Box::new(queue));
        // The vCPU's side: COM1's transmit register, one byte per write, as a guest prints.
        let (done, finished) = mpsc::channel();
        std::thread::spawn(move || {
            let started = Instant::now();
            for _ in 0..SENT {
                serial.write(0x3f8, 0, b"x");
            }
            let _ = done.send(started.elapsed());
        });
        let took = finished
            .recv_timeout(Duration::from_secs(10))
            .expect("the vCPU-side writes still blocked after 10 s");
        assert!(took < Duration::from_secs(5), "{took:?}");
        let started = Instant::now();
        let drained = console.drain(Duration::from_millis(100));
        assert!(started.elapsed() < Duration::from_secs(2));
        // The thread holds at most one queue's worth in its blocked write.
        assert!(drained.dropped >= (SENT - 2 * BOUND) as u64, "{drained:?}");
        assert!(drained.left > 0, "{drained:?}");
        drop(release);
    }

    #[test]
    fn a_live_output_gets_every_byte_and_the_drain_waits_for_it() {
        let sink = Sink::default();
        let (console, mut queue) = ConsoleOut::start(
            Box::new(sink.clone()),
            BOUND,
            Arc::new(ExitState::default()),
        )
        .unwrap();
        for i in 0..1000u32 {
            queue.write_all(&i.to_le_bytes()).unwrap();
            if i % 100 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let drained = console.drain(Duration::from_secs(5));
        assert_eq!(drained.left, 0);
        let written = sink.0.lock().clone();
        let expected: Vec<u8> = (0..1000u32).flat_map(u32::to_le_bytes).collect();
        // Nothing is dropped while the output keeps up with a byte-by-byte guest; with 4000
        // bytes sent in bursts against a 4096-byte queue, none can be.
        assert_eq!(drained.dropped, 0);
        assert_eq!(written, expected);
    }
}
