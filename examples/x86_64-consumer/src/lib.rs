//! A kernel's view of machvm with the `x86_64` crate: its own mappings take
//! frames from machvm's pool, and task maps run on the MMU.
//!
//! Everything comes from `machvm` alone, the `x86_64` crate included
//! (`machvm::x86_64`), so the types on both sides are the same.
#![no_std]

extern crate alloc;

use alloc::sync::Arc;

use machvm::x86_64::instructions::tlb;
use machvm::x86_64::registers::control::{Cr3, Cr3Flags};
use machvm::x86_64::structures::paging::{
    Mapper, OffsetPageTable, Page, PageTableFlags, PhysFrame, Size4KiB,
};
use machvm::{
    CpuSet, FrameAllocator, FrameUse, KernError, Mmu, PhysAddr, VirtAddr, VmProt, VmSystem,
    X86Config, X86Frames, X86Pmap,
};

/// Maps a fresh frame of machvm's pool at `page` of the kernel's own page
/// table, writable and not executable; its page-table frames come from the
/// pool too. Returns the frame.
///
/// # Safety
/// `table` must be the active kernel table, and `page` must be unused.
pub unsafe fn map_kernel_page(
    table: &mut OffsetPageTable<'_>,
    frames: &FrameAllocator,
    page: Page<Size4KiB>,
) -> Result<PhysAddr, KernError> {
    let pa = frames.alloc(FrameUse::Kernel)?;
    let frame = PhysFrame::<Size4KiB>::try_from(pa)?;
    let flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE | PageTableFlags::NO_EXECUTE;
    let mut tables = X86Frames::new(frames, FrameUse::PageTable);
    // SAFETY: `frame` is machvm's and unused; the caller vouches for
    // `table` and `page`.
    match unsafe { table.map_to(page, frame, flags, &mut tables) } {
        Ok(flush) => {
            flush.flush();
            Ok(pa)
        }
        Err(_) => {
            frames.free(pa);
            Err(KernError::NoSpace)
        }
    }
}

/// A one-CPU kernel's [`Mmu`]: CR3 and `invlpg` through the `x86_64` crate.
/// (An SMP kernel sends shootdown IPIs to `cpus` here and waits.)
pub struct UniprocessorMmu;

impl Mmu for UniprocessorMmu {
    fn current_cpu(&self) -> usize {
        0
    }

    fn load_root(&self, root: PhysAddr) {
        let frame = PhysFrame::<Size4KiB>::try_from(root).expect("page-table roots are frames");
        // SAFETY: machvm loads only roots it built, whose kernel half is
        // the running kernel's (`X86Config::kernel_half`).
        unsafe { Cr3::write(frame, Cr3Flags::empty()) };
    }

    fn invalidate(&self, _cpus: CpuSet, pages: Option<&[VirtAddr]>) {
        let Some(pages) = pages else {
            tlb::flush_all();
            return;
        };
        for &va in pages {
            if let Ok(va) = machvm::x86_64::VirtAddr::try_from(va) {
                tlb::flush(va);
            }
        }
    }
}

static MMU: UniprocessorMmu = UniprocessorMmu;

/// A VM system whose task maps run on this CPU's MMU: page tables in
/// machvm's frames, entered into CR3 by [`UniprocessorMmu`].
/// `kernel_half` is the running kernel's PML4 entries 256..512.
pub fn vm_on_the_mmu(
    frames: Arc<FrameAllocator>,
    kernel_half: &[u64; 256],
) -> Result<VmSystem, KernError> {
    let config = X86Config {
        kernel_half: *kernel_half,
        mmu: Some(&MMU),
    };
    let pmap = Arc::new(X86Pmap::new(frames.clone(), config)?);
    Ok(VmSystem::with_pmap(frames, pmap))
}

/// A task with `image` loaded at `at` (read and execute only) and `stack`
/// bytes of zero-filled stack below it: what a kernel's `exec` asks of the
/// VM system. Returns the map; run it with `Pmap::activate` and its root.
pub fn load_task(
    vm: &VmSystem,
    image: &[u8],
    at: u64,
    stack: u64,
) -> Result<machvm::VmMap, KernError> {
    let map = vm.create_map()?;
    let len = image.len() as u64;
    map.allocate(at, len, false)?;
    map.write_bytes(at, image)?;
    map.protect(at, len, false, VmProt::READ | VmProt::EXECUTE)?;
    let below = at.checked_sub(stack).ok_or(KernError::InvalidArgument)?;
    map.allocate(below, stack, false)?;
    Ok(map)
}
