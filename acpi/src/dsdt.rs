//! The DSDT: PCI host bridges, COM1, the power button and the GED that signals it, a
//! motherboard-resources device reserving ECAM, and the S5 sleep type.

use acpi_tables::aml::{
    self, AddressSpace, AddressSpaceCacheable, Device, EISAName, Equal, Field, FieldAccessType,
    FieldEntry, FieldLockRule, FieldUpdateRule, If, Interrupt, Local, Memory32Fixed, Method, Name,
    Notify, OpRegion, OpRegionSpace, Package, Path, ResourceTemplate, Scope, Store, IO,
};
use acpi_tables::{sdt::Sdt, Aml, AmlSink};

use crate::validate::{bad, bridge_name, ecam_range};
use crate::{AcpiError, PciSegmentDesc, PlatformDesc, OEM_ID, OEM_REVISION};

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
    Ok(raw(&Device::new(
        name.as_str().into(),
        vec![&hid, &cid, &segn, &uid, &bbn, &crs],
    )))
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
    let refs: Vec<&dyn Aml> = sb.iter().map(|r| r as &dyn Aml).collect();
    let scope = Scope::new("\\_SB_".into(), refs);
    let s5_type = 5u64;
    let s5 = Package::new(vec![&s5_type, &aml::ZERO, &aml::ZERO, &aml::ZERO]);
    let s5 = Name::new("_S5_".into(), &s5);

    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, *b"GHVMMDSD", OEM_REVISION);
    scope.to_aml_bytes(&mut dsdt);
    s5.to_aml_bytes(&mut dsdt);
    dsdt.update_checksum();
    Ok(dsdt.as_slice().to_vec())
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

    #[test]
    fn optional_parts_can_be_absent() {
        let mut p = platform(1);
        p.serial = None;
        p.pci_segments.clear();
        let d = build(&p).unwrap();
        assert!(!contains(&d, b"COM1") && !contains(&d, b"MRES") && !contains(&d, b"PCI0"));
        assert!(contains(&d, b"GED_"));
    }
}
