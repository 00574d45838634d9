//! Describes this VM to the `acpi` crate and copies the tables it builds into guest RAM.

use acpi::{
    AcpiBlob, AddrRange, GedDesc, IoApicDesc, NumaDesc, NumaNode, PciAddress, PciFunctionDesc,
    PciHotplugDesc, PciSegmentDesc, PlatformDesc, PmDesc, SerialDesc,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::config::numa::{GhSlot, Initiator, Topology};
use crate::memory::layout::*;

#[derive(Debug, thiserror::Error)]
pub enum AcpiSetupError {
    #[error("building ACPI tables: {0}")]
    Build(#[from] acpi::AcpiError),
    #[error("writing ACPI tables into guest memory: {0}")]
    Write(#[from] vm_memory::GuestMemoryError),
}

/// The platform as the `acpi` crate needs it. `placed[i]` is where `--device` number i sits
/// in the guest (a Generic Initiator of `--numa device_id=` names it); `zone_sizes` are the
/// RAM zones in layout order (`MemoryConfig::layout_zones`), which the nodes' memory names.
pub fn platform_desc(
    vcpus: u8,
    layout: &Layout,
    zone_sizes: &[u64],
    topology: Option<&Topology>,
    placed: &[PciAddress],
) -> PlatformDesc {
    PlatformDesc {
        apic_ids: (0..u32::from(vcpus)).collect(),
        ioapic: IoApicDesc {
            id: 0,
            address: IOAPIC_ADDR as u32,
            gsi_base: 0,
        },
        pci_segments: layout
            .segments
            .iter()
            .map(|s| segment_desc(s, topology))
            .collect(),
        serial: Some(SerialDesc {
            port: COM1_PORT,
            irq: COM1_IRQ,
        }),
        pm: PmDesc {
            sleep_control_port: ACPI_PM_PORT,
            sleep_status_port: ACPI_PM_PORT + 1,
            reset_port: ACPI_PM_PORT + 2,
            reset_value: ACPI_RESET_VALUE,
        },
        ged: GedDesc {
            mmio_base: GED_ADDR,
            irq: GED_IRQ,
        },
        numa: topology.map(|t| numa_desc(t, &ram_pieces(&layout.ram, zone_sizes), placed)),
        pci_hotplug: Some(PciHotplugDesc {
            mmio_base: PCI_HOTPLUG_ADDR,
        }),
    }
}

fn segment_desc(s: &SegmentLayout, topology: Option<&Topology>) -> PciSegmentDesc {
    let slot = topology.and_then(|t| t.slots.iter().find(|g| g.segment == s.id));
    PciSegmentDesc {
        segment: s.id,
        bus_start: 0,
        bus_end: 0,
        ecam_base: s.ecam,
        mmio32: AddrRange {
            base: s.mmio32.start,
            len: s.mmio32.size,
        },
        mmio64: AddrRange {
            base: s.mmio64.start,
            len: s.mmio64.size,
        },
        // Segment 0 decodes the config ports and the I/O windows; GPU slots have no I/O.
        io: s.id == 0,
        // A GPU slot's bridge sits with the vCPUs and RAM (where a real Grace Hopper's GPU
        // is attached), so the GPU's `numa_node` is the CPU node, not one of its own.
        proximity_domain: slot.and(topology).map(|t| t.memory_node as u32),
        functions: slot.map_or_else(Vec::new, gpu_function),
        // Every slot of segment 0 but the host bridge's; on a GH slot's segment only 00.0,
        // where the GPU goes (the rest of that bus stays empty, and the DSDT small).
        hotplug_slots: if s.id == 0 { !1 } else { 1 },
    }
}

/// The slot's GPU at 00.0 as a DSDT device object; with `dsd=on` it carries the properties
/// older NVIDIA guest drivers read instead of the SRAT.
fn gpu_function(slot: &GhSlot) -> Vec<PciFunctionDesc> {
    if !slot.dsd {
        return Vec::new();
    }
    let start = slot.nodes.first().copied().unwrap_or(0) as u64;
    vec![PciFunctionDesc {
        device: 0,
        function: 0,
        name: "GPU0".into(),
        dsd: vec![
            ("nvidia,gpu-mem-pxm-start".into(), start),
            ("nvidia,gpu-mem-pxm-count".into(), slot.nodes.len() as u64),
        ],
    }]
}

fn numa_desc(t: &Topology, pieces: &[RamPiece], placed: &[PciAddress]) -> NumaDesc {
    let nodes = t
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| NumaNode {
            proximity_domain: i as u32,
            apic_ids: n.cpus.iter().map(|c| u32::from(*c)).collect(),
            memory: pieces
                .iter()
                .filter(|p| n.zones.contains(&p.zone))
                .map(|p| AddrRange {
                    base: p.start,
                    len: p.size,
                })
                .collect(),
            generic_initiator: match &n.initiator {
                None => None,
                Some(Initiator::Device(d)) => placed.get(*d).copied(),
                // Reserved at boot whether or not a GPU is there yet (hot plug fills it).
                Some(Initiator::GhSlot(k)) => Some(PciAddress {
                    segment: k + 1,
                    bus: 0,
                    device: 0,
                    function: 0,
                }),
            },
        })
        .collect();
    NumaDesc {
        nodes,
        distances: t.distances.clone(),
    }
}

/// Builds and writes the tables; returns the RSDP address for the zero page.
pub fn install(mem: &GuestMemoryMmap, desc: &PlatformDesc) -> Result<u64, AcpiSetupError> {
    let AcpiBlob { rsdp_addr, regions } = acpi::build_tables(desc, ACPI_START, ACPI_LIMIT)?;
    for (addr, bytes) in regions {
        mem.write_slice(&bytes, GuestAddress(addr))?;
    }
    Ok(rsdp_addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::cli::Cli;
    use clap::Parser;

    fn config(args: &[&str]) -> crate::config::VmConfig {
        let mut v = vec!["ghvmm", "--kernel", "/k", "--cpus", "boot=2"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).unwrap().into_config().unwrap()
    }

    fn desc(args: &[&str], placed: &[PciAddress]) -> (PlatformDesc, Layout) {
        let cfg = config(args);
        let topo = crate::config::numa::resolve(&cfg).unwrap();
        let extra = topo
            .as_ref()
            .and_then(|t| t.slots.first().map(|s| (t.slots.len(), s.bar_space)))
            .map_or(ExtraSegments::default(), |(n, size)| ExtraSegments {
                count: n as u16,
                mmio64_size: size,
            });
        let layout = Layout::with_segments(cfg.memory.total(), None, extra, 46).unwrap();
        let zones: Vec<u64> = cfg.memory.layout_zones().iter().map(|z| z.size).collect();
        (
            platform_desc(2, &layout, &zones, topo.as_ref(), placed),
            layout,
        )
    }

    /// A Grace-like CPU node with 3 GiB (straddling the 32-bit hole) and a node of memory
    /// only: each node's SRAT ranges are exactly its zones' guest ranges.
    #[test]
    fn memory_zones_give_each_node_its_ranges() {
        let (d, layout) = desc(
            &[
                "--memory",
                "size=0",
                "--memory-zone",
                "id=grace,size=3584M",
                "--memory-zone",
                "id=far,size=512M",
                "--numa",
                "guest_numa_id=0,cpus=0-1,memory_zones=grace",
                "--numa",
                "guest_numa_id=1,memory_zones=far,distances=0@30",
                "--gh",
                "slots=1",
            ],
            &[],
        );
        let numa = d.numa.as_ref().unwrap();
        let ranges = |i: usize| -> Vec<(u64, u64)> {
            numa.nodes[i]
                .memory
                .iter()
                .map(|r| (r.base, r.len))
                .collect()
        };
        assert_eq!(
            ranges(0),
            [(0, 3 * GIB), (RAM_64BIT_START, GIB / 2)],
            "{:x?}",
            layout.ram
        );
        assert_eq!(ranges(1), [(RAM_64BIT_START + GIB / 2, GIB / 2)]);
        assert!((2..10).all(|i| ranges(i).is_empty()), "GH nodes stay empty");
        acpi::build_tables(&d, ACPI_START, ACPI_LIMIT).unwrap();
    }

    #[test]
    fn without_numa_options_there_is_one_segment_and_no_numa() {
        let (d, _) = desc(&[], &[]);
        assert!(d.numa.is_none());
        assert_eq!(d.pci_segments.len(), 1);
        assert!(d.pci_segments[0].io && d.pci_segments[0].functions.is_empty());
        acpi::build_tables(&d, ACPI_START, ACPI_LIMIT).unwrap();
    }

    #[test]
    fn gh_slots_become_segments_with_generic_initiators() {
        let gpu = PciAddress {
            segment: 1,
            bus: 0,
            device: 0,
            function: 0,
        };
        let (d, layout) = desc(
            &[
                "--gh",
                "slots=2,dsd=on,bar_space=64G",
                "--device",
                "path=/x,id=gpu0,gh_slot=auto",
            ],
            &[gpu],
        );
        assert_eq!(d.pci_segments.len(), 3);
        let s1 = &d.pci_segments[1];
        assert_eq!((s1.segment, s1.ecam_base), (1, ECAM_START + MIB));
        assert!(!s1.io);
        assert_eq!(
            s1.proximity_domain,
            Some(0),
            "the GPU's bridge sits with the CPUs"
        );
        assert_eq!(s1.mmio64.base, layout.segments[1].mmio64.start);
        assert_eq!(
            s1.functions[0].dsd,
            [
                ("nvidia,gpu-mem-pxm-start".to_string(), 1),
                ("nvidia,gpu-mem-pxm-count".to_string(), 8)
            ]
        );
        assert_eq!(d.pci_segments[2].functions[0].dsd[0].1, 9);
        let numa = d.numa.as_ref().unwrap();
        assert_eq!(numa.nodes.len(), 17);
        assert_eq!(numa.nodes[0].apic_ids, [0, 1]);
        assert_eq!(numa.nodes[0].memory.len(), layout.ram.len());
        assert!(numa.nodes[1..].iter().all(|n| n.memory.is_empty()));
        assert_eq!(numa.nodes[1].generic_initiator, Some(gpu));
        assert_eq!(
            numa.nodes[16].generic_initiator.map(|a| a.segment),
            Some(2),
            "an empty slot's nodes are reserved for the GPU that will arrive there"
        );
        acpi::build_tables(&d, ACPI_START, ACPI_LIMIT).unwrap();
    }

    #[test]
    fn numa_device_id_names_where_the_device_was_placed() {
        let nic = PciAddress {
            segment: 0,
            bus: 0,
            device: 3,
            function: 0,
        };
        let (d, _) = desc(
            &[
                "--numa",
                "guest_numa_id=0,cpus=0-1",
                "--numa",
                "guest_numa_id=1,device_id=nic0",
                "--device",
                "path=/x,id=nic0",
            ],
            &[nic],
        );
        let numa = d.numa.as_ref().unwrap();
        assert_eq!(numa.nodes[1].generic_initiator, Some(nic));
        assert_eq!(numa.distances, [[10, 20], [20, 10]]);
        acpi::build_tables(&d, ACPI_START, ACPI_LIMIT).unwrap();
    }
}
