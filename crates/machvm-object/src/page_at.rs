//! What an object holds at an offset: a page resident in a frame, or a
//! page paged out to a swap slot of the context's pager. Both are
//! *present*: a swapped page shadows the pages below it exactly as a
//! resident one does, and is reachable or not by the same rule.
//!
//! The page map stores one word per offset; this module owns its encoding
//! (frames are page aligned, so the low bits are free): bit 0 busy (a fill
//! in flight, `pagemap.rs`), bit 1 swapped, slot number from bit 12.

use machvm_base::PhysAddr;
use machvm_pager::SwapSlot;

/// Bit 1 of a page-map word: the page is in a swap slot.
const SWAPPED: u64 = 2;
/// Where a swapped word keeps its slot number.
const SLOT_SHIFT: u32 = 12;

/// A present page: resident in a frame, or paged out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageAt {
    /// Resident in this frame.
    Frame(PhysAddr),
    /// Paged out to this slot of the context's pager; a fault pages it in.
    Swapped(SwapSlot),
}

impl PageAt {
    /// The frame, when resident.
    #[inline]
    #[must_use]
    pub fn frame(self) -> Option<PhysAddr> {
        match self {
            PageAt::Frame(pa) => Some(pa),
            PageAt::Swapped(_) => None,
        }
    }

    /// The page-map word (busy bit clear).
    #[inline]
    pub(crate) fn encode(self) -> u64 {
        match self {
            PageAt::Frame(pa) => pa.as_u64(),
            PageAt::Swapped(s) => (u64::from(s.get()) << SLOT_SHIFT) | SWAPPED,
        }
    }

    /// The page a word (busy bit ignored) names.
    #[inline]
    pub(crate) fn decode(word: u64) -> PageAt {
        if word & SWAPPED == 0 {
            return PageAt::Frame(PhysAddr::new(word & !(SWAPPED | 1)));
        }
        let n = u32::try_from(word >> SLOT_SHIFT)
            .ok()
            .and_then(SwapSlot::new);
        PageAt::Swapped(n.expect("page map: a swapped word names slot 0"))
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_and_keep_the_busy_bit_free() {
        for p in [
            PageAt::Frame(PhysAddr::new(0x7000)),
            PageAt::Swapped(SwapSlot::new(1).unwrap()),
            PageAt::Swapped(SwapSlot::new(u32::MAX).unwrap()),
        ] {
            assert_eq!(p.encode() & 1, 0);
            assert_eq!(PageAt::decode(p.encode()), p);
            assert_eq!(PageAt::decode(p.encode() | 1), p);
        }
    }
}
