//! The tables ghvmm builds, checked by ACPICA's iasl (acpica-tools), the parser Linux shares
//! code with: each table is disassembled (`iasl -d`), and the resulting source recompiled,
//! which is where iasl reports semantic problems (e.g. a Device with both _HID and _ADR).
//! The rig does the same with the tables a Linux guest actually received.
//!
//! The RSDP is not a table iasl can load from a file (its "length" field is "PTR "); the unit
//! tests check it byte by byte.

use std::path::Path;
use std::process::{Command, Output};

use acpi::{AddrRange, PlatformDesc};

fn iasl(dir: &Path, args: &[&str]) -> (Output, String) {
    let out = Command::new("iasl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run iasl ({e}): install acpica-tools (apt-get install acpica-tools)")
        });
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out, text)
}

/// Disassembles and recompiles every table of `desc`; returns the DSDT source.
fn check(name: &str, desc: &PlatformDesc) -> String {
    let blob = acpi::build_tables(desc, 0xe0000, 0x100000).unwrap();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("iasl")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut dsdt = None;
    let mut checked = Vec::new();
    for (_, bytes) in &blob.regions {
        if bytes.starts_with(b"RSD PTR ") {
            continue;
        }
        let sig = String::from_utf8_lossy(&bytes[..4]).into_owned();
        std::fs::write(dir.join(format!("{sig}.dat")), bytes).unwrap();
        let (out, text) = iasl(&dir, &["-d", &format!("{sig}.dat")]);
        assert!(
            out.status.success(),
            "{name}/{sig}: iasl -d failed:\n{text}"
        );
        assert!(
            !text.to_lowercase().contains("error") && !text.contains("Invalid"),
            "{name}/{sig}: iasl -d complained:\n{text}"
        );
        let dsl = std::fs::read_to_string(dir.join(format!("{sig}.dsl"))).unwrap();
        let (out, text) = iasl(
            &dir,
            &["-p", &format!("{sig}-recompiled"), &format!("{sig}.dsl")],
        );
        assert!(
            out.status.success(),
            "{name}/{sig}: recompiling failed:\n{text}"
        );
        assert!(
            text.contains("0 Errors, 0 Warnings, 0 Remarks"),
            "{name}/{sig}: recompiling the disassembly is not clean:\n{text}\n{dsl}"
        );
        if sig == "DSDT" {
            dsdt = Some(dsl);
        }
        checked.push(sig);
    }
    assert_eq!(checked, ["XSDT", "FACP", "DSDT", "APIC", "MCFG"], "{name}");
    dsdt.unwrap()
}

fn assert_has(dsl: &str, needles: &[&str]) {
    for needle in needles {
        assert!(dsl.contains(needle), "DSDT lacks {needle:?}:\n{dsl}");
    }
}

#[test]
fn iasl_accepts_the_typical_platform() {
    let dsl = check("typical", &acpi::testutil::platform(4));
    assert_has(
        &dsl,
        &[
            "Device (PCI0)",
            "EisaId (\"PNP0A08\")",
            "Name (_SEG, Zero)",
            "Name (_BBN, Zero)",
            "0x0CF8,             // Range Minimum",
            "0x0CF7,             // Range Maximum",
            "0x0D00,             // Range Minimum",
            "0xDFFFFFFF,         // Range Maximum",
            "0x0000005FFFFFFFFF, // Range Maximum",
            "Device (COM1)",
            "0x03F8,             // Range Minimum",
            "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, )\n                {\n                    0x00000004,",
            "\"ACPI0013\"",
            "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, )\n                {\n                    0x00000005,",
            "OperationRegion (GDST, SystemMemory, 0xFED00000, 0x04)",
            "GDAT,   32",
            "Method (_EVT, 1, Serialized)",
            "Local0 = GDAT",
            "If (((Local0 & One) == One))",
            "Notify (\\_SB.PWRB, 0x80)",
            "EisaId (\"PNP0C0C\")",
            "EisaId (\"PNP0C02\")",
            "Memory32Fixed (ReadWrite,\n                    0xE0000000,         // Address Base\n                    0x00100000,",
            "Name (_S5, Package (0x04)",
        ],
    );
    assert!(!dsl.contains("_ADR"), "host bridges are found by _HID");
}

#[test]
fn iasl_accepts_many_cpus_and_segments() {
    let mut desc = acpi::testutil::platform(300);
    for (i, seg) in [1u16, 0x10, 0xfff].into_iter().enumerate() {
        let mut s = desc.pci_segments[0].clone();
        s.segment = seg;
        s.ecam_base = 0xe000_0000 + (u64::from(seg) << 20);
        s.io = false;
        s.bus_start = 1;
        s.bus_end = 1;
        s.mmio32 = AddrRange { base: 0, len: 0 };
        s.mmio64 = AddrRange {
            base: (1 << 40) * (i as u64 + 1),
            len: 1 << 30,
        };
        desc.pci_segments.push(s);
    }
    let dsl = check("many", &desc);
    assert_has(
        &dsl,
        &[
            "Device (PCI1)",
            "Device (P010)",
            "Device (PFFF)",
            "Name (_SEG, 0x0FFF)",
            "Name (_BBN, One)",
        ],
    );
}

#[test]
fn iasl_accepts_a_bare_platform() {
    let mut desc = acpi::testutil::platform(1);
    desc.pci_segments.clear();
    desc.serial = None;
    let dsl = check("bare", &desc);
    assert!(!dsl.contains("COM1") && !dsl.contains("PNP0C02"), "{dsl}");
    assert_has(&dsl, &["Device (GED)", "Device (PWRB)", "_S5"]);
}
