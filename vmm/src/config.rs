//! The VM configuration and the Cloud-Hypervisor-style option syntax (`key=value,key=value`).
//!
//! Parsing is separate from clap so that every rule here is a pure function with unit tests,
//! and so the REST API (a later issue) can reuse the same parsers for its JSON bodies.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--{option}: unknown parameter '{key}' (accepted: {accepted})")]
    UnknownKey {
        option: &'static str,
        key: String,
        accepted: &'static str,
    },
    #[error("--{option}: parameter '{key}' given twice")]
    DuplicateKey { option: &'static str, key: String },
    #[error("--{option}: '{item}' is not of the form key=value")]
    NotKeyValue { option: &'static str, item: String },
    #[error("--{option}: missing required parameter '{key}'")]
    MissingKey {
        option: &'static str,
        key: &'static str,
    },
    #[error("--{option}: {key}={value}: {reason}")]
    InvalidValue {
        option: &'static str,
        key: &'static str,
        value: String,
        reason: String,
    },
    #[error("--{option}: '{value}' is not supported ({reason})")]
    Unsupported {
        option: &'static str,
        value: String,
        reason: &'static str,
    },
}

type Result<T> = std::result::Result<T, ConfigError>;

/// `key=value` pairs of one option, in order, with duplicate and unknown keys refused.
pub struct OptionParser<'a> {
    option: &'static str,
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> OptionParser<'a> {
    pub fn parse(
        option: &'static str,
        accepted: &'static [&'static str],
        s: &'a str,
    ) -> Result<Self> {
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        for item in s.split(',') {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| ConfigError::NotKeyValue {
                    option,
                    item: item.to_string(),
                })?;
            if !accepted.contains(&key) {
                return Err(ConfigError::UnknownKey {
                    option,
                    key: key.to_string(),
                    accepted: leak_join(accepted),
                });
            }
            if pairs.iter().any(|(k, _)| *k == key) {
                return Err(ConfigError::DuplicateKey {
                    option,
                    key: key.to_string(),
                });
            }
            pairs.push((key, value));
        }
        Ok(OptionParser { option, pairs })
    }

    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    pub fn size(&self, key: &'static str) -> Result<Option<u64>> {
        self.get(key)
            .map(|v| {
                parse_size(v).map_err(|reason| ConfigError::InvalidValue {
                    option: self.option,
                    key,
                    value: v.to_string(),
                    reason,
                })
            })
            .transpose()
    }

    pub fn u32(&self, key: &'static str) -> Result<Option<u32>> {
        self.get(key)
            .map(|v| {
                v.parse::<u32>().map_err(|e| ConfigError::InvalidValue {
                    option: self.option,
                    key,
                    value: v.to_string(),
                    reason: e.to_string(),
                })
            })
            .transpose()
    }
}

// The accepted-key lists are `'static` slices, so joining them once per error is fine; the
// leak is bounded by the number of distinct error messages a process prints (one, then exit).
fn leak_join(keys: &'static [&'static str]) -> &'static str {
    Box::leak(keys.join(", ").into_boxed_str())
}

/// Parses a size with an optional K/M/G/T suffix (binary multiples, as Cloud Hypervisor does).
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let s = s.trim();
    let (digits, shift) = match s.char_indices().last() {
        None => return Err("empty size".into()),
        Some((i, c)) => match c.to_ascii_uppercase() {
            'K' => (&s[..i], 10),
            'M' => (&s[..i], 20),
            'G' => (&s[..i], 30),
            'T' => (&s[..i], 40),
            c if c.is_ascii_digit() => (s, 0),
            _ => return Err(format!("unknown size suffix in '{s}' (use K, M, G or T)")),
        },
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "'{s}' is not a size (digits with an optional K/M/G/T suffix)"
        ));
    }
    let n: u64 = digits.parse().map_err(|_| format!("'{s}' is too large"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("'{s}' is too large"))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpusConfig {
    pub boot: u8,
}

/// KVM and the MADT both cope with more, but the APIC ids must stay below 255 to keep
/// the xAPIC MADT entries and the IOAPIC routing simple.
pub const MAX_VCPUS: u8 = 254;

impl CpusConfig {
    pub fn parse(s: &str) -> Result<Self> {
        let p = OptionParser::parse("cpus", &["boot", "max"], s)?;
        let boot = p.u32("boot")?.ok_or(ConfigError::MissingKey {
            option: "cpus",
            key: "boot",
        })?;
        if boot == 0 || boot > MAX_VCPUS as u32 {
            return Err(ConfigError::InvalidValue {
                option: "cpus",
                key: "boot",
                value: boot.to_string(),
                reason: format!("must be between 1 and {MAX_VCPUS}"),
            });
        }
        if let Some(max) = p.u32("max")? {
            if max != boot {
                return Err(ConfigError::Unsupported {
                    option: "cpus",
                    value: format!("max={max}"),
                    reason: "CPU hotplug is not supported; max must equal boot",
                });
            }
        }
        Ok(CpusConfig { boot: boot as u8 })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryConfig {
    pub size: u64,
}

pub const MIN_MEMORY: u64 = 32 << 20;
/// Far more than this machine class can back, and small enough that RAM plus the 64-bit PCI
/// window stays well inside a 40-bit guest physical address space.
pub const MAX_MEMORY: u64 = 256 << 30;

impl MemoryConfig {
    pub fn parse(s: &str) -> Result<Self> {
        let p = OptionParser::parse("memory", &["size"], s)?;
        let size = p.size("size")?.ok_or(ConfigError::MissingKey {
            option: "memory",
            key: "size",
        })?;
        let invalid = |reason: String| ConfigError::InvalidValue {
            option: "memory",
            key: "size",
            value: p.get("size").unwrap_or_default().to_string(),
            reason,
        };
        if !(MIN_MEMORY..=MAX_MEMORY).contains(&size) {
            return Err(invalid(format!(
                "must be between {} MiB and {} GiB",
                MIN_MEMORY >> 20,
                MAX_MEMORY >> 30
            )));
        }
        if size % 4096 != 0 {
            return Err(invalid("must be a multiple of 4 KiB".into()));
        }
        Ok(MemoryConfig { size })
    }
}

/// Where the guest's COM1 output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialConfig {
    /// ghvmm's stdout; stdin feeds the guest when it is a terminal.
    Tty,
    Off,
    File(PathBuf),
}

impl SerialConfig {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "tty" => Ok(SerialConfig::Tty),
            "off" | "null" => Ok(SerialConfig::Off),
            _ => {
                if let Some(path) = s.strip_prefix("file=") {
                    if path.is_empty() {
                        return Err(ConfigError::InvalidValue {
                            option: "serial",
                            key: "file",
                            value: String::new(),
                            reason: "empty path".into(),
                        });
                    }
                    return Ok(SerialConfig::File(PathBuf::from(path)));
                }
                Err(ConfigError::Unsupported {
                    option: "serial",
                    value: s.to_string(),
                    reason: "use tty, off, null or file=PATH",
                })
            }
        }
    }
}

/// ghvmm has no virtio-console; the option exists so Cloud Hypervisor command lines work.
pub fn parse_console(s: &str) -> Result<()> {
    match s {
        "off" | "null" => Ok(()),
        _ => Err(ConfigError::Unsupported {
            option: "console",
            value: s.to_string(),
            reason: "ghvmm has no virtio-console; use --console off and --serial",
        }),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformConfig {
    /// Size of the 64-bit PCI MMIO window; `None` picks the default.
    pub mmio64_size: Option<u64>,
}

impl PlatformConfig {
    pub fn parse(s: &str) -> Result<Self> {
        let p = OptionParser::parse("platform", &["mmio64_size"], s)?;
        let mmio64_size = p.size("mmio64_size")?;
        if let Some(sz) = mmio64_size {
            if !sz.is_power_of_two() || sz < (1 << 30) {
                return Err(ConfigError::InvalidValue {
                    option: "platform",
                    key: "mmio64_size",
                    value: p.get("mmio64_size").unwrap_or_default().to_string(),
                    reason: "must be a power of two of at least 1G".into(),
                });
            }
        }
        Ok(PlatformConfig { mmio64_size })
    }
}

/// `--device path=/sys/bus/pci/devices/BDF[,id=NAME]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceConfig {
    pub path: PathBuf,
    pub id: Option<String>,
}

impl DeviceConfig {
    pub fn parse(s: &str) -> Result<Self> {
        let p = OptionParser::parse("device", &["path", "id"], s)?;
        let path = p
            .get("path")
            .filter(|v| !v.is_empty())
            .ok_or(ConfigError::MissingKey {
                option: "device",
                key: "path",
            })?;
        let id = p.get("id").map(str::to_string);
        if let Some(id) = &id {
            if id.is_empty()
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(ConfigError::InvalidValue {
                    option: "device",
                    key: "id",
                    value: id.clone(),
                    reason: "use letters, digits, '_' and '-'".into(),
                });
            }
        }
        Ok(DeviceConfig {
            path: PathBuf::from(path),
            id,
        })
    }

    /// Refuses two devices with one id (ids name devices in the API and in NUMA options).
    pub fn check_unique(devices: &[DeviceConfig]) -> Result<()> {
        for (i, d) in devices.iter().enumerate() {
            if let Some(id) = &d.id {
                if devices[..i].iter().any(|o| o.id.as_ref() == Some(id)) {
                    return Err(ConfigError::InvalidValue {
                        option: "device",
                        key: "id",
                        value: id.clone(),
                        reason: "given to two devices".into(),
                    });
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelFormat {
    /// Decided when the file is read: a bzImage, or an ELF vmlinux with a PVH note.
    Auto,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initramfs: Option<PathBuf>,
    pub cmdline: String,
    pub cpus: CpusConfig,
    pub memory: MemoryConfig,
    pub serial: SerialConfig,
    pub platform: PlatformConfig,
    pub devices: Vec<DeviceConfig>,
}

pub const DEFAULT_CMDLINE: &str = "console=ttyS0";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        for bad in [
            "",
            "M",
            "12Q",
            "-1M",
            "1.5G",
            "0x10",
            "99999999999999999999",
            "17179869184T",
            " G",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cpus() {
        assert_eq!(CpusConfig::parse("boot=4"), Ok(CpusConfig { boot: 4 }));
        assert_eq!(
            CpusConfig::parse("boot=2,max=2"),
            Ok(CpusConfig { boot: 2 })
        );
        assert!(CpusConfig::parse("boot=0").is_err());
        assert!(CpusConfig::parse("boot=255").is_err());
        assert!(CpusConfig::parse("boot=2,max=4").is_err());
        assert!(CpusConfig::parse("boot=x").is_err());
        assert!(CpusConfig::parse("boot=2,boot=3").is_err());
        assert!(CpusConfig::parse("4").is_err());
        assert!(CpusConfig::parse("").is_err());
        assert!(matches!(
            CpusConfig::parse("boot=1,topology=1:1:1:1"),
            Err(ConfigError::UnknownKey { .. })
        ));
    }

    #[test]
    fn memory() {
        assert_eq!(MemoryConfig::parse("size=512M").unwrap().size, 512 << 20);
        assert!(MemoryConfig::parse("size=12Q").is_err());
        assert!(MemoryConfig::parse("size=1M").is_err());
        assert!(MemoryConfig::parse("size=1T").is_err());
        assert!(MemoryConfig::parse("size=33554433").is_err());
        assert!(MemoryConfig::parse("shared=on").is_err());
        assert!(MemoryConfig::parse("size=1G,shared=on").is_err());
    }

    #[test]
    fn serial_and_console() {
        assert_eq!(SerialConfig::parse("tty"), Ok(SerialConfig::Tty));
        assert_eq!(SerialConfig::parse("off"), Ok(SerialConfig::Off));
        assert_eq!(
            SerialConfig::parse("file=/tmp/x"),
            Ok(SerialConfig::File("/tmp/x".into()))
        );
        assert!(SerialConfig::parse("file=").is_err());
        assert!(SerialConfig::parse("pty").is_err());
        assert!(parse_console("off").is_ok());
        assert!(parse_console("tty").is_err());
    }

    #[test]
    fn devices() {
        let d = DeviceConfig::parse("path=/sys/bus/pci/devices/0000:00:03.0,id=gpu0").unwrap();
        assert_eq!(d.path, PathBuf::from("/sys/bus/pci/devices/0000:00:03.0"));
        assert_eq!(d.id.as_deref(), Some("gpu0"));
        assert!(DeviceConfig::parse("id=gpu0").is_err());
        assert!(DeviceConfig::parse("path=").is_err());
        assert!(DeviceConfig::parse("path=/x,id=a b").is_err());
        assert!(DeviceConfig::parse("path=/x,id=").is_err());
        assert!(DeviceConfig::parse("path=/x,iommu=on").is_err());
        let two = [
            DeviceConfig::parse("path=/a,id=x").unwrap(),
            DeviceConfig::parse("path=/b,id=x").unwrap(),
        ];
        assert!(DeviceConfig::check_unique(&two).is_err());
        let ok = [
            DeviceConfig::parse("path=/a,id=x").unwrap(),
            DeviceConfig::parse("path=/b").unwrap(),
        ];
        assert!(DeviceConfig::check_unique(&ok).is_ok());
    }

    #[test]
    fn platform() {
        assert_eq!(
            PlatformConfig::parse("mmio64_size=512G")
                .unwrap()
                .mmio64_size,
            Some(512 << 30)
        );
        assert!(PlatformConfig::parse("mmio64_size=3G").is_err());
        assert!(PlatformConfig::parse("mmio64_size=1M").is_err());
        assert!(PlatformConfig::parse("num_pci_segments=2").is_err());
    }

    #[test]
    fn error_messages_are_one_line() {
        let e = MemoryConfig::parse("size=12Q").unwrap_err().to_string();
        assert!(!e.contains('\n'));
        assert!(e.starts_with("--memory: size=12Q"), "{e}");
    }
}
