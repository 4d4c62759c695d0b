//! Stores that overwrite whole pages (the copy family's eager copies,
//! multi-page `write_bytes`): the caller writes every byte of the page, so
//! a new page is neither zeroed nor copied up first.
//!
//! The one rule: a new frame goes into an object only after the caller
//! has written all of it, with the graph locked throughout, so no one — no
//! other thread of the task through the MMU, no other map through the
//! graph — sees what the frame held before.

use alloc::vec::Vec;

use machvm_base::sync::Locks;
use machvm_base::{KernError, PageIndex, PhysAddr};
use machvm_frame::FrameReservation;

use crate::{Hold, Holder, Objects, PageAt, Resolved};

/// Writes the whole page at a frame, given the graph (to read a source
/// through it).
pub type Produce<'p, L> = &'p mut dyn FnMut(&Objects<'_, L>, PhysAddr);

/// Writes the whole `i`-th page of a run at a frame, given the graph.
pub type ProduceRun<'p, L> = &'p mut dyn FnMut(&Objects<'_, L>, u64, PhysAddr);

impl<L: Locks> Objects<'_, L> {
    /// [`resolve`](Self::resolve) for a store that overwrites the whole
    /// page: `produce(graph, frame)` writes all of its bytes, once, into
    /// the frame the page ends up in (the resident one, or a new one that
    /// is neither zeroed nor copied first), before `map` runs. A new page
    /// goes into the object only after `produce` returned.
    pub fn resolve_overwrite(
        &mut self,
        hold: &Hold,
        page: PageIndex,
        frames: &mut FrameReservation<'_, L>,
        produce: Produce<'_, L>,
        map: impl FnOnce(Resolved) -> Result<(), KernError>,
    ) -> Result<Resolved, KernError> {
        self.resolve_with(hold, page, true, frames, Some(produce), map)
    }

    /// Pages `first .. first + n` of `hold`'s window overwritten whole in
    /// one step, when nothing lies below `hold`'s object (a `Direct` hold
    /// on an object without backing: a fresh destination). Page `i` is
    /// `produce(graph, i, frame)`'s, written into the resident frame or
    /// into a new one (not zeroed) before it goes into the object. No
    /// translation is entered here: the caller enters the run's (replacing
    /// the zero frame's), as the faults of a store would. `None`,
    /// nothing done: another kind of hold, a backing object, or a run
    /// outside the window. Out of frames: `ResourceShortage`, nothing done.
    pub fn overwrite_run(
        &mut self,
        hold: &Hold,
        first: PageIndex,
        n: u64,
        frames: &mut FrameReservation<'_, L>,
        produce: ProduceRun<'_, L>,
    ) -> Option<Result<(), KernError>> {
        let rec = *self.g.rec(hold.obj, hold.id);
        let start = rec.start.checked_add(first.get())?;
        let end = start.checked_add(n).filter(|&e| e <= rec.end)?;
        let o = self.g.obj(hold.obj);
        if !matches!(rec.kind, Holder::Direct { .. }) || o.backing.is_some() {
            return None;
        }
        // The run's resident pages, in one walk of the page map. A paged-out
        // one is overwritten in a new frame: its slot goes once it is.
        let (resident, swapped): (Vec<_>, Vec<_>) = o
            .pages
            .range(start, end)
            .into_iter()
            .partition(|(_, p)| p.frame().is_some());
        let absent = n - resident.len() as u64;
        // A store that reserved nothing (one page to fault) pages out here.
        let have = frames.remaining() as u64;
        if let Err(e) = self.make_room(absent.saturating_sub(have)) {
            return Some(Err(e));
        }
        if let Err(e) = frames.ensure(absent) {
            return Some(Err(e.into()));
        }
        let c = &self.ctx.counters;
        c.lookups.add(n);
        c.zero_fill_count.add(absent);
        c.hits.add(n - absent);
        let mut resident = resident.into_iter().peekable();
        let mut made = Vec::with_capacity(absent as usize);
        for (i, off) in (start..end).enumerate() {
            if let Some((_, PageAt::Frame(pa))) = resident.next_if(|&(o, _)| o == off) {
                produce(self, i as u64, pa);
                continue;
            }
            // Ensured above: no frame can be missing.
            let pa = match frames.take() {
                Ok(pa) => pa,
                Err(e) => {
                    made.into_iter().for_each(|(_, pa)| self.free_unmapped(pa));
                    return Some(Err(e.into()));
                }
            };
            produce(self, i as u64, pa);
            self.set_owner(pa, hold.obj.0, off);
            made.push((off, pa));
        }
        // Written, every one: now they may go in.
        for &(_, pa) in &made {
            self.activate(pa);
        }
        self.g.obj_mut(hold.obj).pages.insert_sorted(made);
        for (_, old) in swapped {
            self.drop_page(old);
        }
        Some(Ok(()))
    }
}
