//! `kill -USR1 <ghvmm>` prints every vCPU's registers to stderr, one line each, and the guest
//! keeps running: a way to see where a hung guest is (the rig's L2 watchdog does it before it
//! kills a VMM that stopped making progress).
//!
//! SIGUSR1 is blocked in every ghvmm thread and taken by one thread with sigwait(2); that
//! thread kicks each vCPU thread out of KVM_RUN with a real-time signal whose handler does
//! nothing (KVM_RUN returns EINTR), and each vCPU thread, seeing a new dump generation,
//! reads its own registers (vCPU ioctls belong to the vCPU's thread).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::thread::JoinHandle;

use kvm_ioctls::VcpuFd;
use vmm_sys_util::signal::{block_signal, register_signal_handler, Killable, SIGRTMIN};

/// Bumped once per SIGUSR1.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// The signal that only interrupts KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn ignore(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Blocks SIGUSR1 in the calling thread (threads spawned later inherit the mask) and
/// installs the kick handler. Call before spawning any vCPU thread.
pub fn install() -> std::io::Result<()> {
    block_signal(libc::SIGUSR1).map_err(|e| std::io::Error::other(format!("{e:?}")))?;
    register_signal_handler(kick_signal(), ignore)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// The thread that waits for SIGUSR1 and kicks the vCPU threads.
pub fn spawn_listener(
    vcpus: Arc<Mutex<Vec<JoinHandle<()>>>>,
    exit: Arc<crate::vm::exit::ExitState>,
) -> std::io::Result<()> {
    crate::vm::threads::spawn_guarded("regdump", exit.clone(), move || {
        if crate::seccomp::enter_or_end(crate::seccomp::ThreadKind::RegDump, &exit) {
            listen(&vcpus)
        }
    })
    .map(|_| ())
}

fn listen(vcpus: &Mutex<Vec<JoinHandle<()>>>) {
    loop {
        // SAFETY: a zeroed sigset is valid input for sigemptyset/sigaddset.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` and `sig` are valid for the calls' duration.
        let rc = unsafe {
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGUSR1);
            libc::sigwait(&set, &mut sig)
        };
        if rc != 0 {
            return;
        }
        GENERATION.fetch_add(1, Ordering::SeqCst);
        for h in vcpus.lock().iter() {
            let _ = h.kill(kick_signal());
        }
    }
}

/// Called by a vCPU thread between KVM_RUNs: prints its registers once per request.
pub fn maybe_dump(index: u8, fd: &VcpuFd, seen: &mut u64) {
    let now = GENERATION.load(Ordering::SeqCst);
    if now == *seen {
        return;
    }
    *seen = now;
    eprintln!("ghvmm: vCPU {index} registers: {}", describe(fd));
}

fn describe(fd: &VcpuFd) -> String {
    let (Ok(r), Ok(s)) = (fd.get_regs(), fd.get_sregs()) else {
        return "unavailable (KVM_GET_REGS failed)".into();
    };
    format!(
        "RIP={:016x} RSP={:016x} RFLAGS={:08x} RAX={:x} RCX={:x} RDX={:x} CR0={:x} CR2={:x} \
         CR3={:x} CR4={:x} EFER={:x} CS={:04x} (l={} db={})",
        r.rip,
        r.rsp,
        r.rflags,
        r.rax,
        r.rcx,
        r.rdx,
        s.cr0,
        s.cr2,
        s.cr3,
        s.cr4,
        s.efer,
        s.cs.selector,
        s.cs.l,
        s.cs.db
    )
}
