//! The host's give-back: a device the host asks for (its VFIO driver is being unbound, see
//! `vfio::RequestWatcher`) is removed over the steps of `EjectSteps` (the VM's hot plug controller
//! in `manager`, a fake in the tests): ask the guest to eject the device as
//! `vm.remove-device` does, wait for its `_EJ0` up to the eject timeout, and detach the device
//! whether the guest ejected it or not, because the host's unbind waits for it. A device
//! detached without the guest's eject is a surprise removal: the guest is sent the slot's
//! eject request once more, the one notification on which Linux's acpiphp drops the slot's
//! functions whether they still answer or not (a device check only looks for new ones), and
//! until it does, its accesses to the gone device read all-ones.

use std::time::Duration;

/// The steps of taking a device out of the guest (`Hotplug` on the VM's hot plug
/// controller and device list; a fake in the tests).
pub trait EjectSteps {
    /// Marks the device's slot for removal and interrupts the guest.
    fn request_eject(&mut self) -> Result<(), String>;
    /// Waits up to `timeout` for the guest's `_EJ0`; false on timeout.
    fn wait_ejected(&mut self, timeout: Duration) -> bool;
    /// Takes the device out of config space and releases all it holds (its VFIO fds last).
    fn detach(&mut self);
    /// Tells the guest (again) that the slot's device is gone.
    fn notify_gone(&mut self) -> Result<(), String>;
}

/// How a device went back to the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GiveBack {
    /// The guest ejected it, as after `vm.remove-device`.
    Ejected,
    /// Detached without the guest's eject (surprise removal); `why` says what went wrong.
    Forced { why: String },
}

/// Removes the device the host asked for: an eject request, up to `timeout` for the guest's
/// eject, then detach whatever the guest did. See the module comment.
pub fn give_back(steps: &mut dyn EjectSteps, timeout: Duration) -> GiveBack {
    let why = match steps.request_eject() {
        Ok(()) if steps.wait_ejected(timeout) => None,
        Ok(()) => Some(format!(
            "the guest did not eject it within {} s",
            timeout.as_secs()
        )),
        Err(e) => Some(format!("the guest could not be asked to eject it ({e})")),
    };
    steps.detach();
    match why {
        None => GiveBack::Ejected,
        Some(why) => match steps.notify_gone() {
            Ok(()) => GiveBack::Forced { why },
            Err(e) => GiveBack::Forced {
                why: format!("{why}; telling it the device is gone failed too ({e})"),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the steps; the guest ejects or not.
    struct FakeSteps {
        guest_ejects: bool,
        controller_works: bool,
        done: Vec<&'static str>,
        waited: Option<Duration>,
    }

    impl FakeSteps {
        fn new(guest_ejects: bool, controller_works: bool) -> Self {
            FakeSteps {
                guest_ejects,
                controller_works,
                done: Vec::new(),
                waited: None,
            }
        }
    }

    impl EjectSteps for FakeSteps {
        fn request_eject(&mut self) -> Result<(), String> {
            self.done.push("request eject");
            if self.controller_works {
                Ok(())
            } else {
                Err("GED interrupt: EBADF".into())
            }
        }
        fn wait_ejected(&mut self, timeout: Duration) -> bool {
            self.done.push("wait");
            self.waited = Some(timeout);
            self.guest_ejects
        }
        fn detach(&mut self) {
            self.done.push("detach");
        }
        fn notify_gone(&mut self) -> Result<(), String> {
            self.done.push("notify gone");
            if self.controller_works {
                Ok(())
            } else {
                Err("GED interrupt: EBADF".into())
            }
        }
    }

    #[test]
    fn an_ejecting_guest_gets_a_normal_removal() {
        let mut s = FakeSteps::new(true, true);
        let t = Duration::from_secs(60);
        assert_eq!(give_back(&mut s, t), GiveBack::Ejected);
        assert_eq!(s.done, ["request eject", "wait", "detach"]);
        assert_eq!(s.waited, Some(t));
    }

    #[test]
    fn a_guest_that_does_not_eject_in_time_gets_a_surprise_removal() {
        let mut s = FakeSteps::new(false, true);
        let r = give_back(&mut s, Duration::from_secs(60));
        assert_eq!(
            r,
            GiveBack::Forced {
                why: "the guest did not eject it within 60 s".into()
            }
        );
        assert_eq!(s.done, ["request eject", "wait", "detach", "notify gone"]);
    }

    #[test]
    fn the_device_goes_back_even_when_the_guest_cannot_be_told() {
        let mut s = FakeSteps::new(true, false);
        let GiveBack::Forced { why } = give_back(&mut s, Duration::from_secs(60)) else {
            panic!("not forced");
        };
        assert_eq!(s.done, ["request eject", "detach", "notify gone"]);
        assert!(
            why.contains("could not be asked") && why.contains("EBADF"),
            "{why}"
        );
        assert!(!why.contains('\n'));
    }
}
