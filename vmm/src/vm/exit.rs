//! Why the VM stopped. The first reason reported wins: once the guest asked to power off, a
//! vCPU that faults while the process winds down must not turn a clean exit into an error.

use parking_lot::{Condvar, Mutex};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    PowerOff,
    Reset,
    Fault(String),
}

impl ExitReason {
    /// The process exit code: a guest-requested power-off or reset is a success.
    pub fn code(&self) -> i32 {
        match self {
            ExitReason::PowerOff | ExitReason::Reset => 0,
            ExitReason::Fault(_) => 1,
        }
    }
}

#[derive(Default)]
pub struct ExitState {
    reason: Mutex<Option<ExitReason>>,
    cv: Condvar,
}

impl ExitState {
    pub fn request(&self, reason: ExitReason) {
        let mut r = self.reason.lock();
        if r.is_none() {
            log::info!("VM exit requested: {reason:?}");
            *r = Some(reason);
            self.cv.notify_all();
        }
    }

    pub fn is_set(&self) -> bool {
        self.reason.lock().is_some()
    }

    pub fn wait(&self) -> ExitReason {
        let mut r = self.reason.lock();
        loop {
            if let Some(reason) = r.clone() {
                return reason;
            }
            self.cv.wait(&mut r);
        }
    }

    /// `wait`, giving up after `timeout`: for the tests of threads that end the VM.
    #[cfg(test)]
    pub fn wait_for(&self, timeout: std::time::Duration) -> Option<ExitReason> {
        let deadline = std::time::Instant::now() + timeout;
        let mut r = self.reason.lock();
        while r.is_none() {
            if self.cv.wait_until(&mut r, deadline).timed_out() {
                break;
            }
        }
        r.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn first_reason_wins() {
        let s = ExitState::default();
        assert!(!s.is_set());
        s.request(ExitReason::PowerOff);
        s.request(ExitReason::Fault("late".into()));
        assert_eq!(s.wait(), ExitReason::PowerOff);
        assert_eq!(s.wait().code(), 0);
    }

    #[test]
    fn wait_wakes_on_request_from_another_thread() {
        let s = Arc::new(ExitState::default());
        let s2 = s.clone();
        let t = std::thread::spawn(move || s2.request(ExitReason::Fault("x".into())));
        assert_eq!(s.wait().code(), 1);
        t.join().unwrap();
    }
}
