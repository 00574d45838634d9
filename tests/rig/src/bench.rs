//! `cargo xtask bench`: ratios measured in one run, never timed assertions. In one L2: boot
//! time of an L3 guest under ghvmm vs QEMU/KVM (VMM start to the checker's first line), and
//! the GPU-like device used directly vs through ghvmm-vfio-user. In a second L2 with a GH-sized
//! device: ghvmm's own start-up (exec to first KVM_RUN) and hot-add latency, GH-sized vs small.
//! Every figure is taken in `ROUNDS` rounds whose variants alternate, so a slow phase of the
//! emulation hits all of them alike; medians, spreads and every raw run go to
//! target/bench/results.json.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::images;
use crate::l3::{Kernel, Vmm, L3};
use crate::setup::say;

const ROUNDS: usize = 5;
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

/// Shell: `ROUNDS` rounds of the device used directly, then through the server (started for
/// its run only: both open the same VFIO group).
fn gh_script() -> String {
    let mut rounds = String::new();
    for _ in 0..ROUNDS {
        rounds += &gh_run("gh-", "--device path=$IVSHMEM");
        rounds += &format!(
            "vu_start $IVSHMEM {USER_SOCKET}\n{}kill $vupid; wait $vupid; vupid=\n",
            gh_run("user-gh-", &format!("--user-device socket={USER_SOCKET}"))
        );
    }
    format!(
        "{gates}{helpers}{bind}{rounds}",
        gates = crate::gates::GATE_HELPERS,
        helpers = crate::vfio_user_scenarios::HELPERS,
        bind = crate::vfio_scenarios::bind_variant("vmm_pads", GH_LEN, ""),
    )
}

/// The socket of the vfio-user part.
const USER_SOCKET: &str = "/tmp/gpu-bench.sock";

/// The padding reads the bench guest times between its gates 2 and 3
/// (tests/checker/src/bench.rs `PROBES`): each must move the device's counters by one.
const PADDING_READS: u64 = 2000;

/// Shell: one gated bench-gh guest with the device given by `device_args` (id `gpu0`); its
/// `@@BENCH gh-*` lines are printed with `prefix` instead of `gh-`, with the accesses ghvmm
/// counted for the device during the copy (gates 1 to 2: every counter, every kind and BAR,
/// config space included) and during the padding reads (gates 2 to 3).
fn gh_run(prefix: &str, device_args: &str) -> String {
    let l3 = crate::gates::gated(
        L3::new(Vmm::Ghvmm, 2, "512M")
            .cmdline(&format!("ghvmm.mode=bench-gh ghvmm.gh_len={GH_LEN}"))
            .vmm_args(&format!("{device_args},id=gpu0")),
    );
    let sum = |n: u32| format!("$(/bin/checker counters-sum /tmp/gc{n}.json \"\" gpu0)");
    // A run that gives no result (a gate never reached, the guest hung: the watchdog kills it
    // after GH_RUN_LIMIT_S) is run again, at most GH_RUN_ATTEMPTS times in all, and said so;
    // the figures of a run that finished are printed whatever they are.
    format!(
        "for attempt in $(seq {GH_RUN_ATTEMPTS}); do\n\
         rm -f /tmp/gc1.json /tmp/gc2.json /tmp/gc3.json\n\
         {ghvmm} > /tmp/l3.out 2>&1 < /dev/null &\n\
         l3pid=$!\n\
         ( sleep {GH_RUN_LIMIT_S}; kill -9 $l3pid ) 2>/dev/null &\n\
         watchdog=$!\n\
         R=\"/bin/ghvmm-remote --api-socket {api}\"\n\
         gate_err=\n\
         gate_open 1 count && gate_open 2 count && gate_open 3 count\n\
         wait $l3pid\n\
         kill $watchdog 2>/dev/null; wait $watchdog 2>/dev/null\n\
         if [ -z \"$gate_err\" ] && grep -q '@@BENCH gh-empty-read-ns' /tmp/l3.out; then\n\
         echo \"@@BENCH {prefix}copy-counted-accesses $(({b} - {a}))\"\n\
         echo \"@@BENCH {prefix}padding-counted-reads $(({c} - {b}))\"\n\
         grep -a @@BENCH /tmp/l3.out | sed 's/@@BENCH gh-/@@BENCH {prefix}/'\n\
         break\n\
         fi\n\
         echo \"@@L2LOG RETRY bench {prefix}: attempt $attempt of {GH_RUN_ATTEMPTS} gave no result (${{gate_err:-no figures}}; the VMM's last words: $(grep -a -v '^@@ACPI' /tmp/l3.out | tail -n 2 | tr '\\n' ' ' | head -c 300))\"\n\
         done\n",
        ghvmm = l3.command(),
        api = crate::gates::API_SOCKET,
        a = sum(1),
        b = sum(2),
        c = sum(3),
    )
}

/// Attempts and time limit of one bench-gh run.
const GH_RUN_ATTEMPTS: u32 = 3;
const GH_RUN_LIMIT_S: u32 = 240;

/// The scale L2's second ivshmem device and the real length the variant driver gives it: the
/// small side of the hot-add and first-KVM_RUN comparisons.
const SMALL_IVSHMEM: u64 = 1 << 20;
const SMALL_LEN: u64 = 64 << 10;

/// Shell: the variant driver over both of the scale L2's ivshmem devices, each with the first
/// of the two lengths that fits its BAR2; `$LARGE` and `$SMALL` are their sysfs paths.
fn scale_bind() -> String {
    use crate::scale_scenarios::LEN;
    format!(
        "{}IVSHMEM1=\n\
         for d in /sys/bus/pci/devices/*; do\n\
             [ \"$(cat $d/vendor)\" = 0x1af4 ] && [ \"$(cat $d/device)\" = 0x1110 ] && [ $d != $IVSHMEM ] && IVSHMEM1=$d\n\
         done\n{}\
         bar2_size() {{ set -- $(sed -n 3p $1/resource); echo $(( $2 - $1 + 1 )); }}\n\
         if [ $(bar2_size $IVSHMEM) -gt $(bar2_size $IVSHMEM1) ]; then LARGE=$IVSHMEM; SMALL=$IVSHMEM1; \
         else LARGE=$IVSHMEM1; SMALL=$IVSHMEM; fi\n",
        crate::vfio_scenarios::bind_variant("vmm_pads", LEN, &format!("lengths={LEN},{SMALL_LEN}")),
        crate::vfio_scenarios::bind_device("IVSHMEM1", "ghvmm_test_vfio", "vfio-bind1"),
    )
}

/// The three ghvmm start-ups of the first-KVM_RUN figure: no device, the small device, the
/// GH-sized one (all at boot), by label.
fn first_run_variants() -> [(&'static str, String); 3] {
    let ghvmm = |args: &str| L3::new(Vmm::Ghvmm, CPUS, MEM).vmm_args(args).command();
    [
        ("first-run-none-us", ghvmm("")),
        ("first-run-small-us", ghvmm("--device path=$SMALL")),
        ("first-run-gh-us", ghvmm("--device path=$LARGE")),
    ]
}

/// Shell: `ROUNDS` rounds of the three start-ups, alternating, each timed from exec to the
/// first KVM_RUN by `checker time-to-kvm-run` (ptrace + seccomp, outside ghvmm).
fn first_run_script() -> String {
    let mut s = String::new();
    for _ in 0..ROUNDS {
        for (label, cmd) in first_run_variants() {
            s.push_str(&format!("/bin/checker time-to-kvm-run {label} -- {cmd}\n"));
        }
    }
    s
}

/// The VMM of the hot-add part: one empty GH slot, the API, a guest that follows
/// `2 * ROUNDS` arrivals.
fn hotplug_ghvmm() -> String {
    L3::new(Vmm::Ghvmm, CPUS, MEM)
        .cmdline(&format!("ghvmm.vfio=hotplug ghvmm.cycles={}", 2 * ROUNDS))
        .vmm_args("--gh slots=1 --api-socket path=/tmp/api.sock")
        .command()
}

/// Shell: hot add number `n` of the device at `$dev` to GH slot 0, timed from the API call to
/// the guest's `@@HOTPLUG present n` line (`@@BENCH label ms`), then removed; `while_attached`
/// runs before the removal.
fn timed_add(label: &str, n: usize, dev: &str, while_attached: &str) -> String {
    format!(
        "/bin/checker time-to-file {label} /tmp/l3.out \"@@HOTPLUG present {n} \" -- \
           $R add-device path=${dev},id=gpu0,gh_slot=0 >> $L2_DEFER\n\
         {while_attached}\
         $R remove-device gpu0 > /dev/null\n\
         wait_marker \"@@HOTPLUG gone {n}\" 120\n"
    )
}

/// Shell: ghvmm's RSS from the API (`@@BENCH label kib`).
fn rss(label: &str) -> String {
    format!(
        "echo \"@@BENCH {label} $($R info | grep -o '\"rss_kib\": *[0-9]*' | grep -o '[0-9]*$')\" >> $L2_DEFER\n"
    )
}

/// Shell: `ROUNDS` rounds of a small then a GH-sized hot add in one VM, and ghvmm's RSS before
/// any device, after the first small cycle (guest RAM now pinned for DMA and resident) and
/// while the first GH-sized device is attached.
fn scale_hotplug_script() -> String {
    let mut rounds = String::new();
    for r in 0..ROUNDS {
        let first = r == 0;
        rounds += &timed_add("scale-small-ms", 2 * r + 1, "SMALL", "");
        if first {
            rounds += &rss("scale-rss-without-kib");
        }
        let during = if first {
            rss("scale-rss-with-kib")
        } else {
            String::new()
        };
        rounds += &timed_add("scale-large-ms", 2 * r + 2, "LARGE", &during);
    }
    format!(
        "start_l3 {ghvmm}\n\
         R=\"/bin/ghvmm-remote --api-socket /tmp/api.sock\"\n\
         wait_marker '@@HOTPLUG ready' 120\n\
         {rss_none}{rounds}finish_l3 120\n",
        ghvmm = hotplug_ghvmm(),
        rss_none = rss("scale-rss-no-device-kib"),
    )
}

/// The whole scale L2: the first-KVM_RUN rounds, then the hot-add rounds.
fn scale_script() -> String {
    scale_bind() + &first_run_script() + &scale_hotplug_script()
}

/// Attempts of one timed boot.
const BOOT_ATTEMPTS: u32 = 3;

fn boot_script() -> String {
    let mut s = String::new();
    for _ in 0..ROUNDS {
        for (label, vmm, kernel) in VARIANTS {
            // Exit code 125: the boot gave no figure (the guest hung or died before its init,
            // killed at the checker's limit); run it again, at most BOOT_ATTEMPTS times.
            s.push_str(&format!(
                "for attempt in $(seq {BOOT_ATTEMPTS}); do\n\
                 /bin/checker time-to-marker {label} @@INIT -- {}\n\
                 [ $? = 125 ] || break\n\
                 echo \"@@L2LOG RETRY bench {label}: attempt $attempt of {BOOT_ATTEMPTS} gave no result\"\n\
                 done\n",
                command(vmm, kernel)
            ));
        }
    }
    s
}

/// Every raw run of one figure, in the order measured.
#[derive(Debug, Clone, PartialEq)]
struct Series {
    label: &'static str,
    runs: Vec<u64>,
}

impl Series {
    fn of(t: &crate::protocol::Transcript, label: &'static str) -> Self {
        let runs = t
            .bench
            .iter()
            .filter(|(l, _)| l == label)
            .map(|(_, v)| *v)
            .collect();
        Series { label, runs }
    }

    /// The median (the upper one of an even count); None without runs.
    fn median(&self) -> Option<u64> {
        let mut v = self.runs.clone();
        v.sort_unstable();
        v.get(v.len() / 2).copied()
    }

    /// Every run, or an error naming the figure and the log, for a run that lost some.
    fn complete(self, want: usize, log: &Path) -> Result<Self> {
        if self.runs.len() != want {
            bail!(
                "expected {want} runs of {}, got {:?} (log: {})",
                self.label,
                self.runs,
                log.display()
            );
        }
        Ok(self)
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "runs": self.runs,
            "median": self.median(),
            "min": self.runs.iter().min(),
            "max": self.runs.iter().max(),
        })
    }

    /// `label  [runs]  median (min-max)`.
    fn row(&self, unit: &str) -> String {
        let m = self.median().unwrap_or(0);
        let (lo, hi) = (
            self.runs.iter().min().copied().unwrap_or(0),
            self.runs.iter().max().copied().unwrap_or(0),
        );
        format!(
            "{:<28} {:<44} median {m} {unit} (spread {lo}-{hi})",
            self.label,
            format!("{:?}", self.runs)
        )
    }
}

/// a / b of two medians.
fn ratio(a: &Series, b: &Series) -> f64 {
    a.median().unwrap_or(0) as f64 / b.median().unwrap_or(0).max(1) as f64
}

/// Whether the counters were live in every run: each timed padding read counted once.
fn counted_reads(s: &Series) -> String {
    let live = s.runs.iter().all(|&n| n == PADDING_READS);
    format!(
        "padding reads counted, every run: {:?} (want {PADDING_READS} each: {})",
        s.runs,
        if live {
            "the counters are live"
        } else {
            "MISMATCH"
        }
    )
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "not met"
    }
}

/// Which L2 runs of the bench to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Both.
    All,
    /// Boot times and the GPU-like device, directly and through the server.
    Devices,
    /// First KVM_RUN and hot add, GH-sized vs small.
    Scale,
}

impl Part {
    pub fn parse(args: &[String]) -> Result<Self> {
        match args {
            [] => Ok(Part::All),
            [a] if a == "devices" => Ok(Part::Devices),
            [a] if a == "scale" => Ok(Part::Scale),
            _ => bail!("usage: cargo xtask bench [devices|scale]"),
        }
    }
}

type Figures = serde_json::Map<String, serde_json::Value>;

/// The runs L2 made again inside one bench L2 because they gave no result (`@@L2LOG RETRY
/// bench ...` lines), printed and kept in results.json: a retry is never silent.
fn in_run_retries(log: &Path) -> Vec<String> {
    let text = std::fs::read(log)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let retries: Vec<String> = text
        .lines()
        .filter_map(|l| {
            l.split_once("@@L2LOG RETRY bench ")
                .map(|(_, r)| r.trim().to_string())
        })
        .collect();
    for r in &retries {
        println!("RETRY bench {r}");
    }
    retries
}

/// A bench L2 silent this long is hung (every step prints within a few minutes: the longest
/// waits are the checker's 180 s boot limit and the gates' 240 s).
const SILENCE: Duration = Duration::from_secs(420);

/// How often an L2 run of the bench is made at most when it gives no result.
const L2_ATTEMPTS: u32 = 3;

/// Boots one bench L2, again when an attempt ends without its `@@L2DONE` (the nested
/// emulation's early panics and hangs: docs/testing.md, "Known flakiness"), never when it
/// finished: figures that came out wrong or missing are an error, not something to retry
/// away. Every retry is printed; the failed attempt's console is kept next to the run's.
fn boot_bench_l2(
    prep: &crate::Prepared,
    dir: &Path,
    overlays: &[Vec<u8>],
    qemu_args: &[String],
    ivshmem: &[u64],
    timeout: Duration,
) -> Result<crate::protocol::Transcript> {
    let mut attempt = 1;
    loop {
        let boot = crate::L2Boot {
            qemu_args,
            ivshmem,
            silence: Some(SILENCE),
            ..crate::L2Boot::new(overlays, timeout)
        };
        let (t, finished, _) = boot.boot(prep, dir)?;
        if finished && t.l2_done {
            return Ok(t);
        }
        let log = dir.join("console.log");
        let why = if finished {
            "L2 stopped before its script ended"
        } else {
            "timed out, or silent for 7 minutes"
        };
        if attempt == L2_ATTEMPTS {
            bail!(
                "{why} in all {L2_ATTEMPTS} attempts (log: {})",
                log.display()
            );
        }
        let kept = dir.join(format!("console.attempt{attempt}.log"));
        let _ = std::fs::copy(&log, &kept);
        println!(
            "RETRY bench {}: attempt {attempt} of {L2_ATTEMPTS} gave no result ({why}); its log: {}",
            dir.display(),
            kept.display()
        );
        for line in crate::e2e::evidence(&std::fs::read_to_string(&kept).unwrap_or_default())
            .iter()
            .take(12)
        {
            println!("  | {line}");
        }
        attempt += 1;
    }
}

fn all(v: &[&Series]) -> serde_json::Value {
    serde_json::Value::Object(v.iter().map(|s| (s.label.to_string(), s.json())).collect())
}

pub fn run(root: &Path, part: Part) -> Result<()> {
    let prep = crate::prepare(root)?;
    let dir = prep.paths.target().join("bench");
    // A run of one part replaces that part's figures and keeps the other's (each part says
    // when it ran, in seconds since the epoch).
    let mut json: Figures = std::fs::read(dir.join("results.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    json.insert("rounds".into(), ROUNDS.into());
    json.insert(
        "guest".into(),
        serde_json::json!({ "cpus": CPUS, "memory": MEM }),
    );
    println!();
    println!(
        "{ROUNDS} rounds, each alternating its variants; median and spread (min-max) of the runs"
    );
    if part != Part::Scale {
        json.extend(devices(&prep, &dir)?);
        json.insert("devices_run_at".into(), now.into());
    }
    if part != Part::Devices {
        json.extend(scale(&prep, &dir)?);
        json.insert("scale_run_at".into(), now.into());
    }
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&serde_json::Value::Object(json))? + "\n",
    )?;
    say(&format!("wrote {}", dir.join("results.json").display()));
    Ok(())
}

fn devices(prep: &crate::Prepared, dir: &Path) -> Result<Figures> {
    say(&format!(
        "bench: booting L2; inside it ghvmm and QEMU/KVM boot the same L3, then the GPU-like \
         device directly and through ghvmm-vfio-user, alternating, {ROUNDS} rounds"
    ));
    let log = dir.join("console.log");
    let t = boot_bench_l2(
        prep,
        dir,
        &[
            images::qemu_overlay(&prep.paths)?,
            images::vmlinux_overlay(&prep.paths)?,
            images::scenario_overlay(&(boot_script() + &gh_script())),
        ],
        &[],
        crate::DEFAULT_IVSHMEM,
        Duration::from_secs(1800),
    )?;
    let retries = in_run_retries(&log);
    let boot: Vec<Series> = VARIANTS
        .iter()
        .map(|(label, _, _)| Series::of(&t, label).complete(ROUNDS, &log))
        .collect::<Result<_>>()?;
    let gh = |label| Series::of(&t, label).complete(ROUNDS, &log);
    let (bar, ram, exits, pad, empty, pads) = (
        gh("gh-bar-copy-us")?,
        gh("gh-ram-copy-us")?,
        gh("gh-copy-counted-accesses")?,
        gh("gh-pad-read-ns")?,
        gh("gh-empty-read-ns")?,
        gh("gh-padding-counted-reads")?,
    );
    let (user_bar, user_exits, user_pad, user_pads) = (
        gh("user-gh-bar-copy-us")?,
        gh("user-gh-copy-counted-accesses")?,
        gh("user-gh-pad-read-ns")?,
        gh("user-gh-padding-counted-reads")?,
    );

    println!();
    println!("VMM start to L3 init (ms, L2 clock)");
    for s in &boot {
        println!("{}", s.row("ms"));
    }
    let same_bz = ratio(&boot[0], &boot[1]);
    let same_pvh = ratio(&boot[2], &boot[3]);
    let best = ratio(&boot[2], &boot[1]);
    println!("ratio ghvmm/qemu, same bzImage:        {same_bz:.2}");
    println!("ratio ghvmm/qemu, same vmlinux (PVH):  {same_pvh:.2}");
    println!("ratio ghvmm PVH / qemu bzImage:        {best:.2}");
    println!(
        "goal ghvmm <= 0.50 x qemu (same kernel file): {}",
        verdict(same_bz.max(same_pvh) <= 0.5)
    );

    println!();
    println!(
        "GPU-like device, 48 MiB, ghvmm pads (L3 clock; accesses from ghvmm's counters at the guest's gates)"
    );
    for (s, unit) in [
        (&bar, "us"),
        (&ram, "us"),
        (&exits, "accesses"),
        (&pad, "ns"),
        (&empty, "ns"),
        (&pads, "reads"),
    ] {
        println!("{}", s.row(unit));
    }
    let bandwidth = ratio(&ram, &bar);
    let padding = ratio(&pad, &empty);
    let exits_max = exits.runs.iter().max().copied().unwrap_or(0);
    println!(
        "bandwidth BAR / RAM: {bandwidth:.2}   (goal >= 0.90: {})",
        verdict(bandwidth >= 0.9)
    );
    println!(
        "accesses ghvmm counted during the BAR copy, most of any run: {exits_max}   (goal 0: {})",
        verdict(exits_max == 0)
    );
    println!("{}", counted_reads(&pads));
    println!(
        "padding read / empty MMIO read: {padding:.2}   (goal <= 1.20: {})",
        verdict(padding <= 1.2)
    );
    println!();
    println!("The same device through ghvmm-vfio-user (--user-device), alternating with --device");
    for (s, unit) in [
        (&user_bar, "us"),
        (&user_exits, "accesses"),
        (&user_pad, "ns"),
        (&user_pads, "reads"),
    ] {
        println!("{}", s.row(unit));
    }
    // Bandwidth is bytes over time: the same bytes, so the inverse ratio of the times.
    let user_bandwidth = ratio(&bar, &user_bar);
    let user_padding = ratio(&user_pad, &pad);
    let user_exits_max = user_exits.runs.iter().max().copied().unwrap_or(0);
    println!(
        "bandwidth --user-device / --device: {user_bandwidth:.2}   (goal >= 0.95: {})",
        verdict(user_bandwidth >= 0.95)
    );
    println!(
        "accesses ghvmm counted during the --user-device copy, most of any run: {user_exits_max}   (goal 0: {})",
        verdict(user_exits_max == 0)
    );
    println!("{}", counted_reads(&user_pads));
    println!(
        "padding read, server / ghvmm: {user_padding:.2}   (goal <= 2: {})",
        verdict(user_padding <= 2.0)
    );
    let json = serde_json::json!({
        "boot_to_init_ms": all(&boot.iter().collect::<Vec<_>>()),
        "gh_device": all(&[&bar, &ram, &exits, &pad, &empty, &pads]),
        "gh_device_bytes": GH_LEN,
        "devices_retried_runs": retries,
        "vfio_user": all(&[&user_bar, &user_exits, &user_pad, &user_pads]),
        "devices_ratios": {
            "boot_same_bzimage": same_bz,
            "boot_same_vmlinux_pvh": same_pvh,
            "boot_ghvmm_pvh_vs_qemu_bzimage": best,
            "gh_bandwidth_bar_vs_ram": bandwidth,
            "gh_padding_vs_empty_read": padding,
            "user_bandwidth_vs_device": user_bandwidth,
            "user_padding_vs_ghvmm": user_padding,
        },
    });
    Ok(json.as_object().cloned().unwrap_or_default())
}

fn scale(prep: &crate::Prepared, dir: &Path) -> Result<Figures> {
    say("bench: booting an L2 with a 128 GiB and a 1 MiB ivshmem for the scale figures");
    let scale_dir = dir.join("scale");
    let log = scale_dir.join("console.log");
    let st = boot_bench_l2(
        prep,
        &scale_dir,
        &[images::scenario_overlay(&scale_script())],
        &crate::scale_scenarios::big_hole(),
        &[crate::scale_scenarios::BAR, SMALL_IVSHMEM],
        Duration::from_secs(1200),
    )?;
    let retries = in_run_retries(&log);
    let series = |label| Series::of(&st, label).complete(ROUNDS, &log);
    let first_run: Vec<Series> = first_run_variants()
        .iter()
        .map(|(label, _)| series(label))
        .collect::<Result<_>>()?;
    let (small_add, large_add) = (series("scale-small-ms")?, series("scale-large-ms")?);
    let one = |label| Series::of(&st, label).complete(1, &log).map(|s| s.runs[0]);
    let (none, without, with) = (
        one("scale-rss-no-device-kib")?,
        one("scale-rss-without-kib")?,
        one("scale-rss-with-kib")?,
    );

    println!();
    println!(
        "Scale: a GH-sized device ({} bytes real, 128 GiB BAR, sparse host file) against a {} KiB one",
        crate::scale_scenarios::LEN,
        SMALL_LEN >> 10
    );
    println!("ghvmm's exec to its first KVM_RUN (us, L2 clock; ptrace + seccomp, outside ghvmm)");
    for s in &first_run {
        println!("{}", s.row("us"));
    }
    let first_run_ratio = ratio(&first_run[2], &first_run[1]);
    println!("first KVM_RUN, GH-sized / small device at boot: {first_run_ratio:.2}");
    println!("hot add, API call to the device in the guest (ms, L2 clock)");
    println!("{}", small_add.row("ms"));
    println!("{}", large_add.row("ms"));
    let hotplug_ratio = ratio(&large_add, &small_add);
    println!(
        "hot add, 128 GiB / {} KiB: {hotplug_ratio:.2}   (goal <= 1.20: {})",
        SMALL_LEN >> 10,
        verdict(hotplug_ratio <= 1.2)
    );
    let rss_delta = with as i64 - without as i64;
    println!(
        "ghvmm RSS (KiB): no device ever {none}, after a small-device cycle (RAM pinned for DMA) {without}, with the 128 GiB BAR {with}"
    );
    println!(
        "RSS with the BAR minus without: {rss_delta} KiB   (goal <= {} KiB: {})",
        crate::scale_scenarios::RSS_GOAL_KIB,
        verdict(rss_delta <= crate::scale_scenarios::RSS_GOAL_KIB as i64)
    );
    let json = serde_json::json!({
        "first_kvm_run_us": all(&first_run.iter().collect::<Vec<_>>()),
        "hot_add_ms": all(&[&small_add, &large_add]),
        "rss_kib": { "no_device": none, "without_bar": without, "with_bar": with, "delta": rss_delta },
        "scale_retried_runs": retries,
        "scale_bytes": {
            "real": crate::scale_scenarios::LEN,
            "bar": crate::scale_scenarios::BAR,
            "small_real": SMALL_LEN,
        },
        "scale_ratios": {
            "first_kvm_run_gh_vs_small": first_run_ratio,
            "hot_add_gh_vs_small": hotplug_ratio,
        },
    });
    Ok(json.as_object().cloned().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The labels of `checker time-to-*` lines, in order.
    fn labels(s: &str) -> Vec<&str> {
        s.lines()
            .filter(|l| l.contains("/bin/checker time-to-"))
            .filter_map(|l| l.split_whitespace().nth(2))
            .collect()
    }

    #[test]
    fn boot_variants_alternate_in_every_round() {
        let s = boot_script();
        let l = labels(&s);
        assert_eq!(l.len(), 4 * ROUNDS);
        for round in l.chunks(4) {
            assert_eq!(
                round,
                ["ghvmm-bzimage", "qemu-bzimage", "ghvmm-pvh", "qemu-pvh"]
            );
        }
        assert!(s.contains("--kernel /l3/vmlinux"));
        assert!(s.contains("-kernel /l3/vmlinuz -initrd"));
    }

    #[test]
    fn gh_runs_alternate_the_device_and_the_server() {
        let s = gh_script();
        let direct: Vec<_> = s.match_indices("--device path=$IVSHMEM,id=gpu0").collect();
        let user: Vec<_> = s
            .match_indices("--user-device socket=/tmp/gpu-bench.sock,id=gpu0")
            .collect();
        assert_eq!((direct.len(), user.len()), (ROUNDS, ROUNDS));
        for (d, u) in direct.iter().zip(&user) {
            assert!(d.0 < u.0);
        }
        assert!(user.iter().skip(1).zip(&direct).all(|(u, d)| d.0 < u.0));
        assert_eq!(
            s.matches("vu_start $IVSHMEM /tmp/gpu-bench.sock").count(),
            ROUNDS
        );
        assert_eq!(s.matches("kill $vupid").count(), ROUNDS);
        // Counted at three gates per run; the figures come from ghvmm's counters.
        let body = s.strip_prefix(crate::gates::GATE_HELPERS).unwrap();
        assert_eq!(
            body.matches("gate_open 1 count && gate_open 2 count && gate_open 3 count")
                .count(),
            2 * ROUNDS
        );
        assert!(s.contains("ghvmm.gate=1"));
        assert!(s.contains("@@BENCH user-gh-copy-counted-accesses $(($(/bin/checker counters-sum /tmp/gc2.json \"\" gpu0) - $(/bin/checker counters-sum /tmp/gc1.json \"\" gpu0)))"));
        assert!(s.contains("sed 's/@@BENCH gh-/@@BENCH user-gh-/'"));
        assert!(s.contains("shared=on --serial"));
    }

    #[test]
    fn scale_rounds_alternate_sizes_and_time_the_first_kvm_run() {
        let s = scale_script();
        assert!(s.contains(&format!(
            "lengths={},{SMALL_LEN}",
            crate::scale_scenarios::LEN
        )));
        let l = labels(&s);
        let first_runs: Vec<&str> = l
            .iter()
            .copied()
            .filter(|l| l.starts_with("first-run"))
            .collect();
        assert_eq!(first_runs.len(), 3 * ROUNDS);
        for round in first_runs.chunks(3) {
            assert_eq!(
                round,
                ["first-run-none-us", "first-run-small-us", "first-run-gh-us"]
            );
        }
        let adds: Vec<&str> = l
            .iter()
            .copied()
            .filter(|l| l.starts_with("scale-"))
            .collect();
        assert_eq!(adds.len(), 2 * ROUNDS);
        for round in adds.chunks(2) {
            assert_eq!(round, ["scale-small-ms", "scale-large-ms"]);
        }
        assert!(s.contains(&format!("ghvmm.cycles={}", 2 * ROUNDS)));
        assert!(s.contains("add-device path=$SMALL,") && s.contains("add-device path=$LARGE,"));
        // RSS: before any device, after the first small cycle, during the first large one.
        let at = |p: &str| s.find(p).unwrap();
        assert!(at("scale-rss-no-device-kib") < at("scale-small-ms"));
        assert!(at("scale-rss-without-kib") < at("scale-large-ms"));
        assert!(
            at("scale-rss-with-kib")
                < at("remove-device gpu0 > /dev/null\nwait_marker \"@@HOTPLUG gone 2\"")
        );
        assert_eq!(s.matches("scale-rss-with-kib").count(), 1);
    }

    #[test]
    fn series_median_spread_and_completeness() {
        let s = Series {
            label: "x",
            runs: vec![30, 10, 20, 50],
        };
        assert_eq!(s.median(), Some(30));
        assert!(s.row("ms").contains("median 30 ms (spread 10-50)"));
        assert_eq!(s.json()["runs"], serde_json::json!([30, 10, 20, 50]));
        let empty = Series {
            label: "x",
            runs: vec![],
        };
        assert_eq!(empty.median(), None);
        assert!(empty.clone().complete(5, Path::new("log")).is_err());
        assert!(s.complete(4, Path::new("log")).is_ok());
        let a = Series {
            label: "a",
            runs: vec![12],
        };
        let b = Series {
            label: "b",
            runs: vec![0],
        };
        assert_eq!(
            ratio(&a, &b),
            12.0,
            "a zero median divides by one, not zero"
        );
    }
}
