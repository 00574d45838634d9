//! Architecture-specific VM and vCPU set-up. Only x86_64 exists today; an aarch64 port adds
//! a sibling module behind its own `cfg`.

#[cfg(target_arch = "x86_64")]
pub mod x86_64;
#[cfg(target_arch = "x86_64")]
pub use self::x86_64::*;
