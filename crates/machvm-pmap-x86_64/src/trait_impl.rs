//! [`Pmap`] for [`X86Pmap`]: the machine-independent interface over the
//! page tables.

use super::*;

impl Pmap for X86Pmap {
    fn create(&self) -> Result<PmapId, KernError> {
        let root = self.alloc_table()?;
        for (k, e) in self.cfg.kernel_half.iter().enumerate() {
            self.store(root, USER_ENTRIES + k, *e);
        }
        let space = Space {
            root,
            active: 0,
            resident: 0,
            wired: 0,
        };
        let mut g = self.inner.lock();
        if let Some(id) = g.free_ids.pop() {
            g.spaces[id as usize] = Some(space);
            return Ok(PmapId(id));
        }
        match u32::try_from(g.spaces.len()) {
            Ok(id) if id < pv::MAX_PMAPS => {
                g.spaces.push(Some(space));
                Ok(PmapId(id))
            }
            _ => {
                drop(g);
                self.frames.free(root);
                Err(KernError::ResourceShortage)
            }
        }
    }

    fn destroy(&self, pmap: PmapId) {
        let mut g = self.inner.lock();
        let Some(s) = g.space(pmap) else { return };
        debug_assert_eq!(s.active, 0, "destroying an active pmap");
        let root = s.root;
        let mut f = TlbFlush::none();
        self.range_op(&mut g, pmap, 0, USER_MAX, Op::Remove, &mut f);
        g.spaces[pmap.0 as usize] = None;
        g.free_ids.push(pmap.0);
        drop(g);
        // No CPU runs in a destroyed pmap, and loading another CR3 flushed
        // what it cached; its tables can go at once.
        for t in f.into_parts().release {
            self.frames.free(t);
        }
        self.frames.free(root);
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
        let mut g = self.inner.lock();
        self.range_op(
            &mut g,
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
        let mut g = self.inner.lock();
        self.range_op(
            &mut g,
            pmap,
            range.start().as_u64(),
            range.end().as_u64(),
            Op::for_prot(prot),
            &mut f,
        );
        f
    }

    fn extract(&self, pmap: PmapId, va: VirtAddr) -> Option<Translation> {
        let mut g = self.inner.lock();
        let root = g.space(pmap)?.root;
        let (_, _, e, large) = self.find_leaf(root, va.as_u64())?;
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
        let mut g = self.inner.lock();
        let op = Op::for_prot(prot);
        for (pmap, va) in self.mappings_of(&g, pa) {
            self.range_op(
                &mut g,
                pmap,
                va.as_u64(),
                va.as_u64() + PAGE_SIZE,
                op,
                &mut f,
            );
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
        let mut g = self.inner.lock();
        let Some(root) = g.space(pmap).map(|s| s.root) else {
            return;
        };
        if let Some((table, i, e, _)) = self.find_leaf(root, va.as_u64()) {
            if (e & WIRED != 0) != wired {
                self.store(table, i, e ^ WIRED);
                if let Some(s) = g.space(pmap) {
                    if wired {
                        s.wired += 1;
                    } else {
                        s.wired -= 1;
                    }
                }
            }
        }
    }

    fn activate(&self, pmap: PmapId, cpu: usize) {
        let cpu = cpu % 64;
        let mut g = self.inner.lock();
        if let Some(prev) = g.current[cpu].take() {
            if let Some(s) = g.space(PmapId(prev)) {
                s.active &= !(1 << cpu);
            }
        }
        let Some(s) = g.space(pmap) else { return };
        s.active |= 1 << cpu;
        let root = s.root;
        g.current[cpu] = Some(pmap.0);
        drop(g);
        if let Some(mmu) = self.cfg.mmu {
            if mmu.current_cpu() == cpu {
                mmu.load_root(root);
            }
        }
    }

    fn deactivate(&self, pmap: PmapId, cpu: usize) {
        let cpu = cpu % 64;
        let mut g = self.inner.lock();
        if g.current[cpu] == Some(pmap.0) {
            g.current[cpu] = None;
        }
        if let Some(s) = g.space(pmap) {
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
            let mut g = self.inner.lock();
            let mut active = |p: PmapId| g.space(p).map_or(0, |s| s.active);
            if parts.everything {
                let all = g.spaces.iter().flatten().fold(0, |m, s| m | s.active);
                drop(g);
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
                drop(g);
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
        self.inner.lock().space(pmap).map_or(0, |s| s.resident)
    }

    fn mappings(&self, pmap: PmapId, range: VaRange) -> Vec<(VirtAddr, Translation)> {
        let mut g = self.inner.lock();
        let mut out = Vec::new();
        if let Some(root) = g.space(pmap).map(|s| s.root) {
            self.collect_leaves(root, 4, 0, &range, &mut out);
        }
        out
    }

    fn mapping_count(&self, pa: PhysAddr) -> usize {
        let g = self.inner.lock();
        self.mappings_of(&g, pa).len()
    }

    fn verify(&self) -> Result<(), Violation<PmapRule>> {
        self.verify_all()
    }
}
