//! VFIO_DEVICE_GET_REGION_INFO read by ghvmm itself, with its capability chain walked within
//! bounds.
//!
//! The kernel (or a vendor's variant driver) fills a buffer with the region's info and a
//! chain of capabilities, each naming the next by its offset in the buffer. vfio-ioctls
//! follows that chain as raw pointers without checking the offsets against the buffer, so a
//! wrong `next` makes it read outside its allocation or loop for ever. Here the buffer is
//! asked for with the size the kernel says it needs (up to `MAX_INFO_BYTES`), and the walk
//! takes at most `MAX_CAPS` capabilities, each header and its payload inside the buffer, each
//! `next` 4-byte aligned and after the one before (so there are no loops). A chain that
//! breaks a rule is an error naming the rule.

use std::io;
use std::os::unix::io::AsRawFd;

use vfio_bindings::bindings::vfio::{VFIO_BASE, VFIO_TYPE};

vmm_sys_util::ioctl_io_nr!(VFIO_DEVICE_GET_REGION_INFO, VFIO_TYPE.into(), VFIO_BASE + 8);

/// struct vfio_region_info: argsz, flags, index, cap_offset (u32 each), size, offset (u64).
const INFO_BYTES: usize = 32;
/// struct vfio_info_cap_header: id, version (u16 each), next (u32).
const CAP_HEADER_BYTES: usize = 8;
/// The sparse-mmap capability: header, nr_areas, reserved, then areas of (offset, size).
const SPARSE_AREAS_AT: usize = CAP_HEADER_BYTES + 8;
const SPARSE_AREA_BYTES: usize = 16;
const CAP_SPARSE_MMAP: u16 = 1;
/// VFIO_REGION_INFO_FLAG_CAPS: `cap_offset` is meaningful.
const FLAG_CAPS: u32 = 1 << 3;
/// Far more than any real region's info (a sparse area is 16 bytes).
pub const MAX_INFO_BYTES: usize = 64 * 1024;
/// Far more capabilities than VFIO defines.
pub const MAX_CAPS: usize = 32;
/// The region info may grow between two calls (a driver changing its mind); give up after
/// this many.
const MAX_TRIES: usize = 4;

/// One region as the kernel describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionInfo {
    pub flags: u32,
    pub size: u64,
    /// Where the region starts in the device fd.
    pub offset: u64,
    /// The sparse-mmap capability's (offset, size) areas; None without the capability.
    pub sparse: Option<Vec<(u64, u64)>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegionInfoError {
    #[error("the region info is {0} bytes, shorter than its {INFO_BYTES}-byte header")]
    Short(usize),
    #[error("the kernel asks for a {0}-byte region info buffer (at most {MAX_INFO_BYTES})")]
    TooLarge(u64),
    #[error("the first capability at {0:#x} lies inside the fixed part")]
    InHeader(u32),
    #[error("capability at {0:#x} lies outside the {1}-byte region info")]
    Outside(u32, usize),
    #[error("capability at {0:#x} is not 4-byte aligned")]
    Misaligned(u32),
    #[error("capability at {at:#x} names {next:#x} as the next, not an offset after its end")]
    NotAscending { at: u32, next: u32 },
    #[error("more than {MAX_CAPS} capabilities")]
    TooMany,
    #[error("sparse-mmap capability at {at:#x}: {areas} areas do not fit in the region info")]
    AreasOutside { at: u32, areas: u32 },
    #[error("two sparse-mmap capabilities")]
    TwoSparse,
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    let b = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(b.try_into().ok()?))
}

fn u64_at(buf: &[u8], at: usize) -> Option<u64> {
    let b = buf.get(at..at.checked_add(8)?)?;
    Some(u64::from_le_bytes(b.try_into().ok()?))
}

/// Decodes a region info buffer as the kernel filled it (native little-endian on x86_64).
pub fn parse(buf: &[u8]) -> Result<RegionInfo, RegionInfoError> {
    if buf.len() < INFO_BYTES {
        return Err(RegionInfoError::Short(buf.len()));
    }
    let short = || RegionInfoError::Short(buf.len());
    let flags = u32_at(buf, 4).ok_or_else(short)?;
    let cap_offset = u32_at(buf, 12).ok_or_else(short)?;
    let mut info = RegionInfo {
        flags,
        size: u64_at(buf, 16).ok_or_else(short)?,
        offset: u64_at(buf, 24).ok_or_else(short)?,
        sparse: None,
    };
    if flags & FLAG_CAPS == 0 || cap_offset == 0 {
        return Ok(info);
    }
    // The first capability follows the fixed part; each next one follows the end of its
    // predecessor, so the walk only moves forward and cannot loop.
    if (cap_offset as usize) < INFO_BYTES {
        return Err(RegionInfoError::InHeader(cap_offset));
    }
    let mut at = cap_offset;
    for _ in 0..MAX_CAPS {
        if at % 4 != 0 {
            return Err(RegionInfoError::Misaligned(at));
        }
        let start = at as usize;
        let outside = || RegionInfoError::Outside(at, buf.len());
        let id = buf
            .get(start..start + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .ok_or_else(outside)?;
        let next = u32_at(buf, start + 4).ok_or_else(outside)?;
        let mut end = start + CAP_HEADER_BYTES;
        if id == CAP_SPARSE_MMAP {
            if info.sparse.is_some() {
                return Err(RegionInfoError::TwoSparse);
            }
            let areas = u32_at(buf, start + CAP_HEADER_BYTES).ok_or_else(outside)?;
            let bad = || RegionInfoError::AreasOutside { at, areas };
            end = (areas as usize)
                .checked_mul(SPARSE_AREA_BYTES)
                .and_then(|n| n.checked_add(start + SPARSE_AREAS_AT))
                .filter(|&end| end <= buf.len())
                .ok_or_else(bad)?;
            let list = buf[start + SPARSE_AREAS_AT..end]
                .chunks_exact(SPARSE_AREA_BYTES)
                .map(|a| (u64_at(a, 0).unwrap_or(0), u64_at(a, 8).unwrap_or(0)))
                .collect();
            info.sparse = Some(list);
        }
        if next == 0 {
            return Ok(info);
        }
        if (next as usize) < end {
            return Err(RegionInfoError::NotAscending { at, next });
        }
        at = next;
    }
    Err(RegionInfoError::TooMany)
}

/// Why `fetch` gave no region info: the kernel refused the ioctl, or what it answered is
/// malformed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("VFIO_DEVICE_GET_REGION_INFO: {0}")]
    Ioctl(io::Error),
    #[error(transparent)]
    Malformed(#[from] RegionInfoError),
    #[error("the region info kept growing between calls")]
    KeptGrowing,
}

/// Asks the kernel for region `index` of the VFIO device `fd` and decodes it.
pub fn read(fd: &impl AsRawFd, index: u32) -> io::Result<RegionInfo> {
    fetch(fd, index).map_err(|e| match e {
        ReadError::Ioctl(e) => e,
        e => io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
    })
}

/// `read`, telling a refused ioctl apart from a malformed answer.
pub fn fetch(fd: &impl AsRawFd, index: u32) -> Result<RegionInfo, ReadError> {
    let mut len = INFO_BYTES;
    for _ in 0..MAX_TRIES {
        // u64s: the buffer is aligned for the struct's u64 fields.
        let mut buf = vec![0u64; len.div_ceil(8)];
        let bytes = len as u32;
        // argsz, then index at byte 8.
        buf[0] = u64::from(bytes);
        buf[1] = u64::from(index);
        // SAFETY: the kernel reads argsz and writes at most argsz bytes into `buf`, which
        // holds at least that many; the fd is a VFIO device's (or the call fails).
        let r = unsafe {
            vmm_sys_util::ioctl::ioctl_with_mut_ptr(
                fd,
                VFIO_DEVICE_GET_REGION_INFO(),
                buf.as_mut_ptr(),
            )
        };
        if r < 0 {
            return Err(ReadError::Ioctl(io::Error::last_os_error()));
        }
        let raw: Vec<u8> = buf.iter().flat_map(|w| w.to_le_bytes()).collect();
        let raw = &raw[..len];
        let wanted = u64::from(u32_at(raw, 0).unwrap_or(0));
        if wanted as usize <= len {
            return Ok(parse(raw)?);
        }
        if wanted > MAX_INFO_BYTES as u64 {
            return Err(RegionInfoError::TooLarge(wanted).into());
        }
        len = wanted as usize;
    }
    Err(ReadError::KeptGrowing)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A region info: flags, size, offset, then capabilities as (at, id, next, payload).
    fn info(len: usize, caps: &[(u32, u16, u32, &[u8])]) -> Vec<u8> {
        let mut b = vec![0u8; len];
        b[0..4].copy_from_slice(&(len as u32).to_le_bytes());
        let flags = if caps.is_empty() { 0 } else { FLAG_CAPS | 7 };
        b[4..8].copy_from_slice(&flags.to_le_bytes());
        b[12..16].copy_from_slice(&caps.first().map_or(0, |c| c.0).to_le_bytes());
        b[16..24].copy_from_slice(&(1u64 << 30).to_le_bytes());
        b[24..32].copy_from_slice(&(5u64 << 40).to_le_bytes());
        for &(at, id, next, payload) in caps {
            let at = at as usize;
            b[at..at + 2].copy_from_slice(&id.to_le_bytes());
            b[at + 2..at + 4].copy_from_slice(&1u16.to_le_bytes());
            b[at + 4..at + 8].copy_from_slice(&next.to_le_bytes());
            b[at + 8..at + 8 + payload.len()].copy_from_slice(payload);
        }
        b
    }

    fn sparse(areas: &[(u64, u64)]) -> Vec<u8> {
        let mut p = (areas.len() as u32).to_le_bytes().to_vec();
        p.extend([0u8; 4]);
        for &(o, s) in areas {
            p.extend(o.to_le_bytes());
            p.extend(s.to_le_bytes());
        }
        p
    }

    #[test]
    fn a_well_formed_chain() {
        let s = sparse(&[(0, 0x1000), (0x3000, 0x2000)]);
        let b = info(128, &[(32, 3, 40, &[]), (40, CAP_SPARSE_MMAP, 0, &s)]);
        let i = parse(&b).unwrap();
        assert_eq!((i.size, i.offset), (1 << 30, 5 << 40));
        assert_eq!(i.sparse, Some(vec![(0, 0x1000), (0x3000, 0x2000)]));
        let plain = info(32, &[]);
        assert_eq!(parse(&plain).unwrap().sparse, None);
        // An empty sparse capability: nothing may be mapped.
        let b = info(64, &[(32, CAP_SPARSE_MMAP, 0, &sparse(&[]))]);
        assert_eq!(parse(&b).unwrap().sparse, Some(vec![]));
    }

    #[test]
    fn hostile_chains_are_refused() {
        use RegionInfoError as E;
        let s = sparse(&[(0, 0x1000)]);
        // A loop: a capability naming itself, two naming each other.
        let b = info(64, &[(32, 3, 32, &[])]);
        assert_eq!(parse(&b), Err(E::NotAscending { at: 32, next: 32 }));
        let b = info(64, &[(40, 3, 32, &[])]);
        assert_eq!(parse(&b), Err(E::NotAscending { at: 40, next: 32 }));
        // Into the fixed part, backwards, outside, past the end, misaligned.
        let mut b = info(64, &[]);
        b[4..8].copy_from_slice(&FLAG_CAPS.to_le_bytes());
        b[12..16].copy_from_slice(&8u32.to_le_bytes());
        assert_eq!(parse(&b), Err(E::InHeader(8)));
        // The next header inside the sparse areas before it.
        let b = info(96, &[(32, CAP_SPARSE_MMAP, 48, &s)]);
        assert_eq!(parse(&b), Err(E::NotAscending { at: 32, next: 48 }));
        let mut b = info(64, &[(32, 3, 0, &[])]);
        b[36..40].copy_from_slice(&0x1_0000u32.to_le_bytes());
        assert_eq!(parse(&b), Err(E::Outside(0x1_0000, 64)));
        let mut b = info(64, &[(32, 3, 0, &[])]);
        b[36..40].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse(&b).is_err());
        let mut b = info(64, &[(32, 3, 0, &[])]);
        b[36..40].copy_from_slice(&62u32.to_le_bytes());
        assert_eq!(parse(&b), Err(E::Misaligned(62)));
        let mut b = info(64, &[(32, 3, 0, &[])]);
        b[36..40].copy_from_slice(&60u32.to_le_bytes());
        assert_eq!(parse(&b), Err(E::Outside(60, 64)));
        // A huge area count, and one area too many for the buffer.
        let mut b = info(64, &[(32, CAP_SPARSE_MMAP, 0, &s)]);
        b[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            parse(&b),
            Err(E::AreasOutside {
                at: 32,
                areas: u32::MAX
            })
        );
        let mut b = info(64, &[(32, CAP_SPARSE_MMAP, 0, &s)]);
        b[40..44].copy_from_slice(&2u32.to_le_bytes());
        assert!(matches!(parse(&b), Err(E::AreasOutside { areas: 2, .. })));
        // Two sparse capabilities.
        let b = info(
            128,
            &[(32, CAP_SPARSE_MMAP, 64, &s), (64, CAP_SPARSE_MMAP, 0, &s)],
        );
        assert_eq!(parse(&b), Err(E::TwoSparse));
        // A long ascending chain stops at MAX_CAPS.
        let caps: Vec<(u32, u16, u32, &[u8])> = (0..40u32)
            .map(|i| (32 + 8 * i, 3, if i == 39 { 0 } else { 40 + 8 * i }, &[][..]))
            .collect();
        let b = info(32 + 8 * 40, &caps);
        assert_eq!(parse(&b), Err(E::TooMany));
        // Short buffers.
        assert_eq!(parse(&[0u8; 31]), Err(E::Short(31)));
        for cut in 32..64 {
            let b = info(64, &[(32, CAP_SPARSE_MMAP, 0, &s)]);
            assert!(parse(&b[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn the_ioctl_is_the_kernels() {
        // _IO(';', VFIO_BASE + 8) in include/uapi/linux/vfio.h.
        assert_eq!(VFIO_DEVICE_GET_REGION_INFO(), 0x3b6c);
        let not_vfio = std::fs::File::open("/dev/null").unwrap();
        assert!(read(&not_vfio, 0).is_err());
        assert!(matches!(fetch(&not_vfio, 0), Err(ReadError::Ioctl(_))));
    }
}
