//! A function served by a vfio-user server (`--user-device socket=PATH`): the client side of
//! the protocol, through the vfio_user crate's `Client`, in the shape the rest of
//! `passthrough` uses for a host VFIO device.
//!
//! - Regions: the server's region info, read once at connect. Areas it offers to mmap come
//!   with a descriptor (for ghvmm-vfio-user, the host's VFIO device fd) and become KVM slots
//!   like a host device's; everything else is region read/write over the socket.
//! - DMA: guest RAM is offered with DMA_MAP, one message per RAM range, with the memfd and the
//!   range's offset in it (hence `--memory shared=on`); DMA_UNMAP at close.
//! - Interrupts: the MSI/MSI-X eventfds ghvmm made for its irqfds go to the server with
//!   SET_IRQS, which hands them to VFIO: an interrupt reaches the guest without either
//!   process running.
//!
//! The crate's client does not look at a reply's error flag, and waits for as many bytes as
//! it asked for: a server that fails a request is only noticed when it closes the socket
//! (docs/vfio-user.md). Every request is one round trip under one lock, so a vCPU that
//! traps into this BAR waits for the server.

use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use pci::vfio::{RegionInfo, SparseArea};
use vfio::{DeviceIrqs, IrqError, IrqKind};
use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE,
    VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_MSI_IRQ_INDEX, VFIO_REGION_INFO_FLAG_MMAP,
};
use vm_memory::{FileOffset, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("{socket}: {error}")]
    Connect {
        socket: PathBuf,
        error: vfio_user::Error,
    },
    /// The crate asserts on some malformed replies; such a server is refused, not obeyed.
    #[error("{socket}: the server's reply to the device or region info is malformed")]
    Malformed { socket: PathBuf },
    #[error("{socket}: guest RAM at {gpa:#x} is not in a file, which --memory shared=on gives")]
    NotShared { socket: PathBuf, gpa: u64 },
    #[error("{socket}: DMA_MAP of guest RAM at {gpa:#x}: {error}")]
    DmaMap {
        socket: PathBuf,
        gpa: u64,
        error: vfio_user::Error,
    },
}

/// One region as the server described it.
struct UserRegion {
    index: u32,
    size: u64,
    flags: u32,
    sparse: Vec<SparseArea>,
    /// What to mmap the sparse areas from: the descriptor and the region's offset in it.
    file: Option<FileOffset>,
}

pub struct UserDevice {
    socket: PathBuf,
    client: Mutex<vfio_user::Client>,
    regions: Vec<UserRegion>,
    /// (iova, size) of each DMA_MAP sent, for DMA_UNMAP at close.
    dma: Mutex<Vec<(u64, u64)>>,
}

impl UserDevice {
    /// Connects, reads the device's regions and offers it all of guest RAM for DMA.
    pub fn connect(socket: &Path, mem: &GuestMemoryMmap) -> Result<Arc<Self>, UserError> {
        let s = || socket.to_path_buf();
        let client = std::panic::catch_unwind(|| vfio_user::Client::new(socket))
            .map_err(|_| UserError::Malformed { socket: s() })?
            .map_err(|error| UserError::Connect { socket: s(), error })?;
        let regions = (0..=vfio_bindings::bindings::vfio::VFIO_PCI_NUM_REGIONS)
            .filter_map(|index| client.region(index))
            .map(|r| UserRegion {
                index: r.index,
                size: r.size,
                flags: r.flags,
                sparse: r
                    .sparse_areas
                    .iter()
                    .map(|a| SparseArea {
                        offset: a.offset,
                        size: a.size,
                    })
                    .collect(),
                file: r.file_offset.clone(),
            })
            .collect();
        let device = Arc::new(UserDevice {
            socket: s(),
            client: Mutex::new(client),
            regions,
            dma: Mutex::new(Vec::new()),
        });
        device.map_ram(mem)?;
        Ok(device)
    }

    fn map_ram(&self, mem: &GuestMemoryMmap) -> Result<(), UserError> {
        for region in mem.iter() {
            let gpa = region.start_addr().0;
            let Some(file) = region.file_offset() else {
                self.close();
                return Err(UserError::NotShared {
                    socket: self.socket.clone(),
                    gpa,
                });
            };
            let size = region.len();
            let sent = self
                .client
                .lock()
                .dma_map(file.start(), gpa, size, file.file().as_raw_fd());
            if let Err(error) = sent {
                self.close();
                return Err(UserError::DmaMap {
                    socket: self.socket.clone(),
                    gpa,
                    error,
                });
            }
            self.dma.lock().push((gpa, size));
        }
        Ok(())
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn region(&self, index: u32) -> Option<&UserRegion> {
        self.regions.iter().find(|r| r.index == index)
    }

    /// What `pci::vfio::probe_bars` reads about region `index`.
    pub fn region_info(&self, index: u32) -> Option<RegionInfo> {
        let r = self.region(index)?;
        let mmap = r.flags & VFIO_REGION_INFO_FLAG_MMAP != 0 && r.file.is_some();
        Some(RegionInfo {
            size: r.size,
            mmap,
            // The server lists the mappable parts; with no descriptor there is nothing to map.
            sparse: (mmap && !r.sparse.is_empty()).then(|| r.sparse.clone()),
        })
    }

    /// The descriptor region `index` is mmapped from, and the region's offset in it.
    pub fn mmap_source(&self, index: u32) -> Option<(RawFd, u64)> {
        let f = self.region(index)?.file.as_ref()?;
        Some((f.file().as_raw_fd(), f.start()))
    }

    pub fn read(&self, index: u32, offset: u64, data: &mut [u8]) -> io::Result<()> {
        self.client
            .lock()
            .region_read(index, offset, data)
            .map_err(io::Error::other)
    }

    pub fn write(&self, index: u32, offset: u64, data: &[u8]) -> io::Result<()> {
        self.client
            .lock()
            .region_write(index, offset, data)
            .map_err(io::Error::other)
    }

    /// Takes guest RAM back from the server and closes the connection; the server then
    /// resets the device. Idempotent.
    pub fn close(&self) {
        let mut client = self.client.lock();
        for (iova, size) in std::mem::take(&mut *self.dma.lock()) {
            if let Err(e) = client.dma_unmap(iova, size) {
                log::warn!("{}: DMA_UNMAP {iova:#x}: {e}", self.socket.display());
            }
        }
        // Already shut down (a second close) is not worth a line.
        let _ = client.shutdown();
    }

    fn set_irqs(&self, kind: IrqKind, flags: u32, fds: &[RawFd]) -> Result<(), IrqError> {
        let index = match kind {
            IrqKind::Msi => VFIO_PCI_MSI_IRQ_INDEX,
            IrqKind::Msix => VFIO_PCI_MSIX_IRQ_INDEX,
        };
        let count = u32::try_from(fds.len()).map_err(|e| IrqError::Server(e.to_string()))?;
        self.client
            .lock()
            .set_irqs(index, flags | VFIO_IRQ_SET_ACTION_TRIGGER, 0, count, fds)
            .map_err(|e| IrqError::Server(e.to_string()))
    }
}

impl DeviceIrqs for UserDevice {
    fn enable(&self, kind: IrqKind, fds: &[&EventFd]) -> Result<(), IrqError> {
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        self.set_irqs(kind, VFIO_IRQ_SET_DATA_EVENTFD, &raw)
    }

    fn disable(&self, kind: IrqKind) -> Result<(), IrqError> {
        self.set_irqs(kind, VFIO_IRQ_SET_DATA_NONE, &[])
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::sync::Arc;

    use parking_lot::Mutex;
    use vfio_bindings::bindings::vfio::{
        vfio_region_info, vfio_region_sparse_mmap_area, VFIO_PCI_BAR0_REGION_INDEX,
        VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_NUM_REGIONS, VFIO_REGION_INFO_FLAG_READ,
        VFIO_REGION_INFO_FLAG_WRITE,
    };
    use vfio_user::{DmaMapFlags, DmaUnmapFlags, ServerBackend, ServerRegion};
    use vm_memory::GuestAddress;
    use vmm_sys_util::tempdir::TempDir;
    use vmm_sys_util::tempfile::TempFile;

    use super::*;

    const BAR2: u32 = VFIO_PCI_BAR0_REGION_INDEX + 2;
    const BAR2_OFFSET: u64 = 0x7000_0000;

    /// A server that records what it is asked and keeps BAR2's bytes.
    struct Recorder {
        log: Arc<Mutex<Vec<String>>>,
        bar: Vec<u8>,
    }

    impl ServerBackend for Recorder {
        fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> io::Result<()> {
            self.log.lock().push(format!("read {region} {offset:#x}"));
            let o = offset as usize;
            data.copy_from_slice(&self.bar[o..o + data.len()]);
            Ok(())
        }
        fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> io::Result<()> {
            self.log.lock().push(format!("write {region} {offset:#x}"));
            let o = offset as usize;
            self.bar[o..o + data.len()].copy_from_slice(data);
            Ok(())
        }
        fn dma_map(
            &mut self,
            _: DmaMapFlags,
            offset: u64,
            address: u64,
            size: u64,
            fd: Option<File>,
        ) -> io::Result<()> {
            self.log.lock().push(format!(
                "map {address:#x}+{size:#x} at file offset {offset:#x} fd {}",
                fd.is_some()
            ));
            Ok(())
        }
        fn dma_unmap(&mut self, _: DmaUnmapFlags, address: u64, size: u64) -> io::Result<()> {
            self.log
                .lock()
                .push(format!("unmap {address:#x}+{size:#x}"));
            Ok(())
        }
        fn reset(&mut self) -> io::Result<()> {
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
            self.log.lock().push(format!(
                "irqs {index} {flags:#x} {start} {count} fds {}",
                fds.len()
            ));
            Ok(())
        }
    }

    fn regions(mmap_fd: RawFd) -> Vec<ServerRegion> {
        (0..VFIO_PCI_NUM_REGIONS)
            .map(|index| {
                let mut info = vfio_region_info {
                    argsz: std::mem::size_of::<vfio_region_info>() as u32,
                    index,
                    ..Default::default()
                };
                let mut sparse_areas = Vec::new();
                let rw = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
                if index == BAR2 {
                    info.size = 0x4000;
                    info.offset = BAR2_OFFSET;
                    info.flags = rw | VFIO_REGION_INFO_FLAG_MMAP;
                    sparse_areas.push(vfio_user::SparseArea {
                        area: vfio_region_sparse_mmap_area {
                            offset: 0,
                            size: 0x2000,
                        },
                    });
                } else if index == VFIO_PCI_CONFIG_REGION_INDEX {
                    info.size = 256;
                    info.flags = rw;
                }
                ServerRegion {
                    region_info: info,
                    mmap_fd: (!sparse_areas.is_empty()).then_some(mmap_fd),
                    sparse_areas,
                }
            })
            .collect()
    }

    /// A server on a fresh socket, serving one client on a thread of its own.
    fn serve() -> (
        TempDir,
        PathBuf,
        Arc<Mutex<Vec<String>>>,
        std::thread::JoinHandle<()>,
    ) {
        let dir = TempDir::new().unwrap();
        let socket = dir.as_path().join("dev.sock");
        let mmap = TempFile::new().unwrap().into_file();
        let irqs = (0..=VFIO_PCI_MSIX_IRQ_INDEX)
            .map(|index| vfio_user::IrqInfo {
                index,
                flags: 0,
                count: 3,
            })
            .collect();
        let server =
            vfio_user::Server::new(&socket, true, irqs, regions(mmap.as_raw_fd())).unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut backend = Recorder {
            log: log.clone(),
            bar: vec![0; 0x4000],
        };
        let serving = std::thread::spawn(move || {
            let _ = server.run(&mut backend);
            drop(mmap);
        });
        (dir, socket, log, serving)
    }

    #[test]
    fn guest_ram_regions_access_and_interrupts_go_to_the_server() {
        let (_dir, socket, log, serving) = serve();
        let mem = crate::memory::map_guest_memory(
            &[
                (GuestAddress(0), 0x10000),
                (GuestAddress(0x100000), 0x20000),
            ],
            true,
        )
        .unwrap();
        let dev = UserDevice::connect(&socket, &mem).unwrap();
        // Each RAM range at its offset in the one memfd.
        assert_eq!(
            log.lock()[..2],
            [
                "map 0x0+0x10000 at file offset 0x0 fd true",
                "map 0x100000+0x20000 at file offset 0x10000 fd true",
            ]
        );
        let info = dev.region_info(BAR2).unwrap();
        assert_eq!((info.size, info.mmap), (0x4000, true));
        assert_eq!(
            info.sparse,
            Some(vec![SparseArea {
                offset: 0,
                size: 0x2000
            }])
        );
        assert_eq!(dev.mmap_source(BAR2).map(|(_, o)| o), Some(BAR2_OFFSET));
        // A region without areas: nothing to map, everything over the socket.
        let cfg = dev.region_info(VFIO_PCI_CONFIG_REGION_INDEX).unwrap();
        assert_eq!((cfg.size, cfg.mmap, cfg.sparse), (256, false, None));
        assert!(dev.mmap_source(VFIO_PCI_CONFIG_REGION_INDEX).is_none());

        dev.write(BAR2, 0x3000, &[1, 2, 3, 4]).unwrap();
        let mut back = [0u8; 4];
        dev.read(BAR2, 0x3000, &mut back).unwrap();
        assert_eq!(back, [1, 2, 3, 4]);

        let efds: Vec<EventFd> = (0..3).map(|_| EventFd::new(0).unwrap()).collect();
        let refs: Vec<&EventFd> = efds.iter().collect();
        dev.enable(IrqKind::Msix, &refs).unwrap();
        dev.disable(IrqKind::Msix).unwrap();
        dev.close();
        dev.close();
        serving.join().unwrap();
        let log = log.lock();
        assert_eq!(
            log[2..],
            [
                "write 2 0x3000",
                "read 2 0x3000",
                &format!(
                    "irqs {VFIO_PCI_MSIX_IRQ_INDEX} {:#x} 0 3 fds 3",
                    VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER
                ),
                &format!(
                    "irqs {VFIO_PCI_MSIX_IRQ_INDEX} {:#x} 0 0 fds 0",
                    VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER
                ),
                "unmap 0x0+0x10000",
                "unmap 0x100000+0x20000",
            ]
        );
    }

    #[test]
    fn private_guest_ram_is_refused_and_the_server_freed() {
        let (_dir, socket, log, serving) = serve();
        let mem = crate::memory::map_guest_memory(&[(GuestAddress(0), 0x10000)], false).unwrap();
        let Err(e) = UserDevice::connect(&socket, &mem) else {
            panic!("private RAM accepted");
        };
        assert!(matches!(e, UserError::NotShared { gpa: 0, .. }), "{e}");
        assert!(e.to_string().contains("shared=on"), "{e}");
        // The connection was closed: the server's loop ended.
        serving.join().unwrap();
        assert!(log.lock().is_empty());
    }

    #[test]
    fn no_server_is_one_line_naming_the_socket() {
        let dir = TempDir::new().unwrap();
        let socket = dir.as_path().join("none.sock");
        let mem = crate::memory::map_guest_memory(&[(GuestAddress(0), 0x10000)], true).unwrap();
        let Err(e) = UserDevice::connect(&socket, &mem) else {
            panic!("connected to nothing");
        };
        let msg = e.to_string();
        assert!(msg.starts_with(&socket.display().to_string()), "{msg}");
        assert!(!msg.contains('\n'));
    }
}
