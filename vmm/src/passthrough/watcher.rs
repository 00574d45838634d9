//! How ghvmm runs a device's VFIO request watcher thread (`vfio::RequestWatcher`).

use std::sync::Arc;

use vfio::WatcherHooks;

use crate::seccomp::{enter_or_end, ThreadKind};
use crate::vm::exit::ExitState;
use crate::vm::threads::guarded_spawner;

/// Filtered as its kind, and a panic on it ends the VM: a watcher gone silently would leave
/// the host's unbind waiting until ghvmm exits.
pub(super) fn hooks(exit: Arc<ExitState>) -> WatcherHooks {
    WatcherHooks {
        on_start: Box::new({
            let exit = exit.clone();
            move || enter_or_end(ThreadKind::VfioRequest, &exit)
        }),
        spawn: guarded_spawner(exit),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use parking_lot::Mutex;
    use vfio::{DeviceIrqs, IrqError, IrqKind, RequestWatcher};
    use vmm_sys_util::eventfd::EventFd;

    use super::*;
    use crate::vm::exit::ExitReason;

    /// A device with a request interrupt, which the test signals through `fd`.
    #[derive(Default)]
    struct Asking {
        fd: Mutex<Option<EventFd>>,
    }

    impl DeviceIrqs for Asking {
        fn enable(&self, _: IrqKind, _: &[&EventFd]) -> Result<(), IrqError> {
            Ok(())
        }
        fn disable(&self, _: IrqKind) -> Result<(), IrqError> {
            Ok(())
        }
        fn has_request_irq(&self) -> bool {
            true
        }
        fn enable_request(&self, fd: &EventFd) -> Result<(), IrqError> {
            *self.fd.lock() = Some(fd.try_clone().expect("dup of an eventfd"));
            Ok(())
        }
    }

    #[test]
    fn a_panic_on_the_request_watcher_ends_the_vm_with_a_fault() {
        let exit = Arc::new(ExitState::default());
        let device = Arc::new(Asking::default());
        let watcher = RequestWatcher::start_with(
            "dev".into(),
            device.clone(),
            Box::new(|| panic!("removal state lost")),
            hooks(exit.clone()),
        )
        .unwrap()
        .expect("the device has a request interrupt");
        device.fd.lock().as_ref().unwrap().write(1).unwrap();
        assert_eq!(
            exit.wait_for(Duration::from_secs(10)),
            Some(ExitReason::Fault(
                "thread 'ghvmm-vfio-req' panicked: removal state lost".into()
            ))
        );
        drop(watcher);
    }
}
