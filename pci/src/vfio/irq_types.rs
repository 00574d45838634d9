//! What the emulated interrupt capabilities (`msi`, `msix`, gathered by `interrupts`) tell
//! the VMM. A leaf of its own, so that each capability can produce updates without the
//! module that gathers them; `interrupts` re-exports these.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IrqKind {
    Msi,
    Msix,
}

/// Where an MSI write goes: address and data as the guest programmed them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiMessage {
    pub addr: u64,
    pub data: u32,
}

/// What the VMM must do after a guest access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqUpdate {
    /// Give the device `vectors` eventfds of this kind.
    Enable { kind: IrqKind, vectors: u16 },
    /// Take this kind of interrupt away from the device.
    Disable { kind: IrqKind },
    /// Route `vector` to `message`, or to nothing (masked) when `None`.
    Route {
        kind: IrqKind,
        vector: u16,
        message: Option<MsiMessage>,
    },
}

/// Where updates go (the VMM: VFIO + KVM; a recorder in tests).
pub trait IrqSink: Send {
    fn apply(&mut self, updates: Vec<IrqUpdate>);
    /// The device is going away: undo every enable and route, whatever the guest left on.
    fn shutdown(&mut self) {}
}
