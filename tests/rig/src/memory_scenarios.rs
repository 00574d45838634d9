//! Guest RAM as Cloud Hypervisor's `--memory` and `--memory-zone` shape it (`boot-hugepages`,
//! `boot-memory-file`, `gh-numa-zones`): judged from L2's /proc/meminfo (the kernel's own huge
//! page counts), from ghvmm's /proc/PID/maps and smaps and the zone's file as L2 sees them,
//! and from the SRAT the guest sent and the node sizes it reports.

use std::path::Path;

use crate::gh_scenarios::{numa_checks, srat_memory, NodeExpect, NumaExpect, NUMA_CHECKS};
use crate::l3::L3;
use crate::protocol::{Outcome, Transcript};
use crate::scenario::{Scenario, BOOT_VMM, L3_CHECKS};

/// 2 MiB huge pages L2 reserves: exactly the guest's 512 MiB.
const HUGE_PAGES: u64 = 256;

/// Shell: `HugePages_<field>` of L2's /proc/meminfo.
fn meminfo(field: &str) -> String {
    format!("$(grep '^HugePages_{field}:' /proc/meminfo | tr -dc 0-9)")
}

/// `--memory size=512M,hugepages=on,hugepage_size=2M,prefault=on` with exactly 256 huge pages
/// in L2: first a 1 GiB guest is refused with one line naming the shortage; then, while the
/// 512 MiB guest runs, every reserved page is in use (prefaulted: Free is 0 before the guest
/// touches its RAM); after ghvmm exits they are all free again.
fn hugepages_scenario() -> Scenario {
    let l3 = L3::new(BOOT_VMM, 2, "512M")
        .memory_arg("size=512M,hugepages=on,hugepage_size=2M,prefault=on")
        .without_acpi_dump();
    let (total, free) = (meminfo("Total"), meminfo("Free"));
    let script = format!(
        "echo {HUGE_PAGES} > /proc/sys/vm/nr_hugepages\n\
         [ {total} = {HUGE_PAGES} ]\n\
         l2_check hugepages-reserved $? \"L2 has {total} huge pages, wanted {HUGE_PAGES}\"\n\
         expect_clean_failure hugepages-too-few --kernel /l3/vmlinuz --memory size=1G,hugepages=on\n\
         grep -q '512 huge pages of 2048 KiB needed, the host has {HUGE_PAGES} free' /tmp/err\n\
         l2_check hugepages-message $? \"the refusal says: $(head -c 300 /tmp/err)\"\n\
         start_l3 {cmd}\n\
         ticks=0\n\
         while [ {free} != 0 ] && [ $ticks -lt 600 ] \\\n\
           && l3_running; do\n\
           sleep 0.1; ticks=$((ticks + 1))\n\
         done\n\
         used=$(( {total} - {free} ))\n\
         l2_say \"@@FACT hugepages-used $used\"\n\
         [ $used = {HUGE_PAGES} ]\n\
         l2_check hugepages-used $? \"$used of {HUGE_PAGES} huge pages in use while the guest runs (prefault=on: all of them)\"\n\
         finish_l3 {watchdog}\n\
         l2_check vmm-exit $rc \"ghvmm: $why (expected exit code 0)\"\n\
         [ {free} = {HUGE_PAGES} ]\n\
         l2_check hugepages-freed $? \"{free} of {HUGE_PAGES} huge pages free after ghvmm exited\"\n",
        cmd = l3.command(),
        watchdog = l3.watchdog_s,
    );
    let mut expect = L3_CHECKS.to_vec();
    expect.extend([
        "hugepages-reserved",
        "hugepages-too-few",
        "hugepages-message",
        "hugepages-used",
        "hugepages-freed",
    ]);
    Scenario {
        setup: script,
        l3: None,
        expect,
        ..Scenario::boot(
            "boot-hugepages",
            "--memory size=512M,hugepages=on,hugepage_size=2M,prefault=on: all 256 huge pages L2 reserved are in use while the guest runs, free after; 1G is refused with one line",
            l3,
        )
    }
    .without_acpi_dump()
}

/// The zone of `memory_file_scenario` that lives in L2's file, and its size.
const ZONE_FILE: &str = "/tmp/zone0";
const FILE_ZONE_BYTES: u64 = 256 * MIB;
/// Where the boot_params header's "HdrS" magic sits in the zone (guest address 0): the zero
/// page ghvmm writes (vmm's `ZERO_PAGE_ADDR`, 0x7000) plus its offset in boot_params.
const HDRS_OFFSET: u64 = 0x7000 + 0x202;

/// Shell helpers of `memory_file_scenario`, read from ghvmm's /proc files (arguments, so the
/// unit tests can feed them others). `file_map_bytes MAPS PATH`: the bytes of PATH mapped;
/// `anon_flags SMAPS KIB`: the VmFlags of each pathless mapping of KIB KiB.
const MEMORY_FILE_SH: &str = r#"file_map_bytes() {
    t=0
    for r in $(grep " $2\$" "$1" 2>/dev/null | cut -d' ' -f1); do
        t=$((t + 0x${r#*-} - 0x${r%-*}))
    done
    echo $t
}
anon_flags() {
    awk -v kib="$2" '/^[0-9a-f]+-[0-9a-f]+ /{path=$6; size=0} /^Size:/{size=$2} /^VmFlags:/{if (size == kib && path == "") print}' "$1" 2>/dev/null
}
"#;

/// `--memory size=0,mergeable=on` with a 256 MiB zone in L2's file `/tmp/zone0` (shared) and
/// a 256 MiB private one. Judged from L2: a file shorter than the zone is refused with one
/// line; while the guest runs, ghvmm maps all of /tmp/zone0 and the private zone's mapping
/// carries KSM's `mg` flag (the kernel merges private pages only, so that is where the advice
/// shows); after ghvmm exits the file holds the zero page ghvmm wrote into guest RAM.
fn memory_file_scenario() -> Scenario {
    let l3 = L3::new(BOOT_VMM, 2, "512M")
        .without_acpi_dump()
        .memory_arg("size=0,mergeable=on")
        .vmm_args(&format!(
            "--memory-zone id=m0,size=256M,file={ZONE_FILE},shared=on --memory-zone id=m1,size=256M"
        ));
    let (zone_kib, short) = (FILE_ZONE_BYTES >> 10, FILE_ZONE_BYTES - MIB);
    let script = format!(
        r#"{MEMORY_FILE_SH}dd if=/dev/zero of={ZONE_FILE} bs=1M seek=256 count=0 2>/dev/null
dd if=/dev/zero of=/tmp/short bs=1M seek=255 count=0 2>/dev/null
expect_clean_failure memory-file-short --kernel /l3/vmlinuz --memory size=0 --memory-zone id=m0,size=256M,file=/tmp/short
grep -q 'file=/tmp/short: {short} bytes, shorter than the zone' /tmp/err
l2_check memory-file-message $? "the refusal says: $(head -c 300 /tmp/err)"
start_l3 {cmd}
ticks=0
flags=
# The last VmFlags seen while ghvmm ran: its smaps is gone once it exits.
while t=$(file_map_bytes /proc/$l3pid/maps {ZONE_FILE}); now=$(anon_flags /proc/$l3pid/smaps {zone_kib} | tr '\n' ' '); \
  flags=${{now:-$flags}}; mg=$(echo "$flags" | grep -c ' mg'); \
  {{ [ $t != {FILE_ZONE_BYTES} ] || [ $mg = 0 ]; }} && [ $ticks -lt 600 ] \
  && l3_running; do
  sleep 0.1; ticks=$((ticks + 1))
done
l2_say "@@FACT zone-file-bytes $t"
[ $t = {FILE_ZONE_BYTES} ]
l2_check zone-file-mapped $? "ghvmm maps $t bytes of {ZONE_FILE} (want {FILE_ZONE_BYTES}, zone m0)"
l2_say "@@FACT private-zone-vmflags $flags"
[ $mg != 0 ]
l2_check ram-mergeable $? "no mg in the VmFlags of ghvmm's {zone_kib} KiB private mapping (zone m1): $flags"
finish_l3 {watchdog}
l2_check vmm-exit $rc "ghvmm: $why (expected exit code 0)"
magic=$(dd if={ZONE_FILE} bs=1 skip={HDRS_OFFSET} count=4 2>/dev/null)
[ "$magic" = HdrS ]
l2_check zone-file-holds-ram $? "{ZONE_FILE} at {HDRS_OFFSET:#x} (the zero page's boot_params header) holds '$magic', want HdrS"
"#,
        cmd = l3.command(),
        watchdog = l3.watchdog_s,
    );
    let mut expect = L3_CHECKS.to_vec();
    expect.extend([
        "memory-file-short",
        "memory-file-message",
        "zone-file-mapped",
        "ram-mergeable",
        "zone-file-holds-ram",
    ]);
    Scenario {
        setup: script,
        l3: None,
        expect,
        ..Scenario::boot(
            "boot-memory-file",
            "--memory size=0,mergeable=on, a 256M zone in L2's file=/tmp/zone0 (shared) and a private one: the file mapped whole, the private zone's mapping has KSM's mg flag, the zero page's HdrS in the file after the run; a short file is refused with one line",
            l3,
        )
    }
    .without_acpi_dump()
}

const MIB: u64 = 1 << 20;
/// The zones of `zones_scenario`: a CPU node's RAM and a node of memory only.
const GRACE: u64 = 384 * MIB;
const FAR: u64 = 128 * MIB;
pub const ZONE_RAM_CHECK: &str = "zone-ram";
/// The guest's node of the memory-only domain 1 (see `zones_scenario`).
const FAR_NODE: u32 = 9;

/// Each proximity domain's SRAT Memory Affinity ranges, joined, are exactly `want[domain]`;
/// and, given `guest` = (node, bytes), the guest sees that node (in its own numbering) with
/// 90-100% of `bytes` (less what the kernel keeps for itself).
pub fn compare_zone_ram(
    want: &[Vec<(u64, u64)>],
    guest: Option<(u32, u64)>,
    dir: &Path,
    t: &Transcript,
) -> Outcome {
    let srat = match std::fs::read(dir.join("acpi").join("SRAT.dat")) {
        Ok(b) => b,
        Err(e) => return Outcome::Fail(format!("the guest sent no SRAT: {e}")),
    };
    let entries = match srat_memory(&srat) {
        Ok(v) => v,
        Err(e) => return Outcome::Fail(format!("SRAT: {e}")),
    };
    let mut bad = Vec::new();
    for (node, ranges) in want.iter().enumerate() {
        let mut got: Vec<(u64, u64)> = entries
            .iter()
            .filter(|m| m.enabled && m.domain as usize == node)
            .map(|m| (m.base, m.len))
            .collect();
        got.sort_unstable();
        let mut joined: Vec<(u64, u64)> = Vec::new();
        for (base, len) in got {
            match joined.last_mut() {
                Some((b, l)) if *b + *l == base => *l += len,
                _ => joined.push((base, len)),
            }
        }
        if &joined != ranges {
            bad.push(format!(
                "node {node}: SRAT ranges {joined:x?}, want {ranges:x?}"
            ));
        }
    }
    if let Some((node, bytes)) = guest {
        let prefix = format!("{node} ");
        let kb = t
            .facts
            .iter()
            .filter(|(k, _)| k == "node")
            .find_map(|(_, v)| v.strip_prefix(prefix.as_str()))
            .and_then(|rest| {
                rest.split_whitespace()
                    .find_map(|w| w.strip_prefix("memkb="))
                    .and_then(|n| n.parse::<u64>().ok())
            });
        let zone_kb = bytes >> 10;
        match kb {
            Some(kb) if kb <= zone_kb && kb >= zone_kb * 9 / 10 => {}
            other => bad.push(format!(
                "the guest's node {node} has {other:?} kB, want at most {zone_kb} kB and at least 90% of it"
            )),
        }
    }
    if bad.is_empty() {
        Outcome::Pass
    } else {
        Outcome::Fail(bad.join("; "))
    }
}

/// Cloud Hypervisor's memory.md shape on a GH-like machine: `--memory size=0`, a CPU node with
/// a 384 MiB zone, a second node with a 128 MiB zone (shared: a memfd) and no vCPUs, a given
/// distance, and one GH slot whose 8 Generic Initiator nodes stay empty.
fn zones_scenario() -> Scenario {
    let l3 = L3::new(BOOT_VMM, 2, "512M")
        .memory_arg("size=0")
        .vmm_args(
            "--memory-zone id=grace,size=384M --memory-zone id=far,size=128M,shared=on \
             --numa guest_numa_id=0,cpus=0-1,memory_zones=grace \
             --numa guest_numa_id=1,memory_zones=far,distances=0@30 --gh slots=1,bar_space=64G",
        )
        .cmdline("ghvmm.numa=report");
    // Linux numbers nodes in the order it parses the SRAT: processor entries, then Generic
    // Initiator entries, then memory. So proximity domain 1 (memory only) is the guest's node
    // 9, after the GH slot's domains 2-9 (its nodes 1-8). `pxm[node]` undoes that.
    let pxm: [usize; 10] = [0, 2, 3, 4, 5, 6, 7, 8, 9, 1];
    let distance = |a: usize, b: usize| match (a, b) {
        _ if a == b => 10,
        (0, 1) | (1, 0) => 30,
        _ => 20,
    };
    let distances = pxm
        .iter()
        .map(|&a| pxm.iter().map(|&b| distance(a, b)).collect())
        .collect();
    let nodes = pxm
        .iter()
        .map(|&p| NodeExpect {
            cpus: if p == 0 { "0-1" } else { "" },
            memory: p <= 1,
        })
        .collect();
    let expect = NumaExpect {
        nodes,
        distances,
        generic_initiator: "1-8",
        // By proximity domain: the SRAT's Generic Initiator entries.
        slots: vec![(2..10).collect()],
        devices: Vec::new(),
    };
    let ram = vec![vec![(0, GRACE)], vec![(GRACE, FAR)]];
    Scenario {
        acpi: true,
        // Not gh_scenarios' srat-memory: it indexes nodes by domain, which Linux renumbers
        // here; zone-ram checks every domain's ranges exactly instead.
        expect: [L3_CHECKS, NUMA_CHECKS, &[ZONE_RAM_CHECK]].concat(),
        host_checks: Some(Box::new(move |_, dir, t| {
            let mut v = numa_checks(&expect, dir, t);
            v.push((ZONE_RAM_CHECK.into(), compare_zone_ram(&ram, Some((FAR_NODE, FAR)), dir, t)));
            v
        })),
        ..Scenario::boot(
            "gh-numa-zones",
            "--memory size=0 with two --memory-zones in two nodes (--numa memory_zones=), a GH slot: SRAT memory per node, the guest's node sizes",
            l3,
        )
    }
}

pub fn all() -> Vec<Scenario> {
    vec![
        hugepages_scenario(),
        memory_file_scenario(),
        zones_scenario(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn srat_with(entries: &[(u32, u64, u64)]) -> Vec<u8> {
        let mut t = vec![0u8; 48];
        t[0..4].copy_from_slice(b"SRAT");
        for &(domain, base, len) in entries {
            let mut e = vec![0u8; 40];
            e[0] = 1;
            e[1] = 40;
            e[2..6].copy_from_slice(&domain.to_le_bytes());
            e[8..16].copy_from_slice(&base.to_le_bytes());
            e[16..24].copy_from_slice(&len.to_le_bytes());
            e[28] = 1;
            t.extend(e);
        }
        let len = t.len() as u32;
        t[4..8].copy_from_slice(&len.to_le_bytes());
        let sum = t.iter().fold(0u8, |s, b| s.wrapping_add(*b));
        t[9] = 0u8.wrapping_sub(sum);
        t
    }

    fn judge(entries: &[(u32, u64, u64)], node1_kb: u64) -> Outcome {
        let dir = std::env::temp_dir().join(format!("zone-ram-{}-{node1_kb}", std::process::id()));
        std::fs::create_dir_all(dir.join("acpi")).unwrap();
        std::fs::write(dir.join("acpi/SRAT.dat"), srat_with(entries)).unwrap();
        let mut t = Transcript::default();
        t.feed(&format!(
            "@@FACT node 9 cpus= memkb={node1_kb} distance=30,10"
        ));
        let want = vec![vec![(0, GRACE)], vec![(GRACE, FAR)]];
        let o = compare_zone_ram(&want, Some((FAR_NODE, FAR)), &dir, &t);
        std::fs::remove_dir_all(&dir).unwrap();
        o
    }

    #[test]
    fn zone_ram_judges_each_node_and_the_guests_view() {
        let split = [
            (0, 0, 256 * MIB),
            (0, 256 * MIB, 128 * MIB),
            (1, GRACE, FAR),
        ];
        assert_eq!(judge(&split, 128_000), Outcome::Pass);
        // All RAM in node 0 (zones ignored), or a guest that sees node 1 empty.
        let one = [(0, 0, GRACE + FAR)];
        assert!(matches!(judge(&one, 128_000), Outcome::Fail(m) if m.contains("node 0")));
        assert!(matches!(judge(&split, 0), Outcome::Fail(m) if m.contains("node 9 has")));
    }

    #[test]
    fn the_memory_file_helpers_read_maps_and_smaps() {
        let sh = crate::shell_test::ShellChecks::new("memfile");
        let maps = sh.write(
            "maps",
            "7f0000000000-7f0010000000 rw-s 00000000 00:1a 42    /tmp/zone0\n\
             7f0010000000-7f0020000000 rw-p 00000000 00:00 0 \n\
             7f0020000000-7f0020001000 rw-s 00000000 00:1a 43    /tmp/zone0.old",
        );
        let out = sh.run(
            &format!("{MEMORY_FILE_SH}file_map_bytes {maps} /tmp/zone0"),
            &[""],
        );
        assert_eq!(out, vec![FILE_ZONE_BYTES.to_string()]);
        let smaps = sh.write(
            "smaps",
            "7f0000000000-7f0010000000 rw-s 00000000 00:1a 42    /tmp/zone0\n\
             Size:             262144 kB\n\
             VmFlags: rd wr sh mr mw me ms sd\n\
             7f0010000000-7f0020000000 rw-p 00000000 00:00 0 \n\
             Size:             262144 kB\n\
             VmFlags: rd wr mr mw me ac sd hg mg\n\
             7f0020000000-7f0020001000 rw-p 00000000 00:00 0 \n\
             Size:                  4 kB\n\
             VmFlags: rd wr mr mw me ac sd mg",
        );
        let flags = |kib: u64| {
            sh.run(
                &format!("{MEMORY_FILE_SH}anon_flags {smaps} {kib}"),
                &["VmFlags"],
            )
        };
        assert_eq!(flags(262144), vec!["VmFlags: rd wr mr mw me ac sd hg mg"]);
        assert!(flags(1024).is_empty());
    }

    #[test]
    fn scripts_name_their_checks() {
        for s in all() {
            let script = s.script();
            for check in &s.expect {
                let by_l2 = script.contains(&format!("l2_check {check} "))
                    || script.contains(&format!("expect_clean_failure {check} "));
                let by_host = [ZONE_RAM_CHECK, "numa-nodes", "srat-gi"].contains(check);
                assert!(
                    by_l2 || by_host || L3_CHECKS.contains(check) || NUMA_CHECKS.contains(check),
                    "{}: {check}",
                    s.name
                );
            }
        }
    }
}
