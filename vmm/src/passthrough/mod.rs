//! PCI passthrough (`--device path=/sys/bus/pci/devices/BDF`, `--user-device socket=PATH`, and
//! hot plug): opens the device — through the VM's type1 container (the vfio crate's
//! `Containers`), or from a vfio-user server (`user`) — lays out each BAR
//! (`pci::vfio::bar_layout`), maps the mappable pieces as KVM memory slots and traps the rest
//! (`bar`), and tears all of it down again when the device is unplugged. `host::Host` is the
//! one place the two kinds of device differ.
//!
//! Everything that talks to the host device only (opening it, regions, mmap, its interrupts'
//! eventfds, the request interrupt) is the vfio crate's; this module is what needs the VM.
//!
//! MSI and MSI-X are emulated (`pci::vfio::interrupts`) and applied to VFIO and KVM by
//! `irq::VfioIrqSink`; the MSI-X table is answered by the BAR trap from the emulated state.
//! INTx is not offered (the interrupt pin reads 0).
//!
//! The removal that follows a host's request for the device back (VFIO's request
//! interrupt, `vfio::RequestWatcher`) is `hotplug`'s.

mod bar;
mod host;
mod irq;
pub mod user;
mod watcher;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use devices::{log_limited, Bus, LogLimit};
use kvm_ioctls::VmFd;
use pci::vfio::{
    placement, probe_bars, BarCounters, ConfigCounter, FunctionInfo, InterruptCaps, Interrupts,
    Limits, PassthroughConfig, PieceKind, Placement, ProbeError, RegionInfo, RegionIo,
    SharedInterrupts,
};
use pci::PciDevice;
use vfio::{Containers, DeviceIrqs, HostMapping, OnRequest, RequestWatcher, WatchError};
use vfio_bindings::bindings::vfio::{VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX};
use vm_memory::GuestMemoryMmap;

use bar::{BarPlan, BarSpace, BarTrap, MappedPiece};
use host::{Host, Region};
use user::{UserDevice, UserError};

use crate::config::DeviceSource;

use crate::device_manager::irq_routing::GsiRouting;
use crate::memory::bar_allocator::{BarAllocator, Window};
use crate::memory::layout::{SegmentLayout, PAGE_SIZE};
use crate::memory::memslots::MemSlots;
use crate::vm::exit::ExitState;

#[derive(Debug, thiserror::Error)]
pub enum VfioSetupError {
    /// The host device: not one for VFIO, or VFIO refused it.
    #[error(transparent)]
    Host(#[from] vfio::Error),
    /// The vfio-user server: not reachable, or refused guest RAM.
    #[error(transparent)]
    User(#[from] UserError),
    #[error(
        "{path}: BAR {bar}: the server offers areas to map but no descriptor to map them from"
    )]
    NoMmapSource { path: PathBuf, bar: usize },
    #[error("{path}: {error}")]
    Layout {
        path: PathBuf,
        error: pci::vfio::LayoutError,
    },
    #[error("{path}: BAR {bar}: {error}")]
    BarSpace {
        path: PathBuf,
        bar: usize,
        error: crate::memory::bar_allocator::BarAllocError,
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
    #[error("{path}: BAR {bar}: {error}")]
    MemSlot {
        path: PathBuf,
        bar: usize,
        error: crate::memory::memslots::SlotError,
    },
}

type Result<T> = std::result::Result<T, VfioSetupError>;

/// What a passed-through device needs from the VM, at boot and at hot plug alike: one bundle,
/// built once by `vm::Vm::start`, that the hot-plug side and every device share.
pub struct PassthroughVm {
    pub vm: Arc<VmFd>,
    pub mem: GuestMemoryMmap,
    pub mmio_bus: Arc<Bus>,
    pub allocator: Arc<Mutex<BarAllocator>>,
    /// The VM's one VFIO container, whose lifetime is the DMA mappings'.
    pub containers: Containers,
    pub slots: Arc<Mutex<MemSlots>>,
    pub routing: Arc<GsiRouting>,
    /// Where a panic on a device's own thread (its request watcher) ends the VM.
    pub exit: Arc<ExitState>,
}

impl PassthroughVm {
    /// The VM as BAR plans set their KVM slots.
    fn kvm_slots(&self) -> Arc<dyn bar::SlotSetter> {
        self.vm.clone()
    }

    /// KVM memory slots in use, RAM included.
    pub fn memory_slots_in_use(&self) -> u32 {
        self.slots.lock().in_use()
    }
}

/// Everything a live device holds; taken out (and released) as a whole at unplug.
struct AssignedResources {
    /// Watches VFIO's request interrupt (the host wants the device back), once started.
    /// First, so that it is also dropped (stopped) first.
    request: Option<RequestWatcher>,
    config: PassthroughConfig,
    bars: Vec<BarPlan>,
    /// The guest's config-space register accesses (`config` in `counters`).
    config_accesses: ConfigCounter,
    interrupts: SharedInterrupts,
    device: Host,
}

/// The guest-visible PCI function.
pub struct PassthroughDevice {
    path: PathBuf,
    vm: Arc<PassthroughVm>,
    /// None once unplugged: a vCPU that still holds the function reads all-ones.
    live: Option<AssignedResources>,
    /// The guest moves BARs as often as it likes: the lines that follow are rate-limited.
    log_limit: LogLimit,
}

impl PassthroughDevice {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Each BAR where the guest decodes it now: (index, what it is, address). Nothing once
    /// unplugged.
    pub fn guest_bars(&self) -> Vec<(usize, pci::BarSpec, u64)> {
        self.live.as_ref().map_or_else(Vec::new, |live| {
            live.config
                .bar_states()
                .into_iter()
                .map(|(index, spec, state)| (index, spec, state.live))
                .collect()
        })
    }

    /// Every trapped access this device served, per BAR and kind (`barN.padding`, ...), and
    /// its config-space register accesses (`config`); nothing once unplugged.
    pub fn counters(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        if let Some(live) = &self.live {
            for plan in &live.bars {
                plan.counters.report(plan.index, &mut out);
            }
            live.config_accesses.report(&mut out);
        }
        out
    }

    /// Makes the installed slots and traps follow the guest's registers
    /// (`pci::vfio::placement`): a BAR whose decoding is off stays parked where it is until
    /// the guest moves it, so the toggles of a Linux probe never re-create a slot.
    fn reconcile(&mut self) {
        let Some(live) = &mut self.live else {
            return;
        };
        let states = live.config.bar_states();
        for plan in &mut live.bars {
            let Some((_, _, state)) = states.iter().find(|(i, _, _)| *i == plan.index) else {
                continue;
            };
            let started = std::time::Instant::now();
            match placement(plan.installed, *state) {
                Placement::Keep => continue,
                Placement::Remove => plan.uninstall(self.vm.vm.as_ref(), &self.vm.mmio_bus),
                Placement::Install(base) => {
                    if let Err(e) = plan.install(&self.vm.kvm_slots(), &self.vm.mmio_bus, base) {
                        // An address the guest chose that collides with something else: the
                        // BAR stays unmapped (reads all-ones), as a real device would not
                        // respond.
                        log_limited!(
                            self.log_limit,
                            log::Level::Error,
                            "{}: BAR {} at {base:#x}: {e}",
                            self.path.display(),
                            plan.index
                        );
                    }
                }
            }
            log_limited!(
                self.log_limit,
                log::Level::Info,
                "{}: BAR {} now at {:?} ({} us)",
                self.path.display(),
                plan.index,
                plan.installed,
                started.elapsed().as_micros()
            );
        }
    }

    /// Starts watching VFIO's request interrupt (`request`): `on_request` runs on the watcher
    /// thread when the host wants the device back. Ok(false) when the device has no request
    /// interrupt (or is unplugged already).
    pub fn watch_requests(
        &mut self,
        on_request: OnRequest,
    ) -> std::result::Result<bool, WatchError> {
        let Some(live) = &mut self.live else {
            return Ok(false);
        };
        if live.request.is_some() {
            return Ok(true);
        }
        // A vfio-user server has no way to ask for its device back: it closes the socket.
        let Host::Vfio(device) = &live.device else {
            return Ok(false);
        };
        let device: Arc<dyn DeviceIrqs> = device.clone();
        let watcher = RequestWatcher::start_with(
            self.path.display().to_string(),
            device,
            on_request,
            watcher::hooks(self.vm.exit.clone()),
        )?;
        let watching = watcher.is_some();
        live.request = watcher;
        Ok(watching)
    }

    /// Takes the request watcher out, for the caller to stop it without holding this
    /// device's lock (which vCPUs take for config accesses).
    pub fn take_request_watcher(&mut self) -> Option<RequestWatcher> {
        self.live.as_mut().and_then(|l| l.request.take())
    }

    /// Unplugs the device: its request watcher stops, its KVM slots and trap ranges go, its
    /// interrupts are disabled and unrouted, its BAR space and slot numbers are given back,
    /// its mappings unmapped and its fds closed. Idempotent.
    pub fn teardown(&mut self) {
        let Some(live) = self.live.take() else {
            return;
        };
        let AssignedResources {
            request,
            config,
            bars,
            config_accesses: _,
            interrupts,
            device,
        } = live;
        // First, so that no new removal starts while this one runs; it holds a reference to
        // the device, which `close` waits for.
        drop(request);
        release_bars(&self.vm, bars);
        interrupts.lock().shutdown();
        drop(config);
        drop(interrupts);
        close(&self.vm, device);
        log::info!("{}: unplugged", self.path.display());
    }
}

/// Gives the device back: to the host (the container closes it when no one else holds it), or
/// to its server.
fn close(vm: &PassthroughVm, device: Host) {
    match device {
        Host::Vfio(d) => vm.containers.close(d),
        Host::User(u) => u.close(),
    }
}

/// Uninstalls BARs, then gives back their slot numbers and guest address space; the host
/// mappings are unmapped as the plans drop (after their KVM slots are gone). A BAR whose slot
/// KVM kept keeps all of it (`bar::release`).
fn release_bars(vm: &PassthroughVm, bars: Vec<BarPlan>) {
    for mut plan in bars {
        plan.uninstall(vm.vm.as_ref(), &vm.mmio_bus);
        bar::release(
            plan.index,
            plan.kvm_kept_slots(),
            &plan.mapped,
            plan.space,
            &vm.slots,
            &vm.allocator,
        );
    }
}

impl PciDevice for PassthroughDevice {
    fn read_config_register(&mut self, reg_idx: usize) -> u32 {
        match &mut self.live {
            Some(live) => {
                live.config_accesses.count();
                live.config.read_config_register(reg_idx)
            }
            None => 0xffff_ffff,
        }
    }

    fn write_config_register(&mut self, reg_idx: usize, offset: u64, data: &[u8]) {
        // Moves are applied here: this device owns its slots.
        if let Some(live) = &mut self.live {
            live.config_accesses.count();
            live.config.write_config_register(reg_idx, offset, data);
        }
        self.reconcile();
    }
}

/// What `build_bars` made before it failed, or all of it.
#[derive(Default)]
struct Built {
    plans: Vec<BarPlan>,
    /// (index, spec, guest address) for the config space.
    bars: Vec<(usize, pci::BarSpec, u64)>,
}

/// Opens the device, lays out, places, maps and installs its BARs and wires its interrupts.
/// On any error everything done so far is undone: nothing half-assigned stays behind.
/// `segment` is the PCI segment the device goes to: its BARs come from this segment's windows.
pub fn assign(
    ctx: &Arc<PassthroughVm>,
    segment: SegmentLayout,
    source: &DeviceSource,
) -> Result<Arc<Mutex<PassthroughDevice>>> {
    let path = source.path();
    let device = match source {
        DeviceSource::Vfio(p) => Host::Vfio(ctx.containers.open(p, &ctx.mem)?),
        DeviceSource::User(socket) => Host::User(UserDevice::connect(socket, &ctx.mem)?),
    };
    let config = device.region(VFIO_PCI_CONFIG_REGION_INDEX);
    let caps = pci::vfio::config::exposed_capabilities(&config);
    let mut irq_caps = InterruptCaps::from_device(&caps, &config);
    let function = Function {
        device: &device,
        config: &config,
    };
    if let Err(e) = pci::vfio::check_msix_placement(&function, &irq_caps.msix_ranges()) {
        log::warn!(
            "{}: {e}; MSI-X is hidden from the guest (its driver can still use MSI if the \
             device has it)",
            path.display()
        );
        irq_caps.hide_msix();
    }
    let sink = irq::VfioIrqSink::new(
        path.display().to_string(),
        device.irqs(),
        ctx.routing.clone(),
    );
    let msix = irq_caps.msix_ranges();
    let interrupts = Interrupts::new(irq_caps, Box::new(sink)).shared();
    let mut built = Built::default();
    let result = build_bars(
        ctx,
        segment,
        path,
        &device,
        &config,
        &msix,
        &interrupts,
        &mut built,
    )
    .and_then(|()| {
        PassthroughConfig::new(Box::new(config), &built.bars, interrupts.clone())
            .map_err(|e| VfioSetupError::Config(format!("{}: {e}", path.display())))
    });
    match result {
        Ok(config) => Ok(Arc::new(Mutex::new(PassthroughDevice {
            path: path.into(),
            vm: ctx.clone(),
            log_limit: LogLimit::new(),
            live: Some(AssignedResources {
                request: None,
                config,
                bars: built.plans,
                config_accesses: ConfigCounter::default(),
                interrupts,
                device,
            }),
        }))),
        Err(e) => {
            release_bars(ctx, built.plans);
            drop(interrupts);
            close(ctx, device);
            Err(e)
        }
    }
}

/// Places, maps and installs the BARs `pci::vfio::probe_bars` finds on the device.
#[allow(clippy::too_many_arguments)]
fn build_bars(
    ctx: &PassthroughVm,
    segment: SegmentLayout,
    path: &Path,
    device: &Host,
    config: &Region,
    msix: &[pci::vfio::interrupts::BarRange],
    interrupts: &SharedInterrupts,
    built: &mut Built,
) -> Result<()> {
    let p = || path.to_path_buf();
    let limits = Limits {
        page_size: PAGE_SIZE,
        mmio32_size: segment.mmio32.size,
        mmio64_size: segment.mmio64.size,
    };
    let function = Function { device, config };
    let probe = probe_bars(&function, msix, &limits).map_err(|error| match error {
        ProbeError::Layout(error) => VfioSetupError::Layout { path: p(), error },
        other => VfioSetupError::Config(format!("{}: {other}", path.display())),
    })?;
    for this in probe.hidden_io {
        log::warn!(
            "{}: I/O BAR {this} is not supported and stays hidden",
            path.display()
        );
    }
    for bar in probe.bars {
        let this = bar.index;
        let layout = &bar.layout;
        let window = if bar.is_64bit() {
            Window::Mmio64
        } else {
            Window::Mmio32
        };
        let base = ctx
            .allocator
            .lock()
            .allocate(segment.id, window, layout.bar_size)
            .map_err(|source| VfioSetupError::BarSpace {
                path: p(),
                bar: this,
                error: source,
            })?;
        let counters = Arc::new(BarCounters::default());
        // The plan exists from here on, so that a failure below gives its space back.
        let trap = Arc::new(Mutex::new(BarTrap::new(
            this,
            base,
            layout.clone(),
            device.region(bar.region.index),
            // The first range is the MSI-X table (`InterruptCaps::msix_ranges`).
            msix.first()
                .filter(|table| table.bar == this)
                .map(|_| interrupts.clone()),
            counters.clone(),
        )));
        let space = BarSpace {
            segment: segment.id,
            window,
            base,
            size: layout.bar_size,
        };
        built.plans.push(BarPlan::new(this, space, trap, counters));
        let Some(plan) = built.plans.last_mut() else {
            continue;
        };
        let mut source = None;
        for piece in &layout.pieces {
            if let PieceKind::Mapped { host_align } = piece.kind {
                let (fd, region_offset) =
                    match source {
                        Some(s) => s,
                        None => *source.insert(device.mmap_source(bar.region.index).ok_or_else(
                            || VfioSetupError::NoMmapSource {
                                path: p(),
                                bar: this,
                            },
                        )?),
                    };
                let mmap_err = |error| VfioSetupError::Mmap {
                    path: p(),
                    bar: this,
                    offset: piece.offset,
                    size: piece.size,
                    error,
                };
                let host = HostMapping::new(
                    fd,
                    region_offset
                        .checked_add(piece.offset)
                        .ok_or_else(|| mmap_err(std::io::ErrorKind::InvalidInput.into()))?,
                    piece.size,
                    host_align,
                    // A bad alignment (none from `bar_layout`) is refused by `HostMapping`.
                    piece.host_placement().map_or(0, |(_, phase)| phase),
                )
                .map_err(mmap_err)?;
                let slot =
                    ctx.slots
                        .lock()
                        .allocate()
                        .map_err(|error| VfioSetupError::MemSlot {
                            path: p(),
                            bar: this,
                            error,
                        })?;
                let piece = MappedPiece {
                    offset: piece.offset,
                    size: piece.size,
                    host,
                    slot,
                };
                if let Err(piece) = plan.add_mapped(piece) {
                    // Not installed yet, so never: but the slot number must not leak.
                    ctx.slots.lock().release(piece.slot);
                    return Err(VfioSetupError::Config(format!(
                        "{}: BAR {this}: plan sealed before its pieces were added",
                        path.display()
                    )));
                }
            }
        }
        plan.install(&ctx.kvm_slots(), &ctx.mmio_bus, base)
            .map_err(|e| VfioSetupError::Config(format!("{}: BAR {this}: {e}", path.display())))?;
        log::info!(
            "{}: BAR {this}: region {:#x} bytes -> {:#x}-byte BAR at {base:#x}: {:?}",
            path.display(),
            bar.region.size,
            layout.bar_size,
            layout.pieces
        );
        built.bars.push((this, bar.spec(), base));
    }
    Ok(())
}

/// The device as `probe_bars` reads it: its config region, and its regions' info.
struct Function<'a> {
    device: &'a Host,
    config: &'a Region,
}

impl FunctionInfo for Function<'_> {
    fn read_config(&self, offset: u64, data: &mut [u8]) -> std::io::Result<()> {
        self.config.read(offset, data)
    }

    fn bar_region(&self, bar: usize) -> Option<RegionInfo> {
        let index = VFIO_PCI_BAR0_REGION_INDEX.checked_add(u32::try_from(bar).ok()?)?;
        self.device.region_info(index)
    }
}
