//! The system-call table (numbers and semantics: `machvm_user::abi`).
//! Arguments come in `rdi, rsi, rdx, r10, r8, r9`; the result goes out as
//! `rax` = `kern_return_t` (0 or a [`KernError`] code) and `rdx` = the value.
//!
//! Every call follows one discipline: copy the arguments in, call machvm
//! with no scheduler lock held, copy the results out. A user pointer is
//! checked before anything changes, so a bad one returns `InvalidAddress`
//! and the call has done nothing.

use machvm_user::abi::{CONSOLE_MAX, VmStatsAbi, WaitStatus, nr};

use super::usercopy::{self, Plain};
use super::*;
use crate::trap::TrapFrame;

// SAFETY: `repr(C)` structs of `u64`/`u32` fields with no padding (their
// sizes are asserted in the ABI crate).
unsafe impl Plain for WaitStatus {}
// SAFETY: as above.
unsafe impl Plain for VmStatsAbi {}

/// What a call did.
pub(crate) enum Ret {
    /// Finished: `Ok(value)` or the error.
    Done(Result<u64, KernError>),
    /// Must wait: the call marked the task blocked, under the lock that
    /// orders it against its waker; it makes the call again when woken.
    Blocked,
    /// The task is gone (exit); the frame already holds the next task's.
    Gone,
}

/// Handles the system call in `f` (the caller's frame).
pub(crate) fn dispatch(f: &mut TrapFrame) {
    count_call();
    let (n, a) = (f.rax, [f.rdi, f.rsi, f.rdx, f.r10, f.r8, f.r9]);
    let ret = call(f, n, a);
    if allocates(n)
        && let Ok(map) = my_map()
    {
        note_entries(current(), &map);
    }
    match ret {
        Ret::Done(r) => {
            let (code, value) = match r {
                Ok(v) => (0, v),
                Err(e) => (u64::from(e.code()), 0),
            };
            f.rax = code;
            f.rdx = value;
        }
        Ret::Blocked => rewind(f),
        Ret::Gone => {}
    }
}

fn count_call() {
    let pid = current();
    let mut s = SCHED.lock();
    s.stats.syscalls += 1;
    if let Some(t) = s.tasks.get_mut(&pid) {
        t.stats.syscalls += 1;
    }
}

/// Rewinds RIP onto the blocked caller's `syscall` (2 bytes), so that it
/// makes the call again when woken; nothing else of the call happened.
fn rewind(f: &mut TrapFrame) {
    f.rip -= 2;
    kick_idle();
}

/// Kernel heap a call that allocates must leave free: below it the call
/// is `ResourceShortage`, so the heap never runs out under a task (an
/// allocation failure would end the kernel). One call allocates well
/// under this (a map is capped at `vmcalls::MAX_MAP_ENTRIES` entries).
pub const HEAP_RESERVE: usize = 4 << 20;

/// True for calls that may allocate kernel heap (maps, entries, objects,
/// copies, ports, messages, tasks).
fn allocates(n: u64) -> bool {
    matches!(
        n,
        nr::FORK | nr::VM_ALLOCATE..=nr::VM_WIRE | nr::PORT_CREATE..=nr::PORT_RECV
    )
}

fn heap_low() -> bool {
    crate::heap::free() < HEAP_RESERVE
}

fn call(f: &mut TrapFrame, n: u64, a: [u64; 6]) -> Ret {
    use super::{ipc, vmcalls};
    let done = Ret::Done;
    if allocates(n) && heap_low() {
        return done(Err(KernError::ResourceShortage));
    }
    match n {
        nr::EXIT => {
            exit_current(f, ExitStatus::Exited(a[0]));
            Ret::Gone
        }
        nr::CONSOLE_WRITE => done(console_write(a[0], a[1])),
        nr::YIELD => {
            sched::yield_now();
            done(Ok(0))
        }
        nr::FORK => done(fork(f)),
        nr::WAIT => wait(a[0], a[1]),
        nr::GETPID => done(Ok(current())),
        nr::GETCPU => done(Ok(smp::current_cpu() as u64)),
        nr::STATS => done(stats_out(a[0])),
        nr::VM_ALLOCATE..=nr::VM_WIRE => done(vmcalls::call(n, a)),
        nr::PORT_CREATE..=nr::PORT_DESTROY => ipc::call(n, a),
        _ => done(Err(KernError::InvalidArgument)),
    }
}

/// The running task's map (a handle: the caller uses it with no lock).
pub(crate) fn my_map() -> Result<VmMap, KernError> {
    let pid = current();
    SCHED
        .lock()
        .tasks
        .get(&pid)
        .and_then(|t| t.map.clone())
        .ok_or(KernError::Failure)
}

/// `CONSOLE_WRITE(ptr, len)`: at most [`CONSOLE_MAX`] bytes (the kernel
/// is not preemptible: one call must not hold a CPU for long), copied in
/// and printed 512 bytes at a time. A character split between two chunks
/// is carried over, not mangled.
fn console_write(ptr: u64, len: u64) -> Result<u64, KernError> {
    usercopy::check_range(ptr, len)?;
    if len > CONSOLE_MAX {
        return Err(KernError::InvalidArgument);
    }
    let mut buf = [0u8; 512 + 3];
    let (mut done, mut carry) = (0u64, 0usize);
    while done < len {
        let n = (len - done).min(512) as usize;
        usercopy::copy_in(&mut buf[carry..carry + n], ptr + done)?;
        done += n as u64;
        let filled = carry + n;
        let printed = print_utf8(&buf[..filled], done == len);
        buf.copy_within(printed..filled, 0);
        carry = filled - printed;
    }
    Ok(len)
}

/// Prints `bytes` as UTF-8, each invalid sequence as U+FFFD; returns how
/// many it consumed: all of them, unless they end inside a character and
/// more follow (`last` false), which is left for the next chunk.
fn print_utf8(bytes: &[u8], last: bool) -> usize {
    let mut at = 0;
    while at < bytes.len() {
        let e = match core::str::from_utf8(&bytes[at..]) {
            Ok(s) => {
                crate::print!("{s}");
                break;
            }
            Err(e) => e,
        };
        let good = at + e.valid_up_to();
        let valid = core::str::from_utf8(&bytes[at..good]).unwrap_or_default();
        crate::print!("{valid}");
        match e.error_len() {
            None if !last => return good,
            None => break,
            Some(bad) => at = good + bad,
        }
        crate::print!("\u{FFFD}");
    }
    if at < bytes.len() && last && core::str::from_utf8(&bytes[at..]).is_err() {
        crate::print!("\u{FFFD}");
    }
    bytes.len()
}

/// `FORK()`: the child gets `map.fork()` and the caller's registers, with
/// 0 for its result; the parent gets the child's pid.
fn fork(f: &TrapFrame) -> Result<u64, KernError> {
    let parent = current();
    if f.rip >= machvm_base::USER_MAX {
        // The caller dies on its way out (see `return_to_user`).
        return Err(KernError::InvalidAddress);
    }
    let map = my_map()?;
    // A fork copies every entry at once: a map over the cap (one call may
    // have doubled it), or one the kernel-wide budget has no room for, is
    // refused rather than copied.
    let n = map.entry_count();
    let budget = machvm_user::abi::MAX_TOTAL_ENTRIES as usize;
    if n > super::vmcalls::MAX_MAP_ENTRIES || total_entries() + n > budget {
        return Err(KernError::ResourceShortage);
    }
    let child_map = map.fork()?;
    let mut frame = *f;
    frame.rax = 0;
    frame.rdx = 0;
    let name = SCHED.lock().tasks.get(&parent).map_or("task", |t| t.name);
    spawn::start(name, parent, child_map, frame)
}

/// `WAIT(pid, status_ptr)`: the status slot is written (zeros) before
/// anything is reaped, so a bad pointer reaps nothing.
fn wait(pid: u64, status_ptr: u64) -> Ret {
    if let Err(e) = usercopy::write(status_ptr, &WaitStatus::default()) {
        return Ret::Done(Err(e));
    }
    let me = current();
    let reaped = {
        let mut s = SCHED.lock();
        let r = exit::reap(&mut s, me, pid);
        if let Ok(None) = r {
            // Under the same lock as the look: an exit cannot slip between.
            s.block(me, Wait::Child(pid));
        }
        r
    };
    match reaped {
        Err(e) => Ret::Done(Err(e)),
        Ok(None) => Ret::Blocked,
        Ok(Some((child, st))) => {
            let out = usercopy::write(status_ptr, &wait_status(child, st));
            Ret::Done(out.map(|()| child))
        }
    }
}

/// The ABI form of an exit status.
pub(crate) fn wait_status(pid: Pid, st: ExitStatus) -> WaitStatus {
    let mut w = WaitStatus {
        pid,
        ..WaitStatus::default()
    };
    match st {
        ExitStatus::Exited(code) => w.code = code,
        ExitStatus::Fault {
            addr,
            access,
            error,
        } => {
            w.kind = WaitStatus::FAULT;
            w.access = match access {
                Access::Read => 1,
                Access::Write => 2,
                Access::Execute => 4,
            };
            w.code = u64::from(error.code());
            w.addr = addr;
        }
        ExitStatus::Trap { vector, rip } => {
            w.kind = WaitStatus::TRAP;
            w.code = vector;
            w.addr = rip;
        }
        ExitStatus::Killed => w.kind = WaitStatus::KILLED,
    }
    w
}

/// `STATS(ptr)`: the machine's VM counters.
fn stats_out(ptr: u64) -> Result<u64, KernError> {
    let s = crate::vm::vm().system.statistics();
    let out = VmStatsAbi {
        free_count: s.free_count,
        zero_fill_count: s.zero_fill_count,
        faults: s.faults,
        cow_faults: s.cow_faults,
        pageins: s.pageins,
        pageouts: s.pageouts,
        wire_count: s.wire_count,
    };
    usercopy::write(ptr, &out).map(|()| 0)
}
