//! The map's lookup index: a last-hit hint and a flat sorted copy of the
//! entry bounds (`vm_map_lookup_entry`'s hint, and more), each naming the
//! entry's slot, so that a hit reaches the entry in O(1).

use alloc::vec::Vec;

use crate::entry_set::Entries;

/// How lookups avoid walking the tree: a hint (the last entry found, whose
/// successor is checked too, so a sequential sweep costs O(1) per lookup),
/// and a flat sorted copy of the entry bounds, rebuilt once lookups since the
/// last change outnumber a quarter of the entries (binary search over the
/// starts alone, 8 bytes each, beats the tree's pointer chasing). Both name
/// the entry's slot: a hit costs no tree search. Any change of entry bounds
/// invalidates both; attribute changes do not.
#[derive(Default)]
pub(crate) struct LookupIndex {
    /// The start of every entry, in order, when `valid`: searched alone,
    /// 8 bytes a probe, so a binary search touches few cache lines.
    pub(crate) starts: Vec<u64>,
    /// `(end, slot)` of the entry at the same position in `starts`.
    pub(crate) rest: Vec<(u64, u32)>,
    pub(crate) valid: bool,
    /// Position of the hint in the flat copy (when `valid`).
    pos: usize,
    /// The hint's bounds and slot (`end == 0`: none).
    pub(crate) hint: (u64, u64, u32),
    /// Lookups since the last change (decides when to rebuild the flat copy).
    since_change: usize,
}

impl LookupIndex {
    pub(crate) fn invalidate(&mut self) {
        self.valid = false;
        self.hint = (0, 0, 0);
        self.since_change = 0;
    }

    /// The start and slot of the entry containing `va`.
    #[inline]
    pub(crate) fn lookup(&mut self, entries: &Entries, va: u64) -> Option<(u64, u32)> {
        let (s, e, slot) = self.hint;
        if s <= va && va < e {
            return Some((s, slot));
        }
        if self.valid {
            return self.lookup_flat(va);
        }
        self.since_change += 1;
        if self.since_change > entries.len() / 4 + 8 {
            self.starts.clear();
            self.rest.clear();
            for (s, slot, e) in entries.range_slots(..) {
                self.starts.push(s);
                self.rest.push((e.end, slot));
            }
            self.valid = true;
            self.hint = (0, 0, 0);
            return self.lookup_flat(va);
        }
        let (s, slot, en) = entries.range_slots(..=va).next_back()?;
        if va < en.end {
            self.hint = (s, en.end, slot);
            Some((s, slot))
        } else {
            None
        }
    }

    /// [`lookup`](Self::lookup) under a shared lock: the hint and the flat
    /// copy are read, not updated.
    #[inline]
    pub(crate) fn peek(&self, entries: &Entries, va: u64) -> Option<(u64, u32)> {
        let (s, e, slot) = self.hint;
        if s <= va && va < e {
            return Some((s, slot));
        }
        if self.valid {
            let (s, e, slot) = self.flat_at(self.search(va)?)?;
            return (va < e).then_some((s, slot));
        }
        let (s, slot, en) = entries.range_slots(..=va).next_back()?;
        (va < en.end).then_some((s, slot))
    }

    /// The hint's successor (a sequential sweep), else a binary search.
    #[inline]
    fn lookup_flat(&mut self, va: u64) -> Option<(u64, u32)> {
        if let Some((ns, ne, slot)) = self.flat_at(self.pos + 1)
            && ns <= va
            && va < ne
        {
            self.pos += 1;
            self.hint = (ns, ne, slot);
            return Some((ns, slot));
        }
        let i = self.search(va)?;
        let (s, e, slot) = self.flat_at(i)?;
        if va < e {
            self.pos = i;
            self.hint = (s, e, slot);
            return Some((s, slot));
        }
        None
    }

    /// Position in the flat copy of the last entry starting at or below
    /// `va`.
    #[inline]
    fn search(&self, va: u64) -> Option<usize> {
        self.starts.partition_point(|&s| s <= va).checked_sub(1)
    }

    /// `(start, end, slot)` at position `i` of the flat copy.
    #[inline]
    pub(crate) fn flat_at(&self, i: usize) -> Option<(u64, u64, u32)> {
        let (&s, &(e, slot)) = self.starts.get(i).zip(self.rest.get(i))?;
        Some((s, e, slot))
    }
}
