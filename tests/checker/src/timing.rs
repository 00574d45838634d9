//! `checker time-to-marker LABEL MARKER -- CMD ARGS...`: runs CMD, passes its stdout through,
//! and prints `@@BENCH LABEL <ms>` when a line containing MARKER first appears, measured from
//! just before CMD starts on L2's monotonic clock. Used by the bench to time VMM start to L3
//! init for ghvmm and QEMU alike. Exits with CMD's exit code.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Instant;

pub fn main(args: &[String]) -> i32 {
    let (label, marker, cmd) = match args {
        [label, marker, sep, cmd @ ..] if sep == "--" && !cmd.is_empty() => (label, marker, cmd),
        _ => {
            eprintln!("usage: checker time-to-marker LABEL MARKER -- CMD [ARGS...]");
            return 2;
        }
    };
    let start = Instant::now();
    let mut child = match Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("checker: cannot run {}: {e}", cmd[0]);
            return 2;
        }
    };
    let mut seen = false;
    if let Some(out) = child.stdout.take() {
        let mut stdout = std::io::stdout();
        for line in BufReader::new(out).split(b'\n').map_while(Result::ok) {
            let text = String::from_utf8_lossy(&line);
            if !seen && text.contains(marker.as_str()) {
                seen = true;
                let _ = writeln!(stdout, "@@BENCH {label} {}", start.elapsed().as_millis());
            }
            let _ = writeln!(stdout, "{text}");
        }
    }
    match child.wait() {
        Ok(status) => status.code().unwrap_or(1),
        Err(_) => 1,
    }
}

/// `checker time-to-file LABEL FILE MARKER -- CMD ARGS...`: runs CMD (its output passes
/// through), then waits until FILE contains a line with MARKER, and prints
/// `@@BENCH LABEL <ms>` measured from just before CMD started. For hot-plug latency: CMD is
/// the API call, FILE the guest's console as L2 keeps it. Gives up after 120 s (exit 1).
pub fn to_file(args: &[String]) -> i32 {
    let (label, file, marker, cmd) = match args {
        [label, file, marker, sep, cmd @ ..] if sep == "--" && !cmd.is_empty() => {
            (label, file, marker, cmd)
        }
        _ => {
            eprintln!("usage: checker time-to-file LABEL FILE MARKER -- CMD [ARGS...]");
            return 2;
        }
    };
    let start = Instant::now();
    let status = Command::new(&cmd[0]).args(&cmd[1..]).status();
    if !status.is_ok_and(|s| s.success()) {
        eprintln!("checker: {} failed", cmd.join(" "));
        return 1;
    }
    while start.elapsed() < std::time::Duration::from_secs(120) {
        let text = std::fs::read(file).unwrap_or_default();
        if String::from_utf8_lossy(&text).contains(marker.as_str()) {
            println!("@@BENCH {label} {}", start.elapsed().as_millis());
            return 0;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    1
}
