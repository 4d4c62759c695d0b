//! The object graph's storage and its holder records: creating objects,
//! adding, splitting, joining and re-kinding holds, and the copy-on-write
//! operations that change who holds what (shadowing, eager copies).

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use machvm_base::sync::Locks;

use machvm_base::{KernError, PageIndex};
use machvm_frame::FrameReservation;

use crate::pagemap::PageMap;
use crate::slots::Holders;
use crate::{CowRef, Hold, Holder, HolderId, ObjectId, Objects, PageAt};

/// One holder record: who, and the window `[start, end)` (pages of the
/// object held).
#[derive(Clone, Copy, Debug)]
pub(crate) struct HolderRec {
    pub(crate) kind: Holder,
    pub(crate) start: u64,
    pub(crate) end: u64,
}

impl HolderRec {
    pub(crate) fn overlaps(&self, start: u64, end: u64) -> bool {
        self.start < end && start < self.end
    }
}

/// What a shadow stands on: its backing object, where its window starts
/// there (in pages) and the shadow's holder record on it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Backing {
    pub(crate) obj: ObjectId,
    pub(crate) offset: u64,
    pub(crate) holder: HolderId,
}

/// A VM object (Mach's `vm_object`): anonymous memory, possibly shadowing
/// another object. Alone on its cache lines: faults in two objects take
/// page-map locks that share no line.
#[repr(align(128))]
pub(crate) struct Object<L: Locks> {
    pub(crate) size: u64,
    pub(crate) pages: PageMap<L>,
    pub(crate) backing: Option<Backing>,
    pub(crate) holders: Holders,
}

/// Every object of a context, by id. Slot 0 is never used, so that id 0
/// can mean "no owner" in frame metadata. Objects are boxed: a slot costs 8
/// bytes, an object exactly its size.
pub(crate) struct Graph<L: Locks> {
    slots: Vec<Option<Box<Object<L>>>>,
    free_slots: Vec<u32>,
    live: u64,
}

impl<L: Locks> Graph<L> {
    pub(crate) fn new() -> Graph<L> {
        Graph {
            slots: alloc::vec![None],
            free_slots: Vec::new(),
            live: 0,
        }
    }

    pub(crate) fn live(&self) -> u64 {
        self.live
    }

    /// The object `id`. Every id a caller can name is live (holds and
    /// records keep their objects), so a miss is a broken graph.
    pub(crate) fn obj(&self, id: ObjectId) -> &Object<L> {
        match self.slots.get(id.0 as usize) {
            Some(Some(o)) => o,
            _ => panic!("object graph: {id:?} is not live"),
        }
    }

    pub(crate) fn obj_mut(&mut self, id: ObjectId) -> &mut Object<L> {
        match self.slots.get_mut(id.0 as usize) {
            Some(Some(o)) => o,
            _ => panic!("object graph: {id:?} is not live"),
        }
    }

    pub(crate) fn try_obj(&self, id: ObjectId) -> Option<&Object<L>> {
        self.slots.get(id.0 as usize).and_then(Option::as_deref)
    }

    /// Every live object, with its id.
    pub(crate) fn objects(&self) -> impl Iterator<Item = (ObjectId, &Object<L>)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, o)| o.as_deref().map(|o| (ObjectId(i as u32), o)))
    }

    pub(crate) fn insert(&mut self, o: Object<L>) -> ObjectId {
        let o = Box::new(o);
        self.live += 1;
        match self.free_slots.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(o);
                ObjectId(i)
            }
            None => {
                self.slots.push(Some(o));
                ObjectId((self.slots.len() - 1) as u32)
            }
        }
    }

    pub(crate) fn remove(&mut self, id: ObjectId) -> Option<Object<L>> {
        let o = self.slots.get_mut(id.0 as usize)?.take()?;
        self.live -= 1;
        self.free_slots.push(id.0);
        Some(*o)
    }

    pub(crate) fn add_record(&mut self, obj: ObjectId, rec: HolderRec) -> HolderId {
        self.obj_mut(obj).holders.insert(rec)
    }

    pub(crate) fn rec(&self, obj: ObjectId, id: HolderId) -> &HolderRec {
        match self.obj(obj).holders.get(&id) {
            Some(r) => r,
            None => panic!("object graph: {obj:?} has no holder {id:?}"),
        }
    }

    pub(crate) fn set_kind(&mut self, obj: ObjectId, id: HolderId, kind: Holder) {
        self.obj_mut(obj).holders.set_kind(&id, kind);
    }

    pub(crate) fn set_window(&mut self, obj: ObjectId, id: HolderId, start: u64, end: u64) {
        self.obj_mut(obj).holders.set_window(&id, start, end);
    }

    /// True when a record of `obj` other than `except` overlaps
    /// `[start, end)` and satisfies `what`.
    pub(crate) fn other_overlaps(
        &self,
        obj: ObjectId,
        except: HolderId,
        start: u64,
        end: u64,
        what: impl Fn(Holder) -> bool,
    ) -> bool {
        self.obj(obj)
            .holders
            .overlapping(start, end)
            .any(|(id, r)| id != except && what(r.kind))
    }
}

impl<L: Locks> Objects<'_, L> {
    /// A new anonymous, zero-filled object of `pages` pages, held whole by
    /// `holder`. Costs no frame.
    pub fn create(&mut self, pages: u64, holder: Holder) -> Hold {
        let obj = self.g.insert(Object {
            size: pages,
            pages: PageMap::for_size(pages),
            backing: None,
            holders: Holders::new(),
        });
        let id = self.g.add_record(
            obj,
            HolderRec {
                kind: holder,
                start: 0,
                end: pages,
            },
        );
        Hold { obj, id }
    }

    /// Who holds `hold`.
    pub fn holder(&self, hold: &Hold) -> Holder {
        self.g.rec(hold.obj, hold.id).kind
    }

    /// The window of `hold`: `[start, end)` in pages of its object.
    pub fn window(&self, hold: &Hold) -> (PageIndex, PageIndex) {
        let (s, e) = self.window_raw(hold);
        (PageIndex::new(s), PageIndex::new(e))
    }

    /// [`window`](Self::window) as plain numbers, for the graph's own
    /// arithmetic.
    pub(crate) fn window_raw(&self, hold: &Hold) -> (u64, u64) {
        let r = self.g.rec(hold.obj, hold.id);
        (r.start, r.end)
    }

    /// True when another holder writes a window overlapping `hold`'s
    /// directly: it sees this window's writes (SPEC's `shared`).
    pub fn is_shared(&self, hold: &Hold) -> bool {
        let (s, e) = self.window_raw(hold);
        self.g.other_overlaps(hold.obj, hold.id, s, e, |k| {
            matches!(k, Holder::Direct { .. })
        })
    }

    /// True when no other holder's window overlaps `hold`'s: nobody else
    /// can see any page of it.
    pub fn is_alone(&self, hold: &Hold) -> bool {
        let (s, e) = self.window_raw(hold);
        !self.g.other_overlaps(hold.obj, hold.id, s, e, |_| true)
    }

    /// The windows of `hold`'s object that holders other than `hold` see,
    /// within `[lo, hi)`, merged and in order.
    pub(crate) fn seen_by_others(&self, hold: &Hold, lo: u64, hi: u64) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = self
            .g
            .obj(hold.obj)
            .holders
            .overlapping(lo, hi)
            .filter(|&(id, _)| id != hold.id)
            .map(|(_, r)| (r.start.max(lo), r.end.min(hi)))
            .collect();
        v.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(v.len());
        for (s, e) in v {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        merged
    }

    /// The run of pages of `hold`'s window around page `page` that other
    /// holders either all see or none sees: `(first, end, seen)` in pages of
    /// the window. A copy-on-write entry resolves a write per run: it takes
    /// over the pages nobody else sees and shadows only the others, so that
    /// a page is copied only when somebody else can still see it.
    pub fn shared_run(&self, hold: &Hold, page: PageIndex) -> (PageIndex, PageIndex, bool) {
        let (s, e) = self.window_raw(hold);
        let off = s + page.get();
        let (mut lo, mut hi) = (s, e);
        let run = |a: u64, b: u64| (PageIndex::new(a - s), PageIndex::new(b - s));
        for (a, b) in self.seen_by_others(hold, s, e) {
            if a <= off && off < b {
                let (first, end) = run(a, b);
                return (first, end, true);
            }
            if b <= off {
                lo = b;
            } else {
                hi = hi.min(a);
                break;
            }
        }
        let (first, end) = run(lo, hi);
        (first, end, false)
    }

    /// Number of holder records naming `map` (a map's `verify` compares it
    /// with its entries).
    pub fn holds_of_map(&self, map: u64) -> usize {
        self.g
            .objects()
            .flat_map(|(_, o)| o.holders.values())
            .filter(|r| r.kind.map() == Some(map))
            .count()
    }

    /// Splits `hold` before page `at` of its window: `hold` keeps the head,
    /// the returned hold (same holder) has the tail. `at` must lie strictly
    /// inside the window.
    pub fn split(&mut self, hold: &Hold, at: PageIndex) -> Hold {
        let pages = at.get();
        let r = *self.g.rec(hold.obj, hold.id);
        debug_assert!(
            pages > 0 && r.start + pages < r.end,
            "split outside the window"
        );
        let at = (r.start + pages).min(r.end);
        self.g.set_window(hold.obj, hold.id, r.start, at);
        let id = self.g.add_record(
            hold.obj,
            HolderRec {
                kind: r.kind,
                start: at,
                end: r.end,
            },
        );
        Hold { obj: hold.obj, id }
    }

    /// True when `tail` continues `head` exactly: one object, contiguous
    /// windows, the same holder.
    pub fn can_join(&self, head: &Hold, tail: &Hold) -> bool {
        if head.obj != tail.obj {
            return false;
        }
        let (h, t) = (self.g.rec(head.obj, head.id), self.g.rec(tail.obj, tail.id));
        h.end == t.start && h.kind == t.kind
    }

    /// Merges `tail` into `head` when [`can_join`](Self::can_join); hands
    /// it back otherwise. Nothing becomes visible or invisible.
    pub fn join(&mut self, head: &Hold, tail: Hold) -> Result<(), Hold> {
        if !self.can_join(head, &tail) {
            return Err(tail);
        }
        let end = self.g.rec(tail.obj, tail.id).end;
        self.g.obj_mut(tail.obj).holders.remove(&tail.id);
        let start = self.g.rec(head.obj, head.id).start;
        self.g.set_window(head.obj, head.id, start, end);
        Ok(())
    }

    /// Another holder of exactly `hold`'s window, e.g. the child's entry of
    /// a `Share` fork.
    pub fn share(&mut self, hold: &Hold, holder: Holder) -> Hold {
        let (s, e) = self.window(hold);
        self.share_part(hold, PageIndex::new(0), e.since(s), holder)
    }

    /// Another holder of pages `[first, first + count)` of `hold`'s window
    /// (clamped to it), e.g. a destination entry taking part of a copy.
    pub fn share_part(
        &mut self,
        hold: &Hold,
        first: PageIndex,
        count: u64,
        holder: Holder,
    ) -> Hold {
        let r = *self.g.rec(hold.obj, hold.id);
        let start = r.start.saturating_add(first.get()).min(r.end);
        let end = start.saturating_add(count).min(r.end);
        debug_assert!(start < end, "an empty part of a window");
        let id = self.g.add_record(
            hold.obj,
            HolderRec {
                kind: holder,
                start,
                end,
            },
        );
        Hold { obj: hold.obj, id }
    }

    /// Marks `hold` copy-on-write pending (it stops writing directly), or a
    /// copy's range as now held by a map entry. Changes what nobody can see.
    pub fn set_needs_copy(&mut self, hold: &Hold, map: u64) {
        self.g
            .set_kind(hold.obj, hold.id, Holder::NeedsCopy { map });
    }

    /// Before the first write through a copy-on-write holder: when nobody
    /// else can see the window, the holder simply takes it over; otherwise a
    /// fresh shadow is put on top (`vm_object_shadow`) and `hold` moves to
    /// it. Either way `hold` ends `Direct` for `map`. Costs no frame.
    pub fn make_writable(&mut self, hold: &mut Hold, map: u64) {
        if matches!(self.holder(hold), Holder::Direct { .. }) {
            return;
        }
        if self.is_alone(hold) {
            self.g.set_kind(hold.obj, hold.id, Holder::Direct { map });
            return;
        }
        let r = *self.g.rec(hold.obj, hold.id);
        let shadow = self.g.insert(Object {
            size: r.end - r.start,
            pages: PageMap::for_size(r.end - r.start),
            backing: None,
            holders: Holders::new(),
        });
        // The shadow's record replaces the holder's: the same window, so
        // nothing becomes visible or invisible.
        self.g.obj_mut(hold.obj).holders.remove(&hold.id);
        let on_backing = self.g.add_record(
            hold.obj,
            HolderRec {
                kind: Holder::Shadow(shadow),
                ..r
            },
        );
        self.g.obj_mut(shadow).backing = Some(crate::graph::Backing {
            obj: hold.obj,
            offset: r.start,
            holder: on_backing,
        });
        let id = self.g.add_record(
            shadow,
            HolderRec {
                kind: Holder::Direct { map },
                start: 0,
                end: r.end - r.start,
            },
        );
        *hold = Hold { obj: shadow, id };
    }

    /// Undoes [`make_writable`](Self::make_writable)'s shadow when the
    /// store it was for failed: `hold`'s object — a shadow with no page and
    /// no other holder — goes, and `hold` is copy-on-write again on the
    /// window below. `false` (nothing done) if it is not such a shadow.
    pub fn unshadow(&mut self, hold: &mut Hold, map: u64) -> bool {
        let s = self.g.obj(hold.obj);
        let Some(b) = s.backing else { return false };
        if !s.pages.is_empty() || s.holders.len() != 1 {
            return false;
        }
        let size = s.size;
        self.g.remove(hold.obj);
        self.g.obj_mut(b.obj).holders.remove(&b.holder);
        let rec = HolderRec {
            kind: Holder::NeedsCopy { map },
            start: b.offset,
            end: b.offset + size,
        };
        let id = self.g.add_record(b.obj, rec);
        *hold = Hold { obj: b.obj, id };
        true
    }

    /// The runs of pages of `hold`'s window that other holders see, as
    /// `[first, end)` pages of the window, in order.
    pub fn shared_runs(&self, hold: &Hold) -> Vec<(PageIndex, PageIndex)> {
        let (s, e) = self.window_raw(hold);
        self.seen_by_others(hold, s, e)
            .into_iter()
            .map(|(a, b)| (PageIndex::new(a - s), PageIndex::new(b - s)))
            .collect()
    }

    /// Frames [`cow_share`](Self::cow_share) of pages `[first, first +
    /// count)` of `hold`'s window will take once the hold is clipped to
    /// them: the resident pages of a window others write directly (it is
    /// copied eagerly), else none.
    pub fn cow_frames(&self, hold: &Hold, first: PageIndex, count: u64) -> u64 {
        if !matches!(self.holder(hold), Holder::Direct { .. }) {
            return 0;
        }
        let (s, e) = self.window_raw(hold);
        let lo = s.saturating_add(first.get()).min(e);
        let hi = lo.saturating_add(count).min(e);
        let shared = self.g.other_overlaps(hold.obj, hold.id, lo, hi, |k| {
            matches!(k, Holder::Direct { .. })
        });
        if !shared {
            return 0;
        }
        self.g.obj(hold.obj).pages.count(lo, hi)
    }

    /// A copy-on-write view of `hold`'s window for a new holder (a copy's
    /// range, or the child's entry of a `Copy` fork), as copy-in and fork
    /// take it:
    /// - a window others write directly (`Share`) cannot be shadowed — they
    ///   keep writing it — so its resident pages are copied now into a
    ///   private object standing on the same backing (frames from
    ///   `frames`; [`cow_frames`](Self::cow_frames) counts them);
    /// - otherwise the new holder shares the window copy-on-write, and a
    ///   `Direct` `hold` becomes `NeedsCopy` (its translations must lose
    ///   `WRITE`: `write_protect`).
    ///
    /// A map entry's new holder given as `NeedsCopy` comes back `Direct`
    /// when the object is private to it.
    pub fn cow_share(
        &mut self,
        hold: &Hold,
        holder: Holder,
        frames: &mut FrameReservation<'_, L>,
    ) -> Result<CowRef, KernError> {
        let eager = matches!(self.holder(hold), Holder::Direct { .. }) && self.is_shared(hold);
        self.cow_share_as(hold, holder, frames, eager)
    }

    /// [`cow_share`](Self::cow_share) of a window whose pages must stay
    /// where they are and writable (a wired entry's, SPEC §7): its
    /// resident pages are always copied now, and `hold` is left as it was.
    /// [`copy_frames`](Self::copy_frames) counts the frames.
    pub fn copy_share(
        &mut self,
        hold: &Hold,
        holder: Holder,
        frames: &mut FrameReservation<'_, L>,
    ) -> Result<CowRef, KernError> {
        self.cow_share_as(hold, holder, frames, true)
    }

    /// Frames [`copy_share`](Self::copy_share) of pages `[first, first +
    /// count)` of `hold`'s window takes once the hold is clipped to them:
    /// the held object's resident pages there.
    pub fn copy_frames(&self, hold: &Hold, first: PageIndex, count: u64) -> u64 {
        let (s, e) = self.window_raw(hold);
        let lo = s.saturating_add(first.get()).min(e);
        let hi = lo.saturating_add(count).min(e);
        self.g.obj(hold.obj).pages.count(lo, hi)
    }

    fn cow_share_as(
        &mut self,
        hold: &Hold,
        holder: Holder,
        frames: &mut FrameReservation<'_, L>,
        eager: bool,
    ) -> Result<CowRef, KernError> {
        let kind = self.holder(hold);
        if eager {
            let private = match holder {
                Holder::NeedsCopy { map } => Holder::Direct { map },
                other => other,
            };
            let hold = self.copy_eager(hold, private, frames)?;
            return Ok(CowRef {
                hold,
                write_protect: false,
            });
        }
        let write_protect = if let Holder::Direct { map } = kind {
            self.set_needs_copy(hold, map);
            true
        } else {
            false
        };
        Ok(CowRef {
            hold: self.share(hold, holder),
            write_protect,
        })
    }

    /// Shortens `hold`'s chain where its object covers what a backing
    /// object could supply (bypass; objects left held by one shadow alone
    /// collapse into it). Nothing becomes visible or invisible, but pages
    /// move between objects: callers that count frames do this first.
    /// Returns whether anything moved (a count taken before is then stale).
    pub fn shorten_chain(&mut self, hold: &Hold) -> bool {
        self.bypass(hold.obj)
    }

    /// A private object for `holder` with a copy of `hold`'s window: the
    /// window's resident pages copied now, the rest still coming from the
    /// held object's backing chain, which nobody writes directly.
    fn copy_eager(
        &mut self,
        hold: &Hold,
        holder: Holder,
        frames: &mut FrameReservation<'_, L>,
    ) -> Result<Hold, KernError> {
        let (s, e) = self.window_raw(hold);
        let src: Vec<(u64, PageAt)> = self.g.obj(hold.obj).pages.range(s, e);
        let copy = self.create(e - s, holder);
        let id = copy.obj.0;
        let mut pages = BTreeMap::new();
        for (o, page) in src {
            // A paged-out page is read from its slot into the new frame.
            match self.fill_from(frames, id, o - s, page) {
                Ok(new) => {
                    pages.insert(o - s, PageAt::Frame(new));
                }
                Err(err) => {
                    // Unreachable with a reservation from `cow_frames`.
                    for pa in pages.into_values().filter_map(PageAt::frame) {
                        self.free_unmapped(pa);
                    }
                    self.release(copy);
                    return Err(err);
                }
            }
        }
        let size = self.g.obj(copy.obj).size;
        for pa in pages.values().filter_map(|p| p.frame()) {
            self.activate(pa);
        }
        self.g.obj_mut(copy.obj).pages = PageMap::from_pages(size, pages);
        if let Some(b) = self.g.obj(hold.obj).backing {
            let rec = HolderRec {
                kind: Holder::Shadow(copy.obj),
                start: b.offset + s,
                end: b.offset + e,
            };
            let on_backing = self.g.add_record(b.obj, rec);
            self.g.obj_mut(copy.obj).backing = Some(Backing {
                obj: b.obj,
                offset: b.offset + s,
                holder: on_backing,
            });
        }
        Ok(copy)
    }
}
