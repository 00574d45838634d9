//! How a device asks the VMM to stop the VM (power button, reset register, ...).

/// A guest-initiated request that ends the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmExitRequest {
    PowerOff,
    Reset,
}

/// Called from a vCPU thread inside a device's bus access; must not block for long.
pub type ExitCallback = Box<dyn Fn(VmExitRequest) + Send>;
