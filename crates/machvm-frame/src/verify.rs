//! [`FrameAllocator::verify`]: one check per invariant stated at the top of
//! the crate.

use alloc::format;
use alloc::string::String;

use core::sync::atomic::Ordering::Relaxed;
use machvm_base::Violation;

use alloc::vec::Vec;

use crate::cache::Stack;
use crate::sync::Guard;
use crate::{Buddy, FrameAllocator, FrameState, FrameUse, MAX_ORDER, NIL, NOT_HEAD};
use machvm_base::sync::Locks;

/// The allocator's invariants, one per bullet at the top of the crate:
/// what a [`Violation`] from [`FrameAllocator::verify`] names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameRule {
    /// Every managed frame is in exactly one state: in one free block, in
    /// one allocated block, or a reserved hole.
    OneState,
    /// Free blocks are aligned heads of their order on the list of their
    /// order, their other frames tails.
    FreeBlocks,
    /// No two free buddies of the same order coexist.
    BuddiesMerged,
    /// The free counter, each list's count, each use's counter and the
    /// wired-frame counter match the frames they count; only object frames
    /// are wired.
    Counters,
    /// No invalid free (double free, foreign frame, a tail, a wired
    /// frame) and no invalid wiring was seen.
    NoInvalidFree,
    /// A frame is in a per-CPU cache iff its state is `Cached`, in one
    /// cache, once; each cache's count is its frames.
    Caches,
    /// The page queues are well-formed lists of exactly the frames flagged
    /// queued, each an unwired object frame (`queue.rs`).
    Queues,
}

impl<L: Locks> FrameAllocator<L> {
    /// Checks every invariant listed at the top of the crate, one check
    /// per rule, and names the first one broken. O(frames); for tests and
    /// debugging, at any moment (the counters it compares change under the
    /// lock it holds).
    pub fn verify(&self) -> Result<(), Violation<FrameRule>> {
        use FrameRule::*;
        Violation::check(Queues, self.check_queues())?;
        // Caches before the buddy lock: the order refills take.
        let stacks: Vec<_> = self.caches.iter().map(|c| c.stack.lock()).collect();
        let b = self.buddy.lock();
        Violation::check(Caches, self.check_caches(&stacks))?;
        Violation::check(NoInvalidFree, self.check_no_invalid_free())?;
        let mut listed = [0u64; MAX_ORDER as usize + 1];
        for k in 0..=MAX_ORDER {
            listed[k as usize] = Violation::check(FreeBlocks, self.check_free_list(&b, k))?;
        }
        for k in 0..=MAX_ORDER {
            Violation::check(BuddiesMerged, self.check_buddies_merged(&b, k))?;
        }
        let used = Violation::check(OneState, self.check_one_state())?;
        Violation::check(Counters, self.check_counters(&b, &listed, used))
    }

    /// Every cached frame is in state `Cached` and in one cache once, every
    /// `Cached` frame is in a cache, and each cache's count is its length.
    fn check_caches(&self, stacks: &[Guard<'_, L, Stack>]) -> Result<(), String> {
        let mut seen = alloc::collections::BTreeSet::new();
        for (c, s) in self.caches.iter().zip(stacks) {
            if c.held.load(core::sync::atomic::Ordering::Acquire) != s.len as u64 {
                return Err(format!(
                    "a cache holds {} frames, count says {}",
                    s.len,
                    c.held.load(core::sync::atomic::Ordering::Acquire)
                ));
            }
            for &idx in &s.frames[..s.len] {
                let p = self
                    .pages
                    .get(idx as usize)
                    .ok_or("cached frame out of range")?;
                if p.state() != FrameState::Cached || !seen.insert(idx) {
                    return Err(format!("frame {idx} cached twice or not in state Cached"));
                }
            }
        }
        let cached = self
            .pages
            .iter()
            .filter(|p| p.state() == FrameState::Cached)
            .count();
        if cached != seen.len() {
            return Err(format!(
                "{cached} frames in state Cached, {} in caches",
                seen.len()
            ));
        }
        Ok(())
    }

    /// No invalid free (double free, foreign frame, a tail) was seen.
    fn check_no_invalid_free(&self) -> Result<(), String> {
        match self.bad_frees.load(Relaxed) {
            0 => Ok(()),
            bad => Err(format!("{bad} invalid free(s) were attempted")),
        }
    }

    /// Free list `k` links free heads of order `k`, aligned to `2^k`.
    /// Returns its number of blocks.
    fn check_free_list(&self, b: &Buddy, k: u32) -> Result<u64, String> {
        let mut n = 0;
        let mut prev = NIL;
        let mut cur = b.heads[k as usize];
        while cur != NIL {
            let p = self
                .pages
                .get(cur as usize)
                .ok_or("free-list link out of range")?;
            if p.state() != FrameState::Free || u32::from(p.order.load(Relaxed)) != k {
                return Err(format!(
                    "frame {cur} on free list {k} is not a free head of order {k}"
                ));
            }
            if !(cur as usize).is_multiple_of(1 << k) {
                return Err(format!("free block {cur} misaligned for order {k}"));
            }
            if p.prev.load(Relaxed) != prev {
                return Err(format!("free list {k}: broken back link at {cur}"));
            }
            n += 1;
            if n > self.pages.len() as u64 {
                return Err(format!("free list {k} has a cycle"));
            }
            prev = cur;
            cur = p.next.load(Relaxed);
        }
        Ok(n)
    }

    /// No block on free list `k` has a free buddy of its order.
    fn check_buddies_merged(&self, b: &Buddy, k: u32) -> Result<(), String> {
        let mut cur = b.heads[k as usize];
        let mut steps = 0;
        while cur != NIL && steps <= self.pages.len() {
            self.check_not_mergeable(cur as usize, k)?;
            cur = self.pages[cur as usize].next.load(Relaxed);
            steps += 1;
        }
        Ok(())
    }

    /// The free block at `idx` of order `k` has no free buddy of its order
    /// (the two would have merged).
    fn check_not_mergeable(&self, idx: usize, k: u32) -> Result<(), String> {
        let buddy = idx ^ (1 << k);
        let free_buddy = self.pages.get(buddy).is_some_and(|bp| {
            bp.state() == FrameState::Free && u32::from(bp.order.load(Relaxed)) == k
        });
        if k < MAX_ORDER && free_buddy {
            return Err(format!(
                "free buddies {idx} and {buddy} of order {k} not merged"
            ));
        }
        Ok(())
    }

    /// The counters: each list's count equals its blocks (`listed[k]`), the
    /// free counter the frames on the lists, each use's counter the frames
    /// in blocks of that use (`used`).
    fn check_counters(&self, b: &Buddy, listed: &[u64], used: [u64; 3]) -> Result<(), String> {
        let mut free = 0;
        for (k, &n) in listed.iter().enumerate() {
            if n != b.counts[k] {
                return Err(format!(
                    "free list {k}: {n} blocks, count says {}",
                    b.counts[k]
                ));
            }
            free += n << k;
        }
        if free != self.free.load(Relaxed) {
            return Err(format!(
                "free lists hold {free} frames, counter says {}",
                self.free_frames()
            ));
        }
        self.check_use_counters(used)?;
        self.check_wired()
    }

    /// Every frame belongs to exactly one block or is a reserved hole, and
    /// free and used frames add up to the managed ones. Returns the frames
    /// in use for objects, page tables and the kernel.
    fn check_one_state(&self) -> Result<[u64; 3], String> {
        let used = self.check_blocks()?;
        let free: u64 = (0..self.pages.len())
            .filter(|&i| matches!(self.pages[i].state(), FrameState::Free | FrameState::Cached))
            .count() as u64;
        if free + used.iter().sum::<u64>() != self.managed {
            return Err(format!(
                "{free} free + {} used frames != {} managed",
                used.iter().sum::<u64>(),
                self.managed
            ));
        }
        Ok(used)
    }

    /// Every frame belongs to exactly one block (or is a reserved hole).
    /// Returns the frames in use for objects, page tables and the kernel.
    fn check_blocks(&self) -> Result<[u64; 3], String> {
        let mut used = [0u64; 3];
        let mut i = 0;
        while i < self.pages.len() {
            let (state, len) = self.check_block_at(i)?;
            match state {
                FrameState::Object => used[0] += len as u64,
                FrameState::PageTable => used[1] += len as u64,
                FrameState::Kernel => used[2] += len as u64,
                _ => {}
            }
            i += len;
        }
        Ok(used)
    }

    /// The block headed by frame `i`: a head, and tails of its kind up to
    /// its length. Returns its state and length in frames.
    fn check_block_at(&self, i: usize) -> Result<(FrameState, usize), String> {
        let p = &self.pages[i];
        let (state, order) = (p.state(), p.order.load(Relaxed));
        let len = match state {
            FrameState::Reserved | FrameState::Cached => 1,
            FrameState::Tail => return Err(format!("tail frame {i} without a head")),
            _ if order == NOT_HEAD => {
                return Err(format!("frame {i} ({state:?}) is not a block head"));
            }
            _ => 1usize << order,
        };
        let tail_state = if state == FrameState::Free {
            FrameState::Free
        } else {
            FrameState::Tail
        };
        for j in i + 1..i + len {
            let t = self.pages.get(j).ok_or("block runs past the span")?;
            if t.state() != tail_state
                || (state == FrameState::Free && t.order.load(Relaxed) != NOT_HEAD)
            {
                return Err(format!(
                    "frame {j} inside block {i} has state {:?}",
                    t.state()
                ));
            }
        }
        Ok((state, len))
    }

    /// The per-use counters equal the frames in blocks of that use.
    fn check_use_counters(&self, used: [u64; 3]) -> Result<(), String> {
        for (what, n) in [FrameUse::Object, FrameUse::PageTable, FrameUse::Kernel]
            .into_iter()
            .zip(used)
        {
            if self.frames_in_use(what) != n {
                return Err(format!(
                    "{what:?}: {n} frames in use, counter says {}",
                    self.frames_in_use(what)
                ));
            }
        }
        Ok(())
    }
}
