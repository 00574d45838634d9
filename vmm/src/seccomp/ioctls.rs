//! The ioctl request numbers the filters allow, built from the kernel headers' definitions
//! (direction, type, number, argument struct) with vmm-sys-util's macros and the argument
//! structs of kvm-bindings/vfio-bindings, so a size never drifts from the struct the crates
//! pass. The unit test pins each to the value the kernel's _IOC() gives.

#![allow(non_snake_case)]

use kvm_bindings::{
    kvm_irq_routing, kvm_irqfd, kvm_regs, kvm_sregs, kvm_userspace_memory_region, KVMIO,
};
use vfio_bindings::bindings::vfio::{VFIO_BASE, VFIO_TYPE as VFIO_TYPE_};

vmm_sys_util::ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
vmm_sys_util::ioctl_iow_nr!(
    KVM_SET_USER_MEMORY_REGION,
    KVMIO,
    0x46,
    kvm_userspace_memory_region
);
vmm_sys_util::ioctl_iow_nr!(KVM_IRQFD, KVMIO, 0x76, kvm_irqfd);
vmm_sys_util::ioctl_iow_nr!(KVM_SET_GSI_ROUTING, KVMIO, 0x6a, kvm_irq_routing);
vmm_sys_util::ioctl_io_nr!(KVM_CHECK_EXTENSION, KVMIO, 0x03);

// VFIO's ioctls are all _IO(VFIO_TYPE, VFIO_BASE + n) (linux/vfio.h).
vmm_sys_util::ioctl_io_nr!(VFIO_GET_API_VERSION, VFIO_TYPE_.into(), VFIO_BASE);
vmm_sys_util::ioctl_io_nr!(VFIO_CHECK_EXTENSION, VFIO_TYPE_.into(), VFIO_BASE + 1);
vmm_sys_util::ioctl_io_nr!(VFIO_SET_IOMMU, VFIO_TYPE_.into(), VFIO_BASE + 2);
vmm_sys_util::ioctl_io_nr!(VFIO_GROUP_GET_STATUS, VFIO_TYPE_.into(), VFIO_BASE + 3);
vmm_sys_util::ioctl_io_nr!(VFIO_GROUP_SET_CONTAINER, VFIO_TYPE_.into(), VFIO_BASE + 4);
vmm_sys_util::ioctl_io_nr!(VFIO_GROUP_UNSET_CONTAINER, VFIO_TYPE_.into(), VFIO_BASE + 5);
vmm_sys_util::ioctl_io_nr!(VFIO_GROUP_GET_DEVICE_FD, VFIO_TYPE_.into(), VFIO_BASE + 6);
vmm_sys_util::ioctl_io_nr!(VFIO_DEVICE_GET_INFO, VFIO_TYPE_.into(), VFIO_BASE + 7);
vmm_sys_util::ioctl_io_nr!(
    VFIO_DEVICE_GET_REGION_INFO,
    VFIO_TYPE_.into(),
    VFIO_BASE + 8
);
vmm_sys_util::ioctl_io_nr!(VFIO_DEVICE_GET_IRQ_INFO, VFIO_TYPE_.into(), VFIO_BASE + 9);
vmm_sys_util::ioctl_io_nr!(VFIO_DEVICE_SET_IRQS, VFIO_TYPE_.into(), VFIO_BASE + 10);
vmm_sys_util::ioctl_io_nr!(VFIO_DEVICE_RESET, VFIO_TYPE_.into(), VFIO_BASE + 11);
vmm_sys_util::ioctl_io_nr!(VFIO_IOMMU_MAP_DMA, VFIO_TYPE_.into(), VFIO_BASE + 13);
vmm_sys_util::ioctl_io_nr!(VFIO_IOMMU_UNMAP_DMA, VFIO_TYPE_.into(), VFIO_BASE + 14);

/// Where an ioctl request keeps its type (linux/ioctl.h: _IOC_TYPESHIFT, 8 bits).
pub const IOCTL_TYPE_SHIFT: u64 = 8;
pub const IOCTL_TYPE_MASK: u64 = 0xff << IOCTL_TYPE_SHIFT;
/// KVM's ioctl type (KVMIO) and VFIO's (';').
pub const KVM_TYPE: u64 = KVMIO as u64;
pub const VFIO_TYPE: u64 = VFIO_TYPE_ as u64;

/// Terminal ioctls (asm-generic/ioctls.h): read and set the attributes.
pub const TCGETS: u64 = libc::TCGETS;
pub const TCSETS: u64 = libc::TCSETS;
/// Bytes waiting on a socket (the API's idle-connection check).
pub const FIONREAD: u64 = libc::FIONREAD;
/// std's `set_nonblocking` on a socket.
pub const FIONBIO: u64 = libc::FIONBIO;

/// What the vCPU thread asks of KVM: run, its registers for the SIGUSR1 dump, and what a
/// guest access may trigger on the VM (a BAR's slot built at its first access, MSI routes).
pub fn vcpu() -> Vec<u64> {
    [
        KVM_RUN(),
        KVM_GET_REGS(),
        KVM_GET_SREGS(),
        KVM_SET_USER_MEMORY_REGION(),
        KVM_IRQFD(),
        KVM_SET_GSI_ROUTING(),
        KVM_CHECK_EXTENSION(),
        VFIO_DEVICE_SET_IRQS(),
        VFIO_DEVICE_GET_IRQ_INFO(),
        VFIO_DEVICE_GET_REGION_INFO(),
        VFIO_DEVICE_RESET(),
    ]
    .into()
}

/// What assigning, tearing down and giving back a device asks of KVM and VFIO.
pub fn device_management() -> Vec<u64> {
    [
        KVM_SET_USER_MEMORY_REGION(),
        KVM_IRQFD(),
        KVM_SET_GSI_ROUTING(),
        KVM_CHECK_EXTENSION(),
        VFIO_GET_API_VERSION(),
        VFIO_CHECK_EXTENSION(),
        VFIO_SET_IOMMU(),
        VFIO_GROUP_GET_STATUS(),
        VFIO_GROUP_SET_CONTAINER(),
        VFIO_GROUP_UNSET_CONTAINER(),
        VFIO_GROUP_GET_DEVICE_FD(),
        VFIO_DEVICE_GET_INFO(),
        VFIO_DEVICE_GET_REGION_INFO(),
        VFIO_DEVICE_GET_IRQ_INFO(),
        VFIO_DEVICE_SET_IRQS(),
        VFIO_DEVICE_RESET(),
        VFIO_IOMMU_MAP_DMA(),
        VFIO_IOMMU_UNMAP_DMA(),
    ]
    .into_iter()
    .chain([FIONBIO, FIONREAD])
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_the_kernels() {
        // Values of the kernel's _IOC() for x86_64, as strace prints them.
        let want: [(u64, u64); 12] = [
            (KVM_RUN(), 0xae80),
            (KVM_GET_REGS(), 0x8090_ae81),
            (KVM_GET_SREGS(), 0x8138_ae83),
            (KVM_SET_USER_MEMORY_REGION(), 0x4020_ae46),
            (KVM_IRQFD(), 0x4020_ae76),
            (KVM_SET_GSI_ROUTING(), 0x4008_ae6a),
            (VFIO_DEVICE_GET_REGION_INFO(), 0x3b6c),
            (VFIO_DEVICE_SET_IRQS(), 0x3b6e),
            (VFIO_IOMMU_MAP_DMA(), 0x3b71),
            (TCGETS, 0x5401),
            (TCSETS, 0x5402),
            (FIONREAD, 0x541b),
        ];
        for (i, (got, want)) in want.into_iter().enumerate() {
            assert_eq!(got, want, "entry {i}: {got:#x} != {want:#x}");
        }
    }
}
