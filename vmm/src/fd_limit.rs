//! File descriptors: ghvmm's soft limit raised to the hard limit at start, and a check that
//! an MSI/MSI-X enable leaves some spare.
//!
//! Each enabled vector holds an eventfd, and a guest picks how many vectors it enables (up
//! to 2048 per MSI-X function). With the usual soft limit of 1024 a guest enabling a large
//! table could take every descriptor ghvmm has, and the next API connection, hot add or
//! log file would fail in a way that says nothing about why. So the soft limit goes up to
//! what the host allows, and an enable that would leave fewer than `SPARE` descriptors is
//! refused with an error naming the figures (the guest's driver sees an interrupt that
//! never comes, as for any other refused enable).

use std::io;

/// Descriptors an MSI/MSI-X enable must leave free for everything else ghvmm does.
pub const SPARE: u64 = 128;

/// Where the kernel caps RLIMIT_NOFILE when the hard limit is "unlimited".
const NR_OPEN: &str = "/proc/sys/fs/nr_open";

#[derive(Debug, thiserror::Error)]
pub enum FdError {
    #[error("RLIMIT_NOFILE: {0}")]
    Limit(io::Error),
    #[error(
        "{free} file descriptors left: {vectors} vectors need {vectors} and ghvmm keeps \
         {SPARE} spare (raise the hard limit, e.g. LimitNOFILE= or ulimit -Hn)"
    )]
    TooFew { free: u64, vectors: u64 },
}

/// How many more descriptors the process may open. A seam for tests.
pub trait FdBudget: Send + Sync {
    fn free(&self) -> io::Result<u64>;
}

/// The process's own: its soft limit less the descriptors open now.
pub struct ProcessFds;

impl FdBudget for ProcessFds {
    fn free(&self) -> io::Result<u64> {
        let (soft, _) = get()?;
        let open = std::fs::read_dir("/proc/self/fd")?.count() as u64;
        Ok(soft.saturating_sub(open))
    }
}

/// Refuses to take `vectors` more descriptors when fewer than `SPARE` would remain. When the
/// figure cannot be read (no /proc), the enable goes ahead: the eventfd calls still fail
/// cleanly if descriptors run out.
pub fn check_room(budget: &dyn FdBudget, vectors: u64) -> Result<(), FdError> {
    let free = match budget.free() {
        Ok(f) => f,
        Err(e) => {
            log::debug!("cannot count open descriptors: {e}");
            return Ok(());
        }
    };
    if free < vectors.saturating_add(SPARE) {
        return Err(FdError::TooFew { free, vectors });
    }
    Ok(())
}

fn get() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `lim`, which is that large.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// Raises the soft limit to the hard one (to `nr_open` when the hard limit is unlimited);
/// returns the soft limit before and after.
pub fn raise() -> Result<(u64, u64), FdError> {
    let (soft, hard) = get().map_err(FdError::Limit)?;
    let target = if hard == libc::RLIM_INFINITY {
        std::fs::read_to_string(NR_OPEN)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(soft)
    } else {
        hard
    };
    if target <= soft {
        return Ok((soft, soft));
    }
    let lim = libc::rlimit {
        rlim_cur: target,
        rlim_max: hard,
    };
    // SAFETY: setrlimit only reads `lim`.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } < 0 {
        return Err(FdError::Limit(io::Error::last_os_error()));
    }
    Ok((soft, target))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(u64);

    impl FdBudget for Fixed {
        fn free(&self) -> io::Result<u64> {
            Ok(self.0)
        }
    }

    struct Unknown;

    impl FdBudget for Unknown {
        fn free(&self) -> io::Result<u64> {
            Err(io::ErrorKind::NotFound.into())
        }
    }

    #[test]
    fn an_enable_must_leave_spare_descriptors() {
        assert!(check_room(&Fixed(2048 + SPARE), 2048).is_ok());
        let e = check_room(&Fixed(2047 + SPARE), 2048).unwrap_err();
        assert_eq!(
            e.to_string(),
            "2175 file descriptors left: 2048 vectors need 2048 and ghvmm keeps 128 spare \
             (raise the hard limit, e.g. LimitNOFILE= or ulimit -Hn)"
        );
        assert!(check_room(&Fixed(0), 1).is_err());
        assert!(check_room(&Unknown, 2048).is_ok());
    }

    #[test]
    fn the_process_budget_is_below_the_soft_limit() {
        let (soft, hard) = get().unwrap();
        assert!(soft <= hard);
        let free = ProcessFds.free().unwrap();
        assert!(free < soft, "some descriptors are open");
    }
}
