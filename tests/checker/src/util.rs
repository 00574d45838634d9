//! Small helpers the checks share.

use std::path::Path;
use std::time::{Duration, Instant};

/// Polls `probe` every 50 ms until it yields something, or `limit` passes.
pub fn wait_for<T>(limit: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A sysfs attribute, trimmed; empty when it cannot be read.
pub fn read_trim(p: impl AsRef<Path>) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .trim()
        .to_string()
}
