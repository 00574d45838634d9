//! VFIO's request interrupt: the host wants a passed-through device back.
//!
//! When the device's VFIO driver is unbound on the host (`echo BDF > .../unbind`, or `remove`,
//! or SR-IOV VFs being disabled), the kernel cannot finish while ghvmm holds the device fd:
//! `vfio_unregister_group_dev` waits for the fd to be closed and, every 10 s until then,
//! signals the eventfd the VMM gave VFIO_PCI_REQ_IRQ_INDEX. Without one, the host's unbind
//! blocks until ghvmm exits.
//!
//! `RequestWatcher` gives the device that eventfd and runs one thread per device
//! (`ghvmm-vfio-req`) that polls it together with a stop eventfd. The first signal calls
//! `on_request` (which starts the removal on a thread of its own, so that the watcher is
//! never the one waiting for the guest); later signals are only counted, so a removal in
//! progress is never started twice. Whoever removes the device, by any path, stops the
//! watcher first: the stop eventfd ends the thread, which is joined, and the request
//! interrupt's eventfd is taken back from the device. No vCPU thread takes part.

use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::irq::{DeviceIrqs, IrqError};

/// Called on the watcher thread when the host asks for the device; returns whether the
/// removal started (false: it is called again at the host's next request).
pub type OnRequest = Box<dyn FnMut() -> bool + Send>;

/// Called first on the watcher thread, before it polls: where the VMM installs the thread's
/// seccomp filter (this crate knows nothing of the VMM's filters). False: the thread ends
/// at once (the VMM ends the VM rather than let it run unfiltered).
pub type OnStart = Box<dyn FnOnce() -> bool + Send>;

/// Starts the watcher thread under the given name, running the body: where the VMM decides
/// what a panic on that thread does to the VM (this crate knows nothing of how a VM ends).
pub type Spawn = Box<dyn FnOnce(&str, Box<dyn FnOnce() + Send>) -> io::Result<JoinHandle<()>>>;

/// What the VMM hooks into the watcher thread (`RequestWatcher::start_with`).
pub struct WatcherHooks {
    pub on_start: OnStart,
    pub spawn: Spawn,
}

impl Default for WatcherHooks {
    /// Nothing run first; a plain named thread.
    fn default() -> Self {
        WatcherHooks {
            on_start: Box::new(|| true),
            spawn: Box::new(|name, body| {
                std::thread::Builder::new()
                    .name(name.to_string())
                    .spawn(body)
            }),
        }
    }
}

/// Why a request watcher did not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("eventfd: {0}")]
    EventFd(io::Error),
    #[error("VFIO_DEVICE_SET_IRQS (request interrupt): {0}")]
    RequestIrq(IrqError),
    #[error("cannot start its thread: {0}")]
    Thread(io::Error),
}

/// Watches one device's request interrupt; stopped on drop.
pub struct RequestWatcher {
    /// The device, for log lines.
    name: String,
    device: Arc<dyn DeviceIrqs>,
    stop: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
    /// Signals seen so far (the kernel repeats its request every 10 s).
    signals: Arc<AtomicU64>,
}

impl RequestWatcher {
    /// Registers an eventfd for the device's request interrupt and starts the thread that
    /// watches it. Ok(None) when the device has no request interrupt.
    pub fn start(
        name: String,
        device: Arc<dyn DeviceIrqs>,
        on_request: OnRequest,
    ) -> Result<Option<Self>, WatchError> {
        Self::start_with(name, device, on_request, WatcherHooks::default())
    }

    /// `start`, with the thread started by `hooks.spawn` and `hooks.on_start` run first on it.
    pub fn start_with(
        name: String,
        device: Arc<dyn DeviceIrqs>,
        on_request: OnRequest,
        hooks: WatcherHooks,
    ) -> Result<Option<Self>, WatchError> {
        if !device.has_request_irq() {
            return Ok(None);
        }
        let eventfd = || EventFd::new(EFD_NONBLOCK).map_err(WatchError::EventFd);
        let req = eventfd()?;
        let stop = Arc::new(eventfd()?);
        device
            .enable_request(&req)
            .map_err(WatchError::RequestIrq)?;
        let signals = Arc::new(AtomicU64::new(0));
        let WatcherHooks { on_start, spawn } = hooks;
        let spawned = spawn(
            "ghvmm-vfio-req",
            Box::new({
                let (name, stop, signals) = (name.clone(), stop.clone(), signals.clone());
                move || {
                    if on_start() {
                        watch(&name, &req, &stop, &signals, on_request)
                    }
                }
            }),
        );
        match spawned {
            Ok(thread) => Ok(Some(RequestWatcher {
                name,
                device,
                stop,
                thread: Some(thread),
                signals,
            })),
            Err(e) => {
                let _ = device.disable_request();
                Err(WatchError::Thread(e))
            }
        }
    }

    /// How many times the host has asked so far.
    pub fn signals(&self) -> u64 {
        self.signals.load(Ordering::Relaxed)
    }

    /// Takes the eventfd back from the device and ends the thread (joined, unless this is
    /// the watcher thread itself, which then ends as soon as it returns to its loop).
    /// Idempotent.
    pub fn stop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        if let Err(e) = self.device.disable_request() {
            // The fd's close releases it anyway.
            log::debug!("{}: releasing the request interrupt: {e}", self.name);
        }
        if let Err(e) = self.stop.write(1) {
            log::error!("{}: cannot stop the request watcher: {e}", self.name);
            return;
        }
        if thread.thread().id() != std::thread::current().id() && thread.join().is_err() {
            log::error!("{}: the request watcher panicked", self.name);
        }
    }
}

impl Drop for RequestWatcher {
    fn drop(&mut self) {
        self.stop();
    }
}

fn watch(
    name: &str,
    req: &EventFd,
    stop: &EventFd,
    signals: &AtomicU64,
    mut on_request: OnRequest,
) {
    let mut started = false;
    loop {
        let mut fds = [req.as_raw_fd(), stop.as_raw_fd()].map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
        // SAFETY: `fds` is an array of two pollfd that lives across the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            log::error!("{name}: watching the request interrupt: {e}; the host's requests for the device go unanswered");
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        if fds[0].revents & libc::POLLIN != 0 {
            // Clears the eventfd; a value above 1 is several requests since the last look.
            let _ = req.read();
            let n = signals.fetch_add(1, Ordering::Relaxed) + 1;
            if started {
                log::debug!("{name}: the host asks again (signal {n}); its removal is under way");
            } else {
                started = on_request();
            }
        } else if fds[0].revents != 0 {
            log::error!(
                "{name}: the request interrupt's eventfd failed (poll events {:#x})",
                fds[0].revents
            );
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::IrqKind;
    use parking_lot::Mutex;
    use std::time::{Duration, Instant};
    use vfio_ioctls::VfioError;

    /// A device with (or without) a request interrupt; the test signals it through `fd`.
    #[derive(Default)]
    struct FakeDevice {
        has_request: bool,
        refuse: bool,
        fd: Mutex<Option<EventFd>>,
        calls: Mutex<Vec<&'static str>>,
    }

    impl DeviceIrqs for FakeDevice {
        fn enable(&self, _: IrqKind, _: &[&EventFd]) -> Result<(), IrqError> {
            Ok(())
        }
        fn disable(&self, _: IrqKind) -> Result<(), IrqError> {
            Ok(())
        }
        fn has_request_irq(&self) -> bool {
            self.has_request
        }
        fn enable_request(&self, fd: &EventFd) -> Result<(), IrqError> {
            self.calls.lock().push("enable");
            if self.refuse {
                return Err(VfioError::VfioDeviceSetIrq.into());
            }
            *self.fd.lock() = Some(fd.try_clone().unwrap());
            Ok(())
        }
        fn disable_request(&self) -> Result<(), IrqError> {
            self.calls.lock().push("disable");
            *self.fd.lock() = None;
            Ok(())
        }
    }

    impl FakeDevice {
        fn with_request() -> Arc<Self> {
            Arc::new(FakeDevice {
                has_request: true,
                ..Default::default()
            })
        }
        /// What the kernel does on unbind.
        fn host_asks(&self) {
            self.fd.lock().as_ref().unwrap().write(1).unwrap();
        }
        fn calls(&self) -> Vec<&'static str> {
            self.calls.lock().clone()
        }
    }

    /// An `on_request` that counts its calls and answers `result`; `alive` is held by the
    /// closure, so its count shows whether the watcher thread (which owns it) has ended.
    fn counter(result: bool) -> (OnRequest, Arc<AtomicU64>, Arc<()>) {
        let calls = Arc::new(AtomicU64::new(0));
        let alive = Arc::new(());
        let f: OnRequest = Box::new({
            let (calls, alive) = (calls.clone(), alive.clone());
            move || {
                let _ = &alive;
                calls.fetch_add(1, Ordering::SeqCst);
                result
            }
        });
        (f, calls, alive)
    }

    fn wait_until(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn start(dev: &Arc<FakeDevice>, on_request: OnRequest) -> RequestWatcher {
        RequestWatcher::start("dev".into(), dev.clone(), on_request)
            .unwrap()
            .expect("the device has a request interrupt")
    }

    #[test]
    fn a_request_starts_one_removal_however_often_the_host_asks() {
        let dev = FakeDevice::with_request();
        let (f, calls, alive) = counter(true);
        let mut w = start(&dev, f);
        assert_eq!(dev.calls(), ["enable"]);
        dev.host_asks();
        wait_until("the first request", || calls.load(Ordering::SeqCst) == 1);
        assert_eq!(w.signals(), 1);
        // The kernel repeats its request every 10 s while the removal is under way.
        for n in 2..=4 {
            dev.host_asks();
            wait_until("a repeated request", || w.signals() == n);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one removal only");
        w.stop();
        assert_eq!(Arc::strong_count(&alive), 1, "the watcher thread ended");
        assert_eq!(dev.calls(), ["enable", "disable"]);
        w.stop();
        assert_eq!(dev.calls(), ["enable", "disable"], "stop is idempotent");
    }

    #[test]
    fn a_removal_that_could_not_start_is_tried_again_at_the_next_request() {
        let dev = FakeDevice::with_request();
        let (f, calls, _alive) = counter(false);
        let w = start(&dev, f);
        dev.host_asks();
        wait_until("the first request", || calls.load(Ordering::SeqCst) == 1);
        dev.host_asks();
        wait_until("the second request", || calls.load(Ordering::SeqCst) == 2);
        assert_eq!(w.signals(), 2);
    }

    #[test]
    fn the_watcher_ends_when_the_device_is_removed_without_a_request() {
        let dev = FakeDevice::with_request();
        let (f, calls, alive) = counter(true);
        let w = start(&dev, f);
        assert_eq!(
            Arc::strong_count(&alive),
            2,
            "the thread holds the callback"
        );
        // Dropping is what teardown does.
        drop(w);
        assert_eq!(Arc::strong_count(&alive), 1, "the watcher thread ended");
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert_eq!(dev.calls(), ["enable", "disable"]);
        assert_eq!(
            Arc::strong_count(&dev),
            1,
            "nothing holds the device any more"
        );
    }

    #[test]
    fn on_start_runs_first_on_the_watcher_thread() {
        let dev = FakeDevice::with_request();
        let (f, _, _alive) = counter(true);
        let seen = Arc::new(parking_lot::Mutex::new(None));
        let on_start: OnStart = Box::new({
            let seen = seen.clone();
            move || {
                *seen.lock() = std::thread::current().name().map(String::from);
                true
            }
        });
        let hooks = WatcherHooks {
            on_start,
            ..WatcherHooks::default()
        };
        let w = RequestWatcher::start_with("dev".into(), dev.clone(), f, hooks)
            .unwrap()
            .expect("the device has a request interrupt");
        wait_until("on_start", || seen.lock().is_some());
        assert_eq!(seen.lock().as_deref(), Some("ghvmm-vfio-req"));
        drop(w);
    }

    #[test]
    fn a_watcher_whose_on_start_refuses_ends_without_watching() {
        let dev = FakeDevice::with_request();
        let (f, calls, alive) = counter(true);
        let hooks = WatcherHooks {
            on_start: Box::new(|| false),
            ..WatcherHooks::default()
        };
        let w = RequestWatcher::start_with("dev".into(), dev.clone(), f, hooks)
            .unwrap()
            .expect("the device has a request interrupt");
        wait_until("the watcher thread to end", || {
            Arc::strong_count(&alive) == 1
        });
        dev.host_asks();
        assert_eq!(calls.load(Ordering::SeqCst), 0, "nothing runs unfiltered");
        drop(w);
        assert_eq!(dev.calls(), ["enable", "disable"]);
    }

    #[test]
    fn a_device_without_a_request_interrupt_is_not_watched() {
        let dev = Arc::new(FakeDevice::default());
        let (f, _, alive) = counter(true);
        assert!(RequestWatcher::start("dev".into(), dev.clone(), f)
            .unwrap()
            .is_none());
        assert!(dev.calls().is_empty());
        assert_eq!(Arc::strong_count(&alive), 1);
    }

    #[test]
    fn a_refused_request_interrupt_starts_no_thread() {
        let dev = Arc::new(FakeDevice {
            has_request: true,
            refuse: true,
            ..Default::default()
        });
        let (f, _, alive) = counter(true);
        let e = RequestWatcher::start("dev".into(), dev.clone(), f)
            .err()
            .unwrap();
        assert!(
            matches!(e, WatchError::RequestIrq(IrqError::SetIrqs(_))),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "VFIO_DEVICE_SET_IRQS (request interrupt): failed to set vfio device irq"
        );
        assert_eq!(Arc::strong_count(&alive), 1);
    }
}
