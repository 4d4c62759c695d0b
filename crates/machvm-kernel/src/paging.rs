//! The kernel's address space and a tiny 4 KiB page-table helper.
//!
//! Layout (PML4 index: use):
//! - 0..256: the lower half, owned by task maps (empty in the kernel's PML4
//!   once the boot identity map is dropped);
//! - 256: direct map of all physical memory at [`DIRECT_MAP_BASE`] (NX);
//! - 384: a scratch window at [`WINDOW_BASE`] for tests that build their own
//!   mappings ([`alloc_window`]);
//! - 511: the kernel image at [`KERNEL_VMA`].
//!
//! The kernel half (entries 256..512) is fixed after [`init`]: the PDPT pages
//! behind it may change, the PML4 entries never do, so copying them into a
//! new PML4 ([`kernel_upper_half`]) shares the whole kernel half for good.

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use machvm_base::{KernError, PhysAddr, USER_MAX, VirtAddr};
use machvm_frame::FrameUse;
use machvm_pmap_x86_64::entry::{self, PageTableFlags as F, Pte};

use crate::boot::{BOOT_PD, BOOT_PDPT_LOW, BOOT_PML4};
pub use crate::boot::{DIRECT_MAP_BASE, KERNEL_VMA, Table};
use crate::cpu;

/// Page-table entry bits, as the pmap defines them ([`entry`], the
/// `x86_64` crate's flags): no second copy.
pub mod pte {
    use machvm_pmap_x86_64::entry::{PageTableFlags as F, Pte};

    /// Present.
    pub const P: u64 = F::PRESENT.bits();
    /// Writable.
    pub const W: u64 = F::WRITABLE.bits();
    /// User-accessible.
    pub const U: u64 = F::USER_ACCESSIBLE.bits();
    /// Write-through.
    pub const PWT: u64 = F::WRITE_THROUGH.bits();
    /// Cache disable.
    pub const PCD: u64 = F::NO_CACHE.bits();
    /// Accessed (set by the MMU).
    pub const A: u64 = F::ACCESSED.bits();
    /// Dirty (set by the MMU).
    pub const D: u64 = F::DIRTY.bits();
    /// Large page (in a PDPT or PD entry).
    pub const PS: u64 = F::HUGE_PAGE.bits();
    /// Global.
    pub const G: u64 = F::GLOBAL.bits();
    /// No-execute.
    pub const NX: u64 = F::NO_EXECUTE.bits();
    /// Physical-address bits of an entry.
    pub const ADDR: u64 = Pte::ADDR_MASK;
}

/// Base of the scratch window (PML4 entry 384).
pub const WINDOW_BASE: u64 = 0xFFFF_C000_0000_0000;
const WINDOW_SIZE: u64 = 1 << 39;

/// Virtual address of physical `pa` in the direct map.
#[inline]
pub const fn phys_to_virt(pa: u64) -> u64 {
    DIRECT_MAP_BASE + pa
}

/// Physical address of the kernel's PML4 (the CR3 of kernel-only contexts).
pub fn kernel_pml4_pa() -> u64 {
    &raw const BOOT_PML4 as u64 - KERNEL_VMA
}

/// The kernel half of the kernel's PML4 (entries 256..512), to copy into
/// every new PML4 so that all address spaces share the kernel.
pub fn kernel_upper_half() -> [u64; 256] {
    core::array::from_fn(|i| BOOT_PML4.0[256 + i].load(Relaxed))
}

/// The page-table page at physical `pa`, through the direct map.
///
/// # Safety
/// `pa` must be a page-table page (or a zeroed frame about to become one)
/// that stays allocated while the reference is used.
pub unsafe fn table(pa: u64) -> &'static [AtomicU64; 512] {
    // SAFETY: the direct map covers all RAM; page tables are only accessed
    // atomically (caller contract keeps the frame alive).
    unsafe { &*(phys_to_virt(pa & pte::ADDR) as *const [AtomicU64; 512]) }
}

/// A new PML4 with an empty lower half and the kernel half, allocated from
/// machvm's frame allocator. Returns its physical address (a CR3 value).
pub fn new_address_space() -> Result<u64, KernError> {
    let frames = crate::mem::frames();
    let pa = frames.alloc(FrameUse::PageTable)?;
    frames.mem().zero_page(pa);
    // SAFETY: a fresh, zeroed frame we own.
    let t = unsafe { table(pa.as_u64()) };
    for (i, e) in kernel_upper_half().into_iter().enumerate() {
        t[256 + i].store(e, Relaxed);
    }
    Ok(pa.as_u64())
}

/// Frees the lower-half page-table pages of `pml4` and the PML4 itself (not
/// the frames the leaves point at).
///
/// # Safety
/// No CPU may be using `pml4` (as CR3) or have TLB entries from it, and it
/// must come from [`new_address_space`].
pub unsafe fn free_address_space(pml4: u64) {
    let frames = crate::mem::frames();
    // SAFETY: caller contract: the tables are ours and unused.
    unsafe {
        free_level(pml4, 4, 256);
    }
    frames.free(PhysAddr::new(pml4));
}

/// Frees the child tables of `t` (level 4 = PML4) in entries `0..n`.
unsafe fn free_level(t: u64, level: u32, n: usize) {
    let frames = crate::mem::frames();
    // SAFETY: caller contract (free_address_space).
    let tab = unsafe { table(t) };
    for e in &tab[..n] {
        let v = e.load(Relaxed);
        if v & pte::P == 0 || v & pte::PS != 0 || level == 1 {
            continue;
        }
        let child = v & pte::ADDR;
        if level > 2 {
            // SAFETY: same contract, one level down.
            unsafe { free_level(child, level - 1, 512) };
        }
        frames.free(PhysAddr::new(child));
    }
}

/// The physical address of `va`'s 4 KiB leaf entry under `pml4` (the
/// pmap's walk), creating missing tables when `create` (parents get P|W,
/// and U in the lower half).
fn leaf_slot(pml4: u64, va: u64, create: bool) -> Result<PhysAddr, KernError> {
    let frames = crate::mem::frames();
    let mut link = F::WRITABLE;
    if va < USER_MAX {
        link |= F::USER_ACCESSIBLE;
    }
    let alloc = || {
        if !create {
            return Err(KernError::InvalidAddress);
        }
        let pa = frames.alloc(FrameUse::PageTable)?;
        frames.mem().zero_page(pa);
        Ok(pa)
    };
    let (root, va) = (PhysAddr::new(pml4), VirtAddr::new(va));
    entry::leaf_slot(frames.mem(), root, va, link, alloc)
}

/// Maps the 4 KiB page at `va` to frame `pa` with leaf `flags` (P added)
/// under `pml4`, allocating tables from machvm's frame allocator. Does not
/// flush the TLB: the caller owns the translation's life cycle.
///
/// # Safety
/// `pa` must be a frame the caller owns and whose bytes no Rust object lives
/// in (writes through the mapping must not alias kernel data); `va` must not
/// be in use by the kernel (use the lower half of a task PML4 or
/// [`alloc_window`]).
pub unsafe fn map_4k(pml4: u64, va: u64, pa: u64, flags: u64) -> Result<(), KernError> {
    let slot = leaf_slot(pml4, va, true)?;
    let e = Pte::from_bits((pa & pte::ADDR) | flags | pte::P);
    crate::mem::frames().mem().store_u64(slot, e.bits());
    Ok(())
}

/// Removes the mapping of `va` under `pml4`, returning the old entry.
/// Does not flush the TLB.
///
/// # Safety
/// `va` must be a mapping the caller made ([`map_4k`]): the kernel's own
/// mappings must stay.
pub unsafe fn unmap_4k(pml4: u64, va: u64) -> Option<u64> {
    let slot = leaf_slot(pml4, va, false).ok()?;
    let old = Pte::from_bits(crate::mem::frames().mem().swap_u64(slot, 0));
    old.is_present().then_some(old.bits())
}

/// The leaf entry of `va` under `pml4` (for tests that rewrite a PTE behind
/// the TLB's back), or `None` when a table is missing.
pub fn leaf_entry(pml4: u64, va: u64) -> Option<&'static AtomicU64> {
    let slot = leaf_slot(pml4, va, false).ok()?;
    // SAFETY: `slot` is an 8-aligned entry of a page table reached from
    // `pml4`, in the direct map; page tables are only accessed atomically
    // and the kernel's tables are never freed while it runs.
    Some(unsafe { &*(phys_to_virt(slot.as_u64()) as *const AtomicU64) })
}

/// Physical address `va` translates to under `pml4` by the pmap's
/// side-effect-free walk (4 KiB, 2 MiB and 1 GiB leaves), or `None`.
pub fn translate(pml4: u64, va: u64) -> Option<u64> {
    let mem = crate::mem::frames().mem();
    entry::translate(mem, PhysAddr::new(pml4), VirtAddr::new(va)).map(PhysAddr::as_u64)
}

static WINDOW_NEXT: AtomicU64 = AtomicU64::new(WINDOW_BASE);

/// `pages` fresh pages of kernel virtual space in the scratch window, never
/// handed out again (so no stale translation from an earlier user exists).
pub fn alloc_window(pages: u64) -> u64 {
    let va = WINDOW_NEXT.fetch_add(pages * 4096, Relaxed);
    assert!(
        va + pages * 4096 <= WINDOW_BASE + WINDOW_SIZE,
        "window exhausted"
    );
    va
}

/// Drops the boot identity map (PML4 entry 0) and flushes the TLB.
pub(crate) fn drop_identity_map() {
    BOOT_PML4.0[0].store(0, Relaxed);
    cpu::flush_tlb();
}

/// Fills the kernel half: the scratch window's PDPT, and the LAPIC page made
/// uncacheable in the direct map. After this the kernel half is fixed.
pub(crate) fn init_kernel_half(lapic_pa: u64) {
    let frames = crate::mem::frames();
    let pdpt = frames
        .alloc(FrameUse::PageTable)
        .expect("no frame for the window PDPT");
    frames.mem().zero_page(pdpt);
    BOOT_PML4.0[384].store(pdpt.as_u64() | pte::P | pte::W, Relaxed);
    // The LAPIC lives in a 2 MiB page of the boot direct map (< 4 GiB).
    if lapic_pa < 1 << 32 {
        let pd = &BOOT_PD[(lapic_pa >> 30) as usize];
        pd.0[((lapic_pa >> 21) & 511) as usize].fetch_or(pte::PCD | pte::PWT, Relaxed);
    }
    cpu::flush_tlb();
}

/// Maps physical `[4 GiB, end)` in the direct map with 2 MiB pages, taking
/// page directories from `alloc_pd` (zeroed frames below 4 GiB).
pub(crate) fn extend_direct_map(end: u64, mut alloc_pd: impl FnMut() -> u64) {
    let gib = 1u64 << 30;
    let last = end.div_ceil(gib).min(512);
    for g in 4..last {
        let pd = alloc_pd();
        // SAFETY: a zeroed frame just carved for this page directory.
        let t = unsafe { table(pd) };
        for (i, e) in t.iter().enumerate() {
            e.store(
                (g * gib + ((i as u64) << 21)) | pte::P | pte::W | pte::PS,
                Relaxed,
            );
        }
        BOOT_PDPT_LOW.0[g as usize].store(pd | pte::P | pte::W, Relaxed);
    }
}
