//! TLB staleness on one CPU, then several CPUs: IPIs, remote
//! shootdowns and address-space switches.

use super::*;

pub(super) fn tlb_stale_until_invlpg() -> Result<(), String> {
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

pub(super) fn tlb_protect_needs_invalidation() -> Result<(), String> {
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

pub(super) fn ipi_round_trip() -> Result<(), String> {
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

pub(super) fn ipi_many_and_nested() -> Result<(), String> {
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

pub(super) fn tlb_shootdown_remote() -> Result<(), String> {
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

pub(super) fn tlb_shootdown_remote_unmap() -> Result<(), String> {
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

pub(super) fn tlb_shootdown_full_flush() -> Result<(), String> {
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

pub(super) fn address_space_switch() -> Result<(), String> {
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
