//! `vm.info`'s `device_tree` in Cloud Hypervisor's shape: one `DeviceNode` per device, by id,
//! each PCI device with its BDF and its BARs as `PciBar` resources, each platform device with
//! its port or MMIO range and its interrupt line (serde's externally tagged enum, as Cloud
//! Hypervisor serializes its `Resource`). Platform devices have ids starting with `__`, as
//! Cloud Hypervisor names the devices a user cannot name (`__serial`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Cloud Hypervisor's `DeviceNode` (its `migratable` and device handle are never sent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceNode {
    pub id: String,
    pub resources: Vec<DeviceResource>,
    pub parent: Option<String>,
    pub children: Vec<String>,
    pub pci_bdf: Option<String>,
}

/// The resource kinds of Cloud Hypervisor's `Resource` that ghvmm's devices have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceResource {
    /// Guest I/O ports `base..base + size`.
    PioAddressRange { base: u16, size: u16 },
    /// Guest physical addresses `base..base + size` the device traps.
    MmioAddressRange { base: u64, size: u64 },
    /// The GSI the device interrupts the guest on.
    LegacyIrq(u32),
    PciBar {
        index: usize,
        base: u64,
        size: u64,
        /// Spelt as Cloud Hypervisor's field is.
        #[serde(rename = "type_")]
        bar_type: PciBarType,
        prefetchable: bool,
    },
}

/// Cloud Hypervisor's `PciBarType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PciBarType {
    Io,
    Mmio32,
    Mmio64,
}

impl From<pci::BarKind> for PciBarType {
    fn from(k: pci::BarKind) -> Self {
        match k {
            pci::BarKind::Io => PciBarType::Io,
            pci::BarKind::Mem32 => PciBarType::Mmio32,
            pci::BarKind::Mem64 => PciBarType::Mmio64,
        }
    }
}

/// `device_tree`: node id to node.
pub type DeviceTree = BTreeMap<String, DeviceNode>;

impl DeviceNode {
    /// A platform device (not on a PCI bus) with its resources.
    pub fn platform(id: &str, resources: Vec<DeviceResource>) -> Self {
        DeviceNode {
            id: id.to_string(),
            resources,
            parent: None,
            children: Vec::new(),
            pci_bdf: None,
        }
    }

    /// A PCI function at `bdf` with its BARs: (index, what it is, guest address).
    pub fn pci(id: &str, bdf: &str, bars: &[(usize, pci::BarSpec, u64)]) -> Self {
        DeviceNode {
            id: id.to_string(),
            resources: bars
                .iter()
                .map(|(index, spec, base)| DeviceResource::PciBar {
                    index: *index,
                    base: *base,
                    size: spec.size,
                    bar_type: spec.kind.into(),
                    prefetchable: spec.prefetchable,
                })
                .collect(),
            parent: None,
            children: Vec::new(),
            pci_bdf: Some(bdf.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pci_node_is_cloud_hypervisors_shape() {
        let bars = [
            (
                0,
                pci::BarSpec {
                    size: 0x1000,
                    kind: pci::BarKind::Mem32,
                    prefetchable: false,
                },
                0xe000_0000,
            ),
            (
                2,
                pci::BarSpec {
                    size: 64 << 20,
                    kind: pci::BarKind::Mem64,
                    prefetchable: true,
                },
                0x40_0000_0000,
            ),
        ];
        let node = DeviceNode::pci("gpu0", "0001:00:00.0", &bars);
        assert_eq!(
            serde_json::to_value(&node).unwrap(),
            serde_json::json!({
                "id": "gpu0",
                "resources": [
                    {"PciBar": {"index": 0, "base": 0xe000_0000u64, "size": 0x1000,
                                "type_": "Mmio32", "prefetchable": false}},
                    {"PciBar": {"index": 2, "base": 0x40_0000_0000u64, "size": 64u64 << 20,
                                "type_": "Mmio64", "prefetchable": true}}
                ],
                "parent": null,
                "children": [],
                "pci_bdf": "0001:00:00.0"
            })
        );
        assert_eq!(PciBarType::from(pci::BarKind::Io), PciBarType::Io);
    }

    #[test]
    fn a_platform_node_is_cloud_hypervisors_shape() {
        let node = DeviceNode::platform(
            "__serial",
            vec![
                DeviceResource::PioAddressRange {
                    base: 0x3f8,
                    size: 8,
                },
                DeviceResource::MmioAddressRange {
                    base: 0xfed0_0000,
                    size: 0x1000,
                },
                DeviceResource::LegacyIrq(4),
            ],
        );
        assert_eq!(
            serde_json::to_value(&node).unwrap(),
            serde_json::json!({
                "id": "__serial",
                "resources": [
                    {"PioAddressRange": {"base": 0x3f8, "size": 8}},
                    {"MmioAddressRange": {"base": 0xfed0_0000u64, "size": 0x1000}},
                    {"LegacyIrq": 4}
                ],
                "parent": null,
                "children": [],
                "pci_bdf": null
            })
        );
    }
}
