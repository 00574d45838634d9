//! A writer for the "newc" cpio format the kernel unpacks as an initramfs. Written here
//! rather than shelling out to cpio(1) so archives are built from exact in-memory contents
//! (no staging directory) and several archives can be concatenated, as the kernel allows.

use std::collections::BTreeSet;

pub struct Cpio {
    buf: Vec<u8>,
    ino: u32,
    dirs: BTreeSet<String>,
}

const MODE_DIR: u32 = 0o040_755;
const MODE_LINK: u32 = 0o120_777;

impl Default for Cpio {
    fn default() -> Self {
        Self::new()
    }
}

impl Cpio {
    pub fn new() -> Self {
        Cpio {
            buf: Vec::new(),
            ino: 1,
            dirs: BTreeSet::new(),
        }
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        let name = name.trim_start_matches('/');
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        self.ino += 1;
        self.buf.extend_from_slice(header.as_bytes());
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    /// Adds `path`'s parent directories (once each).
    fn parents(&mut self, path: &str) {
        let path = path.trim_start_matches('/');
        let mut acc = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for p in &parts[..parts.len().saturating_sub(1)] {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(p);
            if self.dirs.insert(acc.clone()) {
                let a = acc.clone();
                self.entry(&a, MODE_DIR, &[]);
            }
        }
    }

    pub fn dir(&mut self, path: &str) {
        self.parents(&format!("{}/x", path.trim_end_matches('/')));
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.parents(path);
        self.entry(path, 0o100_000 | (mode & 0o7777), data);
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.parents(path);
        self.entry(path, MODE_LINK, target.as_bytes());
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_layout() {
        let mut c = Cpio::new();
        c.file("/bin/x", 0o755, b"hello");
        let out = c.finish();
        // Directory "bin" first, then the file, then the trailer; everything 4-aligned.
        assert!(out.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("bin\0"));
        assert!(text.contains("bin/x\0"));
        assert!(text.contains("hello"));
        assert!(text.contains("TRAILER!!!\0"));
        assert_eq!(out.len() % 4, 0);
        // The file entry's mode and size fields.
        let at = text.find("bin/x").unwrap() - 110;
        assert_eq!(&text[at + 14..at + 22], "000081ed");
        assert_eq!(&text[at + 54..at + 62], "00000005");
    }

    #[test]
    fn parents_are_added_once() {
        let mut c = Cpio::new();
        c.file("a/b/c", 0o644, b"");
        c.file("a/b/d", 0o644, b"");
        c.symlink("a/e", "b/c");
        let out = String::from_utf8_lossy(&c.finish()).into_owned();
        assert_eq!(out.matches("a/b\0").count(), 1);
        assert_eq!(out.matches("070701").count(), 6);
    }
}
