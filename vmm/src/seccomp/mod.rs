//! Seccomp filters, one list of allowed syscalls per kind of ghvmm thread, as Cloud
//! Hypervisor and Firecracker do. `init` compiles every filter once at start (so a bad list
//! fails the start, not a thread later); each thread calls `enter` with its kind first thing,
//! which installs its filter on that thread only (no TSYNC: the threads' lists differ). A
//! filter that cannot be installed ends the VM: no thread runs unfiltered.
//!
//! `--seccomp true` kills the process on a syscall outside the thread's list (SIGSYS),
//! `log` lets it through and has the kernel log it (audit type=1326), `false` installs
//! nothing. The lists and why each syscall is in them: docs/reliability.md, "seccomp".

pub mod ioctls;
mod rules;

use std::sync::OnceLock;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

use crate::vm::exit::{ExitReason, ExitState};

/// `--seccomp`, in Cloud Hypervisor's syntax.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SeccompMode {
    /// A syscall outside the list kills the process.
    #[default]
    #[value(name = "true")]
    Kill,
    /// A syscall outside the list is allowed and logged by the kernel (audit, type=1326).
    #[value(name = "log")]
    Log,
    /// No filter.
    #[value(name = "false")]
    Off,
}

/// The kinds of ghvmm threads, each with its own list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ThreadKind {
    /// The main thread once the VM runs (it only waits for the end and cleans up).
    Main,
    /// A vCPU: KVM_RUN and the guest's trapped accesses.
    Vcpu,
    /// The REST API's accept thread; its connection threads keep its filter.
    Api,
    /// A device's VFIO request watcher (`ghvmm-vfio-req`).
    VfioRequest,
    /// A hot plug worker (`ghvmm-giveback`): removes a device the host asked back.
    Hotplug,
    /// Console input: stdin to the UART.
    Stdin,
    /// Console output: queued serial output to fd 1.
    ConsoleOut,
    /// The SIGUSR1 register dump.
    RegDump,
}

impl ThreadKind {
    pub const ALL: [ThreadKind; 8] = [
        ThreadKind::Main,
        ThreadKind::Vcpu,
        ThreadKind::Api,
        ThreadKind::VfioRequest,
        ThreadKind::Hotplug,
        ThreadKind::Stdin,
        ThreadKind::ConsoleOut,
        ThreadKind::RegDump,
    ];

    fn index(self) -> usize {
        Self::ALL
            .iter()
            .position(|k| *k == self)
            .unwrap_or_default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp filter for {kind:?} threads: {source}")]
    Build {
        kind: ThreadKind,
        source: seccompiler::BackendError,
    },
    #[error("seccomp: cannot install the filter of a {kind:?} thread: {source}")]
    Install {
        kind: ThreadKind,
        source: seccompiler::Error,
    },
    #[error("seccomp filters were already set up")]
    AlreadyInitialized,
}

/// Every kind's compiled filter.
#[derive(Debug)]
pub struct Filters {
    programs: Vec<BpfProgram>,
}

impl Filters {
    /// Compiles every kind's filter; None for `--seccomp false`.
    pub fn build(mode: SeccompMode) -> Result<Option<Filters>, SeccompError> {
        let mismatch = match mode {
            SeccompMode::Kill => SeccompAction::KillProcess,
            SeccompMode::Log => SeccompAction::Log,
            SeccompMode::Off => return Ok(None),
        };
        let programs = ThreadKind::ALL
            .iter()
            .map(|&kind| {
                let build = |source| SeccompError::Build { kind, source };
                let filter = SeccompFilter::new(
                    rules::rules(kind).map_err(build)?,
                    mismatch.clone(),
                    SeccompAction::Allow,
                    TargetArch::x86_64,
                )
                .map_err(build)?;
                BpfProgram::try_from(filter).map_err(build)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(Filters { programs }))
    }

    pub fn program(&self, kind: ThreadKind) -> &BpfProgram {
        &self.programs[kind.index()]
    }

    /// Installs `kind`'s filter on the calling thread only.
    pub fn apply(&self, kind: ThreadKind) -> Result<(), SeccompError> {
        seccompiler::apply_filter(self.program(kind))
            .map_err(|source| SeccompError::Install { kind, source })
    }
}

/// Installs a kind's filter on the calling thread: `Filters`, or a failing one in the tests.
pub trait Installer {
    fn install(&self, kind: ThreadKind) -> Result<(), SeccompError>;
}

impl Installer for Filters {
    fn install(&self, kind: ThreadKind) -> Result<(), SeccompError> {
        self.apply(kind)
    }
}

/// The filters of this process: set once by `init`; unset (tests, `ghvmm-remote`) means no
/// filtering.
static FILTERS: OnceLock<Option<Filters>> = OnceLock::new();

/// Compiles the filters for `mode`; call once, before starting any thread.
pub fn init(mode: SeccompMode) -> Result<(), SeccompError> {
    let filters = Filters::build(mode)?;
    FILTERS
        .set(filters)
        .map_err(|_| SeccompError::AlreadyInitialized)
}

/// Installs `kind`'s filter on the calling thread, if `init` set filters up.
pub fn enter(kind: ThreadKind) -> Result<(), SeccompError> {
    match FILTERS.get() {
        Some(Some(filters)) => filters.apply(kind),
        _ => Ok(()),
    }
}

/// `enter`, for a thread of a running VM: what each calls first. When the filter cannot be
/// installed the VM ends with the error (exit code 1) and false is returned: the thread
/// must return at once rather than run unfiltered.
pub fn enter_or_end(kind: ThreadKind, exit: &ExitState) -> bool {
    match FILTERS.get() {
        Some(Some(filters)) => enter_or_end_with(filters, kind, exit),
        _ => true,
    }
}

fn enter_or_end_with(installer: &dyn Installer, kind: ThreadKind, exit: &ExitState) -> bool {
    match installer.install(kind) {
        Ok(()) => true,
        Err(e) => {
            exit.request(ExitReason::Fault(e.to_string()));
            false
        }
    }
}

#[cfg(test)]
mod tests;
