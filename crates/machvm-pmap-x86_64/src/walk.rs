//! Walking and building the tables: how many tables an enter needs, the
//! descent that creates them, demotion of a 2 MiB leaf, and `enter_at`.

use super::*;
use machvm_base::sync::Locks;

impl<L: Locks> X86Pmap<L> {
    /// Number of new tables that entering a leaf at `leaf_level` for `va`
    /// needs (a demotion counts as one).
    pub(crate) fn tables_needed(&self, root: PhysAddr, va: u64, leaf_level: u32) -> usize {
        let mut table = root;
        for level in (leaf_level + 1..=4).rev() {
            let e = self.load(table, index(va, level));
            if e & P == 0 {
                return (level - leaf_level) as usize;
            }
            if e & PS != 0 {
                // A large leaf in the way of a small one: demote it.
                return 1;
            }
            table = PhysAddr::new(e & ADDR);
        }
        0
    }

    /// Descends to the table at `leaf_level` for `va`, linking in the
    /// preallocated `spare` tables where levels are missing.
    pub(crate) fn descend(
        &self,
        s: &mut Space,
        pmap: PmapId,
        root: PhysAddr,
        va: u64,
        leaf_level: u32,
        spare: &mut ArrayVec<PhysAddr, 3>,
    ) -> PhysAddr {
        let mut table = root;
        for level in (leaf_level + 1..=4).rev() {
            let i = index(va, level);
            let e = self.load(table, i);
            table = if e & P == 0 {
                let t = spare.pop().expect("tables_needed undercounted");
                self.store(table, i, t.as_u64() | TABLE);
                self.add_use(table, 1);
                t
            } else if e & PS != 0 {
                let t = spare.pop().expect("tables_needed undercounted");
                self.demote_into(s, pmap, table, i, va & !(LARGE_PAGE_SIZE - 1), t);
                t
            } else {
                PhysAddr::new(e & ADDR)
            };
        }
        table
    }

    /// Replaces the 2 MiB leaf at `l2[i]` (mapping `base`) by the table `t`
    /// holding the same 512 small translations.
    pub(crate) fn demote_into(
        &self,
        s: &mut Space,
        pmap: PmapId,
        l2: PhysAddr,
        i: usize,
        base: u64,
        t: PhysAddr,
    ) {
        let e = self.load(l2, i);
        let pa = PhysAddr::new(e & ADDR & !(LARGE_PAGE_SIZE - 1));
        let flags = e & !(ADDR | PS) & !(1 << 12); // bit 12 is PAT in a large leaf
        for k in 0..ENTRIES {
            self.store(t, k, (pa.as_u64() + k as u64 * PAGE_SIZE) | flags);
        }
        self.add_use(t, ENTRIES as i32);
        if e & WIRED != 0 {
            // One wired leaf becomes 512: the counter counts leaves.
            s.wired += SMALL_PER_LARGE - 1;
        }
        if e & MANAGED != 0 {
            // The small entries first: a reader of the pv lists by frame
            // (`mappings_of`) then never finds the mapping in neither.
            for k in 0..SMALL_PER_LARGE {
                self.pv_add(
                    pa + k * PAGE_SIZE,
                    PvEntry::new(pmap, VirtAddr::new(base + k * PAGE_SIZE), false),
                );
            }
            self.pv_remove(pa, PvEntry::new(pmap, VirtAddr::new(base), true));
        }
        self.store(l2, i, t.as_u64() | TABLE);
    }

    pub(crate) fn enter_at(
        &self,
        pmap: PmapId,
        va: VirtAddr,
        pa: PhysAddr,
        prot: VmProt,
        wired: bool,
        large: bool,
    ) -> Result<TlbFlush, EnterError> {
        let align = if large { LARGE_PAGE_SIZE } else { PAGE_SIZE };
        if !va.is_aligned(align)
            || !pa.is_aligned(align)
            || va.as_u64() >= USER_MAX
            || va.as_u64() + align > USER_MAX
        {
            return Err(EnterError::BadAddress { va, pa });
        }
        if prot.is_empty() {
            let range = VaRange::new(va, va + align).ok_or(EnterError::BadAddress { va, pa })?;
            return Ok(self.remove(pmap, range));
        }
        let mut f = TlbFlush::none();
        #[cfg(test)]
        self.run_race_hook();
        let leaf_level = if large { 2 } else { 1 };
        let mut s = self
            .spaces
            .lock(pmap)
            .ok_or(EnterError::NoSuchPmap { pmap })?;
        let root = s.root;
        if large && self.small_below(root, va.as_u64()) {
            // Clear the small translations and the table sitting there, under
            // the same lock as the new leaf: a 4 KiB enter racing this one
            // either comes first and is cleared, or comes after and splits
            // the new leaf.
            self.range_op(
                &mut s,
                pmap,
                va.as_u64(),
                va.as_u64() + align,
                Op::Remove,
                &mut f,
            );
        }
        let need = self.tables_needed(root, va.as_u64(), leaf_level);
        let mut spare = match self.alloc_tables(&mut s.tables, need) {
            Ok(spare) => spare,
            Err(_) => {
                drop(s);
                self.flush(f);
                return Err(EnterError::NoTableFrame { va });
            }
        };
        let table = self.descend(&mut s, pmap, root, va.as_u64(), leaf_level, &mut spare);
        debug_assert!(spare.is_empty());
        let leaf = Leaf {
            pmap,
            va,
            pa,
            flags: self.leaf_flags(pa, prot, wired) | if large { PS } else { 0 },
            large,
        };
        self.install_leaf(&mut s, table, &leaf, &mut f);
        Ok(f)
    }

    /// `n` zeroed page-table frames, from the space's reserved ones first,
    /// or none at all.
    fn alloc_tables(
        &self,
        reserved: &mut Vec<PhysAddr>,
        n: usize,
    ) -> Result<ArrayVec<PhysAddr, 3>, FrameError> {
        let mut spare = ArrayVec::<PhysAddr, 3>::new();
        let from_reserve = n.min(reserved.len());
        spare.extend(reserved.drain(reserved.len() - from_reserve..));
        for _ in from_reserve..n {
            match self.alloc_table() {
                Ok(t) => spare.push(t),
                Err(e) => {
                    for t in spare.drain(from_reserve..) {
                        self.frames.free(t);
                    }
                    reserved.extend(spare);
                    return Err(e);
                }
            }
        }
        Ok(spare)
    }

    /// Writes `leaf` into slot `index(va)` of `table` (the lowest table of
    /// its walk, under the lock), replacing any translation there: the pv
    /// lists, the table's use count and the space's counts follow, a
    /// replaced translation's dirty bit goes to its frame, and a flush is
    /// added unless the same frame keeps the same or more rights.
    fn install_leaf(&self, s: &mut Space, table: PhysAddr, leaf: &Leaf, f: &mut TlbFlush) {
        let Leaf {
            pmap,
            va,
            pa,
            large,
            ..
        } = *leaf;
        let i = index(va.as_u64(), if large { 2 } else { 1 });
        let old = self.load(table, i);
        let mut acct = Acct::default();
        let mut new = leaf.flags;
        if old & P != 0 {
            // Replacing: drop the old translation's bookkeeping.
            let old_pa = PhysAddr::new(old & ADDR);
            if old & MANAGED != 0 {
                self.pv_remove(old_pa, PvEntry::new(pmap, va, large));
            }
            if old & WIRED != 0 {
                acct.wired -= 1;
            }
            // Same frame, same or more rights: keep A/D, no flush needed.
            let more_or_same = old_pa == pa && (old & RW) <= (new & RW) && (old & NX) >= (new & NX);
            if more_or_same {
                new |= old & (A | D);
            } else {
                f.add_page(pmap, va);
            }
        } else {
            self.add_use(table, 1);
            acct.resident += if large { SMALL_PER_LARGE as i64 } else { 1 };
        }
        if new & WIRED != 0 {
            acct.wired += 1;
        }
        let prev = self
            .mem()
            .swap_u64(entry::slot(table, i), pa.as_u64() | new);
        if prev & P != 0 && prev & D != 0 && new & D == 0 {
            // The replaced translation had written its frame.
            self.mark_dirty(PhysAddr::new(prev & ADDR), large);
        }
        if new & MANAGED != 0 {
            self.pv_add(pa, PvEntry::new(pmap, va, large));
        }
        s.resident = (s.resident as i64 + acct.resident) as u64;
        s.wired = (s.wired as i64 + acct.wired) as u64;
    }
}

/// One leaf translation to install.
#[derive(Clone, Copy)]
struct Leaf {
    pmap: PmapId,
    va: VirtAddr,
    pa: PhysAddr,
    /// Entry bits without the address.
    flags: u64,
    /// A 2 MiB leaf at level 2 (else 4 KiB at level 1).
    large: bool,
}
