use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output};

use super::*;

/// Set in the child process this file's tests start: the mode its filter uses.
const CHILD_MODE: &str = "GHVMM_SECCOMP_TEST_CHILD";
/// What the child writes (an allowed syscall) just before the forbidden one.
const MARKER: &str = "child: filter installed";

#[test]
fn every_kind_compiles_in_both_modes() {
    for mode in [SeccompMode::Kill, SeccompMode::Log] {
        let filters = Filters::build(mode).unwrap().unwrap();
        for kind in ThreadKind::ALL {
            let len = filters.program(kind).len();
            // A classic BPF program holds at most 4096 instructions.
            assert!(len > 0 && len < 4096, "{mode:?} {kind:?}: {len}");
        }
    }
    assert!(Filters::build(SeccompMode::Off).unwrap().is_none());
}

#[test]
fn kinds_differ_where_they_should() {
    let vcpu = rules::rules(ThreadKind::Vcpu).unwrap();
    let console = rules::rules(ThreadKind::ConsoleOut).unwrap();
    let api = rules::rules(ThreadKind::Api).unwrap();
    assert!(!console.contains_key(&libc::SYS_openat));
    assert!(!vcpu.contains_key(&libc::SYS_accept4));
    assert!(api.contains_key(&libc::SYS_accept4));
    // vm.pause kicks the vCPU threads from an API connection thread.
    assert!(api.contains_key(&libc::SYS_tgkill));
    assert!(!console.contains_key(&libc::SYS_tgkill));
    // The vCPU's ioctls are restricted to a list, one rule per request.
    assert_eq!(vcpu[&libc::SYS_ioctl].len(), ioctls::vcpu().len());
    // A vfio-user device hot-added through the API: its client writes VERSION with writev
    // (the rig's vfio-user-hotplug died of SIGSYS on ghvmm-api-conn without it).
    for kind in [ThreadKind::Api, ThreadKind::Hotplug, ThreadKind::Vcpu] {
        let r = rules::rules(kind).unwrap();
        assert!(r.contains_key(&libc::SYS_writev), "{kind:?}");
    }
    // A thread that starts threads allows what installing the child's filter takes.
    for kind in [
        ThreadKind::Api,
        ThreadKind::VfioRequest,
        ThreadKind::Hotplug,
    ] {
        let r = rules::rules(kind).unwrap();
        assert!(r.contains_key(&libc::SYS_clone3) && r.contains_key(&libc::SYS_seccomp));
    }
}

/// Runs `test` of this binary again in a child process with `CHILD_MODE=mode`.
fn run_child(test: &str, mode: &str) -> Output {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD_MODE, mode)
        .output()
        .unwrap()
}

/// In the child: installs the console-out filter (the narrowest) on this thread, writes the
/// marker and calls getppid, which no list allows.
fn child_body() {
    let Ok(mode) = std::env::var(CHILD_MODE) else {
        return;
    };
    let mode = match mode.as_str() {
        "log" => SeccompMode::Log,
        _ => SeccompMode::Kill,
    };
    let filters = Filters::build(mode).unwrap().unwrap();
    filters.apply(ThreadKind::ConsoleOut).unwrap();
    let line = format!("{MARKER}\n");
    // SAFETY: writes a buffer we own to stderr.
    unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
    // SAFETY: getppid takes no arguments and touches no memory.
    let parent = unsafe { libc::syscall(libc::SYS_getppid) };
    assert!(parent > 0);
}

#[test]
fn forbidden_syscall_child() {
    child_body();
}

const CHILD_TEST: &str = "seccomp::tests::forbidden_syscall_child";

#[test]
fn a_syscall_outside_the_list_kills_the_process() {
    let out = run_child(CHILD_TEST, "true");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(MARKER),
        "the child never got its filter: {stderr}"
    );
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGSYS),
        "child status {:?}, stderr: {stderr}",
        out.status
    );
}

#[test]
fn in_log_mode_the_process_survives() {
    let out = run_child(CHILD_TEST, "log");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(MARKER), "{stderr}");
    assert!(
        out.status.success(),
        "child status {:?}, stderr: {stderr}",
        out.status
    );
}

#[test]
fn enter_without_init_installs_nothing() {
    // No `init` in the unit tests' process: every thread stays unfiltered.
    enter(ThreadKind::ConsoleOut).unwrap();
    // SAFETY: as above.
    assert!(unsafe { libc::syscall(libc::SYS_getppid) } > 0);
}

/// An installer whose every install fails, as the kernel refuses one (EINVAL).
struct Refused;

impl Installer for Refused {
    fn install(&self, kind: ThreadKind) -> Result<(), SeccompError> {
        Err(SeccompError::Install {
            kind,
            source: seccompiler::Error::Seccomp(std::io::Error::from_raw_os_error(libc::EINVAL)),
        })
    }
}

#[test]
fn a_filter_that_cannot_be_installed_ends_the_vm() {
    let exit = ExitState::default();
    assert!(!enter_or_end_with(&Refused, ThreadKind::Hotplug, &exit));
    let reason = exit.wait_for(std::time::Duration::ZERO);
    assert_eq!(
        reason,
        Some(ExitReason::Fault(
            "seccomp: cannot install the filter of a Hotplug thread: Error calling `seccomp`: Invalid argument (os error 22)".into()
        ))
    );
    assert_eq!(reason.map(|r| r.code()), Some(1));
}

/// The threads a reboot starts (vCPUs, request watchers and their give-back threads) start
/// under the main thread's filter and stack theirs on it: the main thread's must allow every
/// syscall theirs do, and every ioctl request (by its type, KVM's or VFIO's, or by number).
#[test]
fn main_allows_what_the_threads_a_reboot_starts_do() {
    let main = rules::rules(ThreadKind::Main).unwrap();
    let main_requests = [ioctls::FIONBIO, ioctls::FIONREAD];
    for kind in [
        ThreadKind::Vcpu,
        ThreadKind::VfioRequest,
        ThreadKind::Hotplug,
    ] {
        for nr in rules::rules(kind).unwrap().keys() {
            assert!(main.contains_key(nr), "{kind:?}: syscall {nr}");
        }
    }
    for request in ioctls::vcpu()
        .into_iter()
        .chain(ioctls::device_management())
    {
        let by_type = rules::MAIN_IOCTL_TYPES
            .contains(&((request & ioctls::IOCTL_TYPE_MASK) >> ioctls::IOCTL_TYPE_SHIFT));
        assert!(
            by_type || main_requests.contains(&request),
            "ioctl {request:#x}"
        );
    }
    // Building the VM: KVM_CREATE_VM (_IO(KVMIO, 0x01)) is a KVM request like the others.
    assert!(rules::MAIN_IOCTL_TYPES
        .contains(&((0xae01 & ioctls::IOCTL_TYPE_MASK) >> ioctls::IOCTL_TYPE_SHIFT)));
}
