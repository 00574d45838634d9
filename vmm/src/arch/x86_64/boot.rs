//! Direct boot of Linux: kernel, initramfs and command line into guest RAM, and the boot
//! information the kernel reads: for a bzImage the zero page (boot_params, 64-bit entry), for
//! an ELF vmlinux with a PVH note the `hvm_start_info` (32-bit PVH entry). Both carry the
//! e820 map and the RSDP address.

use std::fs::File;
use std::path::{Path, PathBuf};

use std::io::{Read, Seek, SeekFrom};

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::{start_info, Elf, PvhBootCapability};
use linux_loader::loader::{load_cmdline, Cmdline, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::memory::layout::{
    Layout, CMDLINE_ADDR, CMDLINE_MAX, HIGH_RAM_START, KERNEL_ADDR, PVH_INFO_ADDR, PVH_MEMMAP_ADDR,
    PVH_MODLIST_ADDR, ZERO_PAGE_ADDR,
};

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot open kernel {0}: {1}")]
    OpenKernel(PathBuf, std::io::Error),
    #[error("cannot load kernel {0}: {1} (ghvmm boots x86_64 bzImage kernels)")]
    LoadKernel(PathBuf, linux_loader::loader::Error),
    #[error("cannot open initramfs {0}: {1}")]
    OpenInitramfs(PathBuf, std::io::Error),
    #[error("initramfs {path} ({size} bytes) does not fit in guest RAM below {limit:#x} above the kernel")]
    InitramfsTooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("cannot read initramfs {0}: {1}")]
    ReadInitramfs(PathBuf, String),
    #[error("kernel command line: {0}")]
    Cmdline(String),
    #[error("too many e820 entries ({0})")]
    E820(usize),
    #[error("writing the zero page: {0}")]
    ZeroPage(vm_memory::GuestMemoryError),
    #[error("ELF kernel {0} has no PVH entry point (XEN_ELFNOTE_PHYS32_ENTRY); use a bzImage or a kernel built with CONFIG_PVH")]
    NoPvhEntry(PathBuf),
    #[error("writing the PVH start info: {0}")]
    StartInfo(vm_memory::GuestMemoryError),
}

/// How the vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// bzImage: 64-bit long mode, RSI = zero page.
    Linux64(u64),
    /// ELF vmlinux: 32-bit protected mode without paging, EBX = hvm_start_info.
    Pvh(u64),
}

type Result<T> = std::result::Result<T, BootError>;

/// Offset of the 64-bit entry point from the start of a bzImage's protected-mode code.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;

pub struct BootSpec<'a> {
    pub kernel: &'a Path,
    pub initramfs: Option<&'a Path>,
    pub cmdline: &'a str,
    pub rsdp_addr: u64,
}

/// Loads everything and returns how to enter the kernel.
pub fn load_linux(mem: &GuestMemoryMmap, layout: &Layout, spec: &BootSpec) -> Result<Entry> {
    let mut kernel =
        File::open(spec.kernel).map_err(|e| BootError::OpenKernel(spec.kernel.into(), e))?;
    let mut magic = [0u8; 4];
    let is_elf = kernel.read_exact(&mut magic).is_ok() && magic == *b"\x7fELF";
    kernel
        .seek(SeekFrom::Start(0))
        .map_err(|e| BootError::OpenKernel(spec.kernel.into(), e))?;
    if is_elf {
        load_pvh(mem, layout, spec, &mut kernel)
    } else {
        load_bzimage(mem, layout, spec, &mut kernel)
    }
}

fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &str, capacity: usize) -> Result<()> {
    let mut c = Cmdline::new(capacity).map_err(|e| BootError::Cmdline(e.to_string()))?;
    c.insert_str(cmdline)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    load_cmdline(mem, GuestAddress(CMDLINE_ADDR), &c).map_err(|e| BootError::Cmdline(e.to_string()))
}

fn load_bzimage(
    mem: &GuestMemoryMmap,
    layout: &Layout,
    spec: &BootSpec,
    kernel: &mut File,
) -> Result<Entry> {
    let loaded = BzImage::load(
        mem,
        Some(GuestAddress(KERNEL_ADDR)),
        kernel,
        Some(GuestAddress(HIGH_RAM_START)),
    )
    .map_err(|e| BootError::LoadKernel(spec.kernel.into(), e))?;
    let mut params = boot_params::default();
    if let Some(hdr) = loaded.setup_header {
        params.hdr = hdr;
    }

    let cmdline_capacity = match params.hdr.cmdline_size {
        0 => 256,
        n => (n as usize + 1).min(CMDLINE_MAX),
    };
    write_cmdline(mem, spec.cmdline, cmdline_capacity)?;

    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = spec.cmdline.len() as u32;
    if params.hdr.kernel_alignment < KERNEL_MIN_ALIGNMENT {
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    }

    if let Some(path) = spec.initramfs {
        let (addr, size) = load_initramfs(
            mem,
            layout,
            path,
            loaded.kernel_end,
            params.hdr.initrd_addr_max,
        )?;
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }

    let e820 = layout.e820();
    if e820.len() > params.e820_table.len() {
        return Err(BootError::E820(e820.len()));
    }
    for (slot, e) in params.e820_table.iter_mut().zip(&e820) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind as u32,
        };
    }
    params.e820_entries = e820.len() as u8;
    params.acpi_rsdp_addr = spec.rsdp_addr;

    mem.write_obj(params, GuestAddress(ZERO_PAGE_ADDR))
        .map_err(BootError::ZeroPage)?;
    Ok(Entry::Linux64(
        loaded.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
    ))
}

const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
/// The PVH entry has no header to say how long a command line it takes; Linux's is 2048.
const PVH_CMDLINE_MAX: usize = 2048;
/// Room for the memory map between PVH_MEMMAP_ADDR and the zero page (unused by PVH).
const PVH_MAX_MEMMAP: usize = 32;

fn load_pvh(
    mem: &GuestMemoryMmap,
    layout: &Layout,
    spec: &BootSpec,
    kernel: &mut File,
) -> Result<Entry> {
    let loaded = Elf::load(mem, None, kernel, Some(GuestAddress(HIGH_RAM_START)))
        .map_err(|e| BootError::LoadKernel(spec.kernel.into(), e))?;
    let PvhBootCapability::PvhEntryPresent(entry) = loaded.pvh_boot_cap else {
        return Err(BootError::NoPvhEntry(spec.kernel.into()));
    };
    write_cmdline(mem, spec.cmdline, PVH_CMDLINE_MAX)?;

    let mut info = start_info::hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_ADDR,
        rsdp_paddr: spec.rsdp_addr,
        memmap_paddr: PVH_MEMMAP_ADDR,
        ..Default::default()
    };
    if let Some(path) = spec.initramfs {
        let (addr, size) = load_initramfs(mem, layout, path, loaded.kernel_end, 0)?;
        let module = start_info::hvm_modlist_entry {
            paddr: addr,
            size,
            ..Default::default()
        };
        mem.write_obj(module, GuestAddress(PVH_MODLIST_ADDR))
            .map_err(BootError::StartInfo)?;
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_ADDR;
    }
    let e820 = layout.e820();
    if e820.len() > PVH_MAX_MEMMAP {
        return Err(BootError::E820(e820.len()));
    }
    for (i, e) in e820.iter().enumerate() {
        let entry = start_info::hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind as u32,
            reserved: 0,
        };
        let at = PVH_MEMMAP_ADDR + (i * std::mem::size_of_val(&entry)) as u64;
        mem.write_obj(entry, GuestAddress(at))
            .map_err(BootError::StartInfo)?;
    }
    info.memmap_entries = e820.len() as u32;
    mem.write_obj(info, GuestAddress(PVH_INFO_ADDR))
        .map_err(BootError::StartInfo)?;
    Ok(Entry::Pvh(entry.0))
}

/// Real-mode code at the reset vector: `mov al, RESET_VALUE; mov dx, RESET_PORT; out dx, al;
/// hlt; jmp $-1`. Linux on hardware-reduced ACPI without EFI resets by jumping here (its
/// `reboot_init` prefers EFI, and the fallback after EFI is the BIOS reset vector), so this is
/// the path `reboot` takes in a ghvmm guest.
pub fn reset_vector_stub(port: u16, value: u8) -> [u8; 9] {
    let p = port.to_le_bytes();
    [0xb0, value, 0xba, p[0], p[1], 0xee, 0xf4, 0xeb, 0xfd]
}

pub fn write_reset_vector(mem: &GuestMemoryMmap, port: u16, value: u8) -> Result<()> {
    mem.write_slice(
        &reset_vector_stub(port, value),
        GuestAddress(crate::memory::layout::RESET_VECTOR),
    )
    .map_err(BootError::ZeroPage)
}

/// Places the initramfs page-aligned at the top of low RAM (below what the kernel can reach).
fn load_initramfs(
    mem: &GuestMemoryMmap,
    layout: &Layout,
    path: &Path,
    kernel_end: u64,
    initrd_addr_max: u32,
) -> Result<(u64, u64)> {
    let mut file = File::open(path).map_err(|e| BootError::OpenInitramfs(path.into(), e))?;
    let size = file
        .metadata()
        .map_err(|e| BootError::OpenInitramfs(path.into(), e))?
        .len();
    // 0 means "not told": the boot protocol's historical default limit.
    let max = match initrd_addr_max {
        0 => 0x37ff_ffff,
        n => u64::from(n),
    };
    let limit = layout.low_ram_end().min(max + 1);
    let addr = limit
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|a| *a >= kernel_end && size <= u64::from(u32::MAX))
        .ok_or_else(|| BootError::InitramfsTooLarge {
            path: path.into(),
            size,
            limit,
        })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|e| BootError::ReadInitramfs(path.into(), e.to_string()))?;
    Ok((addr, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_stub_writes_the_reset_register() {
        assert_eq!(
            reset_vector_stub(0x602, 1),
            [0xb0, 0x01, 0xba, 0x02, 0x06, 0xee, 0xf4, 0xeb, 0xfd]
        );
        // It fits between the reset vector and the end of the first MiB, above the ACPI tables.
        const { assert!(crate::memory::layout::RESET_VECTOR + 9 <= 0x10_0000) };
        const { assert!(crate::memory::layout::ACPI_LIMIT <= crate::memory::layout::RESET_VECTOR) };
    }
}
