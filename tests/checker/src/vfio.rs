//! Checks on a passed-through ivshmem device (1af4:1110): BAR sizes and types as the guest sees
//! them, data written through the mapped BAR2 (the host checks it landed in the backing file),
//! and ghvmm's padding of the 256-byte register BAR0.

use std::path::{Path, PathBuf};

use crate::checks::report;

/// Patterns written at these BAR2 offsets; the rig looks for them in the host's file.
pub const PATTERNS: [(u64, &[u8; 16]); 3] = [
    (0, b"ghvmm-bar2-at-0!"),
    (1 << 20, b"ghvmm-bar2-at-1M"),
    ((64 << 20) - 16, b"ghvmm-bar2-atEnd"),
];

pub const IORESOURCE_PREFETCH: u64 = 0x2000;
pub const IORESOURCE_MEM_64: u64 = 0x0010_0000;

pub fn find(vendor: &str, device: &str) -> Option<PathBuf> {
    find_all(vendor, device).into_iter().next()
}

/// Every PCI function with these IDs, in address order.
pub fn find_all(vendor: &str, device: &str) -> Vec<PathBuf> {
    let Ok(dir) = std::fs::read_dir("/sys/bus/pci/devices") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = dir
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let r = |f: &str| std::fs::read_to_string(p.join(f)).unwrap_or_default();
            r("vendor").trim() == vendor && r("device").trim() == device
        })
        .collect();
    found.sort();
    found
}

/// (start, size, flags) of BAR `bar` from the sysfs `resource` file.
pub fn resource(dev: &Path, bar: usize) -> Result<(u64, u64, u64), String> {
    let text = std::fs::read_to_string(dev.join("resource")).map_err(|e| e.to_string())?;
    let line = text.lines().nth(bar).ok_or("no such BAR line")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| u64::from_str_radix(w.trim_start_matches("0x"), 16).ok())
        .collect();
    match v.as_slice() {
        [start, end, flags] if *end > *start => Ok((*start, end - start + 1, *flags)),
        _ => Err(format!("BAR {bar} is not assigned: {line:?}")),
    }
}

pub struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    pub fn open(dev: &Path, bar: usize, len: usize) -> Result<Self, String> {
        Self::open_file(dev, &format!("resource{bar}"), len)
    }

    /// `resourceN` (uncached) or `resourceN_wc` (write-combining, prefetchable BARs only).
    pub fn open_file(dev: &Path, name: &str, len: usize) -> Result<Self, String> {
        Self::map(&dev.join(name), 0, len)
    }

    /// Maps `len` bytes of the file at `path` from `offset`, shared, read-write, uncached.
    fn map(path: &Path, offset: u64, len: usize) -> Result<Self, String> {
        Self::map_with(path, offset, len, libc::O_SYNC)
    }

    /// `map` with these open flags besides O_RDWR (O_SYNC asks /dev/mem for uncached).
    fn map_with(path: &Path, offset: u64, len: usize, flags: i32) -> Result<Self, String> {
        let c =
            std::ffi::CString::new(path.to_string_lossy().as_bytes()).map_err(|e| e.to_string())?;
        // SAFETY: plain syscalls on a path we own; the mapping is checked before use.
        unsafe {
            let fd = libc::open(c.as_ptr(), libc::O_RDWR | flags);
            if fd < 0 {
                return Err(format!(
                    "open {}: {}",
                    path.display(),
                    std::io::Error::last_os_error()
                ));
            }
            let ptr = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                offset as libc::off_t,
            );
            libc::close(fd);
            if ptr == libc::MAP_FAILED {
                return Err(format!(
                    "mmap {} at {offset:#x}: {}",
                    path.display(),
                    std::io::Error::last_os_error()
                ));
            }
            Ok(Mapping {
                ptr: ptr.cast(),
                len,
            })
        }
    }

    pub fn write(&self, off: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            let o = off as usize + i;
            if o < self.len {
                // SAFETY: inside the mapping; volatile because it is device memory.
                unsafe { self.ptr.add(o).write_volatile(*b) };
            }
        }
    }

    pub fn read(&self, off: u64, len: usize) -> Vec<u8> {
        (0..len)
            .filter(|i| off as usize + i < self.len)
            // SAFETY: inside the mapping.
            .map(|i| unsafe { self.ptr.add(off as usize + i).read_volatile() })
            .collect()
    }

    fn read_u32(&self, off: u64) -> u32 {
        // SAFETY: 4-byte aligned offset inside the mapping, one 32-bit access.
        unsafe { (self.ptr.add(off as usize) as *const u32).read_volatile() }
    }

    /// One access of `width` bytes (1, 2, 4 or 8) at `off`, as a little-endian value.
    pub fn read_width(&self, off: u64, width: usize) -> u64 {
        // SAFETY: callers keep off + width inside the mapping; x86 allows any alignment, and
        // a single instruction of that width is what the guest's padding test is about.
        unsafe {
            // Through black_box (a compiler barrier): each call is one access, never merged
            // with, answered from or dropped for another one to the same address (a read
            // after a write to padding must reach the device, not the compiler's copy).
            let p = std::hint::black_box(self.ptr.add(off as usize));
            match width {
                1 => u64::from(p.read_volatile()),
                2 => u64::from((p as *const u16).read_unaligned()),
                4 => u64::from((p as *const u32).read_unaligned()),
                _ => (p as *const u64).read_unaligned(),
            }
        }
    }

    pub fn write_width(&self, off: u64, width: usize, value: u64) {
        // SAFETY: as read_width.
        unsafe {
            let p = std::hint::black_box(self.ptr.add(off as usize));
            match width {
                1 => p.write_volatile(value as u8),
                2 => (p as *mut u16).write_unaligned(value as u16),
                4 => (p as *mut u32).write_unaligned(value as u32),
                _ => (p as *mut u64).write_unaligned(value),
            }
        }
    }
}

/// A BAR seen through mappings of its parts. A BAR of up to `WHOLE` bytes is mapped at once;
/// a larger one (a GH-sized 128 GiB BAR, whose full mapping would cost the guest 256 MiB of
/// page tables: sysfs maps BARs with 4 KiB pages, eagerly) in windows around each access.
pub struct BarView {
    path: PathBuf,
    size: u64,
    windows: std::cell::RefCell<Vec<(u64, u64, Mapping)>>,
}

impl BarView {
    const WHOLE: u64 = 256 << 20;
    const WINDOW: u64 = 1 << 20;

    pub fn open(dev: &Path, bar: usize, size: u64) -> Result<Self, String> {
        let v = BarView {
            path: dev.join(format!("resource{bar}")),
            size,
            windows: Default::default(),
        };
        // Fail early (and for small BARs, once) if the BAR cannot be mapped at all.
        v.with(0, 1, |_, _| ())?;
        Ok(v)
    }

    /// Runs `f` with a mapping that holds `[off, off + len)` and `off`'s place in it.
    fn with<T>(
        &self,
        off: u64,
        len: usize,
        f: impl FnOnce(&Mapping, u64) -> T,
    ) -> Result<T, String> {
        let end = off + len as u64;
        if end > self.size {
            return Err(format!(
                "{off:#x}+{len} is outside the BAR ({:#x} bytes)",
                self.size
            ));
        }
        let mut windows = self.windows.borrow_mut();
        if let Some((base, _, m)) = windows.iter().find(|(b, l, _)| *b <= off && end <= b + l) {
            return Ok(f(m, off - base));
        }
        let (base, mlen) = if self.size <= Self::WHOLE {
            (0, self.size)
        } else {
            let base = (off & !(Self::WINDOW - 1)).saturating_sub(Self::WINDOW);
            (base, (3 * Self::WINDOW).min(self.size - base))
        };
        let m = Mapping::map(&self.path, base, mlen as usize)?;
        let out = f(&m, off - base);
        windows.push((base, mlen, m));
        Ok(out)
    }

    // Every access returns the mapping's failure rather than a stand-in value: all-ones
    // would equal the padding the kernel gives, and an empty read could match nothing.

    pub fn write(&self, off: u64, data: &[u8]) -> Result<(), String> {
        self.with(off, data.len(), |m, at| m.write(at, data))
    }

    pub fn read(&self, off: u64, len: usize) -> Result<Vec<u8>, String> {
        self.with(off, len, |m, at| m.read(at, len))
    }

    pub fn read_width(&self, off: u64, width: usize) -> Result<u64, String> {
        self.with(off, width, |m, at| m.read_width(at, width))
    }

    pub fn write_width(&self, off: u64, width: usize, value: u64) -> Result<(), String> {
        self.with(off, width, |m, at| m.write_width(at, width, value))
    }

    /// Writes `word(off)` at every 8-byte offset of `[0, len)` (`len` a multiple of 8), then
    /// reads it all back: aligned 8-byte accesses, a window at a time.
    pub fn fill_and_verify(&self, len: u64, word: impl Fn(u64) -> u64) -> Result<(), String> {
        if !len.is_multiple_of(8) {
            return Err(format!("length {len:#x} is not a multiple of 8"));
        }
        let step = Self::WINDOW;
        let mut off = 0;
        while off < len {
            let n = step.min(len - off);
            self.with(off, n as usize, |m, at| {
                for i in (0..n).step_by(8) {
                    m.write_width(at + i, 8, word(off + i));
                }
            })?;
            off += n;
        }
        off = 0;
        while off < len {
            let n = step.min(len - off);
            self.with(off, n as usize, |m, at| {
                for i in (0..n).step_by(8) {
                    let got = m.read_width(at + i, 8);
                    if got != word(off + i) {
                        return Err(format!(
                            "read back {got:#x} at {:#x}, wrote {:#x}",
                            off + i,
                            word(off + i)
                        ));
                    }
                }
                Ok(())
            })??;
            off += n;
        }
        Ok(())
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: our own mapping.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

pub fn ivshmem() {
    ivshmem_checks();
    bar_moves();
}

fn ivshmem_checks() {
    let Some(dev) = find("0x1af4", "0x1110") else {
        report(
            "vfio-present",
            Err("no 1af4:1110 device in /sys/bus/pci/devices".into()),
        );
        return;
    };
    report("vfio-present", Ok(()));
    report(
        "vfio-bar2",
        resource(&dev, 2).and_then(|(start, size, flags)| {
            let want = IORESOURCE_MEM_64 | IORESOURCE_PREFETCH;
            if size != 64 << 20 || flags & want != want {
                return Err(format!("BAR2 at {start:#x}: size {size:#x}, flags {flags:#x}; want 64 MiB, 64-bit prefetchable"));
            }
            Ok(())
        }),
    );
    report(
        "vfio-bar2-data",
        Mapping::open(&dev, 2, 64 << 20).and_then(|m| {
            for (off, pat) in PATTERNS {
                m.write(off, pat);
            }
            for (off, pat) in PATTERNS {
                let got = m.read(off, 16);
                if got != pat {
                    return Err(format!("read back {got:02x?} at {off:#x}"));
                }
            }
            Ok(())
        }),
    );
    // BAR0 is 256 bytes of registers; ghvmm shows a 4 KiB BAR whose tail is its padding.
    report(
        "vfio-bar0-padding",
        resource(&dev, 0).and_then(|(_, size, _)| {
            if size != 4096 {
                return Err(format!(
                    "BAR0 is {size:#x} bytes, expected 0x1000 (256 padded to a page)"
                ));
            }
            let m = Mapping::open(&dev, 0, 4096)?;
            m.write(0x800, &[0xaa; 8]);
            let words: Vec<u32> = [0x100u64, 0x800, 0xffc]
                .iter()
                .map(|o| m.read_u32(*o))
                .collect();
            if words.iter().any(|w| *w != 0) {
                return Err(format!("padding reads {words:#x?}, expected zeros"));
            }
            Ok(())
        }),
    );
}

/// The guest's own configuration-space writes through sysfs (the kernel passes them on).
struct Config(std::fs::File);

impl Config {
    fn open(dev: &Path) -> Result<Self, String> {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dev.join("config"))
            .map(Config)
            .map_err(|e| format!("config: {e}"))
    }

    fn read32(&self, off: u64) -> u32 {
        use std::os::unix::fs::FileExt;
        let mut b = [0xffu8; 4];
        let _ = self.0.read_exact_at(&mut b, off);
        u32::from_le_bytes(b)
    }

    fn write16(&self, off: u64, v: u16) -> Result<(), String> {
        use std::os::unix::fs::FileExt;
        self.0
            .write_all_at(&v.to_le_bytes(), off)
            .map_err(|e| e.to_string())
    }

    fn write32(&self, off: u64, v: u32) -> Result<(), String> {
        use std::os::unix::fs::FileExt;
        self.0
            .write_all_at(&v.to_le_bytes(), off)
            .map_err(|e| e.to_string())
    }
}

/// Maps `len` bytes of physical memory through /dev/mem (for the bench).
pub fn devmem_public(phys: u64, len: usize) -> Result<Mapping, String> {
    devmem(phys, len)
}

/// Maps `len` bytes of physical memory through /dev/mem with the cache type the kernel
/// already uses for it (write-back when nothing maps it). For a page that the guest kernel's
/// ACPI code maps for an operation region, such as the hot plug controller's once a hot-plug
/// method ran: it maps it write-back, and PAT then refuses an uncached mapping (mmap fails
/// with EAGAIN). In a guest the type does not matter for an address no memory backs: every
/// access exits to the VMM, one instruction at a time.
pub fn devmem_shared_type(phys: u64, len: usize) -> Result<Mapping, String> {
    Mapping::map_with(Path::new("/dev/mem"), phys, len, 0)
}

/// Maps `len` bytes of physical memory through /dev/mem.
fn devmem(phys: u64, len: usize) -> Result<Mapping, String> {
    Mapping::map(Path::new("/dev/mem"), phys, len)
}

/// Memory decode off with BAR2 in place: it stays parked and keeps answering (ghvmm never
/// re-creates a slot for a decode toggle, docs/architecture.md); moved with decoding still
/// off: the old address stops answering at once. Decoding on again: the data is at the new
/// address only.
pub fn bar_moves() {
    let Some(dev) = find("0x1af4", "0x1110") else {
        report("vfio-decode-off", Err("no 1af4:1110 device".into()));
        return;
    };
    let result = (|| -> Result<(), String> {
        let cfg = Config::open(&dev)?;
        let bar2 = Mapping::open(&dev, 2, 64 << 20)?;
        let before = bar2.read(0, 16);
        let command = cfg.read32(4) as u16;
        cfg.write16(4, command & !0x2)?;
        let parked = bar2.read(0, 16);
        if parked != before {
            return Err(format!(
                "with memory decode off and BAR2 in place it reads {parked:02x?}, want the device's {before:02x?} (parked)"
            ));
        }
        let old = (u64::from(cfg.read32(0x1c)) << 32) | u64::from(cfg.read32(0x18) & !0xf);
        let new = old + (4 << 30);
        cfg.write32(0x18, (new as u32) | 0xc)?;
        cfg.write32(0x1c, (new >> 32) as u32)?;
        let left = bar2.read(0, 16);
        if left != [0xff; 16] {
            return Err(format!(
                "moved {old:#x} -> {new:#x} with memory decode off, the old address still answers: {left:02x?}"
            ));
        }
        report("vfio-decode-off", Ok(()));
        cfg.write16(4, command | 0x2)?;
        let moved = devmem(new, 4096)?.read(0, 16);
        let stale = bar2.read(0, 16);
        // Put it back where the guest kernel believes it is.
        cfg.write16(4, command & !0x2)?;
        cfg.write32(0x18, (old as u32) | 0xc)?;
        cfg.write32(0x1c, (old >> 32) as u32)?;
        cfg.write16(4, command | 0x2)?;
        let back = bar2.read(0, 16);
        if moved != before {
            return Err(format!("after moving BAR2 {old:#x} -> {new:#x} the new address reads {moved:02x?}, want {before:02x?}"));
        }
        if stale != [0xff; 16] {
            return Err(format!(
                "the old address still answers after the move: {stale:02x?}"
            ));
        }
        if back != before {
            return Err(format!("after moving back BAR2 reads {back:02x?}"));
        }
        Ok(())
    })();
    match result {
        Ok(()) => report("vfio-bar-move", Ok(())),
        Err(e) => {
            report("vfio-decode-off", Err(e.clone()));
            report("vfio-bar-move", Err(e));
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A BAR view of a file of `size` bytes in the temp directory, filled with `fill`.
    pub(crate) fn file_bar(tag: &str, size: u64, fill: u8) -> (PathBuf, BarView) {
        let dir = std::env::temp_dir().join(format!("checker-bar-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("resource2"), vec![fill; size as usize]).unwrap();
        let bar = BarView::open(&dir, 2, size).unwrap();
        (dir, bar)
    }

    /// A view whose every mapping fails, as when sysfs refuses the mmap.
    pub(crate) fn unmappable_bar(size: u64) -> BarView {
        BarView {
            path: PathBuf::from("/nonexistent/resource2"),
            size,
            windows: Default::default(),
        }
    }

    #[test]
    fn accesses_go_through_the_mapping() {
        let (dir, bar) = file_bar("rw", 8192, 0);
        bar.write(4090, b"straddle").unwrap();
        assert_eq!(bar.read(4090, 8).unwrap(), b"straddle");
        bar.write_width(16, 8, 0x1122_3344_5566_7788).unwrap();
        assert_eq!(bar.read_width(16, 4).unwrap(), 0x5566_7788);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_failed_mapping_is_an_error_not_all_ones() {
        assert!(BarView::open(Path::new("/nonexistent"), 2, 8192).is_err());
        let bar = unmappable_bar(8192);
        let err = bar.read_width(4096, 4).unwrap_err();
        assert!(err.contains("open /nonexistent/resource2"), "{err}");
        assert!(bar.read(0, 16).is_err());
        assert!(bar.write(0, b"x").is_err());
        assert!(bar.write_width(0, 8, 0).is_err());
        // Outside the BAR: refused before any mapping.
        let (dir, bar) = file_bar("out", 4096, 0);
        assert!(bar
            .read_width(4094, 4)
            .unwrap_err()
            .contains("outside the BAR"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
