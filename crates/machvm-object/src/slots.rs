//! The holder records of one object: a slab indexed by `HolderId`, so that
//! a hold finds its record in O(1) however many holders the object has, and
//! an index by window start for overlap queries. Free slots form a list
//! threaded through the slab itself, and the first allocation holds exactly
//! one record (most objects have one or two).

use alloc::collections::{BTreeMap, BTreeSet};
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
}

/// The holder records of one object, with an index by window start: the
/// records overlapping a range are found by scanning only the starts less
/// than the longest window below it, so an object held by thousands of
/// small windows answers in O(log n). (One long window among many short
/// ones widens every scan; an interval tree would not.)
pub(crate) struct Holders {
    slots: Slots<HolderRec>,
    by_start: BTreeSet<(u64, HolderId)>,
    /// How many windows have each length (the longest is the last key).
    lens: BTreeMap<u64, u32>,
}

impl Holders {
    pub(crate) fn new() -> Holders {
        Holders {
            slots: Slots::new(),
            by_start: BTreeSet::new(),
            lens: BTreeMap::new(),
        }
    }

    fn add_len(&mut self, len: u64) {
        *self.lens.entry(len).or_insert(0) += 1;
    }

    fn sub_len(&mut self, len: u64) {
        if let Some(n) = self.lens.get_mut(&len) {
            *n -= 1;
            if *n == 0 {
                self.lens.remove(&len);
            }
        }
    }

    fn max_len(&self) -> u64 {
        self.lens.last_key_value().map_or(0, |(&l, _)| l)
    }

    pub(crate) fn insert(&mut self, rec: HolderRec) -> HolderId {
        self.add_len(rec.end - rec.start);
        let id = self.slots.insert(rec);
        self.by_start.insert((rec.start, id));
        id
    }

    pub(crate) fn get(&self, id: &HolderId) -> Option<&HolderRec> {
        self.slots.get(id)
    }

    pub(crate) fn remove(&mut self, id: &HolderId) -> Option<HolderRec> {
        let rec = self.slots.remove(id)?;
        self.by_start.remove(&(rec.start, *id));
        self.sub_len(rec.end - rec.start);
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
        let old = (r.start, r.end);
        (r.start, r.end) = (start, end);
        self.by_start.remove(&(old.0, *id));
        self.by_start.insert((start, *id));
        self.sub_len(old.1 - old.0);
        self.add_len(end - start);
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Every record with its id, by window start.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (HolderId, &HolderRec)> {
        self.by_start
            .iter()
            .filter_map(|&(_, id)| self.slots.get(&id).map(|r| (id, r)))
    }

    /// Every record, by window start.
    pub(crate) fn values(&self) -> impl Iterator<Item = &HolderRec> {
        self.iter().map(|(_, r)| r)
    }

    /// The records whose windows overlap `[start, end)`.
    pub(crate) fn overlapping(
        &self,
        start: u64,
        end: u64,
    ) -> impl Iterator<Item = (HolderId, &HolderRec)> {
        let lo = start.saturating_sub(self.max_len().saturating_sub(1));
        let hi = end.max(lo);
        self.by_start
            .range((lo, HolderId(0))..(hi, HolderId(0)))
            .filter_map(|&(_, id)| self.slots.get(&id).map(|r| (id, r)))
            .filter(move |(_, r)| r.overlaps(start, end))
    }
}
