//! VM objects: the memory behind map entries.
//!
//! An object is a sparse array of resident pages indexed by page offset.
//! Anonymous objects are zero-filled on demand. Copy-on-write uses Mach
//! shadow objects: a shadow covers a window of its *backing* object starting
//! at a page offset; a lookup walks the chain top-down, and a write copies
//! the page up into the top object.
//!
//! Reference counting is `Arc`'s: every map entry and every shadow holds one
//! strong reference. When a backing object is referenced only by its single
//! shadow it is *collapsed* into it (its pages move up, it disappears); when
//! a shadow already holds every page its backing object could supply there,
//! it *bypasses* it (points past it). Both run when references are dropped
//! and before a chain is extended, so chains stay short however many
//! fork/write/exit cycles run.
//!
//! Invariants (checked by [`VmObject::verify`]):
//! - A resident page's offset is below the object's size, its frame is in
//!   state `Object`, and its metadata names this object and offset.
//! - A shadow's window lies inside its backing object:
//!   `backing_offset + size <= backing.size`.
//! - Every live shadow listed by an object has it as its backing object.
//! - A frame belongs to at most one object.
//!
//! Locking: an object's lock is taken after its map's, and the objects of a
//! chain are locked top-down (shadow before backing). The pmap's and the
//! frame allocator's locks come after all of them. No object lock is held
//! while dropping an object reference (dropping may lock other objects).
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};

use machvm_base::{KernError, PAGE_SIZE, PhysAddr, VmProt};
use machvm_frame::{FrameAllocator, FrameState, FrameUse};
use machvm_pmap::Pmap;

/// Event counters, Mach's `vm_statistics` that are not frame counts.
#[derive(Default, Debug)]
pub struct VmCounters {
    /// Page faults handled (including ones that failed).
    pub faults: AtomicU64,
    /// Pages zero-filled on demand.
    pub zero_fill_count: AtomicU64,
    /// Pages copied because of copy-on-write.
    pub cow_faults: AtomicU64,
    /// Page lookups in object chains.
    pub lookups: AtomicU64,
    /// Lookups that found the page resident.
    pub hits: AtomicU64,
    /// Backing objects merged into their only shadow.
    pub collapses: AtomicU64,
    /// Backing objects skipped by a shadow that covered them.
    pub bypasses: AtomicU64,
}

impl VmCounters {
    /// Adds one to `counter`.
    #[inline]
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }
}

/// What every object of one VM system shares: the frames, the pmap module
/// and the counters.
pub struct VmContext {
    frames: Arc<FrameAllocator>,
    pmap: Arc<dyn Pmap>,
    next_id: AtomicU32,
    live_objects: AtomicU64,
    /// Event counters.
    pub counters: VmCounters,
}

impl VmContext {
    /// A context over `frames`, with `pmap` the machine's pmap module.
    pub fn new(frames: Arc<FrameAllocator>, pmap: Arc<dyn Pmap>) -> Arc<VmContext> {
        Arc::new(VmContext {
            frames,
            pmap,
            next_id: AtomicU32::new(1),
            live_objects: AtomicU64::new(0),
            counters: VmCounters::default(),
        })
    }

    /// The frame allocator.
    #[inline]
    pub fn frames(&self) -> &Arc<FrameAllocator> {
        &self.frames
    }

    /// The pmap module.
    #[inline]
    pub fn pmap(&self) -> &dyn Pmap {
        &*self.pmap
    }

    /// Number of objects alive.
    pub fn live_objects(&self) -> u64 {
        self.live_objects.load(Relaxed)
    }

    /// Allocates a frame for `object`'s page at `offset`, zero-filled.
    fn alloc_zeroed(&self, object: u32, offset: u64) -> Result<PhysAddr, KernError> {
        let pa = self.frames.alloc(FrameUse::Object)?;
        self.frames.mem().zero_page(pa);
        self.set_owner(pa, object, offset);
        Ok(pa)
    }

    /// Allocates a frame for `object`'s page at `offset`, copied from `src`.
    fn alloc_copy(&self, object: u32, offset: u64, src: PhysAddr) -> Result<PhysAddr, KernError> {
        let pa = self.frames.alloc(FrameUse::Object)?;
        self.frames.mem().copy_page(pa, src);
        self.set_owner(pa, object, offset);
        Ok(pa)
    }

    fn set_owner(&self, pa: PhysAddr, object: u32, offset: u64) {
        if let Some(p) = self.frames.page(pa) {
            p.set_owner(object, offset);
        }
    }

    /// Frees an object page: every translation of it goes first, everywhere.
    fn free_page(&self, pa: PhysAddr) {
        let pm = self.pmap();
        if pm.mapping_count(pa) != 0 {
            pm.flush(pm.page_protect(pa, VmProt::NONE));
        }
        if let Some(p) = self.frames.page(pa) {
            p.set_owner(0, 0);
        }
        self.frames.free(pa);
    }
}

impl core::fmt::Debug for VmContext {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VmContext")
            .field("frames", &self.frames)
            .field("live_objects", &self.live_objects())
            .finish()
    }
}

/// The object a shadow stands on, and where its window starts (in pages).
struct Backing {
    object: Arc<VmObject>,
    offset: u64,
}

struct ObjInner {
    pages: BTreeMap<u64, PhysAddr>,
    backing: Option<Backing>,
    /// Objects whose backing object this is (dead ones pruned lazily).
    shadows: Vec<Weak<VmObject>>,
}

/// Where a page lookup found its page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    /// The frame.
    pub pa: PhysAddr,
    /// 0 when found in the object asked, n when n objects down its chain.
    pub depth: usize,
}

/// What [`VmObject::resolve`] did to produce the page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// The page was already resident in the top object.
    Resident,
    /// The page lives further down the chain and may only be read: map it
    /// read-only, since it is still shared copy-on-write.
    Backing,
    /// A new zero-filled page was put in the top object.
    ZeroFilled,
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

/// A VM object (Mach's `vm_object`): anonymous memory, possibly shadowing
/// another object.
///
/// ```
/// use std::sync::Arc;
/// use machvm_frame::FrameAllocator;
/// use machvm_object::{VmContext, VmObject, Resolution};
/// use machvm_pmap::SoftPmap;
///
/// let frames = Arc::new(FrameAllocator::hosted(64 * 4096).unwrap());
/// let ctx = VmContext::new(frames.clone(), Arc::new(SoftPmap::new()));
/// let base = VmObject::new_anon(&ctx, 4);
/// assert_eq!(base.resolve(0, true, |_| Ok(())).unwrap().how, Resolution::ZeroFilled);
/// // A copy-on-write copy: reads see the base page, a write copies it up.
/// let copy = VmObject::new_shadow(base.clone(), 0, 4);
/// assert_eq!(copy.resolve(0, false, |_| Ok(())).unwrap().how, Resolution::Backing);
/// assert_eq!(copy.resolve(0, true, |_| Ok(())).unwrap().how, Resolution::CopiedUp);
/// drop(base);
/// // The base is now referenced by its shadow alone: it collapses into it.
/// VmObject::collapse(&copy);
/// assert_eq!(copy.chain_depth(), 1);
/// ```
pub struct VmObject {
    id: u32,
    size: u64,
    ctx: Arc<VmContext>,
    shared: AtomicBool,
    one_mapping: AtomicBool,
    inner: spin::Mutex<ObjInner>,
}

impl VmObject {
    fn make(ctx: &Arc<VmContext>, size: u64, backing: Option<Backing>) -> Arc<VmObject> {
        ctx.live_objects.fetch_add(1, Relaxed);
        let obj = Arc::new(VmObject {
            id: ctx.next_id.fetch_add(1, Relaxed),
            size,
            ctx: ctx.clone(),
            shared: AtomicBool::new(false),
            one_mapping: AtomicBool::new(true),
            inner: spin::Mutex::new(ObjInner {
                pages: BTreeMap::new(),
                backing: None,
                shadows: Vec::new(),
            }),
        });
        if let Some(b) = backing {
            b.object.clear_one_mapping();
            b.object.register_shadow(&obj);
            obj.inner.lock().backing = Some(b);
        }
        obj
    }

    /// A new anonymous, zero-filled object of `size` pages. Costs no frame.
    pub fn new_anon(ctx: &Arc<VmContext>, size: u64) -> Arc<VmObject> {
        Self::make(ctx, size, None)
    }

    /// A shadow of `size` pages over `backing`, starting `offset` pages into
    /// it (`vm_object_shadow`). The window is clamped to the backing object.
    pub fn new_shadow(backing: Arc<VmObject>, offset: u64, size: u64) -> Arc<VmObject> {
        let size = size.min(backing.size.saturating_sub(offset));
        let ctx = backing.ctx.clone();
        Self::make(
            &ctx,
            size,
            Some(Backing {
                object: backing,
                offset,
            }),
        )
    }

    fn register_shadow(&self, shadow: &Arc<VmObject>) {
        let mut g = self.inner.lock();
        g.shadows.retain(|w| w.strong_count() > 0);
        g.shadows.push(Arc::downgrade(shadow));
    }

    /// Identifier, unique within the context (frame metadata records it).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Size in pages.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The context this object belongs to.
    pub fn context(&self) -> &Arc<VmContext> {
        &self.ctx
    }

    /// Marks the object as shared between maps (`Share` inheritance).
    pub fn set_shared(&self) {
        self.shared.store(true, Relaxed);
    }

    /// True while only one map's entries can reach this object's pages (it
    /// was never inherited, copied or shadowed): FreeBSD's `OBJ_ONEMAPPING`.
    /// Then a deallocated range's pages can be freed at once.
    pub fn is_one_mapping(&self) -> bool {
        self.one_mapping.load(Relaxed)
    }

    /// Records that another map, copy or shadow can now reach the pages.
    pub fn clear_one_mapping(&self) {
        self.one_mapping.store(false, Relaxed);
    }

    /// True when marked shared and still referenced more than once.
    pub fn is_shared(self: &Arc<Self>) -> bool {
        self.shared.load(Relaxed) && Arc::strong_count(self) > 1
    }

    /// The windows `[offset, offset + size)` (pages of this object) that
    /// live shadows stand on — what must never be written directly. A shadow
    /// being changed right now is skipped.
    pub fn shadowed_windows(&self) -> Vec<(u64, u64)> {
        let shadows: Vec<Arc<VmObject>> = {
            let g = self.inner.lock();
            g.shadows.iter().filter_map(Weak::upgrade).collect()
        };
        shadows
            .iter()
            .filter_map(|s| {
                let sg = s.inner.try_lock()?;
                let b = sg.backing.as_ref()?;
                (core::ptr::eq(Arc::as_ptr(&b.object), self))
                    .then_some((b.offset, b.offset + s.size))
            })
            .collect()
    }

    /// Number of pages resident in this object alone.
    pub fn resident_pages(&self) -> u64 {
        self.inner.lock().pages.len() as u64
    }

    /// Number of objects in the chain, this one included.
    pub fn chain_depth(&self) -> usize {
        let g = self.inner.lock();
        1 + g.backing.as_ref().map_or(0, |b| b.object.chain_depth())
    }

    /// True if this object has a backing object.
    pub fn has_backing(&self) -> bool {
        self.inner.lock().backing.is_some()
    }

    /// Looks `offset` up along the chain without changing anything. The
    /// answer may be stale as soon as it returns; use
    /// [`with_page`](Self::with_page) to act on the page.
    pub fn lookup(&self, offset: u64) -> Option<Found> {
        self.with_page(offset, |f| f)
    }

    /// Runs `f` on the page at `offset` as the chain holds it, with the
    /// chain's locks held: the page can be neither replaced nor freed while
    /// `f` runs (a concurrent copy-up into this object, or a collapse,
    /// waits).
    pub fn with_page<R>(&self, offset: u64, f: impl FnOnce(Option<Found>) -> R) -> R {
        self.with_page_at(offset, 0, f)
    }

    fn with_page_at<R, F: FnOnce(Option<Found>) -> R>(&self, offset: u64, depth: usize, f: F) -> R {
        let g = self.inner.lock();
        if let Some(pa) = g.pages.get(&offset) {
            return f(Some(Found { pa: *pa, depth }));
        }
        match &g.backing {
            Some(b) => b.object.with_page_at(offset + b.offset, depth + 1, f),
            None => f(None),
        }
    }

    /// Number of distinct offsets in `[start, end)` with a page resident
    /// anywhere in the chain.
    pub fn resident_in_window(&self, start: u64, end: u64) -> u64 {
        let mut seen = alloc::collections::BTreeSet::new();
        self.collect_window(start, end, 0, &mut seen);
        seen.len() as u64
    }

    fn collect_window(
        &self,
        start: u64,
        end: u64,
        shift: u64,
        seen: &mut alloc::collections::BTreeSet<u64>,
    ) {
        let g = self.inner.lock();
        for off in g.pages.range(start + shift..end + shift).map(|(o, _)| *o) {
            seen.insert(off - shift);
        }
        if let Some(b) = &g.backing {
            b.object.collect_window(start, end, shift + b.offset, seen);
        }
    }

    /// Produces the page at `offset` for an access — resident in this (top)
    /// object, found down the chain, zero-filled, or, for a write, copied
    /// up — and hands it to `map` while this object is still locked, so that
    /// no concurrent copy-up or collapse can replace or free the page before
    /// it is mapped. If `map` fails, a page this call inserted is taken out
    /// again and freed. Allocation failure is `ResourceShortage` with nothing
    /// changed.
    ///
    /// A write resolution copies up into this object; when this object is
    /// referenced more than once (shared, shadowed or clipped), every
    /// translation of the page it replaces is removed in every pmap, so no
    /// map keeps reading the stale page (FreeBSD CVE-2021-29626).
    pub fn resolve(
        self: &Arc<Self>,
        offset: u64,
        write: bool,
        map: impl FnOnce(Resolved) -> Result<(), KernError>,
    ) -> Result<Resolved, KernError> {
        let ctx = &self.ctx;
        VmCounters::bump(&ctx.counters.lookups);
        if offset >= self.size {
            return Err(KernError::InvalidAddress);
        }
        let mut g = self.inner.lock();
        let below = match (g.pages.get(&offset), &g.backing) {
            (Some(_), _) | (None, None) => None,
            (None, Some(b)) => b.object.lookup(offset + b.offset),
        };
        let r = if let Some(pa) = g.pages.get(&offset) {
            VmCounters::bump(&ctx.counters.hits);
            Resolved {
                pa: *pa,
                how: Resolution::Resident,
            }
        } else {
            match (below, write) {
                (Some(found), false) => {
                    VmCounters::bump(&ctx.counters.hits);
                    Resolved {
                        pa: found.pa,
                        how: Resolution::Backing,
                    }
                }
                (Some(found), true) => {
                    VmCounters::bump(&ctx.counters.hits);
                    let pa = ctx.alloc_copy(self.id, offset, found.pa)?;
                    g.pages.insert(offset, pa);
                    VmCounters::bump(&ctx.counters.cow_faults);
                    if Arc::strong_count(self) > 1 {
                        let pm = ctx.pmap();
                        pm.flush(pm.page_protect(found.pa, VmProt::NONE));
                    }
                    Resolved {
                        pa,
                        how: Resolution::CopiedUp,
                    }
                }
                (None, _) => {
                    let pa = ctx.alloc_zeroed(self.id, offset)?;
                    g.pages.insert(offset, pa);
                    VmCounters::bump(&ctx.counters.zero_fill_count);
                    Resolved {
                        pa,
                        how: Resolution::ZeroFilled,
                    }
                }
            }
        };
        if let Err(e) = map(r) {
            let inserted = matches!(r.how, Resolution::ZeroFilled | Resolution::CopiedUp);
            let pa = if inserted {
                g.pages.remove(&offset)
            } else {
                None
            };
            drop(g);
            if let Some(pa) = pa {
                ctx.free_page(pa);
            }
            return Err(e);
        }
        Ok(r)
    }

    /// A private copy of this object's window `[offset, offset + size)`
    /// (pages): the resident pages of this object are copied now, the rest
    /// keeps coming from this object's backing chain, which nobody writes.
    ///
    /// Used to copy an object that several maps write directly (`Share`
    /// inheritance): a shadow over it would see their later writes.
    pub fn copy_eager(
        self: &Arc<Self>,
        offset: u64,
        size: u64,
    ) -> Result<Arc<VmObject>, KernError> {
        let g = self.inner.lock();
        let backing = g.backing.as_ref().map(|b| Backing {
            object: b.object.clone(),
            offset: b.offset + offset,
        });
        let copy = Self::make(&self.ctx, size, backing);
        let mut pages = BTreeMap::new();
        for (&off, &pa) in g.pages.range(offset..offset.saturating_add(size)) {
            match self.ctx.alloc_copy(copy.id, off - offset, pa) {
                Ok(new) => {
                    pages.insert(off - offset, new);
                }
                Err(e) => {
                    drop(g);
                    copy.inner.lock().pages = pages;
                    drop(copy);
                    return Err(e);
                }
            }
        }
        drop(g);
        copy.inner.lock().pages = pages;
        Ok(copy)
    }

    /// Undoes a page insertion made by [`resolve`](Self::resolve), for a
    /// caller rolling back a multi-page operation that failed later on —
    /// unless the page has reached anyone else: a translation besides the
    /// caller's own means another map holds it (and may have written it), so
    /// it stays. Since `resolve` maps pages under this object's lock, which
    /// this check holds too, no other map can be half-way through taking it.
    /// Returns whether the page was taken out.
    pub fn discard_page(&self, offset: u64) -> bool {
        let pa = {
            let mut g = self.inner.lock();
            match g.pages.get(&offset) {
                Some(&pa) if self.ctx.pmap().mapping_count(pa) <= 1 => g.pages.remove(&offset),
                _ => None,
            }
        };
        match pa {
            Some(pa) => {
                self.ctx.free_page(pa);
                true
            }
            None => false,
        }
    }

    /// Frees the resident pages of `[start, end)` of this object alone (its
    /// chain is untouched): used when the only map range using them goes.
    pub fn discard_range(&self, start: u64, end: u64) {
        let pages: Vec<PhysAddr> = {
            let mut g = self.inner.lock();
            let keys: Vec<u64> = g.pages.range(start..end).map(|(o, _)| *o).collect();
            keys.into_iter()
                .filter_map(|o| g.pages.remove(&o))
                .collect()
        };
        for pa in pages {
            self.ctx.free_page(pa);
        }
    }

    /// Reads `buf.len()` bytes at byte `offset` of the page at page offset
    /// `page` as the chain shows it (zeros where nothing is resident), with
    /// the chain locked so the page cannot be freed under the read.
    pub fn read_page_bytes(&self, page: u64, offset: u64, buf: &mut [u8]) {
        debug_assert!(offset + buf.len() as u64 <= PAGE_SIZE);
        self.with_page(page, |f| match f {
            Some(f) => self.ctx.frames.mem().read(f.pa + offset, buf),
            None => buf.fill(0),
        })
    }

    /// Writes `data` at byte `offset` of this object's own page `page`,
    /// under its lock. `false` (nothing written) when the page is not
    /// resident in this object: a writer must resolve it first.
    pub fn write_page_bytes(&self, page: u64, offset: u64, data: &[u8]) -> bool {
        debug_assert!(offset + data.len() as u64 <= PAGE_SIZE);
        let g = self.inner.lock();
        match g.pages.get(&page) {
            Some(pa) => {
                self.ctx.frames.mem().write(*pa + offset, data);
                true
            }
            None => false,
        }
    }

    /// Collapses and bypasses below `top` until neither applies
    /// (`vm_object_collapse`).
    pub fn collapse(top: &Arc<VmObject>) {
        let mut released: Vec<Arc<VmObject>> = Vec::new();
        loop {
            let mut g = top.inner.lock();
            let Some(b) = g.backing.as_ref() else { break };
            let backing = b.object.clone();
            let boff = b.offset;
            // Our clone + top's reference: only `top` holds it.
            let only_top = Arc::strong_count(&backing) == 2;
            let mut bg = backing.inner.lock();
            if only_top {
                // Collapse: move up every page top lacks, free the rest.
                let pages = core::mem::take(&mut bg.pages);
                let mut freed = Vec::new();
                for (off, pa) in pages {
                    let inside = off >= boff && off - boff < top.size;
                    if inside && !g.pages.contains_key(&(off - boff)) {
                        top.ctx.set_owner(pa, top.id, off - boff);
                        g.pages.insert(off - boff, pa);
                    } else {
                        freed.push(pa);
                    }
                }
                let next = bg.backing.take().map(|nb| Backing {
                    object: nb.object,
                    offset: nb.offset + boff,
                });
                if let Some(nb) = &next {
                    nb.object.replace_shadow(&backing, top);
                }
                drop(bg);
                let old = core::mem::replace(&mut g.backing, next);
                drop(g);
                for pa in freed {
                    top.ctx.free_page(pa);
                }
                VmCounters::bump(&top.ctx.counters.collapses);
                released.extend(old.map(|o| o.object));
                released.push(backing);
                continue;
            }
            // Bypass: top already holds every page backing could supply.
            let covered = bg
                .pages
                .range(boff..boff + top.size)
                .all(|(off, _)| g.pages.contains_key(&(off - boff)));
            if !covered {
                break;
            }
            let next = bg.backing.as_ref().map(|nb| Backing {
                object: nb.object.clone(),
                offset: nb.offset + boff,
            });
            let me = Arc::downgrade(top);
            bg.shadows
                .retain(|w| w.strong_count() > 0 && !w.ptr_eq(&me));
            drop(bg);
            if let Some(nb) = &next {
                nb.object.register_shadow(top);
            }
            let old = core::mem::replace(&mut g.backing, next);
            drop(g);
            VmCounters::bump(&top.ctx.counters.bypasses);
            released.extend(old.map(|o| o.object));
            released.push(backing);
        }
        for obj in released {
            release(obj);
        }
    }

    /// Replaces `old` by `new` in this object's shadow list.
    fn replace_shadow(&self, old: &Arc<VmObject>, new: &Arc<VmObject>) {
        let mut g = self.inner.lock();
        let old = Arc::downgrade(old);
        g.shadows
            .retain(|w| w.strong_count() > 0 && !w.ptr_eq(&old));
        g.shadows.push(Arc::downgrade(new));
    }

    /// Checks this object's invariants (see the module documentation).
    pub fn verify(self: &Arc<Self>) -> Result<(), String> {
        let g = self.inner.lock();
        let frames = &self.ctx.frames;
        for (&off, &pa) in &g.pages {
            if off >= self.size {
                return Err(format!(
                    "object {}: page at {off} beyond size {}",
                    self.id, self.size
                ));
            }
            let meta = frames
                .page(pa)
                .ok_or_else(|| format!("object {}: foreign frame {pa:?}", self.id))?;
            if meta.state() != FrameState::Object {
                return Err(format!(
                    "object {}: frame {pa:?} in state {:?}",
                    self.id,
                    meta.state()
                ));
            }
            if meta.owner() != (self.id, off) {
                return Err(format!(
                    "object {}: frame {pa:?} metadata names {:?}, not ({}, {off})",
                    self.id,
                    meta.owner(),
                    self.id
                ));
            }
        }
        if let Some(b) = &g.backing {
            if b.offset + self.size > b.object.size {
                return Err(format!(
                    "object {}: window past its backing object {}",
                    self.id, b.object.id
                ));
            }
        }
        for w in &g.shadows {
            if let Some(s) = w.upgrade() {
                let sg = s.inner.try_lock();
                // A shadow being changed right now is not checked.
                if let Some(sg) = sg {
                    if !sg
                        .backing
                        .as_ref()
                        .is_some_and(|b| Arc::ptr_eq(&b.object, self))
                    {
                        return Err(format!(
                            "object {}: listed shadow {} does not stand on it",
                            self.id, s.id
                        ));
                    }
                }
            }
        }
        let backing = g.backing.as_ref().map(|b| b.object.clone());
        drop(g);
        match backing {
            Some(b) => b.verify(),
            None => Ok(()),
        }
    }
}

/// Drops a reference to `obj`; if that leaves it referenced by exactly one
/// shadow, collapses that shadow (FreeBSD's `vm_object_deallocate`).
pub fn release(obj: Arc<VmObject>) {
    let survivor = {
        let mut g = obj.inner.lock();
        g.shadows.retain(|w| w.strong_count() > 0);
        if Arc::strong_count(&obj) == 2 && g.shadows.len() == 1 {
            g.shadows[0].upgrade()
        } else {
            None
        }
    };
    drop(obj);
    if let Some(s) = survivor {
        VmObject::collapse(&s);
    }
}

impl Drop for VmObject {
    fn drop(&mut self) {
        let inner = self.inner.get_mut();
        let pages = core::mem::take(&mut inner.pages);
        for (_, pa) in pages {
            self.ctx.free_page(pa);
        }
        self.ctx.live_objects.fetch_sub(1, Relaxed);
        if let Some(b) = inner.backing.take() {
            release(b.object);
        }
    }
}

impl core::fmt::Debug for VmObject {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "VmObject#{}({} pages)", self.id, self.size)
    }
}

#[cfg(test)]
mod tests;
