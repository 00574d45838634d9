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

#[cfg(test)]
mod tests {
    use super::*;

    const INIT: &str = include_str!("../../l2/init");

    /// The position of `text` in tests/l2/init, which must have it once.
    fn at(text: &str) -> usize {
        assert_eq!(INIT.matches(text).count(), 1, "tests/l2/init: {text:?}");
        INIT.find(text).unwrap()
    }

    #[test]
    fn kvm_is_loaded_and_the_vm_held_with_cpu_0_alone() {
        let offline = at("\ncpus_online 0\n");
        assert!(offline < at("insmod \"/lib/modules/$m\""));
        assert!(at("elif ! hold_kvm; then") < at("\ncpus_online 1\n"));
        assert!(at("\ncpus_online 1\n") < at("echo \"@@L2CHECK kvm PASS\""));
        assert!(at("\nall_cpus=") < offline, "what was online before");
    }

    /// Runs L2's `cpus_online` and `hold_kvm` over a fake CPU directory and a fake checker
    /// (`fake_checker` is its body); the output of `then`.
    fn boot_helpers(fake_checker: &str, then: &str) -> Vec<String> {
        let sh = ShellChecks::new("kvm-hold");
        for cpu in ["cpu0", "cpu1", "cpu2", "cpu12"] {
            std::fs::create_dir_all(sh.path(cpu)).unwrap();
        }
        for cpu in ["cpu1", "cpu2", "cpu12"] {
            sh.write(&format!("{cpu}/online"), "1");
        }
        let checker = sh.write("checker", &format!("#!/bin/sh\n{fake_checker}"));
        std::process::Command::new("chmod")
            .args(["+x", &checker])
            .status()
            .unwrap();
        let fragment = format!(
            "{}CHECKER={checker}\nCPU_DIR={}\nHOLD={}\n{then}",
            l2_init_functions(&["pid_running", "hold_kvm", "cpus_online"]),
            sh.path(""),
            sh.path("hold"),
        );
        sh.run(&fragment, &["online", "held", "not held", "took"])
    }

    #[test]
    fn cpus_other_than_0_go_offline_and_back() {
        let show =
            "for c in cpu1 cpu2 cpu12; do echo \"online $c $(cat $CPU_DIR/$c/online)\"; done";
        let out = boot_helpers(
            "exit 0",
            &format!("cpus_online 0\n{show}\ncpus_online 1\n{show}"),
        );
        assert_eq!(
            out,
            [
                "online cpu1 0",
                "online cpu2 0",
                "online cpu12 0",
                "online cpu1 1",
                "online cpu2 1",
                "online cpu12 1"
            ]
        );
    }

    #[test]
    fn hold_kvm_waits_for_the_ready_file_and_gives_up_when_the_checker_dies() {
        let report = "t0=$(date +%s)\nif hold_kvm; then echo held; else echo \"not held: $(cat $HOLD.err)\"; fi\n\
                      echo \"took $(( $(date +%s) - t0 ))\"\nkill $hold_pid";
        // The checker says it is ready after a while and stays.
        let out = boot_helpers("sleep 0.5; echo ok > \"$2\"; exec sleep 60", report);
        assert_eq!(out[0], "held");
        // One that fails at once is not waited for (the limit is 30 s).
        let out = boot_helpers("echo 'checker kvm-hold: /dev/kvm: no' >&2; exit 1", report);
        assert_eq!(out[0], "not held: checker kvm-hold: /dev/kvm: no");
        let took: u64 = out[1].strip_prefix("took ").unwrap().parse().unwrap();
        assert!(took < 5, "{took} s");
    }
}
