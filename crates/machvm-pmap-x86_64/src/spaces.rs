//! The pmap's state and its locks: one lock per address space (its tables
//! and counters), one per frame's pv list, and one for which space each
//! CPU runs. Faults in different address spaces take no lock in common.
//!
//! Lock order: `current` → the id allocator → a space → a pv list; only
//! `verify` holds several spaces, taken in id order. A call by frame
//! (`page_protect`, the modify and reference bits) reads the frame's pv
//! list, lets go of it, then takes each space in turn and checks that the
//! translation it names is still there before it acts.
//!
//! Space ids index a table of lazily allocated chunks of slots; a slot's
//! lock guards the space's root, counters and tables. Ids are reused after
//! `destroy`.

use alloc::boxed::Box;
use alloc::vec::Vec;

use machvm_base::PhysAddr;
use machvm_base::sync::{Locks, Mutex, MutexGuard};
use machvm_pmap::{CpuSet, PmapId};

/// Slots per chunk of the space table.
const CHUNK: usize = 256;
/// Address spaces at most (pv entries have room for more).
pub(crate) const MAX_SPACES: usize = 1 << 20;
const _: () = assert!(MAX_SPACES <= crate::pv::MAX_PMAPS as usize);

/// One address space: its root and counters (and, below the root, its
/// tables), under its slot's lock.
#[derive(Default)]
pub(crate) struct Space {
    /// False for a free slot.
    pub(crate) live: bool,
    pub(crate) root: PhysAddr,
    /// CPUs running it.
    pub(crate) active: CpuSet,
    pub(crate) resident: u64,
    pub(crate) wired: u64,
    /// Zeroed page-table frames set aside by `Pmap::reserve_tables` for the
    /// enters of one call; empty between calls.
    pub(crate) tables: Vec<PhysAddr>,
}

/// A live space, locked.
pub(crate) type SpaceGuard<'a, L> = MutexGuard<'a, L, Space>;

/// One slot of the space table, alone on its cache lines: faults in two
/// address spaces take two locks that share no line.
#[repr(align(128))]
struct Slot<L: Locks>(Mutex<L, Space>);

/// One chunk of the space table: `CHUNK` slots, each under its lock.
type Chunk<L> = Box<[Slot<L>]>;

/// Every live space, locked ([`Spaces::lock_all`]).
pub(crate) struct AllSpaces<'a, L: Locks> {
    _ids: MutexGuard<'a, L, Ids>,
    pub(crate) spaces: Vec<(PmapId, SpaceGuard<'a, L>)>,
}

/// Which ids are free.
struct Ids {
    free: Vec<u32>,
    next: u32,
}

/// Every address space, by id.
pub(crate) struct Spaces<L: Locks> {
    chunks: Box<[spin::Once<Chunk<L>>]>,
    ids: Mutex<L, Ids>,
    #[cfg(test)]
    pub(crate) insert_hook: spin::Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl<L: Locks> Spaces<L> {
    pub(crate) fn new() -> Spaces<L> {
        Spaces {
            chunks: (0..MAX_SPACES / CHUNK).map(|_| spin::Once::new()).collect(),
            ids: Mutex::<L, _>::new(Ids {
                free: Vec::new(),
                next: 0,
            }),
            #[cfg(test)]
            insert_hook: spin::Mutex::new(None),
        }
    }

    fn slot(&self, id: u32) -> Option<&Mutex<L, Space>> {
        let id = id as usize;
        Some(&self.chunks.get(id / CHUNK)?.get()?.get(id % CHUNK)?.0)
    }

    /// Space `p` locked, if it is live.
    #[inline]
    pub(crate) fn lock(&self, p: PmapId) -> Option<SpaceGuard<'_, L>> {
        let g = self.slot(p.0)?.lock();
        g.live.then_some(g)
    }

    /// Makes `space` live under a new id; `None` when every id is taken.
    /// The slot goes live under the id lock: [`lock_all`](Self::lock_all)
    /// sees it, or no pmap operation can use it yet.
    pub(crate) fn insert(&self, space: Space) -> Option<PmapId> {
        let mut ids = self.ids.lock();
        let id = match ids.free.pop() {
            Some(id) => id,
            None if (ids.next as usize) < MAX_SPACES => {
                ids.next += 1;
                ids.next - 1
            }
            None => return None,
        };
        #[cfg(test)]
        if let Some(h) = self.insert_hook.lock().take() {
            h();
        }
        let chunk = self.chunks[id as usize / CHUNK].call_once(|| {
            (0..CHUNK)
                .map(|_| Slot(Mutex::<L, _>::new(Space::default())))
                .collect()
        });
        *chunk[id as usize % CHUNK].0.lock() = Space {
            live: true,
            ..space
        };
        drop(ids);
        Some(PmapId(id))
    }

    /// Frees the id of the space `g` (locked as `p`), which is dead now.
    pub(crate) fn remove(&self, p: PmapId, mut g: SpaceGuard<'_, L>) {
        *g = Space::default();
        drop(g);
        self.ids.lock().free.push(p.0);
    }

    /// Every live space locked, in id order, with no space created
    /// meanwhile: nothing changes any table or pv list while they are held
    /// (`verify` at any moment). Only this takes two space locks.
    pub(crate) fn lock_all(&self) -> AllSpaces<'_, L> {
        let ids = self.ids.lock();
        let spaces = (0..ids.next)
            .filter_map(|id| {
                let g = self.slot(id)?.lock();
                g.live.then_some((PmapId(id), g))
            })
            .collect();
        AllSpaces { _ids: ids, spaces }
    }

    /// The ids of the live spaces (each may die before it is locked).
    pub(crate) fn live_ids(&self) -> Vec<PmapId> {
        let next = self.ids.lock().next;
        (0..next)
            .filter(|&id| self.slot(id).is_some_and(|s| s.lock().live))
            .map(PmapId)
            .collect()
    }
}
