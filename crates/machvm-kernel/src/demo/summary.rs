//! The demo's closing figures: the kernel's counters and machvm's
//! statistics at the end, against the kernel's counters when it began.

use machvm_frame::FrameUse;

use crate::{heap, mem, proc, smp, timer, trap, vm};

/// The kernel's counters at one moment.
pub(super) struct Counters {
    faults: u64,
    recovered: u64,
    hook: vm::FaultCounts,
    free: u64,
    /// Frames in use for object pages, page tables, the kernel.
    used: [u64; 3],
    ipis: u64,
    flushes: u64,
    allocations: u64,
    procs: proc::ProcStats,
    ticks: u64,
}

impl Counters {
    /// The counters now.
    pub(super) fn now() -> Counters {
        let (faults, recovered, _) = trap::fault_counts();
        let cpus = 0..smp::cpu_count();
        Counters {
            faults,
            recovered,
            hook: vm::fault_counts_all(),
            free: mem::frames().free_frames(),
            used: [FrameUse::Object, FrameUse::PageTable, FrameUse::Kernel]
                .map(|u| mem::frames().frames_in_use(u)),
            ipis: cpus.clone().map(smp::ipis_taken).sum(),
            flushes: cpus.map(smp::flushes_served).sum(),
            allocations: heap::stats().total_allocations,
            procs: proc::stats(),
            ticks: timer::ticks(),
        }
    }
}

/// Prints the figures of the whole run: page faults taken and what became
/// of them, pages zero-filled and copied, frames returned, shootdowns, and
/// the heap.
pub(super) fn closing(start: &Counters) {
    let end = Counters::now();
    let stats = vm::vm().system.statistics();
    let resolved = end.hook.resolved - start.hook.resolved;
    let refused = end.hook.refused - start.hook.refused;
    let taken = end.faults - start.faults;
    println!();
    println!("== In numbers: the whole demo ==");
    println!(
        "page faults   {taken} taken: machvm resolved {resolved} (the access was then retried) and refused {refused}; {} never reached machvm (no task map running)",
        taken - resolved - refused
    );
    println!(
        "probes        {} of those faults came back to the kernel as an error result, not a crash",
        end.recovered - start.recovered
    );
    println!(
        "pages         {} zero-filled on demand, {} copied by copy-on-write",
        stats.zero_fill_count, stats.cow_faults
    );
    let zero = u64::from(vm::vm().system.context().zero_frame().is_some());
    let more = |i: usize| end.used[i] as i64 - start.used[i] as i64;
    println!(
        "frames        {} returned when the task maps went; {} free before the demo, {} after; in use since: {:+} object pages, {:+} page tables, {:+} kernel frames ({zero} of them machvm's shared zero frame)",
        super::tasks::frames_returned(),
        start.free,
        end.free,
        more(0),
        more(1),
        more(2),
    );
    println!(
        "paging        {} pages paged out to the RAM disk, {} paged back in; {} of its slots free at the end",
        stats.pageouts, stats.pageins, stats.swap_free_pages
    );
    println!(
        "TLB           {} shootdown requests served by other CPUs; {} IPIs taken (shootdowns and cross-CPU calls)",
        end.flushes - start.flushes,
        end.ipis - start.ipis
    );
    let (p, q) = (&start.procs, &end.procs);
    println!(
        "processes     {} created, {} exited, {} killed; {} system calls; {} switches, {} of them preemptions by {} timer interrupts; {} KiB sent out of line",
        q.created - p.created,
        q.exited - p.exited,
        q.killed - p.killed,
        q.syscalls - p.syscalls,
        q.switches - p.switches,
        q.preemptions - p.preemptions,
        end.ticks - start.ticks,
        (q.ool_bytes - p.ool_bytes) >> 10
    );
    let h = heap::stats();
    println!(
        "heap          {} allocations during the demo; {} KiB of {} MiB in use at the end",
        h.total_allocations - start.allocations,
        h.in_use >> 10,
        h.managed >> 20
    );
    println!("demo complete");
}
