//! The checks an L3 guest runs on itself, and the ACPI table dump.

use std::ffi::CString;
use std::io::Write;
use std::path::Path;

use crate::cmdline::Expectations;

/// ghvmm's e820 map reserves the legacy hole 0x9FC00-0xFFFFF (EBDA, BIOS area, ACPI tables);
/// every other byte of configured RAM is "System RAM" (docs/platform.md).
pub const LEGACY_HOLE: u64 = 0x10_0000 - 0x9_fc00;
/// The kernel keeps part of RAM for itself (its image, page tables, the 64 MiB swiotlb
/// bounce buffer...): MemTotal may fall short of the configured RAM by at most this much.
const MEMTOTAL_SLACK: u64 = 112 << 20;

pub fn report(name: &str, result: Result<(), String>) {
    match result {
        Ok(()) => println!("@@CHECK {name} PASS"),
        Err(reason) => println!("@@CHECK {name} FAIL {}", reason.replace('\n', " ")),
    }
    let _ = std::io::stdout().flush();
}

/// A check with nothing to test in this configuration: reported so, never as a PASS. The rig
/// accepts a skip only where the scenario's configuration explains it (e2e.rs).
pub fn skip(name: &str, why: &str) {
    println!("@@CHECK {name} SKIP {}", why.replace('\n', " "));
    let _ = std::io::stdout().flush();
}

fn mount(source: &str, target: &str, fstype: &str) {
    let _ = std::fs::create_dir_all(target);
    let (Ok(s), Ok(t), Ok(f)) = (
        CString::new(source),
        CString::new(target),
        CString::new(fstype),
    ) else {
        return;
    };
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        println!(
            "@@LOG mount {fstype} on {target}: {}",
            std::io::Error::last_os_error()
        );
    }
}

pub fn mount_pseudo_filesystems() {
    mount("proc", "/proc", "proc");
    mount("sysfs", "/sys", "sysfs");
    mount("devtmpfs", "/dev", "devtmpfs");
}

/// Counts the CPUs in a list like "0-3,5".
pub fn count_cpu_list(list: &str) -> Option<u32> {
    let mut n = 0;
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
                n += b.checked_sub(a)? + 1;
            }
            None => {
                part.parse::<u32>().ok()?;
                n += 1;
            }
        }
    }
    Some(n)
}

fn check_cpus(expected: u32) -> Result<(), String> {
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online")
        .map_err(|e| format!("reading cpu/online: {e}"))?;
    let n = count_cpu_list(&online).ok_or_else(|| format!("cannot parse cpu/online {online:?}"))?;
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").map_err(|e| e.to_string())?;
    let m = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count() as u32;
    if n != expected || m != expected {
        return Err(format!(
            "expected {expected} CPUs, online list says {n}, /proc/cpuinfo lists {m}"
        ));
    }
    Ok(())
}

pub fn meminfo_kib(meminfo: &str, key: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn check_memtotal(expected: u64) -> Result<(), String> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").map_err(|e| e.to_string())?;
    let total = meminfo_kib(&meminfo, "MemTotal").ok_or("no MemTotal")? * 1024;
    let min = expected.saturating_sub(MEMTOTAL_SLACK);
    if total > expected || total < min {
        return Err(format!(
            "MemTotal {total} bytes is not within {} MiB below the configured {expected}",
            MEMTOTAL_SLACK >> 20
        ));
    }
    Ok(())
}

/// Sums the "System RAM" entries the firmware (ghvmm) handed to the kernel.
fn firmware_ram() -> Result<u64, String> {
    let dir = std::fs::read_dir("/sys/firmware/memmap").map_err(|e| format!("memmap: {e}"))?;
    let mut total = 0u64;
    for entry in dir.flatten() {
        let p = entry.path();
        let read = |f: &str| std::fs::read_to_string(p.join(f)).unwrap_or_default();
        if read("type").trim() != "System RAM" {
            continue;
        }
        let hex = |s: String| u64::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok();
        let (Some(start), Some(end)) = (hex(read("start")), hex(read("end"))) else {
            return Err(format!("cannot parse {}", p.display()));
        };
        total += end + 1 - start;
    }
    Ok(total)
}

fn check_e820(expected: u64) -> Result<(), String> {
    let ram = firmware_ram()?;
    let want = expected - LEGACY_HOLE;
    if ram != want {
        return Err(format!(
            "e820 System RAM is {ram:#x} bytes, expected {want:#x} (configured {expected:#x} minus the legacy hole)"
        ));
    }
    Ok(())
}

/// The host bridge at 0000:00:00.0 with ghvmm's ids. Linux reads the first 256 bytes of
/// configuration space through ports 0xCF8/0xCFC and the rest through ECAM, and only offers a
/// 4096-byte `config` file when it accepted the MCFG region: both mechanisms are exercised.
fn check_host_bridge() -> Result<(), String> {
    let dev = Path::new("/sys/bus/pci/devices/0000:00:00.0");
    let read = |f: &str| {
        std::fs::read_to_string(dev.join(f))
            .map(|s| s.trim().to_string())
            .map_err(|e| format!("{f}: {e}"))
    };
    let ids = (read("vendor")?, read("device")?, read("class")?);
    if ids != ("0x8086".into(), "0x0d57".into(), "0x060000".into()) {
        return Err(format!(
            "00:00.0 is {ids:?}, expected 8086:0d57 class 060000"
        ));
    }
    let config = std::fs::read(dev.join("config")).map_err(|e| format!("config: {e}"))?;
    if config.len() != 4096 {
        return Err(format!(
            "config space is {} bytes: the kernel did not accept ECAM (MCFG)",
            config.len()
        ));
    }
    if config[..4] != [0x86, 0x80, 0x57, 0x0d] {
        return Err(format!("config space starts with {:02x?}", &config[..4]));
    }
    Ok(())
}

/// DEFLATE level of the dump: the best, since every byte on the console is a port I/O
/// exit and compressing a few KiB costs nothing next to one.
const DUMP_LEVEL: u8 = 10;

/// Dumps every regular file under /sys/firmware/acpi/tables through the console, each
/// deflated: the dump used to be nearly all of a guest's console output (7.5 of 8 KiB in
/// `gh-numa-ch`), and the L2 CPU resets of the rig came in it more than anywhere else
/// (docs/testing.md, "Known flakiness"); deflated it is 40 % as long.
fn dump_acpi() -> Result<(), String> {
    let root = Path::new("/sys/firmware/acpi/tables");
    let mut files = Vec::new();
    collect(root, root, &mut files).map_err(|e| format!("listing {}: {e}", root.display()))?;
    if files.is_empty() {
        return Err("no ACPI tables in /sys/firmware/acpi/tables".into());
    }
    let mut tables = Vec::new();
    for (name, path) in files {
        match std::fs::read(&path) {
            Ok(b) => tables.push((name, b)),
            Err(e) => return Err(format!("reading {}: {e}", path.display())),
        }
    }
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(dump_text(&tables).as_bytes());
    let _ = out.flush();
    Ok(())
}

/// The dump's lines (tests/checker/src/main.rs): each table deflated, in hex chunks, then
/// its length and byte sum.
fn dump_text(tables: &[(String, Vec<u8>)]) -> String {
    use std::fmt::Write as _;
    let mut text = String::new();
    for (name, bytes) in tables {
        let deflated = miniz_oxide::deflate::compress_to_vec(bytes, DUMP_LEVEL);
        for chunk in deflated.chunks(96) {
            let hex: String = chunk.iter().map(|b| format!("{b:02x}")).collect();
            let _ = writeln!(text, "@@ACPI {name} {hex}");
        }
        let sum: u64 = bytes.iter().map(|b| u64::from(*b)).sum();
        let _ = writeln!(text, "@@ACPIEND {name} {} {sum}", bytes.len());
    }
    text
}

fn collect(
    root: &Path,
    dir: &Path,
    out: &mut Vec<(String, std::path::PathBuf)>,
) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let ft = e.file_type()?;
        if ft.is_dir() {
            collect(root, &p, out)?;
        } else if ft.is_file() {
            let rel = p
                .strip_prefix(root)
                .unwrap_or(&p)
                .to_string_lossy()
                .replace('/', "_");
            out.push((rel, p));
        }
    }
    Ok(())
}

pub fn run_all(expect: &Expectations) {
    report("init", Ok(()));
    if let Some(cpus) = expect.cpus {
        report("cpus", check_cpus(cpus));
    }
    // Under a peer VMM (the rig's self-test) only the platform-independent checks run.
    let ghvmm = expect.platform == "ghvmm";
    if let Some(mem) = expect.mem {
        report("memtotal", check_memtotal(mem));
        if ghvmm {
            report("e820", check_e820(mem));
        }
    }
    if ghvmm {
        report("pci-host-bridge", check_host_bridge());
    }
    match expect.vfio.as_deref() {
        Some("ivshmem") => crate::vfio::ivshmem(),
        Some("gh") => crate::gh::gpu_like_devices(
            &expect.gh_mode,
            expect.gh_len.unwrap_or(0),
            expect.gh_devices.unwrap_or(1),
            expect.gate,
        ),
        Some("fault") => crate::fault::failing_region(
            expect.gh_len.unwrap_or(0),
            expect.gh_map.unwrap_or(0),
            expect.fail_after.unwrap_or(0),
        ),
        Some("nic") => crate::nic::e1000e(),
        Some("hotplug") => crate::hotplug::cycles(
            &expect.gh_mode,
            expect.gh_len.unwrap_or(0),
            expect.cycles.unwrap_or(1),
            &expect.bdf,
        ),
        Some("eject-flood") => {
            crate::stress::eject_flood(expect.flood.unwrap_or(0), &expect.bdf);
        }
        Some("soak") => crate::stress::soak(
            &expect.gh_mode,
            expect.gh_len.unwrap_or(0),
            expect.cycles.unwrap_or(1),
            expect.soak_s.unwrap_or(0),
            &expect.bdf,
        ),
        _ => {}
    }
    if expect.numa {
        crate::numa::report_all();
    }
    if expect.acpi_dump {
        report("acpi-dump", dump_acpi());
    }
}

pub fn finish(action: &str) -> ! {
    let cmd = if action == "reboot" {
        libc::RB_AUTOBOOT
    } else {
        libc::RB_POWER_OFF
    };
    // SAFETY: sync and reboot take no pointers; as PID 1 we are allowed to reboot.
    unsafe {
        libc::sync();
        libc::reboot(cmd);
    }
    // reboot() only returns on failure; PID 1 must not exit (the kernel would panic).
    println!("@@LOG reboot failed: {}", std::io::Error::last_os_error());
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dump_is_hex_chunks_of_each_deflated_table_then_its_length_and_sum() {
        let dsdt: Vec<u8> = (0..2000u32).map(|i| (i % 7) as u8).collect();
        let text = dump_text(&[("DSDT".into(), dsdt.clone()), ("APIC".into(), vec![1, 2])]);
        let mut deflated = Vec::new();
        let mut lines = text.lines();
        for line in lines.by_ref() {
            let Some(hex) = line.strip_prefix("@@ACPI DSDT ") else {
                assert_eq!(line, "@@ACPIEND DSDT 2000 5995");
                break;
            };
            assert!(hex.len() <= 192);
            deflated.extend(
                (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()),
            );
        }
        assert!(deflated.len() < 100, "{} bytes", deflated.len());
        assert_eq!(
            miniz_oxide::inflate::decompress_to_vec(&deflated).unwrap(),
            dsdt
        );
        assert!(lines.next().unwrap().starts_with("@@ACPI APIC "));
        assert_eq!(lines.next(), Some("@@ACPIEND APIC 2 3"));
        assert_eq!(lines.next(), None);
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(count_cpu_list("0-3\n"), Some(4));
        assert_eq!(count_cpu_list("0"), Some(1));
        assert_eq!(count_cpu_list("0-1,4,6-7"), Some(5));
        assert_eq!(count_cpu_list("3-1"), None);
        assert_eq!(count_cpu_list("x"), None);
    }

    #[test]
    fn meminfo() {
        let m = "MemTotal:         466276 kB\nMemFree: 1 kB\n";
        assert_eq!(meminfo_kib(m, "MemTotal"), Some(466276));
        assert_eq!(meminfo_kib(m, "Mem"), None);
        assert_eq!(meminfo_kib(m, "Cached"), None);
    }
}
