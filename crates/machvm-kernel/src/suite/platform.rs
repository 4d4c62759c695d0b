//! Platform tests: the MMU, traps, probes, TLB and IPIs, with page tables
//! built by [`crate::paging`]'s helper (no machvm maps yet). Every access
//! under test is a real load, store or call through the MMU.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use machvm_base::PhysAddr;
use machvm_frame::{FrameState, FrameUse};

use crate::mem::{self, frames};
use crate::paging::{self, pte};
use crate::suite::Test;
use crate::trap::{self, PageFaultInfo, pf};
use crate::{cpu, ensure, ensure_eq, heap, smp, test};

/// The platform suite.
pub const TESTS: &[Test] = &[
    test!(cpu_features_enabled),
    test!(kernel_in_higher_half),
    test!(identity_map_dropped),
    test!(direct_map_reaches_frames),
    test!(frame_allocator_excludes_kernel),
    test!(heap_alloc_and_free),
    test!(fault_unmapped_read),
    test!(fault_unmapped_write),
    test!(write_to_writable_page),
    test!(fault_write_to_readonly),
    test!(fault_exec_nx),
    test!(fault_exec_unmapped),
    test!(fault_hook_resolves),
    test!(fault_hook_refusal_recovers),
    test!(tlb_stale_until_invlpg),
    test!(tlb_protect_needs_invalidation),
    test!(ipi_round_trip),
    test!(ipi_many_and_nested),
    test!(tlb_shootdown_remote),
    test!(tlb_shootdown_remote_unmap),
    test!(tlb_shootdown_full_flush),
    test!(address_space_switch),
];

// -------------------------------------------------------------- helpers --

/// A frame owned by a test, filled with one byte, freed on drop.
struct Frame(u64);

impl Frame {
    fn new(fill: u8) -> Result<Frame, String> {
        let pa = frames()
            .alloc(FrameUse::Kernel)
            .map_err(|e| format!("frame allocation: {e:?}"))?;
        frames().mem().write(pa, &[fill; 4096]);
        Ok(Frame(pa.0))
    }

    fn byte(&self, off: u64) -> u8 {
        let mut b = [0];
        frames().mem().read(PhysAddr(self.0 + off), &mut b);
        b[0]
    }
}

impl Drop for Frame {
    fn drop(&mut self) {
        frames().free(PhysAddr(self.0));
    }
}

/// Fresh scratch-window pages; on drop they are unmapped and every CPU's TLB
/// is flushed. Declare it after the frames it maps so it drops first.
struct Window {
    va: u64,
    pages: u64,
}

impl Window {
    fn new(pages: u64) -> Window {
        Window {
            va: paging::alloc_window(pages),
            pages,
        }
    }

    fn map(&self, page: u64, frame: &Frame, flags: u64) -> Result<(), String> {
        // SAFETY: the frame belongs to the test and holds no Rust object;
        // the address is a fresh window page.
        unsafe {
            paging::map_4k(
                paging::kernel_pml4_pa(),
                self.va + page * 4096,
                frame.0,
                flags,
            )
        }
        .map_err(|e| format!("map_4k: {e:?}"))
    }

    fn pte(&self, page: u64) -> Result<&'static AtomicU64, String> {
        paging::leaf_entry(paging::kernel_pml4_pa(), self.va + page * 4096)
            .ok_or_else(|| String::from("no page table for the window page"))
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        for i in 0..self.pages {
            // SAFETY: window pages are the test's own mappings.
            unsafe { paging::unmap_4k(paging::kernel_pml4_pa(), self.va + i * 4096) };
        }
        smp::shootdown(smp::all_cpus_mask(), None);
    }
}

fn fault(addr: u64, code: u64) -> PageFaultInfo {
    PageFaultInfo { addr, code }
}

/// The other CPU for SMP tests.
fn other_cpu() -> Result<usize, String> {
    ensure!(
        smp::cpu_count() >= 2,
        "needs two CPUs (-smp 2), have {}",
        smp::cpu_count()
    );
    Ok(if smp::current_cpu() == 0 { 1 } else { 0 })
}

// ---------------------------------------------------------------- boot --

fn cpu_features_enabled() -> Result<(), String> {
    for c in 0..smp::cpu_count() {
        let (cr0, cr4, efer) =
            smp::run_on(c, || (cpu::read_cr0(), cpu::read_cr4(), cpu::read_efer()));
        ensure!(cr0 & (1 << 31) != 0, "cpu {c}: CR0.PG clear");
        ensure!(
            cr0 & cpu::CR0_WP != 0,
            "cpu {c}: CR0.WP clear: ring 0 would ignore read-only pages"
        );
        ensure!(cr4 & (1 << 5) != 0, "cpu {c}: CR4.PAE clear");
        ensure!(efer & (1 << 10) != 0, "cpu {c}: EFER.LMA clear");
        ensure!(
            efer & cpu::EFER_NXE != 0,
            "cpu {c}: EFER.NXE clear: NX ignored"
        );
    }
    ensure!(
        !cpu::interrupts_enabled(),
        "the boot CPU should run with interrupts off"
    );
    Ok(())
}

fn kernel_in_higher_half() -> Result<(), String> {
    let code = kernel_in_higher_half as *const () as u64;
    ensure!(code >= paging::KERNEL_VMA, "code at {code:#x}");
    let local = 0u8;
    let stack = &local as *const u8 as u64;
    ensure!(stack >= paging::DIRECT_MAP_BASE, "stack at {stack:#x}");
    let pml4 = paging::kernel_pml4_pa();
    ensure_eq!(
        cpu::current_cr3() & pte::ADDR,
        pml4,
        "CR3 is the kernel PML4"
    );
    // SAFETY: the kernel PML4 is a live page table.
    let t = unsafe { paging::table(pml4) };
    let lower = t[..256].iter().filter(|e| e.load(Relaxed) != 0).count();
    ensure_eq!(lower, 0, "kernel PML4 entries in the lower half");
    let upper = paging::kernel_upper_half();
    for (i, what) in [
        (256, "direct map"),
        (384, "scratch window"),
        (511, "kernel image"),
    ] {
        ensure!(
            upper[i - 256] & pte::P != 0,
            "PML4[{i}] ({what}) not present"
        );
    }
    ensure!(
        upper[0] & pte::NX != 0,
        "the direct map should be no-execute"
    );
    ensure_eq!(
        upper[0],
        t[256].load(Relaxed),
        "kernel_upper_half()[0] vs PML4[256]"
    );
    Ok(())
}

fn identity_map_dropped() -> Result<(), String> {
    let (kernel_pa, _) = mem::layout().kernel;
    for addr in [0x1000, 0x8000, kernel_pa, kernel_pa + 0x123] {
        ensure_eq!(
            trap::probe_read_u8(addr),
            Err(fault(addr, 0)),
            "read of low {addr:#x}"
        );
    }
    Ok(())
}

fn direct_map_reaches_frames() -> Result<(), String> {
    let f = Frame::new(0)?;
    let pattern = 0x0123_4567_89AB_CDEF;
    frames().mem().store_u64(PhysAddr(f.0 + 8), pattern);
    let va = paging::phys_to_virt(f.0);
    // SAFETY: the test's own frame; nothing else writes it.
    let word = unsafe { trap::probe_read_u64_anywhere(va + 8) };
    ensure_eq!(word, Ok(pattern), "load through the direct map");
    ensure_eq!(
        paging::translate(paging::kernel_pml4_pa(), va + 8),
        Some(f.0 + 8),
        "software walk of the direct map"
    );
    let last = (mem::layout().ram_end - 8) & !7;
    // SAFETY: the tests run alone; nothing writes the last RAM word now.
    let r = unsafe { trap::probe_read_u64_anywhere(paging::phys_to_virt(last)) };
    ensure!(
        r.is_ok(),
        "last RAM word {last:#x} not in the direct map: {r:?}"
    );
    Ok(())
}

fn frame_allocator_excludes_kernel() -> Result<(), String> {
    frames().verify()?;
    let l = mem::layout();
    let reserved = |pa: u64| {
        frames()
            .page(PhysAddr(pa))
            .is_none_or(|p| p.state() == FrameState::Reserved)
    };
    for (pa, what) in [
        (l.kernel.0, "kernel image start"),
        ((l.kernel.1 - 1) & !4095, "kernel image end"),
        (l.heap.0, "heap start"),
        (l.heap.1 - 4096, "heap end"),
        (0x8000, "AP trampoline"),
    ] {
        ensure!(
            reserved(pa),
            "{what} frame {pa:#x} is managed by the allocator"
        );
    }
    let managed = frames().total_frames() * 4096;
    let excluded = (1 << 20) + (l.kernel.1 - l.kernel.0) + (l.heap.1 - l.heap.0) + (64 << 10);
    ensure!(
        managed + excluded >= l.ram_total,
        "only {managed:#x} of {:#x} bytes of RAM managed",
        l.ram_total
    );
    Ok(())
}

fn heap_alloc_and_free() -> Result<(), String> {
    #[repr(align(4096))]
    struct Page([u8; 4096]);
    let (before, size) = heap::usage();
    {
        let boxes: Vec<Box<[u8; 100]>> = (0..1000).map(|i| Box::new([i as u8; 100])).collect();
        for (i, b) in boxes.iter().enumerate() {
            ensure!(b.iter().all(|&x| x == i as u8), "box {i} corrupted");
        }
        let big = vec![7u8; 1 << 20];
        ensure!(big.iter().all(|&x| x == 7), "1 MiB vector corrupted");
        let page = Box::new(Page([1; 4096]));
        let addr = &*page as *const Page as u64;
        ensure_eq!(addr % 4096, 0, "4 KiB-aligned allocation");
        ensure_eq!(page.0[4095], 1, "aligned allocation contents");
    }
    let (after, _) = heap::usage();
    ensure_eq!(after, before, "heap bytes in use after freeing (of {size})");
    Ok(())
}

// -------------------------------------------------------------- faults --

fn fault_unmapped_read() -> Result<(), String> {
    let va = paging::alloc_window(1) + 0x123;
    ensure_eq!(
        trap::probe_read_u8(va),
        Err(fault(va, 0)),
        "read of an unmapped page"
    );
    Ok(())
}

fn fault_unmapped_write() -> Result<(), String> {
    let va = paging::alloc_window(1) + 0x40;
    ensure_eq!(
        trap::probe_write_u64(va, 1),
        Err(fault(va, pf::W)),
        "write to an unmapped page"
    );
    Ok(())
}

fn write_to_writable_page() -> Result<(), String> {
    let f = Frame::new(0)?;
    let w = Window::new(1);
    w.map(0, &f, pte::W | pte::NX)?;
    ensure_eq!(trap::probe_write_u8(w.va + 5, 0xE7), Ok(()), "write");
    ensure_eq!(trap::probe_read_u8(w.va + 5), Ok(0xE7), "read back");
    ensure_eq!(f.byte(5), 0xE7, "the frame holds the write");
    let e = w.pte(0)?.load(Relaxed);
    ensure!(
        e & pte::A != 0 && e & pte::D != 0,
        "MMU did not set A/D: {e:#x}"
    );
    Ok(())
}

fn fault_write_to_readonly() -> Result<(), String> {
    let f = Frame::new(0x5A)?;
    let w = Window::new(1);
    w.map(0, &f, pte::NX)?;
    ensure_eq!(
        trap::probe_read_u8(w.va + 7),
        Ok(0x5A),
        "read of the read-only page"
    );
    ensure_eq!(
        trap::probe_write_u8(w.va + 7, 1),
        Err(fault(w.va + 7, pf::P | pf::W)),
        "write to the read-only page"
    );
    ensure_eq!(f.byte(7), 0x5A, "the read-only frame changed");
    Ok(())
}

fn fault_exec_nx() -> Result<(), String> {
    let f = Frame::new(0xC3)?; // `ret` everywhere
    let w = Window::new(2);
    w.map(0, &f, pte::W | pte::NX)?;
    w.map(1, &f, 0)?;
    // SAFETY: the page holds only `ret` instructions.
    let nx = unsafe { trap::probe_exec(w.va) };
    // SAFETY: as above.
    let x = unsafe { trap::probe_exec(w.va + 4096 + 17) };
    ensure_eq!(nx, Err(fault(w.va, pf::P | pf::I)), "call into the NX page");
    ensure_eq!(x, Ok(()), "call into the executable alias");
    Ok(())
}

fn fault_exec_unmapped() -> Result<(), String> {
    let va = paging::alloc_window(1);
    // SAFETY: nothing is mapped there, so nothing runs.
    let r = unsafe { trap::probe_exec(va) };
    ensure_eq!(r, Err(fault(va, pf::I)), "call into an unmapped page");
    Ok(())
}

static HOOK_VA: AtomicU64 = AtomicU64::new(0);
static HOOK_PA: AtomicU64 = AtomicU64::new(0);
static HOOK_CALLS: AtomicU64 = AtomicU64::new(0);
static HOOK_SEEN: AtomicU64 = AtomicU64::new(0);

/// A demand-paging hook: maps HOOK_PA at HOOK_VA on its first fault.
fn demand_map_hook(cr2: u64, err: u64) -> bool {
    HOOK_CALLS.fetch_add(1, Relaxed);
    HOOK_SEEN.store(err, Relaxed);
    let va = HOOK_VA.load(Relaxed);
    if cr2 & !4095 != va {
        return false;
    }
    // SAFETY: HOOK_PA is a frame owned by the running test; `va` is its
    // fresh window page.
    unsafe {
        paging::map_4k(
            paging::kernel_pml4_pa(),
            va,
            HOOK_PA.load(Relaxed),
            pte::W | pte::NX,
        )
    }
    .is_ok()
}

fn refusing_hook(cr2: u64, _err: u64) -> bool {
    HOOK_CALLS.fetch_add(1, Relaxed);
    HOOK_SEEN.store(cr2, Relaxed);
    false
}

fn fault_hook_resolves() -> Result<(), String> {
    let f = Frame::new(0x77)?;
    let w = Window::new(1);
    HOOK_VA.store(w.va, Relaxed);
    HOOK_PA.store(f.0, Relaxed);
    HOOK_CALLS.store(0, Relaxed);
    trap::set_page_fault_hook(Some(demand_map_hook));
    let first = trap::probe_read_u8(w.va + 9);
    let calls = HOOK_CALLS.load(Relaxed);
    let code = HOOK_SEEN.load(Relaxed);
    let second = trap::probe_write_u8(w.va + 10, 0x88);
    trap::set_page_fault_hook(None);
    ensure_eq!(first, Ok(0x77), "read resolved by the hook");
    ensure_eq!(calls, 1, "hook calls for the first access");
    ensure_eq!(code, 0, "error code passed to the hook");
    ensure_eq!(second, Ok(()), "write after the hook mapped the page");
    ensure_eq!(HOOK_CALLS.load(Relaxed), 1, "hook calls once mapped");
    ensure_eq!(f.byte(10), 0x88, "the frame holds the write");
    Ok(())
}

fn fault_hook_refusal_recovers() -> Result<(), String> {
    let va = paging::alloc_window(1) + 16;
    HOOK_CALLS.store(0, Relaxed);
    trap::set_page_fault_hook(Some(refusing_hook));
    let r = trap::probe_write_u64(va, 5);
    trap::set_page_fault_hook(None);
    ensure_eq!(r, Err(fault(va, pf::W)), "refused write");
    ensure_eq!(HOOK_CALLS.load(Relaxed), 1, "hook calls");
    ensure_eq!(HOOK_SEEN.load(Relaxed), va, "CR2 passed to the hook");
    Ok(())
}

// ---------------------------------------------------------------- TLB --

fn tlb_stale_until_invlpg() -> Result<(), String> {
    let a = Frame::new(0xAA)?;
    let b = Frame::new(0xBB)?;
    let w = Window::new(1);
    w.map(0, &a, pte::NX)?;
    let first = trap::probe_read_u8(w.va);
    w.pte(0)?.store(b.0 | pte::P | pte::NX, Relaxed);
    let stale = trap::probe_read_u8(w.va);
    smp::shootdown(1 << smp::current_cpu(), Some(&[w.va]));
    let fresh = trap::probe_read_u8(w.va);
    ensure_eq!(first, Ok(0xAA), "first read");
    ensure_eq!(
        stale,
        Ok(0xAA),
        "read after the PTE change, before invalidation (no TLB?)"
    );
    ensure_eq!(fresh, Ok(0xBB), "read after invalidation (stale TLB entry)");
    Ok(())
}

fn tlb_protect_needs_invalidation() -> Result<(), String> {
    let a = Frame::new(0)?;
    let w = Window::new(1);
    w.map(0, &a, pte::W | pte::NX)?;
    let first = trap::probe_write_u8(w.va, 1);
    w.pte(0)?.fetch_and(!pte::W, Relaxed);
    let stale = trap::probe_write_u8(w.va, 2);
    smp::shootdown(1 << smp::current_cpu(), Some(&[w.va]));
    let after = trap::probe_write_u8(w.va, 3);
    ensure_eq!(first, Ok(()), "write while writable");
    ensure_eq!(
        stale,
        Ok(()),
        "write through the cached writable translation"
    );
    ensure_eq!(
        after,
        Err(fault(w.va, pf::P | pf::W)),
        "write after write-protect and invalidation"
    );
    ensure_eq!(a.byte(0), 2, "frame contents");
    Ok(())
}

// ---------------------------------------------------------------- SMP --

fn ipi_round_trip() -> Result<(), String> {
    let other = other_cpu()?;
    // Calls served, not IPIs taken: the target may find the job in its
    // mailbox loop before the (still pending) IPI is delivered.
    let before = smp::calls_served(other);
    let (cpu, apic) = smp::run_on(other, || (smp::current_cpu(), smp::lapic_id()));
    ensure_eq!(cpu, other, "current_cpu() on the target");
    ensure_eq!(apic, smp::apic_id_of(other), "APIC id on the target");
    ensure!(
        apic != smp::lapic_id(),
        "target and sender share APIC id {apic}"
    );
    ensure!(
        smp::calls_served(other) > before,
        "the target served no call"
    );
    Ok(())
}

fn ipi_many_and_nested() -> Result<(), String> {
    let other = other_cpu()?;
    let me = smp::current_cpu();
    let mut sum = 0;
    for i in 0..200u64 {
        sum += smp::run_on(other, move || i * 2);
    }
    ensure_eq!(sum, 199 * 200, "sum of 200 remote results");
    let mut seen = Vec::new();
    smp::run_on(other, || seen.push(smp::current_cpu()));
    ensure_eq!(seen, vec![other], "closure mutating the caller's vector");
    let back = smp::run_on(other, move || smp::run_on(me, smp::current_cpu));
    ensure_eq!(back, me, "a call back to the sender while it waits");
    Ok(())
}

fn tlb_shootdown_remote() -> Result<(), String> {
    let other = other_cpu()?;
    let a = Frame::new(0xAA)?;
    let b = Frame::new(0xBB)?;
    let w = Window::new(1);
    w.map(0, &a, pte::NX)?;
    let va = w.va;
    let first = smp::run_on(other, || trap::probe_read_u8(va));
    w.pte(0)?.store(b.0 | pte::P | pte::NX, Relaxed);
    let stale = smp::run_on(other, || trap::probe_read_u8(va));
    smp::shootdown(1 << other, Some(&[va]));
    let fresh = smp::run_on(other, || trap::probe_read_u8(va));
    let here = trap::probe_read_u8(va);
    ensure_eq!(first, Ok(0xAA), "first read on cpu {other}");
    ensure_eq!(
        stale,
        Ok(0xAA),
        "cpu {other} before the shootdown (no cached translation?)"
    );
    ensure_eq!(
        fresh,
        Ok(0xBB),
        "cpu {other} after the shootdown IPI (stale TLB entry)"
    );
    ensure_eq!(here, Ok(0xBB), "the sending CPU");
    Ok(())
}

fn tlb_shootdown_remote_unmap() -> Result<(), String> {
    let other = other_cpu()?;
    let a = Frame::new(0xAA)?;
    let w = Window::new(1);
    w.map(0, &a, pte::W | pte::NX)?;
    let va = w.va + 0x80;
    let first = smp::run_on(other, || trap::probe_read_u8(va));
    w.pte(0)?.store(0, Relaxed);
    let stale = smp::run_on(other, || trap::probe_read_u8(va));
    smp::shootdown(1 << other, Some(&[w.va]));
    let after = smp::run_on(other, || trap::probe_read_u8(va));
    ensure_eq!(first, Ok(0xAA), "first read on cpu {other}");
    ensure_eq!(
        stale,
        Ok(0xAA),
        "cpu {other} before the shootdown (no cached translation?)"
    );
    ensure_eq!(
        after,
        Err(fault(va, 0)),
        "cpu {other} after unmap + shootdown (stale TLB entry)"
    );
    Ok(())
}

fn tlb_shootdown_full_flush() -> Result<(), String> {
    let other = other_cpu()?;
    let a = Frame::new(0xAA)?;
    let b = Frame::new(0xBB)?;
    let w = Window::new(1);
    w.map(0, &a, pte::NX)?;
    let va = w.va;
    let read_both = || {
        (
            trap::probe_read_u8(va),
            smp::run_on(other, || trap::probe_read_u8(va)),
        )
    };
    let first = read_both();
    w.pte(0)?.store(b.0 | pte::P | pte::NX, Relaxed);
    let stale = read_both();
    smp::shootdown(smp::all_cpus_mask(), None);
    let fresh = read_both();
    ensure_eq!(
        first,
        (Ok(0xAA), Ok(0xAA)),
        "first reads (here, cpu {other})"
    );
    ensure_eq!(stale, (Ok(0xAA), Ok(0xAA)), "reads before the flush");
    ensure_eq!(
        fresh,
        (Ok(0xBB), Ok(0xBB)),
        "reads after a full flush on all CPUs"
    );
    Ok(())
}

fn address_space_switch() -> Result<(), String> {
    let f = Frame::new(0x42)?;
    let space = paging::new_address_space().map_err(|e| format!("{e:?}"))?;
    let va = 0x40_0000;
    // SAFETY: the frame is the test's; `space` is a fresh task-like PML4.
    let mapped = unsafe { paging::map_4k(space, va, f.0, pte::W | pte::U | pte::NX) };
    let kernel = paging::kernel_pml4_pa();
    let before = trap::probe_read_u8(va);
    // SAFETY: `space` carries the kernel half (new_address_space).
    unsafe { cpu::load_cr3(space) };
    let inside = trap::probe_read_u8(va);
    let wrote = trap::probe_write_u8(va + 1, 0x43);
    // SAFETY: back to the kernel PML4.
    unsafe { cpu::load_cr3(kernel) };
    let after = trap::probe_read_u8(va);
    let remote = match other_cpu() {
        Ok(other) => Some(smp::run_on(other, move || {
            // SAFETY: as above, on the other CPU.
            unsafe { cpu::load_cr3(space) };
            let r = trap::probe_read_u8(va + 1);
            // SAFETY: back to the kernel PML4.
            unsafe { cpu::load_cr3(kernel) };
            r
        })),
        Err(_) => None,
    };
    // SAFETY: no CPU uses `space` any more, and the CR3 reloads flushed its
    // translations.
    unsafe { paging::free_address_space(space) };
    mapped.map_err(|e| format!("map_4k: {e:?}"))?;
    ensure_eq!(before, Err(fault(va, 0)), "lower half under the kernel CR3");
    ensure_eq!(inside, Ok(0x42), "read under the new CR3");
    ensure_eq!(wrote, Ok(()), "write under the new CR3");
    ensure_eq!(after, Err(fault(va, 0)), "lower half after switching back");
    if let Some(r) = remote {
        ensure_eq!(r, Ok(0x43), "read on the other CPU under the new CR3");
    }
    ensure_eq!(f.byte(1), 0x43, "frame contents");
    Ok(())
}
