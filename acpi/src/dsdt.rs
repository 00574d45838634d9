//! The DSDT: PCI host bridges (with their NUMA node and the PCI functions that publish
//! device properties), COM1, the power button and the GED that signals it, a
//! motherboard-resources device reserving ECAM, and the S5 sleep type.

use acpi_tables::aml::{
    self, AddressSpace, AddressSpaceCacheable, Device, EISAName, Equal, Field, FieldAccessType,
    FieldEntry, FieldLockRule, FieldUpdateRule, If, Interrupt, Local, Memory32Fixed, Method, Name,
    Notify, OpRegion, OpRegionSpace, Package, Path, ResourceTemplate, Scope, Store, Uuid, IO,
};
use acpi_tables::{Aml, AmlSink};

use crate::tables::sdt;
use crate::validate::{aml_name, bad, bridge_name, ecam_range};
use crate::{AcpiError, PciFunctionDesc, PciSegmentDesc, PlatformDesc};

/// The ACPI Device Properties UUID: a `_DSD` package under it holds `{ key, value }` pairs,
/// which Linux reads with `device_property_read_*` (as DT properties).
const DEVICE_PROPERTIES_UUID: &str = "daffd814-6eba-4d8c-8a91-bc9bbf4aa301";

/// AML's PkgLength is 28 bits and also counts its own bytes and the scope's name;
/// acpi_tables silently truncates a longer one. (Unreachable with inputs of sane size.)
const MAX_SCOPE_CONTENT: usize = (1 << 28) - 16;

/// Already-serialised AML, so objects can be built one at a time and then nested (the
/// `aml` builders borrow their children, which makes deep trees awkward to build in place).
struct Raw(Vec<u8>);

impl Aml for Raw {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(&self.0);
    }
}

fn raw(aml: &dyn Aml) -> Raw {
    let mut v = Vec::new();
    aml.to_aml_bytes(&mut v);
    Raw(v)
}

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

/// `Device(name) { _ADR [_DSD] }` for a function on the host bridge's root bus.
fn pci_function(segment: u16, f: &PciFunctionDesc) -> Result<Raw, AcpiError> {
    // Validated already; checked again because `Path::new` panics on a bad name.
    if !aml_name(&f.name) {
        return Err(bad(segment, "a PCI function has a bad AML name"));
    }
    // _ADR: device in the high word, function in the low word.
    let adr = (u64::from(f.device) << 16) | u64::from(f.function);
    let adr = Name::new("_ADR".into(), &adr);
    let dsd = (!f.dsd.is_empty()).then(|| device_properties(&f.dsd));
    let mut children: Vec<&dyn Aml> = vec![&adr];
    if let Some(dsd) = &dsd {
        children.push(dsd);
    }
    Ok(raw(&Device::new(f.name.as_str().into(), children)))
}

fn host_bridge(seg: &PciSegmentDesc) -> Result<Raw, AcpiError> {
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
    let functions = seg
        .functions
        .iter()
        .map(|f| pci_function(seg.segment, f))
        .collect::<Result<Vec<Raw>, _>>()?;
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

/// GED: `_EVT` reads the event register (read-to-clear) and dispatches each set bit.
fn ged(mmio_base: u64, irq: u32) -> Raw {
    let hid = Name::new("_HID".into(), &"ACPI0013");
    let uid = Name::new("_UID".into(), &aml::ZERO);
    let int = Interrupt::new(true, true, false, false, irq);
    let crs = ResourceTemplate::new(vec![&int]);
    let crs = Name::new("_CRS".into(), &crs);
    let len = 4u64;
    let region = OpRegion::new("GDST".into(), OpRegionSpace::SystemMemory, &mmio_base, &len);
    let field = Field::new(
        "GDST".into(),
        FieldAccessType::DWord,
        FieldLockRule::NoLock,
        FieldUpdateRule::WriteAsZeroes,
        vec![FieldEntry::Named(*b"GDAT", 32)],
    );
    let gdat = Path::new("GDAT");
    let store = Store::new(&Local(0), &gdat);
    let one = 1u64;
    let bit0 = aml::And::new(&aml::ZERO, &Local(0), &one);
    let is_set = Equal::new(&bit0, &one);
    let pwrb = Path::new("\\_SB_.PWRB");
    let notify_val = 0x80u64;
    let notify = Notify::new(&pwrb, &notify_val);
    let on_power = If::new(&is_set, vec![&notify]);
    let evt = Method::new("_EVT".into(), 1, true, vec![&store, &on_power]);
    raw(&Device::new(
        "GED_".into(),
        vec![&hid, &uid, &crs, &region, &field, &evt],
    ))
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
    let mut sb: Vec<Raw> = Vec::new();
    for seg in &desc.pci_segments {
        sb.push(host_bridge(seg)?);
    }
    if let Some(s) = desc.serial {
        sb.push(com1(s.port, s.irq));
    }
    sb.push(power_button());
    sb.push(ged(desc.ged.mmio_base, desc.ged.irq));
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
