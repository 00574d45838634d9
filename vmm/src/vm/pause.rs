//! Pausing the vCPUs (`vm.pause`, `vm.resume`): every vCPU thread parks between two
//! `KVM_RUN`s until resumed. A vCPU inside `KVM_RUN` (a halted one stays there indefinitely)
//! is kicked out by a signal; the kick is repeated until all have parked, because one sent
//! just before a vCPU enters `KVM_RUN` is lost.

use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// How long `pause` waits for every vCPU to park before it gives up and resumes them.
pub const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a vCPU not parked yet is kicked again.
const KICK_INTERVAL: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PauseError {
    #[error("the VM is already paused")]
    AlreadyPaused,
    #[error("the VM is not paused")]
    NotPaused,
    #[error("only {parked} of {vcpus} vCPUs stopped within {secs} s; the VM keeps running")]
    Timeout {
        parked: usize,
        vcpus: usize,
        secs: u64,
    },
    #[error("the VM is shutting down")]
    Ending,
}

#[derive(Default)]
struct State {
    paused: bool,
    parked: usize,
}

/// Shared by the vCPU threads (`park_while_paused`) and the API (`pause`, `resume`).
pub struct VcpuPause {
    vcpus: usize,
    state: Mutex<State>,
    changed: Condvar,
    /// One `pause` or `resume` at a time: two clients must not interleave them.
    op: Mutex<()>,
}

impl VcpuPause {
    pub fn new(vcpus: usize) -> Self {
        VcpuPause {
            vcpus,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            op: Mutex::new(()),
        }
    }

    pub fn is_paused(&self) -> bool {
        self.state.lock().paused
    }

    /// Called by a vCPU thread before each `KVM_RUN`: returns at once unless paused, else
    /// when resumed.
    pub fn park_while_paused(&self) {
        let mut st = self.state.lock();
        if !st.paused {
            return;
        }
        st.parked += 1;
        self.changed.notify_all();
        while st.paused {
            self.changed.wait(&mut st);
        }
        st.parked -= 1;
    }

    /// Stops every vCPU: `kick` interrupts the `KVM_RUN` of each vCPU thread; `ending` says
    /// the VM is going away (a vCPU thread that returned never parks). Returns once all
    /// are parked; on failure they run again.
    pub fn pause(
        &self,
        kick: &dyn Fn(),
        ending: &dyn Fn() -> bool,
        timeout: Duration,
    ) -> Result<(), PauseError> {
        let _op = self.op.lock();
        let mut st = self.state.lock();
        if st.paused {
            return Err(PauseError::AlreadyPaused);
        }
        st.paused = true;
        let deadline = Instant::now() + timeout;
        let failure = loop {
            if st.parked == self.vcpus {
                return Ok(());
            }
            if ending() {
                break PauseError::Ending;
            }
            if Instant::now() >= deadline {
                break PauseError::Timeout {
                    parked: st.parked,
                    vcpus: self.vcpus,
                    secs: timeout.as_secs(),
                };
            }
            // Without the lock: a vCPU needs it to park.
            parking_lot::MutexGuard::unlocked(&mut st, kick);
            self.changed.wait_for(&mut st, KICK_INTERVAL);
        };
        st.paused = false;
        self.changed.notify_all();
        Err(failure)
    }

    /// Lets the parked vCPUs run again.
    pub fn resume(&self) -> Result<(), PauseError> {
        let _op = self.op.lock();
        let mut st = self.state.lock();
        if !st.paused {
            return Err(PauseError::NotPaused);
        }
        st.paused = false;
        self.changed.notify_all();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    /// `n` fake vCPUs: each loops, bumping its counter, parking when paused; a vCPU in
    /// "KVM_RUN" (`in_run`) leaves it only when kicked.
    struct Fake {
        pause: Arc<VcpuPause>,
        progress: Arc<Vec<AtomicU64>>,
        kicks: Arc<AtomicUsize>,
        stop: Arc<AtomicBool>,
        threads: Vec<std::thread::JoinHandle<()>>,
    }

    impl Fake {
        fn start(n: usize, stuck_in_run: bool) -> Fake {
            let pause = Arc::new(VcpuPause::new(n));
            let progress: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| 0.into()).collect());
            let kicks = Arc::new(AtomicUsize::new(0));
            let stop = Arc::new(AtomicBool::new(false));
            let threads = (0..n)
                .map(|i| {
                    let (pause, progress, kicks, stop) =
                        (pause.clone(), progress.clone(), kicks.clone(), stop.clone());
                    std::thread::spawn(move || {
                        let mut seen_kicks = kicks.load(Ordering::SeqCst);
                        while !stop.load(Ordering::SeqCst) {
                            pause.park_while_paused();
                            progress[i].fetch_add(1, Ordering::SeqCst);
                            // A halted vCPU: stays "in KVM_RUN" until the next kick.
                            while stuck_in_run
                                && kicks.load(Ordering::SeqCst) == seen_kicks
                                && !stop.load(Ordering::SeqCst)
                            {
                                std::thread::sleep(Duration::from_millis(1));
                            }
                            seen_kicks = kicks.load(Ordering::SeqCst);
                        }
                    })
                })
                .collect();
            Fake {
                pause,
                progress,
                kicks,
                stop,
                threads,
            }
        }

        fn pause(&self) -> Result<(), PauseError> {
            let kicks = self.kicks.clone();
            self.pause.pause(
                &move || {
                    kicks.fetch_add(1, Ordering::SeqCst);
                },
                &|| false,
                Duration::from_secs(5),
            )
        }

        fn snapshot(&self) -> Vec<u64> {
            self.progress
                .iter()
                .map(|p| p.load(Ordering::SeqCst))
                .collect()
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            let _ = self.pause.resume();
            for t in self.threads.drain(..) {
                t.join().unwrap();
            }
        }
    }

    #[test]
    fn paused_vcpus_make_no_progress_until_resumed() {
        for stuck in [false, true] {
            let f = Fake::start(3, stuck);
            std::thread::sleep(Duration::from_millis(20));
            f.pause().unwrap();
            assert!(f.pause.is_paused());
            let before = f.snapshot();
            std::thread::sleep(Duration::from_millis(50));
            assert_eq!(f.snapshot(), before, "stuck={stuck}");
            f.pause.resume().unwrap();
            assert!(!f.pause.is_paused());
            let deadline = Instant::now() + Duration::from_secs(5);
            while f.snapshot().iter().zip(&before).any(|(a, b)| a == b) {
                assert!(Instant::now() < deadline, "no progress after resume");
                // The stuck ones need a kick (a guest interrupt) to leave "KVM_RUN".
                f.kicks.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    #[test]
    fn a_second_pause_or_a_resume_while_running_is_refused() {
        let f = Fake::start(2, true);
        assert_eq!(f.pause.resume(), Err(PauseError::NotPaused));
        f.pause().unwrap();
        assert_eq!(f.pause(), Err(PauseError::AlreadyPaused));
        f.pause.resume().unwrap();
        assert_eq!(f.pause.resume(), Err(PauseError::NotPaused));
        // Pause and resume again: the parked count starts over.
        f.pause().unwrap();
        f.pause.resume().unwrap();
    }

    #[test]
    fn a_vcpu_that_never_parks_fails_the_pause_and_the_others_run_on() {
        // Two vCPUs expected, one thread: the pause cannot complete.
        let pause = Arc::new(VcpuPause::new(2));
        let p = pause.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let t = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                p.park_while_paused();
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        let e = pause
            .pause(&|| {}, &|| false, Duration::from_millis(100))
            .unwrap_err();
        assert_eq!(
            e,
            PauseError::Timeout {
                parked: 1,
                vcpus: 2,
                secs: 0
            }
        );
        assert!(!pause.is_paused());
        assert_eq!(
            pause.pause(&|| {}, &|| true, Duration::from_secs(5)),
            Err(PauseError::Ending)
        );
        assert!(!pause.is_paused());
        stop.store(true, Ordering::SeqCst);
        t.join().unwrap();
    }
}
