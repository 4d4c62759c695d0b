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

use machvm_base::sync::Locks;
use machvm_base::{KernError, PageIndex, PhysAddr, USER_MAX, VirtAddr, VmProt, trunc_page};
use machvm_frame::FrameReservation;
use machvm_object::{Holder, Objects, Produce, Resolution, Resolved, SharedObjects, VmCounters};
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

impl<L: Locks> VmMap<L> {
    /// Handles a page fault at `va` for `access`, as the CPU's trap handler
    /// calls it: on success the access can be retried and will succeed.
    /// `InvalidAddress` for a hole, `ProtectionFailure` when the entry does
    /// not allow the access, `ResourceShortage` when out of frames (then
    /// nothing changed).
    pub fn fault(&self, va: u64, access: Access) -> Result<(), KernError> {
        if let Some(r) = self.fault_shared(va, access, Enter::Required) {
            self.check_after_shared();
            return r.map(|_| ());
        }
        let mut m = machvm_base::sync::write::<L, _>(&self.0.inner);
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
        objs: &mut Objects<'_, L>,
        va: u64,
        access: Access,
        frames: &mut FrameReservation<'_, L>,
        enter: Enter,
    ) -> Result<PhysAddr, KernError> {
        self.fault_with(m, objs, va, access, frames, enter, Mode::Fault)
    }

    /// A store's fault at `va` whose page `produce` then writes whole (see
    /// `Objects::resolve_overwrite`): a new page is neither zeroed nor
    /// copied up first.
    pub(crate) fn fault_overwrite(
        &self,
        m: &mut MapInner,
        objs: &mut Objects<'_, L>,
        va: u64,
        frames: &mut FrameReservation<'_, L>,
        produce: Produce<'_, L>,
    ) -> Result<PhysAddr, KernError> {
        let (access, enter) = (Access::Write, Enter::BestEffort);
        self.fault_with(m, objs, va, access, frames, enter, Mode::Overwrite(produce))
    }

    /// A wiring's fault at `va` (the entry allowing at least a load): the
    /// page resolved as a store resolves it — into the entry's own object,
    /// taken over or shadowed, zero-filled or copied up — and entered with
    /// the entry's protection, wired. Returns the frame.
    pub(crate) fn fault_wire(
        &self,
        m: &mut MapInner,
        objs: &mut Objects<'_, L>,
        va: u64,
        frames: &mut FrameReservation<'_, L>,
    ) -> Result<PhysAddr, KernError> {
        let (access, enter) = (Access::Read, Enter::Required);
        self.fault_with(m, objs, va, access, frames, enter, Mode::Wire)
    }

    #[allow(clippy::too_many_arguments)]
    fn fault_with(
        &self,
        m: &mut MapInner,
        objs: &mut Objects<'_, L>,
        va: u64,
        access: Access,
        frames: &mut FrameReservation<'_, L>,
        enter: Enter,
        mode: Mode<'_, L>,
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
        let write = access == Access::Write || matches!(mode, Mode::Wire);
        // The frame first, before anything changes: the one step that can
        // run out then comes before every other.
        let idx = PageIndex::in_window(start, page);
        let tables = match (enter, &mode) {
            (Enter::Required, Mode::Fault) => self.tables_to_enter(page),
            // A wiring reserved its tables; a data call's translation is a
            // cache it may leave unentered.
            _ => 0,
        };
        let need = room_for_fault(objs, e.object.as_ref(), (idx, write), frames, tables)?;
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
        let how = Mapping {
            page,
            prot,
            wired,
            direct,
            enter,
        };
        let enter = |r| self.enter_resolved(r, how);
        let r = match mode {
            Mode::Overwrite(p) => objs.resolve_overwrite(hold, idx, frames, p, enter),
            Mode::Fault | Mode::Wire => objs.resolve(hold, idx, write, frames, enter),
        };
        // The page stays resident for the rest of the call (a store writes
        // it next), whatever the call's own pageout does meanwhile.
        objs.keep_window(hold, idx, 1);
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

    /// The page tables entering `page` would take, in a system that pages
    /// (without one nothing is paged out for them, so nothing is asked).
    fn tables_to_enter(&self, page: u64) -> u64 {
        match self.0.ctx.pager() {
            Some(_) => self
                .0
                .ctx
                .pmap()
                .tables_missing(self.0.pmap, VirtAddr::new(page)),
            None => 0,
        }
    }

    /// The fault fast path (shared map and graph locks): a fault that
    /// changes no structure — the page resident in the entry's object, a
    /// read of a page below or of the zero frame, a store that zero-fills
    /// a page only this entry sees. Faults in different maps, and in
    /// different pages of one map, run in parallel. `None`: anything else
    /// (errors included), nothing changed; take the exclusive path.
    pub(crate) fn fault_shared(
        &self,
        va: u64,
        access: Access,
        enter: Enter,
    ) -> Option<Result<PhysAddr, KernError>> {
        let m = self.0.inner.read();
        let objs = self.0.ctx.shared_objects();
        self.fault_shared_in(&m, &objs, va, access, enter)
    }

    /// [`fault_shared`](Self::fault_shared) with the map and the graph
    /// already locked shared (the caller moves bytes under the same locks).
    pub(crate) fn fault_shared_in(
        &self,
        m: &MapInner,
        objs: &SharedObjects<'_, L>,
        va: u64,
        access: Access,
        enter: Enter,
    ) -> Option<Result<PhysAddr, KernError>> {
        if va >= USER_MAX {
            return None;
        }
        let page = trunc_page(va);
        let (start, e) = m.entry_at_shared(page).ok()?;
        if !effective_prot(e.protection).contains(access.needs()) {
            return None;
        }
        let hold = e.object.as_ref()?;
        let how = Mapping {
            page,
            prot: e.protection,
            wired: e.wired_count > 0,
            direct: matches!(objs.holder(hold), Holder::Direct { .. }),
            enter,
        };
        let idx = PageIndex::in_window(start, page);
        let write = access == Access::Write;
        let r = objs.resolve(hold, idx, write, |r| self.enter_resolved(r, how));
        let r = r.transpose()?;
        // Out of frames (a page table) with a pager: the exclusive path
        // pages out for it. Nothing changed here.
        if r == Err(KernError::ResourceShortage) && self.0.ctx.pager().is_some() {
            return None;
        }
        VmCounters::bump(&self.0.ctx.counters.faults);
        Some(r.map(|r| r.pa))
    }

    /// Debug builds with consistency checks on: the checks after a call
    /// that took only shared locks (they need the graph exclusively).
    pub(crate) fn check_after_shared(&self) {
        if self.0.ctx.consistency_checks() {
            let m = self.0.inner.read();
            let objs = self.0.ctx.objects();
            self.assert_consistent(&m, &objs);
        }
    }

    /// The pmap step of a fault: enters `r` at `how.page` with the entry's
    /// protection, less `WRITE` while the page is still shared
    /// copy-on-write or is the zero frame (a store must fault to copy it or
    /// to zero-fill a page of its own).
    fn enter_resolved(&self, r: Resolved, how: Mapping) -> Result<(), KernError> {
        let pm = self.0.ctx.pmap();
        let mut prot = how.prot;
        if matches!(r.how, Resolution::Backing | Resolution::ZeroPage) || !how.direct {
            prot.remove(VmProt::WRITE);
        }
        match pm.enter(self.0.pmap, VirtAddr::new(how.page), r.pa, prot, how.wired) {
            Ok(f) => {
                pm.flush(f);
                Ok(())
            }
            Err(EnterError::NoTableFrame { .. }) if how.enter == Enter::BestEffort => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Before a store to the copy-on-write entry at `start`: clips it to
    /// the run of pages the faulting one belongs to, and takes that run
    /// over if nobody else sees it, else shadows it. Returns what was made.
    fn writable_run(
        &self,
        m: &mut MapInner,
        objs: &mut Objects<'_, L>,
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
        objs: &mut Objects<'_, L>,
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

/// What a fault is for.
pub(crate) enum Mode<'p, L: Locks> {
    /// The access itself.
    Fault,
    /// A store that then writes the page whole (`Produce`).
    Overwrite(Produce<'p, L>),
    /// A wiring: resolved as a store, entered with the entry's protection.
    Wire,
}

/// Where and how a fault's page is entered.
#[derive(Clone, Copy)]
struct Mapping {
    page: u64,
    prot: VmProt,
    wired: bool,
    direct: bool,
    enter: Enter,
}

/// What a fault did to make a copy-on-write entry writable.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Made {
    Nothing,
    TookOver,
    Shadow,
}

/// The frames a fault on page `idx` of `hold`'s window takes, with room
/// made for them and for `tables` page tables first in a system that pages
/// (this page kept), before anything changes. With RAM and swap both full,
/// a paged-out page may still come in by trading places with a resident
/// one (`Objects::exchange_in`).
fn room_for_fault<L: Locks>(
    objs: &mut Objects<'_, L>,
    hold: Option<&machvm_object::Hold>,
    (idx, write): (PageIndex, bool),
    frames: &FrameReservation<'_, L>,
    tables: u64,
) -> Result<u64, KernError> {
    let need = objs.frames_to_resolve(hold, idx, 1, write);
    let short = need.saturating_sub(frames.remaining() as u64);
    let Err(err) = objs.make_room(short + tables) else {
        return Ok(need);
    };
    let lone = tables == 0 && short == 1;
    if !(lone && hold.is_some_and(|h| objs.exchange_in(h, idx, write))) {
        return Err(err);
    }
    Ok(objs.frames_to_resolve(hold, idx, 1, write))
}
