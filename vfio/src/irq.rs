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
    /// The same request sent to a vfio-user server, which could not be reached.
    #[error("vfio-user server: {0}")]
    Server(String),
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

// vfio-ioctls' `enable_irq` always starts at vector 0 and takes `EventFd`s; a vfio-user
// client sends VFIO_DEVICE_SET_IRQS's own arguments (any start, count and action, plain fds),
// which must reach the device unchanged.
vmm_sys_util::ioctl_io_nr!(
    VFIO_DEVICE_SET_IRQS,
    vfio_bindings::bindings::vfio::VFIO_TYPE.into(),
    vfio_bindings::bindings::vfio::VFIO_BASE + 10
);

/// `struct vfio_irq_set` without its data: argsz, flags, index, start, count.
const IRQ_SET_WORDS: usize = 5;

impl Device {
    /// VFIO_DEVICE_SET_IRQS exactly as given: `fds` is the data for
    /// VFIO_IRQ_SET_DATA_EVENTFD (one per vector, -1 for "none"), and must be empty
    /// otherwise. VFIO_IRQ_SET_DATA_BOOL is refused (no caller sends it). The kernel checks
    /// index, start and count against the device.
    pub fn set_irqs(
        &self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let raw: Vec<i32> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
        let buf = irq_set(index, flags, start, count, &raw)?;
        // SAFETY: `buf` is a complete `struct vfio_irq_set` (argsz covers the header and one
        // u32 per fd that follows it) that lives across the call; the kernel only reads it,
        // and the fds are borrowed for the call's duration.
        let r = unsafe {
            vmm_sys_util::ioctl::ioctl_with_ptr(self, VFIO_DEVICE_SET_IRQS(), buf.as_ptr())
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// (flags, count) of interrupt `index` as VFIO_DEVICE_GET_IRQ_INFO reported it when the
    /// device was opened; None when the device has no such index.
    pub fn irq_info(&self, index: u32) -> Option<(u32, u32)> {
        self.get_irq_info(index).map(|i| (i.flags, i.count))
    }
}

/// The words of a `struct vfio_irq_set` carrying `fds`, or EINVAL when the data type in
/// `flags` does not match them (eventfds: exactly `count`; none: no fd; bool: refused).
fn irq_set(
    index: u32,
    flags: u32,
    start: u32,
    count: u32,
    fds: &[i32],
) -> std::io::Result<Vec<u32>> {
    use vfio_bindings::bindings::vfio::{
        VFIO_IRQ_SET_DATA_BOOL, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE,
    };
    let invalid = || std::io::Error::from_raw_os_error(libc::EINVAL);
    let data =
        flags & (VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_DATA_EVENTFD);
    let fits = match data {
        VFIO_IRQ_SET_DATA_NONE => fds.is_empty(),
        VFIO_IRQ_SET_DATA_EVENTFD => usize::try_from(count).is_ok_and(|c| c == fds.len()),
        _ => false,
    };
    if !fits {
        return Err(invalid());
    }
    let mut buf = vec![0u32; IRQ_SET_WORDS + fds.len()];
    let argsz = u32::try_from(buf.len() * 4).map_err(|_| invalid())?;
    buf[..IRQ_SET_WORDS].copy_from_slice(&[argsz, flags, index, start, count]);
    for (slot, fd) in buf[IRQ_SET_WORDS..].iter_mut().zip(fds) {
        *slot = *fd as u32;
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vfio_bindings::bindings::vfio::{
        VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_BOOL, VFIO_IRQ_SET_DATA_EVENTFD,
        VFIO_IRQ_SET_DATA_NONE,
    };

    const EVENTFDS: u32 = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;

    #[test]
    fn an_irq_set_carries_start_count_and_every_fd() {
        let buf = irq_set(2, EVENTFDS, 3, 2, &[7, -1]).unwrap();
        assert_eq!(buf, vec![28, EVENTFDS, 2, 3, 2, 7, u32::MAX]);
        let off = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER;
        assert_eq!(irq_set(1, off, 0, 0, &[]).unwrap(), vec![20, off, 1, 0, 0]);
    }

    #[test]
    fn fds_that_do_not_match_the_data_type_are_refused() {
        let einval =
            |r: std::io::Result<Vec<u32>>| r.unwrap_err().raw_os_error() == Some(libc::EINVAL);
        assert!(einval(irq_set(2, EVENTFDS, 0, 2, &[7])));
        assert!(einval(irq_set(2, EVENTFDS, 0, u32::MAX, &[7])));
        assert!(einval(irq_set(2, VFIO_IRQ_SET_DATA_NONE, 0, 1, &[7])));
        assert!(einval(irq_set(2, VFIO_IRQ_SET_DATA_BOOL, 0, 1, &[])));
        assert!(einval(irq_set(
            2,
            EVENTFDS | VFIO_IRQ_SET_DATA_NONE,
            0,
            0,
            &[]
        )));
    }
}
