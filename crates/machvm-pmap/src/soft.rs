//! The software pmap: translations in ordered maps, obviously correct.
//!
//! It has no hardware to drive and no TLB, so flushes only count. Large pages
//! are entered as 512 small translations. Invariants (see [`SoftPmap::verify`]):
//! every translation is on the reverse map of its frame and vice versa, and
//! stored protections are effective (non-empty implies `READ`).

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};
use machvm_base::sync::{Locks, Mutex, SpinLocks};

use crate::{
    Access, CpuSet, EnterError, FaultCode, KernError, LARGE_PAGE_SIZE, PAGE_SIZE, PhysAddr, Pmap,
    PmapId, PmapRule, TlbFlush, Translation, VaRange, Violation, VirtAddr, VmProt, effective_prot,
};

#[derive(Clone, Copy, Debug)]
struct Pte {
    pa: u64,
    prot: VmProt,
    wired: bool,
    referenced: bool,
    modified: bool,
}

#[derive(Default)]
struct Space {
    ptes: BTreeMap<u64, Pte>,
    active: CpuSet,
}

#[derive(Default)]
struct Inner {
    spaces: Vec<Option<Space>>,
    free_ids: Vec<u32>,
    /// Reverse map: frame -> (pmap, va) of each translation.
    pv: BTreeMap<u64, BTreeSet<(u32, u64)>>,
}

/// A [`Pmap`] kept entirely in software.
///
/// ```
/// use machvm_pmap::{Pmap, SoftPmap, VirtAddr, PhysAddr, VmProt, Access};
/// let pm = SoftPmap::new();
/// let p = pm.create().unwrap();
/// let f = pm.enter(p, VirtAddr::new(0x1000), PhysAddr::new(0x5000), VmProt::READ, false).unwrap();
/// pm.flush(f);
/// assert!(pm.translate(p, VirtAddr::new(0x1000), Access::Read, true).is_ok());
/// assert!(pm.translate(p, VirtAddr::new(0x1000), Access::Write, true).is_err());
/// pm.destroy(p);
/// ```
pub struct SoftPmap<L: Locks = SpinLocks> {
    inner: Mutex<L, Inner>,
    flushes: AtomicU64,
}

impl SoftPmap {
    /// An empty software pmap module under spin's locks.
    pub fn new() -> SoftPmap {
        SoftPmap::with_locks()
    }
}

impl Default for SoftPmap {
    fn default() -> Self {
        SoftPmap::new()
    }
}

impl<L: Locks> SoftPmap<L> {
    /// An empty software pmap module under the locks of family `L`.
    pub fn with_locks() -> SoftPmap<L> {
        SoftPmap {
            inner: Mutex::<L, _>::new(Inner::default()),
            flushes: AtomicU64::new(0),
        }
    }

    /// Whether any mapping of `pa` has the bit `bit` selects, clearing it
    /// everywhere when `clear`.
    fn test_and_clear(
        &self,
        pa: PhysAddr,
        bit: fn(&mut Pte) -> &mut bool,
        clear: bool,
    ) -> (bool, TlbFlush) {
        let mut g = self.inner.lock();
        let mut f = TlbFlush::none();
        let mut any = false;
        for (p, va) in g.pv_of(pa) {
            if let Some(pte) = g.space(PmapId(p)).and_then(|s| s.ptes.get_mut(&va)) {
                let b = bit(pte);
                if *b {
                    any = true;
                    if clear {
                        *b = false;
                        f.add_page(PmapId(p), VirtAddr::new(va));
                    }
                }
            }
        }
        (any, f)
    }

    /// Number of non-empty flushes performed (for tests).
    pub fn flush_count(&self) -> u64 {
        self.flushes.load(Relaxed)
    }
}

impl Inner {
    fn space(&mut self, p: PmapId) -> Option<&mut Space> {
        self.spaces.get_mut(p.0 as usize).and_then(Option::as_mut)
    }

    fn insert(&mut self, p: PmapId, va: u64, pte: Pte, flush: &mut TlbFlush) {
        self.remove_one(p, va, flush);
        if let Some(s) = self.space(p) {
            s.ptes.insert(va, pte);
            self.pv.entry(pte.pa).or_default().insert((p.0, va));
        }
    }

    fn remove_one(&mut self, p: PmapId, va: u64, flush: &mut TlbFlush) {
        let Some(s) = self.space(p) else { return };
        if let Some(old) = s.ptes.remove(&va) {
            if let Some(set) = self.pv.get_mut(&old.pa) {
                set.remove(&(p.0, va));
                if set.is_empty() {
                    self.pv.remove(&old.pa);
                }
            }
            flush.add_page(p, VirtAddr::new(va));
        }
    }

    fn protect_one(&mut self, p: PmapId, va: u64, prot: VmProt, flush: &mut TlbFlush) {
        if !prot.contains(VmProt::READ) {
            self.remove_one(p, va, flush);
            return;
        }
        if let Some(pte) = self.space(p).and_then(|s| s.ptes.get_mut(&va)) {
            let new = pte.prot & effective_prot(prot);
            if new != pte.prot {
                pte.prot = new;
                flush.add_page(p, VirtAddr::new(va));
            }
        }
    }

    fn pv_of(&self, pa: PhysAddr) -> Vec<(u32, u64)> {
        self.pv
            .get(&pa.page_base().as_u64())
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }
}

impl<L: Locks> Pmap for SoftPmap<L> {
    fn create(&self) -> Result<PmapId, KernError> {
        let mut g = self.inner.lock();
        if let Some(id) = g.free_ids.pop() {
            g.spaces[id as usize] = Some(Space::default());
            return Ok(PmapId(id));
        }
        let id = u32::try_from(g.spaces.len()).map_err(|_| KernError::ResourceShortage)?;
        g.spaces.push(Some(Space::default()));
        Ok(PmapId(id))
    }

    fn destroy(&self, pmap: PmapId) {
        let mut g = self.inner.lock();
        let Some(s) = g.space(pmap) else { return };
        debug_assert_eq!(s.active, 0, "destroying an active pmap");
        let vas: Vec<u64> = s.ptes.keys().copied().collect();
        let mut f = TlbFlush::none();
        for va in vas {
            g.remove_one(pmap, va, &mut f);
        }
        g.spaces[pmap.0 as usize] = None;
        g.free_ids.push(pmap.0);
        drop(g);
        // No CPU runs in a destroyed pmap, so its TLB entries are dead already.
        let _ = f.into_parts();
    }

    fn enter(
        &self,
        pmap: PmapId,
        va: VirtAddr,
        pa: PhysAddr,
        prot: VmProt,
        wired: bool,
    ) -> Result<TlbFlush, EnterError> {
        if !va.is_page_aligned() || !pa.is_page_aligned() {
            return Err(EnterError::BadAddress { va, pa });
        }
        let mut g = self.inner.lock();
        g.space(pmap).ok_or(EnterError::NoSuchPmap { pmap })?;
        let mut f = TlbFlush::none();
        if prot.is_empty() {
            g.remove_one(pmap, va.as_u64(), &mut f);
            return Ok(f);
        }
        let pte = Pte {
            pa: pa.as_u64(),
            prot: effective_prot(prot),
            wired,
            referenced: false,
            modified: false,
        };
        g.insert(pmap, va.as_u64(), pte, &mut f);
        Ok(f)
    }

    fn enter_large(
        &self,
        pmap: PmapId,
        va: VirtAddr,
        pa: PhysAddr,
        prot: VmProt,
        wired: bool,
    ) -> Result<TlbFlush, EnterError> {
        if !va.is_aligned(LARGE_PAGE_SIZE) || !pa.is_aligned(LARGE_PAGE_SIZE) {
            return Err(EnterError::BadAddress { va, pa });
        }
        let mut f = TlbFlush::none();
        for i in 0..LARGE_PAGE_SIZE / PAGE_SIZE {
            f.merge(self.enter(pmap, va + i * PAGE_SIZE, pa + i * PAGE_SIZE, prot, wired)?);
        }
        Ok(f)
    }

    fn remove(&self, pmap: PmapId, range: VaRange) -> TlbFlush {
        let mut g = self.inner.lock();
        let mut f = TlbFlush::none();
        let Some(s) = g.space(pmap) else { return f };
        let vas: Vec<u64> = s
            .ptes
            .range(range.start().as_u64()..range.end().as_u64())
            .map(|(k, _)| *k)
            .collect();
        for va in vas {
            g.remove_one(pmap, va, &mut f);
        }
        f
    }

    fn protect(&self, pmap: PmapId, range: VaRange, prot: VmProt) -> TlbFlush {
        let mut g = self.inner.lock();
        let mut f = TlbFlush::none();
        let Some(s) = g.space(pmap) else { return f };
        let vas: Vec<u64> = s
            .ptes
            .range(range.start().as_u64()..range.end().as_u64())
            .map(|(k, _)| *k)
            .collect();
        for va in vas {
            g.protect_one(pmap, va, prot, &mut f);
        }
        f
    }

    fn extract(&self, pmap: PmapId, va: VirtAddr) -> Option<Translation> {
        let mut g = self.inner.lock();
        let pte = *g.space(pmap)?.ptes.get(&va.page_base().as_u64())?;
        Some(Translation {
            pa: PhysAddr::new(pte.pa),
            prot: pte.prot,
            wired: pte.wired,
            size: PAGE_SIZE,
        })
    }

    fn translate(
        &self,
        pmap: PmapId,
        va: VirtAddr,
        access: Access,
        user: bool,
    ) -> Result<PhysAddr, FaultCode> {
        let mut g = self.inner.lock();
        let Some(pte) = g
            .space(pmap)
            .and_then(|s| s.ptes.get_mut(&va.page_base().as_u64()))
        else {
            return Err(FaultCode::new(access, user, false));
        };
        if !pte.prot.contains(access.needs()) {
            return Err(FaultCode::new(access, user, true));
        }
        pte.referenced = true;
        if access == Access::Write {
            pte.modified = true;
        }
        Ok(PhysAddr::new(pte.pa + va.page_offset()))
    }

    fn page_protect(&self, pa: PhysAddr, prot: VmProt) -> TlbFlush {
        let mut g = self.inner.lock();
        let mut f = TlbFlush::none();
        for (p, va) in g.pv_of(pa) {
            g.protect_one(PmapId(p), va, prot, &mut f);
        }
        f
    }

    fn is_modified(&self, pa: PhysAddr) -> bool {
        self.test_and_clear(pa, |pte| &mut pte.modified, false).0
    }

    fn clear_modify(&self, pa: PhysAddr) -> TlbFlush {
        self.test_and_clear(pa, |pte| &mut pte.modified, true).1
    }

    fn is_referenced(&self, pa: PhysAddr) -> bool {
        self.test_and_clear(pa, |pte| &mut pte.referenced, false).0
    }

    fn clear_reference(&self, pa: PhysAddr) -> TlbFlush {
        self.test_and_clear(pa, |pte| &mut pte.referenced, true).1
    }

    fn change_wiring(&self, pmap: PmapId, va: VirtAddr, wired: bool) {
        let mut g = self.inner.lock();
        if let Some(pte) = g
            .space(pmap)
            .and_then(|s| s.ptes.get_mut(&va.page_base().as_u64()))
        {
            pte.wired = wired;
        }
    }

    fn activate(&self, pmap: PmapId, cpu: usize) {
        if let Some(s) = self.inner.lock().space(pmap) {
            s.active |= 1u64 << (cpu % 64);
        }
    }

    fn deactivate(&self, pmap: PmapId, cpu: usize) {
        if let Some(s) = self.inner.lock().space(pmap) {
            s.active &= !(1u64 << (cpu % 64));
        }
    }

    fn flush(&self, flush: TlbFlush) {
        if !flush.is_empty() {
            self.flushes.fetch_add(1, Relaxed);
        }
        let _ = flush.into_parts();
    }

    fn resident_count(&self, pmap: PmapId) -> u64 {
        self.inner
            .lock()
            .space(pmap)
            .map_or(0, |s| s.ptes.len() as u64)
    }

    fn mappings(&self, pmap: PmapId, range: VaRange) -> Vec<(VirtAddr, Translation)> {
        let mut g = self.inner.lock();
        let Some(s) = g.space(pmap) else {
            return Vec::new();
        };
        s.ptes
            .range(range.start().as_u64()..range.end().as_u64())
            .map(|(va, pte)| {
                let t = Translation {
                    pa: PhysAddr::new(pte.pa),
                    prot: pte.prot,
                    wired: pte.wired,
                    size: PAGE_SIZE,
                };
                (VirtAddr::new(*va), t)
            })
            .collect()
    }

    fn mapping_count(&self, pa: PhysAddr) -> usize {
        self.inner
            .lock()
            .pv
            .get(&pa.page_base().as_u64())
            .map_or(0, |s| s.len())
    }

    fn verify(&self) -> Result<(), Violation<PmapRule>> {
        let g = self.inner.lock();
        let mut n = 0usize;
        for (id, s) in g.spaces.iter().enumerate() {
            let Some(s) = s else { continue };
            for (va, pte) in &s.ptes {
                if pte.prot.is_empty() || effective_prot(pte.prot) != pte.prot {
                    return Err(Violation::new(
                        PmapRule::Entries,
                        format!(
                            "pmap {id} va {va:#x}: stored protection {:?} not effective",
                            pte.prot
                        ),
                    ));
                }
                if !g
                    .pv
                    .get(&pte.pa)
                    .is_some_and(|set| set.contains(&(id as u32, *va)))
                {
                    return Err(Violation::new(
                        PmapRule::ReverseMaps,
                        format!("pmap {id} va {va:#x} missing from pv list of {:#x}", pte.pa),
                    ));
                }
                n += 1;
            }
        }
        let pv_total: usize = g.pv.values().map(BTreeSet::len).sum();
        if pv_total != n {
            let d = format!("{pv_total} pv entries for {n} translations");
            return Err(Violation::new(PmapRule::ReverseMaps, d));
        }
        Ok(())
    }
}
