//! The VM side of hot plug, behind a trait so that the policy in `manager` runs against a
//! fake in the tests: VFIO and KVM (assigning and tearing down a device), the PCI segments,
//! the hot plug controller and the GED that tell the guest, and the device's request watcher.

use std::collections::BTreeMap;

use super::{Ejects, HotplugError};
use crate::config::DeviceSource;

/// Called on a device's request watcher thread when the host asks for the device back;
/// returns whether the removal started (false: it is called again at the host's next
/// request).
pub use vfio::OnRequest as OnHostRequest;

/// A BAR as the guest placed it: (index, what it is, guest physical address).
pub type GuestBar = (usize, pci::BarSpec, u64);

/// What `Hotplug` asks of the VM. Every method but `ejects` is called with `Hotplug`'s
/// operation lock held.
pub trait Backend: Send + Sync + 'static {
    /// A device assigned to the VM.
    type Device: Send + Sync + 'static;

    /// How many GH slots the VM has (segment k+1 is GH slot k); 0 without the GH profile.
    fn gh_slots(&self) -> usize;

    /// The slots the guest ejected.
    fn ejects(&self) -> &Ejects;

    /// Opens the device `source` names and sets it up fully (BARs in `segment`'s windows,
    /// mapped and trapped; DMA; interrupts), or leaves nothing behind.
    fn assign(&self, source: &DeviceSource, segment: u16) -> Result<Self::Device, HotplugError>;

    /// The device's BARs as the guest placed them: (index, what it is, guest address)
    /// (`passthrough::PassthroughDevice::guest_bars`).
    fn guest_bars(&self, device: &Self::Device) -> Vec<GuestBar>;

    /// The device's access counters (`passthrough::PassthroughDevice::counters`).
    fn counters(&self, device: &Self::Device) -> BTreeMap<String, u64>;

    /// Puts the device in `slot` of `segment` (None: the lowest free one); returns the slot.
    fn plug(
        &self,
        segment: u16,
        slot: Option<u8>,
        device: &Self::Device,
    ) -> Result<u8, pci::PciError>;

    /// Takes the device in `slot` of `segment` out of config space.
    fn unplug(&self, segment: u16, slot: u8);

    /// Releases everything the device holds, its request watcher first. Idempotent.
    fn teardown(&self, device: &Self::Device);

    /// Starts watching the host's requests for the device. Ok(false): the device has no
    /// way to ask.
    fn watch_requests(
        &self,
        device: &Self::Device,
        on_request: OnHostRequest,
    ) -> Result<bool, String>;

    /// Tells the guest a device arrived in `slot` of `segment` (the controller's next scan
    /// sends it a device check).
    fn announce_added(&self, segment: u16, slot: u8) -> Result<(), String>;

    /// Asks the guest to let go of the device in `slot` of `segment` (the controller's next
    /// scan sends it an eject request; the guest's `_EJ0` lands in `ejects`).
    fn announce_removal(&self, segment: u16, slot: u8) -> Result<(), String>;
}
