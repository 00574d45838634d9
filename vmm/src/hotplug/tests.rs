//! `Hotplug`'s policy against a fake VM side: real PCI segments and eject state, the VM's real
//! BAR allocator, KVM memory slot numbers and MMIO bus (each fake device holds two BARs, a
//! slot and a trap for each, as a passed-through device does), a guest that ejects at once
//! or never, and faults injected where the VM side can fail. `interleavings` runs random
//! sequences of all of it against a model.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use acpi::PciAddress;
use pci::{HostBridge, PciDevice, PciSegment};

use super::*;
use crate::config::DeviceSource;
use crate::memory::bar_allocator::{BarAllocator, Window};
use crate::memory::layout::{ExtraSegments, Layout, GIB, MIB};
use crate::memory::memslots::MemSlots;
use crate::passthrough::VfioSetupError;
use crate::vm::exit::{ExitReason, ExitState};

mod interleavings;

fn vfio(path: &str) -> DeviceSource {
    DeviceSource::Vfio(PathBuf::from(path))
}

/// The eject timeout of the tests: the fake guest ejects at once or never.
const TIMEOUT: Duration = Duration::from_millis(50);

/// The BARs each fake device gets: a 32-bit register BAR and a 64-bit memory BAR.
const FAKE_BARS: [(Window, u64); 2] = [(Window::Mmio32, MIB), (Window::Mmio64, GIB)];
/// KVM memory slots the fake's guest RAM takes (slot numbers below this).
const RAM_SLOTS: u32 = 2;
/// KVM_CAP_NR_MEMSLOTS of the fake.
const KVM_SLOTS: u32 = 512;

/// What an assigned fake device holds of the VM until its teardown.
struct Held {
    segment: u16,
    /// (window, base, size) of each BAR, the KVM slot of each and the trap (its base) of each.
    bars: Vec<(Window, u64, u64)>,
    kvm_slots: Vec<u32>,
    traps: Vec<u64>,
}

/// A function the fake assigned.
struct FakeFunction {
    path: PathBuf,
    torn_down: bool,
    held: Option<Held>,
}

/// A BAR's trap on the MMIO bus.
struct Trap;

impl devices::BusDevice for Trap {
    fn read(&mut self, _: u64, _: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _: u64, _: u64, _: &[u8]) {}
}

/// The VM's resources a passed-through device takes: BAR space, KVM memory slots, the MMIO
/// bus, and every misuse of them the fake saw.
struct Resources {
    bars: BarAllocator,
    kvm_slots: MemSlots,
    /// The slots handed out, to tell a double release (`MemSlots` ignores one).
    kvm_slots_out: std::collections::BTreeSet<u32>,
    mmio_bus: devices::Bus,
    misuse: Vec<String>,
}

impl Resources {
    fn new(gh_slots: u16) -> Self {
        let extra = ExtraSegments {
            count: gh_slots,
            mmio64_size: 64 * GIB,
        };
        let layout = Layout::with_segments(512 * MIB, Some(128 * GIB), extra, 46).unwrap();
        Resources {
            bars: BarAllocator::new(&layout).unwrap(),
            kvm_slots: MemSlots::new(RAM_SLOTS, KVM_SLOTS),
            kvm_slots_out: Default::default(),
            mmio_bus: devices::Bus::new(),
            misuse: Vec::new(),
        }
    }

    /// Takes what a device needs in `segment`, or nothing.
    fn take(&mut self, segment: u16) -> Result<Held, String> {
        let mut held = Held {
            segment,
            bars: Vec::new(),
            kvm_slots: Vec::new(),
            traps: Vec::new(),
        };
        for (window, size) in FAKE_BARS {
            let step = self
                .bars
                .allocate(segment, window, size)
                .map_err(|e| e.to_string())
                .and_then(|base| {
                    held.bars.push((window, base, size));
                    let slot = self.kvm_slots.allocate().map_err(|e| e.to_string())?;
                    self.kvm_slots_out.insert(slot);
                    held.kvm_slots.push(slot);
                    self.mmio_bus
                        .insert(Arc::new(Mutex::new(Trap)), base, size)
                        .map_err(|e| e.to_string())?;
                    held.traps.push(base);
                    Ok(())
                });
            if let Err(e) = step {
                self.give_back(held);
                return Err(e);
            }
        }
        Ok(held)
    }

    fn give_back(&mut self, held: Held) {
        for &base in &held.traps {
            if self.mmio_bus.remove(base).is_err() {
                self.misuse.push(format!("trap at {base:#x} removed twice"));
            }
        }
        for &(window, base, size) in &held.bars {
            if let Err(e) = self.bars.free(held.segment, window, base, size) {
                self.misuse.push(format!("BAR freed twice: {e}"));
            }
        }
        for &slot in &held.kvm_slots {
            if !self.kvm_slots_out.remove(&slot) {
                self.misuse.push(format!("KVM slot {slot} released twice"));
            }
            self.kvm_slots.release(slot);
        }
    }
}

impl PciDevice for FakeFunction {
    fn read_config_register(&mut self, _: usize) -> u32 {
        0
    }
    fn write_config_register(&mut self, _: usize, _: u64, _: &[u8]) {}
}

type FakeDevice = Arc<Mutex<FakeFunction>>;

#[derive(Default)]
struct State {
    fail_assign: bool,
    fail_announce_added: bool,
    fail_announce_removal: bool,
    /// Whether asking the guest to eject panics (a bug in the VM side).
    panic_announce_removal: bool,
    /// Whether the guest ejects a device as soon as it is asked to.
    guest_ejects: bool,
    assigned: Vec<FakeDevice>,
    /// The request watchers' callbacks. Kept after teardown (when a real watcher would drop
    /// its callback) so that `Hotplug`'s weak count only moves while a give-back runs.
    watchers: Vec<(FakeDevice, OnHostRequest)>,
    /// What `Hotplug` asked, in order.
    calls: Vec<String>,
}

/// The VM side: segment 0 with its host bridge, one segment per GH slot.
struct FakeVm {
    gh_slots: usize,
    segments: Vec<Mutex<PciSegment>>,
    ejects: Ejects,
    state: Mutex<State>,
    resources: Mutex<Resources>,
    /// The VM's end, which a panic on a `Hotplug` thread sets.
    exit: Arc<ExitState>,
}

impl FakeVm {
    fn new(gh_slots: u16) -> Arc<Self> {
        let mut segment0 = PciSegment::new(0);
        segment0
            .add_device(Some(0), Arc::new(Mutex::new(HostBridge::new())))
            .unwrap();
        let segments = std::iter::once(segment0)
            .chain((1..=gh_slots).map(PciSegment::new))
            .map(Mutex::new)
            .collect();
        Arc::new(FakeVm {
            gh_slots: usize::from(gh_slots),
            segments,
            ejects: Ejects::new(gh_slots + 1),
            state: Mutex::new(State {
                guest_ejects: true,
                ..State::default()
            }),
            resources: Mutex::new(Resources::new(gh_slots)),
            exit: Arc::new(ExitState::default()),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    fn call(&self, call: String) {
        self.state().calls.push(call);
    }

    /// The calls since the last look.
    fn calls(&self) -> Vec<String> {
        std::mem::take(&mut self.state().calls)
    }

    /// Devices assigned and not torn down.
    fn live(&self) -> usize {
        self.state()
            .assigned
            .iter()
            .filter(|d| !d.lock().torn_down)
            .count()
    }

    /// The slots of `segment` that hold a function.
    fn occupied(&self, segment: u16) -> Vec<u8> {
        let seg = self.segments[usize::from(segment)].lock();
        (0..32)
            .filter(|&device| {
                let addr = pci::ConfigAddress {
                    bus: 0,
                    device,
                    function: 0,
                    reg: 0,
                };
                seg.device(&addr).is_some()
            })
            .collect()
    }

    /// What the kernel does on unbind, as the request watcher passes it on: calls the
    /// device's callback.
    fn host_asks(&self, path: &str) -> bool {
        let mut state = self.state();
        let (_, on_request) = state
            .watchers
            .iter_mut()
            .rev()
            .find(|(d, _)| {
                let d = d.lock();
                d.path == Path::new(path) && !d.torn_down
            })
            .expect("a watched device");
        on_request()
    }

    /// The callback of the device at `path`, as a watcher that already called it holds it.
    fn take_watcher(&self, path: &str) -> OnHostRequest {
        let mut state = self.state();
        let i = state
            .watchers
            .iter()
            .rposition(|(d, _)| d.lock().path == Path::new(path))
            .expect("a watched device");
        state.watchers.remove(i).1
    }
}

fn fault(what: &str) -> String {
    format!("{what}: EBADF")
}

impl Backend for Arc<FakeVm> {
    type Device = FakeDevice;

    fn gh_slots(&self) -> usize {
        self.gh_slots
    }

    fn ejects(&self) -> &Ejects {
        &self.ejects
    }

    fn assign(&self, source: &DeviceSource, segment: u16) -> Result<FakeDevice, HotplugError> {
        let path = source.path();
        self.call(format!("assign {} in {segment}", path.display()));
        if usize::from(segment) >= self.segments.len() {
            return Err(HotplugError::NoSuchSegment(segment));
        }
        let mut state = self.state();
        if state.fail_assign {
            return Err(VfioSetupError::Config(fault("assign")).into());
        }
        let held = self
            .resources
            .lock()
            .take(segment)
            .map_err(VfioSetupError::Config)?;
        let device = Arc::new(Mutex::new(FakeFunction {
            path: path.to_path_buf(),
            torn_down: false,
            held: Some(held),
        }));
        state.assigned.push(device.clone());
        Ok(device)
    }

    fn plug(
        &self,
        segment: u16,
        slot: Option<u8>,
        device: &FakeDevice,
    ) -> Result<u8, pci::PciError> {
        let plugged = self.segments[usize::from(segment)]
            .lock()
            .add_device(slot, device.clone());
        self.call(format!("plug {segment}:{plugged:?}"));
        plugged
    }

    fn unplug(&self, segment: u16, slot: u8) {
        let removed = self.segments[usize::from(segment)]
            .lock()
            .remove_device(slot);
        if removed.is_err() || (segment, slot) == (0, 0) {
            let misuse = format!("unplug of {segment}:{slot}, which holds no device of ours");
            self.resources.lock().misuse.push(misuse);
        }
        self.call(format!("unplug {segment}:{slot}"));
    }

    fn teardown(&self, device: &FakeDevice) {
        let mut d = device.lock();
        d.torn_down = true;
        if let Some(held) = d.held.take() {
            self.resources.lock().give_back(held);
        }
        self.call(format!("teardown {}", d.path.display()));
    }

    /// One 64-bit prefetchable BAR 2 per device, at an address made from its path's length.
    fn guest_bars(&self, device: &FakeDevice) -> Vec<crate::hotplug::GuestBar> {
        let base = 0x40_0000_0000 + ((device.lock().path.as_os_str().len() as u64) << 24);
        let spec = pci::BarSpec {
            size: 16 << 20,
            kind: pci::BarKind::Mem64,
            prefetchable: true,
        };
        vec![(2, spec, base)]
    }

    fn counters(&self, _: &FakeDevice) -> std::collections::BTreeMap<String, u64> {
        std::collections::BTreeMap::new()
    }

    fn watch_requests(
        &self,
        device: &FakeDevice,
        on_request: OnHostRequest,
    ) -> Result<bool, String> {
        self.call(format!("watch {}", device.lock().path.display()));
        self.state().watchers.push((device.clone(), on_request));
        Ok(true)
    }

    fn announce_added(&self, segment: u16, slot: u8) -> Result<(), String> {
        self.call(format!("added {segment}:{slot}"));
        if self.state().fail_announce_added {
            return Err(fault("GED interrupt"));
        }
        Ok(())
    }

    fn announce_removal(&self, segment: u16, slot: u8) -> Result<(), String> {
        self.call(format!("removal {segment}:{slot}"));
        let state = self.state();
        if state.panic_announce_removal {
            drop(state);
            panic!("slot {segment}:{slot} has no eject state");
        }
        if state.fail_announce_removal {
            return Err(fault("GED interrupt"));
        }
        if state.guest_ejects {
            self.ejects.record(segment, slot);
        }
        Ok(())
    }
}

type Vm = Arc<Hotplug<Arc<FakeVm>>>;

fn vm(gh_slots: u16) -> (Vm, Arc<FakeVm>) {
    let fake = FakeVm::new(gh_slots);
    (Hotplug::new(fake.clone(), TIMEOUT, fake.exit.clone()), fake)
}

fn at(segment: u16, device: u8) -> PciAddress {
    PciAddress {
        segment,
        bus: 0,
        device,
        function: 0,
    }
}

fn add(
    vm: &Vm,
    path: &str,
    id: Option<&str>,
    placement: Placement,
) -> Result<(String, PciAddress), HotplugError> {
    vm.hot_add(&vfio(path), id.map(String::from), placement)
}

fn ids(vm: &Vm) -> Vec<String> {
    vm.attached().into_iter().map(|d| d.id).collect()
}

fn strings(calls: &[&str]) -> Vec<String> {
    calls.iter().map(|c| c.to_string()).collect()
}

/// Calls a request callback as the watcher thread does, and waits until the give-back it
/// starts has ended: its thread holds a weak reference to `vm` until then.
fn host_asks(vm: &Vm, mut ask: impl FnMut() -> bool) {
    let before = Arc::weak_count(vm);
    assert!(ask(), "the give-back started");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Arc::weak_count(vm) != before {
        assert!(Instant::now() < deadline, "the give-back did not end");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn boot_attach_places_devices_without_telling_the_guest() {
    let (vm, fake) = vm(1);
    let a = vm.attach(&vfio("/a"), None, Placement::Segment0).unwrap();
    let b = vm
        .attach(&vfio("/b"), Some("gpu".into()), Placement::GhSlot(0))
        .unwrap();
    assert_eq!(a, ("_vfio0".to_string(), at(0, 1)));
    assert_eq!(b, ("gpu".to_string(), at(1, 0)));
    assert_eq!(
        fake.calls(),
        strings(&[
            "assign /a in 0",
            "plug 0:Ok(1)",
            "watch /a",
            "assign /b in 1",
            "plug 1:Ok(0)",
            "watch /b",
        ])
    );
    assert_eq!(
        vm.attached(),
        [
            AttachedDevice {
                id: "_vfio0".into(),
                path: "/a".into(),
                user: false,
                address: at(0, 1)
            },
            AttachedDevice {
                id: "gpu".into(),
                path: "/b".into(),
                user: false,
                address: at(1, 0)
            },
        ]
    );
}

#[test]
fn detach_all_tears_every_device_down_without_the_guest() {
    let (vm, fake) = vm(1);
    add(&vm, "/a", Some("gpu0"), Placement::GhSlot(0)).unwrap();
    add(&vm, "/b", None, Placement::Segment0).unwrap();
    // What the attaches did.
    let _ = fake.calls();
    vm.detach_all();
    assert_eq!(
        fake.calls(),
        strings(&["unplug 1:0", "teardown /a", "unplug 0:1", "teardown /b"])
    );
    assert!(vm.attached().is_empty());
    vm.detach_all();
    assert!(fake.calls().is_empty());
}

#[test]
fn attached_devices_come_with_their_bars_and_leave_with_them() {
    let (vm, _fake) = vm(1);
    add(&vm, "/a", Some("gpu0"), Placement::GhSlot(0)).unwrap();
    add(&vm, "/bb", None, Placement::Segment0).unwrap();
    let listed = vm.attached_with_bars();
    let summary: Vec<_> = listed
        .iter()
        .map(|(d, bars)| {
            let bars: Vec<_> = bars
                .iter()
                .map(|(i, s, base)| (*i, s.size, *base))
                .collect();
            (d.id.as_str(), d.address, bars)
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                "gpu0",
                at(1, 0),
                vec![(2, 16 << 20, 0x40_0000_0000 + (2 << 24))]
            ),
            (
                "_vfio0",
                at(0, 1),
                vec![(2, 16 << 20, 0x40_0000_0000 + (3 << 24))]
            ),
        ]
    );
    vm.hot_remove("gpu0").unwrap();
    let left: Vec<_> = vm
        .attached_with_bars()
        .into_iter()
        .map(|(d, bars)| (d.id, bars.len()))
        .collect();
    assert_eq!(left, [("_vfio0".to_string(), 1)]);
}

#[test]
fn a_hot_added_device_is_set_up_before_the_guest_is_told() {
    let (vm, fake) = vm(0);
    assert_eq!(
        add(&vm, "/a", None, Placement::Segment0).unwrap().1,
        at(0, 1)
    );
    assert_eq!(
        fake.calls(),
        strings(&["assign /a in 0", "plug 0:Ok(1)", "watch /a", "added 0:1"])
    );
    assert_eq!(fake.live(), 1);
}

#[test]
fn auto_ids_count_up_and_an_explicit_id_is_free_again_after_removal() {
    let (vm, fake) = vm(0);
    assert_eq!(
        add(&vm, "/a", None, Placement::Segment0).unwrap().0,
        "_vfio0"
    );
    assert_eq!(
        add(&vm, "/b", Some("gpu0"), Placement::Segment0).unwrap().0,
        "gpu0"
    );
    assert_eq!(
        add(&vm, "/c", Some("_vfio1"), Placement::Segment0)
            .unwrap()
            .0,
        "_vfio1"
    );
    assert_eq!(
        add(&vm, "/d", None, Placement::Segment0).unwrap().0,
        "_vfio2"
    );
    fake.calls();
    let dup = add(&vm, "/e", Some("gpu0"), Placement::Segment0).unwrap_err();
    assert!(matches!(&dup, HotplugError::DuplicateId(id) if id == "gpu0"));
    assert_eq!(
        dup.to_string(),
        "a device with id 'gpu0' is already attached"
    );
    assert!(
        fake.calls().is_empty(),
        "refused before anything was assigned"
    );

    vm.hot_remove("gpu0").unwrap();
    vm.hot_remove("_vfio0").unwrap();
    assert_eq!(
        add(&vm, "/e", Some("gpu0"), Placement::Segment0).unwrap().0,
        "gpu0"
    );
    assert_eq!(
        add(&vm, "/a", None, Placement::Segment0).unwrap().0,
        "_vfio3",
        "auto ids are not reused"
    );
    assert_eq!(ids(&vm), ["_vfio1", "_vfio2", "gpu0", "_vfio3"]);
}

#[test]
fn a_path_attached_twice_is_refused() {
    let (vm, fake) = vm(0);
    add(&vm, "/a", None, Placement::Segment0).unwrap();
    fake.calls();
    let e = add(&vm, "/a", Some("other"), Placement::Segment0).unwrap_err();
    assert!(matches!(&e, HotplugError::DuplicatePath(p) if p == Path::new("/a")));
    assert_eq!(e.to_string(), "/a is already attached");
    assert!(fake.calls().is_empty());
    assert_eq!(ids(&vm), ["_vfio0"]);
}

#[test]
fn gh_slots_are_placed_refused_when_taken_and_reused_once_free() {
    let (vm, fake) = vm(2);
    assert_eq!(
        add(&vm, "/a", None, Placement::AnyGhSlot).unwrap().1,
        at(1, 0)
    );
    assert_eq!(
        add(&vm, "/b", None, Placement::AnyGhSlot).unwrap().1,
        at(2, 0)
    );
    fake.calls();
    let refused = [
        (Placement::AnyGhSlot, "every GH slot is taken"),
        (Placement::GhSlot(0), "GH slot 0 is taken"),
        (
            Placement::GhSlot(2),
            "GH slot 2 does not exist (the VM has 2)",
        ),
    ];
    for (placement, text) in refused {
        let e = add(&vm, "/c", None, placement).unwrap_err();
        assert_eq!(e.to_string(), text);
    }
    assert!(
        fake.calls().is_empty(),
        "refused before anything was assigned"
    );
    vm.hot_remove("_vfio0").unwrap();
    assert_eq!(
        add(&vm, "/c", None, Placement::AnyGhSlot).unwrap().1,
        at(1, 0)
    );
    vm.hot_remove("_vfio1").unwrap();
    assert_eq!(
        add(&vm, "/d", None, Placement::GhSlot(1)).unwrap().1,
        at(2, 0)
    );

    let (plain, _) = self::vm(0);
    let e = add(&plain, "/a", None, Placement::GhSlot(0)).unwrap_err();
    assert!(matches!(e, HotplugError::NoGhProfile));
}

/// Nothing of a failed add stays: no id, no slot, no segment entry, no live device.
fn assert_nothing_stays(vm: &Vm, fake: &FakeVm) {
    assert!(vm.attached().is_empty());
    assert_eq!(fake.live(), 0);
    assert_eq!(fake.occupied(0), [0], "only the host bridge");
}

#[test]
fn a_failed_assign_leaves_nothing() {
    let (vm, fake) = vm(0);
    fake.state().fail_assign = true;
    let e = add(&vm, "/a", Some("gpu0"), Placement::Segment0).unwrap_err();
    assert!(matches!(e, HotplugError::Setup(_)));
    assert_eq!(fake.calls(), ["assign /a in 0"]);
    assert_nothing_stays(&vm, &fake);
    fake.state().fail_assign = false;
    assert_eq!(
        add(&vm, "/a", Some("gpu0"), Placement::Segment0).unwrap().0,
        "gpu0"
    );
}

#[test]
fn a_full_segment_leaves_nothing_of_the_device_that_did_not_fit() {
    let (vm, fake) = vm(0);
    for n in 1..32 {
        vm.attach(&vfio(&format!("/d{n}")), None, Placement::Segment0)
            .unwrap();
    }
    fake.calls();
    let e = add(&vm, "/x", Some("x"), Placement::Segment0).unwrap_err();
    assert!(matches!(
        e,
        HotplugError::NoPciSlot {
            segment: 0,
            error: pci::PciError::NoFreeSlot(0)
        }
    ));
    assert_eq!(
        fake.calls(),
        strings(&["assign /x in 0", "plug 0:Err(NoFreeSlot(0))", "teardown /x"])
    );
    assert_eq!(fake.live(), 31);
    assert_eq!(vm.attached().len(), 31);
    vm.hot_remove("_vfio4").unwrap();
    assert_eq!(
        add(&vm, "/x", Some("x"), Placement::Segment0).unwrap().1,
        at(0, 5)
    );
}

#[test]
fn a_guest_that_cannot_be_told_leaves_nothing() {
    let (vm, fake) = vm(0);
    fake.state().fail_announce_added = true;
    let e = add(&vm, "/a", Some("gpu0"), Placement::Segment0).unwrap_err();
    assert_eq!(
        e.to_string(),
        "cannot notify the guest: GED interrupt: EBADF"
    );
    assert_eq!(
        fake.calls(),
        strings(&[
            "assign /a in 0",
            "plug 0:Ok(1)",
            "watch /a",
            "added 0:1",
            "unplug 0:1",
            "teardown /a",
        ])
    );
    assert_nothing_stays(&vm, &fake);
    fake.state().fail_announce_added = false;
    assert_eq!(
        add(&vm, "/a", Some("gpu0"), Placement::Segment0).unwrap(),
        ("gpu0".to_string(), at(0, 1))
    );
}

#[test]
fn a_removal_the_guest_ejects_releases_everything() {
    let (vm, fake) = vm(1);
    add(&vm, "/a", None, Placement::GhSlot(0)).unwrap();
    fake.calls();
    vm.hot_remove("_vfio0").unwrap();
    assert_eq!(
        fake.calls(),
        strings(&["removal 1:0", "unplug 1:0", "teardown /a"])
    );
    assert!(vm.attached().is_empty());
    assert_eq!(fake.live(), 0);
    assert!(fake.occupied(1).is_empty());
}

#[test]
fn a_removal_the_guest_does_not_eject_in_time_leaves_the_device() {
    let (vm, fake) = vm(0);
    add(&vm, "/a", Some("gpu0"), Placement::Segment0).unwrap();
    fake.state().guest_ejects = false;
    fake.calls();
    let e = vm.hot_remove("gpu0").unwrap_err();
    assert!(matches!(&e, HotplugError::EjectTimeout { id, secs: 0 } if id == "gpu0"));
    assert_eq!(fake.calls(), ["removal 0:1"]);
    assert_eq!(ids(&vm), ["gpu0"]);
    assert_eq!(fake.live(), 1);
    assert_eq!(fake.occupied(0), [0, 1]);

    // An eject that came after the timeout does not answer the next removal's request: that
    // one waits for an eject of its own.
    fake.ejects.record(0, 1);
    assert!(matches!(
        vm.hot_remove("gpu0"),
        Err(HotplugError::EjectTimeout { .. })
    ));
    fake.state().guest_ejects = true;
    vm.hot_remove("gpu0").unwrap();
    assert!(vm.attached().is_empty());
    assert_eq!(fake.live(), 0);
}

#[test]
fn a_removal_the_guest_cannot_be_asked_for_leaves_the_device() {
    let (vm, fake) = vm(0);
    add(&vm, "/a", Some("gpu0"), Placement::Segment0).unwrap();
    fake.state().fail_announce_removal = true;
    let e = vm.hot_remove("gpu0").unwrap_err();
    assert_eq!(
        e.to_string(),
        "cannot notify the guest: GED interrupt: EBADF"
    );
    assert_eq!(ids(&vm), ["gpu0"]);
    assert_eq!(fake.live(), 1);
}

#[test]
fn removing_an_unknown_id_is_an_error_and_touches_nothing() {
    let (vm, fake) = vm(0);
    add(&vm, "/a", None, Placement::Segment0).unwrap();
    fake.calls();
    let e = vm.hot_remove("gpu9").unwrap_err();
    assert!(matches!(&e, HotplugError::UnknownId(id) if id == "gpu9"));
    assert_eq!(e.to_string(), "no device with id 'gpu9'");
    assert!(fake.calls().is_empty());
    assert_eq!(ids(&vm), ["_vfio0"]);
}

#[test]
fn the_host_gets_a_device_back_that_the_guest_ejects() {
    let (vm, fake) = vm(1);
    add(&vm, "/a", Some("gpu0"), Placement::GhSlot(0)).unwrap();
    fake.calls();
    host_asks(&vm, || fake.host_asks("/a"));
    assert_eq!(
        fake.calls(),
        strings(&["removal 1:0", "unplug 1:0", "teardown /a"])
    );
    assert!(vm.attached().is_empty());
    assert_eq!(fake.live(), 0);
    assert!(matches!(
        vm.hot_remove("gpu0"),
        Err(HotplugError::UnknownId(_))
    ));
}

#[test]
fn the_host_gets_a_device_back_that_the_guest_does_not_eject() {
    let (vm, fake) = vm(1);
    add(&vm, "/a", Some("gpu0"), Placement::GhSlot(0)).unwrap();
    fake.state().guest_ejects = false;
    fake.calls();
    host_asks(&vm, || fake.host_asks("/a"));
    assert_eq!(
        fake.calls(),
        strings(&[
            "removal 1:0",
            "unplug 1:0",
            "teardown /a",
            // The surprise removal is announced: the guest drops its stale copy.
            "removal 1:0"
        ])
    );
    assert!(vm.attached().is_empty());
    assert_eq!(fake.live(), 0);
    assert!(fake.occupied(1).is_empty());
}

#[test]
fn the_host_gets_a_device_back_even_when_the_guest_cannot_be_told() {
    let (vm, fake) = vm(0);
    add(&vm, "/a", None, Placement::Segment0).unwrap();
    fake.state().fail_announce_removal = true;
    fake.calls();
    host_asks(&vm, || fake.host_asks("/a"));
    assert_eq!(
        fake.calls(),
        strings(&["removal 0:1", "unplug 0:1", "teardown /a", "removal 0:1"])
    );
    assert!(vm.attached().is_empty());
    assert_eq!(fake.live(), 0);
}

#[test]
fn a_late_host_request_never_removes_a_newer_device_with_the_same_id() {
    let (vm, fake) = vm(0);
    add(&vm, "/a", Some("gpu0"), Placement::Segment0).unwrap();
    // The host asked, but the give-back waits for the operation lock while the API removes
    // the device and adds it again under the same id, path and slot.
    let mut late = fake.take_watcher("/a");
    vm.hot_remove("gpu0").unwrap();
    assert_eq!(
        add(&vm, "/a", Some("gpu0"), Placement::Segment0).unwrap(),
        ("gpu0".to_string(), at(0, 1))
    );
    fake.calls();
    host_asks(&vm, &mut late);
    assert!(fake.calls().is_empty(), "the newer device is left alone");
    assert_eq!(ids(&vm), ["gpu0"]);
    assert_eq!(fake.live(), 1);
    // Its own request still takes it.
    host_asks(&vm, || fake.host_asks("/a"));
    assert!(vm.attached().is_empty());
    assert_eq!(fake.live(), 0);
}

#[test]
fn a_removal_waiting_for_the_guest_blocks_no_other_add_or_remove() {
    let fake = FakeVm::new(0);
    // Long enough that a test waiting for it would stand out.
    let vm: Vm = Hotplug::new(fake.clone(), Duration::from_secs(30), fake.exit.clone());
    add(&vm, "/stuck", Some("stuck"), Placement::Segment0).unwrap();
    add(&vm, "/b", Some("b"), Placement::Segment0).unwrap();
    fake.state().guest_ejects = false;
    let waiting = {
        let vm = vm.clone();
        std::thread::spawn(move || vm.hot_remove("stuck"))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fake.calls().iter().any(|c| c == "removal 0:1") {
        assert!(Instant::now() < deadline, "the removal did not start");
        std::thread::sleep(Duration::from_millis(2));
    }

    // While it waits: another add, and another removal the guest ejects, go through at once.
    let started = Instant::now();
    add(&vm, "/c", Some("c"), Placement::Segment0).unwrap();
    fake.state().guest_ejects = true;
    vm.hot_remove("b").unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // A second removal of the waiting device is refused at once.
    let again = vm.hot_remove("stuck").unwrap_err();
    assert!(
        matches!(&again, HotplugError::RemovalPending(id) if id == "stuck"),
        "{again}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // The guest ejects it at last: the waiting removal completes.
    fake.ejects.record(0, 1);
    waiting.join().unwrap().unwrap();
    assert_eq!(ids(&vm), ["c"]);
}

#[test]
fn a_host_request_during_a_pending_removal_waits_for_it() {
    let fake = FakeVm::new(0);
    let vm: Vm = Hotplug::new(fake.clone(), Duration::from_secs(30), fake.exit.clone());
    add(&vm, "/a", Some("gpu0"), Placement::Segment0).unwrap();
    fake.state().guest_ejects = false;
    fake.calls();
    let api = {
        let vm = vm.clone();
        std::thread::spawn(move || vm.hot_remove("gpu0"))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fake.calls().iter().any(|c| c == "removal 0:1") {
        assert!(Instant::now() < deadline, "the removal did not start");
        std::thread::sleep(Duration::from_millis(2));
    }
    let host = {
        let (vm, fake) = (vm.clone(), fake.clone());
        std::thread::spawn(move || host_asks(&vm, || fake.host_asks("/a")))
    };
    std::thread::sleep(Duration::from_millis(100));
    assert!(fake.calls().is_empty(), "the give-back waits its turn");

    // The guest ejects: the API's removal detaches the device, and the give-back finds it
    // gone.
    fake.ejects.record(0, 1);
    api.join().unwrap().unwrap();
    host.join().unwrap();
    assert_eq!(fake.calls(), strings(&["unplug 0:1", "teardown /a"]));
    assert!(vm.attached().is_empty());
}

#[test]
fn a_panic_on_a_give_back_thread_ends_the_vm_with_a_fault() {
    let (vm, fake) = vm(0);
    add(&vm, "/a", Some("gpu0"), Placement::Segment0).unwrap();
    fake.state().panic_announce_removal = true;
    host_asks(&vm, || fake.host_asks("/a"));
    assert_eq!(
        fake.exit.wait_for(Duration::from_secs(10)),
        Some(ExitReason::Fault(
            "thread 'ghvmm-giveback' panicked: slot 0:1 has no eject state".into()
        ))
    );
}

#[test]
fn hot_plug_reports_device_added_and_removed_events() {
    let (events, out) = crate::event_monitor::testing::captured();
    let fake = FakeVm::new(1);
    let vm = Hotplug::with_events(fake.clone(), TIMEOUT, fake.exit.clone(), events.clone());
    // Boot attachments are part of the boot, not hot plug events (as Cloud Hypervisor).
    vm.attach(&vfio("/boot"), None, Placement::Segment0)
        .unwrap();
    add(&vm, "/a", Some("gpu0"), Placement::GhSlot(0)).unwrap();
    vm.hot_remove("gpu0").unwrap();
    add(&vm, "/b", Some("gpu1"), Placement::Segment0).unwrap();
    host_asks(&vm, || fake.host_asks("/b"));
    // A removal the guest does not answer removes nothing, so no event.
    add(&vm, "/c", Some("gpu2"), Placement::Segment0).unwrap();
    fake.state().guest_ejects = false;
    assert!(vm.hot_remove("gpu2").is_err());
    // An add the guest cannot be told of is rolled back: no event either.
    fake.state().fail_announce_added = true;
    assert!(add(&vm, "/d", Some("gpu3"), Placement::Segment0).is_err());
    events.drain(Duration::from_secs(10));
    let seen: Vec<(String, String)> = out
        .events()
        .iter()
        .map(|e| {
            assert_eq!(e["source"], "vm");
            (
                e["event"].as_str().unwrap_or_default().to_string(),
                e["properties"].to_string(),
            )
        })
        .collect();
    let ev = |e: &str, p: &str| (e.to_string(), p.to_string());
    assert_eq!(
        seen,
        [
            ev("device-added", r#"{"bdf":"0001:00:00.0","id":"gpu0"}"#),
            ev("device-removed", r#"{"id":"gpu0"}"#),
            ev("device-added", r#"{"bdf":"0000:00:02.0","id":"gpu1"}"#),
            ev("device-removed", r#"{"id":"gpu1"}"#),
            ev("device-added", r#"{"bdf":"0000:00:02.0","id":"gpu2"}"#),
        ]
    );
}
