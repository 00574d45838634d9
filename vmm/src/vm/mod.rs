//! VM lifecycle: create the KVM VM, memory, devices, ACPI and vCPUs; boot; wait for the end.

pub mod control;
pub mod exit;
pub mod lifecycle;
pub mod pause;
pub mod pio;
pub mod threads;
pub mod vcpu;
pub mod vcpu_dump;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kvm_bindings::{kvm_pit_config, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::GuestMemoryMmap;

use crate::arch::boot::{load_linux, BootSpec};
use crate::arch::{cpuid, regs};
use crate::config::VmConfig;
use crate::device_manager::console::{SerialSlot, StdinForwarder};
use crate::device_manager::console_out::{ConsoleOut, QueueWriter};
use crate::device_manager::irq_routing::GsiRouting;
use crate::device_manager::DeviceManager;
use crate::hotplug::{Hotplug, Placement, VmResources, EJECT_TIMEOUT};
use crate::memory::layout::{
    ExtraSegments, Layout, ACPI_PM_PORT, ACPI_RESET_VALUE, KVM_IDENTITY_MAP_ADDR, KVM_TSS_ADDR,
};
use crate::memory::memslots::MemSlots;
use crate::passthrough::PassthroughVm;
use crate::vm::control::Control;
use crate::vm::exit::{ExitReason, ExitState};
use vcpu::VcpuContext;
use vfio::Containers;

pub struct Vm {
    // Field order matters for drop: vCPU threads reference the buses, and guest memory must
    // outlive the VM fd's memory slots.
    _vm: Arc<VmFd>,
    /// Passed-through devices (and the VFIO container whose lifetime is the DMA mappings').
    pub hotplug: Arc<Hotplug>,
    _mem: GuestMemoryMmap,
    devices: DeviceManager,
    exit: Arc<ExitState>,
    pause: Arc<pause::VcpuPause>,
    vcpu_threads: VcpuThreads,
    /// What it was built from: `vm.info`'s configuration.
    config: VmConfig,
}

/// The vCPU threads, for the signals that kick them out of `KVM_RUN`.
pub type VcpuThreads = Arc<parking_lot::Mutex<Vec<std::thread::JoinHandle<()>>>>;

/// How long a reboot waits for the vCPU threads to leave `KVM_RUN` and end.
const VCPU_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a vCPU thread still running is kicked again (a kick just before its
/// `KVM_RUN` is lost).
const VCPU_KICK_INTERVAL: Duration = Duration::from_millis(10);

/// What outlives each VM of a reboot loop, set up once per process.
pub struct Process {
    /// Re-armed after each reboot (`ExitState::rearm`).
    pub exit: Arc<ExitState>,
    /// COM1's output (None with `--serial off`).
    pub console: Option<QueueWriter>,
    /// The current VM's vCPU threads: the register dump's listener kicks whatever is here.
    pub vcpu_threads: VcpuThreads,
}

fn open_kvm() -> Result<Kvm> {
    let kvm = Kvm::new()
        .context("cannot open /dev/kvm (is the kvm module loaded, and may this user use it?)")?;
    let api = kvm.get_api_version();
    anyhow::ensure!(api == 12, "unsupported KVM API version {api} (expected 12)");
    Ok(kvm)
}

impl Vm {
    /// Builds the VM and starts its vCPUs.
    pub fn start(cfg: &VmConfig, process: &Process) -> Result<Vm> {
        // Open the files first: a typo in a path must not cost a KVM VM set-up.
        std::fs::metadata(&cfg.kernel)
            .with_context(|| format!("cannot read kernel {}", cfg.kernel.display()))?;
        if let Some(initramfs) = &cfg.initramfs {
            std::fs::metadata(initramfs)
                .with_context(|| format!("cannot read initramfs {}", initramfs.display()))?;
        }

        let kvm = open_kvm()?;
        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .context("KVM_GET_SUPPORTED_CPUID")?;
        let phys_bits = cpuid::phys_bits(&supported);
        // The CLI resolved it already; a config built another way (the API) is checked here.
        let topology = crate::config::numa::resolve(cfg)?;
        let extra =
            topology
                .as_ref()
                .and_then(|t| t.slots.first())
                .map_or(ExtraSegments::default(), |s| ExtraSegments {
                    count: topology.as_ref().map_or(0, |t| t.slots.len() as u16),
                    mmio64_size: s.bar_space,
                });
        let layout = Layout::with_segments(
            cfg.memory.total(),
            cfg.platform.mmio64_size,
            extra,
            phys_bits,
        )?;
        log::info!("guest physical address bits: {phys_bits}; layout: {layout:?}");

        let vm = kvm.create_vm().context("KVM_CREATE_VM")?;
        vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDR)
            .context("KVM_SET_IDENTITY_MAP_ADDR")?;
        vm.set_tss_address(KVM_TSS_ADDR as usize)
            .context("KVM_SET_TSS_ADDR")?;
        vm.create_irq_chip().context("KVM_CREATE_IRQCHIP")?;
        vm.create_pit2(kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        })
        .context("KVM_CREATE_PIT2")?;

        let (mem, first_free_slot) =
            crate::memory::create_guest_memory(&vm, &layout, &cfg.memory.layout_zones())?;
        let slots = Arc::new(parking_lot::Mutex::new(MemSlots::new(
            first_free_slot,
            kvm.get_nr_memslots() as u32,
        )));
        let vm = Arc::new(vm);
        let exit = process.exit.clone();
        let out: Box<dyn std::io::Write + Send> = match &process.console {
            Some(queue) => Box::new(queue.clone()),
            None => Box::new(std::io::sink()),
        };
        let devices = DeviceManager::new(&vm, &layout, out, exit.clone())?;
        let routing = Arc::new(GsiRouting::new(vm.clone()));
        let hotplug = Hotplug::new(
            VmResources {
                passthrough: Arc::new(PassthroughVm {
                    vm: vm.clone(),
                    mem: mem.clone(),
                    mmio_bus: devices.mmio_bus.clone(),
                    allocator: devices.bar_allocator.clone(),
                    containers: Containers::default(),
                    slots,
                    routing,
                    exit: exit.clone(),
                }),
                segments: devices.pci_segments.clone(),
                layout: layout.clone(),
                gh_slots: topology.as_ref().map_or(0, |t| t.slots.len()),
                controller: devices.pci_hotplug.clone(),
                ged: devices.ged.clone(),
                ejects: devices.ejects.clone(),
            },
            EJECT_TIMEOUT,
            exit.clone(),
        );
        let mut placed = Vec::new();
        for (index, d) in cfg.devices.iter().enumerate() {
            // A device in a GH slot is the GPU at 00.0 of the slot's segment.
            let placement = match topology.as_ref().and_then(|t| t.slot_of_device(index)) {
                Some(s) => Placement::GhSlot(s.index),
                None => Placement::Segment0,
            };
            // The error names the device path itself.
            let (_, address) = hotplug
                .attach(&d.source, d.id.clone(), placement)
                .context("--device")?;
            placed.push(address);
        }

        let zone_sizes: Vec<u64> = cfg.memory.layout_zones().iter().map(|z| z.size).collect();
        let desc = crate::device_manager::acpi_tables::platform_desc(
            cfg.cpus.boot,
            &layout,
            &zone_sizes,
            topology.as_ref(),
            &placed,
        );
        let rsdp_addr = crate::device_manager::acpi_tables::install(&mem, &desc)?;
        let entry = load_linux(
            &mem,
            &layout,
            &BootSpec {
                kernel: &cfg.kernel,
                initramfs: cfg.initramfs.as_deref(),
                cmdline: &cfg.cmdline,
                rsdp_addr,
            },
        )?;
        regs::write_boot_tables(&mem)?;
        crate::arch::boot::write_reset_vector(&mem, ACPI_PM_PORT + 2, ACPI_RESET_VALUE)?;

        let mut vcpus = Vec::new();
        for index in 0..cfg.cpus.boot {
            let fd = vm
                .create_vcpu(u64::from(index))
                .with_context(|| format!("KVM_CREATE_VCPU {index}"))?;
            let mut id = supported.clone();
            cpuid::patch(&mut id, index, cfg.cpus.boot);
            fd.set_cpuid2(&id)
                .with_context(|| format!("vCPU {index}: KVM_SET_CPUID2"))?;
            regs::setup_msrs(&fd)?;
            regs::setup_lapic(&fd)?;
            // Application processors wait for INIT/SIPI in the in-kernel LAPIC; only the
            // bootstrap processor needs the boot register state.
            if index == 0 {
                regs::setup_fpu(&fd)?;
                regs::setup_sregs(&fd, entry)?;
                regs::setup_regs(&fd, entry)?;
            }
            vcpus.push(fd);
        }
        let threads = process.vcpu_threads.clone();
        let pause = Arc::new(pause::VcpuPause::new(vcpus.len()));
        for (index, fd) in vcpus.into_iter().enumerate() {
            let handle = vcpu::spawn(VcpuContext {
                index: index as u8,
                fd,
                pio: devices.pio_bus.clone(),
                mmio: devices.mmio_bus.clone(),
                exit: exit.clone(),
                pause: pause.clone(),
            })
            .context("spawning a vCPU thread")?;
            threads.lock().push(handle);
        }
        Ok(Vm {
            config: cfg.clone(),
            hotplug,
            _vm: vm,
            _mem: mem,
            devices,
            exit,
            pause,
            vcpu_threads: threads,
        })
    }

    /// Blocks until the guest powers off, resets or faults.
    pub fn wait(&self) -> ExitReason {
        self.exit.wait()
    }

    /// Stops the vCPU threads: parked ones are let go, the others kicked out of `KVM_RUN`
    /// until each has seen the exit and ended; then joins them and detaches every device.
    pub fn stop(&self) -> Result<()> {
        use vmm_sys_util::signal::Killable;
        // Only a paused VM has parked vCPUs; the error says it was not paused.
        let _ = self.pause.resume();
        let deadline = Instant::now() + VCPU_STOP_TIMEOUT;
        let mut threads = self.vcpu_threads.lock();
        loop {
            let running: Vec<_> = threads.iter().filter(|t| !t.is_finished()).collect();
            if running.is_empty() {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} of {} vCPU threads did not stop within {} s",
                running.len(),
                threads.len(),
                VCPU_STOP_TIMEOUT.as_secs()
            );
            for t in running {
                // One that ended meanwhile needs no kick.
                let _ = t.kill(crate::vm::vcpu_dump::kick_signal());
            }
            std::thread::sleep(VCPU_KICK_INTERVAL);
        }
        for t in threads.drain(..) {
            // A panic was already reported as the VM's fault by `spawn_guarded`.
            let _ = t.join();
        }
        // No vCPU can reach a device now: close them, so the next VM can open them again.
        self.hotplug.detach_all();
        Ok(())
    }
}

/// How long the end of the VM waits for API requests already read to be answered.
const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

impl lifecycle::Machine for Vm {
    fn attached(&self) -> Vec<crate::hotplug::AttachedDevice> {
        self.hotplug.attached()
    }
    fn stop(&self) -> Result<()> {
        Vm::stop(self)
    }
}

/// Boots ghvmm's VMs: hands each to the API, and on the first boot starts what the process
/// keeps across reboots (the API thread, console input) and enters the main thread's filter.
struct Booter<'a> {
    process: &'a Process,
    control: Option<Arc<Control>>,
    api: Option<std::os::unix::net::UnixListener>,
    /// The API thread once started: the end waits for the answers it owes.
    server: Option<crate::api::Server>,
    serial: SerialSlot,
    console_in: Option<crate::device_manager::console::RawModeGuard>,
    tty: bool,
}

impl lifecycle::Booter for Booter<'_> {
    type Vm = Vm;

    fn start(&mut self, cfg: &VmConfig) -> Result<Vm> {
        if self.control.is_none() {
            crate::event_monitor::emit("vm", "booting", &[]);
        }
        Vm::start(cfg, self.process)
    }

    fn started(&mut self, vm: &Vm, boot: u32) -> Result<()> {
        *self.serial.lock() = Some(vm.devices.serial.clone());
        let parts = control::VmParts {
            config: vm.config.clone(),
            hotplug: vm.hotplug.clone(),
            ged: vm.devices.ged.clone(),
            pause: vm.pause.clone(),
            platform_nodes: vm.devices.platform_nodes.clone(),
        };
        if let Some(control) = &self.control {
            control.attach(parts);
        } else {
            let control = Arc::new(Control::new(
                parts,
                self.process.exit.clone(),
                self.process.vcpu_threads.clone(),
            ));
            if let Some(listener) = self.api.take() {
                self.server = Some(
                    crate::api::spawn(listener, control.clone())
                        .context("starting the API thread")?,
                );
            }
            self.control = Some(control);
        }
        if boot == 0 {
            if self.tty {
                self.console_in =
                    StdinForwarder::new(self.serial.clone(), self.process.exit.clone()).start();
            }
            // Every thread that lives as long as the process is started; the main thread
            // from here waits, rebuilds the VM on a reboot, and cleans up.
            crate::seccomp::enter(crate::seccomp::ThreadKind::Main)?;
        }
        Ok(())
    }

    fn stopping(&mut self) {
        *self.serial.lock() = None;
        if let Some(control) = &self.control {
            control.detach();
        }
    }
}

/// Runs the VM to its end, rebooting it in place of the guest's resets. The caller exits
/// the process right after: the last VM's vCPU threads may still be inside `KVM_RUN`, so
/// that VM is deliberately not torn down here (unmapping guest memory under a running vCPU
/// would only produce spurious faults); process exit releases it all.
pub fn run(cfg: &VmConfig) -> Result<ExitReason> {
    // Before anything opens descriptors: every enabled MSI-X vector holds one.
    match crate::fd_limit::raise() {
        Ok((before, after)) => log::info!("open file limit: {after} (was {before})"),
        Err(e) => log::warn!("cannot raise the open file limit: {e}"),
    }
    // Compiled before anything is opened: a filter that cannot be built fails the start.
    crate::seccomp::init(cfg.seccomp)?;
    crate::event_monitor::start_writer().context("starting the event monitor's thread")?;
    crate::event_monitor::emit("vmm", "starting", &[]);
    // The socket first: a path that cannot be bound must not cost a VM set-up.
    let api = cfg
        .api_socket
        .as_ref()
        .map(|a| {
            // The error names the option and the path itself.
            crate::api::bind_owned(a).map_err(anyhow::Error::from)
        })
        .transpose()?;
    let (listener, socket_file) = match api {
        Some((listener, file)) => (Some(listener), file),
        None => (None, None),
    };
    let exit = Arc::new(ExitState::default());
    let (console, queue): (Option<ConsoleOut>, _) =
        match crate::device_manager::open_console(cfg, exit.clone())? {
            Some((console, queue)) => (Some(console), Some(queue)),
            None => (None, None),
        };
    let process = Process {
        exit,
        console: queue,
        vcpu_threads: VcpuThreads::default(),
    };
    crate::vm::vcpu_dump::install().context("setting up the register-dump signals")?;
    crate::vm::vcpu_dump::spawn_listener(process.vcpu_threads.clone(), process.exit.clone())
        .context("spawning the register-dump thread")?;
    let mut booter = Booter {
        process: &process,
        control: None,
        api: listener,
        server: None,
        serial: SerialSlot::default(),
        console_in: None,
        tty: cfg.serial == crate::config::SerialConfig::Tty,
    };
    let ended = lifecycle::run(cfg, &process.exit, &mut booter);
    if let Some(server) = &booter.server {
        if !server.wait_answered(ANSWER_TIMEOUT) {
            log::warn!(
                "the VM ended with API requests unanswered after {} s; they get none",
                ANSWER_TIMEOUT.as_secs()
            );
        }
    }
    // ghvmm ends with its guest's power-off (or a fault, or a VM that cannot boot again).
    crate::event_monitor::emit("vm", "shutdown", &[]);
    crate::event_monitor::emit("vmm", "shutdown", &[]);
    crate::event_monitor::global().drain(crate::event_monitor::DRAIN_TIMEOUT);
    if let Some(console) = &console {
        console.drain(crate::device_manager::console_out::DRAIN_TIMEOUT);
    }
    drop(booter.console_in.take());
    // Only the socket file ghvmm made, and only if the path still names it.
    if let Some(file) = socket_file {
        file.remove();
    }
    let ended = ended?;
    std::mem::forget(ended.vm);
    Ok(ended.reason)
}
