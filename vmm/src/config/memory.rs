//! `--memory` and `--memory-zone`, Cloud Hypervisor's syntax: how much guest RAM, in which
//! zones, and how each zone is backed on the host (private or shared, huge pages, prefaulted,
//! transparent huge pages, bound to a host NUMA node, in a file of the user's, mergeable by
//! KSM). A zone is the unit `--numa memory_zones=` gives a guest node.

use std::path::PathBuf;

use super::{parse_id, ConfigError, OptionParser};

type Result<T> = std::result::Result<T, ConfigError>;

pub const MIN_MEMORY: u64 = 32 << 20;
/// A bound on the number only, far above any host: what the guest can really have is decided
/// by its physical address width when the layout is made (`memory::layout`).
pub const MAX_MEMORY: u64 = 1 << 46;
const PAGE: u64 = 4096;
/// Huge page sizes x86-64 hosts offer (hugetlbfs): 2 MiB and 1 GiB.
pub const HUGE_PAGE_SIZES: [u64; 2] = [2 << 20, 1 << 30];

/// Huge pages for a zone: off, the host's default size, or a given size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HugePages {
    #[default]
    Off,
    HostDefault,
    Size(u64),
}

/// How one zone of guest RAM is backed on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backing {
    /// MAP_SHARED over a memfd, so another process (a vfio-user backend) can map the same
    /// pages from the fd; otherwise private memory.
    pub shared: bool,
    pub hugepages: HugePages,
    /// Every page allocated before the guest starts (MAP_POPULATE), so a host short of memory
    /// fails at start rather than in the middle of a run.
    pub prefault: bool,
    /// Transparent huge pages asked for (MADV_HUGEPAGE) or refused (MADV_NOHUGEPAGE); only
    /// for anonymous memory (not hugetlbfs, shared or in a `file=`), as Cloud Hypervisor does.
    pub thp: bool,
    /// mbind(2) the zone to this host node.
    pub host_numa_node: Option<u32>,
    /// `--memory-zone file=`: the zone lives in this file (a regular file used as it is, or a
    /// directory to make an unnamed temporary file in) instead of anonymous memory or a memfd.
    pub file: Option<PathBuf>,
    /// MADV_MERGEABLE on the zone's mappings, so the host's KSM may merge identical pages;
    /// only `--memory` sets it, for all guest RAM, as Cloud Hypervisor does.
    pub mergeable: bool,
}

impl Default for Backing {
    fn default() -> Self {
        Backing {
            shared: false,
            hugepages: HugePages::Off,
            prefault: false,
            // Cloud Hypervisor's default.
            thp: true,
            host_numa_node: None,
            file: None,
            mergeable: false,
        }
    }
}

/// `--memory-zone id=ID,size=SIZE[,file=PATH][,shared=on][,hugepages=on][,hugepage_size=SIZE]
/// [,host_numa_node=N][,prefault=on]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryZoneConfig {
    pub id: String,
    pub size: u64,
    pub backing: Backing,
}

/// `--memory size=SIZE[,mergeable=on][,shared=on][,hugepages=on][,hugepage_size=SIZE]
/// [,prefault=on][,thp=on|off]` and the `--memory-zone`s. With zones, `size` is 0 and the zones are the RAM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryConfig {
    pub size: u64,
    pub backing: Backing,
    pub zones: Vec<MemoryZoneConfig>,
}

/// One zone of guest RAM as the VM lays it out: the `--memory-zone`s in order, or the one
/// zone `--memory size=` makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    /// `None` for the implicit zone of `--memory size=`.
    pub id: Option<String>,
    pub size: u64,
    pub backing: Backing,
}

/// The parameters both options share, read the same way.
fn backing(p: &OptionParser, thp: bool) -> Result<Backing> {
    let huge = p.on_off("hugepages")?.unwrap_or(false);
    let size = p.size("hugepage_size")?;
    let hugepages = match (huge, size) {
        (false, None) => HugePages::Off,
        (false, Some(_)) => return Err(p.invalid("hugepage_size", "needs hugepages=on")),
        (true, None) => HugePages::HostDefault,
        (true, Some(s)) if HUGE_PAGE_SIZES.contains(&s) => HugePages::Size(s),
        (true, Some(_)) => {
            return Err(p.invalid("hugepage_size", "an x86-64 host has huge pages of 2M or 1G"))
        }
    };
    Ok(Backing {
        shared: p.on_off("shared")?.unwrap_or(false),
        hugepages,
        prefault: p.on_off("prefault")?.unwrap_or(false),
        thp,
        host_numa_node: p.u32("host_numa_node")?,
        file: None,
        mergeable: false,
    })
}

/// `file=PATH` of a zone: not empty, and not with huge pages (the file's own filesystem, a
/// hugetlbfs mount, decides its page size) nor, when shared, with a host node (mbind cannot
/// move the pages of a file other processes map: Cloud Hypervisor refuses it too).
fn zone_file(p: &OptionParser, b: &Backing) -> Result<Option<PathBuf>> {
    let Some(path) = p.get("file") else {
        return Ok(None);
    };
    if path.is_empty() {
        return Err(p.invalid("file", "empty path"));
    }
    if b.hugepages != HugePages::Off {
        return Err(p.invalid(
            "file",
            "cannot be combined with hugepages=on (put the file on a hugetlbfs mount instead)",
        ));
    }
    if b.shared && b.host_numa_node.is_some() {
        return Err(p.invalid(
            "file",
            "cannot be combined with shared=on and host_numa_node (a shared file's pages cannot be bound)",
        ));
    }
    Ok(Some(PathBuf::from(path)))
}

/// A RAM size must be whole pages, and whole huge pages when it is backed by them.
fn check_size(p: &OptionParser, size: u64, b: &Backing) -> Result<()> {
    if !size.is_multiple_of(PAGE) {
        return Err(p.invalid("size", "must be a multiple of 4 KiB"));
    }
    if let HugePages::Size(h) = b.hugepages {
        if !size.is_multiple_of(h) {
            return Err(p.invalid(
                "size",
                format!("must be a multiple of hugepage_size ({} KiB)", h >> 10),
            ));
        }
    }
    Ok(())
}

impl MemoryConfig {
    /// `size` bytes, privately backed, no zones (what tests and the fuzzers build).
    pub fn new(size: u64) -> Self {
        MemoryConfig {
            size,
            backing: Backing::default(),
            zones: Vec::new(),
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        let p = OptionParser::parse(
            "memory",
            &[
                "size",
                "mergeable",
                "shared",
                "hugepages",
                "hugepage_size",
                "prefault",
                "thp",
            ],
            s,
        )?;
        let size = p.size("size")?.ok_or(ConfigError::MissingKey {
            option: "memory",
            key: "size",
        })?;
        let thp = p.on_off("thp")?.unwrap_or(true);
        let mut backing = backing(&p, thp)?;
        backing.mergeable = p.on_off("mergeable")?.unwrap_or(false);
        // 0 means "the zones are the RAM"; whether there are zones is checked with them.
        if size != 0 && !(MIN_MEMORY..=MAX_MEMORY).contains(&size) {
            return Err(p.invalid(
                "size",
                format!(
                    "must be between {} MiB and {} TiB (or 0 with --memory-zone)",
                    MIN_MEMORY >> 20,
                    MAX_MEMORY >> 40
                ),
            ));
        }
        check_size(&p, size, &backing)?;
        Ok(MemoryConfig {
            size,
            backing,
            zones: Vec::new(),
        })
    }

    /// Adds the `--memory-zone`s: `size` must then be 0, ids unique, the total in range.
    pub fn with_zones(mut self, zones: Vec<MemoryZoneConfig>) -> Result<Self> {
        let inconsistent = |reason: String| ConfigError::Inconsistent {
            option: "memory-zone",
            reason,
        };
        if zones.is_empty() {
            if self.size == 0 {
                return Err(ConfigError::Inconsistent {
                    option: "memory",
                    reason: "size=0 needs at least one --memory-zone".into(),
                });
            }
            return Ok(self);
        }
        if self.size != 0 {
            return Err(inconsistent(
                "--memory-zone needs --memory size=0 (the zones are the guest's RAM)".into(),
            ));
        }
        for (i, z) in zones.iter().enumerate() {
            if zones[..i].iter().any(|o| o.id == z.id) {
                return Err(inconsistent(format!("id={} is given twice", z.id)));
            }
        }
        zones
            .iter()
            .try_fold(0u64, |t, z| t.checked_add(z.size))
            .filter(|t| (MIN_MEMORY..=MAX_MEMORY).contains(t))
            .ok_or_else(|| {
                inconsistent(format!(
                    "the zones add up to less than {} MiB or more than {} TiB",
                    MIN_MEMORY >> 20,
                    MAX_MEMORY >> 40
                ))
            })?;
        // The zones inherit `--memory thp=` and `mergeable=`: Cloud Hypervisor has no per-zone
        // setting.
        let (thp, mergeable) = (self.backing.thp, self.backing.mergeable);
        self.zones = zones
            .into_iter()
            .map(|mut z| {
                z.backing.thp = thp;
                z.backing.mergeable = mergeable;
                z
            })
            .collect();
        Ok(self)
    }

    /// The guest's RAM in zones, in guest-address order.
    pub fn layout_zones(&self) -> Vec<Zone> {
        if self.zones.is_empty() {
            return vec![Zone {
                id: None,
                size: self.size,
                backing: self.backing.clone(),
            }];
        }
        self.zones
            .iter()
            .map(|z| Zone {
                id: Some(z.id.clone()),
                size: z.size,
                backing: z.backing.clone(),
            })
            .collect()
    }

    /// All guest RAM in bytes.
    pub fn total(&self) -> u64 {
        self.layout_zones().iter().map(|z| z.size).sum()
    }

    /// Whether every byte of guest RAM is shared (what a vfio-user backend needs).
    pub fn all_shared(&self) -> bool {
        self.layout_zones().iter().all(|z| z.backing.shared)
    }
}

impl MemoryZoneConfig {
    pub fn parse(s: &str) -> Result<Self> {
        let p = OptionParser::parse(
            "memory-zone",
            &[
                "id",
                "size",
                "file",
                "shared",
                "hugepages",
                "hugepage_size",
                "host_numa_node",
                "prefault",
            ],
            s,
        )?;
        let id = p.with("id", parse_id)?.ok_or(ConfigError::MissingKey {
            option: "memory-zone",
            key: "id",
        })?;
        let size = p.size("size")?.ok_or(ConfigError::MissingKey {
            option: "memory-zone",
            key: "size",
        })?;
        let mut backing = backing(&p, true)?;
        backing.file = zone_file(&p, &backing)?;
        if size == 0 || size > MAX_MEMORY {
            return Err(p.invalid(
                "size",
                format!("must be more than 0 and at most {} TiB", MAX_MEMORY >> 40),
            ));
        }
        check_size(&p, size, &backing)?;
        Ok(MemoryZoneConfig { id, size, backing })
    }
}

/// `--memory` with its zones as Cloud Hypervisor's `vm.info` shows them.
pub fn info_json(m: &MemoryConfig) -> serde_json::Value {
    fn huge(b: &Backing) -> (bool, Option<u64>) {
        match b.hugepages {
            HugePages::Off => (false, None),
            HugePages::HostDefault => (true, None),
            HugePages::Size(s) => (true, Some(s)),
        }
    }
    let (hugepages, hugepage_size) = huge(&m.backing);
    let zones: Vec<serde_json::Value> = m
        .zones
        .iter()
        .map(|z| {
            let (hugepages, hugepage_size) = huge(&z.backing);
            serde_json::json!({
                "id": z.id,
                "size": z.size,
                "shared": z.backing.shared,
                "hugepages": hugepages,
                "hugepage_size": hugepage_size,
                "file": z.backing.file,
                "host_numa_node": z.backing.host_numa_node,
                "prefault": z.backing.prefault,
            })
        })
        .collect();
    serde_json::json!({
        "size": m.size,
        "mergeable": m.backing.mergeable,
        "shared": m.backing.shared,
        "hugepages": hugepages,
        "hugepage_size": hugepage_size,
        "prefault": m.backing.prefault,
        "thp": m.backing.thp,
        "zones": if zones.is_empty() { serde_json::Value::Null } else { zones.into() },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(s: &str) -> MemoryZoneConfig {
        MemoryZoneConfig::parse(s).unwrap()
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(MemoryConfig::parse("size=512M").unwrap().size, 512 << 20);
        assert!(MemoryConfig::parse("size=12Q").is_err());
        assert!(MemoryConfig::parse("size=1M").is_err());
        // Beyond the old 256 GiB cap: the layout checks it against the guest's address width.
        assert_eq!(MemoryConfig::parse("size=1T").unwrap().size, 1 << 40);
        assert_eq!(MemoryConfig::parse("size=480G").unwrap().total(), 480 << 30);
        assert!(MemoryConfig::parse("size=128T").is_err());
        assert!(MemoryConfig::parse("size=33554433").is_err());
        assert!(MemoryConfig::parse("shared=on").is_err());
    }

    #[test]
    fn memory_shared() {
        let shared = |s: &str| MemoryConfig::parse(s).unwrap().backing.shared;
        assert!(!shared("size=1G"));
        assert!(!shared("size=1G,shared=off"));
        assert!(shared("size=1G,shared=on"));
        assert_eq!(
            MemoryConfig::parse("size=1G,shared=yes")
                .unwrap_err()
                .to_string(),
            "--memory: shared=yes: use on or off"
        );
        assert!(MemoryConfig::parse("size=1G,shared=").is_err());
        assert!(MemoryConfig::parse("size=1G,shared=on,shared=off").is_err());
    }

    #[test]
    fn memory_backing_options() {
        let m = MemoryConfig::parse("size=2G,hugepages=on,hugepage_size=2M,prefault=on,thp=off")
            .unwrap();
        assert_eq!(
            m.backing,
            Backing {
                shared: false,
                hugepages: HugePages::Size(2 << 20),
                prefault: true,
                thp: false,
                host_numa_node: None,
                file: None,
                mergeable: false,
            }
        );
        let d = MemoryConfig::parse("size=1G,hugepages=on").unwrap();
        assert_eq!(d.backing.hugepages, HugePages::HostDefault);
        assert!(d.backing.thp, "thp defaults to on, as in Cloud Hypervisor");
        let err = |s: &str| MemoryConfig::parse(s).unwrap_err().to_string();
        assert_eq!(
            err("size=1G,hugepage_size=2M"),
            "--memory: hugepage_size=2M: needs hugepages=on"
        );
        assert_eq!(
            err("size=1G,hugepages=on,hugepage_size=4M"),
            "--memory: hugepage_size=4M: an x86-64 host has huge pages of 2M or 1G"
        );
        assert_eq!(
            err("size=1025M,hugepages=on,hugepage_size=1G"),
            "--memory: size=1025M: must be a multiple of hugepage_size (1048576 KiB)"
        );
        assert!(MemoryConfig::parse("size=1G,thp=maybe").is_err());
        assert!(MemoryConfig::parse("size=1G,host_numa_node=0").is_err());
    }

    #[test]
    fn zones_replace_size() {
        let zones = vec![
            zone("id=mem0,size=1G,host_numa_node=0"),
            zone("id=mem1,size=512M,shared=on,hugepages=on,prefault=on"),
        ];
        let m = MemoryConfig::parse("size=0,thp=off")
            .unwrap()
            .with_zones(zones)
            .unwrap();
        assert_eq!(m.total(), (1 << 30) + (512 << 20));
        let z = m.layout_zones();
        assert_eq!(z[0].id.as_deref(), Some("mem0"));
        assert_eq!(z[0].backing.host_numa_node, Some(0));
        assert!(!z[0].backing.thp, "zones take --memory thp=");
        assert!(z[1].backing.shared && z[1].backing.prefault);
        assert_eq!(z[1].backing.hugepages, HugePages::HostDefault);
        assert!(!m.all_shared());
        let one = MemoryConfig::parse("size=1G").unwrap();
        assert_eq!(one.layout_zones().len(), 1);
        assert_eq!(one.layout_zones()[0].id, None);
    }

    #[test]
    fn zone_rules() {
        let with = |size: &str, zones: &[&str]| {
            MemoryConfig::parse(size)
                .unwrap()
                .with_zones(zones.iter().map(|z| zone(z)).collect())
                .map_err(|e| e.to_string())
        };
        assert_eq!(
            with("size=1G", &["id=a,size=1G"]).unwrap_err(),
            "--memory-zone: --memory-zone needs --memory size=0 (the zones are the guest's RAM)"
        );
        assert_eq!(
            with("size=0", &[]).unwrap_err(),
            "--memory: size=0 needs at least one --memory-zone"
        );
        assert_eq!(
            with("size=0", &["id=a,size=1G", "id=a,size=1G"]).unwrap_err(),
            "--memory-zone: id=a is given twice"
        );
        assert!(with("size=0", &["id=a,size=4M"]).is_err(), "below 32 MiB");
        assert!(with("size=0", &["id=a,size=64T", "id=b,size=64T"]).is_err());
        for bad in [
            "size=1G",
            "id=a",
            "id=a,size=0",
            "id=a,size=1G,host_numa_node=x",
            "id=a,size=1G,thp=on",
            "id=,size=1G",
        ] {
            assert!(MemoryZoneConfig::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mergeable_covers_every_zone() {
        assert!(!MemoryConfig::parse("size=1G").unwrap().backing.mergeable);
        assert!(
            MemoryConfig::parse("size=1G,mergeable=on")
                .unwrap()
                .backing
                .mergeable
        );
        assert_eq!(
            MemoryConfig::parse("size=1G,mergeable=yes")
                .unwrap_err()
                .to_string(),
            "--memory: mergeable=yes: use on or off"
        );
        let m = MemoryConfig::parse("size=0,mergeable=on")
            .unwrap()
            .with_zones(vec![zone("id=a,size=64M"), zone("id=b,size=64M,shared=on")])
            .unwrap();
        assert!(m.layout_zones().iter().all(|z| z.backing.mergeable));
        assert_eq!(info_json(&m)["mergeable"], true);
        assert!(
            MemoryZoneConfig::parse("id=a,size=1G,mergeable=on").is_err(),
            "a --memory key only, as in Cloud Hypervisor"
        );
    }

    #[test]
    fn zone_file_rules() {
        let z = zone("id=a,size=256M,file=/tmp/zone0,shared=on");
        assert_eq!(z.backing.file, Some(PathBuf::from("/tmp/zone0")));
        assert!(z.backing.shared);
        assert_eq!(zone("id=a,size=256M").backing.file, None);
        // A private file zone and a host node are allowed: the private copies can be bound.
        zone("id=a,size=256M,file=/tmp/z,host_numa_node=0");
        let err = |s: &str| MemoryZoneConfig::parse(s).unwrap_err().to_string();
        assert_eq!(
            err("id=a,size=1G,file="),
            "--memory-zone: file=: empty path"
        );
        assert_eq!(
            err("id=a,size=1G,file=/x,hugepages=on"),
            "--memory-zone: file=/x: cannot be combined with hugepages=on (put the file on a hugetlbfs mount instead)"
        );
        assert_eq!(
            err("id=a,size=1G,file=/x,shared=on,host_numa_node=0"),
            "--memory-zone: file=/x: cannot be combined with shared=on and host_numa_node (a shared file's pages cannot be bound)"
        );
        let m = MemoryConfig::parse("size=0")
            .unwrap()
            .with_zones(vec![z])
            .unwrap();
        assert_eq!(info_json(&m)["zones"][0]["file"], "/tmp/zone0");
        // `--memory file=` stays Cloud Hypervisor's older key that ghvmm does not take.
        assert!(MemoryConfig::parse("size=1G,file=/x")
            .unwrap_err()
            .to_string()
            .contains("not supported by ghvmm"));
    }
}
