//! A global allocator that counts, per thread, the heap bytes allocated and not yet freed, so
//! that a target can check that a long run of guest accesses leaves the heap where it was
//! (`guest_bus`: a device that keeps something for every access the guest makes grows
//! without bound in a VM that runs for months).
//!
//! Per thread, because the crate's tests run in parallel threads and each target's input
//! runs on one thread. Memory freed on another thread than the one that allocated it skews
//! both threads' counts; the targets that check the count allocate and free on their own
//! thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The system allocator, counting.
pub struct Counting;

thread_local! {
    // A const-initialised `Cell` without a destructor: using it never allocates and works
    // during thread teardown, which an allocator needs.
    static NET: Cell<i64> = const { Cell::new(0) };
}

fn add(bytes: usize, sign: i64) {
    // A thread being torn down has no count any more; its last frees are not counted.
    let _ = NET.try_with(|n| n.set(n.get().wrapping_add(sign.wrapping_mul(bytes as i64))));
}

/// Heap bytes this thread allocated and has not freed (negative when it freed memory that
/// another thread allocated).
pub fn net_bytes() -> i64 {
    NET.try_with(Cell::get).unwrap_or(0)
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// `GlobalAlloc` contract `System` keeps is kept; the counting touches no allocation.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's layout, as `GlobalAlloc::alloc` requires of it.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            add(layout.size(), 1);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            add(layout.size(), 1);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, i.e. from `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        add(layout.size(), -1);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from `System` with `layout`; the caller vouches for `new_size`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            add(layout.size(), -1);
            add(new_size, 1);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::net_bytes;

    #[test]
    fn counts_what_this_thread_holds() {
        let before = net_bytes();
        let v: Vec<u8> = Vec::with_capacity(1000);
        assert_eq!(net_bytes() - before, 1000);
        let mut v = v;
        v.reserve_exact(3000);
        assert_eq!(net_bytes() - before, v.capacity() as i64);
        drop(v);
        assert_eq!(net_bytes(), before);
    }
}
