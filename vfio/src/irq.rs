//! The device's side of its interrupts: VFIO_DEVICE_SET_IRQS gives VFIO one eventfd per
//! MSI/MSI-X vector (or for the request interrupt), which it signals when the device fires.
//! Whatever waits on the eventfds (KVM irqfds for the guest's vectors, `request` for the
//! request interrupt) is up to the caller.

use vfio_bindings::bindings::vfio::{
    VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_MSI_IRQ_INDEX, VFIO_PCI_REQ_IRQ_INDEX,
};
use vfio_ioctls::VfioError;
use vmm_sys_util::eventfd::EventFd;

use crate::device::Device;

/// The interrupts whose vectors are handed to VFIO (INTx is not offered).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IrqKind {
    Msi,
    Msix,
}

/// Why VFIO did not take (or give back) an interrupt's eventfds.
#[derive(Debug, thiserror::Error)]
pub enum IrqError {
    /// VFIO_DEVICE_SET_IRQS failed; vfio-ioctls does not keep the errno. Callers say which
    /// ioctl and interrupt in their own message.
    #[error(transparent)]
    SetIrqs(#[from] VfioError),
    #[error("the device has no request interrupt")]
    NoRequestIrq,
}

/// What an interrupt sink and the request watcher (`request`) need from the VFIO device (a
/// fake in unit tests).
pub trait DeviceIrqs: Send + Sync {
    fn enable(&self, kind: IrqKind, fds: &[&EventFd]) -> Result<(), IrqError>;
    fn disable(&self, kind: IrqKind) -> Result<(), IrqError>;
    /// Whether the device has VFIO's request interrupt (VFIO_PCI_REQ_IRQ_INDEX with a count
    /// of at least 1): the kernel signals it when the host wants the device back.
    fn has_request_irq(&self) -> bool {
        false
    }
    /// Gives the request interrupt `fd`.
    fn enable_request(&self, _fd: &EventFd) -> Result<(), IrqError> {
        Err(IrqError::NoRequestIrq)
    }
    /// Takes the request interrupt's eventfd back.
    fn disable_request(&self) -> Result<(), IrqError> {
        Ok(())
    }
}

fn index(kind: IrqKind) -> u32 {
    match kind {
        IrqKind::Msi => VFIO_PCI_MSI_IRQ_INDEX,
        IrqKind::Msix => VFIO_PCI_MSIX_IRQ_INDEX,
    }
}

impl DeviceIrqs for Device {
    fn enable(&self, kind: IrqKind, fds: &[&EventFd]) -> Result<(), IrqError> {
        // vfio-ioctls programs vectors 0..n in one VFIO_DEVICE_SET_IRQS, which is all ghvmm
        // needs: masking is done at the irqfd, not at the device.
        Ok(self.enable_irq(index(kind), fds.to_vec())?)
    }
    fn disable(&self, kind: IrqKind) -> Result<(), IrqError> {
        Ok(self.disable_irq(index(kind))?)
    }
    fn has_request_irq(&self) -> bool {
        // vfio-ioctls asked VFIO_DEVICE_GET_IRQ_INFO for every index when it opened the device.
        self.get_irq_info(VFIO_PCI_REQ_IRQ_INDEX)
            .is_some_and(|irq| irq.count >= 1)
    }
    fn enable_request(&self, fd: &EventFd) -> Result<(), IrqError> {
        Ok(self.enable_irq(VFIO_PCI_REQ_IRQ_INDEX, vec![fd])?)
    }
    fn disable_request(&self) -> Result<(), IrqError> {
        Ok(self.disable_irq(VFIO_PCI_REQ_IRQ_INDEX)?)
    }
}
