//! ACPI Generic Event Device (ACPI0013): one 32-bit event register (`acpi::ged::regs`, the
//! layout the DSDT declares). ghvmm sets event bits and pulses the GED's interrupt; the
//! DSDT's `_EVT` reads the register (which clears it) and notifies the objects whose bits were
//! set.

use acpi::ged::regs;
pub use acpi::ged::regs::{EVENT_PCI_HOTPLUG, EVENT_POWER_BUTTON};
use vmm_sys_util::eventfd::EventFd;

use crate::BusDevice;

// The pending events are a u32: the register the DSDT declares must be one.
const _: () = assert!(regs::WIDTH == std::mem::size_of::<u32>() as u64);

pub struct Ged {
    irq: EventFd,
    pending: u32,
}

impl Ged {
    pub fn new(irq: EventFd) -> Self {
        Ged { irq, pending: 0 }
    }

    /// Latches `events` and interrupts the guest.
    pub fn notify(&mut self, events: u32) -> std::io::Result<()> {
        self.pending |= events;
        self.irq.write(1)
    }

    pub fn pending(&self) -> u32 {
        self.pending
    }
}

impl BusDevice for Ged {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        data.fill(0);
        // The register is read-to-clear as a whole; a narrower or offset read sees its bytes
        // but does not clear, so AML can only consume events with the DWord field it declares.
        if let Some(at) = offset
            .checked_sub(regs::EVENTS)
            .filter(|at| *at < regs::WIDTH)
        {
            let bytes = self.pending.to_le_bytes();
            for (d, s) in data.iter_mut().zip(&bytes[at as usize..]) {
                *d = *s;
            }
            if at == 0 && data.len() as u64 >= regs::WIDTH {
                self.pending = 0;
            }
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        crate::log_limited_here!(
            log::Level::Debug,
            "GED: ignored write {data:x?} at offset {offset}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[test]
    fn notify_latches_and_interrupts_and_read_clears() {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut g = Ged::new(irq.try_clone().unwrap());
        g.notify(EVENT_POWER_BUTTON).unwrap();
        g.notify(EVENT_PCI_HOTPLUG).unwrap();
        assert_eq!(irq.read().unwrap(), 2);
        let mut b = [0u8; 1];
        g.read(0, 0, &mut b);
        assert_eq!(b, [3]);
        assert_eq!(g.pending(), 3, "a byte read does not clear");
        let mut d = [0u8; 4];
        g.read(0, 0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 3);
        g.read(0, 0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0);
    }

    #[test]
    fn hostile_offsets_and_widths() {
        let mut g = Ged::new(EventFd::new(EFD_NONBLOCK).unwrap());
        g.notify(0xdead_beef).unwrap();
        let mut b = [0xaau8; 8];
        g.read(0, 3, &mut b);
        assert_eq!(b, [0xde, 0, 0, 0, 0, 0, 0, 0]);
        g.read(0, 0xfff, &mut b);
        assert_eq!(b, [0; 8]);
        g.read(0, u64::MAX, &mut b);
        g.write(0, 0, &[1, 2, 3, 4]);
        g.read(0, 0, &mut []);
        assert_eq!(g.pending(), 0xdead_beef);
    }
}
