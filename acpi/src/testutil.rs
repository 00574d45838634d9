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
