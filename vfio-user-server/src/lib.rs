//! ghvmm-vfio-user: one host VFIO device served to a vfio-user client (Cloud Hypervisor's,
//! or ghvmm's later) over a Unix socket, with the rust-vmm `vfio_user` crate doing the wire
//! protocol.
//!
//! The client sees the device as ghvmm's own guests see it: the BAR layout of
//! `pci::vfio::probe_bars` (power-of-two BARs, padding under both contracts, docs/contract.md)
//! and the config-space view of `pci::vfio::PassthroughConfig`. `backend` answers the
//! protocol over the `host::HostDevice` trait, whose production implementation (`vfio_host`)
//! is the `vfio` crate's device; `options` parses the command line's `--device` body,
//! `socket` binds the listening socket, `serve` runs one client's session. Nothing here touches KVM.

#![forbid(unsafe_code)]

pub mod backend;
#[cfg(any(test, feature = "fake"))]
pub mod fake;
pub mod host;
pub mod logging;
pub mod options;
pub mod serve;
pub mod socket;
pub mod vfio_host;

pub use backend::{Backend, Counters, SetupError};
pub use host::{HostDevice, HostRegion};
