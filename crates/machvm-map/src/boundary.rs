//! **API Boundary**: locked maps and the primitives the copy layer
//! (`machvm-copy`) builds `vm_map_copy` and its family from.
//!
//! [`VmMap::lock`] gives a [`MapGuard`], one locked map; [`MapPair::lock`]
//! locks a source and a destination in the order of their map ids, or one
//! map once when both are the same map (then both names give one guard).
//! Every primitive takes the locked object graph ([`Objects`]) from the
//! caller — maps are locked before the graph — keeps the map's invariants,
//! and leaves the map locked. A call built from them goes in three steps:
//! 1. checks, changing nothing: [`MapGuard::check_access`],
//!    [`MapGuard::allocated`];
//! 2. frames counted and reserved, after which nothing can run out:
//!    [`reserve_settled`](crate::reserve_settled) over [`MapGuard::settle_extract`],
//!    [`MapGuard::extract_frames`] and [`MapGuard::fault_frames`];
//! 3. changes: [`MapGuard::extract`] (copy-on-write references to a page
//!    range: UVM's `uvm_map_extract`, the entry loop of XNU's
//!    `vm_map_copyin`; fork takes its `Copy` entries the same way),
//!    [`MapGuard::store`], [`MapGuard::replace`] (a range's pages replaced,
//!    its entries' protection, maximum and inheritance kept: XNU's
//!    `vm_map_copy_overwrite_aligned`), [`MapGuard::insert_zero_fill`],
//!    [`MapGuard::remove`].
//!
//! Removal gives the removed holds back through the caller's graph at
//! once: the graph lock is taken inside the map lock anyway, and releasing
//! a hold frees frames and pmap entries without sleeping on anything
//! else, so FreeBSD's deferred list (object releases that may sleep,
//! postponed until the map is unlocked) has nothing to defer here.

use alloc::vec::Vec;

use machvm_base::sync::{Locks, SpinLocks};
use machvm_base::{KernError, PAGE_SHIFT, PAGE_SIZE, PageIndex, PhysAddr, VaRange, VmProt};
use machvm_frame::FrameReservation;
use machvm_object::{Hold, Holder, Objects};
use machvm_pmap::{Access, TlbFlush};

use crate::data::{for_each_page_piece, frames_in};
use crate::ops::check_access;
use crate::{Entry, MapInner, VmMap, page_range};

/// One locked map. Dropping it unlocks the map.
#[must_use = "the map is unlocked when the guard is dropped"]
pub struct MapGuard<'a, L: Locks = SpinLocks> {
    map: &'a VmMap<L>,
    m: machvm_base::sync::RwLockWriteGuard<'a, L, MapInner>,
}

/// Copy-on-write references to `pages` pages of one object (or, with no
/// hold, to that many pages of untouched zero-fill memory): what
/// [`MapGuard::extract`] makes, one per source entry, and only it (its
/// fields are private, so [`MapGuard::replace`] can trust them).
#[derive(Debug)]
pub struct CowSpan {
    /// A `Copy` holder record on the window (none: untouched memory).
    pub(crate) hold: Option<Hold>,
    /// Length in pages; the hold's window is exactly this long.
    pub(crate) pages: u64,
    /// The VM context whose graph holds the record.
    pub(crate) context: u64,
}

impl CowSpan {
    /// Length in pages.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// The reference, to read through (none: untouched memory).
    pub fn hold(&self) -> Option<&Hold> {
        self.hold.as_ref()
    }

    /// The reference itself, for the caller to release through the
    /// graph of the map it was extracted from.
    pub fn into_hold(self) -> Option<Hold> {
        self.hold
    }
}

impl<L: Locks> VmMap<L> {
    /// Locks this map for a call built from the primitives of
    /// [`MapGuard`]. The thread must not hold this map's lock already (a
    /// map never waits on its own lock), nor the object graph's.
    pub fn lock(&self) -> MapGuard<'_, L> {
        MapGuard {
            map: self,
            m: machvm_base::sync::write::<L, _>(&self.0.inner),
        }
    }

    /// One entry's copy-on-write reference for `holder` (copy-in's `Copy`
    /// record, or a forked child's `NeedsCopy` entry): see
    /// `Objects::cow_share`. The entry's translations that must lose
    /// `WRITE` are lowered into `flush`, which the caller completes before
    /// it unlocks this map.
    pub(crate) fn cow_reference(
        &self,
        objs: &mut Objects<'_, L>,
        (start, e): (u64, &Entry),
        holder: Holder,
        frames: &mut FrameReservation<'_, L>,
        flush: &mut TlbFlush,
    ) -> Result<Option<Hold>, KernError> {
        let Some(h) = &e.object else {
            return Ok(None);
        };
        // A wired entry's pages stay put and writable: copied now.
        let c = if e.wired_count > 0 {
            objs.copy_share(h, holder, frames)?
        } else {
            objs.cow_share(h, holder, frames)?
        };
        if c.write_protect {
            let pm = self.0.ctx.pmap();
            let prot = e.protection - VmProt::WRITE;
            flush.merge(pm.protect(self.0.pmap, page_range(start, e.end), prot));
        }
        Ok(Some(c.hold))
    }
}

impl<'a, L: Locks> MapGuard<'a, L> {
    /// The locked map.
    pub fn map(&self) -> &'a VmMap<L> {
        self.map
    }

    /// `Ok` when `r` is allocated without a hole (else `InvalidAddress`)
    /// and every entry in it allows `access` (else `ProtectionFailure`).
    pub fn check_access(&self, r: VaRange, access: Access) -> Result<(), KernError> {
        check_access(&self.m, r, access)
    }

    /// The allocated parts of `r`, in order, each with its protection
    /// (neighbouring parts may have equal protection).
    pub fn allocated(&self, r: VaRange) -> impl Iterator<Item = (VaRange, VmProt)> + '_ {
        let (s, t) = (r.start().as_u64(), r.end().as_u64());
        self.m
            .overlapping(s, t)
            .map(move |(&a, e)| (page_range(a.max(s), e.end.min(t)), e.protection))
    }

    /// The lowest free range of `size` bytes (page-aligned) in the map.
    pub fn find_space(&self, size: u64) -> Option<u64> {
        self.m.find_space(0, size)
    }

    /// True when some page of `r` is reachable from another map without
    /// copy-on-write (its sharers must see what is written there).
    pub fn shared_with_others(&self, objs: &Objects<'_, L>, r: VaRange) -> bool {
        self.m
            .overlapping(r.start().as_u64(), r.end().as_u64())
            .any(|(_, e)| e.object.as_ref().is_some_and(|h| objs.is_shared(h)))
    }

    /// True when some page of `r` is wired: a copy there stores its bytes
    /// into the wired pages rather than replacing them.
    pub fn wired_in(&self, r: VaRange) -> bool {
        self.m
            .overlapping(r.start().as_u64(), r.end().as_u64())
            .any(|(_, e)| e.wired_count > 0)
    }

    /// An upper bound on the frames [`extract`](Self::extract) of `r`
    /// takes: eager copies of windows others write directly, and of wired
    /// entries.
    pub fn extract_frames(&self, objs: &Objects<'_, L>, r: VaRange) -> u64 {
        let (s0, t0) = (r.start().as_u64(), r.end().as_u64());
        self.m
            .overlapping(s0, t0)
            .filter_map(|(&start, e)| {
                let h = e.object.as_ref()?;
                let (s, t) = (start.max(s0), e.end.min(t0));
                let (first, n) = (PageIndex::in_window(start, s), (t - s) >> PAGE_SHIFT);
                Some(if e.wired_count > 0 {
                    objs.copy_frames(h, first, n)
                } else {
                    objs.cow_frames(h, first, n)
                })
            })
            .sum()
    }

    /// Shortens the chains of the entries [`extract`](Self::extract) of `r`
    /// shares. Bypass and collapse move pages between objects, so a call
    /// takes its final count after them and the extraction moves nothing
    /// (see [`reserve_settled`](crate::reserve_settled)). Returns whether anything moved.
    pub fn settle_extract(&self, objs: &mut Objects<'_, L>, r: VaRange) -> bool {
        let mut moved = false;
        for (_, e) in self.m.overlapping(r.start().as_u64(), r.end().as_u64()) {
            if let Some(h) = &e.object {
                moved |= objs.shorten_chain(h);
            }
        }
        moved
    }

    /// An upper bound on the frames faulting in every page of `r` for a
    /// store (`write`) or a load would take. O(entries and resident pages).
    pub fn fault_frames(&self, objs: &Objects<'_, L>, r: VaRange, write: bool) -> u64 {
        frames_in(&self.m, objs, r.start().as_u64(), r.end().as_u64(), write)
    }

    /// Reads `buf.len()` bytes at `addr` as the map's objects hold them,
    /// faulting nothing in (untouched memory reads as zero).
    /// `InvalidAddress` if the range has a hole or overflows (the caller
    /// checks it first); nothing is read then.
    pub fn peek(&self, objs: &Objects<'_, L>, addr: u64, buf: &mut [u8]) -> Result<(), KernError> {
        for_each_page_piece(&self.m, addr, buf.len(), |h, page, off, at, n| {
            objs.read(h, page, off, &mut buf[at..at + n])
        })
    }

    /// Copy-on-write references to the pages of `r` (allocated, checked
    /// readable): the entries are clipped to `r` so that exactly its pages
    /// become copy-on-write, each gives one [`CowSpan`], and the lowered
    /// translations are flushed before this returns. Eager copies take
    /// their frames from `frames`; on failure (not with the frames that
    /// [`extract_frames`](Self::extract_frames) counted reserved) the
    /// references made are given back.
    pub fn extract(
        &mut self,
        objs: &mut Objects<'_, L>,
        r: VaRange,
        frames: &mut FrameReservation<'_, L>,
    ) -> Result<Vec<CowSpan>, KernError> {
        let (s, t) = (r.start().as_u64(), r.end().as_u64());
        self.m.clip_range(objs, s, t);
        let mut flush = TlbFlush::none();
        let mut spans = Vec::new();
        let mut result = Ok(());
        for (&start, e) in self.m.entries.range(s..t) {
            match self
                .map
                .cow_reference(objs, (start, e), Holder::Copy, frames, &mut flush)
            {
                Ok(hold) => spans.push(CowSpan {
                    hold,
                    pages: e.pages(start),
                    context: self.map.context().id(),
                }),
                Err(err) => {
                    result = Err(err);
                    break;
                }
            }
        }
        self.map.context().pmap().flush(flush);
        self.m.simplify(objs, s, t);
        if let Err(e) = result {
            for h in spans.into_iter().filter_map(|c| c.hold) {
                objs.release(h);
            }
            return Err(e);
        }
        Ok(spans)
    }

    /// Stores `len` bytes at `addr` (allocated, checked writable): each
    /// piece of at most a page is produced by `fill(objs, position in the
    /// range, destination, length)` straight into the destination frame
    /// (no buffer between source and frame). Pages are faulted in for
    /// writing (copy-on-write resolved, new pages from `frames`); a page
    /// the store covers whole is filled as its fault produces it, neither
    /// zeroed nor copied first. `fill` reads through the graph it is given.
    pub fn store(
        &mut self,
        objs: &mut Objects<'_, L>,
        addr: u64,
        len: u64,
        frames: &mut FrameReservation<'_, L>,
        mut fill: impl FnMut(&Objects<'_, L>, u64, PhysAddr, usize),
    ) -> Result<(), KernError> {
        let r = VaRange::round_out(addr, len).ok_or(KernError::InvalidAddress)?;
        let missing = self.map.untranslatable(r, Access::Write);
        self.map
            .store_in(&mut self.m, objs, (addr, len), &missing, frames, &mut fill)
    }

    /// Makes the pages of `spans`, in order from `at` (page-aligned,
    /// allocated), this map's pages, copy-on-write, keeping each entry's
    /// protection, maximum and inheritance. The spans keep their own
    /// references (the caller releases them); the old pages nothing else
    /// reaches are freed, and the entries touched are simplified.
    /// `InvalidArgument` when `at` is unaligned, the range has a hole,
    /// a wired page ([`wired_in`](Self::wired_in)) or overflows, or a span
    /// comes from another VM system; then nothing changed.
    pub fn replace(
        &mut self,
        objs: &mut Objects<'_, L>,
        at: u64,
        spans: &[CowSpan],
    ) -> Result<(), KernError> {
        let context = self.map.context().id();
        let pages = spans
            .iter()
            .try_fold(0u64, |n, c| {
                (c.context == context).then(|| n.checked_add(c.pages))?
            })
            .ok_or(KernError::InvalidArgument)?;
        // `extract` makes each span exactly as long as its hold's window.
        debug_assert!(spans.iter().all(|c| {
            c.hold.as_ref().is_none_or(|h| {
                let (s, e) = objs.window(h);
                e.since(s) == c.pages
            })
        }));
        let end = pages
            .checked_mul(PAGE_SIZE)
            .and_then(|bytes| at.checked_add(bytes))
            .ok_or(KernError::InvalidArgument)?;
        if !at.is_multiple_of(PAGE_SIZE) || self.m.check_covered(at, end).is_err() {
            return Err(KernError::InvalidArgument);
        }
        // Wired pages stay: a copy stores its bytes into them instead.
        if self.wired_in(page_range(at, end)) {
            return Err(KernError::InvalidArgument);
        }
        if pages == 0 {
            return Ok(());
        }
        let pm = self.map.context().pmap();
        pm.flush(pm.remove(self.map.pmap(), page_range(at, end)));
        let mut bounds = Vec::with_capacity(spans.len());
        let mut cs = at;
        for c in spans {
            bounds.push(cs);
            cs += c.pages << PAGE_SHIFT;
        }
        self.m.clip_range(objs, at, end);
        for &b in &bounds {
            self.m.clip(objs, b);
        }
        self.replace_clipped(objs, (at, end), &bounds, spans);
        self.m.simplify(objs, at, end);
        Ok(())
    }

    /// [`replace`](Self::replace)'s last step, the entries clipped at every
    /// span's bounds.
    fn replace_clipped(
        &mut self,
        objs: &mut Objects<'_, L>,
        (at, end): (u64, u64),
        bounds: &[u64],
        spans: &[CowSpan],
    ) {
        let holder = Holder::NeedsCopy { map: self.map.id() };
        let mut old = Vec::new();
        let mut k = 0;
        self.m.entries.for_each_mut(at..end, |start, e| {
            while k + 1 < bounds.len() && bounds[k + 1] <= start {
                k += 1;
            }
            let rel = PageIndex::in_window(bounds[k], start);
            let pages = e.pages(start);
            let new = spans[k]
                .hold
                .as_ref()
                .map(|h| objs.share_part(h, rel, pages, holder));
            old.extend(core::mem::replace(&mut e.object, new));
        });
        for h in old {
            objs.release(h);
        }
    }

    /// Allocates `r` as untouched zero-fill memory with the default
    /// attributes (as `allocate` at a fixed address, simplified with its
    /// neighbours). `InvalidAddress` outside the task map, `NoSpace` when
    /// something is allocated there.
    pub fn insert_zero_fill(&mut self, r: VaRange) -> Result<(), KernError> {
        if !r.is_user() {
            return Err(KernError::InvalidAddress);
        }
        let (s, t) = (r.start().as_u64(), r.end().as_u64());
        if self.m.any_in(s, t) {
            return Err(KernError::NoSpace);
        }
        if s < t {
            self.m.insert_anon(s, t);
        }
        Ok(())
    }

    /// Deallocates `r`: no translation of it survives in any pmap, and
    /// the removed entries' holds go back through `objs` (pages nothing
    /// else reaches are freed at once). Holes are ignored.
    pub fn remove(&mut self, objs: &mut Objects<'_, L>, r: VaRange) {
        self.map.remove_locked(&mut self.m, objs, r);
    }

    /// Checks the map's invariants when the debug-build consistency checks
    /// are on ([`VmContext::set_consistency_checks`](machvm_object::VmContext::set_consistency_checks)):
    /// a call built on this boundary ends with it, and panics naming the
    /// rule broken.
    #[track_caller]
    pub fn assert_consistent(&self, objs: &Objects<'_, L>) {
        self.map.assert_consistent(&self.m, objs);
    }

    /// Merges the neighbours among the entries touching `r` that could be
    /// one entry; every change ends with it.
    pub fn simplify(&mut self, objs: &mut Objects<'_, L>, r: VaRange) {
        self.m.simplify(objs, r.start().as_u64(), r.end().as_u64());
    }
}

/// A source and a destination map locked together: in the order of their
/// ids, or once when they are the same map (then [`src`](Self::src) and
/// [`dst`](Self::dst) are one guard, and a change through one is seen
/// through the other).
pub struct MapPair<'a, L: Locks = SpinLocks> {
    first: MapGuard<'a, L>,
    /// `None` when both are one map.
    second: Option<MapGuard<'a, L>>,
    /// The source is `first`.
    src_first: bool,
}

impl<'a, L: Locks> MapPair<'a, L> {
    /// Locks `src` and `dst` (the thread holds neither, nor the graph).
    pub fn lock(src: &'a VmMap<L>, dst: &'a VmMap<L>) -> MapPair<'a, L> {
        if src.same_map(dst) {
            return MapPair {
                first: src.lock(),
                second: None,
                src_first: true,
            };
        }
        let src_first = src.id() < dst.id();
        let (a, b) = if src_first { (src, dst) } else { (dst, src) };
        let first = a.lock();
        let second = Some(b.lock());
        MapPair {
            first,
            second,
            src_first,
        }
    }

    /// True when source and destination are one map.
    pub fn is_same_map(&self) -> bool {
        self.second.is_none()
    }

    /// The source map.
    pub fn src(&mut self) -> &mut MapGuard<'a, L> {
        match &mut self.second {
            Some(s) if !self.src_first => s,
            _ => &mut self.first,
        }
    }

    /// The destination map.
    pub fn dst(&mut self) -> &mut MapGuard<'a, L> {
        match &mut self.second {
            Some(s) if self.src_first => s,
            _ => &mut self.first,
        }
    }

    /// Source and destination, to read both at once.
    pub fn both(&self) -> (&MapGuard<'a, L>, &MapGuard<'a, L>) {
        match &self.second {
            None => (&self.first, &self.first),
            Some(s) if self.src_first => (&self.first, s),
            Some(s) => (s, &self.first),
        }
    }
}
