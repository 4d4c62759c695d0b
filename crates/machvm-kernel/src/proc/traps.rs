//! Entries from ring 3: page faults go to machvm, other exceptions kill the
//! task, system calls go to [`syscall`](super::syscall).

use super::*;
use crate::trap::{self, TrapFrame};
use crate::vm::{self, Outcome};

/// A page fault from ring 3: machvm resolves it (the task retries the
/// access) or refuses it, which ends only this task, with the address,
/// the access and machvm's answer in its exit status.
pub(crate) fn user_page_fault(f: &mut TrapFrame, cr2: u64) {
    let resolved = trap::page_fault_hook().is_some_and(|hook| hook(cr2, f.error_code));
    if resolved {
        count_fault();
        return;
    }
    let cpu = smp::current_cpu();
    let access = vm::access_of(f.error_code);
    let error = match vm::last_fault(cpu).map(|r| r.outcome) {
        Some(Outcome::Refused(e)) => e,
        Some(Outcome::Loop) => KernError::Failure,
        _ => KernError::InvalidAddress,
    };
    exit_current(
        f,
        ExitStatus::Fault {
            addr: cr2,
            access,
            error,
        },
    );
}

fn count_fault() {
    let pid = current();
    if let Some(t) = SCHED.lock().tasks.get_mut(&pid) {
        t.stats.faults += 1;
    }
}

/// Any other exception from ring 3 (`#UD`, `#GP` from a privileged
/// instruction, `#DE`, …) ends the task.
pub(crate) fn user_exception(f: &mut TrapFrame) {
    let status = ExitStatus::Trap {
        vector: f.vector,
        rip: f.rip,
    };
    exit_current(f, status);
}
