//! `checker time-to-kvm-run LABEL -- CMD ARGS...`: how long a VMM spends from its exec to its
//! first KVM_RUN, seen from outside the VMM: CMD runs under ptrace with a seccomp filter that
//! stops only `ioctl(fd, KVM_RUN)`, so the kernel itself marks both ends (the exec event and
//! the first vCPU entry) and nothing the VMM logs about itself is trusted. Prints
//! `@@BENCH LABEL <µs>` and kills CMD at that first KVM_RUN (the figure is all it is for).

use std::ffi::CString;
use std::time::Instant;

/// `_IO(KVMIO, 0x80)`.
const KVM_RUN: u32 = 0xae80;
/// `AUDIT_ARCH_X86_64` (linux/audit.h; not in the libc crate).
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// Offsets in `struct seccomp_data`: nr, arch, then args[6] from 16 (the low half of args[1]
/// on little-endian x86_64).
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
const DATA_ARG1_LOW: u32 = 16 + 8;

fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jeq(k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    }
}

/// The filter: `ioctl(_, KVM_RUN, _)` on x86_64 traces, everything else is allowed.
fn filter() -> Vec<libc::sock_filter> {
    let load = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let ret = libc::BPF_RET | libc::BPF_K;
    vec![
        stmt(load, DATA_ARCH),
        jeq(AUDIT_ARCH_X86_64, 0, 4),
        stmt(load, DATA_NR),
        jeq(libc::SYS_ioctl as u32, 0, 2),
        stmt(load, DATA_ARG1_LOW),
        jeq(KVM_RUN, 1, 0),
        stmt(ret, libc::SECCOMP_RET_ALLOW),
        stmt(ret, libc::SECCOMP_RET_TRACE),
    ]
}

fn event(status: i32) -> i32 {
    status >> 16
}

pub fn main(args: &[String]) -> i32 {
    let (label, cmd) = match args {
        [label, sep, cmd @ ..] if sep == "--" && !cmd.is_empty() => (label, cmd),
        _ => {
            eprintln!("usage: checker time-to-kvm-run LABEL -- CMD [ARGS...]");
            return 2;
        }
    };
    let Ok(argv) = cmd
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
    else {
        eprintln!("checker: an argument holds a NUL byte");
        return 2;
    };
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut program = filter();
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // Everything the child needs is built before fork: after it, the child only makes
    // async-signal-safe calls.
    // SAFETY: the checker is single-threaded here; the child branch calls only ptrace, raise,
    // prctl, execvp and _exit on data prepared above.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        eprintln!("checker: fork: {}", std::io::Error::last_os_error());
        return 2;
    }
    if pid == 0 {
        // SAFETY: see above; `fprog` and `argv_ptrs` stay alive (the parent's copies).
        unsafe {
            // Its own process group, so that the tracer waits for its threads only.
            libc::setpgid(0, 0);
            libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0);
            libc::raise(libc::SIGSTOP);
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
            if libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &fprog as *const libc::sock_fprog,
            ) != 0
            {
                libc::_exit(126);
            }
            libc::execvp(argv_ptrs[0], argv_ptrs.as_ptr());
            libc::_exit(127);
        }
    }
    trace(pid, label)
}

/// Any thread of the traced VMM (its process group is its pid), never another child of ours.
fn wait_any(pid: libc::pid_t, status: &mut i32) -> libc::pid_t {
    // SAFETY: plain syscall writing to `status`.
    unsafe { libc::waitpid(-pid, status, libc::__WALL) }
}

fn resume(tid: libc::pid_t, signal: i32) {
    // SAFETY: `tid` is a tracee in a ptrace-stop (it was just reported by waitpid).
    unsafe {
        libc::ptrace(libc::PTRACE_CONT, tid, 0, signal);
    }
}

fn kill_and_reap(pid: libc::pid_t) {
    // SAFETY: `pid` is our child; reaping every remaining tracee until the child is gone.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        let mut status = 0;
        while libc::waitpid(-pid, &mut status, libc::__WALL) > 0 {}
    }
}

fn trace(pid: libc::pid_t, label: &str) -> i32 {
    let mut status = 0;
    // The child's own SIGSTOP: set the options, then let it exec.
    // SAFETY: waiting for our child.
    if unsafe { libc::waitpid(pid, &mut status, 0) } != pid || !libc::WIFSTOPPED(status) {
        eprintln!("checker: the traced child did not stop");
        return 2;
    }
    let options = libc::PTRACE_O_TRACESECCOMP
        | libc::PTRACE_O_TRACEEXEC
        | libc::PTRACE_O_TRACECLONE
        | libc::PTRACE_O_EXITKILL;
    // SAFETY: `pid` is in a signal-delivery stop.
    unsafe {
        libc::ptrace(libc::PTRACE_SETOPTIONS, pid, 0, options);
    }
    resume(pid, 0);
    let mut exec_at: Option<Instant> = None;
    loop {
        let tid = wait_any(pid, &mut status);
        if tid < 0 {
            eprintln!("checker: the VMM ended before its first KVM_RUN");
            return 1;
        }
        if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            if tid == pid {
                eprintln!("checker: the VMM ended before its first KVM_RUN (status {status:#x})");
                kill_and_reap(pid);
                return 1;
            }
            continue;
        }
        if !libc::WIFSTOPPED(status) {
            continue;
        }
        match event(status) {
            libc::PTRACE_EVENT_EXEC => {
                exec_at.get_or_insert_with(Instant::now);
                resume(tid, 0);
            }
            libc::PTRACE_EVENT_SECCOMP => {
                let Some(start) = exec_at else {
                    eprintln!("checker: KVM_RUN before exec?");
                    kill_and_reap(pid);
                    return 1;
                };
                let us = start.elapsed().as_micros();
                kill_and_reap(pid);
                println!("@@BENCH {label} {us}");
                return 0;
            }
            0 => {
                // A signal-delivery stop; a new thread's first stop is a SIGSTOP nobody sent.
                let sig = libc::WSTOPSIG(status);
                resume(tid, if sig == libc::SIGSTOP { 0 } else { sig });
            }
            _ => resume(tid, 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_traces_only_kvm_run_ioctls() {
        let f = filter();
        // Every jump lands inside the program, on one of the two returns or a load.
        for (i, ins) in f.iter().enumerate() {
            if ins.code == (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16 {
                assert!(i + 1 + (ins.jt.max(ins.jf) as usize) < f.len());
            }
        }
        assert_eq!(f[f.len() - 1].k, libc::SECCOMP_RET_TRACE);
        assert_eq!(f[f.len() - 2].k, libc::SECCOMP_RET_ALLOW);
        assert_eq!(KVM_RUN, (0xae << 8) | 0x80);
    }

    #[test]
    fn a_vmm_that_never_runs_a_vcpu_gives_no_figure() {
        let args: Vec<String> = ["t", "--", "/bin/true"].map(String::from).to_vec();
        assert_eq!(main(&args), 1);
    }

    #[test]
    fn the_first_kvm_run_ioctl_is_caught_whatever_the_fd() {
        // perl-base is part of every Debian system; the ioctl goes to stdin, which is not
        // KVM: the filter looks at the request number only, before the kernel runs it.
        let args: Vec<String> = [
            "t",
            "--",
            "/usr/bin/perl",
            "-e",
            "ioctl(STDIN, 0xae80, 0); sleep 30",
        ]
        .map(String::from)
        .to_vec();
        let started = Instant::now();
        assert_eq!(main(&args), 0);
        assert!(started.elapsed().as_secs() < 20, "killed at the ioctl");
    }

    #[test]
    fn bad_usage_is_refused() {
        assert_eq!(main(&["t".to_string()]), 2);
    }
}
