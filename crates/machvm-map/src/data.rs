//! A task's loads and stores (`read_bytes`, `write_bytes`), and the part of
//! them the copy family shares: making a range of pages translatable with
//! every frame it needs reserved first.
//!
//! A multi-page call counts the frames its faults can take (under the map
//! and graph locks), reserves them all, and only then faults anything in: a
//! call that runs out of frames fails before it changes anything, and no
//! rollback exists.

use alloc::vec::Vec;
use machvm_base::sync::Locks;

use machvm_base::{
    KernError, PAGE_SHIFT, PAGE_SIZE, PageIndex, PhysAddr, VaRange, VirtAddr, page_chunks,
};
use machvm_frame::{FrameReservation, FrameUse, PhysMem};
use machvm_object::{Hold, Objects, PageLookup};
use machvm_pmap::Access;

use crate::fault::Enter;

/// What writes each piece of a store: `fill(graph, position in the
/// range, frame address, length)`.
pub(crate) type Fill<'f, L> = &'f mut dyn FnMut(&Objects<'_, L>, u64, PhysAddr, usize);

/// The offset bits of an address within its page.
const PAGE_MASK: u64 = PAGE_SIZE - 1;
use crate::ops::check_access;
use crate::{MapInner, VmMap};

impl<L: Locks> VmMap<L> {
    /// Reads `buf.len()` bytes at `addr` as the task's own loads would: the
    /// whole range is checked first (holes: `InvalidAddress`; no `READ`:
    /// `ProtectionFailure`), the pages the pmap's walker cannot translate
    /// are faulted in, the bytes move through the objects, and on any error
    /// no byte moves.
    pub fn read_bytes(&self, addr: u64, buf: &mut [u8]) -> Result<(), KernError> {
        let Some(r) = VaRange::of_data(addr, buf.len() as u64)? else {
            return Ok(());
        };
        if r.pages() == 1 {
            let got = self.in_one_page(r, Access::Read, |mem, pa| match pa {
                Some(pa) => mem.read(pa + (addr & PAGE_MASK), buf),
                None => buf.fill(0),
            });
            if got != Err(KernError::ResourceShortage) || self.0.ctx.pager().is_none() {
                return got;
            }
            // Not even one frame to page the page in: read it where it is.
            let m = machvm_base::sync::write::<L, _>(&self.0.inner);
            check_access(&m, r, Access::Read)?;
            return self.read_through_objects(&m, addr, buf);
        }
        let mut m = machvm_base::sync::write::<L, _>(&self.0.inner);
        check_access(&m, r, Access::Read)?;
        let objs = match self.fault_in(&mut m, r, Access::Read) {
            // Too many pages to page in at once: read them where they are.
            Err(KernError::ResourceShortage) if self.0.ctx.pager().is_some() => {
                return self.read_through_objects(&m, addr, buf);
            }
            other => other?,
        };
        let moved = for_each_page_piece(&m, addr, buf.len(), |h, page, off, at, n| {
            objs.read(h, page, off, &mut buf[at..at + n])
        });
        self.assert_consistent(&m, &objs);
        moved
    }

    /// Writes `data` at `addr` as the task's own stores would (copy-on-write
    /// resolved, pages zero-filled on demand); checked first like
    /// [`read_bytes`](Self::read_bytes), and on any error no byte moves.
    pub fn write_bytes(&self, addr: u64, data: &[u8]) -> Result<(), KernError> {
        let Some(r) = VaRange::of_data(addr, data.len() as u64)? else {
            return Ok(());
        };
        if r.pages() == 1 {
            return self.in_one_page(r, Access::Write, |mem, pa| {
                if let Some(pa) = pa {
                    mem.write(pa + (addr & PAGE_MASK), data);
                }
            });
        }
        let mut m = machvm_base::sync::write::<L, _>(&self.0.inner);
        check_access(&m, r, Access::Write)?;
        let (mut objs, mut frames, missing) = match self.reserve_faults(&m, (r, r), Access::Write) {
            // More pages than RAM holds at once: in rounds, if swap holds them.
            Err(KernError::ResourceShortage) if self.0.ctx.pager().is_some() => {
                return self.write_in_rounds(&mut m, addr, data);
            }
            other => other?,
        };
        let mem = self.0.ctx.frames().mem();
        let moved = self.store_in(
            &mut m,
            &mut objs,
            (addr, data.len() as u64),
            &missing,
            &mut frames,
            &mut |_, at, pa, n| mem.write(pa, &data[at as usize..at as usize + n]),
        );
        drop(frames);
        self.assert_consistent(&m, &objs);
        moved
    }

    /// Stores the `len` bytes at `addr` (allocated, checked writable;
    /// `missing`, ascending, the pages the pmap cannot translate for a
    /// store, every frame their faults take in `frames`): each piece of at
    /// most a page is written by `fill(graph, position in the range,
    /// frame address, length)` straight into its frame. Missing pages the
    /// store covers whole are written by `fill` as they come into being,
    /// neither zeroed nor copied up first (the copy family's eager copies
    /// move each byte once): a run of them over a fresh destination in one
    /// step, any other one by its own fault, each entered writable as a
    /// store's fault would. The other missing pages are faulted in, then
    /// written. With the range checked and the frames reserved, no
    /// fault fails (a page table that cannot be had leaves a page
    /// unmapped).
    pub(crate) fn store_in(
        &self,
        m: &mut MapInner,
        objs: &mut Objects<'_, L>,
        (addr, len): (u64, u64),
        missing: &[u64],
        frames: &mut FrameReservation<'_, L>,
        fill: Fill<'_, L>,
    ) -> Result<(), KernError> {
        let end = addr.checked_add(len).ok_or(KernError::InvalidAddress)?;
        let whole = |va: u64| addr <= va && va.saturating_add(PAGE_SIZE) <= end;
        let mut i = 0;
        while let Some(&va) = missing.get(i) {
            if !whole(va) {
                self.fault_locked(m, objs, va, Access::Write, frames, Enter::BestEffort)?;
                i += 1;
                continue;
            }
            let done = self.overwrite_run(m, objs, (addr, end), &missing[i..], frames, fill)?;
            if done == 0 {
                let mut produce =
                    |o: &Objects<'_, L>, pa| fill(o, va - addr, pa, PAGE_SIZE as usize);
                self.fault_overwrite(m, objs, va, frames, &mut produce)?;
            }
            i += done.max(1);
        }
        // Every page is now its entry's own, written directly, and stays so
        // while this map is locked.
        let objs: &Objects<'_, L> = objs;
        let mut next = missing.iter().peekable();
        for_each_page_piece(m, addr, len as usize, |h, page, off, at, n| {
            let va = addr + at as u64 - off;
            while next.next_if(|&&p| p < va).is_some() {}
            if whole(va) && next.next_if_eq(&&va).is_some() {
                return true; // written as it came into being
            }
            let Some(pa) = h.and_then(|h| objs.written_frame(h, page)) else {
                return false;
            };
            fill(objs, at as u64, pa + off, n);
            true
        })
    }

    /// [`read_bytes`](Self::read_bytes) or [`write_bytes`](Self::write_bytes)
    /// within the one page `r`, the path most calls take: one entry lookup,
    /// the fault only if the walker cannot translate the page, and
    /// `mv(memory, frame)` with the frame the graph holds there (`None` for
    /// a read: nothing resident, zeros) — under shared locks when the fault
    /// (if any) changes no structure, else exclusively.
    fn in_one_page(
        &self,
        r: VaRange,
        access: Access,
        mv: impl FnOnce(&PhysMem, Option<PhysAddr>),
    ) -> Result<(), KernError> {
        let va = r.start();
        let pm = self.0.ctx.pmap();
        let mem = self.0.ctx.frames().mem();
        {
            let m = self.0.inner.read();
            let (_, e) = m.entry_at_shared(va.as_u64())?;
            if !e.protection.contains(access.needs()) {
                return Err(KernError::ProtectionFailure);
            }
            let objs = self.0.ctx.shared_objects();
            let pa = if pm.translate(self.0.pmap, va, access, true).is_ok() {
                Some(frame_at(&m, &objs, va.as_u64(), access))
            } else {
                self.fault_shared_in(&m, &objs, va.as_u64(), access, Enter::BestEffort)
                    .map(|r| r.map(Some))
            };
            if let Some(pa) = pa {
                mv(mem, pa?);
                drop((objs, m));
                self.check_after_shared();
                return Ok(());
            }
        }
        let mut m = machvm_base::sync::write::<L, _>(&self.0.inner);
        let (_, e) = m.entry_at(va.as_u64())?;
        if !e.protection.contains(access.needs()) {
            return Err(KernError::ProtectionFailure);
        }
        // With a pager, the graph first: pageout (another map's call)
        // removes translations only under it, so what the walker answers
        // holds while it is held. Without one, only this map's calls do.
        let paging = self.0.ctx.pager().is_some();
        let early = (!paging).then(|| pm.translate(self.0.pmap, va, access, true).is_ok());
        let mut objs = self.0.ctx.objects();
        let mapped = early.unwrap_or_else(|| pm.translate(self.0.pmap, va, access, true).is_ok());
        let pa = if mapped {
            frame_at(&m, &objs, va.as_u64(), access)?
        } else {
            let mut frames = objs.on_demand();
            let r = self.fault_locked(
                &mut m,
                &mut objs,
                va.as_u64(),
                access,
                &mut frames,
                Enter::BestEffort,
            );
            drop(frames);
            Some(r?)
        };
        mv(mem, pa);
        self.assert_consistent(&m, &objs);
        Ok(())
    }

    /// The pages of `r` the pmap cannot translate for `access` now (the
    /// walker sets the others' referenced and modified bits, as the MMU
    /// would). Asked with the graph locked: pageout removes translations
    /// of any map under the graph lock alone, so the answer holds only
    /// while it is held.
    pub(crate) fn untranslatable(&self, r: VaRange, access: Access) -> Vec<u64> {
        let pm = self.0.ctx.pmap();
        r.iter_pages()
            .filter(|va| pm.translate(self.0.pmap, *va, access, true).is_err())
            .map(|va| va.as_u64())
            .collect()
    }

    /// Faults in the pages of `r` (already checked for `access`) the pmap
    /// cannot translate, every frame that takes reserved first. Returns
    /// the locked graph.
    fn fault_in<'c>(
        &'c self,
        m: &mut MapInner,
        r: VaRange,
        access: Access,
    ) -> Result<Objects<'c, L>, KernError> {
        let (mut objs, mut frames, missing) = self.reserve_faults(m, (r, r), access)?;
        self.fault_pages(m, &mut objs, &missing, access, &mut frames)?;
        drop(frames);
        Ok(objs)
    }

    /// The run of consecutive pages from `rest[0]` that the store
    /// `[addr, end)` covers whole, within one entry, overwritten in one
    /// step when the entry's object has nothing below it (see
    /// `Objects::overwrite_run`), then entered writable as the store's
    /// faults would have (replacing the zero frame's translations). Returns
    /// its length, 0 when it was not done (a wired entry, a shadow chain:
    /// the caller faults page by page).
    fn overwrite_run(
        &self,
        m: &mut MapInner,
        objs: &mut Objects<'_, L>,
        (addr, end): (u64, u64),
        rest: &[u64],
        frames: &mut FrameReservation<'_, L>,
        fill: Fill<'_, L>,
    ) -> Result<usize, KernError> {
        let va = rest[0];
        let (start, e) = m.entry_at(va)?;
        if e.wired_count > 0 {
            return Ok(0);
        }
        let stop = e.end.min(end);
        let n = rest
            .iter()
            .zip((va..).step_by(PAGE_SIZE as usize))
            .take_while(|&(&p, want)| p == want && p + PAGE_SIZE <= stop)
            .count();
        let (created, pages, prot) = (e.object.is_none(), e.pages(start), e.protection);
        let map = machvm_object::Holder::Direct { map: self.0.id };
        let hold = e.object.get_or_insert_with(|| objs.create(pages, map));
        let first = PageIndex::in_window(start, va);
        let mut made = Vec::with_capacity(n);
        let mut produce = |o: &Objects<'_, L>, k: u64, pa| {
            made.push(pa);
            fill(o, va + (k << PAGE_SHIFT) - addr, pa, PAGE_SIZE as usize)
        };
        let done = objs.overwrite_run(hold, first, n as u64, frames, &mut produce);
        if !matches!(done, Some(Ok(()))) {
            if created && let Some(h) = e.object.take() {
                objs.release(h);
            }
            if let Some(Err(err)) = done {
                // The first page's fault failed, and counts as such.
                self.0.ctx.counters.faults.add(1);
                return Err(err);
            }
            return Ok(0);
        }
        self.0.ctx.counters.faults.add(n as u64);
        self.enter_run(va, &made, prot);
        Ok(n)
    }

    /// Enters `frames` from `va` on, one page each, with `prot` (a page
    /// table that cannot be had leaves its pages unmapped: a cache).
    fn enter_run(&self, va: u64, frames: &[PhysAddr], prot: machvm_base::VmProt) {
        let pm = self.0.ctx.pmap();
        let mut flush = machvm_pmap::TlbFlush::none();
        for (k, &pa) in frames.iter().enumerate() {
            let at = VirtAddr::new(va + ((k as u64) << PAGE_SHIFT));
            if let Ok(f) = pm.enter(self.0.pmap, at, pa, prot, false) {
                flush.merge(f);
            }
        }
        pm.flush(flush);
    }

    /// Locks the graph with every frame the faults of the pages of `r`
    /// the pmap cannot translate for `access` can take reserved, and
    /// returns those pages (asked under the graph lock, again after every
    /// time the reservation let go of it: another call's pageout may have
    /// removed translations meanwhile). One page needs at most one frame,
    /// taken in one step that changes nothing when it fails: it reserves
    /// none. The whole of `r` is kept resident by the pageout this may
    /// run: its translated pages are not faulted, so they must stay
    /// translated.
    #[allow(clippy::type_complexity)]
    pub(crate) fn reserve_faults<'c>(
        &'c self,
        m: &MapInner,
        (r, keep): (VaRange, VaRange),
        access: Access,
    ) -> Result<(Objects<'c, L>, FrameReservation<'c, L>, Vec<u64>), KernError> {
        // Without a pager nothing but this map's own calls (shut out by
        // its lock) removes its translations: ask before the graph lock,
        // not holding it exclusively over a walk per page.
        let paging = self.0.ctx.pager().is_some();
        let early = (!paging).then(|| self.untranslatable(r, access));
        let objs = self.0.ctx.objects();
        let missing = early.unwrap_or_else(|| self.untranslatable(r, access));
        if missing.len() <= 1 {
            keep_range(m, &objs, keep);
            let frames = objs.on_demand();
            return Ok((objs, frames, missing));
        }
        let write = access == Access::Write;
        // The first count uses the answer above; a recount asks again.
        let (mut first, mut last) = (Some(missing), Vec::new());
        let (objs, frames) = reserve(objs, |o| {
            keep_range(m, o, keep);
            last = first
                .take()
                .unwrap_or_else(|| self.untranslatable(r, access));
            frames_for(m, o, &last, write)
        })?;
        Ok((objs, frames, last))
    }

    /// Faults in `vas` for `access`, new pages from `frames`.
    pub(crate) fn fault_pages(
        &self,
        m: &mut MapInner,
        objs: &mut Objects<'_, L>,
        vas: &[u64],
        access: Access,
        frames: &mut FrameReservation<'_, L>,
    ) -> Result<(), KernError> {
        for &va in vas {
            self.fault_locked(m, objs, va, access, frames, Enter::BestEffort)?;
        }
        Ok(())
    }
}

/// Counts with `count` under the graph lock and reserves that many object
/// frames with the graph unlocked (the caller's maps stay locked). For
/// calls whose count no chain shortening can change; see
/// [`reserve_settled`].
pub fn reserve<'c, L: Locks>(
    objs: Objects<'c, L>,
    count: impl FnMut(&Objects<'c, L>) -> u64,
) -> Result<(Objects<'c, L>, FrameReservation<'c, L>), KernError> {
    reserve_settled(objs, |_| false, count)
}

/// Counts with `count` under the graph lock and reserves that many object
/// frames with the graph unlocked (the caller's maps stay locked), then
/// settles and counts again until the reservation covers the count:
/// meanwhile another map's call can raise it (a sibling adding pages to a
/// window that is to be copied eagerly). The first count is taken before
/// `settle`, which may shorten chains (bypass, collapse) — that moves pages
/// between objects and only raises counts — so a call that fails for lack
/// of frames at once has changed nothing at all. `settle` returns whether
/// anything moved; a count is retaken only when something moved or the
/// graph was unlocked. Returns the graph locked again with the count
/// covered.
pub fn reserve_settled<'c, L: Locks>(
    mut objs: Objects<'c, L>,
    mut settle: impl FnMut(&mut Objects<'c, L>) -> bool,
    mut count: impl FnMut(&Objects<'c, L>) -> u64,
) -> Result<(Objects<'c, L>, FrameReservation<'c, L>), KernError> {
    let ctx = objs.context();
    let mut frames = ctx.frames().reserve(0, FrameUse::Object)?;
    let mut recount = |objs: &Objects<'c, L>| {
        objs.clear_keep();
        count(objs)
    };
    let mut n = recount(&objs);
    let mut settled = false;
    // Other calls can take the frames pageout freed before this one
    // reserves them; it pages out again, a bounded number of times.
    let mut tries = 0;
    loop {
        let have = frames.remaining() as u64;
        let mut stale = false;
        if n > have {
            objs.make_room(n - have)?;
            drop(objs);
            let topped = frames.top_up(n - have);
            objs = ctx.objects();
            tries += 1;
            if let Err(e) = topped
                && (ctx.pager().is_none() || tries > TOP_UP_TRIES)
            {
                return Err(e.into());
            }
            stale = true;
        } else if settled {
            return Ok((objs, frames));
        }
        stale |= settle(&mut objs);
        settled = true;
        if stale {
            n = recount(&objs);
        }
    }
}

/// Times [`reserve_settled`] pages out and tries again when other calls
/// took the frames it freed.
const TOP_UP_TRIES: u32 = 32;

/// Keeps the pages of `r` this map's entries write directly resident
/// through the pageout the call's reservation may run (see
/// `Objects::keep_window`): a store writes them in place, where the walker
/// found them. Pages only read, or copied up from, need not stay: reads
/// and copy-ups take a paged-out page from its slot.
pub(crate) fn keep_range<L: Locks>(m: &MapInner, objs: &Objects<'_, L>, r: VaRange) {
    if objs.context().pager().is_none() {
        return;
    }
    let (s, t) = (r.start().as_u64(), r.end().as_u64());
    for (&start, e) in m.overlapping(s, t) {
        let Some(h) = &e.object else { continue };
        if !matches!(objs.holder(h), machvm_object::Holder::Direct { .. }) {
            continue;
        }
        let (lo, hi) = (s.max(start), t.min(e.end));
        objs.keep_window(h, PageIndex::in_window(start, lo), (hi - lo) >> PAGE_SHIFT);
    }
}

/// An upper bound on the frames faulting in `vas` (page addresses, in
/// increasing order) would take: one question per run of them.
pub(crate) fn frames_for<L: Locks>(
    m: &MapInner,
    objs: &Objects<'_, L>,
    vas: &[u64],
    write: bool,
) -> u64 {
    let mut n = 0;
    let mut i = 0;
    while i < vas.len() {
        let mut k = 1;
        while i + k < vas.len() && vas[i + k] == vas[i] + k as u64 * PAGE_SIZE {
            k += 1;
        }
        n += frames_in(m, objs, vas[i], vas[i] + k as u64 * PAGE_SIZE, write);
        i += k;
    }
    n
}

/// An upper bound on the frames faulting in every page of `[start, end)`
/// (page-aligned) would take: a question per entry, a frame per page of a
/// hole (about to be allocated, then zero-filled). O(entries and resident
/// pages), not O(pages).
pub(crate) fn frames_in<L: Locks>(
    m: &MapInner,
    objs: &Objects<'_, L>,
    start: u64,
    end: u64,
    write: bool,
) -> u64 {
    let mut n = 0;
    let mut at = start;
    for (&s, e) in m.overlapping(start, end) {
        if s > at {
            n += (s - at) >> PAGE_SHIFT;
        }
        let (lo, hi) = (at.max(s), end.min(e.end));
        n += objs.frames_to_resolve(
            e.object.as_ref(),
            PageIndex::in_window(s, lo),
            (hi - lo) >> PAGE_SHIFT,
            write,
        );
        at = hi;
    }
    if at < end {
        n += (end - at) >> PAGE_SHIFT;
    }
    n
}

/// Splits `[addr, addr + len)` at page boundaries and calls `f(hold, page
/// index in its window, byte offset in the page, offset into the caller's
/// buffer, length)` for each piece; an untouched entry gives no hold.
/// `InvalidAddress` if the range overflows or has a hole, and
/// `ProtectionFailure` if `f` refuses a piece (a store to a page not yet
/// made writable); the callers' checks and faults rule both out.
pub(crate) fn for_each_page_piece(
    m: &MapInner,
    addr: u64,
    len: usize,
    mut f: impl FnMut(Option<&Hold>, PageIndex, u64, usize, usize) -> bool,
) -> Result<(), KernError> {
    let end = addr
        .checked_add(len as u64)
        .ok_or(KernError::InvalidAddress)?;
    let mut chunks = page_chunks(addr, len).peekable();
    // One walk over the entries in order, not a tree search per page.
    for (&start, e) in m.overlapping(addr, end) {
        while let Some(c) = chunks.next_if(|c| c.page.as_u64() < e.end) {
            let page = c.page.as_u64();
            if page + c.offset < start {
                return Err(KernError::InvalidAddress);
            }
            let index = PageIndex::in_window(start, page);
            if !f(e.object.as_ref(), index, c.offset, c.at, c.len) {
                return Err(KernError::ProtectionFailure);
            }
        }
    }
    match chunks.next() {
        Some(_) => Err(KernError::InvalidAddress),
        None => Ok(()),
    }
}

/// The frame the graph holds at page `va` for `access`: for a read the
/// page the chain shows (`None`: nothing resident), for a write the page of
/// the entry's own object (else `ProtectionFailure`: the callers' faults
/// rule it out). Through either view of the graph.
fn frame_at(
    m: &MapInner,
    objs: &impl PageLookup,
    va: u64,
    access: Access,
) -> Result<Option<PhysAddr>, KernError> {
    let (start, e) = m.entry_at_shared(va)?;
    let idx = PageIndex::in_window(start, va);
    let hold = e.object.as_ref();
    if access == Access::Write {
        let pa = hold.and_then(|h| objs.written_frame(h, idx));
        return pa.map(Some).ok_or(KernError::ProtectionFailure);
    }
    match hold.and_then(|h| objs.lookup(h, idx)) {
        None => Ok(None),
        Some(f) => match f.frame() {
            Some(pa) => Ok(Some(pa)),
            // The MMU translated it, so it is resident: pageout removes every
            // translation of a page before it goes (MapRule::TranslationsJustified).
            None => {
                debug_assert!(false, "a translated page at {va:#x} is paged out");
                Err(KernError::Failure)
            }
        },
    }
}
