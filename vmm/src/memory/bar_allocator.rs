//! Guest addresses for PCI BARs: per PCI segment, a 32-bit window below 4 GiB and a 64-bit
//! window above RAM (vm-allocator's interval tree does the bookkeeping). BARs are naturally
//! aligned, as PCI requires, and at least page-aligned so mappable parts can become KVM
//! memory slots.

use vm_allocator::{AddressAllocator, AllocPolicy, RangeInclusive};

use crate::memory::layout::{Layout, MmioWindow};

const PAGE_SIZE: u64 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    Mmio32,
    Mmio64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BarAllocError {
    #[error("BAR size {0:#x} is not a power of two")]
    NotPowerOfTwo(u64),
    #[error("no room for a {size:#x}-byte BAR in segment {segment}'s {window:?} window")]
    Exhausted {
        segment: u16,
        window: Window,
        size: u64,
    },
    #[error("there is no PCI segment {0}")]
    NoSegment(u16),
    #[error("{0:#x}+{1:#x} was not allocated")]
    NotAllocated(u64, u64),
    #[error("cannot create the BAR allocator: {0}")]
    Create(String),
}

struct SegmentWindows {
    id: u16,
    mmio32: AddressAllocator,
    mmio64: AddressAllocator,
}

pub struct BarAllocator {
    segments: Vec<SegmentWindows>,
}

impl BarAllocator {
    pub fn new(layout: &Layout) -> Result<Self, BarAllocError> {
        let make = |w: MmioWindow| {
            AddressAllocator::new(w.start, w.size).map_err(|e| BarAllocError::Create(e.to_string()))
        };
        let segments = layout
            .segments
            .iter()
            .map(|s| {
                Ok(SegmentWindows {
                    id: s.id,
                    mmio32: make(s.mmio32)?,
                    mmio64: make(s.mmio64)?,
                })
            })
            .collect::<Result<_, BarAllocError>>()?;
        Ok(BarAllocator { segments })
    }

    fn window(&mut self, segment: u16, w: Window) -> Result<&mut AddressAllocator, BarAllocError> {
        let s = self
            .segments
            .iter_mut()
            .find(|s| s.id == segment)
            .ok_or(BarAllocError::NoSegment(segment))?;
        Ok(match w {
            Window::Mmio32 => &mut s.mmio32,
            Window::Mmio64 => &mut s.mmio64,
        })
    }

    /// Allocates `size` bytes (a power of two) aligned to `max(size, page)` in `segment`'s
    /// `window`.
    pub fn allocate(
        &mut self,
        segment: u16,
        window: Window,
        size: u64,
    ) -> Result<u64, BarAllocError> {
        if !size.is_power_of_two() {
            return Err(BarAllocError::NotPowerOfTwo(size));
        }
        let align = size.max(PAGE_SIZE);
        self.window(segment, window)?
            .allocate(size, align, AllocPolicy::FirstMatch)
            .map(|r| r.start())
            .map_err(|_| BarAllocError::Exhausted {
                segment,
                window,
                size,
            })
    }

    pub fn free(
        &mut self,
        segment: u16,
        window: Window,
        base: u64,
        size: u64,
    ) -> Result<(), BarAllocError> {
        let range = size
            .checked_sub(1)
            .and_then(|l| base.checked_add(l))
            .and_then(|end| RangeInclusive::new(base, end).ok())
            .ok_or(BarAllocError::NotAllocated(base, size))?;
        self.window(segment, window)?
            .free(&range)
            .map_err(|_| BarAllocError::NotAllocated(base, size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::layout::{ExtraSegments, GIB, MMIO32_SIZE, MMIO32_START};

    fn alloc() -> BarAllocator {
        BarAllocator::new(&Layout::new(GIB, None, 40).unwrap()).unwrap()
    }

    #[test]
    fn two_128g_bars_fit_in_the_default_64bit_window() {
        let mut a = alloc();
        let x = a.allocate(0, Window::Mmio64, 128 * GIB).unwrap();
        let y = a.allocate(0, Window::Mmio64, 128 * GIB).unwrap();
        assert_eq!(x % (128 * GIB), 0);
        assert_eq!(y % (128 * GIB), 0);
        assert_ne!(x, y);
        assert!(matches!(
            a.allocate(0, Window::Mmio64, 4096),
            Err(BarAllocError::Exhausted { .. })
        ));
        a.free(0, Window::Mmio64, x, 128 * GIB).unwrap();
        assert_eq!(a.allocate(0, Window::Mmio64, 64 * GIB).unwrap(), x);
    }

    #[test]
    fn small_bars_are_page_aligned_and_32bit_ones_stay_below_4g() {
        let mut a = alloc();
        let r = a.allocate(0, Window::Mmio32, 256).unwrap();
        assert_eq!(r % PAGE_SIZE, 0);
        let s = a.allocate(0, Window::Mmio32, 256).unwrap();
        assert!(s >= r + PAGE_SIZE);
        assert!(s + 256 <= MMIO32_START + MMIO32_SIZE);
    }

    #[test]
    fn extra_segments_allocate_from_their_own_windows() {
        let extra = ExtraSegments {
            count: 1,
            mmio64_size: 256 * GIB,
        };
        let l = Layout::with_segments(GIB, None, extra, 40).unwrap();
        let mut a = BarAllocator::new(&l).unwrap();
        let gpu = a.allocate(1, Window::Mmio64, 128 * GIB).unwrap();
        assert_eq!(gpu, l.segments[1].mmio64.start);
        let regs = a.allocate(1, Window::Mmio32, 16 << 20).unwrap();
        assert_eq!(regs, l.segments[1].mmio32.start);
        assert!(
            a.allocate(1, Window::Mmio32, 4096).is_err(),
            "16 MiB window full"
        );
        assert_eq!(
            a.allocate(2, Window::Mmio32, 4096),
            Err(BarAllocError::NoSegment(2))
        );
        // Segment 0 is unaffected.
        assert_eq!(a.allocate(0, Window::Mmio64, 128 * GIB).unwrap(), 128 * GIB);
    }

    #[test]
    fn refuses_bad_sizes_and_unknown_frees() {
        let mut a = alloc();
        assert_eq!(
            a.allocate(0, Window::Mmio32, 3000),
            Err(BarAllocError::NotPowerOfTwo(3000))
        );
        assert_eq!(
            a.allocate(0, Window::Mmio32, 0),
            Err(BarAllocError::NotPowerOfTwo(0))
        );
        assert!(
            a.allocate(0, Window::Mmio32, 1 << 30).is_err(),
            "bigger than the 32-bit window"
        );
        assert!(a.free(0, Window::Mmio32, MMIO32_START, 4096).is_err());
        assert!(a.free(0, Window::Mmio32, u64::MAX, 4096).is_err());
        assert!(a.free(0, Window::Mmio32, 0, 0).is_err());
    }
}
