//! Directories only this process's user can reach, made under shared places (the runtime or
//! temporary directory, the directory of a socket path someone gave).
//!
//! In a directory others can write to, another user can make our name first (as a directory
//! they own, or a symlink to somewhere we would then write into), or, without the sticky bit,
//! rename ours away and put theirs in its place. So: the parent must not be writable by group
//! or others unless it has the sticky bit (as /tmp has); the directory is made with mode 0700;
//! and one that exists already is taken only if it is a real directory (not a symlink), owned
//! by our effective uid, with no group or other permission bits.

use std::fs::DirBuilder;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::Path;

/// Group- and other-write permission bits.
const SHARED_WRITE: u32 = 0o022;
/// Any group or other permission.
const GROUP_OTHER: u32 = 0o077;
/// The sticky bit: in such a directory only an entry's owner may rename or remove it.
const STICKY: u32 = 0o1000;

/// Creates `dir` (mode 0700) or accepts it if it already is a private directory of ours.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    make(dir, true)
}

/// Creates `dir` (mode 0700); an existing entry of that name is an error (`AlreadyExists`).
pub fn fresh_private_dir(dir: &Path) -> io::Result<()> {
    make(dir, false)
}

fn make(dir: &Path, accept_existing: bool) -> io::Result<()> {
    check_parent(dir)?;
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && accept_existing => {
            // lstat: a symlink to a directory of ours is not ours to write into.
            let m = std::fs::symlink_metadata(dir)?;
            if m.file_type().is_dir() && m.uid() == euid() && m.mode() & GROUP_OTHER == 0 {
                Ok(())
            } else {
                Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("{} exists and is not a private directory", dir.display()),
                ))
            }
        }
        Err(e) => Err(e),
    }
}

/// Refuses a parent that others may write to without the sticky bit.
fn check_parent(dir: &Path) -> io::Result<()> {
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // stat, not lstat: /var/run -> /run is as good as /run.
    let m = std::fs::metadata(parent)?;
    if m.mode() & SHARED_WRITE != 0 && m.mode() & STICKY == 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is writable by other users and has no sticky bit",
                parent.display()
            ),
        ));
    }
    Ok(())
}

fn euid() -> u32 {
    // SAFETY: geteuid has no failure mode and touches no memory.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::Permissions;
    use std::os::unix::fs::PermissionsExt;
    use vmm_sys_util::tempdir::TempDir;

    fn dir_with_mode(parent: &Path, name: &str, mode: u32) -> std::path::PathBuf {
        let d = parent.join(name);
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, Permissions::from_mode(mode)).unwrap();
        d
    }

    #[test]
    fn a_shared_parent_needs_the_sticky_bit() {
        let tmp = TempDir::new().unwrap();
        let open = dir_with_mode(tmp.as_path(), "open", 0o777);
        let e = private_dir(&open.join("mine")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("no sticky bit"), "{e}");
        assert!(!open.join("mine").exists());
        let group = dir_with_mode(tmp.as_path(), "group", 0o775);
        assert!(fresh_private_dir(&group.join("mine")).is_err());
        let sticky = dir_with_mode(tmp.as_path(), "sticky", 0o1777);
        private_dir(&sticky.join("mine")).unwrap();
        let m = std::fs::symlink_metadata(sticky.join("mine")).unwrap();
        assert_eq!(m.mode() & 0o777, 0o700);
    }

    #[test]
    fn an_existing_entry_is_taken_only_if_private_and_ours() {
        let tmp = TempDir::new().unwrap();
        let base = tmp.as_path();
        std::fs::set_permissions(base, Permissions::from_mode(0o700)).unwrap();
        let ours = dir_with_mode(base, "ours", 0o700);
        private_dir(&ours).unwrap();
        assert_eq!(
            fresh_private_dir(&ours).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        let readable = dir_with_mode(base, "readable", 0o750);
        assert!(private_dir(&readable).is_err());
        let link = base.join("link");
        std::os::unix::fs::symlink(&ours, &link).unwrap();
        assert!(private_dir(&link).is_err(), "a symlink, even to ours");
        let file = base.join("file");
        std::fs::write(&file, b"").unwrap();
        std::fs::set_permissions(&file, Permissions::from_mode(0o600)).unwrap();
        assert!(private_dir(&file).is_err());
    }
}
