//! Rejects descriptions that would produce tables a guest misreads (duplicate ids, ranges that
//! wrap, names AML cannot express), before any table is built, so every builder can assume a
//! coherent platform and each error names the field at fault.

use std::collections::HashSet;

use crate::ged;
use crate::hotplug::{self, regs, BRIDGE_METHODS};
use crate::names::{aml_name, bridge_name};
use crate::{
    AcpiError, AddrRange, NumaDesc, PciAddress, PciHotplugDesc, PciSegmentDesc, PlatformDesc,
};

/// Each bus decodes 1 MiB of ECAM (32 devices x 8 functions x 4 KiB).
pub(crate) const ECAM_BUS_SHIFT: u32 = 20;

/// Largest MADT we emit: 4096 x2APIC entries keep the tables well inside the 128 KiB BIOS area.
pub(crate) const MAX_CPUS: usize = 4096;

/// x2APIC id 0xFFFF_FFFF is the broadcast address, never a processor.
const X2APIC_BROADCAST: u32 = u32::MAX;

/// The SLIT's n x n bytes must fit an ACPI table's 32-bit length (the ACPI area's limit
/// stops far fewer; how many nodes a guest supports is the VMM's business).
pub(crate) const MAX_NUMA_NODES: usize = 65535;

/// SLIT distances: 10 is a node to itself, 0-9 are reserved, so remote ones are 11-255 (Linux
/// discards a SLIT that breaks this).
const LOCAL_DISTANCE: u8 = 10;

const MAX_PCI_DEVICE: u8 = 31;
const MAX_PCI_FUNCTION: u8 = 7;

/// An AML Package counts its elements in one byte.
const MAX_PACKAGE_ELEMENTS: usize = 255;
/// Device-property names are short (DT's limit is 31); this only keeps nonsense out.
const MAX_DSD_KEY_LEN: usize = 255;

pub(crate) fn platform(desc: &PlatformDesc) -> Result<(), AcpiError> {
    apic_ids(&desc.apic_ids)?;
    let mut seen = HashSet::new();
    for seg in &desc.pci_segments {
        if !seen.insert(seg.segment) {
            return Err(bad(seg.segment, "segment listed twice"));
        }
        segment(seg)?;
        if desc.pci_hotplug.is_some() {
            slot_names(seg)?;
        } else if seg.hotplug_slots != 0 {
            return Err(bad(
                seg.segment,
                "has hot plug slots but the platform has no PCI hot plug controller",
            ));
        }
    }
    if let Some(h) = &desc.pci_hotplug {
        hotplug_registers(h, desc)?;
    }
    if let Some(numa) = &desc.numa {
        self::numa(numa, desc)?;
    }
    // Nodes are numbered 0..n-1 by now, so a domain exists iff it is below n.
    let nodes = desc.numa.as_ref().map_or(0, |n| n.nodes.len());
    for seg in &desc.pci_segments {
        match seg.proximity_domain {
            Some(d) if usize::try_from(d).map_or(true, |d| d >= nodes) => {
                return Err(bad(
                    seg.segment,
                    &format!("_PXM {d} is not the proximity domain of a NUMA node"),
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

fn apic_ids(ids: &[u32]) -> Result<(), AcpiError> {
    if ids.is_empty() {
        return Err(AcpiError::NoCpus);
    }
    if ids.len() > MAX_CPUS {
        return Err(AcpiError::TooManyCpus(ids.len()));
    }
    let mut seen = HashSet::new();
    for &id in ids {
        if id == X2APIC_BROADCAST {
            return Err(AcpiError::BadApicId(id));
        }
        if !seen.insert(id) {
            return Err(AcpiError::DuplicateApicId(id));
        }
    }
    Ok(())
}

fn segment(seg: &PciSegmentDesc) -> Result<(), AcpiError> {
    if seg.bus_end < seg.bus_start {
        return Err(bad(seg.segment, "bus_end is below bus_start"));
    }
    bridge_name(seg.segment)?;
    ecam_range(seg)?;
    if seg.mmio32.len > 0 {
        seg.mmio32
            .last()
            .filter(|l| *l <= u64::from(u32::MAX))
            .ok_or_else(|| bad(seg.segment, "32-bit window does not fit below 4 GiB"))?;
        // DWordMemory's length field is 32 bits: the whole 4 GiB cannot be described.
        if seg.mmio32.len > u64::from(u32::MAX) {
            return Err(bad(seg.segment, "32-bit window must be shorter than 4 GiB"));
        }
    }
    if seg.mmio64.len > 0 {
        seg.mmio64
            .last()
            .ok_or_else(|| bad(seg.segment, "64-bit window wraps around"))?;
    }
    functions(seg)
}

/// The functions' device objects: distinct names and addresses under the host bridge, and
/// `_DSD` properties that AML can encode (a key is an AML String: no NUL, ASCII).
fn functions(seg: &PciSegmentDesc) -> Result<(), AcpiError> {
    let mut names = HashSet::new();
    let mut addrs = HashSet::new();
    for f in &seg.functions {
        let what = if !aml_name(&f.name) {
            format!(
                "function name {:?} is not a 4-character AML name (A-Z, 0-9, _, led by a letter)",
                f.name
            )
        } else if f.device > MAX_PCI_DEVICE || f.function > MAX_PCI_FUNCTION {
            format!(
                "function {}: device {} function {} is not a PCI address (device 0-31, function 0-7)",
                f.name, f.device, f.function
            )
        } else if !names.insert(f.name.as_str()) {
            format!("function name {} is used twice", f.name)
        } else if !addrs.insert((f.device, f.function)) {
            format!(
                "device {} function {} is described twice",
                f.device, f.function
            )
        } else if f.dsd.len() > MAX_PACKAGE_ELEMENTS {
            format!(
                "function {}: {} _DSD properties, an AML Package holds at most 255",
                f.name,
                f.dsd.len()
            )
        } else if let Some(what) = dsd_keys(&f.dsd) {
            format!("function {}: {what}", f.name)
        } else {
            continue;
        };
        return Err(bad(seg.segment, &what));
    }
    Ok(())
}

/// With hot plug, a bridge with slots also holds `Sdd` slot objects and the methods that
/// notify them: a function may not take one of those names (unless it is that slot's
/// function 0, which becomes the slot object).
fn slot_names(seg: &PciSegmentDesc) -> Result<(), AcpiError> {
    if seg.hotplug_slots == 0 {
        return Ok(());
    }
    for f in &seg.functions {
        if BRIDGE_METHODS.contains(&f.name.as_str()) {
            return Err(bad(
                seg.segment,
                &format!(
                    "function name {} is the name of a hot plug method of the host bridge",
                    f.name
                ),
            ));
        }
        let taken = (0..32u8).find(|&d| {
            hotplug::is_slot(seg.hotplug_slots, d)
                && f.name == hotplug::slot_name(d)
                && (f.device, f.function) != (d, 0)
        });
        if let Some(d) = taken {
            return Err(bad(
                seg.segment,
                &format!("function name {} is the name of slot {d}'s object", f.name),
            ));
        }
    }
    Ok(())
}

/// The controller's `regs::LEN` bytes: aligned (the DWord fields must not straddle
/// anything), not wrapping, and clear of the other MMIO the tables describe (the GED
/// register, every segment's ECAM and windows), which the guest would otherwise see decoded
/// twice.
fn hotplug_registers(h: &PciHotplugDesc, desc: &PlatformDesc) -> Result<(), AcpiError> {
    let base = h.mmio_base;
    let what = |w: String| AcpiError::BadHotplug(format!("registers at {base:#x} {w}"));
    if base % regs::LEN != 0 {
        return Err(what(format!("are not {}-byte aligned", regs::LEN)));
    }
    // Unreachable once aligned, but an overflow must not be possible either way.
    let last = base
        .checked_add(regs::LEN - 1)
        .ok_or_else(|| what("wrap around".into()))?;
    let overlaps = |first: u64, other_last: u64| first <= last && base <= other_last;
    let ged = desc.ged.mmio_base;
    // The GED's registers; ones at the very top of the address space end there.
    if overlaps(ged, ged.saturating_add(ged::regs::LEN - 1)) {
        return Err(what(format!(
            "overlap the GED's event register at {ged:#x}"
        )));
    }
    for seg in &desc.pci_segments {
        let (ecam, len) = ecam_range(seg)?;
        let windows = [
            ("ECAM", AddrRange { base: ecam, len }),
            ("32-bit window", seg.mmio32),
            ("64-bit window", seg.mmio64),
        ];
        for (name, r) in windows {
            if r.last().is_some_and(|l| overlaps(r.base, l)) {
                return Err(what(format!(
                    "overlap PCI segment {}'s {name} at {:#x}",
                    seg.segment, r.base
                )));
            }
        }
    }
    Ok(())
}

fn dsd_keys(dsd: &[(String, u64)]) -> Option<String> {
    let mut keys = HashSet::new();
    for (key, _) in dsd {
        let printable = key.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
        if key.is_empty() || key.len() > MAX_DSD_KEY_LEN || !printable {
            return Some(format!(
                "_DSD key {key:?} is not 1-255 printable ASCII characters"
            ));
        }
        if !keys.insert(key.as_str()) {
            return Some(format!("_DSD key {key:?} is listed twice"));
        }
    }
    None
}

/// What a guest needs to trust the SRAT and SLIT: domains the SLIT can index, a sane distance
/// matrix, each vCPU in at most one node, RAM in some node (Linux ignores an SRAT without
/// Memory Affinity, GI nodes included), no RAM in two nodes (Linux then drops NUMA), and
/// Generic Initiators that name a PCI function the platform has a bridge for.
fn numa(numa: &NumaDesc, desc: &PlatformDesc) -> Result<(), AcpiError> {
    let n = numa.nodes.len();
    if n > MAX_NUMA_NODES {
        return Err(AcpiError::TooManyNumaNodes(n));
    }
    for (index, node) in numa.nodes.iter().enumerate() {
        if usize::try_from(node.proximity_domain) != Ok(index) {
            return Err(AcpiError::NumaDomainOrder {
                index,
                domain: node.proximity_domain,
            });
        }
    }
    distances(&numa.distances, n)?;
    let cpus: HashSet<u32> = desc.apic_ids.iter().copied().collect();
    let mut placed = HashSet::new();
    // (first, last, node) of every RAM range.
    let mut ranges = Vec::new();
    for node in &numa.nodes {
        let domain = node.proximity_domain;
        let bad_node = |what: String| AcpiError::BadNumaNode { node: domain, what };
        if node.apic_ids.is_empty() && node.memory.is_empty() && node.generic_initiator.is_none() {
            return Err(bad_node(
                "has no vCPU, memory or Generic Initiator, so a guest would not see it".into(),
            ));
        }
        for &id in &node.apic_ids {
            if !cpus.contains(&id) {
                return Err(AcpiError::UnknownNumaApicId(id));
            }
            if !placed.insert(id) {
                return Err(AcpiError::NumaApicIdTwice(id));
            }
        }
        for m in &node.memory {
            let last = m.last().ok_or_else(|| {
                bad_node(format!(
                    "memory range {:#x} + {:#x} is empty or wraps around",
                    m.base, m.len
                ))
            })?;
            ranges.push((m.base, last, domain));
        }
        if let Some(pci) = &node.generic_initiator {
            generic_initiator(pci, &desc.pci_segments).map_err(bad_node)?;
        }
    }
    if ranges.is_empty() {
        return Err(AcpiError::NoNumaMemory);
    }
    ranges.sort_unstable();
    for w in ranges.windows(2) {
        let ((_, last, a), (first, _, b)) = (w[0], w[1]);
        if first <= last {
            return Err(AcpiError::BadNumaNode {
                node: b,
                what: format!("memory at {first:#x} overlaps memory of node {a}"),
            });
        }
    }
    Ok(())
}

fn distances(d: &[Vec<u8>], n: usize) -> Result<(), AcpiError> {
    if d.len() != n || d.iter().any(|row| row.len() != n) {
        return Err(AcpiError::DistanceMatrixShape(n));
    }
    for (i, row) in d.iter().enumerate() {
        for (j, &distance) in row.iter().enumerate() {
            if i == j && distance != LOCAL_DISTANCE {
                return Err(AcpiError::BadLocalDistance { node: i, distance });
            }
            if i != j && distance <= LOCAL_DISTANCE {
                return Err(AcpiError::BadRemoteDistance {
                    from: i,
                    to: j,
                    distance,
                });
            }
        }
    }
    Ok(())
}

fn generic_initiator(pci: &PciAddress, segments: &[PciSegmentDesc]) -> Result<(), String> {
    if pci.device > MAX_PCI_DEVICE || pci.function > MAX_PCI_FUNCTION {
        return Err(format!(
            "Generic Initiator {pci} is not a PCI address (device 0-31, function 0-7)"
        ));
    }
    match segments.iter().find(|s| s.segment == pci.segment) {
        None => Err(format!(
            "Generic Initiator {pci} is on PCI segment {:#x}, which the platform does not have",
            pci.segment
        )),
        Some(s) if !(s.bus_start..=s.bus_end).contains(&pci.bus) => Err(format!(
            "Generic Initiator {pci} is outside its segment's buses {:#x}-{:#x}",
            s.bus_start, s.bus_end
        )),
        Some(_) => Ok(()),
    }
}

/// The ECAM bytes the segment's buses decode: `(first address, length)`. MCFG's base is the
/// address of bus 0 even when the segment starts at a later bus, so the range starts above it.
pub(crate) fn ecam_range(seg: &PciSegmentDesc) -> Result<(u64, u64), AcpiError> {
    let buses = u64::from(seg.bus_end.saturating_sub(seg.bus_start)) + 1;
    let start = seg
        .ecam_base
        .checked_add(u64::from(seg.bus_start) << ECAM_BUS_SHIFT);
    let len = buses << ECAM_BUS_SHIFT;
    match start {
        Some(s) if s.checked_add(len - 1).is_some() => Ok((s, len)),
        _ => Err(bad(seg.segment, "ECAM range wraps around")),
    }
}

pub(crate) fn bad(segment: u16, what: &str) -> AcpiError {
    AcpiError::BadSegment {
        segment,
        what: what.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{numa_platform, platform as typical};
    use crate::AddrRange;

    #[test]
    fn ecam_range_starts_at_bus_start() {
        let mut s = typical(1).pci_segments[0].clone();
        s.bus_start = 2;
        s.bus_end = 3;
        assert_eq!(ecam_range(&s), Ok((0xe020_0000, 2 << 20)));
        s.ecam_base = u64::MAX - (1 << 20);
        assert!(ecam_range(&s).is_err());
        s.ecam_base = u64::MAX;
        s.bus_start = 0;
        s.bus_end = 0;
        assert!(ecam_range(&s).is_err());
        s.ecam_base = u64::MAX - ((1 << 20) - 1);
        assert!(ecam_range(&s).is_ok(), "the last MiB of the address space");
    }

    #[test]
    fn apic_ids_must_be_unique_and_addressable() {
        let mut p = typical(2);
        assert_eq!(platform(&p), Ok(()));
        p.apic_ids = vec![3, 3];
        assert_eq!(platform(&p), Err(AcpiError::DuplicateApicId(3)));
        p.apic_ids = vec![u32::MAX];
        assert_eq!(platform(&p), Err(AcpiError::BadApicId(u32::MAX)));
        p.apic_ids.clear();
        assert_eq!(platform(&p), Err(AcpiError::NoCpus));
    }

    #[test]
    fn windows_must_fit_their_descriptors() {
        let mut p = typical(1);
        p.pci_segments[0].mmio32 = crate::AddrRange {
            base: 0,
            len: 1 << 32,
        };
        assert!(platform(&p).is_err(), "DWordMemory cannot say 4 GiB");
        p.pci_segments[0].mmio32.len = (1 << 32) - 1;
        assert_eq!(platform(&p), Ok(()));
        p.pci_segments[0].mmio64 = crate::AddrRange {
            base: 2,
            len: u64::MAX,
        };
        assert!(platform(&p).is_err(), "wraps");
        p.pci_segments[0].mmio64.base = 0;
        assert_eq!(platform(&p), Ok(()), "QWordMemory can say 2^64 - 1");
    }

    #[test]
    fn segments_must_be_unique() {
        let mut p = typical(1);
        p.pci_segments.push(p.pci_segments[0].clone());
        assert!(matches!(
            platform(&p),
            Err(AcpiError::BadSegment { segment: 0, .. })
        ));
    }

    /// `numa_platform(4)` after `change`: the validation error it gives.
    fn numa_error(change: impl FnOnce(&mut PlatformDesc)) -> AcpiError {
        let mut p = numa_platform(4);
        change(&mut p);
        platform(&p).unwrap_err()
    }

    fn numa(p: &mut PlatformDesc) -> &mut crate::NumaDesc {
        p.numa.as_mut().unwrap()
    }

    fn bad_node(e: AcpiError, node: u32, needle: &str) {
        match e {
            AcpiError::BadNumaNode { node: n, what } if n == node && what.contains(needle) => {}
            e => panic!("expected node {node} {needle:?}, got {e:?}"),
        }
    }

    fn bad_segment(e: AcpiError, segment: u16, needle: &str) {
        match e {
            AcpiError::BadSegment { segment: s, what } if s == segment && what.contains(needle) => {
            }
            e => panic!("expected segment {segment} {needle:?}, got {e:?}"),
        }
    }

    #[test]
    fn the_numa_platform_is_valid() {
        assert_eq!(platform(&numa_platform(4)), Ok(()));
        assert_eq!(platform(&numa_platform(300)), Ok(()));
    }

    #[test]
    fn proximity_domains_are_0_to_n_minus_1_in_order() {
        let order = |index, domain| AcpiError::NumaDomainOrder { index, domain };
        assert_eq!(
            numa_error(|p| numa(p).nodes.swap(0, 1)),
            order(0, 1),
            "swapped"
        );
        assert_eq!(
            numa_error(|p| numa(p).nodes[3].proximity_domain = 2),
            order(3, 2),
            "duplicate"
        );
        assert_eq!(
            numa_error(|p| numa(p).nodes[9].proximity_domain = 64),
            order(9, 64),
            "gap"
        );
        assert_eq!(
            numa_error(|p| numa(p).nodes[0].proximity_domain = u32::MAX),
            order(0, u32::MAX)
        );
    }

    #[test]
    fn too_many_nodes_is_refused_before_reading_distances() {
        let e = numa_error(|p| {
            let node = numa(p).nodes[2].clone();
            numa(p).nodes = vec![node; MAX_NUMA_NODES + 1];
        });
        assert_eq!(e, AcpiError::TooManyNumaNodes(MAX_NUMA_NODES + 1));
    }

    #[test]
    fn distances_are_an_n_by_n_slit() {
        let shape = AcpiError::DistanceMatrixShape(10);
        assert_eq!(numa_error(|p| drop(numa(p).distances.pop())), shape);
        assert_eq!(
            numa_error(|p| {
                numa(p).distances[4].pop();
            }),
            shape
        );
        assert_eq!(numa_error(|p| numa(p).distances[4].push(30)), shape);
        assert_eq!(numa_error(|p| numa(p).distances.push(vec![30; 10])), shape);
        assert_eq!(
            numa_error(|p| numa(p).distances[3][3] = 11),
            AcpiError::BadLocalDistance {
                node: 3,
                distance: 11
            }
        );
        for distance in [0, 9, 10] {
            assert_eq!(
                numa_error(|p| numa(p).distances[1][7] = distance),
                AcpiError::BadRemoteDistance {
                    from: 1,
                    to: 7,
                    distance
                }
            );
        }
        let mut p = numa_platform(4);
        numa(&mut p).distances[1][7] = 255;
        numa(&mut p).distances[7][1] = 11;
        assert_eq!(platform(&p), Ok(()), "unreachable, nearest, asymmetric");
    }

    #[test]
    fn some_node_has_memory() {
        let e = numa_error(|p| numa(p).nodes.iter_mut().for_each(|n| n.memory.clear()));
        assert_eq!(e, AcpiError::NoNumaMemory);
        let e = numa_error(|p| {
            numa(p).nodes.clear();
            numa(p).distances.clear();
        });
        assert_eq!(e, AcpiError::NoNumaMemory);
    }

    #[test]
    fn each_vcpu_in_at_most_one_node() {
        let e = numa_error(|p| numa(p).nodes[1].apic_ids.push(0));
        assert_eq!(e, AcpiError::NumaApicIdTwice(0));
        let e = numa_error(|p| numa(p).nodes[1].apic_ids.push(3));
        assert_eq!(e, AcpiError::NumaApicIdTwice(3), "twice in one node");
        let e = numa_error(|p| numa(p).nodes[2].apic_ids.push(4));
        assert_eq!(e, AcpiError::UnknownNumaApicId(4));
        let e = numa_error(|p| numa(p).nodes[0].apic_ids.push(u32::MAX));
        assert_eq!(e, AcpiError::UnknownNumaApicId(u32::MAX));
        let mut p = numa_platform(4);
        numa(&mut p).nodes[1].apic_ids.pop();
        assert_eq!(platform(&p), Ok(()), "a vCPU may be in no node");
    }

    #[test]
    fn memory_ranges_are_real_and_disjoint() {
        let range = |base, len| AddrRange { base, len };
        let e = numa_error(|p| numa(p).nodes[1].memory.push(range(8 << 30, 0)));
        bad_node(e, 1, "empty or wraps");
        let e = numa_error(|p| numa(p).nodes[1].memory.push(range(u64::MAX, 2)));
        bad_node(e, 1, "empty or wraps");
        let e = numa_error(|p| numa(p).nodes[0].memory[0] = range(0, (4 << 30) + 1));
        bad_node(e, 1, "overlaps memory of node 0");
        let e = numa_error(|p| numa(p).nodes[0].memory.push(range(1 << 29, 1)));
        bad_node(e, 0, "overlaps memory of node 0");
        let mut p = numa_platform(4);
        numa(&mut p).nodes[0].memory[0] = range(0, 4 << 30);
        numa(&mut p).nodes[5].memory.push(range(u64::MAX, 1));
        assert_eq!(
            platform(&p),
            Ok(()),
            "adjacent ranges, the last byte, a GI with memory"
        );
    }

    #[test]
    fn every_node_has_something() {
        let e = numa_error(|p| numa(p).nodes[4].generic_initiator = None);
        bad_node(e, 4, "no vCPU, memory or Generic Initiator");
    }

    #[test]
    fn generic_initiators_name_a_function_the_platform_has() {
        let e = numa_error(|p| numa(p).nodes[3].generic_initiator.as_mut().unwrap().segment = 2);
        bad_node(
            e,
            3,
            "0002:00:00.0 is on PCI segment 0x2, which the platform does not have",
        );
        let e = numa_error(|p| numa(p).nodes[3].generic_initiator.as_mut().unwrap().bus = 1);
        bad_node(e, 3, "0001:01:00.0 is outside its segment's buses 0x0-0x0");
        let e = numa_error(|p| numa(p).nodes[3].generic_initiator.as_mut().unwrap().device = 32);
        bad_node(e, 3, "0001:00:20.0 is not a PCI address");
        let e = numa_error(|p| {
            numa(p).nodes[3]
                .generic_initiator
                .as_mut()
                .unwrap()
                .function = 8
        });
        bad_node(e, 3, "0001:00:00.8 is not a PCI address");
        let mut p = numa_platform(4);
        let gi = numa(&mut p).nodes[9].generic_initiator.as_mut().unwrap();
        (gi.segment, gi.device, gi.function) = (0, 31, 7);
        assert_eq!(platform(&p), Ok(()));
    }

    #[test]
    fn pxm_names_a_numa_node() {
        let e = numa_error(|p| p.pci_segments[1].proximity_domain = Some(10));
        bad_segment(e, 1, "_PXM 10 is not the proximity domain of a NUMA node");
        let e = numa_error(|p| p.pci_segments[1].proximity_domain = Some(u32::MAX));
        bad_segment(e, 1, "_PXM 4294967295");
        let e = numa_error(|p| p.numa = None);
        bad_segment(e, 1, "_PXM 0 is not");
        let mut p = numa_platform(4);
        p.pci_segments[0].proximity_domain = Some(9);
        assert_eq!(platform(&p), Ok(()), "any node, a GI node too");
    }

    #[test]
    fn functions_have_addresses_and_aml_names() {
        fn f(p: &mut PlatformDesc) -> &mut crate::PciFunctionDesc {
            &mut p.pci_segments[1].functions[0]
        }
        bad_segment(numa_error(|p| f(p).device = 32), 1, "device 32 function 0");
        bad_segment(numa_error(|p| f(p).function = 8), 1, "device 0 function 8");
        for name in ["gpu0", "GPU", "GPU00", "_GPU", "0GPU", "GP-0", "GPÜ", ""] {
            let e = numa_error(|p| f(p).name = name.into());
            bad_segment(e, 1, "is not a 4-character AML name");
        }
        let twin = |p: &mut PlatformDesc| {
            let mut twin = p.pci_segments[1].functions[0].clone();
            twin.function = 1;
            p.pci_segments[1].functions.push(twin);
        };
        bad_segment(numa_error(twin), 1, "function name GPU0 is used twice");
        let e = numa_error(|p| {
            twin(p);
            p.pci_segments[1].functions[1].name = "GPU1".into();
            p.pci_segments[1].functions[1].function = 0;
        });
        bad_segment(e, 1, "device 0 function 0 is described twice");
        // The same name and address on another segment is another bridge's child: fine.
        let mut p = numa_platform(4);
        let f0 = p.pci_segments[1].functions[0].clone();
        p.pci_segments[0].functions.push(f0);
        assert_eq!(platform(&p), Ok(()));
    }

    #[test]
    fn dsd_properties_fit_aml() {
        fn dsd(p: &mut PlatformDesc) -> &mut Vec<(String, u64)> {
            &mut p.pci_segments[1].functions[0].dsd
        }
        let e = numa_error(|p| *dsd(p) = (0..256).map(|i| (format!("k{i}"), i)).collect());
        bad_segment(e, 1, "256 _DSD properties");
        for key in ["", "a\0b", "é", "tab\t", &"k".repeat(256)] {
            let e = numa_error(|p| dsd(p).push((key.into(), 1)));
            bad_segment(e, 1, "is not 1-255 printable ASCII characters");
        }
        let e = numa_error(|p| dsd(p).push(("nvidia,gpu-mem-pxm-count".into(), 1)));
        bad_segment(e, 1, "\"nvidia,gpu-mem-pxm-count\" is listed twice");
        let mut p = numa_platform(4);
        *dsd(&mut p) = (0..255).map(|i| (format!("k {i}"), u64::MAX)).collect();
        dsd(&mut p)[0].0 = "k".repeat(255);
        assert_eq!(platform(&p), Ok(()));
    }

    fn hotplug_error(change: impl FnOnce(&mut PlatformDesc)) -> AcpiError {
        let mut p = crate::testutil::hotplug_platform(4);
        change(&mut p);
        platform(&p).unwrap_err()
    }

    fn bad_hotplug(e: AcpiError, needle: &str) {
        match e {
            AcpiError::BadHotplug(what) if what.contains(needle) => {}
            e => panic!("expected {needle:?}, got {e:?}"),
        }
    }

    #[test]
    fn the_hotplug_platforms_are_valid() {
        assert_eq!(platform(&crate::testutil::hotplug_platform(4)), Ok(()));
        let p = crate::testutil::hotplug_platform_with(255, 16);
        assert_eq!(platform(&p), Ok(()));
    }

    #[test]
    fn slots_need_the_controller() {
        let e = numa_error(|p| p.pci_segments[1].hotplug_slots = 1);
        bad_segment(
            e,
            1,
            "has hot plug slots but the platform has no PCI hot plug controller",
        );
        let mut p = crate::testutil::hotplug_platform(4);
        p.pci_segments.iter_mut().for_each(|s| s.hotplug_slots = 0);
        assert_eq!(
            platform(&p),
            Ok(()),
            "a controller without slots is pointless, not wrong"
        );
    }

    #[test]
    fn hotplug_registers_are_aligned_and_alone() {
        let set =
            |base| move |p: &mut PlatformDesc| p.pci_hotplug.as_mut().unwrap().mmio_base = base;
        for base in [0xfed0_1004, 0xfed0_1001, u64::MAX] {
            bad_hotplug(hotplug_error(set(base)), "are not 16-byte aligned");
        }
        bad_hotplug(
            hotplug_error(set(0xfed0_0000)),
            "registers at 0xfed00000 overlap the GED's event register at 0xfed00000",
        );
        let e = hotplug_error(|p| {
            set(0xfed0_0000)(p);
            p.ged.mmio_base = 0xfed0_000c;
        });
        bad_hotplug(e, "overlap the GED's event register at 0xfed0000c");
        bad_hotplug(
            hotplug_error(set(0xe01f_fff0)),
            "overlap PCI segment 1's ECAM at 0xe0100000",
        );
        bad_hotplug(
            hotplug_error(set(0xc000_0000)),
            "overlap PCI segment 0's 32-bit window at 0xc0000000",
        );
        bad_hotplug(
            hotplug_error(set(600 << 30)),
            "overlap PCI segment 1's 64-bit window at 0x8000000000",
        );
        let mut p = crate::testutil::hotplug_platform(4);
        for base in [0xfed0_0010, 0xe030_0000, 0, u64::MAX - 15] {
            set(base)(&mut p);
            assert_eq!(platform(&p), Ok(()), "{base:#x}");
        }
        p.ged.mmio_base = u64::MAX;
        assert!(
            platform(&p).is_err(),
            "a GED register at the top still overlaps"
        );
    }

    #[test]
    fn functions_leave_the_slot_names_alone() {
        let name = |n: &'static str, device: u8, function: u8| {
            move |p: &mut PlatformDesc| {
                let f = &mut p.pci_segments[1].functions[0];
                (f.name, f.device, f.function) = (n.into(), device, function);
            }
        };
        bad_segment(
            hotplug_error(name("S05_", 3, 0)),
            1,
            "function name S05_ is the name of slot 5's object",
        );
        bad_segment(
            hotplug_error(name("S05_", 5, 1)),
            1,
            "function name S05_ is the name of slot 5's object",
        );
        for method in ["PCNT", "DVNT"] {
            bad_segment(
                hotplug_error(name(method, 0, 0)),
                1,
                "is the name of a hot plug method of the host bridge",
            );
        }
        let mut p = crate::testutil::hotplug_platform(4);
        name("S05_", 5, 0)(&mut p);
        assert_eq!(platform(&p), Ok(()), "function 0 of slot 5 is its object");
        p.pci_segments[1].hotplug_slots = !(1 << 7);
        name("S07_", 7, 3)(&mut p);
        assert_eq!(platform(&p), Ok(()), "device 7 is not a slot");
        let mut p = numa_platform(4);
        name("PCNT", 0, 0)(&mut p);
        assert_eq!(platform(&p), Ok(()), "no hot plug, no PCNT method");
    }

    #[test]
    fn every_error_is_one_line() {
        let errors = [
            numa_error(|p| numa(p).nodes.swap(0, 1)),
            numa_error(|p| drop(numa(p).distances.pop())),
            numa_error(|p| numa(p).nodes[3].generic_initiator.as_mut().unwrap().segment = 2),
            numa_error(|p| numa(p).distances[1][7] = 3),
            hotplug_error(|p| p.pci_hotplug.as_mut().unwrap().mmio_base = 0xe000_0000),
            AcpiError::TableTooLarge {
                signature: "SRAT".into(),
                size: 1 << 32,
            },
        ];
        for e in errors {
            let text = e.to_string();
            assert!(!text.contains('\n') && !text.contains("  "), "{text:?}");
        }
    }
}
