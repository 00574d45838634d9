//! Pure formatting for the demo (`ghvmm.mode=demo`, demo.rs): a PCI function as `lspci -v`
//! prints it, sizes as lspci and people write them, and the NUMA distance table as
//! `numactl --hardware` lays it out. Inputs are sysfs text and bytes, so the tests need no
//! guest.

/// IORESOURCE_* bits of a sysfs `resource` line's flags (include/linux/ioport.h).
const IORESOURCE_IO: u64 = 0x100;
const IORESOURCE_MEM: u64 = 0x200;
const IORESOURCE_PREFETCH: u64 = 0x2000;
const IORESOURCE_MEM_64: u64 = 0x0010_0000;

/// The six BAR lines of a sysfs `resource` file; the ROM and bridge windows follow them.
const BAR_LINES: usize = 6;

/// Config-space offsets of the standard header (PCI Local Bus spec, type 0).
const CFG_VENDOR: usize = 0x00;
const CFG_DEVICE: usize = 0x02;
const CFG_REVISION: usize = 0x08;
const CFG_CLASS: usize = 0x0a;
const CFG_SUBSYS_VENDOR: usize = 0x2c;
const CFG_SUBSYS_ID: usize = 0x2e;
/// The header is readable up to here; sysfs gives unprivileged readers only 64 bytes.
const CFG_MIN_LEN: usize = 0x30;

/// One assigned BAR from a `resource` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bar {
    pub index: usize,
    pub start: u64,
    pub size: u64,
    pub flags: u64,
}

/// The assigned BARs in a sysfs `resource` file ("0xSTART 0xEND 0xFLAGS" per line); a line of
/// zeros (unused, or the upper half of a 64-bit BAR) is left out, and so is a garbled one.
pub fn parse_resource(text: &str) -> Vec<Bar> {
    text.lines()
        .take(BAR_LINES)
        .enumerate()
        .filter_map(|(index, line)| {
            let v: Vec<u64> = line
                .split_whitespace()
                .map(|w| u64::from_str_radix(w.trim_start_matches("0x"), 16))
                .collect::<Result<_, _>>()
                .ok()?;
            match v.as_slice() {
                [start, end, flags] if *end > *start => Some(Bar {
                    index,
                    start: *start,
                    size: end - start + 1,
                    flags: *flags,
                }),
                _ => None,
            }
        })
        .collect()
}

/// lspci's `[size=...]`: the largest unit among K, M, G, T that divides the size exactly.
pub fn lspci_size(mut bytes: u64) -> String {
    const UNITS: [&str; 5] = ["", "K", "M", "G", "T"];
    let mut unit = 0;
    while unit < UNITS.len() - 1 && bytes != 0 && bytes.is_multiple_of(1024) {
        bytes /= 1024;
        unit += 1;
    }
    format!("{bytes}{}", UNITS[unit])
}

/// A size as the rig names lengths: each binary unit that is present, largest first
/// (`40M12K`, `64M`, `1G4K`, `100`).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "T"),
        (1 << 30, "G"),
        (1 << 20, "M"),
        (1 << 10, "K"),
    ];
    if bytes == 0 {
        return "0".into();
    }
    let mut rest = bytes;
    let mut out = String::new();
    for (unit, name) in UNITS {
        if rest >= unit {
            out += &format!("{}{name}", rest / unit);
            rest %= unit;
        }
    }
    if rest > 0 {
        out += &rest.to_string();
    }
    out
}

/// lspci's line for one BAR.
pub fn bar_line(bar: &Bar) -> String {
    if bar.flags & IORESOURCE_IO != 0 {
        return format!(
            "I/O ports at {:04x} [size={}]",
            bar.start,
            lspci_size(bar.size)
        );
    }
    let width = if bar.flags & IORESOURCE_MEM_64 != 0 {
        "64-bit"
    } else {
        "32-bit"
    };
    let prefetch = if bar.flags & IORESOURCE_PREFETCH != 0 {
        "prefetchable"
    } else {
        "non-prefetchable"
    };
    let kind = if bar.flags & IORESOURCE_MEM != 0 {
        "Memory"
    } else {
        "Region"
    };
    format!(
        "{kind} at {:08x} ({width}, {prefetch}) [size={}]",
        bar.start,
        lspci_size(bar.size)
    )
}

/// The class names lspci would print for the functions a demo guest has.
fn class_name(class: u16) -> &'static str {
    match class {
        0x0200 => "Ethernet controller",
        0x0300 => "VGA compatible controller",
        0x0302 => "3D controller",
        0x0500 => "RAM memory",
        0x0600 => "Host bridge",
        _ => "Class",
    }
}

fn le16(config: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([config[at], config[at + 1]])
}

/// The lines `lspci -v -nn` prints for a function, from its address, its config space (the
/// first 48 bytes at least), its `resource` file and its `numa_node` (-1: none). Without the
/// PCI ID database the names are the numbers, as lspci prints them then.
pub fn lspci_lines(
    bdf: &str,
    config: &[u8],
    resource: &str,
    numa_node: &str,
) -> Result<Vec<String>, String> {
    if config.len() < CFG_MIN_LEN {
        return Err(format!(
            "{bdf}: {} bytes of config space, want {CFG_MIN_LEN}",
            config.len()
        ));
    }
    let class = le16(config, CFG_CLASS);
    let mut lines = vec![format!(
        "{bdf} {} [{class:04x}]: Device [{:04x}:{:04x}] (rev {:02x})",
        class_name(class),
        le16(config, CFG_VENDOR),
        le16(config, CFG_DEVICE),
        config[CFG_REVISION]
    )];
    lines.push(format!(
        "        Subsystem: Device [{:04x}:{:04x}]",
        le16(config, CFG_SUBSYS_VENDOR),
        le16(config, CFG_SUBSYS_ID)
    ));
    let node = numa_node.trim();
    if !node.is_empty() && node != "-1" {
        lines.push(format!("        NUMA node: {node}"));
    }
    for bar in parse_resource(resource) {
        lines.push(format!("        {}", bar_line(&bar)));
    }
    Ok(lines)
}

/// The numbers in a sysfs list such as `has_generic_initiator` ("1-8,10"); None when garbled
/// or when a range runs backwards.
pub fn expand_list(list: &str) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
        if b < a {
            return None;
        }
        out.extend(a..=b);
    }
    Some(out)
}

/// A list of numbers as sysfs writes one: ascending runs joined (`1-8,10`).
pub fn compress_list(ids: &[u32]) -> String {
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j + 1 < sorted.len() && sorted[j + 1] == sorted[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            sorted[i].to_string()
        } else {
            format!("{}-{}", sorted[i], sorted[j])
        });
        i = j + 1;
    }
    parts.join(",")
}

/// SRAT: the structures start after the 36-byte header and 12 reserved bytes (ACPI 6.5,
/// 5.2.16); each starts with its type and length bytes.
const SRAT_FIRST: usize = 48;
/// Generic Initiator Affinity (type 5, 32 bytes): proximity domain at 4, the device handle at
/// 8 (PCI: segment u16, bus, devfn), flags at 24 (bit 0: enabled).
const SRAT_GI_TYPE: u8 = 5;
const SRAT_GI_LEN: usize = 32;
const SRAT_GI_HANDLE_PCI: u8 = 1;

/// The enabled Generic Initiator entries of an SRAT naming a PCI function: (proximity domain,
/// its address as `SSSS:BB:DD.F`).
pub fn srat_generic_initiators(srat: &[u8]) -> Result<Vec<(u32, String)>, String> {
    let u32_at = |b: &[u8], at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    if srat.len() < SRAT_FIRST || &srat[..4] != b"SRAT" {
        return Err(format!("not an SRAT ({} bytes)", srat.len()));
    }
    let end = (u32_at(srat, 4) as usize).min(srat.len());
    let mut out = Vec::new();
    let mut at = SRAT_FIRST;
    while at + 2 <= end {
        let (kind, len) = (srat[at], usize::from(srat[at + 1]));
        if len < 2 || at + len > end {
            return Err(format!(
                "SRAT structure at {at} of length {len} runs past {end}"
            ));
        }
        let s = &srat[at..at + len];
        if kind == SRAT_GI_TYPE
            && len == SRAT_GI_LEN
            && s[3] == SRAT_GI_HANDLE_PCI
            && s[24] & 1 == 1
        {
            let segment = u16::from_le_bytes([s[8], s[9]]);
            let (bus, devfn) = (s[10], s[11]);
            out.push((
                u32_at(s, 4),
                format!("{segment:04x}:{bus:02x}:{:02x}.{}", devfn >> 3, devfn & 7),
            ));
        }
        at += len;
    }
    Ok(out)
}

/// The distance table as `numactl --hardware` prints it: a header of node ids, then one row
/// per node. `rows` holds each node's id and its `distance` file; a row whose length differs
/// from the number of nodes is an error (sysfs gives one entry per online node).
pub fn distance_table(rows: &[(u32, String)]) -> Result<Vec<String>, String> {
    let ids: Vec<u32> = rows.iter().map(|(id, _)| *id).collect();
    let mut lines = vec![format!(
        "node {}",
        ids.iter()
            .map(|id| format!("{id:>3}"))
            .collect::<Vec<_>>()
            .join(" ")
    )];
    for (id, text) in rows {
        let d: Vec<u32> = text
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("node{id}/distance {text:?}: {e}"))?;
        if d.len() != ids.len() {
            return Err(format!(
                "node{id}/distance has {} entries for {} nodes",
                d.len(),
                ids.len()
            ));
        }
        lines.push(format!(
            "{:>3}: {}",
            id,
            d.iter()
                .map(|v| format!("{v:>3}"))
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ivshmem function in GH slot 0 as the guest's sysfs shows it: BAR0 of 256 bytes
    /// (32-bit), BAR2 of 64 MiB (64-bit prefetchable, two resource lines).
    const RESOURCE: &str = "0x00000000e0000000 0x00000000e00000ff 0x0000000000040200\n\
        0x0000000000000000 0x0000000000000000 0x0000000000000000\n\
        0x0000004000000000 0x0000004003ffffff 0x000000000014220c\n\
        0x0000000000000000 0x0000000000000000 0x0000000000000000\n\
        0x0000000000000000 0x0000000000000000 0x0000000000000000\n\
        0x0000000000000000 0x0000000000000000 0x0000000000000000\n\
        0x00000000e0040000 0x00000000e007ffff 0x0000000000046200\n";

    fn config() -> Vec<u8> {
        let mut c = vec![0u8; 64];
        c[0..4].copy_from_slice(&[0xf4, 0x1a, 0x10, 0x11]);
        c[8] = 0x01;
        c[0x0a..0x0c].copy_from_slice(&[0x00, 0x05]);
        c[0x2c..0x30].copy_from_slice(&[0xf4, 0x1a, 0x00, 0x11]);
        c
    }

    #[test]
    fn resource_lines_become_bars() {
        let bars = parse_resource(RESOURCE);
        assert_eq!(bars.len(), 2, "the ROM line is not a BAR: {bars:?}");
        assert_eq!((bars[0].index, bars[0].size), (0, 256));
        assert_eq!(
            (bars[1].index, bars[1].start, bars[1].size),
            (2, 0x40_0000_0000, 64 << 20)
        );
        assert!(parse_resource("0x10 garbage 0x200\n").is_empty());
        assert!(parse_resource("").is_empty());
    }

    #[test]
    fn sizes_read_like_lspci_and_like_the_rig() {
        assert_eq!(lspci_size(256), "256");
        assert_eq!(lspci_size(64 << 20), "64M");
        assert_eq!(lspci_size(128 << 30), "128G");
        assert_eq!(lspci_size((40 << 20) + (12 << 10)), "40972K");
        assert_eq!(lspci_size(0), "0");
        assert_eq!(human_size((40 << 20) + (12 << 10)), "40M12K");
        assert_eq!(human_size(64 << 20), "64M");
        assert_eq!(human_size((1 << 30) + 4096), "1G4K");
        assert_eq!(human_size(100), "100");
        assert_eq!(human_size(0), "0");
    }

    #[test]
    fn the_function_reads_like_lspci_v() {
        let lines = lspci_lines("0001:00:00.0", &config(), RESOURCE, "1\n").unwrap();
        assert_eq!(
            lines,
            [
                "0001:00:00.0 RAM memory [0500]: Device [1af4:1110] (rev 01)",
                "        Subsystem: Device [1af4:1100]",
                "        NUMA node: 1",
                "        Memory at e0000000 (32-bit, non-prefetchable) [size=256]",
                "        Memory at 4000000000 (64-bit, prefetchable) [size=64M]",
            ]
        );
        let no_node = lspci_lines("0000:00:02.0", &config(), "", "-1").unwrap();
        assert_eq!(no_node.len(), 2, "{no_node:?}");
        let err = lspci_lines("0000:00:02.0", &config()[..16], "", "-1").unwrap_err();
        assert_eq!(err, "0000:00:02.0: 16 bytes of config space, want 48");
        let io = Bar {
            index: 0,
            start: 0xc000,
            size: 32,
            flags: 0x40101,
        };
        assert_eq!(bar_line(&io), "I/O ports at c000 [size=32]");
    }

    /// An SRAT with one CPU entry and two Generic Initiator entries, slot 0 and slot 1, the
    /// second disabled.
    fn srat() -> Vec<u8> {
        let mut t = b"SRAT".to_vec();
        t.extend([0u8; 44]);
        t.extend([0, 16, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        for (domain, segment, flags) in [(1u8, 1u8, 1u8), (9, 2, 0)] {
            let mut gi = vec![0u8; 32];
            gi[..2].copy_from_slice(&[5, 32]);
            gi[3] = 1;
            gi[4] = domain;
            gi[8] = segment;
            gi[11] = 0x08 | 1; // device 1, function 1: not the 00.0 a slot has
            gi[24] = flags;
            t.extend(gi);
        }
        let len = t.len() as u32;
        t[4..8].copy_from_slice(&len.to_le_bytes());
        t
    }

    #[test]
    fn srat_generic_initiators_name_their_functions() {
        assert_eq!(
            srat_generic_initiators(&srat()).unwrap(),
            [(1, "0001:00:01.1".to_string())]
        );
        let mut cut = srat();
        cut[49] = 200;
        assert!(srat_generic_initiators(&cut)
            .unwrap_err()
            .contains("runs past"));
        assert!(srat_generic_initiators(b"SLIT").is_err());
        assert_eq!(compress_list(&[3, 1, 2, 9, 10, 5]), "1-3,5,9-10");
        assert_eq!(compress_list(&[]), "");
    }

    #[test]
    fn lists_expand() {
        assert_eq!(expand_list("1-3,7\n"), Some(vec![1, 2, 3, 7]));
        assert_eq!(expand_list(""), Some(vec![]));
        assert_eq!(expand_list("3-1"), None);
        assert_eq!(expand_list("x"), None);
    }

    #[test]
    fn the_distance_table_lines_up() {
        let rows = [
            (0, "10 20 20\n".to_string()),
            (1, "20 10 20".to_string()),
            (2, "20 20 10".to_string()),
        ];
        assert_eq!(
            distance_table(&rows).unwrap(),
            [
                "node   0   1   2",
                "  0:  10  20  20",
                "  1:  20  10  20",
                "  2:  20  20  10"
            ]
        );
        let short = [(0, "10 20".to_string()), (1, "20".to_string())];
        assert_eq!(
            distance_table(&short).unwrap_err(),
            "node1/distance has 1 entries for 2 nodes"
        );
        assert!(distance_table(&[(0, "ten".to_string())]).is_err());
    }
}
