//! The demo guest (`ghvmm.mode=demo`, `cargo xtask demo`): shows, from inside the guest, what
//! ghvmm is for, and checks each thing it shows. Lines for people start with `@@DEMO` (the rig
//! prints them and keeps the rest of the console in the log); each step also reports a check:
//!
//!   `demo-device`   the GPU-like device at boot, as `lspci -v` shows it: BAR2 a 64-bit
//!                   prefetchable power of two
//!   `demo-length`   its real length (`ghvmm.gh_len`) is below that power of two
//!   `demo-numa`     node 0 holds the CPUs and the memory; 8 Generic Initiator nodes per GH
//!                   slot (`ghvmm.gh_slots`), without CPUs or memory; 8 of the SRAT's Generic
//!                   Initiator entries name the boot device's address
//!   `demo-padding`  a read past the real length gives the contract's padding, and a write
//!                   there does not stick
//!   `demo-hotplug-N` the N-th hot-added device (`ghvmm.cycles` of them) arrived, as lspci
//!                   shows it, and left; L2 adds and removes it (`@@HOTPLUG` lines, hotplug.rs)
//!
//! After the last removal the guest waits at gate 1 (gate.rs) until L2 has ghvmm's answer;
//! `demo-end-gate` reports only a gate that failed.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::checks::{meminfo_kib, report};
use crate::cmdline::Expectations;
use crate::demo_format::{
    compress_list, distance_table, expand_list, human_size, lspci_lines, lspci_size,
    srat_generic_initiators,
};
use crate::gate::Gate;
use crate::numa::{node_ids, node_memtotal_kb};
use crate::util::{read_trim, wait_for};
use crate::vfio::{find_all, resource, BarView, IORESOURCE_MEM_64, IORESOURCE_PREFETCH};

const VENDOR: &str = "0x1af4";
const DEVICE: &str = "0x1110";
/// The device's memory BAR (ivshmem's BAR2, which the variant driver exposes).
const MEM_BAR: usize = 2;
/// Generic Initiator nodes ghvmm gives each GH slot (docs/gh-profile.md).
const GI_NODES_PER_SLOT: usize = 8;
const NODE_ROOT: &str = "/sys/devices/system/node";
const SRAT: &str = "/sys/firmware/acpi/tables/SRAT";
/// How long the guest waits for L2 to add or remove a device.
const HOTPLUG_WAIT: Duration = Duration::from_secs(120);
/// How long a new function's resource files may take to appear after its directory.
const RESOURCE_WAIT: Duration = Duration::from_secs(20);
/// The phase of the gate the guest waits at before powering off (gate.rs).
const END_GATE: u64 = 1;
/// Written into the padding; it must not read back.
const PADDING_PROBE: u64 = 0xdead_beef;

fn show(text: &str) {
    println!("@@DEMO {text}");
    let _ = std::io::stdout().flush();
}

fn heading(text: &str) {
    show("");
    show(&format!("== {text}"));
}

fn bdf(dev: &Path) -> String {
    dev.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Shows a function as lspci -v would; the error when sysfs could not be read.
fn show_lspci(dev: &Path) -> Result<(), String> {
    let config = std::fs::read(dev.join("config")).map_err(|e| format!("config: {e}"))?;
    let res =
        std::fs::read_to_string(dev.join("resource")).map_err(|e| format!("resource: {e}"))?;
    for line in lspci_lines(&bdf(dev), &config, &res, &read_trim(dev.join("numa_node")))? {
        show(&line);
    }
    Ok(())
}

pub fn run(expect: &Expectations) {
    let len = expect.gh_len.unwrap_or(0);
    let slots = expect.gh_slots.unwrap_or(1) as usize;
    show("");
    show("Hello from an L3 guest that ghvmm booted (KVM inside QEMU-TCG), in the GH profile.");
    show(&format!(
        "kernel {}; CPUs {}; MemTotal {} MiB",
        read_trim("/proc/sys/kernel/osrelease"),
        read_trim("/sys/devices/system/cpu/online"),
        meminfo_kib(
            &std::fs::read_to_string("/proc/meminfo").unwrap_or_default(),
            "MemTotal"
        )
        .unwrap_or(0)
            / 1024
    ));
    let boot: Vec<PathBuf> = find_all(VENDOR, DEVICE);
    heading("1. The GPU-like device, as lspci -v shows it");
    let device = boot_device(&boot, len);
    heading("2. Its real length and its BAR");
    report("demo-length", length(device.as_deref(), len));
    heading(&format!(
        "3. NUMA: node 0 and {GI_NODES_PER_SLOT} Generic Initiator nodes per GH slot ({slots} slots)"
    ));
    report("demo-numa", numa(device.as_deref(), slots));
    heading("4. The padding past the real length");
    report(
        "demo-padding",
        match &device {
            Some(dev) => padding(dev, &expect.gh_mode, len),
            None => Err("no device to read".into()),
        },
    );
    heading("5. Hot plug: L2 adds a second device, then removes it");
    let known: BTreeSet<PathBuf> = boot.into_iter().collect();
    // Held after the last removal until L2 has ghvmm's answer to it: a guest that powered
    // off at once would end ghvmm before it answers, and the answer is part of the demo.
    let gate = Gate::new();
    if let Err(e) = &gate {
        report("demo-end-gate", Err(e.clone()));
    }
    let mut plugged = true;
    for n in 1..=expect.cycles.unwrap_or(0) {
        let name = format!("demo-hotplug-{n}");
        match hotplug_cycle(n, &known) {
            Ok(()) => report(&name, Ok(())),
            Err(e) => {
                show(&format!("hot plug {n} FAILED: {e}"));
                report(&name, Err(e));
                // L2 waits for markers that will not come; its own waits time out.
                plugged = false;
                break;
            }
        }
    }
    if let (true, Ok(gate)) = (plugged, &gate) {
        if let Err(e) = gate.pass(END_GATE) {
            report("demo-end-gate", Err(e));
        }
    }
    show("");
    show("Done; powering off.");
}

/// Step 1: the one device present at boot, shown; its BAR2 a 64-bit prefetchable power of
/// two at least the real length (check `demo-device`).
fn boot_device(boot: &[PathBuf], len: u64) -> Option<PathBuf> {
    let result = (|| {
        let [dev] = boot else {
            return Err(format!(
                "{} {VENDOR}:{DEVICE} functions at boot, want 1",
                boot.len()
            ));
        };
        show_lspci(dev)?;
        let (start, size, flags) = resource(dev, MEM_BAR)?;
        let want = IORESOURCE_MEM_64 | IORESOURCE_PREFETCH;
        if flags & want != want || !size.is_power_of_two() || size < len {
            return Err(format!(
                "BAR{MEM_BAR} at {start:#x}: {size:#x} bytes, flags {flags:#x}; want a 64-bit prefetchable power of two of at least {len:#x}"
            ));
        }
        Ok(dev.clone())
    })();
    match result {
        Ok(dev) => {
            report("demo-device", Ok(()));
            Some(dev)
        }
        Err(e) => {
            show(&format!("FAILED: {e}"));
            report("demo-device", Err(e));
            None
        }
    }
}

/// Step 2: the real length the rig configured against the BAR the guest sees.
fn length(dev: Option<&Path>, len: u64) -> Result<(), String> {
    let dev = dev.ok_or("no device")?;
    let (_, size, _) = resource(dev, MEM_BAR)?;
    show(&format!(
        "real length {} ({len} bytes, from the rig: the guest cannot read it)",
        human_size(len)
    ));
    show(&format!(
        "BAR{MEM_BAR} size   {} [size={}]: ghvmm pads {} ({} bytes) after the real memory",
        human_size(size),
        lspci_size(size),
        human_size(size.saturating_sub(len)),
        size.saturating_sub(len)
    ));
    if len == 0 || len >= size {
        return Err(format!(
            "the real length {len:#x} leaves no padding in a BAR of {size:#x} bytes"
        ));
    }
    Ok(())
}

/// One node's CPUs, MemTotal and `distance` line.
struct Node {
    id: u32,
    cpus: String,
    mem_kb: u64,
    distance: String,
}

fn read_nodes() -> Result<Vec<Node>, String> {
    let names: Vec<String> = std::fs::read_dir(NODE_ROOT)
        .map_err(|e| format!("{NODE_ROOT}: {e}"))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    Ok(node_ids(names.iter().map(String::as_str))
        .into_iter()
        .map(|id| {
            let dir = Path::new(NODE_ROOT).join(format!("node{id}"));
            Node {
                id,
                cpus: read_trim(dir.join("cpulist")),
                mem_kb: std::fs::read_to_string(dir.join("meminfo"))
                    .ok()
                    .and_then(|m| node_memtotal_kb(&m))
                    .unwrap_or(0),
                distance: read_trim(dir.join("distance")),
            }
        })
        .collect())
}

/// Step 3: the nodes, the Generic Initiators and the distance table.
fn numa(dev: Option<&Path>, slots: usize) -> Result<(), String> {
    let nodes = read_nodes()?;
    let gi_text = read_trim(Path::new(NODE_ROOT).join("has_generic_initiator"));
    let gi = expand_list(&gi_text).ok_or(format!("has_generic_initiator {gi_text:?}"))?;
    let cpu_nodes: Vec<&Node> = nodes.iter().filter(|n| !gi.contains(&n.id)).collect();
    for n in &cpu_nodes {
        show(&format!(
            "node {}: CPUs {}, memory {} MiB",
            n.id,
            if n.cpus.is_empty() { "none" } else { &n.cpus },
            n.mem_kb / 1024
        ));
    }
    show(&format!(
        "nodes {gi_text}: {} Generic Initiator nodes (no CPUs, no memory: the GPUs' own)",
        gi.len()
    ));
    let srat = std::fs::read(SRAT).map_err(|e| format!("{SRAT}: {e}"))?;
    let entries = srat_generic_initiators(&srat)?;
    let mut named: Vec<(String, Vec<u32>)> = Vec::new();
    for (domain, bdf) in entries {
        match named.iter_mut().find(|(b, _)| *b == bdf) {
            Some((_, v)) => v.push(domain),
            None => named.push((bdf, vec![domain])),
        }
    }
    for (bdf, domains) in &named {
        show(&format!(
            "  SRAT Generic Initiator entries: nodes {} -> {bdf}",
            compress_list(domains)
        ));
    }
    let boot_bdf = dev.map_or_else(|| "(no boot device)".to_string(), bdf);
    show(&format!(
        "the device {boot_bdf} itself is in node {} (its host bridge's _PXM: with the CPUs)",
        dev.map(|d| read_trim(d.join("numa_node")))
            .unwrap_or_default()
    ));
    show("distances (/sys/devices/system/node/node*/distance):");
    let rows: Vec<(u32, String)> = nodes.iter().map(|n| (n.id, n.distance.clone())).collect();
    for line in distance_table(&rows)? {
        show(&format!("  {line}"));
    }
    let node0 = nodes.iter().find(|n| n.id == 0).ok_or("no node 0")?;
    if node0.cpus.is_empty() || node0.mem_kb == 0 {
        return Err(format!(
            "node 0 has CPUs {:?} and {} kB",
            node0.cpus, node0.mem_kb
        ));
    }
    if gi.len() != GI_NODES_PER_SLOT * slots {
        return Err(format!(
            "{} Generic Initiator nodes ({gi_text}), want {} for {slots} slots",
            gi.len(),
            GI_NODES_PER_SLOT * slots
        ));
    }
    if let Some(n) = nodes
        .iter()
        .find(|n| gi.contains(&n.id) && (!n.cpus.is_empty() || n.mem_kb != 0))
    {
        return Err(format!(
            "Generic Initiator node {} has CPUs {:?} and {} kB",
            n.id, n.cpus, n.mem_kb
        ));
    }
    let for_boot = named
        .iter()
        .find(|(b, _)| *b == boot_bdf)
        .map_or(0, |(_, d)| d.len());
    if for_boot != GI_NODES_PER_SLOT {
        return Err(format!(
            "the SRAT names {boot_bdf} in {for_boot} Generic Initiator entries, want {GI_NODES_PER_SLOT}"
        ));
    }
    Ok(())
}

/// Step 4: one 4-byte read at the first padding byte, a write there, and the read again.
fn padding(dev: &Path, mode: &str, len: u64) -> Result<(), String> {
    let (_, size, _) = resource(dev, MEM_BAR)?;
    let pad = if mode == "kernel_pads" {
        u64::from(u32::MAX)
    } else {
        0
    };
    let m = BarView::open(dev, MEM_BAR, size)?;
    let before = m.read_width(len, 4)?;
    show(&format!(
        "read  BAR{MEM_BAR}+{len:#x} (the first padding byte, 4 bytes): {before:#010x}"
    ));
    m.write_width(len, 4, PADDING_PROBE)?;
    let after = m.read_width(len, 4)?;
    show(&format!(
        "write {PADDING_PROBE:#010x} there, read again:               {after:#010x}{}",
        if after == pad {
            " (the write did not stick)"
        } else {
            ""
        }
    ));
    if before != pad || after != pad {
        return Err(format!(
            "the padding at {len:#x} read {before:#x}, then {after:#x} after a write; want {pad:#x} both times"
        ));
    }
    Ok(())
}

/// Step 5, once: wait for a function not present at boot, show it, tell L2, wait for it to go.
fn hotplug_cycle(n: u32, known: &BTreeSet<PathBuf>) -> Result<(), String> {
    show(&format!("hot plug {n}: waiting for L2 to add a device"));
    // Numbered: L2 waits for the n-th before its next request (the first is what its
    // start_api_guest waits for).
    println!("@@HOTPLUG ready {n}");
    let _ = std::io::stdout().flush();
    let dev = wait_for(HOTPLUG_WAIT, || {
        find_all(VENDOR, DEVICE)
            .into_iter()
            .find(|d| !known.contains(d))
    })
    .ok_or(format!(
        "no new {VENDOR}:{DEVICE} function after {HOTPLUG_WAIT:?}"
    ))?;
    // The function's directory appears before its resource files.
    let _ = wait_for(RESOURCE_WAIT, || {
        dev.join(format!("resource{MEM_BAR}"))
            .exists()
            .then_some(())
    });
    show(&format!("hot plug {n}: the guest sees a new function:"));
    show_lspci(&dev)?;
    println!("@@HOTPLUG present {n} {}", bdf(&dev));
    let _ = std::io::stdout().flush();
    wait_for(HOTPLUG_WAIT, || (!dev.exists()).then_some(()))
        .ok_or(format!("{} still there after {HOTPLUG_WAIT:?}", bdf(&dev)))?;
    show(&format!(
        "hot plug {n}: {} is gone from the guest",
        bdf(&dev)
    ));
    println!("@@HOTPLUG gone {n}");
    let _ = std::io::stdout().flush();
    Ok(())
}
