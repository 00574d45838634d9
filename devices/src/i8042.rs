//! Just enough of the PC keyboard controller for its reset line: a guest that writes the
//! "pulse reset" command 0xFE to port 0x64 asks for a reset. The FADT says there is no 8042,
//! so Linux does not probe it; this is the fallback reboot path other kernels use.

use crate::{BusDevice, ExitCallback, VmExitRequest};

/// Offset of the command/status port (0x64) from the data port (0x60).
const COMMAND: u64 = 4;
const CMD_PULSE_RESET: u8 = 0xfe;

pub struct I8042 {
    on_exit: ExitCallback,
}

impl I8042 {
    pub fn new(on_exit: ExitCallback) -> Self {
        I8042 { on_exit }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        // Status 0: output buffer empty, input buffer empty; data reads 0.
        data.fill(0);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if offset == COMMAND && data.first() == Some(&CMD_PULSE_RESET) {
            (self.on_exit)(VmExitRequest::Reset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use parking_lot::Mutex;

    #[test]
    fn only_pulse_reset_on_the_command_port_resets() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let mut d = I8042::new(Box::new(move |r| s.lock().push(r)));
        d.write(0x60, 0, &[0xfe]);
        d.write(0x60, 4, &[0xd1]);
        d.write(0x60, 4, &[]);
        assert!(seen.lock().is_empty());
        d.write(0x60, 4, &[0xfe]);
        assert_eq!(*seen.lock(), vec![VmExitRequest::Reset]);
        let mut b = [0xffu8; 1];
        d.read(0x60, 4, &mut b);
        assert_eq!(b, [0]);
    }
}
