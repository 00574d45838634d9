//! How a zone of guest RAM is backed on the host: the file it lives in (the user's `file=`,
//! or a memfd when shared or of huge pages), the flags of each mapping, and what is done to a
//! mapping once made (transparent huge pages, KSM, the host NUMA node, prefaulting).

use std::fs::{File, OpenOptions};
use std::os::fd::FromRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use vm_memory::{FileOffset, MmapRegion};

use crate::config::{Backing, HugePages};

use super::MemoryError;

/// Where the kernel lists free huge pages of each size.
const HUGEPAGES_SYSFS: &str = "/sys/kernel/mm/hugepages";
/// memfd_create(2): the huge page size is log2(size) in these bits of the flags.
const MFD_HUGE_SHIFT: u32 = 26;
/// madvise(2) advice that faults a range in for writing (Linux 5.14).
const MADV_POPULATE_WRITE: libc::c_int = 23;
/// mbind(2) mode and flags (linux/mempolicy.h): bind to the node, move what is there already.
const MPOL_BIND: libc::c_ulong = 2;
const MPOL_MF_STRICT: libc::c_ulong = 1;
const MPOL_MF_MOVE: libc::c_ulong = 1 << 1;

/// The huge page size a zone uses, resolved against the host: its default (from
/// /proc/meminfo's Hugepagesize) or the size asked for.
pub fn huge_page_size(h: HugePages, meminfo: &str) -> Result<Option<u64>, MemoryError> {
    match h {
        HugePages::Off => Ok(None),
        HugePages::Size(s) => Ok(Some(s)),
        HugePages::HostDefault => meminfo
            .lines()
            .find_map(|l| l.strip_prefix("Hugepagesize:"))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|kib| Some(kib << 10))
            .ok_or_else(|| {
                MemoryError::HugePages("the host reports no default huge page size".into())
            }),
    }
}

/// Refuses, with the figures, a zone the host has too few free huge pages for: a hugetlbfs
/// mapping short of pages would kill the VM (SIGBUS) at the first page the guest touches
/// that has none.
pub fn check_free_huge_pages(
    zone: &str,
    size: u64,
    page: u64,
    sysfs: &Path,
) -> Result<(), MemoryError> {
    let dir = sysfs.join(format!("hugepages-{}kB", page >> 10));
    let read = |name: &str| -> Option<u64> {
        std::fs::read_to_string(dir.join(name))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let Some(free) = read("free_hugepages") else {
        return Err(MemoryError::HugePages(format!(
            "{zone}: the host has no {} KiB huge pages ({} is missing)",
            page >> 10,
            dir.display()
        )));
    };
    let needed = size.div_ceil(page);
    if free < needed {
        return Err(MemoryError::HugePages(format!(
            "{zone}: {needed} huge pages of {} KiB needed, the host has {free} free (raise {})",
            page >> 10,
            dir.join("nr_hugepages").display()
        )));
    }
    Ok(())
}

/// The user's `file=` for a zone: a directory gets an unnamed temporary file (O_TMPFILE, so
/// no name is ever visible and nothing is left behind) sized to the zone; a regular file is
/// used as it is, its first `size` bytes. A file shorter than the zone is refused: the guest
/// would die of SIGBUS at the first page past its end.
pub fn open_user_file(name: &str, path: &Path, size: u64) -> Result<File, MemoryError> {
    let fail = |reason: String| MemoryError::BackingFile {
        zone: name.to_string(),
        path: path.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
    if meta.is_dir() {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_TMPFILE | libc::O_EXCL)
            .mode(0o600)
            .open(path)
            .map_err(|e| fail(format!("cannot make a temporary file in it: {e}")))?;
        file.set_len(size).map_err(|e| {
            fail(format!(
                "cannot size the temporary file to {size:#x} bytes: {e}"
            ))
        })?;
        return Ok(file);
    }
    if !meta.is_file() {
        return Err(fail("not a regular file or a directory".into()));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| fail(format!("cannot open it for reading and writing: {e}")))?;
    let len = file.metadata().map_err(|e| fail(e.to_string()))?.len();
    if len < size {
        return Err(fail(format!(
            "{len} bytes, shorter than the zone's {size} (extend it, e.g. truncate -s {size})"
        )));
    }
    Ok(file)
}

/// The file a zone lives in, if it needs one: the user's `file=`, else a memfd for a shared
/// zone (another process maps the fd) or a huge page zone (hugetlbfs pages come from a
/// file), sized to the zone.
pub fn zone_file(
    name: &str,
    size: u64,
    backing: &Backing,
    meminfo: &str,
) -> Result<Option<File>, MemoryError> {
    if let Some(path) = &backing.file {
        return open_user_file(name, path, size).map(Some);
    }
    let page = huge_page_size(backing.hugepages, meminfo)?;
    if !backing.shared && page.is_none() {
        return Ok(None);
    }
    let mut flags = libc::MFD_CLOEXEC;
    if let Some(page) = page {
        if !size.is_multiple_of(page) {
            return Err(MemoryError::HugePages(format!(
                "{name}: {size:#x} bytes is not a multiple of the {} KiB huge page",
                page >> 10
            )));
        }
        check_free_huge_pages(name, size, page, Path::new(HUGEPAGES_SYSFS))?;
        flags |= libc::MFD_HUGETLB | (page.trailing_zeros() << MFD_HUGE_SHIFT);
    }
    // SAFETY: the name is a NUL-terminated literal; the call only returns a new fd or -1.
    let fd = unsafe { libc::memfd_create(c"ghvmm-ram".as_ptr(), flags) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    // A memfd grows only through ftruncate; its pages are allocated on first touch, as with
    // anonymous memory.
    file.set_len(size)
        .map_err(|error| MemoryError::ResizeMemfd { size, error })?;
    Ok(Some(file))
}

/// mmap(2) flags of a piece. Huge pages are reserved at mmap time (no MAP_NORESERVE), so a
/// shortage fails here rather than with SIGBUS in the guest's first touch.
pub fn mmap_flags(backing: &Backing, has_file: bool) -> libc::c_int {
    let mut flags = if backing.shared {
        libc::MAP_SHARED
    } else {
        libc::MAP_PRIVATE
    };
    if !has_file {
        flags |= libc::MAP_ANONYMOUS;
    }
    if backing.hugepages == HugePages::Off {
        flags |= libc::MAP_NORESERVE;
    }
    flags
}

/// Maps one piece of a zone.
pub fn map_piece(
    size: u64,
    backing: &Backing,
    file: Option<FileOffset>,
) -> Result<MmapRegion, MemoryError> {
    let size = usize::try_from(size)
        .map_err(|_| MemoryError::Allocate(format!("{size:#x} bytes do not fit in memory")))?;
    let flags = mmap_flags(backing, file.is_some());
    let mut b = vm_memory::mmap::MmapRegionBuilder::new(size)
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(flags)
        .with_hugetlbfs(backing.hugepages != HugePages::Off);
    if let Some(f) = file {
        b = b.with_file_offset(f);
    }
    let region = b
        .build()
        .map_err(|e| MemoryError::Allocate(e.to_string()))?;
    prepare(&region, backing)?;
    Ok(region)
}

/// What is done to a fresh mapping: THP advice, KSM advice, the host node, then the prefault
/// (after mbind, so the pages come from that node).
fn prepare(region: &MmapRegion, backing: &Backing) -> Result<(), MemoryError> {
    let (addr, len) = (region.as_ptr().cast::<libc::c_void>(), region.size());
    if !backing.shared && backing.hugepages == HugePages::Off && backing.file.is_none() {
        let advice = if backing.thp {
            libc::MADV_HUGEPAGE
        } else {
            libc::MADV_NOHUGEPAGE
        };
        // SAFETY: advice on a range this process mapped and `region` owns; no memory
        // content changes.
        if unsafe { libc::madvise(addr, len, advice) } != 0 {
            // A kernel without THP refuses MADV_HUGEPAGE: the memory works the same.
            log::debug!(
                "madvise THP on guest RAM: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    if backing.mergeable {
        mark_mergeable(addr, len);
    }
    if let Some(node) = backing.host_numa_node {
        bind_to_node(addr, len, node)?;
    }
    if backing.prefault {
        // SAFETY: faults in pages of a range `region` owns; contents stay zero.
        if unsafe { libc::madvise(addr, len, MADV_POPULATE_WRITE) } != 0 {
            return Err(MemoryError::Prefault(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// MADV_MERGEABLE, as Cloud Hypervisor does: a host without KSM (EINVAL) runs the guest all
/// the same, with a warning. The kernel takes the advice on shared mappings too but merges
/// only private pages.
fn mark_mergeable(addr: *mut libc::c_void, len: usize) {
    // SAFETY: advice on a range this process mapped and the caller's region owns; no memory
    // content changes.
    if unsafe { libc::madvise(addr, len, libc::MADV_MERGEABLE) } == 0 {
        return;
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EINVAL) {
        log::warn!("mergeable=on: the host kernel has no KSM (CONFIG_KSM), guest RAM is not marked mergeable");
    } else {
        log::warn!("mergeable=on: cannot mark guest RAM mergeable: {e}");
    }
}

fn bind_to_node(addr: *mut libc::c_void, len: usize, node: u32) -> Result<(), MemoryError> {
    const BITS: u32 = libc::c_ulong::BITS;
    let mut mask = vec![0 as libc::c_ulong; (node / BITS + 1) as usize];
    mask[(node / BITS) as usize] |= 1 << (node % BITS);
    let maxnode = mask.len() as libc::c_ulong * libc::c_ulong::from(BITS);
    // SAFETY: mbind reads `mask` (maxnode bits, all inside the vector) and changes only the
    // policy of a range `region` owns.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mbind,
            addr,
            len,
            MPOL_BIND,
            mask.as_ptr(),
            maxnode,
            MPOL_MF_STRICT | MPOL_MF_MOVE,
        )
    };
    if r != 0 {
        return Err(MemoryError::HostNode {
            node,
            error: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_huge_page_size_comes_from_meminfo() {
        let meminfo = "MemTotal: 1 kB\nHugepagesize:       2048 kB\n";
        assert_eq!(
            huge_page_size(HugePages::HostDefault, meminfo).unwrap(),
            Some(2 << 20)
        );
        assert_eq!(
            huge_page_size(HugePages::Size(1 << 30), meminfo).unwrap(),
            Some(1 << 30)
        );
        assert_eq!(huge_page_size(HugePages::Off, meminfo).unwrap(), None);
        assert!(huge_page_size(HugePages::HostDefault, "MemTotal: 1 kB\n").is_err());
    }

    #[test]
    fn too_few_free_huge_pages_is_one_clear_line() {
        let dir = std::env::temp_dir().join(format!("ghvmm-hp-{}", std::process::id()));
        let pages = dir.join("hugepages-2048kB");
        std::fs::create_dir_all(&pages).unwrap();
        std::fs::write(pages.join("free_hugepages"), "255\n").unwrap();
        let e = check_free_huge_pages("--memory", 512 << 20, 2 << 20, &dir)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!(
                "huge pages: --memory: 256 huge pages of 2048 KiB needed, the host has 255 free (raise {})",
                pages.join("nr_hugepages").display()
            )
        );
        std::fs::write(pages.join("free_hugepages"), "256\n").unwrap();
        assert!(check_free_huge_pages("--memory", 512 << 20, 2 << 20, &dir).is_ok());
        let e = check_free_huge_pages("mem1", 1 << 30, 1 << 30, &dir).unwrap_err();
        assert!(e.to_string().contains("no 1048576 KiB huge pages"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn flags_per_backing() {
        let private = Backing::default();
        assert_eq!(
            mmap_flags(&private, false),
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE
        );
        let shared = Backing {
            shared: true,
            ..Backing::default()
        };
        assert_eq!(
            mmap_flags(&shared, true),
            libc::MAP_SHARED | libc::MAP_NORESERVE
        );
        let huge = Backing {
            hugepages: HugePages::Size(2 << 20),
            ..Backing::default()
        };
        // Reserved at mmap: no MAP_NORESERVE.
        assert_eq!(mmap_flags(&huge, true), libc::MAP_PRIVATE);
    }

    #[test]
    fn prefault_makes_the_pages_resident_and_thp_off_is_advised() {
        let backing = Backing {
            prefault: true,
            thp: false,
            ..Backing::default()
        };
        let r = map_piece(4 << 20, &backing, None).unwrap();
        let mut resident = vec![0u8; (4 << 20) / 4096];
        // SAFETY: mincore writes one byte per page of the range into `resident`, which has
        // exactly that many.
        let rc =
            unsafe { libc::mincore(r.as_ptr().cast(), r.size(), resident.as_mut_ptr().cast()) };
        assert_eq!(rc, 0);
        assert!(resident.iter().all(|b| b & 1 == 1), "every page resident");
        let lazy = map_piece(4 << 20, &Backing::default(), None).unwrap();
        // SAFETY: as above.
        unsafe {
            libc::mincore(
                lazy.as_ptr().cast(),
                lazy.size(),
                resident.as_mut_ptr().cast(),
            )
        };
        assert!(resident.iter().all(|b| b & 1 == 0), "no page resident yet");
    }

    #[test]
    fn a_host_node_that_does_not_exist_is_refused() {
        let backing = Backing {
            host_numa_node: Some(1000),
            ..Backing::default()
        };
        let e = map_piece(1 << 20, &backing, None).unwrap_err().to_string();
        assert!(
            e.starts_with("cannot bind guest RAM to host NUMA node 1000:"),
            "{e}"
        );
        let on0 = Backing {
            host_numa_node: Some(0),
            ..Backing::default()
        };
        map_piece(1 << 20, &on0, None).unwrap();
    }

    /// A fresh, empty folder of this test's own under the temp dir.
    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("ghvmm-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_directory_gets_an_unnamed_file_of_the_zones_size() {
        let dir = scratch("tmpfile");
        let f = open_user_file("--memory-zone id=m0", &dir, 8 << 20).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 8 << 20);
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "no name left behind"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_user_file_is_checked_with_one_clear_line() {
        let dir = scratch("userfile");
        let file = dir.join("zone0");
        let err = |path: &Path, size: u64| {
            open_user_file("--memory-zone id=m0", path, size)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(&file, 4096),
            format!(
                "--memory-zone id=m0: file={}: No such file or directory (os error 2)",
                file.display()
            )
        );
        std::fs::write(&file, vec![0u8; 4096]).unwrap();
        assert_eq!(
            err(&file, 8192),
            format!(
                "--memory-zone id=m0: file={}: 4096 bytes, shorter than the zone's 8192 (extend it, e.g. truncate -s 8192)",
                file.display()
            )
        );
        // Longer than the zone: its first bytes are the zone, the rest is left alone.
        let f = open_user_file("--memory-zone id=m0", &file, 2048).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 4096);
        assert!(err(Path::new("/dev/null"), 4096).ends_with("not a regular file or a directory"));
        // SAFETY: geteuid only reads the caller's id.
        if unsafe { libc::geteuid() } != 0 {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o400)).unwrap();
            assert!(err(&file, 4096).contains("cannot open it for reading and writing"));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The VmFlags of the smaps entry that starts at `addr`.
    fn vm_flags(addr: usize) -> String {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let start = format!("{addr:x}-");
        smaps
            .split_inclusive('\n')
            .skip_while(|l| !l.starts_with(&start))
            .find_map(|l| l.strip_prefix("VmFlags:"))
            .unwrap_or_default()
            .to_string()
    }

    #[test]
    fn mergeable_marks_the_mapping_for_ksm() {
        let ksm = Path::new("/sys/kernel/mm/ksm").exists();
        let backing = Backing {
            mergeable: true,
            ..Backing::default()
        };
        let r = map_piece(4 << 20, &backing, None).unwrap();
        let flags = vm_flags(r.as_ptr() as usize);
        // Without KSM the advice fails with a warning and the memory still works.
        assert_eq!(flags.split_whitespace().any(|f| f == "mg"), ksm, "{flags}");
        let plain = map_piece(4 << 20, &Backing::default(), None).unwrap();
        let flags = vm_flags(plain.as_ptr() as usize);
        assert!(!flags.split_whitespace().any(|f| f == "mg"), "{flags}");
    }
}
