//! Why the VM stopped. The first reason reported wins: once the guest asked to power off, a
//! vCPU that faults while the process winds down must not turn a clean exit into an error.
//! A reset is the exception: the VM is rebuilt and the state re-armed (`rearm`), so a power-off
//! or a fault reported while that happens is kept, and ends the process instead of the new VM
//! booting.

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
struct Reasons {
    current: Option<ExitReason>,
    /// The first power-off or fault reported after a reset, while the VM is rebuilt.
    after_reset: Option<ExitReason>,
}

#[derive(Default)]
pub struct ExitState {
    reason: Mutex<Reasons>,
    cv: Condvar,
}

impl ExitState {
    pub fn request(&self, reason: ExitReason) {
        let mut r = self.reason.lock();
        match &r.current {
            None => {
                log::info!("VM exit requested: {reason:?}");
                r.current = Some(reason);
                self.cv.notify_all();
            }
            Some(ExitReason::Reset) if reason != ExitReason::Reset && r.after_reset.is_none() => {
                log::info!("VM exit requested while it reboots: {reason:?}");
                r.after_reset = Some(reason);
            }
            Some(_) => {}
        }
    }

    pub fn is_set(&self) -> bool {
        self.reason.lock().current.is_some()
    }

    /// True from a reset until `rearm`: the VM is being rebuilt.
    pub fn is_rebooting(&self) -> bool {
        let r = self.reason.lock();
        r.current == Some(ExitReason::Reset) && r.after_reset.is_none()
    }

    pub fn wait(&self) -> ExitReason {
        let mut r = self.reason.lock();
        loop {
            if let Some(reason) = r.current.clone() {
                return reason;
            }
            self.cv.wait(&mut r);
        }
    }

    /// After a reset, once the old VM's threads are gone: clears the reason for the next VM.
    /// Returns the power-off or fault reported meanwhile, which then stays the reason (the
    /// process must end rather than boot again).
    pub fn rearm(&self) -> Option<ExitReason> {
        let mut r = self.reason.lock();
        match r.after_reset.take() {
            Some(end) => {
                r.current = Some(end.clone());
                self.cv.notify_all();
                Some(end)
            }
            None => {
                r.current = None;
                None
            }
        }
    }

    /// `wait`, giving up after `timeout`: for the tests of threads that end the VM.
    #[cfg(test)]
    pub fn wait_for(&self, timeout: std::time::Duration) -> Option<ExitReason> {
        let deadline = std::time::Instant::now() + timeout;
        let mut r = self.reason.lock();
        while r.current.is_none() {
            if self.cv.wait_until(&mut r, deadline).timed_out() {
                break;
            }
        }
        r.current.clone()
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
    fn rearm_clears_a_reset_for_the_next_vm() {
        let s = ExitState::default();
        s.request(ExitReason::Reset);
        assert!(s.is_set() && s.is_rebooting());
        // A second reset (Linux writes the ACPI register, then tries the i8042) is the same.
        s.request(ExitReason::Reset);
        assert_eq!(s.rearm(), None);
        assert!(!s.is_set() && !s.is_rebooting());
        s.request(ExitReason::PowerOff);
        assert_eq!(s.wait(), ExitReason::PowerOff);
    }

    #[test]
    fn a_power_off_or_fault_during_a_reboot_ends_the_process() {
        for end in [ExitReason::PowerOff, ExitReason::Fault("x".into())] {
            let s = ExitState::default();
            s.request(ExitReason::Reset);
            s.request(end.clone());
            s.request(ExitReason::Fault("later".into()));
            assert_eq!(s.wait(), ExitReason::Reset, "the reboot's teardown goes on");
            assert!(!s.is_rebooting());
            assert_eq!(s.rearm(), Some(end.clone()));
            assert_eq!(s.wait(), end);
        }
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
