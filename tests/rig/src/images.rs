//! Builds what the rig boots: the L3 initramfs (checker as init), the L2 base initramfs
//! (busybox, KVM/VFIO modules, ghvmm, the L3 kernel and initramfs) and per-scenario extras.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::cpio::Cpio;
use crate::modules;
use crate::setup::say;

/// Modules L2 loads at boot (with their dependencies): KVM for ghvmm, VFIO for later issues.
const L2_MODULES: &[&str] = &[
    "kvm_amd",
    "vfio",
    "vfio_iommu_type1",
    "vfio_pci_core",
    "vfio_pci",
];

pub struct Paths {
    pub root: PathBuf,
    pub abi: String,
}

impl Paths {
    pub fn target(&self) -> PathBuf {
        self.root.join("target")
    }
    pub fn kernel(&self) -> PathBuf {
        PathBuf::from(format!("/boot/vmlinuz-{}", self.abi))
    }
    pub fn rig_dir(&self) -> PathBuf {
        self.target().join("rig")
    }
}

/// Builds tests/variant-driver against the installed headers of the L2 kernel.
pub fn variant_driver(p: &Paths) -> Result<Vec<u8>> {
    let src = p.root.join("tests/variant-driver");
    let build = p.rig_dir().join("variant-driver");
    std::fs::create_dir_all(&build)?;
    for f in ["ghvmm_test_vfio.c", "Makefile"] {
        std::fs::copy(src.join(f), build.join(f)).with_context(|| format!("copying {f}"))?;
    }
    let headers = format!("/usr/src/linux-headers-{}", p.abi);
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
}

pub fn cargo_build(root: &Path) -> Result<()> {
    say("building ghvmm and the checker (release)");
    let status = Command::new(env_or("CARGO", "cargo"))
        .current_dir(root)
        .args(["build", "--release", "-q", "-p", "vmm", "-p", "checker"])
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

/// The shared libraries (and the dynamic loader) a binary needs, from ldd.
pub fn shared_libs(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .with_context(|| format!("ldd {}", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("not a dynamic executable") {
        return Ok(Vec::new());
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

/// Adds a binary at `dest` and its shared libraries at their own paths.
pub fn add_binary(c: &mut Cpio, src: &Path, dest: &str) -> Result<()> {
    c.file(dest, 0o755, &read(src)?);
    for lib in shared_libs(src)? {
        let real = std::fs::canonicalize(&lib).unwrap_or(lib.clone());
        c.file(&lib.to_string_lossy(), 0o755, &read(&real)?);
    }
    Ok(())
}

fn busybox(c: &mut Cpio) -> Result<()> {
    c.file("bin/busybox", 0o755, &read(Path::new("/bin/busybox"))?);
    // The init scripts call `busybox --install -s`; sh must exist before that.
    c.symlink("bin/sh", "busybox");
    Ok(())
}

pub fn l3_initramfs(p: &Paths) -> Result<Vec<u8>> {
    let mut c = Cpio::new();
    add_binary(&mut c, &p.target().join("release/checker"), "init")?;
    for d in ["proc", "sys", "dev", "tmp"] {
        c.dir(d);
    }
    Ok(c.finish())
}

/// L2's base image. `tests/l2/init` is its /init; scenarios append /scenario.sh.
pub fn l2_base(p: &Paths) -> Result<Vec<u8>> {
    let mut c = Cpio::new();
    busybox(&mut c)?;
    c.file("init", 0o755, &read(&p.root.join("tests/l2/init"))?);
    for d in ["proc", "sys", "dev", "tmp", "l3"] {
        c.dir(d);
    }
    add_binary(&mut c, &p.target().join("release/ghvmm"), "bin/ghvmm")?;
    add_binary(&mut c, &p.target().join("release/checker"), "bin/checker")?;

    let moddir = PathBuf::from(format!("/lib/modules/{}", p.abi));
    let deps = modules::parse_deps(
        &std::fs::read_to_string(moddir.join("modules.dep")).context("reading modules.dep")?,
    );
    let (order, missing) = modules::closure(&deps, L2_MODULES);
    if !missing.is_empty() {
        say(&format!(
            "modules built into the kernel or absent: {}",
            missing.join(" ")
        ));
    }
    let mut names = Vec::new();
    for m in &order {
        let file = m.rsplit('/').next().unwrap_or(m);
        let data = read(&moddir.join(m))?;
        if file.ends_with(".ko.xz") || file.ends_with(".ko.zst") {
            bail!(
                "compressed module {file}: this kernel packaging is not supported by the rig yet"
            );
        }
        c.file(&format!("lib/modules/{file}"), 0o644, &data);
        names.push(file.to_string());
    }
    c.file("modules.order", 0o644, (names.join("\n") + "\n").as_bytes());
    say("building the test variant driver against the kernel headers");
    c.file(
        "lib/modules/extra/ghvmm_test_vfio.ko",
        0o644,
        &variant_driver(p)?,
    );
    c.file("l3/vmlinuz", 0o644, &read(&p.kernel())?);
    c.file("l3/initramfs", 0o644, &l3_initramfs(p)?);
    Ok(c.finish())
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
    let mut c = Cpio::new();
    c.file("l3/vmlinux", 0o644, &extract_vmlinux(&p.kernel())?);
    Ok(c.finish())
}

/// QEMU and its firmware, appended to the base image for the bench (the boot-time peer).
pub fn qemu_overlay() -> Result<Vec<u8>> {
    let mut c = Cpio::new();
    add_binary(
        &mut c,
        Path::new("/usr/bin/qemu-system-x86_64"),
        "bin/qemu-system-x86_64",
    )?;
    for (src, name) in [
        ("/usr/share/seabios/bios-256k.bin", "bios-256k.bin"),
        ("/usr/share/qemu/kvmvapic.bin", "kvmvapic.bin"),
        ("/usr/share/qemu/linuxboot_dma.bin", "linuxboot_dma.bin"),
        ("/usr/share/qemu/pvh.bin", "pvh.bin"),
    ] {
        let real = std::fs::canonicalize(src).unwrap_or_else(|_| PathBuf::from(src));
        c.file(&format!("qemu/{name}"), 0o644, &read(&real)?);
    }
    Ok(c.finish())
}

/// A one-file archive carrying the scenario's script.
pub fn scenario_overlay(script: &str) -> Vec<u8> {
    let mut c = Cpio::new();
    c.file("scenario.sh", 0o755, script.as_bytes());
    c.finish()
}
