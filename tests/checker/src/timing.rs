//! `checker time-to-marker LABEL MARKER -- CMD ARGS...`: runs CMD, passes its stdout through,
//! and prints `@@BENCH LABEL <ms>` when a line containing MARKER first appears, measured from
//! just before CMD starts on L2's monotonic clock. Used by the bench to time VMM start to L3
//! init for ghvmm and QEMU alike. Exits with CMD's exit code; CMD still running `LIMIT` after
//! its start (a guest the nested emulation hung) is killed: exit code `KILLED`, or `NO_RESULT`
//! when the marker never came (the bench then runs it again, saying so).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long one timed VMM run may take in all; boots take 5-30 s in the rig.
const LIMIT: Duration = Duration::from_secs(180);
/// Exit codes: killed at `LIMIT` after the figure was printed / without a figure.
pub const KILLED: i32 = 124;
pub const NO_RESULT: i32 = 125;

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
    // The reader blocks on CMD's output; the deadline is kept by a thread that kills CMD.
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(LIMIT).is_err() {
            // SAFETY: kill(2) on our own child's pid; it is not reaped before this thread is
            // joined (below), so the pid cannot be reused meanwhile.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            return true;
        }
        false
    });
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
    let _ = done_tx.send(());
    let killed = watchdog.join().unwrap_or(false);
    let status = child.wait();
    match (killed, seen) {
        (true, true) => {
            println!(
                "@@LOG time-to-marker {label}: killed after {}s (its figure stands)",
                LIMIT.as_secs()
            );
            KILLED
        }
        (_, false) => {
            println!("@@LOG time-to-marker {label}: no {marker} (killed: {killed})");
            NO_RESULT
        }
        (false, true) => status.map_or(1, |s| s.code().unwrap_or(1)),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn run(script: &str) -> i32 {
        let args: Vec<String> = ["t", "@@INIT", "--", "/bin/sh", "-c", script]
            .map(String::from)
            .to_vec();
        main(&args)
    }

    #[test]
    fn a_figure_then_the_vmm_exit_code() {
        assert_eq!(run("echo @@INIT; exit 3"), 3);
    }

    #[test]
    fn no_marker_is_no_result() {
        assert_eq!(run("echo booting; exit 0"), NO_RESULT);
    }
}
