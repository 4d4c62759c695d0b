//! What every object of one VM system shares: the frames, the pmap module,
//! the object graph under its lock, the event counters and the audit.

use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use machvm_base::sync::{Locks, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard, SpinLocks};
use machvm_base::{KernError, PhysAddr, VmProt};
use machvm_frame::{FrameAllocator, FrameReservation, FrameUse};
use machvm_pager::Pager;
use machvm_pmap::Pmap;

use crate::graph::Graph;
use crate::pageout::Keep;

/// Shards of a [`Counter`]: CPUs beyond share.
const COUNTER_SHARDS: usize = 16;

/// One shard, alone on its cache lines.
#[derive(Default, Debug)]
#[repr(align(128))]
struct Shard(AtomicU64);

/// An event counter spread over one cache line per CPU (or thread,
/// `machvm_base::sync::cpu_slot`): a bump writes a line no other CPU's
/// bumps write, so faults on different CPUs do not pass it back and forth.
/// Reading sums the shards.
#[derive(Default, Debug)]
pub struct Counter([Shard; COUNTER_SHARDS]);

impl Counter {
    /// Adds one.
    #[inline]
    pub fn bump(&self) {
        self.add(1);
    }

    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        let shard = machvm_base::sync::cpu_slot() % COUNTER_SHARDS;
        self.0[shard].0.fetch_add(n, Relaxed);
    }

    /// The count (a sum over the shards: exact at a quiet moment).
    pub fn load(&self, order: core::sync::atomic::Ordering) -> u64 {
        self.0.iter().map(|s| s.0.load(order)).sum()
    }
}

/// Event counters, Mach's `vm_statistics` that are not frame counts.
#[derive(Default, Debug)]
pub struct VmCounters {
    /// Page faults handled (including ones that failed).
    pub faults: Counter,
    /// Pages zero-filled on demand.
    pub zero_fill_count: Counter,
    /// Pages copied because of copy-on-write.
    pub cow_faults: Counter,
    /// Page lookups in object chains.
    pub lookups: Counter,
    /// Lookups that found the page resident.
    pub hits: Counter,
    /// Backing objects merged into their only shadow.
    pub collapses: Counter,
    /// Backing objects skipped by a shadow that covered them.
    pub bypasses: Counter,
    /// Pages freed because nothing could reach them any more.
    pub reclaimed: Counter,
    /// Pages read back from the pager (a fault on a paged-out page).
    pub pageins: Counter,
    /// Pages written to the pager to free their frames.
    pub pageouts: Counter,
    /// Inactive pages found referenced by pageout and put back on the
    /// active queue.
    pub reactivations: Counter,
}

impl VmCounters {
    /// Adds one to `counter`.
    #[inline]
    pub fn bump(counter: &Counter) {
        counter.bump();
    }
}

/// SPEC §6: what the system holds, at a quiet moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmAudit {
    /// Object pages resident in frames (page-table frames not counted).
    pub resident_pages: u64,
    /// Resident pages some map entry or live copy can reach.
    pub reachable_pages: u64,
    /// `resident_pages - reachable_pages`.
    pub unreachable_pages: u64,
    /// Map entries over all live maps.
    pub entries: u64,
    /// Pairs of adjacent entries of one map that could be one entry.
    pub mergeable_neighbours: u64,
    /// Objects in the longest chain.
    pub max_chain_depth: u64,
    /// Pages of wired map entries over all live maps (SPEC §7), each
    /// entry's pages once.
    pub wired_entry_pages: u64,
    /// Wirings the frames count (`FrameAllocator::wirings`): equal to
    /// `wired_entry_pages` after every call, since each wired entry holds
    /// one wiring on each frame of its window.
    pub frame_wirings: u64,
    /// Object pages paged out to swap slots (SPEC §8): present, not
    /// resident.
    pub paged_out_pages: u64,
    /// Paged-out pages no map entry or live copy can reach (0 after every
    /// call: freeing an object frees its slots).
    pub unreachable_paged_out: u64,
    /// Swap slots in use in the context's pager (0 without one): equal to
    /// `paged_out_pages` after every call, each slot held by one page.
    pub swap_slots_in_use: u64,
}

/// A layer above the objects whose entries the audit counts: the map layer
/// registers every map with [`VmContext::register_audit`].
pub trait AuditEntries: Send + Sync {
    /// Adds this map's entries and mergeable neighbour pairs to `audit`.
    fn audit_entries(&self, audit: &mut VmAudit);
}

/// What every object of one VM system shares: the frames, the pmap module,
/// the object graph and the counters.
pub struct VmContext<L: Locks = SpinLocks> {
    frames: Arc<FrameAllocator<L>>,
    pmap: Arc<dyn Pmap>,
    graph: RwLock<L, Graph<L>>,
    audited: Mutex<L, Vec<Weak<dyn AuditEntries>>>,
    /// Event counters.
    pub counters: VmCounters,
    /// Debug builds check every map's invariants after each change while
    /// set (FreeBSD's `debug.vmmap_check`); release builds never do.
    consistency_checks: AtomicBool,
    /// Unique among the contexts of this process (never reused).
    id: u64,
    /// The frame every read of never-written memory maps (`None` when none
    /// was free at creation: such reads then zero-fill).
    zero: Option<PhysAddr>,
    /// The default pager for anonymous memory (SPEC §8), if any: without
    /// one nothing is ever paged out.
    pager: Option<Arc<dyn Pager>>,
    /// Pages paged out so far: a caller that keeps frame addresses across
    /// a point where pageout may run checks it did not move.
    pub(crate) evictions: AtomicU64,
}

static NEXT_CONTEXT_ID: AtomicU64 = AtomicU64::new(1);

impl<L: Locks> VmContext<L> {
    /// A context over `frames`, with `pmap` the machine's pmap module.
    /// Takes the allocator's shared zero frame (made now if it is not yet:
    /// so that `free_frames` never moves for it later).
    ///
    /// Every layer above works in a context: `machvm-map`'s maps, the copy
    /// calls, the façade's `VmSystem`. Here over 1 MiB of simulated RAM and
    /// the software reference pmap; a kernel passes its direct-mapped
    /// frames and an `X86Pmap` with its `Mmu`.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use machvm_frame::FrameAllocator;
    /// use machvm_object::VmContext;
    /// use machvm_pmap::SoftPmap;
    ///
    /// let frames = Arc::new(FrameAllocator::hosted(1 << 20).unwrap());
    /// let free = frames.free_frames();
    /// let ctx = VmContext::new(frames, Arc::new(SoftPmap::new()));
    /// // One frame is the context's own: the zero frame that reads of
    /// // never-written memory map.
    /// assert_eq!(ctx.frames().free_frames(), free - 1);
    /// assert_eq!(ctx.audit().resident_pages, 0);
    /// ```
    pub fn new(frames: Arc<FrameAllocator<L>>, pmap: Arc<dyn Pmap>) -> Arc<VmContext<L>> {
        VmContext::build(frames, pmap, None)
    }

    /// A context whose anonymous memory pages out to `pager` when frames
    /// run low (SPEC §8): calls that need frames page the least recently
    /// used unwired pages out first, and a fault on a paged-out page pages
    /// it back in. The pager must serve this context alone (its slots are
    /// audited against the context's paged-out pages).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use machvm_frame::FrameAllocator;
    /// use machvm_object::VmContext;
    /// use machvm_pager::{DefaultPager, MemStore};
    /// use machvm_pmap::SoftPmap;
    ///
    /// let frames = Arc::new(FrameAllocator::hosted(1 << 20).unwrap());
    /// let swap = DefaultPager::new(MemStore::new(256).unwrap()).unwrap();
    /// let ctx = VmContext::with_pager(frames, Arc::new(SoftPmap::new()), Arc::new(swap));
    /// assert_eq!(ctx.pager().map(|p| p.free_slots()), Some(256));
    /// ```
    pub fn with_pager(
        frames: Arc<FrameAllocator<L>>,
        pmap: Arc<dyn Pmap>,
        pager: Arc<dyn Pager>,
    ) -> Arc<VmContext<L>> {
        VmContext::build(frames, pmap, Some(pager))
    }

    fn build(
        frames: Arc<FrameAllocator<L>>,
        pmap: Arc<dyn Pmap>,
        pager: Option<Arc<dyn Pager>>,
    ) -> Arc<VmContext<L>> {
        let zero = frames.init_zero_frame();
        if pager.is_some() {
            frames.enable_queues();
        }
        Arc::new(VmContext {
            zero,
            frames,
            pmap,
            graph: RwLock::<L, _>::new(Graph::new()),
            audited: Mutex::<L, _>::new(Vec::new()),
            counters: VmCounters::default(),
            consistency_checks: AtomicBool::new(false),
            id: NEXT_CONTEXT_ID.fetch_add(1, Relaxed),
            pager,
            evictions: AtomicU64::new(0),
        })
    }

    /// The context's pager, if it pages.
    #[inline]
    pub fn pager(&self) -> Option<&dyn Pager> {
        self.pager.as_deref()
    }

    /// Pages paged out so far (see [`Objects::evictions`]).
    #[inline]
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Relaxed)
    }

    /// This context's id: unique among the contexts of this process, never
    /// reused (what a reference made in one graph is checked against
    /// before it is used in another).
    #[inline]
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Turns on or off the checks debug builds run after every change to a
    /// map of this context (off at start: each check is O(entries +
    /// translations + graph)). A broken invariant then panics at the change
    /// that broke it, naming the rule. Release builds ignore it.
    pub fn set_consistency_checks(&self, on: bool) {
        self.consistency_checks.store(on, Relaxed);
    }

    /// True when debug builds check every change (see
    /// [`set_consistency_checks`](Self::set_consistency_checks)).
    #[inline]
    pub fn consistency_checks(&self) -> bool {
        cfg!(debug_assertions) && self.consistency_checks.load(Relaxed)
    }

    /// The frame allocator.
    #[inline]
    pub fn frames(&self) -> &Arc<FrameAllocator<L>> {
        &self.frames
    }

    /// The shared zero frame reads of never-written memory map, if any.
    #[inline]
    pub fn zero_frame(&self) -> Option<PhysAddr> {
        self.zero
    }

    /// The pmap module.
    #[inline]
    pub fn pmap(&self) -> &dyn Pmap {
        &*self.pmap
    }

    /// Locks the object graph exclusively: every change of structure, and
    /// every page taken out, happens under it. Take it after any map lock,
    /// never the other way round.
    #[inline]
    pub fn objects(&self) -> Objects<'_, L> {
        Objects {
            ctx: self,
            g: machvm_base::sync::write::<L, _>(&self.graph),
            keep: Keep::default(),
        }
    }

    /// Locks the object graph shared: the structure (objects, holders,
    /// chains) stays as it is while held, and only pages go in, each by
    /// the busy/wait protocol (the fault fast path). Same order as
    /// [`objects`](Self::objects).
    #[inline]
    pub fn shared_objects(&self) -> SharedObjects<'_, L> {
        SharedObjects {
            ctx: self,
            g: self.graph.read(),
        }
    }

    /// Number of objects alive.
    pub fn live_objects(&self) -> u64 {
        self.graph.read().live()
    }

    /// Registers a holder of entries for [`audit`](Self::audit).
    pub fn register_audit(&self, source: Weak<dyn AuditEntries>) {
        let mut list = self.audited.lock();
        list.retain(|w| w.strong_count() > 0);
        list.push(source);
    }

    /// SPEC §6's audit. Call it at a quiet moment: the maps and the graph
    /// are read one after the other, each under its own lock.
    pub fn audit(&self) -> VmAudit {
        let sources: Vec<Arc<dyn AuditEntries>> = self
            .audited
            .lock()
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        let mut a = VmAudit::default();
        for s in &sources {
            s.audit_entries(&mut a);
        }
        drop(sources);
        self.objects().audit_into(&mut a);
        a
    }
}

impl<L: Locks> core::fmt::Debug for VmContext<L> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VmContext")
            .field("frames", &self.frames)
            .field("live_objects", &self.live_objects())
            .finish()
    }
}

/// The object graph of a context, locked: every operation on objects and
/// holds is a method of this guard. Dropping it unlocks the graph.
pub struct Objects<'a, L: Locks = SpinLocks> {
    pub(crate) ctx: &'a VmContext<L>,
    pub(crate) g: RwLockWriteGuard<'a, L, Graph<L>>,
    /// What this call's pageout must spare (see [`Objects::keep_window`]).
    pub(crate) keep: Keep,
}

/// The object graph of a context, locked shared (see
/// [`VmContext::shared_objects`]): lookups, and faults that only put a
/// page in (`resolve`). Dropping it unlocks the graph.
pub struct SharedObjects<'a, L: Locks = SpinLocks> {
    pub(crate) ctx: &'a VmContext<L>,
    pub(crate) g: RwLockReadGuard<'a, L, Graph<L>>,
}

impl<'a, L: Locks> Objects<'a, L> {
    /// The context.
    pub fn context(&self) -> &'a VmContext<L> {
        self.ctx
    }

    /// A reservation that allocates object frames on demand, for a
    /// single-step operation.
    pub fn on_demand(&self) -> FrameReservation<'a, L> {
        FrameReservation::on_demand(&self.ctx.frames, FrameUse::Object)
    }

    /// Takes a frame for page `offset` of object `obj`, zero-filled.
    pub(crate) fn fill_zero(
        &self,
        frames: &mut FrameReservation<'_, L>,
        obj: u32,
        offset: u64,
    ) -> Result<PhysAddr, KernError> {
        let pa = frames.take()?;
        self.ctx.frames.mem().zero_page(pa);
        self.set_owner(pa, obj, offset);
        Ok(pa)
    }

    /// Takes a frame for page `offset` of object `obj`, copied from `src`.
    pub(crate) fn fill_copy(
        &self,
        frames: &mut FrameReservation<'_, L>,
        obj: u32,
        offset: u64,
        src: PhysAddr,
    ) -> Result<PhysAddr, KernError> {
        let pa = frames.take()?;
        self.ctx.frames.mem().copy_page(pa, src);
        self.set_owner(pa, obj, offset);
        Ok(pa)
    }

    pub(crate) fn set_owner(&self, pa: PhysAddr, obj: u32, offset: u64) {
        let offset = machvm_base::PageIndex::new(offset);
        if let Some(p) = self.ctx.frames.page(pa) {
            p.set_owner(obj, offset);
        }
    }

    /// Frees an object page: every translation of it goes first, everywhere.
    /// Puts a page that just became resident in an object at the tail of
    /// the active queue (nothing when the system does not page).
    pub(crate) fn activate(&self, pa: PhysAddr) {
        self.ctx.frames.enqueue(pa, machvm_frame::PageQueue::Active);
    }

    /// Gives a present page back: a frame is freed, a slot forgotten.
    pub(crate) fn drop_page(&self, page: crate::PageAt) {
        match page {
            crate::PageAt::Frame(pa) => self.free_page(pa),
            crate::PageAt::Swapped(slot) => self.forget_slot(slot),
        }
    }

    /// Frees a swap slot whose page nothing holds any more.
    pub(crate) fn forget_slot(&self, slot: machvm_pager::SwapSlot) {
        match self.ctx.pager() {
            Some(p) => p.forget(slot),
            None => debug_assert!(false, "a swapped page without a pager"),
        }
    }

    pub(crate) fn free_page(&self, pa: PhysAddr) {
        self.unmap_everywhere(pa);
        self.set_owner(pa, 0, 0);
        self.ctx.frames.free(pa);
    }

    /// Frees a page that was never mapped (an insertion taken back).
    pub(crate) fn free_unmapped(&self, pa: PhysAddr) {
        self.set_owner(pa, 0, 0);
        self.ctx.frames.free(pa);
    }

    /// Removes every translation of `pa` in every pmap, shootdown done.
    pub(crate) fn unmap_everywhere(&self, pa: PhysAddr) {
        let pm = self.ctx.pmap();
        pm.flush(pm.page_protect(pa, VmProt::NONE));
    }
}
