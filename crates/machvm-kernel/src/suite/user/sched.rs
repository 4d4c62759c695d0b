//! The scheduler: preemption, every CPU, and a task preempted while another
//! CPU shoots down its translations.

use alloc::vec::Vec;

use super::*;

/// One spinner more than there are CPUs, none making a system call, each
/// waiting for every other's mark: they finish only if the timer preempts.
pub(super) fn round_robin_needs_preemption() -> Result<(), String> {
    let before = proc::stats().preemptions;
    let n = smp::cpu_count() as u64 + 1;
    passes(s::SPIN_PREEMPT, n, "spinners waiting for each other")?;
    ensure!(proc::stats().preemptions > before, "no preemption");
    Ok(())
}

/// Spinners mark the CPU they run on until every CPU is marked: idle CPUs
/// are woken for new tasks.
pub(super) fn every_cpu_runs_tasks() -> Result<(), String> {
    passes(s::EVERY_CPU, smp::cpu_count() as u64, "every CPU marked")
}

fn slot(map: &VmMap, i: usize) -> Result<u64, String> {
    let mut b = [0u8; 8];
    ctx(map.read_bytes(SHARED + 8 * i as u64, &mut b), "read slot")?;
    Ok(u64::from_le_bytes(b))
}

const SHARED: u64 = s::SHARED_PAGE;

/// `mov $SHARED, %eax; lea (%rax,%rdi,8), %rbx; 1: incq (%rbx); jmp 1b`:
/// slot `rdi` of the shared page, incremented forever with no system call.
const COUNTER: [u8; 14] = [
    0xB8, 0x00, 0x00, 0x00, 0x10, // mov $0x10000000, %eax
    0x48, 0x8D, 0x1C, 0xF8, // lea (%rax,%rdi,8), %rbx
    0x48, 0xFF, 0x03, // 1: incq (%rbx)
    0xEB, 0xFB, // jmp 1b
];

/// A map with [`COUNTER`] as its text and a zeroed `Share` page at
/// [`SHARED`]; the tasks run forks of it.
fn counter_map() -> Result<VmMap, String> {
    const _: () = assert!(s::SHARED_PAGE == 0x1000_0000);
    let map = new_map()?;
    ctx(map.allocate(SHARED, PG, false), "allocate the shared page")?;
    ctx(
        map.inherit(SHARED, PG, machvm::VmInherit::Share),
        "inherit Share",
    )?;
    Ok(map)
}

/// `cpu_count()` tasks store to their slots of a `Share` page with no
/// system call. CPU 0 stays in this test, so at least one is always
/// preempted while the others run. Making the page read-only in every task's map must
/// reach the running ones through a shootdown and the preempted ones at
/// their next switch: no store lands after the protects return, and each
/// task dies on its next store. Under `--skip-invlpg` a running task goes
/// on storing through its stale TLB entry, and this fails.
pub(super) fn preempted_task_shot_down_by_another_cpu() -> Result<(), String> {
    let k = smp::cpu_count();
    ensure!(k >= 2, "needs two CPUs (-smp 2), have {k}");
    let base = counter_map()?;
    let mut kids = Vec::new();
    for i in 0..k {
        let pid = ctx(proc::spawn_code_in(&base, &COUNTER, i as u64), "spawn")?;
        kids.push((pid, proc::map_of(pid).ok_or("no map")?));
    }
    spin_until(|| (0..k).all(|i| slot(&base, i).is_ok_and(|v| v > 0)));
    let served: u64 = (1..k).map(smp::flushes_served).sum();
    for (_, m) in &kids {
        ctx(m.protect(SHARED, PG, false, VmProt::READ), "protect")?;
    }
    let last: Vec<u64> = (0..k).map(|i| slot(&base, i)).collect::<Result<_, _>>()?;
    let now: u64 = (1..k).map(smp::flushes_served).sum();
    ensure!(now > served, "no shootdown reached a running task");
    // Until every task is dead or one has stored again: with a working
    // shootdown each dies at its next store; with a stale TLB entry one
    // stores on, and the check below fails instead of waiting forever.
    let dead = |p: proc::Pid| matches!(proc::state_of(p), Some(proc::State::Zombie(_)));
    let stored = || (0..k).any(|i| slot(&base, i).is_ok_and(|v| v != last[i]));
    spin_until(|| kids.iter().all(|(p, _)| dead(*p)) || stored());
    for (i, want) in last.iter().enumerate() {
        let now = slot(&base, i)?;
        ensure_eq!(now, *want, "slot {i} changed after the protects returned");
    }
    for (i, (pid, _)) in kids.iter().enumerate() {
        let want = ExitStatus::Fault {
            addr: SHARED + 8 * i as u64,
            access: Access::Write,
            error: KernError::ProtectionFailure,
        };
        ensure_eq!(proc::wait_exit(*pid), Some(want), "task {i}");
    }
    proc::verify()
}

/// Waits on CPU 0 without running tasks (they run on the other CPUs),
/// answering calls and shootdowns, until `done()`.
fn spin_until(done: impl Fn() -> bool) {
    while !done() {
        smp::serve_flush();
        smp::poll_mailbox();
        core::hint::spin_loop();
    }
}
