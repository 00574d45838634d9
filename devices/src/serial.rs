//! COM1: vm-superio's 8250 UART model on the port bus, interrupting through an irqfd.

use std::io::Write;

use vm_superio::serial::NoEvents;
use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

use crate::BusDevice;

/// vm-superio's interrupt hook, implemented by writing the irqfd KVM listens on.
pub struct IrqFdTrigger(EventFd);

impl Trigger for IrqFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// COM1. The guest's output goes to `out` byte by byte as the UART transmits it; vm-superio
/// flushes `out` after every byte, so a console reader sees prompts and partial lines live.
/// `out` is written by a vCPU under this device's lock, so it must not block: ghvmm gives it
/// a bounded queue that a thread of its own writes out (vmm's `console_out`).
pub struct Serial {
    uart: vm_superio::Serial<IrqFdTrigger, NoEvents, Box<dyn Write + Send>>,
}

impl Serial {
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> Self {
        Serial {
            uart: vm_superio::Serial::new(IrqFdTrigger(irq), out),
        }
    }

    /// Queues guest input; bytes that do not fit in the receive FIFO are dropped (the guest
    /// is not reading fast enough, and blocking here would block the input thread forever).
    pub fn enqueue_input(&mut self, bytes: &[u8]) {
        let room = self.uart.fifo_capacity();
        let take = bytes.len().min(room);
        if take < bytes.len() {
            // A guest that never reads its input makes this line at every key press.
            crate::log_limited_here!(
                log::Level::Debug,
                "serial: receive FIFO full, dropped {} bytes",
                bytes.len() - take
            );
        }
        if take > 0 {
            if let Err(e) = self.uart.enqueue_raw_bytes(&bytes[..take]) {
                log::debug!("serial: cannot queue input: {e:?}");
            }
        }
    }

    pub fn flush(&mut self) {
        let _ = self.uart.writer_mut().flush();
    }
}

impl BusDevice for Serial {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Ok(off), Some(first)) = (u8::try_from(offset), data.first_mut()) {
            if off < 8 {
                *first = self.uart.read(off);
            }
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if let (Ok(off), Some(&v)) = (u8::try_from(offset), data.first()) {
            if off < 8 {
                if let Err(e) = self.uart.write(off, v) {
                    crate::log_limited_here!(
                        log::Level::Debug,
                        "serial: write to offset {off}: {e:?}"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use parking_lot::Mutex;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    /// Records the bytes written and, at each flush, how many bytes had been written by then.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>, Arc<Mutex<Vec<usize>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            let n = self.0.lock().len();
            self.1.lock().push(n);
            Ok(())
        }
    }

    struct Broken;

    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
    }

    const IER: u64 = 1;
    const LSR: u64 = 5;

    #[test]
    fn transmits_and_interrupts() {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let sink = Sink::default();
        let mut s = Serial::new(irq.try_clone().unwrap(), Box::new(sink.clone()));
        s.write(0x3f8, IER, &[0x02]); // transmitter-empty interrupt
        s.write(0x3f8, 0, b"h");
        s.write(0x3f8, 0, b"i");
        assert_eq!(*sink.0.lock(), b"hi");
        assert_eq!(*sink.1.lock(), vec![1, 2], "flushed after every byte");
        assert!(irq.read().unwrap() >= 1);
    }

    #[test]
    fn wide_writes_transmit_only_the_first_byte() {
        let sink = Sink::default();
        let mut s = Serial::new(EventFd::new(EFD_NONBLOCK).unwrap(), Box::new(sink.clone()));
        s.write(0x3f8, 0, b"abcd");
        assert_eq!(*sink.0.lock(), b"a");
    }

    #[test]
    fn a_broken_output_does_not_stop_the_uart() {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut s = Serial::new(irq.try_clone().unwrap(), Box::new(Broken));
        s.write(0x3f8, IER, &[0x02]);
        s.write(0x3f8, 0, b"x");
        s.flush();
        let mut lsr = [0u8];
        s.read(0x3f8, LSR, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0, "transmitter still reports empty");
    }

    #[test]
    fn input_is_queued_and_read_back() {
        let mut s = Serial::new(
            EventFd::new(EFD_NONBLOCK).unwrap(),
            Box::new(Sink::default()),
        );
        s.enqueue_input(b"ab");
        let mut lsr = [0u8];
        s.read(0x3f8, LSR, &mut lsr);
        assert_eq!(lsr[0] & 1, 1, "data ready");
        let mut b = [0u8; 4];
        s.read(0x3f8, 0, &mut b);
        assert_eq!(b, [b'a', 0, 0, 0]);
    }

    #[test]
    fn overflow_and_hostile_accesses_do_not_panic() {
        let mut s = Serial::new(
            EventFd::new(EFD_NONBLOCK).unwrap(),
            Box::new(Sink::default()),
        );
        s.enqueue_input(&[b'x'; 10_000]);
        s.enqueue_input(b"more");
        s.enqueue_input(&[]);
        let mut rbr = [0u8];
        s.read(0x3f8, 0, &mut rbr);
        assert_eq!(rbr, [b'x'], "the FIFO kept the first bytes");
        let mut b = [0u8; 8];
        s.read(0x3f8, 8, &mut b);
        s.read(0x3f8, u64::MAX, &mut b);
        s.read(0x3f8, 0, &mut []);
        s.write(0x3f8, 1000, &[1]);
        s.write(0x3f8, 0, &[]);
    }
}
