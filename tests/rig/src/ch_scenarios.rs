//! A Cloud Hypervisor command line from its own documentation, run by ghvmm unchanged but for
//! the kernel, the device paths and sizes that fit L2 (`gh-ch-cmdline`): two GPUs passed
//! through with one `--device` (docs/vfio.md, "path=/sys/bus/pci/devices/.../" with its
//! trailing slash), guest RAM in `--memory size=0` zones spread over two NUMA nodes with one
//! `--numa` (docs/memory.md: `memory_zones=mem0:mem2`, `cpus=`, `distances=` in its colon
//! spellings), `--serial tty --console off` (README).

use crate::gh_scenarios::{numa_checks, NodeExpect, NumaExpect, NUMA_CHECKS};
use crate::l3::L3;
use crate::memory_scenarios::compare_zone_ram;
use crate::protocol::Outcome;
use crate::scale_scenarios::bind_all_variant;
use crate::scenario::{Scenario, BOOT_VMM, L3_CHECKS};
use crate::vfio_scenarios::{gh_file_outcome, GH_DEVICE_CHECKS, GH_LENGTHS};

const MIB: u64 = 1 << 20;
pub const ZONE_RAM_CHECK: &str = "zone-ram";

/// What follows `ghvmm --kernel ... --cmdline ...`: Cloud Hypervisor's spellings, every
/// repeatable option given once with several values.
pub const CH_ARGS: &str = "--memory-zone id=mem0,size=256M id=mem1,size=128M id=mem2,size=128M \
     --device path=$IVSHMEM/ path=$IVSHMEM1/ \
     --numa guest_numa_id=0,cpus=0-1,distances=1@15,memory_zones=mem0:mem2 \
     guest_numa_id=1,distances=0@15,memory_zones=mem1";

fn gh_ch_cmdline() -> Scenario {
    let len = GH_LENGTHS[1];
    let l3 = L3::new(BOOT_VMM, 2, "512M")
        .memory_arg("size=0")
        .vmm_args(CH_ARGS)
        .cmdline(&format!(
            "ghvmm.vfio=gh ghvmm.gh_mode=vmm_pads ghvmm.gh_len={len} ghvmm.gh_devices=2 ghvmm.numa=report"
        ));
    // No Generic Initiator entries here, so Linux keeps the domains' numbers.
    let expect = NumaExpect {
        nodes: vec![
            NodeExpect {
                cpus: "0-1",
                memory: true,
            },
            NodeExpect {
                cpus: "",
                memory: true,
            },
        ],
        distances: vec![vec![10, 15], vec![15, 10]],
        generic_initiator: "",
        slots: Vec::new(),
        devices: Vec::new(),
    };
    // mem0, mem1, mem2 lie in that order; node 0 has the first and the last.
    let ram = vec![
        vec![(0, 256 * MIB), (384 * MIB, 128 * MIB)],
        vec![(256 * MIB, 128 * MIB)],
    ];
    let mut checks = [L3_CHECKS, GH_DEVICE_CHECKS, NUMA_CHECKS, &[ZONE_RAM_CHECK]].concat();
    checks.extend(["vfio-bind1", "gh-count"]);
    Scenario {
        setup: bind_all_variant("vmm_pads", len, 2),
        acpi: true,
        expect: checks,
        host_checks: Some(Box::new(move |_, dir, t| {
            let files: Vec<String> = (0..2)
                .filter_map(|i| match gh_file_outcome(&dir.join(crate::ivshmem_file(i)), len) {
                    Outcome::Fail(m) => Some(format!("GPU {i}: {m}")),
                    _ => None,
                })
                .collect();
            let file = if files.is_empty() {
                Outcome::Pass
            } else {
                Outcome::Fail(files.join("; "))
            };
            let mut v = vec![("host-file".to_string(), file)];
            v.extend(numa_checks(&expect, dir, t));
            v.push((
                ZONE_RAM_CHECK.into(),
                compare_zone_ram(&ram, Some((1, 128 * MIB)), dir, t),
            ));
            v
        })),
        ivshmem: vec![64 * MIB, 64 * MIB],
        ..Scenario::boot(
            "gh-ch-cmdline",
            "Cloud Hypervisor's documented VFIO and NUMA command line (two GPUs after one --device, --memory size=0 with zones over two nodes via one --numa): both GPUs pass the GH checks, the nodes hold their zones",
            l3,
        )
    }
}

pub fn all() -> Vec<Scenario> {
    vec![gh_ch_cmdline()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_cloud_hypervisors() {
        let s = gh_ch_cmdline();
        let sh = s.script();
        assert!(sh.contains("--memory size=0 "), "{sh}");
        assert!(sh.contains("--device path=$IVSHMEM/ path=$IVSHMEM1/ --numa"));
        assert!(sh.contains("l2_check vfio-bind1 "));
        assert_eq!(s.ivshmem.len(), 2);
    }
}
