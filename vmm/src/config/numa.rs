//! The guest NUMA topology: `--numa`, `--gh` and `--device gh_slot=` resolved into one list of
//! nodes, one distance matrix and the GH slot plan, checked against each other.
//!
//! Why GPUs need NUMA at all: NVIDIA's guest driver onlines a coherent GPU's memory into
//! empty NUMA nodes that the SRAT describes as Generic Initiator nodes of the GPU (up to 8;
//! see docs/background.md). Those nodes have no CPUs and no memory of their
//! own, so the guest must also get a node for its vCPUs and RAM; this module decides all of
//! it, and the ACPI code only writes it down.
//!
//! Numbering: the proximity domain of a node is its index in `Topology::nodes`. The SLIT is
//! an n x n matrix indexed by domain, so domains are contiguous: `--numa` ids must be exactly
//! 0..M-1 (refused otherwise, not renumbered, so that the id the user wrote is the node the
//! guest sees), and the GH nodes follow them.
//!
//! Everything here is pure: the VMM calls `resolve` once, the CLI calls it too to refuse a
//! bad command line before anything is opened.

use crate::config::{ConfigError, DeviceConfig, GhSlotRequest, VmConfig, MAX_NUMA_NODES};

type Result<T> = std::result::Result<T, ConfigError>;

/// Distance of a node to itself in the SLIT (ACPI 6.5, 5.2.17).
pub const LOCAL_DISTANCE: u8 = 10;
/// Distance between two `--numa` nodes when neither names the other (QEMU's default too).
pub const DEFAULT_DISTANCE: u8 = 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Nodes in proximity-domain order 0..n-1 (contiguous: the SLIT is indexed by domain).
    pub nodes: Vec<Node>,
    /// `distances[i][j]` from `nodes[i]` to `nodes[j]`; 10 on the diagonal.
    pub distances: Vec<Vec<u8>>,
    /// Index into `nodes` of the lowest node with vCPUs: it holds all guest RAM unless
    /// `--numa memory_zones=` spreads it, and the PCI segments' `_PXM` names it.
    pub memory_node: usize,
    /// GH slots in order: slot k = PCI segment k+1.
    pub slots: Vec<GhSlot>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Also the node's proximity domain and its index in `Topology::nodes`.
    pub guest_numa_id: u32,
    /// vCPU indexes, sorted; empty for Generic Initiator nodes.
    pub cpus: Vec<u8>,
    /// Indexes into `MemoryConfig::layout_zones()` of the RAM in this node.
    pub zones: Vec<usize>,
    pub initiator: Option<Initiator>,
}

/// Whose Generic Initiator node a node is (an SRAT Generic Initiator Affinity entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Initiator {
    /// `--numa device_id=ID`: index into `VmConfig::devices` of the device with that id.
    Device(usize),
    /// One of the `nodes` of this GH slot: the device at 00.0 of segment slot+1.
    GhSlot(u16),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GhSlot {
    pub index: u16,
    /// PCI segment of the slot; its GPU sits at bus 0, devfn 0 (the guest driver needs devfn 0).
    pub segment: u16,
    /// Indexes into `Topology::nodes` of this slot's Generic Initiator nodes, ascending.
    pub nodes: Vec<usize>,
    /// Index into `VmConfig::devices` of the device placed here at boot, if any.
    pub device: Option<usize>,
    pub dsd: bool,
    /// 64-bit BAR space reserved for the slot.
    pub bar_space: u64,
}

impl Topology {
    /// The GH slot the device `VmConfig::devices[device_index]` was placed in.
    pub fn slot_of_device(&self, device_index: usize) -> Option<&GhSlot> {
        self.slots.iter().find(|s| s.device == Some(device_index))
    }

    /// The proximity domain of a vCPU (for its SRAT processor affinity entry).
    pub fn domain_of_cpu(&self, cpu: u8) -> Option<u32> {
        self.nodes
            .iter()
            .find(|n| n.cpus.contains(&cpu))
            .map(|n| n.guest_numa_id)
    }
}

fn inconsistent(option: &'static str, reason: String) -> ConfigError {
    ConfigError::Inconsistent { option, reason }
}

/// How a device is named in messages: its id when it has one, else its path.
fn describe(d: &DeviceConfig) -> String {
    match &d.id {
        Some(id) => format!("id={id}"),
        None => format!("{}={}", d.source.key(), d.source.path().display()),
    }
}

/// Resolves the NUMA options of `cfg` into one topology, or `None` when there is neither
/// `--numa` nor `--gh` (the guest then gets no SRAT or SLIT at all).
///
/// Rules, in the order they are checked:
/// - at most `MAX_NUMA_NODES` nodes in all (`--numa` nodes, or the implicit node 0 that
///   holds everything when there is no `--numa`, plus `slots x nodes` GH nodes);
/// - `--numa` ids unique and exactly 0..M-1; GH slot k's nodes are M + k*nodes ..;
/// - `device_id` names an existing `--device` that is not also in a GH slot (the slot
///   already gives that device its Generic Initiator nodes);
/// - if any `--numa` lists cpus, each vCPU 0..boot-1 is in exactly one node; if none does,
///   all vCPUs go to the lowest node that is not a Generic Initiator node;
/// - RAM: each `--memory-zone` is in the one node whose `memory_zones=` names it (once any
///   node names zones, every zone must be named); otherwise all RAM is in the lowest node
///   with vCPUs;
/// - distances: 10 on the diagonal; GH nodes at `--gh distance` from every other node;
///   other pairs 20; a `--numa distances` item overrides from->to, and to->from as well
///   unless that node gives its own value; destinations must exist;
/// - `gh_slot` needs `--gh` and a slot below `slots`, one device per slot; `auto` takes the
///   lowest slot not asked for by number, in command-line order.
pub fn resolve(cfg: &VmConfig) -> Result<Option<Topology>> {
    if cfg.gh.is_none() {
        if let Some(d) = cfg.devices.iter().find(|d| d.gh_slot.is_some()) {
            return Err(inconsistent(
                "device",
                format!("{}: gh_slot needs --gh", describe(d)),
            ));
        }
        if cfg.numa.is_empty() {
            return Ok(None);
        }
    }
    let (slots, per_slot) = cfg.gh.as_ref().map_or((0, 0), |g| (g.slots, g.nodes));
    let user_count = cfg.numa.len().max(1);
    let total = user_count + slots as usize * per_slot as usize;
    if total > MAX_NUMA_NODES {
        let (option, reason) = match &cfg.gh {
            None => ("numa", format!("{total} nodes")),
            Some(_) => (
                "gh",
                format!("slots={slots} x nodes={per_slot} plus {user_count} non-GH node(s) is {total} nodes"),
            ),
        };
        return Err(inconsistent(
            option,
            format!("{reason}; a guest supports at most {MAX_NUMA_NODES}"),
        ));
    }

    let mut nodes = user_nodes(cfg)?;
    let memory_node = nodes
        .iter()
        .position(|n| !n.cpus.is_empty())
        .ok_or_else(|| inconsistent("cpus", "no vCPU to place in a NUMA node".into()))?;
    assign_zones(cfg, &mut nodes, memory_node)?;
    let placed = place_devices(cfg, slots)?;
    let mut gh_slots = Vec::with_capacity(slots as usize);
    if let Some(gh) = &cfg.gh {
        for k in 0..gh.slots {
            let first = nodes.len();
            for _ in 0..gh.nodes {
                nodes.push(Node {
                    guest_numa_id: nodes.len() as u32,
                    cpus: Vec::new(),
                    zones: Vec::new(),
                    initiator: Some(Initiator::GhSlot(k)),
                });
            }
            gh_slots.push(GhSlot {
                index: k,
                segment: k + 1,
                nodes: (first..nodes.len()).collect(),
                device: placed[k as usize],
                dsd: gh.dsd,
                bar_space: gh.bar_space,
            });
        }
    }
    // The guest learns of a node only through its SRAT entries: one with no vCPU, no RAM
    // and no device would be a SLIT row for a node that does not exist.
    if let Some(n) = nodes.iter().enumerate().find_map(|(i, n)| {
        (i != memory_node && n.cpus.is_empty() && n.zones.is_empty() && n.initiator.is_none())
            .then_some(n)
    }) {
        return Err(inconsistent(
            "numa",
            format!(
                "guest_numa_id={}: the node has no vCPUs, no memory and no device_id, so the guest would not see it",
                n.guest_numa_id
            ),
        ));
    }
    let gh_distance = cfg.gh.as_ref().map(|g| g.distance);
    let distances = distances(cfg, &nodes, gh_distance)?;
    Ok(Some(Topology {
        nodes,
        distances,
        memory_node,
        slots: gh_slots,
    }))
}

/// The `--numa` nodes in id order with their vCPUs, or the implicit node 0 holding all vCPUs.
fn user_nodes(cfg: &VmConfig) -> Result<Vec<Node>> {
    let boot = cfg.cpus.boot;
    if cfg.numa.is_empty() {
        return Ok(vec![Node {
            guest_numa_id: 0,
            cpus: (0..boot).collect(),
            zones: Vec::new(),
            initiator: None,
        }]);
    }
    let m = cfg.numa.len();
    // by_id[id] = index into cfg.numa; an id >= m can only mean a gap, reported below.
    let mut by_id: Vec<Option<usize>> = vec![None; m];
    for (i, n) in cfg.numa.iter().enumerate() {
        let id = n.guest_numa_id;
        if cfg.numa[..i].iter().any(|o| o.guest_numa_id == id) {
            return Err(inconsistent(
                "numa",
                format!("guest_numa_id={id} is given twice"),
            ));
        }
        if let Some(s) = by_id.get_mut(id as usize) {
            *s = Some(i);
        }
    }
    if let Some(missing) = by_id.iter().position(Option::is_none) {
        return Err(inconsistent(
            "numa",
            format!(
                "guest_numa_id={missing} is missing: the ids must be 0..{} without gaps (the SLIT is indexed by them)",
                m - 1
            ),
        ));
    }
    let ordered: Vec<_> = by_id.into_iter().flatten().map(|i| &cfg.numa[i]).collect();

    let mut nodes = Vec::with_capacity(m);
    for n in &ordered {
        let initiator = match &n.device_id {
            None => None,
            Some(id) => {
                let (index, dev) = cfg
                    .devices
                    .iter()
                    .enumerate()
                    .find(|(_, d)| d.id.as_ref() == Some(id))
                    .ok_or_else(|| {
                        inconsistent(
                            "numa",
                            format!(
                                "guest_numa_id={}: device_id={id}: no --device has id={id}",
                                n.guest_numa_id
                            ),
                        )
                    })?;
                if dev.gh_slot.is_some() {
                    return Err(inconsistent(
                        "numa",
                        format!(
                            "guest_numa_id={}: device_id={id}: that device is in a GH slot, which already gives it its nodes",
                            n.guest_numa_id
                        ),
                    ));
                }
                Some(Initiator::Device(index))
            }
        };
        nodes.push(Node {
            guest_numa_id: n.guest_numa_id,
            cpus: Vec::new(),
            zones: Vec::new(),
            initiator,
        });
    }

    if ordered.iter().any(|n| n.cpus.is_some()) {
        let mut owner: Vec<Option<u32>> = vec![None; boot as usize];
        for (node, n) in nodes.iter_mut().zip(&ordered) {
            let id = n.guest_numa_id;
            for &cpu in n.cpus.iter().flatten() {
                match owner.get_mut(cpu as usize) {
                    None => {
                        return Err(inconsistent(
                            "numa",
                            format!(
                                "guest_numa_id={id}: vCPU {cpu} does not exist (--cpus boot={boot})"
                            ),
                        ))
                    }
                    Some(Some(other)) => {
                        return Err(inconsistent(
                            "numa",
                            format!("vCPU {cpu} is in both node {other} and node {id}"),
                        ))
                    }
                    Some(o) => *o = Some(id),
                }
            }
            node.cpus = n.cpus.clone().unwrap_or_default();
        }
        if let Some(cpu) = owner.iter().position(Option::is_none) {
            return Err(inconsistent(
                "numa",
                format!(
                    "vCPU {cpu} is in no node (once one node lists cpus, all vCPUs must be listed)"
                ),
            ));
        }
    } else {
        let home = nodes
            .iter_mut()
            .find(|n| n.initiator.is_none())
            .ok_or_else(|| {
                inconsistent(
                    "numa",
                    "every node is a device_id (Generic Initiator) node; the vCPUs and RAM need one that is not".into(),
                )
            })?;
        home.cpus = (0..boot).collect();
    }
    Ok(nodes)
}

/// Gives each node its memory zones: those its `--numa memory_zones=` names, every zone
/// named exactly once; without any `memory_zones=`, all RAM goes to `memory_node`.
fn assign_zones(cfg: &VmConfig, nodes: &mut [Node], memory_node: usize) -> Result<()> {
    let zones = cfg.memory.layout_zones();
    if cfg.numa.iter().all(|n| n.memory_zones.is_empty()) {
        nodes[memory_node].zones = (0..zones.len()).collect();
        return Ok(());
    }
    let mut owner: Vec<Option<u32>> = vec![None; zones.len()];
    for n in &cfg.numa {
        let id = n.guest_numa_id;
        for name in &n.memory_zones {
            let z = zones
                .iter()
                .position(|z| z.id.as_deref() == Some(name.as_str()))
                .ok_or_else(|| {
                    inconsistent(
                        "numa",
                        format!("guest_numa_id={id}: memory_zones: no --memory-zone has id={name}"),
                    )
                })?;
            if let Some(other) = owner[z].replace(id) {
                return Err(inconsistent(
                    "numa",
                    format!("memory zone {name} is in both node {other} and node {id}"),
                ));
            }
            // Nodes are in id order and ids are 0..M-1 (user_nodes checked).
            nodes[id as usize].zones.push(z);
        }
    }
    if let Some(z) = owner.iter().position(Option::is_none) {
        return Err(inconsistent(
            "numa",
            format!(
                "memory zone {} is in no node (once one node lists memory_zones, every zone must be listed)",
                zones[z].id.as_deref().unwrap_or("of --memory size=")
            ),
        ));
    }
    for n in nodes.iter_mut() {
        n.zones.sort_unstable();
    }
    Ok(())
}

/// The device placed in each GH slot (index into `cfg.devices`), explicit requests first.
fn place_devices(cfg: &VmConfig, slots: u16) -> Result<Vec<Option<usize>>> {
    let mut placed: Vec<Option<usize>> = vec![None; slots as usize];
    for (i, d) in cfg.devices.iter().enumerate() {
        if let Some(GhSlotRequest::Index(k)) = d.gh_slot {
            let slot = placed.get_mut(k as usize).ok_or_else(|| {
                inconsistent(
                    "device",
                    format!(
                        "{}: gh_slot={k}: --gh slots={slots} has slots 0 to {}",
                        describe(d),
                        slots.saturating_sub(1)
                    ),
                )
            })?;
            if let Some(other) = *slot {
                return Err(inconsistent(
                    "device",
                    format!(
                        "{}: gh_slot={k}: slot {k} already holds {}",
                        describe(d),
                        describe(&cfg.devices[other])
                    ),
                ));
            }
            *slot = Some(i);
        }
    }
    for (i, d) in cfg.devices.iter().enumerate() {
        if d.gh_slot == Some(GhSlotRequest::Auto) {
            let slot = placed.iter_mut().find(|s| s.is_none()).ok_or_else(|| {
                inconsistent(
                    "device",
                    format!(
                        "{}: gh_slot=auto: all {slots} GH slots are taken",
                        describe(d)
                    ),
                )
            })?;
            *slot = Some(i);
        }
    }
    Ok(placed)
}

/// The SLIT. `nodes` are all nodes, `--numa` ones first (their index is their id).
fn distances(cfg: &VmConfig, nodes: &[Node], gh_distance: Option<u8>) -> Result<Vec<Vec<u8>>> {
    let n = nodes.len();
    let is_gh = |i: usize| matches!(nodes[i].initiator, Some(Initiator::GhSlot(_)));
    let mut d = vec![vec![DEFAULT_DISTANCE; n]; n];
    for (i, row) in d.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            if i == j {
                *v = LOCAL_DISTANCE;
            } else if let (Some(g), true) = (gh_distance, is_gh(i) || is_gh(j)) {
                *v = g;
            }
        }
    }
    // Explicit values first, then their mirror where the other node gave none, so the
    // result does not depend on the order of the options.
    let mut given = vec![vec![false; n]; n];
    for node in &cfg.numa {
        let from = node.guest_numa_id as usize;
        for &(to, dist) in &node.distances {
            let to_idx = to as usize;
            if to_idx >= n {
                return Err(inconsistent(
                    "numa",
                    format!(
                        "guest_numa_id={from}: distances: node {to} does not exist (nodes are 0 to {})",
                        n - 1
                    ),
                ));
            }
            d[from][to_idx] = dist;
            given[from][to_idx] = true;
        }
    }
    for i in 0..n {
        for j in 0..n {
            if given[i][j] && !given[j][i] {
                d[j][i] = d[i][j];
            }
        }
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{
        CpusConfig, DeviceConfig, GhConfig, MemoryConfig, NumaConfig, PlatformConfig, SerialConfig,
    };

    fn cfg(boot: u8, numa: &[&str], gh: Option<&str>, devices: &[&str]) -> VmConfig {
        VmConfig {
            kernel: "/k".into(),
            initramfs: None,
            cmdline: String::new(),
            cpus: CpusConfig { boot },
            memory: MemoryConfig::new(1 << 30),
            serial: SerialConfig::Off,
            platform: PlatformConfig::default(),
            devices: devices
                .iter()
                .map(|d| DeviceConfig::parse(d).unwrap())
                .collect(),
            numa: numa.iter().map(|n| NumaConfig::parse(n).unwrap()).collect(),
            gh: gh.map(|g| GhConfig::parse(g).unwrap()),
            api_socket: None,
            seccomp: Default::default(),
        }
    }

    fn topo(boot: u8, numa: &[&str], gh: Option<&str>, devices: &[&str]) -> Topology {
        resolve(&cfg(boot, numa, gh, devices)).unwrap().unwrap()
    }

    /// `cfg` with the RAM in `--memory-zone`s.
    fn zoned(boot: u8, numa: &[&str], zones: &[&str]) -> Result<Option<Topology>> {
        let mut c = cfg(boot, numa, None, &[]);
        c.memory = MemoryConfig::parse("size=0")?.with_zones(
            zones
                .iter()
                .map(|z| crate::config::MemoryZoneConfig::parse(z).unwrap())
                .collect(),
        )?;
        resolve(&c)
    }

    #[test]
    fn memory_zones_spread_ram_over_nodes() {
        let zones = ["id=m0,size=1G", "id=m1,size=512M", "id=m2,size=256M"];
        // Cloud Hypervisor's memory.md example, plus a node of memory only (a GPU-less
        // CXL-like node) and a GH-like CPU node holding two zones.
        let t = zoned(
            2,
            &[
                "guest_numa_id=0,cpus=0-1,memory_zones=m0:m2",
                "guest_numa_id=1,memory_zones=[m1]",
            ],
            &zones,
        )
        .unwrap()
        .unwrap();
        assert_eq!(t.nodes[0].zones, [0, 2]);
        assert_eq!(t.nodes[1].zones, [1]);
        assert!(t.nodes[1].cpus.is_empty());
        // Without memory_zones= every zone is in the lowest node with vCPUs.
        let t = zoned(
            2,
            &["guest_numa_id=0,cpus=0", "guest_numa_id=1,cpus=1"],
            &zones,
        )
        .unwrap()
        .unwrap();
        assert_eq!((t.nodes[0].zones.len(), t.nodes[1].zones.len()), (3, 0));
        let e = |numa: &[&str]| zoned(2, numa, &zones).unwrap_err().to_string();
        assert_eq!(
            e(&["guest_numa_id=0,memory_zones=m0:m1:m2:m9"]),
            "--numa: guest_numa_id=0: memory_zones: no --memory-zone has id=m9"
        );
        assert_eq!(
            e(&[
                "guest_numa_id=0,memory_zones=m0:m1",
                "guest_numa_id=1,memory_zones=m1:m2"
            ]),
            "--numa: memory zone m1 is in both node 0 and node 1"
        );
        assert_eq!(
            e(&["guest_numa_id=0,memory_zones=m0:m1"]),
            "--numa: memory zone m2 is in no node (once one node lists memory_zones, every zone must be listed)"
        );
        assert_eq!(
            err(2, &["guest_numa_id=0,memory_zones=m0"], None, &[]),
            "--numa: guest_numa_id=0: memory_zones: no --memory-zone has id=m0"
        );
        assert!(
            NumaConfig::parse("guest_numa_id=0,device_id=gpu,memory_zones=m0").is_err(),
            "a Generic Initiator node has no memory of its own"
        );
    }

    fn err(boot: u8, numa: &[&str], gh: Option<&str>, devices: &[&str]) -> String {
        let e = resolve(&cfg(boot, numa, gh, devices))
            .unwrap_err()
            .to_string();
        assert!(!e.contains('\n'), "{e}");
        e
    }

    #[test]
    fn nothing_given_means_no_topology() {
        assert_eq!(resolve(&cfg(4, &[], None, &["path=/a,id=x"])), Ok(None));
    }

    #[test]
    fn two_nodes_example() {
        let t = topo(
            4,
            &[
                "guest_numa_id=0,cpus=0-1",
                "guest_numa_id=1,cpus=2-3,distances=0@20",
            ],
            None,
            &[],
        );
        assert_eq!(t.nodes.len(), 2);
        assert_eq!(t.nodes[0].cpus, [0, 1]);
        assert_eq!(t.nodes[1].cpus, [2, 3]);
        assert_eq!(t.distances, [[10, 20], [20, 10]]);
        assert_eq!(t.memory_node, 0);
        assert!(t.slots.is_empty());
        assert_eq!(t.domain_of_cpu(3), Some(1));
        assert_eq!(t.domain_of_cpu(4), None);
    }

    #[test]
    fn gh_one_slot_alone() {
        let t = topo(2, &[], Some("slots=1"), &[]);
        assert_eq!(t.nodes.len(), 9);
        assert_eq!(t.nodes[0].cpus, [0, 1]);
        assert_eq!(t.nodes[0].initiator, None);
        assert_eq!(t.memory_node, 0);
        for (i, n) in t.nodes.iter().enumerate().skip(1) {
            assert_eq!(n.guest_numa_id as usize, i);
            assert!(n.cpus.is_empty());
            assert_eq!(n.initiator, Some(Initiator::GhSlot(0)));
        }
        for i in 0..9 {
            for j in 0..9 {
                assert_eq!(t.distances[i][j], if i == j { 10 } else { 20 });
            }
        }
        let s = &t.slots[0];
        assert_eq!((s.index, s.segment), (0, 1));
        assert_eq!(s.nodes, (1..9).collect::<Vec<_>>());
        assert_eq!(s.device, None);
        assert!(!s.dsd);
        assert_eq!(s.bar_space, 256 << 30);
    }

    #[test]
    fn gh_two_slots_without_device() {
        let t = topo(1, &[], Some("slots=2"), &[]);
        assert_eq!(t.nodes.len(), 17);
        assert_eq!(t.slots.len(), 2);
        assert_eq!(t.slots[1].segment, 2);
        assert_eq!(t.slots[1].nodes, (9..17).collect::<Vec<_>>());
        assert!(t.slots.iter().all(|s| s.device.is_none()));
        assert_eq!(t.nodes[16].initiator, Some(Initiator::GhSlot(1)));
        // Across slots and within one slot alike.
        assert_eq!(t.distances[1][16], 20);
        assert_eq!(t.distances[9][10], 20);
    }

    #[test]
    fn gh_nodes_follow_numa_nodes() {
        let t = topo(
            2,
            &["guest_numa_id=0,cpus=0", "guest_numa_id=1,cpus=1"],
            Some("slots=2,nodes=3,distance=40,dsd=on,bar_space=1T"),
            &[],
        );
        assert_eq!(t.slots[0].nodes, [2, 3, 4]);
        assert_eq!(t.slots[1].nodes, [5, 6, 7]);
        assert_eq!(t.distances[0][1], 20);
        assert_eq!(t.distances[0][2], 40);
        assert_eq!(t.distances[7][1], 40);
        assert_eq!(t.distances[2][5], 40);
        assert_eq!(t.distances[3][4], 40);
        assert!(t.slots[1].dsd);
        assert_eq!(t.slots[1].bar_space, 1 << 40);
    }

    #[test]
    fn explicit_distance_to_gh_node_wins() {
        let t = topo(
            1,
            &["guest_numa_id=0,distances=[1@30,2@50]"],
            Some("slots=1,nodes=2"),
            &[],
        );
        assert_eq!(t.distances[0][1], 30);
        assert_eq!(t.distances[1][0], 30);
        assert_eq!(t.distances[0][2], 50);
        assert_eq!(t.distances[2][0], 50);
        assert_eq!(t.distances[1][2], 20);
    }

    #[test]
    fn distances_symmetric_fill_and_asymmetric() {
        let n = |s: &'static str| s;
        let sym = topo(
            3,
            &[
                n("guest_numa_id=0,cpus=0,distances=1@15:2@40"),
                n("guest_numa_id=1,cpus=1"),
                n("guest_numa_id=2,cpus=2"),
            ],
            None,
            &[],
        );
        assert_eq!(sym.distances, [[10, 15, 40], [15, 10, 20], [40, 20, 10]]);
        // Both directions given: each kept, whatever the option order.
        for order in [[0, 1], [1, 0]] {
            let opts = [
                "guest_numa_id=0,cpus=0,distances=1@15",
                "guest_numa_id=1,cpus=1,distances=0@25",
            ];
            let t = topo(2, &[opts[order[0]], opts[order[1]]], None, &[]);
            assert_eq!(t.distances, [[10, 15], [25, 10]]);
        }
        // A node may restate its own distance as 10.
        let t = topo(
            2,
            &[
                "guest_numa_id=0,cpus=0,distances=[0@10,1@11]",
                "guest_numa_id=1,cpus=1",
            ],
            None,
            &[],
        );
        assert_eq!(t.distances, [[10, 11], [11, 10]]);
    }

    #[test]
    fn distance_destination_must_exist() {
        let e = err(1, &["guest_numa_id=0,distances=1@20"], None, &[]);
        assert!(e.contains("node 1 does not exist"), "{e}");
        let e = err(1, &["guest_numa_id=0,distances=9@20"], Some("slots=1"), &[]);
        assert!(
            e.starts_with("--numa: guest_numa_id=0: distances: node 9"),
            "{e}"
        );
        // 8 is the last GH node of slot 0.
        let t = topo(1, &["guest_numa_id=0,distances=8@33"], Some("slots=1"), &[]);
        assert_eq!(t.distances[8][0], 33);
    }

    #[test]
    fn ids_must_be_contiguous_and_unique() {
        let e = err(1, &["guest_numa_id=0", "guest_numa_id=2"], None, &[]);
        assert!(e.contains("guest_numa_id=1 is missing"), "{e}");
        let e = err(1, &["guest_numa_id=1"], None, &[]);
        assert!(e.contains("guest_numa_id=0 is missing"), "{e}");
        let e = err(1, &["guest_numa_id=4294967295"], None, &[]);
        assert!(e.contains("guest_numa_id=0 is missing"), "{e}");
        let e = err(1, &["guest_numa_id=0", "guest_numa_id=0"], None, &[]);
        assert_eq!(e, "--numa: guest_numa_id=0 is given twice");
        // Order on the command line does not matter; nodes come out in id order.
        let t = topo(
            2,
            &["guest_numa_id=1,cpus=1", "guest_numa_id=0,cpus=0"],
            None,
            &[],
        );
        assert_eq!(t.nodes[0].guest_numa_id, 0);
        assert_eq!(t.nodes[0].cpus, [0]);
        assert_eq!(t.nodes[1].cpus, [1]);
    }

    #[test]
    fn vcpu_assignment() {
        let e = err(2, &["guest_numa_id=0,cpus=0-2"], None, &[]);
        assert!(e.contains("vCPU 2 does not exist (--cpus boot=2)"), "{e}");
        let e = err(
            3,
            &["guest_numa_id=0,cpus=0-1", "guest_numa_id=1,cpus=1-2"],
            None,
            &[],
        );
        assert!(e.contains("vCPU 1 is in both node 0 and node 1"), "{e}");
        let e = err(
            3,
            &["guest_numa_id=0,cpus=0", "guest_numa_id=1,cpus=2"],
            None,
            &[],
        );
        assert!(e.contains("vCPU 1 is in no node"), "{e}");
        // A node left with nothing (no cpus, no memory, no device) is refused.
        let e = err(
            2,
            &["guest_numa_id=0", "guest_numa_id=1,cpus=0-1"],
            None,
            &[],
        );
        assert!(e.contains("guest_numa_id=0: the node has no vCPUs"), "{e}");
    }

    #[test]
    fn vcpus_default_to_lowest_non_initiator_node() {
        let t = topo(
            3,
            &["guest_numa_id=0,device_id=nic", "guest_numa_id=1"],
            None,
            &["path=/n,id=nic"],
        );
        assert_eq!(t.nodes[0].initiator, Some(Initiator::Device(0)));
        assert!(t.nodes[0].cpus.is_empty());
        assert_eq!(t.nodes[1].cpus, [0, 1, 2]);
        assert_eq!(t.memory_node, 1);
        let e = err(
            1,
            &["guest_numa_id=0,device_id=nic"],
            None,
            &["path=/n,id=nic"],
        );
        assert!(e.contains("every node is a device_id"), "{e}");
    }

    #[test]
    fn generic_initiator_nodes() {
        // Several GI nodes for one device, as Cloud Hypervisor users give a GPU 8 nodes.
        let t = topo(
            1,
            &[
                "guest_numa_id=0",
                "guest_numa_id=1,device_id=g",
                "guest_numa_id=2,device_id=g",
            ],
            None,
            &["path=/a,id=other", "path=/g,id=g"],
        );
        assert_eq!(t.nodes[1].initiator, Some(Initiator::Device(1)));
        assert_eq!(t.nodes[2].initiator, Some(Initiator::Device(1)));
        let e = err(
            1,
            &["guest_numa_id=0", "guest_numa_id=1,device_id=g"],
            None,
            &[],
        );
        assert_eq!(
            e,
            "--numa: guest_numa_id=1: device_id=g: no --device has id=g"
        );
        let e = err(
            1,
            &["guest_numa_id=0", "guest_numa_id=1,device_id=g"],
            Some("slots=1"),
            &["path=/g,id=g,gh_slot=0"],
        );
        assert!(e.contains("already gives it its nodes"), "{e}");
    }

    #[test]
    fn node_limit() {
        let many: Vec<String> = (0..65)
            .map(|i| format!("guest_numa_id={i},cpus={i}"))
            .collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        let e = err(65, &refs, None, &[]);
        assert!(e.starts_with("--numa: 65 nodes"), "{e}");
        assert!(resolve(&cfg(64, &refs[..64], None, &[])).is_ok());
        // 1 implicit + 63 is the most --gh can add.
        assert_eq!(topo(1, &[], Some("slots=63,nodes=1"), &[]).nodes.len(), 64);
        assert_eq!(topo(1, &[], Some("slots=7,nodes=9"), &[]).nodes.len(), 64);
        let e = err(1, &[], Some("slots=8"), &[]);
        assert_eq!(
            e,
            "--gh: slots=8 x nodes=8 plus 1 non-GH node(s) is 65 nodes; a guest supports at most 64"
        );
        let t = topo(2, &refs[..2], Some("slots=31,nodes=2"), &[]);
        assert_eq!(t.nodes.len(), 64);
        let e = err(2, &refs[..2], Some("slots=21,nodes=3"), &[]);
        assert!(e.contains("is 65 nodes"), "{e}");
    }

    #[test]
    fn gh_slot_placement() {
        let t = topo(
            1,
            &[],
            Some("slots=3"),
            &[
                "path=/a,gh_slot=auto",
                "path=/b,gh_slot=0",
                "path=/nic",
                "path=/c,gh_slot=auto",
            ],
        );
        assert_eq!(t.slots[0].device, Some(1));
        assert_eq!(t.slots[1].device, Some(0));
        assert_eq!(t.slots[2].device, Some(3));
        assert_eq!(t.slot_of_device(3).map(|s| s.segment), Some(3));
        assert_eq!(t.slot_of_device(2), None);
        let t = topo(1, &[], Some("slots=2"), &["path=/a,gh_slot=1"]);
        assert_eq!((t.slots[0].device, t.slots[1].device), (None, Some(0)));
    }

    #[test]
    fn gh_slot_errors() {
        let e = err(1, &[], None, &["path=/a,id=gpu,gh_slot=0"]);
        assert_eq!(e, "--device: id=gpu: gh_slot needs --gh");
        let e = err(1, &["guest_numa_id=0"], None, &["path=/a,gh_slot=auto"]);
        assert_eq!(e, "--device: path=/a: gh_slot needs --gh");
        let e = err(1, &[], Some("slots=2"), &["path=/a,gh_slot=2"]);
        assert_eq!(
            e,
            "--device: path=/a: gh_slot=2: --gh slots=2 has slots 0 to 1"
        );
        let e = err(1, &[], Some("slots=1"), &["path=/a,gh_slot=65535"]);
        assert!(e.contains("gh_slot=65535"), "{e}");
        let e = err(
            1,
            &[],
            Some("slots=2"),
            &["path=/a,id=a,gh_slot=1", "path=/b,gh_slot=1"],
        );
        assert_eq!(e, "--device: path=/b: gh_slot=1: slot 1 already holds id=a");
        let e = err(
            1,
            &[],
            Some("slots=1"),
            &["path=/a,gh_slot=auto", "path=/b,gh_slot=0"],
        );
        assert_eq!(
            e,
            "--device: path=/a: gh_slot=auto: all 1 GH slots are taken"
        );
        let e = err(
            1,
            &[],
            Some("slots=1"),
            &["path=/a,gh_slot=auto", "path=/b,gh_slot=auto"],
        );
        assert!(e.starts_with("--device: path=/b: gh_slot=auto"), "{e}");
    }
}
