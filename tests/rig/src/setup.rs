//! Host set-up. The host gets tools only (busybox-static, cpio, acpica-tools, make, a
//! compiler), and only as new packages: an install that would upgrade or remove an installed
//! package is refused. The rig's kernel (image, modules, headers) is a set of Debian packages
//! fetched with `apt-get download` and unpacked under target/rig/kernel/, and so is QEMU when
//! the host has none (Debian 12's qemu-system-x86 would replace a newer qemu-utils), so /boot
//! and the host's package list stay as they were.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

pub fn say(msg: &str) {
    eprintln!("rig: {msg}");
}

/// What the rig runs on the host; installed as new packages when missing.
const TOOLS: &[&str] = &[
    "busybox-static",
    "cpio",
    "xz-utils",
    // Builds the test variant driver (the kernel headers name gcc-12).
    "make",
    "gcc-12",
    "acpica-tools",
    // depmod: a package's modules come without modules.dep (dpkg's trigger writes it).
    "kmod",
];

/// The Debian kernel metapackage whose current dependency is the kernel the rig boots.
const KERNEL_META: &str = "linux-image-amd64";
const QEMU_PACKAGE: &str = "qemu-system-x86";
const HOST_QEMU: &str = "/usr/bin/qemu-system-x86_64";
/// Debian's QEMU looks for firmware here (its --firmwarepath).
const HOST_FIRMWARE: [&str; 3] = [
    "/usr/share/qemu",
    "/usr/share/seabios",
    "/usr/lib/ipxe/qemu",
];
const MULTIARCH_LIBS: [&str; 2] = ["usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu"];
/// Written last into an unpacked tree: its absence means an interrupted unpack.
const COMPLETE: &str = ".complete";

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn apt_get(args: &[&str]) -> Result<String> {
    run(
        Command::new("apt-get").args(args),
        &format!("apt-get {}", args.join(" ")),
    )
}

/// Refreshes the package lists once per process: the kernel is resolved as of today.
fn update_lists() {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(|| {
        say("apt-get update");
        if let Err(e) = apt_get(&["update", "-q"]) {
            say(&format!("{e:#}; going on with the package lists there are"));
        }
    });
}

/// What `apt-get install -s` says an install would do.
#[derive(Debug, Default, PartialEq, Eq)]
struct Plan {
    /// Every package it would unpack (new or upgraded).
    unpacked: Vec<String>,
    /// Installed packages it would upgrade, and installed packages it would remove.
    upgraded: Vec<String>,
    removed: Vec<String>,
}

impl Plan {
    /// Reads `Inst NAME [OLD] (NEW ...)` and `Remv NAME [OLD]` lines; `[OLD]` marks an
    /// installed version.
    fn parse(simulation: &str) -> Plan {
        let mut plan = Plan::default();
        for line in simulation.lines() {
            let mut words = line.split_whitespace();
            let (Some(op), Some(name)) = (words.next(), words.next()) else {
                continue;
            };
            let had_version = words.next().is_some_and(|w| w.starts_with('['));
            match op {
                "Inst" => {
                    plan.unpacked.push(name.to_string());
                    if had_version {
                        plan.upgraded.push(name.to_string());
                    }
                }
                "Remv" => plan.removed.push(name.to_string()),
                _ => {}
            }
        }
        plan
    }

    fn simulate(packages: &[&str]) -> Result<Plan> {
        let mut args = vec!["install", "-s", "-q", "--no-install-recommends"];
        args.extend(packages);
        Ok(Plan::parse(&apt_get(&args)?))
    }

    /// Why the install must not run, if it must not.
    fn touches_host(&self) -> Option<String> {
        let mut why = Vec::new();
        if !self.upgraded.is_empty() {
            why.push(format!("upgrade {}", self.upgraded.join(" ")));
        }
        if !self.removed.is_empty() {
            why.push(format!("remove {}", self.removed.join(" ")));
        }
        (!why.is_empty()).then(|| why.join(" and "))
    }
}

/// Installs the missing tools as new packages; refuses an install that would change an
/// installed package.
pub fn ensure_tools() -> Result<()> {
    let missing: Vec<&str> = TOOLS.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        say("host tools present");
        return Ok(());
    }
    update_lists();
    let plan = Plan::simulate(&missing)?;
    if let Some(why) = plan.touches_host() {
        bail!(
            "installing {} would {why}; the rig does not change installed packages (install them yourself)",
            missing.join(" ")
        );
    }
    say(&format!("installing {}", plan.unpacked.join(" ")));
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(&missing);
    apt_get(&args).map(drop)
}

/// Word `name` of `apt-cache depends PACKAGE`'s `Depends:` lines that start with `prefix`.
fn depends_with_prefix(depends: &str, prefix: &str) -> Vec<String> {
    depends
        .lines()
        .filter_map(|l| l.trim().trim_start_matches('|').strip_prefix("Depends: "))
        .map(|d| d.trim_matches(|c| c == '<' || c == '>').to_string())
        .filter(|d| d.starts_with(prefix))
        .collect()
}

fn apt_depends(package: &str) -> Result<String> {
    run(
        Command::new("apt-cache").args(["depends", package]),
        &format!("apt-cache depends {package}"),
    )
}

/// The candidate version of `package` (`Candidate:` of apt-cache policy).
fn candidate_version(package: &str) -> Result<String> {
    let policy = run(
        Command::new("apt-cache").args(["policy", package]),
        &format!("apt-cache policy {package}"),
    )?;
    policy
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate: "))
        .filter(|v| *v != "(none)")
        .map(str::to_string)
        .with_context(|| format!("no installable version of {package} in the package lists"))
}

/// The kernel the rig boots in L2 and L3, unpacked (never installed).
#[derive(Clone, Debug)]
pub struct Kernel {
    /// e.g. `6.1.0-57-amd64`.
    pub abi: String,
    /// The Debian package version, e.g. `6.1.192-3`.
    pub version: String,
    /// The packages' files: boot/, lib/modules/, usr/src/.
    pub root: PathBuf,
}

impl Kernel {
    pub fn image(&self) -> PathBuf {
        self.root.join(format!("boot/vmlinuz-{}", self.abi))
    }
    pub fn modules(&self) -> PathBuf {
        self.root.join(format!("lib/modules/{}", self.abi))
    }
    pub fn headers(&self) -> PathBuf {
        self.root
            .join(format!("usr/src/linux-headers-{}", self.abi))
    }
    pub fn describe(&self) -> String {
        format!(
            "{} (Debian linux-image-{} {})",
            self.abi, self.abi, self.version
        )
    }
}

/// The ABI of the kernel `linux-image-amd64` depends on today.
fn current_abi() -> Result<String> {
    let deps = apt_depends(KERNEL_META)?;
    depends_with_prefix(&deps, "linux-image-")
        .into_iter()
        .filter_map(|p| p.strip_prefix("linux-image-").map(str::to_string))
        .find(|abi| abi.ends_with("-amd64") && abi.starts_with(|c: char| c.is_ascii_digit()))
        .with_context(|| format!("cannot resolve the kernel ABI from {KERNEL_META}'s dependencies"))
}

/// `apt-get download`s `packages` into `dir` and unpacks each with `dpkg-deb -x` into
/// `dir/root`; nothing reaches dpkg's database.
fn download_and_unpack(dir: &Path, packages: &[String]) -> Result<PathBuf> {
    let root = dir.join("root");
    if root.join(COMPLETE).exists() {
        return Ok(root);
    }
    let debs = dir.join("debs");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&debs).with_context(|| format!("creating {}", debs.display()))?;
    std::fs::create_dir_all(&root)?;
    say(&format!("apt-get download {}", packages.join(" ")));
    let mut dl = Command::new("apt-get");
    dl.current_dir(&debs).arg("download").args(packages);
    run(&mut dl, "apt-get download")?;
    for entry in std::fs::read_dir(&debs)? {
        let deb = entry?.path();
        if deb.extension().is_some_and(|e| e == "deb") {
            let mut x = Command::new("dpkg-deb");
            x.arg("-x").arg(&deb).arg(&root);
            run(&mut x, &format!("dpkg-deb -x {}", deb.display()))?;
        }
    }
    std::fs::remove_dir_all(&debs)?;
    Ok(root)
}

/// Removes the other entries of `parent` (earlier kernels or QEMUs), keeping `keep`.
fn prune_siblings(parent: &Path, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        if e.path() != keep {
            say(&format!("removing the earlier {}", e.path().display()));
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Today's Debian kernel, unpacked under `rig_dir/kernel/ABI_VERSION/root`.
pub fn ensure_kernel(rig_dir: &Path) -> Result<Kernel> {
    update_lists();
    let abi = current_abi()?;
    let image = format!("linux-image-{abi}");
    let headers = format!("linux-headers-{abi}");
    let version = candidate_version(&image)?;
    let parent = rig_dir.join("kernel");
    let dir = parent.join(format!("{abi}_{version}"));
    let mut packages = vec![image, headers.clone()];
    // The headers are split: the flavour's, the common ones and kbuild's host programs.
    let header_deps = apt_depends(&headers)?;
    packages.extend(depends_with_prefix(&header_deps, "linux-headers-"));
    packages.extend(depends_with_prefix(&header_deps, "linux-kbuild-"));
    let root = download_and_unpack(&dir, &packages)?;
    let kernel = Kernel { abi, version, root };
    if !root_complete(&kernel.root) {
        point_headers_at(&kernel)?;
        let mut depmod = Command::new("depmod");
        depmod.arg("-b").arg(&kernel.root).arg(&kernel.abi);
        run(&mut depmod, "depmod")?;
        std::fs::write(kernel.root.join(COMPLETE), packages.join("\n") + "\n")?;
    }
    prune_siblings(&parent, &dir);
    Ok(kernel)
}

fn root_complete(root: &Path) -> bool {
    root.join(COMPLETE).exists()
}

/// The flavour's headers Makefile includes the common headers by absolute /usr/src path;
/// point it at the unpacked copy.
fn point_headers_at(k: &Kernel) -> Result<()> {
    let makefile = k.headers().join("Makefile");
    let text = std::fs::read_to_string(&makefile)
        .with_context(|| format!("reading {}", makefile.display()))?;
    let moved = rewrite_include(&text, &k.root);
    if moved == text {
        bail!(
            "{} does not include /usr/src/...: the headers' layout changed",
            makefile.display()
        );
    }
    std::fs::write(&makefile, moved).with_context(|| format!("writing {}", makefile.display()))
}

fn rewrite_include(makefile: &str, root: &Path) -> String {
    makefile.replace(
        "include /usr/src/",
        &format!("include {}/usr/src/", root.display()),
    )
}

/// The QEMU that runs L2 (and is copied into L2 for the bench and QEMU-as-L3-VMM runs).
#[derive(Clone, Debug)]
pub struct Qemu {
    pub binary: PathBuf,
    /// LD_LIBRARY_PATH for an unpacked QEMU.
    pub lib_path: Option<String>,
    /// Firmware directories, searched in order.
    pub firmware: Vec<PathBuf>,
    pub describe: String,
}

impl Qemu {
    /// A command running this QEMU (its libraries and firmware found).
    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.binary);
        if let Some(p) = &self.lib_path {
            c.env("LD_LIBRARY_PATH", p);
            for dir in &self.firmware {
                c.arg("-L").arg(dir);
            }
        }
        c
    }

    /// The first `name` among the firmware directories.
    pub fn firmware_file(&self, name: &str) -> Result<PathBuf> {
        self.firmware
            .iter()
            .map(|d| d.join(name))
            .find(|p| p.exists())
            .with_context(|| format!("QEMU firmware {name} not found"))
    }
}

/// The host's QEMU when it has one; otherwise Debian's, unpacked with the libraries the host
/// lacks under `rig_dir/qemu/VERSION/root`.
pub fn ensure_qemu(rig_dir: &Path) -> Result<Qemu> {
    if Path::new(HOST_QEMU).exists() {
        return Ok(Qemu {
            binary: HOST_QEMU.into(),
            lib_path: None,
            firmware: HOST_FIRMWARE.iter().map(PathBuf::from).collect(),
            describe: format!("{} (the host's)", qemu_version(HOST_QEMU, None)),
        });
    }
    update_lists();
    let version = candidate_version(QEMU_PACKAGE)?;
    let parent = rig_dir.join("qemu");
    // An epoch's colon would split LD_LIBRARY_PATH.
    let dir = parent.join(version.replace(':', "_"));
    let root = if root_complete(&dir.join("root")) {
        dir.join("root")
    } else {
        // What an install would unpack: QEMU and whichever of its libraries the host lacks.
        let plan = Plan::simulate(&[QEMU_PACKAGE])?;
        let root = download_and_unpack(&dir, &plan.unpacked)?;
        std::fs::write(root.join(COMPLETE), plan.unpacked.join("\n") + "\n")?;
        root
    };
    prune_siblings(&parent, &dir);
    let lib_path = MULTIARCH_LIBS
        .iter()
        .map(|l| root.join(l).display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let binary = root.join("usr/bin/qemu-system-x86_64");
    let describe = format!(
        "{} (unpacked, not installed)",
        qemu_version(&binary, Some(&lib_path))
    );
    Ok(Qemu {
        firmware: HOST_FIRMWARE
            .iter()
            .map(|d| root.join(d.trim_start_matches('/')))
            .collect(),
        binary,
        lib_path: Some(lib_path),
        describe,
    })
}

fn qemu_version(binary: impl AsRef<Path>, lib_path: Option<&str>) -> String {
    let mut c = Command::new(binary.as_ref());
    if let Some(p) = lib_path {
        c.env("LD_LIBRARY_PATH", p);
    }
    c.arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "QEMU (version unknown)".into())
}

/// Everything the rig takes from the host.
#[derive(Clone, Debug)]
pub struct Host {
    pub kernel: Kernel,
    pub qemu: Qemu,
}

impl Host {
    /// Printed at the start of every run and recorded with its results.
    pub fn describe(&self) -> String {
        format!("kernel {}; {}", self.kernel.describe(), self.qemu.describe)
    }
}

/// What the host has installed (package, version) and in /boot, to show that set-up added
/// tools and changed nothing else.
#[derive(Debug, Default, PartialEq, Eq)]
struct HostState {
    packages: std::collections::BTreeMap<String, String>,
    boot: Vec<String>,
}

impl HostState {
    fn read() -> HostState {
        let packages = Command::new("dpkg-query")
            .args(["-W", "-f=${Package} ${Version} ${Status}\n"])
            .output()
            .map(|o| parse_installed(&String::from_utf8_lossy(&o.stdout)))
            .unwrap_or_default();
        let mut boot: Vec<String> = std::fs::read_dir("/boot")
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        boot.sort();
        HostState { packages, boot }
    }

    /// The packages added, or why the host changed otherwise.
    fn compare(&self, after: &HostState) -> std::result::Result<Vec<String>, String> {
        let mut changed = Vec::new();
        for (p, v) in &self.packages {
            match after.packages.get(p) {
                None => changed.push(format!("{p} {v} removed")),
                Some(w) if w != v => changed.push(format!("{p} {v} -> {w}")),
                Some(_) => {}
            }
        }
        if self.boot != after.boot {
            changed.push(format!(
                "/boot went from {:?} to {:?}",
                self.boot, after.boot
            ));
        }
        if !changed.is_empty() {
            return Err(changed.join(", "));
        }
        Ok(after
            .packages
            .keys()
            .filter(|p| !self.packages.contains_key(*p))
            .cloned()
            .collect())
    }
}

/// `dpkg-query -W -f='${Package} ${Version} ${Status}\n'` lines of installed packages.
fn parse_installed(out: &str) -> std::collections::BTreeMap<String, String> {
    out.lines()
        .filter(|l| l.ends_with("install ok installed"))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_string(), w.next()?.to_string()))
        })
        .collect()
}

pub fn ensure_host(rig_dir: &Path) -> Result<Host> {
    let before = HostState::read();
    ensure_tools()?;
    let host = Host {
        kernel: ensure_kernel(rig_dir)?,
        qemu: ensure_qemu(rig_dir)?,
    };
    match before.compare(&HostState::read()) {
        Ok(added) if added.is_empty() => say("host packages and /boot unchanged"),
        Ok(added) => say(&format!(
            "host: added {}; no installed package changed, /boot unchanged",
            added.join(" ")
        )),
        Err(why) => bail!("set-up changed the host, which it must not: {why}"),
    }
    say(&host.describe());
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_names_upgrades_and_removals() {
        let sim = "NOTE: This is only a simulation!\n\
                   Remv qemu-utils [1:10.0.2+ds-2]\n\
                   Inst liblzma5 [5.4.1-1] (5.4.1-1+deb12u2 Debian-Security:12 [amd64])\n\
                   Inst cpio (2.13+dfsg-7.1 Debian:12.15/oldstable [amd64])\n\
                   Conf cpio (2.13+dfsg-7.1 Debian:12.15/oldstable [amd64])\n";
        let plan = Plan::parse(sim);
        assert_eq!(plan.unpacked, ["liblzma5", "cpio"]);
        assert_eq!(plan.upgraded, ["liblzma5"]);
        assert_eq!(plan.removed, ["qemu-utils"]);
        assert_eq!(
            plan.touches_host().as_deref(),
            Some("upgrade liblzma5 and remove qemu-utils")
        );
        let clean = Plan::parse("Inst cpio (2.13 Debian:12 [amd64])\n");
        assert_eq!(clean.touches_host(), None);
    }

    #[test]
    fn kernel_packages_come_from_the_depends_lines() {
        let deps = "linux-headers-6.1.0-57-amd64\n  Depends: linux-headers-6.1.0-57-common\n  \
                    Depends: linux-kbuild-6.1\n  Depends: linux-compiler-gcc-12-x86\n";
        assert_eq!(
            depends_with_prefix(deps, "linux-headers-"),
            ["linux-headers-6.1.0-57-common"]
        );
        assert_eq!(
            depends_with_prefix(deps, "linux-kbuild-"),
            ["linux-kbuild-6.1"]
        );
        let meta = "linux-image-amd64\n  Depends: linux-image-6.1.0-57-amd64\n";
        assert_eq!(
            depends_with_prefix(meta, "linux-image-"),
            ["linux-image-6.1.0-57-amd64"]
        );
    }

    #[test]
    fn host_changes_beyond_added_tools_are_named() {
        let dpkg = "cpio 2.13 install ok installed\nqemu-utils 1:10.0 install ok installed\n\
                    gone 1 deinstall ok config-files\n";
        let before = HostState {
            packages: parse_installed(dpkg),
            boot: vec![],
        };
        assert_eq!(before.packages.len(), 2);
        let mut after = HostState {
            packages: before.packages.clone(),
            boot: vec![],
        };
        after.packages.insert("kmod".into(), "30".into());
        assert_eq!(before.compare(&after), Ok(vec!["kmod".to_string()]));
        after.packages.remove("qemu-utils");
        after.packages.insert("cpio".into(), "2.14".into());
        after.boot.push("vmlinuz-6.1.0-57-amd64".into());
        assert_eq!(
            before.compare(&after).unwrap_err(),
            "cpio 2.13 -> 2.14, qemu-utils 1:10.0 removed, /boot went from [] to [\"vmlinuz-6.1.0-57-amd64\"]"
        );
    }

    #[test]
    fn the_headers_makefile_points_into_the_unpacked_tree() {
        let m = "include /usr/src/linux-headers-6.1.0-57-common/Makefile\n";
        assert_eq!(
            rewrite_include(m, Path::new("/r/k")),
            "include /r/k/usr/src/linux-headers-6.1.0-57-common/Makefile\n"
        );
    }
}
