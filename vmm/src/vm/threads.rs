//! The VM's own threads (vCPUs, console input and output, the register dump, the VFIO
//! request watchers and the hot plug give-backs): a panic in
//! one of them must not leave the VM hung while the API still says "Running", so each runs
//! under `spawn_guarded`, which turns a panic into the VM's exit with an error naming the
//! thread.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::vm::exit::{ExitReason, ExitState};

/// Starts thread `name` running `f`; if `f` panics, the VM exits with
/// `ExitReason::Fault("thread 'NAME' panicked: MESSAGE")` (exit code 1).
pub fn spawn_guarded<F>(name: &str, exit: Arc<ExitState>, f: F) -> std::io::Result<JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    let thread = name.to_string();
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            // The state `f` shares with other threads is behind parking_lot locks, which a
            // panic does not poison, and the VM is ending anyway.
            if let Err(payload) = catch_unwind(AssertUnwindSafe(f)) {
                let what = panic_message(payload.as_ref());
                exit.request(ExitReason::Fault(format!(
                    "thread '{thread}' panicked: {what}"
                )));
            }
        })
}

/// `spawn_guarded` as a `vfio::Spawn`, for threads another crate starts for the VM.
pub fn guarded_spawner(exit: Arc<ExitState>) -> vfio::Spawn {
    Box::new(move |name, body| spawn_guarded(name, exit, body))
}

/// The message of a panic's payload (`panic!` gives a `&str` or a `String`).
fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(no message)"
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// The exit reason, once one is set within a few seconds.
    fn reason_soon(exit: &ExitState) -> Option<ExitReason> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !exit.is_set() {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Some(exit.wait())
    }

    #[test]
    fn a_thread_that_panics_ends_the_vm_with_a_fault_naming_it() {
        let exit = Arc::new(ExitState::default());
        let t = spawn_guarded("vcpu7", exit.clone(), || {
            let index = 7;
            panic!("bus entry {index} missing");
        })
        .unwrap();
        let _ = t.join();
        let reason = reason_soon(&exit);
        assert_eq!(
            reason,
            Some(ExitReason::Fault(
                "thread 'vcpu7' panicked: bus entry 7 missing".into()
            ))
        );
        assert_eq!(reason.map(|r| r.code()), Some(1));
    }

    #[test]
    fn a_thread_that_returns_sets_no_exit_reason() {
        let exit = Arc::new(ExitState::default());
        spawn_guarded("stdin", exit.clone(), || {})
            .unwrap()
            .join()
            .unwrap();
        assert!(!exit.is_set());
    }
}
