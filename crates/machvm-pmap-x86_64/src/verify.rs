//! Reading back the tables: the leaves of a range, and the invariant checks
//! stated at the top of the crate.

use super::*;

impl X86Pmap {
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

    /// Checks one table subtree; returns (resident 4 KiB pages, wired leaves).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn verify_table(
        &self,
        g: &Inner,
        pmap: PmapId,
        table: PhysAddr,
        level: u32,
        base: u64,
        seen: &mut alloc::collections::BTreeSet<u64>,
        pv_seen: &mut u64,
    ) -> Result<(u64, u64), String> {
        let meta = self.frames.page(table).ok_or("table outside frame span")?;
        if meta.state() != FrameState::PageTable {
            return Err(format!("table {table:?} is in state {:?}", meta.state()));
        }
        seen.insert(table.as_u64());
        let n = if level == 4 { USER_ENTRIES } else { ENTRIES };
        let span = 1u64 << shift(level);
        let (mut present, mut resident, mut wired) = (0u16, 0, 0);
        for i in 0..n {
            let e = self.load(table, i);
            if e & P == 0 {
                if e != 0 {
                    return Err(format!("non-present entry with bits {e:#x}"));
                }
                continue;
            }
            present += 1;
            let eva = base + i as u64 * span;
            if level == 1 || (level == 2 && e & PS != 0) {
                let large = level == 2;
                if e & US == 0 {
                    return Err(format!("user leaf {eva:#x} without US"));
                }
                let pa = PhysAddr::new(e & ADDR & !(span - 1));
                let managed = self.frames.frame_index(pa).is_some();
                if managed != (e & MANAGED != 0) {
                    return Err(format!(
                        "leaf {eva:#x}: MANAGED bit disagrees with frame span"
                    ));
                }
                if managed {
                    let idx = self.frames.frame_index(pa).unwrap_or(0);
                    if !g.pv[idx].contains(PvEntry::new(pmap, VirtAddr::new(eva), large)) {
                        return Err(format!("leaf {eva:#x} -> {pa:?} missing from pv list"));
                    }
                    *pv_seen += 1;
                }
                resident += if large { SMALL_PER_LARGE } else { 1 };
                wired += u64::from(e & WIRED != 0);
            } else if e & PS != 0 {
                return Err(format!("PS bit at level {level}"));
            } else {
                if e & TABLE != TABLE || e & NX != 0 {
                    return Err(format!(
                        "intermediate entry {eva:#x} at level {level} not P|RW|US"
                    ));
                }
                let child = PhysAddr::new(e & ADDR);
                if seen.contains(&child.as_u64()) {
                    return Err(format!("table {child:?} linked twice"));
                }
                if self.use_count(child) == 0 {
                    return Err(format!(
                        "empty table {child:?} left linked at level {}",
                        level - 1
                    ));
                }
                let (r, w) = self.verify_table(g, pmap, child, level - 1, eva, seen, pv_seen)?;
                resident += r;
                wired += w;
            }
        }
        if present != meta.use_count() {
            return Err(format!(
                "table {table:?} level {level}: {present} present entries, use_count {}",
                meta.use_count()
            ));
        }
        Ok((resident, wired))
    }
}
