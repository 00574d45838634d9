//! `cargo xtask bench`: boot time of an L3 guest under ghvmm vs QEMU/KVM, both inside the same
//! L2, alternating, measured on L2's clock from VMM start to the checker's first line.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::images;
use crate::l3::{Kernel, Vmm, L3};
use crate::setup::say;

const RUNS: usize = 3;
const MEM: &str = "512M";
const CPUS: u32 = 2;

/// The four VMM x kernel-format combinations, in the order they alternate.
const VARIANTS: [(&str, Vmm, Kernel); 4] = [
    ("ghvmm-bzimage", Vmm::Ghvmm, Kernel::BzImage),
    ("qemu-bzimage", Vmm::Qemu, Kernel::BzImage),
    ("ghvmm-pvh", Vmm::Ghvmm, Kernel::Vmlinux),
    ("qemu-pvh", Vmm::Qemu, Kernel::Vmlinux),
];

/// The same guest for every VMM: QEMU's guest is told `ghvmm.platform=qemu`, which only
/// makes the checker skip ghvmm-specific checks after its `@@INIT` marker.
fn command(vmm: Vmm, kernel: Kernel) -> String {
    L3::new(vmm, CPUS, MEM).kernel(kernel).command()
}

/// The GPU-like device bench: copy bandwidth into the mapped BAR vs RAM, KVM's MMIO
/// exits during that copy (read from L2's KVM debugfs around the guest's markers), and the
/// cost of a padding read vs a read of an empty MMIO address.
const GH_LEN: u64 = 48 << 20;

fn gh_script() -> String {
    let user = format!(
        "{}vu_start $IVSHMEM {USER_SOCKET}\n{}kill $vupid; wait $vupid\n",
        crate::vfio_user_scenarios::HELPERS,
        gh_run(
            "user-gh-",
            &format!("--user-device socket={USER_SOCKET}"),
            true
        )
    );
    format!(
        "{bind}mount -t debugfs none /sys/kernel/debug\n{direct}{user}",
        bind = crate::vfio_scenarios::bind_variant("vmm_pads", GH_LEN, ""),
        direct = gh_run("gh-", "--device path=$IVSHMEM", false),
    )
}

/// The socket of the vfio-user part.
const USER_SOCKET: &str = "/tmp/gpu-bench.sock";

/// Shell: one bench-gh guest with the device given by `device_args`; its `@@BENCH gh-*` lines
/// are printed with `prefix` instead of `gh-`, with the KVM MMIO exits during the copy (read
/// from L2's KVM debugfs around the guest's markers).
fn gh_run(prefix: &str, device_args: &str, shared: bool) -> String {
    let mut l3 = L3::new(Vmm::Ghvmm, 2, "512M")
        .cmdline(&format!("ghvmm.mode=bench-gh ghvmm.gh_len={GH_LEN}"))
        .vmm_args(device_args);
    if shared {
        l3 = l3.shared_memory();
    }
    format!(
        "{ghvmm} > /tmp/gh.out 2>&1 < /dev/null &\n\
         PID=$!\n\
         n=0; while ! grep -q @@COPY-START /tmp/gh.out && [ $n -lt 600 ]; do sleep 0.1; n=$((n+1)); done\n\
         D=$(ls -d /sys/kernel/debug/kvm/$PID-* | head -1)\n\
         A=$(cat $D/mmio_exits)\n\
         n=0; while ! grep -q @@COPY-END /tmp/gh.out && [ $n -lt 600 ]; do sleep 0.1; n=$((n+1)); done\n\
         B=$(cat $D/mmio_exits)\n\
         wait $PID\n\
         echo \"@@BENCH {prefix}copy-mmio-exits $((B - A))\"\n\
         grep -a @@BENCH /tmp/gh.out | sed 's/@@BENCH gh-/@@BENCH {prefix}/'\n",
        ghvmm = l3.command()
    )
}

/// Hot-plug latency: from the API call to the guest seeing the device, for a small
/// BAR and for one 1024 times larger; `HOTPLUG_RUNS` of each, alternating sizes would need a
/// module reload per run, so the small ones run first.
const HOTPLUG_SMALL: u64 = 64 << 10;
const HOTPLUG_LARGE: u64 = HOTPLUG_SMALL * 1024;
const HOTPLUG_RUNS: u32 = 5;

/// Shell: unbinds ivshmem from whatever variant driver instance holds it, reloads the test
/// driver with `len` bytes and binds it again.
fn reload_variant(len: u64) -> String {
    format!(
        "[ -e $IVSHMEM/driver ] && echo $(basename $IVSHMEM) > $IVSHMEM/driver/unbind\n\
         rmmod ghvmm_test_vfio 2>/dev/null\n{}",
        crate::vfio_scenarios::bind_variant("vmm_pads", len, "")
    )
}

/// The VMM of both hot-plug parts: one empty GH slot, the API, a guest that follows
/// `2 * HOTPLUG_RUNS` arrivals.
fn hotplug_ghvmm() -> String {
    L3::new(Vmm::Ghvmm, 2, "512M")
        .cmdline(&format!(
            "ghvmm.vfio=hotplug ghvmm.cycles={}",
            2 * HOTPLUG_RUNS
        ))
        .vmm_args("--gh slots=1 --api-socket path=/tmp/api.sock")
        .command()
}

/// Shell: `HOTPLUG_RUNS` timed adds of `$IVSHMEM` to GH slot 0, numbered from `first`, from
/// the API call to the guest's `@@HOTPLUG present` line (`@@BENCH label ms`), each removed
/// again; `after_first_add` runs once, while the first is attached.
fn timed_adds(label: &str, first: u32, after_first_add: &str) -> String {
    format!(
        "for i in $(seq {first} {last}); do\n\
           /bin/checker time-to-file {label} /tmp/l3.out \"@@HOTPLUG present $i \" -- \
             $R add-device path=$IVSHMEM,id=gpu0,gh_slot=0 >> $L2_DEFER\n\
           [ $i = {first} ] && {{ {after_first_add}; }}\n\
           $R remove-device gpu0 > /dev/null\n\
           wait_marker \"@@HOTPLUG gone $i\" 120\n\
         done\n",
        last = first + HOTPLUG_RUNS - 1
    )
}

fn hotplug_script() -> String {
    let ghvmm = hotplug_ghvmm();
    let runs = |label: &str, first: u32| timed_adds(label, first, ":");
    format!(
        "{small}start_l3 {ghvmm}\n\
         R=\"/bin/ghvmm-remote --api-socket /tmp/api.sock\"\n\
         wait_marker '@@HOTPLUG ready' 120\n\
         {a}{large}{b}finish_l3 120\n",
        small = reload_variant(HOTPLUG_SMALL),
        large = reload_variant(HOTPLUG_LARGE),
        a = runs("hotplug-small-ms", 1),
        b = runs("hotplug-large-ms", 1 + HOTPLUG_RUNS),
    )
}

/// Scale, in a second L2 whose ivshmem is a sparse 128 GiB file: ghvmm's RSS
/// before any device, after small-BAR cycles (guest RAM now pinned for DMA and resident), and
/// with the GH-sized BAR (96 GiB - 4 KiB real, 128 GiB in the guest) attached; and the hot-add
/// latency of that BAR against the 64 KiB one, in the same run.
fn scale_script() -> String {
    use crate::scale_scenarios::LEN;
    let ghvmm = hotplug_ghvmm();
    let rss = |label: &str| {
        format!(
            "echo \"@@BENCH {label} $($R info | grep -o '\"rss_kib\": *[0-9]*' | grep -o '[0-9]*$')\" >> $L2_DEFER\n"
        )
    };
    let runs = timed_adds;
    format!(
        "{small}start_l3 {ghvmm}\n\
         R=\"/bin/ghvmm-remote --api-socket /tmp/api.sock\"\n\
         wait_marker '@@HOTPLUG ready' 120\n\
         {rss_none}{a}{rss_without}{large}{b}finish_l3 120\n",
        small = reload_variant(HOTPLUG_SMALL),
        large = reload_variant(LEN),
        rss_none = rss("scale-rss-no-device-kib"),
        rss_without = rss("scale-rss-without-kib"),
        a = runs("scale-small-ms", 1, ":"),
        b = runs(
            "scale-large-ms",
            1 + HOTPLUG_RUNS,
            rss("scale-rss-with-kib").trim_end()
        ),
    )
}

fn script() -> String {
    let mut s = String::new();
    for _ in 0..RUNS {
        for (label, vmm, kernel) in VARIANTS {
            s.push_str(&format!(
                "/bin/checker time-to-marker {label} @@INIT -- {}\n",
                command(vmm, kernel)
            ));
        }
    }
    s
}

/// Every `@@BENCH label` figure of a run, in order, and their median.
fn runs_of(t: &crate::protocol::Transcript, label: &str) -> (Vec<u64>, Option<u64>) {
    let mut v: Vec<u64> = t
        .bench
        .iter()
        .filter(|(l, _)| l == label)
        .map(|(_, ms)| *ms)
        .collect();
    (v.clone(), median(&mut v))
}

fn median(v: &mut [u64]) -> Option<u64> {
    v.sort_unstable();
    v.get(v.len() / 2).copied()
}

pub fn run(root: &Path) -> Result<()> {
    let prep = crate::prepare(root)?;
    let vmlinux = images::vmlinux_overlay(&prep.paths)?;
    say("bench: booting L2; inside it ghvmm and QEMU/KVM boot the same L3, alternating, 3 times each");
    let dir = prep.paths.target().join("bench");
    let (t, finished, _) = crate::boot_l2(
        &prep,
        &dir,
        &[
            images::qemu_overlay(&prep.paths)?,
            vmlinux,
            images::scenario_overlay(&(script() + &gh_script() + &hotplug_script())),
        ],
        &[],
        crate::DEFAULT_IVSHMEM,
        Duration::from_secs(1200),
        false,
    )?;
    if !finished {
        bail!(
            "the bench run timed out (log: {})",
            dir.join("console.log").display()
        );
    }
    let mut medians = Vec::new();
    println!();
    println!("VMM start to L3 init (ms, L2 clock)  runs                   median");
    for (label, _, _) in VARIANTS {
        let mut runs: Vec<u64> = t
            .bench
            .iter()
            .filter(|(l, _)| l == label)
            .map(|(_, ms)| *ms)
            .collect();
        if runs.len() != RUNS {
            bail!(
                "expected {RUNS} timings for {label}, got {runs:?} (log: {})",
                dir.join("console.log").display()
            );
        }
        let m = median(&mut runs).unwrap_or(0);
        println!("{label:<36} {:<22} {m}", format!("{runs:?}"));
        medians.push((label, runs, m));
    }
    let ratio = |a: usize, b: usize| medians[a].2 as f64 / medians[b].2.max(1) as f64;
    let same_bz = ratio(0, 1);
    let same_pvh = ratio(2, 3);
    let best = ratio(2, 1);
    println!("ratio ghvmm/qemu, same bzImage:        {same_bz:.2}");
    println!("ratio ghvmm/qemu, same vmlinux (PVH):  {same_pvh:.2}");
    println!("ratio ghvmm PVH / qemu bzImage:        {best:.2}");
    println!(
        "goal ghvmm <= 0.50 x qemu (same kernel file): {}",
        if same_bz.max(same_pvh) <= 0.5 {
            "met"
        } else {
            "not met"
        }
    );
    let value = |label: &str| t.bench.iter().find(|(l, _)| l == label).map(|(_, v)| *v);
    let gh = (
        value("gh-bar-copy-us"),
        value("gh-ram-copy-us"),
        value("gh-copy-mmio-exits"),
        value("gh-pad-read-ns"),
        value("gh-empty-read-ns"),
    );
    let (Some(bar_us), Some(ram_us), Some(exits), Some(pad_ns), Some(empty_ns)) = gh else {
        bail!(
            "the GPU-like device bench reported {gh:?} (log: {})",
            dir.join("console.log").display()
        );
    };
    let bandwidth = ram_us as f64 / bar_us.max(1) as f64;
    let padding = pad_ns as f64 / empty_ns.max(1) as f64;
    println!();
    println!("GPU-like device, 48 MiB, ghvmm pads (L3 clock)");
    println!("copy 4 x 32 MiB into the mapped BAR: {bar_us} us, into guest RAM: {ram_us} us");
    println!(
        "bandwidth BAR / RAM: {bandwidth:.2}   (goal >= 0.90: {})",
        if bandwidth >= 0.9 { "met" } else { "not met" }
    );
    println!(
        "MMIO exits during the BAR copy: {exits}   (goal 0: {})",
        if exits == 0 { "met" } else { "not met" }
    );
    println!("padding read {pad_ns} ns, empty MMIO read {empty_ns} ns: ratio {padding:.2}   (goal <= 1.20: {})", if padding <= 1.2 { "met" } else { "not met" });
    let user = (
        value("user-gh-bar-copy-us"),
        value("user-gh-copy-mmio-exits"),
        value("user-gh-pad-read-ns"),
    );
    let (Some(user_bar_us), Some(user_exits), Some(user_pad_ns)) = user else {
        bail!(
            "the vfio-user part of the GPU-like device bench reported {user:?} (log: {})",
            dir.join("console.log").display()
        );
    };
    // Bandwidth is bytes over time: the same bytes, so the inverse ratio of the times.
    let user_bandwidth = bar_us as f64 / user_bar_us.max(1) as f64;
    let user_padding = user_pad_ns as f64 / pad_ns.max(1) as f64;
    println!();
    println!("The same device through ghvmm-vfio-user (--user-device) vs --device, same L2 run");
    println!("copy 4 x 32 MiB into the mapped BAR: {user_bar_us} us (--device: {bar_us} us)");
    println!(
        "bandwidth --user-device / --device: {user_bandwidth:.2}   (goal >= 0.95: {})",
        if user_bandwidth >= 0.95 {
            "met"
        } else {
            "not met"
        }
    );
    println!(
        "MMIO exits during the --user-device copy: {user_exits}   (goal 0: {})",
        if user_exits == 0 { "met" } else { "not met" }
    );
    println!(
        "padding read answered by the server {user_pad_ns} ns, by ghvmm {pad_ns} ns: ratio {user_padding:.2}   (goal <= 2: {})",
        if user_padding <= 2.0 { "met" } else { "not met" }
    );
    let hotplug = |label: &str| runs_of(&t, label);
    let (small_runs, small) = hotplug("hotplug-small-ms");
    let (large_runs, large) = hotplug("hotplug-large-ms");
    let (Some(small), Some(large)) = (small, large) else {
        bail!(
            "the hot-plug bench reported {small_runs:?} and {large_runs:?} (log: {})",
            dir.join("console.log").display()
        );
    };
    let hp_ratio = large as f64 / small.max(1) as f64;
    println!();
    println!("Hot plug, API call to the device in the guest (ms, L2 clock)");
    println!(
        "BAR {} KiB: runs {small_runs:?}, median {small}",
        HOTPLUG_SMALL >> 10
    );
    println!(
        "BAR {} MiB: runs {large_runs:?}, median {large}",
        HOTPLUG_LARGE >> 20
    );
    println!(
        "ratio large / small: {hp_ratio:.2}   (goal <= 1.20: {})",
        if hp_ratio <= 1.2 { "met" } else { "not met" }
    );
    say("bench: booting a second L2 with a 128 GiB ivshmem for the scale figures");
    let scale_dir = dir.join("scale");
    let (st, finished, _) = crate::boot_l2(
        &prep,
        &scale_dir,
        &[images::scenario_overlay(&scale_script())],
        &crate::scale_scenarios::big_hole(),
        &[crate::scale_scenarios::BAR],
        Duration::from_secs(900),
        false,
    )?;
    let svalue = |label: &str| st.bench.iter().find(|(l, _)| l == label).map(|(_, v)| *v);
    let scale_runs = |label: &str| runs_of(&st, label);
    let (s_small_runs, s_small) = scale_runs("scale-small-ms");
    let (s_large_runs, s_large) = scale_runs("scale-large-ms");
    let figures = (
        svalue("scale-rss-no-device-kib"),
        svalue("scale-rss-without-kib"),
        svalue("scale-rss-with-kib"),
        s_small,
        s_large,
    );
    let (Some(rss_none), Some(rss_without), Some(rss_with), Some(s_small), Some(s_large)) = figures
    else {
        bail!(
            "the scale bench reported {figures:?} (finished: {finished}; log: {})",
            scale_dir.join("console.log").display()
        );
    };
    let rss_delta = rss_with as i64 - rss_without as i64;
    let scale_ratio = s_large as f64 / s_small.max(1) as f64;
    println!();
    println!(
        "Scale: GH-sized device, {} bytes real in a 128 GiB BAR (sparse host file)",
        crate::scale_scenarios::LEN
    );
    println!(
        "ghvmm RSS (KiB): no device ever {rss_none}, after 64 KiB-BAR cycles (RAM pinned for DMA) {rss_without}, with the 128 GiB BAR {rss_with}"
    );
    println!(
        "RSS with the BAR minus without: {rss_delta} KiB   (goal <= {} KiB: {})",
        crate::scale_scenarios::RSS_GOAL_KIB,
        if rss_delta <= crate::scale_scenarios::RSS_GOAL_KIB as i64 {
            "met"
        } else {
            "not met"
        }
    );
    println!(
        "hot add, API call to the device in the guest (ms): 64 KiB BAR {s_small_runs:?} median {s_small}, 128 GiB BAR {s_large_runs:?} median {s_large}, ratio {scale_ratio:.2}"
    );
    let rows: Vec<String> = medians
        .iter()
        .map(|(l, r, m)| format!("    \"{l}\": {{ \"runs_ms\": {r:?}, \"median_ms\": {m} }}"))
        .collect();
    let json = format!(
        "{{\n  \"boot_to_init\": {{\n{}\n  }},\n  \"ratio_same_bzimage\": {same_bz:.3},\n  \
         \"ratio_same_vmlinux_pvh\": {same_pvh:.3},\n  \"ratio_ghvmm_pvh_vs_qemu_bzimage\": {best:.3},\n  \
         \"goal\": 0.5,\n  \"guest\": {{ \"cpus\": {CPUS}, \"memory\": \"{MEM}\" }},\n  \
         \"gh_device\": {{ \"bar_copy_us\": {bar_us}, \"ram_copy_us\": {ram_us}, \"bandwidth_ratio\": {bandwidth:.3}, \
         \"copy_mmio_exits\": {exits}, \"padding_read_ns\": {pad_ns}, \"empty_mmio_read_ns\": {empty_ns}, \
         \"padding_cost_ratio\": {padding:.3} }},\n  \
         \"vfio_user\": {{ \"bar_copy_us\": {user_bar_us}, \"bandwidth_ratio_vs_device\": {user_bandwidth:.3}, \
         \"copy_mmio_exits\": {user_exits}, \"padding_read_ns\": {user_pad_ns}, \"padding_ratio_server_vs_ghvmm\": {user_padding:.3} }},\n  \
         \"hotplug\": {{ \"small_bar_bytes\": {HOTPLUG_SMALL}, \"large_bar_bytes\": {HOTPLUG_LARGE}, \
         \"small_runs_ms\": {small_runs:?}, \"large_runs_ms\": {large_runs:?}, \"small_median_ms\": {small}, \
         \"large_median_ms\": {large}, \"ratio\": {hp_ratio:.3} }},\n  \
         \"scale\": {{ \"real_bytes\": {len}, \"bar_bytes\": {bar}, \"rss_no_device_kib\": {rss_none}, \
         \"rss_without_kib\": {rss_without}, \"rss_with_kib\": {rss_with}, \"rss_delta_kib\": {rss_delta}, \
         \"small_runs_ms\": {s_small_runs:?}, \"large_runs_ms\": {s_large_runs:?}, \"hotplug_ratio\": {scale_ratio:.3} }}\n}}\n",
        rows.join(",\n"),
        len = crate::scale_scenarios::LEN,
        bar = crate::scale_scenarios::BAR,
    );
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("results.json"), json)?;
    say(&format!("wrote {}", dir.join("results.json").display()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_alternates_variants() {
        let s = script();
        let labels: Vec<&str> = s
            .lines()
            .filter_map(|l| l.split_whitespace().nth(2))
            .collect();
        assert_eq!(labels.len(), 4 * RUNS);
        assert_eq!(
            &labels[..4],
            ["ghvmm-bzimage", "qemu-bzimage", "ghvmm-pvh", "qemu-pvh"]
        );
        assert!(s.contains("--kernel /l3/vmlinux"));
        assert!(s.contains("-kernel /l3/vmlinuz -initrd"));
    }

    #[test]
    fn gh_script_runs_the_device_directly_and_through_the_server() {
        let s = gh_script();
        assert!(s.contains("--device path=$IVSHMEM"));
        assert!(s.contains("vu_start $IVSHMEM /tmp/gpu-bench.sock"));
        assert!(s.contains("shared=on --serial"));
        assert!(s.contains("--user-device socket=/tmp/gpu-bench.sock"));
        // Each run's figures under its own labels.
        assert!(s.contains("sed 's/@@BENCH gh-/@@BENCH user-gh-/'"));
        assert!(s.contains("@@BENCH user-gh-copy-mmio-exits"));
        assert!(s.find("--device path=").unwrap() < s.find("vu_start $IVSHMEM").unwrap());
    }

    #[test]
    fn hotplug_script_times_both_sizes() {
        let s = hotplug_script();
        assert!(s.contains("length=65536"));
        assert!(s.contains(&format!("length={}", 64u64 << 20)));
        assert!(s.contains("time-to-file hotplug-small-ms /tmp/l3.out"));
        assert!(s.contains("for i in $(seq 6 10)"));
        assert!(s.contains("ghvmm.cycles=10"));
        assert!(s.find("length=65536") < s.find("start_l3"));
    }

    #[test]
    fn scale_script_measures_rss_around_the_large_bar() {
        let s = scale_script();
        assert!(s.contains(&format!("length={}", crate::scale_scenarios::LEN)));
        assert!(s.contains("@@BENCH scale-rss-with-kib"));
        assert!(s.find("scale-rss-without-kib") < s.find("scale-large-ms"));
        assert!(s.contains("[ $i = 6 ] && { echo"));
        assert!(s.contains("[ $i = 1 ] && { :; }"));
    }

    #[test]
    fn median_of_three() {
        assert_eq!(median(&mut [30, 10, 20]), Some(20));
        assert_eq!(median(&mut []), None);
    }
}
