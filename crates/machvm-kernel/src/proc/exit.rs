//! How tasks end and are reaped: `exit`, a refused fault or a trap (which
//! kill only the task), the kernel's kill, and `wait`.

use core::sync::atomic::Ordering;

use super::*;
use crate::vm;

/// Ends the task this CPU runs with `status`, then runs the next task in
/// its frame slot `*f` (or goes idle, not returning).
///
/// Order: the CPU leaves the task's address space first, then the task
/// becomes a zombie and its map comes out under the lock, and the map (its
/// last handle: machvm frees its pages and tables) is dropped after the
/// lock is released; then the ports the task created go, with the
/// messages (and the frames their copies hold) queued on them.
pub(crate) fn exit_current(f: &mut TrapFrame, status: ExitStatus) {
    let cpu = smp::current_cpu();
    let old = vm::activate_local(None);
    let (pid, map) = {
        let mut s = SCHED.lock();
        let pid = CURRENT[cpu].swap(0, Ordering::AcqRel);
        (pid, finish(&mut s, pid, status))
    };
    drop(old);
    drop(map);
    if pid != 0 {
        ipc::drop_ports_of(pid);
    }
    kick_idle();
    sched::schedule(f);
}

/// Makes `pid` a zombie (or removes it at once if orphaned), hands its
/// children to the kernel, wakes a parent waiting for it, and returns its
/// map for the caller to drop outside the lock.
fn finish(s: &mut Sched, pid: Pid, status: ExitStatus) -> Option<VmMap> {
    let t = s.tasks.get_mut(&pid)?;
    t.on_cpu = None;
    t.state = State::Zombie(status);
    let map = t.map.take();
    let (parent, orphan) = (t.parent, t.orphan);
    match status {
        ExitStatus::Exited(_) => s.stats.exited += 1,
        _ => s.stats.killed += 1,
    }
    s.runq.retain(|&p| p != pid);
    let zombies = orphan_children(s, pid);
    for z in zombies {
        s.tasks.remove(&z);
    }
    if orphan {
        s.tasks.remove(&pid);
    } else if parent != 0 {
        s.wake(parent, |w| w == Wait::Child(pid) || w == Wait::Child(0));
    }
    map
}

/// Hands `pid`'s children to the kernel (reaped when they exit); returns
/// those already dead, to remove.
fn orphan_children(s: &mut Sched, pid: Pid) -> Vec<Pid> {
    let mut dead = Vec::new();
    for t in s.tasks.values_mut().filter(|t| t.parent == pid) {
        t.parent = 0;
        t.orphan = true;
        if matches!(t.state, State::Zombie(_)) {
            dead.push(t.pid);
        }
    }
    dead
}

/// Reaps a zombie child of `parent` (`pid` 0: any): `Ok(Some)` with its pid
/// and status, `Ok(None)` if the children live on, `Err(InvalidArgument)`
/// if there is no such child.
pub(crate) fn reap(
    s: &mut Sched,
    parent: Pid,
    pid: Pid,
) -> Result<Option<(Pid, ExitStatus)>, KernError> {
    let mut any = false;
    let mut found = None;
    for t in s.tasks.values() {
        if t.parent != parent || t.orphan || (pid != 0 && t.pid != pid) {
            continue;
        }
        any = true;
        if let State::Zombie(st) = t.state {
            found = Some((t.pid, st));
            break;
        }
    }
    if !any {
        return Err(KernError::InvalidArgument);
    }
    if let Some((z, _)) = found {
        s.tasks.remove(&z);
    }
    Ok(found)
}

/// Runs tasks (on this CPU too) until the kernel-spawned task `pid` has
/// exited, reaps it and returns how it ended; `None` if there is no such
/// task.
pub fn wait_exit(pid: Pid) -> Option<ExitStatus> {
    let alive = || matches!(state_of(pid), Some(State::Runnable | State::Blocked(_)));
    run_until(|| !alive());
    let mut s = SCHED.lock();
    match reap(&mut s, 0, pid) {
        Ok(Some((_, st))) => Some(st),
        _ => None,
    }
}

/// Ends every task and removes them all, zombies included (the suite's
/// reset between tests): tasks on no CPU are ended here, tasks on a CPU
/// are told to die and their CPU is interrupted; returns how many there
/// were.
pub fn kill_all_and_reap() -> usize {
    let (n, maps) = {
        let mut s = SCHED.lock();
        let pids: Vec<Pid> = s.tasks.keys().copied().collect();
        let mut maps = Vec::new();
        for &pid in &pids {
            // A dead child goes with its parent (`finish` removes it).
            let Some(t) = s.tasks.get_mut(&pid) else {
                continue;
            };
            t.kill = true;
            t.orphan = true;
            if t.on_cpu.is_none() && !matches!(t.state, State::Zombie(_)) {
                maps.extend(finish(&mut s, pid, ExitStatus::Killed));
            }
        }
        (pids.len(), maps)
    };
    drop(maps);
    for c in 0..smp::cpu_count() {
        if running_on(c).is_some() {
            smp::send_resched(c);
        }
    }
    run_until(|| (0..smp::cpu_count()).all(|c| running_on(c).is_none()));
    let zombies = {
        let mut s = SCHED.lock();
        s.runq.clear();
        core::mem::take(&mut s.tasks)
    };
    drop(zombies);
    clear_ports();
    n
}
