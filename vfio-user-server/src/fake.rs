//! A fake [`HostDevice`], for the unit tests and for the `vfio_user_backend` fuzz target
//! (feature `fake`; fuzz/src/vfio_user_backend.rs). It holds no memory for its regions (a BAR
//! may be 128 GiB): a region's bytes are its `bytes`, then [`pattern`] up to its real length,
//! then 0xff. Interrupts follow what VFIO_DEVICE_SET_IRQS does on vfio-pci (which index is
//! enabled), DMA mappings are kept by IOVA, and everything that reaches the device is logged.
//!
//! The fake is a handle: clones share the device, so a test keeps one while the backend owns
//! another.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::Arc;

use parking_lot::Mutex;
use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_ACTION_TYPE_MASK,
    VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE, VFIO_IRQ_SET_DATA_TYPE_MASK,
    VFIO_PCI_INTX_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_MSI_IRQ_INDEX,
};
use vmm_sys_util::tempfile::TempFile;

use crate::host::{HostDevice, HostRegion};

/// The device's bytes where a region has no explicit ones.
pub fn pattern(offset: u64) -> u8 {
    (offset as u8) ^ 0x5a
}

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

/// One region: `info` as VFIO reports it, `bytes` from offset 0, [`pattern`] after them up to
/// `real`; like nvgrace-gpu, reads in `[real, size)` give 0xff and writes there are dropped.
/// Accesses past `size` are refused (EINVAL) and logged in [`Log::refused`].
#[derive(Debug, Clone)]
pub struct FakeRegion {
    pub info: HostRegion,
    pub bytes: Vec<u8>,
    pub real: u64,
}

impl FakeRegion {
    /// A region whose first `real` bytes are [`pattern`].
    pub fn new(info: HostRegion, real: u64) -> Self {
        FakeRegion {
            info,
            bytes: Vec::new(),
            real,
        }
    }

    /// A region holding `bytes` (a config space, say) and nothing after them.
    pub fn with_bytes(info: HostRegion, bytes: Vec<u8>) -> Self {
        FakeRegion {
            real: bytes.len() as u64,
            info,
            bytes,
        }
    }

    /// The byte at `offset` as the device has it (inside the region or not).
    pub fn byte(&self, offset: u64) -> u8 {
        match usize::try_from(offset).ok().and_then(|o| self.bytes.get(o)) {
            Some(b) => *b,
            None if offset < self.real => pattern(offset),
            None => 0xff,
        }
    }

    fn inside(&self, offset: u64, len: usize) -> bool {
        offset
            .checked_add(len as u64)
            .is_some_and(|end| end <= self.info.size)
    }
}

/// What reached the device.
#[derive(Debug, Default)]
pub struct Log {
    /// (region, offset, bytes) of every region write it took.
    pub writes: Vec<(u32, u64, Vec<u8>)>,
    /// Region accesses it refused because they left the region or named none: (region,
    /// offset, length).
    pub refused: Vec<(u32, u64, usize)>,
    /// (index, flags, start, count, number of fds) of every SET_IRQS, refused ones too.
    pub set_irqs: Vec<(u32, u32, u32, u32, usize)>,
    /// The interrupt index enabled with eventfds (MSI or MSI-X; vfio-pci's `irq_type`).
    pub irq_enabled: Option<u32>,
    pub resets: usize,
    /// Live DMA mappings: iova -> size.
    pub dma: BTreeMap<u64, u64>,
    /// DMA_MAP fails (ENOMEM) while set.
    pub fail_dma_map: bool,
}

struct Inner {
    regions: Mutex<BTreeMap<u32, FakeRegion>>,
    /// Interrupt index -> (VFIO_IRQ_INFO flags, count).
    irqs: BTreeMap<u32, (u32, u32)>,
    log: Arc<Mutex<Log>>,
    /// The file offered for mmap (already unlinked); `None`: the device has no fd to map.
    mmap: Option<File>,
}

#[derive(Clone)]
pub struct Fake(Arc<Inner>);

impl Fake {
    /// A device with these regions, INTx (1 vector), MSI (1) and MSI-X (3), and a file to map.
    pub fn new(regions: impl IntoIterator<Item = (u32, FakeRegion)>) -> Self {
        let irqs = [
            (VFIO_PCI_INTX_IRQ_INDEX, 1),
            (VFIO_PCI_MSI_IRQ_INDEX, 1),
            (VFIO_PCI_MSIX_IRQ_INDEX, 3),
        ];
        Self::with(regions, irqs, true)
    }

    /// A device with these regions, interrupt indexes (index, count) and, if `mmap_fd`, a
    /// file to map.
    pub fn with(
        regions: impl IntoIterator<Item = (u32, FakeRegion)>,
        irqs: impl IntoIterator<Item = (u32, u32)>,
        mmap_fd: bool,
    ) -> Self {
        Fake(Arc::new(Inner {
            regions: Mutex::new(regions.into_iter().collect()),
            irqs: irqs
                .into_iter()
                .map(|(i, n)| (i, (VFIO_IRQ_INFO_EVENTFD, n)))
                .collect(),
            log: Arc::default(),
            mmap: mmap_fd.then(|| TempFile::new().expect("a temporary file").into_file()),
        }))
    }

    pub fn log(&self) -> Arc<Mutex<Log>> {
        self.0.log.clone()
    }

    /// The byte at `offset` of region `index` as the device has it; `None`: no such region.
    pub fn byte(&self, index: u32, offset: u64) -> Option<u8> {
        self.0.regions.lock().get(&index).map(|r| r.byte(offset))
    }

    /// The file a client mmaps BAR areas from.
    pub fn mmap_file(&self) -> Option<&File> {
        self.0.mmap.as_ref()
    }

    fn refuse(&self, index: u32, offset: u64, len: usize) -> io::Error {
        self.0.log.lock().refused.push((index, offset, len));
        errno(libc::EINVAL)
    }

    /// VFIO_DEVICE_SET_IRQS on vfio-pci: `vfio_set_irqs_validate_and_prepare`, the `vfio`
    /// crate's check that the fds match the data type, then for MSI and MSI-X
    /// `vfio_pci_set_msi_trigger` (only one of them enabled at a time; eventfds enable one,
    /// for `start + count` vectors; DATA_NONE with count 0 disables it). INTx and the other
    /// indexes only take the checks. Any descriptor is taken for an eventfd.
    fn vfio_set_irqs(
        &self,
        log: &mut Log,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        fds: usize,
    ) -> io::Result<()> {
        let einval = || errno(libc::EINVAL);
        let &(_, n) = self.0.irqs.get(&index).ok_or_else(einval)?;
        let data = flags & VFIO_IRQ_SET_DATA_TYPE_MASK;
        if flags & !(VFIO_IRQ_SET_DATA_TYPE_MASK | VFIO_IRQ_SET_ACTION_TYPE_MASK) != 0
            || start >= n
            || start.checked_add(count).is_none_or(|end| end > n)
        {
            return Err(einval());
        }
        let fds_fit = match data {
            VFIO_IRQ_SET_DATA_NONE => fds == 0,
            VFIO_IRQ_SET_DATA_EVENTFD => usize::try_from(count).is_ok_and(|c| c == fds),
            _ => false,
        };
        if !fds_fit {
            return Err(einval());
        }
        if index != VFIO_PCI_MSI_IRQ_INDEX && index != VFIO_PCI_MSIX_IRQ_INDEX {
            return Ok(());
        }
        if flags & VFIO_IRQ_SET_ACTION_TYPE_MASK != VFIO_IRQ_SET_ACTION_TRIGGER {
            // Masking MSI/MSI-X is not supported by vfio-pci.
            return Err(errno(libc::ENOTTY));
        }
        let enabled = log.irq_enabled;
        if enabled == Some(index) && count == 0 && data == VFIO_IRQ_SET_DATA_NONE {
            log.irq_enabled = None;
            return Ok(());
        }
        if enabled.is_some_and(|e| e != index) {
            return Err(einval());
        }
        if data == VFIO_IRQ_SET_DATA_EVENTFD {
            if enabled.is_none() {
                // vfio_msi_enable(start + count): pci_alloc_irq_vectors wants one at least.
                if start + count == 0 {
                    return Err(errno(libc::ERANGE));
                }
                log.irq_enabled = Some(index);
            }
            return Ok(());
        }
        // DATA_NONE with a count fires the vectors' eventfds: only when enabled.
        if enabled.is_none() {
            return Err(einval());
        }
        Ok(())
    }
}

impl HostDevice for Fake {
    type Dma = u64;

    fn region(&self, index: u32) -> Option<HostRegion> {
        self.0.regions.lock().get(&index).map(|r| r.info.clone())
    }

    fn read(&self, index: u32, offset: u64, data: &mut [u8]) -> io::Result<()> {
        let regions = self.0.regions.lock();
        let Some(r) = regions.get(&index).filter(|r| r.inside(offset, data.len())) else {
            drop(regions);
            return Err(self.refuse(index, offset, data.len()));
        };
        for (at, b) in (offset..).zip(data.iter_mut()) {
            *b = r.byte(at);
        }
        Ok(())
    }

    fn write(&self, index: u32, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut regions = self.0.regions.lock();
        let Some(r) = regions
            .get_mut(&index)
            .filter(|r| r.inside(offset, data.len()))
        else {
            drop(regions);
            return Err(self.refuse(index, offset, data.len()));
        };
        self.0
            .log
            .lock()
            .writes
            .push((index, offset, data.to_vec()));
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        if let Some(dst) = r.bytes.get_mut(start..) {
            for (d, s) in dst.iter_mut().zip(data) {
                *d = *s;
            }
        }
        Ok(())
    }

    fn irq_info(&self, index: u32) -> Option<(u32, u32)> {
        self.0.irqs.get(&index).copied()
    }

    fn set_irqs(
        &self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        fds: &[File],
    ) -> io::Result<()> {
        let mut log = self.0.log.lock();
        log.set_irqs.push((index, flags, start, count, fds.len()));
        self.vfio_set_irqs(&mut log, index, flags, start, count, fds.len())
    }

    fn reset(&self) -> io::Result<()> {
        // VFIO_DEVICE_RESET leaves vfio-pci's interrupt state as it is.
        self.0.log.lock().resets += 1;
        Ok(())
    }

    fn dma_map(&self, iova: u64, size: u64, _: File, _: u64) -> io::Result<u64> {
        let mut log = self.0.log.lock();
        if log.fail_dma_map {
            return Err(errno(libc::ENOMEM));
        }
        let end = iova.checked_add(size).filter(|_| size > 0);
        assert!(end.is_some(), "DMA map of {iova:#x}+{size:#x}");
        // VFIO_IOMMU_MAP_DMA refuses overlaps (EEXIST); the backend must not ask for one.
        let clash = log
            .dma
            .range(..end.unwrap_or(u64::MAX))
            .next_back()
            .filter(|(&a, &s)| a + s > iova);
        assert!(clash.is_none(), "{iova:#x}+{size:#x} overlaps {clash:x?}");
        log.dma.insert(iova, size);
        Ok(iova)
    }

    fn dma_unmap(&self, iova: u64) -> io::Result<()> {
        self.0.log.lock().dma.remove(&iova).expect("unmapped twice");
        Ok(())
    }

    fn mmap_fd(&self) -> Option<RawFd> {
        self.mmap_file().map(AsRawFd::as_raw_fd)
    }
}
