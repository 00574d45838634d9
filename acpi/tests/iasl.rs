//! The tables ghvmm builds, checked by ACPICA's iasl (acpica-tools), the parser Linux shares
//! code with: each table is disassembled (`iasl -d`), and the resulting source recompiled,
//! which is where iasl reports semantic problems (e.g. a Device with both _HID and _ADR).
//! The rig does the same with the tables a Linux guest actually received.
//!
//! The RSDP is not a table iasl can load from a file (its "length" field is "PTR "); the unit
//! tests check it byte by byte. This iasl (20200925) decodes every SRAT structure we emit,
//! Generic Initiator Affinity included (its device handle as 16 raw bytes).

use std::collections::BTreeMap;
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
    check_tables(name, desc).remove("DSDT").unwrap()
}

/// Disassembles and recompiles every table of `desc`; returns each table's source.
fn check_tables(name: &str, desc: &PlatformDesc) -> BTreeMap<String, String> {
    let blob = acpi::build_tables(desc, 0xe0000, 0x100000).unwrap();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("iasl")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut sources = BTreeMap::new();
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
        sources.insert(sig.clone(), dsl);
        checked.push(sig);
    }
    let mut expected = vec!["XSDT", "FACP", "DSDT", "APIC", "MCFG"];
    if desc.numa.is_some() {
        expected.extend(["SRAT", "SLIT"]);
    }
    assert_eq!(checked, expected, "{name}");
    sources
}

fn assert_has(dsl: &str, needles: &[&str]) {
    for needle in needles {
        assert!(dsl.contains(needle), "DSDT lacks {needle:?}:\n{dsl}");
    }
}

/// How many times iasl printed `needle` (e.g. a structure's name) in `dsl`.
fn count(dsl: &str, needle: &str) -> usize {
    dsl.matches(needle).count()
}

/// iasl's data-table lines, `[offset]   Field Name : value`, without the offset column.
fn fields(dsl: &str) -> String {
    dsl.lines()
        .map(|l| l.split_once(']').map_or(l, |(_, rest)| rest).trim())
        .collect::<Vec<_>>()
        .join("\n")
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

/// The Grace-Hopper profile: two CPU nodes, the GPU's eight Generic Initiator nodes on segment
/// 1, the segment's _PXM and the GPU's _DSD.
#[test]
fn iasl_accepts_a_numa_platform() {
    let tables = check_tables("numa", &acpi::testutil::numa_platform(4));
    assert_has(
        &tables["DSDT"],
        &[
            "Device (PCI1)",
            "Name (_PXM, Zero)",
            "Device (GPU0)",
            "Name (_ADR, Zero)",
            "ToUUID (\"daffd814-6eba-4d8c-8a91-bc9bbf4aa301\") /* Device Properties for _DSD */",
            "\"nvidia,gpu-mem-pxm-start\", \n                            0x02",
            "\"nvidia,gpu-mem-pxm-count\", \n                            0x08",
        ],
    );
    let srat = fields(&tables["SRAT"]);
    assert_has(&srat, &["Revision : 03", "Table Revision : 00000001"]);
    assert_eq!(count(&srat, "[Processor Local APIC/SAPIC Affinity]"), 4);
    assert_eq!(count(&srat, "[Memory Affinity]"), 2);
    assert_eq!(count(&srat, "[Generic Initiator Affinity]"), 8);
    assert_eq!(count(&srat, "Device Handle Type : 01"), 8, "PCI");
    // Segment 1 (LE), bus 0, devfn 0.
    assert_eq!(
        count(
            &srat,
            "Device Handle : 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00"
        ),
        8
    );
    for domain in 2..10 {
        assert!(srat.contains(&format!(
            "Device Handle Type : 01\nProximity Domain : {domain:08X}"
        )));
    }
    let slit = fields(&tables["SLIT"]);
    assert_has(
        &slit,
        &[
            "Revision : 01",
            "Localities : 000000000000000A",
            "Locality   0 : 0A 14 1E 1E 1E 1E 1E 1E 1E 1E",
            "Locality   1 : 14 0A 1E 1E 1E 1E 1E 1E 1E 1E",
            "Locality   9 : 1E 1E 1E 1E 1E 1E 1E 1E 1E 0A",
        ],
    );
}

/// x2APIC affinity for APIC ids from 255 on, and a Generic Initiator whose devfn is not 0.
#[test]
fn iasl_decodes_x2apic_affinity_and_devfn() {
    let mut desc = acpi::testutil::numa_platform(300);
    let numa = desc.numa.as_mut().unwrap();
    numa.nodes[9].generic_initiator = Some(acpi::PciAddress {
        segment: 0,
        bus: 0,
        device: 3,
        function: 1,
    });
    let srat = fields(&check_tables("numa-x2apic", &desc)["SRAT"]);
    assert_eq!(count(&srat, "[Processor Local APIC/SAPIC Affinity]"), 255);
    assert_eq!(count(&srat, "[Processor Local x2APIC Affinity]"), 300 - 255);
    assert_has(
        &srat,
        &[
            "Proximity Domain : 00000001\nApic ID : 0000012B",
            "Device Handle : 00 00 00 19 00 00 00 00 00 00 00 00 00 00 00 00",
        ],
    );
}

/// PCI hot plug on three segments: segment 0 around its host bridge, GPU segment 1 whose
/// slot 0 is the GPU0 object with its `_DSD`, and the empty GPU segment 2.
#[test]
fn iasl_accepts_pci_hotplug() {
    let dsl = check("hotplug", &acpi::testutil::hotplug_platform(4));
    assert_has(
        &dsl,
        &[
            "Device (PHPR)",
            "Name (_HID, EisaId (\"PNP0A06\") /* Generic Container Device */)",
            "Name (_STA, 0x0B)",
            "Memory32Fixed (ReadWrite,\n                    0xFED01000,         // Address Base\n                    0x00000010,",
            "OperationRegion (PCST, SystemMemory, 0xFED01000, 0x10)",
            "Field (PCST, DWordAcc, NoLock, WriteAsZeros)\n            {\n                PCIU,   32, \n                PCID,   32, \n                B0EJ,   32, \n                PSEG,   32\n            }",
            "Mutex (BLCK, 0x00)",
            "Method (PCEJ, 2, Serialized)\n            {\n                Acquire (BLCK, 0xFFFF)\n                PSEG = Arg1\n                B0EJ = (One << Arg0)\n                Release (BLCK)\n            }",
            "Method (PSCN, 0, Serialized)\n            {\n                \\_SB.PCI0.PCNT ()\n                \\_SB.PCI1.PCNT ()\n                \\_SB.PCI2.PCNT ()\n            }",
            // GED bit 1.
            "If (((Local0 & 0x02) == 0x02))\n                {\n                    \\_SB.PHPR.PSCN ()\n                }",
            // Segment 0's first slot is device 1; PCNT reads both registers under the lock.
            "Device (S01)\n            {\n                Name (_ADR, 0x00010000)  // _ADR: Address\n                Name (_SUN, One)  // _SUN: Slot User Number\n                Method (_EJ0, 1, NotSerialized)  // _EJx: Eject Device, x=0-9\n                {\n                    \\_SB.PHPR.PCEJ (One, Zero)\n                }\n            }",
            "Method (PCNT, 0, NotSerialized)\n            {\n                Acquire (\\_SB.PHPR.BLCK, 0xFFFF)\n                \\_SB.PHPR.PSEG = Zero\n                Local0 = \\_SB.PHPR.PCIU\n                Local1 = \\_SB.PHPR.PCID\n                Release (\\_SB.PHPR.BLCK)\n                DVNT (Local0, One)\n                DVNT (Local1, 0x03)\n            }",
            // GPU0 is segment 1's slot 0, _DSD and all.
            "Device (GPU0)\n            {\n                Name (_ADR, Zero)  // _ADR: Address\n                Name (_SUN, 0x20)  // _SUN: Slot User Number\n                Method (_EJ0, 1, NotSerialized)  // _EJx: Eject Device, x=0-9\n                {\n                    \\_SB.PHPR.PCEJ (Zero, One)\n                }\n\n                Name (_DSD, Package (0x02)",
            "If ((Arg0 & One))\n                {\n                    Notify (GPU0, Arg1)\n                }",
            "If ((Arg0 & 0x80000000))\n                {\n                    Notify (S1F, Arg1)\n                }",
            "Name (_SUN, 0x5F)",
            "\\_SB.PHPR.PCEJ (0x1F, 0x02)",
        ],
    );
    assert_eq!(count(&dsl, "Method (_EJ0, 1"), 31 + 32 + 32);
    assert_eq!(count(&dsl, "Device (S00)"), 1, "segment 2 only");
    assert_eq!(count(&dsl, "Method (DVNT, 2"), 3);
}

/// Sixteen segments of 32 slots (a GPU0 on fifteen of them): the largest DSDT measured.
#[test]
fn iasl_accepts_sixteen_hotplug_segments() {
    let dsl = check("hotplug16", &acpi::testutil::hotplug_platform_with(4, 16));
    assert_has(&dsl, &["\\_SB.PCIF.PCNT ()", "Name (_SUN, 0x01FF)"]);
    assert_eq!(count(&dsl, "Method (_EJ0, 1"), 31 + 15 * 32);
    assert_eq!(count(&dsl, "Device (GPU0)"), 15);
}
