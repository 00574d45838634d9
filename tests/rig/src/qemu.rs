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
    format!("console=ttyS0 intel_iommu=on iommu=pt quiet loglevel={level} panic=-1")
}

pub struct L2 {
    pub kernel: std::path::PathBuf,
    pub initrd: std::path::PathBuf,
    pub ivshmem: std::path::PathBuf,
    /// QEMU's own log: CPU resets with their register state, so an L2 that dies silently
    /// (a triple fault: QEMU exits because of -no-reboot) leaves its last RIP behind.
    pub qemu_log: std::path::PathBuf,
    pub memory: &'static str,
    /// More QEMU arguments (a scenario's extra devices).
    pub extra: Vec<String>,
}

impl L2 {
    fn command(&self) -> Command {
        let mut c = Command::new("qemu-system-x86_64");
        c.args(["-accel", "tcg", "-cpu", "max"])
            .args(["-M", "q35,kernel-irqchip=split"])
            .args([
                "-device",
                "intel-iommu,intremap=on,caching-mode=on,aw-bits=48",
            ])
            .args(["-m", self.memory, "-smp", "2"])
            .args(["-display", "none", "-serial", "stdio", "-monitor", "none"])
            .args(["-no-reboot", "-nic", "none"])
            .arg("-kernel")
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(&self.initrd)
            .arg("-append")
            .arg(l2_cmdline())
            .arg("-object")
            .arg(format!(
                "memory-backend-file,id=hm,mem-path={},size=64M,share=on",
                self.ivshmem.display()
            ))
            .args(["-device", "ivshmem-plain,memdev=hm"])
            .args(["-d", "cpu_reset,guest_errors", "-D"])
            .arg(&self.qemu_log)
            .args(&self.extra);
        c
    }

    /// Runs L2 until it powers off, `stop` says so, or `timeout` passes. Every console line
    /// goes to `log`, to `echo` (when given) and to `on_line`. Returns false on a timeout.
    pub fn run(
        &self,
        log: &Path,
        timeout: Duration,
        echo: bool,
        mut on_line: impl FnMut(&str) -> bool,
    ) -> Result<bool> {
        let mut log = File::create(log).with_context(|| format!("creating {}", log.display()))?;
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
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let _ = writeln!(log, "{line}");
                    if echo {
                        println!("{line}");
                    }
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
        stop(&mut child);
        // Drain what is already buffered so the log is complete.
        while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            let _ = writeln!(log, "{line}");
            on_line(&line);
        }
        Ok(finished)
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
