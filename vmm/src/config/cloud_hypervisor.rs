//! What Cloud Hypervisor's command line has and ghvmm does not, so that a command line written
//! for Cloud Hypervisor is refused with "not supported by ghvmm" rather than as a typo: its
//! options ghvmm lacks, and the keys of the options both have.

/// Cloud Hypervisor's options (x86_64, all features) that ghvmm does not implement. Each is
/// accepted by the parser with any number of values, then refused by name (`cli`).
pub const UNSUPPORTED_OPTIONS: &[&str] = &[
    "firmware",
    "rate-limit-group",
    "disk",
    "landlock",
    "landlock-rules",
    "net",
    "rng",
    "balloon",
    "fs",
    "pmem",
    "debug-console",
    "vdpa",
    "vsock",
    "pvpanic",
    "pci-segment",
    "watchdog",
    "restore",
    "tpm",
    "sgx-epc",
    "gdb",
    "dbus-object-path",
    "dbus-service-name",
    "dbus-system-bus",
    "host-data",
    "igvm",
];

/// Every key Cloud Hypervisor takes for `--option` (for the options ghvmm has too); the
/// option parser tells a key here that ghvmm does not accept apart from an unknown one.
pub fn keys(option: &str) -> &'static [&'static str] {
    match option {
        "cpus" => &[
            "boot",
            "max",
            "topology",
            "kvm_hyperv",
            "max_phys_bits",
            "affinity",
            "features",
            "nested",
        ],
        "memory" => &[
            "size",
            "file",
            "mergeable",
            "shared",
            "hugepages",
            "hugepage_size",
            "hotplug_method",
            "hotplug_size",
            "hotplugged_size",
            "prefault",
            "thp",
        ],
        "platform" => &[
            "num_pci_segments",
            "iommu_segments",
            "iommu_address_width",
            "serial_number",
            "uuid",
            "oem_strings",
            "tdx",
            "sev_snp",
        ],
        "device" => &[
            "path",
            "iommu",
            "id",
            "pci_segment",
            "x_nv_gpudirect_clique",
        ],
        "memory-zone" => &[
            "id",
            "size",
            "file",
            "shared",
            "hugepages",
            "hugepage_size",
            "host_numa_node",
            "hotplug_size",
            "hotplugged_size",
            "prefault",
        ],
        "user-device" => &["socket", "id", "pci_segment"],
        "numa" => &[
            "guest_numa_id",
            "cpus",
            "distances",
            "memory_zones",
            "sgx_epc_sections",
            "pci_segments",
        ],
        "api-socket" | "event-monitor" => &["path", "fd"],
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_well_formed() {
        for (i, o) in UNSUPPORTED_OPTIONS.iter().enumerate() {
            assert!(!UNSUPPORTED_OPTIONS[..i].contains(o), "{o} twice");
            assert!(keys(o).is_empty(), "{o} is unsupported yet has keys");
        }
        assert!(keys("cpus").contains(&"topology"));
        assert!(keys("bogus").is_empty());
    }
}
