//! The holder records of one object: a slab indexed by `HolderId`, so that
//! a hold finds its record in O(1) however many holders the object has.

use alloc::vec::Vec;

use crate::HolderId;

/// A slab of `T` keyed by `HolderId` (slot numbers are reused).
pub(crate) struct Slots<T> {
    slots: Vec<Option<T>>,
    free: Vec<u32>,
    len: usize,
}

impl<T> Slots<T> {
    pub(crate) fn new() -> Slots<T> {
        Slots {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }

    pub(crate) fn insert(&mut self, v: T) -> HolderId {
        self.len += 1;
        match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(v);
                HolderId(i)
            }
            None => {
                self.slots.push(Some(v));
                HolderId((self.slots.len() - 1) as u32)
            }
        }
    }

    pub(crate) fn get(&self, id: &HolderId) -> Option<&T> {
        self.slots.get(id.0 as usize).and_then(Option::as_ref)
    }

    pub(crate) fn get_mut(&mut self, id: &HolderId) -> Option<&mut T> {
        self.slots.get_mut(id.0 as usize).and_then(Option::as_mut)
    }

    pub(crate) fn remove(&mut self, id: &HolderId) -> Option<T> {
        let v = self.slots.get_mut(id.0 as usize)?.take()?;
        self.len -= 1;
        self.free.push(id.0);
        Some(v)
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every record with its id.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (HolderId, &T)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.as_ref().map(|v| (HolderId(i as u32), v)))
    }

    /// Every record.
    pub(crate) fn values(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().flatten()
    }
}
