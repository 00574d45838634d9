//! The command line's edges: help and version succeed, bad input is one error line and
//! exit status 1, never a panic.

use std::process::Command;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ghvmm-vfio-user"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_and_version_succeed() {
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("--device") && out.contains("--socket") && out.contains("--once"));
    let (code, out, _) = run(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("ghvmm-vfio-user "), "{out}");
}

#[test]
fn bad_input_is_one_line_and_exit_1() {
    let tmp = std::env::temp_dir().join(format!("ghvmm-vfio-user-cli-{}", std::process::id()));
    let sock = tmp.display().to_string();
    for (args, says) in [
        (vec!["--device", "path=/x"], "--socket"),
        (vec!["--socket", &sock], "--device"),
        (
            vec!["--device", "/sys/bus/pci/devices/x", "--socket", &sock],
            "not key=value",
        ),
        (
            vec!["--device", "path=/x,id=a", "--socket", &sock],
            "unknown key `id`",
        ),
        (
            vec!["--device", "path=", "--socket", &sock],
            "path= is empty",
        ),
        (vec!["--bogus"], "--bogus"),
        (
            vec!["--device", "path=/nonexistent", "--socket", &sock],
            "is not a PCI device",
        ),
    ] {
        let (code, out, err) = run(&args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?}: {out}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("ghvmm-vfio-user: error: "), "{err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    assert!(!tmp.exists(), "no socket is left behind");
}
