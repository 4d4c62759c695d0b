//! Wired frames: a frame some wired map entry holds (SPEC §7). The object
//! layer counts the wired entries covering a frame in its `VmPage`; the
//! allocator counts the frames with at least one, for the statistics, and
//! refuses to free a frame still wired (a wired translation to a freed frame
//! is the bug class wiring races produce).

use core::sync::atomic::Ordering::Relaxed;

use machvm_base::PhysAddr;
use machvm_base::sync::Locks;

use crate::{FrameAllocator, FrameState};

impl<L: Locks> FrameAllocator<L> {
    /// Adds one wiring to the object frame at `pa`. `false` (and nothing
    /// changes) when `pa` is not an allocated object frame or its count is
    /// full: a caller bug, remembered for [`verify`](Self::verify).
    pub fn wire(&self, pa: PhysAddr) -> bool {
        let Some(p) = self.page(pa).filter(|p| p.state() == FrameState::Object) else {
            self.bad_frees.fetch_add(1, Relaxed);
            return false;
        };
        match p
            .wire_count
            .fetch_update(Relaxed, Relaxed, |n| n.checked_add(1))
        {
            Ok(n) => {
                self.wirings.fetch_add(1, Relaxed);
                if n == 0 {
                    self.wired.fetch_add(1, Relaxed);
                    // A wired page is never paged out: off the queues.
                    self.dequeue(pa);
                }
                true
            }
            Err(_) => {
                self.bad_frees.fetch_add(1, Relaxed);
                false
            }
        }
    }

    /// Drops one wiring of the frame at `pa`; unwiring a frame that is not
    /// wired is refused and remembered for [`verify`](Self::verify).
    pub fn unwire(&self, pa: PhysAddr) {
        let Some(p) = self.page(pa) else {
            self.bad_frees.fetch_add(1, Relaxed);
            return;
        };
        match p
            .wire_count
            .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
        {
            Ok(n) => {
                self.wirings.fetch_sub(1, Relaxed);
                if n == 1 {
                    self.wired.fetch_sub(1, Relaxed);
                    self.enqueue(pa, crate::PageQueue::Active);
                }
            }
            Err(_) => {
                self.bad_frees.fetch_add(1, Relaxed);
            }
        }
    }

    /// Object frames with at least one wiring.
    pub fn wired_frames(&self) -> u64 {
        self.wired.load(Relaxed)
    }

    /// Wirings over all frames (a frame wired twice counts twice).
    pub fn wirings(&self) -> u64 {
        self.wirings.load(Relaxed)
    }

    /// The wired-frame counter equals the frames whose count is not 0,
    /// the wirings counter their counts' sum, and only object frames are
    /// wired.
    pub(crate) fn check_wired(&self) -> Result<(), alloc::string::String> {
        let mut n = 0;
        for (i, p) in self.pages.iter().enumerate() {
            if p.wire_count() == 0 {
                continue;
            }
            if p.state() != FrameState::Object {
                return Err(alloc::format!("frame {i} is wired but {:?}", p.state()));
            }
            n += 1;
        }
        if self.wired_frames() != n {
            let w = self.wired_frames();
            return Err(alloc::format!("{n} frames wired, counter says {w}"));
        }
        let sum: u64 = self.pages.iter().map(|p| u64::from(p.wire_count())).sum();
        match self.wirings() {
            w if w == sum => Ok(()),
            w => Err(alloc::format!(
                "frames count {sum} wirings, counter says {w}"
            )),
        }
    }
}
