//! Pages through a hold: looking them up along the chain, resolving them
//! for an access (zero-fill, copy-up), counting the frames that would take,
//! and moving bytes. Every chain walk is a loop.

use alloc::collections::BTreeMap;
use machvm_base::sync::Locks;

use machvm_base::{KernError, PAGE_SIZE, PageIndex, PhysAddr};
use machvm_frame::FrameReservation;

use crate::graph::{Backing, Graph};
use crate::overwrite::Produce;
use crate::{Hold, Holder, ObjectId, Objects, PageAt, VmContext, VmCounters};

/// Page lookups any view of the graph answers, locked exclusively
/// ([`Objects`]) or shared ([`crate::SharedObjects`], where a page being
/// filled is waited for).
pub trait PageLookup {
    /// The page at page `page` of `hold`'s window as the chain holds it.
    fn lookup(&self, hold: &Hold, page: PageIndex) -> Option<Found>;

    /// The frame of page `page` of `hold`'s window when it is resident in
    /// the held object itself (a page resolved for writing).
    fn written_frame(&self, hold: &Hold, page: PageIndex) -> Option<PhysAddr> {
        self.lookup(hold, page)
            .filter(|f| f.depth == 0)
            .and_then(|f| f.page.frame())
    }
}

impl<L: Locks> PageLookup for Objects<'_, L> {
    fn lookup(&self, hold: &Hold, page: PageIndex) -> Option<Found> {
        Objects::lookup(self, hold, page)
    }
}

/// The zero frame when reads of `[lo, hi)` of `hold`'s object, where
/// nothing is resident, may map it: never where another entry writes the
/// object directly (a `Share` sibling's store must reach this reader at
/// once, and nothing would remove its zero-frame translation). Both views
/// of the graph ask this one rule.
pub(crate) fn zero_frame_in<L: Locks>(
    ctx: &VmContext<L>,
    g: &Graph<L>,
    hold: &Hold,
    lo: u64,
    hi: u64,
) -> Option<PhysAddr> {
    let zero = ctx.zero_frame()?;
    let direct = |k: Holder| matches!(k, Holder::Direct { .. });
    (!g.other_overlaps(hold.obj, hold.id, lo, hi, direct)).then_some(zero)
}

/// Where a page lookup found its page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    /// The page: resident, or paged out (a fault pages it in; a reader
    /// takes its bytes from the store).
    pub page: PageAt,
    /// 0 when found in the object held, n when n objects down its chain.
    pub depth: usize,
}

impl Found {
    /// The frame, when the page is resident.
    #[must_use]
    pub fn frame(&self) -> Option<PhysAddr> {
        self.page.frame()
    }
}

/// What [`Objects::resolve`] did to produce the page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// The page was already resident in the object a `Direct` hold writes.
    Resident,
    /// The page is still shared copy-on-write — found down the chain, or the
    /// hold has copy-on-write pending — and may only be read: map it
    /// read-only.
    Backing,
    /// A new zero-filled page was put in the top object.
    ZeroFilled,
    /// Nothing is resident and the access reads: the shared zero frame,
    /// to be mapped read-only (a store faults again and zero-fills). No
    /// page was added to any object.
    ZeroPage,
    /// The page was copied up from the chain into the top object.
    CopiedUp,
}

/// A resolved page: the frame to map and how it was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The frame.
    pub pa: PhysAddr,
    /// How.
    pub how: Resolution,
}

/// A page found along a chain: its object, offset there and page.
pub(crate) struct Below {
    pub(crate) obj: ObjectId,
    pub(crate) offset: u64,
    pub(crate) page: PageAt,
    pub(crate) depth: usize,
}

impl Below {
    /// The zero frame, as a page to map (in no object).
    fn zero(pa: PhysAddr) -> Below {
        Below {
            obj: ObjectId(0),
            offset: 0,
            page: PageAt::Frame(pa),
            depth: 0,
        }
    }
}

impl<L: Locks> Objects<'_, L> {
    /// The first present page at `off` of `obj` or below it.
    pub(crate) fn find(&self, obj: ObjectId, off: u64) -> Option<Below> {
        let (mut cur, mut off, mut depth) = (obj, off, 0);
        loop {
            let o = self.g.obj(cur);
            if let Some(page) = o.pages.get(off) {
                return Some(Below {
                    obj: cur,
                    offset: off,
                    page,
                    depth,
                });
            }
            let b = o.backing?;
            (cur, off, depth) = (b.obj, off + b.offset, depth + 1);
        }
    }

    /// The object offset of page `page` of `hold`'s window, if inside it.
    pub(crate) fn offset_of(&self, hold: &Hold, page: PageIndex) -> Option<u64> {
        let (s, e) = self.window_raw(hold);
        s.checked_add(page.get()).filter(|&o| o < e)
    }

    /// The page at page `page` of `hold`'s window as the chain holds it.
    pub fn lookup(&self, hold: &Hold, page: PageIndex) -> Option<Found> {
        let off = self.offset_of(hold, page)?;
        self.find(hold.obj, off).map(|b| Found {
            page: b.page,
            depth: b.depth,
        })
    }

    /// Produces page `page` of `hold`'s window for an access — resident in
    /// the top object, found down the chain, zero-filled, or, for a write,
    /// copied up — and hands it to `map` (the pmap step) under the graph
    /// lock, so nothing can replace or free the page before it is mapped.
    /// New pages come from `frames`.
    ///
    /// A write needs a `Direct` hold ([`make_writable`](Self::make_writable)
    /// first). After a copy-up, the old page loses every translation when
    /// other `Direct` holders share the top object (so no sibling keeps
    /// reading it: FreeBSD CVE-2021-29626), and is freed at once if nothing
    /// can reach it any more. If `map` fails, a page this call inserted is
    /// taken out again: with the graph locked throughout, nobody else can
    /// have seen it. Out of frames: `ResourceShortage`, nothing changed.
    pub fn resolve(
        &mut self,
        hold: &Hold,
        page: PageIndex,
        write: bool,
        frames: &mut FrameReservation<'_, L>,
        map: impl FnOnce(Resolved) -> Result<(), KernError>,
    ) -> Result<Resolved, KernError> {
        self.resolve_with(hold, page, write, frames, None, map)
    }

    pub(crate) fn resolve_with(
        &mut self,
        hold: &Hold,
        page: PageIndex,
        write: bool,
        frames: &mut FrameReservation<'_, L>,
        mut produce: Option<Produce<'_, L>>,
        map: impl FnOnce(Resolved) -> Result<(), KernError>,
    ) -> Result<Resolved, KernError> {
        let counters = &self.ctx.counters;
        VmCounters::bump(&counters.lookups);
        let rec = *self.g.rec(hold.obj, hold.id);
        let off = rec.start.checked_add(page.get()).filter(|&o| o < rec.end);
        let off = off.ok_or(KernError::InvalidAddress)?;
        let direct = matches!(rec.kind, Holder::Direct { .. });
        if write && !direct {
            // The caller makes the hold writable first (take over or
            // shadow); through a copy-on-write hold a store is refused.
            return Err(KernError::ProtectionFailure);
        }
        let below = self.find(hold.obj, off);
        let zero = if write {
            None
        } else {
            self.zero_page_for(hold, off)
        };
        let how = match (&below, write, zero) {
            (Some(b), _, _) if b.depth == 0 && direct => Resolution::Resident,
            (Some(_), false, _) => Resolution::Backing,
            (Some(_), true, _) => Resolution::CopiedUp,
            (None, false, Some(_)) => Resolution::ZeroPage,
            (None, _, _) => Resolution::ZeroFilled,
        };
        if matches!(
            how,
            Resolution::Resident | Resolution::Backing | Resolution::ZeroPage
        ) {
            let at = below.or_else(|| zero.map(Below::zero));
            return self.map_in_place(at, how, frames, produce, map);
        }
        let pa = match (&mut produce, &below) {
            (Some(p), _) => {
                let pa = frames.take()?;
                p(self, pa);
                self.set_owner(pa, hold.obj.0, off);
                pa
            }
            (None, Some(b)) => self.fill_from(frames, hold.obj.0, off, b.page)?,
            (None, None) => self.fill_zero(frames, hold.obj.0, off)?,
        };
        self.g
            .obj_mut(hold.obj)
            .pages
            .insert(off, PageAt::Frame(pa));
        let r = Resolved { pa, how };
        if let Err(e) = map(r) {
            self.g.obj_mut(hold.obj).pages.remove(off);
            self.free_unmapped(pa);
            return Err(e);
        }
        self.activate(pa);
        match below {
            Some(b) => {
                VmCounters::bump(&counters.hits);
                VmCounters::bump(&counters.cow_faults);
                self.after_copy_up(hold, off, b);
            }
            None => VmCounters::bump(&counters.zero_fill_count),
        }
        Ok(r)
    }

    /// The page `at` (where it lies, or the zero frame) for `how`, handed
    /// to `map` — after `produce` wrote it whole, if given. A paged-out page
    /// is paged in where it lies first, and goes back to its slot if `map`
    /// fails (frames and slots as they were).
    fn map_in_place(
        &mut self,
        at: Option<Below>,
        how: Resolution,
        frames: &mut FrameReservation<'_, L>,
        produce: Option<Produce<'_, L>>,
        map: impl FnOnce(Resolved) -> Result<(), KernError>,
    ) -> Result<Resolved, KernError> {
        let at = at.ok_or(KernError::Failure)?;
        let (pa, paged_in) = match at.page {
            PageAt::Frame(pa) => (pa, None),
            PageAt::Swapped(slot) => {
                let pa = self.page_in(frames, (at.obj, at.offset), slot)?;
                (pa, Some(slot))
            }
        };
        if how != Resolution::ZeroPage {
            VmCounters::bump(&self.ctx.counters.hits);
        }
        if let Some(p) = produce {
            p(self, pa);
        }
        let r = Resolved { pa, how };
        if let Err(e) = map(r) {
            if let Some(slot) = paged_in {
                self.undo_page_in((at.obj, at.offset), slot, pa);
            }
            return Err(e);
        }
        if let Some(slot) = paged_in {
            self.commit_page_in(slot, pa);
        }
        Ok(r)
    }

    /// The zero frame, when a read of offset `off` (nothing resident in
    /// the chain) may map it for `hold`: never where another entry writes
    /// the object directly (a `Share` sibling), because a page that
    /// sibling's store puts there must become visible to this one at
    /// once, and nothing would remove this one's translation of the zero
    /// frame. Every other holder's store goes to an object of its own.
    fn zero_page_for(&self, hold: &Hold, off: u64) -> Option<PhysAddr> {
        zero_frame_in(self.ctx, &self.g, hold, off, off + 1)
    }

    /// Whether a read of page `page` of `hold`'s window, nothing being
    /// resident there, may map the zero frame (what the map's checks ask).
    pub fn may_map_zero(&self, hold: &Hold, page: PageIndex) -> bool {
        self.offset_of(hold, page)
            .is_some_and(|off| self.zero_page_for(hold, off).is_some())
    }

    /// Whether reads through `hold` may have mapped the zero frame
    /// somewhere in its window (no other entry writes it directly).
    pub fn zero_mappable(&self, hold: &Hold) -> bool {
        if self.ctx.zero_frame().is_none() {
            return false;
        }
        let (s, e) = self.window_raw(hold);
        let mut sharers: alloc::vec::Vec<(u64, u64)> = self
            .g
            .obj(hold.obj)
            .holders
            .overlapping(s, e)
            .filter(|(id, r)| *id != hold.id && matches!(r.kind, Holder::Direct { .. }))
            .map(|(_, r)| (r.start, r.end))
            .collect();
        sharers.sort_unstable();
        // Some page of the window that no sibling writes.
        let mut at = s;
        for (a, b) in sharers {
            if a > at {
                break;
            }
            at = at.max(b);
        }
        at < e
    }

    /// Whether reads of `[lo, hi)` of `hold`'s object map the zero frame
    /// wherever nothing is resident (see [`zero_page_for`](Self::zero_page_for)).
    fn zero_page_in(&self, hold: &Hold, lo: u64, hi: u64) -> bool {
        zero_frame_in(self.ctx, &self.g, hold, lo, hi).is_some()
    }

    /// A page was copied up over `old`: siblings writing the top object
    /// directly must stop reading `old`, and `old` goes if nothing else can
    /// reach it.
    fn after_copy_up(&mut self, hold: &Hold, off: u64, old: Below) {
        let siblings = self
            .g
            .other_overlaps(hold.obj, hold.id, off, off + 1, |_| true);
        if siblings && let PageAt::Frame(pa) = old.page {
            self.unmap_everywhere(pa);
        }
        if !self.visible(old.obj, old.offset) {
            self.g.obj_mut(old.obj).pages.remove(old.offset);
            VmCounters::bump(&self.ctx.counters.reclaimed);
            self.drop_page(old.page);
        }
    }

    /// An upper bound on the frames resolving pages `[first, first + count)`
    /// of `hold`'s window for `write` (or, with no hold, of untouched
    /// memory) would take: a page paged out costs one (its page-in, or the
    /// copy-up that reads it). Concurrent calls only lower it while the
    /// caller's map stays locked: pages it sees cannot go, and sharers only
    /// add pages. The window is kept ([`keep_window`](Self::keep_window)),
    /// for a read with the chain below it: this call's own pageout leaves
    /// resident the pages the count found resident (a store's copy-up
    /// reads a paged-out source from its slot, so only its top counts).
    pub fn frames_to_resolve(
        &self,
        hold: Option<&Hold>,
        first: PageIndex,
        count: u64,
        write: bool,
    ) -> u64 {
        let Some(hold) = hold else {
            // Untouched memory: a read maps the zero frame.
            let zero = !write && self.ctx.zero_frame().is_some();
            return if zero { 0 } else { count };
        };
        self.keep_pages(hold, first, count, !write);
        let (s, _) = self.window_raw(hold);
        let first = first.get();
        if count == 1 {
            let fast = u64::from(!self.resolved_in_place(hold, s + first, write));
            debug_assert_eq!(fast, self.frames_for_runs(hold, s + first, 1, write));
            return fast;
        }
        self.frames_for_runs(hold, s + first, count, write)
    }

    /// [`frames_to_resolve`](Self::frames_to_resolve) by runs of pages:
    /// `count` pages from page `lo` of the held object.
    fn frames_for_runs(&self, hold: &Hold, lo: u64, count: u64, write: bool) -> u64 {
        let hi = lo + count;
        if !write {
            let first = self.first_present(hold.obj, lo, hi);
            let swapped = first.values().filter(|p| p.frame().is_none()).count() as u64;
            if self.zero_page_in(hold, lo, hi) {
                return swapped;
            }
            return count - first.len() as u64 + swapped;
        }
        // Only a resident top page needs no frame: a paged-out one is paged
        // in, one below is copied up (read from its slot if paged out).
        let resident = |a: u64, b: u64| self.g.obj(hold.obj).pages.count_resident(a, b);
        if matches!(self.holder(hold), Holder::Direct { .. }) {
            return count - resident(lo, hi);
        }
        // Copy-on-write pending: pages others see go to a fresh shadow (a
        // frame each); the rest are taken over (a frame where none is
        // resident). See `shared_run`.
        let seen = self.seen_by_others(hold, lo, hi);
        let seen_resident: u64 = seen.iter().map(|&(a, b)| resident(a, b)).sum();
        count - (resident(lo, hi) - seen_resident)
    }

    /// Reads `buf.len()` bytes at byte `offset` of page `page` of `hold`'s
    /// window as the chain shows it (zeros where nothing is resident, or
    /// with no hold: untouched memory). `false`, nothing read, when the
    /// bytes do not lie within the page.
    pub fn read(&self, hold: Option<&Hold>, page: PageIndex, offset: u64, buf: &mut [u8]) -> bool {
        if offset.saturating_add(buf.len() as u64) > PAGE_SIZE {
            return false;
        }
        match hold.and_then(|h| self.lookup(h, page)) {
            Some(f) => self.read_page(f.page, offset, buf),
            None => buf.fill(0),
        }
        true
    }

    /// The pages the chain shows at pages `first ..` of `hold`'s window,
    /// one per slot of `out` (`None`: nothing present, zeros; also past
    /// the window's end): one walk of the held object's pages, the objects
    /// below searched only for the pages it lacks. What a caller reading
    /// many consecutive pages looks up once ([`copy_bytes`] reads a
    /// paged-out one from the store). Good while the graph stays locked
    /// and [`evictions`](Self::evictions) does not move.
    ///
    /// [`copy_bytes`]: Self::copy_bytes
    pub fn pages_of(&self, hold: &Hold, first: PageIndex, out: &mut [Option<PageAt>]) {
        out.fill(None);
        let (s, e) = self.window_raw(hold);
        let Some(lo) = s.checked_add(first.get()).filter(|&lo| lo < e) else {
            return;
        };
        let hi = e.min(lo.saturating_add(out.len() as u64));
        let top = self.g.obj(hold.obj);
        for (off, pa) in top.pages.range(lo, hi) {
            out[(off - lo) as usize] = Some(pa);
        }
        if let Some(b) = top.backing {
            for (k, slot) in out[..(hi - lo) as usize].iter_mut().enumerate() {
                if slot.is_none() {
                    *slot = self.find(b.obj, lo + k as u64 + b.offset).map(|f| f.page);
                }
            }
        }
    }

    /// Writes `data` at byte `offset` of page `page` of `hold`'s window,
    /// which must be resident in the held object itself (resolved for
    /// writing) and hold the bytes. `false`, nothing written, otherwise.
    pub fn write(&self, hold: &Hold, page: PageIndex, offset: u64, data: &[u8]) -> bool {
        if offset.saturating_add(data.len() as u64) > PAGE_SIZE {
            return false;
        }
        let Some(off) = self.offset_of(hold, page) else {
            return false;
        };
        match self.g.obj(hold.obj).pages.get(off) {
            Some(PageAt::Frame(pa)) => {
                self.ctx.frames().mem().write(pa + offset, data);
                true
            }
            Some(PageAt::Swapped(_)) | None => false,
        }
    }

    /// Number of offsets of `hold`'s window whose page, as the chain shows
    /// it, is resident (paged-out pages not counted).
    pub fn resident(&self, hold: &Hold) -> u64 {
        let (s, e) = self.window_raw(hold);
        let first = self.first_present(hold.obj, s, e);
        first.values().filter(|p| p.frame().is_some()).count() as u64
    }

    /// Whether resolving page `off` (in pages of the held object) needs no
    /// new frame: the single-page case of [`frames_to_resolve`], taken on
    /// every fault, without building run lists.
    ///
    /// [`frames_to_resolve`]: Self::frames_to_resolve
    fn resolved_in_place(&self, hold: &Hold, off: u64, write: bool) -> bool {
        let o = self.g.obj(hold.obj);
        let top = o.pages.get(off);
        if !write {
            return match top.or_else(|| self.present_below(o.backing, off)) {
                Some(page) => page.frame().is_some(),
                None => self.zero_page_for(hold, off).is_some(),
            };
        }
        let here = matches!(top, Some(PageAt::Frame(_)));
        if here && !matches!(self.holder(hold), Holder::Direct { .. }) {
            // Copy-on-write pending: taken over only if nobody else sees it.
            return !o
                .holders
                .overlapping(off, off + 1)
                .any(|(id, _)| id != hold.id);
        }
        here
    }

    /// The first page present at page `off` of the object above
    /// `backing`, down the chain.
    fn present_below(&self, mut backing: Option<Backing>, mut off: u64) -> Option<PageAt> {
        while let Some(b) = backing {
            off += b.offset;
            let o = self.g.obj(b.obj);
            if let Some(page) = o.pages.get(off) {
                return Some(page);
            }
            backing = o.backing;
        }
        None
    }

    /// The runs of `hold`'s window (pages of the window, half-open) with
    /// no page anywhere in the chain: where a read may have mapped the
    /// zero frame. O(resident pages of the chain in the window).
    pub fn unbacked_runs(&self, hold: &Hold) -> alloc::vec::Vec<(PageIndex, PageIndex)> {
        let (s, e) = self.window_raw(hold);
        let mut runs = alloc::vec::Vec::new();
        let mut at = s;
        for &off in self.first_present(hold.obj, s, e).keys() {
            if off > at {
                runs.push((PageIndex::new(at - s), PageIndex::new(off - s)));
            }
            at = off + 1;
        }
        if at < e {
            runs.push((PageIndex::new(at - s), PageIndex::new(e - s)));
        }
        runs
    }

    /// The first page present anywhere in `obj`'s chain at each offset of
    /// `[lo, hi)` that has one.
    fn first_present(&self, obj: ObjectId, lo: u64, hi: u64) -> BTreeMap<u64, PageAt> {
        let mut seen = BTreeMap::new();
        let (mut cur, mut shift) = (Some(obj), 0u64);
        while let Some(id) = cur {
            let o = self.g.obj(id);
            for (k, page) in o.pages.range(lo + shift, hi + shift) {
                seen.entry(k - shift).or_insert(page);
            }
            cur = o.backing.map(|b| {
                shift += b.offset;
                b.obj
            });
        }
        seen
    }

    /// Objects in `hold`'s chain, its own included.
    pub fn chain_depth(&self, hold: &Hold) -> usize {
        self.depth_of(hold.obj)
    }

    pub(crate) fn depth_of(&self, obj: ObjectId) -> usize {
        let mut n = 1;
        let mut cur = self.g.obj(obj).backing;
        while let Some(b) = cur {
            n += 1;
            cur = self.g.obj(b.obj).backing;
        }
        n
    }
}
