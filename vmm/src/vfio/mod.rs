//! VFIO PCI passthrough (`--device path=/sys/bus/pci/devices/BDF`): opens the device through
//! a type1 container, DMA-maps guest RAM (IOVA = guest physical address), lays out each BAR
//! (`pci::vfio::bar_layout`), maps the mappable pieces as KVM memory slots and traps the rest
//! (forwarded to the region, or answered as padding).
//!
//! vfio-ioctls 0.10 is used for the container/group/device set-up and region info. Its
//! `region_read`/`region_write` only log errors, so region and config accesses go through
//! pread/pwrite on the device fd here, where the error reaches the caller. It has no mmap
//! helper either: `map_region` below does it.
//!
//! MSI and MSI-X are emulated (`pci::vfio::interrupts`) and applied to VFIO and KVM by
//! `irq::VfioIrqSink`; the MSI-X table is answered by the BAR trap from the emulated state.
//! INTx is not offered (the interrupt pin reads 0).

mod irq;

use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use devices::{Bus, BusDevice};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use pci::vfio::dispatch::{self, RegionIo};
use pci::vfio::{
    bar_layout, BarLayout, InterruptCaps, Interrupts, Limits, PassthroughConfig, PieceKind,
    RegionDesc, SharedInterrupts, SparseArea,
};
use pci::{BarReprogram, PciDevice};
use vfio_bindings::bindings::vfio::{VFIO_PCI_CONFIG_REGION_INDEX, VFIO_REGION_INFO_FLAG_MMAP};
use vfio_ioctls::{VfioContainer, VfioDevice, VfioRegionInfoCap};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::bar_allocator::{BarAllocator, Window};
use crate::irq_routing::GsiRouting;
use crate::layout::{SegmentLayout, PAGE_SIZE};

#[derive(Debug, thiserror::Error)]
pub enum VfioSetupError {
    #[error("{path} is not a PCI device in sysfs: {error}")]
    NotADevice {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "{path}: the device is bound to {driver}, not to a VFIO driver (bind it to vfio-pci first)"
    )]
    NotVfioBound { path: PathBuf, driver: String },
    #[error("{path}: cannot open the VFIO container /dev/vfio/vfio: {error}")]
    Container {
        path: PathBuf,
        error: vfio_ioctls::VfioError,
    },
    #[error("{path}: cannot open the device through its IOMMU group: {error}")]
    Device {
        path: PathBuf,
        error: vfio_ioctls::VfioError,
    },
    #[error("{path}: cannot DMA-map guest RAM at {gpa:#x}: {error}")]
    DmaMap {
        path: PathBuf,
        gpa: u64,
        error: vfio_ioctls::VfioError,
    },
    #[error("{path}: {error}")]
    Layout {
        path: PathBuf,
        error: pci::vfio::LayoutError,
    },
    #[error("{path}: BAR {bar}: {error}")]
    BarSpace {
        path: PathBuf,
        bar: usize,
        error: crate::bar_allocator::BarAllocError,
    },
    #[error(
        "{path}: BAR {bar}: cannot mmap {size:#x} bytes at region offset {offset:#x}: {error}"
    )]
    Mmap {
        path: PathBuf,
        bar: usize,
        offset: u64,
        size: u64,
        error: std::io::Error,
    },
    #[error("{path}: BAR {bar}: KVM refused memory slot {slot} at {gpa:#x}: {error}")]
    Slot {
        path: PathBuf,
        bar: usize,
        slot: u32,
        gpa: u64,
        error: kvm_ioctls::Error,
    },
    #[error("{path}: BAR {bar}: placing the trapped range on the bus: {error}")]
    Bus {
        path: PathBuf,
        bar: usize,
        error: devices::BusError,
    },
    #[error("config space: {0}")]
    Config(String),
    #[error("{path}: PCI: {error}")]
    Pci { path: PathBuf, error: pci::PciError },
}

type Result<T> = std::result::Result<T, VfioSetupError>;

/// pread/pwrite on the device fd at `base` (a region's offset in the fd).
struct FdRegion {
    device: Arc<VfioDevice>,
    base: u64,
}

impl FdRegion {
    fn pread(&self, offset: u64, data: &mut [u8]) -> std::io::Result<()> {
        let at = self
            .base
            .checked_add(offset)
            .ok_or(std::io::ErrorKind::InvalidInput)?;
        // SAFETY: reads at most data.len() bytes into a buffer we own.
        let n = unsafe {
            libc::pread(
                self.device.as_raw_fd(),
                data.as_mut_ptr().cast(),
                data.len(),
                at as libc::off_t,
            )
        };
        match n {
            n if n as usize == data.len() => Ok(()),
            n if n < 0 => Err(std::io::Error::last_os_error()),
            _ => Err(std::io::ErrorKind::UnexpectedEof.into()),
        }
    }

    fn pwrite(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let at = self
            .base
            .checked_add(offset)
            .ok_or(std::io::ErrorKind::InvalidInput)?;
        // SAFETY: writes at most data.len() bytes from a buffer we own.
        let n = unsafe {
            libc::pwrite(
                self.device.as_raw_fd(),
                data.as_ptr().cast(),
                data.len(),
                at as libc::off_t,
            )
        };
        match n {
            n if n as usize == data.len() => Ok(()),
            n if n < 0 => Err(std::io::Error::last_os_error()),
            _ => Err(std::io::ErrorKind::WriteZero.into()),
        }
    }
}

impl RegionIo for FdRegion {
    fn read(&self, offset: u64, data: &mut [u8]) -> std::io::Result<()> {
        self.pread(offset, data)
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.pwrite(offset, data)
    }
}

/// The trapped parts of one BAR (forwarded and padding, and the emulated MSI-X table), on
/// the MMIO bus.
struct BarTrap {
    bar: usize,
    bar_base: u64,
    layout: BarLayout,
    region: FdRegion,
    interrupts: SharedInterrupts,
    reported: bool,
}

impl BarTrap {
    fn report(&mut self, errors: Vec<dispatch::DeviceError>) {
        // Once per BAR: a failing device must not flood the log from a vCPU loop.
        if let Some(e) = errors.first() {
            if !self.reported {
                log::error!(
                    "BAR {}: region access at {:#x} failed: {}",
                    self.bar,
                    e.offset,
                    e.error
                );
                self.reported = true;
            }
        }
    }
}

impl BusDevice for BarTrap {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        let at = base - self.bar_base + offset;
        let irq = self.interrupts.lock().unwrap_or_else(|e| e.into_inner());
        if irq.table_read(self.bar, at, data) {
            return;
        }
        drop(irq);
        let errors = dispatch::read(&self.layout, &self.region, at, data);
        self.report(errors);
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        let at = base - self.bar_base + offset;
        let mut irq = self.interrupts.lock().unwrap_or_else(|e| e.into_inner());
        if irq.table_write(self.bar, at, data) {
            return;
        }
        drop(irq);
        let errors = dispatch::write(&self.layout, &self.region, at, data);
        self.report(errors);
    }
}

/// A mapped piece of a BAR: its host mapping and the KVM slot number reserved for it.
struct MappedPiece {
    offset: u64,
    size: u64,
    host: u64,
    slot: u32,
}

/// One BAR's pieces, installable at any guest address: KVM slots for the mapped pieces and
/// the trap device for the rest move (or go away) together.
struct BarPlan {
    index: usize,
    mapped: Vec<MappedPiece>,
    trap: Arc<Mutex<BarTrap>>,
    trap_runs: Vec<(u64, u64)>,
    installed: Option<u64>,
}

impl BarPlan {
    fn set_slot(
        vm: &VmFd,
        p: &MappedPiece,
        gpa: u64,
        size: u64,
    ) -> std::result::Result<(), kvm_ioctls::Error> {
        let desc = kvm_userspace_memory_region {
            slot: p.slot,
            flags: 0,
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: p.host,
        };
        // SAFETY: the host mapping stays for the life of the process; size 0 deletes the slot.
        unsafe { vm.set_user_memory_region(desc) }
    }

    fn install(&mut self, vm: &VmFd, bus: &Bus, base: u64) -> std::result::Result<(), String> {
        for p in &self.mapped {
            Self::set_slot(vm, p, base + p.offset, p.size)
                .map_err(|e| format!("slot {} at {:#x}: {e}", p.slot, base + p.offset))?;
        }
        self.trap.lock().unwrap_or_else(|e| e.into_inner()).bar_base = base;
        for &(off, len) in &self.trap_runs {
            bus.insert(self.trap.clone(), base + off, len)
                .map_err(|e| format!("trap at {:#x}: {e}", base + off))?;
        }
        self.installed = Some(base);
        Ok(())
    }

    fn uninstall(&mut self, vm: &VmFd, bus: &Bus) {
        let Some(base) = self.installed.take() else {
            return;
        };
        for p in &self.mapped {
            if let Err(e) = Self::set_slot(vm, p, base + p.offset, 0) {
                log::error!("BAR {}: removing slot {}: {e}", self.index, p.slot);
            }
        }
        for &(off, _) in &self.trap_runs {
            let _ = bus.remove(base + off);
        }
    }
}

/// The guest-visible PCI function.
pub struct PassthroughDevice {
    config: PassthroughConfig,
    path: PathBuf,
    vm: Arc<VmFd>,
    mmio_bus: Arc<Bus>,
    bars: Vec<BarPlan>,
    _device: Arc<VfioDevice>,
}

impl PassthroughDevice {
    /// Makes the installed slots and traps match what the guest's registers say: BARs whose
    /// decoding is off are removed, moved BARs are reinstalled at their new address.
    fn reconcile(&mut self) {
        let wanted = self.config.decoding_bars();
        for plan in &mut self.bars {
            let want = wanted
                .iter()
                .find(|(i, _, _)| *i == plan.index)
                .map(|(_, _, a)| *a);
            if plan.installed == want {
                continue;
            }
            plan.uninstall(&self.vm, &self.mmio_bus);
            if let Some(base) = want {
                if let Err(e) = plan.install(&self.vm, &self.mmio_bus, base) {
                    // An address the guest chose that collides with something else: the BAR
                    // stays unmapped (reads all-ones), as a real device would not respond.
                    log::error!(
                        "{}: BAR {} at {base:#x}: {e}",
                        self.path.display(),
                        plan.index
                    );
                    plan.uninstall(&self.vm, &self.mmio_bus);
                    plan.installed = None;
                }
            }
            log::info!(
                "{}: BAR {} now at {:?}",
                self.path.display(),
                plan.index,
                plan.installed
            );
        }
    }
}

impl PciDevice for PassthroughDevice {
    fn read_config_register(&mut self, reg_idx: usize) -> u32 {
        self.config.read_config_register(reg_idx)
    }

    fn write_config_register(
        &mut self,
        reg_idx: usize,
        offset: u64,
        data: &[u8],
    ) -> Vec<BarReprogram> {
        // Moves are applied here, not by the config-access hook: this device owns its slots.
        let _ = self.config.write_config_register(reg_idx, offset, data);
        self.reconcile();
        Vec::new()
    }
}

fn check_bound_to_vfio(path: &Path) -> Result<()> {
    std::fs::metadata(path.join("config")).map_err(|source| VfioSetupError::NotADevice {
        path: path.into(),
        error: source,
    })?;
    let driver = std::fs::read_link(path.join("driver"))
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "no driver".into());
    let driver = if driver == "no driver" {
        driver
    } else {
        format!("driver {driver}")
    };
    if !driver.contains("vfio") {
        return Err(VfioSetupError::NotVfioBound {
            path: path.into(),
            driver,
        });
    }
    Ok(())
}

/// An mmap of `size` bytes of the device fd at `offset`, its host address aligned to `align`
/// (so the host kernel can back it with huge pfn mappings).
fn map_region(fd: i32, offset: u64, size: u64, align: u64) -> std::io::Result<*mut u8> {
    let len = size as usize;
    let span = len + align as usize;
    // SAFETY: reserve address space (no access) that the device mapping will replace.
    let reserve = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            span,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if reserve == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let start = reserve as usize;
    let aligned = (start + align as usize - 1) & !(align as usize - 1);
    // SAFETY: [aligned, aligned + len) lies inside the reservation we own; MAP_FIXED replaces it.
    let addr = unsafe {
        libc::mmap(
            aligned as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_FIXED,
            fd,
            offset as libc::off_t,
        )
    };
    if addr == libc::MAP_FAILED {
        let e = std::io::Error::last_os_error();
        // SAFETY: releasing our own reservation.
        unsafe { libc::munmap(reserve, span) };
        return Err(e);
    }
    // SAFETY: trimming the unused parts of our own reservation around the mapping.
    unsafe {
        if aligned > start {
            libc::munmap(reserve, aligned - start);
        }
        let end = aligned + len;
        if start + span > end {
            libc::munmap(end as *mut libc::c_void, start + span - end);
        }
    }
    Ok(addr.cast())
}

/// Everything the VM needs to keep for an assigned device.
pub struct Assigned {
    pub device: Arc<Mutex<PassthroughDevice>>,
}

pub struct VfioContext<'a> {
    pub vm: &'a Arc<VmFd>,
    pub mem: &'a GuestMemoryMmap,
    pub mmio_bus: &'a Arc<Bus>,
    pub allocator: &'a Mutex<BarAllocator>,
    pub container: &'a Mutex<Option<Arc<VfioContainer>>>,
    pub next_slot: &'a mut u32,
    /// The PCI segment the device goes to: its BARs come from this segment's windows.
    pub segment: SegmentLayout,
    pub routing: &'a Arc<GsiRouting>,
}

pub fn assign(ctx: &mut VfioContext, path: &Path) -> Result<Assigned> {
    check_bound_to_vfio(path)?;
    let p = || path.to_path_buf();
    // One container per VM; guest RAM is DMA-mapped into it once, after the first device's
    // group has set the IOMMU type (VFIO refuses mappings before that).
    let mut slot = ctx.container.lock().unwrap_or_else(|e| e.into_inner());
    let fresh = slot.is_none();
    let container = match slot.as_ref() {
        Some(c) => c.clone(),
        None => Arc::new(
            VfioContainer::new(None).map_err(|source| VfioSetupError::Container {
                path: p(),
                error: source,
            })?,
        ),
    };
    let device = Arc::new(
        VfioDevice::new(path, container.clone(), false).map_err(|source| {
            VfioSetupError::Device {
                path: p(),
                error: source,
            }
        })?,
    );
    if fresh {
        for region in ctx.mem.iter() {
            let gpa = region.start_addr().0;
            // SAFETY: the RAM mapping lives as long as the VM (the process).
            unsafe { container.vfio_dma_map(gpa, region.len() as usize, region.as_ptr()) }
                .map_err(|source| VfioSetupError::DmaMap {
                    path: p(),
                    gpa,
                    error: source,
                })?;
        }
        *slot = Some(container);
    }
    drop(slot);

    let config = FdRegion {
        device: device.clone(),
        base: device.get_region_offset(VFIO_PCI_CONFIG_REGION_INDEX),
    };
    let caps = pci::vfio::config::exposed_capabilities(&config);
    let irq_caps = InterruptCaps::from_device(&caps, &config);
    // The MSI-X table and PBA stay trapped: the table is emulated, the PBA read from the
    // device.
    let msix = irq_caps.msix_ranges();
    let sink = irq::VfioIrqSink::new(
        path.display().to_string(),
        device.clone(),
        ctx.routing.clone(),
    );
    let interrupts = Interrupts::new(irq_caps, Box::new(sink)).shared();
    let limits = Limits {
        page_size: PAGE_SIZE,
        mmio32_size: ctx.segment.mmio32.size,
        mmio64_size: ctx.segment.mmio64.size,
    };
    let fd = device.as_raw_fd();
    let mut bars = Vec::new();
    let mut plans = Vec::new();
    let mut bar = 0usize;
    while bar < 6 {
        let mut reg = [0u8; 4];
        let _ = config.pread(0x10 + 4 * bar as u64, &mut reg);
        let reg = u32::from_le_bytes(reg);
        let index = bar as u32;
        let size = device.get_region_size(index);
        let is_io = reg & 1 == 1;
        let is_64bit = !is_io && (reg >> 1) & 3 == 2;
        let this = bar;
        bar += if is_64bit { 2 } else { 1 };
        if size == 0 || is_io {
            if is_io && size != 0 {
                log::warn!(
                    "{}: I/O BAR {this} is not supported and stays hidden",
                    path.display()
                );
            }
            continue;
        }
        let sparse = device
            .get_region_caps(index)
            .into_iter()
            .find_map(|c| match c {
                VfioRegionInfoCap::SparseMmap(s) => Some(
                    s.areas
                        .iter()
                        .map(|a| SparseArea {
                            offset: a.offset,
                            size: a.size,
                        })
                        .collect(),
                ),
                _ => None,
            });
        let desc = RegionDesc {
            index,
            size,
            mmap: device.get_region_flags(index) & VFIO_REGION_INFO_FLAG_MMAP != 0,
            sparse,
            is_64bit,
            trapped: msix
                .iter()
                .filter(|r| r.bar == this)
                .map(|r| SparseArea {
                    offset: r.offset,
                    size: r.size,
                })
                .collect(),
        };
        let Some(layout) = bar_layout(&desc, &limits).map_err(|source| VfioSetupError::Layout {
            path: p(),
            error: source,
        })?
        else {
            continue;
        };
        let window = if is_64bit {
            Window::Mmio64
        } else {
            Window::Mmio32
        };
        let base = ctx
            .allocator
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .allocate(ctx.segment.id, window, layout.bar_size)
            .map_err(|source| VfioSetupError::BarSpace {
                path: p(),
                bar: this,
                error: source,
            })?;
        let region_offset = device.get_region_offset(index);
        let mut mapped = Vec::new();
        for piece in &layout.pieces {
            if let PieceKind::Mapped { host_align } = piece.kind {
                let host = map_region(fd, region_offset + piece.offset, piece.size, host_align)
                    .map_err(|error| VfioSetupError::Mmap {
                        path: p(),
                        bar: this,
                        offset: piece.offset,
                        size: piece.size,
                        error,
                    })?;
                mapped.push(MappedPiece {
                    offset: piece.offset,
                    size: piece.size,
                    host: host as u64,
                    slot: *ctx.next_slot,
                });
                *ctx.next_slot += 1;
            }
        }
        // One trap device answers every unmapped run of this BAR.
        let trap = Arc::new(Mutex::new(BarTrap {
            bar: this,
            bar_base: base,
            layout: layout.clone(),
            region: FdRegion {
                device: device.clone(),
                base: region_offset,
            },
            interrupts: interrupts.clone(),
            reported: false,
        }));
        let mut run: Option<(u64, u64)> = None;
        let mut trap_runs = Vec::new();
        for piece in &layout.pieces {
            let trapped = !matches!(piece.kind, PieceKind::Mapped { .. });
            match (trapped, run) {
                (true, Some((s, l))) => run = Some((s, l + piece.size)),
                (true, None) => run = Some((piece.offset, piece.size)),
                (false, Some(r)) => {
                    trap_runs.push(r);
                    run = None;
                }
                (false, None) => {}
            }
        }
        trap_runs.extend(run);
        let mut plan = BarPlan {
            index: this,
            mapped,
            trap,
            trap_runs,
            installed: None,
        };
        plan.install(ctx.vm, ctx.mmio_bus, base)
            .map_err(|e| VfioSetupError::Config(format!("{}: BAR {this}: {e}", path.display())))?;
        plans.push(plan);
        log::info!(
            "{}: BAR {this}: region {size:#x} bytes -> {:#x}-byte BAR at {base:#x}: {:?}",
            path.display(),
            layout.bar_size,
            layout.pieces
        );
        let prefetchable = reg & 0x8 != 0;
        bars.push((
            this,
            pci::vfio::config::bar_spec(layout.bar_size, is_64bit, prefetchable),
            base,
        ));
    }
    let config = PassthroughConfig::new(Box::new(config), &bars, interrupts)
        .map_err(|e| VfioSetupError::Config(format!("{}: {e}", path.display())))?;
    Ok(Assigned {
        device: Arc::new(Mutex::new(PassthroughDevice {
            config,
            path: path.into(),
            vm: ctx.vm.clone(),
            mmio_bus: ctx.mmio_bus.clone(),
            bars: plans,
            _device: device,
        })),
    })
}
