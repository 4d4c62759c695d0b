//! TLB shootdown between CPUs: a mailbox per CPU apart from general
//! cross-CPU calls, served by the IPI handler, by every wait in `smp`, and
//! by every wait on a machvm lock (`locks.rs`) — so that a CPU spinning on one with
//! interrupts off still answers the shootdown its holder waits for.

use core::sync::atomic::Ordering;

use crate::cpu;
use crate::smp::{CPUS, cpu_count, current_cpu, lapic_icr};
use crate::trap::IPI_VECTOR;

/// One shootdown request: pages to invalidate, or all (`n == usize::MAX`).
#[derive(Clone, Copy)]
pub(crate) struct FlushReq {
    pages: [u64; FLUSH_BATCH],
    n: usize,
}

/// Pages a shootdown request carries (more: a full flush).
const FLUSH_BATCH: usize = 32;

impl FlushReq {
    fn of(pages: Option<&[u64]>) -> FlushReq {
        let mut r = FlushReq {
            pages: [0; FLUSH_BATCH],
            n: usize::MAX,
        };
        if let Some(p) = pages.filter(|p| p.len() <= FLUSH_BATCH) {
            r.pages[..p.len()].copy_from_slice(p);
            r.n = p.len();
        }
        r
    }

    fn pages(&self) -> Option<&[u64]> {
        (self.n != usize::MAX).then(|| &self.pages[..self.n])
    }
}

/// Shootdown requests CPU `cpu` has served (counted before the sender is
/// released).
pub fn flushes_served(cpu: usize) -> u64 {
    CPUS[cpu].flushes_served.load(Ordering::Relaxed)
}
/// Serves this CPU's pending shootdown, if any: the kernel's machvm locks, the
/// IPI handler and every wait here call it.
pub fn serve_flush() {
    let me = &CPUS[current_cpu()];
    if me.flush_pending.swap(false, Ordering::Acquire) {
        let req = me.flush_req.lock().take();
        if let Some(r) = req {
            flush_local(r.pages());
        }
        me.flushes_served.fetch_add(1, Ordering::Relaxed);
        me.flush_done.store(true, Ordering::Release);
    }
}
/// Invalidates `pages` (or, with `None`, every non-global entry) in this
/// CPU's TLB. The `skip-invlpg` feature deliberately skips the `invlpg`.
pub fn flush_local(pages: Option<&[u64]>) {
    match pages {
        None => cpu::flush_tlb(),
        Some(pages) => {
            for &va in pages {
                if cfg!(feature = "skip-invlpg") {
                    continue; // the deliberately broken kernel
                }
                cpu::invlpg(va);
            }
        }
    }
}

/// TLB shootdown: invalidates `pages` (or everything, with `None`) on every
/// online CPU in `cpus_mask` (bit n = CPU n), the current one included, and
/// returns once all of them did. Remote CPUs are reached through their
/// shootdown mailbox and an IPI, one after the other; while waiting, this
/// CPU answers shootdowns sent to it.
pub fn shootdown(cpus_mask: u64, pages: Option<&[u64]>) {
    let me = current_cpu();
    let req = FlushReq::of(pages);
    for (c, target) in CPUS.iter().enumerate().take(cpu_count()) {
        if cpus_mask & (1 << c) == 0 {
            continue;
        }
        if c == me {
            flush_local(req.pages());
            continue;
        }
        let guard = loop {
            if let Some(g) = target.flush_lock.try_lock() {
                break g;
            }
            serve_flush();
            core::hint::spin_loop();
        };
        *target.flush_req.lock() = Some(req);
        target.flush_done.store(false, Ordering::Relaxed);
        target.flush_pending.store(true, Ordering::Release);
        lapic_icr(
            target.apic_id.load(Ordering::Relaxed),
            u32::from(IPI_VECTOR) | 0x4000,
        );
        while !target.flush_done.load(Ordering::Acquire) {
            serve_flush();
            core::hint::spin_loop();
        }
        drop(guard);
    }
}
