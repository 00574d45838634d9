//! Target `acpi_tables`: the ACPI tables of arbitrary NUMA/GH configurations.
//!
//! Two kinds of input:
//! - `Vm`: a ghvmm configuration (vCPUs, memory, `--platform mmio64_size`, `--numa` nodes with
//!   cpus, distances and `device_id`, `--gh` slots, `--device`s with `gh_slot`, the CPU's
//!   physical address bits) taken through the VMM's own path: `numa::resolve`, the memory
//!   layout, `acpi_tables::platform_desc`, `acpi::build_tables`. A configuration the VMM
//!   accepts must give tables, and the tables must say what the configuration says: the SRAT's
//!   processor, memory and Generic Initiator entries and the SLIT's matrix, parsed back here,
//!   equal the resolved topology and every distance given on the command line.
//! - `Desc`: a platform description for the `acpi` crate directly, from one of its typical
//!   platforms with arbitrary edits (APIC ids, segments, functions with `_DSD`, NUMA nodes,
//!   distances, hot plug, where the tables go): `build_tables` returns tables or an error,
//!   never panics.
//!
//! Every table built is checked: placed 16-byte aligned inside the area without overlap, every
//! region reachable from the RSDP, RSDP checksums and revision, each table's length field and
//! checksum, FADT -> DSDT, the DSDT's AML package lengths nested inside each other and the
//! table, the MADT's processors, the MCFG's segments, and the SRAT and SLIT parsed back
//! against the description.

use std::collections::{BTreeMap, BTreeSet};

use acpi::{
    AcpiBlob, AddrRange, NumaNode, PciAddress, PciFunctionDesc, PciSegmentDesc, PlatformDesc,
};
use arbitrary::Arbitrary;
use vmm::config::{
    CpusConfig, DeviceConfig, GhConfig, GhSlotRequest, MemoryConfig, NumaConfig, PlatformConfig,
    SerialConfig, VmConfig, MAX_VCPUS,
};
use vmm::memory::layout::{ExtraSegments, Layout, ACPI_LIMIT, ACPI_START};

use crate::seed::{Encode, Encoder};

#[derive(Arbitrary, Debug, Clone, PartialEq)]
pub enum Input {
    Vm(VmInput),
    Desc(DescInput),
}

#[derive(Arbitrary, Debug, Clone, PartialEq)]
pub struct VmInput {
    /// 1 + (vcpus modulo 254).
    pub vcpus: u8,
    /// 32 MiB + (memory_mib modulo 256 GiB - 32 MiB), in MiB.
    pub memory_mib: u32,
    /// `--platform mmio64_size=2^(30 + x % 24)`.
    pub mmio64_log2: Option<u8>,
    /// 32 + (phys_bits modulo 21).
    pub phys_bits: u8,
    pub numa: Vec<Numa>,
    pub gh: Option<Gh>,
    pub devices: Vec<Device>,
}

#[derive(Arbitrary, Debug, Clone, PartialEq)]
pub struct Numa {
    /// `guest_numa_id` (modulo 70: gaps, duplicates and too many nodes are reachable).
    pub id: u8,
    pub cpus: Option<Vec<u8>>,
    /// (destination modulo 70, distance): 10 for the node itself, else 11 + (d modulo 245).
    pub distances: Vec<(u8, u8)>,
    /// `device_id=d<n>`.
    pub device: Option<u8>,
}

#[derive(Arbitrary, Debug, Clone, PartialEq)]
pub struct Gh {
    /// 1 + (slots modulo 20).
    pub slots: u8,
    /// 1 + (nodes modulo 64).
    pub nodes: u8,
    /// 11 + (distance modulo 245).
    pub distance: u8,
    pub dsd: bool,
    /// 2^(30 + x % 12).
    pub bar_space_log2: u8,
}

#[derive(Arbitrary, Debug, Clone, PartialEq)]
pub struct Device {
    /// `id=d<n>`.
    pub id: Option<u8>,
    /// `None`: no gh_slot; `Some(255)`: auto; else that slot.
    pub gh_slot: Option<u8>,
}

#[derive(Arbitrary, Debug, Clone, PartialEq)]
pub struct DescInput {
    /// 0: a plain platform, 1: the acpi crate's NUMA (Grace-Hopper-like) one, 2: hot plug.
    pub base: u8,
    pub cpus: u16,
    pub segments: u8,
    pub edits: Vec<Edit>,
}

#[derive(Arbitrary, Debug, Clone, PartialEq)]
pub enum Edit {
    ApicIds(Vec<u32>),
    Segment {
        index: u8,
        segment: u16,
        buses: (u8, u8),
        ecam_base: u64,
        mmio32: (u64, u64),
        mmio64: (u64, u64),
        pxm: Option<u32>,
        hotplug_slots: u32,
        io: bool,
    },
    Function {
        segment: u8,
        device: u8,
        function: u8,
        name: [u8; 4],
        dsd: Vec<(u8, u64)>,
    },
    Node {
        index: u8,
        domain: Option<u32>,
        apic_ids: Vec<u32>,
        memory: Vec<(u64, u64)>,
        gi: Option<(u16, u8, u8, u8)>,
    },
    Distance {
        from: u8,
        to: u8,
        value: u8,
    },
    Nodes(u8),
    NoNuma,
    Hotplug(Option<u64>),
    Area {
        base: u64,
        limit: u64,
    },
}

// ---------------------------------------------------------------------------------------------
// Reading tables back.

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes(b[o..o + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}
fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
}

const HEADER: usize = 36;

/// A system description table: its header is sane and its checksum is zero.
fn check_sdt(t: &[u8]) -> [u8; 4] {
    assert!(t.len() >= HEADER, "table shorter than its header");
    let sig: [u8; 4] = t[..4].try_into().unwrap();
    assert_eq!(u32_at(t, 4) as usize, t.len(), "{sig:?}: length field");
    assert_eq!(sum(t), 0, "{sig:?}: checksum");
    assert_eq!(&t[10..16], &acpi::OEM_ID, "{sig:?}: OEM id");
    sig
}

/// Every table by signature, found by following RSDP -> XSDT -> tables and FADT -> DSDT.
pub fn read_tables(blob: &AcpiBlob, base: u64, limit: u64) -> BTreeMap<[u8; 4], Vec<u8>> {
    let mut spans: Vec<(u64, u64)> = Vec::new();
    for (addr, bytes) in &blob.regions {
        assert_eq!(addr % 16, 0, "table at {addr:#x} not 16-byte aligned");
        let end = addr + bytes.len() as u64;
        assert!(*addr >= base && end <= limit, "table outside the area");
        spans.push((*addr, end));
    }
    spans.sort_unstable();
    assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0), "tables overlap");
    let at = |addr: u64| -> &[u8] {
        &blob
            .regions
            .iter()
            .find(|(a, _)| *a == addr)
            .unwrap_or_else(|| panic!("nothing placed at {addr:#x}"))
            .1
    };
    let rsdp = at(blob.rsdp_addr);
    assert_eq!(&rsdp[..8], b"RSD PTR ");
    assert_eq!(rsdp.len(), 36);
    assert_eq!(sum(&rsdp[..20]), 0, "RSDP checksum");
    assert_eq!(sum(rsdp), 0, "RSDP extended checksum");
    assert_eq!(rsdp[15], 2, "RSDP revision");
    assert_eq!(u32_at(rsdp, 20), 36);
    let xsdt = at(u64_at(rsdp, 24));
    assert_eq!(&check_sdt(xsdt), b"XSDT");
    assert_eq!((xsdt.len() - HEADER) % 8, 0);
    let mut tables = BTreeMap::new();
    let mut reached = BTreeSet::from([blob.rsdp_addr, u64_at(rsdp, 24)]);
    for o in (HEADER..xsdt.len()).step_by(8) {
        let addr = u64_at(xsdt, o);
        let t = at(addr);
        let sig = check_sdt(t);
        assert!(reached.insert(addr), "XSDT lists {addr:#x} twice");
        assert!(
            tables.insert(sig, t.to_vec()).is_none(),
            "two {sig:?} tables"
        );
    }
    let fadt = tables.get(b"FACP").expect("a FADT").clone();
    let dsdt_addr = u64_at(&fadt, 140);
    assert_eq!(u32_at(&fadt, 40), 0, "no 32-bit DSDT pointer");
    let dsdt = at(dsdt_addr);
    assert_eq!(&check_sdt(dsdt), b"DSDT");
    reached.insert(dsdt_addr);
    tables.insert(*b"DSDT", dsdt.to_vec());
    for (addr, _) in &blob.regions {
        assert!(reached.contains(addr), "table at {addr:#x} is not linked");
    }
    check_aml(&dsdt[HEADER..]);
    tables
}

/// AML package length: (length, bytes it takes).
fn pkg_length(b: &[u8]) -> Option<(usize, usize)> {
    let lead = *b.first()?;
    let follow = usize::from(lead >> 6);
    if follow == 0 {
        return Some((usize::from(lead & 0x3f), 1));
    }
    assert_eq!(
        lead & 0x30,
        0,
        "PkgLength lead byte {lead:#x} has reserved bits set"
    );
    let mut len = usize::from(lead & 0x0f);
    for i in 0..follow {
        len |= usize::from(*b.get(1 + i)?) << (4 + 8 * i);
    }
    Some((len, 1 + follow))
}

/// The length of a NameString at the start of `b`.
fn name_string(b: &[u8]) -> Option<usize> {
    let mut i = 0;
    while matches!(b.get(i), Some(b'\\' | b'^')) {
        i += 1;
    }
    match *b.get(i)? {
        0x00 => Some(i + 1),
        0x2e => Some(i + 1 + 8),
        0x2f => Some(i + 2 + 4 * usize::from(*b.get(i + 1)?)),
        _ => Some(i + 4),
    }
}

/// Walks a TermList: every object with a package length must end inside its parent. Opcodes
/// whose length cannot be known without evaluating expressions end the walk of that list
/// (its parent still checks the list's own extent).
fn check_aml(list: &[u8]) {
    let mut i = 0;
    while i < list.len() {
        let rest = &list[i..];
        let (skip_op, nested) = match rest[0] {
            0x10 => (1, true),                               // Scope
            0x5b if rest.get(1) == Some(&0x82) => (2, true), // Device
            0x14 | 0x11 | 0x12 | 0x13 | 0xa0 | 0xa1 | 0xa2 => (1, false),
            0x5b if matches!(rest.get(1), Some(0x81 | 0x86 | 0x84 | 0x85 | 0x83)) => (2, false),
            0x08 => {
                // Name(NameString, DataRefObject)
                let Some(n) = name_string(&rest[1..]) else {
                    return;
                };
                let at = 1 + n;
                let Some(&op) = rest.get(at) else {
                    panic!("Name without a value at the end of its list")
                };
                let len = match op {
                    0x00 | 0x01 | 0xff => 1,
                    0x0a => 2,
                    0x0b => 3,
                    0x0c => 5,
                    0x0e => 9,
                    0x0d => match rest[at + 1..].iter().position(|c| *c == 0) {
                        Some(p) => p + 2,
                        None => panic!("unterminated AML string"),
                    },
                    0x11..=0x13 => {
                        let Some((pl, _)) = pkg_length(&rest[at + 1..]) else {
                            return;
                        };
                        1 + pl
                    }
                    _ => return,
                };
                assert!(at + len <= rest.len(), "Name's value runs past its list");
                i += at + len;
                continue;
            }
            _ => return,
        };
        let Some((len, n)) = pkg_length(&rest[skip_op..]) else {
            panic!("truncated PkgLength")
        };
        assert!(len >= n, "PkgLength {len} shorter than itself");
        let end = skip_op + len;
        assert!(
            end <= rest.len(),
            "AML object of {len} bytes runs past its parent"
        );
        if nested {
            let body = &rest[skip_op + n..end];
            if let Some(name) = name_string(body) {
                assert!(name <= body.len(), "name runs past its object");
                check_aml(&body[name..]);
            }
        }
        i += end;
    }
}

/// SRAT entries as (kind, domain, value) triples.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum SratEntry {
    Cpu(u32, u32),
    Memory(u32, u64, u64),
    Initiator(u32, u16, u8, u8),
}

fn parse_srat(t: &[u8]) -> Vec<SratEntry> {
    assert_eq!(t[8], 3, "SRAT revision");
    assert_eq!(u32_at(t, 36), 1, "SRAT reserved 1");
    let mut out = Vec::new();
    let mut o = 48;
    while o < t.len() {
        let (kind, len) = (t[o], usize::from(t[o + 1]));
        assert!(
            len >= 2 && o + len <= t.len(),
            "SRAT structure runs past the table"
        );
        let s = &t[o..o + len];
        match (kind, len) {
            (0, 16) => {
                assert_eq!(u32_at(s, 4), 1, "enabled");
                let domain = u32::from(s[2]) | u32::from_le_bytes([0, s[9], s[10], s[11]]);
                out.push(SratEntry::Cpu(domain, u32::from(s[3])));
            }
            (1, 40) => {
                assert_eq!(u32_at(s, 28), 1, "enabled");
                out.push(SratEntry::Memory(u32_at(s, 2), u64_at(s, 8), u64_at(s, 16)));
            }
            (2, 24) => {
                assert_eq!(u32_at(s, 12), 1, "enabled");
                let id = u32_at(s, 8);
                assert!(id > 0xfe, "x2APIC affinity for xAPIC id {id}");
                out.push(SratEntry::Cpu(u32_at(s, 4), id));
            }
            (5, 32) => {
                assert_eq!(s[3], 1, "PCI handle");
                assert_eq!(u32_at(s, 24), 1, "enabled");
                assert!(s[12..24].iter().all(|b| *b == 0), "handle reserved bytes");
                assert_eq!(u32_at(s, 28), 0, "reserved");
                out.push(SratEntry::Initiator(
                    u32_at(s, 4),
                    u16_at(s, 8),
                    s[10],
                    s[11],
                ));
            }
            _ => panic!("unexpected SRAT structure type {kind} length {len}"),
        }
        o += len;
    }
    out.sort();
    out
}

fn expected_srat(numa: &acpi::NumaDesc) -> Vec<SratEntry> {
    let mut out = Vec::new();
    for n in &numa.nodes {
        let d = n.proximity_domain;
        out.extend(n.apic_ids.iter().map(|&id| SratEntry::Cpu(d, id)));
        out.extend(n.memory.iter().map(|m| SratEntry::Memory(d, m.base, m.len)));
        if let Some(p) = n.generic_initiator {
            out.push(SratEntry::Initiator(
                d,
                p.segment,
                p.bus,
                p.device << 3 | p.function,
            ));
        }
    }
    out.sort();
    out
}

fn parse_slit(t: &[u8]) -> Vec<Vec<u8>> {
    let n = usize::try_from(u64_at(t, 36)).unwrap();
    assert_eq!(t.len(), 44 + n * n, "SLIT size for {n} localities");
    t[44..]
        .chunks(n.max(1))
        .take(n)
        .map(<[u8]>::to_vec)
        .collect()
}

fn madt_apic_ids(t: &[u8]) -> BTreeSet<u32> {
    let mut ids = BTreeSet::new();
    let mut o = 44;
    while o < t.len() {
        let (kind, len) = (t[o], usize::from(t[o + 1]));
        assert!(
            len >= 2 && o + len <= t.len(),
            "MADT structure runs past the table"
        );
        match kind {
            0 => assert!(ids.insert(u32::from(t[o + 3])), "APIC id twice"),
            9 => assert!(ids.insert(u32_at(t, o + 4)), "x2APIC id twice"),
            _ => {}
        }
        o += len;
    }
    ids
}

/// Every table agrees with the description it was built from; the tables, by signature.
pub fn check_blob(
    desc: &PlatformDesc,
    blob: &AcpiBlob,
    base: u64,
    limit: u64,
) -> BTreeMap<[u8; 4], Vec<u8>> {
    let tables = read_tables(blob, base, limit);
    let want: BTreeSet<u32> = desc.apic_ids.iter().copied().collect();
    assert_eq!(madt_apic_ids(&tables[b"APIC"]), want, "MADT processors");
    let mcfg = &tables[b"MCFG"];
    let entries: Vec<(u64, u16, u8, u8)> = mcfg[44..]
        .chunks(16)
        .map(|e| (u64_at(e, 0), u16_at(e, 8), e[10], e[11]))
        .collect();
    let want: Vec<_> = desc
        .pci_segments
        .iter()
        .map(|s| (s.ecam_base, s.segment, s.bus_start, s.bus_end))
        .collect();
    assert_eq!(entries, want, "MCFG segments");
    match &desc.numa {
        None => assert!(!tables.contains_key(b"SRAT") && !tables.contains_key(b"SLIT")),
        Some(numa) => {
            assert_eq!(parse_srat(&tables[b"SRAT"]), expected_srat(numa), "SRAT");
            assert_eq!(parse_slit(&tables[b"SLIT"]), numa.distances, "SLIT");
        }
    }
    tables
}

// ---------------------------------------------------------------------------------------------
// The VMM path.

fn vm_config(v: &VmInput) -> VmConfig {
    let memory_mib = 32 + u64::from(v.memory_mib) % ((256 << 10) - 32 + 1);
    let devices: Vec<DeviceConfig> = v
        .devices
        .iter()
        .take(16)
        .enumerate()
        .map(|(i, d)| DeviceConfig {
            source: vmm::config::DeviceSource::Vfio(
                format!("/sys/bus/pci/devices/0000:0{i:x}:00.0").into(),
            ),
            id: d.id.map(|n| format!("d{n}")),
            gh_slot: d.gh_slot.map(|s| match s {
                255 => GhSlotRequest::Auto,
                k => GhSlotRequest::Index(u16::from(k)),
            }),
            pci_segment: None,
        })
        .collect();
    let numa = v
        .numa
        .iter()
        .take(70)
        .map(|n| {
            let id = u32::from(n.id % 70);
            let mut cpus: Option<Vec<u8>> = n.cpus.as_ref().map(|c| {
                let mut c: Vec<u8> = c.iter().map(|x| x % MAX_VCPUS).collect();
                c.sort_unstable();
                c.dedup();
                c
            });
            // The parser refuses an empty list and cpus together with a device_id.
            if cpus.as_ref().is_some_and(Vec::is_empty) || n.device.is_some() {
                cpus = None;
            }
            let mut distances: Vec<(u32, u8)> = Vec::new();
            for &(to, d) in &n.distances {
                let to = u32::from(to % 70);
                let d = if to == id { 10 } else { 11 + d % 245 };
                if !distances.iter().any(|(t, _)| *t == to) {
                    distances.push((to, d));
                }
            }
            NumaConfig {
                guest_numa_id: id,
                cpus,
                distances,
                device_id: n.device.map(|d| format!("d{d}")),
                memory_zones: Vec::new(),
            }
        })
        .collect();
    VmConfig {
        kernel: "/k".into(),
        initramfs: None,
        cmdline: String::new(),
        cpus: CpusConfig {
            boot: 1 + v.vcpus % MAX_VCPUS,
        },
        memory: MemoryConfig::new(memory_mib << 20),
        serial: SerialConfig::Off,
        platform: PlatformConfig {
            mmio64_size: v.mmio64_log2.map(|x| 1u64 << (30 + x % 24)),
            num_pci_segments: None,
        },
        devices,
        numa,
        gh: v.gh.as_ref().map(|g| GhConfig {
            slots: 1 + u16::from(g.slots % 20),
            nodes: 1 + u32::from(g.nodes % 64),
            distance: 11 + g.distance % 245,
            dsd: g.dsd,
            bar_space: 1u64 << (30 + g.bar_space_log2 % 12),
        }),
        api_socket: None,
        seccomp: Default::default(),
    }
}

fn run_vm(v: &VmInput) {
    let cfg = vm_config(v);
    let topology = match vmm::config::numa::resolve(&cfg) {
        Ok(t) => t,
        Err(e) => {
            assert!(!e.to_string().contains('\n'));
            return;
        }
    };
    if let Some(t) = &topology {
        crate::cli::check_topology(t, cfg.cpus.boot);
    }
    // As vm.rs does it.
    let extra = topology
        .as_ref()
        .and_then(|t| t.slots.first().map(|s| (t.slots.len(), s.bar_space)))
        .map_or(ExtraSegments::default(), |(n, size)| ExtraSegments {
            count: n as u16,
            mmio64_size: size,
        });
    let phys_bits = 32 + v.phys_bits % 21;
    let Ok(layout) = Layout::with_segments(
        cfg.memory.total(),
        cfg.platform.mmio64_size,
        extra,
        phys_bits,
    ) else {
        return;
    };
    let placed: Vec<PciAddress> = (0..cfg.devices.len())
        .map(
            |i| match topology.as_ref().and_then(|t| t.slot_of_device(i)) {
                Some(s) => PciAddress {
                    segment: s.segment,
                    bus: 0,
                    device: 0,
                    function: 0,
                },
                None => PciAddress {
                    segment: 0,
                    bus: 0,
                    device: 1 + i as u8,
                    function: 0,
                },
            },
        )
        .collect();
    let desc = vmm::device_manager::acpi_tables::platform_desc(
        cfg.cpus.boot,
        &layout,
        &[cfg.memory.total()],
        topology.as_ref(),
        &placed,
    );
    let blob = acpi::build_tables(&desc, ACPI_START, ACPI_LIMIT)
        .unwrap_or_else(|e| panic!("a configuration the VMM accepts has no tables: {e}"));
    let tables = check_blob(&desc, &blob, ACPI_START, ACPI_LIMIT);
    // Against the configuration itself, not only the description made of it.
    match &topology {
        None => assert!(!tables.contains_key(b"SRAT")),
        Some(t) => {
            let slit = parse_slit(&tables[b"SLIT"]);
            assert_eq!(slit, t.distances);
            // The documented rule, computed here from the options: 10 on the diagonal, a
            // given value, else its mirror, else the GH distance for a pair with a GH node,
            // else 20.
            let n = t.nodes.len();
            let mut given = vec![vec![None; n]; n];
            for o in &cfg.numa {
                for &(to, d) in &o.distances {
                    given[o.guest_numa_id as usize][to as usize] = Some(d);
                }
            }
            let is_gh = |i: usize| {
                matches!(
                    t.nodes[i].initiator,
                    Some(vmm::config::numa::Initiator::GhSlot(_))
                )
            };
            for i in 0..n {
                for j in 0..n {
                    let want = if i == j {
                        10
                    } else if let Some(d) = given[i][j].or(given[j][i]) {
                        d
                    } else if is_gh(i) || is_gh(j) {
                        cfg.gh.as_ref().expect("GH nodes need --gh").distance
                    } else {
                        20
                    };
                    assert_eq!(slit[i][j], want, "SLIT[{i}][{j}]");
                }
            }
            let srat = parse_srat(&tables[b"SRAT"]);
            for cpu in 0..cfg.cpus.boot {
                let domain = t.domain_of_cpu(cpu).expect("every vCPU has a node");
                assert!(srat.contains(&SratEntry::Cpu(domain, u32::from(cpu))));
            }
            let ram: u64 = srat
                .iter()
                .map(|e| match e {
                    SratEntry::Memory(d, _, len) => {
                        assert_eq!(*d as usize, t.memory_node);
                        *len
                    }
                    _ => 0,
                })
                .sum();
            assert_eq!(ram, cfg.memory.total(), "all RAM in the SRAT");
            for s in &t.slots {
                for &node in &s.nodes {
                    assert!(srat.contains(&SratEntry::Initiator(node as u32, s.segment, 0, 0)));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The acpi crate directly.

const DSD_KEYS: &[&str] = &[
    "nvidia,gpu-mem-pxm-start",
    "nvidia,gpu-mem-pxm-count",
    "a",
    "",
    "nul\0inside",
    "non-ascii-é",
    "nvidia,gpu-mem-pxm-start",
];

fn run_desc(d: &DescInput) {
    let cpus = 1 + u32::from(d.cpus) % 300;
    let mut p = match d.base % 3 {
        0 => acpi::testutil::platform(cpus),
        1 => acpi::testutil::numa_platform(cpus.max(2)),
        _ => acpi::testutil::hotplug_platform_with(cpus, u16::from(d.segments % 8)),
    };
    let (mut base, mut limit) = (0xe0000u64, 0x100000u64);
    for e in d.edits.iter().take(32) {
        match e {
            Edit::ApicIds(ids) => p.apic_ids = ids.iter().take(300).copied().collect(),
            Edit::Segment {
                index,
                segment,
                buses,
                ecam_base,
                mmio32,
                mmio64,
                pxm,
                hotplug_slots,
                io,
            } => {
                let s = PciSegmentDesc {
                    segment: *segment,
                    bus_start: buses.0,
                    bus_end: buses.1,
                    ecam_base: *ecam_base,
                    mmio32: AddrRange {
                        base: mmio32.0,
                        len: mmio32.1,
                    },
                    mmio64: AddrRange {
                        base: mmio64.0,
                        len: mmio64.1,
                    },
                    io: *io,
                    proximity_domain: *pxm,
                    functions: vec![],
                    hotplug_slots: *hotplug_slots,
                };
                let i = usize::from(*index);
                if let Some(old) = p.pci_segments.get_mut(i) {
                    *old = PciSegmentDesc {
                        functions: std::mem::take(&mut old.functions),
                        ..s
                    };
                } else if p.pci_segments.len() < 24 {
                    p.pci_segments.push(s);
                }
            }
            Edit::Function {
                segment,
                device,
                function,
                name,
                dsd,
            } => {
                let n = p.pci_segments.len();
                if n > 0 {
                    let seg = &mut p.pci_segments[usize::from(*segment) % n];
                    if seg.functions.len() < 32 {
                        seg.functions.push(PciFunctionDesc {
                            device: *device,
                            function: *function,
                            name: String::from_utf8_lossy(name).into_owned(),
                            dsd: dsd
                                .iter()
                                .take(300)
                                .map(|(k, v)| {
                                    (DSD_KEYS[usize::from(*k) % DSD_KEYS.len()].into(), *v)
                                })
                                .collect(),
                        });
                    }
                }
            }
            Edit::Node {
                index,
                domain,
                apic_ids,
                memory,
                gi,
            } => {
                let numa = p.numa.get_or_insert_with(|| acpi::NumaDesc {
                    nodes: vec![],
                    distances: vec![],
                });
                let i = usize::from(*index);
                let node = NumaNode {
                    proximity_domain: domain.unwrap_or(i as u32),
                    apic_ids: apic_ids.iter().take(64).copied().collect(),
                    memory: memory
                        .iter()
                        .take(16)
                        .map(|&(base, len)| AddrRange { base, len })
                        .collect(),
                    generic_initiator: gi.map(|(segment, bus, device, function)| PciAddress {
                        segment,
                        bus,
                        device,
                        function,
                    }),
                };
                if let Some(old) = numa.nodes.get_mut(i) {
                    *old = node;
                } else if numa.nodes.len() < 80 {
                    numa.nodes.push(node);
                }
            }
            Edit::Distance { from, to, value } => {
                if let Some(row) = p
                    .numa
                    .as_mut()
                    .and_then(|n| n.distances.get_mut(usize::from(*from)))
                {
                    if let Some(v) = row.get_mut(usize::from(*to)) {
                        *v = *value;
                    }
                }
            }
            Edit::Nodes(n) => {
                // A consistent matrix for the nodes there are (or `n` rows of garbage size).
                if let Some(numa) = p.numa.as_mut() {
                    let count = if *n == 0 {
                        numa.nodes.len()
                    } else {
                        usize::from(*n)
                    };
                    numa.distances = (0..count)
                        .map(|i| (0..count).map(|j| if i == j { 10 } else { 20 }).collect())
                        .collect();
                }
            }
            Edit::NoNuma => p.numa = None,
            Edit::Hotplug(h) => {
                p.pci_hotplug = h.map(|mmio_base| acpi::PciHotplugDesc { mmio_base })
            }
            Edit::Area { base: b, limit: l } => {
                base = *b;
                limit = *l;
            }
        }
    }
    match acpi::build_tables(&p, base, limit) {
        Ok(blob) => {
            check_blob(&p, &blob, base, limit);
        }
        Err(e) => assert!(!e.to_string().contains('\n'), "{e}"),
    }
}

pub fn run(input: &Input) {
    match input {
        Input::Vm(v) => run_vm(v),
        Input::Desc(d) => run_desc(d),
    }
}

pub fn fuzz(data: &[u8]) {
    if let Some(input) = crate::seed::decode::<Input>(data) {
        run(&input);
    }
}

// ---------------------------------------------------------------------------------------------
// Seeds (VM configurations, and the acpi crate's platforms unedited).

impl Encode for Input {
    fn encode(&self, e: &mut Encoder) {
        match self {
            Input::Vm(v) => {
                e.variant(0, 2);
                v.encode(e);
            }
            Input::Desc(d) => {
                e.variant(1, 2);
                d.base.encode(e);
                d.cpus.encode(e);
                d.segments.encode(e);
                assert!(d.edits.is_empty(), "seeds carry no edits");
                false.encode(e);
            }
        }
    }
}

impl Encode for VmInput {
    fn encode(&self, e: &mut Encoder) {
        self.vcpus.encode(e);
        self.memory_mib.encode(e);
        self.mmio64_log2.encode(e);
        self.phys_bits.encode(e);
        self.numa.encode(e);
        self.gh.encode(e);
        self.devices.encode(e);
    }
}

impl Encode for Numa {
    fn encode(&self, e: &mut Encoder) {
        self.id.encode(e);
        self.cpus.encode(e);
        self.distances.encode(e);
        self.device.encode(e);
    }
}

impl Encode for Gh {
    fn encode(&self, e: &mut Encoder) {
        self.slots.encode(e);
        self.nodes.encode(e);
        self.distance.encode(e);
        self.dsd.encode(e);
        self.bar_space_log2.encode(e);
    }
}

impl Encode for Device {
    fn encode(&self, e: &mut Encoder) {
        self.id.encode(e);
        self.gh_slot.encode(e);
    }
}

fn vm(vcpus: u8, memory_mib: u32) -> VmInput {
    VmInput {
        vcpus: vcpus - 1,
        memory_mib: memory_mib - 32,
        mmio64_log2: None,
        phys_bits: 46 - 32,
        numa: vec![],
        gh: None,
        devices: vec![],
    }
}

fn gh(slots: u8, nodes: u8, distance: u8, dsd: bool, bar_space_log2: u8) -> Gh {
    Gh {
        slots: slots - 1,
        nodes: nodes - 1,
        distance: distance - 11,
        dsd,
        bar_space_log2: bar_space_log2 - 30,
    }
}

fn node(id: u8, cpus: Option<Vec<u8>>, distances: Vec<(u8, u8)>, device: Option<u8>) -> Numa {
    Numa {
        id,
        cpus,
        distances: distances
            .into_iter()
            .map(|(to, d)| (to, if to == id { 0 } else { d - 11 }))
            .collect(),
        device,
    }
}

pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    out.push(("plain-2cpu-512M", Input::Vm(vm(2, 512))));
    // gh-slot1: --gh slots=1,dsd=on with a device in slot 0.
    let mut v = vm(2, 512);
    v.gh = Some(gh(1, 8, 20, true, 38));
    v.devices = vec![Device {
        id: Some(0),
        gh_slot: Some(0),
    }];
    out.push(("gh-slot1", Input::Vm(v)));
    // gh-slots2-empty.
    let mut v = vm(2, 512);
    v.gh = Some(gh(2, 8, 20, false, 38));
    out.push(("gh-slots2-empty", Input::Vm(v)));
    // gh-numa-ch: two nodes of two vCPUs, the SLIT given.
    let mut v = vm(4, 1024);
    v.numa = vec![
        node(0, Some(vec![0, 1]), vec![], None),
        node(1, Some(vec![2, 3]), vec![(0, 20)], None),
    ];
    out.push(("numa-ch", Input::Vm(v)));
    // gh-numa-device: a Generic Initiator node of a device on segment 0.
    let mut v = vm(2, 512);
    v.numa = vec![
        node(0, Some(vec![0, 1]), vec![], None),
        node(1, None, vec![(0, 30)], Some(7)),
    ];
    v.devices = vec![Device {
        id: Some(7),
        gh_slot: None,
    }];
    out.push(("numa-device", Input::Vm(v)));
    // Many: 64 vCPUs, 6 GiB (RAM above 4 GiB), 4 slots of 4 nodes at distance 40, auto slots.
    let mut v = vm(64, 6 << 10);
    v.numa = vec![
        node(0, Some((0..32).collect()), vec![], None),
        node(1, Some((32..64).collect()), vec![(0, 25), (2, 40)], None),
    ];
    v.gh = Some(gh(4, 4, 40, true, 34));
    v.devices = vec![
        Device {
            id: Some(1),
            gh_slot: Some(255),
        },
        Device {
            id: Some(2),
            gh_slot: Some(2),
        },
        Device {
            id: None,
            gh_slot: None,
        },
    ];
    out.push(("gh-4slots-2nodes", Input::Vm(v)));
    // Refused: a gap in the ids.
    let mut v = vm(2, 512);
    v.numa = vec![node(0, None, vec![], None), node(2, None, vec![], None)];
    out.push(("numa-gap", Input::Vm(v)));
    for (name, base) in [("desc-plain", 0u8), ("desc-numa", 1), ("desc-hotplug", 2)] {
        out.push((
            name,
            Input::Desc(DescInput {
                base,
                cpus: 3,
                segments: 2,
                edits: vec![],
            }),
        ));
    }
    out.into_iter()
        .map(|(name, input)| (name, crate::seed::encode(&input)))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn seeds_hold_the_invariants() {
        for (_, bytes) in super::seeds() {
            super::run(&crate::seed::decode(&bytes).unwrap());
        }
    }
}
