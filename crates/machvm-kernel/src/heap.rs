//! The kernel heap: the `talc` allocator (the common `no_std` heap, a
//! boundary-tagged, binned free-list allocator) behind a spin lock, over one
//! region of RAM carved at boot and reached through the direct map.
//!
//! Allocation fails (the global allocator returns null, and `alloc` panics)
//! once that region is full: the heap never grows, its size is fixed by
//! [`crate::mem`] from the amount of RAM.

use talc::TalcLock;
use talc::source::Manual;

/// The global allocator: `talc` with no source of its own ([`Manual`]), so
/// it allocates only from the region [`init`] hands it.
#[global_allocator]
static HEAP: TalcLock<spin::Mutex<()>, Manual> = TalcLock::new(Manual);

/// Hands `[start, start + len)` to the heap. Called once, at boot.
///
/// # Safety
/// The range must be mapped read-write and unused by anything else for the
/// rest of the kernel's life.
pub(crate) unsafe fn init(start: usize, len: usize) {
    let mut talc = HEAP.lock();
    assert!(talc.counters().heap_count == 0, "heap initialised twice");
    // SAFETY: the caller gives us this memory for good; `Manual` lets the
    // kernel claim heaps itself.
    let end = unsafe { talc.claim(start as *mut u8, len) };
    assert!(
        end.is_some(),
        "heap region of {len} bytes too small for talc"
    );
}

/// What the heap holds, from talc's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeapStats {
    /// Bytes of live allocations (their layouts' sizes).
    pub in_use: usize,
    /// Bytes the allocator manages (the region claimed at boot, less
    /// alignment slack).
    pub managed: usize,
    /// Bytes free for allocation (less each allocation's overhead, which
    /// `managed - in_use` does not count).
    pub available: usize,
    /// Live allocations.
    pub allocations: usize,
    /// Allocations made since boot.
    pub total_allocations: u64,
}

/// The heap's statistics now.
pub fn stats() -> HeapStats {
    let talc = HEAP.lock();
    let c = talc.counters();
    HeapStats {
        in_use: c.allocated_bytes,
        managed: c.claimed_bytes,
        available: c.available_bytes,
        allocations: c.allocation_count,
        total_allocations: c.total_allocation_count,
    }
}

/// Heap statistics: `(bytes in use, bytes managed)`.
pub fn usage() -> (usize, usize) {
    let s = stats();
    (s.in_use, s.managed)
}

/// Bytes of heap free for allocation (talc's count, net of overhead).
pub fn free() -> usize {
    stats().available
}
