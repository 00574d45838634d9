//! The VM's passed-through devices: where each one sits in the guest, attaching one at boot,
//! adding and removing one by hot plug through the API, and giving one back when the host asks
//! for it, with everything it touches (VFIO, BAR space, KVM slots, the PCI segment, the hot
//! plug controller) so that nothing half-done stays behind.
//!
//! The policy (`Hotplug`: ids, placement, rollback, the order of the removal steps) is
//! written against `Backend`, the VM side that does the work; `VmResources` is the VM's, the
//! tests' fake records what it is asked. The pieces:
//! - `placement`: where a device goes (`Placement`) and the slot that resolves to;
//! - `attached`: the attached devices, their ids (`_vfio<N>` when none is given) and tokens;
//! - `ejects`: the slots the guest ejected (`Ejects`), bounded whatever the guest writes;
//! - `removal`: the host's give-back policy (`give_back` over `EjectSteps`);
//! - `manager`: `Hotplug`, which applies all of it under one operation lock, released while a
//!   removal waits for the guest;
//! - `backend` and `vm_resources`: the `Backend` trait and the VM's implementation of it.
//!
//! The host can ask for a device back (its VFIO driver is being unbound): each device's
//! request watcher (`vfio::RequestWatcher`) then calls back into `Hotplug`, which starts `give_back`
//! on a thread of its own; it removes the device as `vm.remove-device` does and, if the guest
//! does not eject it in time, removes it anyway.

mod attached;
mod backend;
mod ejects;
mod manager;
mod placement;
mod removal;
mod vm_resources;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Duration;

use crate::passthrough::VfioSetupError;

pub use attached::AttachedDevice;
pub use backend::{Backend, GuestBar, OnHostRequest};
pub use ejects::Ejects;
pub use manager::Hotplug;
pub use placement::Placement;
pub use vm_resources::VmResources;

/// How long a removal waits for the guest to eject (`vm.remove-device`, and a device the host
/// asks back). Linux under nested TCG needs a few seconds; a guest that has not ejected in
/// this time is not going to on its own.
pub const EJECT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum HotplugError {
    #[error(transparent)]
    Setup(#[from] VfioSetupError),
    #[error("a device with id '{0}' is already attached")]
    DuplicateId(String),
    #[error("{0} is already attached")]
    DuplicatePath(PathBuf),
    #[error("no device with id '{0}'")]
    UnknownId(String),
    #[error("device '{0}' is already being removed (waiting for the guest to eject it)")]
    RemovalPending(String),
    #[error("gh_slot needs the GH profile (--gh)")]
    NoGhProfile,
    #[error("GH slot {slot} does not exist (the VM has {slots})")]
    NoSuchSlot { slot: u16, slots: usize },
    #[error("GH slot {0} is taken")]
    SlotTaken(u16),
    #[error("every GH slot is taken")]
    NoFreeGhSlot,
    #[error("PCI segment {0} does not exist")]
    NoSuchSegment(u16),
    #[error("no free PCI slot on segment {segment}: {error}")]
    NoPciSlot { segment: u16, error: pci::PciError },
    #[error("cannot notify the guest: {0}")]
    Notify(String),
    #[error(
        "the guest did not eject device '{id}' within {secs} s (is its OS running, with ACPI PCI hot plug?); it stays attached"
    )]
    EjectTimeout { id: String, secs: u64 },
}
