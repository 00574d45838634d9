//! Typical platforms for tests.

use crate::*;

pub fn platform(cpus: u32) -> PlatformDesc {
    PlatformDesc {
        apic_ids: (0..cpus).collect(),
        ioapic: IoApicDesc {
            id: 0,
            address: 0xfec0_0000,
            gsi_base: 0,
        },
        pci_segments: vec![PciSegmentDesc {
            segment: 0,
            bus_start: 0,
            bus_end: 0,
            ecam_base: 0xe000_0000,
            mmio32: AddrRange {
                base: 0xc000_0000,
                len: 0x2000_0000,
            },
            mmio64: AddrRange {
                base: 128 << 30,
                len: 256 << 30,
            },
            io: true,
            proximity_domain: None,
            functions: vec![],
            hotplug_slots: 0,
        }],
        serial: Some(SerialDesc {
            port: 0x3f8,
            irq: 4,
        }),
        pm: PmDesc {
            sleep_control_port: 0x600,
            sleep_status_port: 0x601,
            reset_port: 0x602,
            reset_value: 1,
        },
        ged: GedDesc {
            mmio_base: 0xfed0_0000,
            irq: 5,
        },
        numa: None,
        pci_hotplug: None,
    }
}

/// The first Generic Initiator node of `numa_platform`'s GPU.
pub const GPU_FIRST_NODE: u32 = 2;
/// NVIDIA's guest driver uses (up to) eight GI nodes per GPU.
pub const GPU_NODES: u32 = 8;

/// A Grace-Hopper-like guest: `cpus` vCPUs (at least 2) split over nodes 0 and 1, each with
/// 1 GiB of RAM, and a GPU at 0001:00:00.0 behind its own host bridge, with eight Generic
/// Initiator nodes (2-9), the bridge's `_PXM` on node 0, and the GPU's `_DSD` naming its
/// nodes. Distances: 10 local, 20 between the CPU nodes, 30 to and between the GPU's nodes.
pub fn numa_platform(cpus: u32) -> PlatformDesc {
    let mut p = platform(cpus);
    let mut gpu_segment = p.pci_segments[0].clone();
    gpu_segment.segment = 1;
    gpu_segment.ecam_base = 0xe010_0000;
    gpu_segment.io = false;
    gpu_segment.mmio32 = AddrRange { base: 0, len: 0 };
    gpu_segment.mmio64 = AddrRange {
        base: 512 << 30,
        len: 512 << 30,
    };
    gpu_segment.proximity_domain = Some(0);
    gpu_segment.functions = vec![PciFunctionDesc {
        device: 0,
        function: 0,
        name: "GPU0".into(),
        dsd: vec![
            ("nvidia,gpu-mem-pxm-start".into(), u64::from(GPU_FIRST_NODE)),
            ("nvidia,gpu-mem-pxm-count".into(), u64::from(GPU_NODES)),
        ],
    }];
    p.pci_segments.push(gpu_segment);
    let half = cpus / 2;
    let mut nodes = vec![
        NumaNode {
            proximity_domain: 0,
            apic_ids: (0..half).collect(),
            memory: vec![AddrRange {
                base: 0,
                len: 1 << 30,
            }],
            generic_initiator: None,
        },
        NumaNode {
            proximity_domain: 1,
            apic_ids: (half..cpus).collect(),
            memory: vec![AddrRange {
                base: 4 << 30,
                len: 1 << 30,
            }],
            generic_initiator: None,
        },
    ];
    for d in GPU_FIRST_NODE..GPU_FIRST_NODE + GPU_NODES {
        nodes.push(NumaNode {
            proximity_domain: d,
            apic_ids: vec![],
            memory: vec![],
            generic_initiator: Some(PciAddress {
                segment: 1,
                bus: 0,
                device: 0,
                function: 0,
            }),
        });
    }
    let n = nodes.len();
    let distances = (0..n)
        .map(|i| {
            (0..n)
                .map(|j| match (i, j) {
                    _ if i == j => 10,
                    (0..=1, 0..=1) => 20,
                    _ => 30,
                })
                .collect()
        })
        .collect();
    p.numa = Some(NumaDesc { nodes, distances });
    p
}

/// Platforms whose DSDT was recorded (`src/testdata/*.dsdt`) before PCI hot plug existed:
/// without hot plug, the DSDT must stay byte for byte what it was.
pub fn recorded_platforms() -> Vec<(&'static str, PlatformDesc)> {
    let mut bare = platform(1);
    bare.pci_segments.clear();
    bare.serial = None;
    let mut functions = numa_platform(4);
    functions.pci_segments[1].functions[0].device = 3;
    functions.pci_segments[1].functions[0].function = 1;
    functions.pci_segments[1].functions.push(PciFunctionDesc {
        device: 4,
        function: 0,
        name: "NIC0".into(),
        dsd: vec![],
    });
    let mut s = functions.pci_segments[1].clone();
    s.segment = 0x10;
    s.ecam_base = 0xe100_0000;
    s.proximity_domain = None;
    s.mmio64 = AddrRange {
        base: 1 << 40,
        len: 1 << 30,
    };
    functions.pci_segments.push(s);
    vec![
        ("typical", platform(4)),
        ("numa", numa_platform(4)),
        ("functions", functions),
        ("bare", bare),
    ]
}

/// Where `hotplug_platform` puts the hot plug controller's registers (next to the GED).
pub const HOTPLUG_MMIO: u64 = 0xfed0_1000;

/// `numa_platform` with PCI hot plug on three segments: segment 0's slots 1-31 (its host
/// bridge is 00.0), and GPU segments 1 (GPU0 at 00.0 with its `_DSD`) and 2 (empty), every
/// device number of theirs a slot.
pub fn hotplug_platform(cpus: u32) -> PlatformDesc {
    let mut p = numa_platform(cpus);
    p.pci_hotplug = Some(PciHotplugDesc {
        mmio_base: HOTPLUG_MMIO,
    });
    p.pci_segments[0].hotplug_slots = !1;
    p.pci_segments[1].hotplug_slots = u32::MAX;
    let mut s = p.pci_segments[1].clone();
    s.segment = 2;
    s.ecam_base = 0xe020_0000;
    s.mmio64.base += s.mmio64.len;
    s.functions.clear();
    p.pci_segments.push(s);
    p
}

/// The largest GH guest: `cpus` vCPUs and all RAM in node 0, `segments` - 1 GPU segments,
/// each with a GPU0 (`_DSD`) at 00.0 and eight Generic Initiator nodes of its own, and every
/// device number a hot plug slot (segment 0: all but its host bridge's 00.0).
pub fn hotplug_platform_with(cpus: u32, segments: u16) -> PlatformDesc {
    let mut p = hotplug_platform(cpus);
    let mut gpu = p.pci_segments[1].clone();
    p.pci_segments.truncate(1);
    let mut nodes = vec![NumaNode {
        proximity_domain: 0,
        apic_ids: p.apic_ids.clone(),
        memory: vec![AddrRange {
            base: 0,
            len: 1 << 30,
        }],
        generic_initiator: None,
    }];
    for id in 1..segments {
        let first = nodes.len() as u64;
        gpu.segment = id;
        gpu.ecam_base = 0xe000_0000 + (u64::from(id) << 20);
        gpu.mmio64.base = (512 << 30) * u64::from(id);
        gpu.functions[0].dsd[0].1 = first;
        p.pci_segments.push(gpu.clone());
        for _ in 0..GPU_NODES {
            nodes.push(NumaNode {
                proximity_domain: nodes.len() as u32,
                apic_ids: vec![],
                memory: vec![],
                generic_initiator: Some(PciAddress {
                    segment: id,
                    bus: 0,
                    device: 0,
                    function: 0,
                }),
            });
        }
    }
    let n = nodes.len();
    let distances = (0..n)
        .map(|i| (0..n).map(|j| if i == j { 10 } else { 30 }).collect())
        .collect();
    p.numa = Some(NumaDesc { nodes, distances });
    p
}
