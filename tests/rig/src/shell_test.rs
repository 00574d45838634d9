//! For the unit tests of the rig's shell fragments (checks L2 runs): runs a fragment in the
//! host's sh over files in a scratch directory, with stub `l2_say` and `l2_check` that print
//! what L2 would report, and keeps the check lines.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Stubs of L2's helpers: `l2_say` echoes, `l2_check NAME STATUS REASON` prints
/// `NAME PASS` or `NAME FAIL REASON`.
const STUBS: &str = "l2_say() { echo \"$*\"; }\n\
    l2_check() { if [ \"$2\" = 0 ]; then echo \"$1 PASS\"; else echo \"$1 FAIL $3\"; fi; }\n";

/// A scratch directory for a fragment's input files, removed on drop.
pub struct ShellChecks {
    dir: PathBuf,
}

impl ShellChecks {
    /// A fresh directory: tests run in parallel, and one test may make several.
    pub fn new(name: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "rig-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        ShellChecks { dir }
    }

    /// The path of `file` in the directory.
    pub fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    /// Writes `line` and a newline to `file`; returns its path.
    pub fn write(&self, file: &str, line: &str) -> String {
        let path = self.path(file);
        std::fs::write(&path, format!("{line}\n")).unwrap();
        path
    }

    /// Runs `fragment` after the stubs; the output lines that start with one of `prefixes`.
    pub fn run(&self, fragment: &str, prefixes: &[&str]) -> Vec<String> {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{STUBS}{fragment}"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| prefixes.iter().any(|p| l.starts_with(p)))
            .map(String::from)
            .collect()
    }
}

impl Drop for ShellChecks {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `script` in the host's sh; what it printed on standard output.
pub fn sh_stdout(script: &str) -> String {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `sh -n`: fails the test, naming `what` and quoting sh, when `script` does not parse.
pub fn assert_parses(what: &str, script: &str) {
    let out = std::process::Command::new("sh")
        .args(["-n", "-c", script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The definitions of the shell functions `names` as tests/l2/init has them (each from
/// `name() {` to its closing `}` at the start of a line), so a test runs L2's own code.
pub fn l2_init_functions(names: &[&str]) -> String {
    const INIT: &str = include_str!("../../l2/init");
    names
        .iter()
        .map(|name| {
            let start = INIT
                .find(&format!("\n{name}() {{\n"))
                .unwrap_or_else(|| panic!("tests/l2/init has no function {name}"))
                + 1;
            let len = INIT[start..].find("\n}\n").unwrap() + 3;
            &INIT[start..start + len]
        })
        .collect()
}
