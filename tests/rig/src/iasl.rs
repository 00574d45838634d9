//! Disassembles a guest's ACPI table with ACPICA's iasl: the real parser's opinion.

use std::path::Path;
use std::process::Command;

/// Ok when `iasl -d` disassembles `file` with no error; Err with iasl's complaint.
pub fn disassemble(file: &Path) -> Result<(), String> {
    let dir = file.parent().unwrap_or(Path::new("."));
    let out = Command::new("iasl")
        .current_dir(dir)
        .arg("-d")
        .arg(file.file_name().unwrap_or_default())
        .output()
        .map_err(|e| format!("cannot run iasl (install acpica-tools): {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let errors: Vec<&str> = text
        .lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            (l.contains("error") && !l.contains("0 errors")) || l.contains("could not")
        })
        .collect();
    if !out.status.success() || !errors.is_empty() {
        return Err(format!(
            "iasl -d failed ({}): {}",
            out.status,
            errors.join(" | ").chars().take(300).collect::<String>()
        ));
    }
    Ok(())
}
