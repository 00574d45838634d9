//! Configuration space of a passed-through function as the guest sees it.
//!
//! Most registers go straight to the device (VFIO's config region). ghvmm owns:
//! - the BAR registers: emulated from the BAR layouts (sizing, relocation, 64-bit pairs, the
//!   device's prefetchable bits), because guest addresses are ghvmm's to assign;
//! - the expansion ROM BAR: hidden (reads 0), the guest never runs option ROMs here;
//! - the interrupt pin: 0, as ghvmm delivers MSI/MSI-X only (INTx is not offered);
//! - the capability list: only capabilities ghvmm can support are linked (power management,
//!   MSI, PCI Express, MSI-X); the others are skipped by rewriting the "next" pointers;
//! - MSI and MSI-X: emulated (`interrupts.rs`), their programming never reaches the device;
//! - the extended configuration space (0x100 and up): hidden, it reads 0.
//!
//! The command register is written to both the device (it must decode for its mmaps to work)
//! and the emulated copy that tracks which BAR mappings are live.

pub use super::capability::{Capability, DeviceConfig, CAP_MSI, CAP_MSIX, CAP_PCIE, CAP_PM};
use super::interrupts::SharedInterrupts;
use super::msi::MsiState;
use super::placement::BarState;
use crate::config::{
    extract, merge, BarKind, BarSpec, ConfigSpace, BAR0_OFFSET, CAP_PTR_OFFSET, NUM_BARS, REG_BYTES,
};
use crate::device::PciDevice;

const EXPOSED_CAPS: [u8; 4] = [CAP_PM, CAP_MSI, CAP_PCIE, CAP_MSIX];

const COMMAND_REG: usize = 1;
const STATUS_CAP_LIST: u32 = 1 << 20;
const BAR0_REG: usize = (BAR0_OFFSET / REG_BYTES) as usize;
const ROM_REG: usize = 12;
const CAP_PTR_REG: usize = (CAP_PTR_OFFSET / REG_BYTES) as usize;
const INTERRUPT_REG: usize = 15;
const STANDARD_REGS: usize = 64;
/// A capability chain longer than this is a loop or garbage.
const MAX_CAPS: usize = 48;

pub struct PassthroughConfig {
    dev: Box<dyn DeviceConfig>,
    emulated: ConfigSpace,
    caps: Vec<Capability>,
    interrupts: SharedInterrupts,
}

fn read_u32(dev: &dyn DeviceConfig, offset: u64) -> u32 {
    let mut b = [0xffu8; 4];
    if dev.read(offset, &mut b).is_err() {
        return 0xffff_ffff;
    }
    u32::from_le_bytes(b)
}

/// Walks the device's capability list and keeps the ones ghvmm exposes, relinked.
pub fn exposed_capabilities(dev: &dyn DeviceConfig) -> Vec<Capability> {
    let status = read_u32(dev, 4);
    if status & STATUS_CAP_LIST == 0 {
        return Vec::new();
    }
    let mut found = Vec::new();
    let mut ptr = (read_u32(dev, CAP_PTR_OFFSET) & 0xfc) as u8;
    while ptr >= 0x40 && found.len() < MAX_CAPS {
        let header = read_u32(dev, u64::from(ptr));
        let id = header as u8;
        if found.iter().any(|c: &Capability| c.offset == ptr) {
            break; // a loop
        }
        found.push(Capability {
            offset: ptr,
            id,
            next: 0,
        });
        ptr = ((header >> 8) as u8) & 0xfc;
    }
    // Only the first capability of each id, and only one whose registers ghvmm answers itself
    // (the header it relinks; all of MSI and MSI-X) lie inside the standard space and clear of
    // every capability kept before: a device that overlaps them or repeats one would otherwise
    // have its header shadowed by emulated registers, or MSI programmed on the device itself.
    let mut kept: Vec<Capability> = Vec::new();
    let mut owned: Vec<(u32, u32)> = Vec::new();
    for c in found {
        if !EXPOSED_CAPS.contains(&c.id) || kept.iter().any(|k| k.id == c.id) {
            continue;
        }
        let start = u32::from(c.offset);
        let len = match c.id {
            CAP_MSI => {
                MsiState::new((read_u32(dev, u64::from(c.offset)) >> 16) as u16).size() as u32
            }
            CAP_MSIX => 12,
            _ => 4,
        };
        let end = start + len;
        if end > STANDARD_REGS as u32 * 4 || owned.iter().any(|&(s, e)| start < e && s < end) {
            continue;
        }
        owned.push((start, end));
        kept.push(c);
    }
    for i in 0..kept.len() {
        kept[i].next = kept.get(i + 1).map_or(0, |c| c.offset);
    }
    kept
}

/// `caps` without an MSI or MSI-X capability that `interrupts` does not emulate (hidden
/// because its table is misplaced, or unreadable), relinked: listed but not emulated, the
/// guest's programming would reach nothing.
fn emulated_only(caps: Vec<Capability>, interrupts: &SharedInterrupts) -> Vec<Capability> {
    let (msi, msix) = {
        let i = interrupts.lock();
        (i.caps().msi().is_some(), i.caps().msix().is_some())
    };
    let mut kept: Vec<Capability> = caps
        .into_iter()
        .filter(|c| match c.id {
            CAP_MSI => msi,
            CAP_MSIX => msix,
            _ => true,
        })
        .collect();
    for i in 0..kept.len() {
        kept[i].next = kept.get(i + 1).map_or(0, |c| c.offset);
    }
    kept
}

impl PassthroughConfig {
    /// `bars`: the guest BARs (index, spec, initial guest address), from the BAR layouts;
    /// `interrupts`: the emulated MSI/MSI-X capabilities (shared with the BAR trap that
    /// answers the MSI-X table).
    pub fn new(
        dev: Box<dyn DeviceConfig>,
        bars: &[(usize, BarSpec, u64)],
        interrupts: SharedInterrupts,
    ) -> Result<Self, crate::config::BarError> {
        let mut emulated = ConfigSpace::new();
        for &(index, spec, addr) in bars {
            emulated.add_bar(index, spec, addr)?;
        }
        // Like firmware, hand the guest a device whose assigned BARs already decode; the
        // guest may turn decoding off (and ghvmm then unmaps the BARs) and on again.
        let mut decode = 0u16;
        for &(_, spec, _) in bars {
            decode |= if spec.kind == BarKind::Io {
                crate::config::COMMAND_IO as u16
            } else {
                crate::config::COMMAND_MEMORY as u16
            };
        }
        emulated.write(COMMAND_REG, 0, &decode.to_le_bytes());
        let caps = emulated_only(exposed_capabilities(dev.as_ref()), &interrupts);
        Ok(PassthroughConfig {
            dev,
            emulated,
            caps,
            interrupts,
        })
    }

    /// Which BARs should decode now, and where: `(index, spec, guest address)` for each BAR
    /// whose address space (memory or I/O) is enabled in the guest's command register.
    pub fn decoding_bars(&self) -> Vec<(usize, BarSpec, u64)> {
        self.bar_states()
            .into_iter()
            .filter(|(_, _, state)| state.decoding)
            .map(|(i, spec, state)| (i, spec, state.live))
            .collect()
    }

    /// Every BAR's state for [`super::placement::placement`]: `(index, spec, state)`.
    pub fn bar_states(&self) -> Vec<(usize, BarSpec, BarState)> {
        (0..NUM_BARS)
            .filter_map(|i| {
                let (spec, live) = self.emulated.bar(i)?;
                let state = BarState {
                    decoding: self.emulated.bar_decoding(i),
                    live,
                    register: self.emulated.bar_register(i),
                };
                Some((i, spec, state))
            })
            .collect()
    }

    pub fn capabilities(&self) -> &[Capability] {
        &self.caps
    }

    pub fn capability(&self, id: u8) -> Option<Capability> {
        self.caps.iter().copied().find(|c| c.id == id)
    }

    /// The guest's current address of BAR `index`.
    pub fn bar(&self, index: usize) -> Option<(BarSpec, u64)> {
        self.emulated.bar(index)
    }

    pub fn memory_enabled(&self) -> bool {
        self.emulated.command() & crate::config::COMMAND_MEMORY != 0
    }

    fn read_reg(&mut self, reg: usize) -> u32 {
        let dev = self.dev.as_ref();
        match reg {
            r if (BAR0_REG..BAR0_REG + NUM_BARS).contains(&r) => self.emulated.read(r),
            ROM_REG => 0,
            r if r >= STANDARD_REGS => 0,
            COMMAND_REG => {
                // The decode bits are the guest's (emulated); everything else is the device's.
                let decode = crate::config::COMMAND_MEMORY | crate::config::COMMAND_IO;
                let v = (read_u32(dev, 4) & !decode) | (self.emulated.command() & decode);
                if self.caps.is_empty() {
                    v & !STATUS_CAP_LIST
                } else {
                    v
                }
            }
            CAP_PTR_REG => {
                let v = read_u32(dev, CAP_PTR_OFFSET) & !0xff;
                v | u32::from(self.caps.first().map_or(0, |c| c.offset))
            }
            INTERRUPT_REG => {
                // Interrupt line is emulated scratch; interrupt pin 0 = no INTx.
                let v = read_u32(dev, 0x3c) & 0xffff_0000;
                v | (self.emulated.read(INTERRUPT_REG) & 0xff)
            }
            r => {
                let off = (r * 4) as u64;
                let mut v = read_u32(dev, off);
                // Relink the capability whose header sits in this register.
                if let Some(c) = self.caps.iter().find(|c| u64::from(c.offset) == off) {
                    v = (v & !0xff00) | (u32::from(c.next) << 8);
                }
                let irq = self.interrupts.lock();
                irq.config_read(r, v).unwrap_or(v)
            }
        }
    }
}

impl PciDevice for PassthroughConfig {
    fn read_config_register(&mut self, reg_idx: usize) -> u32 {
        self.read_reg(reg_idx)
    }

    /// A BAR move only changes what [`PassthroughConfig::decoding_bars`] returns: the owner
    /// maps the BARs accordingly after each write.
    fn write_config_register(&mut self, reg_idx: usize, offset: u64, data: &[u8]) {
        if merge(0, offset, data).is_none() {
            return;
        }
        match reg_idx {
            r if (BAR0_REG..BAR0_REG + NUM_BARS).contains(&r) => {
                self.emulated.write(r, offset, data)
            }
            ROM_REG | CAP_PTR_REG => {}
            r if r >= STANDARD_REGS => {}
            INTERRUPT_REG => self.emulated.write(INTERRUPT_REG, offset, data),
            COMMAND_REG => {
                // The device keeps decoding memory whatever the guest writes: a BAR whose
                // decoding the guest turns off stays parked in place (`placement`), and a
                // device that stopped decoding would have its mmaps zapped by vfio-pci, so a
                // guest touching a parked BAR would stop the VM with KVM_RUN's EFAULT instead
                // of reading the device. The guest still sees its own bit (emulated).
                let mut to_device = [0u8; 4];
                let to_device = &mut to_device[..data.len()];
                to_device.copy_from_slice(data);
                if offset == 0 {
                    to_device[0] |= crate::config::COMMAND_MEMORY as u8;
                }
                let _ = self.dev.write(4 + offset, to_device);
                self.emulated.write(COMMAND_REG, offset, data)
            }
            r => {
                // MSI/MSI-X programming is emulated; everything else goes to the device
                // (a capability header's id/next bytes are read-only in hardware).
                let mut irq = self.interrupts.lock();
                if !irq.config_write(r, offset, data) {
                    let _ = self.dev.write((r * 4) as u64 + offset, data);
                }
            }
        }
    }
}

/// Reads `data.len()` bytes of the guest-visible config space at byte `offset`.
pub fn read_bytes(cfg: &mut PassthroughConfig, offset: u64, data: &mut [u8]) {
    let reg = (offset / 4) as usize;
    extract(cfg.read_reg(reg), offset % 4, data);
}

/// The BAR type the guest sees for a region: 64-bit when the device's BAR is.
pub fn bar_spec(size: u64, is_64bit: bool, prefetchable: bool) -> BarSpec {
    BarSpec {
        size,
        kind: if is_64bit {
            BarKind::Mem64
        } else {
            BarKind::Mem32
        },
        prefetchable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfio::interrupts::tests::Recorder;
    use crate::vfio::interrupts::{InterruptCaps, Interrupts, IrqKind, IrqUpdate};
    use std::sync::Arc;

    use parking_lot::Mutex;

    /// A fake config space: 4 KiB of bytes, every write recorded.
    type WriteLog = Arc<Mutex<Vec<(u64, Vec<u8>)>>>;

    #[derive(Clone)]
    struct Fake(Arc<Mutex<Vec<u8>>>, WriteLog);

    impl DeviceConfig for Fake {
        fn read(&self, offset: u64, data: &mut [u8]) -> std::io::Result<()> {
            let b = self.0.lock();
            let o = offset as usize;
            match b.get(o..o + data.len()) {
                Some(s) => {
                    data.copy_from_slice(s);
                    Ok(())
                }
                None => Err(std::io::Error::from_raw_os_error(22)),
            }
        }
        fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            self.1.lock().push((offset, data.to_vec()));
            let mut b = self.0.lock();
            let o = offset as usize;
            b[o..o + data.len()].copy_from_slice(data);
            Ok(())
        }
    }

    /// 1af4:1110 with caps: PM@0x40 -> vendor@0x50 -> MSI-X@0x60 -> PCIe@0x70, INTx pin 1,
    /// a ROM BAR, real BAR registers full of junk and an extended capability at 0x100.
    fn device() -> Fake {
        let mut b = vec![0u8; 4096];
        b[0..4].copy_from_slice(&0x1110_1af4u32.to_le_bytes());
        b[4..8].copy_from_slice(&(0x0010_0000u32 | 0x0003).to_le_bytes());
        b[0x10..0x28].fill(0xab);
        b[0x30..0x34].copy_from_slice(&0xfffe_0001u32.to_le_bytes());
        b[0x34] = 0x40;
        b[0x3c] = 0x0b;
        b[0x3d] = 1;
        for (off, id, next) in [
            (0x40, CAP_PM, 0x50),
            (0x50, 0x09, 0x60),
            (0x60, CAP_MSIX, 0x70),
            (0x70, CAP_PCIE, 0),
        ] {
            b[off] = id;
            b[off + 1] = next;
        }
        b[0x100..0x104].copy_from_slice(&0x0001_0001u32.to_le_bytes());
        Fake(Arc::new(Mutex::new(b)), Arc::new(Mutex::new(Vec::new())))
    }

    fn config_with(dev: &Fake, rec: &Recorder) -> PassthroughConfig {
        let caps = exposed_capabilities(dev);
        let irq = Interrupts::new(
            InterruptCaps::from_device(&caps, dev),
            Box::new(rec.clone()),
        );
        PassthroughConfig::new(
            Box::new(dev.clone()),
            &[
                (0, bar_spec(4096, false, false), 0xc000_0000),
                (2, bar_spec(128 << 30, true, true), 0x20_0000_0000),
            ],
            irq.shared(),
        )
        .unwrap()
    }

    fn config(dev: &Fake) -> PassthroughConfig {
        config_with(dev, &Recorder::default())
    }

    #[test]
    fn ids_pass_through_and_bars_are_emulated() {
        let dev = device();
        let mut c = config(&dev);
        assert_eq!(c.read_config_register(0), 0x1110_1af4);
        assert_eq!(c.read_config_register(4), 0xc000_0000);
        assert_eq!(c.read_config_register(5), 0, "BAR1 absent");
        assert_eq!(
            c.read_config_register(6),
            0x0000_000c,
            "64-bit prefetchable"
        );
        assert_eq!(c.read_config_register(7), 0x20);
        c.write_config_register(6, 0, &[0xff; 4]);
        c.write_config_register(7, 0, &[0xff; 4]);
        assert_eq!(c.read_config_register(7), 0xffff_ffe0);
        assert!(dev.1.lock().is_empty(), "BAR writes never reach the device");
    }

    #[test]
    fn rom_interrupt_pin_and_extended_space_are_hidden() {
        let dev = device();
        let mut c = config(&dev);
        assert_eq!(c.read_config_register(12), 0);
        c.write_config_register(12, 0, &[0xff; 4]);
        assert_eq!(c.read_config_register(12), 0);
        assert_eq!((c.read_config_register(15) >> 8) & 0xff, 0, "no INTx pin");
        c.write_config_register(15, 0, &[0x05]);
        assert_eq!(c.read_config_register(15) & 0xff, 0x05);
        assert_eq!(c.read_config_register(0x40), 0);
        assert_eq!(c.read_config_register(1023), 0);
        assert!(dev.1.lock().is_empty());
    }

    #[test]
    fn capability_list_skips_what_ghvmm_does_not_expose() {
        let dev = device();
        let mut c = config(&dev);
        let ids: Vec<u8> = c.capabilities().iter().map(|c| c.id).collect();
        assert_eq!(ids, [CAP_PM, CAP_MSIX, CAP_PCIE]);
        assert_eq!(c.read_config_register(13) & 0xff, 0x40);
        assert_eq!(
            (c.read_config_register(0x40 / 4) >> 8) & 0xff,
            0x60,
            "PM -> MSI-X, vendor cap skipped"
        );
        assert_eq!((c.read_config_register(0x60 / 4) >> 8) & 0xff, 0x70);
        assert_eq!((c.read_config_register(0x70 / 4) >> 8) & 0xff, 0);
        let mut b = [0u8; 1];
        read_bytes(&mut c, 0x41, &mut b);
        assert_eq!(b, [0x60]);
    }

    #[test]
    fn command_goes_to_the_device_and_tracks_decode() {
        let dev = device();
        let mut c = config(&dev);
        assert!(
            c.memory_enabled(),
            "assigned BARs start decoding, as firmware leaves them"
        );
        assert_eq!(c.decoding_bars().len(), 2);
        c.write_config_register(1, 0, &[0x04, 0x00]);
        assert!(!c.memory_enabled());
        assert!(c.decoding_bars().is_empty());
        assert_eq!(
            c.read_config_register(1) & 0x3,
            0,
            "the guest sees its own decode bits"
        );
        assert_eq!(
            dev.1.lock().as_slice(),
            &[(4, vec![0x06, 0x00])],
            "the device keeps decoding memory (a parked BAR must not fault)"
        );
        dev.1.lock().clear();
        c.write_config_register(1, 0, &[0x06, 0x00]);
        assert!(c.memory_enabled());
        assert_eq!(dev.1.lock().as_slice(), &[(4, vec![0x06, 0x00])]);
        dev.1.lock().clear();
        c.write_config_register(1, 1, &[0x01]);
        assert_eq!(
            dev.1.lock().as_slice(),
            &[(5, vec![0x01])],
            "a write to the command register's high byte goes through unchanged"
        );
        // With decode on, moving BAR2 moves what the VMM maps.
        c.write_config_register(7, 0, &0x40u32.to_le_bytes());
        assert!(c
            .decoding_bars()
            .contains(&(2, bar_spec(128 << 30, true, true), 0x40_0000_0000)));
    }

    #[test]
    fn bar_states_tell_a_parked_bar_from_a_moved_one() {
        let dev = device();
        let mut c = config(&dev);
        let bar2 = |c: &PassthroughConfig| {
            c.bar_states()
                .into_iter()
                .find(|(i, _, _)| *i == 2)
                .map(|(_, _, s)| s)
                .unwrap()
        };
        let live = bar2(&c).live;
        c.write_config_register(1, 0, &[0x04, 0x00]);
        assert_eq!(
            bar2(&c),
            BarState {
                decoding: false,
                live,
                register: Some(live)
            }
        );
        // Sizing the low half: no address in the register.
        c.write_config_register(6, 0, &u32::MAX.to_le_bytes());
        assert_eq!(bar2(&c).register, None);
        c.write_config_register(6, 0, &(live as u32).to_le_bytes());
        assert_eq!(bar2(&c).register, Some(live));
        // A move with decoding off shows in the register, not in `live`.
        c.write_config_register(7, 0, &0x40u32.to_le_bytes());
        let s = bar2(&c);
        assert_eq!((s.live, s.register), (live, Some(0x40_0000_0000)));
    }

    #[test]
    fn msix_programming_is_emulated_not_sent_to_the_device() {
        let dev = device();
        {
            // MSI-X with 2 vectors, table in BAR 0 at 0x800.
            let mut b = dev.0.lock();
            b[0x62..0x64].copy_from_slice(&1u16.to_le_bytes());
            b[0x64..0x68].copy_from_slice(&0x800u32.to_le_bytes());
            b[0x68..0x6c].copy_from_slice(&0xc00u32.to_le_bytes());
        }
        let rec = Recorder::default();
        let mut c = config_with(&dev, &rec);
        c.write_config_register(0x60 / 4, 2, &0x8000u16.to_le_bytes());
        assert_eq!(c.read_config_register(0x60 / 4) >> 16, 0x8001);
        assert_eq!(
            (c.read_config_register(0x60 / 4) >> 8) & 0xff,
            0x70,
            "still relinked"
        );
        assert_eq!(
            rec.0.lock().as_slice(),
            &[IrqUpdate::Enable {
                kind: IrqKind::Msix,
                vectors: 2
            }]
        );
        assert!(dev.1.lock().is_empty(), "nothing reached the device");
        // A register outside the interrupt capabilities still goes to the device.
        c.write_config_register(0x44 / 4, 0, &[3, 0]);
        assert_eq!(dev.1.lock().as_slice(), &[(0x44, vec![3, 0])]);
    }

    #[test]
    fn msix_whose_table_cannot_be_trapped_is_unlinked() {
        use crate::vfio::probe::{check_msix_placement, FunctionInfo, RegionInfo};
        /// BAR 0 an I/O BAR, BAR 2 64-bit memory of 128 GiB, as `device` has them.
        struct Bars<'a>(&'a Fake);
        impl FunctionInfo for Bars<'_> {
            fn read_config(&self, offset: u64, data: &mut [u8]) -> std::io::Result<()> {
                self.0.read(offset, data)
            }
            fn bar_region(&self, bar: usize) -> Option<RegionInfo> {
                let size = match bar {
                    0 => 256,
                    2 => 128 << 30,
                    _ => return None,
                };
                Some(RegionInfo {
                    size,
                    ..Default::default()
                })
            }
        }
        let dev = device();
        {
            let mut b = dev.0.lock();
            b[0x10..0x14].copy_from_slice(&1u32.to_le_bytes()); // BAR 0: I/O
            b[0x18..0x1c].copy_from_slice(&0xcu32.to_le_bytes()); // BAR 2: 64-bit
            b[0x62..0x64].copy_from_slice(&3u16.to_le_bytes()); // 4 vectors
            b[0x64..0x68].copy_from_slice(&0u32.to_le_bytes()); // table in BAR 0
            b[0x68..0x6c].copy_from_slice(&0x1002u32.to_le_bytes()); // PBA in BAR 2
        }
        let caps = exposed_capabilities(&dev);
        let mut irq_caps = InterruptCaps::from_device(&caps, &dev);
        let e = check_msix_placement(&Bars(&dev), &irq_caps.msix_ranges()).unwrap_err();
        assert_eq!(e.to_string(), "the MSI-X table is in BAR 0, an I/O BAR");
        irq_caps.hide_msix();
        let irq = Interrupts::new(irq_caps, Box::new(Recorder::default())).shared();
        let mut c = PassthroughConfig::new(Box::new(dev.clone()), &[], irq).unwrap();
        let ids: Vec<u8> = c.capabilities().iter().map(|c| c.id).collect();
        assert_eq!(ids, [CAP_PM, CAP_PCIE]);
        // The guest's walk: PM -> PCIe, the MSI-X capability never seen.
        assert_eq!((c.read_config_register(0x40 / 4) >> 8) & 0xff, 0x70);
        assert_eq!((c.read_config_register(0x70 / 4) >> 8) & 0xff, 0);
    }

    #[test]
    fn hostile_capability_lists_terminate() {
        let dev = device();
        {
            let mut b = dev.0.lock();
            b[0x41] = 0x40; // PM points to itself
        }
        let c = config(&dev);
        assert_eq!(c.capabilities().len(), 1);
        let dev = device();
        {
            let mut b = dev.0.lock();
            b[0x34] = 0x20; // into the header: not a capability
        }
        assert!(config(&dev).capabilities().is_empty());
        let dev = device();
        dev.0.lock()[6] = 0; // status says no capability list
        let mut c = config(&dev);
        assert!(c.capabilities().is_empty());
        assert_eq!(c.read_config_register(1) & STATUS_CAP_LIST, 0);
        assert_eq!(c.read_config_register(13) & 0xff, 0);
    }

    /// Found by fuzzing (config_space): an MSI capability whose 0x18 bytes covered the next
    /// capability's header made the guest read MSI registers as that header, and a second MSI
    /// capability was listed but not emulated, so its programming went to the device.
    #[test]
    fn overlapping_and_repeated_capabilities_are_not_exposed() {
        let dev = device();
        {
            let mut b = dev.0.lock();
            // PM@0x40 -> MSI@0x50 (64-bit, per-vector mask: 0x18 bytes) -> MSI-X@0x60, which
            // lies inside it -> PCIe@0x70 -> a second PM@0x80 -> MSI at 0xf0, running past
            // the standard space.
            b[0x50] = CAP_MSI;
            b[0x52..0x54].copy_from_slice(&0x0180u16.to_le_bytes());
            b[0x71] = 0x80;
            b[0x80] = CAP_PM;
            b[0x81] = 0xf0;
            b[0xf0] = CAP_MSI;
            b[0xf2..0xf4].copy_from_slice(&0x0180u16.to_le_bytes());
        }
        let mut c = config(&dev);
        let exposed: Vec<(u8, u8)> = c.capabilities().iter().map(|c| (c.offset, c.id)).collect();
        assert_eq!(exposed, [(0x40, CAP_PM), (0x50, CAP_MSI), (0x70, CAP_PCIE)]);
        // The guest's walk: every header it reads is the capability's own.
        let mut ptr = c.read_config_register(13) & 0xff;
        let mut walked = Vec::new();
        while ptr != 0 {
            let header = c.read_config_register(ptr as usize / 4);
            walked.push((ptr as u8, header as u8));
            ptr = (header >> 8) & 0xff;
        }
        assert_eq!(walked, exposed);
        // The 0x18 bytes of the MSI capability stay emulated.
        c.write_config_register(0x64 / 4, 0, &[1, 2, 3, 4]);
        assert!(dev.1.lock().is_empty());
    }

    #[test]
    fn hostile_accesses_do_not_panic() {
        let dev = device();
        let mut c = config(&dev);
        c.write_config_register(20, 3, &[1, 2]);
        c.write_config_register(20, 0, &[]);
        c.write_config_register(5000, 0, &[1]);
        assert!(dev.1.lock().is_empty());
        let _ = c.read_config_register(5000);
        let mut b = [0u8; 3];
        read_bytes(&mut c, 0, &mut b);
        assert_eq!(b, [0xff; 3]);
    }
}
