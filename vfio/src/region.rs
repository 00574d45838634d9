//! Access to a VFIO device's regions: pread/pwrite on the device fd (vfio-ioctls'
//! `region_read`/`region_write` only log errors, and the callers here need them), and host
//! mappings of the fd (vfio-ioctls has no mmap helper).

use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::Arc;

use crate::device::Device;

/// pread/pwrite on the device fd at `base` (a region's offset in the fd).
pub struct FdRegion {
    pub device: Arc<Device>,
    pub base: u64,
}

impl FdRegion {
    pub fn pread(&self, offset: u64, data: &mut [u8]) -> std::io::Result<()> {
        let at = self
            .base
            .checked_add(offset)
            .ok_or(std::io::ErrorKind::InvalidInput)?;
        // SAFETY: reads at most data.len() bytes into a buffer we own.
        let n = unsafe {
            libc::pread(
                self.device.as_raw_fd(),
                data.as_mut_ptr().cast(),
                data.len(),
                at as libc::off_t,
            )
        };
        match n {
            n if n as usize == data.len() => Ok(()),
            n if n < 0 => Err(std::io::Error::last_os_error()),
            _ => Err(std::io::ErrorKind::UnexpectedEof.into()),
        }
    }

    pub fn pwrite(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let at = self
            .base
            .checked_add(offset)
            .ok_or(std::io::ErrorKind::InvalidInput)?;
        // SAFETY: writes at most data.len() bytes from a buffer we own.
        let n = unsafe {
            libc::pwrite(
                self.device.as_raw_fd(),
                data.as_ptr().cast(),
                data.len(),
                at as libc::off_t,
            )
        };
        match n {
            n if n as usize == data.len() => Ok(()),
            n if n < 0 => Err(std::io::Error::last_os_error()),
            _ => Err(std::io::ErrorKind::WriteZero.into()),
        }
    }
}

/// A shared mapping of part of the device fd, unmapped when dropped. Whoever registered it
/// as a KVM memory slot must delete that slot first.
pub struct HostMapping {
    addr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is plain memory addresses; nothing in it is tied to a thread.
unsafe impl Send for HostMapping {}
// SAFETY: a shared reference only reads the address and length (`addr`); the memory behind it
// is never touched through this type.
unsafe impl Sync for HostMapping {}

impl HostMapping {
    /// Maps `size` bytes of `fd` at `offset` at a host address congruent to `phase` modulo
    /// `align` (a power of two, `phase < align`): with the guest address of the same bytes
    /// congruent too, the host kernel and KVM can back the mapping with huge pages however
    /// odd its length (`pci::vfio::Piece::host_placement`).
    pub fn new(fd: RawFd, offset: u64, size: u64, align: u64, phase: u64) -> std::io::Result<Self> {
        let len = usize::try_from(size).map_err(|_| std::io::ErrorKind::InvalidInput)?;
        let align = usize::try_from(align)
            .ok()
            .filter(|a| a.is_power_of_two())
            .ok_or(std::io::ErrorKind::InvalidInput)?;
        let phase = usize::try_from(phase)
            .ok()
            .filter(|p| *p < align)
            .ok_or(std::io::ErrorKind::InvalidInput)?;
        // Any `align` consecutive addresses hold one with the wanted phase.
        let span = len
            .checked_add(align)
            .ok_or(std::io::ErrorKind::InvalidInput)?;
        let off = libc::off_t::try_from(offset).map_err(|_| std::io::ErrorKind::InvalidInput)?;
        // SAFETY: reserve address space (no access) that the device mapping will replace.
        let reserve = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                span,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if reserve == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let start = reserve as usize;
        // The first address at or after `start` congruent to `phase`: less than `align`
        // past it, so `[placed, placed + len)` stays inside the reservation.
        let placed = start + (phase.wrapping_sub(start) & (align - 1));
        // SAFETY: [placed, placed + len) lies inside the reservation we own; MAP_FIXED
        // replaces it.
        let addr = unsafe {
            libc::mmap(
                placed as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd,
                off,
            )
        };
        if addr == libc::MAP_FAILED {
            let e = std::io::Error::last_os_error();
            // SAFETY: releasing our own reservation.
            unsafe { libc::munmap(reserve, span) };
            return Err(e);
        }
        // SAFETY: trimming the unused parts of our own reservation around the mapping.
        unsafe {
            if placed > start {
                libc::munmap(reserve, placed - start);
            }
            let end = placed + len;
            if start + span > end {
                libc::munmap(end as *mut libc::c_void, start + span - end);
            }
        }
        Ok(HostMapping { addr, len })
    }

    pub fn addr(&self) -> u64 {
        self.addr as u64
    }
}

impl Drop for HostMapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping this value owns.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use vmm_sys_util::tempfile::TempFile;

    /// A multiple of every host page size (4 KiB to 64 KiB), as mmap offsets must be.
    const CHUNK: u64 = 0x1_0000;

    #[test]
    fn a_mapping_starts_at_the_phase_asked_for_and_shows_the_fd_at_its_offset() {
        let file = TempFile::new().unwrap().into_file();
        file.set_len(3 * CHUNK).unwrap();
        file.write_all_at(b"ghvmm", CHUNK).unwrap();
        for align in [CHUNK, 2 << 20, 1 << 30] {
            // Phase 0, a phase that is no multiple of a smaller huge page, and the last one.
            for phase in [0, 3 * CHUNK, align - CHUNK] {
                let phase = phase % align;
                let m = HostMapping::new(file.as_raw_fd(), CHUNK, CHUNK, align, phase).unwrap();
                assert_eq!(m.addr() % align, phase, "{align:#x}/{phase:#x}");
                // SAFETY: `m` maps CHUNK readable bytes at its address for as long as it
                // lives, and nothing writes them meanwhile.
                let seen = unsafe { std::slice::from_raw_parts(m.addr() as *const u8, 5) };
                assert_eq!(seen, b"ghvmm");
            }
        }
    }

    #[test]
    fn a_placement_that_is_not_a_power_of_two_with_a_phase_below_it_is_refused() {
        let file = TempFile::new().unwrap().into_file();
        file.set_len(CHUNK).unwrap();
        for (align, phase) in [(0, 0), (3 * CHUNK, 0), (CHUNK, CHUNK), (CHUNK, u64::MAX)] {
            let e = HostMapping::new(file.as_raw_fd(), 0, CHUNK, align, phase)
                .err()
                .unwrap();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        }
        // Nothing fits the address space with room to place it.
        for size in [u64::MAX, u64::MAX - CHUNK + 1] {
            let e = HostMapping::new(file.as_raw_fd(), 0, size, CHUNK, 0)
                .err()
                .unwrap();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        }
        let e = HostMapping::new(file.as_raw_fd(), u64::MAX, CHUNK, CHUNK, 0)
            .err()
            .unwrap();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    }
}
