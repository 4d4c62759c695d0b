//! The map-management calls of SPEC §3: allocate, deallocate, protect,
//! inherit and region.
//!
//! Each call validates everything before it changes anything, in the order
//! SPEC's table gives: size 0, arithmetic overflow, bad protection bits, the
//! map's bounds, holes, then protection; a failed call changes nothing. Each
//! successful call simplifies the entries it touched.

use alloc::vec::Vec;

use machvm_base::sync::Locks;
use machvm_base::{KernError, VaRange, VmInherit, VmProt};
use machvm_object::{Holder, Objects};
use machvm_pmap::{Access, TlbFlush};

use crate::{Entry, MapInner, RegionInfo, VmMap, page_range, release_entries};

/// Validates a management call's range: `Ok(None)` for size 0, the rounded
/// range otherwise.
pub(crate) fn mgmt_range(addr: u64, size: u64) -> Result<Option<VaRange>, KernError> {
    if size == 0 {
        return Ok(None);
    }
    let r = VaRange::round_out(addr, size).ok_or(KernError::InvalidArgument)?;
    if !r.is_user() {
        return Err(KernError::InvalidAddress);
    }
    Ok(Some(r))
}

/// [`mgmt_range`] for a call that takes a protection (`protect`, `wire`):
/// bits outside `ALL` are `InvalidArgument`, checked after the arithmetic
/// and before the map's bounds, as SPEC orders them.
pub(crate) fn prot_range(addr: u64, size: u64, prot: VmProt) -> Result<Option<VaRange>, KernError> {
    if size == 0 {
        return Ok(None);
    }
    let r = VaRange::round_out(addr, size).ok_or(KernError::InvalidArgument)?;
    if !VmProt::ALL.contains(prot) {
        return Err(KernError::InvalidArgument);
    }
    if !r.is_user() {
        return Err(KernError::InvalidAddress);
    }
    Ok(Some(r))
}

impl<L: Locks> VmMap<L> {
    /// `vm_allocate`: zero-filled memory of `size` bytes (rounded out) at
    /// `addr`, or with `anywhere` at the lowest free range at or above `addr`.
    /// Returns the start. Costs no frame until touched.
    pub fn allocate(&self, addr: u64, size: u64, anywhere: bool) -> Result<u64, KernError> {
        if size == 0 {
            return Err(KernError::InvalidArgument);
        }
        let r = VaRange::round_out(addr, size).ok_or(KernError::InvalidArgument)?;
        let mut m = machvm_base::sync::write::<L, _>(&self.0.inner);
        let start = if anywhere {
            m.find_space(r.start().as_u64(), r.len())
                .ok_or(KernError::NoSpace)?
        } else {
            if !r.is_user() {
                return Err(KernError::InvalidAddress);
            }
            if m.overlapping(r.start().as_u64(), r.end().as_u64())
                .next()
                .is_some()
            {
                return Err(KernError::NoSpace);
            }
            r.start().as_u64()
        };
        m.insert(start, Entry::new_anon(start + r.len()));
        let mut objs = self.0.ctx.objects();
        m.simplify(&mut objs, start, start + r.len());
        self.assert_consistent(&m, &objs);
        Ok(start)
    }

    /// `vm_deallocate`: removes `[addr, addr + size)` (rounded out); holes
    /// are ignored. No translation of the range survives in any pmap, and
    /// pages nothing else reaches are freed at once.
    pub fn deallocate(&self, addr: u64, size: u64) -> Result<(), KernError> {
        let Some(r) = mgmt_range(addr, size)? else {
            return Ok(());
        };
        let mut m = machvm_base::sync::write::<L, _>(&self.0.inner);
        let mut objs = self.0.ctx.objects();
        self.remove_locked(&mut m, &mut objs, r);
        self.assert_consistent(&m, &objs);
        Ok(())
    }

    /// Unmaps `r`, takes its entries out and gives back their holds.
    pub(crate) fn remove_locked(&self, m: &mut MapInner, objs: &mut Objects<'_, L>, r: VaRange) {
        let (s, e) = (r.start().as_u64(), r.end().as_u64());
        m.clip_range(objs, s, e);
        let removed = m.remove_range(s, e);
        if !removed.is_empty() {
            let pm = self.0.ctx.pmap();
            pm.flush(pm.remove(self.0.pmap, r));
        }
        crate::wire::unwire_removed(objs, &removed);
        release_entries(objs, removed.into_iter());
    }

    /// `vm_protect`: sets the protection (or, with `set_maximum`, lowers the
    /// maximum and clips the protection to it) of `[addr, addr + size)`.
    /// Lowering takes effect in every pmap before the call returns.
    pub fn protect(
        &self,
        addr: u64,
        size: u64,
        set_maximum: bool,
        prot: VmProt,
    ) -> Result<(), KernError> {
        let Some(r) = prot_range(addr, size, prot)? else {
            return Ok(());
        };
        let (s, e) = (r.start().as_u64(), r.end().as_u64());
        let mut m = machvm_base::sync::write::<L, _>(&self.0.inner);
        m.check_covered(s, e)?;
        if m.overlapping(s, e)
            .any(|(_, en)| !en.max_protection.contains(prot))
        {
            return Err(KernError::ProtectionFailure);
        }
        let pm = self.0.ctx.pmap();
        // A wired entry whose translations this change raises, or drops
        // (a pmap removes what it cannot make readable), is entered again.
        let new_prot = |en: &Entry| {
            if set_maximum {
                en.protection & prot
            } else {
                prot
            }
        };
        // Tables only where a wired entry has no translations to replace
        // (protection NONE): elsewhere its wired leaves keep their tables.
        let wired: Vec<(u64, u64)> = m
            .overlapping(s, e)
            .filter(|(_, en)| en.wired_count > 0 && en.protection.is_empty())
            .filter(|(_, en)| !new_prot(en).is_empty())
            .map(|(&a, en)| (a.max(s), en.end.min(e)))
            .collect();
        let mut objs = self.0.ctx.objects();
        let tables = crate::wire::TableReservation::new(self, &mut objs, &wired)?;
        m.clip_range(&mut objs, s, e);
        let mut flush = TlbFlush::none();
        let mut raised = Vec::new();
        m.entries.for_each_mut(s..e, |start, en| {
            let old = en.protection;
            if set_maximum {
                en.max_protection = prot;
                en.protection &= prot;
            } else {
                en.protection = prot;
            }
            if !en.protection.contains(old) {
                flush.merge(pm.protect(self.0.pmap, page_range(start, en.end), en.protection));
            }
            if en.wired_count > 0 && reenter(old, en.protection) {
                raised.push(start);
            }
        });
        pm.flush(flush);
        for start in raised {
            self.reenter_wired(&m, &objs, start);
        }
        drop(tables);
        m.simplify(&mut objs, s, e);
        self.assert_consistent(&m, &objs);
        Ok(())
    }

    /// `vm_inherit`: sets what `fork` does with `[addr, addr + size)`.
    pub fn inherit(&self, addr: u64, size: u64, inheritance: VmInherit) -> Result<(), KernError> {
        let Some(r) = mgmt_range(addr, size)? else {
            return Ok(());
        };
        let (s, e) = (r.start().as_u64(), r.end().as_u64());
        let mut m = machvm_base::sync::write::<L, _>(&self.0.inner);
        m.check_covered(s, e)?;
        let mut objs = self.0.ctx.objects();
        m.clip_range(&mut objs, s, e);
        m.entries
            .for_each_mut(s..e, |_, en| en.inheritance = inheritance);
        m.simplify(&mut objs, s, e);
        self.assert_consistent(&m, &objs);
        Ok(())
    }

    /// `vm_region`: the region containing `addr`, or else the first one above
    /// it; `NoSpace` when there is none.
    pub fn region(&self, addr: u64) -> Result<RegionInfo, KernError> {
        let m = self.0.inner.read();
        let objs = self.0.ctx.objects();
        let (&start, _) = m
            .entries
            .range(..=addr)
            .next_back()
            .filter(|(_, e)| e.end > addr)
            .or_else(|| m.entries.range(addr..).next())
            .ok_or(KernError::NoSpace)?;
        // Neighbouring entries with equal attributes are one region (SPEC §3
        // allows it: entries of different objects may not merge).
        let mut info: Option<RegionInfo> = None;
        for (&s, e) in m.entries.range(start..) {
            let one = entry_info(&objs, s, e);
            match &mut info {
                None => info = Some(one),
                Some(r) if r.start + r.size == s && same_region(r, &one) => {
                    r.size += one.size;
                    r.resident_pages += one.resident_pages;
                    r.shadow_depth = r.shadow_depth.max(one.shadow_depth);
                    r.needs_copy |= one.needs_copy;
                    r.wired_pages += one.wired_pages;
                }
                Some(_) => break,
            }
        }
        info.ok_or(KernError::NoSpace)
    }
}

/// True when a wired entry's translations must be entered again after its
/// protection goes from `old` to `new`: raised, or lowered to something a
/// pmap removes (non-empty without `READ`).
fn reenter(old: VmProt, new: VmProt) -> bool {
    !new.is_empty() && (!old.contains(new) || !new.contains(VmProt::READ))
}

/// `Ok` when `r` is allocated without a hole (`InvalidAddress`) and every
/// entry in it allows `access` (`ProtectionFailure`).
pub(crate) fn check_access(m: &MapInner, r: VaRange, access: Access) -> Result<(), KernError> {
    let (s, e) = (r.start().as_u64(), r.end().as_u64());
    m.check_covered(s, e)?;
    if m.overlapping(s, e)
        .any(|(_, en)| !en.protection.contains(access.needs()))
    {
        return Err(KernError::ProtectionFailure);
    }
    Ok(())
}

/// What `region` reports about one entry.
fn entry_info<L: Locks>(objs: &Objects<'_, L>, start: u64, e: &Entry) -> RegionInfo {
    let (shared, resident, depth, needs_copy) = match &e.object {
        Some(h) => (
            objs.is_shared(h),
            objs.resident(h),
            objs.chain_depth(h) as u32,
            matches!(objs.holder(h), Holder::NeedsCopy { .. }),
        ),
        None => (false, 0, 0, false),
    };
    RegionInfo {
        start,
        size: e.end - start,
        protection: e.protection,
        max_protection: e.max_protection,
        inheritance: e.inheritance,
        shared,
        resident_pages: resident,
        shadow_depth: depth,
        needs_copy,
        wired_pages: if e.wired_count > 0 { e.pages(start) } else { 0 },
    }
}

/// True when two adjacent entries can be reported as one region.
fn same_region(a: &RegionInfo, b: &RegionInfo) -> bool {
    let wired = |r: &RegionInfo| r.wired_pages > 0;
    (
        a.protection,
        a.max_protection,
        a.inheritance,
        a.shared,
        wired(a),
    ) == (
        b.protection,
        b.max_protection,
        b.inheritance,
        b.shared,
        wired(b),
    )
}
