//! Expectations passed on the guest kernel command line as `ghvmm.<key>=<value>`.

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Expectations {
    /// `check` (default) or `demo`.
    pub mode: String,
    pub cpus: Option<u32>,
    pub mem: Option<u64>,
    /// `poweroff` (default) or `reboot`.
    pub action: String,
    /// A passed-through ivshmem device is expected (`ghvmm.vfio=ivshmem`).
    pub vfio: Option<String>,
    /// The GPU-like device's contract and real length (`ghvmm.gh_mode=`, `ghvmm.gh_len=`).
    pub gh_mode: String,
    pub gh_len: Option<u64>,
    /// How many GPU-like devices the guest must see (`ghvmm.gh_devices=`, default 1).
    pub gh_devices: Option<usize>,
    /// GH slots the VMM was given (`ghvmm.gh_slots=`; the demo counts their nodes).
    pub gh_slots: Option<u32>,
    /// Fault injection (`ghvmm.vfio=fault`): the device's mmappable length
    /// (`ghvmm.gh_map=`) and after how many region accesses it fails (`ghvmm.fail_after=`).
    pub gh_map: Option<u64>,
    pub fail_after: Option<u64>,
    /// The VMM the rig says runs us: `ghvmm` (default) or a peer (`qemu`), under which the
    /// checks of ghvmm's own platform (docs/platform.md) do not apply.
    pub platform: String,
    /// Report NUMA nodes and PCI functions as facts (`ghvmm.numa=report`).
    pub numa: bool,
    /// Hot-plug cycles to follow (`ghvmm.cycles=N`) and where the device must arrive
    /// (`ghvmm.bdf=`).
    pub cycles: Option<u32>,
    pub bdf: String,
    /// Whether the guest dumps its ACPI tables at the end (`ghvmm.acpi=off` turns it off).
    pub acpi_dump: bool,
    /// Stop at gates around the GPU-like device's copy and single padding read so that L2
    /// can read access counters there (`ghvmm.gate=1`, tests/checker/src/gate.rs).
    pub gate: bool,
    /// Writes of the eject register in `ghvmm.vfio=eject-flood` (`ghvmm.flood=N`).
    pub flood: Option<u64>,
    /// Seconds of register hammering in `ghvmm.vfio=soak` (`ghvmm.soak_s=S`).
    pub soak_s: Option<u64>,
}

impl Expectations {
    pub fn parse(cmdline: &str) -> Self {
        let mut e = Expectations {
            mode: "check".into(),
            action: "poweroff".into(),
            platform: "ghvmm".into(),
            acpi_dump: true,
            ..Default::default()
        };
        for word in cmdline.split_whitespace() {
            let Some((key, value)) = word.strip_prefix("ghvmm.").and_then(|w| w.split_once('='))
            else {
                continue;
            };
            match key {
                "mode" => e.mode = value.to_string(),
                "cpus" => e.cpus = value.parse().ok(),
                "mem" => e.mem = parse_size(value),
                "action" => e.action = value.to_string(),
                "vfio" => e.vfio = Some(value.to_string()),
                "gh_mode" => e.gh_mode = value.to_string(),
                "gh_len" => e.gh_len = value.parse().ok(),
                "gh_devices" => e.gh_devices = value.parse().ok(),
                "gh_slots" => e.gh_slots = value.parse().ok(),
                "gh_map" => e.gh_map = value.parse().ok(),
                "fail_after" => e.fail_after = value.parse().ok(),
                "platform" => e.platform = value.to_string(),
                "numa" => e.numa = value == "report",
                "cycles" => e.cycles = value.parse().ok(),
                "bdf" => e.bdf = value.to_string(),
                "acpi" => e.acpi_dump = value != "off",
                "gate" => e.gate = value == "1",
                "flood" => e.flood = value.parse().ok(),
                "soak_s" => e.soak_s = value.parse().ok(),
                _ => {}
            }
        }
        e
    }
}

pub fn parse_size(s: &str) -> Option<u64> {
    let (num, shift) = match s.as_bytes().last()? {
        b'K' => (&s[..s.len() - 1], 10),
        b'M' => (&s[..s.len() - 1], 20),
        b'G' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    num.parse::<u64>().ok()?.checked_mul(1 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_expectations() {
        let e = Expectations::parse(
            "console=ttyS0 ghvmm.cpus=4 ghvmm.mem=1G ghvmm.action=reboot quiet",
        );
        assert_eq!(e.cpus, Some(4));
        assert_eq!(e.mem, Some(1 << 30));
        assert_eq!(e.action, "reboot");
        assert_eq!(e.mode, "check");
        assert_eq!(e.platform, "ghvmm");
        assert_eq!(Expectations::parse("ghvmm.platform=qemu").platform, "qemu");
        let d = Expectations::parse("ghvmm.mode=demo ghvmm.cpus=x ghvmm.bogus");
        assert_eq!((d.mode.as_str(), d.cpus), ("demo", None));
        assert_eq!(Expectations::parse("ghvmm.gh_slots=2").gh_slots, Some(2));
        assert_eq!(e.gh_slots, None);
        assert!(
            e.acpi_dump,
            "the tables are dumped unless the rig says not to"
        );
        assert!(!Expectations::parse("ghvmm.acpi=off").acpi_dump);
        assert!(!e.gate && Expectations::parse("ghvmm.gate=1").gate);
        let s = Expectations::parse("ghvmm.flood=1000000 ghvmm.soak_s=180");
        assert_eq!((s.flood, s.soak_s), (Some(1_000_000), Some(180)));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size(""), None);
    }
}
