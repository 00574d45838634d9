//! Reading the host files behind L2's ivshmem devices without reading them whole: a GH-sized
//! device is a sparse 128 GiB file of which the guest wrote a few pages.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// `len` bytes at `off` (fewer at the end of the file).
pub fn read_at(path: &Path, off: u64, len: usize) -> io::Result<Vec<u8>> {
    let f = File::open(path)?;
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        match f.read_at(&mut buf[done..], off + done as u64)? {
            0 => break,
            n => done += n,
        }
    }
    buf.truncate(done);
    Ok(buf)
}

/// The first non-zero byte at or after `from`, looking only at the file's data extents
/// (SEEK_DATA/SEEK_HOLE), so a sparse file costs what was written to it.
pub fn first_nonzero_from(path: &Path, from: u64) -> io::Result<Option<u64>> {
    let f = File::open(path)?;
    let size = f.metadata()?.len();
    let mut pos = from;
    let mut buf = vec![0u8; 1 << 20];
    while pos < size {
        let Some(data) = seek(&f, pos, libc::SEEK_DATA)? else {
            return Ok(None);
        };
        let hole = seek(&f, data, libc::SEEK_HOLE)?.unwrap_or(size);
        let mut at = data;
        while at < hole {
            let n = ((hole - at) as usize).min(buf.len());
            let got = f.read_at(&mut buf[..n], at)?;
            if got == 0 {
                return Ok(None);
            }
            if let Some(i) = buf[..got].iter().position(|b| *b != 0) {
                return Ok(Some(at + i as u64));
            }
            at += got as u64;
        }
        pos = hole;
    }
    Ok(None)
}

/// lseek with `whence`; None when there is no more data (ENXIO).
fn seek(f: &File, off: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    let off =
        libc::off_t::try_from(off).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: lseek on a descriptor `f` keeps open; it touches no memory of ours.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off, whence) };
    if r >= 0 {
        return Ok(Some(r as u64));
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ENXIO) {
        Ok(None)
    } else {
        Err(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_data_in_a_sparse_file_and_nothing_in_holes() {
        let path = std::env::temp_dir().join(format!("rig-backing-{}", std::process::id()));
        let f = File::create(&path).unwrap();
        f.set_len(1 << 30).unwrap();
        assert_eq!(first_nonzero_from(&path, 0).unwrap(), None);
        f.write_at(b"xy", (1 << 29) + 7).unwrap();
        // Written zeros are data but not a finding.
        f.write_at(&[0u8; 4096], 4096).unwrap();
        assert_eq!(first_nonzero_from(&path, 0).unwrap(), Some((1 << 29) + 7));
        assert_eq!(
            first_nonzero_from(&path, (1 << 29) + 8).unwrap(),
            Some((1 << 29) + 8)
        );
        assert_eq!(first_nonzero_from(&path, (1 << 29) + 9).unwrap(), None);
        assert_eq!(read_at(&path, (1 << 29) + 7, 2).unwrap(), b"xy");
        assert_eq!(read_at(&path, (1 << 30) - 1, 4).unwrap(), [0]);
        let _ = std::fs::remove_file(&path);
    }
}
