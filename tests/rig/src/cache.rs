//! Build outputs kept under target/rig/, rebuilt only when their inputs change. An input is a
//! file (identified by path, size and modification time) or a string (e.g. the kernel ABI);
//! the key is kept as readable text next to the output, so a stale cache is easy to inspect.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use anyhow::{Context, Result};

/// What an output was built from.
#[derive(Default)]
pub struct Inputs {
    lines: Vec<String>,
}

impl Inputs {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn file(mut self, path: &Path) -> Self {
        let line = match std::fs::metadata(path) {
            Ok(m) => {
                let mtime = m
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos());
                format!("file {} {} {mtime}", path.display(), m.len())
            }
            // A missing input is a key too: the build then reports the real error.
            Err(_) => format!("file {} missing", path.display()),
        };
        self.lines.push(line);
        self
    }

    pub fn files<'a>(self, paths: impl IntoIterator<Item = &'a PathBuf>) -> Self {
        paths.into_iter().fold(self, |i, p| i.file(p))
    }

    pub fn text(mut self, what: &str, value: &str) -> Self {
        self.lines.push(format!("{what} {value}"));
        self
    }

    fn key(&self) -> String {
        self.lines.join("\n") + "\n"
    }
}

/// The bytes of `dir/name`, rebuilt with `build` (and stored) unless they were last built
/// from the same `inputs`. Returns the bytes and whether they came from the cache.
pub fn cached(
    dir: &Path,
    name: &str,
    inputs: &Inputs,
    build: impl FnOnce() -> Result<Vec<u8>>,
) -> Result<(Vec<u8>, bool)> {
    let out = dir.join(name);
    let key_file = dir.join(format!("{name}.key"));
    let key = inputs.key();
    if std::fs::read_to_string(&key_file).ok().as_deref() == Some(key.as_str()) {
        if let Ok(bytes) = std::fs::read(&out) {
            return Ok((bytes, true));
        }
    }
    let bytes = build()?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // Output first, key last: an interrupted write leaves a key that does not match.
    let _ = std::fs::remove_file(&key_file);
    std::fs::write(&out, &bytes).with_context(|| format!("writing {}", out.display()))?;
    std::fs::write(&key_file, key).with_context(|| format!("writing {}", key_file.display()))?;
    Ok((bytes, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebuilds_only_when_an_input_changes() {
        let dir = std::env::temp_dir().join(format!("rig-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("src");
        std::fs::write(&src, b"one").unwrap();
        let inputs = || Inputs::new().file(&src).text("abi", "6.1");
        let build = |n: u8| move || Ok(vec![n]);

        assert_eq!(
            cached(&dir, "out", &inputs(), build(1)).unwrap(),
            (vec![1], false)
        );
        assert_eq!(
            cached(&dir, "out", &inputs(), build(2)).unwrap(),
            (vec![1], true)
        );
        // A different size (and usually mtime) is a different key.
        std::fs::write(&src, b"three").unwrap();
        assert_eq!(
            cached(&dir, "out", &inputs(), build(3)).unwrap(),
            (vec![3], false)
        );
        let other = Inputs::new().file(&src).text("abi", "6.2");
        assert_eq!(
            cached(&dir, "out", &other, build(4)).unwrap(),
            (vec![4], false)
        );
        // A lost output is rebuilt even though the key matches.
        std::fs::remove_file(dir.join("out")).unwrap();
        assert_eq!(
            cached(&dir, "out", &other, build(5)).unwrap(),
            (vec![5], false)
        );
        assert!(cached(&dir, "x", &other, || anyhow::bail!("boom")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
