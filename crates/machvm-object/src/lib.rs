//! VM objects: the memory behind map entries, and who holds it.
//!
//! An object is a sparse array of resident pages indexed by page offset.
//! Anonymous objects are zero-filled on demand. Copy-on-write uses Mach
//! shadow objects: a shadow covers a window of its *backing* object starting
//! at a page offset; a lookup walks the chain top-down, and a write copies
//! the page up into the top object.
//!
//! **Ownership is recorded, not inferred.** Every reference to an object is a
//! holder record naming who holds it and which window: a map entry that
//! writes it directly ([`Holder::Direct`]), a map entry with copy-on-write
//! pending ([`Holder::NeedsCopy`]), a copy object's range ([`Holder::Copy`])
//! or a shadow object ([`Holder::Shadow`]). Map entries and copies own their
//! records as [`Hold`]s, which are not `Clone`: one is created and released
//! only through [`Objects`], the locked view of a context's object graph.
//! Sharing, collapse, bypass and reclamation read these records and nothing
//! else — never a reference count, never the pmap.
//!
//! A resident page is *reachable* when some top holder (entry or copy) sees
//! it: its window covers the page's offset and every object between them in
//! the chain lacks a page there. The graph frees a page the moment it stops
//! being reachable (a holder goes, a window shrinks, a page above it is
//! copied up), not at some later collapse.
//!
//! Invariants (checked by [`Objects::verify`], one [`ObjectRule`] each):
//! - No chain loops back on itself.
//! - A resident page's offset is below its object's size, its frame is in
//!   state `Object` and its metadata names this object and offset.
//! - Every object has at least one holder; each holder's window lies inside
//!   the object.
//! - A shadow's backing object holds exactly one `Shadow` record for it,
//!   with the shadow's window, and every `Shadow` record names an object
//!   standing there.
//! - A window written directly (`Direct`) overlaps no other holder's window
//!   but other `Direct` ones (`Share` siblings): copy-on-write rests on it.
//! - No object is held by exactly one shadow and nothing else (it would have
//!   been collapsed into that shadow).
//! - Every present page (resident, or paged out to a swap slot) is
//!   reachable.
//! - Each paged-out page holds its own slot, and the pager has exactly
//!   those in use.
//!
//! Locking: one lock per context guards the whole graph ([`VmContext::objects`]);
//! it is taken after any map's lock and before the pmap's and the frame
//! allocator's. Every walk over chains and holders is a loop with an explicit
//! work list: no recursion whose depth a caller controls.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

mod context;
mod graph;
mod overwrite;
mod page_at;
mod pagein;
mod pagemap;
mod pageout;
mod pages;
mod reclaim;
mod shared;
mod slots;
mod verify;

pub use context::{AuditEntries, Counter, Objects, SharedObjects, VmAudit, VmContext, VmCounters};
pub use machvm_pager::{Pager, SwapSlot};
pub use overwrite::{Produce, ProduceRun};
pub use page_at::PageAt;
pub use pages::{Found, PageLookup, Resolution, Resolved};
pub use verify::ObjectRule;

/// Names a VM object of one context: an index into the context's object
/// table, reused once the object is gone (no hold can outlive its object).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectId(u32);

impl ObjectId {
    /// The number recorded in frame metadata (never 0, which means "none").
    pub fn get(self) -> u32 {
        self.0
    }
}

/// Names one holder record of an object (a slot of its holder table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HolderId(u32);

/// Who holds a window of an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holder {
    /// A map entry that writes the window directly. Several `Direct` holders
    /// of one window are `Share` siblings and see each other's writes.
    Direct {
        /// The map's id.
        map: u64,
    },
    /// A map entry with copy-on-write pending (Mach's `needs_copy`): it
    /// reads the window and must shadow it before writing.
    NeedsCopy {
        /// The map's id.
        map: u64,
    },
    /// A range of a copy object (`VmMapCopy`): reads the window.
    Copy,
    /// A shadow object standing on the window.
    Shadow(ObjectId),
}

impl Holder {
    /// True for holders outside the graph (entries and copies).
    pub fn is_top(self) -> bool {
        !matches!(self, Holder::Shadow(_))
    }

    /// The map of an entry holder.
    pub fn map(self) -> Option<u64> {
        match self {
            Holder::Direct { map } | Holder::NeedsCopy { map } => Some(map),
            _ => None,
        }
    }
}

/// An exact reference to a window of an object: what a map entry or a copy
/// range owns. Not `Clone`: each hold is one holder record, created and
/// released through [`Objects`]; dropping one without
/// [`release`](Objects::release) leaks the object.
#[must_use = "a hold must be released through Objects::release"]
#[derive(Debug, PartialEq, Eq)]
pub struct Hold {
    obj: ObjectId,
    id: HolderId,
}

impl Hold {
    /// The object held.
    pub fn object(&self) -> ObjectId {
        self.obj
    }
}

/// What [`Objects::cow_share`] gives: a new hold on a copy-on-write view of
/// the window, and whether the old holder's translations must lose `WRITE`
/// (it used to write the window directly and now has copy-on-write pending).
#[derive(Debug)]
pub struct CowRef {
    /// The new holder's hold.
    pub hold: Hold,
    /// Write-protect the old holder's translations of the window.
    pub write_protect: bool,
}

#[cfg(all(test, not(loom)))]
mod tests;

/// The examples in this crate's README.md, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct CrateReadmeDoctests;
