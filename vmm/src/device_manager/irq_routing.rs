//! The VM's KVM GSI routing table, and irqfds on top of it.
//!
//! KVM_SET_GSI_ROUTING replaces the whole table, including the default routes KVM installed
//! with the in-kernel irqchip (GSI 0-23 to the IOAPIC, 0-15 also to the PICs). So ghvmm keeps
//! the table itself: the default routes, rebuilt exactly, plus one MSI route per GSI handed
//! out to a device vector (from 24 up). Every change commits the whole table.
//!
//! KVM sits behind `KvmIrqOps` so the bookkeeping is unit-tested without a VM.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use pci::vfio::MsiMessage;
use vmm_sys_util::eventfd::EventFd;

/// IOAPIC pins, i.e. GSIs with a default irqchip route.
pub const IOAPIC_PINS: u32 = 24;
/// KVM's limit on routes (and so on GSI numbers) on x86.
pub const MAX_GSI: u32 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    #[error("no free GSI left for an MSI route (KVM allows {MAX_GSI})")]
    Exhausted,
    #[error("GSI {0} was never allocated")]
    Unknown(u32),
    #[error("KVM_SET_GSI_ROUTING: {0}")]
    SetRouting(kvm_ioctls::Error),
    #[error("KVM_IRQFD for GSI {gsi}: {error}")]
    Irqfd { gsi: u32, error: kvm_ioctls::Error },
}

type Result<T> = std::result::Result<T, RoutingError>;

/// One route in ghvmm's own terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Irqchip { gsi: u32, chip: u32, pin: u32 },
    Msi { gsi: u32, message: MsiMessage },
}

impl Route {
    fn to_kvm(self) -> kvm_irq_routing_entry {
        let mut e = kvm_irq_routing_entry::default();
        match self {
            Route::Irqchip { gsi, chip, pin } => {
                e.gsi = gsi;
                e.type_ = KVM_IRQ_ROUTING_IRQCHIP;
                e.u.irqchip.irqchip = chip;
                e.u.irqchip.pin = pin;
            }
            Route::Msi { gsi, message } => {
                e.gsi = gsi;
                e.type_ = KVM_IRQ_ROUTING_MSI;
                e.u.msi.address_lo = message.addr as u32;
                e.u.msi.address_hi = (message.addr >> 32) as u32;
                e.u.msi.data = message.data;
            }
        }
        e
    }
}

/// The routes KVM installs by default with an in-kernel PIC + IOAPIC, plus `msi`.
pub fn table(msi: &BTreeMap<u32, Option<MsiMessage>>) -> Vec<Route> {
    let mut v = Vec::new();
    for gsi in 0..IOAPIC_PINS {
        if gsi < 8 {
            v.push(Route::Irqchip {
                gsi,
                chip: KVM_IRQCHIP_PIC_MASTER,
                pin: gsi,
            });
        } else if gsi < 16 {
            v.push(Route::Irqchip {
                gsi,
                chip: KVM_IRQCHIP_PIC_SLAVE,
                pin: gsi - 8,
            });
        }
        v.push(Route::Irqchip {
            gsi,
            chip: KVM_IRQCHIP_IOAPIC,
            pin: gsi,
        });
    }
    for (&gsi, m) in msi {
        if let Some(message) = *m {
            v.push(Route::Msi { gsi, message });
        }
    }
    v
}

/// What ghvmm needs from KVM for interrupt routing.
pub trait KvmIrqOps: Send + Sync {
    fn set_routes(&self, routes: &[Route]) -> std::result::Result<(), kvm_ioctls::Error>;
    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> std::result::Result<(), kvm_ioctls::Error>;
    fn unregister_irqfd(
        &self,
        fd: &EventFd,
        gsi: u32,
    ) -> std::result::Result<(), kvm_ioctls::Error>;
}

impl KvmIrqOps for VmFd {
    fn set_routes(&self, routes: &[Route]) -> std::result::Result<(), kvm_ioctls::Error> {
        let entries: Vec<kvm_irq_routing_entry> = routes.iter().map(|r| r.to_kvm()).collect();
        let table = KvmIrqRouting::from_entries(&entries)
            .map_err(|_| kvm_ioctls::Error::new(libc::E2BIG))?;
        self.set_gsi_routing(&table)
    }
    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> std::result::Result<(), kvm_ioctls::Error> {
        VmFd::register_irqfd(self, fd, gsi)
    }
    fn unregister_irqfd(
        &self,
        fd: &EventFd,
        gsi: u32,
    ) -> std::result::Result<(), kvm_ioctls::Error> {
        VmFd::unregister_irqfd(self, fd, gsi)
    }
}

/// The VM's routing table: GSIs handed out to device vectors and where they point.
pub struct GsiRouting {
    kvm: Arc<dyn KvmIrqOps>,
    /// Allocated GSIs and their route (None: allocated, routed nowhere).
    msi: Mutex<BTreeMap<u32, Option<MsiMessage>>>,
}

impl GsiRouting {
    pub fn new(kvm: Arc<dyn KvmIrqOps>) -> Self {
        GsiRouting {
            kvm,
            msi: Mutex::new(BTreeMap::new()),
        }
    }

    fn routes(&self) -> parking_lot::MutexGuard<'_, BTreeMap<u32, Option<MsiMessage>>> {
        self.msi.lock()
    }

    /// A free GSI above the IOAPIC's, not routed yet.
    pub fn allocate(&self) -> Result<u32> {
        let mut msi = self.routes();
        let gsi = (IOAPIC_PINS..MAX_GSI)
            .find(|g| !msi.contains_key(g))
            .ok_or(RoutingError::Exhausted)?;
        msi.insert(gsi, None);
        Ok(gsi)
    }

    /// Points `gsi` at `message` (or nowhere) and commits the table.
    pub fn set(&self, gsi: u32, message: Option<MsiMessage>) -> Result<()> {
        let mut msi = self.routes();
        let slot = msi.get_mut(&gsi).ok_or(RoutingError::Unknown(gsi))?;
        if *slot == message {
            return Ok(());
        }
        let before = *slot;
        *slot = message;
        let result = self.kvm.set_routes(&table(&msi));
        if result.is_err() {
            // Keep the bookkeeping equal to what KVM has.
            if let Some(s) = msi.get_mut(&gsi) {
                *s = before;
            }
        }
        result.map_err(RoutingError::SetRouting)
    }

    /// Gives `gsi` back; its route (if any) is removed from the table.
    pub fn release(&self, gsi: u32) -> Result<()> {
        let mut msi = self.routes();
        let was = msi.remove(&gsi).ok_or(RoutingError::Unknown(gsi))?;
        if was.is_some() {
            self.kvm
                .set_routes(&table(&msi))
                .map_err(RoutingError::SetRouting)?;
        }
        Ok(())
    }

    pub fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<()> {
        self.kvm
            .register_irqfd(fd, gsi)
            .map_err(|error| RoutingError::Irqfd { gsi, error })
    }

    pub fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<()> {
        self.kvm
            .unregister_irqfd(fd, gsi)
            .map_err(|error| RoutingError::Irqfd { gsi, error })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Records what KVM was told; fails `set_routes` on demand.
    #[derive(Default)]
    pub struct FakeKvm {
        pub tables: Mutex<Vec<Vec<Route>>>,
        pub irqfds: Mutex<Vec<(u32, bool)>>,
        pub fail_routes: std::sync::atomic::AtomicBool,
    }

    impl KvmIrqOps for FakeKvm {
        fn set_routes(&self, routes: &[Route]) -> std::result::Result<(), kvm_ioctls::Error> {
            if self.fail_routes.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(kvm_ioctls::Error::new(libc::EINVAL));
            }
            self.tables.lock().push(routes.to_vec());
            Ok(())
        }
        fn register_irqfd(
            &self,
            _: &EventFd,
            gsi: u32,
        ) -> std::result::Result<(), kvm_ioctls::Error> {
            self.irqfds.lock().push((gsi, true));
            Ok(())
        }
        fn unregister_irqfd(
            &self,
            _: &EventFd,
            gsi: u32,
        ) -> std::result::Result<(), kvm_ioctls::Error> {
            self.irqfds.lock().push((gsi, false));
            Ok(())
        }
    }

    fn msg(data: u32) -> MsiMessage {
        MsiMessage {
            addr: 0xfee0_0000,
            data,
        }
    }

    #[test]
    fn default_table_matches_kvms() {
        let t = table(&BTreeMap::new());
        // 16 PIC routes + 24 IOAPIC routes.
        assert_eq!(t.len(), 40);
        assert!(t.contains(&Route::Irqchip {
            gsi: 4,
            chip: KVM_IRQCHIP_PIC_MASTER,
            pin: 4
        }));
        assert!(t.contains(&Route::Irqchip {
            gsi: 12,
            chip: KVM_IRQCHIP_PIC_SLAVE,
            pin: 4
        }));
        assert!(t.contains(&Route::Irqchip {
            gsi: 23,
            chip: KVM_IRQCHIP_IOAPIC,
            pin: 23
        }));
        let e = Route::Msi {
            gsi: 30,
            message: MsiMessage {
                addr: 0x1_fee0_1000,
                data: 0x41,
            },
        }
        .to_kvm();
        // SAFETY: reading the union member this entry was built with.
        let m = unsafe { e.u.msi };
        assert_eq!(
            (e.type_, m.address_lo, m.address_hi, m.data),
            (KVM_IRQ_ROUTING_MSI, 0xfee0_1000, 1, 0x41)
        );
    }

    #[test]
    fn allocate_route_release() {
        let kvm = Arc::new(FakeKvm::default());
        let r = GsiRouting::new(kvm.clone());
        let a = r.allocate().unwrap();
        let b = r.allocate().unwrap();
        assert_eq!((a, b), (24, 25));
        assert!(kvm.tables.lock().is_empty(), "nothing routed yet");
        r.set(b, Some(msg(0x42))).unwrap();
        r.set(b, Some(msg(0x42))).unwrap();
        assert_eq!(kvm.tables.lock().len(), 1, "no-op changes commit nothing");
        let last = kvm.tables.lock().last().unwrap().clone();
        assert_eq!(
            last.last(),
            Some(&Route::Msi {
                gsi: 25,
                message: msg(0x42)
            })
        );
        assert_eq!(last.len(), 41, "defaults kept");
        r.release(a).unwrap();
        assert_eq!(kvm.tables.lock().len(), 1, "unrouted GSI: no commit");
        assert_eq!(r.allocate().unwrap(), 24, "freed GSIs are reused");
        r.release(b).unwrap();
        assert_eq!(kvm.tables.lock().last().unwrap().len(), 40);
        assert!(matches!(r.set(99, None), Err(RoutingError::Unknown(99))));
        assert!(matches!(r.release(99), Err(RoutingError::Unknown(99))));
    }

    #[test]
    fn a_refused_table_leaves_the_bookkeeping_as_kvm_has_it() {
        let kvm = Arc::new(FakeKvm::default());
        let r = GsiRouting::new(kvm.clone());
        let g = r.allocate().unwrap();
        kvm.fail_routes
            .store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(r.set(g, Some(msg(1))).is_err());
        kvm.fail_routes
            .store(false, std::sync::atomic::Ordering::SeqCst);
        r.set(g, Some(msg(1))).unwrap();
        assert_eq!(kvm.tables.lock().len(), 1, "retried, not skipped");
    }

    #[test]
    fn gsis_run_out_cleanly() {
        let r = GsiRouting::new(Arc::new(FakeKvm::default()));
        for _ in IOAPIC_PINS..MAX_GSI {
            r.allocate().unwrap();
        }
        assert!(matches!(r.allocate(), Err(RoutingError::Exhausted)));
    }
}
