//! The map-management calls of SPEC §3: allocate, deallocate, protect,
//! inherit, region, and a task's loads and stores (`read_bytes`,
//! `write_bytes`).
//!
//! Each call validates everything before it changes anything, in the order
//! SPEC's table gives: size 0, arithmetic overflow, bad protection bits, the
//! map's bounds, holes, then protection; a failed call changes nothing.

use alloc::sync::Arc;
use alloc::vec::Vec;

use machvm_base::{KernError, PAGE_SHIFT, PAGE_SIZE, PhysAddr, VaRange, VmInherit, VmProt};
use machvm_object::VmObject;
use machvm_pmap::{Access, TlbFlush};

use crate::{Entry, MapInner, RegionInfo, VmMap, page_range};

/// Validates a management call's range: `Ok(None)` for size 0, the rounded
/// range otherwise.
fn mgmt_range(addr: u64, size: u64) -> Result<Option<VaRange>, KernError> {
    if size == 0 {
        return Ok(None);
    }
    let r = VaRange::round_out(addr, size).ok_or(KernError::InvalidArgument)?;
    if !r.is_user() {
        return Err(KernError::InvalidAddress);
    }
    Ok(Some(r))
}

/// Validates a data-moving call's byte range `[addr, addr + len)`: `Ok(None)`
/// for length 0, the rounded-out page range otherwise.
pub(crate) fn data_range(addr: u64, len: u64) -> Result<Option<VaRange>, KernError> {
    if len == 0 {
        return Ok(None);
    }
    let r = VaRange::round_out(addr, len).ok_or(KernError::InvalidAddress)?;
    if !r.is_user() {
        return Err(KernError::InvalidAddress);
    }
    Ok(Some(r))
}

/// Pages inserted by faults during one multi-page operation, discarded if
/// the operation fails later (so a failure frees every frame it took).
#[derive(Default)]
pub(crate) struct Undo(Vec<(Arc<VmObject>, u64)>);

impl Undo {
    pub(crate) fn push(&mut self, inserted: Option<(Arc<VmObject>, u64)>) {
        if let Some(i) = inserted {
            self.0.push(i);
        }
    }

    /// Takes the pages out again, except any another map already holds
    /// (see [`VmObject::discard_page`]): those are legitimate, just early.
    pub(crate) fn roll_back(self) {
        for (obj, off) in self.0.into_iter().rev() {
            obj.discard_page(off);
        }
    }
}

impl VmMap {
    /// `vm_allocate`: zero-filled memory of `size` bytes (rounded out) at
    /// `addr`, or with `anywhere` at the lowest free range at or above `addr`.
    /// Returns the start. Costs no frame until touched.
    pub fn allocate(&self, addr: u64, size: u64, anywhere: bool) -> Result<u64, KernError> {
        if size == 0 {
            return Err(KernError::InvalidArgument);
        }
        let r = VaRange::round_out(addr, size).ok_or(KernError::InvalidArgument)?;
        let mut m = self.0.inner.lock();
        let start = if anywhere {
            m.find_space(r.start().0, r.len())
                .ok_or(KernError::NoSpace)?
        } else {
            if !r.is_user() {
                return Err(KernError::InvalidAddress);
            }
            if m.overlapping(r.start().0, r.end().0).next().is_some() {
                return Err(KernError::NoSpace);
            }
            r.start().0
        };
        m.insert(start, Entry::new_anon(start + r.len()));
        Ok(start)
    }

    /// `vm_deallocate`: removes `[addr, addr + size)` (rounded out); holes
    /// are ignored. No translation of the range survives in any pmap.
    pub fn deallocate(&self, addr: u64, size: u64) -> Result<(), KernError> {
        let Some(r) = mgmt_range(addr, size)? else {
            return Ok(());
        };
        let removed = {
            let mut m = self.0.inner.lock();
            self.remove_locked(&mut m, r)
        };
        release_entries(removed);
        Ok(())
    }

    /// Unmaps `r` and takes its entries out; their objects are the caller's
    /// to release (after dropping the map lock is fine, before is too).
    pub(crate) fn remove_locked(&self, m: &mut MapInner, r: VaRange) -> Vec<(u64, Entry)> {
        m.clip(r.start().0);
        m.clip(r.end().0);
        let removed = m.remove_range(r.start().0, r.end().0);
        if !removed.is_empty() {
            let pm = self.0.ctx.pmap();
            pm.flush(pm.remove(self.0.pmap, r));
        }
        removed
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
        if size == 0 {
            return Ok(());
        }
        let r = VaRange::round_out(addr, size).ok_or(KernError::InvalidArgument)?;
        if !VmProt::ALL.contains(prot) {
            return Err(KernError::InvalidArgument);
        }
        if !r.is_user() {
            return Err(KernError::InvalidAddress);
        }
        let (s, e) = (r.start().0, r.end().0);
        let mut m = self.0.inner.lock();
        m.check_covered(s, e)?;
        if m.overlapping(s, e)
            .any(|(_, en)| !en.max_protection.contains(prot))
        {
            return Err(KernError::ProtectionFailure);
        }
        m.clip(s);
        m.clip(e);
        let pm = self.0.ctx.pmap();
        let mut flush = TlbFlush::none();
        for (&start, en) in m.entries.range_mut(s..e) {
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
        }
        pm.flush(flush);
        Ok(())
    }

    /// `vm_inherit`: sets what `fork` does with `[addr, addr + size)`.
    pub fn inherit(&self, addr: u64, size: u64, inheritance: VmInherit) -> Result<(), KernError> {
        let Some(r) = mgmt_range(addr, size)? else {
            return Ok(());
        };
        let (s, e) = (r.start().0, r.end().0);
        let mut m = self.0.inner.lock();
        m.check_covered(s, e)?;
        m.clip(s);
        m.clip(e);
        for en in m.entries.range_mut(s..e).map(|(_, en)| en) {
            en.inheritance = inheritance;
        }
        Ok(())
    }

    /// `vm_region`: the region containing `addr`, or else the first one above
    /// it; `NoSpace` when there is none.
    pub fn region(&self, addr: u64) -> Result<RegionInfo, KernError> {
        let m = self.0.inner.lock();
        let (&start, _) = m
            .entries
            .range(..=addr)
            .next_back()
            .filter(|(_, e)| e.end > addr)
            .or_else(|| m.entries.range(addr..).next())
            .ok_or(KernError::NoSpace)?;
        // Neighbouring entries with equal attributes are one region (SPEC §3
        // allows it, and clipping is an implementation detail).
        let mut info: Option<RegionInfo> = None;
        for (&s, e) in m.entries.range(start..) {
            let one = entry_info(s, e);
            match &mut info {
                None => info = Some(one),
                Some(r) if r.start + r.size == s && same_region(r, &one) => {
                    r.size += one.size;
                    r.resident_pages += one.resident_pages;
                    r.shadow_depth = r.shadow_depth.max(one.shadow_depth);
                    r.needs_copy |= one.needs_copy;
                }
                Some(_) => break,
            }
        }
        info.ok_or(KernError::NoSpace)
    }

    /// Reads `buf.len()` bytes at `addr` as the task's own loads would: the
    /// whole range is checked first (holes: `InvalidAddress`; no `READ`:
    /// `ProtectionFailure`), pages are faulted in through the pmap's walker,
    /// and on any error no byte moves.
    pub fn read_bytes(&self, addr: u64, buf: &mut [u8]) -> Result<(), KernError> {
        let Some(r) = data_range(addr, buf.len() as u64)? else {
            return Ok(());
        };
        let mut m = self.0.inner.lock();
        self.prepare(&mut m, r, Access::Read)?;
        // Through the objects, under their locks: a page another map frees
        // meanwhile (copy-up, collapse) is never read after it is freed.
        for_each_page_piece(&m, addr, buf.len(), |o, page, off, at, n| {
            o.read_page_bytes(page, off, &mut buf[at..at + n]);
            true
        })
    }

    /// Writes `data` at `addr` as the task's own stores would (copy-on-write
    /// resolved, pages zero-filled on demand); checked first like
    /// [`read_bytes`](Self::read_bytes), and on any error no byte moves.
    pub fn write_bytes(&self, addr: u64, data: &[u8]) -> Result<(), KernError> {
        let Some(r) = data_range(addr, data.len() as u64)? else {
            return Ok(());
        };
        let mut m = self.0.inner.lock();
        self.prepare(&mut m, r, Access::Write)?;
        // Each page is now the entry's top object's own (copy-on-write
        // resolved), and stays so while this map is locked.
        for_each_page_piece(&m, addr, data.len(), |o, page, off, at, n| {
            o.write_page_bytes(page, off, &data[at..at + n])
        })
    }

    /// Checks `r` for `access` and makes every page of it translatable; on
    /// failure undoes what it faulted in.
    pub(crate) fn prepare(
        &self,
        m: &mut MapInner,
        r: VaRange,
        access: Access,
    ) -> Result<(), KernError> {
        check_access(m, r, access)?;
        let mut undo = Undo::default();
        self.fault_in(m, r, access, &mut undo, None)
            .inspect_err(|_| undo.roll_back())
    }

    /// Makes every page of `r` translatable for `access` (already checked),
    /// appending the frames to `pas` (when given) and the pages it inserted
    /// to `undo`.
    pub(crate) fn fault_in(
        &self,
        m: &mut MapInner,
        r: VaRange,
        access: Access,
        undo: &mut Undo,
        mut pas: Option<&mut Vec<PhysAddr>>,
    ) -> Result<(), KernError> {
        let pm = self.0.ctx.pmap();
        for va in r.iter_pages() {
            let pa = match pm.translate(self.0.pmap, va, access, true) {
                Ok(pa) => pa,
                Err(_) => {
                    let f = self.fault_locked(m, va.0, access)?;
                    undo.push(f.inserted);
                    f.pa
                }
            };
            if let Some(pas) = pas.as_deref_mut() {
                pas.push(pa);
            }
        }
        Ok(())
    }
}

/// `Ok` when `r` is allocated without a hole (`InvalidAddress`) and every
/// entry in it allows `access` (`ProtectionFailure`).
pub(crate) fn check_access(m: &MapInner, r: VaRange, access: Access) -> Result<(), KernError> {
    let (s, e) = (r.start().0, r.end().0);
    m.check_covered(s, e)?;
    if m.overlapping(s, e)
        .any(|(_, en)| !en.protection.contains(access.needs()))
    {
        return Err(KernError::ProtectionFailure);
    }
    Ok(())
}

/// Splits `[addr, addr + len)` at page boundaries and calls `f(top object,
/// page offset in it, byte offset in the page, offset into the caller's
/// buffer, length)` for each piece of a range `prepare` has made resident.
/// `Failure` if a piece finds no object page, which `prepare` rules out.
fn for_each_page_piece(
    m: &MapInner,
    addr: u64,
    len: usize,
    mut f: impl FnMut(&VmObject, u64, u64, usize, usize) -> bool,
) -> Result<(), KernError> {
    let end = addr + len as u64;
    let mut at = 0usize;
    // One walk over the entries in order, not a tree search per page.
    for (&start, e) in m.overlapping(addr, end) {
        let o = e.object.as_ref().ok_or(KernError::Failure)?;
        while at < len && addr + (at as u64) < e.end {
            let va = addr + at as u64;
            let off = va & (PAGE_SIZE - 1);
            let n = ((PAGE_SIZE - off) as usize).min(len - at);
            let page = e.offset + ((va - off - start) >> PAGE_SHIFT);
            if !f(o, page, off, at, n) {
                return Err(KernError::Failure);
            }
            at += n;
        }
    }
    if at < len {
        Err(KernError::Failure)
    } else {
        Ok(())
    }
}

/// What `region` reports about one entry.
fn entry_info(start: u64, e: &Entry) -> RegionInfo {
    let pages = e.pages(start);
    let (shared, resident, depth) = match &e.object {
        Some(o) => (
            !e.needs_copy && o.is_shared(),
            o.resident_in_window(e.offset, e.offset + pages),
            o.chain_depth() as u32,
        ),
        None => (false, 0, 0),
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
        needs_copy: e.needs_copy,
    }
}

/// True when two adjacent entries can be reported as one region.
fn same_region(a: &RegionInfo, b: &RegionInfo) -> bool {
    (a.protection, a.max_protection, a.inheritance, a.shared)
        == (b.protection, b.max_protection, b.inheritance, b.shared)
}

/// Splits `[addr, addr + len)` at page boundaries and calls `f(frame address,
/// offset into the caller's buffer, length)` for each piece.
pub(crate) fn for_each_chunk(
    addr: u64,
    len: usize,
    pas: &[PhysAddr],
    mut f: impl FnMut(PhysAddr, usize, usize),
) {
    let mut at = 0usize;
    let mut va = addr;
    for &pa in pas {
        if at >= len {
            break;
        }
        let off = va & (PAGE_SIZE - 1);
        let n = ((PAGE_SIZE - off) as usize).min(len - at);
        f(PhysAddr(pa.page_base().0 + off), at, n);
        at += n;
        va += n as u64;
    }
}

/// Releases the objects of removed entries, freeing at once the pages of a
/// range that no other map, copy or shadow can reach.
pub(crate) fn release_entries(removed: Vec<(u64, Entry)>) {
    for (start, e) in removed {
        if let Some(o) = e.object {
            if o.is_one_mapping() {
                o.discard_range(e.offset, e.offset + ((e.end - start) >> PAGE_SHIFT));
            }
            machvm_object::release(o);
        }
    }
}
