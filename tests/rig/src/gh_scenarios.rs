//! The GH machine profile scenarios (`gh-*`): NUMA nodes through ACPI as the guest sees them.
//! The guest reports what sysfs says (`ghvmm.numa=report`, tests/checker/src/numa.rs); the
//! host compares it with what each scenario configured, and parses the guest's SRAT itself to
//! check every Generic Initiator entry against the GPU's address as the guest saw it.

use std::path::Path;

use crate::l3::L3;
use crate::protocol::{Outcome, Transcript};
use crate::scenario::{Scenario, BOOT_VMM, L3_CHECKS};
use crate::vfio_scenarios::{
    bind_ivshmem, bind_variant, gh_file_checks, GH_DEVICE_CHECKS, GH_LENGTHS,
};

/// One node as the guest must see it.
pub struct NodeExpect {
    /// The node's `cpulist` ("" for none).
    pub cpus: &'static str,
    pub memory: bool,
}

/// The topology a scenario configures.
pub struct NumaExpect {
    pub nodes: Vec<NodeExpect>,
    /// SLIT rows, node by node.
    pub distances: Vec<Vec<u8>>,
    /// `has_generic_initiator` as the guest prints it ("" when there is none).
    pub generic_initiator: &'static str,
    /// Generic Initiator domains per GH slot: slot k's GPU is expected at 00:00.0 of segment
    /// k+1, and its entries must name the device there.
    pub slots: Vec<Vec<u32>>,
    /// Generic Initiator domains of the GPU-like device wherever the guest found it
    /// (`--numa device_id=`): their entries must name that address.
    pub devices: Vec<u32>,
}

impl NumaExpect {
    /// `--gh slots=S` alone (or with devices in its slots): node 0 with every vCPU and all
    /// RAM, then `nodes` Generic Initiator nodes per slot, `distance` apart from everything.
    pub fn gh(cpus: &'static str, slots: u32, nodes: u32, distance: u8) -> Self {
        let n = (1 + slots * nodes) as usize;
        let mut list = vec![NodeExpect { cpus, memory: true }];
        list.extend((1..n).map(|_| NodeExpect {
            cpus: "",
            memory: false,
        }));
        let distances = (0..n)
            .map(|i| (0..n).map(|j| if i == j { 10 } else { distance }).collect())
            .collect();
        // Linux prints node lists as ranges: "1-8", or "1" for a single node.
        let last = slots * nodes;
        let generic_initiator: &'static str = Box::leak(
            if last == 1 {
                "1".to_string()
            } else {
                format!("1-{last}")
            }
            .into_boxed_str(),
        );
        NumaExpect {
            nodes: list,
            distances,
            generic_initiator,
            slots: (0..slots)
                .map(|k| (1 + k * nodes..1 + (k + 1) * nodes).collect())
                .collect(),
            devices: Vec::new(),
        }
    }
}

/// A Generic Initiator Affinity structure as read from an SRAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GiEntry {
    pub domain: u32,
    pub handle_type: u8,
    pub segment: u16,
    pub bus: u8,
    pub devfn: u8,
    pub enabled: bool,
}

/// A Memory Affinity structure as read from an SRAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemEntry {
    pub domain: u32,
    pub base: u64,
    pub len: u64,
    pub enabled: bool,
}

/// SRAT structure types (ACPI 6.5, 5.2.16) and their lengths.
const SRAT_MEMORY: (u8, usize) = (1, 40);
const SRAT_GENERIC_INITIATOR: (u8, usize) = (5, 32);

/// Every structure of an SRAT as (type, bytes), or why the table is malformed.
/// Independent of ghvmm's own builder on purpose: this is the test's reading of the spec.
fn srat_structures(srat: &[u8]) -> Result<Vec<(u8, &[u8])>, String> {
    const HEADER: usize = 36 + 12; // SDT header, then reserved u32 + u64
    if srat.get(0..4) != Some(b"SRAT") {
        return Err("not an SRAT".into());
    }
    let len = srat
        .get(4..8)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or("short header")?;
    if len != srat.len() || len < HEADER {
        return Err(format!("length {len} but {} bytes", srat.len()));
    }
    if srat.iter().fold(0u8, |a, b| a.wrapping_add(*b)) != 0 {
        return Err("bad checksum".into());
    }
    let mut out = Vec::new();
    let mut at = HEADER;
    while at < len {
        let (kind, size) = match srat.get(at..at + 2) {
            Some(&[k, s]) => (k, usize::from(s)),
            _ => return Err(format!("truncated structure at {at}")),
        };
        let body = srat
            .get(at..at + size)
            .filter(|_| size >= 2)
            .ok_or_else(|| format!("structure at {at} of length {size} overruns the table"))?;
        for (name, (k, want)) in [
            ("Memory Affinity", SRAT_MEMORY),
            ("Generic Initiator", SRAT_GENERIC_INITIATOR),
        ] {
            if kind == k && size != want {
                return Err(format!("{name} at {at} has length {size}, not {want}"));
            }
        }
        out.push((kind, body));
        at += size;
    }
    Ok(out)
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// Every Generic Initiator entry (type 5) of an SRAT, or why the table is malformed.
pub fn srat_generic_initiators(srat: &[u8]) -> Result<Vec<GiEntry>, String> {
    Ok(srat_structures(srat)?
        .into_iter()
        .filter(|(k, _)| *k == SRAT_GENERIC_INITIATOR.0)
        .map(|(_, body)| GiEntry {
            handle_type: body[3],
            domain: u32_at(body, 4),
            segment: u16::from_le_bytes([body[8], body[9]]),
            bus: body[10],
            devfn: body[11],
            enabled: u32_at(body, 24) & 1 != 0,
        })
        .collect())
}

/// Every Memory Affinity entry (type 1) of an SRAT, or why the table is malformed.
pub fn srat_memory(srat: &[u8]) -> Result<Vec<MemEntry>, String> {
    let u64_at = |b: &[u8], o: usize| u64::from(u32_at(b, o)) | u64::from(u32_at(b, o + 4)) << 32;
    Ok(srat_structures(srat)?
        .into_iter()
        .filter(|(k, _)| *k == SRAT_MEMORY.0)
        .map(|(_, body)| MemEntry {
            domain: u32_at(body, 2),
            base: u64_at(body, 8),
            len: u64_at(body, 16),
            enabled: u32_at(body, 28) & 1 != 0,
        })
        .collect())
}

/// Where the guest's RAM of `bytes` lies (docs/platform.md): from 0 up to 3 GiB, the rest
/// from 4 GiB, as (base, length).
pub fn guest_ram_ranges(bytes: u64) -> Vec<(u64, u64)> {
    const HOLE_START: u64 = 3 << 30;
    const HIGH_START: u64 = 4 << 30;
    let low = bytes.min(HOLE_START);
    let mut v = vec![(0, low)];
    if bytes > low {
        v.push((HIGH_START, bytes - low));
    }
    v
}

/// "512M", "1G" (the rig's L3 memory sizes) in bytes.
pub fn size_bytes(s: &str) -> Option<u64> {
    let (num, shift) = match s.as_bytes().last()? {
        b'K' => (&s[..s.len() - 1], 10),
        b'M' => (&s[..s.len() - 1], 20),
        b'G' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    num.parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// The SRAT's Memory Affinity entries cover exactly the guest's RAM (`ram` bytes, laid out as
/// `guest_ram_ranges`), all of it in the nodes `e` gives memory and none in the others.
pub fn compare_srat_memory(e: &NumaExpect, ram: u64, dir: &Path) -> Outcome {
    let entries = match std::fs::read(dir.join("acpi").join("SRAT.dat")) {
        Ok(b) => match srat_memory(&b) {
            Ok(v) => v,
            Err(err) => return Outcome::Fail(format!("SRAT: {err}")),
        },
        Err(err) => return Outcome::Fail(format!("the guest sent no SRAT: {err}")),
    };
    let mut bad = Vec::new();
    for m in &entries {
        let node = e.nodes.get(m.domain as usize);
        if !m.enabled || !node.is_some_and(|n| n.memory) {
            bad.push(format!(
                "entry {:#x}+{:#x} in domain {} (enabled {}), which should have no memory",
                m.base, m.len, m.domain, m.enabled
            ));
        }
    }
    for (i, n) in e.nodes.iter().enumerate() {
        if n.memory && !entries.iter().any(|m| m.domain as usize == i) {
            bad.push(format!("no memory entry for node {i}"));
        }
    }
    // Adjacent entries join: only the union has to match the layout.
    let mut covered: Vec<(u64, u64)> = entries
        .iter()
        .filter(|m| m.enabled)
        .map(|m| (m.base, m.len))
        .collect();
    covered.sort_unstable();
    let mut union: Vec<(u64, u64)> = Vec::new();
    for (base, len) in covered {
        match union.last_mut() {
            Some((b, l)) if *b + *l > base => {
                bad.push(format!("entries overlap at {base:#x}"));
            }
            Some((b, l)) if *b + *l == base => *l += len,
            _ => union.push((base, len)),
        }
    }
    let want = guest_ram_ranges(ram);
    if union != want {
        let show = |v: &[(u64, u64)]| {
            v.iter()
                .map(|(b, l)| format!("{b:#x}+{l:#x}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        bad.push(format!(
            "memory entries cover {}, the guest's RAM is {}",
            show(&union),
            show(&want)
        ));
    }
    if bad.is_empty() {
        Outcome::Pass
    } else {
        Outcome::Fail(bad.join("; "))
    }
}

/// `compare_srat_memory` for the scenario's L3 RAM size.
fn srat_memory_check(e: &NumaExpect, s: &Scenario, dir: &Path) -> (String, Outcome) {
    let outcome = match s.l3.as_ref().and_then(|l| size_bytes(l.mem)) {
        Some(ram) => compare_srat_memory(e, ram, dir),
        None => Outcome::Fail("the scenario has no L3 RAM size to compare with".into()),
    };
    (SRAT_MEMORY_CHECK.into(), outcome)
}

/// The host check of the SRAT's Memory Affinity entries.
pub const SRAT_MEMORY_CHECK: &str = "srat-memory";

/// "0001:00:00.0" -> (segment, bus, devfn).
pub fn parse_bdf(s: &str) -> Option<(u16, u8, u8)> {
    let (seg, rest) = s.split_once(':')?;
    let (bus, rest) = rest.split_once(':')?;
    let (dev, func) = rest.split_once('.')?;
    let dev = u8::from_str_radix(dev, 16).ok().filter(|d| *d < 32)?;
    let func = u8::from_str_radix(func, 16).ok().filter(|f| *f < 8)?;
    Some((
        u16::from_str_radix(seg, 16).ok()?,
        u8::from_str_radix(bus, 16).ok()?,
        dev << 3 | func,
    ))
}

fn fact_nodes(t: &Transcript) -> Vec<(u32, String)> {
    t.facts
        .iter()
        .filter(|(k, _)| k == "node")
        .filter_map(|(_, v)| {
            let (id, rest) = v.split_once(' ')?;
            Some((id.parse().ok()?, rest.to_string()))
        })
        .collect()
}

fn field<'a>(rest: &'a str, key: &str) -> &'a str {
    rest.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|w| w.strip_prefix('=')))
        .unwrap_or("")
}

/// The guest's nodes, CPUs, memory, distances and Generic Initiator list against `e`.
pub fn compare_nodes(e: &NumaExpect, t: &Transcript) -> Outcome {
    let nodes = fact_nodes(t);
    let mut bad = Vec::new();
    if nodes.len() != e.nodes.len() {
        bad.push(format!(
            "the guest has {} nodes ({:?}), expected {}",
            nodes.len(),
            nodes.iter().map(|(i, _)| i).collect::<Vec<_>>(),
            e.nodes.len()
        ));
    }
    for (i, want) in e.nodes.iter().enumerate() {
        let Some((_, rest)) = nodes.iter().find(|(id, _)| *id as usize == i) else {
            bad.push(format!("node {i} missing"));
            continue;
        };
        if field(rest, "cpus") != want.cpus {
            bad.push(format!(
                "node {i} cpus '{}', expected '{}'",
                field(rest, "cpus"),
                want.cpus
            ));
        }
        let mem: u64 = field(rest, "memkb").parse().unwrap_or(0);
        if (mem > 0) != want.memory {
            bad.push(format!(
                "node {i} has {mem} kB of memory, expected {}",
                if want.memory { "some" } else { "none" }
            ));
        }
        let want_d = e.distances[i]
            .iter()
            .map(u8::to_string)
            .collect::<Vec<_>>()
            .join(",");
        if field(rest, "distance") != want_d {
            bad.push(format!(
                "node {i} distances {}, expected {want_d}",
                field(rest, "distance")
            ));
        }
    }
    let gi = t
        .facts
        .iter()
        .find(|(k, _)| k == "generic_initiator")
        .map(|(_, v)| v.as_str());
    if gi != Some(e.generic_initiator) {
        bad.push(format!(
            "has_generic_initiator {gi:?}, expected {:?}",
            e.generic_initiator
        ));
    }
    if bad.is_empty() {
        Outcome::Pass
    } else {
        Outcome::Fail(bad.join("; "))
    }
}

/// Every SRAT Generic Initiator entry names slot k's GPU address (as the guest saw the GPU,
/// or 000<k+1>:00:00.0 for an empty slot) and only the slot's domains have entries.
pub fn compare_srat(e: &NumaExpect, dir: &Path, t: &Transcript) -> Outcome {
    let srat = match std::fs::read(dir.join("acpi").join("SRAT.dat")) {
        Ok(b) => b,
        Err(err) => return Outcome::Fail(format!("the guest sent no SRAT: {err}")),
    };
    let entries = match srat_generic_initiators(&srat) {
        Ok(v) => v,
        Err(err) => return Outcome::Fail(format!("SRAT: {err}")),
    };
    // The GPU-like device's address as the guest saw it, if it is there.
    let gpu = t
        .facts
        .iter()
        .filter(|(k, _)| k == "pci")
        .find(|(_, v)| v.contains(" 1af4:1110"))
        .and_then(|(_, v)| parse_bdf(v.split_whitespace().next()?));
    let mut bad = Vec::new();
    let expected: usize = e.slots.iter().map(Vec::len).sum::<usize>() + e.devices.len();
    if entries.len() != expected {
        bad.push(format!(
            "{} Generic Initiator entries, expected {expected}",
            entries.len()
        ));
    }
    // (domain, the address its entry must name).
    let mut wanted: Vec<(u32, (u16, u8, u8))> = Vec::new();
    for (k, domains) in e.slots.iter().enumerate() {
        let slot_addr = (k as u16 + 1, 0u8, 0u8);
        let want = match gpu {
            Some(g) if g.0 == slot_addr.0 => g,
            _ => slot_addr,
        };
        wanted.extend(domains.iter().map(|d| (*d, want)));
    }
    if !e.devices.is_empty() {
        match gpu {
            Some(g) => wanted.extend(e.devices.iter().map(|d| (*d, g))),
            None => bad.push("the guest has no 1af4:1110 device to compare with".into()),
        }
    }
    for (d, want) in wanted {
        match entries.iter().find(|g| g.domain == d) {
            None => bad.push(format!("no entry for domain {d}")),
            Some(g) if (g.segment, g.bus, g.devfn) != want || g.handle_type != 1 || !g.enabled => {
                bad.push(format!(
                    "domain {d}: handle type {} {:04x}:{:02x}:{:02x}.{} enabled {}, expected PCI {:04x}:{:02x}:{:02x}.{}",
                    g.handle_type,
                    g.segment,
                    g.bus,
                    g.devfn >> 3,
                    g.devfn & 7,
                    g.enabled,
                    want.0,
                    want.1,
                    want.2 >> 3,
                    want.2 & 7
                ))
            }
            Some(_) => {}
        }
    }
    if bad.is_empty() {
        Outcome::Pass
    } else {
        Outcome::Fail(bad.join("; "))
    }
}

/// The facts say the GPU-like device is at `bdf` in the guest.
fn compare_gpu_address(bdf: &str, t: &Transcript) -> Outcome {
    let seen: Vec<&str> = t
        .facts
        .iter()
        .filter(|(k, v)| k == "pci" && v.contains(" 1af4:1110"))
        .filter_map(|(_, v)| v.split_whitespace().next())
        .collect();
    if seen == [bdf] {
        Outcome::Pass
    } else {
        Outcome::Fail(format!(
            "the GPU-like device is at {seen:?}, expected {bdf}"
        ))
    }
}

/// The slot's GPU device object carries the `_DSD` properties (the disassembled DSDT).
fn compare_dsd(dir: &Path, pxm_start: u32, count: u32) -> Outcome {
    let dsl = match std::fs::read_to_string(dir.join("acpi").join("DSDT.dsl")) {
        Ok(s) => s,
        Err(e) => return Outcome::Fail(format!("no disassembled DSDT: {e}")),
    };
    let compact: String = dsl.split_whitespace().collect();
    let mut bad = Vec::new();
    for (key, value) in [
        ("nvidia,gpu-mem-pxm-start", pxm_start),
        ("nvidia,gpu-mem-pxm-count", count),
    ] {
        // iasl prints small integers as One/Zero or 0x.. and packages as Package(0x02){...}.
        let hex = format!("\"{key}\",0x{value:02X}");
        let word = match value {
            0 => format!("\"{key}\",Zero"),
            1 => format!("\"{key}\",One"),
            _ => hex.clone(),
        };
        if !compact.contains(&hex) && !compact.contains(&word) {
            bad.push(format!("{key} = {value} not found"));
        }
    }
    if !compact.contains("daffd814-6eba-4d8c-8a91-bc9bbf4aa301") {
        bad.push("no device-properties UUID".into());
    }
    if bad.is_empty() {
        Outcome::Pass
    } else {
        Outcome::Fail(bad.join("; "))
    }
}

fn gh_slot1_scenario() -> Scenario {
    let len = GH_LENGTHS[0];
    let l3 = L3::new(BOOT_VMM, 2, "512M")
        .cmdline(&format!(
            "ghvmm.vfio=gh ghvmm.gh_mode=kernel_pads ghvmm.gh_len={len} ghvmm.numa=report"
        ))
        .vmm_args("--gh slots=1,dsd=on --device path=$IVSHMEM,id=gpu0,gh_slot=0");
    let expect = NumaExpect::gh("0-1", 1, 8, 20);
    Scenario {
        setup: bind_variant("kernel_pads", len, ""),
        acpi: true,
        expect: [
            L3_CHECKS,
            GH_DEVICE_CHECKS,
            NUMA_CHECKS,
            &[SRAT_MEMORY_CHECK, "gpu-address", "gpu-dsd"],
        ]
        .concat(),
        host_checks: Some(Box::new(move |s, dir, t| {
            let mut v = gh_file_checks(s, dir);
            v.extend(numa_checks(&expect, dir, t));
            v.push(srat_memory_check(&expect, s, dir));
            v.push(("gpu-address".into(), compare_gpu_address("0001:00:00.0", t)));
            v.push(("gpu-dsd".into(), compare_dsd(dir, 1, 8)));
            v
        })),
        ..Scenario::boot(
            "gh-slot1",
            "--gh slots=1,dsd=on with the GPU-like device in slot 0: node 0 + 8 empty GI nodes, the device at 0001:00:00.0, SRAT GI entries name it, _DSD",
            l3,
        )
    }
}

/// The guest reports its NUMA view (`ghvmm.numa=report`); the host compares it and the SRAT.
pub const NUMA_CHECKS: &[&str] = &["numa-report", "numa-nodes", "srat-gi"];

/// The host side of `NUMA_CHECKS`.
pub fn numa_checks(e: &NumaExpect, dir: &Path, t: &Transcript) -> Vec<(String, Outcome)> {
    vec![
        ("numa-nodes".into(), compare_nodes(e, t)),
        ("srat-gi".into(), compare_srat(e, dir, t)),
    ]
}

/// A guest whose only extra checks are its NUMA view against `expect`, and the SRAT's memory.
fn numa_scenario(name: &'static str, about: &'static str, l3: L3, expect: NumaExpect) -> Scenario {
    Scenario {
        acpi: true,
        expect: [L3_CHECKS, NUMA_CHECKS, &[SRAT_MEMORY_CHECK]].concat(),
        host_checks: Some(Box::new(move |s, dir, t| {
            let mut v = numa_checks(&expect, dir, t);
            v.push(srat_memory_check(&expect, s, dir));
            v
        })),
        ..Scenario::boot(name, about, l3.cmdline("ghvmm.numa=report"))
    }
}

fn gh_slots2_empty_scenario() -> Scenario {
    numa_scenario(
        "gh-slots2-empty",
        "--gh slots=2 with no GPU at boot: 16 GI nodes exist before any GPU arrives",
        L3::new(BOOT_VMM, 2, "512M").vmm_args("--gh slots=2,bar_space=64G"),
        NumaExpect::gh("0-1", 2, 8, 20),
    )
}

fn numa_ch_scenario() -> Scenario {
    numa_scenario(
        "gh-numa-ch",
        "Cloud Hypervisor's --numa: two nodes of two vCPUs each, the SLIT given",
        L3::new(BOOT_VMM, 4, "1G").vmm_args(
            "--numa guest_numa_id=0,cpus=0-1 --numa guest_numa_id=1,cpus=2-3,distances=0@20",
        ),
        NumaExpect {
            nodes: vec![
                NodeExpect {
                    cpus: "0-1",
                    memory: true,
                },
                NodeExpect {
                    cpus: "2-3",
                    memory: false,
                },
            ],
            distances: vec![vec![10, 20], vec![20, 10]],
            generic_initiator: "",
            slots: Vec::new(),
            devices: Vec::new(),
        },
    )
}

/// The SLIT of `numa_device_scenario`: values the kernel never picks by default (it fills in
/// 20 between nodes when there is no SLIT), different in every part of the matrix, so a
/// lost, default or misplaced distance shows.
const DEVICE_SLIT: [[u8; 4]; 4] = [
    [10, 30, 40, 40],
    [30, 10, 40, 40],
    [40, 40, 10, 15],
    [40, 40, 15, 10],
];

/// `--numa device_id=` for a device on segment 0: its Generic Initiator entries name a
/// non-zero devfn, so a swapped bus/devfn (QEMU 9.0's bug) cannot pass, which a GPU at 00.0
/// of its own segment (all zeros) could not show. Two CPU nodes and two nodes of the device
/// (as a GPU has several), with `DEVICE_SLIT`: some distances given in both directions,
/// others only one way (ghvmm mirrors them).
fn numa_device_scenario() -> Scenario {
    let l3 = L3::new(BOOT_VMM, 2, "512M").vmm_args(
        "--numa 'guest_numa_id=0,cpus=0,distances=[1@30,2@40,3@40]' \
         --numa 'guest_numa_id=1,cpus=1,distances=[2@40,3@40]' \
         --numa 'guest_numa_id=2,device_id=shm0,distances=[0@40,3@15]' \
         --numa guest_numa_id=3,device_id=shm0 \
         --device path=$IVSHMEM,id=shm0",
    );
    let node = |cpus, memory| NodeExpect { cpus, memory };
    let expect = NumaExpect {
        nodes: vec![
            node("0", true),
            node("1", false),
            node("", false),
            node("", false),
        ],
        distances: DEVICE_SLIT.iter().map(|r| r.to_vec()).collect(),
        generic_initiator: "2-3",
        slots: Vec::new(),
        devices: vec![2, 3],
    };
    Scenario {
        setup: bind_ivshmem("vfio-pci"),
        expect: [L3_CHECKS, &["vfio-bind"], NUMA_CHECKS, &[SRAT_MEMORY_CHECK]].concat(),
        ..numa_scenario(
            "gh-numa-device",
            "--numa device_id= for a passed-through device on segment 0 in two nodes: GI entries name its devfn, a SLIT of 30/40/15 in the guest",
            l3,
            expect,
        )
    }
}

fn bad_args_scenario() -> Scenario {
    let cases = [
        ("numa-syntax", "--numa guest_numa_id=0,cpus=[0-1"),
        (
            "numa-unknown-device",
            "--numa guest_numa_id=0,device_id=gpu9",
        ),
        (
            "numa-duplicate-id",
            "--numa guest_numa_id=0,cpus=0 --numa guest_numa_id=0",
        ),
        ("numa-too-many-nodes", "--gh slots=8"),
        ("gh-syntax", "--gh slots=two"),
        (
            "gh-slot-without-gh",
            "--device path=/sys/bus/pci/devices/0000:00:02.0,gh_slot=0",
        ),
        (
            "gh-slot-out-of-range",
            "--gh slots=1 --device path=/sys/bus/pci/devices/0000:00:02.0,gh_slot=1",
        ),
        (
            "pci-segment-out-of-range",
            "--gh slots=1 --device path=/sys/bus/pci/devices/0000:00:02.0,pci_segment=2",
        ),
        (
            "num-pci-segments-mismatch",
            "--gh slots=1 --platform num_pci_segments=3",
        ),
    ];
    let script: String = cases
        .iter()
        .map(|(name, args)| format!("expect_clean_failure {name} --kernel /l3/vmlinuz {args}\n"))
        .collect();
    let mut expect = vec!["kvm"];
    expect.extend(cases.iter().map(|(n, _)| *n));
    Scenario {
        expect,
        ..Scenario::l2_only(
            "gh-bad-args",
            "malformed --numa/--gh/gh_slot options exit 1 with one error line, no panic",
            script,
        )
    }
}

/// The GH profile scenarios, in run order.
pub fn all() -> Vec<Scenario> {
    vec![
        gh_slot1_scenario(),
        gh_slots2_empty_scenario(),
        numa_ch_scenario(),
        numa_device_scenario(),
        bad_args_scenario(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An SRAT with one memory affinity and two GI entries, built by hand.
    fn srat() -> Vec<u8> {
        let mut t = b"SRAT".to_vec();
        t.extend([0u8; 44]);
        // Memory affinity: type 1, length 40.
        let mut mem = vec![1u8, 40];
        mem.resize(40, 0);
        t.extend(mem);
        for (domain, seg, bus, devfn) in [(1u32, 1u16, 0u8, 0u8), (2, 0, 0, 0x19)] {
            let mut gi = vec![5u8, 32, 0, 1];
            gi.extend(domain.to_le_bytes());
            gi.extend(seg.to_le_bytes());
            gi.extend([bus, devfn]);
            gi.extend([0u8; 12]);
            gi.extend(1u32.to_le_bytes());
            gi.extend([0u8; 4]);
            t.extend(gi);
        }
        let len = t.len() as u32;
        t[4..8].copy_from_slice(&len.to_le_bytes());
        let sum = t.iter().fold(0u8, |a, b| a.wrapping_add(*b));
        t[9] = sum.wrapping_neg();
        t
    }

    #[test]
    fn reads_generic_initiator_entries() {
        let g = srat_generic_initiators(&srat()).unwrap();
        assert_eq!(g.len(), 2);
        assert_eq!(
            g[0],
            GiEntry {
                domain: 1,
                handle_type: 1,
                segment: 1,
                bus: 0,
                devfn: 0,
                enabled: true
            }
        );
        assert_eq!((g[1].devfn >> 3, g[1].devfn & 7), (3, 1));
    }

    #[test]
    fn refuses_malformed_srats() {
        let mut t = srat();
        t[9] ^= 1;
        assert!(srat_generic_initiators(&t)
            .unwrap_err()
            .contains("checksum"));
        let mut t = srat();
        t.truncate(60);
        assert!(srat_generic_initiators(&t).is_err());
        let mut t = srat();
        t[48 + 1] = 200; // memory affinity claims to run past the end
        let sum = t.iter().fold(0u8, |a, b| a.wrapping_add(*b));
        t[9] = t[9].wrapping_sub(sum);
        assert!(srat_generic_initiators(&t)
            .unwrap_err()
            .contains("overruns"));
        assert!(srat_generic_initiators(b"APIC").is_err());
        let mut t = srat();
        t[48 + 1] = 0; // a zero-length structure would loop forever
        let sum = t.iter().fold(0u8, |a, b| a.wrapping_add(*b));
        t[9] = t[9].wrapping_sub(sum);
        assert!(srat_generic_initiators(&t).is_err());
    }

    #[test]
    fn srat_entries_are_compared_with_where_the_guest_saw_the_device() {
        let dir = std::env::temp_dir().join(format!("rig-srat-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("acpi")).unwrap();
        std::fs::write(dir.join("acpi/SRAT.dat"), srat()).unwrap();
        let e = NumaExpect {
            nodes: Vec::new(),
            distances: Vec::new(),
            generic_initiator: "",
            slots: vec![vec![1]],
            devices: vec![2],
        };
        let mut t = Transcript::default();
        t.feed("@@FACT pci 0000:00:03.1 1af4:1110 numa=-1");
        assert_eq!(compare_srat(&e, &dir, &t), Outcome::Pass);
        // The device elsewhere: its entry (devfn 0x19) no longer matches.
        let mut t = Transcript::default();
        t.feed("@@FACT pci 0000:00:04.0 1af4:1110 numa=-1");
        assert!(matches!(compare_srat(&e, &dir, &t), Outcome::Fail(w) if w.contains("domain 2")));
        // No device at all.
        let Outcome::Fail(why) = compare_srat(&e, &dir, &Transcript::default()) else {
            panic!("a missing device must fail");
        };
        assert!(why.contains("no 1af4:1110"), "{why}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// An SRAT with these memory entries (domain, base, length, enabled) only.
    fn srat_mem(entries: &[(u32, u64, u64, bool)]) -> Vec<u8> {
        let mut t = b"SRAT".to_vec();
        t.extend([0u8; 44]);
        for &(domain, base, len, enabled) in entries {
            let mut m = vec![1u8, 40];
            m.extend(domain.to_le_bytes());
            m.extend([0u8; 2]);
            m.extend(base.to_le_bytes());
            m.extend(len.to_le_bytes());
            m.extend([0u8; 4]);
            m.extend(u32::from(enabled).to_le_bytes());
            m.extend([0u8; 8]);
            t.extend(m);
        }
        let len = t.len() as u32;
        t[4..8].copy_from_slice(&len.to_le_bytes());
        let sum = t.iter().fold(0u8, |a, b| a.wrapping_add(*b));
        t[9] = sum.wrapping_neg();
        t
    }

    #[test]
    fn reads_memory_affinity_entries() {
        let m = srat_memory(&srat_mem(&[(3, 4 << 30, 1 << 30, true)])).unwrap();
        assert_eq!(
            m,
            [MemEntry {
                domain: 3,
                base: 4 << 30,
                len: 1 << 30,
                enabled: true
            }]
        );
        // The hand-built SRAT above: one all-zero entry among GI entries.
        assert_eq!(srat_memory(&srat()).unwrap().len(), 1);
        let mut t = srat_mem(&[(0, 0, 1, true)]);
        t[48 + 1] = 32; // a memory entry of the wrong length
        let sum = t.iter().fold(0u8, |a, b| a.wrapping_add(*b));
        t[9] = t[9].wrapping_sub(sum);
        assert!(srat_memory(&t).unwrap_err().contains("not 40"));
    }

    #[test]
    fn ram_layout_and_sizes() {
        assert_eq!(guest_ram_ranges(512 << 20), [(0, 512 << 20)]);
        assert_eq!(guest_ram_ranges(3 << 30), [(0, 3 << 30)]);
        assert_eq!(
            guest_ram_ranges(5 << 30),
            [(0, 3 << 30), (4 << 30, 2 << 30)]
        );
        assert_eq!(size_bytes("512M"), Some(512 << 20));
        assert_eq!(size_bytes("1G"), Some(1 << 30));
        assert_eq!(size_bytes("4096"), Some(4096));
        assert_eq!(size_bytes("xM"), None);
        assert_eq!(size_bytes(""), None);
        assert_eq!(size_bytes("99999999999G"), None);
    }

    #[test]
    fn srat_memory_must_cover_ram_in_the_right_nodes() {
        let dir = std::env::temp_dir().join(format!("rig-srat-mem-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("acpi")).unwrap();
        let e = NumaExpect::gh("0-1", 1, 1, 20);
        let check = |entries: &[(u32, u64, u64, bool)], ram: u64| {
            std::fs::write(dir.join("acpi/SRAT.dat"), srat_mem(entries)).unwrap();
            compare_srat_memory(&e, ram, &dir)
        };
        let fails_with = |o: Outcome, part: &str| {
            assert!(
                matches!(&o, Outcome::Fail(w) if w.contains(part)),
                "{part}: {o:?}"
            );
        };
        assert_eq!(check(&[(0, 0, 512 << 20, true)], 512 << 20), Outcome::Pass);
        // Split in two adjacent entries: the union counts.
        assert_eq!(
            check(
                &[
                    (0, 1 << 20, (512 << 20) - (1 << 20), true),
                    (0, 0, 1 << 20, true)
                ],
                512 << 20
            ),
            Outcome::Pass
        );
        assert_eq!(
            check(
                &[(0, 0, 3 << 30, true), (0, 4 << 30, 1 << 30, true)],
                4 << 30
            ),
            Outcome::Pass
        );
        // RAM missing, in the hole, in a node without memory, disabled, overlapping, absent.
        fails_with(
            check(&[(0, 0, 256 << 20, true)], 512 << 20),
            "cover 0x0+0x10000000",
        );
        fails_with(
            check(&[(0, 0, 4 << 30, true)], 4 << 30),
            "the guest's RAM is",
        );
        fails_with(
            check(
                &[(0, 0, 256 << 20, true), (1, 256 << 20, 256 << 20, true)],
                512 << 20,
            ),
            "domain 1",
        );
        fails_with(
            check(&[(0, 0, 512 << 20, false)], 512 << 20),
            "enabled false",
        );
        fails_with(
            check(&[(0, 0, 512 << 20, true), (0, 4096, 4096, true)], 512 << 20),
            "overlap",
        );
        fails_with(
            check(&[(9, 0, 512 << 20, true)], 512 << 20),
            "no memory entry for node 0",
        );
        fails_with(check(&[], 512 << 20), "no memory entry for node 0");
        std::fs::remove_file(dir.join("acpi/SRAT.dat")).unwrap();
        fails_with(compare_srat_memory(&e, 512 << 20, &dir), "no SRAT");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_device_slit_is_not_the_default_and_symmetric() {
        for (i, row) in DEVICE_SLIT.iter().enumerate() {
            for (j, d) in row.iter().enumerate() {
                assert_eq!(*d, DEVICE_SLIT[j][i]);
                assert!(if i == j {
                    *d == 10
                } else {
                    *d != 20 && *d > 10
                });
            }
        }
    }

    #[test]
    fn bdfs_and_expectations() {
        assert_eq!(parse_bdf("0001:00:00.0"), Some((1, 0, 0)));
        assert_eq!(parse_bdf("0000:00:03.1"), Some((0, 0, 0x19)));
        assert_eq!(parse_bdf("0000:00:20.0"), None);
        assert_eq!(parse_bdf("garbage"), None);
        let e = NumaExpect::gh("0-1", 2, 8, 20);
        assert_eq!(e.nodes.len(), 17);
        assert_eq!(e.generic_initiator, "1-16");
        assert_eq!(e.slots[1], (9..17).collect::<Vec<u32>>());
        assert_eq!(e.distances[3][3], 10);
        assert_eq!(e.distances[0][16], 20);
    }

    #[test]
    fn node_facts_are_compared() {
        let e = NumaExpect::gh("0-1", 1, 1, 20);
        let mut t = Transcript::default();
        t.feed("@@FACT node 0 cpus=0-1 memkb=500000 distance=10,20");
        t.feed("@@FACT node 1 cpus= memkb=0 distance=20,10");
        t.feed("@@FACT generic_initiator 1");
        assert_eq!(compare_nodes(&e, &t), Outcome::Pass);
        t.feed("@@FACT node 2 cpus=1 memkb=0 distance=20,20,10");
        let Outcome::Fail(why) = compare_nodes(&e, &t) else {
            panic!("an extra node must fail");
        };
        assert!(why.contains("3 nodes"), "{why}");
        let mut t = Transcript::default();
        t.feed("@@FACT node 0 cpus=0 memkb=0 distance=10,30");
        t.feed("@@FACT node 1 cpus= memkb=0 distance=20,10");
        t.feed("@@FACT generic_initiator");
        let Outcome::Fail(why) = compare_nodes(&e, &t) else {
            panic!("wrong cpus, memory, distances must fail");
        };
        for part in [
            "cpus '0'",
            "0 kB",
            "distances 10,30",
            "has_generic_initiator",
        ] {
            assert!(why.contains(part), "{part} in {why}");
        }
    }
}
