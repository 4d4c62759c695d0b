//! The fault fast path: resolving a page under the graph's shared lock.
//!
//! With the structure fixed (no object, holder, window or chain changes
//! while the shared lock is held), a fault that only reads what is there
//! or puts a fresh zero-filled page into an object it alone sees at that
//! offset needs nothing else: faults on different objects run in parallel,
//! and two on one page meet at the page map's busy slot (`pagemap.rs`).
//! Everything else — creating an object, making a hold writable, copying a
//! page up, a fill where a `Share` sibling sees the page, a page paged out,
//! frames under the low-water mark of a context that pages — answers
//! `None`, and the caller takes the exclusive path (the only one that pages
//! in or out).

use machvm_base::sync::Locks;
use machvm_base::{KernError, PageIndex, PhysAddr};
use machvm_frame::FrameUse;

use crate::pagemap::Probe;
use crate::{
    Found, Hold, Holder, ObjectId, PageLookup, Resolution, Resolved, SharedObjects, VmCounters,
};

/// What the lookup step found for a fault.
enum Step {
    /// The page to map.
    Found(Resolved),
    /// Nothing: the zero frame to map, as long as nothing appears at the
    /// offset of the top object meanwhile.
    Zero(PhysAddr),
    /// A busy slot this fault claimed with a fresh frame, to fill.
    Claimed(PhysAddr),
}

impl<L: Locks> SharedObjects<'_, L> {
    /// [`Objects::resolve`](crate::Objects::resolve) for the faults that
    /// change no structure: the page resident in the top object, a read
    /// of a page down the chain or of the zero frame, or a store that
    /// zero-fills a page only this hold sees. `map` (the pmap step) runs
    /// with the page settled — a filled page is published only after it.
    /// `Ok(None)`: not one of those; nothing changed, take the exclusive
    /// path. Out of frames: `ResourceShortage`, nothing changed.
    pub fn resolve(
        &self,
        hold: &Hold,
        page: PageIndex,
        write: bool,
        map: impl FnOnce(Resolved) -> Result<(), KernError>,
    ) -> Result<Option<Resolved>, KernError> {
        let rec = *self.g.rec(hold.obj, hold.id);
        let off = rec.start.checked_add(page.get()).filter(|&o| o < rec.end);
        let off = off.ok_or(KernError::InvalidAddress)?;
        let direct = matches!(rec.kind, Holder::Direct { .. });
        if write && !direct {
            return Ok(None);
        }
        // Counted once the page is mapped: a fault that fails here may be
        // taken again by the exclusive path, which counts it then.
        let counters = &self.ctx.counters;
        let mut map = Some(map);
        loop {
            let Some(step) = self.step(hold, off, write, direct)? else {
                return Ok(None);
            };
            let r = match step {
                Step::Found(r) => r,
                Step::Claimed(pa) => {
                    let Some(map) = map.take() else {
                        return Ok(None);
                    };
                    let r = self.fill(hold.obj, off, pa, map)?;
                    VmCounters::bump(&counters.lookups);
                    return Ok(Some(r));
                }
                Step::Zero(zero) => {
                    let r = Resolved {
                        pa: zero,
                        how: Resolution::ZeroPage,
                    };
                    // Entered with the page map locked: a store of this hold
                    // cannot claim the page in between and then have its
                    // translation replaced by the zero frame.
                    let pages = &self.g.obj(hold.obj).pages;
                    match pages.while_absent(off, || map.take().map(|m| m(r))) {
                        Some(Some(done)) => {
                            done?;
                            VmCounters::bump(&counters.lookups);
                            return Ok(Some(r));
                        }
                        Some(None) => return Ok(None),
                        // A page appeared meanwhile: look again.
                        None => continue,
                    }
                }
            };
            let Some(map) = map.take() else {
                return Ok(None);
            };
            map(r)?;
            VmCounters::bump(&counters.lookups);
            VmCounters::bump(&counters.hits);
            return Ok(Some(r));
        }
    }

    /// Finds what the fault maps, or claims the page to fill (a race lost
    /// to another filler is looked up again). `None`: exclusive path.
    fn step(
        &self,
        hold: &Hold,
        off: u64,
        write: bool,
        direct: bool,
    ) -> Result<Option<Step>, KernError> {
        if write {
            return self.claim_step(hold, off);
        }
        let (page, how) = match self.find_settled(hold.obj, off) {
            Some(f) if f.depth == 0 && direct => (f.page, Resolution::Resident),
            Some(f) => (f.page, Resolution::Backing),
            None => return Ok(self.zero_frame_for(hold, off).map(Step::Zero)),
        };
        // A paged-out page is paged in on the exclusive path.
        let Some(pa) = page.frame() else {
            return Ok(None);
        };
        Ok(Some(Step::Found(Resolved { pa, how })))
    }

    /// A store's step through a direct hold: the page resident in the top
    /// object, or a claim of its offset when no object below has it and no
    /// other holder sees it. The claim is also the lookup (one page-map
    /// lock for a fresh page), so the frame is taken first and given back
    /// when the page was there. Pages below the top object do not change
    /// under the shared lock: a fill goes only where no other holder sees
    /// the offset, and this chain's shadow window sees every page below.
    fn claim_step(&self, hold: &Hold, off: u64) -> Result<Option<Step>, KernError> {
        let top = self.g.obj(hold.obj);
        let resident = |pa| {
            Step::Found(Resolved {
                pa,
                how: Resolution::Resident,
            })
        };
        let below = top
            .backing
            .is_some_and(|b| self.find_settled(b.obj, off + b.offset).is_some());
        let shared = self
            .g
            .other_overlaps(hold.obj, hold.id, off, off + 1, |_| true);
        // A resident top page is stored to here; a paged-out one, a
        // copy-up or a fill a sibling sees take the exclusive path.
        let at_top = || top.pages.settled(off).map(|p| p.frame().map(resident));
        if below || shared {
            return Ok(at_top().flatten());
        }
        let pages = self.ctx.pager().is_some();
        loop {
            let frames = self.ctx.frames();
            // Under the low-water mark, frames are left to the calls that
            // can page out to get more (and to their page tables).
            let low = pages && frames.free_frames() <= self.ctx.low_water();
            let pa = match frames.alloc(FrameUse::Object) {
                Ok(pa) if !low => pa,
                Ok(pa) => {
                    frames.free(pa);
                    return Ok(at_top().flatten());
                }
                // A page already there needs no frame; with a pager, the
                // exclusive path makes room.
                Err(e) => match at_top() {
                    Some(step) => return Ok(step),
                    None if pages => return Ok(None),
                    None => return Err(e.into()),
                },
            };
            let found = match top.pages.claim(off, pa) {
                Ok(()) => return Ok(Some(Step::Claimed(pa))),
                Err(Probe::Present(found)) => Some(found),
                Err(Probe::Busy | Probe::Absent) => None,
            };
            // Another fault of this hold filled it, or is filling it.
            frames.free(pa);
            if let Some(page) = found.or_else(|| top.pages.settled(off)) {
                return Ok(page.frame().map(resident));
            }
        }
    }

    /// Fills the page claimed at `off` of `obj` with zeros, maps it and
    /// publishes it; if `map` fails, withdraws it (nobody used a busy page)
    /// and frees the frame.
    fn fill(
        &self,
        obj: ObjectId,
        off: u64,
        pa: PhysAddr,
        map: impl FnOnce(Resolved) -> Result<(), KernError>,
    ) -> Result<Resolved, KernError> {
        let frames = self.ctx.frames();
        frames.mem().zero_page(pa);
        let owner = |o: u32, at: u64| {
            if let Some(p) = frames.page(pa) {
                p.set_owner(o, PageIndex::new(at));
            }
        };
        owner(obj.0, off);
        let pages = &self.g.obj(obj).pages;
        let r = Resolved {
            pa,
            how: Resolution::ZeroFilled,
        };
        if let Err(e) = map(r) {
            let taken = pages.withdraw(off);
            debug_assert_eq!(taken, pa);
            owner(0, 0);
            frames.free(pa);
            return Err(e);
        }
        pages.publish(off);
        frames.enqueue(pa, machvm_frame::PageQueue::Active);
        VmCounters::bump(&self.ctx.counters.zero_fill_count);
        Ok(r)
    }

    /// The first page present at `off` of `obj` or below, waiting out
    /// fills.
    fn find_settled(&self, obj: ObjectId, off: u64) -> Option<Found> {
        let (mut cur, mut off, mut depth) = (obj, off, 0);
        loop {
            let o = self.g.obj(cur);
            if let Some(page) = o.pages.settled(off) {
                return Some(Found { page, depth });
            }
            let b = o.backing?;
            (cur, off, depth) = (b.obj, off + b.offset, depth + 1);
        }
    }

    /// The zero frame when a read at `off` may map it for `hold` (no
    /// `Share` sibling sees the offset; see `Objects::resolve`).
    fn zero_frame_for(&self, hold: &Hold, off: u64) -> Option<PhysAddr> {
        crate::pages::zero_frame_in(self.ctx, &self.g, hold, off, off + 1)
    }

    /// Who `hold` is.
    pub fn holder(&self, hold: &Hold) -> Holder {
        self.g.rec(hold.obj, hold.id).kind
    }
}

impl<L: Locks> PageLookup for SharedObjects<'_, L> {
    /// Waits out a fill in flight at the page.
    fn lookup(&self, hold: &Hold, page: PageIndex) -> Option<Found> {
        let rec = self.g.rec(hold.obj, hold.id);
        let off = rec.start.checked_add(page.get()).filter(|&o| o < rec.end)?;
        self.find_settled(hold.obj, off)
    }
}
