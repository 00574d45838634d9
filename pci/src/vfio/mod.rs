//! VFIO passthrough pieces that are pure logic: which BARs a function has (`probe`), how a
//! device region becomes a guest BAR (`layout`), how a trapped access to that BAR is answered
//! (`dispatch`), the guest's view of config space (`config`) and the emulated MSI/MSI-X
//! capabilities (`interrupts`, `msi`, `msix`). The VFIO device itself (ioctls, memory slots,
//! KVM routes) builds on these.

mod capability;
pub mod config;
pub mod counters;
pub mod dispatch;
pub mod interrupts;
mod irq_types;
pub mod layout;
pub mod msi;
pub mod msix;
pub mod placement;
pub mod probe;

pub use config::{DeviceConfig, PassthroughConfig};
pub use counters::{AccessKind, BarCounters, ConfigCounter};
pub use dispatch::{split_access, AccessPart, RegionIo};
pub use interrupts::{
    InterruptCaps, Interrupts, IrqKind, IrqSink, IrqUpdate, MsiMessage, SharedInterrupts,
};
pub use layout::{
    bar_layout, BarLayout, LayoutError, Limits, Piece, PieceKind, RegionDesc, SparseArea,
};
pub use placement::{placement, BarState, Placement};
pub use probe::{
    check_msix_placement, probe_bars, FunctionInfo, MsixPlacementError, Probe, ProbeError,
    ProbedBar, RegionInfo,
};
