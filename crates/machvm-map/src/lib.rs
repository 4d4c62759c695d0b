//! Address maps: the machine-independent description of a task's address
//! space (Mach's `vm_map`), its page-fault handler and `fork`.
//!
//! A map is an ordered set of entries, each a page-aligned range with an
//! object window, protection, maximum protection and inheritance. An
//! entry's object is held through a [`Hold`]: an exact holder record in the
//! object graph saying which window it holds and whether it writes it
//! directly or has copy-on-write pending. The pmap beneath holds the
//! hardware translations, which are only a cache of what the entries and
//! objects say: no decision here reads it.
//!
//! Invariants (checked by [`VmMap::verify`], one [`MapRule`] each; debug
//! builds check them after every change once
//! [`VmContext::set_consistency_checks`] is on):
//! - Entries are sorted, non-overlapping, page-aligned, non-empty and inside
//!   `[USER_MIN, USER_MAX)`; `protection ⊆ max_protection`.
//! - An entry's hold is an entry holder of this map (`Direct` or
//!   `NeedsCopy`) whose window is exactly as long as the entry, and the
//!   graph holds no other record naming this map.
//! - `first_free` is the lowest free address at or above `USER_MIN`, and
//!   the lookup index (hint, flat copy) names entries as they are.
//! - No two neighbouring entries could be one entry (the same object with
//!   contiguous windows and the same holder, or both untouched; equal
//!   protection, maximum, inheritance and wiring): every change simplifies
//!   the entries it touched.
//! - Every translation in the map's pmap lies inside an entry, maps the page
//!   the entry's object chain holds at that offset, and allows at most the
//!   entry's protection.
//! - No writable translation maps a page that is still shared
//!   copy-on-write: the page must be in the held object and the entry must
//!   write it directly.
//! - The object graph's own invariants hold.
//!
//! Locking: a map's lock is taken before the object graph's. Two maps are
//! locked in the order of their ids (the copy layer does this); a map never
//! waits on its own lock. A call that reduces translations completes its TLB
//! shootdown before it unlocks the map, so no other thread of the task can
//! copy a page up while a CPU still holds a stale writable translation.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

mod boundary;
mod data;
mod display;
mod entries;
mod entry_set;
mod fault;
mod fork;
mod index;
mod ops;
mod pageout;
mod rounds;
#[cfg(test)]
mod tests;
mod verify;
mod wire;

use alloc::sync::Arc;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use machvm_base::sync::RwLock;
use machvm_base::{PAGE_SHIFT, USER_MIN, VaRange};
use machvm_object::{AuditEntries, Hold, Objects};
use machvm_pmap::PmapId;

pub use boundary::{CowSpan, MapGuard, MapPair};
pub use data::{reserve, reserve_settled};
pub use machvm_pmap::Access;
pub use verify::MapRule;

// What a kernel using maps alone needs besides this crate: the vocabulary,
// the context a map lives in, its frames and its pmap.
pub use machvm_base::sync::{Locks, SpinLocks};
pub use machvm_base::{KernError, PAGE_SIZE, PhysAddr, VirtAddr, VmInherit, VmProt};
#[cfg(feature = "x86_64")]
pub use machvm_frame::X86Frames;
pub use machvm_frame::{FrameAllocator, FrameUse, PhysMem};
pub use machvm_object::{VmAudit, VmContext};
pub use machvm_pmap::{Pmap, SoftPmap};
#[cfg(feature = "x86_64")]
pub use machvm_pmap_x86_64::{Mmu, X86Config, X86Pmap};
/// The `x86_64` crate, re-exported (feature `x86_64`): its types are the
/// ones machvm's conversions and [`X86Frames`] speak.
#[cfg(feature = "x86_64")]
pub use x86_64;

use entry_set::Entries;
use index::LookupIndex;

/// Bytes one map entry takes: its slot in the slab, and its key and slot
/// number in the tree (the benchmarks report it; tree nodes' own overhead
/// is not counted).
pub const ENTRY_BYTES: usize = core::mem::size_of::<Option<Entry>>()
    + core::mem::size_of::<u64>()
    + core::mem::size_of::<u32>();

/// One map entry (Mach's `vm_map_entry`); its start is the key it is
/// stored under. Not `Clone`: its hold is one exact holder record.
pub(crate) struct Entry {
    pub(crate) end: u64,
    /// `None` until first touched: anonymous zero-fill memory, no object yet.
    pub(crate) object: Option<Hold>,
    pub(crate) protection: VmProt,
    pub(crate) max_protection: VmProt,
    pub(crate) inheritance: VmInherit,
    pub(crate) wired_count: u16,
}

impl Entry {
    pub(crate) fn new_anon(end: u64) -> Entry {
        Entry {
            end,
            object: None,
            protection: VmProt::DEFAULT,
            max_protection: VmProt::ALL,
            inheritance: VmInherit::Copy,
            wired_count: 0,
        }
    }

    /// An entry with `e`'s attributes over `[.., end)` holding `object`.
    pub(crate) fn like(e: &Entry, end: u64, object: Option<Hold>) -> Entry {
        Entry {
            end,
            object,
            protection: e.protection,
            max_protection: e.max_protection,
            inheritance: e.inheritance,
            wired_count: e.wired_count,
        }
    }

    pub(crate) fn pages(&self, start: u64) -> u64 {
        (self.end - start) >> PAGE_SHIFT
    }

    /// True when `self` and `other` have the same attributes.
    pub(crate) fn same_attributes(&self, other: &Entry) -> bool {
        (
            self.protection,
            self.max_protection,
            self.inheritance,
            self.wired_count,
        ) == (
            other.protection,
            other.max_protection,
            other.inheritance,
            other.wired_count,
        )
    }
}

/// What `vm_region` reports about one region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionInfo {
    /// First address.
    pub start: u64,
    /// Length in bytes.
    pub size: u64,
    /// Current protection.
    pub protection: VmProt,
    /// Maximum protection.
    pub max_protection: VmProt,
    /// Inheritance at `fork`.
    pub inheritance: VmInherit,
    /// Some page is reachable from another map without copy-on-write.
    pub shared: bool,
    /// Pages of the region resident anywhere in its object chain.
    pub resident_pages: u64,
    /// Objects in the longest chain of the region (0: never touched).
    pub shadow_depth: u32,
    /// Copy-on-write is pending on some part of the region.
    pub needs_copy: bool,
    /// Pages of the region this map has wired ([`VmMap::wire`]).
    pub wired_pages: u64,
}

pub(crate) struct MapInner {
    pub(crate) entries: Entries,
    /// Lookup acceleration (`vm_map_lookup_entry`'s hint, and more).
    pub(crate) index: LookupIndex,
    /// `[USER_MIN, first_free)` is allocated without a hole and
    /// `first_free` is not (Mach's `first_free`): where first-fit starts.
    pub(crate) first_free: u64,
}

pub(crate) struct MapShared<L: Locks> {
    id: u64,
    ctx: Arc<VmContext<L>>,
    pmap: PmapId,
    pub(crate) inner: RwLock<L, MapInner>,
}

static NEXT_MAP_ID: AtomicU64 = AtomicU64::new(1);

/// A task's address map. A cheap handle: `Clone` gives another handle to the
/// same map, which goes away with its last handle.
///
/// A map lives in a [`VmContext`]: frames and a pmap module. Here 1 MiB of
/// simulated RAM and the software reference pmap:
///
/// ```
/// use std::sync::Arc;
/// use machvm_map::{FrameAllocator, SoftPmap, VmContext, VmMap};
///
/// let frames = Arc::new(FrameAllocator::hosted(1 << 20).unwrap());
/// let ctx = VmContext::new(frames, Arc::new(SoftPmap::new()));
/// let map = VmMap::new(&ctx).unwrap();
/// let a = map.allocate(0, 3 * 4096, true).unwrap();
/// map.write_bytes(a + 10, b"mach").unwrap();
/// let mut buf = [0u8; 4];
/// map.read_bytes(a + 10, &mut buf).unwrap();
/// assert_eq!(&buf, b"mach");
/// ```
pub struct VmMap<L: Locks = SpinLocks>(pub(crate) Arc<MapShared<L>>);

impl<L: Locks> Clone for VmMap<L> {
    fn clone(&self) -> Self {
        VmMap(self.0.clone())
    }
}

impl<L: Locks> VmMap<L> {
    /// An empty map with its own pmap.
    pub fn new(ctx: &Arc<VmContext<L>>) -> Result<VmMap<L>, KernError> {
        let pmap = Self::new_pmap(ctx)?;
        let map = Arc::new(MapShared {
            id: NEXT_MAP_ID.fetch_add(1, Relaxed),
            ctx: ctx.clone(),
            pmap,
            inner: RwLock::<L, _>::new(MapInner::new()),
        });
        let weak: alloc::sync::Weak<dyn AuditEntries> = Arc::downgrade(&map) as _;
        ctx.register_audit(weak);
        Ok(VmMap(map))
    }

    /// A pmap for a new map. In a system that pages, room is made for its
    /// root table first, and made again (up to 32 times) when
    /// other calls took the frames freed before the table was allocated.
    fn new_pmap(ctx: &Arc<VmContext<L>>) -> Result<PmapId, KernError> {
        let mut tries = 0;
        loop {
            if ctx.pager().is_some() {
                ctx.objects().make_room(1)?;
            }
            match ctx.pmap().create() {
                Err(KernError::ResourceShortage) if ctx.pager().is_some() && tries < 32 => {
                    tries += 1;
                }
                r => return r,
            }
        }
    }

    /// Unique id; maps are locked in increasing id order.
    pub fn id(&self) -> u64 {
        self.0.id
    }

    /// The map's pmap.
    pub fn pmap(&self) -> PmapId {
        self.0.pmap
    }

    /// The VM context (frames, pmap module, object graph, counters).
    pub fn context(&self) -> &Arc<VmContext<L>> {
        &self.0.ctx
    }

    /// True when both handles name the same map.
    pub fn same_map(&self, other: &VmMap<L>) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Number of entries.
    pub fn entry_count(&self) -> usize {
        self.0.inner.read().entries.len()
    }

    /// Test hook: true while some call holds this map's lock exclusively
    /// or is taking it so (upgradeable, readers draining): a test's
    /// injected MMU uses it to check that a shootdown is sent before the
    /// map can change again. (`lock_api`'s test takes and drops a shared
    /// lock when it finds the lock free.)
    #[doc(hidden)]
    #[cfg(feature = "test-hooks")]
    pub fn is_locked(&self) -> bool {
        self.0.inner.is_locked_exclusive()
    }

    /// Benchmark hook (`cargo xtask bench`, the lookup group): looks every address
    /// up as the fault path does — hint first, then the flat index or the
    /// tree, then the entry in its slot — under one lock acquisition so
    /// that the lookup alone is timed. Returns the sum of the entry starts
    /// found.
    #[doc(hidden)]
    #[cfg(feature = "test-hooks")]
    pub fn lookup_many(&self, addrs: &[u64]) -> u64 {
        let mut m = machvm_base::sync::write::<L, _>(&self.0.inner);
        addrs
            .iter()
            .filter_map(|&va| m.entry_at(va).ok().map(|(s, _)| s))
            .fold(0, u64::wrapping_add)
    }

    /// The longest object chain of any entry (for tests of collapse).
    pub fn max_chain_depth(&self) -> usize {
        let m = self.0.inner.read();
        let objs = self.0.ctx.objects();
        m.entries
            .values()
            .filter_map(|e| e.object.as_ref().map(|h| objs.chain_depth(h)))
            .max()
            .unwrap_or(0)
    }
}

impl<L: Locks> AuditEntries for MapShared<L> {
    fn audit_entries(&self, audit: &mut VmAudit) {
        let m = machvm_base::sync::write::<L, _>(&self.inner);
        let objs = self.ctx.objects();
        audit.entries += m.entries.len() as u64;
        audit.mergeable_neighbours += m.mergeable_pairs(&objs);
        audit.wired_entry_pages += m
            .entries
            .iter()
            .filter(|(_, e)| e.wired_count > 0)
            .map(|(&s, e)| e.pages(s))
            .sum::<u64>();
    }
}

impl<L: Locks> Drop for MapShared<L> {
    fn drop(&mut self) {
        let pm = self.ctx.pmap();
        let entries = core::mem::take(&mut self.inner.get_mut().entries);
        pm.flush(pm.remove(self.pmap, VaRange::USER_HALF));
        let mut objs = self.ctx.objects();
        let entries: alloc::vec::Vec<(u64, Entry)> = entries.into_iter().collect();
        wire::unwire_removed(&objs, &entries);
        release_entries(&mut objs, entries.into_iter());
        drop(objs);
        pm.destroy(self.pmap);
    }
}

/// Gives back the holds of removed entries (pages nothing else reaches are
/// freed at once).
pub(crate) fn release_entries<L: Locks>(
    objs: &mut Objects<'_, L>,
    removed: impl Iterator<Item = (u64, Entry)>,
) {
    for (_, e) in removed {
        if let Some(h) = e.object {
            objs.release(h);
        }
    }
}

/// The pages of `[start, end)`, entry bounds or their intersections with a
/// page range (page-aligned by the map's invariants).
pub(crate) fn page_range(start: u64, end: u64) -> VaRange {
    VaRange::covering(start, end)
}

impl MapInner {
    fn new() -> MapInner {
        MapInner {
            entries: Entries::default(),
            index: LookupIndex::default(),
            first_free: USER_MIN,
        }
    }
}

/// The examples in this crate's README.md, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct CrateReadmeDoctests;
