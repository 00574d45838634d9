//! Which syscalls each kind of thread may make. docs/reliability.md ("seccomp") says why each
//! is there. A thread also keeps the filter of the thread that started it (the kernel
//! stacks them and the strictest answer wins), so a thread that starts others allows what
//! their start-up and their work need: see `SPAWN` and `ThreadKind::Hotplug`.

use std::collections::BTreeMap;

use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};

use super::ioctls;
use super::ThreadKind;

/// A syscall allowed with any arguments (empty rule list), or only with the listed first
/// argument values (ioctl requests, fcntl commands, prctl options).
pub type Rules = BTreeMap<i64, Vec<SeccompRule>>;

/// Every thread: memory, locks, signals, time, its own exit, and log lines on stderr.
const COMMON: &[i64] = &[
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_futex,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_restart_syscall,
    libc::SYS_sched_yield,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getrandom,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_write,
];

/// What starting a thread costs its parent (pthread_create) and the child before its own
/// filter is in place (which the parent's filter still judges).
const SPAWN: &[i64] = &[
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_sched_getaffinity,
    libc::SYS_seccomp,
];

/// Opening, assigning, tearing down a passed-through device, over VFIO or vfio-user: the
/// sysfs reads, the stand-in directory (vfio/src/device.rs), eventfds for its interrupts,
/// its BAR mappings and region accesses, and the vfio-user socket.
const DEVICE_FILES: &[i64] = &[
    libc::SYS_openat,
    libc::SYS_close,
    libc::SYS_read,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_lseek,
    libc::SYS_readlink,
    libc::SYS_readlinkat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_fstat,
    libc::SYS_lstat,
    libc::SYS_stat,
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_symlink,
    libc::SYS_symlinkat,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_rmdir,
    libc::SYS_getdents64,
    libc::SYS_geteuid,
    libc::SYS_prlimit64,
    libc::SYS_eventfd2,
    libc::SYS_dup,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    // vfio_user's client sends its VERSION message with write_vectored.
    libc::SYS_writev,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_shutdown,
];

/// The REST API: accepting and serving connections (vmm/src/api/server.rs), and kicking the
/// vCPU threads out of KVM_RUN for `vm.pause` (pthread_kill).
const API: &[i64] = &[
    libc::SYS_accept4,
    libc::SYS_accept,
    libc::SYS_tgkill,
    libc::SYS_tkill,
];

/// The vCPU's guest accesses: forwarded BAR accesses (pread/pwrite on the device fd), the
/// vfio-user socket, eventfd writes, MSI enable (eventfds, fd counting through /proc/self/fd,
/// whose opendir fstats the directory).
const VCPU: &[i64] = &[
    libc::SYS_read,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_writev,
    libc::SYS_eventfd2,
    libc::SYS_openat,
    libc::SYS_getdents64,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_close,
    libc::SYS_prlimit64,
    libc::SYS_dup,
];

/// The main thread once the first VM runs: it waits, rebuilds the VM when the guest reboots
/// (with `DEVICE_FILES`, `VCPU` and `BUILD`, below), flushes the serial output, restores the
/// terminal, removes the API socket file and exits; other parts of ghvmm also look up
/// files and limits from it.
const MAIN: &[i64] = &[
    libc::SYS_close,
    libc::SYS_openat,
    libc::SYS_read,
    libc::SYS_prlimit64,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_lstat,
    libc::SYS_stat,
    libc::SYS_fstat,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_geteuid,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
];

/// Stopping a VM and building the next on a reboot, beyond what assigning its devices
/// needs: the vCPU kicks, guest memory backed
/// by a memfd (`shared=on`, `hugepages=on`) and bound to a host node (`host_numa_node`),
/// reading the kernel and initramfs.
const BUILD: &[i64] = &[
    // Kicking the old VM's vCPU threads out of KVM_RUN (pthread_kill).
    libc::SYS_tgkill,
    libc::SYS_tkill,
    libc::SYS_memfd_create,
    libc::SYS_ftruncate,
    libc::SYS_fallocate,
    libc::SYS_mbind,
    libc::SYS_pread64,
    libc::SYS_lseek,
];

/// Console input: read stdin, hand the bytes to the UART (an eventfd write).
const STDIN: &[i64] = &[libc::SYS_read];

/// Queued serial output to fd 1, waiting until it is writable.
const CONSOLE_OUT: &[i64] = &[libc::SYS_poll, libc::SYS_ppoll];

/// The register dump: wait for SIGUSR1, kick each vCPU with its real-time signal.
const REGDUMP: &[i64] = &[libc::SYS_rt_sigtimedwait, libc::SYS_tgkill, libc::SYS_tkill];

/// The request watcher: poll its eventfds, read them, start a give-back thread (which
/// inherits this filter, so the device work is allowed here too).
const VFIO_REQUEST: &[i64] = &[libc::SYS_poll, libc::SYS_ppoll, libc::SYS_read];

fn allow(rules: &mut Rules, syscalls: &[i64]) {
    for &nr in syscalls {
        rules.insert(nr, Vec::new());
    }
}

/// `nr` allowed only when its argument `arg` is one of `values`; merges with an earlier
/// restriction of the same syscall, and never narrows one allowed with any arguments.
fn allow_arg(
    rules: &mut Rules,
    nr: i64,
    arg: u8,
    values: &[u64],
) -> Result<(), seccompiler::BackendError> {
    if rules.get(&nr).is_some_and(Vec::is_empty) {
        return Ok(());
    }
    let entry = rules.entry(nr).or_default();
    for &v in values {
        let cond = SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, v)?;
        entry.push(SeccompRule::new(vec![cond])?);
    }
    Ok(())
}

/// The ioctl types the main thread allows every request of: KVM's and VFIO's.
pub const MAIN_IOCTL_TYPES: &[u64] = &[ioctls::KVM_TYPE, ioctls::VFIO_TYPE];

/// Every ioctl request of the given types (bits 8-15 of the request): building a VM takes
/// most of KVM's system, VM and vCPU ioctls (Cloud Hypervisor's VMM thread allows them too).
fn allow_ioctl_types(rules: &mut Rules, types: &[u64]) -> Result<(), seccompiler::BackendError> {
    let entry = rules.entry(libc::SYS_ioctl).or_default();
    for &t in types {
        let cond = SeccompCondition::new(
            1,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(ioctls::IOCTL_TYPE_MASK),
            t << ioctls::IOCTL_TYPE_SHIFT,
        )?;
        entry.push(SeccompRule::new(vec![cond])?);
    }
    Ok(())
}

/// prctl options: naming a thread (std does at thread start) and no_new_privs (set before
/// every filter install).
const PRCTL_OPTIONS: &[u64] = &[libc::PR_SET_NAME as u64, libc::PR_SET_NO_NEW_PRIVS as u64];
/// fcntl commands: descriptor flags, and F_DUPFD_CLOEXEC (std's try_clone).
const FCNTL_COMMANDS: &[u64] = &[
    libc::F_GETFD as u64,
    libc::F_SETFD as u64,
    libc::F_GETFL as u64,
    libc::F_SETFL as u64,
    libc::F_DUPFD_CLOEXEC as u64,
];

/// The rules of one kind of thread.
pub fn rules(kind: ThreadKind) -> Result<Rules, seccompiler::BackendError> {
    let mut r = Rules::new();
    allow(&mut r, COMMON);
    allow_arg(&mut r, libc::SYS_prctl, 0, PRCTL_OPTIONS)?;
    allow_arg(&mut r, libc::SYS_fcntl, 1, FCNTL_COMMANDS)?;
    let device = ioctls::device_management();
    match kind {
        ThreadKind::Main => {
            // The vCPU threads and the devices' request watchers of a VM built on a reboot
            // start under this filter (and stack theirs on it): it allows what they do.
            allow(&mut r, MAIN);
            allow(&mut r, SPAWN);
            allow(&mut r, DEVICE_FILES);
            allow(&mut r, VCPU);
            allow(&mut r, VFIO_REQUEST);
            allow(&mut r, BUILD);
            allow_ioctl_types(&mut r, MAIN_IOCTL_TYPES)?;
            let mut requests = device;
            requests.extend([ioctls::TCGETS, ioctls::TCSETS]);
            allow_arg(&mut r, libc::SYS_ioctl, 1, &requests)?;
        }
        ThreadKind::Vcpu => {
            allow(&mut r, VCPU);
            allow_arg(&mut r, libc::SYS_ioctl, 1, &ioctls::vcpu())?;
        }
        ThreadKind::Api => {
            allow(&mut r, API);
            allow(&mut r, SPAWN);
            allow(&mut r, DEVICE_FILES);
            allow_arg(&mut r, libc::SYS_ioctl, 1, &device)?;
        }
        ThreadKind::VfioRequest => {
            allow(&mut r, VFIO_REQUEST);
            allow(&mut r, SPAWN);
            allow(&mut r, DEVICE_FILES);
            allow_arg(&mut r, libc::SYS_ioctl, 1, &device)?;
        }
        ThreadKind::Hotplug => {
            allow(&mut r, SPAWN);
            allow(&mut r, DEVICE_FILES);
            allow_arg(&mut r, libc::SYS_ioctl, 1, &device)?;
        }
        ThreadKind::Stdin => {
            allow(&mut r, STDIN);
        }
        ThreadKind::ConsoleOut => {
            allow(&mut r, CONSOLE_OUT);
            allow_arg(&mut r, libc::SYS_ioctl, 1, &[ioctls::TCGETS])?;
        }
        ThreadKind::RegDump => {
            allow(&mut r, REGDUMP);
        }
    }
    Ok(r)
}
