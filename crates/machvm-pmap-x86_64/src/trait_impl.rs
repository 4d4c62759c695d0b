//! [`Pmap`] for [`X86Pmap`]: the machine-independent interface over the
//! page tables.

use super::*;
use machvm_base::sync::Locks;

impl<L: Locks> Pmap for X86Pmap<L> {
    fn create(&self) -> Result<PmapId, KernError> {
        let root = self.alloc_table()?;
        for (k, e) in self.cfg.kernel_half.iter().enumerate() {
            self.store(root, USER_ENTRIES + k, *e);
        }
        let space = Space {
            root,
            ..Space::default()
        };
        match self.spaces.insert(space) {
            Some(id) => Ok(id),
            None => {
                self.frames.free(root);
                Err(KernError::ResourceShortage)
            }
        }
    }

    fn destroy(&self, pmap: PmapId) {
        let Some(mut s) = self.spaces.lock(pmap) else {
            return;
        };
        debug_assert_eq!(s.active, 0, "destroying an active pmap");
        let root = s.root;
        let mut f = TlbFlush::none();
        self.range_op(&mut s, pmap, 0, USER_MAX, Op::Remove, &mut f);
        let reserved = core::mem::take(&mut s.tables);
        self.spaces.remove(pmap, s);
        for t in reserved {
            self.frames.free(t);
        }
        // No CPU runs in a destroyed pmap, and loading another CR3 flushed
        // what it cached; its tables can go at once.
        for t in f.into_parts().release {
            self.frames.free(t);
        }
        self.frames.free(root);
    }

    fn reserve_tables(&self, pmap: PmapId, range: VaRange) -> Result<(), KernError> {
        // Frames one by one: a bound for a large range is far more than a
        // wiring inside it takes, and is no size to ask the heap for.
        let n = tables_bound(range);
        let mut got = Vec::new();
        for _ in 0..n {
            match self.alloc_table() {
                Ok(t) => got.push(t),
                Err(_) => {
                    got.into_iter().for_each(|t| self.frames.free(t));
                    return Err(KernError::ResourceShortage);
                }
            }
        }
        match self.spaces.lock(pmap) {
            Some(mut s) => s.tables.append(&mut got),
            None => got.into_iter().for_each(|t| self.frames.free(t)),
        }
        Ok(())
    }

    fn tables_for(&self, range: VaRange) -> u64 {
        tables_bound(range) as u64
    }

    fn tables_missing(&self, pmap: PmapId, va: VirtAddr) -> u64 {
        let Some(root) = self.root(pmap) else {
            return 0;
        };
        let s = crate::entry::walk(self.frames.mem(), root, va);
        match (s.pte.is_present(), s.level) {
            (false, level) => u64::from(level - 1),
            (true, 1) => 0,
            // A large leaf: demoted into a new table.
            (true, _) => 1,
        }
    }

    fn release_tables(&self, pmap: PmapId) {
        let reserved = self
            .spaces
            .lock(pmap)
            .map(|mut s| core::mem::take(&mut s.tables));
        reserved
            .into_iter()
            .flatten()
            .for_each(|t| self.frames.free(t));
    }

    fn enter(
        &self,
        pmap: PmapId,
        va: VirtAddr,
        pa: PhysAddr,
        prot: VmProt,
        wired: bool,
    ) -> Result<TlbFlush, EnterError> {
        self.enter_at(pmap, va, pa, prot, wired, false)
    }

    fn enter_large(
        &self,
        pmap: PmapId,
        va: VirtAddr,
        pa: PhysAddr,
        prot: VmProt,
        wired: bool,
    ) -> Result<TlbFlush, EnterError> {
        self.enter_at(pmap, va, pa, prot, wired, true)
    }

    fn remove(&self, pmap: PmapId, range: VaRange) -> TlbFlush {
        let mut f = TlbFlush::none();
        let Some(mut s) = self.spaces.lock(pmap) else {
            return f;
        };
        self.range_op(
            &mut s,
            pmap,
            range.start().as_u64(),
            range.end().as_u64(),
            Op::Remove,
            &mut f,
        );
        f
    }

    fn protect(&self, pmap: PmapId, range: VaRange, prot: VmProt) -> TlbFlush {
        let mut f = TlbFlush::none();
        let Some(mut s) = self.spaces.lock(pmap) else {
            return f;
        };
        self.range_op(
            &mut s,
            pmap,
            range.start().as_u64(),
            range.end().as_u64(),
            Op::for_prot(prot),
            &mut f,
        );
        f
    }

    fn extract(&self, pmap: PmapId, va: VirtAddr) -> Option<Translation> {
        let s = self.spaces.lock(pmap)?;
        let (_, _, e, large) = self.find_leaf(s.root, va.as_u64())?;
        let size = if large { LARGE_PAGE_SIZE } else { PAGE_SIZE };
        Some(Translation {
            pa: PhysAddr::new((e & ADDR & !(size - 1)) + (va.page_base().as_u64() & (size - 1))),
            prot: Self::leaf_prot(e),
            wired: e & WIRED != 0,
            size,
        })
    }

    fn translate(
        &self,
        pmap: PmapId,
        va: VirtAddr,
        access: Access,
        user: bool,
    ) -> Result<PhysAddr, FaultCode> {
        self.mmu_walk(pmap, va, access, user)
    }

    fn page_protect(&self, pa: PhysAddr, prot: VmProt) -> TlbFlush {
        let mut f = TlbFlush::none();
        let op = Op::for_prot(prot);
        // The pv lists as they are now, each mapping checked again under
        // its space's lock (it may have gone or changed meanwhile).
        for (pmap, va) in self.mappings_of(pa) {
            let Some(mut s) = self.spaces.lock(pmap) else {
                continue;
            };
            if self.leaf_of(&s, va, pa).is_some() {
                let va = va.as_u64();
                self.range_op(&mut s, pmap, va, va + PAGE_SIZE, op, &mut f);
            }
        }
        f
    }

    fn is_modified(&self, pa: PhysAddr) -> bool {
        let recorded = self
            .frames
            .page(pa)
            .is_some_and(|p| p.flags() & machvm_frame::page_flags::DIRTY != 0);
        let (any, f) = self.modify_bits(pa, D, false);
        let _ = f.into_parts();
        recorded || any
    }

    fn clear_modify(&self, pa: PhysAddr) -> TlbFlush {
        if let Some(p) = self.frames.page(pa) {
            p.clear_flags(machvm_frame::page_flags::DIRTY);
        }
        self.modify_bits(pa, D, true).1
    }

    fn is_referenced(&self, pa: PhysAddr) -> bool {
        let (any, f) = self.modify_bits(pa, A, false);
        let _ = f.into_parts();
        any
    }

    fn clear_reference(&self, pa: PhysAddr) -> TlbFlush {
        self.modify_bits(pa, A, true).1
    }

    fn change_wiring(&self, pmap: PmapId, va: VirtAddr, wired: bool) {
        let Some(mut s) = self.spaces.lock(pmap) else {
            return;
        };
        if let Some((table, i, e, _)) = self.find_leaf(s.root, va.as_u64())
            && (e & WIRED != 0) != wired
        {
            self.store(table, i, e ^ WIRED);
            if wired {
                s.wired += 1;
            } else {
                s.wired -= 1;
            }
        }
    }

    fn activate(&self, pmap: PmapId, cpu: usize) {
        let cpu = cpu % 64;
        let mut current = self.current.lock();
        if let Some(prev) = current[cpu].take()
            && let Some(mut s) = self.spaces.lock(PmapId(prev))
        {
            s.active &= !(1 << cpu);
        }
        let Some(mut s) = self.spaces.lock(pmap) else {
            return;
        };
        s.active |= 1 << cpu;
        let root = s.root;
        drop(s);
        current[cpu] = Some(pmap.0);
        drop(current);
        if let Some(mmu) = self.cfg.mmu
            && mmu.current_cpu() == cpu
        {
            mmu.load_root(root);
        }
    }

    fn deactivate(&self, pmap: PmapId, cpu: usize) {
        let cpu = cpu % 64;
        let mut current = self.current.lock();
        if current[cpu] == Some(pmap.0) {
            current[cpu] = None;
        }
        if let Some(mut s) = self.spaces.lock(pmap) {
            s.active &= !(1 << cpu);
        }
    }

    fn flush(&self, flush: TlbFlush) {
        if flush.is_empty() {
            return;
        }
        self.flushes.fetch_add(1, Relaxed);
        let parts = flush.into_parts();
        if let Some(mmu) = self.cfg.mmu {
            // Each space's CPUs read under its lock, none held across the
            // shootdown.
            let active = |p: PmapId| self.spaces.lock(p).map_or(0, |s| s.active);
            if parts.everything {
                let all = self
                    .spaces
                    .live_ids()
                    .into_iter()
                    .fold(0, |m, p| m | active(p));
                if all != 0 {
                    mmu.invalidate(all, None);
                }
            } else {
                let mut jobs: ArrayVec<
                    (
                        CpuSet,
                        Option<ArrayVec<VirtAddr, { machvm_pmap::TLB_FLUSH_BATCH }>>,
                    ),
                    40,
                > = ArrayVec::new();
                for p in &parts.whole {
                    jobs.push((active(*p), None));
                }
                let mut done: ArrayVec<PmapId, { machvm_pmap::TLB_FLUSH_BATCH }> = ArrayVec::new();
                for (p, _) in &parts.pages {
                    if done.contains(p) {
                        continue;
                    }
                    done.push(*p);
                    let vas = parts
                        .pages
                        .iter()
                        .filter(|(q, _)| q == p)
                        .map(|(_, va)| *va)
                        .collect();
                    jobs.push((active(*p), Some(vas)));
                }
                for (cpus, pages) in jobs {
                    if cpus != 0 {
                        mmu.invalidate(cpus, pages.as_deref());
                    }
                }
            }
        }
        for t in parts.release {
            self.frames.free(t);
        }
    }

    fn resident_count(&self, pmap: PmapId) -> u64 {
        self.spaces.lock(pmap).map_or(0, |s| s.resident)
    }

    fn mappings(&self, pmap: PmapId, range: VaRange) -> Vec<(VirtAddr, Translation)> {
        let mut out = Vec::new();
        if let Some(s) = self.spaces.lock(pmap) {
            self.collect_leaves(s.root, 4, 0, &range, &mut out);
        }
        out
    }

    fn mapping_count(&self, pa: PhysAddr) -> usize {
        self.mappings_of(pa).len()
    }

    fn verify(&self) -> Result<(), Violation<PmapRule>> {
        self.verify_all()
    }
}

/// At most the tables entering 4 KiB translations over `range` can create:
/// one page table per 2 MiB, one directory per 1 GiB and one directory
/// pointer table per 512 GiB it touches (the root always exists).
fn tables_bound(range: VaRange) -> usize {
    if range.is_empty() {
        return 0;
    }
    let (s, e) = (range.start().as_u64(), range.end().as_u64() - 1);
    let spans = |shift: u32| ((e >> shift) - (s >> shift) + 1) as usize;
    spans(21) + spans(30) + spans(39)
}
