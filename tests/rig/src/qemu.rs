//! Boots L2 under QEMU TCG and streams its console, with a deadline.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// L2's kernel command line: the emulated IOMMU on, and a console that shows warnings and
/// worse, so a kernel bug in L2 (a soft lockup, a WARN) leaves its backtrace in console.log.
/// `RIG_L2_LOGLEVEL` overrides the console log level (8 shows everything).
fn l2_cmdline() -> String {
    let level = std::env::var("RIG_L2_LOGLEVEL")
        .ok()
        .and_then(|v| v.parse::<u8>().ok())
        .unwrap_or(5);
    // nokaslr: kernel addresses match System.map (crate::symbols names a hung CPU's RIP).
    format!("console=ttyS0 intel_iommu=on iommu=pt quiet loglevel={level} panic=-1 nokaslr")
}

pub struct L2 {
    pub qemu: crate::setup::Qemu,
    pub kernel: std::path::PathBuf,
    pub initrd: std::path::PathBuf,
    /// The ivshmem devices: backing file and size (a power of two) of each.
    pub ivshmem: Vec<(std::path::PathBuf, u64)>,
    /// QEMU's own log: CPU resets with their register state, so an L2 that dies silently
    /// (a triple fault: QEMU exits because of -no-reboot) leaves its last RIP behind.
    pub qemu_log: std::path::PathBuf,
    /// QEMU's human monitor (a unix socket): on a timeout the rig saves every CPU's
    /// registers from it into `registers` before stopping QEMU.
    pub monitor: std::path::PathBuf,
    pub registers: std::path::PathBuf,
    pub memory: &'static str,
    /// More QEMU arguments (a scenario's extra devices).
    pub extra: Vec<String>,
    /// Ends the run as unfinished when the console stays silent this long (a silent L2
    /// hang), before the overall timeout; None: only the timeout.
    pub silence: Option<Duration>,
}

impl L2 {
    fn command(&self) -> Command {
        let mut c = self.qemu.command();
        c.args(["-accel", "tcg", "-cpu", "max"])
            .args(["-M", "q35,kernel-irqchip=split"])
            .args([
                "-device",
                "intel-iommu,intremap=on,caching-mode=on,aw-bits=48",
            ])
            .args(["-m", self.memory, "-smp", "2"])
            .args(["-display", "none", "-serial", "stdio", "-monitor"])
            .arg(format!(
                "unix:{},server=on,wait=off",
                self.monitor.display()
            ))
            .args(["-no-reboot", "-nic", "none"])
            .arg("-kernel")
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(&self.initrd)
            .arg("-append")
            .arg(l2_cmdline())
            .args(["-d", "cpu_reset,guest_errors", "-D"])
            .arg(&self.qemu_log)
            .args(&self.extra);
        for (i, (path, size)) in self.ivshmem.iter().enumerate() {
            c.arg("-object")
                .arg(format!(
                    "memory-backend-file,id=hm{i},mem-path={},size={size},share=on",
                    path.display()
                ))
                .args(["-device", &format!("ivshmem-plain,memdev=hm{i}")]);
        }
        c
    }

    /// Runs L2 until it powers off, `stop` says so, or `timeout` passes. Every console line
    /// goes to `log` and to `on_line`. Returns false on a timeout.
    pub fn run(
        &self,
        log: &Path,
        timeout: Duration,
        mut on_line: impl FnMut(&str) -> bool,
    ) -> Result<bool> {
        let mut log = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let _ = std::fs::remove_file(&self.monitor);
        let mut child = self
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting qemu-system-x86_64")?;
        let (tx, rx) = mpsc::channel::<String>();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).split(b'\n').map_while(Result::ok) {
                    if tx
                        .send(String::from_utf8_lossy(&line).into_owned())
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
        drop(tx);
        let deadline = Instant::now() + timeout;
        let mut finished = true;
        loop {
            let mut left = deadline.saturating_duration_since(Instant::now());
            if let Some(quiet) = self.silence {
                left = left.min(quiet);
            }
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let _ = writeln!(log, "{line}");
                    if on_line(&line) {
                        break;
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    finished = false;
                    break;
                }
            }
        }
        if !finished {
            self.save_registers();
        }
        stop(&mut child);
        let _ = std::fs::remove_file(&self.monitor);
        // Drain what is already buffered so the log is complete.
        while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            let _ = writeln!(log, "{line}");
            on_line(&line);
        }
        Ok(finished)
    }
}

impl L2 {
    /// `info registers -a` from the monitor into `self.registers` (best effort: it is
    /// evidence for a hang, not a result).
    fn save_registers(&self) {
        use std::io::Read;
        use std::os::unix::net::UnixStream;
        let Ok(mut sock) = UnixStream::connect(&self.monitor) else {
            return;
        };
        let _ = sock.set_read_timeout(Some(Duration::from_millis(1500)));
        let _ = sock.write_all(b"info registers -a\n");
        let mut out = Vec::new();
        let mut buf = [0u8; 65536];
        // The monitor answers in pieces; stop when it goes quiet.
        while let Ok(n) = sock.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        let _ = std::fs::write(&self.registers, out);
    }
}

/// Gives L2 a moment to power off by itself, then kills it.
fn stop(child: &mut Child) {
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}
