//! Operations over ranges and frames: protect/remove by range, one leaf at
//! a time; finding a leaf; a frame's mappings and its modify/reference
//! bits through the pv lists.

use super::*;
use machvm_base::sync::Locks;

impl<L: Locks> X86Pmap<L> {
    /// Applies `op` to every leaf of `pmap` in `[start, end)`.
    pub(crate) fn range_op(
        &self,
        s: &mut Space,
        pmap: PmapId,
        start: u64,
        end: u64,
        op: Op,
        f: &mut TlbFlush,
    ) {
        let end = end.min(USER_MAX);
        if start >= end {
            return;
        }
        let root = s.root;
        let mut w = RangeWalk {
            s,
            pmap,
            op,
            f,
            acct: Acct::default(),
        };
        self.range_op_in(
            &mut w,
            Table {
                pa: root,
                level: 4,
                base: 0,
            },
            start,
            end,
        );
        let acct = w.acct;
        s.resident = (s.resident as i64 + acct.resident) as u64;
        s.wired = (s.wired as i64 + acct.wired) as u64;
    }

    /// [`range_op`](Self::range_op) over `[start, end)` within table `t`
    /// (at most four levels deep).
    fn range_op_in(&self, w: &mut RangeWalk<'_>, t: Table, start: u64, end: u64) {
        let span = 1u64 << shift(t.level);
        let first = ((start - t.base) / span) as usize;
        let last = ((end - 1 - t.base) / span) as usize;
        for i in first..=last.min(ENTRIES - 1) {
            let e = self.load(t.pa, i);
            if e & P == 0 {
                continue;
            }
            let eva = t.base + i as u64 * span;
            let (s, e_end) = (start.max(eva), end.min(eva + span));
            let whole = s == eva && e_end == eva + span;
            if t.level == 1 || (t.level == 2 && e & PS != 0 && whole) {
                self.leaf_op(w, t.pa, i, eva, t.level == 2);
                continue;
            }
            let child = if e & PS != 0 {
                // Part of a large leaf: split it, or failing that, drop (or
                // lower) the whole 2 MiB, which is always allowed of a cache.
                match self.alloc_table() {
                    Ok(c) => {
                        self.demote_into(w.s, w.pmap, t.pa, i, eva, c);
                        c
                    }
                    Err(_) => {
                        self.leaf_op(w, t.pa, i, eva, true);
                        continue;
                    }
                }
            } else {
                PhysAddr::new(e & ADDR)
            };
            let below = Table {
                pa: child,
                level: t.level - 1,
                base: eva,
            };
            self.range_op_in(w, below, s, e_end);
            if self.use_count(child) == 0 {
                self.store(t.pa, i, 0);
                self.add_use(t.pa, -1);
                w.f.defer_free(child);
                w.f.add_page(w.pmap, VirtAddr::new(s));
            }
        }
    }

    /// Applies the walk's operation to leaf `i` of `table`, mapping `va`.
    fn leaf_op(&self, w: &mut RangeWalk<'_>, table: PhysAddr, i: usize, va: u64, large: bool) {
        let e = self.load(table, i);
        let pmap = w.pmap;
        match w.op {
            Op::Remove => {
                // Atomically, so that a dirty bit the MMU sets meanwhile is
                // not lost: it moves to the frame's metadata.
                let e = self.mem().swap_u64(entry::slot(table, i), 0);
                if e & D != 0 {
                    self.mark_dirty(PhysAddr::new(e & ADDR), large);
                }
                self.add_use(table, -1);
                if e & MANAGED != 0 {
                    self.pv_remove(
                        PhysAddr::new(e & ADDR),
                        PvEntry::new(pmap, VirtAddr::new(va), large),
                    );
                }
                w.acct.resident -= if large { SMALL_PER_LARGE as i64 } else { 1 };
                if e & WIRED != 0 {
                    w.acct.wired -= 1;
                }
                w.f.add_page(pmap, VirtAddr::new(va));
            }
            Op::Lower { clear, set } => {
                if (e & !clear) | set != e {
                    // Read-modify-write atomically: the MMU may be setting
                    // A/D in this entry at the same moment.
                    let slot = entry::slot(table, i);
                    self.mem().fetch_and_u64(slot, !clear);
                    self.mem().fetch_or_u64(slot, set);
                    w.f.add_page(pmap, VirtAddr::new(va));
                }
            }
        }
    }

    /// Records in the frame metadata that a translation being removed had
    /// written the frame (all 512 frames of a large leaf).
    pub(crate) fn mark_dirty(&self, pa: PhysAddr, large: bool) {
        let n = if large { SMALL_PER_LARGE } else { 1 };
        let base = PhysAddr::new(pa.as_u64() & !((n << 12) - 1));
        for k in 0..n {
            if let Some(p) = self.frames.page(base + k * PAGE_SIZE) {
                p.set_flags(machvm_frame::page_flags::DIRTY);
            }
        }
    }

    /// Finds the leaf entry for `va`: (table, index, entry, is_large).
    pub(crate) fn find_leaf(
        &self,
        root: PhysAddr,
        va: u64,
    ) -> Option<(PhysAddr, usize, u64, bool)> {
        if va >= USER_MAX {
            return None;
        }
        let mut table = root;
        for level in (1..=4).rev() {
            let i = index(va, level);
            let e = self.load(table, i);
            if e & P == 0 {
                return None;
            }
            if level == 1 || (level == 2 && e & PS != 0) {
                return Some((table, i, e, level == 2));
            }
            table = PhysAddr::new(e & ADDR);
        }
        None
    }

    /// Every (pmap, 4 KiB va) mapping the frame `pa`, as its pv lists say
    /// now (each list locked in turn; a caller that acts on one checks it
    /// under the space's lock, see [`leaf_of`](Self::leaf_of)). The 2 MiB
    /// head's list is read before `pa`'s own: a demotion adds the small
    /// entries before it drops the large one, so a mapping being demoted
    /// meanwhile is seen in one list or both, never in neither.
    pub(crate) fn mappings_of(&self, pa: PhysAddr) -> Vec<(PmapId, VirtAddr)> {
        let mut out = Vec::new();
        let head = PhysAddr::new(pa.as_u64() & !(LARGE_PAGE_SIZE - 1));
        if let Some(i) = self.frames.frame_index(head) {
            out.extend(
                self.pv[i]
                    .lock()
                    .iter()
                    .filter(|e| e.large())
                    .map(|e| (e.pmap(), e.va() + (pa.page_base() - head))),
            );
        }
        #[cfg(test)]
        if let Some(h) = self.pv_hook.lock().take() {
            h();
        }
        if let Some(i) = self.frames.frame_index(pa) {
            out.extend(
                self.pv[i]
                    .lock()
                    .iter()
                    .filter(|e| !e.large())
                    .map(|e| (e.pmap(), e.va())),
            );
        }
        out.sort_unstable_by_key(|&(p, va)| (p.0, va.as_u64()));
        out.dedup();
        out
    }

    /// The leaf of the locked space `s` that maps `va` to the frame `pa`
    /// (a small leaf, or the large one covering it), if it still does.
    pub(crate) fn leaf_of(
        &self,
        s: &Space,
        va: VirtAddr,
        pa: PhysAddr,
    ) -> Option<(PhysAddr, usize, u64, bool)> {
        let leaf = self.find_leaf(s.root, va.as_u64())?;
        let (_, _, e, large) = leaf;
        let span = if large { LARGE_PAGE_SIZE } else { PAGE_SIZE };
        let maps = (e & ADDR & !(span - 1)) + (va.as_u64() & (span - 1) & !(PAGE_SIZE - 1));
        (maps == pa.page_base().as_u64()).then_some(leaf)
    }

    pub(crate) fn modify_bits(&self, pa: PhysAddr, bit: u64, clear: bool) -> (bool, TlbFlush) {
        let mut any = false;
        let mut f = TlbFlush::none();
        for (pmap, va) in self.mappings_of(pa) {
            let Some(s) = self.spaces.lock(pmap) else {
                continue;
            };
            if let Some((table, i, e, _)) = self.leaf_of(&s, va, pa)
                && e & bit != 0
            {
                any = true;
                if clear {
                    self.mem().fetch_and_u64(entry::slot(table, i), !bit);
                    f.add_page(pmap, va);
                }
            }
        }
        (any, f)
    }
}

/// What one range operation carries down the tables.
struct RangeWalk<'a> {
    s: &'a mut Space,
    pmap: PmapId,
    op: Op,
    f: &'a mut TlbFlush,
    /// Changes to the space's resident and wired counts.
    acct: Acct,
}

/// One page table of a walk: where it is, its level (4: PML4), and the
/// first address it maps.
#[derive(Clone, Copy)]
struct Table {
    pa: PhysAddr,
    level: u32,
    base: u64,
}
