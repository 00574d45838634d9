//! Every region's info checked by ghvmm before vfio-ioctls reads it.
//!
//! vfio-ioctls' `VfioDevice::new` reads each region's info and walks its capability chain as
//! raw pointers, trusting every `next` offset: a chain that points backwards loops for ever
//! (growing a list until the OOM killer comes), one that points outside the buffer reads
//! outside it. That happens before `VfioDevice::new` returns, so `region_info`'s bounded
//! reader has to run first, on a device fd of ghvmm's own: every region's info is read and
//! its chain walked within bounds, and a malformed chain refuses the device before
//! vfio-ioctls sees it.
//!
//! Where that device fd comes from (`Probe`): a group is opened only once, so
//! - when no device of the group is open yet, the group is opened in a throw-away container
//!   (type1v2, as vfio-ioctls does; the group must be viable), the device fd taken from it,
//!   and all of it closed again before vfio-ioctls opens the group for real;
//! - when the group is open already (EBUSY), and this process holds it (another device of the
//!   same group is attached: vfio-ioctls keeps its group fd), the device fd is taken through a
//!   duplicate of that group fd;
//! - when another process holds it, the device is refused here, as vfio-ioctls would refuse it.
//!
//! The check and vfio-ioctls' read are two calls: a driver that answers the second call
//! differently from the first is not caught. This guards against a broken driver, not a
//! malicious one that changes its answer on purpose.

use std::io;

use crate::region_info::{ReadError, RegionInfo};

/// Far more regions than vfio-pci has (9 fixed ones and a few device-specific ones); a
/// larger count would make this check (and vfio-ioctls after it) spin through ioctls.
pub const MAX_REGIONS: u32 = 256;

/// The ioctls the check needs, behind a seam so that its decisions are tested without a
/// device.
pub(crate) trait Probe {
    type Group;
    type Device;
    /// Opens IOMMU group `group` in a container of its own; EBUSY when it is open already.
    fn open_group(&self, group: u32) -> io::Result<Self::Group>;
    /// The group as this process holds it already (a device of it is attached), if it does.
    fn held_group(&self, group: u32) -> io::Result<Option<Self::Group>>;
    /// VFIO_GROUP_GET_DEVICE_FD for the device called `name` (its PCI address).
    fn device(&self, group: &Self::Group, name: &str) -> io::Result<Self::Device>;
    /// VFIO_DEVICE_GET_INFO's region count.
    fn num_regions(&self, device: &Self::Device) -> io::Result<u32>;
    /// Region `index`'s info, its capability chain walked within bounds.
    fn region(&self, device: &Self::Device, index: u32) -> Result<RegionInfo, ReadError>;
}

/// Why a device was refused before vfio-ioctls opened it.
#[derive(Debug, thiserror::Error)]
pub enum PrecheckError {
    #[error("cannot open IOMMU group {group} to check the device's region info: {error}")]
    Group { group: u32, error: io::Error },
    #[error("cannot get the device from IOMMU group {group} to check its region info: {error}")]
    Device { group: u32, error: io::Error },
    #[error("VFIO_DEVICE_GET_INFO: {0}")]
    Info(io::Error),
    #[error("the device reports {0} regions (at most {MAX_REGIONS})")]
    TooManyRegions(u32),
    #[error("region {index}'s capability chain is malformed: {error}")]
    Malformed { index: u32, error: ReadError },
}

/// Checks every region of device `name` in IOMMU group `group`; returns how many there are.
/// A region whose info ioctl fails is passed over, as vfio-ioctls passes it over (the VGA
/// region of a device without one answers EINVAL); only a malformed answer refuses.
pub(crate) fn check_regions<P: Probe>(
    probe: &P,
    group: u32,
    name: &str,
) -> Result<u32, PrecheckError> {
    let g = match probe.open_group(group) {
        Ok(g) => g,
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => probe
            .held_group(group)
            .map_err(|error| PrecheckError::Group { group, error })?
            .ok_or(PrecheckError::Group { group, error: e })?,
        Err(error) => return Err(PrecheckError::Group { group, error }),
    };
    let dev = probe
        .device(&g, name)
        .map_err(|error| PrecheckError::Device { group, error })?;
    let n = probe.num_regions(&dev).map_err(PrecheckError::Info)?;
    if n > MAX_REGIONS {
        return Err(PrecheckError::TooManyRegions(n));
    }
    for index in 0..n {
        match probe.region(&dev, index) {
            Ok(_) | Err(ReadError::Ioctl(_)) => {}
            Err(error) => return Err(PrecheckError::Malformed { index, error }),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region_info::RegionInfoError;
    use std::cell::RefCell;

    #[derive(Debug, PartialEq, Eq, Clone, Copy)]
    enum Got {
        Fresh,
        Held,
    }

    /// A device as the fake kernel describes it.
    struct Fake {
        open: Option<i32>,
        held: bool,
        num_regions: u32,
        /// Region index -> what its info ioctl gives (default: a plain region).
        bad: Vec<(u32, fn() -> ReadError)>,
        asked: RefCell<Vec<String>>,
    }

    impl Fake {
        fn new(num_regions: u32) -> Self {
            Fake {
                open: None,
                held: false,
                num_regions,
                bad: Vec::new(),
                asked: RefCell::new(Vec::new()),
            }
        }
        fn log(&self, what: String) {
            self.asked.borrow_mut().push(what);
        }
    }

    impl Probe for Fake {
        type Group = Got;
        type Device = Got;
        fn open_group(&self, group: u32) -> io::Result<Got> {
            self.log(format!("open {group}"));
            match self.open {
                None => Ok(Got::Fresh),
                Some(errno) => Err(io::Error::from_raw_os_error(errno)),
            }
        }
        fn held_group(&self, group: u32) -> io::Result<Option<Got>> {
            self.log(format!("held {group}"));
            Ok(self.held.then_some(Got::Held))
        }
        fn device(&self, group: &Got, name: &str) -> io::Result<Got> {
            self.log(format!("device {name} via {group:?}"));
            Ok(*group)
        }
        fn num_regions(&self, _: &Got) -> io::Result<u32> {
            Ok(self.num_regions)
        }
        fn region(&self, _: &Got, index: u32) -> Result<RegionInfo, ReadError> {
            self.log(format!("region {index}"));
            match self.bad.iter().find(|b| b.0 == index) {
                Some((_, e)) => Err(e()),
                None => Ok(RegionInfo {
                    flags: 0,
                    size: 0x1000,
                    offset: u64::from(index) << 40,
                    sparse: None,
                }),
            }
        }
    }

    const BDF: &str = "0000:00:04.0";

    fn regions_read(f: &Fake) -> usize {
        f.asked
            .borrow()
            .iter()
            .filter(|a| a.starts_with("region"))
            .count()
    }

    #[test]
    fn every_region_of_a_fresh_group_is_read() {
        let f = Fake::new(9);
        assert_eq!(check_regions(&f, 7, BDF).unwrap(), 9);
        let asked = f.asked.borrow();
        assert_eq!(asked[..2], ["open 7", "device 0000:00:04.0 via Fresh"]);
        assert_eq!(regions_read(&f), 9);
    }

    #[test]
    fn a_malformed_chain_refuses_the_device_naming_the_region_and_the_rule() {
        let mut f = Fake::new(9);
        f.bad.push((2, || {
            RegionInfoError::NotAscending { at: 32, next: 32 }.into()
        }));
        let e = check_regions(&f, 7, BDF).unwrap_err();
        assert_eq!(
            e.to_string(),
            "region 2's capability chain is malformed: capability at 0x20 names 0x20 as the \
             next, not an offset after its end"
        );
        assert_eq!(regions_read(&f), 3, "nothing read after the bad region");
        let mut f = Fake::new(9);
        f.bad.push((0, || ReadError::KeptGrowing));
        assert!(matches!(
            check_regions(&f, 7, BDF),
            Err(PrecheckError::Malformed { index: 0, .. })
        ));
    }

    #[test]
    fn a_region_the_kernel_refuses_is_passed_over_as_vfio_ioctls_does() {
        let mut f = Fake::new(9);
        f.bad.push((8, || {
            ReadError::Ioctl(io::Error::from_raw_os_error(libc::EINVAL))
        }));
        assert_eq!(check_regions(&f, 7, BDF).unwrap(), 9);
    }

    #[test]
    fn a_group_this_process_holds_is_checked_through_its_fd() {
        let mut f = Fake::new(9);
        f.open = Some(libc::EBUSY);
        f.held = true;
        assert_eq!(check_regions(&f, 7, BDF).unwrap(), 9);
        assert_eq!(f.asked.borrow()[2], "device 0000:00:04.0 via Held");
    }

    #[test]
    fn a_group_held_elsewhere_or_unopenable_is_refused() {
        let mut f = Fake::new(9);
        f.open = Some(libc::EBUSY);
        let e = check_regions(&f, 7, BDF).unwrap_err();
        assert!(
            matches!(&e, PrecheckError::Group { group: 7, error } if error.raw_os_error() == Some(libc::EBUSY)),
            "{e:?}"
        );
        let mut f = Fake::new(9);
        f.open = Some(libc::ENOENT);
        f.held = true;
        assert!(matches!(
            check_regions(&f, 7, BDF),
            Err(PrecheckError::Group { .. })
        ));
        assert!(
            !f.asked.borrow().iter().any(|a| a.starts_with("held")),
            "only EBUSY means the group may be ours"
        );
    }

    #[test]
    fn a_huge_region_count_is_refused() {
        let f = Fake::new(MAX_REGIONS + 1);
        assert!(matches!(
            check_regions(&f, 7, BDF),
            Err(PrecheckError::TooManyRegions(257))
        ));
        assert_eq!(regions_read(&f), 0);
        assert_eq!(check_regions(&Fake::new(MAX_REGIONS), 7, BDF).unwrap(), 256);
    }
}
