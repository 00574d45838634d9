//! The `ghvmm` command line, option for option compatible with Cloud Hypervisor where they
//! overlap. clap parses the shape; `config` parses each option's `key=value` list.

use std::path::PathBuf;

use clap::{ArgAction, Parser};

use crate::config::{
    parse_console, ConfigError, CpusConfig, DeviceConfig, MemoryConfig, PlatformConfig,
    SerialConfig, VmConfig, DEFAULT_CMDLINE,
};

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
    /// size=SIZE: guest RAM, with a K/M/G/T suffix.
    #[arg(long, value_name = "size=SIZE", default_value = "size=512M")]
    pub memory: String,
    /// Where COM1 goes: tty (stdout; stdin when it is a terminal), off, null or file=PATH.
    #[arg(long, value_name = "tty|off|file=PATH", default_value = "tty")]
    pub serial: String,
    /// Accepted for compatibility: only off/null (ghvmm has no virtio-console).
    #[arg(long, value_name = "off", default_value = "off")]
    pub console: String,
    /// mmio64_size=SIZE: size of the 64-bit PCI MMIO window (power of two, default 256G).
    #[arg(long, value_name = "mmio64_size=SIZE")]
    pub platform: Option<String>,
    /// path=/sys/bus/pci/devices/BDF[,id=NAME]: pass a VFIO-bound PCI device through (repeatable).
    #[arg(long, value_name = "path=PATH[,id=NAME]")]
    pub device: Vec<String>,
    /// More log output (-v info, -vv debug, -vvv trace); logs go to stderr.
    #[arg(short = 'v', action = ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CliError {
    #[error("--kernel is required")]
    NoKernel,
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl Cli {
    pub fn into_config(self) -> Result<VmConfig, CliError> {
        parse_console(&self.console)?;
        let devices = self
            .device
            .iter()
            .map(|d| DeviceConfig::parse(d))
            .collect::<Result<Vec<_>, _>>()?;
        DeviceConfig::check_unique(&devices)?;
        Ok(VmConfig {
            kernel: self.kernel.ok_or(CliError::NoKernel)?,
            initramfs: self.initramfs,
            cmdline: self.cmdline,
            cpus: CpusConfig::parse(&self.cpus)?,
            memory: MemoryConfig::parse(&self.memory)?,
            serial: SerialConfig::parse(&self.serial)?,
            platform: match &self.platform {
                Some(p) => PlatformConfig::parse(p)?,
                None => PlatformConfig { mmio64_size: None },
            },
            devices,
        })
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
}
