//! VFIO passthrough pieces that are pure logic: how a device region becomes a guest BAR
//! (`layout`) and how a trapped access to that BAR is answered (`dispatch`). The VFIO device
//! itself (ioctls, memory slots, interrupts) builds on these.

pub mod config;
pub mod dispatch;
pub mod layout;
pub mod msix;

pub use config::{DeviceConfig, PassthroughConfig};
pub use dispatch::{split_access, AccessPart, RegionIo};
pub use layout::{
    bar_layout, BarLayout, LayoutError, Limits, Piece, PieceKind, RegionDesc, SparseArea,
};
