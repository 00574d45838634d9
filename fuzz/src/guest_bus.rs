//! Target `guest_bus`: what a guest really reaches. Sequences of port I/O and MMIO accesses
//! of any width 0-8 at any address go through the real `devices::Bus`es into the real device
//! set, built by the VMM's own `DeviceManager::without_kvm` (the same code as
//! `DeviceManager::new`, with eventfds for interrupts and a counting fake for the guest's
//! power-off and reset): COM1, the ACPI PM registers, the i8042, the GED, the PCI hot plug
//! controller with the VMM's `Ejects`, PCI configuration through 0xCF8/0xCFC and each
//! segment's ECAM. The VMM's side is interleaved: slots announced as added or to remove,
//! GED events, console input. Accesses can be repeated (a guest writing a register in a loop)
//! and aimed at a device (base plus an offset that may run past its end) or anywhere.
//!
//! The steps run twice over the same device set: one pass to warm up, one measured.
//!
//! Checked (besides no panic): an access succeeds on the bus exactly when it lies inside one
//! device's range (a miss changes nothing in the buffer); the registers with state the guest
//! sees answer what a model of them says, at every width (hot plug controller: PSEG, PCIU and
//! PCID read-to-clear, B0EJ answering removal requests; GED read-to-clear; CONFIG_ADDRESS;
//! the host bridge's ids; all ones where no function is; zeros from the PM registers and the
//! i8042); power-off and reset requests happen exactly for the writes that ask for them; the
//! heap, counted per thread by `crate::heap`, grows by at most `HEAP_BOUND` bytes over the
//! measured passes (a device keeping something for every access grows with each pass);
//! afterwards every register of every device reads, and the ejects the VMM holds are exactly
//! the slots the guest ejected.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use acpi::hotplug::regs::{slot_bit, B0EJ, PCID, PCIU, PSEG};
use arbitrary::Arbitrary;
use vmm::device_manager::{DeviceManager, OnExit};
use vmm::memory::layout::{
    ExtraSegments, Layout, ACPI_PM_PORT, COM1_PORT, ECAM_SEGMENT_SIZE, GED_ADDR, GED_SIZE, GIB,
    I8042_PORT, MIB, PCI_CONFIG_IO_PORT, PCI_HOTPLUG_ADDR,
};

use crate::seed::{Encode, Encoder};

/// The widest access the input asks for (x86 moves at most 8 bytes in one trapped access).
const MAX_WIDTH: u8 = 8;
/// GH slots (extra PCI segments) at most.
const MAX_GH_SLOTS: u8 = 4;
/// Guest accesses per pass at most, repeats included, so that one input stays quick.
const MAX_ACCESSES_PER_PASS: usize = 1024;
// One pass of each: the passes are most of an input's time, and a device that keeps
// something for each access grows in every pass, the measured one included (a `Vec` grown
// by doubling reallocates at least once in a pass that doubles its length).
const WARM_UP_PASSES: usize = 1;
const MEASURED_PASSES: usize = 1;
/// How many bytes the heap may grow over the measured pass: 512 per pass, as when two
/// measured passes were allowed 1 KiB.
const HEAP_BOUND: i64 = 512;
/// What a read buffer holds before the access: a miss must leave it.
const CANARY: u8 = 0xa5;
/// Console input bytes a step can queue at most.
const MAX_INPUT: usize = 255;

// The registers the model follows, as the ACPI spec, PCI and the 8042 define them (not taken
// from the devices, so that a device that drifts from them is caught).
/// PM1 control, in the byte ghvmm's FADT gives it: SLP_EN and SLP_TYP.
const SLP_EN: u8 = 1 << 5;
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0x7;
/// The DSDT's `\_S5_` sleep type.
const S5: u8 = 5;
const PM_SLEEP_CONTROL: u64 = 0;
const PM_RESET: u64 = 2;
const PM_RESET_VALUE: u8 = 1;
/// The 8042's command port, from its data port, and its "pulse reset" command.
const I8042_COMMAND: u64 = 4;
const I8042_RESET: u8 = 0xfe;
/// CONFIG_ADDRESS: the enable bit and the bits it keeps.
const CONFIG_ENABLE: u32 = 1 << 31;
const CONFIG_ADDRESS_MASK: u32 = 0x80ff_fffc;
const CONFIG_DATA: u64 = 4;
/// Vendor and device id of ghvmm's host bridge at 00:00.0 (Intel, 0x0d57).
const HOST_BRIDGE_IDS: u32 = 0x0d57_8086;
/// The port range of COM1, the PM registers, the i8042 and the config ports.
const COM1_LEN: u64 = 8;
const PM_LEN: u64 = 3;
const I8042_LEN: u64 = 5;
const CONFIG_IO_LEN: u64 = 8;
const HOTPLUG_LEN: u64 = 16;
const REG: u64 = 4;
/// ECAM bytes per function, per device (8 functions), and of a type-0 header.
const FUNCTION_SPACE: u64 = 0x1000;
const DEVICE_SPACE: u64 = 8 * FUNCTION_SPACE;
const HEADER: u64 = 0x40;
/// The bytes at the start of each device that the last checks read at every offset.
const SWEEP: u64 = 16;

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    Pio,
    Mmio,
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq)]
pub enum At {
    /// Any address of the access's space (a port is 16 bits).
    Raw(Space, u64),
    /// Into the device of index n (modulo the number of devices) at an offset modulo its
    /// length plus 16, so that some accesses run past its end.
    Device(u8, u32),
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq)]
pub struct Access {
    pub at: At,
    /// Modulo 9.
    pub width: u8,
    /// A write of the value's low `width` bytes; `None`: a read.
    pub write: Option<u64>,
    /// The access is made 1 + repeat times.
    pub repeat: u8,
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq)]
pub enum Step {
    Guest(Access),
    /// The VMM announces a device in (segment, slot): `PciHotplug::slot_added`.
    SlotAdded(u16, u8),
    /// The VMM asks the guest to eject (segment, slot): `PciHotplug::removal_requested`.
    RemovalRequested(u16, u8),
    /// The VMM raises GED events.
    Ged(u32),
    /// Console input of n bytes.
    Input(u8),
}

#[derive(Arbitrary, Debug, Clone, PartialEq)]
pub struct Input {
    /// Modulo `MAX_GH_SLOTS` + 1.
    pub gh_slots: u8,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Com1,
    Pm,
    I8042,
    ConfigIo,
    Ged,
    Hotplug,
    Ecam(u16),
}

/// One device's range, as the platform (docs/platform.md) places it.
#[derive(Debug, Clone, Copy)]
struct Range {
    space: Space,
    base: u64,
    len: u64,
    kind: Kind,
}

impl Range {
    fn last(&self) -> u64 {
        self.base + (self.len - 1)
    }

    /// Whether an access of `width` bytes at `addr` lies inside (a 0-byte one: `addr` does).
    fn holds(&self, addr: u64, width: usize) -> bool {
        addr >= self.base
            && addr <= self.last()
            && (width as u64).saturating_sub(1) <= self.last() - addr
    }
}

fn device_map(layout: &Layout) -> Vec<Range> {
    let pio = |base: u16, len, kind| Range {
        space: Space::Pio,
        base: u64::from(base),
        len,
        kind,
    };
    let mmio = |base, len, kind| Range {
        space: Space::Mmio,
        base,
        len,
        kind,
    };
    let mut map = vec![
        pio(COM1_PORT, COM1_LEN, Kind::Com1),
        pio(ACPI_PM_PORT, PM_LEN, Kind::Pm),
        pio(I8042_PORT, I8042_LEN, Kind::I8042),
        pio(PCI_CONFIG_IO_PORT, CONFIG_IO_LEN, Kind::ConfigIo),
        mmio(GED_ADDR, GED_SIZE, Kind::Ged),
        mmio(PCI_HOTPLUG_ADDR, HOTPLUG_LEN, Kind::Hotplug),
    ];
    for s in &layout.segments {
        map.push(mmio(s.ecam, ECAM_SEGMENT_SIZE, Kind::Ecam(s.id)));
    }
    map
}

/// Power-off and reset requests, as the devices made them.
#[derive(Default)]
struct Exits {
    power_off: AtomicU32,
    reset: AtomicU32,
}

/// What the guest should see: the state of the devices that have some.
struct Model {
    /// Per segment: slots added and slots to remove, not read by the guest yet.
    added: Vec<u32>,
    removal: Vec<u32>,
    /// Per segment: slots the guest ejected.
    ejected: Vec<u32>,
    selected: u32,
    ged: u32,
    config_address: u32,
    power_off: u32,
    reset: u32,
}

impl Model {
    fn new(segments: usize) -> Self {
        Model {
            added: vec![0; segments],
            removal: vec![0; segments],
            ejected: vec![0; segments],
            selected: 0,
            ged: 0,
            config_address: 0,
            power_off: 0,
            reset: 0,
        }
    }

    fn selected(&self) -> Option<usize> {
        usize::try_from(self.selected)
            .ok()
            .filter(|s| *s < self.added.len())
    }

    fn slot(&self, segment: u16, slot: u8) -> Option<(usize, u32)> {
        let bit = slot_bit(slot)?;
        let s = usize::from(segment);
        (s < self.added.len()).then_some((s, bit))
    }

    /// Checks a read that the bus delivered to `r` at `offset`.
    fn read(&mut self, r: &Range, offset: u64, data: &[u8]) {
        let what = || {
            format!(
                "{:?} read of {} bytes at offset {offset:#x}",
                r.kind,
                data.len()
            )
        };
        match r.kind {
            Kind::Pm | Kind::I8042 => {
                assert!(data.iter().all(|b| *b == 0), "{}: {data:x?}", what())
            }
            Kind::Com1 => assert!(
                data.iter().skip(1).all(|b| *b == 0),
                "{}: {data:x?}",
                what()
            ),
            Kind::Ged => {
                let mut want = [0u8; MAX_WIDTH as usize];
                if offset < REG {
                    let bytes = self.ged.to_le_bytes();
                    for (w, b) in want.iter_mut().zip(&bytes[offset as usize..]) {
                        *w = *b;
                    }
                    if offset == 0 && data.len() as u64 >= REG {
                        self.ged = 0;
                    }
                }
                assert_eq!(data, &want[..data.len()], "{}", what());
            }
            Kind::Hotplug => {
                let mut want = [0u8; MAX_WIDTH as usize];
                if data.len() as u64 == REG && offset.is_multiple_of(REG) {
                    let s = self.selected();
                    let v = match offset {
                        PCIU => s.map_or(0, |s| std::mem::take(&mut self.added[s])),
                        PCID => s.map_or(0, |s| std::mem::take(&mut self.removal[s])),
                        PSEG => self.selected,
                        _ => 0,
                    };
                    want[..4].copy_from_slice(&v.to_le_bytes());
                }
                assert_eq!(data, &want[..data.len()], "{}", what());
            }
            Kind::ConfigIo => {
                if offset < CONFIG_DATA {
                    if offset == 0 && data.len() as u64 == REG {
                        assert_eq!(data, self.config_address.to_le_bytes(), "{}", what());
                    } else {
                        assert!(data.iter().all(|b| *b == 0xff), "{}: {data:x?}", what());
                    }
                } else if self.config_address & CONFIG_ENABLE == 0 {
                    assert!(data.iter().all(|b| *b == 0xff), "{}: {data:x?}", what());
                } else if self.config_address & !CONFIG_ENABLE == 0 {
                    // 00:00.0 register 0: the host bridge's ids.
                    check_ids(offset - CONFIG_DATA, data, &what);
                }
            }
            Kind::Ecam(segment) => {
                // Segment 0 has the host bridge at 00.0, and nothing else; the others nothing.
                let function = offset / FUNCTION_SPACE;
                if segment != 0 || function != 0 {
                    assert!(data.iter().all(|b| *b == 0xff), "{}: {data:x?}", what());
                } else if offset < REG {
                    check_ids(offset, data, &what);
                }
            }
        }
    }

    fn write(&mut self, r: &Range, offset: u64, data: &[u8]) {
        let first = data.first().copied();
        match r.kind {
            Kind::Pm => match (offset, first) {
                (PM_SLEEP_CONTROL, Some(v))
                    if v & SLP_EN != 0 && (v >> SLP_TYP_SHIFT) & SLP_TYP_MASK == S5 =>
                {
                    self.power_off += 1
                }
                (PM_RESET, Some(PM_RESET_VALUE)) => self.reset += 1,
                _ => {}
            },
            Kind::I8042 if offset == I8042_COMMAND && first == Some(I8042_RESET) => self.reset += 1,
            Kind::ConfigIo if offset == 0 && data.len() as u64 == REG => {
                self.config_address = dword(data) & CONFIG_ADDRESS_MASK
            }
            Kind::Hotplug if data.len() as u64 == REG && offset.is_multiple_of(REG) => {
                let v = dword(data);
                match offset {
                    PSEG => self.selected = v,
                    B0EJ => {
                        if let Some(s) = self.selected() {
                            self.removal[s] &= !v;
                            self.ejected[s] |= v;
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
}

fn dword(data: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&data[..4]);
    u32::from_le_bytes(b)
}

/// A read at byte `offset` of the host bridge's register 0: its ids, or all ones for an
/// access that is not 1, 2 or 4 bytes inside the register.
fn check_ids(offset: u64, data: &[u8], what: &dyn Fn() -> String) {
    let ids = HOST_BRIDGE_IDS.to_le_bytes();
    let inside = matches!(data.len(), 1 | 2 | 4) && offset + data.len() as u64 <= REG;
    if inside {
        assert_eq!(data, &ids[offset as usize..][..data.len()], "{}", what());
    } else {
        assert!(data.iter().all(|b| *b == 0xff), "{}: {data:x?}", what());
    }
}

/// The device set and its model.
struct Rig {
    dm: DeviceManager,
    map: Vec<Range>,
    model: Model,
    exits: Arc<Exits>,
}

impl Rig {
    fn new(gh_slots: u8) -> Self {
        let gh = u16::from(gh_slots % (MAX_GH_SLOTS + 1));
        let extra = ExtraSegments {
            count: gh,
            mmio64_size: 64 * GIB,
        };
        let layout = Layout::with_segments(512 * MIB, None, extra, 46).expect("a valid layout");
        let exits = Arc::new(Exits::default());
        let on_exit: OnExit = {
            let exits = exits.clone();
            Arc::new(move |req| {
                let counter = match req {
                    devices::VmExitRequest::PowerOff => &exits.power_off,
                    devices::VmExitRequest::Reset => &exits.reset,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            })
        };
        let dm = DeviceManager::without_kvm(&layout, Box::new(std::io::sink()), on_exit)
            .expect("the VMM's device set builds");
        Rig {
            dm,
            model: Model::new(layout.segments.len()),
            map: device_map(&layout),
            exits,
        }
    }

    /// Where an access goes: its space, address and the device the platform has there.
    fn aim(&self, at: At) -> (Space, u64) {
        match at {
            At::Raw(Space::Pio, a) => (Space::Pio, a & u64::from(u16::MAX)),
            At::Raw(space, a) => (space, a),
            At::Device(n, offset) => {
                let r = self.map[usize::from(n) % self.map.len()];
                (r.space, r.base + u64::from(offset) % (r.len + 16))
            }
        }
    }

    /// One guest access through the bus, checked.
    fn access(&mut self, space: Space, addr: u64, width: usize, write: Option<u64>) {
        let bus = match space {
            Space::Pio => &self.dm.pio_bus,
            Space::Mmio => &self.dm.mmio_bus,
        };
        let target = self
            .map
            .iter()
            .find(|r| r.space == space && r.holds(addr, width))
            .copied();
        match write {
            Some(v) => {
                let bytes = v.to_le_bytes();
                let data = &bytes[..width];
                let done = bus.write(addr, data);
                assert_eq!(
                    done.is_ok(),
                    target.is_some(),
                    "{space:?} write of {width} bytes at {addr:#x}: {done:?}"
                );
                if let Some(r) = target {
                    self.model.write(&r, addr - r.base, data);
                }
            }
            None => {
                let mut buf = [CANARY; MAX_WIDTH as usize];
                let data = &mut buf[..width];
                let done = bus.read(addr, data);
                assert_eq!(
                    done.is_ok(),
                    target.is_some(),
                    "{space:?} read of {width} bytes at {addr:#x}: {done:?}"
                );
                match target {
                    Some(r) => self.model.read(&r, addr - r.base, data),
                    None => assert!(data.iter().all(|b| *b == CANARY), "a miss wrote {data:x?}"),
                }
            }
        }
        assert_eq!(
            (
                self.exits.power_off.load(Ordering::Relaxed),
                self.exits.reset.load(Ordering::Relaxed)
            ),
            (self.model.power_off, self.model.reset),
            "power-off and reset requests after a {space:?} access at {addr:#x}"
        );
    }

    fn step(&mut self, step: &Step, budget: &mut usize) {
        match *step {
            Step::Guest(a) => {
                let (space, addr) = self.aim(a.at);
                let width = usize::from(a.width % (MAX_WIDTH + 1));
                for _ in 0..=a.repeat {
                    if *budget == 0 {
                        return;
                    }
                    *budget -= 1;
                    self.access(space, addr, width, a.write);
                }
            }
            Step::SlotAdded(segment, slot) => {
                let done = self.dm.pci_hotplug.lock().slot_added(segment, slot);
                let m = &mut self.model;
                assert_eq!(done.is_ok(), m.slot(segment, slot).is_some(), "{done:?}");
                if let Some((s, bit)) = m.slot(segment, slot) {
                    m.added[s] |= bit;
                    m.removal[s] &= !bit;
                }
            }
            Step::RemovalRequested(segment, slot) => {
                let done = self.dm.pci_hotplug.lock().removal_requested(segment, slot);
                let m = &mut self.model;
                assert_eq!(done.is_ok(), m.slot(segment, slot).is_some(), "{done:?}");
                if let Some((s, bit)) = m.slot(segment, slot) {
                    m.removal[s] |= bit;
                    m.added[s] &= !bit;
                }
            }
            Step::Ged(events) => {
                // The eventfd only refuses at 2^64 - 1 pending interrupts.
                let _ = self.dm.ged.lock().notify(events);
                self.model.ged |= events;
            }
            Step::Input(n) => {
                const BYTES: [u8; MAX_INPUT] = [b'x'; MAX_INPUT];
                self.dm
                    .serial
                    .lock()
                    .enqueue_input(&BYTES[..usize::from(n)]);
            }
        }
    }

    fn pass(&mut self, steps: &[Step]) {
        let mut budget = MAX_ACCESSES_PER_PASS;
        for s in steps {
            self.step(s, &mut budget);
        }
    }

    /// Every register of every device reads at every width and answers what the model
    /// says: the first `SWEEP` and the last `MAX_WIDTH` bytes of each device, and in ECAM
    /// the header of 00.0 and function 0 of each device. Then the host bridge's ids through
    /// both mechanisms and the ejects the VMM holds.
    fn read_everything(&mut self) {
        let map = self.map.clone();
        for r in &map {
            let mut offsets: Vec<u64> = (0..r.len.min(SWEEP))
                .chain(r.len.saturating_sub(u64::from(MAX_WIDTH))..r.len)
                .collect();
            if let Kind::Ecam(_) = r.kind {
                offsets.extend((SWEEP..HEADER).step_by(REG as usize));
                offsets.extend((0..r.len).step_by(DEVICE_SPACE as usize));
            }
            for offset in offsets {
                for width in [1, 2, 4, 8] {
                    if r.holds(r.base + offset, width) {
                        self.access(r.space, r.base + offset, width, None);
                    }
                }
            }
        }
        let config = u64::from(PCI_CONFIG_IO_PORT);
        self.access(Space::Pio, config, 4, Some(u64::from(CONFIG_ENABLE)));
        let mut ids = [0u8; 4];
        self.dm
            .pio_bus
            .read(config + CONFIG_DATA, &mut ids)
            .unwrap();
        assert_eq!(u32::from_le_bytes(ids), HOST_BRIDGE_IDS, "through 0xCFC");
        let ecam0 = map.iter().find(|r| r.kind == Kind::Ecam(0)).unwrap().base;
        self.dm.mmio_bus.read(ecam0, &mut ids).unwrap();
        assert_eq!(u32::from_le_bytes(ids), HOST_BRIDGE_IDS, "through ECAM");
        for (segment, ejected) in self.model.ejected.iter().enumerate() {
            for slot in 0..32u8 {
                let held = self.dm.ejects.wait(segment as u16, slot, Duration::ZERO);
                let want = ejected & (1 << slot) != 0;
                assert_eq!(held, want, "eject of slot {slot} of segment {segment}");
            }
        }
    }
}

pub fn run(input: &Input) {
    let mut rig = Rig::new(input.gh_slots);
    let mut baseline = 0;
    for pass in 0..WARM_UP_PASSES + MEASURED_PASSES {
        if pass == WARM_UP_PASSES {
            baseline = crate::heap::net_bytes();
        }
        rig.pass(&input.steps);
    }
    let grown = crate::heap::net_bytes() - baseline;
    assert!(
        grown <= HEAP_BOUND,
        "the heap grew by {grown} bytes over {MEASURED_PASSES} passes of the same accesses (at most {HEAP_BOUND})"
    );
    rig.read_everything();
}

pub fn fuzz(data: &[u8]) {
    if let Some(input) = crate::seed::decode::<Input>(data) {
        run(&input);
    }
}

// ---------------------------------------------------------------------------------------------
// Seeds.

impl Encode for Space {
    fn encode(&self, e: &mut Encoder) {
        e.variant(*self as u32, 2);
    }
}

impl Encode for At {
    fn encode(&self, e: &mut Encoder) {
        match self {
            At::Raw(space, a) => {
                e.variant(0, 2);
                space.encode(e);
                a.encode(e);
            }
            At::Device(n, offset) => {
                e.variant(1, 2);
                n.encode(e);
                offset.encode(e);
            }
        }
    }
}

impl Encode for Access {
    fn encode(&self, e: &mut Encoder) {
        self.at.encode(e);
        self.width.encode(e);
        self.write.encode(e);
        self.repeat.encode(e);
    }
}

impl Encode for Step {
    fn encode(&self, e: &mut Encoder) {
        const N: u32 = 5;
        match self {
            Step::Guest(a) => {
                e.variant(0, N);
                a.encode(e);
            }
            Step::SlotAdded(s, n) => {
                e.variant(1, N);
                s.encode(e);
                n.encode(e);
            }
            Step::RemovalRequested(s, n) => {
                e.variant(2, N);
                s.encode(e);
                n.encode(e);
            }
            Step::Ged(v) => {
                e.variant(3, N);
                v.encode(e);
            }
            Step::Input(n) => {
                e.variant(4, N);
                n.encode(e);
            }
        }
    }
}

impl Encode for Input {
    fn encode(&self, e: &mut Encoder) {
        self.gh_slots.encode(e);
        self.steps.encode(e);
    }
}

// Indexes of the device map (`device_map`) the seeds aim at.
const COM1: u8 = 0;
const PM: u8 = 1;
const I8042: u8 = 2;
const CONFIG_IO: u8 = 3;
const GED: u8 = 4;
const HOTPLUG: u8 = 5;
const ECAM0: u8 = 6;

fn rd(device: u8, offset: u32, width: u8) -> Step {
    Step::Guest(Access {
        at: At::Device(device, offset),
        width,
        write: None,
        repeat: 0,
    })
}

fn wr(device: u8, offset: u32, width: u8, value: u64) -> Step {
    Step::Guest(Access {
        at: At::Device(device, offset),
        width,
        write: Some(value),
        repeat: 0,
    })
}

fn repeated(step: Step, repeat: u8) -> Step {
    match step {
        Step::Guest(a) => Step::Guest(Access { repeat, ..a }),
        s => s,
    }
}

/// Linux's probe of segment 0 through CONFIG_ADDRESS/CONFIG_DATA (vendor id of each slot)
/// and ECAM, then a serial console set up at 115200 8N1 printing a line.
fn linux_boot() -> Vec<Step> {
    let mut steps = Vec::new();
    for device in 0..32u64 {
        steps.push(wr(CONFIG_IO, 0, 4, 0x8000_0000 | device << 11));
        steps.push(rd(CONFIG_IO, 4, 4));
        steps.push(rd(ECAM0, (device as u32) << 15, 4));
    }
    steps.push(rd(ECAM0, 0x8, 4)); // class
    steps.push(rd(ECAM0, 0xe, 1)); // header type
    for (offset, value) in [
        (3, 0x80),
        (0, 1),
        (1, 0),
        (3, 0x03),
        (2, 0xc7),
        (4, 0x0b),
        (1, 0x02),
    ] {
        steps.push(wr(COM1, offset, 1, value));
    }
    for b in b"ghvmm\n" {
        steps.push(rd(COM1, 5, 1)); // LSR: transmitter empty?
        steps.push(wr(COM1, 0, 1, u64::from(*b)));
    }
    steps.push(rd(COM1, 2, 1)); // IIR
    steps
}

/// A hot add and a hot remove as the DSDT's `PSCN` and `_EJ0` drive the controller.
fn hotplug_add_remove() -> Vec<Step> {
    let scan = |segment| {
        vec![
            rd(GED, 0, 4),
            wr(HOTPLUG, PSEG as u32, 4, segment),
            rd(HOTPLUG, PCIU as u32, 4),
            rd(HOTPLUG, PCID as u32, 4),
        ]
    };
    let mut steps = vec![Step::SlotAdded(1, 0), Step::Ged(2)];
    steps.extend(scan(1));
    steps.extend(scan(0));
    steps.push(rd(ECAM0 + 1, 0, 4));
    steps.extend([Step::RemovalRequested(1, 0), Step::Ged(2)]);
    steps.extend(scan(1));
    steps.push(wr(HOTPLUG, B0EJ as u32, 4, 1));
    steps.extend([
        Step::SlotAdded(0, 3),
        Step::RemovalRequested(0, 3),
        Step::Ged(2),
    ]);
    steps.extend(scan(0));
    steps.push(wr(HOTPLUG, B0EJ as u32, 4, 1 << 3));
    steps
}

/// A guest writing every eject bit of every segment in a loop (and a segment that does not
/// exist): the VMM's state of ejects must stay the same size.
fn eject_flood() -> Vec<Step> {
    let mut steps = Vec::new();
    for segment in [0, 1, 2, 7, u64::from(u32::MAX)] {
        steps.push(wr(HOTPLUG, PSEG as u32, 4, segment));
        steps.push(repeated(
            wr(HOTPLUG, B0EJ as u32, 4, u64::from(u32::MAX)),
            255,
        ));
    }
    steps
}

/// S5 through the PM registers, the ACPI reset register, the 8042's reset, and near misses.
fn power() -> Vec<Step> {
    vec![
        wr(PM, 0, 1, 5 << 2),
        wr(PM, 0, 1, (3 << 2) | 0x20),
        wr(PM, 0, 1, (5 << 2) | 0x20),
        wr(PM, 0, 2, 0x2034),
        wr(PM, 2, 1, 1),
        wr(PM, 2, 1, 6),
        wr(PM, 1, 1, 0xff),
        wr(I8042, 4, 1, 0xd1),
        wr(I8042, 0, 1, 0xfe),
        wr(I8042, 4, 1, 0xfe),
        wr(PM, 0, 0, 0x34),
        rd(PM, 1, 1),
    ]
}

/// Every width at byte 15 of every device (across the end of the small ones), plus
/// addresses nothing owns and the ends of both address spaces. Under 4 KiB, libFuzzer's
/// `-max_len` for the target.
fn hostile_widths() -> Vec<Step> {
    let mut steps = Vec::new();
    for device in 0..7 {
        for width in 0..=MAX_WIDTH {
            steps.push(rd(device, 15, width));
            steps.push(wr(device, 15, width, u64::MAX));
        }
    }
    for (space, a) in [
        (Space::Pio, 0),
        (Space::Pio, 0xffff),
        (Space::Pio, 0x3ff),
        (Space::Mmio, 0),
        (Space::Mmio, u64::MAX),
        (Space::Mmio, u64::MAX - 3),
        (Space::Mmio, PCI_HOTPLUG_ADDR - 2),
    ] {
        for width in [1, 8] {
            steps.push(Step::Guest(Access {
                at: At::Raw(space, a),
                width,
                write: None,
                repeat: 0,
            }));
            steps.push(Step::Guest(Access {
                at: At::Raw(space, a),
                width,
                write: Some(u64::MAX),
                repeat: 0,
            }));
        }
    }
    steps
}

/// The UART in loopback mode (what it transmits it receives), console input overflowing
/// its FIFO, and the guest draining it.
fn serial_loopback() -> Vec<Step> {
    vec![
        wr(COM1, 4, 1, 0x10),
        repeated(wr(COM1, 0, 1, u64::from(b'l')), 100),
        Step::Input(255),
        repeated(rd(COM1, 0, 1), 200),
        rd(COM1, 5, 1),
        rd(COM1, 6, 1),
        wr(COM1, 4, 1, 0),
    ]
}

pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let seeds = [
        ("linux-boot", 0, linux_boot()),
        ("hotplug-add-remove", 2, hotplug_add_remove()),
        ("eject-flood", 2, eject_flood()),
        ("power", 0, power()),
        ("hostile-widths", 1, hostile_widths()),
        ("serial-loopback", 0, serial_loopback()),
    ];
    seeds
        .into_iter()
        .map(|(name, gh_slots, steps)| (name, crate::seed::encode(&Input { gh_slots, steps })))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn seeds_hold_the_invariants() {
        for (name, bytes) in super::seeds() {
            assert!(
                bytes.len() <= 4096,
                "{name}: longer than libFuzzer's -max_len"
            );
            super::run(&crate::seed::decode(&bytes).unwrap());
        }
    }
}
