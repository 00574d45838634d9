//! `checker kvm-hold READY-FILE`: opens one KVM VM, with an in-kernel irqchip and a vCPU that
//! never runs, writes READY-FILE and keeps them open until killed. L2's init starts it at boot
//! so that L2 always has a VM.
//!
//! Why: when the number of VMs goes from 0 to 1 or back, KVM enables or disables SVM on every
//! CPU by IPI and flips static keys (the preempt notifiers tested in `__schedule`, the LAPIC's
//! software-disabled key of a fresh vCPU), which the kernel patches into its own text with an
//! int3 breakpoint and more IPIs. Under QEMU 7.2's TCG that patching now and then leaves the
//! other L2 vCPU looping on the int3 with interrupts off while the patching one waits for it
//! in `smp_call_function_many_cond`: a soft lockup that ends the run (docs/testing.md). With
//! this VM held from boot those counts never drop to 0, so starting and ending a VMM patches
//! nothing and sends no such IPI.

use std::io::Write;

use kvm_ioctls::Kvm;

/// What is held: dropping it closes the VM.
type Held = (Kvm, kvm_ioctls::VmFd, kvm_ioctls::VcpuFd);

fn hold() -> Result<Held, kvm_ioctls::Error> {
    let kvm = Kvm::new()?;
    let vm = kvm.create_vm()?;
    // The irqchip first: a vCPU created without an in-kernel LAPIC flips another key.
    vm.create_irq_chip()?;
    let vcpu = vm.create_vcpu(0)?;
    Ok((kvm, vm, vcpu))
}

pub fn main(args: &[String]) -> i32 {
    let [ready] = args else {
        eprintln!("usage: checker kvm-hold READY-FILE");
        return 2;
    };
    let _held = match hold() {
        Ok(h) => h,
        Err(e) => {
            eprintln!("checker kvm-hold: /dev/kvm: {e}");
            return 1;
        }
    };
    let written = std::fs::File::create(ready)
        .and_then(|mut f| writeln!(f, "VM held by pid {}", std::process::id()));
    if let Err(e) = written {
        eprintln!("checker kvm-hold: {ready}: {e}");
        return 1;
    }
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_a_vm_with_a_vcpu() {
        assert_eq!(main(&[]), 2, "no ready file");
        // This machine's /dev/kvm runs vmm/tests/tiny_guest.rs, so it can hold a VM too.
        let (_, vm, _) = hold().expect("holding a VM on /dev/kvm");
        // A second irqchip and a second vCPU 0 are refused: the first ones exist, and the
        // irqchip came before the vCPU (KVM takes no irqchip once a vCPU exists).
        assert_eq!(vm.create_irq_chip().unwrap_err().errno(), libc::EEXIST);
        assert!(vm.create_vcpu(0).is_err());
        assert!(vm.create_vcpu(1).is_ok());
    }
}
