//! Pageout (SPEC §8): making room in RAM by writing unwired object pages
//! to the context's pager and freeing their frames.
//!
//! Victims come from the page queues (`machvm_frame::PageQueue`), as
//! Mach's `vm_pageout_scan` takes them: new pages go to the tail of the
//! active queue; the scan moves active pages not referenced since its last
//! look to the inactive queue, and pages out from the inactive head, a
//! page referenced meanwhile going back to the active queue (a second
//! chance). The pmap's referenced bits are the one thing here read from
//! the pmap, and they only choose *which* page goes: a wrong answer costs
//! time, never a byte. Wired pages are on no queue.
//!
//! Rules:
//! - Pageout runs only under the graph's exclusive lock: at a call's
//!   reservation point, before the call changes anything, or from
//!   [`Objects::pageout`]. Never under the shared lock and never inside
//!   the frame allocator (page-table allocations happen under pmap locks,
//!   below the object layer).
//! - A victim is an unwired object frame resident in the page map its
//!   metadata names, outside the calling call's kept windows
//!   ([`Objects::keep_window`]): the pages a call counted as resident, or
//!   holds the frames of, stay resident until it is done with them. Pages
//!   a call only copies from need not: a copy reads a paged-out source
//!   from its slot.
//! - Every translation of a victim is removed, and the shootdown
//!   completed, before its bytes are copied: a CPU still holding a
//!   writable TLB entry could otherwise store after the copy.
//! - A call that cannot be given room fails before anything is paged out:
//!   free frames and free slots are as they were.

use alloc::vec::Vec;
use core::cell::RefCell;
use core::sync::atomic::Ordering::Relaxed;

use machvm_base::sync::Locks;
use machvm_base::{KernError, PageIndex, PhysAddr, VmProt};
use machvm_frame::{FrameState, PageQueue};
use machvm_pmap::TlbFlush;

use crate::{Hold, ObjectId, Objects, PageAt, VmContext};

/// Pages one shootdown covers.
const BATCH: usize = 32;

/// The windows of objects a call is about to use, which its own pageout
/// spares: `(object, first, end, with the chain below)`. Recorded as the
/// call counts its frames; the chains are walked when pageout runs.
#[derive(Default, Debug)]
pub(crate) struct Keep(RefCell<Vec<(ObjectId, u64, u64, bool)>>);

/// The frames-free marks of a context that pages: pageout refills to
/// `high` once it runs, so the next calls and their page tables find
/// frames without paging each time.
struct Marks {
    low: u64,
    high: u64,
}

fn marks(total: u64) -> Marks {
    let low = (total / 64).clamp(4, 1024);
    Marks {
        low,
        high: low + low.min(32),
    }
}

impl<L: Locks> VmContext<L> {
    /// The frames-free low-water mark (0 without a pager): fast paths that
    /// allocate without paging leave this many to the calls that can page.
    pub fn low_water(&self) -> u64 {
        match self.pager() {
            Some(_) => marks(self.frames().total_frames()).low,
            None => 0,
        }
    }
}

impl<L: Locks> Objects<'_, L> {
    /// Records that this call uses the pages of `hold`'s object at pages
    /// `[first, first + count)` of its window: pageout run for this call
    /// leaves them resident.
    pub fn keep_window(&self, hold: &Hold, first: PageIndex, count: u64) {
        self.keep_pages(hold, first, count, false);
    }

    /// [`keep_window`](Self::keep_window), and the pages below the window
    /// down the chain (what reads resolve to).
    pub(crate) fn keep_pages(&self, hold: &Hold, first: PageIndex, count: u64, chain: bool) {
        // Nothing pages out without a pager: nothing to record.
        if self.ctx.pager().is_none() {
            return;
        }
        let (s, e) = self.window_raw(hold);
        let lo = s.saturating_add(first.get()).min(e);
        let hi = lo.saturating_add(count).min(e);
        if lo < hi {
            self.keep.0.borrow_mut().push((hold.obj, lo, hi, chain));
        }
    }

    /// Forgets the kept windows (a call counting afresh).
    pub fn clear_keep(&self) {
        self.keep.0.borrow_mut().clear();
    }

    /// Pages paged out so far in this context: a frame address taken
    /// before a point where pageout may run is still good if this did not
    /// move.
    pub fn evictions(&self) -> u64 {
        self.ctx.evictions.load(Relaxed)
    }

    /// Makes `need` frames free, paging out what it must (SPEC §8). Without
    /// a pager, or with `need` free already, pages nothing out (with a
    /// pager and free frames under the low-water mark, it refills to the
    /// high mark as far as it can). `ResourceShortage`, nothing paged out,
    /// when the evictable pages outside the kept windows, or the free swap
    /// slots, are fewer than the frames missing.
    pub fn make_room(&mut self, need: u64) -> Result<(), KernError> {
        let Some(pager) = self.ctx.pager() else {
            return Ok(());
        };
        // Asking for nothing pages nothing out: a call half-way through its
        // work (its frames reserved) holds pages it has not kept.
        if need == 0 {
            return Ok(());
        }
        let free = self.ctx.frames().free_frames();
        let m = marks(self.ctx.frames().total_frames());
        if free >= need.saturating_add(m.low) {
            return Ok(());
        }
        let kept = self.kept_windows();
        let required = need.saturating_sub(free);
        if required > 0 {
            let slots = pager.free_slots();
            if required > slots || required > self.evictable(&kept, required) {
                return Err(KernError::ResourceShortage);
            }
        }
        let wanted = need.saturating_add(m.high) - free;
        let done = self.scan(&kept, wanted, required);
        // Only a store that failed its writes leaves pageout short.
        if done < required {
            return Err(KernError::ResourceShortage);
        }
        Ok(())
    }

    /// The round (at most `most` pages) in which a call making `total` new
    /// pages can page its way through when it cannot have them all
    /// resident at once: as many pages as are free or can be paged out
    /// outside its kept windows (each later round may page out the rounds
    /// before it). `None` without a pager, when RAM and swap together
    /// cannot hold the pages (the high-water margin left for page tables),
    /// or when not one page can be had.
    pub fn page_through_round(&self, total: u64, most: u64) -> Option<u64> {
        let pager = self.ctx.pager()?;
        let frames = self.ctx.frames();
        let free = frames.free_frames();
        let m = marks(frames.total_frames());
        if total.saturating_add(m.high) > free.saturating_add(pager.free_slots()) {
            return None;
        }
        let want = most.min(total).max(1);
        let room = free + self.evictable(&self.kept_windows(), want.saturating_sub(free));
        Some(want.min(room)).filter(|&r| r > 0)
    }

    /// Pages out up to `target` pages, the least recently used first (what
    /// a kernel's pageout daemon calls). Returns how many went.
    pub fn pageout(&mut self, target: u64) -> u64 {
        if self.ctx.pager().is_none() {
            return 0;
        }
        self.clear_keep();
        self.scan(&[], target, 0)
    }

    /// Pages out the page `hold`'s window shows at each of pages `[first,
    /// first + count)`, where it is resident and evictable (MADV_PAGEOUT:
    /// a caller that knows the range is cold, and tests that need a page
    /// out). Returns how many went.
    pub fn page_out_window(&mut self, hold: &Hold, first: PageIndex, count: u64) -> u64 {
        if self.ctx.pager().is_none() {
            return 0;
        }
        let mut victims = Vec::new();
        for k in 0..count {
            let page = PageIndex::new(first.get().saturating_add(k));
            let pa = self.lookup(hold, page).and_then(|f| f.page.frame());
            if let Some(pa) = pa.filter(|&pa| self.victim(pa).is_some()) {
                victims.push(pa);
            }
        }
        let frames = self.ctx.frames();
        victims.iter().for_each(|&pa| frames.dequeue(pa));
        victims.chunks(BATCH).map(|b| self.evict(b)).sum()
    }

    /// With RAM and swap both full, brings page `page` of `hold`'s window,
    /// paged out, into a victim's frame by trading places: the victim's
    /// bytes go to the page's slot (one store exchange, the victim's
    /// translations removed and shot down first). No frame and no slot is
    /// needed. Only where the page is then all the access needs (a load, or
    /// a store to the held object's own page): `false`, nothing done,
    /// otherwise or with no unkept victim.
    pub fn exchange_in(&mut self, hold: &Hold, page: PageIndex, write: bool) -> bool {
        let ctx = self.ctx;
        let Some(pager) = ctx.pager() else {
            return false;
        };
        let found = self
            .offset_of(hold, page)
            .and_then(|off| self.find(hold.obj, off));
        let Some(crate::pages::Below {
            obj,
            offset: at,
            page: PageAt::Swapped(slot),
            depth,
        }) = found
        else {
            return false;
        };
        let direct = matches!(self.holder(hold), crate::Holder::Direct { .. });
        if write && !(depth == 0 && direct) {
            return false;
        }
        let kept = self.kept_windows();
        let frames = ctx.frames();
        let mut victim = None;
        for q in [PageQueue::Inactive, PageQueue::Active] {
            frames.for_each_queued(q, |pa| {
                victim = self
                    .victim(pa)
                    .filter(|&(o, k)| !Self::is_kept(&kept, o, k))
                    .map(|v| (pa, v));
                victim.is_none()
            });
            if victim.is_some() {
                break;
            }
        }
        let Some((pa, (vobj, voff))) = victim else {
            return false;
        };
        frames.dequeue(pa);
        let pm = ctx.pmap();
        pm.flush(pm.page_protect(pa, VmProt::NONE));
        if pager.exchange(slot, frames.mem(), pa).is_err() {
            frames.enqueue(pa, PageQueue::Active);
            return false;
        }
        self.g
            .obj_mut(vobj)
            .pages
            .insert(voff, PageAt::Swapped(slot));
        self.set_owner(pa, obj.0, at);
        self.g.obj_mut(obj).pages.insert(at, PageAt::Frame(pa));
        self.activate(pa);
        ctx.counters.pageouts.bump();
        ctx.counters.pageins.bump();
        ctx.evictions.fetch_add(1, Relaxed);
        true
    }

    /// The kept windows and the chains below them, sorted.
    fn kept_windows(&self) -> Vec<(ObjectId, u64, u64)> {
        let mut out = Vec::new();
        for &(obj, lo, hi, chain) in self.keep.0.borrow().iter() {
            let (mut cur, mut lo, mut hi) = (Some(obj), lo, hi);
            while let Some(id) = cur {
                let Some(o) = self.g.try_obj(id) else { break };
                out.push((id, lo, hi));
                cur = o.backing.filter(|_| chain).map(|b| {
                    (lo, hi) = (lo + b.offset, hi + b.offset);
                    b.obj
                });
            }
        }
        out.sort_unstable();
        out
    }

    /// Whether page `off` of `obj` lies in a kept window.
    fn is_kept(kept: &[(ObjectId, u64, u64)], obj: ObjectId, off: u64) -> bool {
        let from = kept.partition_point(|&(o, _, _)| o < obj);
        kept[from..]
            .iter()
            .take_while(|&&(o, _, _)| o == obj)
            .any(|&(_, lo, hi)| (lo..hi).contains(&off))
    }

    /// The owner of `pa` when it is an evictable page: an unwired object
    /// frame, resident where its metadata says.
    fn victim(&self, pa: PhysAddr) -> Option<(ObjectId, u64)> {
        let p = self.ctx.frames().page(pa)?;
        if p.state() != FrameState::Object || p.wire_count() != 0 {
            return None;
        }
        let (obj, off) = p.owner();
        let id = ObjectId(obj);
        let here = self.g.try_obj(id)?.pages.get(off.get());
        (obj != 0 && here == Some(PageAt::Frame(pa))).then_some((id, off.get()))
    }

    /// Evictable pages outside `kept` on the queues, counted up to `enough`.
    fn evictable(&self, kept: &[(ObjectId, u64, u64)], enough: u64) -> u64 {
        let frames = self.ctx.frames();
        let mut n = 0;
        for q in [PageQueue::Inactive, PageQueue::Active] {
            frames.for_each_queued(q, |pa| {
                if let Some((obj, off)) = self.victim(pa)
                    && !Self::is_kept(kept, obj, off)
                {
                    n += 1;
                }
                n < enough
            });
        }
        n
    }

    /// Mach's `vm_pageout_scan`: ages the active queue into the inactive
    /// one, then pages out from the inactive head until `wanted` pages
    /// went — a referenced page there goes back to the active queue (a
    /// second chance), a kept one to the tail. While fewer than `required`
    /// went, a last pass takes any unkept page, referenced or not (CPUs
    /// may set the bits again as fast as the scan clears them). Returns how
    /// many went.
    fn scan(&mut self, kept: &[(ObjectId, u64, u64)], wanted: u64, required: u64) -> u64 {
        let ctx = self.ctx;
        let (frames, pm) = (ctx.frames(), ctx.pmap());
        let mut cleared = TlbFlush::none();
        let queued = frames.queue_len(PageQueue::Active) + frames.queue_len(PageQueue::Inactive);
        let target = wanted.max(queued / 3);
        self.age_active(kept, target, &mut cleared);
        let mut done = 0;
        let mut batch = Vec::with_capacity(BATCH);
        for _ in 0..frames.queue_len(PageQueue::Inactive) {
            if done + batch.len() as u64 >= wanted {
                break;
            }
            let Some(pa) = frames.queue_head(PageQueue::Inactive) else {
                break;
            };
            let kept_here = self
                .victim(pa)
                .is_none_or(|(o, off)| Self::is_kept(kept, o, off));
            if kept_here {
                frames.enqueue(pa, PageQueue::Inactive);
            } else if pm.is_referenced(pa) {
                cleared.merge(pm.clear_reference(pa));
                frames.enqueue(pa, PageQueue::Active);
                ctx.counters.reactivations.bump();
            } else {
                frames.dequeue(pa);
                batch.push(pa);
                if batch.len() == BATCH {
                    done += self.evict(&batch);
                    batch.clear();
                }
            }
        }
        done += self.evict(&batch);
        pm.flush(cleared);
        if done < required {
            done += self.force(kept, required - done);
        }
        done
    }

    /// Moves active pages not referenced since the last look to the
    /// inactive queue, until it holds `target`; referenced ones lose the
    /// bit and go round again. One lap of the active queue at most.
    fn age_active(&self, kept: &[(ObjectId, u64, u64)], target: u64, cleared: &mut TlbFlush) {
        let (frames, pm) = (self.ctx.frames(), self.ctx.pmap());
        for _ in 0..frames.queue_len(PageQueue::Active) {
            if frames.queue_len(PageQueue::Inactive) >= target {
                return;
            }
            let Some(pa) = frames.queue_head(PageQueue::Active) else {
                return;
            };
            let kept_here = self
                .victim(pa)
                .is_none_or(|(o, off)| Self::is_kept(kept, o, off));
            if !kept_here && pm.is_referenced(pa) {
                cleared.merge(pm.clear_reference(pa));
            }
            let to = match kept_here || pm.is_referenced(pa) {
                true => PageQueue::Active,
                false => PageQueue::Inactive,
            };
            frames.enqueue(pa, to);
        }
    }

    /// Pages out up to `n` unkept pages, referenced or not, inactive ones
    /// first. Returns how many went.
    fn force(&mut self, kept: &[(ObjectId, u64, u64)], n: u64) -> u64 {
        let frames = self.ctx.frames();
        let mut victims = Vec::new();
        for q in [PageQueue::Inactive, PageQueue::Active] {
            frames.for_each_queued(q, |pa| {
                if let Some((o, off)) = self.victim(pa)
                    && !Self::is_kept(kept, o, off)
                {
                    victims.push(pa);
                }
                (victims.len() as u64) < n
            });
        }
        for &pa in &victims {
            frames.dequeue(pa);
        }
        victims.chunks(BATCH).map(|b| self.evict(b)).sum()
    }

    /// Pages out `victims` (evictable, distinct, taken off the queues):
    /// every translation goes under one shootdown, then each page is
    /// written to a slot and its frame freed. A page the pager cannot take
    /// stays resident, back on the active queue (it is faulted back in on
    /// use). Returns how many went.
    fn evict(&mut self, victims: &[PhysAddr]) -> u64 {
        let ctx = self.ctx;
        let Some(pager) = ctx.pager() else {
            return 0;
        };
        if victims.is_empty() {
            return 0;
        }
        let pm = ctx.pmap();
        let mut flush = TlbFlush::none();
        for &pa in victims {
            flush.merge(pm.page_protect(pa, VmProt::NONE));
        }
        // No CPU can store to a victim past this point.
        pm.flush(flush);
        let mem = ctx.frames().mem();
        let mut done = 0;
        for &pa in victims {
            let Some((obj, off)) = self.victim(pa) else {
                continue;
            };
            let Ok(slot) = pager.page_out(mem, pa, None) else {
                ctx.frames().enqueue(pa, PageQueue::Active);
                continue;
            };
            self.g.obj_mut(obj).pages.insert(off, PageAt::Swapped(slot));
            self.free_unmapped(pa);
            done += 1;
        }
        ctx.counters.pageouts.add(done);
        ctx.evictions.fetch_add(done, Relaxed);
        done
    }
}
