//! [`FrameAllocator::verify`]: one check per invariant stated at the top of
//! the crate.

use alloc::format;
use alloc::string::String;
use core::sync::atomic::Ordering::Relaxed;

use crate::{FrameAllocator, FrameState, FrameUse, MAX_ORDER, NIL, NOT_HEAD};

impl FrameAllocator {
    /// Checks every invariant listed at the top of this module. O(frames);
    /// for tests and debugging, at any moment (the counters it compares
    /// change under the lock it holds).
    pub fn verify(&self) -> Result<(), String> {
        let b = self.buddy.lock();
        let bad = self.bad_frees.load(Relaxed);
        if bad != 0 {
            return Err(format!("{bad} invalid free(s) were attempted"));
        }
        let mut listed = 0u64;
        for k in 0..=MAX_ORDER {
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
                if cur as usize % (1 << k) != 0 {
                    return Err(format!("free block {cur} misaligned for order {k}"));
                }
                if p.prev.load(Relaxed) != prev {
                    return Err(format!("free list {k}: broken back link at {cur}"));
                }
                let buddy = cur as usize ^ (1 << k);
                if k < MAX_ORDER
                    && self.pages.get(buddy).is_some_and(|bp| {
                        bp.state() == FrameState::Free && u32::from(bp.order.load(Relaxed)) == k
                    })
                {
                    return Err(format!(
                        "free buddies {cur} and {buddy} of order {k} not merged"
                    ));
                }
                n += 1;
                if n > self.pages.len() as u64 {
                    return Err(format!("free list {k} has a cycle"));
                }
                prev = cur;
                cur = p.next.load(Relaxed);
            }
            if n != b.counts[k as usize] {
                return Err(format!(
                    "free list {k}: {n} blocks, count says {}",
                    b.counts[k as usize]
                ));
            }
            listed += n << k;
        }
        if listed != self.free.load(Relaxed) {
            return Err(format!(
                "free lists hold {listed} frames, counter says {}",
                self.free_frames()
            ));
        }
        // Every frame belongs to exactly one block.
        let mut used = [0u64; 3];
        let mut i = 0;
        while i < self.pages.len() {
            let p = &self.pages[i];
            let (state, order) = (p.state(), p.order.load(Relaxed));
            let len = match state {
                FrameState::Reserved => 1,
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
            match state {
                FrameState::Object => used[0] += len as u64,
                FrameState::PageTable => used[1] += len as u64,
                FrameState::Kernel => used[2] += len as u64,
                _ => {}
            }
            i += len;
        }
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
        if listed + used.iter().sum::<u64>() != self.managed {
            return Err("free + used != managed".into());
        }
        Ok(())
    }
}
