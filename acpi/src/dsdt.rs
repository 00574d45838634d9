//! The DSDT: PCI host bridges (with their NUMA node, the PCI functions that publish
//! device properties and the hot plug slots), COM1, the power button and the GED that signals
//! it (ged.rs), the PCI hot plug controller (hotplug.rs), a motherboard-resources device
//! reserving ECAM, and the S5 sleep type.

use acpi_tables::aml::{
    self, AddressSpace, AddressSpaceCacheable, Device, EISAName, Interrupt, Memory32Fixed, Name,
    Package, ResourceTemplate, Scope, Uuid, IO,
};
use acpi_tables::Aml;

use crate::encode::{raw, sdt, Raw};
use crate::names::{aml_name, bridge_name};
use crate::validate::{bad, ecam_range};
use crate::{ged, hotplug};
use crate::{AcpiError, PciFunctionDesc, PciSegmentDesc, PlatformDesc};

/// The ACPI Device Properties UUID: a `_DSD` package under it holds `{ key, value }` pairs,
/// which Linux reads with `device_property_read_*` (as DT properties).
const DEVICE_PROPERTIES_UUID: &str = "daffd814-6eba-4d8c-8a91-bc9bbf4aa301";

/// AML's PkgLength is 28 bits and also counts its own bytes and the scope's name;
/// acpi_tables silently truncates a longer one. (Unreachable with inputs of sane size.)
const MAX_SCOPE_CONTENT: usize = (1 << 28) - 16;

/// `Name(_DSD, Package { ToUUID(Device Properties), Package { { key, value }, ... } })`.
fn device_properties(properties: &[(String, u64)]) -> Name {
    let pairs: Vec<Raw> = properties
        .iter()
        .map(|(key, value)| raw(&Package::new(vec![key, value])))
        .collect();
    let refs: Vec<&dyn Aml> = pairs.iter().map(|r| r as &dyn Aml).collect();
    let pairs = Package::new(refs);
    let uuid = Uuid::new(DEVICE_PROPERTIES_UUID);
    Name::new("_DSD".into(), &Package::new(vec![&uuid, &pairs]))
}

/// `Device(name) { _ADR [_SUN _EJ0] [_DSD] }` for a function on the host bridge's root bus;
/// with `slot`, the function is also its device number's hot plug slot (one object per
/// `_ADR` under a bridge: with two, the guest could pair the function with either).
fn pci_function(segment: u16, f: &PciFunctionDesc, slot: bool) -> Result<Raw, AcpiError> {
    // Validated already; checked again because `Path::new` panics on a bad name.
    if !aml_name(&f.name) {
        return Err(bad(segment, "a PCI function has a bad AML name"));
    }
    // _ADR: device in the high word, function in the low word.
    let adr = (u64::from(f.device) << 16) | u64::from(f.function);
    let adr = Name::new("_ADR".into(), &adr);
    let dsd = (!f.dsd.is_empty()).then(|| device_properties(&f.dsd));
    let slot = slot.then(|| hotplug::slot_members(segment, f.device));
    let mut children: Vec<&dyn Aml> = vec![&adr];
    if let Some(slot) = &slot {
        children.push(slot);
    }
    if let Some(dsd) = &dsd {
        children.push(dsd);
    }
    Ok(raw(&Device::new(f.name.as_str().into(), children)))
}

/// A host bridge; with `hotplug`, its `hotplug_slots` become slot objects and it gets the
/// methods that notify them (hotplug.rs).
fn host_bridge(seg: &PciSegmentDesc, hotplug: bool) -> Result<Raw, AcpiError> {
    if seg.bus_end < seg.bus_start {
        return Err(bad(seg.segment, "bus_end is below bus_start"));
    }
    let mut resources: Vec<Raw> = vec![raw(&AddressSpace::new_bus_number(
        u16::from(seg.bus_start),
        u16::from(seg.bus_end),
    ))];
    if seg.io {
        resources.push(raw(&IO::new(0xcf8, 0xcf8, 1, 8)));
        resources.push(raw(&AddressSpace::new_io(0x0000u16, 0x0cf7, None)));
        resources.push(raw(&AddressSpace::new_io(0x0d00u16, 0xffff, None)));
    }
    if seg.mmio32.len > 0 {
        let (first, last) = seg
            .mmio32
            .last()
            .and_then(|l| Some((u32::try_from(seg.mmio32.base).ok()?, u32::try_from(l).ok()?)))
            .ok_or_else(|| bad(seg.segment, "32-bit window does not fit below 4 GiB"))?;
        resources.push(raw(&AddressSpace::new_memory(
            AddressSpaceCacheable::NotCacheable,
            true,
            first,
            last,
            None,
        )));
    }
    if seg.mmio64.len > 0 {
        let last = seg
            .mmio64
            .last()
            .ok_or_else(|| bad(seg.segment, "64-bit window wraps around"))?;
        resources.push(raw(&AddressSpace::new_memory(
            AddressSpaceCacheable::Cacheable,
            true,
            seg.mmio64.base,
            last,
            None,
        )));
    }
    let refs: Vec<&dyn Aml> = resources.iter().map(|r| r as &dyn Aml).collect();
    let crs = ResourceTemplate::new(refs);
    let name = bridge_name(seg.segment)?;
    let hid = Name::new("_HID".into(), &EISAName::new("PNP0A08"));
    let cid = Name::new("_CID".into(), &EISAName::new("PNP0A03"));
    let seg_id = u64::from(seg.segment);
    let segn = Name::new("_SEG".into(), &seg_id);
    let uid = Name::new("_UID".into(), &seg_id);
    let bbn_v = u64::from(seg.bus_start);
    let bbn = Name::new("_BBN".into(), &bbn_v);
    let crs = Name::new("_CRS".into(), &crs);
    let pxm = seg
        .proximity_domain
        .map(|d| Name::new("_PXM".into(), &u64::from(d)));
    let slots = if hotplug { seg.hotplug_slots } else { 0 };
    let is_slot = |f: &PciFunctionDesc| f.function == 0 && hotplug::is_slot(slots, f.device);
    let mut functions = seg
        .functions
        .iter()
        .map(|f| pci_function(seg.segment, f, is_slot(f)))
        .collect::<Result<Vec<Raw>, _>>()?;
    if slots != 0 {
        // Each slot's object: the function 0 described there, or a bare slot object.
        let mut targets = Vec::new();
        for device in (0..hotplug::regs::SLOTS).filter(|d| hotplug::is_slot(slots, *d)) {
            match seg
                .functions
                .iter()
                .find(|f| f.device == device && is_slot(f))
            {
                Some(f) => targets.push((device, f.name.clone())),
                None => {
                    functions.push(hotplug::slot_object(seg.segment, device));
                    targets.push((device, hotplug::slot_name(device)));
                }
            }
        }
        functions.push(hotplug::bridge_methods(seg.segment, &targets));
    }
    let mut children: Vec<&dyn Aml> = vec![&hid, &cid, &segn, &uid, &bbn];
    if let Some(pxm) = &pxm {
        children.push(pxm);
    }
    children.push(&crs);
    children.extend(functions.iter().map(|f| f as &dyn Aml));
    Ok(raw(&Device::new(name.as_str().into(), children)))
}

fn com1(port: u16, irq: u32) -> Raw {
    let hid = Name::new("_HID".into(), &EISAName::new("PNP0501"));
    let uid = Name::new("_UID".into(), &aml::ZERO);
    let io = IO::new(port, port, 1, 8);
    let int = Interrupt::new(true, true, false, false, irq);
    let crs = ResourceTemplate::new(vec![&io, &int]);
    let crs = Name::new("_CRS".into(), &crs);
    raw(&Device::new("COM1".into(), vec![&hid, &uid, &crs]))
}

fn power_button() -> Raw {
    let hid = Name::new("_HID".into(), &EISAName::new("PNP0C0C"));
    let uid = Name::new("_UID".into(), &aml::ZERO);
    raw(&Device::new("PWRB".into(), vec![&hid, &uid]))
}

/// Reserves the ECAM ranges so the guest's PCI core trusts MCFG (Linux checks for this).
fn motherboard_resources(segments: &[PciSegmentDesc]) -> Result<Raw, AcpiError> {
    let mut resources: Vec<Raw> = Vec::new();
    for seg in segments {
        let (base, len) = ecam_range(seg)?;
        let last = base
            .checked_add(len - 1)
            .ok_or_else(|| bad(seg.segment, "ECAM range wraps around"))?;
        match (u32::try_from(base), u32::try_from(len), u32::try_from(last)) {
            (Ok(b), Ok(l), Ok(_)) => resources.push(raw(&Memory32Fixed::new(true, b, l))),
            _ => resources.push(raw(&AddressSpace::new_memory(
                AddressSpaceCacheable::NotCacheable,
                true,
                base,
                last,
                None,
            ))),
        }
    }
    let refs: Vec<&dyn Aml> = resources.iter().map(|r| r as &dyn Aml).collect();
    let crs = ResourceTemplate::new(refs);
    let crs = Name::new("_CRS".into(), &crs);
    let hid = Name::new("_HID".into(), &EISAName::new("PNP0C02"));
    let uid = Name::new("_UID".into(), &aml::ZERO);
    Ok(raw(&Device::new("MRES".into(), vec![&hid, &uid, &crs])))
}

pub fn build(desc: &PlatformDesc) -> Result<Vec<u8>, AcpiError> {
    let hotplug = desc.pci_hotplug.is_some();
    let mut sb: Vec<Raw> = Vec::new();
    for seg in &desc.pci_segments {
        sb.push(host_bridge(seg, hotplug)?);
    }
    if let Some(s) = desc.serial {
        sb.push(com1(s.port, s.irq));
    }
    sb.push(power_button());
    sb.push(ged::device(desc.ged.mmio_base, desc.ged.irq, hotplug));
    if let Some(h) = &desc.pci_hotplug {
        sb.push(hotplug::controller(h, &desc.pci_segments)?);
    }
    if !desc.pci_segments.is_empty() {
        sb.push(motherboard_resources(&desc.pci_segments)?);
    }
    let sb_len: usize = sb.iter().map(|r| r.0.len()).sum();
    if sb_len > MAX_SCOPE_CONTENT {
        return Err(AcpiError::TableTooLarge {
            signature: "DSDT".into(),
            size: sb_len,
        });
    }
    let refs: Vec<&dyn Aml> = sb.iter().map(|r| r as &dyn Aml).collect();
    let scope = Scope::new("\\_SB_".into(), refs);
    let s5_type = 5u64;
    let s5 = Package::new(vec![&s5_type, &aml::ZERO, &aml::ZERO, &aml::ZERO]);
    let s5 = Name::new("_S5_".into(), &s5);

    let mut body = Vec::new();
    scope.to_aml_bytes(&mut body);
    s5.to_aml_bytes(&mut body);
    sdt(*b"DSDT", 6, *b"GHVMMDSD", &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::platform;

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn names_every_device_once() {
        let mut p = platform(1);
        let mut s = p.pci_segments[0].clone();
        s.segment = 0x10;
        s.ecam_base = 0xe100_0000;
        s.io = false;
        p.pci_segments.push(s);
        let d = build(&p).unwrap();
        assert_eq!(
            u32::from_le_bytes([d[4], d[5], d[6], d[7]]) as usize,
            d.len()
        );
        assert_eq!(d.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        for name in [
            &b"PCI0"[..],
            b"P010",
            b"COM1",
            b"PWRB",
            b"GED_",
            b"MRES",
            b"_S5_",
            b"_EVT",
        ] {
            assert!(contains(&d, name), "{}", String::from_utf8_lossy(name));
        }
        assert!(!contains(&d, b"_ADR"), "a device has either _HID or _ADR");
    }

    /// `Name(_PXM, 1)` and `Device(GPU0) { Name(_ADR, 0x30001) Name(_DSD, ...) }` in the GPU
    /// segment's bridge; iasl (tests/iasl.rs) checks the same as ASL.
    #[test]
    fn numa_segment_has_pxm_and_function_devices() {
        let mut p = crate::testutil::numa_platform(2);
        let seg = &mut p.pci_segments[1];
        seg.proximity_domain = Some(1);
        seg.functions[0].device = 3;
        seg.functions[0].function = 1;
        seg.functions.push(PciFunctionDesc {
            device: 4,
            function: 0,
            name: "NIC0".into(),
            dsd: vec![],
        });
        let d = build(&p).unwrap();
        assert_eq!(d.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        let pci1 = d.windows(4).position(|w| w == b"PCI1").unwrap();
        let gpu0 = d.windows(4).position(|w| w == b"GPU0").unwrap();
        let nic0 = d.windows(4).position(|w| w == b"NIC0").unwrap();
        assert!(pci1 < gpu0 && gpu0 < nic0);
        // NameOp "_PXM" One; NameOp "_ADR" DWordPrefix 0x00030001; NameOp "_ADR" (4 << 16).
        assert!(contains(&d[pci1..gpu0], b"\x08_PXM\x01"));
        assert!(contains(&d[gpu0..], b"\x08_ADR\x0c\x01\x00\x03\x00"));
        assert!(contains(&d[nic0..], b"\x08_ADR\x0c\x00\x00\x04\x00"));
        // The Device Properties UUID in its mixed-endian buffer form.
        let uuid = [
            0x14, 0xd8, 0xff, 0xda, 0xba, 0x6e, 0x8c, 0x4d, 0x8a, 0x91, 0xbc, 0x9b, 0xbf, 0x4a,
            0xa3, 0x01,
        ];
        assert!(contains(&d[gpu0..nic0], b"_DSD"));
        assert!(contains(&d[gpu0..nic0], &uuid));
        // { "nvidia,gpu-mem-pxm-start", 2 }: StringPrefix ... NUL, BytePrefix 2.
        assert!(contains(
            &d[gpu0..nic0],
            b"\x0dnvidia,gpu-mem-pxm-start\x00\x0a\x02"
        ));
        assert!(contains(
            &d[gpu0..nic0],
            b"\x0dnvidia,gpu-mem-pxm-count\x00\x0a\x08"
        ));
        assert!(!contains(&d[nic0..], b"_DSD"), "no properties, no _DSD");
        assert!(!contains(&d[..pci1], b"_PXM"), "segment 0 has no _PXM");
    }

    /// The DSDTs in `src/testdata` were recorded before PCI hot plug existed.
    #[test]
    fn without_hotplug_the_dsdt_is_unchanged() {
        let recorded: [(&str, &[u8]); 4] = [
            ("typical", include_bytes!("testdata/typical.dsdt")),
            ("numa", include_bytes!("testdata/numa.dsdt")),
            ("functions", include_bytes!("testdata/functions.dsdt")),
            ("bare", include_bytes!("testdata/bare.dsdt")),
        ];
        let platforms = crate::testutil::recorded_platforms();
        assert_eq!(platforms.len(), recorded.len());
        for ((name, p), (file, bytes)) in platforms.iter().zip(recorded) {
            assert_eq!(*name, file);
            assert!(p.pci_hotplug.is_none());
            assert!(build(p).unwrap() == bytes, "{name}: the DSDT changed");
        }
    }

    /// An integer as `acpi_tables` encodes it (Zero, One, Byte/Word/DWord/QWord prefix).
    fn integer(d: &[u8]) -> Option<u64> {
        let le = |n: usize| {
            d.get(1..1 + n)
                .map(|b| b.iter().rev().fold(0u64, |a, x| a << 8 | u64::from(*x)))
        };
        match d.first()? {
            0 => Some(0),
            1 => Some(1),
            0x0a => le(1),
            0x0b => le(2),
            0x0c => le(4),
            0x0e => le(8),
            _ => None,
        }
    }

    /// The values of every `Name(name, <integer>)` in `d`, in order.
    fn names(d: &[u8], name: &[u8; 4]) -> Vec<u64> {
        let needle = [&[0x08][..], name].concat();
        (0..d.len())
            .filter(|&i| d[i..].starts_with(&needle))
            .map(|i| integer(&d[i + 5..]).unwrap())
            .collect()
    }

    fn count(hay: &[u8], needle: &[u8]) -> usize {
        hay.windows(needle.len()).filter(|w| *w == needle).count()
    }

    /// `\_SB_.a.b` as a root-relative AML NamePath.
    fn path(a: &[u8; 4], b: &[u8; 4]) -> Vec<u8> {
        [&b"\\\x2f\x03_SB_"[..], a, b].concat()
    }

    /// The bytes of each host bridge of `hotplug_platform(4)`: PCI0, PCI1, PCI2.
    fn bridges(d: &[u8]) -> [&[u8]; 3] {
        let at = |n: &[u8]| d.windows(4).position(|w| w == n).unwrap();
        let (p0, p1, p2, com1) = (at(b"PCI0"), at(b"PCI1"), at(b"PCI2"), at(b"COM1"));
        [&d[p0..p1], &d[p1..p2], &d[p2..com1]]
    }

    #[test]
    fn hotplug_slots_have_adr_sun_and_ej0() {
        let d = build(&crate::testutil::hotplug_platform(4)).unwrap();
        assert_eq!(d.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        let [pci0, pci1, pci2] = bridges(&d);
        // Segment 0: slots 1-31 around the host bridge at 00.0.
        assert!(!contains(pci0, b"S00_"));
        assert_eq!(
            names(pci0, b"_ADR"),
            (1..32).map(|s| s << 16).collect::<Vec<_>>()
        );
        assert_eq!(names(pci0, b"_SUN"), (1..32).collect::<Vec<_>>());
        // Segment 1: GPU0 is slot 0's object, with its _DSD; no second object at _ADR 0.
        assert!(!contains(pci1, b"S00_"));
        let gpu0 = pci1.windows(4).position(|w| w == b"GPU0").unwrap();
        let s01 = pci1.windows(4).position(|w| w == b"S01_").unwrap();
        assert!(contains(&pci1[gpu0..s01], b"\x08_SUN\x0a\x20"));
        assert!(contains(&pci1[gpu0..s01], b"_EJ0"));
        assert!(contains(&pci1[gpu0..s01], b"_DSD"));
        for (bridge, segment) in [(pci1, 1u64), (pci2, 2)] {
            assert_eq!(
                names(bridge, b"_ADR"),
                (0..32).map(|s| s << 16).collect::<Vec<_>>()
            );
            let suns: Vec<u64> = (0..32).map(|s| segment * 32 + s).collect();
            assert_eq!(names(bridge, b"_SUN"), suns, "unique in the VM");
        }
        // _EJ0 of S05 on segment 2: \_SB_.PHPR.PCEJ(5, 2).
        let s05 = pci2.windows(4).position(|w| w == b"S05_").unwrap();
        let call = [path(b"PHPR", b"PCEJ"), b"\x0a\x05\x0a\x02".to_vec()].concat();
        assert!(pci2[s05..].starts_with(b"S05_\x08_ADR"));
        assert!(contains(&pci2[s05..s05 + 64], &call));
        assert_eq!(count(&d, b"_EJ0"), 31 + 32 + 32);
    }

    #[test]
    fn scans_notify_every_slot_object() {
        let d = build(&crate::testutil::hotplug_platform(4)).unwrap();
        for bridge in bridges(&d) {
            assert!(contains(bridge, b"DVNT\x02") && contains(bridge, b"PCNT\x00"));
            // PCNT: DVNT(Local0, 1) then DVNT(Local1, 3).
            assert!(contains(bridge, b"DVNT\x60\x01DVNT\x61\x0a\x03"));
        }
        let [pci0, pci1, _] = bridges(&d);
        // If (And(Arg0, 1 << slot)) { Notify(object, Arg1) }
        assert!(contains(pci0, b"\x7b\x68\x0a\x02\x00\x86S01_\x69"));
        assert!(contains(
            pci0,
            b"\x7b\x68\x0c\x00\x00\x00\x80\x00\x86S1F_\x69"
        ));
        assert!(!contains(pci0, b"\x86S00_"));
        assert!(contains(pci1, b"\x7b\x68\x01\x00\x86GPU0\x69"));
        // PCNT selects its segment: Store(2, \_SB_.PHPR.PSEG)
        let [.., pci2] = bridges(&d);
        let select = [&b"\x70\x0a\x02"[..], &path(b"PHPR", b"PSEG")].concat();
        assert!(contains(pci2, &select));
        // PSCN calls every bridge's PCNT; GED bit 1 calls PSCN.
        let phpr = d.windows(9).position(|w| w == b"PHPR\x08_HID").unwrap();
        for bridge in [b"PCI0", b"PCI1", b"PCI2"] {
            assert!(contains(&d[phpr..], &path(bridge, b"PCNT")));
        }
        let ged = d.windows(4).position(|w| w == b"GED_").unwrap();
        assert!(ged < phpr);
        let evt = &d[ged..phpr];
        let scan = [
            &b"\x93\x7b\x60\x0a\x02\x00\x0a\x02"[..],
            &path(b"PHPR", b"PSCN"),
        ]
        .concat();
        assert!(contains(evt, &scan), "If ((Local0 & 2) == 2) {{ PSCN() }}");
        for name in [
            b"PCIU", b"PCID", b"B0EJ", b"PSEG", b"BLCK", b"PCEJ", b"PSCN",
        ] {
            assert!(contains(&d[phpr..], name));
        }
    }

    #[test]
    fn segments_without_slots_are_not_scanned() {
        let mut p = crate::testutil::hotplug_platform(4);
        p.pci_segments[2].hotplug_slots = 0;
        p.pci_segments[0].hotplug_slots = 1 << 3;
        let d = build(&p).unwrap();
        let [pci0, pci1, pci2] = bridges(&d);
        assert!(!contains(pci2, b"PCNT") && !contains(pci2, b"_EJ0"));
        assert!(!contains(&d, &path(b"PCI2", b"PCNT")));
        assert!(contains(&d, &path(b"PCI1", b"PCNT")));
        assert_eq!(names(pci0, b"_SUN"), [3]);
        assert_eq!(count(pci1, b"_EJ0"), 32);
    }

    /// A function that is not function 0 of a slot keeps its own object next to the slot's.
    #[test]
    fn only_function_0_becomes_the_slot() {
        let mut p = crate::testutil::hotplug_platform(4);
        let seg = &mut p.pci_segments[1];
        seg.functions[0].function = 1;
        let d = build(&p).unwrap();
        let [_, pci1, _] = bridges(&d);
        let gpu0 = pci1.windows(4).position(|w| w == b"GPU0").unwrap();
        let s00 = pci1.windows(4).position(|w| w == b"S00_").unwrap();
        assert!(!contains(&pci1[gpu0..s00], b"_EJ0") && !contains(&pci1[gpu0..s00], b"_SUN"));
        assert_eq!(names(&pci1[gpu0..s00], b"_ADR"), [1]);
        assert!(pci1[s00..].starts_with(b"S00_\x08_ADR\x00\x08_SUN\x0a\x20"));
        assert!(contains(pci1, b"\x86S00_\x69"));
        assert!(!contains(pci1, b"\x86GPU0"));
    }

    #[test]
    fn the_controller_claims_its_registers() {
        let mut p = crate::testutil::hotplug_platform(4);
        let d = build(&p).unwrap();
        let phpr = d.windows(9).position(|w| w == b"PHPR\x08_HID").unwrap();
        // Memory32Fixed(ReadWrite, base, 16) and OperationRegion(PCST, SystemMemory, base, 16).
        assert!(contains(
            &d[phpr..],
            b"\x86\x09\x00\x01\x00\x10\xd0\xfe\x10\x00\x00\x00"
        ));
        assert!(contains(
            &d[phpr..],
            b"\x5b\x80PCST\x00\x0c\x00\x10\xd0\xfe\x0a\x10"
        ));
        p.pci_hotplug = Some(crate::PciHotplugDesc { mmio_base: 1 << 44 });
        let d = build(&p).unwrap();
        let phpr = d.windows(9).position(|w| w == b"PHPR\x08_HID").unwrap();
        assert!(contains(&d[phpr..], b"\x8a\x2b\x00"), "QWordMemory");
        assert!(contains(
            &d[phpr..],
            b"PCST\x00\x0e\x00\x00\x00\x00\x00\x10\x00\x00"
        ));
    }

    #[test]
    fn optional_parts_can_be_absent() {
        let mut p = platform(1);
        p.serial = None;
        p.pci_segments.clear();
        let d = build(&p).unwrap();
        assert!(!contains(&d, b"COM1") && !contains(&d, b"MRES") && !contains(&d, b"PCI0"));
        assert!(contains(&d, b"GED_"));
        let d = build(&platform(1)).unwrap();
        assert!(!contains(&d, b"_PXM") && !contains(&d, b"_ADR") && !contains(&d, b"_DSD"));
    }
}
