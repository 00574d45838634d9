//! Creates the platform devices, puts them on the buses and wires their interrupts.

pub mod acpi_tables;
pub mod console;
pub mod console_out;
pub mod irq_routing;

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::sync::Arc;

use parking_lot::Mutex;

use devices::{
    AcpiPmDevice, Bus, Ged, PciConfigIo, PciConfigMmio, PciHotplug, Serial, VmExitRequest, I8042,
};
use kvm_ioctls::VmFd;
use pci::{HostBridge, PciSegment};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::api::{DeviceNode, DeviceResource};
use crate::config::{SerialConfig, VmConfig};
use crate::device_manager::console_out::ConsoleOut;
use crate::hotplug::Ejects;
use crate::memory::bar_allocator::BarAllocator;
use crate::memory::layout::*;
use crate::vm::exit::{ExitReason, ExitState};

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("cannot create an eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("KVM refused irqfd for GSI {gsi}: {error}")]
    Irqfd { gsi: u32, error: kvm_ioctls::Error },
    #[error("cannot start the console output thread: {0}")]
    ConsoleOut(std::io::Error),
    #[error("cannot open serial output file {path}: {error}")]
    SerialFile {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
    #[error("placing {what} on the bus: {error}")]
    Bus {
        what: &'static str,
        error: devices::BusError,
    },
    #[error("PCI: {0}")]
    Pci(#[from] pci::PciError),
    #[error("BAR space: {0}")]
    BarSpace(#[from] crate::memory::bar_allocator::BarAllocError),
}

type Result<T> = std::result::Result<T, DeviceError>;

pub struct DeviceManager {
    pub pio_bus: Arc<Bus>,
    pub mmio_bus: Arc<Bus>,
    pub serial: Arc<Mutex<Serial>>,
    pub ged: Arc<Mutex<Ged>>,
    /// Segment 0 first (host bridge at 00:00.0, config ports and ECAM), then one per extra
    /// segment of the layout (ECAM only, no device at 00:00.0: a GPU slot).
    pub pci_segments: Vec<Arc<Mutex<PciSegment>>>,
    /// Guest addresses for device BARs (passthrough devices take theirs from here).
    pub bar_allocator: Arc<Mutex<BarAllocator>>,
    /// ACPI PCI hot plug: the controller the DSDT drives, and the guest's ejects.
    pub pci_hotplug: Arc<Mutex<PciHotplug>>,
    pub ejects: Arc<Ejects>,
    /// `vm.info`'s nodes for the devices above, each with the ranges it was placed at.
    pub platform_nodes: Vec<DeviceNode>,
}

fn irqfd(vm: &VmFd, gsi: u32) -> Result<EventFd> {
    let fd = EventFd::new(EFD_NONBLOCK).map_err(DeviceError::EventFd)?;
    vm.register_irqfd(&fd, gsi)
        .map_err(|source| DeviceError::Irqfd { gsi, error: source })?;
    Ok(fd)
}

/// Places trap devices on the buses and notes each one's node for `vm.info`, so that the
/// device tree lists exactly the ranges the buses dispatch.
struct Placer {
    pio_bus: Arc<Bus>,
    mmio_bus: Arc<Bus>,
    nodes: Vec<DeviceNode>,
}

/// Where a trap device sits: guest ports or guest physical addresses.
#[derive(Clone, Copy)]
enum BusRange {
    Pio { base: u16, size: u16 },
    Mmio { base: u64, size: u64 },
}

impl From<BusRange> for DeviceResource {
    fn from(r: BusRange) -> Self {
        match r {
            BusRange::Pio { base, size } => DeviceResource::PioAddressRange { base, size },
            BusRange::Mmio { base, size } => DeviceResource::MmioAddressRange { base, size },
        }
    }
}

impl Placer {
    fn insert(
        &mut self,
        node: &str,
        what: &'static str,
        dev: Arc<Mutex<dyn devices::BusDevice>>,
        range: BusRange,
    ) -> Result<()> {
        let (bus, base, len) = match range {
            BusRange::Pio { base, size } => (&self.pio_bus, u64::from(base), u64::from(size)),
            BusRange::Mmio { base, size } => (&self.mmio_bus, base, size),
        };
        bus.insert(dev, base, len)
            .map_err(|source| DeviceError::Bus {
                what,
                error: source,
            })?;
        match self.nodes.iter_mut().find(|n| n.id == node) {
            Some(n) => n.resources.push(range.into()),
            None => self
                .nodes
                .push(DeviceNode::platform(node, vec![range.into()])),
        }
        Ok(())
    }

    fn pio(
        &mut self,
        node: &str,
        what: &'static str,
        dev: Arc<Mutex<dyn devices::BusDevice>>,
        base: u16,
        size: u16,
    ) -> Result<()> {
        self.insert(node, what, dev, BusRange::Pio { base, size })
    }

    fn mmio(
        &mut self,
        node: &str,
        what: &'static str,
        dev: Arc<Mutex<dyn devices::BusDevice>>,
        base: u64,
        size: u64,
    ) -> Result<()> {
        self.insert(node, what, dev, BusRange::Mmio { base, size })
    }

    /// The device placed as `node` interrupts the guest on `gsi`.
    fn irq(&mut self, node: &str, gsi: u32) {
        if let Some(n) = self.nodes.iter_mut().find(|n| n.id == node) {
            n.resources.push(DeviceResource::LegacyIrq(gsi));
        }
    }
}

/// Where a guest's request to stop the VM goes (the ACPI PM and i8042 devices call it).
pub type OnExit = Arc<dyn Fn(VmExitRequest) + Send + Sync>;

fn exit_callback(on_exit: &OnExit) -> devices::ExitCallback {
    let on_exit = on_exit.clone();
    Box::new(move |req| on_exit(req))
}

/// The guest console's output, opened once per ghvmm process (every VM of a reboot loop
/// writes to it): the `console-out` thread's queue, and COM1's end of it; None with
/// `--serial off`.
pub fn open_console(
    cfg: &VmConfig,
    exit: Arc<ExitState>,
) -> Result<Option<(ConsoleOut, console_out::QueueWriter)>> {
    let output: Box<dyn Write + Send> = match &cfg.serial {
        // A descriptor of its own for the console thread: std's stdout has a lock, which
        // a stalled write would hold, and the exit's flush of stdout would wait on.
        SerialConfig::Tty => Box::new(File::from(
            std::io::stdout()
                .as_fd()
                .try_clone_to_owned()
                .map_err(DeviceError::ConsoleOut)?,
        )),
        SerialConfig::Off => return Ok(None),
        SerialConfig::File(path) => {
            Box::new(
                File::create(path).map_err(|source| DeviceError::SerialFile {
                    path: path.clone(),
                    error: source,
                })?,
            )
        }
    };
    ConsoleOut::start(output, console_out::QUEUE_BYTES, exit)
        .map(Some)
        .map_err(DeviceError::ConsoleOut)
}

impl DeviceManager {
    /// `out` is COM1's output: the console's queue (`open_console`), which outlives the VM
    /// so that a reboot neither truncates `--serial file=` nor starts a second writer.
    pub fn new(
        vm: &VmFd,
        layout: &Layout,
        out: Box<dyn Write + Send>,
        exit: Arc<ExitState>,
    ) -> Result<Self> {
        let on_exit: OnExit = Arc::new(move |req| {
            exit.request(match req {
                VmExitRequest::PowerOff => ExitReason::PowerOff,
                VmExitRequest::Reset => ExitReason::Reset,
            })
        });
        Self::build(layout, out, |gsi| irqfd(vm, gsi), on_exit)
    }

    /// The same device set on the same buses, with no VM: each interrupt is an eventfd that
    /// no irqfd listens to. For driving the guest-facing devices outside a VM (the `guest_bus`
    /// fuzz target), so that what is driven is what `new` builds.
    pub fn without_kvm(
        layout: &Layout,
        serial_out: Box<dyn Write + Send>,
        on_exit: OnExit,
    ) -> Result<Self> {
        Self::build(
            layout,
            serial_out,
            |_gsi| EventFd::new(EFD_NONBLOCK).map_err(DeviceError::EventFd),
            on_exit,
        )
    }

    /// Builds every trap device and places it on its bus; `interrupt(gsi)` gives the eventfd
    /// a device signals to interrupt the guest on that GSI.
    fn build(
        layout: &Layout,
        serial_out: Box<dyn Write + Send>,
        mut interrupt: impl FnMut(u32) -> Result<EventFd>,
        on_exit: OnExit,
    ) -> Result<Self> {
        let mut placer = Placer {
            pio_bus: Arc::new(Bus::new()),
            mmio_bus: Arc::new(Bus::new()),
            nodes: Vec::new(),
        };

        let serial = Arc::new(Mutex::new(Serial::new(interrupt(COM1_IRQ)?, serial_out)));
        placer.pio("__serial", "COM1", serial.clone(), COM1_PORT, 8)?;
        placer.irq("__serial", COM1_IRQ);

        let pm = Arc::new(Mutex::new(AcpiPmDevice::new(exit_callback(&on_exit))));
        placer.pio("__acpi_pm", "ACPI PM registers", pm, ACPI_PM_PORT, 3)?;
        let i8042 = Arc::new(Mutex::new(I8042::new(exit_callback(&on_exit))));
        placer.pio("__i8042", "i8042", i8042, I8042_PORT, 5)?;

        let ged = Arc::new(Mutex::new(Ged::new(interrupt(GED_IRQ)?)));
        placer.mmio("__acpi_ged", "ACPI GED", ged.clone(), GED_ADDR, GED_SIZE)?;
        placer.irq("__acpi_ged", GED_IRQ);

        let mut pci_segments = Vec::new();
        for seg in &layout.segments {
            let node = format!("__pci_segment{}", seg.id);
            let mut segment = PciSegment::new(seg.id);
            if seg.id == 0 {
                segment.add_device(Some(0), Arc::new(Mutex::new(HostBridge::new())))?;
            }
            let segment = Arc::new(Mutex::new(segment));
            if seg.id == 0 {
                // The legacy config ports reach segment 0 only, as on real hardware.
                let config_io = Arc::new(Mutex::new(PciConfigIo::new(segment.clone())));
                placer.pio(&node, "PCI config ports", config_io, PCI_CONFIG_IO_PORT, 8)?;
            }
            let ecam = Arc::new(Mutex::new(PciConfigMmio::new(segment.clone())));
            placer.mmio(&node, "PCI ECAM", ecam, seg.ecam, ECAM_SEGMENT_SIZE)?;
            pci_segments.push(segment);
        }

        let segments = layout.segments.len() as u16;
        let ejects = Arc::new(Ejects::new(segments));
        let pci_hotplug = Arc::new(Mutex::new(PciHotplug::new(segments, ejects.callback())));
        placer.mmio(
            "__pci_hotplug",
            "PCI hot plug controller",
            pci_hotplug.clone(),
            PCI_HOTPLUG_ADDR,
            acpi::hotplug::regs::LEN,
        )?;

        let Placer {
            pio_bus,
            mmio_bus,
            nodes: platform_nodes,
        } = placer;
        Ok(DeviceManager {
            pio_bus,
            mmio_bus,
            platform_nodes,
            serial,
            // `new` starts the console thread; without a VM nothing is started.
            ged,
            pci_segments,
            pci_hotplug,
            ejects,
            bar_allocator: Arc::new(Mutex::new(BarAllocator::new(layout)?)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::layout::{ExtraSegments, GIB, MIB};

    /// The device set without a VM is the whole set: every device on its bus, one ECAM per
    /// segment, and the guest's power-off reaching the callback.
    #[test]
    fn without_kvm_builds_every_device_on_its_bus() {
        let extra = ExtraSegments {
            count: 2,
            mmio64_size: 64 * GIB,
        };
        let layout = Layout::with_segments(512 * MIB, None, extra, 46).unwrap();
        let exits = Arc::new(Mutex::new(Vec::new()));
        let seen = exits.clone();
        let on_exit: OnExit = Arc::new(move |r| seen.lock().push(r));
        let dm = DeviceManager::without_kvm(&layout, Box::new(std::io::sink()), on_exit).unwrap();
        assert_eq!(dm.pio_bus.len(), 4, "COM1, ACPI PM, i8042, config ports");
        assert_eq!(
            dm.mmio_bus.len(),
            2 + 3,
            "GED, hot plug, one ECAM per segment"
        );
        assert_eq!(dm.pci_segments.len(), 3);
        // vm.info's nodes name every range the buses dispatch, and only those.
        let ranges: Vec<_> = dm
            .platform_nodes
            .iter()
            .flat_map(|n| n.resources.iter().map(move |r| (n.id.as_str(), r.clone())))
            .collect();
        let pio = |base: u16, size| DeviceResource::PioAddressRange { base, size };
        let mmio = |base: u64, size| DeviceResource::MmioAddressRange { base, size };
        assert_eq!(
            ranges,
            [
                ("__serial", pio(COM1_PORT, 8)),
                ("__serial", DeviceResource::LegacyIrq(COM1_IRQ)),
                ("__acpi_pm", pio(ACPI_PM_PORT, 3)),
                ("__i8042", pio(I8042_PORT, 5)),
                ("__acpi_ged", mmio(GED_ADDR, GED_SIZE)),
                ("__acpi_ged", DeviceResource::LegacyIrq(GED_IRQ)),
                ("__pci_segment0", pio(PCI_CONFIG_IO_PORT, 8)),
                (
                    "__pci_segment0",
                    mmio(layout.segments[0].ecam, ECAM_SEGMENT_SIZE)
                ),
                (
                    "__pci_segment1",
                    mmio(layout.segments[1].ecam, ECAM_SEGMENT_SIZE)
                ),
                (
                    "__pci_segment2",
                    mmio(layout.segments[2].ecam, ECAM_SEGMENT_SIZE)
                ),
                (
                    "__pci_hotplug",
                    mmio(PCI_HOTPLUG_ADDR, acpi::hotplug::regs::LEN)
                ),
            ]
        );
        for (id, r) in &ranges {
            match *r {
                DeviceResource::PioAddressRange { base, .. } => {
                    assert!(dm.pio_bus.read(u64::from(base), &mut [0]).is_ok(), "{id}")
                }
                DeviceResource::MmioAddressRange { base, .. } => {
                    assert!(dm.mmio_bus.read(base, &mut [0; 4]).is_ok(), "{id}")
                }
                _ => {}
            }
        }
        const S5_SLP_EN: u8 = (5 << 2) | (1 << 5);
        dm.pio_bus
            .write(u64::from(ACPI_PM_PORT), &[S5_SLP_EN])
            .unwrap();
        assert_eq!(*exits.lock(), [VmExitRequest::PowerOff]);
        let mut ids = [0u8; 4];
        dm.mmio_bus.read(layout.segments[0].ecam, &mut ids).unwrap();
        assert_eq!(u32::from_le_bytes(ids), 0x0d57_8086, "the host bridge");
    }
}
