//! The x86_64 pmap: real 4-level page tables, built in frames from
//! `machvm-frame`.
//!
//! The same code runs on the host, over simulated RAM, and in the bare-metal
//! test kernel, where the tables are loaded into CR3. On the host nothing
//! walks the tables but [`X86Pmap`]'s own software walker
//! ([`Pmap::translate`]), which applies the MMU's rules: present bits at every
//! level, writable and user bits ANDed across levels, NX ORed, CR0.WP set (so
//! supervisor writes honour read-only), accessed bits set on every level and
//! the dirty bit on the leaf.
//!
//! Invariants (checked by `Pmap::verify`, each naming its
//! [`PmapRule`]: `KernelHalf`, `Entries`, `Tables`,
//! `ReverseMaps`, `Counters`):
//! - Only the user half (PML4 entries 0..256) belongs to a pmap; entries
//!   256..512 are the kernel's, copied into every root at creation.
//! - Intermediate entries are `P|RW|US`; leaves carry the protection.
//! - A page-table page's `use_count` equals its present entries, and a
//!   non-root table with no present entry does not exist (freed eagerly; the
//!   frame itself is released only after the TLB flush).
//! - Every table frame is reachable from exactly one parent entry.
//! - A leaf has the `MANAGED` software bit iff its frame is inside the frame
//!   allocator's span, and then it is on that frame's pv list (for a 2 MiB
//!   leaf: on the pv list of its first frame, marked large) and vice versa.
//! - `WIRED` software bit <=> the translation is wired; per-pmap resident and
//!   wired counters match the leaves.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod entry;
mod mmu;
mod pv;
mod range;
mod spaces;
mod trait_impl;
mod verify;
mod walk;

use alloc::boxed::Box;
use alloc::format;
use alloc::sync::Arc;
use alloc::vec::Vec;
use arrayvec::ArrayVec;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use entry::{Pte, index, shift};
use machvm_base::sync::{Locks, Mutex, SpinLocks};
use machvm_base::{
    KernError, LARGE_PAGE_SIZE, PAGE_SIZE, PhysAddr, USER_MAX, VaRange, VirtAddr, VmProt,
};
use machvm_frame::{FrameAllocator, FrameError, FrameState, FrameUse, PhysMem};
use machvm_pmap::{
    Access, CpuSet, EnterError, FaultCode, Pmap, PmapId, PmapRule, TlbFlush, Translation, Violation,
};
use pv::{PvEntry, PvHead};
use spaces::{Space, Spaces};
use x86_64::structures::paging::PageTableFlags as F;

/// Entry bits as the hot loops use them, from the definitions in
/// [`entry`] (the `x86_64` crate's flags).
const P: u64 = F::PRESENT.bits();
const RW: u64 = F::WRITABLE.bits();
const US: u64 = F::USER_ACCESSIBLE.bits();
const A: u64 = F::ACCESSED.bits();
const D: u64 = F::DIRTY.bits();
const PS: u64 = F::HUGE_PAGE.bits();
const NX: u64 = F::NO_EXECUTE.bits();
/// Software bit: the translation is wired.
const WIRED: u64 = F::BIT_9.bits();
/// Software bit: the frame is managed (has a pv list).
const MANAGED: u64 = F::BIT_10.bits();
const ADDR: u64 = Pte::ADDR_MASK;
const TABLE: u64 = P | RW | US;
const ENTRIES: usize = 512;
const USER_ENTRIES: usize = 256;
const SMALL_PER_LARGE: u64 = LARGE_PAGE_SIZE / PAGE_SIZE;

/// Hooks into the CPU, supplied by a kernel; absent on the host.
///
/// machvm calls [`load_root`](Mmu::load_root) when a space is activated on
/// the CPU that runs the call, and [`invalidate`](Mmu::invalidate) when a
/// flush names translations some CPU may cache; it never executes a
/// privileged instruction itself. `invalidate` is called with machvm locks
/// held: a CPU spinning on one of them must still answer the IPI (see
/// `Locks::relax`). This one counts instead of touching a CPU, as a host
/// test would; the comments say what a kernel does.
///
/// ```
/// use std::sync::Arc;
/// use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};
/// use machvm_base::{PhysAddr, VaRange, VirtAddr, VmProt};
/// use machvm_frame::{FrameAllocator, FrameUse};
/// use machvm_pmap::{CpuSet, Pmap};
/// use machvm_pmap_x86_64::{Mmu, X86Config, X86Pmap};
///
/// struct CountingMmu {
///     roots: AtomicUsize,
///     shootdowns: AtomicUsize,
/// }
///
/// impl Mmu for CountingMmu {
///     fn current_cpu(&self) -> usize {
///         0 // a kernel reads its per-CPU block (GS base)
///     }
///     fn load_root(&self, _root: PhysAddr) {
///         self.roots.fetch_add(1, Relaxed); // a kernel writes CR3
///     }
///     fn invalidate(&self, cpus: CpuSet, pages: Option<&[VirtAddr]>) {
///         // A kernel runs `invlpg` for each page here and sends the other
///         // CPUs in `cpus` an IPI that does the same, then waits for them.
///         let _ = pages; // `None`: every non-global translation
///         assert_eq!(cpus, 1, "only CPU 0 runs the space");
///         self.shootdowns.fetch_add(1, Relaxed);
///     }
/// }
///
/// static MMU: CountingMmu = CountingMmu {
///     roots: AtomicUsize::new(0),
///     shootdowns: AtomicUsize::new(0),
/// };
///
/// let frames = Arc::new(FrameAllocator::hosted(1 << 20)?);
/// let config = X86Config { kernel_half: [0; 256], mmu: Some(&MMU) };
/// let pmap = X86Pmap::new(frames.clone(), config)?;
/// let space = pmap.create()?;
/// pmap.activate(space, 0);
/// assert_eq!(MMU.roots.load(Relaxed), 1);
///
/// let (va, pa) = (VirtAddr::new(0x40_0000), frames.alloc(FrameUse::Object)?);
/// let flush = pmap.enter(space, va, pa, VmProt::READ, false).expect("tables");
/// pmap.flush(flush); // a new translation: nothing cached, nothing sent
/// assert_eq!(MMU.shootdowns.load(Relaxed), 0);
/// let flush = pmap.remove(space, VaRange::round_out(va.as_u64(), 4096).unwrap());
/// pmap.flush(flush);
/// assert_eq!(MMU.shootdowns.load(Relaxed), 1);
/// # Ok::<(), machvm_base::KernError>(())
/// ```
pub trait Mmu: Sync {
    /// Number of the CPU executing the call.
    fn current_cpu(&self) -> usize;
    /// Loads `root` as this CPU's page-table root (CR3).
    fn load_root(&self, root: PhysAddr);
    /// Invalidates `pages` (or, for `None`, every non-global entry) on every
    /// CPU in `cpus`, waiting until all are done.
    fn invalidate(&self, cpus: CpuSet, pages: Option<&[VirtAddr]>);
}

/// How to build an [`X86Pmap`].
#[derive(Clone, Copy)]
pub struct X86Config {
    /// PML4 entries 256..512 copied into every new root (the kernel half).
    pub kernel_half: [u64; USER_ENTRIES],
    /// The CPU hooks, or `None` on the host.
    pub mmu: Option<&'static dyn Mmu>,
}

impl Default for X86Config {
    fn default() -> Self {
        X86Config {
            kernel_half: [0; USER_ENTRIES],
            mmu: None,
        }
    }
}

/// What a range operation does to each leaf it meets.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Remove,
    /// Clear these bits / set these bits.
    Lower {
        clear: u64,
        set: u64,
    },
}

impl Op {
    fn for_prot(prot: VmProt) -> Op {
        if !prot.contains(VmProt::READ) {
            return Op::Remove;
        }
        Op::Lower {
            clear: if prot.contains(VmProt::WRITE) { 0 } else { RW },
            set: if prot.contains(VmProt::EXECUTE) {
                0
            } else {
                NX
            },
        }
    }
}

/// Changes to a space's counters made during one operation.
#[derive(Default)]
struct Acct {
    resident: i64,
    wired: i64,
}

/// The x86_64 pmap module: every address space of one machine.
///
/// ```
/// use std::sync::Arc;
/// use machvm_frame::{FrameAllocator, FrameUse};
/// use machvm_pmap::{Access, Pmap, VirtAddr, VmProt};
/// use machvm_pmap_x86_64::X86Pmap;
///
/// let frames = Arc::new(FrameAllocator::hosted(1 << 20).unwrap());
/// let pmap = X86Pmap::new(frames.clone(), Default::default()).unwrap();
/// let p = pmap.create().unwrap();
/// let page = frames.alloc(FrameUse::Object).unwrap();
/// let flush = pmap.enter(p, VirtAddr::new(0x40_0000), page, VmProt::READ, false).unwrap();
/// pmap.flush(flush);
/// assert_eq!(pmap.translate(p, VirtAddr::new(0x40_0123), Access::Read, true), Ok(page + 0x123));
/// assert!(pmap.translate(p, VirtAddr::new(0x40_0123), Access::Write, true).is_err());
/// pmap.destroy(p);
/// frames.free(page);
/// ```
pub struct X86Pmap<L: Locks = SpinLocks> {
    frames: Arc<FrameAllocator<L>>,
    /// The address spaces, each under its own lock (`spaces.rs`).
    spaces: Spaces<L>,
    /// Per frame index of the allocator span: its pv list, under its lock.
    pv: Box<[Mutex<L, PvHead>]>,
    /// Pmap currently active on each CPU.
    current: Mutex<L, [Option<u32>; 64]>,
    cfg: X86Config,
    flushes: AtomicU64,
    #[cfg(test)]
    race_hook: spin::Mutex<Option<alloc::boxed::Box<dyn FnOnce() + Send>>>,
    #[cfg(test)]
    pub(crate) pv_hook: spin::Mutex<Option<alloc::boxed::Box<dyn FnOnce() + Send>>>,
    #[cfg(test)]
    pub(crate) verify_hook: spin::Mutex<Option<alloc::boxed::Box<dyn FnOnce() + Send>>>,
}

impl<L: Locks> X86Pmap<L> {
    /// A pmap module drawing page-table pages from `frames`.
    pub fn new(frames: Arc<FrameAllocator<L>>, cfg: X86Config) -> Result<X86Pmap<L>, KernError> {
        let mut pv = Vec::new();
        pv.try_reserve_exact(frames.span_frames())
            .map_err(|_| KernError::ResourceShortage)?;
        pv.resize_with(frames.span_frames(), Default::default);
        Ok(X86Pmap {
            frames,
            spaces: Spaces::new(),
            pv: pv.into_boxed_slice(),
            current: Mutex::<L, _>::new([None; 64]),
            cfg,
            flushes: AtomicU64::new(0),
            #[cfg(test)]
            race_hook: spin::Mutex::new(None),
            #[cfg(test)]
            pv_hook: spin::Mutex::new(None),
            #[cfg(test)]
            verify_hook: spin::Mutex::new(None),
        })
    }

    /// The frame allocator the tables come from.
    pub fn frames(&self) -> &Arc<FrameAllocator<L>> {
        &self.frames
    }

    /// Physical address of `pmap`'s PML4 (what CR3 holds when it is active).
    pub fn root(&self, pmap: PmapId) -> Option<PhysAddr> {
        self.spaces.lock(pmap).map(|s| s.root)
    }

    /// Number of non-empty flushes performed.
    pub fn flush_count(&self) -> u64 {
        self.flushes.load(Relaxed)
    }

    #[inline]
    fn mem(&self) -> &PhysMem {
        self.frames.mem()
    }

    #[inline]
    fn load(&self, table: PhysAddr, i: usize) -> u64 {
        self.mem().load_u64(entry::slot(table, i))
    }

    #[inline]
    fn store(&self, table: PhysAddr, i: usize, v: u64) {
        self.mem().store_u64(entry::slot(table, i), v)
    }

    fn add_use(&self, table: PhysAddr, n: i32) -> u16 {
        let page = self
            .frames
            .page(table)
            .expect("page table outside the frame span");
        if n >= 0 {
            page.add_use(n as u16)
        } else {
            page.sub_use((-n) as u16)
        }
    }

    fn use_count(&self, table: PhysAddr) -> u16 {
        self.frames.page(table).map_or(0, |p| p.use_count())
    }

    fn alloc_table(&self) -> Result<PhysAddr, FrameError> {
        let pa = self.frames.alloc(FrameUse::PageTable)?;
        self.mem().zero_page(pa);
        Ok(pa)
    }

    fn pv_add(&self, pa: PhysAddr, e: PvEntry) {
        if let Some(i) = self.frames.frame_index(pa) {
            self.pv[i].lock().insert(e);
        }
    }

    fn pv_remove(&self, pa: PhysAddr, e: PvEntry) {
        if let Some(i) = self.frames.frame_index(pa) {
            let found = self.pv[i].lock().remove(e);
            debug_assert!(found, "pv entry missing for {pa:?}");
        }
    }

    fn leaf_flags(&self, pa: PhysAddr, prot: VmProt, wired: bool) -> u64 {
        let mut e = P | US;
        if prot.contains(VmProt::WRITE) {
            e |= RW;
        }
        if !prot.contains(VmProt::EXECUTE) {
            e |= NX;
        }
        if wired {
            e |= WIRED;
        }
        if self.managed(pa) {
            e |= MANAGED;
        }
        e
    }

    /// Whether `pa` gets a reverse map: a frame of the allocator other
    /// than the shared zero frame (mapped read-only by any number of
    /// tasks, it belongs to no object and is never reclaimed).
    pub(crate) fn managed(&self, pa: PhysAddr) -> bool {
        self.frames.frame_index(pa).is_some() && !self.frames.is_zero_frame(pa)
    }

    fn leaf_prot(e: u64) -> VmProt {
        let mut p = VmProt::READ;
        if e & RW != 0 {
            p |= VmProt::WRITE;
        }
        if e & NX == 0 {
            p |= VmProt::EXECUTE;
        }
        p
    }

    /// True when the level-2 slot of `va` links a page table (small
    /// translations) rather than holding a large leaf or nothing.
    fn small_below(&self, root: PhysAddr, va: u64) -> bool {
        let mut table = root;
        for level in [4, 3] {
            let e = self.load(table, index(va, level));
            if e & P == 0 || e & PS != 0 {
                return false;
            }
            table = PhysAddr::new(e & ADDR);
        }
        let e = self.load(table, index(va, 2));
        e & P != 0 && e & PS == 0
    }

    /// Test hook: runs, once, where another CPU's call could interleave with
    /// an `enter` just before it takes the lock.
    #[cfg(test)]
    fn run_race_hook(&self) {
        let hook = self.race_hook.lock().take();
        if let Some(h) = hook {
            h();
        }
    }
}

impl<L: Locks> core::fmt::Debug for X86Pmap<L> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("X86Pmap")
            .field("pmaps", &self.spaces.live_ids().len())
            .finish()
    }
}

#[cfg(test)]
mod tests;

/// The examples in this crate's README.md, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct CrateReadmeDoctests;
