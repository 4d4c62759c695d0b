//! The shared zero frame: one frame of zeros that every read of memory
//! never written can map (read-only) instead of a frame of its own, as
//! Linux's `ZERO_PAGE`.
//!
//! Invariants:
//! - Once set, the zero frame never changes and is never freed: it is an
//!   allocated `Kernel` frame for the allocator's lifetime.
//! - Its bytes stay zero: it is only ever mapped read-only, and nothing in
//!   machvm writes it after it is zeroed.

use core::sync::atomic::Ordering::{AcqRel, Acquire};

use machvm_base::PhysAddr;

use crate::{FrameAllocator, FrameUse};
use machvm_base::sync::Locks;

impl<L: Locks> FrameAllocator<L> {
    /// Allocates and zeroes the zero frame unless it exists, and returns
    /// it; `None` when no frame is free (callers then zero-fill instead).
    /// A VM system calls this once when it is created, so that its
    /// `free_count` never moves because of the zero frame afterwards.
    pub fn init_zero_frame(&self) -> Option<PhysAddr> {
        if let Some(pa) = self.zero_frame() {
            return Some(pa);
        }
        let pa = self.alloc(FrameUse::Kernel).ok()?;
        self.mem().zero_page(pa);
        match self.zero.compare_exchange(0, pa.as_u64(), AcqRel, Acquire) {
            Ok(_) => Some(pa),
            Err(winner) => {
                // Another thread set it first: keep one.
                self.free(pa);
                Some(PhysAddr::new(winner))
            }
        }
    }

    /// The zero frame, if [`init_zero_frame`](Self::init_zero_frame) made
    /// one. A pmap keeps no reverse map of it (it is not a page of any
    /// object), and nothing may write it.
    #[inline]
    pub fn zero_frame(&self) -> Option<PhysAddr> {
        match self.zero.load(Acquire) {
            0 => None,
            pa => Some(PhysAddr::new(pa)),
        }
    }

    /// True when `pa` is the zero frame.
    #[inline]
    pub fn is_zero_frame(&self, pa: PhysAddr) -> bool {
        pa.as_u64() != 0 && self.zero.load(Acquire) == pa.as_u64()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use crate::FrameAllocator;

    #[test]
    fn zero_frame_is_made_once_and_reads_zero() {
        let fa = FrameAllocator::hosted(16 * 4096).unwrap();
        assert_eq!(fa.zero_frame(), None);
        let before = fa.free_frames();
        let z = fa.init_zero_frame().unwrap();
        assert_eq!(fa.init_zero_frame(), Some(z));
        assert_eq!(fa.free_frames(), before - 1);
        assert!(fa.is_zero_frame(z));
        let mut buf = [1u8; 4096];
        fa.mem().read(z, &mut buf);
        assert!(buf.iter().all(|&b| b == 0));
        fa.verify().unwrap();
    }

    #[test]
    fn no_zero_frame_without_a_free_frame() {
        let fa = FrameAllocator::hosted(4096).unwrap();
        let pa = fa.alloc(crate::FrameUse::Object).unwrap();
        assert_eq!(fa.init_zero_frame(), None);
        assert!(!fa.is_zero_frame(pa));
        fa.free(pa);
    }
}
