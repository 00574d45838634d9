//! Builds what the rig boots: the L3 initramfs (checker as init), the L2 base initramfs
//! (busybox, KVM/VFIO modules, ghvmm, the vfio-user server, the L3 kernel and initramfs) and
//! per-scenario extras.
//! Each is cached under target/rig/ (crate::cache) and rebuilt when one of its inputs changes.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::cache::{cached, Inputs};
use crate::cpio::Cpio;
use crate::modules;
use crate::setup::{say, Host};

/// Modules L2 loads at boot (with their dependencies): KVM for ghvmm, VFIO for passthrough,
/// e1000e for L2's end of the private link in the NIC scenario.
const L2_MODULES: &[&str] = &[
    "kvm_amd",
    "vfio_virqfd",
    "vfio",
    "vfio_iommu_type1",
    "vfio_pci_core",
    "vfio_pci",
    "e1000e",
];

/// Modules the L3 checker loads itself (the passed-through NIC's driver), with their
/// dependencies, in /lib/modules/ of the L3 initramfs.
const L3_MODULES: &[&str] = &["e1000e"];

pub struct Paths {
    pub root: PathBuf,
    pub host: Host,
}

impl Paths {
    pub fn target(&self) -> PathBuf {
        self.root.join("target")
    }
    pub fn kernel(&self) -> PathBuf {
        self.host.kernel.image()
    }
    pub fn rig_dir(&self) -> PathBuf {
        self.target().join("rig")
    }
}

/// Builds tests/variant-driver against the installed headers of the L2 kernel.
pub fn variant_driver(p: &Paths) -> Result<Vec<u8>> {
    const SOURCES: [&str; 2] = ["ghvmm_test_vfio.c", "Makefile"];
    let src = p.root.join("tests/variant-driver");
    let inputs = Inputs::new()
        .files(&SOURCES.map(|f| src.join(f)))
        .text("kernel", &p.host.kernel.describe());
    let (ko, from_cache) = cached(&p.rig_dir(), "ghvmm_test_vfio.ko", &inputs, || {
        say("building the test variant driver against the kernel headers");
        let build = p.rig_dir().join("variant-driver");
        std::fs::create_dir_all(&build)?;
        for f in SOURCES {
            std::fs::copy(src.join(f), build.join(f)).with_context(|| format!("copying {f}"))?;
        }
        let headers = p.host.kernel.headers();
        let out = Command::new("make")
            .arg("-C")
            .arg(&headers)
            .arg(format!("M={}", build.display()))
            .arg("modules")
            .output()
            .context("running make for the variant driver")?;
        if !out.status.success() {
            bail!(
                "building the variant driver failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        read(&build.join("ghvmm_test_vfio.ko"))
    })?;
    if from_cache {
        say("test variant driver unchanged (cached)");
    }
    Ok(ko)
}

pub fn cargo_build(root: &Path) -> Result<()> {
    say("building ghvmm, ghvmm-vfio-user and the checker (release)");
    let status = Command::new(env_or("CARGO", "cargo"))
        .current_dir(root)
        .args([
            "build",
            "--release",
            "-q",
            "-p",
            "vmm",
            "-p",
            "ghvmm-vfio-user",
            "-p",
            "checker",
        ])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build failed");
    }
    Ok(())
}

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_string())
}

/// The shared libraries (and the dynamic loader) a binary needs, from ldd; `lib_path` is
/// the LD_LIBRARY_PATH the binary runs with (an unpacked QEMU's).
pub fn shared_libs(binary: &Path, lib_path: Option<&str>) -> Result<Vec<PathBuf>> {
    let mut ldd = Command::new("ldd");
    if let Some(p) = lib_path {
        ldd.env("LD_LIBRARY_PATH", p);
    }
    let out = ldd
        .arg(binary)
        .output()
        .with_context(|| format!("ldd {}", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("not a dynamic executable") {
        return Ok(Vec::new());
    }
    if let Some(line) = text.lines().find(|l| l.contains("not found")) {
        bail!("{}: {}", binary.display(), line.trim());
    }
    Ok(text
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(PathBuf::from)
        .collect())
}

fn read(p: &Path) -> Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("reading {}", p.display()))
}

/// A binary and the files its shared libraries resolve to (cache inputs).
fn binary_files(src: &Path, lib_path: Option<&str>) -> Result<Vec<PathBuf>> {
    let mut v = vec![src.to_path_buf()];
    for lib in shared_libs(src, lib_path)? {
        v.push(std::fs::canonicalize(&lib).unwrap_or(lib));
    }
    Ok(v)
}

/// Where L2 finds a library: at its own path when that is a system directory, else (a
/// library of an unpacked package) in the multiarch directory the loader searches.
fn lib_dest(lib: &Path) -> String {
    const SYSTEM: [&str; 4] = ["/lib/", "/lib64/", "/usr/lib/", "/usr/lib64/"];
    let path = lib.to_string_lossy();
    if SYSTEM.iter().any(|d| path.starts_with(d)) {
        return path.into_owned();
    }
    let name = lib.file_name().map(|n| n.to_string_lossy().into_owned());
    format!("/usr/lib/x86_64-linux-gnu/{}", name.unwrap_or_default())
}

/// Adds a binary at `dest` and its shared libraries where L2's loader finds them.
pub fn add_binary(c: &mut Cpio, src: &Path, dest: &str, lib_path: Option<&str>) -> Result<()> {
    c.file(dest, 0o755, &read(src)?);
    for lib in shared_libs(src, lib_path)? {
        let real = std::fs::canonicalize(&lib).unwrap_or(lib.clone());
        c.file(&lib_dest(&lib), 0o755, &read(&real)?);
    }
    Ok(())
}

const BUSYBOX: &str = "/bin/busybox";

fn busybox(c: &mut Cpio) -> Result<()> {
    c.file("bin/busybox", 0o755, &read(Path::new(BUSYBOX))?);
    // The init scripts call `busybox --install -s`; sh must exist before that.
    c.symlink("bin/sh", "busybox");
    Ok(())
}

/// The L3 guest's initramfs: the checker as /init, busybox and the NIC driver for the
/// passthrough checks.
pub fn l3_initramfs(p: &Paths) -> Result<Vec<u8>> {
    let checker = p.target().join("release/checker");
    let moddir = p.host.kernel.modules();
    let module_files: Vec<PathBuf> = module_order(&moddir, L3_MODULES)?
        .iter()
        .map(|m| moddir.join(m))
        .collect();
    let inputs = Inputs::new()
        .files(&binary_files(&checker, None)?)
        .file(Path::new(BUSYBOX))
        .files(&module_files);
    let (bytes, _) = cached(&p.rig_dir(), "l3-initramfs.cpio", &inputs, || {
        let mut c = Cpio::new();
        add_binary(&mut c, &checker, "init", None)?;
        c.file("bin/busybox", 0o755, &read(Path::new(BUSYBOX))?);
        for d in ["proc", "sys", "dev", "tmp"] {
            c.dir(d);
        }
        for path in &module_files {
            let (file, data) = module(path)?;
            c.file(&format!("lib/modules/{file}"), 0o644, &data);
        }
        Ok(c.finish())
    })?;
    Ok(bytes)
}

/// `wanted` modules and their dependencies, dependencies first, as paths relative to
/// /lib/modules/<abi>.
fn module_order(moddir: &Path, wanted: &[&str]) -> Result<Vec<String>> {
    let deps = modules::parse_deps(
        &std::fs::read_to_string(moddir.join("modules.dep")).context("reading modules.dep")?,
    );
    let (order, missing) = modules::closure(&deps, wanted);
    if !missing.is_empty() {
        say(&format!(
            "modules built into the kernel or absent: {}",
            missing.join(" ")
        ));
    }
    Ok(order)
}

/// A module's file name and contents, decompressed: busybox's insmod takes plain .ko files.
fn module(path: &Path) -> Result<(String, Vec<u8>)> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tool = if name.ends_with(".ko.xz") {
        "xz"
    } else if name.ends_with(".ko.zst") {
        "zstd"
    } else {
        return Ok((name, read(path)?));
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .with_context(|| format!("running {tool} to decompress {name}"))?;
    if !out.status.success() {
        bail!("{tool} -dc {} failed", path.display());
    }
    let plain = name
        .rsplit_once(".ko")
        .map_or(name.clone(), |(stem, _)| format!("{stem}.ko"));
    Ok((plain, out.stdout))
}

/// L2's base image. `tests/l2/init` is its /init; scenarios append /scenario.sh.
pub fn l2_base(p: &Paths) -> Result<Vec<u8>> {
    // Dependencies first: their cached outputs are inputs of this image.
    let variant = variant_driver(p)?;
    let l3 = l3_initramfs(p)?;
    let ghvmm = p.target().join("release/ghvmm");
    let remote = p.target().join("release/ghvmm-remote");
    let server = p.target().join("release/ghvmm-vfio-user");
    let checker = p.target().join("release/checker");
    let init = p.root.join("tests/l2/init");
    let moddir = p.host.kernel.modules();
    let order = module_order(&moddir, L2_MODULES)?;
    let module_files: Vec<PathBuf> = order.iter().map(|m| moddir.join(m)).collect();
    let inputs = Inputs::new()
        .files(&[
            PathBuf::from(BUSYBOX),
            init.clone(),
            p.kernel(),
            p.rig_dir().join("ghvmm_test_vfio.ko"),
            p.rig_dir().join("l3-initramfs.cpio"),
        ])
        .files(&binary_files(&ghvmm, None)?)
        .files(&binary_files(&remote, None)?)
        .files(&binary_files(&server, None)?)
        .files(&binary_files(&checker, None)?)
        .files(&module_files);
    let (bytes, from_cache) = cached(&p.rig_dir(), "l2-base.cpio", &inputs, || {
        say("building the L2 initramfs (busybox, KVM/VFIO modules, ghvmm, ghvmm-remote and ghvmm-vfio-user, L3 kernel + checker initramfs)");
        let mut c = Cpio::new();
        busybox(&mut c)?;
        c.file("init", 0o755, &read(&init)?);
        for d in ["proc", "sys", "dev", "tmp", "l3"] {
            c.dir(d);
        }
        add_binary(&mut c, &ghvmm, "bin/ghvmm", None)?;
        add_binary(&mut c, &remote, "bin/ghvmm-remote", None)?;
        add_binary(&mut c, &server, "bin/ghvmm-vfio-user", None)?;
        add_binary(&mut c, &checker, "bin/checker", None)?;
        let mut names = Vec::new();
        for path in &module_files {
            let (file, data) = module(path)?;
            c.file(&format!("lib/modules/{file}"), 0o644, &data);
            names.push(file);
        }
        c.file("modules.order", 0o644, (names.join("\n") + "\n").as_bytes());
        c.file("lib/modules/extra/ghvmm_test_vfio.ko", 0o644, &variant);
        c.file("l3/vmlinuz", 0o644, &read(&p.kernel())?);
        c.file("l3/initramfs", 0o644, &l3);
        Ok(c.finish())
    })?;
    if from_cache {
        say("L2 initramfs unchanged (cached)");
    }
    Ok(bytes)
}

/// The uncompressed ELF vmlinux inside a bzImage: the XZ stream after the setup code,
/// decompressed with xz(1). ghvmm (and QEMU) boot it through its PVH entry point.
pub fn extract_vmlinux(bzimage: &Path) -> Result<Vec<u8>> {
    const XZ_MAGIC: &[u8] = b"\xfd7zXZ\x00";
    let data = read(bzimage)?;
    let at = data
        .windows(XZ_MAGIC.len())
        .position(|w| w == XZ_MAGIC)
        .context("no XZ stream in the kernel image (this rig expects Debian's XZ bzImage)")?;
    let mut child = Command::new("xz")
        .args(["-dc", "--single-stream"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("running xz")?;
    let mut stdin = child.stdin.take().context("xz stdin")?;
    let payload = data[at..].to_vec();
    let feeder = std::thread::spawn(move || {
        use std::io::Write;
        // xz stops reading after the stream; a broken pipe then is expected.
        let _ = stdin.write_all(&payload);
    });
    let out = child.wait_with_output().context("xz")?;
    let _ = feeder.join();
    if out.stdout.get(..4) != Some(b"\x7fELF") {
        bail!("the decompressed kernel is not an ELF file");
    }
    Ok(out.stdout)
}

/// The uncompressed kernel at /l3/vmlinux, for PVH boots.
pub fn vmlinux_overlay(p: &Paths) -> Result<Vec<u8>> {
    let inputs = Inputs::new().file(&p.kernel());
    let (bytes, _) = cached(&p.rig_dir(), "vmlinux.cpio", &inputs, || {
        say("extracting the uncompressed vmlinux from the bzImage (for PVH boots)");
        let mut c = Cpio::new();
        c.file("l3/vmlinux", 0o644, &extract_vmlinux(&p.kernel())?);
        Ok(c.finish())
    })?;
    Ok(bytes)
}

/// SeaBIOS and the option ROMs QEMU needs for a direct kernel boot (and PVH), for `-L /qemu`.
const QEMU_FIRMWARE: [&str; 4] = [
    "bios-256k.bin",
    "kvmvapic.bin",
    "linuxboot_dma.bin",
    "pvh.bin",
];

/// QEMU and its firmware in L2, for the bench and for QEMU as the L3 VMM.
pub fn qemu_overlay(p: &Paths) -> Result<Vec<u8>> {
    let qemu = &p.host.qemu;
    let lib_path = qemu.lib_path.as_deref();
    let firmware: Vec<PathBuf> = QEMU_FIRMWARE
        .iter()
        .map(|name| {
            let f = qemu.firmware_file(name)?;
            Ok(std::fs::canonicalize(&f).unwrap_or(f))
        })
        .collect::<Result<_>>()?;
    let inputs = Inputs::new()
        .files(&binary_files(&qemu.binary, lib_path)?)
        .files(&firmware);
    let (bytes, _) = cached(&p.rig_dir(), "qemu.cpio", &inputs, || {
        say("adding QEMU and its firmware to L2");
        let mut c = Cpio::new();
        add_binary(&mut c, &qemu.binary, "bin/qemu-system-x86_64", lib_path)?;
        for (real, name) in firmware.iter().zip(QEMU_FIRMWARE) {
            c.file(&format!("qemu/{name}"), 0o644, &read(real)?);
        }
        Ok(c.finish())
    })?;
    Ok(bytes)
}

/// A one-file archive carrying the scenario's script.
pub fn scenario_overlay(script: &str) -> Vec<u8> {
    let mut c = Cpio::new();
    c.file("scenario.sh", 0o755, script.as_bytes());
    c.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpacked_libraries_land_where_the_loader_looks() {
        assert_eq!(
            lib_dest(Path::new("/lib/x86_64-linux-gnu/libc.so.6")),
            "/lib/x86_64-linux-gnu/libc.so.6"
        );
        assert_eq!(
            lib_dest(Path::new("/lib64/ld-linux-x86-64.so.2")),
            "/lib64/ld-linux-x86-64.so.2"
        );
        assert_eq!(
            lib_dest(Path::new(
                "/w/target/rig/qemu/7.2/root/usr/lib/x86_64-linux-gnu/libfdt.so.1"
            )),
            "/usr/lib/x86_64-linux-gnu/libfdt.so.1"
        );
    }

    #[test]
    fn modules_are_decompressed_and_renamed() {
        let dir = std::env::temp_dir().join(format!("rig-modules-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let plain = dir.join("kvm.ko");
        std::fs::write(&plain, b"\x7fELF module").unwrap();
        assert_eq!(
            module(&plain).unwrap(),
            ("kvm.ko".into(), b"\x7fELF module".to_vec())
        );
        // xz -k leaves kvm.ko and writes kvm.ko.xz next to it.
        let ok = Command::new("xz").arg("-kf").arg(&plain).status();
        if ok.is_ok_and(|s| s.success()) {
            let (name, data) = module(&dir.join("kvm.ko.xz")).unwrap();
            assert_eq!(
                (name.as_str(), &data[..]),
                ("kvm.ko", &b"\x7fELF module"[..])
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
