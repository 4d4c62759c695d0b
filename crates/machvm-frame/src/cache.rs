//! Per-CPU frame caches: single frames allocated and freed without the
//! buddy allocator's lock (Linux's per-CPU pagesets, FreeBSD's UMA
//! buckets).
//!
//! Each of [`CACHES`] caches holds up to [`CACHE_MAX`] free frames, refilled
//! from the buddy lists and drained back to them [`BATCH`] frames at a time
//! under one acquisition of the buddy lock. A thread uses the cache of its
//! CPU — `machvm_base::sync::set_cpu_id` tells which, else its stack
//! address picks one — and falls back to the buddy lists when that cache
//! is busy.
//! Its counters live beside its lock, so an allocation from a cache writes
//! no cache line another CPU's allocations write.
//!
//! Invariants (checked by `verify`):
//! - A frame is in a cache iff its state is `Cached` (a free block of one
//!   frame kept off the buddy lists); it is in one cache, once.
//! - The free frames are the buddy lists' plus the caches'.
//! - When the buddy lists cannot serve an allocation, every cache is
//!   drained into them before the allocation fails: frames in caches never
//!   make an allocation fail.

use core::sync::atomic::Ordering::{Acquire, Relaxed, Release};

use machvm_base::PhysAddr;

use crate::sync::{AtomicU64, Lock};
use crate::{Buddy, FrameAllocator, FrameState, FrameUse, NOT_HEAD};
use machvm_base::sync::Locks;

/// Number of caches (CPUs beyond it share).
#[cfg(not(loom))]
pub(crate) const CACHES: usize = 16;
/// Frames one cache holds at most.
#[cfg(not(loom))]
pub(crate) const CACHE_MAX: usize = 64;
/// Frames moved between a cache and the buddy lists at once.
#[cfg(not(loom))]
pub(crate) const BATCH: usize = 32;
// Under loom: the smallest caches that still refill, drain and share.
#[cfg(loom)]
pub(crate) const CACHES: usize = 2;
#[cfg(loom)]
pub(crate) const CACHE_MAX: usize = 2;
#[cfg(loom)]
pub(crate) const BATCH: usize = 1;

/// The free frames of one cache, by frame index.
pub(crate) struct Stack {
    pub(crate) frames: [u32; CACHE_MAX],
    pub(crate) len: usize,
}

/// One CPU's cache, alone on its cache lines.
#[repr(align(128))]
pub(crate) struct Cache<L: Locks> {
    pub(crate) stack: Lock<L, Stack>,
    /// Frames held (read without the lock by `free_frames`).
    pub(crate) held: AtomicU64,
    /// Frames allocated minus frames freed through this cache, per use
    /// (wrapping: a frame allocated here may be freed through another).
    pub(crate) in_use: [AtomicU64; 3],
}

impl<L: Locks> Cache<L> {
    pub(crate) fn new() -> Cache<L> {
        Cache {
            stack: Lock::new(Stack {
                frames: [0; CACHE_MAX],
                len: 0,
            }),
            held: AtomicU64::new(0),
            in_use: Default::default(),
        }
    }
}

impl<L: Locks> FrameAllocator<L> {
    /// The cache of the calling CPU (`machvm_base::sync::cpu_slot`: the
    /// CPU a kernel names with `set_cpu_id`, else the thread's stack).
    fn my_cache(&self) -> &Cache<L> {
        // loom needs every execution to be the same: no stack addresses.
        #[cfg(loom)]
        return &self.caches[0];
        #[cfg(not(loom))]
        &self.caches[machvm_base::sync::cpu_slot() % CACHES]
    }

    /// One frame from the calling CPU's cache, refilled from the buddy
    /// lists when empty; `None` when the cache is busy or nothing is free.
    pub(crate) fn alloc_cached(&self, what: FrameUse) -> Option<PhysAddr> {
        let c = self.my_cache();
        let mut s = c.stack.try_lock()?;
        if s.len == 0 {
            self.refill(c, &mut s);
        }
        if s.len == 0 {
            return None;
        }
        s.len -= 1;
        let idx = s.frames[s.len] as usize;
        let head = &self.pages[idx];
        head.state.store(what.state() as u8, Relaxed);
        c.held.fetch_sub(1, Release);
        c.in_use[what.index()].fetch_add(1, Relaxed);
        drop(s);
        Some(self.pa_of(idx))
    }

    /// Puts the single frame `idx` (in use for `what`) in the calling
    /// CPU's cache, draining a batch to the buddy lists when it is full;
    /// `false` (nothing done) when the cache is busy.
    pub(crate) fn free_cached(&self, idx: usize, what: FrameUse) -> bool {
        let c = self.my_cache();
        let Some(mut s) = c.stack.try_lock() else {
            return false;
        };
        if s.len == CACHE_MAX {
            let mut b = self.buddy.lock();
            self.drain(c, &mut s, &mut b, BATCH);
        }
        self.push(c, &mut s, idx);
        c.in_use[what.index()].fetch_sub(1, Relaxed);
        true
    }

    /// Puts the free frame `idx` on `c`'s stack (not full), counted there.
    fn push(&self, c: &Cache<L>, s: &mut Stack, idx: usize) {
        let p = &self.pages[idx];
        p.state.store(FrameState::Cached as u8, Relaxed);
        p.order.store(0, Relaxed);
        let at = s.len;
        s.frames[at] = idx as u32;
        s.len += 1;
        c.held.fetch_add(1, Release);
    }

    /// Moves up to [`BATCH`] single frames from the buddy lists into `c`.
    fn refill(&self, c: &Cache<L>, s: &mut Stack) {
        let mut b = self.buddy.lock();
        let first = s.len;
        while s.len < BATCH {
            let Some(idx) = self.take_block(&mut b, 0) else {
                break;
            };
            // Counted in the cache before it leaves the lists: a
            // concurrent `free_frames` never sees the frame in neither.
            self.push(c, s, idx);
            self.free.fetch_sub(1, Relaxed);
        }
        // Popped from the end: hand the run out in ascending order, as the
        // buddy lists would (memory touched upwards streams faster).
        let len = s.len;
        s.frames[first..len].reverse();
    }

    /// Moves `n` frames (or all there are) from `c` to the buddy lists.
    fn drain(&self, c: &Cache<L>, s: &mut Stack, b: &mut Buddy, n: usize) {
        let n = n.min(s.len);
        for _ in 0..n {
            s.len -= 1;
            let idx = s.frames[s.len] as usize;
            self.pages[idx].order.store(NOT_HEAD, Relaxed);
            self.free_block(b, idx, 0);
            self.free.fetch_add(1, Relaxed);
            c.held.fetch_sub(1, Release);
        }
    }

    /// Drains every cache into the buddy lists (before an allocation
    /// would fail). Returns the frames moved.
    pub(crate) fn drain_all(&self) -> u64 {
        let mut moved = 0;
        for c in self.caches.iter() {
            let mut s = c.stack.lock();
            let n = s.len;
            if n > 0 {
                let mut b = self.buddy.lock();
                self.drain(c, &mut s, &mut b, n);
                moved += n as u64;
            }
        }
        moved
    }

    /// Frames free in caches.
    pub(crate) fn cached_frames(&self) -> u64 {
        self.caches.iter().map(|c| c.held.load(Acquire)).sum()
    }

    /// The caches' share of the frames in use for `what` (wrapping sum).
    pub(crate) fn cached_in_use(&self, what: FrameUse) -> u64 {
        self.caches.iter().fold(0u64, |n, c| {
            n.wrapping_add(c.in_use[what.index()].load(Relaxed))
        })
    }
}
