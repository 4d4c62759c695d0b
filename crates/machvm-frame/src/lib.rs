//! Physical memory for machvm: frame bytes, per-frame metadata, and a buddy
//! frame allocator.
//!
//! - [`PhysMem`] reaches a frame's bytes (host arena or bare-metal direct map).
//! - [`VmPage`] is the per-frame metadata, Mach's `vm_page` cut to 32 bytes.
//! - [`FrameAllocator`] hands out single frames in O(1) and naturally aligned
//!   runs of `2^order` frames (page-table pages, 2 MiB pages) from one or more
//!   physical ranges, buddy style.
//!
//! Invariants (checked by [`FrameAllocator::verify`], one [`FrameRule`]
//! each):
//! - Every managed frame is in exactly one state: part of exactly one free
//!   block, or part of exactly one allocated block, or reserved (a hole).
//! - A free block of order `k` starts at a frame index aligned to `2^k`, is on
//!   free list `k`, and its head has `order == k`; its other frames have
//!   `order == NOT_HEAD`.
//! - No two free buddies of the same order coexist (they would have merged).
//! - The free counter, each free list's count, each use's counter and the
//!   wired-frame counter equal the frames they count; only object frames are
//!   wired (`wire.rs`).
//! - No invalid free (double free, foreign frame, freeing a tail or a wired
//!   frame) and no invalid wiring was seen.
#![cfg_attr(not(loom), no_std)]
#![deny(unsafe_code)]

extern crate alloc;

mod cache;
mod error;
mod inject;
#[allow(unsafe_code)]
mod mem;
mod page;
mod queue;
mod reserve;
mod sync;
mod verify;
mod wire;
#[cfg(feature = "x86_64")]
#[allow(unsafe_code)]
mod x86;
mod zero;

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::ops::Range;
use core::sync::atomic::AtomicBool;
use core::sync::atomic::Ordering::Relaxed;

use cache::{CACHES, Cache};
use machvm_base::sync::{Locks, SpinLocks};
use sync::{AtomicU64, Lock};

pub use error::FrameError;
pub use machvm_base::{KernError, PAGE_SHIFT, PAGE_SIZE, PageIndex, PhysAddr};
pub use mem::{HOSTED_PHYS_BASE, PhysMem};
pub use page::{FrameState, FrameUse, VmPage, page_flags};
pub use queue::PageQueue;
pub use reserve::FrameReservation;
pub use verify::FrameRule;
#[cfg(feature = "x86_64")]
pub use x86::X86Frames;

/// What [`FrameAllocator::fail_nth_allocation_with`] runs at the failing
/// allocation.
type AllocHook = Box<dyn FnOnce() + Send>;

/// Largest block order: `2^MAX_ORDER` frames (4 MiB).
pub const MAX_ORDER: u32 = 10;
/// Order of a 2 MiB block.
pub const LARGE_PAGE_ORDER: u32 = 9;

const NIL: u32 = u32::MAX;
const NOT_HEAD: u8 = 0xFF;

struct Buddy {
    heads: [u32; MAX_ORDER as usize + 1],
    counts: [u64; MAX_ORDER as usize + 1],
}

/// A buddy allocator of physical frames, with their metadata and bytes.
///
/// ```
/// use machvm_frame::{FrameAllocator, FrameUse};
/// let frames = FrameAllocator::hosted(64 * 4096).unwrap();
/// let before = frames.free_frames();
/// let pa = frames.alloc(FrameUse::Object).unwrap();
/// frames.mem().zero_page(pa);
/// assert_eq!(frames.free_frames(), before - 1);
/// frames.free(pa);
/// assert_eq!(frames.free_frames(), before);
/// frames.verify().unwrap();
/// ```
pub struct FrameAllocator<L: Locks = SpinLocks> {
    mem: PhysMem,
    /// Physical address of frame index 0, aligned to a `MAX_ORDER` block.
    span_base: u64,
    pages: Box<[VmPage]>,
    buddy: Lock<L, Buddy>,
    free: AtomicU64,
    managed: u64,
    in_use: [AtomicU64; 3],
    /// Object frames with a wiring, and wirings in all, see `wire.rs`.
    wired: AtomicU64,
    wirings: AtomicU64,
    /// Fault injection: the n-th allocation from now fails (0: off).
    fail_countdown: AtomicU64,
    /// Run by the failing allocation before it fails (tests interleave
    /// another thread's work there).
    fail_hook: spin::Mutex<Option<AllocHook>>,
    /// Set while `reserve_hook` holds a hook: the common path tests a flag.
    reserve_hooked: AtomicBool,
    reserve_hook: spin::Mutex<Option<AllocHook>>,
    bad_frees: AtomicU64,
    /// The shared zero frame (0: none yet), see `zero.rs`.
    zero: AtomicU64,
    /// The per-CPU caches, see `cache.rs`.
    caches: Box<[Cache<L>]>,
    /// The page queues, see `queue.rs`, and whether they are on.
    queues: Lock<L, queue::Queues>,
    queues_on: AtomicBool,
}

impl<L: Locks> FrameAllocator<L> {
    /// [`new`](FrameAllocator::new) with the locks of family `L`.
    pub fn with_locks(
        mem: PhysMem,
        ranges: &[Range<PhysAddr>],
    ) -> Result<FrameAllocator<L>, KernError> {
        let block = PAGE_SIZE << MAX_ORDER;
        let mut lo = u64::MAX;
        let mut hi = 0;
        for r in ranges {
            let s = machvm_base::round_page(r.start.as_u64()).ok_or(KernError::InvalidArgument)?;
            let e = machvm_base::trunc_page(r.end.as_u64());
            if s >= e {
                continue;
            }
            if !mem.contains(PhysAddr::new(s), e - s) {
                return Err(KernError::InvalidArgument);
            }
            lo = lo.min(s);
            hi = hi.max(e);
        }
        if lo >= hi {
            return Err(KernError::InvalidArgument);
        }
        let span_base = lo & !(block - 1);
        let nframes = usize::try_from((hi - span_base) >> PAGE_SHIFT)
            .ok()
            .filter(|&n| n < NIL as usize)
            .ok_or(KernError::InvalidArgument)?;
        let mut pages = Vec::new();
        pages
            .try_reserve_exact(nframes)
            .map_err(|_| KernError::ResourceShortage)?;
        pages.resize_with(nframes, VmPage::default);
        let mut fa = FrameAllocator {
            mem,
            span_base,
            pages: pages.into_boxed_slice(),
            buddy: Lock::new(Buddy {
                heads: [NIL; MAX_ORDER as usize + 1],
                counts: [0; MAX_ORDER as usize + 1],
            }),
            free: AtomicU64::new(0),
            managed: 0,
            in_use: Default::default(),
            wired: AtomicU64::new(0),
            wirings: AtomicU64::new(0),
            fail_countdown: AtomicU64::new(0),
            fail_hook: spin::Mutex::new(None),
            reserve_hooked: AtomicBool::new(false),
            reserve_hook: spin::Mutex::new(None),
            bad_frees: AtomicU64::new(0),
            zero: AtomicU64::new(0),
            caches: (0..CACHES).map(|_| Cache::new()).collect(),
            queues: Lock::new(queue::Queues::new()),
            queues_on: AtomicBool::new(false),
        };
        let mut managed = 0;
        for r in ranges {
            managed += fa.manage(r)?;
        }
        fa.managed = managed;
        fa.free.store(managed, Relaxed);
        Ok(fa)
    }

    /// Puts the frames of `r` (rounded in to whole pages) on the free
    /// lists in the largest aligned blocks; returns how many. A frame
    /// already managed (overlapping ranges) is `InvalidArgument`.
    fn manage(&self, r: &Range<PhysAddr>) -> Result<u64, KernError> {
        let s = machvm_base::round_page(r.start.as_u64()).unwrap_or(u64::MAX);
        let e = machvm_base::trunc_page(r.end.as_u64());
        if s >= e {
            return Ok(0);
        }
        let (si, ei) = (self.index_of(s), self.index_of(e));
        if (si..ei).any(|i| self.pages[i].state() != FrameState::Reserved) {
            return Err(KernError::InvalidArgument);
        }
        for p in &self.pages[si..ei] {
            p.state.store(FrameState::Free as u8, Relaxed);
            p.order.store(NOT_HEAD, Relaxed);
        }
        let mut b = self.buddy.lock();
        let mut i = si;
        while i < ei {
            let mut k = MAX_ORDER;
            while k > 0 && (i % (1 << k) != 0 || i + (1 << k) > ei) {
                k -= 1;
            }
            self.push_free(&mut b, i, k);
            i += 1 << k;
        }
        Ok((ei - si) as u64)
    }

    /// [`hosted`](FrameAllocator::hosted) with the locks of family `L`.
    pub fn hosted_with_locks(bytes: u64) -> Result<FrameAllocator<L>, KernError> {
        let mem = PhysMem::hosted(bytes)?;
        let r = mem.base()..PhysAddr::new(mem.base().as_u64() + mem.len());
        FrameAllocator::with_locks(mem, &[r])
    }

    /// The memory whose frames this allocator hands out.
    #[inline]
    pub fn mem(&self) -> &PhysMem {
        &self.mem
    }

    #[inline]
    fn index_of(&self, pa: u64) -> usize {
        ((pa - self.span_base) >> PAGE_SHIFT) as usize
    }

    #[inline]
    fn pa_of(&self, idx: usize) -> PhysAddr {
        PhysAddr::new(self.span_base + ((idx as u64) << PAGE_SHIFT))
    }

    /// Metadata of the frame at `pa`, or `None` for an address outside the
    /// managed span.
    #[inline]
    pub fn page(&self, pa: PhysAddr) -> Option<&VmPage> {
        if pa.as_u64() < self.span_base {
            return None;
        }
        self.pages.get(self.index_of(pa.as_u64()))
    }

    /// Index of the frame at `pa` within the managed span (`0..span_frames()`),
    /// for side tables kept per frame by other layers (a pmap's pv lists).
    #[inline]
    pub fn frame_index(&self, pa: PhysAddr) -> Option<usize> {
        if pa.as_u64() < self.span_base {
            return None;
        }
        let i = self.index_of(pa.as_u64());
        (i < self.pages.len()).then_some(i)
    }

    /// The frame at index `index` of the span (`None` past its end): the
    /// inverse of [`frame_index`](Self::frame_index), for scans over every
    /// frame (the pageout clock).
    #[inline]
    pub fn frame_at(&self, index: usize) -> Option<PhysAddr> {
        (index < self.pages.len()).then(|| self.pa_of(index))
    }

    /// Number of frame indices in the span (managed frames and holes).
    #[inline]
    pub fn span_frames(&self) -> usize {
        self.pages.len()
    }

    /// Frames currently free (on the buddy lists or in per-CPU caches).
    #[inline]
    pub fn free_frames(&self) -> u64 {
        self.free.load(Relaxed) + self.cached_frames()
    }

    /// Frames managed (free or in use).
    #[inline]
    pub fn total_frames(&self) -> u64 {
        self.managed
    }

    /// Frames in use for `what`.
    pub fn frames_in_use(&self, what: FrameUse) -> u64 {
        self.in_use[what.index()]
            .load(Relaxed)
            .wrapping_add(self.cached_in_use(what))
    }

    /// Allocates one frame (contents unspecified). O(1).
    #[inline]
    pub fn alloc(&self, what: FrameUse) -> Result<PhysAddr, FrameError> {
        self.alloc_order(0, what)
    }

    /// Allocates `2^order` contiguous frames aligned to their size (contents
    /// unspecified); `LARGE_PAGE_ORDER` gives a 2 MiB page. Single frames
    /// come from the calling CPU's cache when it can serve them.
    pub fn alloc_order(&self, order: u32, what: FrameUse) -> Result<PhysAddr, FrameError> {
        if order > MAX_ORDER {
            return Err(FrameError::OrderTooLarge { order });
        }
        if self.fail_countdown.load(Relaxed) != 0 && self.fail_countdown.fetch_sub(1, Relaxed) == 1
        {
            let hook = self.fail_hook.lock().take();
            if let Some(hook) = hook {
                hook();
            }
            return Err(FrameError::OutOfFrames { order });
        }
        let idx = match order {
            0 => self.alloc_cached(what).map(|pa| self.index_of(pa.as_u64())),
            _ => None,
        };
        let idx = match idx {
            Some(idx) => idx,
            None => self.alloc_draining(order, what)?,
        };
        let head = &self.pages[idx];
        head.flags.store(0, Relaxed);
        head.wire_count.store(0, Relaxed);
        head.use_count.store(0, Relaxed);
        head.set_owner(0, PageIndex::new(0));
        Ok(self.pa_of(idx))
    }

    /// A block from the buddy lists; when they cannot serve it, every cache
    /// is drained into them and the lists asked again, as long as draining
    /// moved something (another CPU's refill may take what was drained):
    /// frames in caches never make an allocation fail.
    fn alloc_draining(&self, order: u32, what: FrameUse) -> Result<usize, FrameError> {
        loop {
            if let Some(idx) = self.alloc_buddy(order, what) {
                return Ok(idx);
            }
            if self.drain_all() == 0 {
                return Err(FrameError::OutOfFrames { order });
            }
        }
    }

    /// A block of `2^order` from the buddy lists, marked in use for `what`.
    fn alloc_buddy(&self, order: u32, what: FrameUse) -> Option<usize> {
        let mut b = self.buddy.lock();
        let idx = self.take_block(&mut b, order)?;
        // Under the lock: until the head stops looking like a free head of
        // its old order, a concurrent free of its buddy would merge it.
        let head = &self.pages[idx];
        head.state.store(what.state() as u8, Relaxed);
        head.order.store(order as u8, Relaxed);
        for t in &self.pages[idx + 1..idx + (1 << order)] {
            t.state.store(FrameState::Tail as u8, Relaxed);
        }
        // Counters change under the lock too: `verify`, which holds it,
        // may run at any moment on another thread.
        self.free.fetch_sub(1 << order, Relaxed);
        self.in_use[what.index()].fetch_add(1 << order, Relaxed);
        Some(idx)
    }

    /// Unlinks a free block of order `order` (splitting a larger one) and
    /// returns its first frame; its head still looks free.
    fn take_block(&self, b: &mut Buddy, order: u32) -> Option<usize> {
        let mut k = order;
        while k <= MAX_ORDER && b.heads[k as usize] == NIL {
            k += 1;
        }
        if k > MAX_ORDER {
            return None;
        }
        let idx = b.heads[k as usize] as usize;
        self.unlink(b, idx, k);
        while k > order {
            k -= 1;
            self.push_free(b, idx + (1 << k), k);
        }
        Some(idx)
    }

    /// Returns a block obtained from [`alloc`](Self::alloc) or
    /// [`alloc_order`](Self::alloc_order). Freeing anything else (a double
    /// free, a tail, a foreign frame) is a bug: it is refused, asserted in
    /// debug builds and remembered for [`verify`](Self::verify).
    pub fn free(&self, pa: PhysAddr) {
        let idx = match self.page(pa) {
            Some(p)
                if pa.is_page_aligned()
                    && p.wire_count() == 0
                    && matches!(
                        p.state(),
                        FrameState::Object | FrameState::PageTable | FrameState::Kernel
                    ) =>
            {
                self.index_of(pa.as_u64())
            }
            _ => {
                self.bad_frees.fetch_add(1, Relaxed);
                debug_assert!(false, "invalid free of {pa:?}");
                return;
            }
        };
        let head = &self.pages[idx];
        if head.flags() & (page_flags::ACTIVE | page_flags::INACTIVE) != 0 {
            self.dequeue(pa);
        }
        let what = match head.state() {
            FrameState::Object => FrameUse::Object,
            FrameState::PageTable => FrameUse::PageTable,
            _ => FrameUse::Kernel,
        };
        let order = u32::from(head.order.load(Relaxed));
        if order == 0 && self.free_cached(idx, what) {
            return;
        }
        let n = 1u64 << order;
        let mut b = self.buddy.lock();
        self.free_block(&mut b, idx, order);
        self.free.fetch_add(n, Relaxed);
        self.in_use[what.index()].fetch_sub(n, Relaxed);
        drop(b);
    }

    /// Puts the block of `2^order` at `idx` on the buddy lists, merged
    /// with its free buddies.
    fn free_block(&self, b: &mut Buddy, idx: usize, order: u32) {
        for p in &self.pages[idx..idx + (1 << order)] {
            p.state.store(FrameState::Free as u8, Relaxed);
            p.order.store(NOT_HEAD, Relaxed);
        }
        let (mut idx, mut k) = (idx, order);
        while k < MAX_ORDER {
            let buddy = idx ^ (1 << k);
            match self.pages.get(buddy) {
                Some(bp)
                    if bp.state() == FrameState::Free && u32::from(bp.order.load(Relaxed)) == k =>
                {
                    self.unlink(b, buddy, k);
                    bp.order.store(NOT_HEAD, Relaxed);
                    self.pages[idx].order.store(NOT_HEAD, Relaxed);
                    idx = idx.min(buddy);
                    k += 1;
                }
                _ => break,
            }
        }
        self.push_free(b, idx, k);
    }

    fn push_free(&self, b: &mut Buddy, idx: usize, k: u32) {
        let p = &self.pages[idx];
        p.state.store(FrameState::Free as u8, Relaxed);
        p.order.store(k as u8, Relaxed);
        let old = b.heads[k as usize];
        p.next.store(old, Relaxed);
        p.prev.store(NIL, Relaxed);
        if old != NIL {
            self.pages[old as usize].prev.store(idx as u32, Relaxed);
        }
        b.heads[k as usize] = idx as u32;
        b.counts[k as usize] += 1;
    }

    fn unlink(&self, b: &mut Buddy, idx: usize, k: u32) {
        let p = &self.pages[idx];
        let (prev, next) = (p.prev.load(Relaxed), p.next.load(Relaxed));
        if prev == NIL {
            b.heads[k as usize] = next;
        } else {
            self.pages[prev as usize].next.store(next, Relaxed);
        }
        if next != NIL {
            self.pages[next as usize].prev.store(prev, Relaxed);
        }
        b.counts[k as usize] -= 1;
    }
}

impl FrameAllocator {
    /// Manages the frames of `ranges` (each rounded in to whole pages), all
    /// of which must lie inside `mem`, under spin's locks
    /// ([`with_locks`](FrameAllocator::with_locks) chooses others).
    /// Overlapping ranges are `InvalidArgument`.
    ///
    /// On bare metal, `mem` is the kernel's direct map of the RAM it gives
    /// machvm, and `ranges` the usable parts of it (the firmware's memory
    /// map). Metadata costs 32 bytes per frame of the span (a [`VmPage`]),
    /// from the kernel heap.
    ///
    /// ```no_run
    /// use core::ptr::NonNull;
    /// use machvm_base::PhysAddr;
    /// use machvm_frame::{FrameAllocator, FrameUse, PhysMem};
    ///
    /// // Where the boot code mapped all of RAM, [0, 512 MiB), read-write.
    /// const DIRECT_MAP: usize = 0xFFFF_8000_0000_0000;
    /// // The kernel's image, stack and heap lie below 16 MiB; machvm gets
    /// // the rest.
    /// let (lo, ram) = (16u64 << 20, 512u64 << 20);
    /// let virt = NonNull::new((DIRECT_MAP + lo as usize) as *mut u8).unwrap();
    /// // SAFETY: [lo, ram) is mapped read-write at DIRECT_MAP + lo for the
    /// // kernel's lifetime, and nothing but this PhysMem touches it (or
    /// // atomically, as the MMU sets accessed and dirty bits).
    /// let mem = unsafe { PhysMem::direct_map(virt, PhysAddr::new(lo), ram - lo) };
    /// // What the memory map says is usable there (a hole at 256 MiB, say).
    /// let usable = [
    ///     PhysAddr::new(lo)..PhysAddr::new(256 << 20),
    ///     PhysAddr::new(260 << 20)..PhysAddr::new(ram),
    /// ];
    /// let frames = FrameAllocator::new(mem, &usable)?;
    /// let table = frames.alloc(FrameUse::PageTable)?;
    /// frames.mem().zero_page(table);
    /// # Ok::<(), machvm_base::KernError>(())
    /// ```
    pub fn new(mem: PhysMem, ranges: &[Range<PhysAddr>]) -> Result<FrameAllocator, KernError> {
        FrameAllocator::with_locks(mem, ranges)
    }

    /// A host arena of `bytes` with every frame managed, under spin's
    /// locks.
    pub fn hosted(bytes: u64) -> Result<FrameAllocator, KernError> {
        FrameAllocator::hosted_with_locks(bytes)
    }
}

impl<L: Locks> core::fmt::Debug for FrameAllocator<L> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FrameAllocator")
            .field("mem", &self.mem)
            .field("free", &self.free_frames())
            .field("managed", &self.managed)
            .finish()
    }
}

#[cfg(test)]
mod tests;

/// The examples in this crate's README.md, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct CrateReadmeDoctests;
