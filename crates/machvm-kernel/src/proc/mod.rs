//! Processes: ring-3 tasks, each running in its own machvm map.
//!
//! A [`Task`] owns its map and its saved user context (a [`TrapFrame`]).
//! The kernel is not preemptible: it runs with interrupts off, and a task
//! is switched only where it meets the kernel — the end of a trap or system
//! call ([`sched::return_to_user`]) — so no kernel lock is ever held across
//! a switch. Each CPU serves one global FIFO run queue from its idle context
//! ([`sched::idle_loop`]); the local APIC timer ([`crate::timer`]) ends a
//! quantum. A system call that must wait (for a child, a message, room in a
//! port) marks its task blocked and rewinds RIP onto the `syscall`: when the
//! task is woken it simply makes the call again.
//!
//! Invariants (checked by [`verify`]):
//! - a task is queued at most once, and only when it is runnable and on no
//!   CPU;
//! - `CURRENT[cpu]` names a task exactly when that task's `on_cpu` is `cpu`;
//! - a zombie holds no map;
//! - a saved frame is a ring-3 frame whose RIP is a user address (`iretq`
//!   to a non-canonical RIP would fault in ring 0).
//!
//! Lock order: `ipc`'s ports, then [`SCHED`]. Neither is held across a
//! machvm call, a user copy, or the drop of a map or a copy.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use machvm::{Access, KernError};

use crate::locks::{ServeShootdowns, VmMap};
use crate::smp::{self, MAX_CPUS};
use crate::trap::TrapFrame;

mod exit;
mod ipc;
mod loader;
mod sched;
mod spawn;
mod syscall;
mod traps;
mod usercopy;
mod vmcalls;

pub(crate) use exit::exit_current;
pub use exit::{kill_all_and_reap, wait_exit};
pub(crate) use ipc::clear_ports;
pub use ipc::{create_port, destroy_port, queued};
pub use loader::{LoadError, load};
pub use sched::{idle_loop, run_until};
pub(crate) use sched::{on_timer, return_to_user};
pub use spawn::{
    CODE_BASE, USER_STACK_SIZE, USER_STACK_TOP, spawn, spawn_code, spawn_code_in, spawn_image,
};
pub use syscall::HEAP_RESERVE;
pub(crate) use syscall::dispatch as syscall;
pub(crate) use traps::{user_exception, user_page_fault};
pub use vmcalls::MAX_MAP_ENTRIES;

/// A process id; 0 is the kernel.
pub type Pid = u64;

/// How a task ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// It called `exit(code)`.
    Exited(u64),
    /// machvm refused one of its page faults.
    Fault {
        /// The faulting address (CR2).
        addr: u64,
        /// The access.
        access: Access,
        /// What machvm said.
        error: KernError,
    },
    /// It raised another exception (`#UD`, `#GP`, …).
    Trap {
        /// The vector.
        vector: u64,
        /// Where.
        rip: u64,
    },
    /// The kernel killed it.
    Killed,
}

/// What a blocked task waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// A child to exit (0 = any).
    Child(Pid),
    /// A message on a port.
    Recv(u64),
    /// Room in a port's queue.
    Send(u64),
}

/// A task's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Running on a CPU or waiting in the run queue.
    Runnable,
    /// Asleep until woken.
    Blocked(Wait),
    /// Exited; waits for its parent.
    Zombie(ExitStatus),
}

/// What a task did, for tests and the demo.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskStats {
    /// System calls made.
    pub syscalls: u64,
    /// Page faults machvm resolved for it.
    pub faults: u64,
    /// Times it was switched in.
    pub switches: u64,
    /// Times its quantum ran out while another task waited.
    pub preemptions: u64,
    /// Mask of the CPUs it ran on.
    pub cpus_seen: u64,
}

/// A ring-3 task.
pub struct Task {
    /// Its id.
    pub pid: Pid,
    /// Its parent (0: the kernel, which reaps it through [`wait_exit`]).
    pub parent: Pid,
    /// Its name, for reports.
    pub name: &'static str,
    /// Its address space; `None` once it exited.
    pub map: Option<VmMap>,
    /// Its user context while it is not on a CPU.
    pub frame: TrapFrame,
    /// Its state.
    pub state: State,
    /// The CPU it is on, if any.
    pub on_cpu: Option<usize>,
    /// Set to end it at its next kernel exit.
    pub kill: bool,
    /// Reparented to the kernel: reaped as soon as it exits.
    pub orphan: bool,
    /// Entries its map held after its last call that could add some: its
    /// share of the kernel-wide budget (`abi::MAX_TOTAL_ENTRIES`).
    pub entries: usize,
    /// Its counters.
    pub stats: TaskStats,
}

/// Counters since boot over every task.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcStats {
    /// Tasks created (spawned or forked).
    pub created: u64,
    /// Tasks that called `exit`.
    pub exited: u64,
    /// Tasks ended by a fault, a trap or the kernel.
    pub killed: u64,
    /// System calls.
    pub syscalls: u64,
    /// Switches to a task.
    pub switches: u64,
    /// Quanta that ran out while another task waited.
    pub preemptions: u64,
    /// Out-of-line bytes sent in messages.
    pub ool_bytes: u64,
}

/// The scheduler's state, under one lock.
pub struct Sched {
    pub(crate) tasks: BTreeMap<Pid, Task>,
    pub(crate) runq: VecDeque<Pid>,
    next_pid: Pid,
    pub(crate) stats: ProcStats,
}

/// Most tasks that may exist at once (zombies included): `fork` beyond it
/// is `ResourceShortage`.
pub const MAX_TASKS: usize = machvm_user::abi::MAX_TASKS as usize;

/// A lock whose wait answers shootdowns, like machvm's.
pub type SchedLock<T> = spin::mutex::SpinMutex<T, ServeShootdowns>;

/// Every task, the run queue and the counters.
pub static SCHED: SchedLock<Sched> = SchedLock::new(Sched {
    tasks: BTreeMap::new(),
    runq: VecDeque::new(),
    next_pid: 1,
    stats: ProcStats {
        created: 0,
        exited: 0,
        killed: 0,
        syscalls: 0,
        switches: 0,
        preemptions: 0,
        ool_bytes: 0,
    },
});

/// The task each CPU runs (0: none).
static CURRENT: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Set by the timer: switch at the next return to ring 3 if someone waits.
static NEED_RESCHED: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
/// CPUs halted in their idle loop, to wake when a task becomes runnable.
static IDLE_MASK: AtomicU64 = AtomicU64::new(0);

impl Sched {
    fn new_pid(&mut self) -> Pid {
        let pid = self.next_pid;
        self.next_pid += 1;
        pid
    }

    /// Adds a runnable task and queues it. Refused (the task handed back,
    /// for its map to be dropped outside the lock) when [`MAX_TASKS`] exist
    /// or its parent is gone or being killed: a fork under way when the
    /// kernel kills every task must not leave a child behind.
    pub(crate) fn insert(&mut self, mut task: Task) -> Result<Pid, Box<Task>> {
        let parent_dying = task.parent != 0
            && self
                .tasks
                .get(&task.parent)
                .is_none_or(|p| p.kill || matches!(p.state, State::Zombie(_)));
        if parent_dying || self.tasks.len() >= MAX_TASKS {
            return Err(Box::new(task));
        }
        let pid = self.new_pid();
        task.pid = pid;
        self.tasks.insert(pid, task);
        self.runq.push_back(pid);
        self.stats.created += 1;
        Ok(pid)
    }

    /// Blocks `pid` (the caller, still on its CPU) on `w`.
    pub(crate) fn block(&mut self, pid: Pid, w: Wait) {
        if let Some(t) = self.tasks.get_mut(&pid)
            && t.state == State::Runnable
            && !t.kill
        {
            t.state = State::Blocked(w);
        }
    }

    /// Wakes `pid` if it waits for something `matches` accepts. A task still
    /// on its CPU (it blocked but has not been switched out) just carries on.
    pub(crate) fn wake(&mut self, pid: Pid, matches: impl Fn(Wait) -> bool) -> bool {
        let Some(t) = self.tasks.get_mut(&pid) else {
            return false;
        };
        match t.state {
            State::Blocked(w) if matches(w) => {
                t.state = State::Runnable;
                if t.on_cpu.is_none() {
                    self.runq.push_back(pid);
                }
                true
            }
            _ => false,
        }
    }
}

/// A task record for [`Sched::insert`].
pub(crate) fn new_task(name: &'static str, parent: Pid, map: VmMap, frame: TrapFrame) -> Task {
    let entries = map.entry_count();
    Task {
        entries,
        pid: 0,
        parent,
        name,
        map: Some(map),
        frame,
        state: State::Runnable,
        on_cpu: None,
        kill: false,
        orphan: false,
        stats: TaskStats::default(),
    }
}

/// The task CPU `cpu` runs, if any.
pub fn running_on(cpu: usize) -> Option<Pid> {
    let pid = CURRENT[cpu].load(Ordering::Acquire);
    (pid != 0).then_some(pid)
}

/// The task running on this CPU (0 when none).
pub(crate) fn current() -> Pid {
    CURRENT[smp::current_cpu()].load(Ordering::Acquire)
}

/// Wakes every halted CPU, so they look at the run queue (and CPU 0 at its
/// `run_until` condition).
pub(crate) fn kick_idle() {
    let mask = IDLE_MASK.load(Ordering::SeqCst);
    for c in (0..smp::cpu_count()).filter(|c| mask & (1 << c) != 0) {
        smp::send_resched(c);
    }
}

/// A task's state, if it exists.
pub fn state_of(pid: Pid) -> Option<State> {
    SCHED.lock().tasks.get(&pid).map(|t| t.state)
}

/// Map entries held by every task, as last recorded.
pub fn total_entries() -> usize {
    SCHED.lock().tasks.values().map(|t| t.entries).sum()
}

/// Records `pid`'s map size after a call that may have changed it.
pub(crate) fn note_entries(pid: Pid, map: &VmMap) {
    let n = map.entry_count();
    if let Some(t) = SCHED.lock().tasks.get_mut(&pid) {
        t.entries = n;
    }
}

/// A task's parent, if it exists.
pub fn parent_of(pid: Pid) -> Option<Pid> {
    SCHED.lock().tasks.get(&pid).map(|t| t.parent)
}

/// A task's counters, if it exists.
pub fn stats_of(pid: Pid) -> Option<TaskStats> {
    SCHED.lock().tasks.get(&pid).map(|t| t.stats)
}

/// A handle on a task's map (for tests that look inside), if it has one.
pub fn map_of(pid: Pid) -> Option<VmMap> {
    SCHED.lock().tasks.get(&pid).and_then(|t| t.map.clone())
}

/// The counters over every task since boot.
pub fn stats() -> ProcStats {
    SCHED.lock().stats
}

/// Pids of every task that exists, zombies included.
pub fn pids() -> Vec<Pid> {
    SCHED.lock().tasks.keys().copied().collect()
}

/// Checks the scheduler's invariants (see the module comment), then the
/// port table's (`ipc`: messages counted = queued + reserved, capacities).
pub fn verify() -> Result<(), String> {
    ipc::verify()?;
    let s = SCHED.lock();
    let mut seen = BTreeMap::new();
    for &pid in &s.runq {
        let t = s
            .tasks
            .get(&pid)
            .ok_or(format!("queued pid {pid} does not exist"))?;
        if seen.insert(pid, ()).is_some() {
            return Err(format!("pid {pid} queued twice"));
        }
        if t.state != State::Runnable || t.on_cpu.is_some() {
            return Err(format!(
                "pid {pid} queued while {:?} on {:?}",
                t.state, t.on_cpu
            ));
        }
    }
    for (c, cur) in CURRENT.iter().enumerate().take(smp::cpu_count()) {
        let pid = cur.load(Ordering::Acquire);
        if pid != 0 && s.tasks.get(&pid).and_then(|t| t.on_cpu) != Some(c) {
            return Err(format!("cpu {c} runs pid {pid}, which is not on it"));
        }
    }
    for t in s.tasks.values() {
        if let Some(c) = t.on_cpu
            && CURRENT[c].load(Ordering::Acquire) != t.pid
        {
            return Err(format!("pid {} on cpu {c}, which runs another", t.pid));
        }
        if matches!(t.state, State::Zombie(_)) && t.map.is_some() {
            return Err(format!("zombie {} holds a map", t.pid));
        }
        let resumable = t.frame.rip < machvm_base::USER_MAX && t.frame.from_user();
        if t.on_cpu.is_none() && !matches!(t.state, State::Zombie(_)) && !resumable {
            return Err(format!("pid {} saved with RIP {:#x}", t.pid, t.frame.rip));
        }
    }
    Ok(())
}
