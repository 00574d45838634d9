//! One BAR of a passed-through function in the guest: KVM memory slots over host mappings of
//! the device fd for the mappable pieces, and one trap device on the MMIO bus over the whole
//! BAR, which answers what no slot covers (forwarded to the device, ghvmm's padding, the
//! emulated MSI-X table). They are installed, moved and removed together.
//!
//! The slots are created at the guest's first access to a mapped piece, not when the BAR is
//! installed: creating a KVM slot costs time linear in its size on x86 (Debian's kernel zeroes
//! 2 bytes of write-tracking state per 4 KiB page: 48 MiB for a 96 GiB BAR, 150-340 ms in the
//! rig's L2), which would otherwise be paid at every boot and hot add, and compete with the
//! guest's probe for the CPU. The vCPU that first touches the memory builds them (once per
//! install) and is answered through the host mapping; from then on nothing exits.

use std::sync::Arc;

use parking_lot::Mutex;

use devices::{log_limited, Bus, BusDevice, LogLimit};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use pci::vfio::dispatch;
use pci::vfio::{AccessKind, BarCounters, BarLayout, SharedInterrupts};
use vfio::HostMapping;

use super::host::Region;
use crate::memory::bar_allocator::{BarAllocator, Window};
use crate::memory::memslots::MemSlots;

/// The trapped parts of one BAR on the MMIO bus.
pub struct BarTrap {
    pub bar: usize,
    pub bar_base: u64,
    pub layout: BarLayout,
    pub region: Region,
    /// Only the BAR that holds the MSI-X table looks at the interrupt state; the others
    /// (a GPU's memory BAR and its padding) never take that lock.
    pub interrupts: Option<SharedInterrupts>,
    /// Every access this trap serves, by kind.
    counters: Arc<BarCounters>,
    reported: bool,
    /// The BAR's slots and the VM to create them in, once the BAR has mapped pieces.
    lazy: Option<(Slots, Arc<dyn SlotSetter>)>,
    /// The guest moves the BAR and touches it again as often as it likes: the lines that
    /// follow are rate-limited.
    log_limit: LogLimit,
}

impl BarTrap {
    pub fn new(
        bar: usize,
        bar_base: u64,
        layout: BarLayout,
        region: Region,
        interrupts: Option<SharedInterrupts>,
        counters: Arc<BarCounters>,
    ) -> Self {
        BarTrap {
            bar,
            bar_base,
            layout,
            region,
            interrupts,
            counters,
            reported: false,
            lazy: None,
            log_limit: LogLimit::new(),
        }
    }

    /// An access of `len` bytes at BAR offset `at` that lies in a mapped piece: the slots are
    /// built if they are not (the first touch of the memory) and the piece's host address of
    /// `at` returned, for this one access to go through the mapping. None otherwise (the
    /// access is dispatched as usual).
    fn first_touch(&self, at: u64, len: usize) -> Option<u64> {
        let (slots, kvm) = self.lazy.as_ref()?;
        let hva = slots.hva(at, len as u64)?;
        let started = std::time::Instant::now();
        match slots.build(kvm.as_ref(), self.bar_base) {
            Ok(true) => log_limited!(
                self.log_limit,
                log::Level::Info,
                "BAR {}: slots at {:#x} built at the first access ({} us)",
                self.bar,
                self.bar_base,
                started.elapsed().as_micros()
            ),
            Ok(false) => {}
            Err(e) => log_limited!(
                self.log_limit,
                log::Level::Error,
                "BAR {}: {e}; the mapped memory is answered by the trap",
                self.bar
            ),
        }
        Some(hva)
    }

    fn report(&mut self, errors: Vec<dispatch::DeviceError>) {
        // Once per BAR: a failing device must not flood the log from a vCPU loop.
        if let Some(e) = errors.first() {
            if !self.reported {
                log::error!(
                    "BAR {}: region access at {:#x} failed: {}",
                    self.bar,
                    e.offset,
                    e.error
                );
                self.reported = true;
            }
        }
    }
}

impl BusDevice for BarTrap {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        let at = base - self.bar_base + offset;
        if let Some(irq) = &self.interrupts {
            let irq = irq.lock();
            if irq.table_read(self.bar, at, data) {
                self.counters.count(AccessKind::Msix);
                return;
            }
        }
        self.counters
            .count(AccessKind::of(&self.layout, at, data.len()));
        if let Some(hva) = self.first_touch(at, data.len()) {
            // SAFETY: `hva` lies with `data.len()` bytes inside a live host mapping of this
            // BAR (`Slots::hva` checked it; `Slots` keeps the mappings alive).
            unsafe { mapped_read(hva, data) };
            return;
        }
        let errors = dispatch::read(&self.layout, &self.region, at, data);
        self.report(errors);
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        let at = base - self.bar_base + offset;
        if let Some(irq) = &self.interrupts {
            let mut irq = irq.lock();
            if irq.table_write(self.bar, at, data) {
                self.counters.count(AccessKind::Msix);
                return;
            }
        }
        self.counters
            .count(AccessKind::of(&self.layout, at, data.len()));
        if let Some(hva) = self.first_touch(at, data.len()) {
            // SAFETY: as in `read`.
            unsafe { mapped_write(hva, data) };
            return;
        }
        let errors = dispatch::write(&self.layout, &self.region, at, data);
        self.report(errors);
    }
}

/// Reads `data.len()` bytes of device memory at host address `hva` as one access of that
/// width when it is 2, 4 or 8 bytes and aligned (device memory may care), byte by byte
/// otherwise.
///
/// # Safety
/// `hva..hva + data.len()` must be mapped and readable.
unsafe fn mapped_read(hva: u64, data: &mut [u8]) {
    let p = hva as *const u8;
    let aligned = hva.is_multiple_of(data.len().max(1) as u64);
    // SAFETY: the caller's contract; the reads are volatile so each is one device access.
    unsafe {
        match (data.len(), aligned) {
            (2, true) => data.copy_from_slice(&p.cast::<u16>().read_volatile().to_ne_bytes()),
            (4, true) => data.copy_from_slice(&p.cast::<u32>().read_volatile().to_ne_bytes()),
            (8, true) => data.copy_from_slice(&p.cast::<u64>().read_volatile().to_ne_bytes()),
            _ => {
                for (i, b) in data.iter_mut().enumerate() {
                    *b = p.add(i).read_volatile();
                }
            }
        }
    }
}

/// The write counterpart of `mapped_read`.
///
/// # Safety
/// `hva..hva + data.len()` must be mapped and writable.
unsafe fn mapped_write(hva: u64, data: &[u8]) {
    let p = hva as *mut u8;
    let aligned = hva.is_multiple_of(data.len().max(1) as u64);
    // SAFETY: the caller's contract; the writes are volatile so each is one device access.
    unsafe {
        match (data.len(), aligned) {
            (2, true) => p
                .cast::<u16>()
                .write_volatile(u16::from_ne_bytes([data[0], data[1]])),
            (4, true) => p
                .cast::<u32>()
                .write_volatile(u32::from_ne_bytes([data[0], data[1], data[2], data[3]])),
            (8, true) => p.cast::<u64>().write_volatile(u64::from_ne_bytes([
                data[0], data[1], data[2], data[3], data[4], data[5], data[6], data[7],
            ])),
            _ => {
                for (i, b) in data.iter().enumerate() {
                    p.add(i).write_volatile(*b);
                }
            }
        }
    }
}

/// A mapped piece of a BAR: its host mapping and the KVM slot number reserved for it.
pub struct MappedPiece {
    pub offset: u64,
    pub size: u64,
    pub host: HostMapping,
    pub slot: u32,
}

/// Where the BAR's guest address range came from, to give it back.
#[derive(Debug, Clone, Copy)]
pub struct BarSpace {
    pub segment: u16,
    pub window: Window,
    pub base: u64,
    pub size: u64,
}

/// Sets (size > 0) or deletes (size 0) KVM memory slot `slot`: the seam between a BAR's slot
/// bookkeeping and KVM, so the bookkeeping is tested without a VM.
pub trait SlotSetter: Send + Sync {
    fn set_slot(&self, slot: u32, gpa: u64, size: u64, hva: u64) -> Result<(), kvm_ioctls::Error>;
}

impl SlotSetter for VmFd {
    fn set_slot(&self, slot: u32, gpa: u64, size: u64, hva: u64) -> Result<(), kvm_ioctls::Error> {
        let desc = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: hva,
        };
        // SAFETY: `hva` is a host mapping of `size` bytes owned by a BarPlan's `mapped`, which
        // outlives the slot: `Slots::remove` deletes it (size 0) before the plan drops, and the
        // trap that builds slots holds its own reference to the mappings (`Slots`).
        unsafe { self.set_user_memory_region(desc) }
    }
}

/// Where a BAR's slots should be and where they are (module doc: they are built at the first
/// access). Whoever moves or removes the BAR takes the same lock, so a build never installs at
/// an address the BAR has left.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SlotCtl {
    /// The BAR's guest address while it should have slots.
    wanted: Option<u64>,
    /// Where its slots are now.
    present: Option<u64>,
    /// Where KVM refused them: not tried again until the BAR is installed anew.
    refused: Option<u64>,
    /// KVM failed to delete one of them (it can, with ENOMEM): that slot may still show the
    /// host mapping to the guest, so the mapping, the slot numbers and the BAR's guest space
    /// stay reserved for good (`release`) and no slot is built again.
    kept: bool,
}

/// The slots of one BAR: their shared state and their pieces (offset, size, slot, hva).
#[derive(Clone)]
pub struct Slots {
    ctl: Arc<Mutex<SlotCtl>>,
    pieces: Vec<(u64, u64, u32, u64)>,
    /// Keeps the host mappings alive as long as anyone can still create a slot over them.
    _mappings: Arc<Vec<MappedPiece>>,
}

impl Slots {
    pub fn new(mapped: Arc<Vec<MappedPiece>>) -> Self {
        Slots {
            ctl: Arc::default(),
            pieces: mapped
                .iter()
                .map(|p| (p.offset, p.size, p.slot, p.host.addr()))
                .collect(),
            _mappings: mapped,
        }
    }

    #[cfg(test)]
    fn state(&self) -> SlotCtl {
        *self.ctl.lock()
    }

    /// Marks `at` as where the slots belong (built at the first access).
    fn want(&self, at: u64) {
        let mut ctl = self.ctl.lock();
        ctl.wanted = Some(at);
        ctl.refused = None;
    }

    /// The host address of BAR offset `at` when `len` bytes from there lie inside one mapped
    /// piece; None otherwise.
    fn hva(&self, at: u64, len: u64) -> Option<u64> {
        self.pieces.iter().find_map(|&(offset, size, _, hva)| {
            let rel = at.checked_sub(offset)?;
            (rel.checked_add(len)? <= size).then(|| hva + rel)
        })
    }

    /// Creates the slots at `at` if the BAR still wants them there and they are not there
    /// yet; on a failure, the ones created are deleted again (the BAR keeps answering through
    /// its trap) and `at` is not tried again. Ok(true) when it created them.
    pub fn build(&self, kvm: &dyn SlotSetter, at: u64) -> Result<bool, String> {
        let mut ctl = self.ctl.lock();
        if ctl.wanted != Some(at) || ctl.present.is_some() || ctl.refused == Some(at) || ctl.kept {
            return Ok(false);
        }
        for (i, &(offset, size, slot, hva)) in self.pieces.iter().enumerate() {
            let gpa = at + offset;
            if let Err(e) = kvm.set_slot(slot, gpa, size, hva) {
                ctl.refused = Some(at);
                let undone = Self::delete(kvm, &self.pieces[..i], at);
                if let Err(kept) = &undone {
                    ctl.kept = true;
                    return Err(format!("slot {slot} at {gpa:#x}: {e}; undoing: {kept}"));
                }
                return Err(format!("slot {slot} at {gpa:#x}: {e}"));
            }
        }
        ctl.present = Some(at);
        Ok(true)
    }

    /// Deletes the slots (waiting for a vCPU that is building them) and wants none. When KVM
    /// keeps one, the BAR's resources stay reserved (`kept`) and this says so once.
    fn remove(&self, kvm: &dyn SlotSetter, bar: usize) {
        let mut ctl = self.ctl.lock();
        ctl.wanted = None;
        if let Some(at) = ctl.present.take() {
            if let Err(e) = Self::delete(kvm, &self.pieces, at) {
                ctl.kept = true;
                log::error!(
                    "BAR {bar}: KVM kept {e}; its host mapping, slot numbers and guest address \
                     space stay reserved until ghvmm exits"
                );
            }
        }
    }

    /// Deletes the slots of `pieces` at `at`, every one even when one fails; the error names
    /// the ones KVM kept.
    fn delete(
        kvm: &dyn SlotSetter,
        pieces: &[(u64, u64, u32, u64)],
        at: u64,
    ) -> Result<(), String> {
        let kept: Vec<String> = pieces
            .iter()
            .filter_map(|&(offset, _, slot, hva)| {
                let e = kvm.set_slot(slot, at + offset, 0, hva).err()?;
                Some(format!("slot {slot} ({e})"))
            })
            .collect();
        if kept.is_empty() {
            Ok(())
        } else {
            Err(kept.join(", "))
        }
    }

    /// Whether KVM failed to delete one of the slots.
    pub fn kept(&self) -> bool {
        self.ctl.lock().kept
    }
}

/// Gives a BAR's slot numbers and guest address space back, and lets its host mappings go
/// when the caller drops the last reference, unless KVM kept one of its slots (`kept`):
/// then a slot may still point at the mappings, and reusing the address behind it, the slot
/// number or the guest range would show whatever comes there next to the guest. Everything
/// stays reserved instead, leaked until ghvmm exits.
pub fn release(
    index: usize,
    kept: bool,
    mapped: &Arc<Vec<MappedPiece>>,
    space: BarSpace,
    slots: &Mutex<MemSlots>,
    allocator: &Mutex<BarAllocator>,
) {
    if kept {
        // Never unmapped: the count this clone holds is never given back.
        std::mem::forget(mapped.clone());
        return;
    }
    let mut s = slots.lock();
    for p in mapped.iter() {
        s.release(p.slot);
    }
    drop(s);
    if let Err(e) = allocator
        .lock()
        .free(space.segment, space.window, space.base, space.size)
    {
        log::error!("BAR {index}: giving back its guest address space: {e}");
    }
}

/// One BAR's pieces, installable at any guest address: one trap over the whole BAR on the
/// MMIO bus, and KVM slots over the mapped pieces (an access a slot covers never exits, so the
/// trap answers the rest, and the first access to a mapped piece, which builds the slots).
pub struct BarPlan {
    pub index: usize,
    pub space: BarSpace,
    pub mapped: Arc<Vec<MappedPiece>>,
    pub trap: Arc<Mutex<BarTrap>>,
    pub installed: Option<u64>,
    /// The trap's counters, read without its lock.
    pub counters: Arc<BarCounters>,
    /// Made at the first install, once every mapped piece is known.
    slots: Option<Slots>,
}

impl BarPlan {
    pub fn new(
        index: usize,
        space: BarSpace,
        trap: Arc<Mutex<BarTrap>>,
        counters: Arc<BarCounters>,
    ) -> Self {
        BarPlan {
            index,
            space,
            mapped: Arc::default(),
            trap,
            installed: None,
            counters,
            slots: None,
        }
    }

    /// Adds a mapped piece; refused (given back) once the plan has been installed.
    pub fn add_mapped(&mut self, piece: MappedPiece) -> Result<(), MappedPiece> {
        match (&self.slots, Arc::get_mut(&mut self.mapped)) {
            (None, Some(v)) => {
                v.push(piece);
                Ok(())
            }
            _ => Err(piece),
        }
    }

    /// Installs the BAR at `base`: the trap now, the slots at the guest's first access to a
    /// mapped piece. On failure, whatever was installed is removed again.
    pub fn install(
        &mut self,
        kvm: &Arc<dyn SlotSetter>,
        bus: &Bus,
        base: u64,
    ) -> Result<(), String> {
        self.uninstall(kvm.as_ref(), bus);
        self.installed = Some(base);
        self.trap.lock().bar_base = base;
        if let Err(e) = bus.insert(self.trap.clone(), base, self.space.size) {
            self.uninstall(kvm.as_ref(), bus);
            return Err(format!("trap at {base:#x}: {e}"));
        }
        if self.mapped.is_empty() {
            return Ok(());
        }
        let mapped = self.mapped.clone();
        let slots = self.slots.get_or_insert_with(|| Slots::new(mapped)).clone();
        slots.want(base);
        self.trap.lock().lazy = Some((slots, kvm.clone()));
        Ok(())
    }

    /// Whether KVM kept one of the BAR's slots when asked to delete it (`Slots::kept`).
    pub fn kvm_kept_slots(&self) -> bool {
        self.slots.as_ref().is_some_and(Slots::kept)
    }

    /// Removes the BAR's slots and its trap (removing a bus range that is not ours is refused
    /// by address).
    pub fn uninstall(&mut self, kvm: &dyn SlotSetter, bus: &Bus) {
        let Some(base) = self.installed.take() else {
            return;
        };
        if let Some(slots) = &self.slots {
            slots.remove(kvm, self.index);
        }
        if let Some((range, dev)) = bus.resolve(base) {
            // Only our own trap: a partial install may have failed on someone else's.
            if range.base == base && std::ptr::addr_eq(Arc::as_ptr(&dev), Arc::as_ptr(&self.trap)) {
                let _ = bus.remove(base);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records slot calls; refuses to create the slot numbers in `refuse` and to delete
    /// those in `keep` (KVM's ENOMEM).
    #[derive(Default)]
    struct FakeKvm {
        calls: Mutex<Vec<(u32, u64, u64)>>,
        refuse: Vec<u32>,
        keep: Vec<u32>,
    }

    impl SlotSetter for FakeKvm {
        fn set_slot(
            &self,
            slot: u32,
            gpa: u64,
            size: u64,
            _hva: u64,
        ) -> Result<(), kvm_ioctls::Error> {
            if size > 0 && self.refuse.contains(&slot) {
                return Err(kvm_ioctls::Error::new(libc::EEXIST));
            }
            if size == 0 && self.keep.contains(&slot) {
                return Err(kvm_ioctls::Error::new(libc::ENOMEM));
            }
            self.calls.lock().push((slot, gpa, size));
            Ok(())
        }
    }

    fn slots(pieces: &[(u64, u64, u32)]) -> Slots {
        Slots {
            ctl: Arc::default(),
            pieces: pieces
                .iter()
                .map(|&(o, s, n)| (o, s, n, 0x7f00_0000_0000 + o))
                .collect(),
            _mappings: Arc::new(Vec::new()),
        }
    }

    const AT: u64 = 0x80_0000_0000;

    #[test]
    fn a_build_creates_the_slots_where_the_bar_is_wanted() {
        let k = FakeKvm::default();
        let s = slots(&[(0, 0x1000, 5), (0x2000, 0x1000, 6)]);
        s.want(AT);
        assert_eq!(s.build(&k, AT), Ok(true));
        assert_eq!(
            k.calls.lock().as_slice(),
            &[(5, AT, 0x1000), (6, AT + 0x2000, 0x1000)]
        );
        assert_eq!(s.build(&k, AT), Ok(false), "built once");
        assert_eq!(s.state().present, Some(AT));
    }

    #[test]
    fn a_build_late_for_a_moved_or_removed_bar_does_nothing() {
        let k = FakeKvm::default();
        let s = slots(&[(0, 0x1000, 5)]);
        s.want(AT);
        s.remove(&k, 2);
        assert_eq!(s.build(&k, AT), Ok(false));
        s.want(AT * 2);
        assert_eq!(s.build(&k, AT), Ok(false), "wanted elsewhere now");
        assert!(k.calls.lock().is_empty());
    }

    #[test]
    fn a_refused_address_is_not_tried_again_until_the_bar_is_reinstalled() {
        let k = FakeKvm {
            refuse: vec![5],
            ..FakeKvm::default()
        };
        let s = slots(&[(0, 0x1000, 5)]);
        s.want(AT);
        assert!(s.build(&k, AT).is_err());
        assert_eq!(s.build(&k, AT), Ok(false), "not at every access");
        s.want(AT);
        assert!(s.build(&k, AT).is_err(), "a new install tries again");
    }

    #[test]
    fn only_accesses_inside_one_mapped_piece_have_a_host_address() {
        let s = slots(&[(0, 0x1000, 5), (0x2000, 0x1000, 6)]);
        let base = 0x7f00_0000_0000;
        assert_eq!(s.hva(0, 8), Some(base));
        assert_eq!(s.hva(0xff8, 8), Some(base + 0xff8));
        assert_eq!(s.hva(0xffc, 8), None, "straddles the end of the piece");
        assert_eq!(s.hva(0x1000, 4), None, "not mapped");
        assert_eq!(s.hva(0x2004, 4), Some(base + 0x2004));
        assert_eq!(s.hva(u64::MAX, 8), None);
    }

    #[test]
    fn mapped_accesses_have_the_access_width() {
        let mut mem = [0u8; 16];
        let hva = mem.as_mut_ptr() as u64;
        // SAFETY: `mem` is ours and 16 bytes long.
        unsafe {
            mapped_write(hva + 8, &0x1122_3344_5566_7788u64.to_ne_bytes());
            mapped_write(hva + 1, &[0xab, 0xcd]);
        }
        let mut v = [0u8; 8];
        let mut w = [0u8; 2];
        // SAFETY: as above.
        unsafe {
            mapped_read(hva + 8, &mut v);
            mapped_read(hva + 1, &mut w);
        }
        assert_eq!(u64::from_ne_bytes(v), 0x1122_3344_5566_7788);
        assert_eq!(w, [0xab, 0xcd]);
    }

    #[test]
    fn remove_deletes_what_was_built() {
        let k = FakeKvm::default();
        let s = slots(&[(0, 0x1000, 5)]);
        s.want(AT);
        s.build(&k, AT).unwrap();
        s.remove(&k, 2);
        assert_eq!(k.calls.lock().last(), Some(&(5, AT, 0)));
        assert_eq!(s.state(), SlotCtl::default());
    }

    #[test]
    fn a_refused_slot_undoes_the_others() {
        let k = FakeKvm {
            refuse: vec![6],
            ..FakeKvm::default()
        };
        let s = slots(&[(0, 0x1000, 5), (0x2000, 0x1000, 6)]);
        s.want(AT);
        assert!(s.build(&k, AT).unwrap_err().contains("slot 6"));
        assert_eq!(k.calls.lock().as_slice(), &[(5, AT, 0x1000), (5, AT, 0)]);
        assert_eq!(s.state().present, None);
    }

    /// One mapped page of a memfd in slot `slot`, as a BAR's mapped piece.
    fn one_piece(slot: u32) -> Arc<Vec<MappedPiece>> {
        use std::os::fd::{AsRawFd, FromRawFd};
        // SAFETY: a NUL-terminated literal; the call returns a new fd or -1.
        let fd = unsafe { libc::memfd_create(c"bar-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: `fd` was just created and nothing else owns it.
        let file = unsafe { std::fs::File::from_raw_fd(fd) };
        file.set_len(0x1000).unwrap();
        let host = HostMapping::new(file.as_raw_fd(), 0, 0x1000, 0x1000, 0).unwrap();
        Arc::new(vec![MappedPiece {
            offset: 0,
            size: 0x1000,
            host,
            slot,
        }])
    }

    /// Builds a BAR's slot, removes it through `kvm` and gives the BAR back: returns whether
    /// the mapping is still alive, the slots in use, and whether the BAR's space was still
    /// allocated.
    fn remove_and_release(kvm: &FakeKvm) -> (bool, u32, bool) {
        use crate::memory::layout::{Layout, GIB};
        let slots = Mutex::new(MemSlots::new(2, 16));
        let mut allocator = BarAllocator::new(&Layout::new(GIB, None, 40).unwrap()).unwrap();
        let base = allocator.allocate(0, Window::Mmio64, 0x1000).unwrap();
        let allocator = Mutex::new(allocator);
        let space = BarSpace {
            segment: 0,
            window: Window::Mmio64,
            base,
            size: 0x1000,
        };
        let mapped = one_piece(slots.lock().allocate().unwrap());
        let alive = Arc::downgrade(&mapped);
        let s = Slots::new(mapped.clone());
        s.want(base);
        assert_eq!(s.build(kvm, base), Ok(true));
        s.remove(kvm, 0);
        release(0, s.kept(), &mapped, space, &slots, &allocator);
        drop((s, mapped));
        let in_use = slots.lock().in_use();
        let still_allocated = allocator
            .lock()
            .free(0, Window::Mmio64, base, 0x1000)
            .is_ok();
        (alive.upgrade().is_some(), in_use, still_allocated)
    }

    #[test]
    fn a_slot_kvm_keeps_keeps_its_mapping_slot_number_and_bar_space() {
        let kvm = FakeKvm {
            keep: vec![2],
            ..FakeKvm::default()
        };
        let (mapped, in_use, allocated) = remove_and_release(&kvm);
        assert_eq!(
            (mapped, in_use, allocated),
            (true, 3, true),
            "(mapping alive, slots in use, BAR space taken) after KVM kept the slot"
        );
    }

    #[test]
    fn a_deleted_slot_gives_everything_back() {
        let (mapped, in_use, allocated) = remove_and_release(&FakeKvm::default());
        assert_eq!((mapped, in_use, allocated), (false, 2, false));
    }

    #[test]
    fn a_kept_slot_is_never_built_again() {
        let k = FakeKvm {
            keep: vec![5],
            ..FakeKvm::default()
        };
        let s = slots(&[(0, 0x1000, 5)]);
        s.want(AT);
        s.build(&k, AT).unwrap();
        s.remove(&k, 2);
        assert!(s.kept());
        s.want(AT * 2);
        assert_eq!(
            s.build(&k, AT * 2),
            Ok(false),
            "the old slot may still be there"
        );
    }

    #[test]
    fn a_failed_undo_of_a_partial_build_keeps_the_slots() {
        let k = FakeKvm {
            refuse: vec![6],
            keep: vec![5],
            ..FakeKvm::default()
        };
        let s = slots(&[(0, 0x1000, 5), (0x2000, 0x1000, 6)]);
        s.want(AT);
        let e = s.build(&k, AT).unwrap_err();
        assert!(e.contains("undoing: slot 5"), "{e}");
        assert!(s.kept());
    }
}
