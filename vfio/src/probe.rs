//! `precheck::Probe` on the host: the VFIO group and device ioctls ghvmm makes itself to get a
//! device fd before vfio-ioctls does.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::{AsRawFd, FromRawFd};
use std::path::PathBuf;

use vfio_bindings::bindings::vfio::{
    VFIO_TYPE1v2_IOMMU, VFIO_BASE, VFIO_GROUP_FLAGS_VIABLE, VFIO_TYPE,
};

use crate::precheck::Probe;
use crate::region_info::{self, ReadError, RegionInfo};

vmm_sys_util::ioctl_io_nr!(VFIO_SET_IOMMU, VFIO_TYPE.into(), VFIO_BASE + 2);
vmm_sys_util::ioctl_io_nr!(VFIO_GROUP_GET_STATUS, VFIO_TYPE.into(), VFIO_BASE + 3);
vmm_sys_util::ioctl_io_nr!(VFIO_GROUP_SET_CONTAINER, VFIO_TYPE.into(), VFIO_BASE + 4);
vmm_sys_util::ioctl_io_nr!(VFIO_GROUP_GET_DEVICE_FD, VFIO_TYPE.into(), VFIO_BASE + 6);
vmm_sys_util::ioctl_io_nr!(VFIO_DEVICE_GET_INFO, VFIO_TYPE.into(), VFIO_BASE + 7);

const CONTAINER: &str = "/dev/vfio/vfio";
/// struct vfio_group_status: argsz, flags.
const GROUP_STATUS_WORDS: usize = 2;
/// struct vfio_device_info up to num_irqs: argsz, flags, num_regions, num_irqs.
const DEVICE_INFO_WORDS: usize = 4;
const NUM_REGIONS_WORD: usize = 2;

fn group_path(group: u32) -> PathBuf {
    PathBuf::from(format!("/dev/vfio/{group}"))
}

/// A group fd, with the throw-away container it was put in (None for a group this process
/// already held). Fields drop in order: the group leaves the container, then it closes.
pub(crate) struct Group {
    group: File,
    _container: Option<File>,
}

pub(crate) struct HostProbe;

fn last_error(r: i32) -> io::Result<i32> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn open_rw(path: &std::path::Path) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).open(path)
}

/// Duplicates `fd` of this process (close-on-exec) if it is still `/dev/vfio/<group>`: the
/// number was read from /proc/self/fd and may have been closed and reused since.
fn dup_if_group(fd: i32, group: u32) -> io::Result<Option<File>> {
    // SAFETY: F_DUPFD_CLOEXEC only reads the fd table; a closed fd fails with EBADF.
    let r = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if r < 0 {
        return Ok(None);
    }
    // SAFETY: `r` is a new fd that nothing else owns.
    let dup = unsafe { File::from_raw_fd(r) };
    let want = std::fs::metadata(group_path(group))?.rdev();
    Ok((dup.metadata()?.rdev() == want).then_some(dup))
}

impl Probe for HostProbe {
    type Group = Group;
    type Device = File;

    fn open_group(&self, group: u32) -> io::Result<Group> {
        let container = open_rw(CONTAINER.as_ref())?;
        let fd = open_rw(&group_path(group))?;
        let mut status = [0u32; GROUP_STATUS_WORDS];
        status[0] = std::mem::size_of_val(&status) as u32;
        // SAFETY: the kernel writes at most argsz bytes into `status`, which holds that many.
        last_error(unsafe {
            vmm_sys_util::ioctl::ioctl_with_mut_ptr(
                &fd,
                VFIO_GROUP_GET_STATUS(),
                status.as_mut_ptr(),
            )
        })?;
        if status[1] & VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(io::Error::other(
                "the group is not viable (a device in it is bound to a host driver)",
            ));
        }
        let container_fd = container.as_raw_fd();
        // SAFETY: the kernel reads one int, the container's fd, which stays open.
        last_error(unsafe {
            vmm_sys_util::ioctl::ioctl_with_ref(&fd, VFIO_GROUP_SET_CONTAINER(), &container_fd)
        })?;
        // SAFETY: VFIO_SET_IOMMU takes the IOMMU type by value and touches no memory of ours.
        last_error(unsafe {
            vmm_sys_util::ioctl::ioctl_with_val(
                &container,
                VFIO_SET_IOMMU(),
                VFIO_TYPE1v2_IOMMU.into(),
            )
        })?;
        Ok(Group {
            group: fd,
            _container: Some(container),
        })
    }

    fn held_group(&self, group: u32) -> io::Result<Option<Group>> {
        let want = group_path(group);
        for entry in std::fs::read_dir("/proc/self/fd")? {
            let entry = entry?;
            if std::fs::read_link(entry.path()).ok().as_ref() != Some(&want) {
                continue;
            }
            let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            if let Some(dup) = dup_if_group(fd, group)? {
                return Ok(Some(Group {
                    group: dup,
                    _container: None,
                }));
            }
        }
        Ok(None)
    }

    fn device(&self, group: &Group, name: &str) -> io::Result<File> {
        let name = CString::new(name)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in the name"))?;
        // SAFETY: the kernel reads the NUL-terminated name, which outlives the call.
        let fd = last_error(unsafe {
            vmm_sys_util::ioctl::ioctl_with_ptr(
                &group.group,
                VFIO_GROUP_GET_DEVICE_FD(),
                name.as_ptr(),
            )
        })?;
        // SAFETY: the kernel returned a new device fd that nothing else owns.
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    fn num_regions(&self, device: &File) -> io::Result<u32> {
        let mut info = [0u32; DEVICE_INFO_WORDS];
        info[0] = std::mem::size_of_val(&info) as u32;
        // SAFETY: the kernel writes at most argsz bytes into `info`, which holds that many.
        last_error(unsafe {
            vmm_sys_util::ioctl::ioctl_with_mut_ptr(
                device,
                VFIO_DEVICE_GET_INFO(),
                info.as_mut_ptr(),
            )
        })?;
        Ok(info[NUM_REGIONS_WORD])
    }

    fn region(&self, device: &File, index: u32) -> Result<RegionInfo, ReadError> {
        region_info::fetch(device, index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ioctls_are_the_kernels() {
        // _IO(';', VFIO_BASE + n) in include/uapi/linux/vfio.h.
        assert_eq!(VFIO_SET_IOMMU(), 0x3b66);
        assert_eq!(VFIO_GROUP_GET_STATUS(), 0x3b67);
        assert_eq!(VFIO_GROUP_SET_CONTAINER(), 0x3b68);
        assert_eq!(VFIO_GROUP_GET_DEVICE_FD(), 0x3b6a);
        assert_eq!(VFIO_DEVICE_GET_INFO(), 0x3b6b);
    }

    #[test]
    fn a_group_this_process_does_not_hold_is_not_found() {
        // No test process holds a VFIO group; every fd it has is something else.
        assert!(HostProbe.held_group(u32::MAX).unwrap_or(None).is_none());
    }

    #[test]
    fn an_fd_that_is_not_the_group_is_not_taken() {
        let f = File::open("/dev/null").unwrap();
        // /dev/vfio/<huge> does not exist: the comparison fails before anything is taken.
        assert!(dup_if_group(f.as_raw_fd(), u32::MAX).is_err());
        assert!(dup_if_group(-1, 0).unwrap().is_none());
    }
}
