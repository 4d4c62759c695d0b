//! The few instructions a bare-metal kernel needs to drive this pmap:
//! loading CR3 and invalidating TLB entries on the executing CPU. A kernel
//! builds its [`Mmu`](crate::Mmu) from these plus its own IPIs.

use machvm_base::{PhysAddr, VirtAddr};
use x86_64::registers::control::{Cr3, Cr3Flags};
use x86_64::structures::paging::PhysFrame;

/// Invalidates the TLB entry for `va` on this CPU (`invlpg`).
pub fn invlpg(va: VirtAddr) {
    x86_64::instructions::tlb::flush(x86_64::VirtAddr::new_truncate(va.as_u64()));
}

/// Invalidates every non-global TLB entry on this CPU (reloads CR3).
pub fn flush_all() {
    x86_64::instructions::tlb::flush_all();
}

/// Makes `root` this CPU's page-table root.
///
/// # Safety
/// `root` must be a PML4 built by [`X86Pmap`](crate::X86Pmap) whose kernel
/// half maps the running kernel (code, stack, data) exactly as the current
/// root does, and it must stay alive while loaded.
pub unsafe fn load_cr3(root: PhysAddr) {
    let frame = PhysFrame::containing_address(x86_64::PhysAddr::new(root.as_u64()));
    // SAFETY: the caller guarantees the new root maps the kernel identically.
    unsafe { Cr3::write(frame, Cr3Flags::empty()) };
}
