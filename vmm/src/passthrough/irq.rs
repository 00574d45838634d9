//! Applies a passed-through function's MSI/MSI-X programming (`pci::vfio::IrqUpdate`) to
//! VFIO and KVM: each enabled vector gets an eventfd that VFIO signals when the device fires,
//! a GSI whose KVM route is the message the guest programmed, and an irqfd binding the two.
//! The interrupt then goes device → host IRQ → eventfd → KVM → guest vCPU without any ghvmm
//! thread running.
//!
//! A masked vector keeps its eventfd but loses its irqfd: what the device signals meanwhile
//! stays counted in the eventfd, and KVM injects it when the irqfd is registered again at
//! unmask (KVM checks for a pending event on registration), which is the spec's "pending"
//! behaviour.

use devices::{log_limited, LogLimit};
use std::collections::HashMap;
use std::sync::Arc;

use pci::vfio::{IrqKind, IrqSink, IrqUpdate, MsiMessage};
use vfio::DeviceIrqs;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::device_manager::irq_routing::GsiRouting;
use crate::fd_limit::{check_room, FdBudget, ProcessFds};

/// The same two kinds, as the vfio crate names them (it does not depend on pci).
fn host(kind: IrqKind) -> vfio::IrqKind {
    match kind {
        IrqKind::Msi => vfio::IrqKind::Msi,
        IrqKind::Msix => vfio::IrqKind::Msix,
    }
}

struct Vector {
    event: EventFd,
    gsi: u32,
    /// Whether the irqfd is registered (the vector is routed and unmasked).
    live: bool,
}

pub struct VfioIrqSink {
    /// The device, for log lines.
    name: String,
    device: Arc<dyn DeviceIrqs>,
    routing: Arc<GsiRouting>,
    active: HashMap<IrqKind, Vec<Vector>>,
    /// The guest enables, disables and programs interrupts as often as it likes: its lines
    /// are rate-limited.
    log_limit: LogLimit,
    /// Checked before an enable takes a descriptor per vector.
    fds: Arc<dyn FdBudget>,
}

impl VfioIrqSink {
    pub fn new(name: String, device: Arc<dyn DeviceIrqs>, routing: Arc<GsiRouting>) -> Self {
        VfioIrqSink {
            name,
            device,
            routing,
            active: HashMap::new(),
            log_limit: LogLimit::new(),
            fds: Arc::new(ProcessFds),
        }
    }

    /// The same sink counting descriptors with `fds` instead of the process's own.
    #[cfg(test)]
    pub fn with_fd_budget(mut self, fds: Arc<dyn FdBudget>) -> Self {
        self.fds = fds;
        self
    }

    fn enable(&mut self, kind: IrqKind, vectors: u16) -> Result<(), String> {
        if self.active.contains_key(&kind) {
            self.disable(kind)?;
        }
        check_room(self.fds.as_ref(), u64::from(vectors)).map_err(|e| e.to_string())?;
        let mut made: Vec<Vector> = Vec::new();
        let fail = |made: &mut Vec<Vector>, why: String| {
            for v in made.drain(..) {
                let _ = self.routing.release(v.gsi);
            }
            Err(why)
        };
        for _ in 0..vectors {
            let event = match EventFd::new(EFD_NONBLOCK) {
                Ok(e) => e,
                Err(e) => return fail(&mut made, format!("eventfd: {e}")),
            };
            let gsi = match self.routing.allocate() {
                Ok(g) => g,
                Err(e) => return fail(&mut made, e.to_string()),
            };
            made.push(Vector {
                event,
                gsi,
                live: false,
            });
        }
        let fds: Vec<&EventFd> = made.iter().map(|v| &v.event).collect();
        if let Err(e) = self.device.enable(host(kind), &fds) {
            return fail(&mut made, format!("VFIO_DEVICE_SET_IRQS: {e}"));
        }
        log_limited!(
            self.log_limit,
            log::Level::Info,
            "{}: {kind:?} enabled with {vectors} vectors",
            self.name
        );
        self.active.insert(kind, made);
        Ok(())
    }

    fn disable(&mut self, kind: IrqKind) -> Result<(), String> {
        let Some(vectors) = self.active.remove(&kind) else {
            return Ok(());
        };
        for v in &vectors {
            if v.live {
                let _ = self.routing.unregister_irqfd(&v.event, v.gsi);
            }
            let _ = self.routing.release(v.gsi);
        }
        log_limited!(
            self.log_limit,
            log::Level::Info,
            "{}: {kind:?} disabled",
            self.name
        );
        self.device
            .disable(host(kind))
            .map_err(|e| format!("VFIO_DEVICE_SET_IRQS: {e}"))
    }

    fn route(
        &mut self,
        kind: IrqKind,
        vector: u16,
        message: Option<MsiMessage>,
    ) -> Result<(), String> {
        let Some(v) = self
            .active
            .get_mut(&kind)
            .and_then(|vs| vs.get_mut(usize::from(vector)))
        else {
            return Err(format!("{kind:?} vector {vector} routed while not enabled"));
        };
        log::debug!(
            "{}: {kind:?} vector {vector} (GSI {}) -> {message:x?}",
            self.name,
            v.gsi
        );
        if message.is_none() && v.live {
            self.routing
                .unregister_irqfd(&v.event, v.gsi)
                .map_err(|e| e.to_string())?;
            v.live = false;
        }
        self.routing
            .set(v.gsi, message)
            .map_err(|e| e.to_string())?;
        if message.is_some() && !v.live {
            self.routing
                .register_irqfd(&v.event, v.gsi)
                .map_err(|e| e.to_string())?;
            v.live = true;
        }
        Ok(())
    }

    fn apply_one(&mut self, u: IrqUpdate) -> Result<(), String> {
        match u {
            IrqUpdate::Enable { kind, vectors } => self.enable(kind, vectors),
            IrqUpdate::Disable { kind } => self.disable(kind),
            IrqUpdate::Route {
                kind,
                vector,
                message,
            } => self.route(kind, vector, message),
        }
    }
}

impl IrqSink for VfioIrqSink {
    fn shutdown(&mut self) {
        let kinds: Vec<IrqKind> = self.active.keys().copied().collect();
        for kind in kinds {
            if let Err(e) = self.disable(kind) {
                log::error!("{}: {kind:?} at unplug: {e}", self.name);
            }
        }
    }

    fn apply(&mut self, updates: Vec<IrqUpdate>) {
        for u in updates {
            // The guest asked for something the host cannot do: like a device whose
            // interrupt never arrives, the guest driver times out; ghvmm keeps running.
            if let Err(e) = self.apply_one(u) {
                log_limited!(
                    self.log_limit,
                    log::Level::Error,
                    "{}: {u:?}: {e}",
                    self.name
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device_manager::irq_routing::tests::FakeKvm;
    use crate::device_manager::irq_routing::Route;
    use parking_lot::Mutex;
    use vfio::{IrqError, VfioError};

    #[derive(Default)]
    struct FakeDevice {
        calls: Mutex<Vec<(vfio::IrqKind, Option<usize>)>>,
        refuse: bool,
    }

    impl DeviceIrqs for FakeDevice {
        fn enable(&self, kind: vfio::IrqKind, fds: &[&EventFd]) -> Result<(), IrqError> {
            self.calls.lock().push((kind, Some(fds.len())));
            if self.refuse {
                Err(VfioError::VfioDeviceEnableIrq.into())
            } else {
                Ok(())
            }
        }
        fn disable(&self, kind: vfio::IrqKind) -> Result<(), IrqError> {
            self.calls.lock().push((kind, None));
            Ok(())
        }
    }

    fn msg(data: u32) -> Option<MsiMessage> {
        Some(MsiMessage {
            addr: 0xfee0_0000,
            data,
        })
    }

    fn route(kind: IrqKind, vector: u16, message: Option<MsiMessage>) -> IrqUpdate {
        IrqUpdate::Route {
            kind,
            vector,
            message,
        }
    }

    fn sink(refuse: bool) -> (VfioIrqSink, Arc<FakeKvm>, Arc<FakeDevice>) {
        let kvm = Arc::new(FakeKvm::default());
        let dev = Arc::new(FakeDevice {
            refuse,
            ..Default::default()
        });
        let s = VfioIrqSink::new(
            "dev".into(),
            dev.clone(),
            Arc::new(GsiRouting::new(kvm.clone())),
        );
        (s, kvm, dev)
    }

    fn msi_routes(kvm: &FakeKvm) -> Vec<Route> {
        kvm.tables
            .lock()
            .last()
            .map(|t| {
                t.iter()
                    .filter(|r| matches!(r, Route::Msi { .. }))
                    .copied()
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn enable_route_mask_unmask_disable() {
        let (mut s, kvm, dev) = sink(false);
        let k = IrqKind::Msix;
        s.apply(vec![IrqUpdate::Enable {
            kind: k,
            vectors: 3,
        }]);
        assert_eq!(dev.calls.lock().as_slice(), &[(host(k), Some(3))]);
        s.apply(vec![route(k, 1, msg(0x41))]);
        assert_eq!(
            msi_routes(&kvm),
            [Route::Msi {
                gsi: 25,
                message: msg(0x41).unwrap()
            }]
        );
        assert_eq!(kvm.irqfds.lock().as_slice(), &[(25, true)]);
        // Masking drops the irqfd (events stay counted); unmasking brings it back.
        s.apply(vec![route(k, 1, None)]);
        s.apply(vec![route(k, 1, msg(0x41))]);
        // Reprogramming a live vector only changes its route.
        s.apply(vec![route(k, 1, msg(0x42))]);
        assert_eq!(
            kvm.irqfds.lock().as_slice(),
            &[(25, true), (25, false), (25, true)]
        );
        s.apply(vec![IrqUpdate::Disable { kind: k }]);
        assert_eq!(kvm.irqfds.lock().last(), Some(&(25, false)));
        assert!(msi_routes(&kvm).is_empty());
        assert_eq!(dev.calls.lock().last(), Some(&(host(k), None)));
        // GSIs came back: a new enable starts from 24 again.
        s.apply(vec![
            IrqUpdate::Enable {
                kind: IrqKind::Msi,
                vectors: 1,
            },
            route(IrqKind::Msi, 0, msg(0x50)),
        ]);
        assert_eq!(
            msi_routes(&kvm),
            [Route::Msi {
                gsi: 24,
                message: msg(0x50).unwrap()
            }]
        );
    }

    #[test]
    fn shutdown_undoes_whatever_the_guest_left_enabled() {
        let (mut s, kvm, dev) = sink(false);
        s.apply(vec![
            IrqUpdate::Enable {
                kind: IrqKind::Msix,
                vectors: 2,
            },
            route(IrqKind::Msix, 0, msg(1)),
            route(IrqKind::Msix, 1, msg(2)),
        ]);
        s.shutdown();
        assert!(s.active.is_empty());
        assert!(msi_routes(&kvm).is_empty());
        let fds = kvm.irqfds.lock().clone();
        assert_eq!(fds.iter().filter(|(_, on)| *on).count(), 2);
        assert_eq!(fds.iter().filter(|(_, on)| !*on).count(), 2);
        assert_eq!(dev.calls.lock().last(), Some(&(vfio::IrqKind::Msix, None)));
        assert_eq!(s.routing.allocate().unwrap(), 24, "GSIs back");
        s.shutdown();
    }

    #[test]
    fn a_refused_enable_leaves_nothing_behind() {
        let (mut s, kvm, _) = sink(true);
        s.apply(vec![
            IrqUpdate::Enable {
                kind: IrqKind::Msix,
                vectors: 2,
            },
            route(IrqKind::Msix, 0, msg(1)),
        ]);
        assert!(s.active.is_empty());
        assert!(kvm.irqfds.lock().is_empty());
        assert!(msi_routes(&kvm).is_empty());
        assert_eq!(s.routing.allocate().unwrap(), 24, "GSIs were released");
    }

    #[test]
    fn an_enable_that_would_leave_too_few_descriptors_is_refused() {
        struct Free(u64);
        impl FdBudget for Free {
            fn free(&self) -> std::io::Result<u64> {
                Ok(self.0)
            }
        }
        let (s, kvm, dev) = sink(false);
        let mut s = s.with_fd_budget(Arc::new(Free(crate::fd_limit::SPARE + 1)));
        s.apply(vec![IrqUpdate::Enable {
            kind: IrqKind::Msix,
            vectors: 2,
        }]);
        assert!(s.active.is_empty(), "nothing enabled");
        assert!(dev.calls.lock().is_empty(), "VFIO was not asked");
        assert!(kvm.irqfds.lock().is_empty());
        assert_eq!(s.routing.allocate().unwrap(), 24, "no GSI taken");
        // One vector fits.
        s.apply(vec![IrqUpdate::Enable {
            kind: IrqKind::Msix,
            vectors: 1,
        }]);
        assert_eq!(s.active[&IrqKind::Msix].len(), 1);
    }

    #[test]
    fn updates_for_vectors_that_do_not_exist_are_ignored() {
        let (mut s, kvm, _) = sink(false);
        s.apply(vec![route(IrqKind::Msix, 0, msg(1))]);
        s.apply(vec![IrqUpdate::Enable {
            kind: IrqKind::Msix,
            vectors: 1,
        }]);
        s.apply(vec![route(IrqKind::Msix, 7, msg(1))]);
        s.apply(vec![IrqUpdate::Disable { kind: IrqKind::Msi }]);
        assert!(kvm.irqfds.lock().is_empty());
        // Enabling twice re-creates the vectors instead of leaking the first set.
        s.apply(vec![IrqUpdate::Enable {
            kind: IrqKind::Msix,
            vectors: 1,
        }]);
        assert_eq!(s.active[&IrqKind::Msix][0].gsi, 24);
    }
}
