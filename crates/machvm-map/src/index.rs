//! The map's lookup index: a last-hit hint and a flat sorted copy of the
//! entry bounds (`vm_map_lookup_entry`'s hint, and more).

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::Entry;

/// How lookups avoid walking the tree: a hint (the last entry found, whose
/// successor is checked too, so a sequential sweep costs O(1) per lookup),
/// and a flat sorted copy of the entry bounds, rebuilt once lookups since the
/// last change outnumber a quarter of the entries (binary search over 16-byte
/// records beats the tree's pointer chasing). Any change of entry bounds
/// invalidates both; attribute changes do not.
#[derive(Default)]
pub(crate) struct LookupIndex {
    /// `(start, end)` of every entry, in order, when `valid`.
    pub(crate) flat: Vec<(u64, u64)>,
    pub(crate) valid: bool,
    /// Position of the hint in `flat` (when `valid`).
    pos: usize,
    /// The hint's bounds (`end == 0`: none).
    pub(crate) hint: (u64, u64),
    /// Lookups since the last change (decides when to rebuild `flat`).
    since_change: usize,
}

impl LookupIndex {
    pub(crate) fn invalidate(&mut self) {
        self.valid = false;
        self.hint = (0, 0);
        self.since_change = 0;
    }

    #[inline]
    pub(crate) fn lookup(&mut self, entries: &BTreeMap<u64, Entry>, va: u64) -> Option<u64> {
        let (s, e) = self.hint;
        if s <= va && va < e {
            return Some(s);
        }
        if self.valid {
            return self.lookup_flat(va);
        }
        self.since_change += 1;
        if self.since_change > entries.len() / 4 + 8 {
            self.flat.clear();
            self.flat.extend(entries.iter().map(|(&s, e)| (s, e.end)));
            self.valid = true;
            self.hint = (0, 0);
            return self.lookup_flat(va);
        }
        let (&s, en) = entries.range(..=va).next_back()?;
        if va < en.end {
            self.hint = (s, en.end);
            Some(s)
        } else {
            None
        }
    }

    /// [`lookup`](Self::lookup) under a shared lock: the hint and the flat
    /// copy are read, not updated.
    #[inline]
    pub(crate) fn peek(&self, entries: &BTreeMap<u64, Entry>, va: u64) -> Option<u64> {
        let (s, e) = self.hint;
        if s <= va && va < e {
            return Some(s);
        }
        if self.valid {
            let i = self.flat.partition_point(|&(s, _)| s <= va);
            let &(s, e) = self.flat.get(i.checked_sub(1)?)?;
            return (va < e).then_some(s);
        }
        let (&s, en) = entries.range(..=va).next_back()?;
        (va < en.end).then_some(s)
    }

    /// The hint's successor (a sequential sweep), else a binary search.
    #[inline]
    fn lookup_flat(&mut self, va: u64) -> Option<u64> {
        if let Some(&(ns, ne)) = self.flat.get(self.pos + 1) {
            if ns <= va && va < ne {
                self.pos += 1;
                self.hint = (ns, ne);
                return Some(ns);
            }
        }
        let i = self.flat.partition_point(|&(s, _)| s <= va);
        let &(s, e) = self.flat.get(i.checked_sub(1)?)?;
        if va < e {
            self.pos = i - 1;
            self.hint = (s, e);
            return Some(s);
        }
        None
    }
}
