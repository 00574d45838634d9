//! Host set-up: the Debian packages the rig needs, installed on demand.

use std::process::Command;

use anyhow::{bail, Context, Result};

pub fn say(msg: &str) {
    eprintln!("rig: {msg}");
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn apt(args: &[&str]) -> Result<()> {
    let status = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get")?;
    if !status.success() {
        bail!("apt-get {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// The kernel ABI of Debian's current `linux-image-amd64`, e.g. `6.1.0-56-amd64`.
pub fn kernel_abi() -> Result<String> {
    let from = |out: &[u8]| -> Option<String> {
        String::from_utf8_lossy(out)
            .split_whitespace()
            .find_map(|w| {
                let abi = w
                    .trim_matches(|c| c == ',' || c == '<' || c == '>')
                    .strip_prefix("linux-image-")?;
                (abi.ends_with("-amd64") && abi.starts_with(|c: char| c.is_ascii_digit()))
                    .then(|| abi.to_string())
            })
    };
    let q = Command::new("dpkg-query")
        .args(["-W", "-f=${Depends}", "linux-image-amd64"])
        .output()?;
    if q.status.success() {
        if let Some(abi) = from(&q.stdout) {
            return Ok(abi);
        }
    }
    let d = Command::new("apt-cache")
        .args(["depends", "linux-image-amd64"])
        .output()?;
    from(&d.stdout).context("cannot resolve the kernel ABI from linux-image-amd64's dependencies")
}

/// Installs what the rig needs and returns the kernel ABI.
pub fn ensure_packages() -> Result<String> {
    let mut updated = false;
    let update = |updated: &mut bool| -> Result<()> {
        if !*updated {
            say("apt-get update");
            apt(&["update", "-q"])?;
            *updated = true;
        }
        Ok(())
    };
    if !installed("linux-image-amd64") {
        update(&mut updated)?;
        say("installing linux-image-amd64 (to learn the current kernel ABI)");
        apt(&[
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "linux-image-amd64",
        ])?;
    }
    let abi = kernel_abi()?;
    let wanted = [
        "qemu-system-x86".to_string(),
        format!("linux-image-{abi}"),
        format!("linux-headers-{abi}"),
        "busybox-static".into(),
        "cpio".into(),
        "xz-utils".into(),
        // Builds the test variant driver; linux-headers brings the compiler but not make.
        "make".into(),
        "acpica-tools".into(),
    ];
    let missing: Vec<&str> = wanted
        .iter()
        .map(String::as_str)
        .filter(|p| !installed(p))
        .collect();
    if missing.is_empty() {
        say(&format!("Debian packages present (kernel {abi})"));
    } else {
        update(&mut updated)?;
        say(&format!("installing {}", missing.join(" ")));
        let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
        args.extend(missing);
        apt(&args)?;
    }
    Ok(abi)
}
