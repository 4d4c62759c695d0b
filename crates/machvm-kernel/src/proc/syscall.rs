//! The system-call table. Arguments come in `rdi, rsi, rdx, r10, r8, r9`;
//! the result goes out as `rax` = `kern_return_t` (0 or a [`KernError`]
//! code) and `rdx` = the value.

use super::*;
use crate::trap::TrapFrame;

/// What a call did.
pub(crate) enum Ret {
    /// Finished: `Ok(value)` or the error.
    Done(Result<u64, KernError>),
    /// Must wait: the task blocks and makes the call again when woken.
    #[expect(dead_code, reason = "the blocking calls come with the ABI crate")]
    Block(Wait),
    /// The task is gone (exit); the frame already holds the next task's.
    Gone,
}

/// Handles the system call in `f` (the caller's frame).
pub(crate) fn dispatch(f: &mut TrapFrame) {
    count_call();
    let a = [f.rdi, f.rsi, f.rdx, f.r10, f.r8, f.r9];
    match call(f, f.rax, a) {
        Ret::Done(r) => {
            let (code, value) = match r {
                Ok(v) => (0, v),
                Err(e) => (u64::from(e.code()), 0),
            };
            f.rax = code;
            f.rdx = value;
        }
        Ret::Block(w) => block(f, w),
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

/// Blocks the caller on `w`, rewinding RIP onto its `syscall` (2 bytes) so
/// that it makes the call again when woken.
fn block(f: &mut TrapFrame, w: Wait) {
    f.rip -= 2;
    let pid = current();
    if let Some(t) = SCHED.lock().tasks.get_mut(&pid) {
        t.state = State::Blocked(w);
    }
    kick_idle();
}

fn call(f: &mut TrapFrame, nr: u64, a: [u64; 6]) -> Ret {
    match nr {
        0 => {
            exit_current(f, ExitStatus::Exited(a[0]));
            Ret::Gone
        }
        1 => Ret::Done(console_write(a[0], a[1])),
        2 => {
            sched::yield_now();
            Ret::Done(Ok(0))
        }
        5 => Ret::Done(Ok(current())),
        6 => Ret::Done(Ok(smp::current_cpu() as u64)),
        _ => Ret::Done(Err(KernError::InvalidArgument)),
    }
}

/// `CONSOLE_WRITE(ptr, len)`: copied in and printed 512 bytes at a time.
fn console_write(ptr: u64, len: u64) -> Result<u64, KernError> {
    usercopy::check_range(ptr, len)?;
    let mut buf = [0u8; 512];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        usercopy::copy_in(&mut buf[..n], ptr + done)?;
        crate::print!(
            "{}",
            core::str::from_utf8(&buf[..n]).unwrap_or("<non-UTF-8 bytes>")
        );
        done += n as u64;
    }
    Ok(len)
}
