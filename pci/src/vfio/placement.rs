//! Where a passed-through BAR's slots and traps should be after a config write: the rule that
//! keeps hot add O(1) in the BAR's size.
//!
//! Linux turns memory decoding off and on about seven times while it probes a device (BAR
//! sizing, resource assignment, driver enable). Removing a BAR's KVM slots at every
//! decode-off and creating them again at decode-on costs time that grows with the slot
//! (KVM's per-slot metadata), which made a 128 GiB hot add 3.4x slower than a 64 KiB one.
//!
//! The rule: a BAR whose decoding is turned off stays *parked* where it is — slots and traps
//! in place — as long as its register still names that address (or holds a sizing pattern,
//! which is no address). The moment the guest writes a different final address, the BAR is
//! removed, so it never answers from device memory at an address the guest has left; it
//! comes back at the new address when decoding is turned on. Cloud Hypervisor ignores the
//! decode bit altogether and only follows moves; QEMU unmaps at every decode-off (its KVM
//! slots are deleted and re-created each time). docs/architecture.md has the comparison.

/// One BAR as the guest's config space describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarState {
    /// Whether the guest's command register enables the BAR's address space.
    pub decoding: bool,
    /// The address the BAR decodes at while `decoding` (the last final address seen with
    /// decoding on).
    pub live: u64,
    /// The final address in the BAR register(s) now; `None` while the guest is sizing it.
    pub register: Option<u64>,
}

/// What the owner of a BAR's slots and traps must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Leave everything as it is.
    Keep,
    /// Remove the slots and traps (decoding off and the guest moved the BAR away).
    Remove,
    /// Install at this address (removing it from wherever it was first).
    Install(u64),
}

/// The placement for a BAR installed at `installed` (None: not installed) whose config space
/// says `state`.
pub fn placement(installed: Option<u64>, state: BarState) -> Placement {
    if state.decoding {
        return if installed == Some(state.live) {
            Placement::Keep
        } else {
            Placement::Install(state.live)
        };
    }
    match (installed, state.register) {
        (None, _) => Placement::Keep,
        // Mid-sizing: the register holds no address, the BAR has not moved.
        (Some(_), None) => Placement::Keep,
        (Some(at), Some(register)) if register == at => Placement::Keep,
        (Some(_), Some(_)) => Placement::Remove,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: u64 = 0x40_0000_0000;
    const B: u64 = 0x80_0000_0000;

    fn state(decoding: bool, live: u64, register: Option<u64>) -> BarState {
        BarState {
            decoding,
            live,
            register,
        }
    }

    #[test]
    fn decoding_off_at_the_same_address_parks() {
        assert_eq!(
            placement(Some(A), state(false, A, Some(A))),
            Placement::Keep
        );
    }

    #[test]
    fn sizing_with_decoding_off_parks() {
        assert_eq!(placement(Some(A), state(false, A, None)), Placement::Keep);
    }

    #[test]
    fn a_move_with_decoding_off_removes_at_once() {
        assert_eq!(
            placement(Some(A), state(false, A, Some(B))),
            Placement::Remove
        );
    }

    #[test]
    fn decoding_on_installs_at_the_live_address() {
        assert_eq!(
            placement(None, state(true, B, Some(B))),
            Placement::Install(B)
        );
        assert_eq!(
            placement(Some(A), state(true, B, Some(B))),
            Placement::Install(B)
        );
        assert_eq!(placement(Some(B), state(true, B, Some(B))), Placement::Keep);
    }

    #[test]
    fn a_removed_bar_stays_removed_until_decoding_is_on() {
        // Moved away and back with decoding off: still nothing until decode-on.
        assert_eq!(placement(None, state(false, A, Some(A))), Placement::Keep);
        assert_eq!(
            placement(None, state(true, A, Some(A))),
            Placement::Install(A)
        );
    }

    #[test]
    fn a_linux_probe_sequence_never_reinstalls() {
        // decode off, size (all ones), restore, decode on, six more times: one install.
        let mut installed = Some(A);
        let mut installs = 0;
        for _ in 0..7 {
            for s in [
                state(false, A, Some(A)),
                state(false, A, None),
                state(false, A, Some(A)),
                state(true, A, Some(A)),
            ] {
                match placement(installed, s) {
                    Placement::Keep => {}
                    Placement::Remove => installed = None,
                    Placement::Install(at) => {
                        installed = Some(at);
                        installs += 1;
                    }
                }
            }
        }
        assert_eq!((installed, installs), (Some(A), 0));
    }
}
