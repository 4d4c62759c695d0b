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

/// The children of `parent`, oldest first.
fn children(parent: proc::Pid) -> Vec<(proc::Pid, VmMap)> {
    proc::pids()
        .into_iter()
        .filter(|&p| proc::parent_of(p) == Some(parent))
        .filter_map(|p| proc::map_of(p).map(|m| (p, m)))
        .collect()
}

fn slot(map: &VmMap, i: usize) -> Result<u64, String> {
    let mut b = [0u8; 8];
    ctx(
        map.read_bytes(s::SHARED_PAGE + 8 * i as u64, &mut b),
        "read slot",
    )?;
    Ok(u64::from_le_bytes(b))
}

/// `cpu_count()` children store to their slots of a `Share` page with no
/// system call. With CPU 0 in this test, at least one is always preempted
/// and the others run. Making the page read-only in every child's map must
/// reach the running ones through a shootdown and the preempted ones at
/// their next switch: no store lands after the protects return, and each
/// child dies on its next store. Under `--skip-invlpg` a running child
/// goes on storing through its stale TLB entry, and this fails.
pub(super) fn preempted_task_shot_down_by_another_cpu() -> Result<(), String> {
    let k = smp::cpu_count();
    let parent = proc::spawn("utest", arg(s::SHOOTDOWN_SPIN, k as u64))
        .map_err(|e| format!("spawn: {e}"))?;
    let started = || {
        let c = children(parent);
        c.len() == k && (0..k).all(|i| slot(&c[0].1, i).is_ok_and(|v| v > 0))
    };
    proc::run_until(started);
    let kids = children(parent);
    let flushes = |kids: &[(proc::Pid, VmMap)]| -> u64 {
        let _ = kids;
        (1..smp::cpu_count()).map(smp::flushes_served).sum()
    };
    let served = flushes(&kids);
    for (_, m) in &kids {
        ctx(
            m.protect(s::SHARED_PAGE, PG, false, VmProt::READ),
            "protect",
        )?;
    }
    let last: Vec<u64> = (0..k)
        .map(|i| slot(&kids[0].1, i))
        .collect::<Result<_, _>>()?;
    if k > 1 {
        ensure!(
            flushes(&kids) > served,
            "no shootdown reached a running child"
        );
    }
    match proc::wait_exit(parent) {
        Some(ExitStatus::Exited(0)) => {}
        other => return Err(format!("parent (checks each child's fault): {other:?}")),
    }
    for (i, want) in last.iter().enumerate() {
        ensure_eq!(
            slot(&kids[0].1, i)?,
            *want,
            "slot {i} changed after the protects"
        );
    }
    proc::verify()
}
