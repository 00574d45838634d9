//! One thread per vCPU: `KVM_RUN` and dispatch of trapped port I/O (element by element, `pio`)
//! and MMIO to the buses.
//! Interrupts never come through here: devices signal irqfds straight into KVM.

use std::sync::Arc;
use std::thread::JoinHandle;

use devices::Bus;
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::vm::exit::{ExitReason, ExitState};
use crate::vm::pio;

pub struct VcpuContext {
    pub index: u8,
    pub fd: VcpuFd,
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub exit: Arc<ExitState>,
    pub pause: Arc<crate::vm::pause::VcpuPause>,
}

const KVM_SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const KVM_SYSTEM_EVENT_RESET: u32 = 2;

pub fn spawn(mut ctx: VcpuContext) -> std::io::Result<JoinHandle<()>> {
    let (name, exit) = (format!("vcpu{}", ctx.index), ctx.exit.clone());
    crate::vm::threads::spawn_guarded(&name, exit, move || {
        if !crate::seccomp::enter_or_end(crate::seccomp::ThreadKind::Vcpu, &ctx.exit) {
            return;
        }
        if let Err(reason) = run(&mut ctx) {
            ctx.exit.request(reason);
        }
    })
}

/// Runs until the VM must stop; returns why (unless another thread already decided).
fn run(ctx: &mut VcpuContext) -> Result<(), ExitReason> {
    let index = ctx.index;
    let fault = |what: String| ExitReason::Fault(format!("vCPU {index}: {what}"));
    let mut dumps_seen = 0;
    loop {
        // A kick (`vm.pause`) ends KVM_RUN with EINTR and brings the thread back here.
        ctx.pause.park_while_paused();
        if ctx.exit.is_set() {
            return Ok(());
        }
        crate::vm::vcpu_dump::maybe_dump(index, &ctx.fd, &mut dumps_seen);
        // A port exit's element size is read after the match, once `run`'s borrow ends.
        let mut port_exit = None;
        match ctx.fd.run() {
            Ok(VcpuExit::IoIn(port, _)) => port_exit = Some((port, pio::Direction::In)),
            Ok(VcpuExit::IoOut(port, _)) => port_exit = Some((port, pio::Direction::Out)),
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if ctx.mmio.read(addr, data).is_err() {
                    devices::log_limited_here!(
                        log::Level::Debug,
                        "vCPU {index}: unhandled MMIO read {addr:#x} ({} bytes)",
                        data.len()
                    );
                    data.fill(0xff);
                }
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if ctx.mmio.write(addr, data).is_err() {
                    devices::log_limited_here!(
                        log::Level::Debug,
                        "vCPU {index}: unhandled MMIO write {addr:#x} {data:x?}"
                    );
                }
            }
            // With the in-kernel irqchip KVM handles HLT itself; a stray one is harmless.
            Ok(VcpuExit::Hlt) | Ok(VcpuExit::IrqWindowOpen) | Ok(VcpuExit::Intr) => {}
            Ok(VcpuExit::Shutdown) => {
                return Err(fault(
                    "triple fault (KVM_EXIT_SHUTDOWN); the guest kernel crashed or reset the CPU \
                     without using the ACPI reset register"
                        .into(),
                ))
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => return Err(ExitReason::PowerOff),
                KVM_SYSTEM_EVENT_RESET => return Err(ExitReason::Reset),
                other => return Err(fault(format!("unexpected system event {other}"))),
            },
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                return Err(fault(format!(
                    "VM entry failed (hardware reason {reason:#x}, host CPU {cpu})"
                )))
            }
            Ok(VcpuExit::InternalError) => {
                return Err(fault("KVM internal error (emulation failure)".into()))
            }
            Ok(other) => return Err(fault(format!("unexpected exit {other:?}"))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => return Err(fault(format!("KVM_RUN failed: {e}"))),
        }
        if let Some((port, direction)) = port_exit {
            let (size, data) = pio::exit_data(&mut ctx.fd);
            pio::dispatch(&ctx.pio, port, size, data, direction);
        }
    }
}
