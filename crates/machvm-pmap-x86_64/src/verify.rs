//! Reading back the tables: the leaves of a range, and the invariant checks
//! stated at the top of the crate.

use super::*;
use machvm_base::sync::Locks;

impl<L: Locks> X86Pmap<L> {
    pub(crate) fn collect_leaves(
        &self,
        table: PhysAddr,
        level: u32,
        base: u64,
        range: &VaRange,
        out: &mut Vec<(VirtAddr, Translation)>,
    ) {
        let span = 1u64 << shift(level);
        let n = if level == 4 { USER_ENTRIES } else { ENTRIES };
        for i in 0..n {
            let eva = base + i as u64 * span;
            if eva >= range.end().as_u64() || eva + span <= range.start().as_u64() {
                continue;
            }
            let e = self.load(table, i);
            if e & P == 0 {
                continue;
            }
            if level == 1 || e & PS != 0 {
                let pages = if level == 1 { 1 } else { SMALL_PER_LARGE };
                for k in 0..pages {
                    let va = eva + k * PAGE_SIZE;
                    if range.contains(VirtAddr::new(va)) {
                        let t = Translation {
                            pa: PhysAddr::new((e & ADDR & !(span - 1)) + k * PAGE_SIZE),
                            prot: Self::leaf_prot(e),
                            wired: e & WIRED != 0,
                            size: span,
                        };
                        out.push((VirtAddr::new(va), t));
                    }
                }
            } else {
                self.collect_leaves(PhysAddr::new(e & ADDR), level - 1, eva, range, out);
            }
        }
    }

    /// Checks every invariant stated at the top of the crate, naming the
    /// first rule broken. Any moment will do: every space is locked
    /// throughout, which freezes the tables and the pv lists.
    pub(crate) fn verify_all(&self) -> Result<(), Violation<PmapRule>> {
        let mut walk = Walk {
            pmap: PmapId(0),
            seen: alloc::collections::BTreeSet::new(),
            pv_seen: 0,
        };
        let all = self.spaces.lock_all();
        #[cfg(test)]
        if let Some(h) = self.verify_hook.lock().take() {
            h();
        }
        for (p, s) in &all.spaces {
            let (p, id) = (*p, p.0);
            walk.pmap = p;
            self.check_kernel_half(id as usize, s.root)?;
            let (resident, wired) = self.verify_table(&mut walk, s.root, 4, 0)?;
            if (resident, wired) != (s.resident, s.wired) {
                return Err(Violation::new(
                    PmapRule::Counters,
                    format!(
                        "pmap {id}: tables hold {resident} pages / {wired} wired, counters say {} / {}",
                        s.resident, s.wired
                    ),
                ));
            }
        }
        let pv_total: u64 = self.pv.iter().map(|h| h.lock().len() as u64).sum();
        if pv_total != walk.pv_seen {
            let d = format!("{pv_total} pv entries but {} managed leaves", walk.pv_seen);
            return Err(Violation::new(PmapRule::ReverseMaps, d));
        }
        Ok(())
    }

    /// The kernel half of pmap `id`'s root is the configured one.
    fn check_kernel_half(&self, id: usize, root: PhysAddr) -> Result<(), Violation<PmapRule>> {
        for k in 0..USER_ENTRIES {
            if self.load(root, USER_ENTRIES + k) != self.cfg.kernel_half[k] {
                let d = format!("pmap {id}: kernel half entry {} differs", USER_ENTRIES + k);
                return Err(Violation::new(PmapRule::KernelHalf, d));
            }
        }
        Ok(())
    }

    /// Checks one table subtree (at most four levels deep); returns its
    /// resident 4 KiB pages and wired leaves.
    fn verify_table(
        &self,
        w: &mut Walk,
        table: PhysAddr,
        level: u32,
        base: u64,
    ) -> Result<(u64, u64), Violation<PmapRule>> {
        use PmapRule::*;
        let meta = self
            .frames
            .page(table)
            .ok_or_else(|| Violation::new(Tables, format!("table {table:?} outside frame span")))?;
        if meta.state() != FrameState::PageTable {
            let d = format!("table {table:?} is in state {:?}", meta.state());
            return Err(Violation::new(Tables, d));
        }
        w.seen.insert(table.as_u64());
        let n = if level == 4 { USER_ENTRIES } else { ENTRIES };
        let span = 1u64 << shift(level);
        let (mut present, mut resident, mut wired) = (0u16, 0, 0);
        for i in 0..n {
            let e = self.load(table, i);
            if e & P == 0 {
                if e != 0 {
                    let d = format!("non-present entry with bits {e:#x}");
                    return Err(Violation::new(Entries, d));
                }
                continue;
            }
            present += 1;
            let eva = base + i as u64 * span;
            if level == 1 || (level == 2 && e & PS != 0) {
                let large = level == 2;
                self.check_leaf(w, e, eva, large)?;
                resident += if large { SMALL_PER_LARGE } else { 1 };
                wired += u64::from(e & WIRED != 0);
            } else {
                let child = self.check_link(w, e, eva, level)?;
                let (r, wd) = self.verify_table(w, child, level - 1, eva)?;
                resident += r;
                wired += wd;
            }
        }
        if present != meta.use_count() {
            let d = format!(
                "table {table:?} level {level}: {present} present entries, use_count {}",
                meta.use_count()
            );
            return Err(Violation::new(Tables, d));
        }
        Ok((resident, wired))
    }

    /// A leaf `e` for `eva`: user-accessible, `MANAGED` iff its frame is
    /// managed, and then on that frame's pv list.
    fn check_leaf(
        &self,
        w: &mut Walk,
        e: u64,
        eva: u64,
        large: bool,
    ) -> Result<(), Violation<PmapRule>> {
        if e & US == 0 {
            let d = format!("user leaf {eva:#x} without US");
            return Err(Violation::new(PmapRule::Entries, d));
        }
        let span = if large { LARGE_PAGE_SIZE } else { PAGE_SIZE };
        let pa = PhysAddr::new(e & ADDR & !(span - 1));
        let idx = self.frames.frame_index(pa).filter(|_| self.managed(pa));
        if idx.is_some() != (e & MANAGED != 0) {
            let d = format!("leaf {eva:#x}: MANAGED bit disagrees with frame span");
            return Err(Violation::new(PmapRule::ReverseMaps, d));
        }
        if let Some(idx) = idx {
            if !self.pv[idx]
                .lock()
                .contains(PvEntry::new(w.pmap, VirtAddr::new(eva), large))
            {
                let d = format!("leaf {eva:#x} -> {pa:?} missing from pv list");
                return Err(Violation::new(PmapRule::ReverseMaps, d));
            }
            w.pv_seen += 1;
        }
        Ok(())
    }

    /// An intermediate entry `e` for `eva` at `level`: `P|RW|US`, not
    /// large, linking a non-empty table no other entry links. Returns it.
    fn check_link(
        &self,
        w: &Walk,
        e: u64,
        eva: u64,
        level: u32,
    ) -> Result<PhysAddr, Violation<PmapRule>> {
        if e & PS != 0 || e & TABLE != TABLE || e & NX != 0 {
            let d = format!("intermediate entry {eva:#x} at level {level} not P|RW|US");
            return Err(Violation::new(PmapRule::Entries, d));
        }
        let child = PhysAddr::new(e & ADDR);
        if w.seen.contains(&child.as_u64()) {
            let d = format!("table {child:?} linked twice");
            return Err(Violation::new(PmapRule::Tables, d));
        }
        if self.use_count(child) == 0 {
            let d = format!("empty table {child:?} left linked at level {}", level - 1);
            return Err(Violation::new(PmapRule::Tables, d));
        }
        Ok(child)
    }
}

/// What one verification walk carries across tables.
struct Walk {
    pmap: PmapId,
    /// Tables reached so far (each must be reached once).
    seen: alloc::collections::BTreeSet<u64>,
    /// Managed leaves found (each on a pv list).
    pv_seen: u64,
}
