//! A VFIO device as ghvmm holds it: vfio-ioctls' `VfioDevice`, opened so that closing it never
//! depends on sysfs.
//!
//! Why: vfio-ioctls 0.10's `VfioDevice::drop` closes the device fd and then reads the device's
//! IOMMU group again from `<sysfs path>/iommu_group`, with `unwrap()`. The host can take a
//! device away while ghvmm holds it (driver unbind, `remove`, SR-IOV VFs disabled, surprise
//! removal): the kernel waits until ghvmm closes the fd and, when the device itself goes
//! (all but a plain unbind), deletes its sysfs directory as soon as the fd is closed. So the
//! re-read races with the kernel and, when it loses, panics in whatever thread dropped the
//! last reference (an API thread, the thread giving the device back, or a vCPU thread that
//! still held a BAR trap). A path given through a symlink (/sys/bus/pci/devices/BDF) is gone
//! then too.
//!
//! What is done about it, in order of preference:
//! 1. **Nothing read from sysfs at close.** The group id is read once, at open, from the real
//!    sysfs path; vfio-ioctls is then given a stand-in path that ghvmm owns
//!    (`<dir>/ghvmm-<pid>-vfio/<n>/<BDF>`, `GroupLink`; `<dir>` is `$XDG_RUNTIME_DIR`, /run
//!    for root, or the temporary directory, the first that works), holding only what vfio-ioctls
//!    reads there: an `iommu_group` link whose last component is the group id (the device
//!    name it passes to VFIO_GROUP_GET_DEVICE_FD is the path's last component, the BDF, as
//!    with the real path). The stand-in exists only while vfio-ioctls opens the device and
//!    while it closes it, so nothing stays behind on disk (a SIGKILL at exactly that moment
//!    leaves an empty directory in the runtime dir). This relies on what vfio-ioctls 0.10.0
//!    reads from the path (`get_group_id_from_path` and `get_device`), which is why
//!    vfio/Cargo.toml pins that exact version.
//! 2. **Contained if it happens anyway.** If no stand-in can be made (none of those
//!    directories is writable), the real sysfs path is used as before, and the drop runs under
//!    `catch_unwind`: a panic there is logged as an error instead of ending the thread. Its
//!    cost is that the device's group stays attached to the container;
//!    `Containers` replaces the container once no device is left in it, which releases it.
//!
//! Forking vfio-ioctls or re-implementing its container/group code was the other option; the
//! stand-in keeps the dependency as it is for the price of a few lines.

use std::io;
use std::mem::ManuallyDrop;
use std::ops::Deref;
use std::os::unix::io::{AsRawFd, RawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use vfio_bindings::bindings::vfio::{VFIO_BASE, VFIO_TYPE};
use vfio_ioctls::{VfioContainer, VfioDevice};

use crate::precheck::{self, PrecheckError};
use crate::private_dir::private_dir;
use crate::probe::HostProbe;
use crate::region_info::{self, RegionInfo};
use crate::Error;

// vfio-ioctls' own reset ignores the ioctl's result; a caller answering for the reset (a
// vfio-user server) needs to know whether it happened.
vmm_sys_util::ioctl_io_nr!(VFIO_DEVICE_RESET, VFIO_TYPE.into(), VFIO_BASE + 11);

/// Serialises making and removing stand-ins: two of them share the per-process directory,
/// and a device can be closed on any thread.
static STAND_INS: Mutex<()> = Mutex::new(());

/// Stand-in numbers: a device opened again gets a fresh directory even if an earlier copy of
/// it has not been closed yet.
static NEXT_STAND_IN: AtomicU64 = AtomicU64::new(0);

/// The group id of the device at `sysfs` (the last component of its `iommu_group` link).
pub fn iommu_group(sysfs: &Path) -> io::Result<u32> {
    let link = std::fs::read_link(sysfs.join("iommu_group"))?;
    link.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("iommu_group points to {}", link.display()),
            )
        })
}

/// Where the stand-ins may go, best first: `$XDG_RUNTIME_DIR`, /run for root, the temporary
/// directory; one directory per process in the first that takes it.
fn bases() -> Vec<PathBuf> {
    let mut roots = Vec::new();
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        if d.is_absolute() {
            roots.push(d);
        }
    }
    // SAFETY: geteuid has no failure mode and touches no memory.
    if unsafe { libc::geteuid() } == 0 {
        roots.push("/run".into());
    }
    roots.push(std::env::temp_dir());
    let name = format!("ghvmm-{}-vfio", std::process::id());
    roots.into_iter().map(|r| r.join(&name)).collect()
}

/// A stand-in for a device's sysfs directory: `<base>/<n>/<name>/iommu_group ->
/// /sys/kernel/iommu_groups/<group>`.
#[derive(Debug)]
pub struct GroupLink {
    base: PathBuf,
    numbered: PathBuf,
    path: PathBuf,
    group: u32,
}

impl GroupLink {
    /// Reads the group of the device at `sysfs` (which must exist now) and names its stand-in
    /// under `base`. Nothing is created yet.
    pub fn new(sysfs: &Path, base: &Path) -> io::Result<Self> {
        let group = iommu_group(sysfs)?;
        let name = sysfs
            .file_name()
            .filter(|n| n.to_str().is_some())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "the path does not end in the device name",
                )
            })?;
        let numbered = base.join(NEXT_STAND_IN.fetch_add(1, Ordering::Relaxed).to_string());
        Ok(GroupLink {
            base: base.to_path_buf(),
            path: numbered.join(name),
            numbered,
            group,
        })
    }

    /// The path vfio-ioctls is given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    #[cfg(test)]
    pub fn group(&self) -> u32 {
        self.group
    }

    /// Makes the stand-in (again). Idempotent. On failure, whatever it made is removed (and
    /// nothing under a base directory that is not ours is touched).
    pub fn create(&self) -> io::Result<()> {
        private_dir(&self.base)?;
        let made = private_dir(&self.numbered)
            .and_then(|()| private_dir(&self.path))
            .and_then(|()| {
                let link = self.path.join("iommu_group");
                let _ = std::fs::remove_file(&link);
                std::os::unix::fs::symlink(format!("/sys/kernel/iommu_groups/{}", self.group), link)
            });
        if made.is_err() {
            self.remove();
        }
        made
    }

    /// Removes the stand-in, and the per-process directory when it is empty. Best effort;
    /// only for a stand-in that `create` made.
    pub fn remove(&self) {
        let _ = std::fs::remove_file(self.path.join("iommu_group"));
        let _ = std::fs::remove_dir(&self.path);
        let _ = std::fs::remove_dir(&self.numbered);
        let _ = std::fs::remove_dir(&self.base);
    }
}

/// Drops `value`, turning a panic in its drop into a logged error. Returns whether the drop
/// completed.
pub fn drop_contained<T>(value: T, what: &dyn std::fmt::Display) -> bool {
    match catch_unwind(AssertUnwindSafe(move || drop(value))) {
        Ok(()) => true,
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            log::error!("{what}: closing the VFIO device failed inside vfio-ioctls: {why}");
            false
        }
    }
}

/// Checks every region's info with ghvmm's bounded reader (`precheck`) before vfio-ioctls
/// walks it unbounded in `VfioDevice::new`.
fn check_before_vfio_ioctls(sysfs: &Path, group: u32) -> Result<(), Error> {
    let refused = |error| Error::RegionCheck {
        path: sysfs.into(),
        error,
    };
    let name = sysfs.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
        refused(PrecheckError::Device {
            group,
            error: io::Error::new(
                io::ErrorKind::InvalidInput,
                "the path does not end in the device name",
            ),
        })
    })?;
    let n = precheck::check_regions(&HostProbe, group, name).map_err(refused)?;
    log::debug!("{}: {n} regions' info checked", sysfs.display());
    Ok(())
}

/// A VFIO device opened by `Containers::open`. Derefs to vfio-ioctls' `VfioDevice`.
pub struct Device {
    inner: ManuallyDrop<VfioDevice>,
    /// The stand-in the device was opened through; None when the real path was used.
    link: Option<GroupLink>,
    /// The sysfs path, for log lines.
    path: PathBuf,
}

impl Device {
    /// Region `index`'s info, asked of the kernel now and its capability chain walked
    /// within bounds (`region_info`).
    pub fn region_info(&self, index: u32) -> io::Result<RegionInfo> {
        region_info::read(self, index)
    }

    /// The (offset, size) areas of region `index`'s sparse-mmap capability; None when the
    /// region has no such capability. Region info whose capability chain is malformed
    /// leaves no area to map (the region is still reached through read/write).
    pub fn sparse_areas(&self, index: u32) -> Option<Vec<(u64, u64)>> {
        match self.region_info(index) {
            Ok(info) => info.sparse,
            Err(e) => {
                log::warn!(
                    "{}: region {index}: {e}; none of it is mapped",
                    self.path.display()
                );
                Some(Vec::new())
            }
        }
    }

    /// Opens the device at `sysfs` in `container` through a stand-in path (see the module
    /// comment), or through `sysfs` itself if no stand-in can be made; first every region's
    /// info is checked (`precheck`), because vfio-ioctls walks it unbounded while opening.
    pub(crate) fn open(sysfs: &Path, container: Arc<VfioContainer>) -> Result<Self, Error> {
        let no_group = |error| Error::NoIommuGroup {
            path: sysfs.into(),
            error,
        };
        let group = iommu_group(sysfs).map_err(no_group)?;
        log::debug!("{}: IOMMU group {group}", sysfs.display());
        check_before_vfio_ioctls(sysfs, group)?;
        let _staging = STAND_INS.lock();
        let mut link = None;
        let mut refused = Vec::new();
        for base in bases() {
            let l = GroupLink::new(sysfs, &base).map_err(no_group)?;
            match l.create() {
                Ok(()) => {
                    link = Some(l);
                    break;
                }
                Err(e) => refused.push(format!("{}: {e}", base.display())),
            }
        }
        if link.is_none() {
            log::warn!(
                "{}: cannot make a stand-in for its sysfs path ({}); if the host removes the \
                 device, closing it may fail (contained, see the error then)",
                sysfs.display(),
                refused.join("; ")
            );
        }
        let opened = VfioDevice::new(link.as_ref().map_or(sysfs, |l| l.path()), container, false);
        if let Some(l) = &link {
            l.remove();
        }
        let inner = opened.map_err(|error| Error::Device {
            path: sysfs.into(),
            error,
        })?;
        Ok(Device {
            inner: ManuallyDrop::new(inner),
            link,
            path: sysfs.into(),
        })
    }

    /// Resets the function (VFIO_DEVICE_RESET: FLR or whatever reset the host has for it).
    /// Takes the place of vfio-ioctls' `VfioDevice::reset`, which drops the result; a
    /// device that cannot be reset answers EINVAL.
    pub fn reset(&self) -> Result<(), Error> {
        // SAFETY: VFIO_DEVICE_RESET takes no argument, and the fd is this device's.
        let r = unsafe { vmm_sys_util::ioctl::ioctl(self, VFIO_DEVICE_RESET()) };
        if r < 0 {
            return Err(Error::Reset {
                path: self.path.clone(),
                error: io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

impl Deref for Device {
    type Target = VfioDevice;
    fn deref(&self) -> &VfioDevice {
        &self.inner
    }
}

impl AsRawFd for Device {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.as_raw_fd()
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        let _staging = STAND_INS.lock();
        if let Some(l) = &self.link {
            if let Err(e) = l.create() {
                log::warn!(
                    "{}: cannot make its stand-in sysfs path again: {e}",
                    self.path.display()
                );
            }
        }
        // SAFETY: `inner` is taken once, here, and never used again.
        let inner = unsafe { ManuallyDrop::take(&mut self.inner) };
        drop_contained(inner, &self.path.display());
        if let Some(l) = &self.link {
            l.remove();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use vmm_sys_util::tempdir::TempDir;

    /// A fake sysfs device directory `<tmp>/sys/<bdf>` whose iommu_group names `group`.
    fn fake_device(tmp: &Path, bdf: &str, group: &str) -> PathBuf {
        let dev = tmp.join("sys").join(bdf);
        std::fs::create_dir_all(&dev).unwrap();
        std::os::unix::fs::symlink(
            format!("../../../kernel/iommu_groups/{group}"),
            dev.join("iommu_group"),
        )
        .unwrap();
        dev
    }

    #[test]
    fn the_stand_in_holds_what_vfio_ioctls_reads_and_outlives_sysfs() {
        let tmp = TempDir::new().unwrap();
        let dev = fake_device(tmp.as_path(), "0000:01:00.0", "42");
        let base = tmp.as_path().join("run");
        let link = GroupLink::new(&dev, &base).unwrap();
        assert_eq!(link.group(), 42);
        assert_eq!(link.path().file_name().unwrap(), "0000:01:00.0");
        assert!(!base.exists(), "nothing made before create()");
        link.create().unwrap();
        assert_eq!(iommu_group(link.path()).unwrap(), 42);
        let mode = std::fs::metadata(&base).unwrap().mode();
        assert_eq!(mode & 0o777, 0o700);
        link.remove();
        assert!(!base.exists(), "all of it removed");
        // The device's sysfs directory vanishes (device removed on the host): the stand-in
        // can still be made, from what was read at open.
        std::fs::remove_dir_all(tmp.as_path().join("sys")).unwrap();
        link.create().unwrap();
        link.create().unwrap();
        assert_eq!(iommu_group(link.path()).unwrap(), 42);
        link.remove();
        assert!(!base.exists());
    }

    #[test]
    fn two_stand_ins_of_one_device_do_not_collide() {
        let tmp = TempDir::new().unwrap();
        let dev = fake_device(tmp.as_path(), "0000:02:00.0", "7");
        let base = tmp.as_path().join("run");
        let a = GroupLink::new(&dev, &base).unwrap();
        let b = GroupLink::new(&dev, &base).unwrap();
        assert_ne!(a.path(), b.path());
        a.create().unwrap();
        b.create().unwrap();
        a.remove();
        assert!(
            std::fs::symlink_metadata(b.path().join("iommu_group")).is_ok(),
            "b is untouched"
        );
        b.remove();
        assert!(!base.exists());
    }

    #[test]
    fn a_device_without_a_group_is_refused() {
        let tmp = TempDir::new().unwrap();
        let dev = tmp.as_path().join("0000:03:00.0");
        std::fs::create_dir(&dev).unwrap();
        assert!(GroupLink::new(&dev, tmp.as_path()).is_err());
        std::os::unix::fs::symlink("../iommu_groups/x", dev.join("iommu_group")).unwrap();
        let e = GroupLink::new(&dev, tmp.as_path()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn a_base_directory_that_is_not_private_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = TempDir::new().unwrap();
        let dev = fake_device(tmp.as_path(), "0000:04:00.0", "3");
        let open = tmp.as_path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let link = GroupLink::new(&dev, &open).unwrap();
        assert_eq!(
            link.create().unwrap_err().kind(),
            io::ErrorKind::PermissionDenied
        );
        let elsewhere = tmp.as_path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        let symlinked = tmp.as_path().join("symlinked");
        std::os::unix::fs::symlink(&elsewhere, &symlinked).unwrap();
        let link = GroupLink::new(&dev, &symlinked).unwrap();
        assert!(link.create().is_err());
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    }

    #[test]
    fn the_reset_ioctl_is_the_kernels() {
        // _IO(';', VFIO_BASE + 11) in include/uapi/linux/vfio.h.
        assert_eq!(VFIO_DEVICE_RESET(), 0x3b6f);
    }

    #[test]
    fn a_panicking_drop_is_contained() {
        struct Panics;
        impl Drop for Panics {
            fn drop(&mut self) {
                panic!("InvalidPath");
            }
        }
        let counted = Arc::new(());
        assert!(drop_contained(counted.clone(), &"fine"));
        assert_eq!(Arc::strong_count(&counted), 1);
        assert!(!drop_contained(Panics, &"0000:01:00.0"));
    }
}
