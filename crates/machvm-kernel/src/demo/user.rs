//! The demo's user-mode chapter: `init` runs in ring 3 on machvm and tells
//! its own story through `CONSOLE_WRITE`; the kernel adds what it counted.

use alloc::format;
use alloc::string::String;

use crate::{proc, vm};

/// Starts `init`, runs every CPU's share of its processes until the last
/// one is gone, and sums up what the processes did.
pub(super) fn init() -> String {
    let before = proc::stats();
    let vm0 = vm::vm().system.statistics();
    let free0 = vm0.free_count;
    let pid = match proc::spawn("init", 0) {
        Ok(pid) => pid,
        Err(e) => return format!("init did not start: {e}"),
    };
    let status = proc::wait_exit(pid);
    // Orphans of init (none, if it waited for all) are reaped as they end.
    proc::run_until(|| proc::pids().is_empty());
    let after = proc::stats();
    let vm1 = vm::vm().system.statistics();
    let ended = match status {
        Some(proc::ExitStatus::Exited(0)) => String::from("init exited 0"),
        other => format!("init ended {other:?}"),
    };
    format!(
        "{ended}; {} processes, {} exited and {} killed; {} system calls; {} MiB sent out of line; {} pages copied on write; {} frames free before, {} after",
        after.created - before.created,
        after.exited - before.exited,
        after.killed - before.killed,
        after.syscalls - before.syscalls,
        (after.ool_bytes - before.ool_bytes) >> 20,
        vm1.cow_faults - vm0.cow_faults,
        free0,
        vm1.free_count,
    )
}
