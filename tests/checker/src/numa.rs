//! What the guest sees of NUMA and of the PCI functions, reported as `@@FACT` lines for the
//! rig to compare with what the scenario configured (the host knows the expectations; the
//! guest only reads sysfs):
//!
//!   `@@FACT node <id> cpus=<cpulist> memkb=<MemTotal kB> distance=<d0,d1,...>`
//!   `@@FACT generic_initiator <has_generic_initiator, may be empty>`
//!   `@@FACT pci <segment:bus:dev.fn> <vendor>:<device> numa=<numa_node>`
//!
//! and the check `numa-report` once all of it was read.

use std::path::Path;

use crate::checks::report;
use crate::util::read_trim;

/// MemTotal in kB from a node's `meminfo` ("Node 0 MemTotal:  123 kB").
pub fn node_memtotal_kb(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|l| {
        let (_, rest) = l.split_once("MemTotal:")?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Node ids from the names in /sys/devices/system/node (`node0`, `node12`), sorted.
pub fn node_ids<'a>(names: impl Iterator<Item = &'a str>) -> Vec<u32> {
    let mut ids: Vec<u32> = names
        .filter_map(|n| n.strip_prefix("node")?.parse().ok())
        .collect();
    ids.sort_unstable();
    ids
}

fn nodes() -> Result<(), String> {
    let root = Path::new("/sys/devices/system/node");
    let names: Vec<String> = std::fs::read_dir(root)
        .map_err(|e| format!("{}: {e}", root.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let ids = node_ids(names.iter().map(String::as_str));
    if ids.is_empty() {
        return Err("no node directories".into());
    }
    for id in ids {
        let dir = root.join(format!("node{id}"));
        let cpus = read_trim(dir.join("cpulist"));
        let mem = std::fs::read_to_string(dir.join("meminfo"))
            .ok()
            .and_then(|m| node_memtotal_kb(&m))
            .unwrap_or(0);
        let distance = read_trim(dir.join("distance"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(",");
        println!("@@FACT node {id} cpus={cpus} memkb={mem} distance={distance}");
    }
    let gi = read_trim(root.join("has_generic_initiator"));
    println!("@@FACT generic_initiator {gi}");
    Ok(())
}

fn pci() {
    let Ok(dir) = std::fs::read_dir("/sys/bus/pci/devices") else {
        return;
    };
    let mut devs: Vec<_> = dir.flatten().map(|e| e.path()).collect();
    devs.sort();
    for d in devs {
        let r = |f: &str| read_trim(d.join(f));
        let name = d
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        println!(
            "@@FACT pci {name} {}:{} numa={}",
            r("vendor").trim_start_matches("0x"),
            r("device").trim_start_matches("0x"),
            r("numa_node")
        );
    }
}

pub fn report_all() {
    let r = nodes();
    pci();
    report("numa-report", r);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_node_meminfo_and_names() {
        let m = "Node 0 MemTotal:         493916 kB\nNode 0 MemFree:  1 kB\n";
        assert_eq!(node_memtotal_kb(m), Some(493_916));
        assert_eq!(node_memtotal_kb("Node 3 MemTotal: 0 kB"), Some(0));
        assert_eq!(node_memtotal_kb("garbage"), None);
        let names = ["node10", "possible", "node2", "node0", "nodex", "has_cpu"];
        assert_eq!(node_ids(names.into_iter()), [0, 2, 10]);
    }
}
