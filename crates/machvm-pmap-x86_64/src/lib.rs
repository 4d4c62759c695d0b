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
//! Invariants (checked by [`X86Pmap::verify`]):
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
#![deny(unsafe_code)]

extern crate alloc;

#[cfg(all(target_arch = "x86_64", target_os = "none"))]
#[allow(unsafe_code)]
pub mod hw;
mod pv;

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use arrayvec::ArrayVec;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use machvm_base::{
    KernError, LARGE_PAGE_SIZE, PAGE_SIZE, PhysAddr, USER_MAX, VaRange, VirtAddr, VmProt,
};
use machvm_frame::{FrameAllocator, FrameState, FrameUse, PhysMem};
use machvm_pmap::{Access, CpuSet, FaultCode, Pmap, PmapId, TlbFlush, Translation};
use pv::{PvEntry, PvHead};
use x86_64::structures::paging::PageTableFlags as F;

/// Entry bits, from the `x86_64` crate's definitions.
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
const ADDR: u64 = 0x000F_FFFF_FFFF_F000;
const TABLE: u64 = P | RW | US;
const ENTRIES: usize = 512;
const USER_ENTRIES: usize = 256;
const SMALL_PER_LARGE: u64 = LARGE_PAGE_SIZE / PAGE_SIZE;

#[inline]
const fn shift(level: u32) -> u32 {
    12 + 9 * (level - 1)
}

#[inline]
const fn index(va: u64, level: u32) -> usize {
    ((va >> shift(level)) & 511) as usize
}

/// Hooks into the CPU, supplied by a kernel; absent on the host.
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

struct Space {
    root: PhysAddr,
    active: CpuSet,
    resident: u64,
    wired: u64,
}

struct Inner {
    spaces: Vec<Option<Space>>,
    free_ids: Vec<u32>,
    /// Per frame index of the allocator span.
    pv: Vec<PvHead>,
    /// Pmap currently active on each CPU.
    current: [Option<u32>; 64],
}

impl Inner {
    fn space(&mut self, p: PmapId) -> Option<&mut Space> {
        self.spaces.get_mut(p.0 as usize).and_then(Option::as_mut)
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
/// let flush = pmap.enter(p, VirtAddr(0x40_0000), page, VmProt::READ, false).unwrap();
/// pmap.flush(flush);
/// assert_eq!(pmap.translate(p, VirtAddr(0x40_0123), Access::Read, true), Ok(page + 0x123));
/// assert!(pmap.translate(p, VirtAddr(0x40_0123), Access::Write, true).is_err());
/// pmap.destroy(p);
/// frames.free(page);
/// ```
pub struct X86Pmap {
    frames: Arc<FrameAllocator>,
    inner: spin::Mutex<Inner>,
    cfg: X86Config,
    flushes: AtomicU64,
    #[cfg(test)]
    race_hook: spin::Mutex<Option<alloc::boxed::Box<dyn FnOnce() + Send>>>,
}

impl X86Pmap {
    /// A pmap module drawing page-table pages from `frames`.
    pub fn new(frames: Arc<FrameAllocator>, cfg: X86Config) -> Result<X86Pmap, KernError> {
        let mut pv = Vec::new();
        pv.try_reserve_exact(frames.span_frames())
            .map_err(|_| KernError::ResourceShortage)?;
        pv.resize_with(frames.span_frames(), PvHead::default);
        Ok(X86Pmap {
            frames,
            inner: spin::Mutex::new(Inner {
                spaces: Vec::new(),
                free_ids: Vec::new(),
                pv,
                current: [None; 64],
            }),
            cfg,
            flushes: AtomicU64::new(0),
            #[cfg(test)]
            race_hook: spin::Mutex::new(None),
        })
    }

    /// The frame allocator the tables come from.
    pub fn frames(&self) -> &Arc<FrameAllocator> {
        &self.frames
    }

    /// Physical address of `pmap`'s PML4 (what CR3 holds when it is active).
    pub fn root(&self, pmap: PmapId) -> Option<PhysAddr> {
        self.inner.lock().space(pmap).map(|s| s.root)
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
        self.mem().load_u64(table + (i as u64) * 8)
    }

    #[inline]
    fn store(&self, table: PhysAddr, i: usize, v: u64) {
        self.mem().store_u64(table + (i as u64) * 8, v)
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

    fn alloc_table(&self) -> Result<PhysAddr, KernError> {
        let pa = self.frames.alloc(FrameUse::PageTable)?;
        self.mem().zero_page(pa);
        Ok(pa)
    }

    fn pv_add(&self, g: &mut Inner, pa: PhysAddr, e: PvEntry) {
        if let Some(i) = self.frames.frame_index(pa) {
            g.pv[i].insert(e);
        }
    }

    fn pv_remove(&self, g: &mut Inner, pa: PhysAddr, e: PvEntry) {
        if let Some(i) = self.frames.frame_index(pa) {
            let found = g.pv[i].remove(e);
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
        if self.frames.frame_index(pa).is_some() {
            e |= MANAGED;
        }
        e
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
            table = PhysAddr(e & ADDR);
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

    /// Number of new tables that entering a leaf at `leaf_level` for `va`
    /// needs (a demotion counts as one).
    fn tables_needed(&self, root: PhysAddr, va: u64, leaf_level: u32) -> usize {
        let mut table = root;
        for level in (leaf_level + 1..=4).rev() {
            let e = self.load(table, index(va, level));
            if e & P == 0 {
                return (level - leaf_level) as usize;
            }
            if e & PS != 0 {
                // A large leaf in the way of a small one: demote it.
                return 1;
            }
            table = PhysAddr(e & ADDR);
        }
        0
    }

    /// Descends to the table at `leaf_level` for `va`, linking in the
    /// preallocated `spare` tables where levels are missing.
    fn descend(
        &self,
        g: &mut Inner,
        pmap: PmapId,
        root: PhysAddr,
        va: u64,
        leaf_level: u32,
        spare: &mut ArrayVec<PhysAddr, 3>,
    ) -> PhysAddr {
        let mut table = root;
        for level in (leaf_level + 1..=4).rev() {
            let i = index(va, level);
            let e = self.load(table, i);
            table = if e & P == 0 {
                let t = spare.pop().expect("tables_needed undercounted");
                self.store(table, i, t.0 | TABLE);
                self.add_use(table, 1);
                t
            } else if e & PS != 0 {
                let t = spare.pop().expect("tables_needed undercounted");
                self.demote_into(g, pmap, table, i, va & !(LARGE_PAGE_SIZE - 1), t);
                t
            } else {
                PhysAddr(e & ADDR)
            };
        }
        table
    }

    /// Replaces the 2 MiB leaf at `l2[i]` (mapping `base`) by the table `t`
    /// holding the same 512 small translations.
    fn demote_into(
        &self,
        g: &mut Inner,
        pmap: PmapId,
        l2: PhysAddr,
        i: usize,
        base: u64,
        t: PhysAddr,
    ) {
        let e = self.load(l2, i);
        let pa = PhysAddr(e & ADDR & !(LARGE_PAGE_SIZE - 1));
        let flags = e & !(ADDR | PS) & !(1 << 12); // bit 12 is PAT in a large leaf
        for k in 0..ENTRIES {
            self.store(t, k, (pa.0 + k as u64 * PAGE_SIZE) | flags);
        }
        self.add_use(t, ENTRIES as i32);
        if e & WIRED != 0 {
            // One wired leaf becomes 512: the counter counts leaves.
            if let Some(s) = g.space(pmap) {
                s.wired += SMALL_PER_LARGE - 1;
            }
        }
        if e & MANAGED != 0 {
            self.pv_remove(g, pa, PvEntry::new(pmap, VirtAddr(base), true));
            for k in 0..SMALL_PER_LARGE {
                self.pv_add(
                    g,
                    pa + k * PAGE_SIZE,
                    PvEntry::new(pmap, VirtAddr(base + k * PAGE_SIZE), false),
                );
            }
        }
        self.store(l2, i, t.0 | TABLE);
    }

    fn enter_at(
        &self,
        pmap: PmapId,
        va: VirtAddr,
        pa: PhysAddr,
        prot: VmProt,
        wired: bool,
        large: bool,
    ) -> Result<TlbFlush, KernError> {
        let align = if large { LARGE_PAGE_SIZE } else { PAGE_SIZE };
        if !va.is_aligned(align)
            || !pa.is_aligned(align)
            || va.0 >= USER_MAX
            || va.0 + align > USER_MAX
        {
            return Err(KernError::InvalidArgument);
        }
        if prot.is_empty() {
            let range = VaRange::new(va, va + align).ok_or(KernError::InvalidArgument)?;
            return Ok(self.remove(pmap, range));
        }
        let mut f = TlbFlush::none();
        #[cfg(test)]
        self.run_race_hook();
        let leaf_level = if large { 2 } else { 1 };
        let mut g = self.inner.lock();
        let root = g.space(pmap).ok_or(KernError::InvalidArgument)?.root;
        if large && self.small_below(root, va.0) {
            // Clear the small translations and the table sitting there, under
            // the same lock as the new leaf: a 4 KiB enter racing this one
            // either comes first and is cleared, or comes after and splits
            // the new leaf.
            self.range_op(&mut g, pmap, va.0, va.0 + align, Op::Remove, &mut f);
        }
        let mut spare = ArrayVec::<PhysAddr, 3>::new();
        for _ in 0..self.tables_needed(root, va.0, leaf_level) {
            match self.alloc_table() {
                Ok(t) => spare.push(t),
                Err(e) => {
                    for t in spare {
                        self.frames.free(t);
                    }
                    drop(g);
                    self.flush(f);
                    return Err(e);
                }
            }
        }
        let table = self.descend(&mut g, pmap, root, va.0, leaf_level, &mut spare);
        debug_assert!(spare.is_empty());
        let i = index(va.0, leaf_level);
        let old = self.load(table, i);
        let mut acct = Acct::default();
        let mut new = self.leaf_flags(pa, prot, wired);
        if large {
            new |= PS;
        }
        if old & P != 0 {
            // Replacing: drop the old translation's bookkeeping.
            let old_pa = PhysAddr(old & ADDR);
            if old & MANAGED != 0 {
                self.pv_remove(&mut g, old_pa, PvEntry::new(pmap, va, large));
            }
            if old & WIRED != 0 {
                acct.wired -= 1;
            }
            // Same frame, same or more rights: keep A/D, no flush needed.
            let more_or_same = old_pa == pa && (old & RW) <= (new & RW) && (old & NX) >= (new & NX);
            if more_or_same {
                new |= old & (A | D);
            } else {
                f.add_page(pmap, va);
            }
        } else {
            self.add_use(table, 1);
            acct.resident += if large { SMALL_PER_LARGE as i64 } else { 1 };
        }
        if wired {
            acct.wired += 1;
        }
        let prev = self.mem().swap_u64(table + i as u64 * 8, pa.0 | new);
        if prev & P != 0 && prev & D != 0 && new & D == 0 {
            // The replaced translation had written its frame.
            self.mark_dirty(PhysAddr(prev & ADDR), large);
        }
        if new & MANAGED != 0 {
            self.pv_add(&mut g, pa, PvEntry::new(pmap, va, large));
        }
        let s = g.space(pmap).expect("pmap vanished under its lock");
        s.resident = (s.resident as i64 + acct.resident) as u64;
        s.wired = (s.wired as i64 + acct.wired) as u64;
        Ok(f)
    }

    /// Applies `op` to every leaf of `pmap` in `[start, end)`.
    fn range_op(
        &self,
        g: &mut Inner,
        pmap: PmapId,
        start: u64,
        end: u64,
        op: Op,
        f: &mut TlbFlush,
    ) {
        let end = end.min(USER_MAX);
        if start >= end {
            return;
        }
        let Some(root) = g.space(pmap).map(|s| s.root) else {
            return;
        };
        let mut acct = Acct::default();
        self.range_op_in(g, pmap, root, 4, 0, start, end, op, f, &mut acct);
        if let Some(s) = g.space(pmap) {
            s.resident = (s.resident as i64 + acct.resident) as u64;
            s.wired = (s.wired as i64 + acct.wired) as u64;
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn range_op_in(
        &self,
        g: &mut Inner,
        pmap: PmapId,
        table: PhysAddr,
        level: u32,
        base: u64,
        start: u64,
        end: u64,
        op: Op,
        f: &mut TlbFlush,
        acct: &mut Acct,
    ) {
        let span = 1u64 << shift(level);
        let first = ((start - base) / span) as usize;
        let last = ((end - 1 - base) / span) as usize;
        for i in first..=last.min(ENTRIES - 1) {
            let e = self.load(table, i);
            if e & P == 0 {
                continue;
            }
            let eva = base + i as u64 * span;
            let (s, t) = (start.max(eva), end.min(eva + span));
            let whole = s == eva && t == eva + span;
            if level == 1 || (level == 2 && e & PS != 0 && whole) {
                self.leaf_op(g, pmap, table, i, eva, level == 2, op, f, acct);
                continue;
            }
            let child = if e & PS != 0 {
                // Part of a large leaf: split it, or failing that, drop (or
                // lower) the whole 2 MiB, which is always allowed of a cache.
                match self.alloc_table() {
                    Ok(t) => {
                        self.demote_into(g, pmap, table, i, eva, t);
                        t
                    }
                    Err(_) => {
                        self.leaf_op(g, pmap, table, i, eva, true, op, f, acct);
                        continue;
                    }
                }
            } else {
                PhysAddr(e & ADDR)
            };
            self.range_op_in(g, pmap, child, level - 1, eva, s, t, op, f, acct);
            if self.use_count(child) == 0 {
                self.store(table, i, 0);
                self.add_use(table, -1);
                f.defer_free(child);
                f.add_page(pmap, VirtAddr(s));
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn leaf_op(
        &self,
        g: &mut Inner,
        pmap: PmapId,
        table: PhysAddr,
        i: usize,
        va: u64,
        large: bool,
        op: Op,
        f: &mut TlbFlush,
        acct: &mut Acct,
    ) {
        let e = self.load(table, i);
        match op {
            Op::Remove => {
                // Atomically, so that a dirty bit the MMU sets meanwhile is
                // not lost: it moves to the frame's metadata.
                let e = self.mem().swap_u64(table + i as u64 * 8, 0);
                if e & D != 0 {
                    self.mark_dirty(PhysAddr(e & ADDR), large);
                }
                self.add_use(table, -1);
                if e & MANAGED != 0 {
                    self.pv_remove(
                        g,
                        PhysAddr(e & ADDR),
                        PvEntry::new(pmap, VirtAddr(va), large),
                    );
                }
                acct.resident -= if large { SMALL_PER_LARGE as i64 } else { 1 };
                if e & WIRED != 0 {
                    acct.wired -= 1;
                }
                f.add_page(pmap, VirtAddr(va));
            }
            Op::Lower { clear, set } => {
                if (e & !clear) | set != e {
                    // Read-modify-write atomically: the MMU may be setting
                    // A/D in this entry at the same moment.
                    let slot = table + i as u64 * 8;
                    self.mem().fetch_and_u64(slot, !clear);
                    self.mem().fetch_or_u64(slot, set);
                    f.add_page(pmap, VirtAddr(va));
                }
            }
        }
    }

    /// Records in the frame metadata that a translation being removed had
    /// written the frame (all 512 frames of a large leaf).
    fn mark_dirty(&self, pa: PhysAddr, large: bool) {
        let n = if large { SMALL_PER_LARGE } else { 1 };
        let base = PhysAddr(pa.0 & !((n << 12) - 1));
        for k in 0..n {
            if let Some(p) = self.frames.page(base + k * PAGE_SIZE) {
                p.set_flags(machvm_frame::page_flags::DIRTY);
            }
        }
    }

    /// Finds the leaf entry for `va`: (table, index, entry, is_large).
    fn find_leaf(&self, root: PhysAddr, va: u64) -> Option<(PhysAddr, usize, u64, bool)> {
        if va >= USER_MAX {
            return None;
        }
        let mut table = root;
        for level in (1..=4).rev() {
            let i = index(va, level);
            let e = self.load(table, i);
            if e & P == 0 {
                return None;
            }
            if level == 1 || (level == 2 && e & PS != 0) {
                return Some((table, i, e, level == 2));
            }
            table = PhysAddr(e & ADDR);
        }
        None
    }

    /// Every (pmap, 4 KiB va) mapping the frame `pa`.
    fn mappings_of(&self, g: &Inner, pa: PhysAddr) -> Vec<(PmapId, VirtAddr)> {
        let mut out = Vec::new();
        if let Some(i) = self.frames.frame_index(pa) {
            out.extend(
                g.pv[i]
                    .iter()
                    .filter(|e| !e.large())
                    .map(|e| (e.pmap(), e.va())),
            );
        }
        let head = PhysAddr(pa.0 & !(LARGE_PAGE_SIZE - 1));
        if let Some(i) = self.frames.frame_index(head) {
            out.extend(
                g.pv[i]
                    .iter()
                    .filter(|e| e.large())
                    .map(|e| (e.pmap(), e.va() + (pa.page_base() - head))),
            );
        }
        out
    }

    fn modify_bits(&self, pa: PhysAddr, bit: u64, clear: bool) -> (bool, TlbFlush) {
        let mut g = self.inner.lock();
        let mut any = false;
        let mut f = TlbFlush::none();
        for (pmap, va) in self.mappings_of(&g, pa) {
            let Some(root) = g.space(pmap).map(|s| s.root) else {
                continue;
            };
            if let Some((table, i, e, _)) = self.find_leaf(root, va.0) {
                if e & bit != 0 {
                    any = true;
                    if clear {
                        self.mem().fetch_and_u64(table + i as u64 * 8, !bit);
                        f.add_page(pmap, va);
                    }
                }
            }
        }
        (any, f)
    }

    fn collect_leaves(
        &self,
        table: PhysAddr,
        level: u32,
        base: u64,
        range: &VaRange,
        out: &mut Vec<(VirtAddr, Translation)>,
    ) {
        let span = 1u64 << shift(level);
        let n = if level == 4 { USER_ENTRIES } else { ENTRIES };
        for i in 0..n {
            let eva = base + i as u64 * span;
            if eva >= range.end().0 || eva + span <= range.start().0 {
                continue;
            }
            let e = self.load(table, i);
            if e & P == 0 {
                continue;
            }
            if level == 1 || e & PS != 0 {
                let pages = if level == 1 { 1 } else { SMALL_PER_LARGE };
                for k in 0..pages {
                    let va = eva + k * PAGE_SIZE;
                    if range.contains(VirtAddr(va)) {
                        let t = Translation {
                            pa: PhysAddr((e & ADDR & !(span - 1)) + k * PAGE_SIZE),
                            prot: Self::leaf_prot(e),
                            wired: e & WIRED != 0,
                            size: span,
                        };
                        out.push((VirtAddr(va), t));
                    }
                }
            } else {
                self.collect_leaves(PhysAddr(e & ADDR), level - 1, eva, range, out);
            }
        }
    }

    /// Checks one table subtree; returns (resident 4 KiB pages, wired leaves).
    #[allow(clippy::too_many_arguments)]
    fn verify_table(
        &self,
        g: &Inner,
        pmap: PmapId,
        table: PhysAddr,
        level: u32,
        base: u64,
        seen: &mut alloc::collections::BTreeSet<u64>,
        pv_seen: &mut u64,
    ) -> Result<(u64, u64), String> {
        let meta = self.frames.page(table).ok_or("table outside frame span")?;
        if meta.state() != FrameState::PageTable {
            return Err(format!("table {table:?} is in state {:?}", meta.state()));
        }
        seen.insert(table.0);
        let n = if level == 4 { USER_ENTRIES } else { ENTRIES };
        let span = 1u64 << shift(level);
        let (mut present, mut resident, mut wired) = (0u16, 0, 0);
        for i in 0..n {
            let e = self.load(table, i);
            if e & P == 0 {
                if e != 0 {
                    return Err(format!("non-present entry with bits {e:#x}"));
                }
                continue;
            }
            present += 1;
            let eva = base + i as u64 * span;
            if level == 1 || (level == 2 && e & PS != 0) {
                let large = level == 2;
                if e & US == 0 {
                    return Err(format!("user leaf {eva:#x} without US"));
                }
                let pa = PhysAddr(e & ADDR & !(span - 1));
                let managed = self.frames.frame_index(pa).is_some();
                if managed != (e & MANAGED != 0) {
                    return Err(format!(
                        "leaf {eva:#x}: MANAGED bit disagrees with frame span"
                    ));
                }
                if managed {
                    let idx = self.frames.frame_index(pa).unwrap_or(0);
                    if !g.pv[idx].contains(PvEntry::new(pmap, VirtAddr(eva), large)) {
                        return Err(format!("leaf {eva:#x} -> {pa:?} missing from pv list"));
                    }
                    *pv_seen += 1;
                }
                resident += if large { SMALL_PER_LARGE } else { 1 };
                wired += u64::from(e & WIRED != 0);
            } else if e & PS != 0 {
                return Err(format!("PS bit at level {level}"));
            } else {
                if e & TABLE != TABLE || e & NX != 0 {
                    return Err(format!(
                        "intermediate entry {eva:#x} at level {level} not P|RW|US"
                    ));
                }
                let child = PhysAddr(e & ADDR);
                if seen.contains(&child.0) {
                    return Err(format!("table {child:?} linked twice"));
                }
                if self.use_count(child) == 0 {
                    return Err(format!(
                        "empty table {child:?} left linked at level {}",
                        level - 1
                    ));
                }
                let (r, w) = self.verify_table(g, pmap, child, level - 1, eva, seen, pv_seen)?;
                resident += r;
                wired += w;
            }
        }
        if present != meta.use_count() {
            return Err(format!(
                "table {table:?} level {level}: {present} present entries, use_count {}",
                meta.use_count()
            ));
        }
        Ok((resident, wired))
    }
}

impl Pmap for X86Pmap {
    fn create(&self) -> Result<PmapId, KernError> {
        let root = self.alloc_table()?;
        for (k, e) in self.cfg.kernel_half.iter().enumerate() {
            self.store(root, USER_ENTRIES + k, *e);
        }
        let space = Space {
            root,
            active: 0,
            resident: 0,
            wired: 0,
        };
        let mut g = self.inner.lock();
        if let Some(id) = g.free_ids.pop() {
            g.spaces[id as usize] = Some(space);
            return Ok(PmapId(id));
        }
        match u32::try_from(g.spaces.len()) {
            Ok(id) if id < pv::MAX_PMAPS => {
                g.spaces.push(Some(space));
                Ok(PmapId(id))
            }
            _ => {
                drop(g);
                self.frames.free(root);
                Err(KernError::ResourceShortage)
            }
        }
    }

    fn destroy(&self, pmap: PmapId) {
        let mut g = self.inner.lock();
        let Some(s) = g.space(pmap) else { return };
        debug_assert_eq!(s.active, 0, "destroying an active pmap");
        let root = s.root;
        let mut f = TlbFlush::none();
        self.range_op(&mut g, pmap, 0, USER_MAX, Op::Remove, &mut f);
        g.spaces[pmap.0 as usize] = None;
        g.free_ids.push(pmap.0);
        drop(g);
        // No CPU runs in a destroyed pmap, and loading another CR3 flushed
        // what it cached; its tables can go at once.
        for t in f.into_parts().release {
            self.frames.free(t);
        }
        self.frames.free(root);
    }

    fn enter(
        &self,
        pmap: PmapId,
        va: VirtAddr,
        pa: PhysAddr,
        prot: VmProt,
        wired: bool,
    ) -> Result<TlbFlush, KernError> {
        self.enter_at(pmap, va, pa, prot, wired, false)
    }

    fn enter_large(
        &self,
        pmap: PmapId,
        va: VirtAddr,
        pa: PhysAddr,
        prot: VmProt,
        wired: bool,
    ) -> Result<TlbFlush, KernError> {
        self.enter_at(pmap, va, pa, prot, wired, true)
    }

    fn remove(&self, pmap: PmapId, range: VaRange) -> TlbFlush {
        let mut f = TlbFlush::none();
        let mut g = self.inner.lock();
        self.range_op(
            &mut g,
            pmap,
            range.start().0,
            range.end().0,
            Op::Remove,
            &mut f,
        );
        f
    }

    fn protect(&self, pmap: PmapId, range: VaRange, prot: VmProt) -> TlbFlush {
        let mut f = TlbFlush::none();
        let mut g = self.inner.lock();
        self.range_op(
            &mut g,
            pmap,
            range.start().0,
            range.end().0,
            Op::for_prot(prot),
            &mut f,
        );
        f
    }

    fn extract(&self, pmap: PmapId, va: VirtAddr) -> Option<Translation> {
        let mut g = self.inner.lock();
        let root = g.space(pmap)?.root;
        let (_, _, e, large) = self.find_leaf(root, va.0)?;
        let size = if large { LARGE_PAGE_SIZE } else { PAGE_SIZE };
        Some(Translation {
            pa: PhysAddr((e & ADDR & !(size - 1)) + (va.page_base().0 & (size - 1))),
            prot: Self::leaf_prot(e),
            wired: e & WIRED != 0,
            size,
        })
    }

    fn translate(
        &self,
        pmap: PmapId,
        va: VirtAddr,
        access: Access,
        user: bool,
    ) -> Result<PhysAddr, FaultCode> {
        let not_present = FaultCode::new(access, user, false);
        let mut g = self.inner.lock();
        let root = g.space(pmap).ok_or(not_present)?.root;
        // Non-canonical addresses #GP on hardware; report them as not present.
        let canonical = va.0 < (1 << 47) || va.0 >= 0xFFFF_8000_0000_0000;
        if !canonical {
            return Err(not_present);
        }
        let (mut rw, mut us, mut nx) = (true, true, false);
        let mut table = root;
        let mut path = ArrayVec::<PhysAddr, 4>::new();
        for level in (1..=4).rev() {
            let i = index(va.0, level);
            let slot = table + i as u64 * 8;
            let e = self.mem().load_u64(slot);
            if e & P == 0 {
                return Err(not_present);
            }
            path.push(slot);
            rw &= e & RW != 0;
            us &= e & US != 0;
            nx |= e & NX != 0;
            let leaf = level == 1 || (e & PS != 0 && level <= 3);
            if leaf {
                let size = 1u64 << shift(level);
                let denied = (user && !us)
                    || (access == Access::Write && !rw)
                    || (access == Access::Execute && nx);
                if denied {
                    return Err(FaultCode::new(access, user, true));
                }
                for slot in &path {
                    self.mem().fetch_or_u64(*slot, A);
                }
                if access == Access::Write {
                    self.mem().fetch_or_u64(slot, D);
                }
                return Ok(PhysAddr((e & ADDR & !(size - 1)) + (va.0 & (size - 1))));
            }
            table = PhysAddr(e & ADDR);
        }
        Err(not_present)
    }

    fn page_protect(&self, pa: PhysAddr, prot: VmProt) -> TlbFlush {
        let mut f = TlbFlush::none();
        let mut g = self.inner.lock();
        let op = Op::for_prot(prot);
        for (pmap, va) in self.mappings_of(&g, pa) {
            self.range_op(&mut g, pmap, va.0, va.0 + PAGE_SIZE, op, &mut f);
        }
        f
    }

    fn is_modified(&self, pa: PhysAddr) -> bool {
        let recorded = self
            .frames
            .page(pa)
            .is_some_and(|p| p.flags() & machvm_frame::page_flags::DIRTY != 0);
        let (any, f) = self.modify_bits(pa, D, false);
        let _ = f.into_parts();
        recorded || any
    }

    fn clear_modify(&self, pa: PhysAddr) -> TlbFlush {
        if let Some(p) = self.frames.page(pa) {
            p.clear_flags(machvm_frame::page_flags::DIRTY);
        }
        self.modify_bits(pa, D, true).1
    }

    fn is_referenced(&self, pa: PhysAddr) -> bool {
        let (any, f) = self.modify_bits(pa, A, false);
        let _ = f.into_parts();
        any
    }

    fn clear_reference(&self, pa: PhysAddr) -> TlbFlush {
        self.modify_bits(pa, A, true).1
    }

    fn change_wiring(&self, pmap: PmapId, va: VirtAddr, wired: bool) {
        let mut g = self.inner.lock();
        let Some(root) = g.space(pmap).map(|s| s.root) else {
            return;
        };
        if let Some((table, i, e, _)) = self.find_leaf(root, va.0) {
            if (e & WIRED != 0) != wired {
                self.store(table, i, e ^ WIRED);
                if let Some(s) = g.space(pmap) {
                    if wired {
                        s.wired += 1;
                    } else {
                        s.wired -= 1;
                    }
                }
            }
        }
    }

    fn activate(&self, pmap: PmapId, cpu: usize) {
        let cpu = cpu % 64;
        let mut g = self.inner.lock();
        if let Some(prev) = g.current[cpu].take() {
            if let Some(s) = g.space(PmapId(prev)) {
                s.active &= !(1 << cpu);
            }
        }
        let Some(s) = g.space(pmap) else { return };
        s.active |= 1 << cpu;
        let root = s.root;
        g.current[cpu] = Some(pmap.0);
        drop(g);
        if let Some(mmu) = self.cfg.mmu {
            if mmu.current_cpu() == cpu {
                mmu.load_root(root);
            }
        }
    }

    fn deactivate(&self, pmap: PmapId, cpu: usize) {
        let cpu = cpu % 64;
        let mut g = self.inner.lock();
        if g.current[cpu] == Some(pmap.0) {
            g.current[cpu] = None;
        }
        if let Some(s) = g.space(pmap) {
            s.active &= !(1 << cpu);
        }
    }

    fn flush(&self, flush: TlbFlush) {
        if flush.is_empty() {
            return;
        }
        self.flushes.fetch_add(1, Relaxed);
        let parts = flush.into_parts();
        if let Some(mmu) = self.cfg.mmu {
            let mut g = self.inner.lock();
            let mut active = |p: PmapId| g.space(p).map_or(0, |s| s.active);
            if parts.everything {
                let all = g.spaces.iter().flatten().fold(0, |m, s| m | s.active);
                drop(g);
                if all != 0 {
                    mmu.invalidate(all, None);
                }
            } else {
                let mut jobs: ArrayVec<
                    (
                        CpuSet,
                        Option<ArrayVec<VirtAddr, { machvm_pmap::TLB_FLUSH_BATCH }>>,
                    ),
                    40,
                > = ArrayVec::new();
                for p in &parts.whole {
                    jobs.push((active(*p), None));
                }
                let mut done: ArrayVec<PmapId, { machvm_pmap::TLB_FLUSH_BATCH }> = ArrayVec::new();
                for (p, _) in &parts.pages {
                    if done.contains(p) {
                        continue;
                    }
                    done.push(*p);
                    let vas = parts
                        .pages
                        .iter()
                        .filter(|(q, _)| q == p)
                        .map(|(_, va)| *va)
                        .collect();
                    jobs.push((active(*p), Some(vas)));
                }
                drop(g);
                for (cpus, pages) in jobs {
                    if cpus != 0 {
                        mmu.invalidate(cpus, pages.as_deref());
                    }
                }
            }
        }
        for t in parts.release {
            self.frames.free(t);
        }
    }

    fn resident_count(&self, pmap: PmapId) -> u64 {
        self.inner.lock().space(pmap).map_or(0, |s| s.resident)
    }

    fn mappings(&self, pmap: PmapId, range: VaRange) -> Vec<(VirtAddr, Translation)> {
        let mut g = self.inner.lock();
        let mut out = Vec::new();
        if let Some(root) = g.space(pmap).map(|s| s.root) {
            self.collect_leaves(root, 4, 0, &range, &mut out);
        }
        out
    }

    fn mapping_count(&self, pa: PhysAddr) -> usize {
        let g = self.inner.lock();
        self.mappings_of(&g, pa).len()
    }

    fn verify(&self) -> Result<(), String> {
        let g = self.inner.lock();
        let mut seen = alloc::collections::BTreeSet::new();
        let mut pv_seen = 0u64;
        for (id, s) in g.spaces.iter().enumerate() {
            let Some(s) = s else { continue };
            let pmap = PmapId(id as u32);
            for k in 0..USER_ENTRIES {
                if self.load(s.root, USER_ENTRIES + k) != self.cfg.kernel_half[k] {
                    return Err(format!(
                        "pmap {id}: kernel half entry {} differs",
                        USER_ENTRIES + k
                    ));
                }
            }
            let (resident, wired) =
                self.verify_table(&g, pmap, s.root, 4, 0, &mut seen, &mut pv_seen)?;
            if (resident, wired) != (s.resident, s.wired) {
                return Err(format!(
                    "pmap {id}: tables hold {resident} pages / {wired} wired, counters say {} / {}",
                    s.resident, s.wired
                ));
            }
        }
        let pv_total: u64 = g.pv.iter().map(|h| h.len() as u64).sum();
        if pv_total != pv_seen {
            return Err(format!(
                "{pv_total} pv entries but {pv_seen} managed leaves"
            ));
        }
        Ok(())
    }
}

impl core::fmt::Debug for X86Pmap {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let g = self.inner.lock();
        f.debug_struct("X86Pmap")
            .field("pmaps", &g.spaces.iter().flatten().count())
            .finish()
    }
}

#[cfg(test)]
mod tests;
