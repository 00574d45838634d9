//! `ghvmm`: boot a Linux guest on KVM. Exit code 0 when the guest powers off (a reboot
//! boots it again in the same process), 1 on any error, with one error line on stderr.

#![forbid(unsafe_code)]

use std::io::Write;
use std::process::ExitCode;

use clap::error::ErrorKind;

use vmm::config::cli::{Cli, ParseError};
use vmm::config::EventMonitorConfig;

fn main() -> ExitCode {
    let cli = match Cli::parse_from_args(std::env::args_os()) {
        Ok(cli) => cli,
        Err(ParseError::Clap(e))
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) =>
        {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(ParseError::Clap(e)) => {
            // clap's message has a usage block after the first line; one line is the contract.
            let rendered = e.render().to_string();
            let first = rendered.lines().next().unwrap_or("invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            return fail(&format!("{first} (see --help)"));
        }
        Err(e) => return fail(&e.to_string()),
    };
    // vfio-ioctls warns about routine things (a device without an error IRQ); keep its
    // warnings for -v and up so a plain run's stderr is ghvmm's own.
    let level = match cli.verbose {
        0 => "warn,vfio_ioctls=error",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let log_file = match &cli.log_file {
        Some(path) => match std::fs::File::create(path) {
            Ok(f) => Some(f),
            Err(e) => return fail(&format!("--log-file {}: {e}", path.display())),
        },
        None => None,
    };
    vmm::logging::init(level, log_file);

    let monitor = match cli.event_monitor_config() {
        Ok(m) => m,
        Err(e) => return fail(&e.to_string()),
    };
    let cfg = match cli.into_config() {
        Ok(cfg) => cfg,
        Err(e) => return fail(&e.to_string()),
    };
    if let Some(m) = &monitor {
        match vmm::event_monitor::open(m) {
            Ok(file) => vmm::event_monitor::install(file),
            Err(e) => {
                let given = match m {
                    EventMonitorConfig::Path(p) => format!("path={}", p.display()),
                    EventMonitorConfig::Fd(fd) => format!("fd={fd}"),
                };
                return fail(&format!("--event-monitor: {given}: {e}"));
            }
        }
    }
    match vmm::vm::run(&cfg) {
        Ok(reason) => {
            let _ = std::io::stdout().flush();
            match reason {
                vmm::vm::exit::ExitReason::Fault(msg) => fail(&msg),
                other => {
                    log::info!("guest stopped: {other:?}");
                    ExitCode::SUCCESS
                }
            }
        }
        Err(e) => fail(&format!("{e:#}")),
    }
}

fn fail(msg: &str) -> ExitCode {
    let _ = std::io::stdout().flush();
    // Keep it to one line even when an underlying error carries newlines (or a value the
    // user gave carries control characters).
    let line = vmm::config::cli::error_line(msg);
    eprintln!("ghvmm: error: {line}");
    ExitCode::from(1)
}
