//! The entry set of a map: lookup (through `index.rs`), insertion and
//! removal keeping `first_free`, first fit, clipping, and simplification
//! (merging neighbours that could be one entry, as XNU's
//! `vm_map_simplify_entry` and FreeBSD's `vm_map_try_merge_entries` do).

use alloc::vec::Vec;
use machvm_base::sync::Locks;

use machvm_base::{KernError, PageIndex, USER_MAX, USER_MIN};
use machvm_object::Objects;

use crate::entry_set::Entries;
use crate::{Entry, MapInner};

impl MapInner {
    /// Inserts a new entry, keeping `first_free` right.
    pub(crate) fn insert(&mut self, start: u64, e: Entry) {
        self.index.invalidate();
        let end = e.end;
        self.entries.insert(start, e);
        self.allocated_from(start, end);
    }

    /// `[start, end)` has just become allocated: moves `first_free` past it
    /// (and past what follows without a hole) when it started there.
    fn allocated_from(&mut self, start: u64, end: u64) {
        if start == self.first_free {
            let mut ff = end;
            while let Some(next) = self.entries.get(&ff) {
                ff = next.end;
            }
            self.first_free = ff;
        }
    }

    /// True when some entry overlaps `[start, end)`: one tree search.
    pub(crate) fn any_in(&self, start: u64, end: u64) -> bool {
        self.entries
            .range(..end)
            .next_back()
            .is_some_and(|(_, e)| e.end > start)
    }

    /// Inserts untouched memory `[start, end)` (free: the caller checked)
    /// merged with untouched neighbours of the same attributes — what
    /// `simplify` would do, looking at the two neighbours only.
    pub(crate) fn insert_anon(&mut self, start: u64, end: u64) {
        let new = Entry::new_anon(end);
        let joins = |e: &Entry| e.object.is_none() && e.same_attributes(&new);
        let mut last = end;
        if self.entries.get(&end).is_some_and(joins) {
            last = self.entries.remove(&end).map_or(end, |n| n.end);
        }
        self.index.invalidate();
        if let Some((_, prev)) = self.entries.last_below_mut(start)
            && prev.end == start
            && joins(prev)
        {
            prev.end = last;
            self.allocated_from(start, last);
            return;
        }
        self.insert(start, Entry::new_anon(last));
    }

    /// Replaces every entry at once (the map must be empty of translations
    /// and holds: a new child of `fork`).
    pub(crate) fn replace_entries(&mut self, entries: Entries) {
        debug_assert!(self.entries.is_empty());
        self.entries = entries;
        self.index.invalidate();
        // One walk in order, not a tree search per entry.
        let mut ff = USER_MIN;
        for (&s, e) in self.entries.range(USER_MIN..) {
            if s != ff {
                break;
            }
            ff = e.end;
        }
        self.first_free = ff;
    }

    /// Removes every entry starting in `[start, end)` (clip first); their
    /// holds are the caller's to release.
    pub(crate) fn remove_range(&mut self, start: u64, end: u64) -> Vec<(u64, Entry)> {
        self.index.invalidate();
        let keys: Vec<u64> = self.entries.range(start..end).map(|(s, _)| *s).collect();
        let removed: Vec<(u64, Entry)> = keys
            .into_iter()
            .filter_map(|k| self.entries.remove(&k).map(|e| (k, e)))
            .collect();
        if let Some((s, _)) = removed.first() {
            self.first_free = self.first_free.min(*s);
        }
        removed
    }

    /// The start of the entry containing `va` (tests).
    #[cfg(test)]
    pub(crate) fn lookup(&mut self, va: u64) -> Option<u64> {
        self.entry_at(va).ok().map(|(s, _)| s)
    }

    /// The entry containing `va`, with its start; `InvalidAddress` for a
    /// hole.
    pub(crate) fn entry_at(&mut self, va: u64) -> Result<(u64, &mut Entry), KernError> {
        let (start, slot) = self
            .index
            .lookup(&self.entries, va)
            .ok_or(KernError::InvalidAddress)?;
        // The slot the index names: no tree search after a hit.
        match self.entries.at_mut(slot) {
            Some(e) => Ok((start, e)),
            None => Err(KernError::InvalidAddress),
        }
    }

    /// [`entry_at`](Self::entry_at) under a shared lock (the hint is read,
    /// not moved).
    pub(crate) fn entry_at_shared(&self, va: u64) -> Result<(u64, &Entry), KernError> {
        let (start, slot) = self
            .index
            .peek(&self.entries, va)
            .ok_or(KernError::InvalidAddress)?;
        match self.entries.at(slot) {
            Some(e) => Ok((start, e)),
            None => Err(KernError::InvalidAddress),
        }
    }

    /// Lowest start of `len` free bytes at or above `from` (first fit).
    pub(crate) fn find_space(&self, from: u64, len: u64) -> Option<u64> {
        let mut cand = from.max(USER_MIN);
        if cand < self.first_free {
            cand = self.first_free;
        }
        if let Some((_, e)) = self.entries.range(..=cand).next_back() {
            cand = cand.max(e.end);
        }
        for (&s, e) in self.entries.range(cand..) {
            if s - cand >= len {
                break;
            }
            cand = e.end;
        }
        (cand.checked_add(len)? <= USER_MAX).then_some(cand)
    }

    /// Splits the entry containing `va` so that an entry starts at `va`; its
    /// hold is split at the same page.
    pub(crate) fn clip<L: Locks>(&mut self, objs: &mut Objects<'_, L>, va: u64) {
        let Some((start, e)) = self.entries.last_below_mut(va) else {
            return;
        };
        if va >= e.end {
            return;
        }
        let tail_hold = e
            .object
            .as_ref()
            .map(|h| objs.split(h, PageIndex::in_window(start, va)));
        let tail = Entry::like(e, e.end, tail_hold);
        e.end = va;
        self.index.invalidate();
        self.entries.insert(va, tail);
    }

    /// Clips at both ends of `[start, end)`.
    pub(crate) fn clip_range<L: Locks>(&mut self, objs: &mut Objects<'_, L>, start: u64, end: u64) {
        self.clip(objs, start);
        self.clip(objs, end);
    }

    /// True when the entry at `b` continues the entry `a` as one entry
    /// would: adjacent, equal attributes, and the same object with
    /// contiguous windows and the same holder (or both untouched).
    fn mergeable<L: Locks>(objs: &Objects<'_, L>, a: &Entry, b_start: u64, b: &Entry) -> bool {
        a.end == b_start
            && a.same_attributes(b)
            && match (&a.object, &b.object) {
                (None, None) => true,
                (Some(x), Some(y)) => objs.can_join(x, y),
                _ => false,
            }
    }

    /// Merges every mergeable pair of neighbours among the entries that
    /// touch `[start, end]` (the entry before `start` included). One walk
    /// in order: a tree search per merge, none per entry passed.
    pub(crate) fn simplify<L: Locks>(&mut self, objs: &mut Objects<'_, L>, start: u64, end: u64) {
        let mut cur = self
            .entries
            .range(..start)
            .next_back()
            .map_or(start, |(&s, _)| s);
        while let Some(a_start) = self.next_mergeable(objs, cur, end) {
            let Some(b_start) = self.entries.get(&a_start).map(|a| a.end) else {
                return;
            };
            let Some(b) = self.entries.remove(&b_start) else {
                return;
            };
            self.index.invalidate();
            let Some(a) = self.entries.get_mut(&a_start) else {
                return;
            };
            a.end = b.end;
            if let (Some(x), Some(y)) = (&a.object, b.object) {
                // Checked joinable above; were it refused, the tail's record
                // would still be released.
                if let Err(y) = objs.join(x, y) {
                    objs.release(y);
                }
            }
            // `a` may continue into its new neighbour too: look again.
            cur = a_start;
        }
    }

    /// The start of the first entry from `from` on (starting at most at
    /// `end`) that can merge with its successor.
    fn next_mergeable<L: Locks>(&self, objs: &Objects<'_, L>, from: u64, end: u64) -> Option<u64> {
        let mut it = self.entries.range(from..).peekable();
        while let Some((&a_start, a)) = it.next() {
            if a_start > end {
                return None;
            }
            if let Some(&(&b_start, b)) = it.peek()
                && Self::mergeable(objs, a, b_start, b)
            {
                return Some(a_start);
            }
        }
        None
    }

    /// Pairs of neighbours that could be one entry (0 when simplified).
    pub(crate) fn mergeable_pairs<L: Locks>(&self, objs: &Objects<'_, L>) -> u64 {
        let mut n = 0;
        let mut it = self.entries.iter().peekable();
        while let Some((_, a)) = it.next() {
            if let Some(&(&bs, b)) = it.peek() {
                n += u64::from(Self::mergeable(objs, a, bs, b));
            }
        }
        n
    }

    /// `Ok` when `[start, end)` is covered by entries without a hole.
    pub(crate) fn check_covered(&self, start: u64, end: u64) -> Result<(), KernError> {
        let (_, e) = self
            .entries
            .range(..=start)
            .next_back()
            .filter(|(_, e)| e.end > start)
            .ok_or(KernError::InvalidAddress)?;
        let mut at = e.end;
        while at < end {
            at = self.entries.get(&at).ok_or(KernError::InvalidAddress)?.end;
        }
        Ok(())
    }

    /// The entries overlapping `[start, end)`, as (start, entry).
    pub(crate) fn overlapping(&self, start: u64, end: u64) -> impl Iterator<Item = (&u64, &Entry)> {
        let first = self
            .entries
            .range(..=start)
            .next_back()
            .filter(|(_, e)| e.end > start)
            .map_or(start, |(s, _)| *s);
        self.entries.range(first..end)
    }
}
