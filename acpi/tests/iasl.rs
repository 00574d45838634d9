//! The tables ghvmm builds, disassembled by ACPICA's iasl (acpica-tools): the real parser.
//! The rig does the same with the tables a Linux guest actually received.

use std::process::Command;

#[test]
fn iasl_disassembles_every_table_without_errors() {
    let iasl = Command::new("iasl").arg("-v").output();
    assert!(
        iasl.is_ok(),
        "iasl not found: install acpica-tools (cargo xtask test/e2e installs it)"
    );
    let mut desc = acpi::testutil::platform(4);
    let mut s1 = desc.pci_segments[0].clone();
    s1.segment = 1;
    s1.ecam_base = 0xe010_0000;
    s1.io = false;
    desc.pci_segments.push(s1);
    let blob = acpi::build_tables(&desc, 0xe0000, 0x100000).unwrap();
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("iasl");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (_, bytes) in &blob.regions {
        let sig = String::from_utf8_lossy(&bytes[..4]).into_owned();
        if sig == "RSD " || sig == "XSDT" {
            continue; // iasl -d wants tables it can find by signature; RSDP/XSDT are links
        }
        let file = dir.join(format!("{sig}.dat"));
        std::fs::write(&file, bytes).unwrap();
        let out = Command::new("iasl")
            .current_dir(&dir)
            .arg("-d")
            .arg(&file)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{sig}: {text}");
        assert!(
            !text
                .lines()
                .any(|l| l.to_lowercase().contains("error") && !l.contains("0 Errors")),
            "{sig}: {text}"
        );
        let dsl = std::fs::read_to_string(dir.join(format!("{sig}.dsl"))).unwrap();
        if sig == "DSDT" {
            for needle in [
                "PCI0",
                "PCI1",
                "_SEG, One",
                "COM1",
                "ACPI0013",
                "PNP0C0C",
                "PNP0C02",
                "_S5_",
                "Notify (\\_SB.PWRB, 0x80)",
            ] {
                assert!(dsl.contains(needle), "DSDT lacks {needle}:\n{dsl}");
            }
        }
    }
}
