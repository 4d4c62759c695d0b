//! The machine-independent face of the machine-dependent layer: Mach's pmap.
//!
//! A pmap holds the hardware translations of one address space. It is a
//! *cache*: the machine-independent layers (objects, maps) hold the truth and
//! may re-enter any non-wired translation the pmap drops. This crate defines
//!
//! - the [`Pmap`] trait, implemented once per machine (one value serves every
//!   address space of the machine, as Mach's `pmap_*` functions do, because
//!   [`Pmap::page_protect`] must reach every mapping of a page in every pmap);
//! - [`TlbFlush`], the `#[must_use]` token every translation-reducing call
//!   returns, so that a caller cannot forget the TLB shootdown;
//! - [`Access`] and [`FaultCode`], the verdict of a translated access;
//! - [`SoftPmap`], an obviously-correct software backend (ordered maps), used
//!   as the reference in differential tests and as a starting point for ports.
//!
//! Rules every backend keeps (checked by each backend's `verify`):
//! - A translation never allows more than the protection it was entered or
//!   last protected with, except that a non-empty protection always allows
//!   reading (x86 cannot express write- or execute-only pages).
//! - Every translation is on the reverse map (pv list) of its physical page,
//!   and every pv entry names a live translation.
//! - Lowering or removing a translation returns a [`TlbFlush`] naming it;
//!   performing that flush is what makes the change visible on every CPU.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

mod soft;

use alloc::boxed::Box;
use alloc::vec::Vec;
use arrayvec::ArrayVec;

pub use machvm_base::{
    KernError, LARGE_PAGE_SIZE, PAGE_SIZE, PhysAddr, VaRange, Violation, VirtAddr, VmProt,
};
pub use soft::SoftPmap;

/// Why [`Pmap::enter`] or [`Pmap::enter_large`] refused, with what it
/// refused; nothing changed. The map boundary turns it into Mach's code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnterError {
    /// `va` or `pa` is not aligned to the size entered, or `va` lies
    /// outside the address spaces' half.
    BadAddress {
        /// The virtual address.
        va: VirtAddr,
        /// The physical address.
        pa: PhysAddr,
    },
    /// No address space of that id.
    NoSuchPmap {
        /// The id given.
        pmap: PmapId,
    },
    /// No frame for a page table on the way to `va`.
    NoTableFrame {
        /// The virtual address entered.
        va: VirtAddr,
    },
}

impl From<EnterError> for KernError {
    fn from(e: EnterError) -> KernError {
        match e {
            EnterError::NoTableFrame { .. } => KernError::ResourceShortage,
            _ => KernError::InvalidArgument,
        }
    }
}

impl core::fmt::Display for EnterError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            EnterError::BadAddress { va, pa } => write!(f, "cannot map {va:?} to {pa:?}"),
            EnterError::NoSuchPmap { pmap } => write!(f, "no pmap {}", pmap.0),
            EnterError::NoTableFrame { va } => write!(f, "no page-table frame for {va:?}"),
        }
    }
}

/// The rules every pmap backend keeps, as a [`Violation`] from
/// [`Pmap::verify`] names them (a backend documents how it keeps each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PmapRule {
    /// The kernel's part of every address space is the one configured.
    KernelHalf,
    /// Entries are well formed: links between tables, leaves with a
    /// protection the hardware can express, nothing in a non-present one.
    Entries,
    /// Page-table pages: each reached from one parent, its use count its
    /// present entries, none empty but a root, all in the page-table state.
    Tables,
    /// Reverse maps: a translation of a managed frame is on that frame's
    /// mapping list, and every list entry is such a translation.
    ReverseMaps,
    /// Per-address-space resident and wired counters match the
    /// translations.
    Counters,
}

/// Names one address space (one pmap) of a [`Pmap`] backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PmapId(pub u32);

/// A set of CPUs, one bit per CPU number (at most 64 CPUs).
pub type CpuSet = u64;

/// The kind of memory access being translated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// A load.
    Read,
    /// A store.
    Write,
    /// An instruction fetch.
    Execute,
}

impl Access {
    /// The protection bit this access needs.
    pub fn needs(self) -> VmProt {
        match self {
            Access::Read => VmProt::READ,
            Access::Write => VmProt::WRITE,
            Access::Execute => VmProt::EXECUTE,
        }
    }
}

/// Why a translated access faulted, with x86's page-fault error-code bits
/// (they describe any MMU well enough).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FaultCode(pub u32);

impl FaultCode {
    /// A translation existed (protection violation) rather than none.
    pub const PRESENT: u32 = 1;
    /// The access was a write.
    pub const WRITE: u32 = 2;
    /// The access came from user mode.
    pub const USER: u32 = 4;
    /// The access was an instruction fetch.
    pub const INSTRUCTION: u32 = 16;

    /// The code for `access` by `user` code, with or without a translation.
    pub fn new(access: Access, user: bool, present: bool) -> FaultCode {
        let mut c = 0;
        if present {
            c |= Self::PRESENT;
        }
        match access {
            Access::Write => c |= Self::WRITE,
            Access::Execute => c |= Self::INSTRUCTION,
            Access::Read => {}
        }
        if user {
            c |= Self::USER;
        }
        FaultCode(c)
    }

    /// True when a translation was present (a protection fault).
    pub fn is_protection(self) -> bool {
        self.0 & Self::PRESENT != 0
    }
}

/// One translation, as [`Pmap::extract`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// Physical address of the 4 KiB page holding the looked-up address.
    pub pa: PhysAddr,
    /// Effective protection (see the crate rules about `READ`).
    pub prot: VmProt,
    /// Wired translations are never dropped by the pmap on its own.
    pub wired: bool,
    /// Size of the hardware mapping: `PAGE_SIZE` or `LARGE_PAGE_SIZE`.
    pub size: u64,
}

/// Normalises a protection to what a pmap can express: anything non-empty
/// is readable.
pub fn effective_prot(prot: VmProt) -> VmProt {
    if prot.is_empty() {
        prot
    } else {
        prot | VmProt::READ
    }
}

/// How many single pages a [`TlbFlush`] names before it degrades to a full
/// flush of the pmaps involved (a CR3 reload is cheaper than many `invlpg`s).
pub const TLB_FLUSH_BATCH: usize = 32;

/// Translations removed or downgraded but possibly still cached by some TLB.
///
/// Returned by every pmap call that reduces a translation; hand it to
/// [`Pmap::flush`] (after batching several with [`merge`](Self::merge)) before
/// relying on the change. Dropping one unflushed is a bug the compiler warns
/// about.
///
/// An empty token is one null pointer: the common case (a translation
/// entered where there was none) moves and drops nothing; the batch is
/// allocated at its first entry.
#[must_use = "stale TLB entries stay usable until the flush is performed with Pmap::flush"]
#[derive(Debug, Default, Eq)]
pub struct TlbFlush(Option<Box<FlushParts>>);

impl PartialEq for TlbFlush {
    /// Equal when they flush the same (an allocated empty batch equals none).
    fn eq(&self, other: &TlbFlush) -> bool {
        match (&self.0, &other.0) {
            (Some(a), Some(b)) => a == b,
            (None, None) => true,
            (Some(x), None) | (None, Some(x)) => **x == FlushParts::default(),
        }
    }
}

/// A [`TlbFlush`] taken apart by a backend's [`Pmap::flush`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FlushParts {
    /// Single pages to invalidate.
    pub pages: ArrayVec<(PmapId, VirtAddr), TLB_FLUSH_BATCH>,
    /// Pmaps to invalidate entirely (after `pages` overflowed).
    pub whole: ArrayVec<PmapId, 8>,
    /// Invalidate every pmap entirely (after `whole` overflowed).
    pub everything: bool,
    /// Page-table frames unlinked by the change, to free only after the
    /// invalidation (a CPU's paging-structure cache may still walk them).
    pub release: Vec<PhysAddr>,
}

impl FlushParts {
    fn add_page(&mut self, pmap: PmapId, va: VirtAddr) {
        if self.everything || self.whole.contains(&pmap) {
            return;
        }
        if self.pages.try_push((pmap, va)).is_err() {
            self.add_whole(pmap);
        }
    }

    fn add_whole(&mut self, pmap: PmapId) {
        if self.everything || self.whole.contains(&pmap) {
            return;
        }
        self.pages.retain(|(p, _)| *p != pmap);
        if self.whole.try_push(pmap).is_err() {
            self.everything = true;
            self.pages.clear();
            self.whole.clear();
        }
    }
}

impl TlbFlush {
    /// Nothing to flush.
    pub fn none() -> TlbFlush {
        TlbFlush(None)
    }

    /// True when there is nothing to flush.
    pub fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|p| {
            p.pages.is_empty() && p.whole.is_empty() && !p.everything && p.release.is_empty()
        })
    }

    fn parts(&mut self) -> &mut FlushParts {
        self.0.get_or_insert_with(Default::default)
    }

    /// Defers freeing the page-table frame `pa` until after the flush.
    pub fn defer_free(&mut self, pa: PhysAddr) {
        self.parts().release.push(pa);
    }

    /// Adds one page of `pmap`.
    pub fn add_page(&mut self, pmap: PmapId, va: VirtAddr) {
        self.parts().add_page(pmap, va);
    }

    /// Adds all of `pmap`.
    pub fn add_whole(&mut self, pmap: PmapId) {
        self.parts().add_whole(pmap);
    }

    /// Batches `other` into `self`.
    pub fn merge(&mut self, other: TlbFlush) {
        let Some(mut other) = other.0 else { return };
        let Some(me) = self.0.as_mut() else {
            self.0 = Some(other);
            return;
        };
        me.release.append(&mut other.release);
        if other.everything {
            me.everything = true;
            me.pages.clear();
            me.whole.clear();
            return;
        }
        for p in other.whole {
            me.add_whole(p);
        }
        for (p, va) in other.pages {
            me.add_page(p, va);
        }
    }

    /// What to flush, for backends. Consumes the token.
    pub fn into_parts(self) -> FlushParts {
        self.0.map(|b| *b).unwrap_or_default()
    }
}

/// The machine-dependent physical map layer, one value per machine.
///
/// Every method is callable from any thread. Addresses must be page aligned
/// (`LARGE_PAGE_SIZE` aligned for [`enter_large`](Pmap::enter_large)); a
/// misaligned address or an unknown [`PmapId`] is a caller bug, reported as
/// `InvalidArgument` where a `Result` is returned and ignored otherwise.
///
/// A backend implements every method over its machine's translation
/// structures; [`SoftPmap`] and `machvm-pmap-x86_64`'s `X86Pmap` are two.
/// This one wraps [`SoftPmap`] and counts the translations the fault
/// handler enters (a tracing pmap, as a kernel might use to debug one):
///
/// ```
/// use core::sync::atomic::{AtomicU64, Ordering::Relaxed};
/// use machvm_pmap::{
///     Access, EnterError, FaultCode, KernError, PhysAddr, Pmap, PmapId, PmapRule, SoftPmap,
///     TlbFlush, Translation, VaRange, Violation, VirtAddr, VmProt,
/// };
///
/// #[derive(Default)]
/// struct Counting {
///     inner: SoftPmap,
///     entered: AtomicU64,
/// }
///
/// impl Pmap for Counting {
///     fn create(&self) -> Result<PmapId, KernError> {
///         self.inner.create()
///     }
///     fn destroy(&self, p: PmapId) {
///         self.inner.destroy(p)
///     }
///     fn enter(
///         &self,
///         p: PmapId,
///         va: VirtAddr,
///         pa: PhysAddr,
///         prot: VmProt,
///         wired: bool,
///     ) -> Result<TlbFlush, EnterError> {
///         self.entered.fetch_add(1, Relaxed);
///         self.inner.enter(p, va, pa, prot, wired)
///     }
///     fn enter_large(&self, p: PmapId, va: VirtAddr, pa: PhysAddr, prot: VmProt, wired: bool) -> Result<TlbFlush, EnterError> {
///         self.inner.enter_large(p, va, pa, prot, wired)
///     }
///     fn reserve_tables(&self, p: PmapId, r: VaRange) -> Result<(), KernError> {
///         self.inner.reserve_tables(p, r)
///     }
///     fn release_tables(&self, p: PmapId) {
///         self.inner.release_tables(p)
///     }
///     fn remove(&self, p: PmapId, r: VaRange) -> TlbFlush {
///         self.inner.remove(p, r)
///     }
///     fn protect(&self, p: PmapId, r: VaRange, prot: VmProt) -> TlbFlush {
///         self.inner.protect(p, r, prot)
///     }
///     fn extract(&self, p: PmapId, va: VirtAddr) -> Option<Translation> {
///         self.inner.extract(p, va)
///     }
///     fn translate(&self, p: PmapId, va: VirtAddr, a: Access, user: bool) -> Result<PhysAddr, FaultCode> {
///         self.inner.translate(p, va, a, user)
///     }
///     fn page_protect(&self, pa: PhysAddr, prot: VmProt) -> TlbFlush {
///         self.inner.page_protect(pa, prot)
///     }
///     fn is_modified(&self, pa: PhysAddr) -> bool {
///         self.inner.is_modified(pa)
///     }
///     fn clear_modify(&self, pa: PhysAddr) -> TlbFlush {
///         self.inner.clear_modify(pa)
///     }
///     fn is_referenced(&self, pa: PhysAddr) -> bool {
///         self.inner.is_referenced(pa)
///     }
///     fn clear_reference(&self, pa: PhysAddr) -> TlbFlush {
///         self.inner.clear_reference(pa)
///     }
///     fn change_wiring(&self, p: PmapId, va: VirtAddr, wired: bool) {
///         self.inner.change_wiring(p, va, wired)
///     }
///     fn activate(&self, p: PmapId, cpu: usize) {
///         self.inner.activate(p, cpu)
///     }
///     fn deactivate(&self, p: PmapId, cpu: usize) {
///         self.inner.deactivate(p, cpu)
///     }
///     fn flush(&self, f: TlbFlush) {
///         self.inner.flush(f)
///     }
///     fn resident_count(&self, p: PmapId) -> u64 {
///         self.inner.resident_count(p)
///     }
///     fn mappings(&self, p: PmapId, r: VaRange) -> Vec<(VirtAddr, Translation)> {
///         self.inner.mappings(p, r)
///     }
///     fn mapping_count(&self, pa: PhysAddr) -> usize {
///         self.inner.mapping_count(pa)
///     }
///     fn verify(&self) -> Result<(), Violation<PmapRule>> {
///         self.inner.verify()
///     }
/// }
///
/// let pmap = Counting::default();
/// let space = pmap.create()?;
/// let (va, pa) = (VirtAddr::new(0x40_0000), PhysAddr::new(0x20_0000));
/// pmap.flush(pmap.enter(space, va, pa, VmProt::READ, false).expect("entered"));
/// assert_eq!(pmap.translate(space, va, Access::Read, true), Ok(pa));
/// assert_eq!(pmap.entered.load(Relaxed), 1);
/// # Ok::<(), KernError>(())
/// ```
pub trait Pmap: Send + Sync {
    /// Creates an empty address space (`pmap_create`).
    fn create(&self) -> Result<PmapId, KernError>;

    /// Destroys an address space, removing every translation and freeing its
    /// page tables (`pmap_destroy`). It must not be active on any CPU.
    fn destroy(&self, pmap: PmapId);

    /// Maps the page at `va` to the frame `pa` with `prot`, replacing any
    /// previous translation (`pmap_enter`). A `prot` without any bit removes.
    fn enter(
        &self,
        pmap: PmapId,
        va: VirtAddr,
        pa: PhysAddr,
        prot: VmProt,
        wired: bool,
    ) -> Result<TlbFlush, EnterError>;

    /// Maps a 2 MiB page: `va` and `pa` aligned to `LARGE_PAGE_SIZE`.
    /// Backends without large pages enter 512 small ones.
    fn enter_large(
        &self,
        pmap: PmapId,
        va: VirtAddr,
        pa: PhysAddr,
        prot: VmProt,
        wired: bool,
    ) -> Result<TlbFlush, EnterError>;

    /// Sets aside for `pmap` the page-table frames that entering
    /// translations anywhere in `range` could need, so that the enters of
    /// one call (a wiring enters every page) cannot run out half-way: they
    /// draw from these first. A bound that reads nothing of the tables
    /// (another CPU may free an emptied table meanwhile). `ResourceShortage`
    /// sets nothing aside. Backends without table frames need none: the
    /// default does nothing.
    fn reserve_tables(&self, pmap: PmapId, range: VaRange) -> Result<(), KernError> {
        let _ = (pmap, range);
        Ok(())
    }

    /// The frames [`reserve_tables`](Pmap::reserve_tables) of `range`
    /// takes (a system that pages makes room first). Default: none.
    fn tables_for(&self, _range: VaRange) -> u64 {
        0
    }

    /// The table frames entering `va` in `pmap` takes now (missing on its
    /// walk, or one to demote a large leaf). Default: none.
    fn tables_missing(&self, _pmap: PmapId, _va: VirtAddr) -> u64 {
        0
    }

    /// Frees what [`reserve_tables`](Pmap::reserve_tables) set aside for
    /// `pmap` and no enter used; the end of the call that reserved them.
    fn release_tables(&self, pmap: PmapId) {
        let _ = pmap;
    }

    /// Removes every translation in `range` (`pmap_remove`).
    fn remove(&self, pmap: PmapId, range: VaRange) -> TlbFlush;

    /// Lowers the protection of every translation in `range` to at most
    /// `prot` (`pmap_protect`); never raises. Without `READ` it removes.
    fn protect(&self, pmap: PmapId, range: VaRange, prot: VmProt) -> TlbFlush;

    /// The translation of `va`, if any (`pmap_extract`).
    fn extract(&self, pmap: PmapId, va: VirtAddr) -> Option<Translation>;

    /// Translates an access as the MMU would, setting the referenced and (for
    /// writes) modified bits on success. `user` selects user-mode checks.
    fn translate(
        &self,
        pmap: PmapId,
        va: VirtAddr,
        access: Access,
        user: bool,
    ) -> Result<PhysAddr, FaultCode>;

    /// Lowers the protection of every mapping of the frame `pa`, in every
    /// pmap, to at most `prot`; without `READ`, removes them all
    /// (`pmap_page_protect`).
    fn page_protect(&self, pa: PhysAddr, prot: VmProt) -> TlbFlush;

    /// True if any mapping of `pa` was written since the bit was cleared.
    fn is_modified(&self, pa: PhysAddr) -> bool;
    /// Clears the modified bit of every mapping of `pa`.
    fn clear_modify(&self, pa: PhysAddr) -> TlbFlush;
    /// True if any mapping of `pa` was accessed since the bit was cleared.
    fn is_referenced(&self, pa: PhysAddr) -> bool;
    /// Clears the referenced bit of every mapping of `pa`.
    fn clear_reference(&self, pa: PhysAddr) -> TlbFlush;

    /// Changes whether the translation of `va` is wired (`pmap_change_wiring`).
    fn change_wiring(&self, pmap: PmapId, va: VirtAddr, wired: bool);

    /// Makes `pmap` the address space of `cpu` (`pmap_activate`).
    fn activate(&self, pmap: PmapId, cpu: usize);
    /// Records that `cpu` no longer runs in `pmap` (`pmap_deactivate`).
    fn deactivate(&self, pmap: PmapId, cpu: usize);

    /// Performs a batched TLB invalidation on every CPU that may cache the
    /// translations named.
    fn flush(&self, flush: TlbFlush);

    /// Number of 4 KiB pages mapped by `pmap`.
    fn resident_count(&self, pmap: PmapId) -> u64;

    /// Every translation of `pmap` within `range`, in address order (large
    /// pages reported once, at their base).
    fn mappings(&self, pmap: PmapId, range: VaRange) -> Vec<(VirtAddr, Translation)>;

    /// Number of translations of the frame `pa` over all pmaps.
    fn mapping_count(&self, pa: PhysAddr) -> usize;

    /// Checks the backend's invariants.
    fn verify(&self) -> Result<(), Violation<PmapRule>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_batches_then_degrades() {
        let mut f = TlbFlush::none();
        assert!(f.is_empty());
        for i in 0..TLB_FLUSH_BATCH as u64 {
            f.add_page(PmapId(1), VirtAddr::new(i * PAGE_SIZE));
        }
        let p = f.into_parts();
        assert_eq!(
            (p.pages.len(), p.whole.len(), p.everything),
            (TLB_FLUSH_BATCH, 0, false)
        );
        let mut f = TlbFlush::none();
        for i in 0..=TLB_FLUSH_BATCH as u64 {
            f.add_page(PmapId(1), VirtAddr::new(i * PAGE_SIZE));
        }
        f.add_page(PmapId(2), VirtAddr::new(0));
        let p = f.into_parts();
        assert_eq!(p.pages.as_slice(), &[(PmapId(2), VirtAddr::new(0))]);
        assert_eq!(p.whole.as_slice(), &[PmapId(1)]);
        assert!(!p.everything);
        let mut f = TlbFlush::none();
        for i in 0..9 {
            f.add_whole(PmapId(i));
        }
        let mut g = TlbFlush::none();
        g.add_page(PmapId(3), VirtAddr::new(0));
        g.merge(f);
        assert!(g.into_parts().everything);
    }

    #[test]
    fn fault_codes_use_x86_bits() {
        assert_eq!(FaultCode::new(Access::Write, true, true).0, 7);
        assert_eq!(FaultCode::new(Access::Execute, false, false).0, 16);
        assert!(!FaultCode::new(Access::Read, true, false).is_protection());
        assert_eq!(effective_prot(VmProt::WRITE), VmProt::DEFAULT);
        assert_eq!(effective_prot(VmProt::NONE), VmProt::NONE);
    }
}

/// The examples in this crate's README.md, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct CrateReadmeDoctests;
