//! The guest-side checker. As PID 1 of an L3 guest it mounts the pseudo file systems, checks
//! what the guest sees against the expectations on its kernel command line, dumps the ACPI
//! tables through the console and powers off. In L2 it doubles as a timing helper for the
//! bench (`checker time-to-marker ...`), names kernel addresses (`checker resolve ...`),
//! sends raw API requests (`checker http ...`), floods the API socket (`checker flood ...`),
//! opens the guest's gates by writing its RAM (`checker poke-ram ...`), adds up access
//! counters (`checker counters-sum ...`) or lists what moved (`checker counters-delta ...`),
//! and holds an idle VM for as long as L2 runs (`checker kvm-hold ...`).
//!
//! Output protocol (one line each, parsed by tests/rig):
//!   `@@INIT`                               first thing after start
//!   `@@CHECK <name> PASS`                  a check passed
//!   `@@CHECK <name> FAIL <reason>`         a check failed
//!   `@@CHECK <name> SKIP <reason>`         nothing to check in this configuration
//!   `@@ACPI <file> <hex>`                  a chunk of one ACPI table, deflated (raw DEFLATE)
//!   `@@ACPIEND <file> <len> <sum>`         end of that table: its length and byte sum
//!   `@@FACT <key> <value...>`              something seen, compared by the rig (numa.rs)
//!   `@@HOTPLUG ready|present N BDF|gone N` hot-plug progress for L2's script (hotplug.rs)
//!   `@@GATE <phase> <gpa-hex> wait`        waiting for L2 to open a gate (gate.rs)
//!   `@@DEMO <text>`                        a line of the demo for people (demo.rs)
//!   `@@DONE`                               all checks reported

#![deny(clippy::undocumented_unsafe_blocks)]

mod bench;
mod checks;
mod cmdline;
mod counters;
mod demo;
mod demo_format;
mod fault;
mod first_run;
mod flood;
mod gate;
mod gh;
mod hotplug;
mod http;
mod kvm_hold;
mod nic;
mod numa;
mod resolve;
mod stress;
mod ticks;
mod timing;
mod util;
mod vfio;

use std::io::Write;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("time-to-marker") => std::process::exit(timing::main(&args[2..])),
        Some("time-to-file") => std::process::exit(timing::to_file(&args[2..])),
        Some("time-to-kvm-run") => std::process::exit(first_run::main(&args[2..])),
        Some("resolve") => std::process::exit(resolve::main(&args[2..])),
        Some("http") => std::process::exit(http::main(&args[2..])),
        Some("flood") => std::process::exit(flood::main(&args[2..])),
        Some("poke-ram") => std::process::exit(counters::poke_ram(&args[2..])),
        Some("counters-sum") => std::process::exit(counters::counters_sum(&args[2..])),
        Some("counters-delta") => std::process::exit(counters::counters_delta(&args[2..])),
        Some("kvm-hold") => std::process::exit(kvm_hold::main(&args[2..])),
        _ => {}
    }
    if std::process::id() != 1 {
        eprintln!("checker: run as init of an L3 guest, or as `checker time-to-marker|resolve`");
        std::process::exit(2);
    }
    println!("@@INIT");
    let _ = std::io::stdout().flush();
    checks::mount_pseudo_filesystems();
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let expect = cmdline::Expectations::parse(&cmdline);
    match expect.mode.as_str() {
        "demo" => demo::run(&expect),
        "bench-gh" => bench::gh(expect.gh_len.unwrap_or(0)),
        _ => checks::run_all(&expect),
    }
    println!("@@DONE");
    let _ = std::io::stdout().flush();
    if expect.mode == "ticks" {
        ticks::forever();
    }
    checks::finish(&expect.action);
}
