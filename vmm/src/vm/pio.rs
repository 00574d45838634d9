//! Port I/O exits. A string instruction (`rep insb/insw/insl`, `rep outs*`) exits once with
//! `count` elements of `size` bytes in KVM's data area, all for the same port; kvm-ioctls hands
//! them over as one slice and drops `size`. Each element is a separate access to the port, as
//! the CPU would make it: as one wide access, a guest's `rep outsb` to COM1 would print its
//! first byte only, and a `rep insb` would read the port once.

use devices::Bus;
use kvm_bindings::{kvm_run, KVM_EXIT_IO};
use kvm_ioctls::VcpuFd;

/// Which way the data of a port exit goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    In,
    Out,
}

/// The element size and the data area of the exit KVM_RUN just returned, which must be a
/// KVM_EXIT_IO; `(1, [])` otherwise.
pub fn exit_data(fd: &mut VcpuFd) -> (usize, &mut [u8]) {
    let run = fd.get_kvm_run();
    if run.exit_reason != KVM_EXIT_IO {
        return (1, &mut []);
    }
    // SAFETY: the exit reason says the kernel filled the `io` member of the union.
    let io = unsafe { run.__bindgen_anon_1.io };
    let len = usize::from(io.size) * io.count as usize;
    let base = (run as *mut kvm_run).cast::<u8>();
    // SAFETY: the kernel puts the data `data_offset` bytes into the kvm_run mapping, which
    // `fd` keeps mapped (the vCPU mmap size covers the data page); the slice borrows `fd`, so
    // it cannot outlive the mapping. kvm-ioctls builds the same slice for this exit.
    let data = unsafe { std::slice::from_raw_parts_mut(base.add(io.data_offset as usize), len) };
    (usize::from(io.size), data)
}

/// Dispatches `data`, `size`-byte elements for port `port`, one element at a time. A port
/// no device owns reads as all ones and ignores writes.
pub fn dispatch(bus: &Bus, port: u16, size: usize, data: &mut [u8], direction: Direction) {
    // A zero size never comes from KVM; one access of the whole slice is the safe reading.
    let size = if size == 0 { data.len().max(1) } else { size };
    for element in data.chunks_mut(size) {
        match direction {
            Direction::In => {
                if bus.read(u64::from(port), element).is_err() {
                    devices::log_limited_here!(
                        log::Level::Debug,
                        "unhandled port read {port:#x} ({} bytes)",
                        element.len()
                    );
                    element.fill(0xff);
                }
            }
            Direction::Out => {
                if bus.write(u64::from(port), element).is_err() {
                    devices::log_limited_here!(
                        log::Level::Debug,
                        "unhandled port write {port:#x} {element:x?}"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use devices::BusDevice;
    use parking_lot::Mutex;

    use super::*;

    /// Records each access (offset, bytes); reads answer a counter.
    #[derive(Default)]
    struct Port {
        writes: Vec<Vec<u8>>,
        reads: u8,
    }

    impl BusDevice for Port {
        fn read(&mut self, _: u64, _: u64, data: &mut [u8]) {
            self.reads += 1;
            data.fill(self.reads);
        }
        fn write(&mut self, _: u64, _: u64, data: &[u8]) {
            self.writes.push(data.to_vec());
        }
    }

    fn bus() -> (Bus, Arc<Mutex<Port>>) {
        let bus = Bus::new();
        let port = Arc::new(Mutex::new(Port::default()));
        bus.insert(port.clone(), 0x3f8, 8).unwrap();
        (bus, port)
    }

    #[test]
    fn rep_outsb_is_one_write_per_byte() {
        let (bus, port) = bus();
        let mut data = *b"hello";
        dispatch(&bus, 0x3f8, 1, &mut data, Direction::Out);
        let writes = port.lock().writes.clone();
        assert_eq!(writes, [b"h", b"e", b"l", b"l", b"o"].map(|b| b.to_vec()));
    }

    #[test]
    fn rep_insw_reads_the_port_once_per_element() {
        let (bus, port) = bus();
        let mut data = [0u8; 6];
        dispatch(&bus, 0x3f8, 2, &mut data, Direction::In);
        assert_eq!(data, [1, 1, 2, 2, 3, 3]);
        assert_eq!(port.lock().reads, 3);
    }

    #[test]
    fn a_single_access_and_an_unowned_port() {
        let (bus, port) = bus();
        let mut word = [0x12, 0x34, 0x56, 0x78];
        dispatch(&bus, 0x3f8, 4, &mut word, Direction::Out);
        assert_eq!(port.lock().writes, [vec![0x12, 0x34, 0x56, 0x78]]);
        let mut nobody = [0u8; 3];
        dispatch(&bus, 0x80, 1, &mut nobody, Direction::In);
        assert_eq!(nobody, [0xff; 3]);
        dispatch(&bus, 0x80, 0, &mut [], Direction::Out);
    }
}
