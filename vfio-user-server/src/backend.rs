//! The vfio-user device model: what a client sees and how each message is answered.
//!
//! Regions: each memory BAR is a power-of-two region of the layout's `bar_size`
//! (`pci::vfio::probe_bars`, the rules ghvmm applies to its own guests). Its mapped pieces
//! are sparse-mmap areas of the host VFIO device fd, and the region's `offset` is the host
//! region's offset in that fd: the client mmaps the fd at offset + area offset, so it maps
//! the device memory itself and its accesses there never reach this process. Everything else
//! in the BAR arrives as region read/write and goes through `pci::vfio::dispatch`: device
//! parts to the host region (where the kernel answers its own padding with 0xff), the
//! padding this server adds (reads 0, writes dropped). The config region (7) is
//! `PassthroughConfig`, the guest view ghvmm builds.
//!
//! MSI and MSI-X belong to the client: it emulates the capabilities it is offered (their
//! registers and the MSI-X table) and hands the device its vectors with SET_IRQS, which goes
//! to VFIO_DEVICE_SET_IRQS unchanged. `PassthroughConfig`'s interrupt emulation still
//! absorbs the client's writes to those registers (so they never reach the device, and read
//! back as written), but its updates go to `ClientOwned`, which does nothing: programming
//! the device from them as well would enable the vectors a second time, with eventfds nobody
//! waits on.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io;
use std::sync::Arc;

use pci::vfio::config::{exposed_capabilities, read_bytes};
use pci::vfio::{
    check_msix_placement, dispatch, probe_bars, AccessKind, BarCounters, BarLayout, FunctionInfo,
    InterruptCaps, Interrupts, IrqSink, IrqUpdate, Limits, MsixPlacementError, PassthroughConfig,
    PieceKind, ProbeError, RegionInfo, RegionIo, SharedInterrupts,
};
use pci::PciDevice;
use vfio_bindings::bindings::vfio::{
    vfio_region_info, vfio_region_sparse_mmap_area, VFIO_IRQ_SET_ACTION_TRIGGER,
    VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE, VFIO_PCI_BAR0_REGION_INDEX,
    VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_INTX_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX,
    VFIO_PCI_MSI_IRQ_INDEX, VFIO_PCI_NUM_REGIONS, VFIO_REGION_INFO_FLAG_MMAP,
    VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vfio_user::{DmaMapFlags, DmaUnmapFlags, IrqInfo, ServerBackend, ServerRegion, SparseArea};

use crate::host::HostDevice;

pub const CONFIG_REGION: u32 = VFIO_PCI_CONFIG_REGION_INDEX;

/// The page size ghvmm lays BARs out with (its own `PAGE_SIZE`), so that a client gets the
/// layout a ghvmm guest gets.
const PAGE_SIZE: u64 = 4096;

/// The server places no BARs (the client does, in its own windows), so only the limits PCI
/// itself has apply: a 32-bit BAR is at most 2 GiB, a 64-bit one at most 2^63.
const LIMITS: Limits = Limits {
    page_size: PAGE_SIZE,
    mmio32_size: 1 << 31,
    mmio64_size: 1 << 63,
};

/// Config space the view answers when the host's config region is smaller (it never is).
const MIN_CONFIG_SIZE: u64 = 256;

/// Why the device cannot be served. The texts are ghvmm's own for the same device.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{path}: {error}")]
    Layout {
        path: String,
        error: pci::vfio::LayoutError,
    },
    #[error("config space: {0}")]
    Config(String),
}

/// `PassthroughConfig`'s interrupt updates, dropped: the client owns MSI/MSI-X (module
/// comment).
struct ClientOwned;

impl IrqSink for ClientOwned {
    fn apply(&mut self, updates: Vec<IrqUpdate>) {
        log::trace!("interrupt programming left to the client: {updates:?}");
    }
}

/// One host region as `pci::vfio` reaches it.
struct HostRegionIo<H> {
    host: Arc<H>,
    index: u32,
}

impl<H: HostDevice> RegionIo for HostRegionIo<H> {
    fn read(&self, offset: u64, data: &mut [u8]) -> io::Result<()> {
        self.host.read(self.index, offset, data)
    }
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.host.write(self.index, offset, data)
    }
}

/// The host device as `probe_bars` reads it.
struct Function<'a, H>(&'a H);

impl<H: HostDevice> FunctionInfo for Function<'_, H> {
    fn read_config(&self, offset: u64, data: &mut [u8]) -> io::Result<()> {
        self.0.read(CONFIG_REGION, offset, data)
    }
    fn bar_region(&self, bar: usize) -> Option<RegionInfo> {
        let index = VFIO_PCI_BAR0_REGION_INDEX.checked_add(u32::try_from(bar).ok()?)?;
        let r = self.0.region(index)?;
        Some(RegionInfo {
            size: r.size,
            mmap: r.flags & VFIO_REGION_INFO_FLAG_MMAP != 0,
            sparse: r.sparse,
        })
    }
}

/// The device's MSI and MSI-X as the client is offered them: MSI-X hidden, with the reason,
/// when its table or PBA sits where it cannot be trapped. Public so that the fuzz target's
/// model finds the emulated MSI-X table exactly as `Backend::new` does.
pub fn client_interrupts<H: HostDevice>(
    host: &Arc<H>,
) -> (InterruptCaps, Option<MsixPlacementError>) {
    let cfg = HostRegionIo {
        host: host.clone(),
        index: CONFIG_REGION,
    };
    let caps = exposed_capabilities(&cfg);
    let mut irq_caps = InterruptCaps::from_device(&caps, &cfg);
    let hidden = check_msix_placement(&Function(host.as_ref()), &irq_caps.msix_ranges()).err();
    if hidden.is_some() {
        irq_caps.hide_msix();
    }
    (irq_caps, hidden)
}

/// A BAR the client sees.
struct Bar {
    index: usize,
    spec: pci::BarSpec,
    layout: BarLayout,
    /// The host region's offset in the device fd.
    host_offset: u64,
    counters: Arc<BarCounters>,
}

/// The region accesses the server answered, per BAR and kind, readable from another thread
/// while a client is served (`Backend::counters`).
#[derive(Clone, Default)]
pub struct Counters(Vec<(usize, Arc<BarCounters>)>);

impl Counters {
    /// `barN.padding`, `barN.forwarded`, `barN.msix` for every BAR, as ghvmm's vm.counters
    /// names them.
    pub fn report(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for (bar, c) in &self.0 {
            c.report(*bar, &mut out);
        }
        out
    }
}

/// What the client may change, made afresh for each client and at each reset.
struct View {
    config: PassthroughConfig,
    interrupts: SharedInterrupts,
}

struct DmaEntry<D> {
    size: u64,
    dma: D,
}

pub struct Backend<H: HostDevice> {
    /// First, so that it is dropped (unmapped) while the device is still open.
    dma: BTreeMap<u64, DmaEntry<H::Dma>>,
    host: Arc<H>,
    path: String,
    bars: Vec<Bar>,
    irq_caps: InterruptCaps,
    config_size: u64,
    view: View,
    /// Interrupt indexes the client gave eventfds, to take them back when it leaves.
    irqs_on: BTreeSet<u32>,
}

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

impl<H: HostDevice> Backend<H> {
    /// Probes the device's BARs and capabilities; `path` names it in messages. Refuses region
    /// info ghvmm would refuse, with the same text.
    pub fn new(host: H, path: &str) -> Result<Self, SetupError> {
        let host = Arc::new(host);
        let config_size = host
            .region(CONFIG_REGION)
            .map(|r| r.size)
            .filter(|&s| s != 0)
            .ok_or_else(|| SetupError::Config(format!("{path}: the device has no config region")))?
            .max(MIN_CONFIG_SIZE);
        let (irq_caps, msix_hidden) = client_interrupts(&host);
        if let Some(e) = msix_hidden {
            log::warn!("{path}: {e}; MSI-X is hidden from the client");
        }
        let probe = probe_bars(&Function(host.as_ref()), &irq_caps.msix_ranges(), &LIMITS)
            .map_err(|error| match error {
                ProbeError::Layout(error) => SetupError::Layout {
                    path: path.into(),
                    error,
                },
                other => SetupError::Config(format!("{path}: {other}")),
            })?;
        for bar in probe.hidden_io {
            log::warn!("{path}: I/O BAR {bar} is not supported and stays hidden");
        }
        let bars = probe
            .bars
            .into_iter()
            .map(|b| Bar {
                index: b.index,
                spec: b.spec(),
                host_offset: host.region(b.region.index).map_or(0, |r| r.offset),
                layout: b.layout,
                counters: Arc::default(),
            })
            .collect::<Vec<_>>();
        let view = make_view(&host, &bars, &irq_caps, path)?;
        for b in &bars {
            log::info!(
                "{path}: BAR {}: {:#x}-byte region: {:?}",
                b.index,
                b.layout.bar_size,
                b.layout.pieces
            );
        }
        Ok(Backend {
            dma: BTreeMap::new(),
            host,
            path: path.into(),
            bars,
            irq_caps,
            config_size,
            view,
            irqs_on: BTreeSet::new(),
        })
    }

    /// The regions the client sees, indexes 0 to 8 (BARs, ROM, config, VGA); those the
    /// device does not offer have size 0.
    pub fn regions(&self) -> Vec<ServerRegion> {
        let fd = self.host.mmap_fd();
        (0..VFIO_PCI_NUM_REGIONS)
            .map(|index| {
                let mut info = vfio_region_info {
                    argsz: std::mem::size_of::<vfio_region_info>() as u32,
                    index,
                    ..Default::default()
                };
                let mut sparse_areas = Vec::new();
                if index == CONFIG_REGION {
                    info.size = self.config_size;
                    info.flags = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
                } else if let Some(bar) = self.bar(index) {
                    info.size = bar.layout.bar_size;
                    info.offset = bar.host_offset;
                    info.flags = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
                    sparse_areas = bar
                        .layout
                        .pieces
                        .iter()
                        .filter(|p| matches!(p.kind, PieceKind::Mapped { .. }))
                        .map(|p| SparseArea {
                            area: vfio_region_sparse_mmap_area {
                                offset: p.offset,
                                size: p.size,
                            },
                        })
                        .collect();
                    // Without a descriptor to map there is nothing to mmap.
                    if !sparse_areas.is_empty() && fd.is_some() {
                        info.flags |= VFIO_REGION_INFO_FLAG_MMAP;
                    } else {
                        sparse_areas.clear();
                    }
                }
                ServerRegion {
                    region_info: info,
                    mmap_fd: if sparse_areas.is_empty() { None } else { fd },
                    sparse_areas,
                }
            })
            .collect()
    }

    /// The interrupts the client sees: INTx with no vector (not offered, as in ghvmm), MSI
    /// and MSI-X as the host has them when their capability is offered.
    pub fn irqs(&self) -> Vec<IrqInfo> {
        [
            (VFIO_PCI_INTX_IRQ_INDEX, false),
            (VFIO_PCI_MSI_IRQ_INDEX, self.irq_caps.msi().is_some()),
            (VFIO_PCI_MSIX_IRQ_INDEX, self.irq_caps.msix().is_some()),
        ]
        .into_iter()
        .map(|(index, offered)| {
            let (flags, count) = self.host.irq_info(index).unwrap_or((0, 0));
            IrqInfo {
                index,
                flags,
                count: if offered { count } else { 0 },
            }
        })
        .collect()
    }

    /// A handle on the access counters, for another thread to report.
    pub fn counters(&self) -> Counters {
        Counters(
            self.bars
                .iter()
                .map(|b| (b.index, b.counters.clone()))
                .collect(),
        )
    }

    fn bar(&self, region: u32) -> Option<&Bar> {
        let i = usize::try_from(region.checked_sub(VFIO_PCI_BAR0_REGION_INDEX)?).ok()?;
        self.bars.iter().find(|b| b.index == i)
    }

    /// The client went away: its interrupts are taken back, its memory unmapped, the device
    /// reset and the view made afresh for the next client.
    pub fn client_gone(&mut self) {
        for index in std::mem::take(&mut self.irqs_on) {
            let off = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER;
            if let Err(e) = self.host.set_irqs(index, off, 0, 0, &[]) {
                log::warn!("{}: disabling interrupt index {index}: {e}", self.path);
            }
        }
        self.unmap_all();
        if let Err(e) = self.host.reset() {
            log::warn!("{}: reset after the client left: {e}", self.path);
        }
        self.renew_view();
    }

    fn renew_view(&mut self) {
        match make_view(&self.host, &self.bars, &self.irq_caps, &self.path) {
            Ok(v) => self.view = v,
            // The same BARs built a view before; keep that one rather than fail now.
            Err(e) => log::error!("{e}"),
        }
    }

    fn unmap_all(&mut self) {
        for (iova, e) in std::mem::take(&mut self.dma) {
            if let Err(err) = self.host.dma_unmap(e.dma) {
                log::warn!(
                    "{}: DMA unmap of {:#x}+{:#x}: {err}",
                    self.path,
                    iova,
                    e.size
                );
            }
        }
    }

    /// DMA mappings the client holds: (iova, size), in IOVA order.
    pub fn dma_mappings(&self) -> Vec<(u64, u64)> {
        self.dma.iter().map(|(&a, e)| (a, e.size)).collect()
    }

    fn config_access(
        &mut self,
        offset: u64,
        len: usize,
        mut each: impl FnMut(&mut PassthroughConfig, u64, std::ops::Range<usize>),
    ) -> io::Result<()> {
        let end = offset
            .checked_add(len as u64)
            .filter(|&e| e <= self.config_size)
            .ok_or_else(|| errno(libc::EINVAL))?;
        let mut at = offset;
        while at < end {
            // The widest naturally aligned access that fits: registers are 1, 2 or 4 bytes
            // wide and never straddle a dword.
            let left = end - at;
            let width = [4u64, 2, 1]
                .into_iter()
                .find(|&w| w <= left && at & (w - 1) == 0)
                .unwrap_or(1);
            let buf = (at - offset) as usize..(at - offset + width) as usize;
            each(&mut self.view.config, at, buf);
            at += width;
        }
        Ok(())
    }
}

fn make_view<H: HostDevice>(
    host: &Arc<H>,
    bars: &[Bar],
    irq_caps: &InterruptCaps,
    path: &str,
) -> Result<View, SetupError> {
    let interrupts = Interrupts::new(irq_caps.clone(), Box::new(ClientOwned)).shared();
    let specs: Vec<_> = bars.iter().map(|b| (b.index, b.spec, 0)).collect();
    let config = PassthroughConfig::new(
        Box::new(HostRegionIo {
            host: host.clone(),
            index: CONFIG_REGION,
        }),
        &specs,
        interrupts.clone(),
    )
    .map_err(|e| SetupError::Config(format!("{path}: {e}")))?;
    Ok(View { config, interrupts })
}

impl<H: HostDevice> Drop for Backend<H> {
    fn drop(&mut self) {
        self.unmap_all();
    }
}

impl<H: HostDevice> ServerBackend for Backend<H> {
    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> io::Result<()> {
        if region == CONFIG_REGION {
            return self.config_access(offset, data.len(), |cfg, at, buf| {
                read_bytes(cfg, at, &mut data[buf]);
            });
        }
        let bar = self.bar(region).ok_or_else(|| errno(libc::EINVAL))?;
        check_range(offset, data.len(), bar.layout.bar_size)?;
        if self
            .view
            .interrupts
            .lock()
            .table_read(bar.index, offset, data)
        {
            bar.counters.count(AccessKind::Msix);
            return Ok(());
        }
        bar.counters
            .count(AccessKind::of(&bar.layout, offset, data.len()));
        let io = HostRegionIo {
            host: self.host.clone(),
            index: region,
        };
        for e in dispatch::read(&bar.layout, &io, offset, data) {
            // As in ghvmm: the failed bytes read as 0xff, what PCI gives for a dead device.
            log::warn!(
                "{}: region {region} read at {:#x}: {}",
                self.path,
                e.offset,
                e.error
            );
        }
        Ok(())
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> io::Result<()> {
        if region == CONFIG_REGION {
            return self.config_access(offset, data.len(), |cfg, at, buf| {
                let reg = (at / 4) as usize;
                cfg.write_config_register(reg, at % 4, &data[buf]);
            });
        }
        let bar = self.bar(region).ok_or_else(|| errno(libc::EINVAL))?;
        check_range(offset, data.len(), bar.layout.bar_size)?;
        if self
            .view
            .interrupts
            .lock()
            .table_write(bar.index, offset, data)
        {
            bar.counters.count(AccessKind::Msix);
            return Ok(());
        }
        bar.counters
            .count(AccessKind::of(&bar.layout, offset, data.len()));
        let io = HostRegionIo {
            host: self.host.clone(),
            index: region,
        };
        for e in dispatch::write(&bar.layout, &io, offset, data) {
            log::warn!(
                "{}: region {region} write at {:#x}: {}",
                self.path,
                e.offset,
                e.error
            );
        }
        Ok(())
    }

    fn dma_map(
        &mut self,
        flags: DmaMapFlags,
        offset: u64,
        address: u64,
        size: u64,
        fd: Option<File>,
    ) -> io::Result<()> {
        let Some(file) = fd else {
            let msg = format!(
                "DMA_MAP of {size:#x} bytes at {address:#x} came without a file descriptor: the \
                 server can reach only memory it can map, so the client's guest memory must be \
                 shared (shared=on)"
            );
            log::error!("{}: {msg}", self.path);
            return Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
        };
        if !DmaMapFlags::READ_WRITE.contains(flags) || size == 0 {
            return Err(errno(libc::EINVAL));
        }
        let end = address
            .checked_add(size)
            .ok_or_else(|| errno(libc::EINVAL))?;
        if self.overlapping(address, end).next().is_some() {
            return Err(errno(libc::EEXIST));
        }
        let dma = self
            .host
            .dma_map(address, size, file, offset)
            .inspect_err(|e| {
                log::warn!("{}: DMA map of {address:#x}+{size:#x}: {e}", self.path);
            })?;
        self.dma.insert(address, DmaEntry { size, dma });
        Ok(())
    }

    fn dma_unmap(&mut self, flags: DmaUnmapFlags, address: u64, size: u64) -> io::Result<()> {
        if flags == DmaUnmapFlags::UNMAP_ALL {
            self.unmap_all();
            return Ok(());
        }
        if !flags.is_empty() {
            // Dirty page tracking, or bits nobody defined.
            return Err(errno(libc::EINVAL));
        }
        let end = address
            .checked_add(size)
            .ok_or_else(|| errno(libc::EINVAL))?;
        let hit: Vec<(u64, u64)> = self.overlapping(address, end).collect();
        if hit.is_empty() {
            return Err(errno(libc::ENOENT));
        }
        // Only whole mappings go, as VFIO_IOMMU_UNMAP_DMA has it: nothing is unmapped when
        // the range cuts one.
        if hit.iter().any(|&(a, s)| a < address || a + s > end) {
            return Err(errno(libc::EINVAL));
        }
        let mut result = Ok(());
        for (a, _) in hit {
            if let Some(e) = self.dma.remove(&a) {
                if let Err(err) = self.host.dma_unmap(e.dma) {
                    log::warn!("{}: DMA unmap of {a:#x}+{:#x}: {err}", self.path, e.size);
                    result = Err(err);
                }
            }
        }
        result
    }

    fn reset(&mut self) -> io::Result<()> {
        self.host.reset()?;
        // What the client programmed into config space is gone on the device; the view
        // starts again too.
        self.renew_view();
        Ok(())
    }

    fn set_irqs(
        &mut self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        fds: Vec<File>,
    ) -> io::Result<()> {
        let offered = self
            .irqs()
            .into_iter()
            .find(|i| i.index == index)
            .map_or(0, |i| i.count);
        if offered == 0 || start.checked_add(count).is_none_or(|e| e > offered) {
            return Err(errno(libc::EINVAL));
        }
        self.host.set_irqs(index, flags, start, count, &fds)?;
        if flags & VFIO_IRQ_SET_ACTION_TRIGGER != 0 {
            // Eventfds that the device took leave the index enabled, even for no vector:
            // vfio-pci enables `start + count` vectors first (start 1, count 0: one).
            if flags & VFIO_IRQ_SET_DATA_EVENTFD != 0 {
                self.irqs_on.insert(index);
            } else if flags & VFIO_IRQ_SET_DATA_NONE != 0 && count == 0 {
                self.irqs_on.remove(&index);
            }
        }
        Ok(())
    }
}

impl<H: HostDevice> Backend<H> {
    /// Mappings that share a byte with `[address, end)`, as (iova, size).
    fn overlapping(&self, address: u64, end: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        // A mapping starting before `address` can reach into it; mappings do not overlap,
        // so only the last one before it can.
        let before = self.dma.range(..address).next_back();
        before
            .into_iter()
            .chain(self.dma.range(address..end))
            .map(|(&a, e)| (a, e.size))
            .filter(move |&(a, s)| a < end && a + s > address)
    }
}

fn check_range(offset: u64, len: usize, size: u64) -> io::Result<()> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= size => Ok(()),
        _ => Err(errno(libc::EINVAL)),
    }
}

#[cfg(test)]
mod tests;
