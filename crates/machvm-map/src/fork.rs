//! `fork`: a new map built from an old one, entry by entry, by inheritance.
//!
//! - `Share`: both maps hold one window of one object directly and see each
//!   other's writes. A copy-on-write entry is made writable first (taken
//!   over, or shadowed), so that the sharers share the object they write.
//!   The first sharing drops the parent's translations where nothing is
//!   resident: they may map the zero frame, which sharers never map.
//! - `Copy`: the child holds the window copy-on-write (`NeedsCopy`), the
//!   parent's entry too, and the parent's translations lose `WRITE` — all of
//!   it before the parent's map is unlocked, shootdown included. A window
//!   others write directly cannot be shadowed (its sharers keep writing
//!   it), so the child gets an eager private copy of its resident pages,
//!   with the frames reserved before anything changes.
//! - `None`: the child has a hole there.
//! - A wired entry (`wire.rs`) stays as it is: its `Copy` child gets an
//!   eager copy of its pages, and no child entry is wired.

use crate::entry_set::Entries;
use alloc::vec::Vec;
use machvm_base::sync::Locks;

use machvm_base::{KernError, PageIndex, VmInherit};
use machvm_frame::FrameReservation;
use machvm_object::{Hold, Holder, Objects};
use machvm_pmap::TlbFlush;

use crate::data::reserve_settled;
use crate::{Entry, MapInner, VmMap, page_range, release_entries};

/// Fork's `Copy` entries that hold an object.
fn copied_entries(m: &MapInner) -> impl Iterator<Item = &Entry> {
    m.entries
        .values()
        .filter(|e| e.inheritance == VmInherit::Copy && e.object.is_some())
}

/// The handles fork's `Copy` entries hold.
fn copied(m: &MapInner) -> impl Iterator<Item = &Hold> {
    copied_entries(m).filter_map(|e| e.object.as_ref())
}

/// Shortens the chains of fork's `Copy` entries (bypass and collapse move
/// pages between objects, so the final count is taken after them; see
/// `reserve_settled`). Returns whether anything moved.
fn eager_settle<L: Locks>(m: &MapInner, objs: &mut Objects<'_, L>) -> bool {
    copied(m).fold(false, |moved, h| objs.shorten_chain(h) | moved)
}

/// Frames fork's `Copy` entries take: eager copies of windows others write
/// directly, and of wired entries.
fn eager_frames<L: Locks>(m: &MapInner, objs: &Objects<'_, L>) -> u64 {
    copied_entries(m)
        .filter_map(|en| Some((en, en.object.as_ref()?)))
        .map(|(en, h)| {
            let (s, e) = objs.window(h);
            if en.wired_count > 0 {
                objs.copy_frames(h, PageIndex::new(0), e.since(s))
            } else {
                objs.cow_frames(h, PageIndex::new(0), e.since(s))
            }
        })
        .sum()
}

/// Clips each copy-on-write `Share` entry at the bounds of the runs of
/// pages other holders see, so that making it writable takes over the runs
/// nobody else sees and shadows only the others (as a store does).
fn clip_share_runs<L: Locks>(m: &mut MapInner, objs: &mut Objects<'_, L>) {
    let mut cuts = Vec::new();
    for (&start, e) in m.entries.iter() {
        let Some(h) = &e.object else { continue };
        if e.inheritance != VmInherit::Share || matches!(objs.holder(h), Holder::Direct { .. }) {
            continue;
        }
        // One pass over the other holders gives every cut.
        for (a, b) in objs.shared_runs(h) {
            cuts.push(start + a.byte_offset());
            cuts.push(start + b.byte_offset());
        }
    }
    for va in cuts {
        m.clip(objs, va);
    }
}

impl<L: Locks> VmMap<L> {
    /// Creates a child map from this one, entry by entry, by inheritance.
    /// On `ResourceShortage` nothing has changed.
    pub fn fork(&self) -> Result<VmMap<L>, KernError> {
        let ctx = self.context().clone();
        let mut m = machvm_base::sync::write::<L, _>(&self.0.inner);
        if ctx.pager().is_some() {
            // Room for the eager copies and the child's root table at once:
            // a fork that cannot have both pages nothing out.
            let mut objs = ctx.objects();
            let need = eager_frames(&m, &objs) + 1;
            objs.make_room(need)?;
        }
        let child = VmMap::new(&ctx)?;
        let objs = ctx.objects();
        let (mut objs, mut frames) =
            reserve_settled(objs, |o| eager_settle(&m, o), |o| eager_frames(&m, o))?;
        clip_share_runs(&mut m, &mut objs);
        let mut flush = TlbFlush::none();
        let out = self.inherit_entries(&mut m, &mut objs, child.id(), &mut frames, &mut flush);
        drop(frames);
        // The parent's pages are write-protected everywhere before any of its
        // threads can take the map again and copy one up.
        drop(objs);
        ctx.pmap().flush(flush);
        let out = out?;
        // Entries that changed holder may now continue their neighbours (and
        // the child's copy-on-write entries each other's); untouched entries
        // were simplified already.
        let held = out.values().any(|e| e.object.is_some());
        let mut objs = ctx.objects();
        if held {
            m.simplify(&mut objs, 0, u64::MAX);
        }
        self.assert_consistent(&m, &objs);
        drop(objs);
        drop(m);
        let mut cm = machvm_base::sync::write::<L, _>(&child.0.inner);
        cm.replace_entries(out);
        if held || ctx.consistency_checks() {
            let mut objs = ctx.objects();
            if held {
                cm.simplify(&mut objs, 0, u64::MAX);
            }
            child.assert_consistent(&cm, &objs);
        }
        drop(cm);
        Ok(child)
    }

    /// The child's entries, by inheritance; lowers the parent's
    /// translations of `Copy` entries into `flush`.
    fn inherit_entries(
        &self,
        m: &mut MapInner,
        objs: &mut Objects<'_, L>,
        child: u64,
        frames: &mut FrameReservation<'_, L>,
        flush: &mut TlbFlush,
    ) -> Result<Entries, KernError> {
        let mut out: Vec<(u64, Entry)> = Vec::new();
        m.entries.try_for_each_mut(|start, e| {
            let hold = match e.inheritance {
                VmInherit::None => return Ok(()),
                VmInherit::Share => {
                    let pages = e.pages(start);
                    let map = Holder::Direct { map: self.0.id };
                    let h = e.object.get_or_insert_with(|| objs.create(pages, map));
                    objs.make_writable(h, self.0.id);
                    if objs.zero_mappable(h) {
                        // Its first sibling: the zero frame the parent may
                        // map where nothing is resident would hide the
                        // sibling's stores.
                        let pm = self.0.ctx.pmap();
                        for (a, b) in objs.unbacked_runs(h) {
                            let (a, b) = (start + a.byte_offset(), start + b.byte_offset());
                            flush.merge(pm.remove(self.0.pmap, page_range(a, b)));
                        }
                    }
                    Some(objs.share(h, Holder::Direct { map: child }))
                }
                VmInherit::Copy => {
                    let holder = Holder::NeedsCopy { map: child };
                    match self.cow_reference(objs, (start, e), holder, frames, flush) {
                        Ok(hold) => hold,
                        Err(err) => {
                            // Unreachable with the frames reserved.
                            release_entries(objs, out.drain(..));
                            return Err(err);
                        }
                    }
                }
            };
            let mut child_entry = Entry::like(e, e.end, hold);
            // A wiring is the parent's: the child's pages are not wired.
            child_entry.wired_count = 0;
            out.push((start, child_entry));
            Ok(())
        })?;
        Ok(out.into_iter().collect())
    }
}
