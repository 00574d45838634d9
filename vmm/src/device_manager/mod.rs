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
    /// The guest's console output on its way out (none with `--serial off`).
    pub console_out: Option<ConsoleOut>,
    pub ged: Arc<Mutex<Ged>>,
    /// Segment 0 first (host bridge at 00:00.0, config ports and ECAM), then one per extra
    /// segment of the layout (ECAM only, no device at 00:00.0: a GPU slot).
    pub pci_segments: Vec<Arc<Mutex<PciSegment>>>,
    /// Guest addresses for device BARs (passthrough devices take theirs from here).
    pub bar_allocator: Arc<Mutex<BarAllocator>>,
    /// ACPI PCI hot plug: the controller the DSDT drives, and the guest's ejects.
    pub pci_hotplug: Arc<Mutex<PciHotplug>>,
    pub ejects: Arc<Ejects>,
}

fn irqfd(vm: &VmFd, gsi: u32) -> Result<EventFd> {
    let fd = EventFd::new(EFD_NONBLOCK).map_err(DeviceError::EventFd)?;
    vm.register_irqfd(&fd, gsi)
        .map_err(|source| DeviceError::Irqfd { gsi, error: source })?;
    Ok(fd)
}

fn bus_insert(
    bus: &Bus,
    what: &'static str,
    dev: Arc<Mutex<dyn devices::BusDevice>>,
    base: u64,
    len: u64,
) -> Result<()> {
    bus.insert(dev, base, len)
        .map_err(|source| DeviceError::Bus {
            what,
            error: source,
        })
}

impl DeviceManager {
    pub fn new(vm: &VmFd, cfg: &VmConfig, layout: &Layout, exit: Arc<ExitState>) -> Result<Self> {
        let pio_bus = Arc::new(Bus::new());
        let mmio_bus = Arc::new(Bus::new());

        let output: Option<Box<dyn Write + Send>> = match &cfg.serial {
            // A descriptor of its own for the console thread: std's stdout has a lock, which
            // a stalled write would hold, and the exit's flush of stdout would wait on.
            SerialConfig::Tty => Some(Box::new(File::from(
                std::io::stdout()
                    .as_fd()
                    .try_clone_to_owned()
                    .map_err(DeviceError::ConsoleOut)?,
            ))),
            SerialConfig::Off => None,
            SerialConfig::File(path) => Some(Box::new(File::create(path).map_err(|source| {
                DeviceError::SerialFile {
                    path: path.clone(),
                    error: source,
                }
            })?)),
        };
        let (console_out, out): (_, Box<dyn Write + Send>) = match output {
            Some(output) => {
                let (console, queue) =
                    ConsoleOut::start(output, console_out::QUEUE_BYTES, exit.clone())
                        .map_err(DeviceError::ConsoleOut)?;
                (Some(console), Box::new(queue))
            }
            None => (None, Box::new(std::io::sink())),
        };
        let serial = Arc::new(Mutex::new(Serial::new(irqfd(vm, COM1_IRQ)?, out)));
        bus_insert(&pio_bus, "COM1", serial.clone(), u64::from(COM1_PORT), 8)?;

        let on_exit = |exit: Arc<ExitState>| -> devices::ExitCallback {
            Box::new(move |req| {
                exit.request(match req {
                    VmExitRequest::PowerOff => ExitReason::PowerOff,
                    VmExitRequest::Reset => ExitReason::Reset,
                })
            })
        };
        let pm = Arc::new(Mutex::new(AcpiPmDevice::new(on_exit(exit.clone()))));
        bus_insert(
            &pio_bus,
            "ACPI PM registers",
            pm,
            u64::from(ACPI_PM_PORT),
            3,
        )?;
        let i8042 = Arc::new(Mutex::new(I8042::new(on_exit(exit))));
        bus_insert(&pio_bus, "i8042", i8042, u64::from(I8042_PORT), 5)?;

        let ged = Arc::new(Mutex::new(Ged::new(irqfd(vm, GED_IRQ)?)));
        bus_insert(&mmio_bus, "ACPI GED", ged.clone(), GED_ADDR, GED_SIZE)?;

        let mut pci_segments = Vec::new();
        for seg in &layout.segments {
            let mut segment = PciSegment::new(seg.id);
            if seg.id == 0 {
                segment.add_device(Some(0), Arc::new(Mutex::new(HostBridge::new())))?;
            }
            let segment = Arc::new(Mutex::new(segment));
            if seg.id == 0 {
                // The legacy config ports reach segment 0 only, as on real hardware.
                let config_io = Arc::new(Mutex::new(PciConfigIo::new(segment.clone())));
                bus_insert(
                    &pio_bus,
                    "PCI config ports",
                    config_io,
                    u64::from(PCI_CONFIG_IO_PORT),
                    8,
                )?;
            }
            let ecam = Arc::new(Mutex::new(PciConfigMmio::new(segment.clone())));
            bus_insert(&mmio_bus, "PCI ECAM", ecam, seg.ecam, ECAM_SEGMENT_SIZE)?;
            pci_segments.push(segment);
        }

        let segments = layout.segments.len() as u16;
        let ejects = Arc::new(Ejects::new(segments));
        let pci_hotplug = Arc::new(Mutex::new(PciHotplug::new(segments, ejects.callback())));
        bus_insert(
            &mmio_bus,
            "PCI hot plug controller",
            pci_hotplug.clone(),
            PCI_HOTPLUG_ADDR,
            acpi::hotplug::regs::LEN,
        )?;

        Ok(DeviceManager {
            pio_bus,
            mmio_bus,
            serial,
            console_out,
            ged,
            pci_segments,
            pci_hotplug,
            ejects,
            bar_allocator: Arc::new(Mutex::new(BarAllocator::new(layout)?)),
        })
    }
}
