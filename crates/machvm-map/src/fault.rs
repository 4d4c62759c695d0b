//! The page-fault handler (`vm_fault`).
//!
//! Given a map, an address and an access, find the entry, check the
//! protection, and produce the page: create the entry's object on first
//! touch, before a write make the entry's hold writable (take the object
//! over if nobody else sees the window, else put a shadow on top), then let
//! the object graph resolve the page (resident, found below, zero-filled, or
//! copied up). The translation entered allows the entry's protection, minus
//! `WRITE` while the page is still shared copy-on-write, so that a later
//! write faults again.

use machvm_base::{KernError, PageIndex, PhysAddr, USER_MAX, VirtAddr, VmProt, trunc_page};
use machvm_frame::FrameReservation;
use machvm_object::{Holder, Objects, Resolution, VmCounters};
use machvm_pmap::{Access, EnterError, effective_prot};

use crate::{MapInner, VmMap};

/// What the pmap step does when a page table cannot be allocated.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Enter {
    /// Fail the fault (the trap handler needs the translation).
    Required,
    /// Leave the page unmapped (a data call moves bytes through the
    /// objects; the translation is only a cache).
    BestEffort,
}

impl VmMap {
    /// Handles a page fault at `va` for `access`, as the CPU's trap handler
    /// calls it: on success the access can be retried and will succeed.
    /// `InvalidAddress` for a hole, `ProtectionFailure` when the entry does
    /// not allow the access, `ResourceShortage` when out of frames (then
    /// nothing changed).
    pub fn fault(&self, va: u64, access: Access) -> Result<(), KernError> {
        let mut m = self.0.inner.lock();
        let mut objs = self.0.ctx.objects();
        let mut frames = objs.on_demand();
        let r = self.fault_locked(&mut m, &mut objs, va, access, &mut frames, Enter::Required);
        drop(frames);
        self.assert_consistent(&m, &objs);
        r.map(|_| ())
    }

    pub(crate) fn fault_locked(
        &self,
        m: &mut MapInner,
        objs: &mut Objects<'_>,
        va: u64,
        access: Access,
        frames: &mut FrameReservation<'_>,
        enter: Enter,
    ) -> Result<PhysAddr, KernError> {
        let ctx = &self.0.ctx;
        VmCounters::bump(&ctx.counters.faults);
        if va >= USER_MAX {
            return Err(KernError::InvalidAddress);
        }
        let page = trunc_page(va);
        let (start, e) = m.entry_at(page)?;
        // The MMU cannot refuse a load from a mapped write- or execute-only
        // page, so neither does the handler: otherwise whether a load works
        // would depend on whether a store mapped the page first.
        if !effective_prot(e.protection).contains(access.needs()) {
            return Err(KernError::ProtectionFailure);
        }
        let write = access == Access::Write;
        // The frame first, before anything changes: the one step that can
        // run out then comes before every other.
        let need = objs.frames_to_resolve(
            e.object.as_ref(),
            PageIndex::in_window(start, page),
            1,
            write,
        );
        frames.ensure(need)?;
        let map = Holder::Direct { map: self.0.id };
        let pages = e.pages(start);
        let created = e.object.is_none();
        let hold = e.object.get_or_insert_with(|| objs.create(pages, map));
        let mut made = Made::Nothing;
        let (start, e) = if write && !matches!(objs.holder(hold), Holder::Direct { .. }) {
            made = self.writable_run(m, objs, start, page);
            // The entry again: making the run writable may have clipped it.
            m.entry_at(page)?
        } else {
            (start, e)
        };
        let (prot, wired, end) = (e.protection, e.wired_count > 0, e.end);
        let hold = e.object.get_or_insert_with(|| objs.create(pages, map));
        let direct = matches!(objs.holder(hold), Holder::Direct { .. });
        let idx = PageIndex::in_window(start, page);
        let pm = ctx.pmap();
        let pmap = self.0.pmap;
        let r = objs.resolve(hold, idx, write, frames, |r| {
            let mut prot = prot;
            // Still shared copy-on-write, or the zero frame: a store must
            // fault to copy it or to zero-fill a page of its own.
            if matches!(r.how, Resolution::Backing | Resolution::ZeroPage) || !direct {
                prot.remove(VmProt::WRITE);
            }
            match pm.enter(pmap, VirtAddr::new(page), r.pa, prot, wired) {
                Ok(f) => {
                    pm.flush(f);
                    Ok(())
                }
                Err(EnterError::NoTableFrame { .. }) if enter == Enter::BestEffort => Ok(()),
                Err(e) => Err(e.into()),
            }
        });
        if r.is_err() {
            // With the frame ensured, only the pmap step fails here: undo
            // what this fault made, so that it changes nothing.
            self.undo(m, objs, start, created, made);
            m.simplify(objs, start, end);
        } else if made == Made::TookOver {
            // Now written directly, the entry may continue its neighbours.
            m.simplify(objs, start, end);
        }
        r.map(|r| r.pa)
    }

    /// Before a store to the copy-on-write entry at `start`: clips it to
    /// the run of pages the faulting one belongs to, and takes that run
    /// over if nobody else sees it, else shadows it. Returns what was made.
    fn writable_run(
        &self,
        m: &mut MapInner,
        objs: &mut Objects<'_>,
        start: u64,
        page: u64,
    ) -> Made {
        let Some(hold) = m.entries.get(&start).and_then(|e| e.object.as_ref()) else {
            return Made::Nothing;
        };
        let (first, end, seen) = objs.shared_run(hold, PageIndex::in_window(start, page));
        let (s, t) = (start + first.byte_offset(), start + end.byte_offset());
        m.clip_range(objs, s, t);
        let Some(hold) = m.entries.get_mut(&s).and_then(|e| e.object.as_mut()) else {
            return Made::Nothing;
        };
        objs.make_writable(hold, self.0.id);
        if seen { Made::Shadow } else { Made::TookOver }
    }

    /// Takes back what a failed fault made at the entry at `start`: the
    /// object it created (empty), or its takeover or shadow (the clipped
    /// pieces then merge back when the caller simplifies).
    fn undo(
        &self,
        m: &mut MapInner,
        objs: &mut Objects<'_>,
        start: u64,
        created: bool,
        made: Made,
    ) {
        let Some(e) = m.entries.get_mut(&start) else {
            return;
        };
        if created {
            if let Some(h) = e.object.take() {
                objs.release(h);
            }
            return;
        }
        let Some(h) = e.object.as_mut() else { return };
        match made {
            Made::Nothing => {}
            Made::TookOver => objs.set_needs_copy(h, self.0.id),
            Made::Shadow => {
                objs.unshadow(h, self.0.id);
            }
        }
    }
}

/// What a fault did to make a copy-on-write entry writable.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Made {
    Nothing,
    TookOver,
    Shadow,
}
