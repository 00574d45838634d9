//! The ghvmm VMM: configuration, VM lifecycle, device manager and the x86_64 boot path.
//! The `ghvmm` binary (src/main.rs) is a thin shell around `vm::run`.

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod api;
pub mod arch;
pub mod config;
pub mod device_manager;
pub mod event_monitor;
pub mod fd_limit;
pub mod hotplug;
pub mod logging;
pub mod memory;
pub mod passthrough;
pub mod seccomp;
pub mod vm;
