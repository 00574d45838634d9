//! The hardware-reduced ACPI registers the FADT points at: sleep control (S5 = power off),
//! sleep status and the reset register. One byte each, at consecutive ports.

use crate::{BusDevice, ExitCallback, VmExitRequest};

pub const SLEEP_CONTROL: u64 = 0;
pub const SLEEP_STATUS: u64 = 1;
pub const RESET: u64 = 2;
pub const RESET_VALUE: u8 = 0x01;

const SLP_EN: u8 = 1 << 5;
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0x7;
/// The `\_S5_` package in the DSDT gives 5 as the S5 sleep type.
const S5_TYPE: u8 = 5;

pub struct AcpiPmDevice {
    on_exit: ExitCallback,
}

impl AcpiPmDevice {
    pub fn new(on_exit: ExitCallback) -> Self {
        AcpiPmDevice { on_exit }
    }
}

impl BusDevice for AcpiPmDevice {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        // Sleep status never reports a wake event; the other registers are write-only.
        data.fill(0);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        match offset {
            SLEEP_CONTROL if v & SLP_EN != 0 && (v >> SLP_TYP_SHIFT) & SLP_TYP_MASK == S5_TYPE => {
                (self.on_exit)(VmExitRequest::PowerOff)
            }
            RESET if v == RESET_VALUE => (self.on_exit)(VmExitRequest::Reset),
            _ => crate::log_limited_here!(
                log::Level::Debug,
                "ACPI PM: ignored write {v:#x} at offset {offset}"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use parking_lot::Mutex;

    fn device() -> (AcpiPmDevice, Arc<Mutex<Vec<VmExitRequest>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        (AcpiPmDevice::new(Box::new(move |r| s.lock().push(r))), seen)
    }

    #[test]
    fn s5_powers_off_and_reset_resets() {
        let (mut d, seen) = device();
        d.write(0x600, SLEEP_CONTROL, &[(5 << 2) | (1 << 5)]);
        d.write(0x600, RESET, &[RESET_VALUE]);
        assert_eq!(
            *seen.lock(),
            vec![VmExitRequest::PowerOff, VmExitRequest::Reset]
        );
    }

    #[test]
    fn other_values_are_ignored() {
        let (mut d, seen) = device();
        d.write(0x600, SLEEP_CONTROL, &[5 << 2]); // no SLP_EN
        d.write(0x600, SLEEP_CONTROL, &[(3 << 2) | (1 << 5)]); // S3
        d.write(0x600, RESET, &[0x06]);
        d.write(0x600, SLEEP_STATUS, &[0xff]);
        d.write(0x600, 77, &[0xff]);
        d.write(0x600, RESET, &[]);
        assert!(seen.lock().is_empty());
        let mut buf = [0xffu8; 4];
        d.read(0x600, SLEEP_STATUS, &mut buf);
        assert_eq!(buf, [0; 4]);
    }
}
