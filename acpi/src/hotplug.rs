//! ACPI PCI hot plug in the DSDT, the way Linux's acpiphp drives it on a root bus (as on
//! QEMU's i440fx and Cloud Hypervisor):
//!
//! ```text
//! \_SB.PHPR                    PNP0A06, the controller's registers (devices::PciHotplug)
//!     PCST, {PCIU PCID B0EJ PSEG}   OperationRegion (SystemMemory, 16 bytes) and DWord fields
//!     BLCK                     Mutex: PSEG and the register it selects are used as a pair
//!     PCEJ(slot, segment)      B0EJ = 1 << slot on that segment: the VMM learns the eject
//!     PSCN()                   \_SB.PCIx.PCNT() for every segment with slots
//! \_SB.PCIx                    a host bridge with hotplug_slots
//!     Sdd (or the function-0 object at device dd)   _ADR dd << 16, _SUN, _EJ0 -> PCEJ(dd, x)
//!     DVNT(bitmap, value)      Notify(Sdd, value) for each slot bit set
//!     PCNT()                   under BLCK: select x, read PCIU and PCID (read-to-clear);
//!                              then DVNT(added, 1) device check, DVNT(removed, 3) eject request
//! \_SB.GED_._EVT               EVENT_PCI_HOTPLUG (ged.rs): \_SB.PHPR.PSCN()
//! ```
//!
//! acpiphp makes a hot plug slot of every root-bus child with `_ADR` and `_EJ0`, and registers
//! it under `_SUN`, which must be unique in the VM (a second slot with the same number fails
//! to register), hence `_SUN` = segment * 32 + device.

use acpi_tables::aml::{
    self, Acquire, AddressSpace, AddressSpaceCacheable, Arg, Device, EISAName, Field,
    FieldAccessType, FieldLockRule, FieldUpdateRule, If, Local, Memory32Fixed, Method, MethodCall,
    Mutex, Name, Notify, OpRegion, OpRegionSpace, Path, Release, ResourceTemplate, ShiftLeft,
    Store,
};
use acpi_tables::Aml;

use crate::encode::{raw, register_fields, Raw};
use crate::names::bridge_name;
use crate::{AcpiError, PciHotplugDesc, PciSegmentDesc};

/// The controller's register block, as the device (`devices::PciHotplug`) decodes it and
/// `\_SB.PHPR` declares it: the one definition both use, so they cannot drift apart.
///
/// It lives here, with the AML, and `devices` takes it from here: `acpi` stays a leaf crate
/// (tables only: no bus, no eventfds) and `devices` gains a few constants. The other way
/// round, `acpi` would pull in `devices` and with it `pci`, vm-superio and vmm-sys-util.
///
/// Little-endian 32-bit registers, accessed whole (the AML field is DWord): a read-to-clear
/// register read in pieces would lose the bits of the other pieces. In PCIU, PCID and B0EJ,
/// bit n stands for slot n, device number n on the segment's root bus (`slot_bit`).
///
/// | offset | name | access |
/// |---|---|---|
/// | 0x0 | PCIU | read: bitmap of slots added on the selected segment since the last read; the read clears them |
/// | 0x4 | PCID | read: bitmap of slots whose removal was requested on the selected segment; the read clears them |
/// | 0x8 | B0EJ | write: bitmap of slots the guest ejected on the selected segment; reads 0 |
/// | 0xC | PSEG | read/write: the selected segment |
pub mod regs {
    /// Every register's width in bytes.
    pub const WIDTH: u64 = 4;
    /// Slots added on the selected segment (read-to-clear).
    pub const PCIU: u64 = 0x0;
    /// Slots whose removal was requested on the selected segment (read-to-clear).
    pub const PCID: u64 = 0x4;
    /// Slots the guest ejected on the selected segment (write-only).
    pub const B0EJ: u64 = 0x8;
    /// The selected segment.
    pub const PSEG: u64 = 0xc;
    /// Size of the register block.
    pub const LEN: u64 = 16;
    /// A PCI bus has 32 device numbers, one hot plug slot each: one bit of a register each.
    pub const SLOTS: u8 = 32;

    /// Slot `slot`'s bit in PCIU, PCID and B0EJ; `None` for a slot that does not exist.
    pub const fn slot_bit(slot: u8) -> Option<u32> {
        1u32.checked_shl(slot as u32)
    }

    const _: () = assert!(SLOTS as u32 == u32::BITS, "a bit per slot");
}

/// The registers by the names the methods use, in address order.
const FIELDS: [([u8; 4], u64); 4] = [
    (*b"PCIU", regs::PCIU),
    (*b"PCID", regs::PCID),
    (*b"B0EJ", regs::B0EJ),
    (*b"PSEG", regs::PSEG),
];
/// The method the GED's `_EVT` calls on `EVENT_PCI_HOTPLUG` (ged.rs).
pub(crate) const SCAN_METHOD: &str = "\\_SB_.PHPR.PSCN";
/// Names a host bridge with slots defines besides its slot objects.
pub(crate) const BRIDGE_METHODS: [&str; 2] = ["DVNT", "PCNT"];
/// Notify values (ACPI 5.6.6): the slot may hold a new device / the slot should be ejected.
const DEVICE_CHECK: u64 = 1;
const EJECT_REQUEST: u64 = 3;
/// Acquire's "wait forever": iasl warns about an Acquire whose timeout nothing checks.
const FOREVER: u16 = 0xffff;

/// The slot object's name for device number `device`: `S00_`..`S1F_` (iasl prints `S00`).
pub(crate) fn slot_name(device: u8) -> String {
    format!("S{device:02X}_")
}

/// Whether `device` is one of the segment's slots (false for device numbers above 31).
pub(crate) fn is_slot(slots: u32, device: u8) -> bool {
    regs::slot_bit(device).is_some_and(|bit| slots & bit != 0)
}

/// `Name(_SUN, segment * 32 + device)` and `Method(_EJ0, 1) { \_SB.PHPR.PCEJ(device, segment) }`:
/// what makes a root-bus device object a hot plug slot.
pub(crate) fn slot_members(segment: u16, device: u8) -> Raw {
    let sun = u64::from(segment) * u64::from(regs::SLOTS) + u64::from(device);
    let sun = Name::new("_SUN".into(), &sun);
    let (device, segment) = (u64::from(device), u64::from(segment));
    let pcej = MethodCall::new("\\_SB_.PHPR.PCEJ".into(), vec![&device, &segment]);
    let ej0 = Method::new("_EJ0".into(), 1, false, vec![&pcej]);
    let mut v = raw(&sun).0;
    ej0.to_aml_bytes(&mut v);
    Raw(v)
}

/// `Device(Sdd) { _ADR, _SUN, _EJ0 }` for an empty (or undescribed) slot.
pub(crate) fn slot_object(segment: u16, device: u8) -> Raw {
    let adr = u64::from(device) << 16;
    let adr = Name::new("_ADR".into(), &adr);
    let members = slot_members(segment, device);
    raw(&Device::new(
        slot_name(device).as_str().into(),
        vec![&adr, &members],
    ))
}

/// `DVNT` and `PCNT` of a host bridge whose slots are `targets`: (device number, name of its
/// slot object).
pub(crate) fn bridge_methods(segment: u16, targets: &[(u8, String)]) -> Raw {
    let bits: Vec<u64> = targets
        .iter()
        .map(|(d, _)| regs::slot_bit(*d).map_or(0, u64::from))
        .collect();
    let names: Vec<Path> = targets.iter().map(|(_, n)| n.as_str().into()).collect();
    let tests: Vec<aml::And> = bits
        .iter()
        .map(|b| aml::And::new(&aml::ZERO, &Arg(0), b))
        .collect();
    let notifies: Vec<Notify> = names.iter().map(|n| Notify::new(n, &Arg(1))).collect();
    let ifs: Vec<If> = tests
        .iter()
        .zip(&notifies)
        .map(|(t, n)| If::new(t, vec![n]))
        .collect();
    let dvnt = Method::new(
        "DVNT".into(),
        2,
        false,
        ifs.iter().map(|i| i as &dyn Aml).collect(),
    );

    let seg = u64::from(segment);
    let acquire = Acquire::new("\\_SB_.PHPR.BLCK".into(), FOREVER);
    let pseg = Path::new("\\_SB_.PHPR.PSEG");
    let select = Store::new(&pseg, &seg);
    let pciu = Path::new("\\_SB_.PHPR.PCIU");
    let pcid = Path::new("\\_SB_.PHPR.PCID");
    let up = Store::new(&Local(0), &pciu);
    let down = Store::new(&Local(1), &pcid);
    let release = Release::new("\\_SB_.PHPR.BLCK".into());
    // Notify after the Release: the notifications are queued anyway, and the guest's
    // handlers call _EJ0, which takes the lock.
    let check = MethodCall::new("DVNT".into(), vec![&Local(0), &DEVICE_CHECK]);
    let eject = MethodCall::new("DVNT".into(), vec![&Local(1), &EJECT_REQUEST]);
    let pcnt = Method::new(
        "PCNT".into(),
        0,
        false,
        vec![&acquire, &select, &up, &down, &release, &check, &eject],
    );
    let mut v = raw(&dvnt).0;
    pcnt.to_aml_bytes(&mut v);
    Raw(v)
}

/// `\_SB.PHPR`. Its _HID is PNP0A06 (a generic container), as QEMU's and Cloud Hypervisor's:
/// a guest needs some _HID to give the device a node, Linux's container driver claims it
/// without touching the registers (the DSDT's methods do), and iasl accepts it. `_STA` 0x0B:
/// present and working but not shown to the user (no "unknown device" on Windows).
pub(crate) fn controller(
    desc: &PciHotplugDesc,
    segments: &[PciSegmentDesc],
) -> Result<Raw, AcpiError> {
    let base = desc.mmio_base;
    let last = base
        .checked_add(regs::LEN - 1)
        .ok_or_else(|| AcpiError::BadHotplug(format!("registers at {base:#x} wrap around")))?;
    let resource = match (u32::try_from(base), u32::try_from(last)) {
        (Ok(b), Ok(_)) => raw(&Memory32Fixed::new(true, b, regs::LEN as u32)),
        _ => raw(&AddressSpace::new_memory(
            AddressSpaceCacheable::NotCacheable,
            true,
            base,
            last,
            None,
        )),
    };
    let crs = ResourceTemplate::new(vec![&resource]);
    let crs = Name::new("_CRS".into(), &crs);
    let hid = Name::new("_HID".into(), &EISAName::new("PNP0A06"));
    let uid = Name::new("_UID".into(), &aml::ZERO);
    let sta = Name::new("_STA".into(), &0x0bu64);
    let len = regs::LEN;
    let region = OpRegion::new("PCST".into(), OpRegionSpace::SystemMemory, &base, &len);
    let field = Field::new(
        "PCST".into(),
        FieldAccessType::DWord,
        FieldLockRule::NoLock,
        FieldUpdateRule::WriteAsZeroes,
        register_fields(&FIELDS, regs::WIDTH),
    );
    let mutex = Mutex::new("BLCK".into(), 0);

    let acquire = Acquire::new("BLCK".into(), FOREVER);
    let pseg = Path::new("PSEG");
    let select = Store::new(&pseg, &Arg(1));
    let b0ej = Path::new("B0EJ");
    let eject = ShiftLeft::new(&b0ej, &aml::ONE, &Arg(0));
    let release = Release::new("BLCK".into());
    let pcej = Method::new(
        "PCEJ".into(),
        2,
        true,
        vec![&acquire, &select, &eject, &release],
    );

    let mut paths = Vec::new();
    for seg in segments.iter().filter(|s| s.hotplug_slots != 0) {
        paths.push(format!("\\_SB_.{}.PCNT", bridge_name(seg.segment)?));
    }
    let calls: Vec<MethodCall> = paths
        .iter()
        .map(|p| MethodCall::new(p.as_str().into(), vec![]))
        .collect();
    let pscn = Method::new(
        "PSCN".into(),
        0,
        true,
        calls.iter().map(|c| c as &dyn Aml).collect(),
    );
    Ok(raw(&Device::new(
        "PHPR".into(),
        vec![
            &hid, &uid, &sta, &crs, &region, &field, &mutex, &pcej, &pscn,
        ],
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::decode;

    /// The AML declares each register where the device answers it, as wide as it is, under the
    /// name the methods use for it; the block is as long as the device's.
    #[test]
    fn the_aml_declares_the_device_registers() {
        let p = crate::testutil::hotplug_platform(4);
        let d = controller(p.pci_hotplug.as_ref().unwrap(), &p.pci_segments)
            .unwrap()
            .0;
        assert_eq!(decode::region_len(&d, b"PCST"), regs::LEN);
        let want = [
            ("PCIU", regs::PCIU),
            ("PCID", regs::PCID),
            ("B0EJ", regs::B0EJ),
            ("PSEG", regs::PSEG),
        ]
        .map(|(name, offset)| (name.to_string(), offset, regs::WIDTH));
        assert_eq!(decode::fields(&d, b"PCST"), want);
        let mut end = 0;
        for (_, offset, width) in want {
            assert!(offset >= end, "registers overlap");
            end = offset + width;
        }
        assert!(end <= regs::LEN);
        assert_eq!(regs::slot_bit(31), Some(1 << 31));
        assert_eq!(regs::slot_bit(regs::SLOTS), None);
    }
}
