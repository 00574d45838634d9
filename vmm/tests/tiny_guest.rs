//! End-to-end runs of the real `ghvmm` binary on this machine's /dev/kvm with hand-made
//! "kernels": a few 64-bit instructions wrapped in a minimal bzImage header. They prove the
//! boot path (bzImage loading, long-mode entry state, port I/O dispatch, COM1 output, ACPI
//! power-off and reset, fault reporting) without a Linux guest; Linux guests run in the rig.

use std::path::PathBuf;
use std::process::{Command, Output};

/// Offset of the protected-mode code in our image: (setup_sects + 1) * 512 with one sector.
const SETUP_SIZE: usize = 1024;
/// The 64-bit entry point lies 0x200 into the protected-mode code.
const ENTRY_64: usize = SETUP_SIZE + 0x200;

fn bzimage(code: &[u8]) -> Vec<u8> {
    let mut img = vec![0u8; ENTRY_64 + code.len()];
    img[0x1f1] = 1; // setup_sects
    img[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    img[0x202..0x206].copy_from_slice(b"HdrS");
    img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes()); // boot protocol 2.15
    img[0x211] = 1; // LOADED_HIGH
    img[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
    img[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
    img[0x238..0x23c].copy_from_slice(&2048u32.to_le_bytes()); // cmdline_size
    img[ENTRY_64..].copy_from_slice(code);
    img
}

/// A minimal ELF64 "vmlinux": one PT_LOAD with `code` at 1 MiB and a PT_NOTE carrying the
/// Xen PHYS32_ENTRY note (type 18) that marks a PVH entry point.
fn pvh_elf(code: &[u8]) -> Vec<u8> {
    const LOAD: u64 = 0x10_0000;
    const NOTE_OFF: u64 = 0x100;
    const CODE_OFF: u64 = 0x1000;
    let mut f = vec![0u8; CODE_OFF as usize];
    let put = |f: &mut Vec<u8>, off: usize, b: &[u8]| f[off..off + b.len()].copy_from_slice(b);
    put(&mut f, 0, &[0x7f, b'E', b'L', b'F', 2, 1, 1]);
    put(&mut f, 16, &2u16.to_le_bytes()); // ET_EXEC
    put(&mut f, 18, &0x3eu16.to_le_bytes()); // EM_X86_64
    put(&mut f, 20, &1u32.to_le_bytes());
    put(&mut f, 24, &LOAD.to_le_bytes()); // e_entry
    put(&mut f, 32, &64u64.to_le_bytes()); // e_phoff
    put(&mut f, 52, &64u16.to_le_bytes()); // e_ehsize
    put(&mut f, 54, &56u16.to_le_bytes()); // e_phentsize
    put(&mut f, 56, &2u16.to_le_bytes()); // e_phnum
    let phdr = |p_type: u32, off: u64, addr: u64, size: u64| {
        let mut h = Vec::new();
        h.extend(p_type.to_le_bytes());
        h.extend(5u32.to_le_bytes());
        for v in [off, addr, addr, size, size, 0x1000] {
            h.extend(v.to_le_bytes());
        }
        h
    };
    let load = phdr(1, CODE_OFF, LOAD, code.len() as u64);
    put(&mut f, 64, &load);
    let note_len = 12 + 4 + 4;
    let note = phdr(4, NOTE_OFF, 0, note_len);
    put(&mut f, 64 + 56, &note);
    let mut n = Vec::new();
    for v in [4u32, 4, 18] {
        n.extend(v.to_le_bytes());
    }
    n.extend(b"Xen\0");
    n.extend((LOAD as u32).to_le_bytes());
    put(&mut f, NOTE_OFF as usize, &n);
    f.extend_from_slice(code);
    f
}

/// `mov dx, port; mov al, value; out dx, al` (the same bytes in 32- and 64-bit mode)
fn outb(port: u16, value: u8) -> Vec<u8> {
    let p = port.to_le_bytes();
    vec![0x66, 0xba, p[0], p[1], 0xb0, value, 0xee]
}

fn print(s: &str) -> Vec<u8> {
    s.bytes().flat_map(|b| outb(0x3f8, b)).collect()
}

const HALT_FOREVER: [u8; 3] = [0xf4, 0xeb, 0xfd]; // hlt; jmp back to hlt
const S5: u8 = (5 << 2) | (1 << 5);

fn kernel_file(name: &str, code: &[u8]) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.join(name);
    std::fs::write(&path, bzimage(code)).unwrap();
    path
}

fn ghvmm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ghvmm"))
        .args(args)
        .output()
        .expect("run ghvmm")
}

fn run_code(name: &str, code: &[u8], extra: &[&str]) -> Output {
    let k = kernel_file(name, code);
    let mut args = vec!["--kernel", k.to_str().unwrap(), "--memory", "size=64M"];
    args.extend_from_slice(extra);
    ghvmm(&args)
}

fn stderr_lines(o: &Output) -> Vec<String> {
    String::from_utf8_lossy(&o.stderr)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn serial_output_then_acpi_poweroff_exits_0() {
    let mut code = print("hello from the guest\n");
    code.extend(outb(0x600, S5));
    code.extend(HALT_FOREVER);
    let o = run_code("poweroff.bin", &code, &["--cpus", "boot=2"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "hello from the guest\n");
    assert!(o.status.success(), "{o:?}");
}

#[test]
fn rep_outsb_prints_every_byte() {
    // lea rsi, [rip + 21] (the message after the code); mov dx, 0x3f8; mov ecx, 5;
    // rep outsb: one port exit carrying five 1-byte elements.
    let mut code = vec![0x48, 0x8d, 0x35, 21, 0, 0, 0];
    code.extend([0x66, 0xba, 0xf8, 0x03]);
    code.extend([0xb9, 5, 0, 0, 0]);
    code.extend([0xf3, 0x6e]);
    code.extend(outb(0x600, S5));
    code.extend(HALT_FOREVER);
    code.extend(b"hello");
    let o = run_code("rep_outsb.bin", &code, &[]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "hello");
}

#[test]
fn rep_insb_reads_the_port_once_per_byte() {
    // KVM reads ahead for `rep insb`: one port exit asks for all four bytes. Each must be a
    // 1-byte read of COM1's line status register (0x60: transmitter empty); as one 4-byte
    // read it would run past COM1's ports and read all ones.
    // lea rdi, [rip + 39] (the buffer after the code); mov dx, 0x3fd; mov ecx, 4; rep insb;
    // lea rsi, [rip + 21] (the buffer); mov dx, 0x3f8; mov ecx, 4; rep outsb.
    let mut code = vec![0x48, 0x8d, 0x3d, 39, 0, 0, 0];
    code.extend([0x66, 0xba, 0xfd, 0x03]);
    code.extend([0xb9, 4, 0, 0, 0]);
    code.extend([0xf3, 0x6c]);
    code.extend([0x48, 0x8d, 0x35, 21, 0, 0, 0]);
    code.extend([0x66, 0xba, 0xf8, 0x03]);
    code.extend([0xb9, 4, 0, 0, 0]);
    code.extend([0xf3, 0x6e]);
    code.extend(outb(0x600, S5));
    code.extend(HALT_FOREVER);
    code.extend([0u8; 4]);
    let o = run_code("rep_insb.bin", &code, &[]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(o.stdout, [0x60; 4]);
}

#[test]
fn a_stdout_nobody_reads_does_not_stop_the_guest() {
    // mov ecx, 100000; mov dx, 0x3f8; mov al, 'x'; 1: out dx, al; dec ecx; jnz 1b: more
    // than a pipe holds (64 KiB).
    let mut code = vec![0xb9, 0xa0, 0x86, 0x01, 0x00];
    code.extend([0x66, 0xba, 0xf8, 0x03, 0xb0, b'x']);
    code.extend([0xee, 0xff, 0xc9, 0x75, 0xfb]);
    code.extend(outb(0x600, S5));
    code.extend(HALT_FOREVER);
    let k = kernel_file("flood.bin", &code);
    let mut child = Command::new(env!("CARGO_BIN_EXE_ghvmm"))
        .args(["--kernel", k.to_str().unwrap(), "--memory", "size=64M"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run ghvmm");
    // Nobody reads stdout: the guest still powers off, and ghvmm exits after at most its
    // drain time.
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > std::time::Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let status = status.expect("ghvmm still running after 30 s with its stdout stalled");
    assert!(status.success(), "{status:?}");
}

#[test]
fn pvh_elf_kernel_boots_in_32_bit_mode() {
    let mut code = print("pvh\n");
    // In 32-bit mode EBX holds the hvm_start_info address; print its magic's low byte
    // (0x78 = 'x'): mov al, [ebx]; mov dx, 0x3f8; out dx, al.
    code.extend([0x8a, 0x03, 0x66, 0xba, 0xf8, 0x03, 0xee]);
    code.extend(outb(0x600, S5));
    code.extend(HALT_FOREVER);
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("pvh.elf");
    std::fs::write(&path, pvh_elf(&code)).unwrap();
    let o = ghvmm(&["--kernel", path.to_str().unwrap(), "--memory", "size=64M"]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "pvh\nx");
}

/// A ghvmm started with an API socket and an event monitor, whose stdout (COM1) is collected.
struct Running {
    child: std::process::Child,
    dir: PathBuf,
    sock: PathBuf,
    events: PathBuf,
    out: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Running {
    fn start(name: &str, code: &[u8], cpus: &str) -> Running {
        let k = kernel_file(&format!("{name}.bin"), code);
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (sock, events) = (dir.join("api.sock"), dir.join("events.json"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_ghvmm"))
            .args(["--kernel", k.to_str().unwrap(), "--memory", "size=64M"])
            .args(["--cpus", &format!("boot={cpus}")])
            .arg("--api-socket")
            .arg(format!("path={}", sock.display()))
            .arg("--event-monitor")
            .arg(format!("path={}", events.display()))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run ghvmm");
        let out = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (mut stdout, theirs) = (child.stdout.take().unwrap(), out.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            while let Ok(n @ 1..) = std::io::Read::read(&mut stdout, &mut buf) {
                theirs.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Running {
            child,
            dir,
            sock,
            events,
            out,
        }
    }

    /// Boots so far: each prints one `b`.
    fn boots(&self) -> usize {
        self.out
            .lock()
            .unwrap()
            .iter()
            .filter(|&&b| b == b'b')
            .count()
    }

    fn wait_for_boots(&self, n: usize) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while self.boots() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "{} boots of {n} within 20 s",
                self.boots()
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    fn request(&self, method: &'static str, endpoint: &'static str) -> (u16, String) {
        use vmm::api::client::{send, ApiRequest};
        let req = ApiRequest {
            method,
            endpoint,
            body: None,
        };
        let r = send(&self.sock, &req, Some(std::time::Duration::from_secs(20))).unwrap();
        (r.status, r.body)
    }

    fn state(&self) -> String {
        let (_, body) = self.request("GET", "vm.info");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["state"].as_str().unwrap().to_string()
    }

    /// (descriptors, threads, VmRSS in KiB) of the process.
    fn footprint(&self) -> (usize, usize, u64) {
        let pid = self.child.id();
        let count = |d: &str| {
            std::fs::read_dir(format!("/proc/{pid}/{d}"))
                .unwrap()
                .count()
        };
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let rss = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
            .unwrap();
        (count("fd"), count("task"), rss)
    }

    /// Shuts the VM down through the API; the exit status, stderr and the event names.
    fn shutdown(mut self) -> (std::process::ExitStatus, String, Vec<String>) {
        assert_eq!(self.request("PUT", "vm.shutdown").0, 204);
        let status = self.child.wait().unwrap();
        let mut err = String::new();
        std::io::Read::read_to_string(self.child.stderr.as_mut().unwrap(), &mut err).unwrap();
        let text = std::fs::read_to_string(&self.events).unwrap();
        let events = serde_json::Deserializer::from_str(&text)
            .into_iter::<serde_json::Value>()
            .map(|e| {
                let e = e.unwrap();
                format!(
                    "{}/{}",
                    e["source"].as_str().unwrap(),
                    e["event"].as_str().unwrap()
                )
            })
            .collect();
        let _ = std::fs::remove_dir_all(&self.dir);
        (status, err, events)
    }
}

#[test]
fn a_guest_reset_reboots_the_vm_in_the_same_process() {
    // The ACPI reset register, and the i8042's pulse of the reset line.
    for (name, reset) in [
        ("acpi-reset", outb(0x602, 0x01)),
        ("kbd-reset", outb(0x64, 0xfe)),
    ] {
        let mut code = print("b");
        code.extend(reset);
        code.extend(HALT_FOREVER);
        let vm = Running::start(name, &code, "2");
        vm.wait_for_boots(5);
        assert_eq!(vm.state(), "Running");
        let (status, err, events) = vm.shutdown();
        assert!(status.success(), "{name}: {status:?} {err}");
        assert!(err.is_empty(), "{name}: {err}");
        assert_eq!(
            events[..3],
            ["vmm/starting", "vm/booting", "vm/booted"],
            "{name}"
        );
        assert_eq!(events[3..5], ["vm/rebooting", "vm/rebooted"], "{name}");
        assert_eq!(
            events[events.len() - 2..],
            ["vm/shutdown", "vmm/shutdown"],
            "{name}"
        );
    }
}

#[test]
fn vm_reboot_rebuilds_the_vm_and_ghvmm_does_not_grow() {
    use std::time::{Duration, Instant};
    const REBOOTS: usize = 30;
    // Print, then halt: vCPU 0 sits in KVM_RUN, vCPU 1 waits there for a SIPI; the reboot
    // must kick both out.
    let mut code = print("b");
    code.extend(HALT_FOREVER);
    let vm = Running::start("api-reboot", &code, "2");
    vm.wait_for_boots(1);
    assert_eq!(vm.request("PUT", "vm.reboot").0, 204);
    vm.wait_for_boots(2);
    // After a reboot: every thread started once per process is there.
    std::thread::sleep(Duration::from_millis(300));
    let first = vm.footprint();
    for n in 3..=REBOOTS {
        if n == REBOOTS {
            // A paused VM reboots too, and runs afterwards.
            assert_eq!(vm.request("PUT", "vm.pause").0, 204);
            assert_eq!(vm.state(), "Paused");
        }
        let (status, body) = vm.request("PUT", "vm.reboot");
        assert_eq!(status, 204, "reboot {n}: {body}");
        vm.wait_for_boots(n);
    }
    assert_eq!(vm.state(), "Running");
    // Descriptors and threads come back to the same count (an API connection thread may
    // still be on its way out); RSS within a few allocator pages.
    let deadline = Instant::now() + Duration::from_secs(5);
    let last = loop {
        let now = vm.footprint();
        if (now.0, now.1) == (first.0, first.1) || Instant::now() > deadline {
            break now;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        (last.0, last.1),
        (first.0, first.1),
        "{first:?} -> {last:?}"
    );
    assert!(last.2 < first.2 + 2048, "VmRSS grew: {first:?} -> {last:?}");
    let (status, err, events) = vm.shutdown();
    assert!(status.success(), "{status:?} {err}");
    let rebooted = events.iter().filter(|e| *e == "vm/rebooted").count();
    assert_eq!(rebooted, REBOOTS - 1, "{events:?}");
}

#[test]
fn triple_fault_is_an_error() {
    // ud2 with an empty IDT: #UD -> #DF -> triple fault.
    let o = run_code("ud2.bin", &[0x0f, 0x0b], &[]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let lines = stderr_lines(&o);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("triple fault"), "{lines:?}");
}

#[test]
fn serial_to_file() {
    let mut code = print("to a file");
    code.extend(outb(0x600, S5));
    code.extend(HALT_FOREVER);
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("serial.txt");
    let arg = format!("file={}", out.display());
    let o = run_code("tofile.bin", &code, &["--serial", &arg]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(std::fs::read_to_string(out).unwrap(), "to a file");
    assert!(o.stdout.is_empty());
}

#[test]
fn bad_invocations_fail_with_one_line() {
    let k = kernel_file("unused.bin", &HALT_FOREVER);
    let k = k.to_str().unwrap();
    for args in [
        vec!["--bogus"],
        vec!["--kernel", k, "--memory", "size=12Q"],
        vec!["--kernel", "/nonexistent/kernel"],
        vec!["--kernel", k, "--cpus", "boot=0"],
        vec!["--kernel", "/etc/hostname"],
        vec![],
        vec!["--kernel", k, "--disk", "path=/d.img", "path=/e.img"],
        vec!["--kernel", k, "--watchdog"],
        vec!["--kernel", k, "--device", "path=/a,iommu=on"],
        vec!["--kernel", k, "--event-monitor", "fd=1"],
        vec!["--kernel", k, "--log-file", "/nonexistent/dir/log"],
    ] {
        let o = ghvmm(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {o:?}");
        let lines = stderr_lines(&o);
        assert_eq!(lines.len(), 1, "{args:?}: {lines:?}");
        assert!(lines[0].starts_with("ghvmm: error: "), "{lines:?}");
        assert!(!lines[0].contains("panicked"), "{lines:?}");
    }
}

#[test]
fn log_file_and_event_monitor() {
    let mut code = print("hi");
    code.extend(outb(0x600, S5));
    code.extend(HALT_FOREVER);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let (log, events) = (dir.join("ghvmm.log"), dir.join("events.json"));
    let log_arg = log.to_str().unwrap();
    let ev_arg = format!("path={}", events.display());
    let o = run_code(
        "events.bin",
        &code,
        &["-v", "--log-file", log_arg, "--event-monitor", &ev_arg],
    );
    assert!(o.status.success(), "{o:?}");
    assert!(o.stderr.is_empty(), "the log went to stderr: {o:?}");
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains("INFO  vmm::vm] guest physical address bits"),
        "{log}"
    );
    let text = std::fs::read_to_string(&events).unwrap();
    let names: Vec<String> = serde_json::Deserializer::from_str(&text)
        .into_iter::<serde_json::Value>()
        .map(|e| {
            let e = e.unwrap();
            assert!(e["timestamp"]["secs"].is_u64(), "{e}");
            format!(
                "{}/{}",
                e["source"].as_str().unwrap(),
                e["event"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            "vmm/starting",
            "vm/booting",
            "vm/booted",
            "vm/shutdown",
            "vmm/shutdown"
        ]
    );
}

#[test]
fn help_and_version_exit_0() {
    for flag in ["--help", "--version"] {
        let o = ghvmm(&[flag]);
        assert!(o.status.success(), "{flag}: {o:?}");
        assert!(!o.stdout.is_empty());
    }
}

/// Each vCPU thread's (name, state, utime + stime in clock ticks), from /proc.
fn vcpu_threads(pid: u32) -> Vec<(String, char, u64)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = t.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let comm = comm.trim();
        if !comm.starts_with("vcpu") {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
        // The fields after the parenthesised name: state is the 3rd field, utime the 14th.
        let rest: Vec<&str> = stat
            .rsplit_once(')')
            .map_or(vec![], |(_, r)| r.split_whitespace().collect());
        let (state, utime, stime) = (rest[0], rest[11], rest[12]);
        let cpu = utime.parse::<u64>().unwrap() + stime.parse::<u64>().unwrap();
        out.push((comm.to_string(), state.chars().next().unwrap(), cpu));
    }
    out.sort();
    out
}

#[test]
fn pause_stops_a_spinning_vcpu_and_resume_lets_it_go_on() {
    use std::time::{Duration, Instant};
    use vmm::api::client::{send, ApiRequest};

    // vCPU 0 spins without ever leaving KVM_RUN (jmp $); vCPU 1 waits in KVM_RUN for a SIPI
    // that never comes: only a kick gets either out.
    let k = kernel_file("spin.bin", &[0xeb, 0xfe]);
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("pause-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("api.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ghvmm"))
        .args([
            "--kernel",
            k.to_str().unwrap(),
            "--memory",
            "size=64M",
            "--cpus",
            "boot=2",
        ])
        .arg("--api-socket")
        .arg(format!("path={}", sock.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run ghvmm");
    let pid = child.id();
    let put = |endpoint| {
        let req = ApiRequest {
            method: "PUT",
            endpoint,
            body: None,
        };
        send(&sock, &req, Some(Duration::from_secs(20))).unwrap()
    };
    let state = || {
        let req = ApiRequest {
            method: "GET",
            endpoint: "vm.info",
            body: None,
        };
        let r = send(&sock, &req, Some(Duration::from_secs(20))).unwrap();
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        v["state"].as_str().unwrap().to_string()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() || vcpu_threads(pid).len() < 2 {
        assert!(Instant::now() < deadline, "ghvmm did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Long enough for the spinning vCPU to be charged CPU time (10 ms ticks).
    std::thread::sleep(Duration::from_millis(300));
    let running = vcpu_threads(pid);
    assert_eq!(put("vm.pause").status, 204);
    assert_eq!(state(), "Paused");
    let a = vcpu_threads(pid);
    std::thread::sleep(Duration::from_millis(500));
    let b = vcpu_threads(pid);
    // Right after the answer a parked thread may still be on its way to sleep: its state is
    // read at the end, its CPU time throughout.
    let cpu = |v: &[(String, char, u64)]| v.iter().map(|t| t.2).collect::<Vec<_>>();
    assert_eq!(
        cpu(&a),
        cpu(&b),
        "vCPU threads ran while paused: {a:?} -> {b:?} (running: {running:?})"
    );
    assert!(b.iter().all(|(_, s, _)| *s != 'R'), "{b:?}");
    let r = put("vm.pause");
    assert_eq!(
        (r.status, r.body.as_str()),
        (500, r#"["cannot pause the VM","the VM is already paused"]"#)
    );
    assert_eq!(put("vm.resume").status, 204);
    assert_eq!(state(), "Running");
    std::thread::sleep(Duration::from_millis(500));
    let c = vcpu_threads(pid);
    assert!(c[0].2 > b[0].2, "vcpu0 did not run again: {b:?} -> {c:?}");
    assert_eq!(put("vm.resume").status, 500);
    assert_eq!(put("vm.shutdown").status, 204);
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{status:?} {err}");
    let _ = std::fs::remove_dir_all(&dir);
}
