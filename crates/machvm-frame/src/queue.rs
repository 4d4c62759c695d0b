//! Page queues (Mach's active and inactive queues): the pageable object
//! frames of a system that pages, in the order pageout considers them.
//!
//! A frame is linked through its `VmPage`'s `next`/`prev` (which only free
//! blocks use otherwise) into one of two lists under one lock, a leaf: it
//! is taken under the object graph's lock and never held across a pmap or
//! pager call. Its [`page_flags::ACTIVE`] or [`page_flags::INACTIVE`] bit
//! says which list, written under that lock.
//!
//! Invariants (checked by `verify`, `FrameRule::Queues`):
//! - Each list is well formed: `prev` and `next` agree, it ends, and its
//!   length is its count.
//! - A listed frame is an unwired object frame, with the flag of its list
//!   and no other; an unlisted frame has neither flag.
//!
//! The queues are off until [`FrameAllocator::enable_queues`] (a system
//! that pages turns them on): then the object layer lists every resident
//! unwired page, and `free`, `wire` and `unwire` keep the lists right.

use core::sync::atomic::Ordering::Relaxed;

use machvm_base::PhysAddr;
use machvm_base::sync::Locks;

use crate::page::page_flags::{ACTIVE, INACTIVE};
use crate::{FrameAllocator, FrameState, NIL};

/// Which queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageQueue {
    /// Pages in use: new pages go here, referenced pages come back here.
    Active,
    /// Pages that went unreferenced while active: pageout's candidates.
    Inactive,
}

impl PageQueue {
    fn flag(self) -> u8 {
        match self {
            PageQueue::Active => ACTIVE,
            PageQueue::Inactive => INACTIVE,
        }
    }
    fn index(self) -> usize {
        self as usize
    }
}

/// One list: head, tail, length.
#[derive(Clone, Copy)]
pub(crate) struct List {
    head: u32,
    tail: u32,
    len: u64,
}

/// The two lists.
pub(crate) struct Queues {
    lists: [List; 2],
}

impl Queues {
    pub(crate) fn new() -> Queues {
        let empty = List {
            head: NIL,
            tail: NIL,
            len: 0,
        };
        Queues { lists: [empty; 2] }
    }
}

impl<L: Locks> FrameAllocator<L> {
    /// Turns the page queues on (a system that pages calls it once, before
    /// any object page exists).
    pub fn enable_queues(&self) {
        self.queues_on.store(true, Relaxed);
    }

    /// Whether the page queues are on.
    #[inline]
    pub fn queues_on(&self) -> bool {
        self.queues_on.load(Relaxed)
    }

    /// Puts the object frame at `pa` at the tail of `q`, taking it off the
    /// queue it was on. Nothing when the queues are off, or for a wired or
    /// non-object frame.
    pub fn enqueue(&self, pa: PhysAddr, q: PageQueue) {
        if !self.queues_on() {
            return;
        }
        let Some(i) = self.frame_index(pa) else {
            return;
        };
        let p = &self.pages[i];
        let mut qs = self.queues.lock();
        if p.state() != FrameState::Object || p.wire_count() != 0 {
            return;
        }
        self.unlink_queued(&mut qs, i);
        let l = &mut qs.lists[q.index()];
        p.prev.store(l.tail, Relaxed);
        p.next.store(NIL, Relaxed);
        match l.tail {
            NIL => l.head = i as u32,
            t => self.pages[t as usize].next.store(i as u32, Relaxed),
        }
        l.tail = i as u32;
        l.len += 1;
        p.set_flags(q.flag());
    }

    /// Takes the frame at `pa` off its queue, if it is on one.
    pub fn dequeue(&self, pa: PhysAddr) {
        let Some(i) = self.frame_index(pa) else {
            return;
        };
        if self.pages[i].flags() & (ACTIVE | INACTIVE) == 0 {
            return;
        }
        self.unlink_queued(&mut self.queues.lock(), i);
    }

    /// Unlinks frame `i` from the list its flag names (none: nothing).
    fn unlink_queued(&self, qs: &mut Queues, i: usize) {
        let p = &self.pages[i];
        let q = match p.flags() & (ACTIVE | INACTIVE) {
            ACTIVE => PageQueue::Active,
            INACTIVE => PageQueue::Inactive,
            _ => return,
        };
        let l = &mut qs.lists[q.index()];
        let (prev, next) = (p.prev.load(Relaxed), p.next.load(Relaxed));
        match prev {
            NIL => l.head = next,
            pr => self.pages[pr as usize].next.store(next, Relaxed),
        }
        match next {
            NIL => l.tail = prev,
            nx => self.pages[nx as usize].prev.store(prev, Relaxed),
        }
        l.len -= 1;
        p.clear_flags(ACTIVE | INACTIVE);
    }

    /// Calls `f` with each frame of `q`, head first, while it returns
    /// `true`. `f` runs under the queues' lock: it must not change them.
    pub fn for_each_queued(&self, q: PageQueue, mut f: impl FnMut(PhysAddr) -> bool) {
        let qs = self.queues.lock();
        let mut cur = qs.lists[q.index()].head;
        while cur != NIL && f(self.pa_of(cur as usize)) {
            cur = self.pages[cur as usize].next.load(Relaxed);
        }
    }

    /// The frame at the head of `q`.
    pub fn queue_head(&self, q: PageQueue) -> Option<PhysAddr> {
        let h = self.queues.lock().lists[q.index()].head;
        (h != NIL).then(|| self.pa_of(h as usize))
    }

    /// Frames on `q`.
    pub fn queue_len(&self, q: PageQueue) -> u64 {
        self.queues.lock().lists[q.index()].len
    }

    /// Which queue the frame at `pa` is on.
    pub fn queue_of(&self, pa: PhysAddr) -> Option<PageQueue> {
        match self.page(pa)?.flags() & (ACTIVE | INACTIVE) {
            ACTIVE => Some(PageQueue::Active),
            INACTIVE => Some(PageQueue::Inactive),
            _ => None,
        }
    }

    /// `FrameRule::Queues`: the lists are well formed and hold exactly the
    /// flagged frames, each an unwired object frame.
    pub(crate) fn check_queues(&self) -> Result<(), alloc::string::String> {
        use alloc::format;
        let qs = self.queues.lock();
        let mut listed = 0u64;
        for q in [PageQueue::Active, PageQueue::Inactive] {
            let l = qs.lists[q.index()];
            let (mut cur, mut prev, mut n) = (l.head, NIL, 0u64);
            while cur != NIL {
                let p = self
                    .pages
                    .get(cur as usize)
                    .ok_or("a queue link past the span")?;
                if p.prev.load(Relaxed) != prev {
                    return Err(format!("{q:?} queue: frame {cur}'s prev link is wrong"));
                }
                if p.flags() & (ACTIVE | INACTIVE) != q.flag() {
                    return Err(format!("{q:?} queue: frame {cur} flagged {:#x}", p.flags()));
                }
                if p.state() != FrameState::Object || p.wire_count() != 0 {
                    return Err(format!("{q:?} queue: frame {cur} is not a pageable page"));
                }
                n += 1;
                if n > self.pages.len() as u64 {
                    return Err(format!("{q:?} queue loops"));
                }
                (prev, cur) = (cur, p.next.load(Relaxed));
            }
            if prev != l.tail || n != l.len {
                return Err(format!("{q:?} queue: tail or length {} wrong ({n})", l.len));
            }
            listed += n;
        }
        let flagged = self
            .pages
            .iter()
            .filter(|p| p.flags() & (ACTIVE | INACTIVE) != 0)
            .count() as u64;
        if flagged != listed {
            return Err(format!("{flagged} frames flagged queued, {listed} listed"));
        }
        Ok(())
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::FrameUse;

    fn frames() -> FrameAllocator {
        let f = FrameAllocator::hosted(64 * 4096).unwrap();
        f.enable_queues();
        f
    }

    fn order(f: &FrameAllocator, q: PageQueue) -> alloc::vec::Vec<PhysAddr> {
        let mut v = alloc::vec::Vec::new();
        f.for_each_queued(q, |pa| {
            v.push(pa);
            true
        });
        v
    }

    #[test]
    fn pages_move_between_queues_in_order_and_leave_when_freed_or_wired() {
        let f = frames();
        let p: alloc::vec::Vec<_> = (0..4).map(|_| f.alloc(FrameUse::Object).unwrap()).collect();
        for &pa in &p {
            f.enqueue(pa, PageQueue::Active);
        }
        assert_eq!(order(&f, PageQueue::Active), p);
        f.enqueue(p[1], PageQueue::Inactive);
        f.enqueue(p[0], PageQueue::Active);
        assert_eq!(order(&f, PageQueue::Active), [p[2], p[3], p[0]]);
        assert_eq!(order(&f, PageQueue::Inactive), [p[1]]);
        assert_eq!(f.queue_of(p[1]), Some(PageQueue::Inactive));
        f.verify().unwrap();
        f.free(p[3]);
        assert!(f.wire(p[2]));
        assert_eq!(order(&f, PageQueue::Active), [p[0]]);
        f.enqueue(p[2], PageQueue::Active);
        assert_eq!(f.queue_of(p[2]), None, "a wired page is never queued");
        f.unwire(p[2]);
        assert_eq!(order(&f, PageQueue::Active), [p[0], p[2]]);
        f.dequeue(p[1]);
        assert_eq!(
            (
                f.queue_len(PageQueue::Active),
                f.queue_len(PageQueue::Inactive)
            ),
            (2, 0)
        );
        f.verify().unwrap();
        let t = f.alloc(FrameUse::PageTable).unwrap();
        f.enqueue(t, PageQueue::Active);
        assert_eq!(f.queue_of(t), None, "only object frames are queued");
    }

    #[test]
    fn a_broken_link_or_a_stray_flag_is_named() {
        let f = frames();
        let a = f.alloc(FrameUse::Object).unwrap();
        let b = f.alloc(FrameUse::Object).unwrap();
        f.enqueue(a, PageQueue::Active);
        f.enqueue(b, PageQueue::Active);
        let i = f.frame_index(b).unwrap();
        f.pages[i].prev.store(NIL, Relaxed);
        assert!(f.check_queues().unwrap_err().contains("prev"));
        f.pages[i]
            .prev
            .store(f.frame_index(a).unwrap() as u32, Relaxed);
        let c = f.alloc(FrameUse::Object).unwrap();
        f.page(c).unwrap().set_flags(INACTIVE);
        assert!(f.check_queues().unwrap_err().contains("flagged"));
    }

    #[test]
    fn with_the_queues_off_nothing_is_queued() {
        let f = FrameAllocator::hosted(64 * 4096).unwrap();
        let a = f.alloc(FrameUse::Object).unwrap();
        f.enqueue(a, PageQueue::Active);
        assert_eq!(f.queue_of(a), None);
        f.verify().unwrap();
    }
}
