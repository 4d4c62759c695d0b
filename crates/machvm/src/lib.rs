//! machvm: the Mach / 4.4BSD virtual-memory system, as a library.
//!
//! This crate is the public façade of the contract in [`spec`]
//! (`docs/SPEC.md`; "SPEC §N" in these docs is a section of it): a [`VmSystem`] owns
//! physical memory and the machine's pmap; [`VmMap`]s are task address maps
//! with `allocate`, `deallocate`, `protect`, `inherit`, `region`, `fork`,
//! and `read_bytes` / `write_bytes` that behave exactly as the task's own
//! loads and stores would: the pmap's walker says which pages the MMU could
//! not translate for the access, those are faulted in, and the bytes then
//! move through the map's objects.
//!
//! ```
//! use machvm::{VmSystem, VmProt, KernError};
//!
//! let vm = VmSystem::hosted(64 << 20);
//! let map = vm.create_map()?;
//! let a = map.allocate(0, 8192, true)?;
//! map.write_bytes(a, b"hello, mach")?;
//! map.protect(a, 8192, false, VmProt::READ)?;
//! assert_eq!(map.write_bytes(a, b"x"), Err(KernError::ProtectionFailure));
//!
//! let child = map.fork()?;              // copy-on-write by default
//! let mut buf = [0u8; 11];
//! child.read_bytes(a, &mut buf)?;
//! assert_eq!(&buf, b"hello, mach");
//! # Ok::<(), KernError>(())
//! ```
//!
//! The layers below are crates of their own, usable one by one:
//! `machvm-base`, `machvm-frame`, `machvm-pmap`, `machvm-pmap-x86_64`,
//! `machvm-object`, `machvm-map`, `machvm-copy`.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::sync::Arc;
use core::sync::atomic::Ordering::Relaxed;

pub use machvm_base::sync::{Locks, SpinLocks, lock_api, set_cpu_id, spin};
pub use machvm_base::{KernError, PAGE_SIZE, Violation, VmInherit, VmProt};
pub use machvm_copy::{SMALL_COPY_BYTES, VmMapCopy, vm_copy, vm_map_copy, vm_read, vm_write};
pub use machvm_frame::FrameRule;
pub use machvm_map::{Access, MapRule, RegionInfo, VmMap};
pub use machvm_object::ObjectRule;
pub use machvm_pager::PagerRule;
pub use machvm_pmap::PmapRule;

#[cfg(feature = "std")]
pub use machvm_pager::FileStore;
pub use machvm_pager::{BackingStore, DefaultPager, MemStore, Pager, RamDisk};

pub use machvm_base::{PhysAddr, VirtAddr};
pub use machvm_frame::{FrameAllocator, FrameUse, PageQueue, PhysMem};
pub use machvm_object::{VmAudit, VmContext};
pub use machvm_pmap::{CpuSet, Pmap};
#[cfg(any(feature = "hosted", feature = "x86_64"))]
pub use machvm_pmap_x86_64::{Mmu, X86Config, X86Pmap};

#[cfg(feature = "x86_64")]
pub use machvm_frame::X86Frames;
/// The `x86_64` crate, re-exported (feature `x86_64`): its types are the
/// ones machvm's conversions and [`X86Frames`] speak.
#[cfg(feature = "x86_64")]
pub use x86_64;

/// The smallest simulated RAM [`VmSystem::hosted`] builds (64 KiB).
#[cfg(feature = "hosted")]
pub const MIN_HOSTED_BYTES: u64 = 16 * PAGE_SIZE;

/// One virtual-memory system: physical memory, the machine's pmap, and the
/// maps created from it. A cheap handle: `Clone` shares the system.
///
/// Every lock of every layer is of family `L` ([`Locks`]): spin's by
/// default, the kernel's own when it builds the system with
/// [`with_pmap`](Self::with_pmap) over a `FrameAllocator<L>`.
pub struct VmSystem<L: Locks = SpinLocks> {
    ctx: Arc<VmContext<L>>,
}

impl<L: Locks> Clone for VmSystem<L> {
    fn clone(&self) -> Self {
        VmSystem {
            ctx: self.ctx.clone(),
        }
    }
}

/// Mach's `vm_statistics`, counted honestly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmStatistics {
    /// Frames free.
    pub free_count: u64,
    /// Frames holding object pages that are not wired: with a pager, the
    /// active queue (pages in use; new pages go there); without one, every
    /// such frame (no page ages).
    pub active_count: u64,
    /// Frames on the inactive queue: pages pageout found unreferenced, its
    /// next candidates (0 without a pager).
    pub inactive_count: u64,
    /// Frames wired: object pages some map wired (SPEC §7, each frame
    /// once), page-table pages and other kernel use (not the shared zero
    /// frame, which is the system's own).
    pub wire_count: u64,
    /// Pages zero-filled on demand.
    pub zero_fill_count: u64,
    /// Inactive pages pageout found referenced and put back on the active
    /// queue.
    pub reactivations: u64,
    /// Pages read back from the pager: faults on paged-out pages (SPEC §8).
    pub pageins: u64,
    /// Pages written to the pager to free their frames.
    pub pageouts: u64,
    /// Swap slots free in the pager (0 without one).
    pub swap_free_pages: u64,
    /// Page faults handled.
    pub faults: u64,
    /// Pages copied for copy-on-write.
    pub cow_faults: u64,
    /// Page lookups in object chains.
    pub lookups: u64,
    /// Lookups that found the page resident.
    pub hits: u64,
    /// Frames managed in all, less the shared zero frame the system took
    /// when it was created (reads of never-written memory map it).
    pub total_pages: u64,
}

impl VmSystem {
    /// A system over `phys_bytes` of simulated RAM (at least
    /// [`MIN_HOSTED_BYTES`]) with real x86_64 page tables built in it
    /// (feature `hosted`, on by default).
    ///
    /// # Panics
    /// If the host cannot allocate the simulated RAM; use
    /// [`try_hosted`](Self::try_hosted) to get an error instead.
    #[cfg(feature = "hosted")]
    pub fn hosted(phys_bytes: u64) -> VmSystem {
        match Self::try_hosted(phys_bytes) {
            Ok(vm) => vm,
            Err(e) => panic!("cannot allocate {phys_bytes} bytes of simulated RAM: {e}"),
        }
    }

    /// [`hosted`](Self::hosted), reporting `ResourceShortage` when the host
    /// cannot provide the memory.
    #[cfg(feature = "hosted")]
    pub fn try_hosted(phys_bytes: u64) -> Result<VmSystem, KernError> {
        VmSystem::try_hosted_with_locks(phys_bytes)
    }

    /// A system over `phys_bytes` of simulated RAM whose anonymous memory
    /// pages out to `swap_bytes` of swap in host memory (SPEC §8; rounded
    /// down to pages; 0: no swap, [`hosted`](Self::hosted)). When frames
    /// run low, calls page out the least recently used unwired pages; a
    /// later access pages them back in.
    ///
    /// ```
    /// use machvm::VmSystem;
    /// // 1 MiB of RAM, 4 MiB of swap: 2 MiB written reads back whole.
    /// let vm = VmSystem::hosted_with_swap(1 << 20, 4 << 20);
    /// let map = vm.create_map()?;
    /// let a = map.allocate(0, 2 << 20, true)?;
    /// let data: Vec<u8> = (0..2 << 20).map(|i: u32| (i % 251) as u8).collect();
    /// for (k, part) in data.chunks(64 << 10).enumerate() {
    ///     map.write_bytes(a + (k as u64) * (64 << 10), part)?;
    /// }
    /// let mut back = vec![0u8; 64 << 10];
    /// for (k, part) in data.chunks(64 << 10).enumerate() {
    ///     map.read_bytes(a + (k as u64) * (64 << 10), &mut back)?;
    ///     assert!(back == part);
    /// }
    /// let s = vm.statistics();
    /// assert!(s.pageouts > 0 && s.pageins > 0);
    /// # Ok::<(), machvm::KernError>(())
    /// ```
    ///
    /// # Panics
    /// If the host cannot allocate the memory; use
    /// [`try_hosted_with_swap`](Self::try_hosted_with_swap) to get an error.
    #[cfg(feature = "hosted")]
    pub fn hosted_with_swap(phys_bytes: u64, swap_bytes: u64) -> VmSystem {
        match Self::try_hosted_with_swap(phys_bytes, swap_bytes) {
            Ok(vm) => vm,
            Err(e) => panic!("cannot allocate {phys_bytes} + {swap_bytes} bytes: {e}"),
        }
    }

    /// [`hosted_with_swap`](Self::hosted_with_swap), reporting
    /// `ResourceShortage` when the host cannot provide the memory.
    #[cfg(feature = "hosted")]
    pub fn try_hosted_with_swap(phys_bytes: u64, swap_bytes: u64) -> Result<VmSystem, KernError> {
        let pages = swap_bytes / PAGE_SIZE;
        if pages == 0 {
            return VmSystem::try_hosted(phys_bytes);
        }
        let bytes = phys_bytes.max(MIN_HOSTED_BYTES);
        let frames = Arc::new(FrameAllocator::hosted(bytes)?);
        let pmap = Arc::new(X86Pmap::new(frames.clone(), Default::default())?);
        let pager = Arc::new(DefaultPager::new(MemStore::new(pages)?)?);
        Ok(VmSystem::with_pager(frames, pmap, pager))
    }
}

impl<L: Locks> VmSystem<L> {
    /// [`try_hosted`](VmSystem::try_hosted) with every lock of family `L`.
    #[cfg(feature = "hosted")]
    pub fn try_hosted_with_locks(phys_bytes: u64) -> Result<VmSystem<L>, KernError> {
        let bytes = phys_bytes.max(MIN_HOSTED_BYTES);
        let frames = Arc::new(FrameAllocator::<L>::hosted_with_locks(bytes)?);
        let pmap = Arc::new(X86Pmap::new(frames.clone(), Default::default())?);
        Ok(Self::with_pmap(frames, pmap))
    }

    /// A system over any frames and pmap module (a kernel passes its own
    /// direct-mapped RAM and an `X86Pmap` wired to the real MMU).
    pub fn with_pmap(frames: Arc<FrameAllocator<L>>, pmap: Arc<dyn Pmap>) -> VmSystem<L> {
        VmSystem {
            ctx: VmContext::new(frames, pmap),
        }
    }

    /// [`with_pmap`](Self::with_pmap) with a pager for anonymous memory
    /// (SPEC §8): a kernel's [`DefaultPager`] over a [`RamDisk`] or a disk
    /// of its own ([`BackingStore`]). The pager must serve this system
    /// alone.
    pub fn with_pager(
        frames: Arc<FrameAllocator<L>>,
        pmap: Arc<dyn Pmap>,
        pager: Arc<dyn Pager>,
    ) -> VmSystem<L> {
        VmSystem {
            ctx: VmContext::with_pager(frames, pmap, pager),
        }
    }

    /// Pages out up to `target` pages, the least recently used unwired
    /// ones (what a kernel's pageout daemon calls when it wants frames
    /// before any call needs them). Returns how many went: 0 without a
    /// pager.
    pub fn pageout(&self, target: u64) -> u64 {
        self.ctx.objects().pageout(target)
    }

    /// A new, empty task map (`vm_map_create`).
    pub fn create_map(&self) -> Result<VmMap<L>, KernError> {
        VmMap::new(&self.ctx)
    }

    /// The current statistics.
    pub fn statistics(&self) -> VmStatistics {
        let f = self.ctx.frames();
        let c = &self.ctx.counters;
        // The shared zero frame is the system's own from creation on, like
        // the kernel's image: neither a page of the pool nor a wired one.
        let zero = u64::from(self.ctx.zero_frame().is_some());
        VmStatistics {
            free_count: f.free_frames(),
            active_count: self.active_frames(),
            inactive_count: f.queue_len(PageQueue::Inactive),
            wire_count: f.wired_frames()
                + f.frames_in_use(FrameUse::PageTable)
                + f.frames_in_use(FrameUse::Kernel)
                - zero,
            zero_fill_count: c.zero_fill_count.load(Relaxed),
            reactivations: c.reactivations.load(Relaxed),
            pageins: c.pageins.load(Relaxed),
            pageouts: c.pageouts.load(Relaxed),
            swap_free_pages: self.ctx.pager().map_or(0, |p| p.free_slots()),
            faults: c.faults.load(Relaxed),
            cow_faults: c.cow_faults.load(Relaxed),
            lookups: c.lookups.load(Relaxed),
            hits: c.hits.load(Relaxed),
            total_pages: f.total_frames() - zero,
        }
    }

    /// Pageable object frames not on the inactive queue: the active queue
    /// in a system that pages, else every unwired object frame.
    fn active_frames(&self) -> u64 {
        let f = self.ctx.frames();
        if f.queues_on() {
            return f.queue_len(PageQueue::Active);
        }
        // Read apart from the wired count: a wiring in between must not wrap.
        f.frames_in_use(FrameUse::Object)
            .saturating_sub(f.wired_frames())
    }

    /// SPEC §6: what the system holds — resident pages, how many of them
    /// some map entry or live copy can reach, map entries and neighbours
    /// that could be one entry, the longest object chain. Take it at a quiet
    /// moment (no call in flight). After every call `unreachable_pages` and
    /// `mergeable_neighbours` are 0: memory nothing can reach is freed at
    /// once, and maps stay in their fewest entries. O(resident pages +
    /// entries).
    ///
    /// ```
    /// use machvm::{VmSystem, vm_read};
    /// let vm = VmSystem::hosted(16 << 20);
    /// let map = vm.create_map()?;
    /// let a = map.allocate(0, 64 * 4096, true)?;
    /// map.write_bytes(a, &[1u8; 64 * 4096])?;
    /// let snapshot = vm_read(&map, a, 2 * 4096)?;
    /// map.deallocate(a, 64 * 4096)?;
    /// let audit = vm.audit();
    /// // Only the two pages the snapshot holds stay resident.
    /// assert_eq!((audit.resident_pages, audit.unreachable_pages), (2, 0));
    /// drop(snapshot);
    /// assert_eq!(vm.audit().resident_pages, 0);
    /// # Ok::<(), machvm::KernError>(())
    /// ```
    pub fn audit(&self) -> VmAudit {
        self.ctx.audit()
    }

    /// Checks the frame allocator's and the pmap's invariants, naming the
    /// first rule broken (a map's and the object graph's: [`VmMap::verify`]).
    pub fn verify(&self) -> Result<(), SystemViolation> {
        self.ctx
            .frames()
            .verify()
            .map_err(SystemViolation::Frames)?;
        self.ctx.pmap().verify().map_err(SystemViolation::Pmap)?;
        match self.ctx.pager() {
            Some(p) => p.verify().map_err(SystemViolation::Pager),
            None => Ok(()),
        }
    }

    /// Turns on or off the checks debug builds run after every change to
    /// one of this system's maps: a change that breaks an invariant panics
    /// there, naming the rule (FreeBSD's `debug.vmmap_check`). Off at
    /// start; release builds ignore it.
    pub fn set_consistency_checks(&self, on: bool) {
        self.ctx.set_consistency_checks(on);
    }

    /// The layers' shared context (frames, pmap module, counters).
    pub fn context(&self) -> &Arc<VmContext<L>> {
        &self.ctx
    }
}

impl<L: Locks> core::fmt::Debug for VmSystem<L> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VmSystem")
            .field("statistics", &self.statistics())
            .finish()
    }
}

/// What [`VmSystem::verify`] found broken: the layer and its rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SystemViolation {
    /// A rule of the frame allocator.
    Frames(Violation<FrameRule>),
    /// A rule of the pmap.
    Pmap(Violation<PmapRule>),
    /// A rule of the pager.
    Pager(Violation<PagerRule>),
}

impl core::fmt::Display for SystemViolation {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SystemViolation::Frames(v) => write!(f, "frames: {v}"),
            SystemViolation::Pmap(v) => write!(f, "pmap: {v}"),
            SystemViolation::Pager(v) => write!(f, "pager: {v}"),
        }
    }
}

impl core::error::Error for SystemViolation {}

/// How to wire machvm into a kernel: frames over a direct map, the x86_64
/// pmap and its `Mmu`, the page-fault hook, memory per frame, locks and
/// interrupts (the repository's `docs/kernel-guide.md`; its examples are
/// compiled with this crate's documentation).
#[doc = include_str!("../docs/kernel-guide.md")]
pub mod kernel_guide {}

/// The behaviour contract of this façade (the repository's `docs/SPEC.md`):
/// names, error codes, bad-input rules, atomicity. "SPEC §N" in these docs
/// is a section of it.
#[doc = include_str!("../docs/SPEC.md")]
pub mod spec {}

/// The examples in the workspace's README.md (symlinked into the crate, so
/// that the package holds it too), compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../docs/workspace-README.md")]
pub struct ReadmeDoctests;

/// The examples in this crate's README.md, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct CrateReadmeDoctests;
