//! Pagers for machvm: where object pages go when their frames are needed.
//!
//! A Mach VM object is backed by a pager (a memory object). The requests
//! the VM system makes of it are few: take this page (page out), give it
//! back (page in), forget it (the object died or the page was rewritten).
//! [`Pager`] is that interface; [`DefaultPager`] is Mach's default pager
//! for anonymous memory: pages kept in numbered swap slots on a
//! [`BackingStore`] — in host memory ([`MemStore`]), in a file
//! (`FileStore`, feature `std`), or in a RAM disk carved from physical
//! memory at boot ([`RamDisk`]).
//!
//! Invariants (checked by [`Pager::verify`], one [`PagerRule`] each):
//! - A slot is in use iff its bit is set; the in-use count is the bits set.
//! - Slots in use plus slots promised to credits never exceed the store.
//! - No slot was forgotten twice or before it was used.
//!
//! A slot has one owner (one page of one object): machvm never shares a
//! slot, it copies (`duplicate`), so a slot needs no reference count.
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

mod default;
#[cfg(feature = "std")]
mod file;
mod slots;
mod store;
#[cfg(test)]
mod tests;

use core::num::NonZeroU32;

use machvm_base::{KernError, PhysAddr, Violation};
use machvm_frame::PhysMem;

pub use default::DefaultPager;
#[cfg(feature = "std")]
pub use file::FileStore;
pub use store::{BackingStore, MemStore, RamDisk};

/// A slot of a backing store, numbered from 1 (so that an
/// `Option<SwapSlot>` is one word and 0 means "none" where a word is kept).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SwapSlot(NonZeroU32);

impl SwapSlot {
    /// Slot `n` (1-based), or `None` for 0.
    pub const fn new(n: u32) -> Option<SwapSlot> {
        match NonZeroU32::new(n) {
            Some(n) => Some(SwapSlot(n)),
            None => None,
        }
    }

    /// The slot's number (1-based).
    pub const fn get(self) -> u32 {
        self.0.get()
    }

    /// The page index in the store (0-based).
    pub(crate) const fn index(self) -> u64 {
        self.0.get() as u64 - 1
    }
}

/// Why a pager refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PagerError {
    /// No free slot (or not as many as asked).
    NoSpace,
    /// The store could not write the page; nothing was kept.
    Store(StoreError),
    /// The credit given was issued by another pager (nothing was taken).
    ForeignCredit,
}

impl From<PagerError> for KernError {
    fn from(_: PagerError) -> KernError {
        KernError::ResourceShortage
    }
}

/// A backing store failed to write a page (a device error, a full file
/// system); the pager then keeps nothing and the page stays resident.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreError;

/// The pager's invariants, one per bullet at the top of the crate: what a
/// [`Violation`] from [`Pager::verify`] names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PagerRule {
    /// A slot is in use iff its bit is set; the count is the bits set.
    Bitmap,
    /// In use plus promised never exceeds the store.
    Counts,
    /// No slot was forgotten twice or before it was used.
    NoBadForget,
}

/// Mach's memory-object requests for anonymous memory, as machvm's object
/// layer makes them. Every method is callable from any thread; the pager's
/// own lock is a leaf, never held across a call into the store.
pub trait Pager: Send + Sync {
    /// Promises `n` slots to the caller, all or none: what a call that
    /// must not fail half-way takes before it changes anything.
    fn reserve(&self, n: u64) -> Result<SwapCredit<'_>, PagerError>;

    /// Writes the page at `src` to a new slot (Mach's `data_return`), from
    /// `credit` when given. On failure no slot is taken (nor credit spent).
    fn page_out(
        &self,
        mem: &PhysMem,
        src: PhysAddr,
        credit: Option<&mut SwapCredit<'_>>,
    ) -> Result<SwapSlot, PagerError>;

    /// Reads `slot` into the frame at `dst` (Mach's `data_request`); the
    /// slot stays the caller's until [`forget`](Self::forget).
    fn page_in(&self, slot: SwapSlot, mem: &PhysMem, dst: PhysAddr);

    /// Reads `buf.len()` bytes at byte `offset` of `slot` (a reader that
    /// does not need the page resident). `false`, nothing read, when the
    /// bytes do not all lie inside the page.
    fn read(&self, slot: SwapSlot, mem: &PhysMem, offset: usize, buf: &mut [u8]) -> bool;

    /// A new slot holding a copy of `slot` (an eager copy of a page that is
    /// paged out), from `credit` when given.
    fn duplicate(
        &self,
        slot: SwapSlot,
        mem: &PhysMem,
        credit: Option<&mut SwapCredit<'_>>,
    ) -> Result<SwapSlot, PagerError>;

    /// Gives `slot` back (Mach's `terminate` of the page): its owner died,
    /// or the page it held was rewritten.
    fn forget(&self, slot: SwapSlot);

    /// Trades contents between `slot` and the frame at `pa`: the slot now
    /// holds the frame's page and the frame the slot's (SPEC §8's page-in
    /// with RAM and swap both full). On an error neither changed. The
    /// default refuses.
    fn exchange(&self, slot: SwapSlot, mem: &PhysMem, pa: PhysAddr) -> Result<(), PagerError> {
        let _ = (slot, mem, pa);
        Err(PagerError::Store(StoreError))
    }

    /// Slots neither in use nor promised.
    fn free_slots(&self) -> u64;

    /// Slots in the store.
    fn total_slots(&self) -> u64;

    /// Checks the invariants at the top of the crate, naming the first
    /// rule broken.
    fn verify(&self) -> Result<(), Violation<PagerRule>>;

    /// Takes back `n` slots promised to a credit and not used: what a
    /// dropped [`SwapCredit`] calls.
    fn release_promise(&self, n: u64);
}

/// Slots a [`Pager`] promised to one call ([`Pager::reserve`]); those not
/// used go back when it is dropped.
#[must_use = "a credit gives its slots back when dropped"]
pub struct SwapCredit<'a> {
    pager: &'a dyn Pager,
    left: u64,
}

impl<'a> SwapCredit<'a> {
    /// A credit of `left` slots of `pager` (for [`Pager`] implementations).
    pub fn new(pager: &'a dyn Pager, left: u64) -> SwapCredit<'a> {
        SwapCredit { pager, left }
    }

    /// True when `pager` issued this credit (a pager spends only its own).
    pub fn is_of(&self, pager: &dyn Pager) -> bool {
        core::ptr::addr_eq(self.pager as *const dyn Pager, pager as *const dyn Pager)
    }

    /// Slots still promised.
    pub fn left(&self) -> u64 {
        self.left
    }

    /// Spends one slot of the promise: `false` when none is left.
    pub fn spend(&mut self) -> bool {
        let had = self.left > 0;
        self.left = self.left.saturating_sub(1);
        had
    }

    /// Takes one spent slot back (a write that failed).
    pub fn refund(&mut self) {
        self.left += 1;
    }
}

impl Drop for SwapCredit<'_> {
    fn drop(&mut self) {
        if self.left > 0 {
            self.pager.release_promise(self.left);
        }
    }
}

impl core::fmt::Debug for SwapCredit<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SwapCredit")
            .field("left", &self.left)
            .finish()
    }
}

/// The examples in this crate's README.md, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct CrateReadmeDoctests;
