//! The holder records of one object: a slab indexed by `HolderId`, so that
//! a hold finds its record in O(1) however many holders the object has.
//! Free slots form a list threaded through the slab itself, and the first
//! allocation holds exactly one record (most objects have one or two).

use alloc::vec::Vec;

use crate::HolderId;

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

    /// Every record with its id.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (HolderId, &T)> {
        self.slots.iter().enumerate().filter_map(|(i, s)| match s {
            Slot::Used(v) => Some((HolderId(i as u32), v)),
            Slot::Free(_) => None,
        })
    }

    /// Every record.
    pub(crate) fn values(&self) -> impl Iterator<Item = &T> {
        self.iter().map(|(_, v)| v)
    }
}
