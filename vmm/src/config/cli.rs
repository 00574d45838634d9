//! The `ghvmm` command line, option for option compatible with Cloud Hypervisor where they
//! overlap. clap parses the shape; `config` parses each option's `key=value` list.

use std::path::PathBuf;

use std::ffi::OsString;

use clap::{Arg, ArgAction, CommandFactory, FromArgMatches, Parser};

use crate::config::cloud_hypervisor::UNSUPPORTED_OPTIONS;
use crate::config::{
    parse_console, ApiSocketConfig, ConfigError, CpusConfig, DeviceConfig, EventMonitorConfig,
    GhConfig, GhSlotRequest, MemoryConfig, MemoryZoneConfig, NumaConfig, PlatformConfig,
    SerialConfig, VmConfig, DEFAULT_CMDLINE,
};
use crate::seccomp::SeccompMode;

// A repeatable option is a `Vec<String>` with `num_args = 1..` and `ArgAction::Append`, as
// Cloud Hypervisor's: `--device A B --device C` gives A, B, C, and the next `--option` ends
// the values. (A plain comment: a doc comment here would become clap's long help.)
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
    /// [,prefault=on]: zones of guest RAM (repeatable, several values after one --memory-zone;
    /// with --memory size=0); --numa memory_zones= puts zones in guest NUMA nodes.
    #[arg(
        long,
        value_name = "id=ID,size=SIZE[,shared=on|off][,hugepages=on|off][,hugepage_size=SIZE][,host_numa_node=N][,prefault=on|off]",
        num_args = 1..,
        action = ArgAction::Append
    )]
    pub memory_zone: Vec<String>,
    /// Where COM1 goes: tty (stdout; stdin when it is a terminal), off, null or file=PATH.
    #[arg(long, value_name = "tty|off|file=PATH", default_value = "tty")]
    pub serial: String,
    /// Accepted for compatibility: only off/null (ghvmm has no virtio-console).
    #[arg(long, value_name = "off", default_value = "off")]
    pub console: String,
    /// mmio64_size=SIZE: size of the 64-bit PCI MMIO window (power of two, default 256G);
    /// num_pci_segments=N is accepted when it is 1 + the --gh slots.
    #[arg(long, value_name = "mmio64_size=SIZE[,num_pci_segments=N]")]
    pub platform: Option<String>,
    /// path=/sys/bus/pci/devices/BDF[,id=NAME][,gh_slot=K|auto|pci_segment=N]: pass VFIO-bound
    /// PCI devices through (repeatable, several values after one --device); gh_slot places it
    /// in a --gh slot, pci_segment=K+1 is GH slot K.
    #[arg(
        long,
        value_name = "path=PATH[,id=NAME][,gh_slot=K|auto|pci_segment=N]",
        num_args = 1..,
        action = ArgAction::Append
    )]
    pub device: Vec<String>,
    /// socket=PATH[,id=NAME][,gh_slot=K|auto|pci_segment=N]: PCI devices served by vfio-user
    /// servers (ghvmm-vfio-user) on these Unix sockets (repeatable, several values after one
    /// --user-device); needs --memory shared=on.
    #[arg(
        long,
        value_name = "socket=PATH[,id=NAME][,gh_slot=K|auto|pci_segment=N]",
        num_args = 1..,
        action = ArgAction::Append
    )]
    pub user_device: Vec<String>,
    /// guest_numa_id=N[,cpus=[0-2,5]][,distances=[1@20,2@30]][,device_id=ID]
    /// [,memory_zones=[a,b]]: guest NUMA
    /// nodes (repeatable, several values after one --numa; ids 0..N-1). device_id makes it a
    /// Generic Initiator node of that --device. Lists may also be written 0-2:5 and 1@20:2@30.
    #[arg(
        long,
        value_name = "guest_numa_id=N[,cpus=LIST][,distances=LIST][,device_id=ID][,memory_zones=LIST]",
        num_args = 1..,
        action = ArgAction::Append
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
    /// path=PATH or fd=N: write JSON events (boot, device added/removed, shutdown) there, in
    /// Cloud Hypervisor's format.
    #[arg(long, value_name = "path=PATH|fd=N")]
    pub event_monitor: Option<String>,
    /// Write the log there (created, or truncated) instead of stderr.
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,
    /// More log output (-v info, -vv debug, -vvv trace); logs go to stderr or --log-file.
    #[arg(short = 'v', action = ArgAction::Count)]
    pub verbose: u8,
}

/// Why the command line could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// clap's own error (help and version requests too); its first line is the message.
    #[error(transparent)]
    Clap(#[from] clap::Error),
    #[error("--{0} is not supported by ghvmm (see --help for the options it has)")]
    Unsupported(&'static str),
}

/// The `ghvmm` command-line parser: `Cli`'s options, plus Cloud Hypervisor's options that
/// ghvmm lacks, known to the parser (hidden, taking any values) so that the first one given is
/// named in its own error rather than reported as an unknown argument. One parser serves any
/// number of command lines: building it (clap checks the whole definition in debug builds)
/// costs more than a parse, which matters to a caller that parses many (the fuzzer).
pub struct CliParser(clap::Command);

impl Default for CliParser {
    fn default() -> Self {
        let mut cmd = Cli::command();
        for &name in UNSUPPORTED_OPTIONS {
            cmd = cmd.arg(
                Arg::new(name)
                    .long(name)
                    .hide(true)
                    .num_args(0..)
                    .action(ArgAction::Append),
            );
        }
        CliParser(cmd)
    }
}

impl CliParser {
    /// Parses one command line (its first item is the program name).
    pub fn parse<I, T>(&mut self, args: I) -> Result<Cli, ParseError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let matches = self.0.try_get_matches_from_mut(&args)?;
        // clap keeps no index for an option given without values, so the first one is
        // found in the arguments themselves (`--name` or `--name=...`).
        let given = |name: &str| {
            args.iter().position(|a| {
                a.to_str()
                    .and_then(|a| a.strip_prefix("--"))
                    .and_then(|a| a.strip_prefix(name))
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('='))
            })
        };
        let first = UNSUPPORTED_OPTIONS
            .iter()
            .filter(|&&name| matches.contains_id(name))
            .filter_map(|&name| Some((given(name)?, name)))
            .min();
        if let Some((_, name)) = first {
            return Err(ParseError::Unsupported(name));
        }
        Ok(Cli::from_arg_matches(&matches)?)
    }
}

impl Cli {
    /// Parses the command line (`CliParser`, built for this one line).
    pub fn parse_from_args<I, T>(args: I) -> Result<Cli, ParseError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        CliParser::default().parse(args)
    }

    /// `--event-monitor`, parsed.
    pub fn event_monitor_config(&self) -> Result<Option<EventMonitorConfig>, CliError> {
        Ok(self
            .event_monitor
            .as_deref()
            .map(EventMonitorConfig::parse)
            .transpose()?)
    }
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
                None => PlatformConfig::default(),
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
        let mut cfg = cfg;
        place_pci_segments(&mut cfg)?;
        // Refuse an inconsistent topology here, before the VM opens anything; the VM
        // resolves it again from the config.
        crate::config::numa::resolve(&cfg)?;
        Ok(cfg)
    }
}

/// Cloud Hypervisor's PCI segments on ghvmm: segment 0 and, with `--gh slots=S`, segments 1
/// to S, segment k+1 being GH slot k. Checks `--platform num_pci_segments` against that and
/// turns each `pci_segment=N` (N > 0) into `gh_slot=N-1`.
fn place_pci_segments(cfg: &mut VmConfig) -> Result<(), ConfigError> {
    let slots = cfg.gh.as_ref().map_or(0, |g| g.slots);
    let segments = u32::from(slots) + 1;
    if let Some(n) = cfg.platform.num_pci_segments {
        if u32::from(n) != segments {
            return Err(ConfigError::Inconsistent {
                option: "platform",
                reason: format!(
                    "num_pci_segments={n}: ghvmm has segment 0 plus one per --gh slot, {segments} with this --gh"
                ),
            });
        }
    }
    for d in &mut cfg.devices {
        if let Some(seg) = d.pci_segment {
            if u32::from(seg) >= segments {
                let option = match d.source {
                    crate::config::DeviceSource::Vfio(_) => "device",
                    crate::config::DeviceSource::User(_) => "user-device",
                };
                return Err(ConfigError::Inconsistent {
                    option,
                    reason: format!(
                        "pci_segment={seg}: no such segment (the VM has segments 0 to {}: segment 0 and one per --gh slot)",
                        segments - 1
                    ),
                });
            }
            d.gh_slot = Some(GhSlotRequest::Index(seg - 1));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<VmConfig, String> {
        let cli = Cli::parse_from_args(std::iter::once("ghvmm").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        cli.into_config().map_err(|e| e.to_string())
    }

    /// `parse` with `--kernel /k` first: most tests are about the options after it.
    fn boot(args: &[&str]) -> Result<VmConfig, String> {
        parse(&[&["--kernel", "/k"], args].concat())
    }

    /// A parser reused for many command lines answers each as a fresh one does: clap keeps
    /// nothing of one parse for the next (values, errors, the unsupported option named).
    #[test]
    fn a_reused_parser_answers_as_a_fresh_one() {
        let lines: &[&[&str]] = &[
            &["--kernel", "/k", "--cpus", "boot=2", "--device", "path=/a"],
            &["--kernel", "/k", "--no-such-option"],
            &["--kernel", "/k", "--net", "tap=t0", "--vsock", "cid=3"],
            &["--kernel", "/k", "--cpus"],
            &["--kernel", "/k2", "-vv"],
            &["--kernel", "/k", "--cpus", "boot=2", "--device", "path=/a"],
        ];
        let show = |r: Result<Cli, ParseError>| match r {
            Ok(c) => format!("{c:?}"),
            Err(e) => format!("error: {e}"),
        };
        let mut reused = CliParser::default();
        for line in lines {
            let args = || std::iter::once("ghvmm").chain(line.iter().copied());
            let fresh = show(Cli::parse_from_args(args()));
            assert_eq!(show(reused.parse(args())), fresh, "{line:?}");
        }
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
            "--user-device: unknown parameter 'path' (accepted: socket, id, gh_slot, pci_segment)"
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
        let e = boot(&["--user-device", "socket=/s"]).unwrap_err();
        assert!(e.contains("shared=on"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn cloud_hypervisor_style_command_line() {
        let c = boot(&[
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
        let c = boot(&[]).unwrap();
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
            let c = boot(&["--seccomp", arg]).unwrap();
            assert_eq!(c.seccomp, want, "{arg}");
        }
        let e = boot(&["--seccomp", "on"]).unwrap_err();
        assert!(e.contains("--seccomp"), "{e}");
    }

    #[test]
    fn errors() {
        assert_eq!(parse(&[]).unwrap_err(), "--kernel is required");
        assert!(boot(&["--bogus"]).is_err());
        assert!(boot(&["--memory", "size=12Q"]).is_err());
        assert!(boot(&["--console", "tty"]).is_err());
        assert!(boot(&["--cpus", "boot=0"]).is_err());
        assert!(parse(&["--kernel"]).is_err());
    }

    /// Found by fuzzing (cli): option errors quote the value given, and a value with a
    /// carriage return or an escape sequence reached stderr as it was (only newlines were
    /// replaced), breaking the one-line contract and writing control sequences to a terminal.
    #[test]
    fn error_lines_have_no_control_characters() {
        let e = boot(&["--memory", "size=1\r\x1bc\nG"]).unwrap_err();
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
        let c = boot(&[
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
        let c = boot(&[
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
        assert_eq!(boot(&[]).unwrap().numa, []);
    }

    /// Cloud Hypervisor's memory.md example with a GH-like shape: the CPU node holds the RAM,
    /// the GPU's nodes none.
    #[test]
    fn memory_zones_and_numa() {
        let c = boot(&[
            "--cpus",
            "boot=2",
            "--memory",
            "size=0,thp=off",
            "--memory-zone",
            "id=mem0,size=1G,hugepages=on,hugepage_size=2M",
            "id=mem1,size=512M,shared=on",
            "--numa",
            "guest_numa_id=0,cpus=0-1,memory_zones=mem0",
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
        let e = boot(&[
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
        // Cloud Hypervisor's zone keys ghvmm lacks are named as such, not as typos.
        let e = boot(&[
            "--memory",
            "size=0",
            "--memory-zone",
            "id=a,size=1G,hotplug_size=1G",
        ])
        .unwrap_err();
        assert!(
            e.contains("'hotplug_size' is not supported by ghvmm"),
            "{e}"
        );
        let c = boot(&[
            "--memory",
            "size=0,mergeable=on",
            "--memory-zone",
            "id=a,size=1G,file=/dev/shm/a,shared=on",
        ])
        .unwrap();
        let z = &c.memory.layout_zones()[0];
        assert!(z.backing.mergeable && z.backing.shared);
        assert_eq!(z.backing.file, Some(PathBuf::from("/dev/shm/a")));
    }

    #[test]
    fn gh_profile() {
        let c = boot(&[
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
        assert_eq!(boot(&[]).unwrap().gh, None);
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
        let e = boot(&["--device", "path=/g,id=gpu0,gh_slot=0"]).unwrap_err();
        assert_eq!(e, "--device: id=gpu0: gh_slot needs --gh");
    }

    #[test]
    fn several_values_after_one_repeatable_option() {
        let c = parse(&[
            "--device",
            "path=/a,id=a",
            "path=/b,id=b",
            "--kernel",
            "/k",
            "--device",
            "path=/c",
            "--cpus",
            "boot=2",
            "--numa",
            "guest_numa_id=0,cpus=0",
            "guest_numa_id=1,cpus=1",
            "--memory",
            "size=1G,shared=on",
            "--user-device",
            "socket=/s1",
            "socket=/s2,id=u2",
        ])
        .unwrap();
        let paths: Vec<_> = c.devices.iter().map(|d| d.source.path()).collect();
        assert_eq!(
            paths,
            ["/a", "/b", "/c", "/s1", "/s2"].map(std::path::Path::new)
        );
        assert_eq!(c.numa.len(), 2);
        assert_eq!(c.kernel, std::path::Path::new("/k"));
        // A value is still needed.
        let e = boot(&["--device"]).unwrap_err();
        assert!(e.contains("--device"), "{e}");
        let e = parse(&["--device", "path=/a", "--kernel"]).unwrap_err();
        assert!(e.contains("--kernel"), "{e}");
    }

    #[test]
    fn cloud_hypervisor_options_ghvmm_lacks_are_named() {
        for (args, option) in [
            (&["--disk", "path=/d.img"][..], "disk"),
            (&["--net", "tap=", "mac=12:34:56:78:9a:bc"], "net"),
            (&["--landlock"], "landlock"),
            (&["--pvpanic"], "pvpanic"),
            (&["--watchdog"], "watchdog"),
            (&["--rng", "src=/dev/urandom"], "rng"),
            (&["--firmware", "/fw"], "firmware"),
            (&["--debug-console", "off"], "debug-console"),
            (&["--tpm", "socket=/t"], "tpm"),
            (&["--sgx-epc", "id=e,size=1M"], "sgx-epc"),
            (&["--rate-limit-group", "id=g"], "rate-limit-group"),
        ] {
            let mut argv = vec!["--kernel", "/k"];
            argv.extend(args);
            argv.extend(["--cpus", "boot=1"]);
            assert_eq!(
                parse(&argv).unwrap_err(),
                format!("--{option} is not supported by ghvmm (see --help for the options it has)"),
                "{args:?}"
            );
        }
        // The first one given is named, before any other problem is looked at.
        let e = parse(&["--vsock", "cid=3", "--disk", "path=/d", "--cpus", "boot=0"]).unwrap_err();
        assert!(e.starts_with("--vsock is not supported by ghvmm"), "{e}");
        // A key Cloud Hypervisor has, apart from an unknown one.
        assert_eq!(
            boot(&["--cpus", "boot=1,topology=1:1:1:1"]).unwrap_err(),
            "--cpus: parameter 'topology' is not supported by ghvmm (accepted: boot, max)"
        );
        assert_eq!(
            boot(&["--device", "path=/a,iommu=on"]).unwrap_err(),
            "--device: parameter 'iommu' is not supported by ghvmm (accepted: path, id, gh_slot, pci_segment)"
        );
        assert_eq!(
            boot(&["--device", "path=/a,bogus=1"]).unwrap_err(),
            "--device: unknown parameter 'bogus' (accepted: path, id, gh_slot, pci_segment)"
        );
        assert_eq!(
            boot(&["--serial", "pty"]).unwrap_err(),
            "--serial: 'pty' is not supported by ghvmm (use tty, off, null or file=PATH)"
        );
        // A plain typo stays clap's error.
        let e = boot(&["--disks", "path=/d"]).unwrap_err();
        assert!(e.contains("unexpected argument '--disks'"), "{e}");
    }

    #[test]
    fn pci_segments_are_gh_slots() {
        let c = boot(&[
            "--gh",
            "slots=2",
            "--platform",
            "num_pci_segments=3",
            "--device",
            "path=/g0,pci_segment=2",
            "path=/g1,pci_segment=1",
            "path=/nic,pci_segment=0",
        ])
        .unwrap();
        let slots: Vec<_> = c.devices.iter().map(|d| d.gh_slot).collect();
        assert_eq!(
            slots,
            [
                Some(GhSlotRequest::Index(1)),
                Some(GhSlotRequest::Index(0)),
                None
            ]
        );
        let t = crate::config::numa::resolve(&c).unwrap().unwrap();
        assert_eq!(t.slot_of_device(0).map(|s| s.segment), Some(2));
        assert_eq!(
            boot(&["--gh", "slots=1", "--device", "path=/g,pci_segment=2"])
                .unwrap_err(),
            "--device: pci_segment=2: no such segment (the VM has segments 0 to 1: segment 0 and one per --gh slot)"
        );
        assert_eq!(
            boot(&["--device", "path=/g,pci_segment=1"]).unwrap_err(),
            "--device: pci_segment=1: no such segment (the VM has segments 0 to 0: segment 0 and one per --gh slot)"
        );
        assert_eq!(
            boot(&["--platform", "num_pci_segments=2"]).unwrap_err(),
            "--platform: num_pci_segments=2: ghvmm has segment 0 plus one per --gh slot, 1 with this --gh"
        );
        assert!(boot(&["--platform", "num_pci_segments=1"]).is_ok());
        assert!(boot(&["--platform", "num_pci_segments=0"]).is_err());
        assert!(boot(&["--platform", "num_pci_segments=65536"]).is_err());
    }

    #[test]
    fn log_file_and_event_monitor() {
        let cli = |args: &[&str]| {
            Cli::parse_from_args(["ghvmm", "--kernel", "/k"].iter().chain(args)).unwrap()
        };
        let c = cli(&[
            "--log-file",
            "/tmp/ghvmm.log",
            "--event-monitor",
            "path=/tmp/ev",
        ]);
        assert_eq!(
            c.log_file.as_deref(),
            Some(std::path::Path::new("/tmp/ghvmm.log"))
        );
        assert_eq!(
            c.event_monitor_config().unwrap(),
            Some(EventMonitorConfig::Path("/tmp/ev".into()))
        );
        assert_eq!(
            cli(&["--event-monitor", "fd=7"])
                .event_monitor_config()
                .unwrap(),
            Some(EventMonitorConfig::Fd(7))
        );
        assert_eq!(cli(&[]).event_monitor_config().unwrap(), None);
        for bad in ["", "path=", "fd=1", "path=/a,fd=4", "/bare", "socket=/x"] {
            let e = cli(&["--event-monitor", bad])
                .event_monitor_config()
                .expect_err(bad)
                .to_string();
            assert!(
                e.starts_with("--event-monitor: ") && !e.contains('\n'),
                "{bad}: {e}"
            );
        }
    }
}
