//! The Generic Event Device (ACPI0013) in the DSDT: its interrupt, its event register and the
//! `_EVT` method that reads the register and dispatches each event bit.

use acpi_tables::aml::{
    self, Device, Equal, Field, FieldAccessType, FieldLockRule, FieldUpdateRule, If, Interrupt,
    Local, Method, MethodCall, Name, Notify, OpRegion, OpRegionSpace, Path, ResourceTemplate,
    Store,
};
use acpi_tables::Aml;

use crate::encode::{raw, register_fields, Raw};
use crate::hotplug;

/// The GED's registers, as the device (`devices::Ged`) decodes them and `\_SB.GED_` declares
/// them: the one definition both use. It lives in `acpi` for the reason given with
/// `hotplug::regs`.
///
/// One little-endian 32-bit register at offset 0, the pending events, bit per event. Reading
/// it whole (the AML field is DWord) clears it.
pub mod regs {
    /// The event register's offset.
    pub const EVENTS: u64 = 0;
    /// The event register's width in bytes.
    pub const WIDTH: u64 = 4;
    /// Size of the register block the DSDT declares.
    pub const LEN: u64 = 4;
    /// Power button pressed: `_EVT` notifies `\_SB.PWRB` with 0x80.
    pub const EVENT_POWER_BUTTON: u32 = 1 << 0;
    /// PCI hot plug: `_EVT` calls `\_SB.PHPR.PSCN`, which scans the hot plug controller
    /// segment by segment (hotplug.rs).
    pub const EVENT_PCI_HOTPLUG: u32 = 1 << 1;

    const _: () = assert!(EVENTS + WIDTH <= LEN);
}

/// The register by the name `_EVT` reads it with.
const FIELDS: [([u8; 4], u64); 1] = [(*b"GDAT", regs::EVENTS)];
/// Notify value for a power button: "button pressed" (ACPI 4.8.3.1.1.1).
const BUTTON_PRESSED: u64 = 0x80;

/// `If ((Local0 & event) == event) { body }`, Local0 holding the events read.
fn on_event(event: u32, body: &dyn Aml) -> Raw {
    let bit = u64::from(event);
    let test = aml::And::new(&aml::ZERO, &Local(0), &bit);
    let is_set = Equal::new(&test, &bit);
    raw(&If::new(&is_set, vec![body]))
}

/// `\_SB.GED_`: `_EVT` reads the event register (read-to-clear) and dispatches each set bit;
/// with `hotplug`, `EVENT_PCI_HOTPLUG` too.
pub(crate) fn device(mmio_base: u64, irq: u32, hotplug: bool) -> Raw {
    let hid = Name::new("_HID".into(), &"ACPI0013");
    let uid = Name::new("_UID".into(), &aml::ZERO);
    let int = Interrupt::new(true, true, false, false, irq);
    let crs = ResourceTemplate::new(vec![&int]);
    let crs = Name::new("_CRS".into(), &crs);
    let len = regs::LEN;
    let region = OpRegion::new("GDST".into(), OpRegionSpace::SystemMemory, &mmio_base, &len);
    let field = Field::new(
        "GDST".into(),
        FieldAccessType::DWord,
        FieldLockRule::NoLock,
        FieldUpdateRule::WriteAsZeroes,
        register_fields(&FIELDS, regs::WIDTH),
    );
    let gdat = Path::new("GDAT");
    let store = Store::new(&Local(0), &gdat);
    let pwrb = Path::new("\\_SB_.PWRB");
    let notify = Notify::new(&pwrb, &BUTTON_PRESSED);
    let on_power = on_event(regs::EVENT_POWER_BUTTON, &notify);
    let scan = MethodCall::new(hotplug::SCAN_METHOD.into(), vec![]);
    let on_hotplug = hotplug.then(|| on_event(regs::EVENT_PCI_HOTPLUG, &scan));
    let mut body: Vec<&dyn Aml> = vec![&store, &on_power];
    if let Some(h) = &on_hotplug {
        body.push(h);
    }
    let evt = Method::new("_EVT".into(), 1, true, body);
    raw(&Device::new(
        "GED_".into(),
        vec![&hid, &uid, &crs, &region, &field, &evt],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::decode;

    /// The AML declares the register where the device answers it, as wide as it is.
    #[test]
    fn the_aml_declares_the_device_registers() {
        let d = device(0xfed0_0000, 5, true).0;
        assert_eq!(decode::region_len(&d, b"GDST"), regs::LEN);
        assert_eq!(
            decode::fields(&d, b"GDST"),
            [("GDAT".to_string(), regs::EVENTS, regs::WIDTH)]
        );
    }
}
