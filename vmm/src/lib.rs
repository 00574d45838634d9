//! The ghvmm VMM: configuration, VM lifecycle, device manager and the x86_64 boot path.
//! The `ghvmm` binary (src/main.rs) is a thin shell around `vm::run`.

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod acpi_tables;
pub mod api;
pub mod arch;
pub mod bar_allocator;
pub mod boot;
pub mod cli;
pub mod config;
pub mod console;
pub mod control;
pub mod device_manager;
pub mod exit;
pub mod irq_routing;
pub mod layout;
pub mod memory;
pub mod memslots;
pub mod numa;
pub mod passthrough;
pub mod vcpu;
pub mod vcpu_dump;
pub mod vfio;
pub mod vm;
