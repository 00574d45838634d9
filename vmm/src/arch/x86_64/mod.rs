//! x86_64: 64-bit direct boot of a Linux bzImage (the kernel's "64-bit boot protocol").

pub mod boot;

pub mod cpuid;
pub mod regs;
