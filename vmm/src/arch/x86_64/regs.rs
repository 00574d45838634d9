//! Register, MSR, FPU and LAPIC state for entering a 64-bit Linux kernel directly, plus the
//! GDT and identity page tables that state refers to (written into guest RAM).

use kvm_bindings::{
    kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs,
};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::arch::boot::Entry;
use crate::memory::layout::{
    BOOT_STACK, GDT_ADDR, IDT_ADDR, PDE_ADDR, PDPTE_ADDR, PML4_ADDR, PVH_INFO_ADDR, ZERO_PAGE_ADDR,
};

#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("writing boot page tables or GDT into guest memory: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
    #[error("KVM {what}: {error}")]
    Kvm {
        what: &'static str,
        error: kvm_ioctls::Error,
    },
    #[error("building the MSR list: {0}")]
    Msrs(String),
}

type Result<T> = std::result::Result<T, RegsError>;

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> RegsError {
    move |source| RegsError::Kvm {
        what,
        error: source,
    }
}

const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// GDT entries: null, 64-bit code, data, TSS, 32-bit code (flat, as both boot protocols require).
const GDT: [u64; 5] = [
    0,
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
    gdt_entry(0xc09b, 0, 0xfffff),
];
const CODE_SEL: u16 = 1 << 3;
const DATA_SEL: u16 = 2 << 3;
const TSS_SEL: u16 = 3 << 3;
const CODE32_SEL: u16 = 4 << 3;

const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
}

/// Decodes a GDT entry into the segment register form KVM wants.
fn segment(entry: u64, selector: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit_raw = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    let limit = if g == 1 {
        (limit_raw << 12) | 0xfff
    } else {
        limit_raw
    };
    kvm_segment {
        base,
        limit,
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

/// Writes the GDT, an empty IDT and page tables identity-mapping the first GiB with 2 MiB pages.
pub fn write_boot_tables(mem: &GuestMemoryMmap) -> Result<()> {
    for (i, e) in GDT.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT_ADDR + 8 * i as u64))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_ADDR))?;
    mem.write_obj(PDPTE_ADDR | 0x03, GuestAddress(PML4_ADDR))?;
    mem.write_obj(PDE_ADDR | 0x03, GuestAddress(PDPTE_ADDR))?;
    for i in 0..512u64 {
        mem.write_obj((i << 21) | 0x83, GuestAddress(PDE_ADDR + i * 8))?;
    }
    Ok(())
}

/// Segment and control registers: long mode with paging for the 64-bit boot protocol, flat
/// 32-bit protected mode without paging for PVH.
pub fn setup_sregs(vcpu: &VcpuFd, entry: Entry) -> Result<()> {
    let mut sregs: kvm_sregs = vcpu.get_sregs().map_err(kvm("get sregs"))?;
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (std::mem::size_of_val(&GDT) - 1) as u16;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    let data = segment(GDT[2], DATA_SEL);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(GDT[3], TSS_SEL);
    match entry {
        Entry::Linux64(_) => {
            sregs.cs = segment(GDT[1], CODE_SEL);
            sregs.cr3 = PML4_ADDR;
            sregs.cr4 |= CR4_PAE;
            sregs.cr0 |= CR0_PE | CR0_ET | CR0_PG;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        Entry::Pvh(_) => {
            sregs.cs = segment(GDT[4], CODE32_SEL);
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    vcpu.set_sregs(&sregs).map_err(kvm("set sregs"))
}

/// General registers: RSI = zero page for the 64-bit protocol, RBX = start info for PVH.
pub fn setup_regs(vcpu: &VcpuFd, entry: Entry) -> Result<()> {
    let regs = match entry {
        Entry::Linux64(rip) => kvm_regs {
            rflags: 0x2,
            rip,
            rsp: BOOT_STACK,
            rbp: BOOT_STACK,
            rsi: ZERO_PAGE_ADDR,
            ..Default::default()
        },
        Entry::Pvh(rip) => kvm_regs {
            rflags: 0x2,
            rip,
            rbx: PVH_INFO_ADDR,
            ..Default::default()
        },
    };
    vcpu.set_regs(&regs).map_err(kvm("set regs"))
}

pub fn setup_fpu(vcpu: &VcpuFd) -> Result<()> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("set fpu"))
}

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default memory type write-back: without it Linux maps RAM uncached.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

pub fn setup_msrs(vcpu: &VcpuFd) -> Result<()> {
    let entries: Vec<kvm_msr_entry> = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
    .iter()
    .map(|&(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|e| RegsError::Msrs(format!("{e:?}")))?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm("set msrs"))?;
    if set != entries.len() {
        // KVM stops at the first MSR it refuses; the rest are optional for Linux, so go on.
        log::warn!(
            "KVM accepted {set} of {} boot MSRs (refused index {:#x})",
            entries.len(),
            entries.get(set).map_or(0, |e| e.index)
        );
    }
    Ok(())
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(l: &kvm_lapic_state, off: usize) -> u32 {
    let b = &l.regs[off..off + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_lapic_reg(l: &mut kvm_lapic_state, off: usize, v: u32) {
    for (i, b) in v.to_le_bytes().iter().enumerate() {
        l.regs[off + i] = *b as _;
    }
}

fn delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// LINT0 as ExtINT (the PIC) and LINT1 as NMI, the wiring a PC BIOS leaves behind.
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<()> {
    let mut l = vcpu.get_lapic().map_err(kvm("get lapic"))?;
    let lvt0 = lapic_reg(&l, APIC_LVT0);
    set_lapic_reg(&mut l, APIC_LVT0, delivery_mode(lvt0, APIC_MODE_EXTINT));
    let lvt1 = lapic_reg(&l, APIC_LVT1);
    set_lapic_reg(&mut l, APIC_LVT1, delivery_mode(lvt1, APIC_MODE_NMI));
    vcpu.set_lapic(&l).map_err(kvm("set lapic"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode_to_flat_long_mode_segments() {
        let cs = segment(GDT[1], CODE_SEL);
        assert_eq!(
            (cs.base, cs.limit, cs.l, cs.db, cs.type_, cs.present, cs.s),
            (0, 0xffff_ffff, 1, 0, 0xb, 1, 1)
        );
        let ds = segment(GDT[2], DATA_SEL);
        assert_eq!((ds.l, ds.db, ds.type_, ds.g), (0, 1, 3, 1));
        let cs32 = segment(GDT[4], CODE32_SEL);
        assert_eq!(
            (cs32.l, cs32.db, cs32.type_, cs32.limit),
            (0, 1, 0xb, 0xffff_ffff)
        );
        let tr = segment(GDT[3], TSS_SEL);
        assert_eq!((tr.type_, tr.s, tr.present), (0xb, 0, 1));
        assert_eq!(GDT[1], 0x00af_9b00_0000_ffff);
        assert_eq!(GDT[2], 0x00cf_9300_0000_ffff);
    }

    #[test]
    fn page_tables_identity_map_first_gib() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        write_boot_tables(&mem).unwrap();
        let pde: u64 = mem.read_obj(GuestAddress(PDE_ADDR + 8 * 511)).unwrap();
        assert_eq!(pde, (511 << 21) | 0x83);
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_ADDR)).unwrap();
        assert_eq!(pml4, PDPTE_ADDR | 3);
    }

    #[test]
    fn lapic_delivery_modes() {
        assert_eq!(delivery_mode(0x0001_0700, APIC_MODE_NMI), 0x0001_0400);
        assert_eq!(delivery_mode(0, APIC_MODE_EXTINT), 0x700);
    }
}
