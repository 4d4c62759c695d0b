//! A map's entries: a tree from start address to slot, and the entries in
//! a slab of slots. A lookup that already knows the entry's slot — the
//! hint, the flat index — reaches it in O(1); the tree is searched only to
//! find a slot. (XNU's hint is an entry pointer; here it is a slot.)
//!
//! Invariants (checked by `MapRule::LookupExact` through the index):
//! - every slot the tree names holds an entry, and no other slot does;
//! - a slot is reused only after its entry was removed, so a slot held
//!   by the lookup index is valid until the index is invalidated (every
//!   change of entry bounds invalidates it).

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::ops::RangeBounds;

use crate::Entry;

/// The entries of one map, by start address.
#[derive(Default)]
pub(crate) struct Entries {
    tree: BTreeMap<u64, u32>,
    slots: Vec<Option<Entry>>,
    /// Slots without an entry.
    free: Vec<u32>,
}

impl Entries {
    /// Number of entries.
    pub(crate) fn len(&self) -> usize {
        self.tree.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    /// The slot of the entry starting at `start`.
    pub(crate) fn slot(&self, start: u64) -> Option<u32> {
        self.tree.get(&start).copied()
    }

    /// The entry in `slot`: O(1).
    #[inline]
    pub(crate) fn at(&self, slot: u32) -> Option<&Entry> {
        self.slots.get(slot as usize)?.as_ref()
    }

    /// The entry in `slot`, to change: O(1).
    #[inline]
    pub(crate) fn at_mut(&mut self, slot: u32) -> Option<&mut Entry> {
        self.slots.get_mut(slot as usize)?.as_mut()
    }

    pub(crate) fn get(&self, start: &u64) -> Option<&Entry> {
        self.at(self.slot(*start)?)
    }

    pub(crate) fn get_mut(&mut self, start: &u64) -> Option<&mut Entry> {
        let slot = self.slot(*start)?;
        self.at_mut(slot)
    }

    /// Inserts `e` at `start`, replacing (and dropping) an entry there.
    pub(crate) fn insert(&mut self, start: u64, e: Entry) {
        use alloc::collections::btree_map::Entry as Place;
        let Entries { tree, slots, free } = self;
        match tree.entry(start) {
            Place::Occupied(o) => slots[*o.get() as usize] = Some(e),
            Place::Vacant(v) => {
                let slot = match free.pop() {
                    Some(slot) => {
                        slots[slot as usize] = Some(e);
                        slot
                    }
                    None => {
                        slots.push(Some(e));
                        (slots.len() - 1) as u32
                    }
                };
                v.insert(slot);
            }
        }
    }

    /// Removes the entry at `start`.
    pub(crate) fn remove(&mut self, start: &u64) -> Option<Entry> {
        let slot = self.tree.remove(start)?;
        self.free.push(slot);
        self.slots.get_mut(slot as usize)?.take()
    }

    /// The entries starting in `r`, in order.
    pub(crate) fn range<R: RangeBounds<u64>>(
        &self,
        r: R,
    ) -> impl DoubleEndedIterator<Item = (&u64, &Entry)> {
        self.tree
            .range(r)
            .filter_map(|(s, &slot)| Some((s, self.at(slot)?)))
    }

    /// The entries starting in `r`, in order, with their slots.
    pub(crate) fn range_slots<R: RangeBounds<u64>>(
        &self,
        r: R,
    ) -> impl DoubleEndedIterator<Item = (u64, u32, &Entry)> {
        self.tree
            .range(r)
            .filter_map(|(&s, &slot)| Some((s, slot, self.at(slot)?)))
    }

    /// Every entry, in order.
    pub(crate) fn iter(&self) -> impl DoubleEndedIterator<Item = (&u64, &Entry)> {
        self.range(..)
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &Entry> {
        self.iter().map(|(_, e)| e)
    }

    /// Runs `f` on each entry starting in `r`, in order, to change it
    /// (not its start or end: the caller keeps the tree's order).
    pub(crate) fn for_each_mut<R: RangeBounds<u64>>(
        &mut self,
        r: R,
        mut f: impl FnMut(u64, &mut Entry),
    ) {
        let Entries { tree, slots, .. } = self;
        for (&s, &slot) in tree.range(r) {
            if let Some(e) = slots.get_mut(slot as usize).and_then(Option::as_mut) {
                f(s, e);
            }
        }
    }

    /// [`for_each_mut`](Self::for_each_mut) over every entry, stopping at
    /// the first error.
    pub(crate) fn try_for_each_mut<E>(
        &mut self,
        mut f: impl FnMut(u64, &mut Entry) -> Result<(), E>,
    ) -> Result<(), E> {
        let Entries { tree, slots, .. } = self;
        for (&s, &slot) in tree.iter() {
            if let Some(e) = slots.get_mut(slot as usize).and_then(Option::as_mut) {
                f(s, e)?;
            }
        }
        Ok(())
    }

    /// The last entry starting below `va`, to change.
    pub(crate) fn last_below_mut(&mut self, va: u64) -> Option<(u64, &mut Entry)> {
        let (&s, &slot) = self.tree.range(..va).next_back()?;
        Some((s, self.at_mut(slot)?))
    }

    /// Whether the slab and the tree agree: the slots the tree names and
    /// the free slots are every slot once; the named hold an entry, the
    /// free none.
    pub(crate) fn slots_exact(&self) -> bool {
        let mut seen = alloc::vec![false; self.slots.len()];
        let mut once = |s: u32| {
            let first = seen.get(s as usize).is_some_and(|&v| !v);
            if first {
                seen[s as usize] = true;
            }
            first
        };
        let named = self.tree.values().all(|&s| once(s) && self.at(s).is_some());
        let free = self.free.iter().all(|&s| once(s) && self.at(s).is_none());
        named && free && seen.iter().all(|&v| v)
    }
}

impl FromIterator<(u64, Entry)> for Entries {
    /// The entries of `it` (distinct starts): the slab filled in order and
    /// the tree built in one go (`fork`'s child gets its entries so).
    fn from_iter<I: IntoIterator<Item = (u64, Entry)>>(it: I) -> Entries {
        let mut slots = Vec::new();
        let tree: BTreeMap<u64, u32> = it
            .into_iter()
            .map(|(s, e)| {
                slots.push(Some(e));
                (s, (slots.len() - 1) as u32)
            })
            .collect();
        let mut set = Entries {
            tree,
            slots,
            free: Vec::new(),
        };
        // A repeated start left its earlier slot unnamed: free it.
        if set.tree.len() != set.slots.len() {
            let mut named = alloc::vec![false; set.slots.len()];
            set.tree.values().for_each(|&s| named[s as usize] = true);
            for (i, _) in named.iter().enumerate().filter(|(_, n)| !**n) {
                set.slots[i] = None;
                set.free.push(i as u32);
            }
        }
        set
    }
}

impl IntoIterator for Entries {
    type Item = (u64, Entry);
    type IntoIter = alloc::vec::IntoIter<(u64, Entry)>;

    /// The entries, in order.
    fn into_iter(mut self) -> Self::IntoIter {
        let tree = core::mem::take(&mut self.tree);
        tree.into_iter()
            .filter_map(|(s, slot)| Some((s, self.slots.get_mut(slot as usize)?.take()?)))
            .collect::<Vec<_>>()
            .into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anon(end: u64) -> Entry {
        Entry::new_anon(end)
    }

    #[test]
    fn slots_are_reused_only_after_removal() {
        let mut set = Entries::default();
        set.insert(0x1000, anon(0x2000));
        set.insert(0x3000, anon(0x4000));
        let (a, b) = (set.slot(0x1000).unwrap(), set.slot(0x3000).unwrap());
        assert_ne!(a, b);
        assert_eq!(set.at(b).map(|e| e.end), Some(0x4000));
        assert!(set.remove(&0x1000).is_some());
        assert!(set.at(a).is_none(), "a freed slot holds nothing");
        assert!(set.slots_exact());
        set.insert(0x5000, anon(0x6000));
        assert_eq!(set.slot(0x5000), Some(a), "the freed slot is reused");
        // Replacing at a start keeps its slot.
        set.insert(0x3000, anon(0x4800));
        assert_eq!(set.slot(0x3000), Some(b));
        assert_eq!(set.get(&0x3000).map(|e| e.end), Some(0x4800));
        assert!(set.slots_exact());
        let order: Vec<u64> = set.iter().map(|(&s, _)| s).collect();
        assert_eq!(order, [0x3000, 0x5000]);
        let mut n = 0;
        set.for_each_mut(0x3000..0x5000, |_, e| {
            e.end += 0x100;
            n += 1;
        });
        assert_eq!(n, 1);
        assert_eq!(
            set.last_below_mut(0x5000).map(|(s, e)| (s, e.end)),
            Some((0x3000, 0x4900))
        );
        // An aliased slot (two starts, one slot; the other slot's entry
        // named by nothing) is not exact.
        let mut bad = Entries::default();
        bad.insert(0x1000, anon(0x2000));
        bad.insert(0x3000, anon(0x4000));
        let s0 = bad.slot(0x1000).unwrap();
        bad.tree.insert(0x3000, s0);
        assert!(!bad.slots_exact());
        let all: Vec<(u64, u64)> = set.into_iter().map(|(s, e)| (s, e.end)).collect();
        // Built in one go, a repeated start keeps the last entry.
        let built: Entries = [
            (0x1000, anon(0x2000)),
            (0x1000, anon(0x3000)),
            (0x4000, anon(0x5000)),
        ]
        .into_iter()
        .collect();
        assert!(built.slots_exact());
        assert_eq!(built.get(&0x1000).map(|e| e.end), Some(0x3000));
        assert_eq!(built.len(), 2);
        assert_eq!(all, [(0x3000, 0x4900), (0x5000, 0x6000)]);
    }
}
