//! Random interleavings of boot attaches, hot adds, removals, the guest's ejects (asked for
//! or not) and the host asking devices back (give-back, and late requests of devices already
//! gone), with the fake VM side failing where it can, against a model of what `Hotplug`
//! promises. After every operation: each result is the model's, the attached devices are
//! the model's, nothing leaked (every live fake device is attached, every attached one is
//! live and in its slot, every slot holds an attached device or what was there before) and
//! nothing was released twice, and the VM's BAR ranges, KVM memory slots and bus traps held
//! are exactly those of the attached devices. At the end every id, slot, KVM memory slot and
//! BAR range can be used again.
//!
//! `HOTPLUG_CASES=N` runs N cases (default `DEFAULT_CASES`); a failure names its case's
//! seed, and `HOTPLUG_SEED=S` runs that one case alone.

use std::collections::BTreeSet;

use super::*;

const DEFAULT_CASES: u64 = 300;
const OPS_PER_CASE: usize = 40;
const PATHS: [&str; 6] = ["/a", "/b", "/c", "/d", "/e", "/f"];
const IDS: [&str; 3] = ["gpu0", "gpu1", "_vfio1"];
/// GH slots of a case's VM: 0 to this.
const MAX_GH_SLOTS: u16 = 2;
const SLOTS: u8 = 32;

/// xorshift64*: small, seeded, and the same on every machine.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

#[derive(Debug, Clone)]
enum Op {
    Add {
        path: String,
        id: Option<String>,
        placement: Placement,
        hot: bool,
    },
    Remove(String),
    /// The guest writes `_EJ0` for a slot nobody asked it to eject.
    GuestEjects(u16, u8),
    /// The host asks for the device at this path back (its request watcher fires).
    HostAsks(String),
    /// A request watcher of a device that is gone fires (a give-back that lost the race).
    LateHostRequest,
    FailAssign(bool),
    FailAnnounceAdded(bool),
    FailAnnounceRemoval(bool),
    GuestEjectsWhenAsked(bool),
}

/// What `Hotplug` should report: the id and address, or which error.
type Outcome = Result<(String, PciAddress), &'static str>;

fn kind(e: &HotplugError) -> &'static str {
    match e {
        HotplugError::Setup(_) => "Setup",
        HotplugError::DuplicateId(_) => "DuplicateId",
        HotplugError::DuplicatePath(_) => "DuplicatePath",
        HotplugError::UnknownId(_) => "UnknownId",
        HotplugError::NoGhProfile => "NoGhProfile",
        HotplugError::NoSuchSlot { .. } => "NoSuchSlot",
        HotplugError::SlotTaken(_) => "SlotTaken",
        HotplugError::NoFreeGhSlot => "NoFreeGhSlot",
        HotplugError::NoSuchSegment(_) => "NoSuchSegment",
        HotplugError::NoPciSlot { .. } => "NoPciSlot",
        HotplugError::Notify(_) => "Notify",
        HotplugError::EjectTimeout { .. } => "EjectTimeout",
        // Operations here run one at a time: a removal is never pending beside another.
        HotplugError::RemovalPending(_) => "RemovalPending",
    }
}

/// What the VM should have: the attached devices in attach order, the slots of segment 0
/// taken by functions that are not `Hotplug`'s, the next automatic id, the faults.
struct Model {
    gh_slots: u16,
    attached: Vec<(String, String, PciAddress)>,
    others: BTreeSet<u8>,
    next_auto: u32,
    fail_assign: bool,
    fail_announce_added: bool,
    fail_announce_removal: bool,
    guest_ejects: bool,
}

impl Model {
    fn has_id(&self, id: &str) -> bool {
        self.attached.iter().any(|(i, _, _)| i == id)
    }

    fn taken(&self, segment: u16, slot: u8) -> bool {
        (segment == 0 && (slot == 0 || self.others.contains(&slot)))
            || self
                .attached
                .iter()
                .any(|(_, _, a)| a.segment == segment && a.device == slot)
    }

    fn add(&mut self, path: &str, id: Option<&str>, p: Placement, hot: bool) -> Outcome {
        if id.is_some_and(|id| self.has_id(id)) {
            return Err("DuplicateId");
        }
        if self.attached.iter().any(|(_, p, _)| *p == path) {
            return Err("DuplicatePath");
        }
        let gh = self.gh_slots;
        let segment = match p {
            Placement::Segment0 => 0,
            Placement::Segment(s) if s > gh => return Err("NoSuchSegment"),
            Placement::Segment(s) if self.taken(s, 0) => return Err("SlotTaken"),
            Placement::Segment(s) => s,
            Placement::GhSlot(_) | Placement::AnyGhSlot if gh == 0 => return Err("NoGhProfile"),
            Placement::GhSlot(k) if k >= gh => return Err("NoSuchSlot"),
            Placement::GhSlot(k) if self.taken(k + 1, 0) => return Err("SlotTaken"),
            Placement::GhSlot(k) => k + 1,
            Placement::AnyGhSlot => match (0..gh).find(|k| !self.taken(k + 1, 0)) {
                Some(k) => k + 1,
                None => return Err("NoFreeGhSlot"),
            },
        };
        if self.fail_assign {
            return Err("Setup");
        }
        let slot = if segment == 0 {
            match (0..SLOTS).find(|s| !self.taken(0, *s)) {
                Some(s) => s,
                None => return Err("NoPciSlot"),
            }
        } else {
            0
        };
        let id = match id {
            Some(id) => id.to_string(),
            None => loop {
                let candidate = format!("_vfio{}", self.next_auto);
                self.next_auto += 1;
                if !self.has_id(&candidate) {
                    break candidate;
                }
            },
        };
        if hot && self.fail_announce_added {
            return Err("Notify");
        }
        let address = at(segment, slot);
        self.attached.push((id.clone(), path.to_string(), address));
        Ok((id, address))
    }

    fn remove(&mut self, id: &str) -> Result<(), &'static str> {
        let Some(i) = self.attached.iter().position(|(x, _, _)| x == id) else {
            return Err("UnknownId");
        };
        if self.fail_announce_removal {
            return Err("Notify");
        }
        // An eject the guest wrote before it was asked does not count.
        if !self.guest_ejects {
            return Err("EjectTimeout");
        }
        self.attached.remove(i);
        Ok(())
    }
}

fn op(rng: &mut Rng, model: &Model) -> Op {
    let gh = model.gh_slots;
    match rng.below(100) {
        0..=34 => Op::Add {
            path: rng.pick(&PATHS).to_string(),
            id: rng.chance(40).then(|| rng.pick(&IDS).to_string()),
            placement: match rng.below(4) {
                0 => Placement::Segment0,
                // One past the last GH slot too.
                1 => Placement::GhSlot(rng.below(u64::from(gh) + 1) as u16),
                // Segments 1 to one past the last.
                2 => Placement::Segment(rng.below(u64::from(gh) + 1) as u16 + 1),
                _ => Placement::AnyGhSlot,
            },
            hot: rng.chance(80),
        },
        35..=59 => {
            let known: Vec<String> = model.attached.iter().map(|a| a.0.clone()).collect();
            match rng.chance(85) && !known.is_empty() {
                true => Op::Remove(rng.pick(&known).clone()),
                false => Op::Remove(rng.pick(&IDS).to_string()),
            }
        }
        60..=69 => Op::GuestEjects(
            rng.below(u64::from(gh) + 1) as u16,
            rng.below(u64::from(SLOTS)) as u8,
        ),
        70..=79 => match model.attached.is_empty() {
            true => Op::LateHostRequest,
            false => Op::HostAsks(rng.pick(&model.attached).1.clone()),
        },
        80..=83 => Op::LateHostRequest,
        84..=87 => Op::FailAssign(rng.chance(30)),
        88..=91 => Op::FailAnnounceAdded(rng.chance(30)),
        92..=95 => Op::FailAnnounceRemoval(rng.chance(30)),
        _ => Op::GuestEjectsWhenAsked(rng.chance(60)),
    }
}

/// A request watcher's callback whose device is torn down, if any.
fn late_watcher(fake: &FakeVm) -> Option<OnHostRequest> {
    let mut state = fake.state();
    let i = state
        .watchers
        .iter()
        .position(|(d, _)| d.lock().torn_down)?;
    Some(state.watchers.remove(i).1)
}

fn apply(vm: &Vm, fake: &FakeVm, model: &mut Model, op: &Op) {
    match op {
        Op::Add {
            path,
            id,
            placement,
            hot,
        } => {
            let want = model.add(path, id.as_deref(), *placement, *hot);
            let source = vfio(path);
            let id = id.clone();
            let got = match hot {
                true => vm.hot_add(&source, id, *placement),
                false => vm.attach(&source, id, *placement),
            };
            assert_eq!(got.map_err(|e| kind(&e)), want);
        }
        Op::Remove(id) => {
            let want = model.remove(id);
            assert_eq!(vm.hot_remove(id).map_err(|e| kind(&e)), want);
        }
        Op::GuestEjects(segment, slot) => fake.ejects.record(*segment, *slot),
        Op::HostAsks(path) => {
            // The device goes back to the host whatever the guest and the controller do.
            host_asks(vm, || fake.host_asks(path));
            model.attached.retain(|(_, p, _)| p != path);
        }
        Op::LateHostRequest => {
            if let Some(mut late) = late_watcher(fake) {
                host_asks(vm, &mut late);
            }
        }
        Op::FailAssign(on) => {
            fake.state().fail_assign = *on;
            model.fail_assign = *on;
        }
        Op::FailAnnounceAdded(on) => {
            fake.state().fail_announce_added = *on;
            model.fail_announce_added = *on;
        }
        Op::FailAnnounceRemoval(on) => {
            fake.state().fail_announce_removal = *on;
            model.fail_announce_removal = *on;
        }
        Op::GuestEjectsWhenAsked(on) => {
            fake.state().guest_ejects = *on;
            model.guest_ejects = *on;
        }
    }
}

/// The invariants that hold between any two operations.
fn check(vm: &Vm, fake: &FakeVm, model: &Model) {
    let listed: Vec<(String, PathBuf, PciAddress)> = vm
        .attached()
        .into_iter()
        .map(|d| (d.id, d.path, d.address))
        .collect();
    let modelled: Vec<(String, PathBuf, PciAddress)> = model
        .attached
        .iter()
        .map(|(id, p, a)| (id.clone(), PathBuf::from(p), *a))
        .collect();
    assert_eq!(listed, modelled, "the attached devices");
    // No leak, no use after teardown: the live fake devices are exactly the attached ones.
    let live = fake.live();
    assert_eq!(
        live,
        model.attached.len(),
        "live devices (assigned, not torn down)"
    );
    // Each slot holds what the model says: an attached device, or what was there before.
    for segment in 0..=model.gh_slots {
        let want: Vec<u8> = (0..SLOTS).filter(|s| model.taken(segment, *s)).collect();
        assert_eq!(
            fake.occupied(segment),
            want,
            "occupied slots of segment {segment}"
        );
    }
    let r = fake.resources.lock();
    assert!(r.misuse.is_empty(), "released twice: {:?}", r.misuse);
    let per_device = FAKE_BARS.len();
    assert_eq!(
        r.kvm_slots.in_use() as usize,
        RAM_SLOTS as usize + per_device * live,
        "KVM memory slots in use"
    );
    assert_eq!(r.kvm_slots_out.len(), per_device * live, "KVM slots held");
    assert_eq!(r.mmio_bus.len(), per_device * live, "BAR traps on the bus");
}

/// Everything can be used again: every BAR window is whole, every KVM slot free, every id
/// and slot takes a device.
fn check_reusable(vm: &Vm, fake: &FakeVm, model: &mut Model, ids_seen: &BTreeSet<String>) {
    for f in [
        Op::FailAssign(false),
        Op::FailAnnounceAdded(false),
        Op::FailAnnounceRemoval(false),
        Op::GuestEjectsWhenAsked(true),
    ] {
        apply(vm, fake, model, &f);
    }
    for (id, _, _) in model.attached.clone() {
        apply(vm, fake, model, &Op::Remove(id));
    }
    // The functions that were not ours go too: segment 0 keeps only its host bridge.
    for slot in std::mem::take(&mut model.others) {
        fake.segments[0].lock().remove_device(slot).unwrap();
    }
    check(vm, fake, model);
    {
        let mut r = fake.resources.lock();
        assert_eq!(
            r.kvm_slots.allocate(),
            Ok(RAM_SLOTS),
            "the lowest KVM slot is free"
        );
        r.kvm_slots.release(RAM_SLOTS);
        let layout = Layout::with_segments(
            512 * MIB,
            Some(128 * GIB),
            ExtraSegments {
                count: model.gh_slots,
                mmio64_size: 64 * GIB,
            },
            46,
        )
        .unwrap();
        for s in &layout.segments {
            for (window, w) in [(Window::Mmio32, s.mmio32), (Window::Mmio64, s.mmio64)] {
                let base = r.bars.allocate(s.id, window, w.size);
                assert_eq!(
                    base,
                    Ok(w.start),
                    "segment {}'s {window:?} window is whole",
                    s.id
                );
                r.bars.free(s.id, window, w.start, w.size).unwrap();
            }
        }
    }
    // Every id seen takes a device again.
    for id in ids_seen {
        apply(
            vm,
            fake,
            model,
            &add_op("/a", Some(id), Placement::Segment0),
        );
        apply(vm, fake, model, &Op::Remove(id.clone()));
    }
    // Every slot takes a device: all of segment 0's, each GH slot's.
    let paths: Vec<String> = (0..SLOTS).map(|n| format!("/fill{n}")).collect();
    for p in &paths[1..] {
        apply(vm, fake, model, &add_op(p, None, Placement::Segment0));
    }
    for k in 0..model.gh_slots {
        apply(
            vm,
            fake,
            model,
            &add_op(&paths[0], None, Placement::GhSlot(k)),
        );
        let id = model.attached.last().unwrap().0.clone();
        apply(vm, fake, model, &Op::Remove(id));
    }
    assert_eq!(model.attached.len(), usize::from(SLOTS) - 1);
    check(vm, fake, model);
    for (id, _, _) in model.attached.clone() {
        apply(vm, fake, model, &Op::Remove(id));
    }
    check(vm, fake, model);
}

fn add_op(path: &str, id: Option<&str>, placement: Placement) -> Op {
    Op::Add {
        path: path.to_string(),
        id: id.map(String::from),
        placement,
        hot: true,
    }
}

fn run_case(seed: u64) {
    let mut rng = Rng::new(seed);
    let gh_slots = rng.below(u64::from(MAX_GH_SLOTS) + 1) as u16;
    let fake = FakeVm::new(gh_slots);
    // No wait for an eject: the fake guest ejects at once or never.
    let vm = Hotplug::new(fake.clone(), Duration::ZERO, fake.exit.clone());
    // Functions that are not `Hotplug`'s in segment 0, often nearly all of it, so that a
    // segment fills up.
    let others = match rng.below(3) {
        0 => 0,
        1 => rng.below(u64::from(SLOTS) - 1),
        _ => u64::from(SLOTS) - 1 - rng.below(3),
    } as u8;
    for slot in 1..=others {
        let filler = Arc::new(Mutex::new(FakeFunction {
            path: PathBuf::from("/other"),
            torn_down: false,
            held: None,
        }));
        fake.segments[0]
            .lock()
            .add_device(Some(slot), filler)
            .unwrap();
    }
    let mut model = Model {
        gh_slots,
        attached: Vec::new(),
        others: (1..=others).collect(),
        next_auto: 0,
        fail_assign: false,
        fail_announce_added: false,
        fail_announce_removal: false,
        guest_ejects: true,
    };
    let mut ids_seen = BTreeSet::new();
    for n in 0..OPS_PER_CASE {
        let op = op(&mut rng, &model);
        let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            apply(&vm, &fake, &mut model, &op);
            check(&vm, &fake, &model);
        }));
        if let Err(e) = step {
            eprintln!("HOTPLUG_SEED={seed}: operation {n}: {op:?}");
            std::panic::resume_unwind(e);
        }
        ids_seen.extend(model.attached.iter().map(|a| a.0.clone()));
    }
    let end = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        check_reusable(&vm, &fake, &mut model, &ids_seen)
    }));
    if let Err(e) = end {
        eprintln!("HOTPLUG_SEED={seed}: the final checks");
        std::panic::resume_unwind(e);
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v}: not a number"))
    })
}

#[test]
fn random_interleavings_keep_every_resource_accounted_for() {
    if let Some(seed) = env_u64("HOTPLUG_SEED") {
        return run_case(seed);
    }
    for seed in 0..env_u64("HOTPLUG_CASES").unwrap_or(DEFAULT_CASES) {
        run_case(seed);
    }
}
