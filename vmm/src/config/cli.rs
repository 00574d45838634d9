//! The `ghvmm` command line, option for option compatible with Cloud Hypervisor where they
//! overlap. clap parses the shape; `config` parses each option's `key=value` list.

use std::path::PathBuf;

use clap::{ArgAction, Parser};

use crate::config::{
    parse_console, ApiSocketConfig, ConfigError, CpusConfig, DeviceConfig, GhConfig, MemoryConfig,
    MemoryZoneConfig, NumaConfig, PlatformConfig, SerialConfig, VmConfig, DEFAULT_CMDLINE,
};
use crate::seccomp::SeccompMode;

#[derive(Debug, Parser)]
#[command(
    name = "ghvmm",
    version,
    about = "A small KVM VMM for passing coherent GPUs through to guests",
    after_help = "Options take Cloud Hypervisor's syntax, e.g. --cpus boot=4 --memory size=2G."
)]
pub struct Cli {
    /// Kernel to boot (x86_64 bzImage).
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Initramfs to load next to the kernel.
    #[arg(long, value_name = "PATH")]
    pub initramfs: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, value_name = "STR", default_value = DEFAULT_CMDLINE)]
    pub cmdline: String,
    /// boot=N: number of vCPUs.
    #[arg(long, value_name = "boot=N", default_value = "boot=1")]
    pub cpus: String,
    /// size=SIZE[,shared=on][,hugepages=on][,hugepage_size=2M|1G][,prefault=on][,thp=off]:
    /// guest RAM, with a K/M/G/T suffix; size=0 with --memory-zone.
    #[arg(
        long,
        value_name = "size=SIZE[,shared=on|off][,hugepages=on|off][,hugepage_size=SIZE][,prefault=on|off][,thp=on|off]",
        default_value = "size=512M"
    )]
    pub memory: String,
    /// id=ID,size=SIZE[,shared=on][,hugepages=on][,hugepage_size=SIZE][,host_numa_node=N]
    /// [,prefault=on]: a zone of guest RAM (repeatable, with --memory size=0); --numa
    /// memory_zones= puts zones in guest NUMA nodes.
    #[arg(
        long,
        value_name = "id=ID,size=SIZE[,shared=on|off][,hugepages=on|off][,hugepage_size=SIZE][,host_numa_node=N][,prefault=on|off]"
    )]
    pub memory_zone: Vec<String>,
    /// Where COM1 goes: tty (stdout; stdin when it is a terminal), off, null or file=PATH.
    #[arg(long, value_name = "tty|off|file=PATH", default_value = "tty")]
    pub serial: String,
    /// Accepted for compatibility: only off/null (ghvmm has no virtio-console).
    #[arg(long, value_name = "off", default_value = "off")]
    pub console: String,
    /// mmio64_size=SIZE: size of the 64-bit PCI MMIO window (power of two, default 256G).
    #[arg(long, value_name = "mmio64_size=SIZE")]
    pub platform: Option<String>,
    /// path=/sys/bus/pci/devices/BDF[,id=NAME][,gh_slot=K|auto]: pass a VFIO-bound PCI device
    /// through (repeatable); gh_slot places it in a --gh slot.
    #[arg(long, value_name = "path=PATH[,id=NAME][,gh_slot=K|auto]")]
    pub device: Vec<String>,
    /// socket=PATH[,id=NAME][,gh_slot=K|auto]: a PCI device served by a vfio-user server
    /// (ghvmm-vfio-user) on this Unix socket (repeatable); needs --memory shared=on.
    #[arg(long, value_name = "socket=PATH[,id=NAME][,gh_slot=K|auto]")]
    pub user_device: Vec<String>,
    /// guest_numa_id=N[,cpus=[0-2,5]][,distances=[1@20,2@30]][,device_id=ID]: a guest NUMA
    /// node (repeatable; ids 0..N-1). device_id makes it a Generic Initiator node of that
    /// --device. Lists may also be written 0-2:5 and 1@20:2@30.
    #[arg(
        long,
        value_name = "guest_numa_id=N[,cpus=LIST][,distances=LIST][,device_id=ID]"
    )]
    pub numa: Vec<String>,
    /// slots=S[,nodes=8][,distance=20][,dsd=off][,bar_space=256G]: Grace Hopper profile, S GPU
    /// slots (slot k = PCI segment k+1, GPU at 00.0), each with `nodes` empty Generic Initiator
    /// NUMA nodes at SLIT `distance`, numbered after the --numa nodes.
    #[arg(
        long,
        value_name = "slots=S[,nodes=N][,distance=D][,dsd=on|off][,bar_space=SIZE]"
    )]
    pub gh: Option<String>,
    /// path=PATH or fd=N: serve Cloud Hypervisor's REST API (vm.info, vm.add-device,
    /// vm.remove-device, ...) on this Unix socket, created with mode 0600 (docs/api.md).
    #[arg(long, value_name = "path=PATH|fd=N")]
    pub api_socket: Option<String>,
    /// Seccomp filters per thread: true (a syscall outside a thread's list kills ghvmm),
    /// log (allowed, and the kernel logs it), false (none).
    #[arg(long, value_name = "true|false|log", default_value = "true")]
    pub seccomp: SeccompMode,
    /// More log output (-v info, -vv debug, -vvv trace); logs go to stderr.
    #[arg(short = 'v', action = ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CliError {
    #[error("--kernel is required")]
    NoKernel,
    #[error(
        "--user-device: the server maps guest memory for DMA, which needs --memory ...,shared=on (or shared=on on every --memory-zone)"
    )]
    UserDeviceNeedsSharedMemory,
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// An error message as the binaries print it: one line, every control character (newlines,
/// carriage returns, escape sequences an option value carried into the message) a space, as
/// the REST API does for its error bodies.
pub fn error_line(msg: &str) -> String {
    msg.trim_end()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

impl Cli {
    pub fn into_config(self) -> Result<VmConfig, CliError> {
        parse_console(&self.console)?;
        // One list: ids, GH slots and NUMA nodes name a device whatever serves it.
        let devices = self
            .device
            .iter()
            .map(|d| DeviceConfig::parse(d))
            .chain(self.user_device.iter().map(|d| DeviceConfig::parse_user(d)))
            .collect::<Result<Vec<_>, _>>()?;
        DeviceConfig::check_unique(&devices)?;
        let zones = self
            .memory_zone
            .iter()
            .map(|z| MemoryZoneConfig::parse(z))
            .collect::<Result<Vec<_>, _>>()?;
        let numa = self
            .numa
            .iter()
            .map(|n| NumaConfig::parse(n))
            .collect::<Result<Vec<_>, _>>()?;
        let cfg = VmConfig {
            kernel: self.kernel.ok_or(CliError::NoKernel)?,
            initramfs: self.initramfs,
            cmdline: self.cmdline,
            cpus: CpusConfig::parse(&self.cpus)?,
            memory: MemoryConfig::parse(&self.memory)?.with_zones(zones)?,
            serial: SerialConfig::parse(&self.serial)?,
            platform: match &self.platform {
                Some(p) => PlatformConfig::parse(p)?,
                None => PlatformConfig { mmio64_size: None },
            },
            devices,
            numa,
            gh: self.gh.as_deref().map(GhConfig::parse).transpose()?,
            api_socket: self
                .api_socket
                .as_deref()
                .map(ApiSocketConfig::parse)
                .transpose()?,
            seccomp: self.seccomp,
        };
        if !self.user_device.is_empty() && !cfg.memory.all_shared() {
            return Err(CliError::UserDeviceNeedsSharedMemory);
        }
        // Refuse an inconsistent topology here, before the VM opens anything; the VM
        // resolves it again from the config.
        crate::config::numa::resolve(&cfg)?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<VmConfig, String> {
        let cli = Cli::try_parse_from(std::iter::once("ghvmm").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        cli.into_config().map_err(|e| e.to_string())
    }

    #[test]
    fn user_devices_join_the_device_list_and_need_shared_memory() {
        let base = ["--kernel", "/k", "--memory", "size=1G,shared=on"];
        let with = |extra: &[&str]| {
            let args: Vec<&str> = base.iter().chain(extra).copied().collect();
            parse(&args)
        };
        let c = with(&[
            "--device",
            "path=/sys/bus/pci/devices/0000:00:03.0,id=nic",
            "--user-device",
            "socket=/run/gpu.sock,id=gpu0",
        ])
        .unwrap();
        assert_eq!(c.devices.len(), 2);
        assert_eq!(
            c.devices[1].source,
            crate::config::DeviceSource::User("/run/gpu.sock".into())
        );
        assert_eq!(
            with(&["--user-device", "path=/x"]).unwrap_err(),
            "--user-device: unknown parameter 'path' (accepted: socket, id, gh_slot)"
        );
        assert_eq!(
            with(&["--user-device", "id=a"]).unwrap_err(),
            "--user-device: missing required parameter 'socket'"
        );
        // One id for two devices, whatever serves them.
        assert!(with(&[
            "--device",
            "path=/a,id=x",
            "--user-device",
            "socket=/s,id=x"
        ])
        .is_err());
        let e = parse(&["--kernel", "/k", "--user-device", "socket=/s"]).unwrap_err();
        assert!(e.contains("shared=on"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn cloud_hypervisor_style_command_line() {
        let c = parse(&[
            "--kernel",
            "/k",
            "--initramfs",
            "/i",
            "--cmdline",
            "console=ttyS0 quiet",
            "--cpus",
            "boot=2",
            "--memory",
            "size=1G",
            "--serial",
            "tty",
            "--console",
            "off",
            "-vv",
        ])
        .unwrap();
        assert_eq!(c.cpus.boot, 2);
        assert_eq!(c.memory.size, 1 << 30);
        assert_eq!(c.cmdline, "console=ttyS0 quiet");
        assert_eq!(c.initramfs.as_deref(), Some(std::path::Path::new("/i")));
    }

    #[test]
    fn defaults() {
        let c = parse(&["--kernel", "/k"]).unwrap();
        assert_eq!((c.cpus.boot, c.memory.size), (1, 512 << 20));
        assert_eq!(c.serial, SerialConfig::Tty);
        assert_eq!(c.seccomp, SeccompMode::Kill);
    }

    #[test]
    fn seccomp_takes_cloud_hypervisors_values() {
        for (arg, want) in [
            ("true", SeccompMode::Kill),
            ("log", SeccompMode::Log),
            ("false", SeccompMode::Off),
        ] {
            let c = parse(&["--kernel", "/k", "--seccomp", arg]).unwrap();
            assert_eq!(c.seccomp, want, "{arg}");
        }
        let e = parse(&["--kernel", "/k", "--seccomp", "on"]).unwrap_err();
        assert!(e.contains("--seccomp"), "{e}");
    }

    #[test]
    fn errors() {
        assert_eq!(parse(&[]).unwrap_err(), "--kernel is required");
        assert!(parse(&["--kernel", "/k", "--bogus"]).is_err());
        assert!(parse(&["--kernel", "/k", "--memory", "size=12Q"]).is_err());
        assert!(parse(&["--kernel", "/k", "--console", "tty"]).is_err());
        assert!(parse(&["--kernel", "/k", "--cpus", "boot=0"]).is_err());
        assert!(parse(&["--kernel"]).is_err());
    }

    /// Found by fuzzing (cli): option errors quote the value given, and a value with a
    /// carriage return or an escape sequence reached stderr as it was (only newlines were
    /// replaced), breaking the one-line contract and writing control sequences to a terminal.
    #[test]
    fn error_lines_have_no_control_characters() {
        let e = parse(&["--kernel", "/k", "--memory", "size=1\r\x1bc\nG"]).unwrap_err();
        assert!(e.contains('\r') && e.contains('\x1b'), "{e:?}");
        let line = error_line(&e);
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert!(line.starts_with("--memory: size=1 "), "{line}");
        assert_eq!(error_line("a\r\nb\x1b[31m\n"), "a  b [31m");
    }

    #[test]
    fn clap_shape_is_valid() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn numa_nodes() {
        let c = parse(&[
            "--kernel",
            "/k",
            "--cpus",
            "boot=4",
            "--numa",
            "guest_numa_id=0,cpus=0-1",
            "--numa",
            "guest_numa_id=1,cpus=2-3,distances=0@20",
        ])
        .unwrap();
        assert_eq!(c.numa.len(), 2);
        let t = crate::config::numa::resolve(&c).unwrap().unwrap();
        assert_eq!(t.distances, [[10, 20], [20, 10]]);
        // Cloud Hypervisor's bracketed lists, commas inside.
        let c = parse(&[
            "--kernel",
            "/k",
            "--cpus",
            "boot=3",
            "--numa",
            "guest_numa_id=0,cpus=[0,2],distances=[1@30,2@40]",
            "--numa",
            "guest_numa_id=1,cpus=[1]",
            "--numa",
            "guest_numa_id=2,device_id=nic",
            "--device",
            "path=/sys/bus/pci/devices/0000:00:03.0,id=nic",
        ])
        .unwrap();
        assert_eq!(c.numa[0].cpus, Some(vec![0, 2]));
        assert_eq!(c.numa[0].distances, [(1, 30), (2, 40)]);
        assert_eq!(parse(&["--kernel", "/k"]).unwrap().numa, []);
    }

    /// Cloud Hypervisor's memory.md example with a GH-like shape: the CPU node holds the RAM,
    /// the GPU's nodes none.
    #[test]
    fn memory_zones_and_numa() {
        let c = parse(&[
            "--kernel",
            "/k",
            "--cpus",
            "boot=2",
            "--memory",
            "size=0,thp=off",
            "--memory-zone",
            "id=mem0,size=1G,hugepages=on,hugepage_size=2M",
            "--memory-zone",
            "id=mem1,size=512M,shared=on",
            "--numa",
            "guest_numa_id=0,cpus=0-1,memory_zones=mem0",
            "--numa",
            "guest_numa_id=1,memory_zones=mem1",
            "--gh",
            "slots=1",
        ])
        .unwrap();
        assert_eq!(c.memory.total(), 3 << 29);
        let t = crate::config::numa::resolve(&c).unwrap().unwrap();
        assert_eq!(
            (t.nodes[0].zones.clone(), t.nodes[1].zones.clone()),
            (vec![0], vec![1])
        );
        assert!(t.nodes[2..].iter().all(|n| n.zones.is_empty()));
        // A vfio-user device needs every zone shared.
        let e = parse(&[
            "--kernel",
            "/k",
            "--memory",
            "size=0",
            "--memory-zone",
            "id=a,size=1G,shared=on",
            "--memory-zone",
            "id=b,size=1G",
            "--user-device",
            "socket=/s",
        ])
        .unwrap_err();
        assert!(e.contains("every --memory-zone"), "{e}");
    }

    #[test]
    fn gh_profile() {
        let c = parse(&[
            "--kernel",
            "/k",
            "--gh",
            "slots=2,dsd=on",
            "--device",
            "path=/g0,id=gpu0,gh_slot=auto",
            "--device",
            "path=/g1,gh_slot=0",
        ])
        .unwrap();
        let gh = c.gh.clone().unwrap();
        assert_eq!((gh.slots, gh.nodes, gh.dsd), (2, 8, true));
        let t = crate::config::numa::resolve(&c).unwrap().unwrap();
        assert_eq!(t.nodes.len(), 17);
        assert_eq!(t.slot_of_device(0).map(|s| s.index), Some(1));
        assert_eq!(t.slot_of_device(1).map(|s| s.index), Some(0));
        assert_eq!(parse(&["--kernel", "/k"]).unwrap().gh, None);
    }

    #[test]
    fn malformed_numa_and_gh_are_errors() {
        let k = ["--kernel", "/k", "--cpus", "boot=2"];
        let cases: &[&[&str]] = &[
            &["--numa", ""],
            &["--numa", "guest_numa_id"],
            &["--numa", "cpus=0-1"],
            &["--numa", "guest_numa_id=0,cpus=[0-1"],
            &["--numa", "guest_numa_id=0,cpus=0-1]"],
            &["--numa", "guest_numa_id=0,cpus=1-0"],
            &["--numa", "guest_numa_id=0,cpus=0-99999999999999999999"],
            &["--numa", "guest_numa_id=0,cpus=0-2"],
            &["--numa", "guest_numa_id=0,cpus=0"],
            &["--numa", "guest_numa_id=0,cpus=[0,,1]"],
            &["--numa", "guest_numa_id=0,distances=[1@20]"],
            &["--numa", "guest_numa_id=0,distances=1@5"],
            &["--numa", "guest_numa_id=0,device_id=nope"],
            &["--numa", "guest_numa_id=1"],
            &["--numa", "guest_numa_id=0", "--numa", "guest_numa_id=0"],
            &["--numa", "guest_numa_id=0,memory_zones=[m0]"],
            &["--memory", "size=0"],
            &["--memory-zone", "id=m0,size=1G"],
            &[
                "--memory",
                "size=0",
                "--memory-zone",
                "id=m0,size=1G",
                "--numa",
                "guest_numa_id=0,memory_zones=m1",
            ],
            &["--gh", ""],
            &["--gh", "slots=0"],
            &["--gh", "slots=1,nodes=64"],
            &["--gh", "slots=1,distance=10"],
            &["--gh", "slots=1,bar_space=3G"],
            &["--gh", "slots=1,dsd=1"],
            &["--gh", "slots=1", "--gh", "slots=2"],
            &["--device", "path=/g,gh_slot=0"],
            &["--gh", "slots=1", "--device", "path=/g,gh_slot=1"],
            &["--gh", "slots=1", "--device", "path=/g,gh_slot=x"],
            &[
                "--gh",
                "slots=1",
                "--device",
                "path=/a,gh_slot=0",
                "--device",
                "path=/b,gh_slot=auto",
            ],
        ];
        for extra in cases {
            let args: Vec<&str> = k.iter().chain(extra.iter()).copied().collect();
            let e = parse(&args).expect_err(&format!("{extra:?}"));
            // clap's own errors carry a usage block (main.rs keeps their first line).
            if !e.contains("Usage:") {
                assert!(!e.contains('\n'), "{extra:?}: {e}");
            }
        }
        let e = parse(&["--kernel", "/k", "--device", "path=/g,id=gpu0,gh_slot=0"]).unwrap_err();
        assert_eq!(e, "--device: id=gpu0: gh_slot needs --gh");
    }
}
