//! The VMs of one ghvmm process: boot one, and when its guest resets (or `vm.reboot` asks),
//! stop it, drop it and boot a new one from the configuration as it stands then (the
//! boot-time devices plus the hot-added ones, minus the removed ones), as Cloud Hypervisor
//! does. Why the VM is rebuilt rather than reset in place: docs/architecture.md, "Reboot".

use anyhow::{Context, Result};

use crate::config::{DeviceConfig, DeviceSource, GhSlotRequest, VmConfig};
use crate::hotplug::AttachedDevice;
use crate::vm::exit::{ExitReason, ExitState};

/// A running VM, as the loop sees it.
pub trait Machine {
    /// The devices attached now, in attach order.
    fn attached(&self) -> Vec<AttachedDevice>;
    /// Stops every vCPU thread and joins it: dropping the VM afterwards releases the rest
    /// (devices, guest memory, KVM descriptors).
    fn stop(&self) -> Result<()>;
}

/// What the loop asks of ghvmm: build a VM, and let go of it around a reboot.
pub trait Booter {
    type Vm: Machine;
    fn start(&mut self, cfg: &VmConfig) -> Result<Self::Vm>;
    /// The VM runs; `boot` counts from 0.
    fn started(&mut self, vm: &Self::Vm, boot: u32) -> Result<()>;
    /// The VM is about to be stopped for a reboot: whatever else holds parts of it lets go.
    fn stopping(&mut self);
}

/// How the loop ended.
pub struct Ended<V> {
    pub reason: ExitReason,
    /// The last VM, when it still runs (its vCPUs may be inside `KVM_RUN`).
    pub vm: Option<V>,
    /// Reboots done.
    pub reboots: u32,
}

/// The devices of the next boot: those attached now, each where it is (a GH slot is the
/// segment after it), under the id it has.
pub fn next_config(cfg: &VmConfig, attached: &[AttachedDevice]) -> VmConfig {
    let devices = attached
        .iter()
        .map(|d| DeviceConfig {
            source: if d.user {
                DeviceSource::User(d.path.clone())
            } else {
                DeviceSource::Vfio(d.path.clone())
            },
            id: Some(d.id.clone()),
            gh_slot: d.address.segment.checked_sub(1).map(GhSlotRequest::Index),
            pci_segment: None,
        })
        .collect();
    VmConfig {
        devices,
        ..cfg.clone()
    }
}

/// Boots VMs until one ends other than by a reset.
pub fn run<B: Booter>(cfg: &VmConfig, exit: &ExitState, booter: &mut B) -> Result<Ended<B::Vm>> {
    let mut cfg = cfg.clone();
    let mut boot = 0;
    loop {
        let vm = match booter.start(&cfg) {
            Ok(vm) => vm,
            Err(e) if boot > 0 => return Err(e.context("cannot boot the VM again after a reboot")),
            Err(e) => return Err(e),
        };
        booter.started(&vm, boot)?;
        crate::event_monitor::emit("vm", if boot == 0 { "booted" } else { "rebooted" }, &[]);
        let reason = exit.wait();
        if reason != ExitReason::Reset {
            return Ok(Ended {
                reason,
                vm: Some(vm),
                reboots: boot,
            });
        }
        crate::event_monitor::emit("vm", "rebooting", &[]);
        log::info!("the guest reboots: rebuilding the VM");
        // After the API let go: a hot add it was still serving is in the next boot too.
        booter.stopping();
        cfg = next_config(&cfg, &vm.attached());
        vm.stop().context("cannot reboot the VM")?;
        drop(vm);
        if let Some(reason) = exit.rearm() {
            return Ok(Ended {
                reason,
                vm: None,
                reboots: boot,
            });
        }
        boot += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use parking_lot::Mutex;

    use super::*;
    use acpi::PciAddress;

    /// What the fakes did, in order.
    type Log = Arc<Mutex<Vec<String>>>;

    struct FakeVm {
        n: u32,
        devices: Vec<AttachedDevice>,
        log: Log,
        stop_fails: bool,
    }

    impl Machine for FakeVm {
        fn attached(&self) -> Vec<AttachedDevice> {
            self.devices.clone()
        }
        fn stop(&self) -> Result<()> {
            self.log.lock().push(format!("stop {}", self.n));
            anyhow::ensure!(!self.stop_fails, "vCPU 1 did not stop within 10 s");
            Ok(())
        }
    }

    impl Drop for FakeVm {
        fn drop(&mut self) {
            self.log.lock().push(format!("drop {}", self.n));
        }
    }

    /// Each VM runs the guest's script entry for its boot: the reason its guest ends with
    /// (and what else is reported meanwhile), with a device hot-added on the first boot.
    struct Fake {
        exit: Arc<ExitState>,
        script: Vec<Vec<ExitReason>>,
        log: Log,
        started: u32,
        fail_start: Option<u32>,
        fail_stop: bool,
        configs: Vec<Vec<String>>,
    }

    impl Fake {
        fn new(script: Vec<Vec<ExitReason>>) -> Fake {
            Fake {
                exit: Arc::new(ExitState::default()),
                script,
                log: Log::default(),
                started: 0,
                fail_start: None,
                fail_stop: false,
                configs: Vec::new(),
            }
        }
    }

    fn device(id: &str, segment: u16) -> AttachedDevice {
        AttachedDevice {
            id: id.into(),
            path: format!("/sys/bus/pci/devices/{id}").into(),
            user: id.starts_with("user"),
            address: PciAddress {
                segment,
                bus: 0,
                device: 1,
                function: 0,
            },
        }
    }

    impl Booter for Fake {
        type Vm = FakeVm;
        fn start(&mut self, cfg: &VmConfig) -> Result<FakeVm> {
            let n = self.started;
            self.started += 1;
            self.log.lock().push(format!("start {n}"));
            anyhow::ensure!(self.fail_start != Some(n), "KVM_CREATE_VM: out of memory");
            self.configs.push(
                cfg.devices
                    .iter()
                    .map(|d| {
                        format!(
                            "{}:{:?}:{:?}",
                            d.id.as_deref().unwrap_or(""),
                            d.source,
                            d.gh_slot
                        )
                    })
                    .collect(),
            );
            let mut devices: Vec<AttachedDevice> = cfg
                .devices
                .iter()
                .map(|d| {
                    let segment = match d.gh_slot {
                        Some(GhSlotRequest::Index(k)) => k + 1,
                        _ => 0,
                    };
                    device(d.id.as_deref().unwrap_or("boot"), segment)
                })
                .collect();
            if n == 0 {
                devices.push(device("hot", 0));
                devices.push(device("user-gh", 2));
            }
            Ok(FakeVm {
                n,
                devices,
                log: self.log.clone(),
                stop_fails: self.fail_stop,
            })
        }
        fn started(&mut self, _: &FakeVm, boot: u32) -> Result<()> {
            self.log.lock().push(format!("started {boot}"));
            let reasons = self.script.get(boot as usize).cloned().unwrap_or_default();
            for r in reasons {
                self.exit.request(r);
            }
            Ok(())
        }
        fn stopping(&mut self) {
            self.log.lock().push("stopping".into());
        }
    }

    fn cfg() -> VmConfig {
        use clap::Parser;
        crate::config::cli::Cli::try_parse_from(["ghvmm", "--kernel", "/k"])
            .unwrap()
            .into_config()
            .unwrap()
    }

    #[test]
    fn reboots_until_a_power_off_each_vm_stopped_and_dropped_before_the_next() {
        let mut f = Fake::new(vec![
            vec![ExitReason::Reset],
            vec![ExitReason::Reset, ExitReason::Reset],
            vec![ExitReason::PowerOff],
        ]);
        let exit = f.exit.clone();
        let ended = run(&cfg(), &exit, &mut f).unwrap();
        assert_eq!((&ended.reason, ended.reboots), (&ExitReason::PowerOff, 2));
        assert_eq!(
            ended.vm.as_ref().map(|v| v.n),
            Some(2),
            "the last VM still runs"
        );
        drop(ended);
        assert_eq!(
            *f.log.lock(),
            [
                "start 0",
                "started 0",
                "stopping",
                "stop 0",
                "drop 0",
                "start 1",
                "started 1",
                "stopping",
                "stop 1",
                "drop 1",
                "start 2",
                "started 2",
                "drop 2"
            ]
        );
        // The devices hot-added on the first boot are there on the next ones, in place.
        let hot = [
            "hot:Vfio(\"/sys/bus/pci/devices/hot\"):None",
            "user-gh:User(\"/sys/bus/pci/devices/user-gh\"):Some(Index(1))",
        ];
        assert_eq!(f.configs, [vec![], hot.to_vec(), hot.to_vec()]);
    }

    #[test]
    fn a_power_off_or_fault_during_the_rebuild_ends_without_booting_again() {
        for end in [ExitReason::PowerOff, ExitReason::Fault("vCPU 0: x".into())] {
            let mut f = Fake::new(vec![vec![ExitReason::Reset, end.clone()]]);
            let exit = f.exit.clone();
            let ended = run(&cfg(), &exit, &mut f).unwrap();
            assert_eq!((ended.reason, ended.reboots), (end, 0));
            assert!(ended.vm.is_none());
            assert_eq!(f.started, 1);
        }
    }

    #[test]
    fn a_failure_to_boot_again_is_one_error() {
        let mut f = Fake::new(vec![vec![ExitReason::Reset]]);
        f.fail_start = Some(1);
        let exit = f.exit.clone();
        let e = run(&cfg(), &exit, &mut f).err().unwrap();
        assert_eq!(
            format!("{e:#}"),
            "cannot boot the VM again after a reboot: KVM_CREATE_VM: out of memory"
        );
        assert_eq!(f.log.lock().last().map(String::as_str), Some("start 1"));
        // The first boot's failure is the start's own error.
        let mut f = Fake::new(vec![]);
        f.fail_start = Some(0);
        let exit = f.exit.clone();
        let e = run(&cfg(), &exit, &mut f).err().unwrap();
        assert_eq!(format!("{e:#}"), "KVM_CREATE_VM: out of memory");
    }

    #[test]
    fn vcpus_that_do_not_stop_fail_the_reboot() {
        let mut f = Fake::new(vec![vec![ExitReason::Reset]]);
        f.fail_stop = true;
        let exit = f.exit.clone();
        let e = run(&cfg(), &exit, &mut f).err().unwrap();
        assert_eq!(
            format!("{e:#}"),
            "cannot reboot the VM: vCPU 1 did not stop within 10 s"
        );
        assert_eq!(f.started, 1);
    }
}
