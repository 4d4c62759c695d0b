//! The holder records of one object: a slab indexed by `HolderId`, so that
//! a hold finds its record in O(1) however many holders the object has, and
//! an index by window start for overlap queries. Free slots form a list
//! threaded through the slab itself, and the first allocation holds exactly
//! one record (most objects have one or two).

use alloc::boxed::Box;
use alloc::collections::BTreeSet;
use alloc::vec::Vec;

use crate::graph::HolderRec;
use crate::{Holder, HolderId};

const NONE: u32 = u32::MAX;

enum Slot<T> {
    Used(T),
    /// Free; the next free slot (`NONE`: the last).
    Free(u32),
}

/// A slab of `T` keyed by `HolderId` (slot numbers are reused).
pub(crate) struct Slots<T> {
    slots: Vec<Slot<T>>,
    free: u32,
    len: u32,
}

impl<T> Slots<T> {
    pub(crate) fn new() -> Slots<T> {
        Slots {
            slots: Vec::new(),
            free: NONE,
            len: 0,
        }
    }

    pub(crate) fn insert(&mut self, v: T) -> HolderId {
        self.len += 1;
        if self.free != NONE {
            let i = self.free;
            if let Some(Slot::Free(next)) = self.slots.get(i as usize) {
                self.free = *next;
            }
            self.slots[i as usize] = Slot::Used(v);
            return HolderId(i);
        }
        if self.slots.capacity() == 0 {
            self.slots.reserve_exact(1);
        }
        self.slots.push(Slot::Used(v));
        HolderId((self.slots.len() - 1) as u32)
    }

    pub(crate) fn get(&self, id: &HolderId) -> Option<&T> {
        match self.slots.get(id.0 as usize) {
            Some(Slot::Used(v)) => Some(v),
            _ => None,
        }
    }

    pub(crate) fn get_mut(&mut self, id: &HolderId) -> Option<&mut T> {
        match self.slots.get_mut(id.0 as usize) {
            Some(Slot::Used(v)) => Some(v),
            _ => None,
        }
    }

    pub(crate) fn remove(&mut self, id: &HolderId) -> Option<T> {
        let slot = self.slots.get_mut(id.0 as usize)?;
        if !matches!(slot, Slot::Used(_)) {
            return None;
        }
        let Slot::Used(v) = core::mem::replace(slot, Slot::Free(self.free)) else {
            return None;
        };
        self.free = id.0;
        self.len -= 1;
        Some(v)
    }

    pub(crate) fn len(&self) -> usize {
        self.len as usize
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Slots used or free: what a scan of the slab walks.
    pub(crate) fn slab_len(&self) -> usize {
        self.slots.len()
    }

    /// Every record with its id, in slot order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (HolderId, &T)> {
        self.slots.iter().enumerate().filter_map(|(i, s)| match s {
            Slot::Used(v) => Some((HolderId(i as u32), v)),
            Slot::Free(_) => None,
        })
    }
}

/// Above this many slots, an object's holders get an index.
const SMALL: usize = 8;

/// The length class of a window: `c` for lengths in `[2^c, 2^(c+1))`.
fn class(len: u64) -> u8 {
    (63 - len.max(1).leading_zeros()) as u8
}

/// Windows by length class, then start: a window of class `c` overlapping
/// `[s, e)` starts in `(s - 2^(c+1), e)`, so each class is one short range
/// scan, however long the other classes' windows are.
struct Index {
    by_class: BTreeSet<(u8, u64, HolderId)>,
    counts: [u32; 64],
}

impl Index {
    fn add(&mut self, id: HolderId, r: &HolderRec) {
        let c = class(r.end - r.start);
        self.by_class.insert((c, r.start, id));
        self.counts[c as usize] += 1;
    }

    fn sub(&mut self, id: HolderId, r: &HolderRec) {
        let c = class(r.end - r.start);
        if self.by_class.remove(&(c, r.start, id)) {
            self.counts[c as usize] -= 1;
        }
    }
}

/// The holder records of one object: a slab (O(1) from a hold) and, once
/// the object has had more than a few holders, an index by length class and
/// start, so that the records overlapping a range are found in O(classes ×
/// log n) — an object held by thousands of windows, short and long, answers
/// overlap queries without scanning them all. Small objects (nearly all)
/// scan their few slots and carry no index.
pub(crate) struct Holders {
    slots: Slots<HolderRec>,
    index: Option<Box<Index>>,
}

impl Holders {
    pub(crate) fn new() -> Holders {
        Holders {
            slots: Slots::new(),
            index: None,
        }
    }

    pub(crate) fn insert(&mut self, rec: HolderRec) -> HolderId {
        let id = self.slots.insert(rec);
        match &mut self.index {
            Some(ix) => ix.add(id, &rec),
            None if self.slots.slab_len() > SMALL => {
                let mut ix = Box::new(Index {
                    by_class: BTreeSet::new(),
                    counts: [0; 64],
                });
                for (i, r) in self.slots.iter() {
                    ix.add(i, r);
                }
                self.index = Some(ix);
            }
            None => {}
        }
        id
    }

    pub(crate) fn get(&self, id: &HolderId) -> Option<&HolderRec> {
        self.slots.get(id)
    }

    pub(crate) fn remove(&mut self, id: &HolderId) -> Option<HolderRec> {
        let rec = self.slots.remove(id)?;
        if let Some(ix) = &mut self.index {
            ix.sub(*id, &rec);
        }
        Some(rec)
    }

    /// Changes who holds record `id` (its window stays).
    pub(crate) fn set_kind(&mut self, id: &HolderId, kind: Holder) {
        if let Some(r) = self.slots.get_mut(id) {
            r.kind = kind;
        }
    }

    /// Moves record `id`'s window to `[start, end)`.
    pub(crate) fn set_window(&mut self, id: &HolderId, start: u64, end: u64) {
        let Some(r) = self.slots.get_mut(id) else {
            return;
        };
        let old = *r;
        (r.start, r.end) = (start, end);
        let new = *r;
        if let Some(ix) = &mut self.index {
            ix.sub(*id, &old);
            ix.add(*id, &new);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Every record with its id.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (HolderId, &HolderRec)> {
        self.slots.iter()
    }

    /// Every record.
    pub(crate) fn values(&self) -> impl Iterator<Item = &HolderRec> {
        self.iter().map(|(_, r)| r)
    }

    /// The records whose windows overlap `[start, end)`.
    pub(crate) fn overlapping(
        &self,
        start: u64,
        end: u64,
    ) -> impl Iterator<Item = (HolderId, &HolderRec)> {
        let linear = self.index.is_none().then(|| self.slots.iter());
        let indexed = self.index.as_deref().map(|ix| {
            (0..64u8)
                .filter(|&c| ix.counts[c as usize] > 0)
                .flat_map(move |c| {
                    // The longest window of class `c`: 2^(c+1) - 1 pages.
                    let longest = u64::MAX >> (63 - c);
                    let lo = start.saturating_sub(longest - 1);
                    let hi = end.max(lo);
                    ix.by_class
                        .range((c, lo, HolderId(0))..(c, hi, HolderId(0)))
                        .filter_map(|&(_, _, id)| self.slots.get(&id).map(|r| (id, r)))
                })
        });
        linear
            .into_iter()
            .flatten()
            .chain(indexed.into_iter().flatten())
            .filter(move |(_, r)| r.overlaps(start, end))
    }
}
