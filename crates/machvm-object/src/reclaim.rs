//! Giving memory back the moment nothing can reach it: releasing holds,
//! freeing pages that stopped being reachable, destroying objects nobody
//! holds, collapsing an object held by one shadow alone into it, and letting
//! a shadow bypass a backing object it covers.
//!
//! Every cascade (a destroyed object releases its backing, which may then be
//! destroyed or collapse in turn) runs from a work list, never by recursion,
//! however long the chain.

use alloc::vec::Vec;
use machvm_base::sync::Locks;

use crate::graph::{Backing, HolderRec};
use crate::{Hold, Holder, ObjectId, Objects, PageAt, VmCounters};

/// A window `[start, end)` of `obj` that one holder stopped seeing.
#[derive(Clone, Copy, Debug)]
struct Lost {
    obj: ObjectId,
    start: u64,
    end: u64,
}

impl<L: Locks> Objects<'_, L> {
    /// True when some top holder (entry or copy) reaches offset `off` of
    /// `obj`: its window covers it and no object in between holds a page
    /// there. An upward search with an explicit stack.
    pub(crate) fn visible(&self, obj: ObjectId, off: u64) -> bool {
        let mut stack: Vec<(ObjectId, u64)> = Vec::new();
        let (mut cur, mut off) = (obj, off);
        loop {
            for (_, r) in self.g.obj(cur).holders.overlapping(off, off + 1) {
                match r.kind {
                    Holder::Shadow(s) => {
                        let so = off - r.start;
                        if !self.g.obj(s).pages.contains(so) {
                            stack.push((s, so));
                        }
                    }
                    _ => return true,
                }
            }
            match stack.pop() {
                Some(next) => (cur, off) = next,
                None => return false,
            }
        }
    }

    /// Gives a hold back. Pages only it could reach are freed at once;
    /// objects nobody holds any more are destroyed, and an object left held
    /// by one shadow alone is collapsed into it.
    pub fn release(&mut self, hold: Hold) {
        let rec = self.g.obj_mut(hold.obj).holders.remove(&hold.id);
        let Some(rec) = rec else { return };
        self.settle(Lost {
            obj: hold.obj,
            start: rec.start,
            end: rec.end,
        });
    }

    /// Processes a lost window, and the ones it leads to, until the graph
    /// is settled again.
    fn settle(&mut self, first: Lost) {
        let mut work: Vec<Lost> = Vec::new();
        let mut next = Some(first);
        while let Some(l) = next.take().or_else(|| work.pop()) {
            let Some(o) = self.g.try_obj(l.obj) else {
                continue;
            };
            if o.holders.is_empty() {
                self.destroy(l.obj, &mut work);
                continue;
            }
            self.reclaim(l);
            self.collapse(l.obj, &mut work);
        }
    }

    /// Frees the pages that stopped being reachable when a holder of
    /// `l.obj` stopped seeing `[l.start, l.end)`: in that object and, through
    /// the offsets it lacks, down its chain.
    fn reclaim(&mut self, l: Lost) {
        let (mut cur, mut s, mut e) = (l.obj, l.start, l.end);
        loop {
            if s >= e {
                return;
            }
            let o = self.g.obj(cur);
            // A top holder still covering the whole window: nothing lost.
            if o.holders
                .overlapping(s, e)
                .any(|(_, r)| r.kind.is_top() && r.start <= s && e <= r.end)
            {
                return;
            }
            let candidates: Vec<u64> = o.pages.range(s, e).into_iter().map(|(k, _)| k).collect();
            let dead: Vec<u64> = candidates
                .into_iter()
                .filter(|&k| !self.visible(cur, k))
                .collect();
            let o = self.g.obj_mut(cur);
            let gone: Vec<_> = dead.iter().filter_map(|&k| o.pages.remove(k)).collect();
            let (size, backing) = (o.size, o.backing);
            for page in gone {
                VmCounters::bump(&self.ctx.counters.reclaimed);
                self.drop_page(page);
            }
            let Some(b) = backing else { return };
            e = e.min(size);
            (cur, s, e) = (b.obj, s + b.offset, e + b.offset);
        }
    }

    /// Destroys an object nobody holds: its pages are freed (frames and
    /// swap slots) and its backing object loses its record.
    fn destroy(&mut self, id: ObjectId, work: &mut Vec<Lost>) {
        let Some(mut o) = self.g.remove(id) else {
            return;
        };
        for (_, page) in o.pages.take_all() {
            self.drop_page(page);
        }
        if let Some(b) = o.backing {
            work.push(self.drop_record(b));
        }
    }

    /// Removes a shadow's record from its backing object.
    fn drop_record(&mut self, b: Backing) -> Lost {
        let rec = self.g.obj_mut(b.obj).holders.remove(&b.holder);
        let (start, end) = rec.map_or((0, 0), |r| (r.start, r.end));
        Lost {
            obj: b.obj,
            start,
            end,
        }
    }

    /// If `id` is held by exactly one shadow and nothing else, merges it
    /// into that shadow (`vm_object_collapse`): the shadow takes its pages
    /// (a paged-out one as its slot, FreeBSD's swap-block transfer) and
    /// stands on its backing object instead.
    fn collapse(&mut self, id: ObjectId, work: &mut Vec<Lost>) {
        let o = self.g.obj(id);
        if o.holders.len() != 1 {
            return;
        }
        let Some(&rec) = o.holders.values().next() else {
            return;
        };
        let Holder::Shadow(top) = rec.kind else {
            return;
        };
        let Some(mut b) = self.g.remove(id) else {
            return;
        };
        VmCounters::bump(&self.ctx.counters.collapses);
        let top_size = self.g.obj(top).size;
        for (off, page) in b.pages.take_all() {
            let inside = off >= rec.start && off - rec.start < top_size;
            let t = self.g.obj_mut(top);
            if inside && !t.pages.contains(off - rec.start) {
                t.pages.insert(off - rec.start, page);
                if let PageAt::Frame(pa) = page {
                    self.set_owner(pa, top.0, off - rec.start);
                }
            } else {
                // Unreachable already (the graph frees such pages at once).
                self.drop_page(page);
            }
        }
        self.g.obj_mut(top).backing = None;
        if let Some(bb) = b.backing {
            let old = self.drop_record(bb);
            let start = bb.offset + rec.start;
            self.stand_on(top, bb.obj, start);
            // What the collapsed object saw outside the shadow's window is
            // lost (nothing reached it but through the shadow).
            work.push(Lost { end: start, ..old });
            work.push(Lost {
                start: start + top_size,
                ..old
            });
        }
    }

    /// Makes `shadow` stand on `backing` from page `offset`, recording it.
    fn stand_on(&mut self, shadow: ObjectId, backing: ObjectId, offset: u64) {
        let size = self.g.obj(shadow).size;
        let holder = self.g.add_record(
            backing,
            HolderRec {
                kind: Holder::Shadow(shadow),
                start: offset,
                end: offset + size,
            },
        );
        self.g.obj_mut(shadow).backing = Some(Backing {
            obj: backing,
            offset,
            holder,
        });
    }

    /// While `obj` holds a page at every offset where its backing object has
    /// one in its window, it stands on the backing's backing instead (the
    /// backing can supply it nothing). Nothing becomes visible or invisible;
    /// the skipped object loses a holder and may go.
    pub(crate) fn bypass(&mut self, obj: ObjectId) -> bool {
        let mut moved = false;
        while let Some(b) = self.g.obj(obj).backing {
            let o = self.g.obj(obj);
            let covered = self
                .g
                .obj(b.obj)
                .pages
                .range(b.offset, b.offset + o.size)
                .into_iter()
                .all(|(k, _)| o.pages.contains(k - b.offset));
            if !covered {
                return moved;
            }
            moved = true;
            VmCounters::bump(&self.ctx.counters.bypasses);
            let next = self.g.obj(b.obj).backing;
            let lost = self.drop_record(b);
            self.g.obj_mut(obj).backing = None;
            if let Some(nb) = next {
                self.stand_on(obj, nb.obj, nb.offset + b.offset);
            }
            self.settle(lost);
        }
        moved
    }
}
