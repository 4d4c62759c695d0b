//! The scheduler: what a CPU does at the end of every entry from ring 3,
//! and its idle loop.
//!
//! Every ring-3 entry (system call, fault, interrupt) ends in
//! [`return_to_user`] with the frame in the CPU's trap-stack slot. If the
//! task goes on, the handler returns and `iretq` resumes it. Otherwise its
//! frame is saved in its [`Task`], the next runnable task's frame is copied
//! into the slot and its map activated, and the same `iretq` resumes that
//! one. With nothing to run, the CPU drops back to its idle context
//! ([`trap::resume_idle`]), which waits in [`idle_loop`].

use core::sync::atomic::Ordering;

use machvm_base::USER_MAX;

use super::*;
use crate::trap::{self, TrapFrame};
use crate::{timer, vm};

/// The condition a CPU's idle loop stops on, while that loop has handed
/// the CPU to a task: checked at the task's returns to ring 3, so that a
/// `run_until` on a CPU busy with tasks still ends.
struct StopFn(*const (dyn Fn() -> bool + 'static));

// SAFETY: only the CPU whose idle loop set it reads it, while that loop's
// frame (which owns the closure) is live below the task it runs.
unsafe impl Send for StopFn {}

static STOP: [spin::Mutex<Option<StopFn>>; MAX_CPUS] = [const { spin::Mutex::new(None) }; MAX_CPUS];

/// True if this CPU's idle loop wants its CPU back.
fn idle_wants_cpu(cpu: usize) -> bool {
    let stop = STOP[cpu].lock().as_ref().map(|s| s.0);
    // SAFETY: see `StopFn`: the closure outlives the tasks its loop runs.
    stop.is_some_and(|f| unsafe { (*f)() })
}

/// A task taken off the run queue for this CPU.
struct Next {
    frame: TrapFrame,
    map: VmMap,
}

/// Takes the first runnable task off the queue and puts it on `cpu`.
fn pick(s: &mut Sched, cpu: usize) -> Option<Next> {
    while let Some(pid) = s.runq.pop_front() {
        let Some(t) = s.tasks.get_mut(&pid) else {
            continue;
        };
        let Some(map) = t.map.clone() else {
            continue;
        };
        debug_assert!(t.state == State::Runnable && t.on_cpu.is_none());
        t.on_cpu = Some(cpu);
        t.stats.switches += 1;
        t.stats.cpus_seen |= 1 << cpu;
        s.stats.switches += 1;
        CURRENT[cpu].store(pid, Ordering::Release);
        return Some(Next {
            frame: t.frame,
            map,
        });
    }
    None
}

/// [`pick`] under the lock.
fn pick_next(cpu: usize) -> Option<Next> {
    pick(&mut SCHED.lock(), cpu)
}

/// Activates `next`'s map on this CPU and starts its quantum.
fn activate(next: &Next) {
    let old = vm::activate_local(Some(&next.map));
    drop(old);
    timer::arm();
}

/// This CPU's task can go on (it is runnable and not asked to yield with
/// someone waiting): true. Otherwise its frame is saved, it is queued again
/// if still runnable, and this CPU runs no task: false.
fn keep_or_put_back(s: &mut Sched, cpu: usize, f: &TrapFrame, resched: bool) -> bool {
    let pid = CURRENT[cpu].load(Ordering::Acquire);
    let Some(t) = s.tasks.get_mut(&pid) else {
        return false;
    };
    let runnable = t.state == State::Runnable;
    if runnable && (!resched || s.runq.is_empty()) {
        return true;
    }
    if runnable {
        t.stats.preemptions += 1;
        s.stats.preemptions += 1;
    }
    put_back(s, cpu, f);
    false
}

/// Saves this CPU's task's frame and takes it off the CPU, queued again if
/// it is runnable.
fn put_back(s: &mut Sched, cpu: usize, f: &TrapFrame) {
    let pid = CURRENT[cpu].swap(0, Ordering::AcqRel);
    if let Some(t) = s.tasks.get_mut(&pid) {
        t.frame = *f;
        t.on_cpu = None;
        if t.state == State::Runnable {
            s.runq.push_back(pid);
        }
    }
}

/// The end of every entry from ring 3: carry on with this task, switch to
/// the next one (rewriting `*f`), or go idle (not returning). A task asked
/// to die dies here.
pub(crate) fn return_to_user(f: &mut TrapFrame) {
    // `iretq` to a non-canonical RIP faults in ring 0 on real CPUs, after
    // the user GS is swapped in. A task whose next instruction would be at
    // `USER_MAX` (an instruction ending at the top of the user half: a
    // `syscall`, or one an interrupt came after) dies here, before its
    // frame can be saved or resumed: no saved frame ever holds such a RIP
    // (`verify` checks it; `fork` refuses to copy one).
    if f.rip >= USER_MAX {
        let status = ExitStatus::Trap {
            vector: 13,
            rip: f.rip,
        };
        exit_current(f, status);
    }
    carry_on(f);
}

fn carry_on(f: &mut TrapFrame) {
    let cpu = smp::current_cpu();
    let pid = CURRENT[cpu].load(Ordering::Acquire);
    let kill = SCHED.lock().tasks.get(&pid).is_none_or(|t| t.kill);
    if kill {
        exit_current(f, ExitStatus::Killed);
        return;
    }
    let resched = NEED_RESCHED[cpu].swap(false, Ordering::AcqRel);
    let stop = resched && idle_wants_cpu(cpu);
    {
        let mut s = SCHED.lock();
        if stop {
            put_back(&mut s, cpu, f);
            drop(s);
            kick_idle();
            go_idle();
        }
        if keep_or_put_back(&mut s, cpu, f, resched) {
            drop(s);
            if resched {
                timer::arm();
            }
            return;
        }
    }
    // The task put back may wait while another CPU sleeps: wake it.
    kick_idle();
    switch_or_idle(f, pick_next(cpu));
}

/// Runs the next task in this CPU's frame slot, or goes idle.
pub(super) fn schedule(f: &mut TrapFrame) {
    switch_or_idle(f, pick_next(smp::current_cpu()));
}

fn switch_or_idle(f: &mut TrapFrame, next: Option<Next>) {
    match next {
        Some(n) => {
            activate(&n);
            *f = n.frame;
        }
        None => go_idle(),
    }
}

/// Leaves the trap stack for the idle context: kernel CR3, timer off.
fn go_idle() -> ! {
    timer::disarm();
    let old = vm::activate_local(None);
    drop(old);
    // SAFETY: called on the trap stack (every caller is a ring-3 entry's
    // handler) with interrupts off and the kernel GS; nothing above holds a
    // lock or a handle: the map handles were dropped just now.
    unsafe { trap::resume_idle() }
}

/// The timer interrupt: a task that was running in ring 3 yields at the
/// end of this entry if another one waits.
pub(crate) fn on_timer(f: &TrapFrame) {
    timer::tick();
    if f.from_user() {
        NEED_RESCHED[smp::current_cpu()].store(true, Ordering::Release);
    }
}

/// The `yield` system call: switch if anyone waits.
pub(crate) fn yield_now() {
    NEED_RESCHED[smp::current_cpu()].store(true, Ordering::Release);
}

/// A CPU's idle context: runs tasks from the queue until `stop()` holds,
/// halting when there is nothing to run. Serves cross-CPU calls and
/// shootdowns between tasks. Interrupts off on entry and exit.
pub fn idle_loop(stop: &dyn Fn() -> bool) {
    let cpu = smp::current_cpu();
    let erased: *const (dyn Fn() -> bool + '_) = stop;
    // SAFETY: only the lifetime is erased; the pointer is cleared below
    // before `stop` goes, and read only on this CPU meanwhile.
    let erased: *const (dyn Fn() -> bool + 'static) = unsafe { core::mem::transmute(erased) };
    *STOP[cpu].lock() = Some(StopFn(erased));
    idle_until(cpu, stop);
    *STOP[cpu].lock() = None;
}

fn idle_until(cpu: usize, stop: &dyn Fn() -> bool) {
    let bit = 1u64 << cpu;
    loop {
        smp::serve_flush();
        smp::poll_mailbox();
        if stop() {
            return;
        }
        if let Some(next) = pick_next(cpu) {
            activate(&next);
            let frame = next.frame;
            drop(next);
            // SAFETY: interrupts are off; the frame is a task's saved ring-3
            // context and CR3 now holds its map; nothing lives on the trap
            // stack between entries.
            unsafe { trap::enter_user(&frame) };
            continue;
        }
        // Announce the halt before the last look at the queue: a waker
        // queues first and reads the mask after, so one of us sees the other.
        IDLE_MASK.fetch_or(bit, Ordering::SeqCst);
        let empty = SCHED.lock().runq.is_empty();
        if empty && !stop() {
            x86_64::instructions::interrupts::enable_and_hlt();
            x86_64::instructions::interrupts::disable();
        }
        IDLE_MASK.fetch_and(!bit, Ordering::SeqCst);
    }
}

/// Runs tasks on this CPU (the suite's CPU 0) too, until `done()` holds.
/// `done` is checked whenever the CPU is between tasks and at the end of
/// every quantum of a task it runs.
pub fn run_until(done: impl Fn() -> bool) {
    idle_loop(&done);
}
