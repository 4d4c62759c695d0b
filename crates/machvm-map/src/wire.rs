//! Wiring (SPEC §7, Mach's `vm_wire`): pages that stay resident with their
//! translations entered, so that an access within the wiring never faults.
//!
//! Rules this module keeps:
//! - An entry's `wired_count` is how many wirings cover each of its pages:
//!   a wiring clips the entries to its range, so nesting is per page, and
//!   entries of different counts never merge.
//! - A wired entry writes its object directly, and every page of its window
//!   is resident in that object itself: a wiring resolves each page as a
//!   store would (taken over or shadowed, zero-filled, copied up) whatever
//!   access it asks for, as XNU and 4.4BSD do. Nothing moves such a page
//!   (no copy-up goes past it, collapse moves only pages an object lacks),
//!   so unwiring finds the very frame the wiring counted, with no pmap
//!   query. The price: a wiring for `READ` of copy-on-write or untouched
//!   memory takes a frame per page.
//! - Each frame counts the wired entries covering it (`FrameAllocator::
//!   wire`): +1 when an entry's count goes from 0 to 1, −1 back. A wired
//!   frame cannot be freed.
//! - Copies and `Copy` forks of a wired entry copy its pages at once and
//!   never make it copy-on-write (`Objects::copy_share`); the copies are
//!   not wired. A copy never replaces a wired entry's pages: it stores its
//!   bytes into them.
//!
//! Architecture Invariant: no wiring state is in transition while the map
//! is unlocked. A wiring holds the map exclusively from its checks to its
//! last change, and the copy family holds its destination from its checks
//! to its last write (the XNU "Landa" bug came from a destination checked
//! once, then changed by a wiring while the map was unlocked).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use machvm_base::sync::Locks;
use machvm_base::{KernError, PAGE_SIZE, PageIndex, VaRange, VirtAddr, VmProt};
use machvm_object::{Found, Holder, Objects, PageAt};

use crate::data::{frames_in, reserve};
use crate::{Entry, MapInner, VmMap};

impl<L: Locks> VmMap<L> {
    /// `vm_wire`: with `access` not empty, wires `[addr, addr + size)`
    /// (rounded out) for `access`: every page is made resident now and
    /// entered wired, a copy-on-write page copied now. With
    /// [`VmProt::NONE`], unwires one level. Wiring nests per page.
    ///
    /// Checks, in this order: bits outside `ALL`, or a range that
    /// overflows: `InvalidArgument`; outside the task map or holes:
    /// `InvalidAddress`; `access` not within the current protection:
    /// `ProtectionFailure`; unwiring a page that is not wired:
    /// `InvalidArgument`; out of frames (page tables included):
    /// `ResourceShortage`. On any error nothing changed. Size 0: `Ok`.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use core::sync::atomic::Ordering::Relaxed;
    /// use machvm_map::{FrameAllocator, SoftPmap, VmContext, VmMap, VmProt};
    ///
    /// let frames = Arc::new(FrameAllocator::hosted(1 << 20).unwrap());
    /// let ctx = VmContext::new(frames, Arc::new(SoftPmap::new()));
    /// let map = VmMap::new(&ctx)?;
    /// let a = map.allocate(0, 4 * 4096, true)?;
    /// map.wire(a, 4 * 4096, VmProt::READ | VmProt::WRITE)?;
    /// assert_eq!(map.region(a)?.wired_pages, 4);
    /// let faults = ctx.counters.faults.load(Relaxed);
    /// map.write_bytes(a, &[7; 4 * 4096])?; // no fault: the pages are in
    /// assert_eq!(ctx.counters.faults.load(Relaxed), faults);
    /// map.wire(a, 4 * 4096, VmProt::NONE)?;
    /// assert_eq!(map.region(a)?.wired_pages, 0);
    /// # Ok::<(), machvm_map::KernError>(())
    /// ```
    pub fn wire(&self, addr: u64, size: u64, access: VmProt) -> Result<(), KernError> {
        let Some(r) = crate::ops::prot_range(addr, size, access)? else {
            return Ok(());
        };
        let mut m = machvm_base::sync::write::<L, _>(&self.0.inner);
        m.check_covered(r.start().as_u64(), r.end().as_u64())?;
        if access.is_empty() {
            self.unwire_locked(&mut m, r)
        } else {
            self.wire_locked(&mut m, r, access)
        }
    }

    /// [`wire`](Self::wire) for a non-empty `access`, the range checked
    /// allocated.
    fn wire_locked(&self, m: &mut MapInner, r: VaRange, access: VmProt) -> Result<(), KernError> {
        let (s, e) = (r.start().as_u64(), r.end().as_u64());
        if m.overlapping(s, e)
            .any(|(_, en)| !en.protection.contains(access))
        {
            return Err(KernError::ProtectionFailure);
        }
        if m.overlapping(s, e)
            .any(|(_, en)| en.wired_count == u16::MAX)
        {
            return Err(KernError::ResourceShortage);
        }
        // The parts wired now (the rest only gains a level), then every
        // frame and page table they take, before any change.
        let fresh: Vec<(u64, u64)> = m
            .overlapping(s, e)
            .filter(|(_, en)| en.wired_count == 0)
            .map(|(&a, en)| (a.max(s), en.end.min(e)))
            .collect();
        let count = |o: &Objects<'_, L>| {
            fresh
                .iter()
                .map(|&(a, b)| frames_in(m, o, a, b, true))
                .sum()
        };
        // Room for the frames and the page tables at once, before anything
        // is reserved: a wiring that cannot have both pages nothing out.
        let pm = self.0.ctx.pmap();
        let tables = fresh
            .iter()
            .map(|&(a, b)| pm.tables_for(VaRange::covering(a, b)));
        let tables: u64 = tables.sum();
        let mut objs = self.0.ctx.objects();
        if self.0.ctx.pager().is_some() {
            let need = count(&objs) + tables;
            objs.make_room(need)?;
        }
        let (mut objs, mut frames) = reserve(objs, count)?;
        self.check_wire_room(m, &objs, &fresh)?;
        let tables = TableReservation::new(self, &mut objs, &fresh)?;
        m.clip_range(&mut objs, s, e);
        m.entries.for_each_mut(s..e, |_, en| en.wired_count += 1);
        let mut out = Ok(());
        'pages: for &(a, b) in &fresh {
            for va in (a..b).step_by(PAGE_SIZE as usize) {
                match self.fault_wire(m, &mut objs, va, &mut frames) {
                    Ok(pa) => {
                        let wired = self.0.ctx.frames().wire(pa);
                        debug_assert!(wired, "no room to wire {pa:?} after the check");
                    }
                    Err(err) => {
                        // Unreachable with the frames and tables reserved.
                        debug_assert!(false, "wiring {va:#x} failed: {err:?}");
                        out = Err(err);
                        break 'pages;
                    }
                }
            }
        }
        drop(tables);
        drop(frames);
        m.simplify(&mut objs, s, e);
        self.assert_consistent(m, &objs);
        out
    }

    /// `ResourceShortage` when a frame the `fresh` parts would wire again
    /// (resident in the entry's own object) has its count of wirings full:
    /// a count that wrapped would let the frame be freed while wired.
    fn check_wire_room(
        &self,
        m: &MapInner,
        objs: &Objects<'_, L>,
        fresh: &[(u64, u64)],
    ) -> Result<(), KernError> {
        let frames = objs.context().frames();
        for &(a, b) in fresh {
            for (&start, en) in m.overlapping(a, b) {
                let Some(h) = &en.object else { continue };
                for va in (a.max(start)..b.min(en.end)).step_by(PAGE_SIZE as usize) {
                    let f = objs.lookup(h, PageIndex::in_window(start, va));
                    let full = f
                        .filter(|f| f.depth == 0)
                        .and_then(|f| frames.page(f.frame()?));
                    if full.is_some_and(|p| p.wire_count() == u16::MAX) {
                        return Err(KernError::ResourceShortage);
                    }
                }
            }
        }
        Ok(())
    }

    /// [`wire`](Self::wire) with `NONE`: one level off every page of `r`.
    fn unwire_locked(&self, m: &mut MapInner, r: VaRange) -> Result<(), KernError> {
        let (s, e) = (r.start().as_u64(), r.end().as_u64());
        if m.overlapping(s, e).any(|(_, en)| en.wired_count == 0) {
            return Err(KernError::InvalidArgument);
        }
        let mut objs = self.0.ctx.objects();
        m.clip_range(&mut objs, s, e);
        let pm = self.0.ctx.pmap();
        m.entries.for_each_mut(s..e, |start, en| {
            en.wired_count -= 1;
            if en.wired_count == 0 {
                unwire_frames(&objs, start, en);
                for va in (start..en.end).step_by(PAGE_SIZE as usize) {
                    pm.change_wiring(self.0.pmap, VirtAddr::new(va), false);
                }
            }
        });
        m.simplify(&mut objs, s, e);
        self.assert_consistent(m, &objs);
        Ok(())
    }
}

impl<L: Locks> VmMap<L> {
    /// Enters the pages of the wired entry at `start` again, wired, with
    /// its protection (after `protect` raised it: an access within the
    /// wiring never faults). Its tables are reserved.
    pub(crate) fn reenter_wired(&self, m: &MapInner, objs: &Objects<'_, L>, start: u64) {
        let Some(e) = m.entries.get(&start) else {
            return;
        };
        let (Some(h), pm) = (&e.object, self.0.ctx.pmap()) else {
            return;
        };
        for i in 0..e.pages(start) {
            let Some(pa) = objs.lookup(h, PageIndex::new(i)).and_then(|f| f.frame()) else {
                continue;
            };
            let va = VirtAddr::new(start + i * PAGE_SIZE);
            match pm.enter(self.0.pmap, va, pa, e.protection, true) {
                Ok(flush) => pm.flush(flush),
                // Unreachable with the tables reserved.
                Err(err) => debug_assert!(false, "re-entering {va:?}: {err:?}"),
            }
        }
    }

    /// `MapRule::WiredResident`: each wired entry writes its object
    /// directly, and each page of it is resident there, its frame wired,
    /// its translation entered wired (unless the protection is `NONE`).
    pub(crate) fn check_wired(&self, m: &MapInner, objs: &Objects<'_, L>) -> Result<(), String> {
        let frames = objs.context().frames();
        let pm = self.0.ctx.pmap();
        for (&start, e) in m.entries.iter().filter(|(_, e)| e.wired_count > 0) {
            let h = e
                .object
                .as_ref()
                .ok_or(format!("wired entry {start:#x} has no object"))?;
            if !matches!(objs.holder(h), Holder::Direct { .. }) {
                return Err(format!(
                    "wired entry {start:#x} does not write its object directly"
                ));
            }
            for i in 0..e.pages(start) {
                let va = start + i * PAGE_SIZE;
                let f = objs.lookup(h, PageIndex::new(i)).filter(|f| f.depth == 0);
                let pa = f.and_then(|f| f.frame());
                let pa = pa.ok_or(format!("wired page {va:#x} not resident in its object"))?;
                if frames.page(pa).is_none_or(|p| p.wire_count() == 0) {
                    return Err(format!("frame of wired page {va:#x} not wired"));
                }
                let t = pm.extract(self.0.pmap, VirtAddr::new(va));
                if !e.protection.is_empty() && !t.is_some_and(|t| t.wired && t.pa == pa) {
                    return Err(format!("wired page {va:#x} not entered wired"));
                }
            }
        }
        Ok(())
    }
}

/// Page tables set aside for entering translations in some ranges of one
/// map (`Pmap::reserve_tables`), given back when dropped.
pub(crate) struct TableReservation<'a, L: Locks> {
    map: &'a VmMap<L>,
}

impl<'a, L: Locks> TableReservation<'a, L> {
    /// Tables for `ranges` of `map` (none asked for an empty list), room
    /// made for them first in a system that pages. `ResourceShortage`:
    /// nothing set aside (nor paged out).
    pub(crate) fn new(
        map: &'a VmMap<L>,
        objs: &mut Objects<'_, L>,
        ranges: &[(u64, u64)],
    ) -> Result<Self, KernError> {
        let pm = map.0.ctx.pmap();
        let need = ranges.iter();
        let need: u64 = need
            .map(|&(a, b)| pm.tables_for(VaRange::covering(a, b)))
            .sum();
        objs.make_room(need)?;
        let guard = TableReservation { map };
        for &(a, b) in ranges {
            pm.reserve_tables(map.0.pmap, VaRange::covering(a, b))?;
        }
        Ok(guard)
    }
}

impl<L: Locks> Drop for TableReservation<'_, L> {
    fn drop(&mut self) {
        self.map.0.ctx.pmap().release_tables(self.map.0.pmap);
    }
}

/// Drops the wiring the wired entry `e` at `start` holds on each frame of
/// its window, before the entry goes or stops being wired. Its pages are
/// all resident in its own object (this module's rules).
pub(crate) fn unwire_frames<L: Locks>(objs: &Objects<'_, L>, start: u64, e: &Entry) {
    let Some(h) = &e.object else {
        debug_assert!(false, "a wired entry without an object");
        return;
    };
    let frames = objs.context().frames();
    for i in 0..e.pages(start) {
        match objs.lookup(h, PageIndex::new(i)).filter(|f| f.depth == 0) {
            Some(Found {
                page: PageAt::Frame(pa),
                ..
            }) => frames.unwire(pa),
            _ => debug_assert!(
                false,
                "wired page {i} of {start:#x} not resident in its object"
            ),
        }
    }
}

/// Drops the wirings of the wired ones among entries being removed.
pub(crate) fn unwire_removed<'e, L: Locks>(
    objs: &Objects<'_, L>,
    removed: impl IntoIterator<Item = &'e (u64, Entry)>,
) {
    for (start, e) in removed {
        if e.wired_count > 0 {
            unwire_frames(objs, *start, e);
        }
    }
}
