//! Where a device goes: the placement a request or the configuration asks for, and the
//! segment and slot it resolves to given the devices already there.

use super::HotplugError;
use crate::config::GhSlotRequest;

/// Where a device goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// The next free slot of segment 0.
    Segment0,
    /// 00:00.0 of GH slot k's segment (k+1).
    GhSlot(u16),
    /// The lowest GH slot that has no device.
    AnyGhSlot,
    /// Cloud Hypervisor's `pci_segment=N`, N > 0: GH slot N-1, named by its segment in errors.
    Segment(u16),
}

impl Placement {
    /// The placement of an API request (`gh_slot`, or Cloud Hypervisor's `pci_segment`).
    pub fn requested(gh_slot: Option<GhSlotRequest>, pci_segment: Option<u16>) -> Self {
        match (gh_slot, pci_segment) {
            (Some(GhSlotRequest::Index(k)), _) => Placement::GhSlot(k),
            (Some(GhSlotRequest::Auto), _) => Placement::AnyGhSlot,
            (None, Some(s)) if s > 0 => Placement::Segment(s),
            (None, _) => Placement::Segment0,
        }
    }
}

/// A placement resolved: the segment, and the slot (None: the segment's lowest free one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Target {
    pub segment: u16,
    pub slot: Option<u8>,
}

/// Resolves `placement` on a VM with `gh_slots` GH slots, `taken(k)` telling whether GH slot
/// k has a device.
pub(super) fn resolve(
    placement: Placement,
    gh_slots: usize,
    taken: impl Fn(u16) -> bool,
) -> Result<Target, HotplugError> {
    let gh = |k: u16| Target {
        segment: k + 1,
        slot: Some(0),
    };
    match placement {
        Placement::Segment0 => Ok(Target {
            segment: 0,
            slot: None,
        }),
        // Segment k+1 is GH slot k; the segment's only slot is its 00.0.
        Placement::Segment(s) if usize::from(s) > gh_slots => Err(HotplugError::NoSuchSegment(s)),
        Placement::Segment(s) => resolve(Placement::GhSlot(s - 1), gh_slots, taken),
        Placement::GhSlot(_) | Placement::AnyGhSlot if gh_slots == 0 => {
            Err(HotplugError::NoGhProfile)
        }
        Placement::GhSlot(k) if usize::from(k) >= gh_slots => Err(HotplugError::NoSuchSlot {
            slot: k,
            slots: gh_slots,
        }),
        Placement::GhSlot(k) if taken(k) => Err(HotplugError::SlotTaken(k)),
        Placement::GhSlot(k) => Ok(gh(k)),
        // A VM has far fewer than 2^16 GH slots (one PCI segment each).
        Placement::AnyGhSlot => (0..u16::try_from(gh_slots).unwrap_or(u16::MAX))
            .find(|k| !taken(*k))
            .map(gh)
            .ok_or(HotplugError::NoFreeGhSlot),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placements() {
        use Placement::*;
        assert_eq!(Placement::requested(None, None), Segment0);
        assert_eq!(Placement::requested(None, Some(0)), Segment0);
        assert_eq!(Placement::requested(None, Some(2)), Segment(2));
        assert_eq!(
            Placement::requested(Some(GhSlotRequest::Index(3)), None),
            GhSlot(3)
        );
        assert_eq!(
            Placement::requested(Some(GhSlotRequest::Auto), None),
            AnyGhSlot
        );
    }

    #[test]
    fn resolving() {
        let none_taken = |_| false;
        let seg0 = resolve(Placement::Segment0, 0, none_taken).unwrap();
        assert_eq!((seg0.segment, seg0.slot), (0, None));
        let gh1 = resolve(Placement::GhSlot(1), 2, none_taken).unwrap();
        assert_eq!((gh1.segment, gh1.slot), (2, Some(0)));
        let any = resolve(Placement::AnyGhSlot, 3, |k| k < 2).unwrap();
        assert_eq!((any.segment, any.slot), (3, Some(0)));
        let seg2 = resolve(Placement::Segment(2), 2, none_taken).unwrap();
        assert_eq!((seg2.segment, seg2.slot), (2, Some(0)));
    }

    #[test]
    fn placement_errors() {
        let err = |p, slots, taken: fn(u16) -> bool| resolve(p, slots, taken).unwrap_err();
        assert!(matches!(
            err(Placement::GhSlot(0), 0, |_| false),
            HotplugError::NoGhProfile
        ));
        assert!(matches!(
            err(Placement::AnyGhSlot, 0, |_| false),
            HotplugError::NoGhProfile
        ));
        assert!(matches!(
            err(Placement::GhSlot(2), 2, |_| false),
            HotplugError::NoSuchSlot { slot: 2, slots: 2 }
        ));
        assert!(matches!(
            err(Placement::GhSlot(1), 2, |k| k == 1),
            HotplugError::SlotTaken(1)
        ));
        assert!(matches!(
            err(Placement::AnyGhSlot, 2, |_| true),
            HotplugError::NoFreeGhSlot
        ));
        // A segment is named as such: the VM has segments 0 to gh_slots.
        assert_eq!(
            err(Placement::Segment(3), 2, |_| false).to_string(),
            "PCI segment 3 does not exist"
        );
        assert_eq!(
            err(Placement::Segment(1), 0, |_| false).to_string(),
            "PCI segment 1 does not exist"
        );
        assert!(matches!(
            err(Placement::Segment(2), 2, |k| k == 1),
            HotplugError::SlotTaken(1)
        ));
    }
}
