//! The graph's invariants, one check per rule (see the crate
//! documentation), and SPEC §6's audit of what it holds.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use machvm_base::sync::Locks;

use machvm_base::Violation;
use machvm_frame::{FrameState, PageQueue};

use crate::graph::Object;
use crate::{Holder, ObjectId, Objects, PageAt, VmAudit};

/// The object graph's invariants, one per bullet at the top of the crate:
/// what a [`Violation`] from [`Objects::verify`] names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectRule {
    /// No chain loops back on itself.
    Acyclic,
    /// A resident page lies inside its object, in a frame of state
    /// `Object` whose metadata names it.
    PagesOwned,
    /// Every object has a holder, and every window lies inside its object.
    Held,
    /// A shadow and its backing object's `Shadow` record agree.
    ShadowRecords,
    /// A window written directly overlaps only other `Direct` windows.
    DirectExclusive,
    /// No object is held by exactly one shadow and nothing else.
    Collapsed,
    /// Every present page (resident or paged out) is reachable.
    Reachable,
    /// Every paged-out page's swap slot is named by no other page, and the
    /// pager's slots in use are exactly the paged-out pages.
    SwapOwned,
    /// With the page queues on (a system that pages), the queued frames
    /// are exactly the resident unwired pages.
    Queued,
}

impl<L: Locks> Objects<'_, L> {
    /// Checks every invariant of the object graph, one check per rule,
    /// naming the first one broken. O(objects + holders + pages), plus an
    /// upward search per page; for tests, at any moment the graph lock is
    /// free.
    pub fn verify(&self) -> Result<(), Violation<ObjectRule>> {
        use ObjectRule::*;
        Violation::check(Acyclic, self.check_acyclic())?;
        for (id, o) in self.g.objects() {
            Violation::check(PagesOwned, self.check_pages(id, o))?;
            Violation::check(Held, check_holders(id, o))?;
            Violation::check(ShadowRecords, self.check_backing(id, o))?;
            Violation::check(ShadowRecords, self.check_shadow_records(id, o))?;
            Violation::check(DirectExclusive, check_direct_exclusive(id, o))?;
            Violation::check(Collapsed, check_collapsed(id, o))?;
            Violation::check(Reachable, self.check_reachable(id, o))?;
        }
        Violation::check(SwapOwned, self.check_swap())?;
        Violation::check(Queued, self.check_queued())
    }

    /// Every resident unwired page is on a queue, and the queues hold
    /// nothing else (as many frames as there are such pages).
    fn check_queued(&self) -> Result<(), String> {
        let frames = self.ctx.frames();
        if !frames.queues_on() {
            return Ok(());
        }
        let mut pageable = 0u64;
        for (id, o) in self.g.objects() {
            for (off, page) in o.pages.all() {
                let PageAt::Frame(pa) = page else { continue };
                if frames.page(pa).is_some_and(|p| p.wire_count() != 0) {
                    continue;
                }
                if frames.queue_of(pa).is_none() {
                    return Err(format!("object {}: page {off} on no queue", id.0));
                }
                pageable += 1;
            }
        }
        let queued = frames.queue_len(PageQueue::Active) + frames.queue_len(PageQueue::Inactive);
        if queued != pageable {
            return Err(format!("{queued} frames queued, {pageable} pageable pages"));
        }
        Ok(())
    }

    /// Each slot a paged-out page names is named once, and the pager has
    /// exactly those in use. O(paged-out pages · log).
    fn check_swap(&self) -> Result<(), String> {
        let mut slots = alloc::collections::BTreeSet::new();
        for (id, o) in self.g.objects() {
            for (off, page) in o.pages.all() {
                if let PageAt::Swapped(slot) = page
                    && !slots.insert(slot)
                {
                    return Err(format!("object {}: page {off}: {slot:?} named twice", id.0));
                }
            }
        }
        let used = self
            .ctx
            .pager()
            .map_or(0, |p| p.total_slots() - p.free_slots());
        if used != slots.len() as u64 {
            return Err(format!(
                "the pager has {used} slots in use, the graph names {}",
                slots.len()
            ));
        }
        Ok(())
    }

    /// No chain loops back on itself (every walk relies on it). O(objects):
    /// each object is walked past once.
    fn check_acyclic(&self) -> Result<(), String> {
        const ON_PATH: u8 = 1;
        const DONE: u8 = 2;
        let slots = self
            .g
            .objects()
            .map(|(id, _)| id.0 as usize + 1)
            .max()
            .unwrap_or(0);
        let mut state = vec![0u8; slots];
        let mut path: Vec<usize> = Vec::new();
        for (id, _) in self.g.objects() {
            let mut cur = Some(id);
            while let Some(c) = cur {
                let i = c.0 as usize;
                match state.get(i).copied() {
                    Some(DONE) | None => break,
                    Some(ON_PATH) => return Err(format!("object {}: its chain loops", c.0)),
                    Some(_) => {}
                }
                state[i] = ON_PATH;
                path.push(i);
                cur = self.g.try_obj(c).and_then(|o| o.backing).map(|b| b.obj);
            }
            for i in path.drain(..) {
                state[i] = DONE;
            }
        }
        Ok(())
    }

    /// A resident page lies inside its object (and its chunk's shard), its
    /// frame is an object frame, and its metadata names this object and
    /// offset.
    fn check_pages(&self, id: ObjectId, o: &Object<L>) -> Result<(), String> {
        let frames = self.ctx.frames();
        if o.pages.any_busy() {
            return Err(format!("object {}: a busy page outside a fill", id.0));
        }
        if let Some(off) = o.pages.misplaced() {
            return Err(format!(
                "object {}: page {off} outside its chunk's shard",
                id.0
            ));
        }
        for (off, page) in o.pages.all() {
            if off >= o.size {
                return Err(format!(
                    "object {}: page {off} beyond size {}",
                    id.0, o.size
                ));
            }
            let PageAt::Frame(pa) = page else { continue };
            let meta = frames
                .page(pa)
                .ok_or_else(|| format!("object {}: foreign frame {pa:?}", id.0))?;
            if meta.state() != FrameState::Object {
                return Err(format!(
                    "object {}: frame {pa:?} in state {:?}",
                    id.0,
                    meta.state()
                ));
            }
            if meta.owner() != (id.0, machvm_base::PageIndex::new(off)) {
                return Err(format!(
                    "object {}: frame {pa:?} metadata names {:?}, not ({}, {off})",
                    id.0,
                    meta.owner(),
                    id.0
                ));
            }
        }
        Ok(())
    }

    /// A shadow's backing is live, its window fits, and the backing holds
    /// exactly the matching `Shadow` record.
    fn check_backing(&self, id: ObjectId, o: &Object<L>) -> Result<(), String> {
        let Some(b) = o.backing else { return Ok(()) };
        let bo = self
            .g
            .try_obj(b.obj)
            .ok_or_else(|| format!("object {}: backing {} is gone", id.0, b.obj.0))?;
        if b.offset + o.size > bo.size {
            return Err(format!("object {}: window past backing {}", id.0, b.obj.0));
        }
        match bo.holders.get(&b.holder) {
            Some(r)
                if r.kind == Holder::Shadow(id)
                    && (r.start, r.end) == (b.offset, b.offset + o.size) => {}
            other => {
                return Err(format!(
                    "object {}: backing {} records it as {other:?}",
                    id.0, b.obj.0
                ));
            }
        }
        let mine = bo
            .holders
            .values()
            .filter(|r| r.kind == Holder::Shadow(id))
            .count();
        if mine != 1 {
            return Err(format!(
                "object {}: {mine} records on backing {}",
                id.0, b.obj.0
            ));
        }
        Ok(())
    }

    /// Every `Shadow` record names a live object standing on this one.
    fn check_shadow_records(&self, id: ObjectId, o: &Object<L>) -> Result<(), String> {
        for (hid, r) in o.holders.iter() {
            let Holder::Shadow(s) = r.kind else { continue };
            let stands = self
                .g
                .try_obj(s)
                .and_then(|so| so.backing)
                .is_some_and(|b| b.obj == id && b.holder == hid);
            if !stands {
                return Err(format!(
                    "object {}: shadow record {} does not stand on it",
                    id.0, s.0
                ));
            }
        }
        Ok(())
    }

    /// Every resident page is reachable (unreachable pages are freed at
    /// once).
    fn check_reachable(&self, id: ObjectId, o: &Object<L>) -> Result<(), String> {
        match o
            .pages
            .all()
            .into_iter()
            .map(|(k, _)| k)
            .find(|&k| !self.visible(id, k))
        {
            Some(k) => Err(format!("object {}: page {k} is unreachable", id.0)),
            None => Ok(()),
        }
    }

    /// Fills in the object half of SPEC §6's audit.
    pub(crate) fn audit_into(&self, a: &mut VmAudit) {
        for (id, o) in self.g.objects() {
            for (k, page) in o.pages.all() {
                let seen = self.visible(id, k);
                match page {
                    PageAt::Frame(_) => {
                        a.resident_pages += 1;
                        a.reachable_pages += u64::from(seen);
                    }
                    PageAt::Swapped(_) => {
                        a.paged_out_pages += 1;
                        a.unreachable_paged_out += u64::from(!seen);
                    }
                }
            }
        }
        a.unreachable_pages = a.resident_pages - a.reachable_pages;
        a.swap_slots_in_use = self
            .ctx
            .pager()
            .map_or(0, |p| p.total_slots() - p.free_slots());
        a.max_chain_depth = self.longest_chain();
        a.frame_wirings = self.ctx.frames().wirings();
    }

    /// Objects in the longest chain, in O(objects): each object's depth is
    /// computed once, from the bottom of its chain up.
    fn longest_chain(&self) -> u64 {
        let slots = self
            .g
            .objects()
            .map(|(id, _)| id.0 as usize + 1)
            .max()
            .unwrap_or(0);
        let mut depth = vec![0u64; slots];
        let mut path: Vec<ObjectId> = Vec::new();
        let mut best = 0;
        for (id, _) in self.g.objects() {
            let mut cur = Some(id);
            let mut below = 0;
            while let Some(c) = cur {
                if depth[c.0 as usize] != 0 {
                    below = depth[c.0 as usize];
                    break;
                }
                path.push(c);
                cur = self.g.obj(c).backing.map(|b| b.obj);
            }
            while let Some(c) = path.pop() {
                below += 1;
                depth[c.0 as usize] = below;
            }
            best = best.max(depth[id.0 as usize]);
        }
        best
    }
}

/// An object has holders, and each window is non-empty and inside it.
fn check_holders<L: Locks>(id: ObjectId, o: &Object<L>) -> Result<(), String> {
    if o.holders.is_empty() {
        return Err(format!("object {}: nobody holds it", id.0));
    }
    match o
        .holders
        .values()
        .find(|r| r.start >= r.end || r.end > o.size)
    {
        Some(r) => Err(format!(
            "object {}: holder {:?} window [{}, {}) outside [0, {})",
            id.0, r.kind, r.start, r.end, o.size
        )),
        None => Ok(()),
    }
}

/// A window written directly overlaps no holder but other direct writers.
fn check_direct_exclusive<L: Locks>(id: ObjectId, o: &Object<L>) -> Result<(), String> {
    for (a, ra) in o.holders.iter() {
        if !matches!(ra.kind, Holder::Direct { .. }) {
            continue;
        }
        let clash = o
            .holders
            .overlapping(ra.start, ra.end)
            .find(|&(b, rb)| b != a && !matches!(rb.kind, Holder::Direct { .. }));
        if let Some((_, rb)) = clash {
            return Err(format!(
                "object {}: window [{}, {}) written directly while {:?} sees [{}, {})",
                id.0, ra.start, ra.end, rb.kind, rb.start, rb.end
            ));
        }
    }
    Ok(())
}

/// No object is held by one shadow alone: it would have been collapsed.
fn check_collapsed<L: Locks>(id: ObjectId, o: &Object<L>) -> Result<(), String> {
    let mut kinds = o.holders.values().map(|r| r.kind);
    match (kinds.next(), kinds.next()) {
        (Some(Holder::Shadow(s)), None) => Err(format!(
            "object {}: held by shadow {} alone, not collapsed",
            id.0, s.0
        )),
        _ => Ok(()),
    }
}
