//! Boot: CPU features, the higher half, the direct map, frames, the heap.

use super::*;

pub(super) fn cpu_features_enabled() -> Result<(), String> {
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
        ensure!(cr4 & cpu::CR4_SMEP != 0, "cpu {c}: CR4.SMEP clear");
        ensure!(cr4 & cpu::CR4_SMAP != 0, "cpu {c}: CR4.SMAP clear");
    }
    ensure!(
        !cpu::interrupts_enabled(),
        "the boot CPU should run with interrupts off"
    );
    Ok(())
}

pub(super) fn kernel_in_higher_half() -> Result<(), String> {
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

pub(super) fn identity_map_dropped() -> Result<(), String> {
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

pub(super) fn direct_map_reaches_frames() -> Result<(), String> {
    let f = Frame::new(0)?;
    let pattern = 0x0123_4567_89AB_CDEF;
    frames().mem().store_u64(PhysAddr::new(f.0 + 8), pattern);
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

pub(super) fn frame_allocator_excludes_kernel() -> Result<(), String> {
    frames().verify().map_err(|v| alloc::format!("{v}"))?;
    let l = mem::layout();
    let reserved = |pa: u64| {
        frames()
            .page(PhysAddr::new(pa))
            .is_none_or(|p| p.state() == FrameState::Reserved)
    };
    for (pa, what) in [
        (l.kernel.0, "kernel image start"),
        ((l.kernel.1 - 1) & !4095, "kernel image end"),
        (l.heap.0, "heap start"),
        (l.heap.1 - 4096, "heap end"),
        (l.ram_disk.0, "RAM disk start"),
        (l.ram_disk.1 - 4096, "RAM disk end"),
        (0x8000, "AP trampoline"),
    ] {
        ensure!(
            reserved(pa),
            "{what} frame {pa:#x} is managed by the allocator"
        );
    }
    let managed = frames().total_frames() * 4096;
    let disk = l.ram_disk.1 - l.ram_disk.0;
    let excluded =
        (1 << 20) + (l.kernel.1 - l.kernel.0) + (l.heap.1 - l.heap.0) + disk + (64 << 10);
    ensure!(
        managed + excluded >= l.ram_total,
        "only {managed:#x} of {:#x} bytes of RAM managed",
        l.ram_total
    );
    Ok(())
}

pub(super) fn heap_alloc_and_free() -> Result<(), String> {
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
