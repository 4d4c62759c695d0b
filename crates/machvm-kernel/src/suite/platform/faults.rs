//! Hardware page faults, the hook and the recovery probes.

use super::*;

pub(super) fn fault_unmapped_read() -> Result<(), String> {
    let va = paging::alloc_window(1) + 0x123;
    ensure_eq!(
        trap::probe_read_u8(va),
        Err(fault(va, 0)),
        "read of an unmapped page"
    );
    Ok(())
}

pub(super) fn fault_unmapped_write() -> Result<(), String> {
    let va = paging::alloc_window(1) + 0x40;
    ensure_eq!(
        trap::probe_write_u64(va, 1),
        Err(fault(va, pf::W)),
        "write to an unmapped page"
    );
    Ok(())
}

pub(super) fn write_to_writable_page() -> Result<(), String> {
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

pub(super) fn fault_write_to_readonly() -> Result<(), String> {
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

pub(super) fn fault_exec_nx() -> Result<(), String> {
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

pub(super) fn fault_exec_unmapped() -> Result<(), String> {
    let va = paging::alloc_window(1);
    // SAFETY: nothing is mapped there, so nothing runs.
    let r = unsafe { trap::probe_exec(va) };
    ensure_eq!(r, Err(fault(va, pf::I)), "call into an unmapped page");
    Ok(())
}

pub(super) static HOOK_VA: AtomicU64 = AtomicU64::new(0);
pub(super) static HOOK_PA: AtomicU64 = AtomicU64::new(0);
pub(super) static HOOK_CALLS: AtomicU64 = AtomicU64::new(0);
pub(super) static HOOK_SEEN: AtomicU64 = AtomicU64::new(0);

/// A demand-paging hook: maps HOOK_PA at HOOK_VA on its first fault.
pub(super) fn demand_map_hook(cr2: u64, err: u64) -> bool {
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

pub(super) fn refusing_hook(cr2: u64, _err: u64) -> bool {
    HOOK_CALLS.fetch_add(1, Relaxed);
    HOOK_SEEN.store(cr2, Relaxed);
    false
}

pub(super) fn fault_hook_resolves() -> Result<(), String> {
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

pub(super) fn fault_hook_refusal_recovers() -> Result<(), String> {
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
