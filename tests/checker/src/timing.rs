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
