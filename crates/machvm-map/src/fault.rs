//! The page-fault handler (`vm_fault`).
//!
//! Given a map, an address and an access, find the entry, check the
//! protection, and produce the page: create the entry's object on first
//! touch, put a shadow on top before the first write to a needs-copy entry,
//! then let the object chain resolve the page (resident, found below,
//! zero-filled, or copied up). The translation entered allows the entry's
//! protection, minus `WRITE` while the page is still shared copy-on-write, so
//! that a later write faults again.

use alloc::sync::Arc;

use machvm_base::{KernError, PAGE_SHIFT, PhysAddr, USER_MAX, VirtAddr, VmProt, trunc_page};
use machvm_object::{Resolution, VmContext, VmCounters, VmObject};
use machvm_pmap::{Access, TlbFlush, effective_prot};

use crate::{Entry, MapInner, VmMap, page_range};

/// The outcome of one resolved fault.
pub(crate) struct Faulted {
    /// The frame now mapped.
    pub(crate) pa: PhysAddr,
    /// The page the fault put into an object, if it put one.
    pub(crate) inserted: Option<(Arc<VmObject>, u64)>,
}

impl VmMap {
    /// Handles a page fault at `va` for `access`, as the CPU's trap handler
    /// calls it: on success the access can be retried and will succeed.
    /// `InvalidAddress` for a hole, `ProtectionFailure` when the entry does
    /// not allow the access, `ResourceShortage` when out of frames.
    pub fn fault(&self, va: u64, access: Access) -> Result<(), KernError> {
        let mut m = self.0.inner.lock();
        self.fault_locked(&mut m, va, access).map(|_| ())
    }

    pub(crate) fn fault_locked(
        &self,
        m: &mut MapInner,
        va: u64,
        access: Access,
    ) -> Result<Faulted, KernError> {
        let ctx = &self.0.ctx;
        VmCounters::bump(&ctx.counters.faults);
        if va >= USER_MAX {
            return Err(KernError::InvalidAddress);
        }
        let page = trunc_page(va);
        let start = m.lookup(page).ok_or(KernError::InvalidAddress)?;
        let e = m.entries.get_mut(&start).ok_or(KernError::Failure)?;
        // The MMU cannot refuse a load from a mapped write- or execute-only
        // page, so neither does the handler: otherwise whether a load works
        // would depend on whether a store mapped the page first.
        if !effective_prot(e.protection).contains(access.needs()) {
            return Err(KernError::ProtectionFailure);
        }
        let write = access == Access::Write;
        if e.object.is_none() {
            e.object = Some(VmObject::new_anon(ctx, e.pages(start)));
            e.offset = 0;
            e.needs_copy = false;
        }
        if write && e.needs_copy {
            resolve_needs_copy(e, start);
        }
        let obj = e.object.as_ref().ok_or(KernError::Failure)?;
        let off = e.offset + ((page - start) >> PAGE_SHIFT);
        let (needs_copy, wired) = (e.needs_copy, e.wired_count > 0);
        let pm = ctx.pmap();
        // The translation is entered while the object is locked, so the page
        // cannot be replaced or freed before it is mapped.
        let r = obj.resolve(off, write, |r| {
            let mut prot = e.protection;
            if r.how == Resolution::Backing || needs_copy {
                prot.remove(VmProt::WRITE);
            }
            pm.flush(pm.enter(self.0.pmap, VirtAddr(page), r.pa, prot, wired)?);
            Ok(())
        })?;
        let inserted = matches!(r.how, Resolution::ZeroFilled | Resolution::CopiedUp)
            .then(|| (obj.clone(), off));
        Ok(Faulted { pa: r.pa, inserted })
    }
}

/// Before the first write to a needs-copy entry: if nobody else can see the
/// object, just take it over; otherwise put a fresh shadow on top
/// (`vm_object_shadow`). Costs no frame.
pub(crate) fn resolve_needs_copy(e: &mut Entry, start: u64) {
    let Some(obj) = e.object.take() else {
        e.needs_copy = false;
        return;
    };
    e.needs_copy = false;
    if Arc::strong_count(&obj) == 1 {
        e.object = Some(obj);
        return;
    }
    let shadow = VmObject::new_shadow(obj.clone(), e.offset, e.pages(start));
    e.object = Some(shadow);
    e.offset = 0;
    machvm_object::release(obj);
}

/// Creates the object of a never-touched entry (for fork's `Share`).
pub(crate) fn ensure_object(ctx: &Arc<VmContext>, e: &mut Entry, start: u64) {
    if e.object.is_none() {
        e.object = Some(VmObject::new_anon(ctx, e.pages(start)));
        e.offset = 0;
        e.needs_copy = false;
    }
}

/// Takes a copy-on-write reference to pages `[offset, offset + pages)` of
/// the entry `e` of `map` (starting at `start`), for fork's `Copy` and for
/// copy-in. `None`: the entry was never touched, so the copy is zeros.
/// `Some((object, offset, private))`: an object that several maps write
/// directly is copied eagerly into a private object (a shadow over it would
/// see their later writes); otherwise the entry becomes needs-copy, its
/// translations lose `WRITE` in the pmap (flushed by the caller with
/// `flush`), and the object itself is shared copy-on-write.
pub(crate) fn cow_reference(
    map: &VmMap,
    e: &mut Entry,
    start: u64,
    offset: u64,
    pages: u64,
    flush: &mut TlbFlush,
) -> Result<Option<(Arc<VmObject>, u64, bool)>, KernError> {
    let Some(o) = &e.object else { return Ok(None) };
    if o.is_shared() && !e.needs_copy {
        return Ok(Some((o.copy_eager(offset, pages)?, 0, true)));
    }
    VmObject::collapse(o);
    o.clear_one_mapping();
    if !e.needs_copy {
        e.needs_copy = true;
        let pm = map.context().pmap();
        flush.merge(pm.protect(
            map.pmap(),
            page_range(start, e.end),
            e.protection - VmProt::WRITE,
        ));
    }
    Ok(Some((o.clone(), offset, false)))
}
